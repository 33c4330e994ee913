//! End-to-end, single node, under a SYN flood: the benchmark generator (`xlb-bench`'s
//! `xlb-gen`, the `syn` mix: a random source address in 198.18.128.0/17 and port per packet)
//! floods the Service's VIP from the client namespace at its full, unpaced rate, bounded in time
//! and in packets, while the test
//!
//! * keeps connections opened before the flood exchanging lines (on every pod, the one later
//!   removed included),
//! * opens new connections one after the other from a thread on the generator's CPU (whose
//!   SYN-flood guard is the one engaged: the flood runs there, and so does the receive path of
//!   what that CPU sends into the veth),
//! * changes the Service's endpoints twice (a pod added, then one removed).
//!
//! It asserts that every held connection survives, that at least [`NEW_FLOOR`] of the new
//! connections complete (it prints the fraction), that new connections after the flood land
//! where the new Maglev table says, and that the guard tripped, as `xlb stats` and `/metrics`
//! both show.
//!
//! Needs root and an `xlb` binary (`$XLB_BIN`, `target/release/xlb` or `target/debug/xlb`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use xlb_bench::lab::*;
use xlb_bench::traffic::{self, Generator, Mix, Traffic};
use xlb_e2e::*;

/// The flood lasts at least this long...
const FLOOD_MIN: Duration = Duration::from_secs(5);
/// ...and at most this long (the endpoint changes must be programmed within it).
const FLOOD_MAX: Duration = Duration::from_secs(20);
/// And sends at most this many SYNs.
const FLOOD_MAX_PACKETS: u64 = 30_000_000;
/// The generator's CPU (its first thread is pinned to CPU 0).
const FLOOD_CPU: usize = 0;
/// Fraction of the new connections started during the flood that must complete.
const NEW_FLOOR: f64 = 0.8;
/// Per-connection timeout: leaves room for the client's SYN retransmissions (1 s, then 2 s),
/// since a veth queue full of flood frames drops a SYN as a NIC ring would.
const CONN_TIMEOUT: Duration = Duration::from_secs(8);
/// Pause between two new connections.
const NEW_PAUSE: Duration = Duration::from_millis(20);
/// Most new connections tried during the flood.
const NEW_MAX: u64 = 2_000;
/// Held connections per pod of the starting Service.
const HELD_PER_POD: usize = 2;
const METRICS_PORT: u16 = 9465;
/// The guard's rate (new flows a second per CPU): a fifth of the default, so that the guard
/// trips wherever the flood reaches it on one CPU, however slow or busy the machine; the
/// legitimate connections then open while guarded, which is what the test is about.
const GUARD_RATE: u32 = 10_000;

/// The lab: the single node with a spare pod (`pod-4`, not an endpoint at first), the VIP the
/// generator sends to (the benchmarks' first VIP), `default/web` on pods 1-3.
fn spec() -> LabSpec {
    let mut spec = LabSpec::single_node()
        .with_pod("node-a", "pod-4")
        .expect("a spare pod");
    spec.vips = vec![traffic::vip(0)];
    spec
}

/// Sets `stop` when dropped: the flood ends whatever way the test leaves its scope.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the flood thread did.
struct Flood {
    sent: u64,
    elapsed: Duration,
}

/// Floods the VIP from the client at the generator's full rate until `stop` (or the bounds).
fn run_flood(lab: &Lab, started: &AtomicBool, stop: &AtomicBool) -> Result<Flood> {
    let node = lab.host("node-a");
    let (_, dst_mac) = xlb_bench::bpf::link_info(node, UPLINK)?;
    let (_, src_mac) = xlb_bench::bpf::link_info(lab.client(), UPLINK)?;
    let generator = Generator::new(&Traffic {
        mix: Mix::Syn,
        flows: 1,
        services: 1,
        frame_size: 64,
        dst_mac,
        src_mac,
    })?;
    let t0 = Instant::now();
    started.store(true, Ordering::SeqCst);
    let mut sent = 0;
    // Slices of half a second, so the flood stops soon after it is told to.
    while !stop.load(Ordering::SeqCst) && t0.elapsed() < FLOOD_MAX && sent < FLOOD_MAX_PACKETS {
        let left = FLOOD_MAX.saturating_sub(t0.elapsed());
        let r = generator.run(
            lab.client(),
            UPLINK,
            FLOOD_MAX_PACKETS - sent,
            left.min(Duration::from_millis(500)),
            1,
        )?;
        sent += r.sent;
    }
    Ok(Flood {
        sent,
        elapsed: t0.elapsed(),
    })
}

