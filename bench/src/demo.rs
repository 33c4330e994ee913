//! `xlb-bench demo`: the multi-node DSR lab with xlb on every node, TCP and UDP traffic to the
//! VIP and to each edge's NodePort, and what the pods, the captures on the edges' links and the
//! datapaths saw. Each step prints its section and says whether it went as it should.
//! Everything the demo builds is torn down when [`run`] returns (the locals' destructors), also
//! on error or Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::lab::{self, *};
use crate::say;

pub struct DemoOptions {
    /// Connections to the VIP, and again to each edge's NodePort; UDP requests to the VIP.
    pub connections: u16,
    /// XDP attach mode passed to `xlb run`.
    pub xdp_mode: String,
    /// Per-connection timeout.
    pub timeout: Duration,
}

/// Runs the demo; `Ok(false)` when traffic misbehaved.
pub fn run(opts: &DemoOptions) -> Result<bool> {
    lab::install_interrupt_handler();
    let bin = xlb_binary()?;
    say!("== building the DSR lab (network namespaces, 198.18.0.0/15 only)");
    let lab = Lab::dsr()?;
    show_lab(&lab);
    let servers = PodServers::start(&lab, POD_PORT)?;
    let set = ManifestSet::web(lab.spec());
    let manifests = lab.write_manifests(&set)?;
    let mut xlb = start_xlb(&lab, &bin, manifests.path(), &opts.xdp_mode)?;
    let traffic = Traffic::new(&lab, &mut xlb, &set.services[0], opts)?;
    show_xdp_modes(&lab);
    let mut captures = start_captures(&lab);

    let mut ok = traffic.tcp_to_every_entry_point()?;
    ok &= traffic.udp_to_the_vip()?;
    ok &= traffic.move_a_connection()?;
    ok &= show_what_the_pods_saw(&lab, &servers);
    ok &= show_direct_server_return(&lab, &mut captures);
    show_counters(&xlb);
    show_services(&xlb);

    say!("== tearing down");
    drop(captures);
    let exits = xlb.stop();
    drop(xlb); // xlb down on every node
    drop(servers);
    let left = lab.close();
    ok &= check_torn_down(&left, exits);
    say!(
        "{}",
        if ok {
            "demo: OK"
        } else {
            "demo: some connections misbehaved"
        }
    );
    Ok(ok)
}

/// Prints the hosts, their addresses and namespaces, and how the VIP is routed.
fn show_lab(lab: &Lab) {
    let spec = lab.spec();
    let edges: Vec<&str> = spec.edges().map(|n| n.name.as_str()).collect();
    let client = lab.client();
    say!(
        "   {:<7} {:<13} ns {}",
        "client",
        client.addr(),
        client.ns_name()
    );
    for n in &spec.nodes {
        let role = if n.edge {
            "edge: next hop for the VIP".to_string()
        } else {
            let pods: Vec<String> = n
                .pods
                .iter()
                .map(|p| format!("{} {}", p.name, p.addr))
                .collect();
            format!("pods {}", pods.join(", "))
        };
        say!(
            "   {:<7} {:<13} ns {}  ({role})",
            n.name,
            n.addr,
            lab.host(&n.name).ns_name()
        );
    }
    say!(
        "   one fabric bridge; the client routes {} over {} (ECMP, L4 hash); nobody routes the pods",
        spec.vips[0],
        edges.join(" and ")
    );
}

fn start_xlb<'lab>(
    lab: &'lab Lab,
    bin: &Path,
    manifests: &Path,
    xdp_mode: &str,
) -> Result<XlbCluster<'lab>> {
    say!(
        "== starting {} run on every node (same manifests: {})",
        bin.display(),
        manifests.display()
    );
    XlbCluster::start(lab, manifests, &["--xdp-mode".into(), xdp_mode.into()])
}

/// The XDP mode each node's uplink runs in, as `ip link` shows it.
fn show_xdp_modes(lab: &Lab) {
    let modes: Vec<String> = lab
        .spec()
        .nodes
        .iter()
        .map(|n| {
            let link = lab
                .host(&n.name)
                .netns()
                .ip(&["link", "show", UPLINK])
                .unwrap_or_default();
            let mode = if link.contains("xdpgeneric") {
                "generic"
            } else if link.contains(" xdp") {
                "native"
            } else {
                "none?"
            };
            format!("{} {mode}", n.name)
        })
        .collect();
    say!("   XDP on {UPLINK}: {}", modes.join(", "));
}

