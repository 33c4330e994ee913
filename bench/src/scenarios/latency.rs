//! `xlb-bench latency`: request/response latency through the same paths `forward` measures
//! (xlb, kube-proxy-shaped iptables and nftables rules, the bare XDP forwarder), with 1, 1,000
//! and 10,000 Services programmed; percentiles from HDR histograms.
//!
//! Every (Services, path) pair gets a fresh single-node lab, programmed by the same code as
//! `forward` ([`forward::program`]). Real sockets replace the generator and the sinks: the
//! client talks to the lab's pod servers ([`PodServers`]) through the path, from a source in
//! the generator prefix (the ceiling forwarder only takes packets from there), and the node
//! routes replies back to it. Two kinds of transaction:
//!
//! * `rr`: a line sent and its echo read back on one of a few established connections (as
//!   netperf's TCP_RR) — the cost of the established path, one packet each way;
//! * `crr`: connect, read the pod's greeting, close with a reset (as TCP_CRR) — the new-flow
//!   path: xlb's Maglev pick and conntrack insert, the NAT rule walk of iptables and nftables.
//!   Each connection goes to a Service drawn at random, so a linear rule walk shows as its mean.
//!
//! Every transaction is timed on the client from its first byte sent to its last byte read; one
//! transaction is outstanding at a time. The pod servers are threads of this process (a thread
//! per accepted connection), the same for every path, so differences between paths are the
//! paths' own. The whole scenario (client, servers, and the programs it starts) runs on one
//! CPU ([`LatencyOptions::cpu`]): a veth processes a packet on the sending CPU anyway, and
//! without pinning every wake-up that lands on the other CPU adds tens of microseconds at
//! random, which would swamp the differences between paths.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hdrhistogram::Histogram;

use crate::lab::client::parse_greeting;
use crate::lab::servers::PodServers;
use crate::lab::{Host, Lab, UPLINK};
use crate::say;
use crate::scenarios::Machine;
use crate::scenarios::forward::{self, Path};
use crate::traffic::{self, Mix, SERVICE_PORT, TARGET_PORT};

/// The client's source address: inside the generator prefix 198.18.128.0/17, which the ceiling
/// forwarder (and the sinks) recognise as benchmark traffic.
pub const CLIENT_SRC: Ipv4Addr = traffic::SRC_BASE;
/// Established connections an `rr` run spreads its transactions over.
pub const RR_CONNECTIONS: usize = 8;
/// Largest value the histograms hold (a transaction slower than this counts as this).
const HIST_MAX_NS: u64 = 10_000_000_000;

