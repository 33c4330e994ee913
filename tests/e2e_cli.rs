//! End-to-end, the operator's view: `xlb services`, `conntrack list|watch|flush`, `stats`,
//! `maglev show`, `top` (in tmux), `/metrics` and the logs of `xlb run`, checked against real
//! traffic in the single-node lab. Each test builds its own lab and removes it, also on failure.
//!
//! Needs root, an `xlb` binary (`$XLB_BIN`, `target/release/xlb` or `target/debug/xlb`), tmux
//! and bpftool (both installed by `scripts/setup.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use xlb_api::{FlushReport, MaglevOutput, WatchEvent};
use xlb_bench::lab::netns::{COMMAND_TIMEOUT, run_with_timeout};
use xlb_bench::lab::*;
use xlb_e2e::*;

/// How long a connection census of the lab's small table may take to come round.
const CENSUS_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the CLI of `t`'s xlb and parses its JSON output as the contract type `T`.
fn json<T: serde::de::DeserializeOwned>(xlb: &XlbProcess<'_>, args: &[&str]) -> Result<T> {
    let out = xlb.cli(args)?;
    serde_json::from_str(&out).with_context(|| format!("`xlb {}` printed {out}", args.join(" ")))
}

/// The entry of `xlb services -o json` named `name`.
fn service<'a>(doc: &'a ServicesOutput, name: &str) -> Result<&'a ServiceStatus> {
    doc.service(name)
        .with_context(|| format!("no service {name} in {doc:?}"))
}

/// The frontend of `svc` at `addr` (`None`: the NodePort) and `port`.
fn frontend(svc: &ServiceStatus, addr: Option<Ipv4Addr>, port: u16) -> Result<&FrontendStatus> {
    svc.frontend(addr, port)
        .with_context(|| format!("no frontend {addr:?}:{port} in {svc:?}"))
}

/// Connections per pod address.
fn per_pod_addr(lab: &Lab, reports: &[&TcpManyReport]) -> BTreeMap<Ipv4Addr, u64> {
    let mut m = BTreeMap::new();
    for r in reports {
        for c in &r.conns {
            let addr = lab
                .spec()
                .pods()
                .find(|(_, p)| p.name == c.pod)
                .unwrap()
                .1
                .addr;
            *m.entry(addr).or_default() += 1;
        }
    }
    m
}