/// Captures on the edges' links (their bridge ports): the replies must not pass there.
fn start_captures(lab: &Lab) -> Vec<(String, Capture<'_>)> {
    let mut captures = Vec::new();
    for e in lab.spec().edges() {
        let port = lab.fabric_port(&e.name).expect("bridge lab");
        match Capture::start(lab, "fabric", port, "ip") {
            Ok(c) => captures.push((e.name.clone(), c)),
            Err(e) => say!("   note: no capture ({e:#}); is tcpdump installed?"),
        }
    }
    captures
}

/// The client's traffic, checked against the Maglev tables xlb programmed.
struct Traffic<'a> {
    lab: &'a Lab,
    client: Ipv4Addr,
    vip: Ipv4Addr,
    edges: Vec<String>,
    /// Service port key (`http`, `udp`) → its Maglev table as xlb reports it.
    tables: BTreeMap<String, Predictor>,
    http: String,
    udp: String,
    n: usize,
    timeout: Duration,
}

impl<'a> Traffic<'a> {
    /// Waits until every node programmed both ports of `svc`, and keeps their tables.
    fn new(
        lab: &'a Lab,
        xlb: &mut XlbCluster<'_>,
        svc: &ServiceDef,
        opts: &DemoOptions,
    ) -> Result<Traffic<'a>> {
        let spec = lab.spec();
        let vip = spec.vips[0];
        let (http, udp) = (svc.port_key("http"), svc.port_key("udp"));
        let frontends = [(Some(vip), WEB_PORT), (None, WEB_NODE_PORT)];
        let mut tables = BTreeMap::new();
        for key in [&http, &udp] {
            let views = xlb
                .wait_for_service(key, &frontends, &svc.ready_addrs(), Duration::from_secs(30))
                .context("xlb did not program the demo Service on every node")?;
            let (_, status) = views.into_iter().next().expect("four nodes");
            say!(
                "   {key}: programmed on all {} nodes, identical Maglev tables (M={})",
                spec.nodes.len(),
                status.table_size
            );
            tables.insert(key.clone(), status.maglev()?);
        }
        Ok(Traffic {
            lab,
            client: lab.client().addr(),
            vip,
            edges: spec.edges().map(|n| n.name.clone()).collect(),
            tables,
            http,
            udp,
            n: opts.connections as usize,
            timeout: opts.timeout,
        })
    }

    /// The pod the table of port `key` picks for a flow from the client's `port` to `dst`.
    fn predict(&self, key: &str, port: u16, dst: SocketAddrV4) -> Option<String> {
        self.tables[key]
            .backend(self.client, port, *dst.ip(), dst.port())
            .and_then(|a| self.lab.pod_name(a))
            .map(str::to_string)
    }

    /// `n` TCP connections to the VIP, then to each edge's NodePort.
    fn tcp_to_every_entry_point(&self) -> Result<bool> {
        let mut entry_points = vec![(
            format!("LoadBalancer VIP (ECMP over {})", self.edges.join(", ")),
            SocketAddrV4::new(self.vip, WEB_PORT),
        )];
        for e in &self.edges {
            entry_points.push((
                format!("NodePort of {e}"),
                SocketAddrV4::new(self.lab.node_addr(e), WEB_NODE_PORT),
            ));
        }
        let mut ok = true;
        for (label, dst) in &entry_points {
            lab::check_interrupted()?;
            ok &= self.tcp_to(label, *dst);
        }
        Ok(ok)
    }

    /// `n` TCP connections to `dst`: every one completes, on the predicted pod, which sees the
    /// client's own address.
    fn tcp_to(&self, label: &str, dst: SocketAddrV4) -> bool {
        let n = self.n;
        say!(
            "== {n} TCP connections from {} to the {label}: {dst}",
            self.client
        );
        let report = connections(self.lab, dst, n, self.timeout);
        let (mut mispredicted, mut wrong_client) = (0, 0);
        let mut via: BTreeMap<String, usize> = BTreeMap::new();
        for c in &report.conns {
            if self.predict(&self.http, c.src_port, dst).as_deref() != Some(c.pod.as_str()) {
                mispredicted += 1;
            }
            if c.seen != SocketAddrV4::new(self.client, c.src_port) {
                wrong_client += 1;
            }
            if *dst.ip() == self.vip {
                *via.entry(self.entry_edge(c.src_port, dst)).or_default() += 1;
            }
        }
        say!("   served by: {}", counts(&report.per_pod()));
        if !via.is_empty() {
            say!(
                "   entered via (the client's ECMP choice): {}",
                counts(&via)
            );
        }
        let done = report.conns.len();
        say!(
            "   completed {done}/{n}, failed {}, on the Maglev-predicted pod {}/{done}, pod saw the real client {}/{done}",
            report.failures.len(),
            done - mispredicted,
            done - wrong_client,
        );
        for (port, e) in report.failures.iter().take(3) {
            say!("   failure from source port {port}: {e}");
        }
        report.failures.is_empty() && done == n && mispredicted == 0 && wrong_client == 0
    }

    /// The edge the client's ECMP route picks for a connection from `port` to `dst`.
    fn entry_edge(&self, port: u16, dst: SocketAddrV4) -> String {
        self.lab
            .next_hop("client", Proto::Tcp, port, dst)
            .ok()
            .and_then(|a| self.lab.node_by_addr(a).map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }

    /// `n` UDP requests to the VIP: each answered from the VIP by the predicted pod, which saw
    /// the client's own address.
    fn udp_to_the_vip(&self) -> Result<bool> {
        lab::check_interrupted()?;
        let (n, client) = (self.n, self.lab.client());
        let vip = SocketAddrV4::new(self.vip, WEB_PORT);
        say!("== {n} UDP requests to the VIP {vip}");
        let (mut answered, mut right) = (0, 0);
        let mut pods: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..n {
            let port = client.alloc_port();
            match udp_request(client, vip, Some(port), self.timeout) {
                Ok(r) => {
                    answered += 1;
                    if r.from == vip
                        && r.seen == SocketAddrV4::new(self.client, port)
                        && self.predict(&self.udp, port, vip).as_deref() == Some(r.pod.as_str())
                    {
                        right += 1;
                    }
                    *pods.entry(r.pod).or_default() += 1;
                }
                Err(e) => {
                    say!("   request from port {port}: {e:#}");
                    if answered == 0 && i >= 2 {
                        break;
                    }
                }
            }
        }
        say!("   answered by: {}", counts(&pods));
        say!(
            "   answered {answered}/{n}, from {vip} by the predicted pod with the real client seen: {right}/{n}"
        );
        Ok(answered == n && right == n)
    }

    /// Opens a connection to the VIP that the client's ECMP hash sends via edge-a, removes
    /// edge-a from the route mid-stream, and checks the connection keeps working on the same pod.
    fn move_a_connection(&self) -> Result<bool> {
        lab::check_interrupted()?;
        say!(
            "== one connection moved from edge-a to edge-b mid-stream (edge-a's next hop removed)"
        );
        match self.move_via_edge_b() {
            Ok(line) => {
                say!("   {line}");
                Ok(true)
            }
            Err(e) => {
                say!("   FAILED: {e:#}");
                Ok(false)
            }
        }
    }

    fn move_via_edge_b(&self) -> Result<String> {
        let (lab, vip) = (self.lab, SocketAddrV4::new(self.vip, WEB_PORT));
        let edge_a = lab.node_addr("edge-a");
        let mut port = None;
        for _ in 0..64 {
            let p = lab.client().alloc_port();
            if lab.next_hop("client", Proto::Tcp, p, vip)? == edge_a {
                port = Some(p);
                break;
            }
        }
        let port = port.context("no source port hashes to edge-a")?;
        let mut conn = connect_tcp(lab.client(), vip, Some(port), self.timeout)?;
        conn.exchange("hello via edge-a")?;
        let pod = conn.pod.clone();
        lab.route_vip_via(*vip.ip(), &["edge-b"])?;
        let moved = (|| -> Result<()> {
            for i in 0..3 {
                let line = format!("hello via edge-b {i}");
                anyhow::ensure!(conn.exchange(&line)? == line, "echo mismatch");
            }
            Ok(())
        })();
        lab.route_vip_via(*vip.ip(), &["edge-a", "edge-b"])?;
        moved?;
        Ok(format!(
            "{}:{port} -> {vip}: served by {pod} via edge-a, then by {} via edge-b (same pod, same connection)",
            conn.local.ip(),
            conn.pod
        ))
    }
}