/// New connections, one after the other, from the flood's CPU, until `stop`: each one must
/// greet and echo. Returns (tried, completed, the failures' errors).
fn new_connections(
    client: &Host,
    dst: SocketAddrV4,
    stop: &AtomicBool,
    tried: &AtomicU64,
) -> Result<(u64, u64, Vec<String>)> {
    traffic::pin_to_cpu(FLOOD_CPU)?;
    let (mut ok, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) && tried.load(Ordering::SeqCst) < NEW_MAX {
        tried.fetch_add(1, Ordering::SeqCst);
        let port = client.alloc_port();
        let r = connect_tcp(client, dst, Some(port), CONN_TIMEOUT).and_then(|mut c| {
            let line = format!("new {port}");
            ensure!(c.exchange(&line)? == line, "echo mismatch");
            Ok(())
        });
        match r {
            Ok(()) => ok += 1,
            Err(e) => failures.push(format!("port {port}: {e:#}")),
        }
        std::thread::sleep(NEW_PAUSE);
    }
    Ok((tried.load(Ordering::SeqCst), ok, failures))
}

/// Every held connection echoes a line, from the pod it was opened to.
fn exchange_all(held: &mut [TcpConn], what: &str) -> Result<()> {
    for (i, c) in held.iter_mut().enumerate() {
        let line = format!("{what} {i}");
        let back = c
            .exchange(&line)
            .with_context(|| format!("held connection {} to {} ({what})", c.local, c.pod))?;
        ensure!(back == line, "held connection {}: echo {back:?}", c.local);
    }
    Ok(())
}

/// `GET /metrics` from xlb's metrics server in `host`.
fn metrics(host: &Host) -> Result<String> {
    let mut stream = host.netns().run(|| {
        Ok(TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)),
            Duration::from_secs(2),
        )?)
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: text/plain\r\n\r\n"
    )?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no header end")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "/metrics: {head}");
    Ok(body.to_string())
}

/// The value of the sample `series` (name and labels exactly as exposed).
fn sample(text: &str, series: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no {series} in /metrics"))?
        .trim()
        .parse()
        .with_context(|| format!("{series} is not a number"))
}