/// `xlb services`, `conntrack list` (with each filter), `stats` and `maglev show` agree with
/// the connections and datagrams the client made.
#[test]
fn inspection_commands_count_the_traffic_sent() {
    with_local_lab(|t| {
        let client = t.lab.client();
        let http = t.web.port_key("http");
        let udp = t.web.port_key("udp");
        let stats0 = t.xlb.stats()?;
        let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
        let np = SocketAddrV4::new(t.node_addr(), WEB_NODE_PORT);
        let to_vip = tcp_many(client, vip, 30, IO_TIMEOUT);
        let to_np = tcp_many(client, np, 20, IO_TIMEOUT);
        ensure!(to_vip.failures.is_empty() && to_np.failures.is_empty());
        let mut udp_pods = BTreeMap::new();
        for _ in 0..10 {
            let port = client.alloc_port();
            let r = udp_request(client, vip, Some(port), IO_TIMEOUT)?;
            udp_pods.insert(port, t.pod_addr(&r.pod));
        }
        let sent = unix_now();

        // The clients' last ACKs of their closes may still be on their way when the calls
        // above return. The reads below compare counters taken at different moments, so wait
        // until the datapath has forwarded nothing for a while (bounded).
        let settle = Instant::now() + Duration::from_secs(10);
        let mut seen = t.xlb.stats()?.counters["forward_local"];
        loop {
            std::thread::sleep(Duration::from_millis(400));
            let now = t.xlb.stats()?.counters["forward_local"];
            if now == seen {
                break;
            }
            ensure!(Instant::now() < settle, "traffic still arriving after 10 s");
            seen = now;
        }

        // xlb services: connections per frontend and backend (from a census of xlb run taken
        // after the traffic), packets on both sides.
        let doc = t.xlb.services_counted_after(sent, CENSUS_TIMEOUT)?;
        let svc = service(&doc, &http)?;
        // Every TCP connection was closed by the client (FIN): none is active any more, all
        // 50 are still in the table (the close timeout), with the 10 UDP flows.
        ensure!(frontend(svc, Some(t.vip()), WEB_PORT)?.connections == 0);
        ensure!(frontend(svc, None, WEB_NODE_PORT)?.connections == 0);
        ensure!(svc.connections == 0);
        ensure!(
            doc.conntrack.entries == 60 && doc.conntrack.active == 10,
            "{:?}",
            doc.conntrack
        );
        let want = per_pod_addr(t.lab, &[&to_vip, &to_np]);
        for b in &svc.backends {
            let n = want.get(&b.addr).copied().unwrap_or(0);
            ensure!(
                b.connections == 0,
                "backend {}: xlb counts {} active connections, all {n} closed",
                b.addr,
                b.connections
            );
            // The datapath's exact new-flow counter agrees: each connection opened one flow.
            ensure!(
                b.new_flows == n,
                "backend {}: {} new flows, the pods answered {n}",
                b.addr,
                b.new_flows
            );
        }
        ensure!(frontend(svc, Some(t.vip()), WEB_PORT)?.new_flows == 30);
        ensure!(frontend(svc, None, WEB_NODE_PORT)?.new_flows == 20);
        let fe_pk: u64 = svc.frontends.iter().map(|f| f.packets).sum();
        let be_pk: u64 = svc.backends.iter().map(|b| b.packets).sum();
        ensure!(
            fe_pk == be_pk,
            "frontends counted {fe_pk} packets, backends {be_pk}"
        );
        ensure!(
            svc.frontends.iter().map(|f| f.bytes).sum::<u64>()
                == svc.backends.iter().map(|b| b.bytes).sum::<u64>()
        );
        // At least SYN, ACK and FIN from each client.
        ensure!(frontend(svc, Some(t.vip()), WEB_PORT)?.packets >= 3 * 30);
        ensure!(frontend(svc, None, WEB_NODE_PORT)?.packets >= 3 * 20);
        let usvc = service(&doc, &udp)?;
        let ufe = frontend(usvc, Some(t.vip()), WEB_PORT)?;
        ensure!(ufe.packets == 10, "UDP frontend: {ufe:?}");
        ensure!(ufe.connections == 10);
        ensure!(ufe.new_flows == 10);
        let per_datagram = ufe.bytes / 10;
        ensure!(
            (34..=52).contains(&per_datagram) && ufe.bytes.is_multiple_of(10),
            "10 datagrams of 6 bytes counted {} bytes",
            ufe.bytes
        );
        ensure!(frontend(usvc, None, WEB_NODE_PORT)?.packets == 0);
        ensure!(doc.conntrack.entries == 60);
        ensure!(doc.conntrack.capacity > 60);

        // The same in YAML and for people.
        let yaml = t.xlb.cli(&["services", "-o", "yaml"])?;
        ensure!(yaml.contains(&format!("name: {http}")), "{yaml}");
        ensure!(yaml.contains("active: 10"), "{yaml}");
        let human = t.xlb.cli(&["services"])?;
        ensure!(
            human.contains(&format!("{}:{WEB_PORT}", t.vip())),
            "{human}"
        );
        ensure!(human.contains("LoadBalancer") && human.contains(&format!("*:{WEB_NODE_PORT}")));

        // conntrack list: every connection, with the pod that answered it.
        let flows: Vec<FlowRow> = json(t.xlb, &["conntrack", "list", "-o", "json"])?;
        ensure!(flows.len() == 60, "{} flows: {flows:?}", flows.len());
        for (report, dst) in [(&to_vip, vip), (&to_np, np)] {
            for c in &report.conns {
                let f = flows
                    .iter()
                    .find(|f| f.client_port == c.src_port && f.protocol == "TCP")
                    .with_context(|| format!("no flow from port {}", c.src_port))?;
                ensure!(f.client == t.client_addr());
                ensure!(f.frontend == *dst.ip() && f.frontend_port == dst.port());
                ensure!(f.backend == Some(t.pod_addr(&c.pod)), "{f:?} vs {}", c.pod);
                ensure!(f.backend_port == Some(POD_PORT) && f.service.as_ref() == Some(&http));
                ensure!(f.age_s >= f.idle_s);
            }
        }
        for (port, pod) in &udp_pods {
            ensure!(
                flows.iter().any(|f| f.client_port == *port
                    && f.protocol == "UDP"
                    && f.backend == Some(*pod))
            );
        }
        let count = |args: &[&str]| -> Result<usize> {
            let mut a = vec!["conntrack", "list", "-o", "json"];
            a.extend_from_slice(args);
            Ok(json::<Vec<FlowRow>>(t.xlb, &a)?.len())
        };
        let vip80 = format!("{}:{WEB_PORT}", t.vip());
        ensure!(count(&["--frontend", &vip80, "--protocol", "tcp"])? == 30);
        ensure!(count(&["--frontend", &vip80])? == 40);
        ensure!(count(&["--frontend", &format!(":{WEB_NODE_PORT}")])? == 20);
        ensure!(count(&["--service", &udp])? == 10);
        ensure!(count(&["--service", "default/web"])? == 60);
        ensure!(count(&["--client", "198.18.0.0/24"])? == 60);
        ensure!(count(&["--client", "198.19.0.0/16"])? == 0);
        let first = &to_vip.conns[0];
        let one = format!("{}:{}", t.client_addr(), first.src_port);
        ensure!(count(&["--client", &one])? == 1);
        for (pod, n) in &want {
            let udp_n = udp_pods.values().filter(|p| *p == pod).count();
            ensure!(count(&["--backend", &pod.to_string()])? == *n as usize + udp_n);
            ensure!(
                count(&["--backend", &format!("{pod}:{POD_PORT}"), "-p", "tcp"])? == *n as usize
            );
        }
        let sorted: Vec<FlowRow> = json(
            t.xlb,
            &["conntrack", "list", "-o", "json", "--sort", "client"],
        )?;
        let ports: Vec<u16> = sorted.iter().map(|f| f.client_port).collect();
        ensure!(
            ports.windows(2).all(|w| w[0] <= w[1]),
            "not sorted by client: {ports:?}"
        );
        let table = t.xlb.cli(&["conntrack", "list", "--client", &one])?;
        ensure!(table.contains(&one) && table.contains("1 flows"), "{table}");

        // xlb stats: one new flow per connection and datagram; every forwarded packet counted.
        let stats1 = t.xlb.stats()?;
        let delta = |name: &str| stats1.counters[name] - stats0.counters[name];
        ensure!(
            delta("conntrack_new") == 60,
            "conntrack_new grew by {}",
            delta("conntrack_new")
        );
        let forwarded: u64 = doc
            .services
            .iter()
            .flat_map(|s| &s.frontends)
            .map(|f| f.packets)
            .sum();
        ensure!(
            delta("forward_local") == forwarded,
            "forward_local grew by {}, the frontends counted {forwarded}",
            delta("forward_local")
        );
        ensure!(stats1.rates.is_none(), "rates without --interval");

        // Rates over an interval while datagrams flow.
        let sent = std::thread::scope(|s| -> Result<StatsOutput> {
            let sender = s.spawn(|| -> Result<()> {
                for _ in 0..30 {
                    udp_request(client, vip, None, IO_TIMEOUT)?;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(())
            });
            std::thread::sleep(Duration::from_millis(200));
            let r = json(t.xlb, &["stats", "--interval", "1", "-o", "json"]);
            sender.join().expect("sender thread")?;
            r
        })?;
        let rates = sent.rates.context("rates")?;
        let rate = rates["forward_local"];
        ensure!(
            rate > 1.0,
            "forward_local rate {rate} while sending ~20 datagrams/s"
        );
        let interval = sent.interval_s.context("interval_s")?;
        ensure!((0.9..3.0).contains(&interval), "interval_s = {interval}");
        ensure!(rates["drop_no_backend"] == 0.0);
        let human = t.xlb.cli(&["stats"])?;
        ensure!(
            human.contains("conntrack_new") && human.contains("dropped"),
            "{human}"
        );

        // maglev show: the live table is the one Maglev predicts for these backends.
        let status = t.wait_programmed("http", &t.web.ready_addrs())?;
        let predicted = status.maglev()?;
        let mg: MaglevOutput = json(t.xlb, &["maglev", "show", &http, "--slots", "-o", "json"])?;
        ensure!(mg.services.len() == 1);
        let view = &mg.services[0];
        let m = status.table_size;
        ensure!(view.table_size == m);
        ensure!(view.empty_slots == 0);
        let slots = view.table.as_ref().context("table")?;
        ensure!(slots.len() == m as usize);
        let mut per_backend: BTreeMap<String, u64> = BTreeMap::new();
        for (i, s) in slots.iter().enumerate() {
            let want = predicted
                .table()
                .backend_at(i as u32)
                .map(|b| format!("{}:{POD_PORT}", b.ipv4()));
            ensure!(
                *s == want,
                "slot {i}: xlb shows {s:?}, Maglev predicts {want:?}"
            );
            *per_backend.entry(want.unwrap()).or_default() += 1;
        }
        for b in &view.backends {
            let name = format!("{}:{}", b.addr.context("addr")?, b.port.context("port")?);
            ensure!(b.slots as u64 == per_backend[&name], "{b:?}");
            ensure!((b.ideal_share - 1.0 / 3.0).abs() < 1e-9);
        }
        let imbalance = view.max_over_ideal;
        ensure!(
            (1.0..1.01).contains(&imbalance),
            "Maglev imbalance {imbalance}"
        );
        let both: MaglevOutput = json(t.xlb, &["maglev", "show", "web", "-o", "json"])?;
        ensure!(both.services.len() == 2);
        let human = t.xlb.cli(&["maglev", "show", &http])?;
        ensure!(
            human.contains("imbalance") && human.contains(&format!("M={m}")),
            "{human}"
        );
        let err = xlb_cli(t.lab.host("node-a"), &["maglev", "show", "nosuch"])?;
        ensure!(!err.status.success());
        ensure!(String::from_utf8_lossy(&err.stderr).contains("no Service port matches"));
        Ok(())
    });
}

/// Entries of a pinned map, by `bpftool map dump`.
fn map_entries(pin_dir: &Path, map: &str) -> Result<usize> {
    let path = pin_dir.join("maps").join(map);
    let mut cmd = Command::new("bpftool");
    cmd.args(["-j", "map", "dump", "pinned"]).arg(&path);
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
        .context("running bpftool (scripts/setup.sh installs it)")?;
    ensure!(
        out.status.success(),
        "bpftool map dump {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array().context("bpftool printed no array")?.len())
}

/// Entries of a pinned map as `(key, value)` bytes, by `bpftool map dump`.
fn map_dump(pin_dir: &Path, map: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = pin_dir.join("maps").join(map);
    let mut cmd = Command::new("bpftool");
    cmd.args(["-j", "map", "dump", "pinned"]).arg(&path);
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)?;
    ensure!(
        out.status.success(),
        "bpftool map dump {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let bytes = |v: &Value| -> Result<Vec<u8>> {
        v.as_array()
            .context("not hex bytes")?
            .iter()
            .map(|b| {
                let s = b.as_str().context("not a hex byte")?;
                Ok(u8::from_str_radix(s.trim_start_matches("0x"), 16)?)
            })
            .collect()
    };
    v.as_array()
        .context("bpftool printed no array")?
        .iter()
        .map(|e| Ok((bytes(&e["key"])?, bytes(&e["value"])?)))
        .collect()
}

/// The running daemon's idle sweep (after each connection census) removes a UDP flow idle past
/// its 300 s timeout, with its reverse-NAT entry, and keeps a flow that is not.
#[test]
fn idle_flows_are_swept() {
    with_local_lab(|t| {
        let node = t.lab.host("node-a");
        let pins = default_pin_dir(node);
        let client = t.lab.client();
        let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
        let (stale, live) = (client.alloc_port(), client.alloc_port());
        for port in [stale, live] {
            udp_request(client, vip, Some(port), IO_TIMEOUT)?;
        }
        ensure!(map_entries(&pins, "XLB_CONNTRACK")? == 2);
        ensure!(map_entries(&pins, "XLB_REVNAT")? == 2);

        // Idle since boot: last_seen_ns (bytes 16..24 of the entry) becomes 0. The clock is
        // CLOCK_MONOTONIC, so that is idle past 300 s only once the machine has been up longer.
        let uptime = || -> Result<f64> {
            let s = std::fs::read_to_string("/proc/uptime")?;
            Ok(s.split_whitespace().next().context("uptime")?.parse()?)
        };
        let deadline = Instant::now() + Duration::from_secs(320);
        while uptime()? < 302.0 {
            ensure!(Instant::now() < deadline, "uptime stays below 302 s");
            std::thread::sleep(Duration::from_secs(1));
        }
        let src_port = |key: &[u8]| u16::from_be_bytes([key[8], key[9]]);
        let (key, mut value) = map_dump(&pins, "XLB_CONNTRACK")?
            .into_iter()
            .find(|(k, _)| src_port(k) == stale)
            .context("no conntrack entry for the flow to age")?;
        value[16..24].fill(0);
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>();
        let path = pins.join("maps").join("XLB_CONNTRACK");
        let mut cmd = Command::new("bpftool");
        cmd.args(["map", "update", "pinned"])
            .arg(&path)
            .arg("key")
            .arg("hex")
            .args(hex(&key))
            .arg("value")
            .arg("hex")
            .args(hex(&value));
        let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "bpftool map update: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // The census sweeps after each walk (every --census-interval, 2 s, on this table).
        let deadline = Instant::now() + Duration::from_secs(25);
        while map_entries(&pins, "XLB_CONNTRACK")? != 1 {
            ensure!(
                Instant::now() < deadline,
                "the idle flow was not swept within 25 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let left = map_dump(&pins, "XLB_CONNTRACK")?;
        ensure!(
            left.iter().all(|(k, _)| src_port(k) == live),
            "the live flow went instead"
        );
        // The reply tuple's destination port is the client's port (bytes 10..12).
        let replies = map_dump(&pins, "XLB_REVNAT")?;
        ensure!(
            replies.len() == 1 && u16::from_be_bytes([replies[0].0[10], replies[0].0[11]]) == live,
            "reverse NAT left: {} entries",
            replies.len()
        );
        Ok(())
    });
}

/// `conntrack flush` asks before removing anything, removes exactly the matching flows and
/// their reverse-NAT entries, and an open connection whose flow was flushed keeps working.
#[test]
fn conntrack_flush_removes_flows_and_reverse_nat() {
    with_local_lab(|t| {
        let node = t.lab.host("node-a");
        let pins = default_pin_dir(node);
        let client = t.lab.client();
        let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
        let report = tcp_many(client, vip, 30, IO_TIMEOUT);
        ensure!(report.failures.is_empty(), "{:?}", report.failures);
        let per_pod = per_pod_addr(t.lab, &[&report]);
        let (&victim, &n) = per_pod.iter().next().context("no pod answered")?;
        ensure!(map_entries(&pins, "XLB_CONNTRACK")? == 30);
        ensure!(map_entries(&pins, "XLB_REVNAT")? == 30);

        // Without --yes and without an answer: refused, one line, nothing removed.
        let out = xlb_cli(
            node,
            &["conntrack", "flush", "--backend", &victim.to_string()],
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "flush without confirmation succeeded"
        );
        let last = stderr.lines().last().unwrap_or("");
        ensure!(
            last.starts_with("xlb: ") && last.contains("--yes"),
            "{stderr:?}"
        );
        ensure!(map_entries(&pins, "XLB_CONNTRACK")? == 30);

        let done: FlushReport = json(
            t.xlb,
            &[
                "conntrack",
                "flush",
                "--backend",
                &victim.to_string(),
                "--yes",
                "-o",
                "json",
            ],
        )?;
        ensure!(
            done.flushed as u64 == n && done.revnat_removed as u64 == n,
            "{done:?}"
        );
        ensure!(map_entries(&pins, "XLB_CONNTRACK")? == 30 - n as usize);
        ensure!(map_entries(&pins, "XLB_REVNAT")? == 30 - n as usize);
        let left: Vec<FlowRow> = json(t.xlb, &["conntrack", "list", "-o", "json"])?;
        ensure!(left.iter().all(|f| f.backend != Some(victim)));

        // Nothing matches: nothing asked, success.
        let none = t
            .xlb
            .cli(&["conntrack", "flush", "--client", "198.19.1.1"])?;
        ensure!(none.contains("no flows match"), "{none}");

        // An open connection survives the flush of its flow: its next packet re-picks the same
        // pod (the table did not change) and the reply is rewritten again.
        let mut conn = connect_tcp(client, vip, None, IO_TIMEOUT)?;
        ensure!(conn.exchange("before flush")? == "before flush");
        let me = format!("{}:{}", t.client_addr(), conn.local.port());
        let done: FlushReport = json(
            t.xlb,
            &["conntrack", "flush", "--client", &me, "-y", "-o", "json"],
        )?;
        ensure!(done.flushed == 1 && done.revnat_removed == 1, "{done:?}");
        ensure!(conn.exchange("after flush")? == "after flush");
        let again: Vec<FlowRow> =
            json(t.xlb, &["conntrack", "list", "--client", &me, "-o", "json"])?;
        ensure!(again.len() == 1, "{again:?}");
        ensure!(again[0].backend == Some(t.pod_addr(&conn.pod)));

        // The other filters, each on flows that only it tells apart: the NodePort's flows by
        // --frontend, UDP flows by --protocol, a Service port by --service, clients by CIDR.
        let tcp_left = 30 - n + 1;
        let np = SocketAddrV4::new(t.node_addr(), WEB_NODE_PORT);
        let to_np = tcp_many(client, np, 5, IO_TIMEOUT);
        ensure!(to_np.failures.is_empty(), "{:?}", to_np.failures);
        for _ in 0..3 {
            udp_request(client, vip, None, IO_TIMEOUT)?;
        }
        let flush = |filter: &[&str]| -> Result<u64> {
            let mut args = vec!["conntrack", "flush", "--yes", "-o", "json"];
            args.extend_from_slice(filter);
            let done: FlushReport = json(t.xlb, &args)?;
            ensure!(done.revnat_removed == done.flushed, "{done:?}");
            Ok(done.flushed as u64)
        };
        let listed = |filter: &[&str]| -> Result<usize> {
            let mut args = vec!["conntrack", "list", "-o", "json"];
            args.extend_from_slice(filter);
            Ok(json::<Vec<FlowRow>>(t.xlb, &args)?.len())
        };
        ensure!(map_entries(&pins, "XLB_CONNTRACK")? == tcp_left as usize + 5 + 3);
        ensure!(flush(&["--frontend", &np.to_string()])? == 5);
        ensure!(listed(&["--frontend", &format!(":{WEB_NODE_PORT}")])? == 0);
        ensure!(flush(&["--protocol", "udp"])? == 3);
        ensure!(listed(&["--protocol", "udp"])? == 0);
        ensure!(listed(&[])? == tcp_left as usize);
        let other_clients =
            t.xlb
                .cli(&["conntrack", "flush", "--yes", "--client", "198.18.2.0/24"])?;
        ensure!(other_clients.contains("no flows match"), "{other_clients}");
        let no_port = t.xlb.cli(&[
            "conntrack",
            "flush",
            "--yes",
            "--service",
            &t.web.port_key("udp"),
        ])?;
        ensure!(no_port.contains("no flows match"), "{no_port}");
        ensure!(map_entries(&pins, "XLB_CONNTRACK")? == tcp_left as usize);

        // Flush everything (all of it this client's, in the web Service's http port).
        let all: FlushReport = json(
            t.xlb,
            &[
                "conntrack",
                "flush",
                "--yes",
                "-o",
                "json",
                "--client",
                "198.18.0.0/24",
                "--service",
                &t.web.port_key("http"),
            ],
        )?;
        ensure!(all.flushed as u64 == tcp_left, "{all:?}");
        ensure!(map_entries(&pins, "XLB_CONNTRACK")? == 0);
        ensure!(map_entries(&pins, "XLB_REVNAT")? == 0);
        Ok(())
    });
}

/// Kills a child process we started when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `timeout` for lines from `rx` until `done` accepts the collected ones.
fn collect_until(
    rx: &mpsc::Receiver<String>,
    timeout: Duration,
    got: &mut Vec<WatchEvent>,
    mut done: impl FnMut(&[WatchEvent]) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done(got) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => got.push(serde_json::from_str(&line).with_context(|| line.clone())?),
            Err(_) => bail!("timed out after {timeout:?}; events so far: {got:?}"),
        }
    }
    Ok(())
}

/// `conntrack watch -o json` streams a `new` event per connection and an `end` event per flow
/// that leaves the table.
#[test]
fn conntrack_watch_streams_new_and_ended_flows() {
    with_local_lab(|t| {
        let node = t.lab.host("node-a");
        let vip80 = format!("{}:{WEB_PORT}", t.vip());
        let mut cmd = node.netns().command(xlb_binary()?);
        cmd.args(["conntrack", "watch", "-o", "json", "--interval", "0.2"])
            .args(["--duration", "60", "--frontend", &vip80])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(cmd.spawn().context("starting conntrack watch")?);
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut events = Vec::new();
        collect_until(&rx, Duration::from_secs(10), &mut events, |e| !e.is_empty())?;
        ensure!(
            matches!(events[0], WatchEvent::Start { flows: 0, .. }),
            "{events:?}"
        );

        let report = tcp_many(
            t.lab.client(),
            SocketAddrV4::new(t.vip(), WEB_PORT),
            5,
            IO_TIMEOUT,
        );
        ensure!(report.failures.is_empty());
        // Traffic to the NodePort is outside the filter.
        let np = SocketAddrV4::new(t.node_addr(), WEB_NODE_PORT);
        ensure!(
            tcp_many(t.lab.client(), np, 2, IO_TIMEOUT)
                .failures
                .is_empty()
        );
        let new_flows = |e: &[WatchEvent]| -> Vec<(f64, FlowRow)> {
            e.iter()
                .filter_map(|e| match e {
                    WatchEvent::New { time, flow } => Some((*time, flow.clone())),
                    _ => None,
                })
                .collect()
        };
        let news = |e: &[WatchEvent]| new_flows(e).len();
        collect_until(&rx, Duration::from_secs(10), &mut events, |e| news(e) >= 5)?;
        let mut seen = BTreeSet::new();
        for (time, f) in new_flows(&events) {
            let c = report
                .conns
                .iter()
                .find(|c| f.client_port == c.src_port)
                .with_context(|| format!("unexpected new flow {f:?}"))?;
            ensure!(f.backend == Some(t.pod_addr(&c.pod)), "{f:?}");
            ensure!(f.frontend == t.vip() && time > 0.0);
            seen.insert(c.src_port);
        }
        ensure!(seen.len() == 5);

        t.xlb
            .cli(&["conntrack", "flush", "--frontend", &vip80, "--yes"])?;
        let ended = |e: &[WatchEvent]| -> BTreeSet<u16> {
            e.iter()
                .filter_map(|e| match e {
                    WatchEvent::End { flow, .. } => Some(flow.client_port),
                    _ => None,
                })
                .collect()
        };
        collect_until(&rx, Duration::from_secs(10), &mut events, |e| {
            ended(e).len() >= 5
        })?;
        ensure!(ended(&events) == seen, "{events:?}");
        ensure!(
            news(&events) == 5,
            "the NodePort flows passed the filter: {events:?}"
        );
        Ok(())
    });
}

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Tmux {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Tmux {
            socket: format!("xlb-e2e-{}-{n}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT).context("running tmux")?;
        ensure!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The row of frontend `name` in `xlb top`'s screen, split into columns.
fn top_row(screen: &str, name: &str) -> Option<Vec<String>> {
    screen
        .lines()
        .find(|l| l.starts_with(name))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
}

/// `xlb top` in a terminal: frontends, backends and drops on screen, rates while traffic
/// flows, the connection count matching the connections made; `q` quits and restores the
/// terminal.
#[test]
fn top_shows_live_traffic_and_quits_with_q() {
    with_local_lab(|t| {
        let node = t.lab.host("node-a");
        let tmux = Tmux::new();
        let cmd = format!(
            "nsenter --net={} -- {} top --interval 0.3; echo xlb-top-exit=$?; sleep 60",
            node.netns().path().display(),
            xlb_binary()?.display()
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "220",
            "-y",
            "50",
            &cmd,
        ])?;
        let vip80 = format!("{}:{WEB_PORT}", t.vip());
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut screen = tmux.screen()?;
        while top_row(&screen, &vip80).is_none() {
            ensure!(
                Instant::now() < deadline,
                "xlb top never showed {vip80}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
            screen = tmux.screen()?;
        }
        ensure!(
            screen.contains("xlb top") && screen.contains("q quits"),
            "{screen}"
        );
        ensure!(screen.contains(&format!("*:{WEB_NODE_PORT}")), "{screen}");
        ensure!(
            screen.contains("TOP BACKENDS") && screen.contains("DROPS"),
            "{screen}"
        );
        for pod in t.web.ready_addrs() {
            ensure!(
                screen.contains(&format!("{pod}:{POD_PORT}")),
                "{pod} missing:\n{screen}"
            );
        }

        // Traffic for about three seconds; some frame in between shows a packet rate.
        let client = t.lab.client();
        let vip = SocketAddrV4::new(t.vip(), WEB_PORT);
        let mut saw_rate = None;
        let mut made = 0;
        std::thread::scope(|s| -> Result<()> {
            let traffic = s.spawn(|| -> Result<usize> {
                let mut n = 0;
                for _ in 0..40 {
                    let c = connect_tcp(client, vip, None, IO_TIMEOUT)?;
                    drop(c);
                    n += 1;
                    std::thread::sleep(Duration::from_millis(75));
                }
                Ok(n)
            });
            while !traffic.is_finished() {
                let screen = tmux.screen()?;
                if let Some(row) = top_row(&screen, &vip80)
                    && row.len() >= 10
                    && row[4] != "-"
                    && row[4] != "0"
                {
                    saw_rate = Some(screen.clone());
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            made = traffic.join().expect("traffic thread")?;
            Ok(())
        })?;
        ensure!(made == 40);
        let rate_screen = saw_rate.context("no frame showed a packet rate for the VIP")?;
        eprintln!("xlb top while traffic flowed:\n{rate_screen}");
        let row = top_row(&rate_screen, &vip80).unwrap();
        ensure!(row[1] == "TCP" && row[2] == "LoadBalancer", "{row:?}");

        // Once the traffic stopped: CONNS and PACKETS equal what `xlb services` counts.
        let doc = t.xlb.services_counted_after(unix_now(), CENSUS_TIMEOUT)?;
        let fe = frontend(
            service(&doc, &t.web.port_key("http"))?,
            Some(t.vip()),
            WEB_PORT,
        )?;
        // Closed connections are not active.
        ensure!(fe.connections == 0);
        let want = (fe.connections.to_string(), fe.packets.to_string());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = tmux.screen()?;
            let row = top_row(&screen, &vip80).context("row gone")?;
            if (row[7].clone(), row[8].clone()) == want && row[4] == "0" {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "top shows CONNS {} PACKETS {} PKT/s {}, xlb services {want:?}:\n{screen}",
                row[7],
                row[8],
                row[4]
            );
            std::thread::sleep(Duration::from_millis(200));
        }

        tmux.run(&["send-keys", "-t", "top", "q"])?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let screen = tmux.screen()?;
            if screen.contains("xlb-top-exit=") {
                ensure!(screen.contains("xlb-top-exit=0"), "{screen}");
                ensure!(
                    !screen.contains("TOP BACKENDS"),
                    "the view is still on screen after quitting:\n{screen}"
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "xlb top did not quit on q:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    });
}

/// A GET from inside `host`'s namespace; returns (status, headers, body).
fn http_get(host: &Host, port: u16, path: &str, accept: &str) -> Result<(u16, String, String)> {
    let stream = host.netns().run(move || {
        let s = TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )?;
        Ok(s)
    })?;
    let mut stream = stream;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\n\r\n"
    )?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((code, head.to_string(), body.to_string()))
}

/// One sample of the exposition: name, labels, value.
type Samples = Vec<(String, BTreeMap<String, String>, f64)>;

/// Parses the Prometheus text format, checking that every sample belongs to a family with HELP
/// and TYPE and that counters are named `..._total`.
fn parse_exposition(text: &str) -> Result<Samples> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helps.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (n, k) = rest.split_once(' ').context("TYPE line")?;
            ensure!(
                types.insert(n.into(), k.into()).is_none(),
                "family {n} twice"
            );
            continue;
        }
        ensure!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').context("sample without value")?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().with_context(|| format!("value in {line:?}"))?,
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                let l = l.strip_suffix('}').context("unclosed labels")?;
                let mut m = BTreeMap::new();
                for pair in l.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").context("label")?;
                    m.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (n.to_string(), m)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        ensure!(
            name.starts_with("xlb_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "metric name {name}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        let kind = types
            .get(&family)
            .with_context(|| format!("{name} has no TYPE"))?;
        ensure!(helps.contains(&family), "{name} has no HELP");
        ensure!(
            (kind == "counter") == family.ends_with("_total"),
            "{family} is a {kind}: counters, and only counters, end in _total"
        );
        out.push((name, labels, value));
    }
    Ok(out)
}

/// The value of `name` whose labels include `labels`.
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.2)
        .with_context(|| format!("no {name} {labels:?}"))
}

fn total(samples: &Samples, name: &str) -> f64 {
    samples.iter().filter(|s| s.0 == name).map(|s| s.2).sum()
}

const METRICS_PORT: u16 = 9464;

/// Metrics the alerts query that another change of issue 11 (item 1: the drivers' XDP error
/// counters) adds to `/metrics`; empty once it is in.
const NOT_YET_SERVED: [&str; 1] = ["xlb_iface_xdp_errors_total"];

/// The `xlb_*` metric names a dashboard or rule file queries.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("xlb_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        // A prefix in prose ("xlb_..."), not a metric.
        if !name.ends_with('_') {
            names.insert(name);
        }
    }
    names
}

fn scrape(host: &Host) -> Result<Samples> {
    let (code, _, body) = http_get(host, METRICS_PORT, "/metrics", "text/plain")?;
    ensure!(code == 200, "/metrics answered {code}: {body}");
    parse_exposition(&body)
}

/// `xlb run --metrics-addr --log-format json`: not ready while the config is broken (but
/// healthy), ready after the first full programming; the metrics move with the traffic; every
/// log line is a JSON object, with the config error and the programming logged once.
#[test]
fn metrics_probes_and_json_logs() {
    let lab = Lab::single_node().expect("lab");
    let _servers = PodServers::start(&lab, POD_PORT).expect("servers");
    let node = lab.host("node-a");
    // One file, replaced atomically when fixed: no reload can see half a fix.
    let manifests = ManifestDir::create(lab.workdir().join("manifests")).expect("manifests");
    let broken = "apiVersion: v1\nkind: Service\nmetadata: [oops\n";
    manifests.write_file("all.yaml", broken).expect("manifest");
    let mut opts = xlb_options(&manifests);
    opts.manifests = manifests.path().join("all.yaml");
    opts.extra_args.extend(
        [
            "--metrics-addr",
            &format!("127.0.0.1:{METRICS_PORT}"),
            "--log-format",
            "json",
        ]
        .map(String::from),
    );
    let mut xlb = XlbProcess::start(&lab, &opts).expect("xlb");
    let result = (|| -> Result<()> {
        // Healthy, and the broken config tried (and refused) once.
        let deadline = Instant::now() + PROGRAM_TIMEOUT;
        loop {
            let healthy = http_get(node, METRICS_PORT, "/healthz", "*/*");
            if let Ok((200, _, _)) = healthy
                && value(&scrape(node)?, "xlb_reconcile_errors_total", &[])? >= 1.0
            {
                break;
            }
            ensure!(
                Instant::now() < deadline && xlb.try_exit().is_none(),
                "/healthz never answered 200 after a refused config: {healthy:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (code, _, body) = http_get(node, METRICS_PORT, "/readyz", "*/*")?;
        ensure!(code == 503, "/readyz with a broken config: {code} {body}");
        let m = scrape(node)?;
        ensure!(value(&m, "xlb_ready", &[])? == 0.0);
        ensure!(value(&m, "xlb_config_generation", &[])? == 0.0);
        ensure!(value(&m, "xlb_reconcile_errors_total", &[])? == 1.0);
        let (code, _, _) = http_get(node, METRICS_PORT, "/nope", "*/*")?;
        ensure!(code == 404);

        // Fix the config: ready once programmed.
        let web = ServiceDef::web(lab.spec());
        let mut fixed = web.to_yaml();
        for n in ManifestSet::nodes_of(lab.spec()) {
            fixed.push_str("---\n");
            fixed.push_str(&n.to_yaml());
        }
        manifests.write_file("all.yaml", &fixed)?;
        let fe = [(Some(DEFAULT_VIP), WEB_PORT), (None, WEB_NODE_PORT)];
        xlb.wait_for_service(
            &web.port_key("http"),
            &fe,
            &web.ready_addrs(),
            PROGRAM_TIMEOUT,
        )?;
        let deadline = Instant::now() + PROGRAM_TIMEOUT;
        while http_get(node, METRICS_PORT, "/readyz", "*/*")?.0 != 200 {
            ensure!(Instant::now() < deadline, "/readyz never became 200");
            std::thread::sleep(Duration::from_millis(200));
        }

        let http = web.port_key("http");
        let vip_fe: [(&str, &str); 3] = [
            ("service", &http),
            ("frontend", "198.19.255.1:80"),
            ("kind", "LoadBalancer"),
        ];
        let m1 = scrape(node)?;
        ensure!(value(&m1, "xlb_ready", &[])? == 1.0);
        ensure!(value(&m1, "xlb_config_generation", &[])? >= 1.0);
        ensure!(value(&m1, "xlb_reconcile_duration_seconds_count", &[])? >= 1.0);
        ensure!(
            value(
                &m1,
                "xlb_reconcile_duration_seconds_bucket",
                &[("le", "+Inf")]
            )? >= 1.0
        );
        ensure!(
            value(
                &m1,
                "xlb_reconcile_changes_total",
                &[("change", "tables_swapped")]
            )? >= 2.0
        );
        ensure!(value(&m1, "xlb_service_ports", &[])? == 2.0);
        ensure!(value(&m1, "xlb_build_info", &[])? == 1.0);
        ensure!(value(&m1, "xlb_conntrack_capacity", &[])? > 0.0);
        ensure!(
            value(
                &m1,
                "xlb_dropped_packets_total",
                &[("reason", "drop_no_backend")]
            )? == 0.0
        );

        let report = tcp_many(
            lab.client(),
            SocketAddrV4::new(DEFAULT_VIP, WEB_PORT),
            25,
            IO_TIMEOUT,
        );
        ensure!(report.failures.is_empty(), "{:?}", report.failures);
        // The connection gauges come from xlb run's census: wait for one that started after
        // the traffic.
        let sent = unix_now();
        let deadline = Instant::now() + CENSUS_TIMEOUT;
        let m2 = loop {
            let m = scrape(node)?;
            let started = value(&m, "xlb_conntrack_census_timestamp_seconds", &[]).unwrap_or(0.0)
                - value(&m, "xlb_conntrack_census_duration_seconds", &[]).unwrap_or(0.0);
            if started >= sent {
                break m;
            }
            ensure!(Instant::now() < deadline, "no census after the traffic");
            std::thread::sleep(Duration::from_millis(200));
        };
        ensure!(value(&m2, "xlb_conntrack_census_walks_total", &[])? >= 1.0);
        ensure!(value(&m2, "xlb_conntrack_census_cpu_seconds_total", &[])? > 0.0);
        let d = |name: &str, labels: &[(&str, &str)]| -> Result<f64> {
            Ok(value(&m2, name, labels)? - value(&m1, name, labels)?)
        };
        let pk = d("xlb_frontend_packets_total", &vip_fe)?;
        ensure!(pk >= 75.0, "25 connections moved the VIP's packets by {pk}");
        ensure!(d("xlb_frontend_bytes_total", &vip_fe)? >= pk * 54.0);
        // All 25 connections closed: none active, all still in the table.
        ensure!(value(&m2, "xlb_frontend_connections", &vip_fe)? == 0.0);
        ensure!(value(&m2, "xlb_conntrack_active", &[])? == 0.0);
        ensure!(d("xlb_frontend_new_flows_total", &vip_fe)? == 25.0);
        ensure!(
            total(&m2, "xlb_backend_new_flows_total") - total(&m1, "xlb_backend_new_flows_total")
                == 25.0
        );
        ensure!(value(&m2, "xlb_conntrack_entries", &[])? == 25.0);
        let fe_all =
            total(&m2, "xlb_frontend_packets_total") - total(&m1, "xlb_frontend_packets_total");
        let be_all =
            total(&m2, "xlb_backend_packets_total") - total(&m1, "xlb_backend_packets_total");
        ensure!(
            fe_all == pk && be_all == pk,
            "frontends {fe_all}, backends {be_all}, VIP {pk}"
        );
        ensure!(d("xlb_datapath_events_total", &[("reason", "forward_local")])? == pk);
        ensure!(d("xlb_datapath_events_total", &[("reason", "conntrack_new")])? == 25.0);
        let mut per_pod: BTreeMap<String, f64> = BTreeMap::new();
        for c in &report.conns {
            let addr = lab
                .spec()
                .pods()
                .find(|(_, p)| p.name == c.pod)
                .unwrap()
                .1
                .addr;
            *per_pod.entry(format!("{addr}:{POD_PORT}")).or_default() += 1.0;
        }
        for (backend, n) in &per_pod {
            let l = [("backend", backend.as_str()), ("protocol", "TCP")];
            ensure!(
                value(&m2, "xlb_backend_connections", &l)? == 0.0,
                "{backend}"
            );
            ensure!(d("xlb_backend_packets_total", &l)? >= 3.0 * n);
            let slots = value(
                &m2,
                "xlb_backend_slots",
                &[("backend", backend.as_str()), ("service", http.as_str())],
            )?;
            ensure!(slots > 0.0);
        }

        // Every metric the Grafana dashboard and the alerts query is served.
        let served: BTreeSet<&str> = m2.iter().map(|s| s.0.as_str()).collect();
        for name in metric_names(include_str!("../deploy/grafana-dashboard.json")) {
            ensure!(
                served.contains(name.as_str()),
                "the dashboard queries {name}, not served"
            );
        }
        let rules = include_str!("../deploy/monitoring/prometheusrule.yaml");
        ensure!(metric_names(rules).len() >= 7, "{rules}");
        for name in metric_names(rules) {
            ensure!(
                served.contains(name.as_str()) || NOT_YET_SERVED.contains(&name.as_str()),
                "the alerts query {name}, not served"
            );
        }

        // OpenMetrics when asked for.
        let (code, head, body) = http_get(
            node,
            METRICS_PORT,
            "/metrics",
            "application/openmetrics-text; version=1.0.0",
        )?;
        ensure!(
            code == 200 && head.contains("application/openmetrics-text"),
            "{head}"
        );
        ensure!(body.ends_with("# EOF\n") && body.contains("# TYPE xlb_frontend_packets counter"));

        // The idle sweep after each census removes the 25 closed flows once their close
        // timeout passed, and a pod taken out of the Service is released once a census that
        // began after it left finds no flow to it: the run loop walks no table for either.
        let mut less = web.clone().without_pod("pod-3").to_yaml();
        for n in ManifestSet::nodes_of(lab.spec()) {
            less.push_str("---\n");
            less.push_str(&n.to_yaml());
        }
        manifests.write_file("all.yaml", &less)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = scrape(node)?;
            let expired = value(&m, "xlb_conntrack_expired_total", &[])?;
            let released = value(&m, "xlb_backends_released_total", &[])?;
            let draining = value(&m, "xlb_backends_draining", &[])?;
            if expired == 25.0 && released >= 1.0 && draining == 0.0 {
                ensure!(value(&m, "xlb_conntrack_entries", &[])? == 0.0);
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "after 60 s: {expired} flows expired, {released} backends released, {draining} draining"
            );
            std::thread::sleep(Duration::from_millis(500));
        }

        // Logs: all JSON; the broken file's error once, then the programming with its context.
        let log = std::fs::read_to_string(xlb.log_path())?;
        let lines: Vec<Value> = log
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("log line {l:?} is not JSON")))
            .collect::<Result<_>>()?;
        ensure!(
            lines
                .iter()
                .all(|l| l["level"].is_string() && l["timestamp"].is_string())
        );
        let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
        ensure!(
            errors.len() == 1,
            "the config error was logged {} times: {log}",
            errors.len()
        );
        ensure!(
            errors[0]["error"]
                .as_str()
                .unwrap_or("")
                .contains("all.yaml"),
            "{log}"
        );
        let programmed = lines
            .iter()
            .find(|l| l["message"] == "programmed")
            .with_context(|| format!("no `programmed` event: {log}"))?;
        ensure!(
            programmed["generation"] == 1 && programmed["service_ports"] == 2,
            "{programmed}"
        );
        ensure!(programmed["tables_swapped"] == 2, "{programmed}");
        ensure!(
            lines
                .iter()
                .any(|l| l["message"] == "attached" && l["iface"] == UPLINK)
        );
        Ok(())
    })();
    if let Err(e) = result {
        panic!("{e:#}\n--- xlb log ---\n{}", xlb.log_tail(4000));
    }
}

/// Without a datapath, every inspection command fails with one clear line; so does a CLI that
/// cannot see bpffs.
#[test]
fn commands_without_a_datapath_fail_with_one_line() {
    let lab = Lab::single_node().expect("lab");
    let node = lab.host("node-a");
    let commands: [&[&str]; 11] = [
        &["services"],
        &["services", "-o", "json"],
        &["conntrack", "list"],
        &["conntrack", "list", "--frontend", "198.19.255.1:80"],
        &["conntrack", "watch", "--duration", "1"],
        &["conntrack", "flush", "--yes"],
        &["stats"],
        &["stats", "--interval", "0.1", "-o", "yaml"],
        &["maglev", "show", "web"],
        &["top"],
        &["top", "--interval", "0.5"],
    ];
    let check = |out: &std::process::Output, args: &[&str], want: &str| {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!out.status.success(), "`xlb {}` succeeded", args.join(" "));
        assert!(
            out.stdout.is_empty(),
            "`xlb {}` printed {:?}",
            args.join(" "),
            out.stdout
        );
        assert_eq!(lines.len(), 1, "`xlb {}`: {stderr:?}", args.join(" "));
        assert!(
            lines[0].starts_with("xlb: ") && lines[0].contains(want),
            "`xlb {}`: {stderr:?}",
            args.join(" ")
        );
    };
    for args in commands {
        let out = xlb_cli(node, args).expect("running xlb");
        check(&out, args, "no xlb datapath in this network namespace");
        let mut with_pin: Vec<&str> = args.to_vec();
        with_pin.extend(["--pin-dir", "/tmp/xlb-e2e-not-bpffs"]);
        let out = xlb_cli(node, &with_pin).expect("running xlb");
        check(&out, &with_pin, "not on a BPF filesystem");
    }
    // `ip netns exec` remounts /sys, which hides bpffs: said so, in one line.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.ns_name()])
        .arg(xlb_binary().unwrap())
        .arg("services");
    let out = run_with_timeout(&mut cmd, COMMAND_TIMEOUT).expect("ip netns exec");
    check(
        &out,
        &["services (ip netns exec)"],
        "not on a BPF filesystem",
    );
}