/// `n` TCP connections from the client to `dst`, each from its own source port; gives up
/// after 3 failures in a row (a broken datapath would otherwise cost `n` timeouts).
fn connections(lab: &Lab, dst: SocketAddrV4, n: usize, timeout: Duration) -> TcpManyReport {
    let mut report = TcpManyReport::default();
    let mut failed_in_a_row = 0;
    for _ in 0..n {
        let port = lab.client().alloc_port();
        let r = tcp_from_ports(lab.client(), dst, &[port], timeout);
        failed_in_a_row = if r.failures.is_empty() {
            0
        } else {
            failed_in_a_row + 1
        };
        report.conns.extend(r.conns);
        report.failures.extend(r.failures);
        if failed_in_a_row >= 3 {
            break;
        }
    }
    report
}

/// Each pod's connections and requests, and the client addresses it saw: only the client's.
fn show_what_the_pods_saw(lab: &Lab, servers: &PodServers<'_>) -> bool {
    say!("== what the pods saw");
    let client = lab.client().addr();
    let mut ok = true;
    for s in servers.servers() {
        let peers = s.stats.peers();
        let ips: BTreeSet<Ipv4Addr> = peers.iter().map(|(_, a)| *a.ip()).collect();
        let ips: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        let node = lab
            .spec()
            .pods()
            .find(|(_, p)| p.name == s.pod)
            .map(|(n, _)| n.name.clone())
            .unwrap_or_default();
        say!(
            "   {} ({} on {node}): served {} TCP connections and {} UDP requests, client address seen: {}",
            s.pod,
            s.addr,
            s.stats.tcp_connections(),
            s.stats.udp_datagrams(),
            if ips.is_empty() {
                "-".to_string()
            } else {
                ips.join(", ")
            }
        );
        ok &= peers.iter().all(|(_, a)| *a.ip() == client);
    }
    ok
}