#[test]
fn held_and_new_connections_complete_during_a_syn_flood_with_endpoint_changes() {
    let web = |s: &LabSpec| ServiceDef::web(s).without_pod("pod-4");
    let options = |o: &mut XlbOptions| {
        o.extra_args
            .extend(["--metrics-addr".into(), format!("127.0.0.1:{METRICS_PORT}")]);
        o.extra_args
            .extend(["--syn-guard-rate".into(), GUARD_RATE.to_string()]);
    };
    with_local_lab_spec(spec(), web, options, |t| {
        let lab: &Lab = t.lab;
        let client = lab.client();
        let (vip, me) = (t.vip(), t.client_addr());
        let dst = SocketAddrV4::new(vip, WEB_PORT);
        let pod_addr = |p: &str| lab.host(p).addr();
        let start = t.xlb.stats()?;
        let guard = start.syn_guard.context("no syn_guard in xlb stats")?;
        ensure!(
            guard.rate == GUARD_RATE,
            "guard rate {} (want {GUARD_RATE})",
            guard.rate
        );

        // Held connections, steered onto every pod.
        let table = t.wait_programmed("http", &t.web.ready_addrs())?.maglev()?;
        let mut held = Vec::new();
        for pod in ["pod-1", "pod-2", "pod-3"] {
            for _ in 0..HELD_PER_POD {
                let ports: Vec<u16> = (0..500).map(|_| client.alloc_port()).collect();
                let Some(port) = table.port_for(pod_addr(pod), me, vip, WEB_PORT, ports) else {
                    bail!("no source port among 500 maps to {pod}");
                };
                let c = connect_tcp(client, dst, Some(port), CONN_TIMEOUT)?;
                ensure!(c.pod == pod, "steered to {pod}, landed on {}", c.pod);
                held.push(c);
            }
        }
        exchange_all(&mut held, "before")?;

        let (started, stop, tried) = (
            AtomicBool::new(false),
            AtomicBool::new(false),
            AtomicU64::new(0),
        );
        let mut engaged_seen = 0;
        let (flood, new) = std::thread::scope(|s| -> Result<_> {
            let _stop = StopOnDrop(&stop);
            let flood = s.spawn(|| run_flood(lab, &started, &stop));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !started.load(Ordering::SeqCst) {
                if flood.is_finished() {
                    flood.join().expect("the flood thread")?;
                    bail!("the flood ended before it started");
                }
                ensure!(Instant::now() < deadline, "the flood did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
            let t0 = Instant::now();
            let new = s.spawn(|| new_connections(client, dst, &stop, &tried));
            let flooding = |what: &str| -> Result<()> {
                ensure!(
                    !flood.is_finished() && t0.elapsed() < FLOOD_MAX,
                    "the flood ended before {what}"
                );
                Ok(())
            };
            std::thread::sleep(Duration::from_secs(1));
            engaged_seen = engaged_seen.max(t.xlb.stats()?.syn_guard.map_or(0, |g| g.engaged_cpus));
            exchange_all(&mut held, "flood")?;

            // A pod joins...
            let mut grown = t.web.clone();
            grown.endpoints = ServiceDef::web(lab.spec()).endpoints;
            t.manifests.write(&ManifestSet {
                services: vec![grown.clone()],
                nodes: ManifestSet::nodes_of(lab.spec()),
            })?;
            t.web = grown;
            t.wait_programmed("http", &t.web.ready_addrs())?;
            flooding("the pod added was programmed")?;
            exchange_all(&mut held, "grown")?;
            // ...and one leaves (its held connections stay on it).
            let shrunk = t.web.clone().without_pod("pod-3");
            t.manifests.write(&ManifestSet {
                services: vec![shrunk.clone()],
                nodes: ManifestSet::nodes_of(lab.spec()),
            })?;
            t.web = shrunk;
            t.wait_programmed("http", &t.web.ready_addrs())?;
            flooding("the pod removed was programmed")?;
            engaged_seen = engaged_seen.max(t.xlb.stats()?.syn_guard.map_or(0, |g| g.engaged_cpus));
            // New connections on the last table for a second more, the minimum length reached,
            // and the guard tripped (a slow machine floods more slowly: it gets longer, up to
            // FLOOD_MAX).
            let after_changes = Instant::now();
            let mut tripped = false;
            while after_changes.elapsed() < Duration::from_secs(1)
                || t0.elapsed() < FLOOD_MIN
                || (!tripped && t0.elapsed() + Duration::from_secs(1) < FLOOD_MAX)
            {
                exchange_all(&mut held, "shrunk")?;
                let g = t.xlb.stats()?.syn_guard.unwrap_or_default();
                tripped = g.trips > guard.trips;
                engaged_seen = engaged_seen.max(g.engaged_cpus);
                std::thread::sleep(Duration::from_millis(200));
            }
            flooding("its minimum length")?;
            stop.store(true, Ordering::SeqCst);
            let flood = flood.join().expect("the flood thread")?;
            let new = new.join().expect("the connection thread")?;
            Ok((flood, new))
        })?;

        // Held connections survived, on their pods (the removed pod's too).
        exchange_all(&mut held, "after")?;
        let (tried, ok, failures) = new;
        let fraction = ok as f64 / tried.max(1) as f64;
        let pps = flood.sent as f64 / flood.elapsed.as_secs_f64();
        let end = t.xlb.stats()?;
        let g = end.syn_guard.context("no syn_guard in xlb stats")?;
        let counter = |n: &str| end.counters.get(n).copied().unwrap_or(0);
        eprintln!(
            "SYN flood: {} SYNs in {:.1} s ({:.0}/s); new connections completed {ok} of {tried} \
             ({:.1} %); {} held connections kept; guard: {} trips, {} SYNs without a conntrack \
             write, {} new flows recorded, engaged on up to {engaged_seen} CPU(s) when sampled",
            flood.sent,
            flood.elapsed.as_secs_f64(),
            pps,
            fraction * 100.0,
            held.len(),
            g.trips - guard.trips,
            g.skipped - guard.skipped,
            counter("conntrack_new") - start.counters.get("conntrack_new").copied().unwrap_or(0),
        );
        ensure!(tried >= 10, "only {tried} new connections were tried");
        ensure!(
            fraction >= NEW_FLOOR,
            "{ok} of {tried} new connections completed during the flood (floor {NEW_FLOOR}); \
             failures: {:?}",
            &failures[..failures.len().min(10)]
        );
        ensure!(
            g.trips > guard.trips && g.skipped > guard.skipped,
            "the guard never tripped: {guard:?} -> {g:?} ({pps:.0} SYNs/s sent; the flood \
             reaches xlb only if its XDP program runs natively on node-a's uplink)"
        );
        let m = metrics(lab.host("node-a"))?;
        ensure!(sample(&m, "xlb_syn_guard_rate")? == f64::from(GUARD_RATE));
        ensure!(
            sample(&m, "xlb_syn_guard_trips_total")? >= g.trips as f64,
            "/metrics shows fewer trips than `xlb stats` did"
        );
        ensure!(
            sample(
                &m,
                "xlb_datapath_events_total{reason=\"syn_guard_skipped\"}"
            )? >= g.skipped as f64
        );
        sample(&m, "xlb_syn_guard_engaged_cpus")?;

        // After the flood: new connections complete and land where the last table says.
        let last = t.wait_programmed("http", &t.web.ready_addrs())?.maglev()?;
        let report = tcp_many(client, dst, 30, CONN_TIMEOUT);
        ensure!(
            report.failures.is_empty(),
            "connections after the flood failed: {:?}",
            report.failures
        );
        for c in &report.conns {
            let want = last.backend(me, c.src_port, vip, WEB_PORT);
            ensure!(
                want.and_then(|a| lab.pod_name(a)) == Some(c.pod.as_str()),
                "port {}: landed on {}, Maglev predicts {want:?}",
                c.src_port,
                c.pod
            );
        }
        ensure!(
            !report.per_pod().contains_key("pod-3"),
            "a new connection reached the removed pod-3"
        );
        exchange_all(&mut held, "end")?;
        Ok(())
    });
}