/// A kind of transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One request and its reply on an established connection.
    Rr,
    /// Connect, read the greeting, reset: a new connection per transaction.
    Crr,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Rr => "rr",
            Kind::Crr => "crr",
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LatencyOptions {
    pub paths: Vec<Path>,
    pub services: Vec<u32>,
    pub kinds: Vec<Kind>,
    /// Measured transactions per (Services, path, kind) and round.
    pub transactions: u32,
    /// Untimed transactions first (neighbours resolved, conntrack and caches warm).
    pub warmup: u32,
    /// Upper bound of one measurement's duration, in seconds.
    pub max_seconds: f64,
    /// Per-operation timeout (connect, read), in milliseconds.
    pub timeout_ms: u64,
    pub rounds: usize,
    pub xdp_mode: String,
    /// The CPU everything runs on.
    pub cpu: usize,
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1e3;
        Percentiles {
            count: h.len(),
            mean_us: h.mean() / 1e3,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Run {
    pub path: Path,
    pub services: u32,
    pub kind: Kind,
    pub round: usize,
    /// Time to program the path.
    pub setup_s: f64,
    pub latency: Percentiles,
    /// Transactions that failed (timeouts, resets); they are not in the histogram.
    pub errors: u64,
    /// Transactions answered per pod.
    pub per_pod: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    /// Problems with the run (empty when it is correct).
    pub problems: Vec<String>,
    pub note: String,
}

/// Every round of one (path, Services, kind), merged.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    pub path: Path,
    pub services: u32,
    pub kind: Kind,
    pub latency: Percentiles,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct LatencyReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub options: LatencyOptions,
    pub runs: Vec<Run>,
    pub summary: Vec<Summary>,
}

impl LatencyReport {
    pub fn problems(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.problems.iter().map(move |p| {
                    format!(
                        "{} {} @ {} Services: {p}",
                        r.path.name(),
                        r.kind.name(),
                        r.services
                    )
                })
            })
            .collect()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// The /16 every benchmark VIP is in.
fn vip_net() -> String {
    let net = Ipv4Addr::from(u32::from(traffic::VIP_BASE) & 0xffff_0000);
    debug_assert!(net <= traffic::vip(traffic::MAX_SERVICES - 1));
    format!("{net}/16")
}

/// Routes the benchmark VIPs from [`CLIENT_SRC`] via the node and the replies back, and, for
/// the ceiling (which does not rewrite), makes the VIPs local in every pod.
fn prepare(lab: &Lab, path: Path) -> Result<()> {
    let node = &lab.spec().nodes[0];
    let client = lab.client().netns();
    client.ip(&["addr", "add", &format!("{CLIENT_SRC}/32"), "dev", UPLINK])?;
    client.ip(&[
        "route",
        "replace",
        &vip_net(),
        "via",
        &node.addr.to_string(),
        "dev",
        UPLINK,
        "src",
        &CLIENT_SRC.to_string(),
    ])?;
    let client_addr = lab.spec().clients[0].addr;
    lab.host(&node.name).netns().ip(&[
        "route",
        "replace",
        &format!("{CLIENT_SRC}/32"),
        "via",
        &client_addr.to_string(),
        "dev",
        UPLINK,
    ])?;
    if path == Path::Ceiling {
        for (_, pod) in lab.spec().pods() {
            lab.host(&pod.name)
                .netns()
                .ip(&["route", "add", "local", &vip_net(), "dev", "lo"])?;
        }
    }
    Ok(())
}

/// What one measurement on the client saw.
struct Sample {
    hist: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    per_pod: BTreeMap<String, u64>,
    /// Client addresses the pods reported other than [`CLIENT_SRC`] (a path that SNATs).
    other_peers: u64,
    elapsed: Duration,
}

impl Sample {
    fn new() -> Sample {
        Sample {
            hist: histogram(),
            errors: 0,
            first_error: None,
            per_pod: BTreeMap::new(),
            other_peers: 0,
            elapsed: Duration::ZERO,
        }
    }
    fn error(&mut self, e: anyhow::Error) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
    fn greeted(&mut self, pod: &str, seen: SocketAddrV4) {
        *self.per_pod.entry(pod.to_string()).or_default() += 1;
        if *seen.ip() != CLIENT_SRC {
            self.other_peers += 1;
        }
    }
}

fn read_line(r: &mut BufReader<TcpStream>, buf: &mut String) -> Result<()> {
    buf.clear();
    if r.read_line(buf)? == 0 || !buf.ends_with('\n') {
        bail!("connection closed by the peer");
    }
    Ok(())
}

fn connect(dst: SocketAddrV4, timeout: Duration) -> Result<BufReader<TcpStream>> {
    let s = TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout)
        .with_context(|| format!("connecting to {dst}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(BufReader::new(s))
}

/// Closes with a reset instead of a FIN: no TIME_WAIT, so source ports are reused at once and
/// a long run never runs out of them.
fn reset(s: TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd, pointer to a linger struct of the given size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// `rr`: transactions round-robin over [`RR_CONNECTIONS`] connections to Services spread over
/// `vips`. Runs in the client's namespace.
fn rr(vips: &[SocketAddrV4], o: &LatencyOptions) -> Result<Sample> {
    let timeout = Duration::from_millis(o.timeout_ms);
    let mut sample = Sample::new();
    let n = RR_CONNECTIONS.min(vips.len());
    let mut conns = Vec::with_capacity(n);
    let mut line = String::new();
    for k in 0..n {
        let dst = vips[k * vips.len() / n];
        let mut c = connect(dst, timeout)?;
        read_line(&mut c, &mut line).with_context(|| format!("greeting of {dst}"))?;
        let (pod, seen) = parse_greeting(&line)?;
        sample.greeted(&pod, seen);
        conns.push((c, pod));
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.max_seconds);
    let total = o.warmup as u64 + o.transactions as u64;
    for i in 0..total {
        if Instant::now() >= deadline {
            break;
        }
        let (c, pod) = &mut conns[i as usize % n];
        let t0 = Instant::now();
        let r = c
            .get_mut()
            .write_all(b"x\n")
            .map_err(anyhow::Error::from)
            .and_then(|_| read_line(c, &mut line));
        let took = t0.elapsed();
        // The echo must come from the pod that greeted: a path that moved the connection
        // would show here.
        let r = r.and_then(|_| match line.split_once(' ') {
            Some((p, _)) if p == pod => Ok(()),
            _ => Err(anyhow!("unexpected echo {line:?} on {pod}'s connection")),
        });
        match r {
            Err(e) => return Err(e.context(format!("transaction {i}"))),
            Ok(()) if i >= o.warmup as u64 => {
                sample.hist.saturating_record(took.as_nanos() as u64);
            }
            Ok(()) => {}
        }
    }
    sample.elapsed = start.elapsed();
    for (c, _) in conns {
        reset(c.into_inner());
    }
    Ok(sample)
}

/// `crr`: a new connection per transaction, each to a Service drawn at random from `vips`.
/// Runs in the client's namespace.
fn crr(vips: &[SocketAddrV4], o: &LatencyOptions) -> Sample {
    let timeout = Duration::from_millis(o.timeout_ms);
    let mut sample = Sample::new();
    let mut line = String::new();
    // xorshift64: reproducible Service order, no dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.max_seconds);
    let total = o.warmup as u64 + o.transactions as u64;
    for i in 0..total {
        if Instant::now() >= deadline {
            break;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let dst = vips[(x % vips.len() as u64) as usize];
        let t0 = Instant::now();
        let r = connect(dst, timeout).and_then(|mut c| {
            read_line(&mut c, &mut line)?;
            Ok(c)
        });
        let took = t0.elapsed();
        match r.and_then(|c| {
            let (pod, seen) = parse_greeting(&line)?;
            Ok((c, pod, seen))
        }) {
            Ok((c, pod, seen)) => {
                reset(c.into_inner());
                if i >= o.warmup as u64 {
                    sample.hist.saturating_record(took.as_nanos() as u64);
                    sample.greeted(&pod, seen);
                }
            }
            Err(e) => sample.error(e.context(format!("connection {i} to {dst}"))),
        }
    }
    sample.elapsed = start.elapsed();
    sample
}

fn measure_kind(
    client: &Host,
    vips: &[SocketAddrV4],
    kind: Kind,
    o: &LatencyOptions,
) -> Result<Sample> {
    client.netns().run(|| match kind {
        Kind::Rr => rr(vips, o),
        Kind::Crr => Ok(crr(vips, o)),
    })
}

/// One (Services, path) on a fresh lab: every kind in turn, each with its histogram.
fn measure(
    path: Path,
    n: u32,
    round: usize,
    o: &LatencyOptions,
) -> Result<Vec<(Run, Histogram<u64>)>> {
    crate::lab::check_interrupted()?;
    let lab = Lab::new(crate::lab::LabSpec::single_node().for_benchmarks())?;
    prepare(&lab, path)?;
    // The ceiling delivers the Service port unchanged; everything else DNATs to the target port.
    let port = if path == Path::Ceiling {
        SERVICE_PORT
    } else {
        TARGET_PORT
    };
    let servers = PodServers::start(&lab, port)?;
    let t0 = Instant::now();
    let (setup, note) = forward::program(&lab, path, n, Mix::Established, &o.xdp_mode)
        .with_context(|| format!("programming {}", path.name()))?;
    let setup_s = t0.elapsed().as_secs_f64();
    let vips: Vec<SocketAddrV4> = (0..n)
        .map(|s| SocketAddrV4::new(traffic::vip(s), SERVICE_PORT))
        .collect();
    let pods = lab.spec().pods().count();
    let mut runs = Vec::new();
    for &kind in &o.kinds {
        crate::lab::check_interrupted()?;
        let before: u64 = servers.tcp_counts().values().sum();
        let mut problems = Vec::new();
        let sample = match measure_kind(lab.client(), &vips, kind, o) {
            Ok(s) => s,
            Err(e) => {
                problems.push(format!("{e:#}"));
                Sample::new()
            }
        };
        let accepted = servers.tcp_counts().values().sum::<u64>() - before;
        let done = sample.hist.len();
        if problems.is_empty() && done < o.transactions as u64 {
            problems.push(format!(
                "{done} of {} transactions completed within {} s",
                o.transactions, o.max_seconds
            ));
        }
        if sample.errors > 0 {
            problems.push(format!(
                "{} transactions failed, the first: {}",
                sample.errors,
                sample.first_error.clone().unwrap_or_default()
            ));
        }
        if sample.other_peers > 0 {
            problems.push(format!(
                "pods saw {} connections from an address other than {CLIENT_SRC} (SNAT)",
                sample.other_peers
            ));
        }
        let greeted: u64 = sample.per_pod.values().sum();
        if greeted > accepted {
            problems.push(format!(
                "{greeted} greetings read but the pod servers accepted only {accepted} connections"
            ));
        }
        if kind == Kind::Crr && done >= 100 * pods as u64 && sample.per_pod.len() < pods {
            problems.push(format!(
                "only {} of {pods} pods served connections",
                sample.per_pod.len()
            ));
        }
        let run = Run {
            path,
            services: n,
            kind,
            round,
            setup_s,
            latency: Percentiles::of(&sample.hist),
            errors: sample.errors,
            per_pod: sample.per_pod,
            elapsed_s: sample.elapsed.as_secs_f64(),
            problems,
            note: note.clone(),
        };
        runs.push((run, sample.hist));
    }
    drop(setup);
    drop(servers);
    Ok(runs)
}

pub fn run(o: &LatencyOptions) -> Result<LatencyReport> {
    if o.paths.is_empty() || o.services.is_empty() || o.kinds.is_empty() {
        bail!("nothing to measure");
    }
    traffic::check_service_counts(&o.services)?;
    if o.transactions == 0 {
        bail!("--transactions must be at least 1");
    }
    if o.cpu >= traffic::num_cpus() {
        bail!(
            "--cpu {}: this machine has {} CPUs",
            o.cpu,
            traffic::num_cpus()
        );
    }
    // Before pinning: the CPU count follows the affinity.
    let machine = Machine::this();
    // Threads and processes started from here on inherit the affinity.
    traffic::pin_to_cpu(o.cpu)?;
    let mut runs: Vec<Run> = Vec::new();
    // Every round of a (path, Services, kind) merged into one histogram: percentiles of all
    // transactions, not a median of percentiles.
    let mut merged: BTreeMap<(usize, u32, Kind), Histogram<u64>> = BTreeMap::new();
    let total = o.rounds * o.services.len() * o.paths.len();
    let mut k = 0;
    for round in 0..o.rounds {
        for &n in &o.services {
            for (pi, &path) in o.paths.iter().enumerate() {
                k += 1;
                eprint!(
                    "[{k}/{total}] {} with {n} Services (round {})... ",
                    path.name(),
                    round + 1
                );
                crate::lab::check_interrupted()?;
                // A failed measurement is recorded (and fails the scenario) without losing the
                // others.
                let got = measure(path, n, round, o).unwrap_or_else(|e| {
                    o.kinds
                        .iter()
                        .map(|&kind| {
                            let run = Run {
                                path,
                                services: n,
                                kind,
                                round,
                                setup_s: 0.0,
                                latency: Percentiles::default(),
                                errors: 0,
                                per_pod: BTreeMap::new(),
                                elapsed_s: 0.0,
                                problems: vec![format!("{e:#}")],
                                note: String::new(),
                            };
                            (run, histogram())
                        })
                        .collect()
                });
                let line: Vec<String> = got
                    .iter()
                    .map(|(r, _)| {
                        format!(
                            "{} p50 {:.0} µs p99 {:.0} µs{}",
                            r.kind.name(),
                            r.latency.p50_us,
                            r.latency.p99_us,
                            if r.problems.is_empty() {
                                ""
                            } else {
                                " PROBLEMS"
                            }
                        )
                    })
                    .collect();
                eprintln!("{}", line.join(", "));
                for (r, h) in got {
                    merged
                        .entry((pi, n, r.kind))
                        .or_insert_with(histogram)
                        .add(&h)
                        .map_err(|e| anyhow!("merging histograms: {e:?}"))?;
                    runs.push(r);
                }
            }
        }
    }
    let summary = merged
        .into_iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|((pi, services, kind), h)| Summary {
            path: o.paths[pi],
            services,
            kind,
            latency: Percentiles::of(&h),
        })
        .collect();
    Ok(LatencyReport {
        scenario: "latency",
        machine,
        options: o.clone(),
        runs,
        summary,
    })
}

pub fn print(rep: &LatencyReport) {
    let o = &rep.options;
    say!(
        "latency: request/response through each path ({} transactions per run after {} untimed, {} round(s), all on CPU {} of {}); microseconds",
        o.transactions,
        o.warmup,
        o.rounds,
        o.cpu,
        rep.machine.cpus
    );
    say!(
        "{:>9}  {:<9} {:<4} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}  {}",
        "Services",
        "path",
        "kind",
        "count",
        "mean",
        "p50",
        "p99",
        "p99.9",
        "max",
        "checks"
    );
    for r in &rep.runs {
        let l = &r.latency;
        say!(
            "{:>9}  {:<9} {:<4} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1}  {}",
            r.services,
            r.path.name(),
            r.kind.name(),
            l.count,
            l.mean_us,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            if r.problems.is_empty() {
                "ok".to_string()
            } else {
                r.problems.join("; ")
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        // Three significant digits: within 0.1 %.
        assert!((p.p50_us - 500.0).abs() <= 0.5, "{p:?}");
        assert!((p.p99_us - 990.0).abs() <= 1.0, "{p:?}");
        assert!((p.p999_us - 999.0).abs() <= 1.0, "{p:?}");
        assert!((p.max_us - 1000.0).abs() <= 1.0, "{p:?}");
        assert!((p.mean_us - 500.5).abs() <= 0.5, "{p:?}");
    }

    #[test]
    fn slower_than_the_bound_counts_at_the_bound() {
        let mut h = histogram();
        h.saturating_record(HIST_MAX_NS * 10);
        assert_eq!(h.len(), 1);
        assert!(h.max() >= HIST_MAX_NS && h.max() < HIST_MAX_NS + HIST_MAX_NS / 100);
    }
}