/// On each edge's link: Geneve packets to the backends' nodes, and no reply (direct server
/// return).
fn show_direct_server_return(lab: &Lab, captures: &mut [(String, Capture<'_>)]) -> bool {
    say!("== direct server return, seen on the edges' links (captures on their bridge ports)");
    let spec = lab.spec();
    let replies = format!(
        "ip and not udp port 6081 and (src host {} or src port {WEB_PORT} or src port {WEB_NODE_PORT} or {})",
        spec.vips[0],
        spec.nodes
            .iter()
            .filter(|n| !n.pods.is_empty())
            .map(|n| format!("src net {}", n.pod_subnet.network()))
            .collect::<Vec<_>>()
            .join(" or ")
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut ok = true;
    for (edge, cap) in captures {
        let addr = lab.node_addr(edge);
        let geneve = cap.count(&format!("src host {addr} and udp dst port 6081"));
        let back = lab
            .uplink_mac(edge)
            .and_then(|mac| cap.count(&format!("ether host {mac} and {replies}")));
        match (geneve, back) {
            (Ok(g), Ok(b)) => {
                say!("   {edge}: {g} Geneve packets sent to the backends' nodes, {b} replies");
                ok &= b == 0 && g > 0;
            }
            (g, b) => say!("   {edge}: reading the capture failed: {g:?} {b:?}"),
        }
    }
    ok
}

/// The tunnel counters of every node's datapath (`xlb stats`).
fn show_counters(xlb: &XlbCluster<'_>) {
    say!("== what each node's datapath counted (xlb stats)");
    for p in xlb.nodes() {
        let counters = p.stats().map(|s| s.counters).unwrap_or_default();
        let c = |k: &str| counters.get(k).copied().unwrap_or(0);
        say!(
            "   {:<7} encapsulated {} (XDP_TX {}, redirect {}, TC redirect {}, routed by the kernel {}), decapsulated {}, replies rewritten {}, ICMP too big {}",
            p.host().name(),
            c("forward_encap_tx")
                + c("forward_encap_redirect")
                + c("forward_encap_skb")
                + c("encap_fib_pass"),
            c("forward_encap_tx"),
            c("forward_encap_redirect"),
            c("forward_encap_skb"),
            c("encap_fib_pass"),
            c("decap"),
            c("reply_rewritten"),
            c("icmp_too_big")
        );
    }
}

fn show_services(xlb: &XlbCluster<'_>) {
    say!("== xlb services (on edge-a)");
    // The connection counts come from the census `xlb run` takes every couple of seconds; the
    // whole demo's traffic fits between two, so wait for one that saw it.
    let edge = xlb.node("edge-a");
    if let Err(e) = edge.services_counted_after(unix_now(), Duration::from_secs(10)) {
        say!("   note: {e:#}");
    }
    let table = edge
        .cli(&["services"])
        .unwrap_or_else(|e| format!("{e:#}\n"));
    for line in table.lines() {
        say!("   {line}");
    }
}

/// No lab namespace is `left`; notes how each `xlb run` exited.
fn check_torn_down(
    left: &[String],
    exits: Vec<(String, Result<std::process::ExitStatus>)>,
) -> bool {
    if !left.is_empty() {
        say!("   namespaces left behind: {left:?}");
    }
    for (node, exit) in exits {
        match exit {
            Ok(st) if st.success() => {}
            Ok(st) => say!("   note: xlb run on {node} exited with {st} on SIGTERM"),
            Err(e) => say!("   note: {node}: {e:#}"),
        }
    }
    left.is_empty()
}

/// `a 3, b 5`.
fn counts(m: &BTreeMap<String, usize>) -> String {
    let v: Vec<String> = m.iter().map(|(k, c)| format!("{k} {c}")).collect();
    v.join(", ")
}
