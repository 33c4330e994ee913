//! `xlb-bench`: lab demos and benchmarks for xlb.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use xlb_bench::lab::{self, *};
use xlb_bench::scenarios::{
    self, forward, forward::Path, generator, latency, maglev, micro, profile, report,
};
use xlb_bench::traffic::Mix;

/// `println!` that ignores a closed stdout (a panic there would skip the teardown).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `eprintln!` that ignores a closed stderr.
macro_rules! err {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

fn out_raw(s: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(s.as_bytes());
}

#[derive(Parser)]
#[command(
    name = "xlb-bench",
    about = "xlb lab topologies, demo and benchmarks (needs root)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the multi-node DSR lab (a client, edge nodes edge-a and edge-b behind an ECMP
    /// route, backend nodes node-c and node-d with pods), run xlb on every node, make TCP and
    /// UDP connections to the VIP and each edge's NodePort, show which pod served them, what
    /// client address each pod saw and that no reply passed an edge, then tear everything down.
    Demo(DemoArgs),
    /// The traffic generator alone: its maximum rate into a sink on the node's uplink, for XDP
    /// live frames and AF_XDP transmit.
    Gen(GenArgs),
    /// Packets/s delivered to the pods for xlb, kube-proxy-shaped iptables and nftables rules
    /// and a bare XDP forwarder, at 1, 1,000 and 10,000 Services; ratios from the same run.
    Forward(ForwardArgs),
    /// Request/response latency (p50/p99/p99.9) through the same paths as `forward`: a
    /// request on an established connection (`rr`) and a new connection per request (`crr`).
    Latency(LatencyArgs),
    /// BPF_PROG_TEST_RUN ns/packet per datapath path against the floor (runs
    /// `cargo bench -p xlb --bench micro`).
    Micro(OutArgs),
    /// Maglev balance, disruption and build time for M = 16381, 65537 and N = 10, 100, 1000.
    Maglev(MaglevArgs),
    /// Time for the real `xlb run` to program N Services × E endpoints from scratch, the
    /// latency from a manifest change to the maps, and the memory it takes (BPF maps, RSS).
    Control(ControlArgs),
    /// Write a TRex stateless profile or a Linux pktgen script for the same traffic mixes.
    Profile(ProfileArgs),
    /// Turn the scenarios' JSON into the generated section of docs/benchmarks.md and SVG charts.
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct OutArgs {
    /// Directory for the JSON results.
    #[arg(long, default_value = "target/xlb-bench")]
    out: std::path::PathBuf,
}

#[derive(clap::Args)]
struct MaglevArgs {
    #[command(flatten)]
    out: OutArgs,
    /// Table sizes (primes).
    #[arg(long, value_delimiter = ',', default_value = "16381,65537")]
    m: Vec<u32>,
    /// Backend counts.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    n: Vec<u32>,
    /// Builds timed per (M, N); the median is reported.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u16).range(1..=1000))]
    timing_runs: u16,
}

#[derive(clap::Args)]
struct ProfileArgs {
    /// TRex stateless (STL) Python profile.
    #[arg(long, conflicts_with = "pktgen", required_unless_present = "pktgen")]
    trex: bool,
    /// Linux pktgen shell script (UDP only).
    #[arg(long)]
    pktgen: bool,
    /// The VIP to address.
    #[arg(long)]
    vip: std::net::Ipv4Addr,
    /// The Service port.
    #[arg(long, default_value_t = 80)]
    port: u16,
    #[arg(long, value_enum, default_value = "established")]
    mix: Mix,
    #[arg(long, default_value_t = 10_000)]
    flows: u32,
    /// First source address (sources count up from it).
    #[arg(long, default_value = "198.18.128.1")]
    src: std::net::Ipv4Addr,
    #[arg(long, default_value_t = 64)]
    frame_size: u16,
    /// pktgen: sending interface.
    #[arg(long, default_value = "eth0")]
    iface: String,
    /// pktgen: MAC address of the next hop (the load balancer's NIC or the router).
    #[arg(long, default_value = "02:00:00:00:00:01")]
    dst_mac: String,
    /// Write here instead of stdout.
    #[arg(long, short = 'o')]
    output: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Directory the scenarios wrote their JSON to.
    #[arg(long, default_value = "target/xlb-bench")]
    from: std::path::PathBuf,
    /// The Markdown file to update (its generated section only).
    #[arg(long, default_value = "docs/benchmarks.md")]
    doc: std::path::PathBuf,
}

/// Options every traffic scenario shares.
#[derive(clap::Args, Clone)]
struct TrafficArgs {
    /// Traffic mix.
    #[arg(long, value_enum, default_value = "established")]
    mix: Mix,
    /// Distinct flows (established and udp mixes).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    flows: u32,
    /// Frame size on the wire, FCS included.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(64..=1518))]
    frame_size: u16,
    /// Measured seconds per run (an upper bound: runs also stop after --max-packets).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Upper bound of frames per measured run.
    #[arg(long, default_value_t = 200_000_000)]
    max_packets: u64,
    /// Generator threads (each pinned to its own CPU).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Directory for the JSON results.
    #[arg(long, default_value = "target/xlb-bench")]
    out: std::path::PathBuf,
}

impl TrafficArgs {
    fn check(&self) -> Result<()> {
        if !(self.seconds > 0.0 && self.seconds <= 600.0) {
            anyhow::bail!("--seconds must be in (0, 600]");
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct GenArgs {
    #[command(flatten)]
    traffic: TrafficArgs,
}

#[derive(clap::Args)]
struct ForwardArgs {
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Numbers of Services to program (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<u32>,
    /// Paths to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "xlb,iptables,nftables,ceiling"
    )]
    paths: Vec<Path>,
    /// Rounds over all (Services, path) pairs; the median is reported.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    rounds: u16,
    /// Warm-up seconds before each measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// XDP attach mode passed to `xlb run`.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// CI smoke test: 1 and 100 Services, every path, 20,000 paced packets each; checks the
    /// counts (nothing lost, every packet rewritten to a pod, every pod served), not speed.
    #[arg(long)]
    quick: bool,
    /// The lab: `single` (one node, local backends) or `dsr` (the multi-node lab: everything
    /// sent to edge-a, forwarded to the pods on node-c and node-d). Results go to
    /// `forward[-quick][-dsr][-<mix>].json`.
    #[arg(long, value_enum, default_value = "single")]
    lab: forward::LabKind,
}

#[derive(clap::Args)]
struct LatencyArgs {
    /// Numbers of Services to program (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<u32>,
    /// Paths to measure (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "xlb,iptables,nftables,ceiling"
    )]
    paths: Vec<Path>,
    /// Transaction kinds (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "rr,crr")]
    kinds: Vec<latency::Kind>,
    /// Measured transactions per run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    transactions: u32,
    /// Untimed transactions before each measured run.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    warmup: u32,
    /// Upper bound of one run, in seconds.
    #[arg(long, default_value_t = 60.0)]
    max_seconds: f64,
    /// Timeout of each connect and read, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=5000))]
    timeout_ms: u64,
    /// Rounds over all (Services, path) pairs; the histograms of all rounds are merged.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    rounds: u16,
    /// XDP attach mode passed to `xlb run`.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// The CPU the client, the pod servers and the programmed path all run on.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
    /// CI smoke test: 1 and 100 Services, every path and kind, 300 transactions each; checks
    /// that every transaction completes through every path, not speed.
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON results.
    #[arg(long, default_value = "target/xlb-bench")]
    out: std::path::PathBuf,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Connections to the VIP, and again to each edge's NodePort; UDP requests to the VIP.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=1000))]
    connections: u16,
    /// XDP attach mode passed to `xlb run`.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// Per-connection timeout, in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..=10000))]
    timeout_ms: u64,
}

#[derive(clap::Args)]
struct ControlArgs {
    /// Numbers of Services to program (comma-separated); a fresh lab and `xlb run` for each.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
    services: Vec<u32>,
    /// Endpoints per Service (synthetic pod addresses, all local to the node).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    endpoints: u32,
    /// Changes of each kind (add a Service, remove it, add an endpoint to one) per Service count.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    changes: u32,
    /// `xlb run --poll-ms`: how often xlb checks the manifests (part of every change latency).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10000))]
    poll_ms: u64,
    /// XDP attach mode passed to `xlb run`.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// CI smoke test: 1 and 100 Services × 3 endpoints, 5 changes of each kind; checks that
    /// every Service and every change reaches the maps, not speed.
    #[arg(long)]
    quick: bool,
    /// Directory for the JSON results.
    #[arg(long, default_value = "target/xlb-bench")]
    out: std::path::PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => match demo(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => {
                err!("demo: FAILED (see above)");
                ExitCode::FAILURE
            }
            Err(e) => {
                err!("demo: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Gen(args) => finish("gen", gen_cmd(&args)),
        Command::Forward(args) => finish("forward", forward_cmd(&args)),
        Command::Latency(args) => finish("latency", latency_cmd(&args)),
        Command::Micro(args) => finish("micro", micro_cmd(&args)),
        Command::Maglev(args) => finish("maglev", maglev_cmd(&args)),
        Command::Control(args) => finish("control", control_cmd(&args)),
        Command::Profile(args) => finish("profile", profile_cmd(&args)),
        Command::Report(args) => finish("report", report_cmd(&args)),
    }
}

/// Writes a scenario's JSON (`<dir>/<name>.json`) and says where.
fn save<T: serde::Serialize>(dir: &std::path::Path, name: &str, rep: &T) -> Result<()> {
    let path = scenarios::write_json(dir, name, rep)?;
    out!("wrote {}", path.display());
    Ok(())
}

/// Prints a scenario's problems (and, for `--quick`, the verdict line the smoke tests look
/// for); whether it passed.
fn conclude(name: &str, quick: bool, problems: &[String]) -> bool {
    for p in problems {
        out!("problem: {p}");
    }
    if quick {
        out!(
            "{name} --quick: {}",
            if problems.is_empty() { "OK" } else { "FAILED" }
        );
    }
    problems.is_empty()
}

/// Exit status of a scenario: `Ok(true)` all checks passed.
fn finish(name: &str, r: Result<bool>) -> ExitCode {
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            err!("{name}: FAILED (see the checks above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            err!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn gen_cmd(a: &GenArgs) -> Result<bool> {
    lab::install_interrupt_handler();
    let t = &a.traffic;
    t.check()?;
    let rep = generator::run(&generator::GenOptions {
        mix: t.mix,
        flows: t.flows,
        frame_size: t.frame_size,
        seconds: t.seconds,
        max_packets: t.max_packets,
        threads: t.threads,
    })?;
    generator::print(&rep);
    save(&t.out, "gen", &rep)?;
    Ok(rep.runs.iter().all(|r| r.problems.is_empty()))
}

fn latency_cmd(a: &LatencyArgs) -> Result<bool> {
    lab::install_interrupt_handler();
    if !(a.max_seconds > 0.0 && a.max_seconds <= 600.0) {
        anyhow::bail!("--max-seconds must be in (0, 600]");
    }
    let mut opts = latency::LatencyOptions {
        paths: a.paths.clone(),
        services: a.services.clone(),
        kinds: a.kinds.clone(),
        transactions: a.transactions,
        warmup: a.warmup,
        max_seconds: a.max_seconds,
        timeout_ms: a.timeout_ms,
        rounds: a.rounds as usize,
        xdp_mode: a.xdp_mode.clone(),
        cpu: a.cpu,
    };
    if a.quick {
        opts.services = vec![1, 100];
        opts.transactions = 300;
        opts.warmup = 20;
        opts.max_seconds = 30.0;
    }
    let rep = latency::run(&opts)?;
    latency::print(&rep);
    let name = if a.quick { "latency-quick" } else { "latency" };
    save(&a.out, name, &rep)?;
    Ok(conclude("latency", a.quick, &rep.problems()))
}

fn micro_cmd(a: &OutArgs) -> Result<bool> {
    let rep = micro::run(&a.out)?;
    micro::print(&rep);
    save(&a.out, "micro", &rep)?;
    Ok(true)
}

fn maglev_cmd(a: &MaglevArgs) -> Result<bool> {
    let rep = maglev::run(&a.m, &a.n, a.timing_runs as usize)?;
    maglev::print(&rep);
    save(&a.out.out, "maglev", &rep)?;
    Ok(true)
}

fn control_cmd(a: &ControlArgs) -> Result<bool> {
    use xlb_bench::scenarios::control;
    lab::install_interrupt_handler();
    let mut opts = control::ControlOptions {
        services: a.services.clone(),
        endpoints: a.endpoints,
        changes: a.changes,
        poll_ms: a.poll_ms,
        xdp_mode: a.xdp_mode.clone(),
    };
    if a.quick {
        opts.services = vec![1, 100];
        opts.endpoints = 3;
        opts.changes = 5;
    }
    let rep = control::run(&opts)?;
    control::print(&rep);
    let name = if a.quick { "control-quick" } else { "control" };
    save(&a.out, name, &rep)?;
    Ok(conclude("control", a.quick, &rep.problems()))
}

fn profile_cmd(a: &ProfileArgs) -> Result<bool> {
    let spec = profile::ProfileSpec {
        mix: a.mix,
        vip: a.vip,
        port: a.port,
        flows: a.flows,
        src_base: a.src,
        frame_size: a.frame_size,
        iface: a.iface.clone(),
        dst_mac: a.dst_mac.clone(),
    };
    let text = if a.trex {
        profile::trex(&spec)?
    } else {
        profile::pktgen(&spec)?
    };
    match &a.output {
        Some(p) => {
            std::fs::write(p, &text).with_context(|| format!("writing {}", p.display()))?;
            err!("wrote {}", p.display());
        }
        None => out_raw(&text),
    }
    Ok(true)
}

fn report_cmd(a: &ReportArgs) -> Result<bool> {
    report::write(&a.from, &a.doc)?;
    out!("updated {} from {}", a.doc.display(), a.from.display());
    Ok(true)
}

fn forward_cmd(a: &ForwardArgs) -> Result<bool> {
    lab::install_interrupt_handler();
    let t = &a.traffic;
    t.check()?;
    let mut opts = forward::ForwardOptions {
        lab: a.lab,
        paths: a.paths.clone(),
        services: a.services.clone(),
        mix: t.mix,
        flows: t.flows,
        frame_size: t.frame_size,
        seconds: t.seconds,
        max_packets: t.max_packets,
        warmup_seconds: a.warmup_seconds,
        rounds: a.rounds as usize,
        threads: t.threads,
        pace: None,
        xdp_mode: a.xdp_mode.clone(),
    };
    if a.quick {
        opts.services = vec![1, 100];
        opts.flows = opts.flows.min(1000);
        opts.max_packets = 20_000;
        opts.seconds = 30.0;
        opts.warmup_seconds = 5.0;
        opts.rounds = 1;
        opts.threads = 1;
        opts.pace = Some((1024, Duration::from_millis(2)));
    }
    let rep = forward::run(&opts)?;
    forward::print(&rep);
    // One file per lab and mix, so a `--mix syn` or `--lab dsr` run does not replace another.
    let name = forward::file_name(a.lab, t.mix, a.quick);
    save(&t.out, &name, &rep)?;
    Ok(conclude("forward", a.quick, &rep.problems()))
}

/// Runs the demo on the DSR lab; `Ok(false)` when traffic misbehaved. Everything it builds is
/// torn down when it returns (the locals' destructors), also on error or Ctrl-C.
fn demo(args: &DemoArgs) -> Result<bool> {
    lab::install_interrupt_handler();
    let timeout = Duration::from_millis(args.timeout_ms);
    let bin = xlb_binary()?;
    out!("== building the DSR lab (network namespaces, 198.18.0.0/15 only)");
    let lab = Lab::dsr()?;
    let spec = lab.spec().clone();
    let client_addr = lab.client().addr();
    let vip = spec.vips[0];
    let edges: Vec<&str> = spec.edges().map(|n| n.name.as_str()).collect();
    out!(
        "   {:<7} {:<13} ns {}",
        "client",
        client_addr,
        lab.client().ns_name()
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
        out!(
            "   {:<7} {:<13} ns {}  ({role})",
            n.name,
            n.addr,
            lab.host(&n.name).ns_name()
        );
    }
    out!(
        "   one fabric bridge; the client routes {vip} over {} (ECMP, L4 hash); nobody routes the pods",
        edges.join(" and ")
    );
    let servers = PodServers::start(&lab, POD_PORT)?;
    let set = ManifestSet::web(&spec);
    let manifests = lab.write_manifests(&set)?;
    out!(
        "== starting {} run on every node (same manifests: {})",
        bin.display(),
        manifests.path().display()
    );
    let mut xlb = XlbCluster::start(
        &lab,
        manifests.path(),
        &["--xdp-mode".into(), args.xdp_mode.clone()],
    )?;
    let svc = set.services[0].clone();
    let (http, udp) = (svc.port_key("http"), svc.port_key("udp"));
    let frontends = [(Some(vip), WEB_PORT), (None, WEB_NODE_PORT)];
    let mut tables = BTreeMap::new();
    for key in [&http, &udp] {
        let views = xlb
            .wait_for_service(key, &frontends, &svc.ready_addrs(), Duration::from_secs(30))
            .context("xlb did not program the demo Service on every node")?;
        let (_, status) = views.into_iter().next().expect("four nodes");
        out!(
            "   {key}: programmed on all {} nodes, identical Maglev tables (M={})",
            spec.nodes.len(),
            status.table_size
        );
        tables.insert(key.clone(), status.maglev()?);
    }
    let modes: Vec<String> = spec
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
    out!("   XDP on {UPLINK}: {}", modes.join(", "));

    // Captures on the edges' links (their bridge ports): the replies must not pass there.
    let mut captures = Vec::new();
    for e in &edges {
        let port = lab.fabric_port(e).expect("bridge lab");
        match Capture::start(&lab, "fabric", port, "ip") {
            Ok(c) => captures.push((e.to_string(), c)),
            Err(e) => out!("   note: no capture ({e:#}); is tcpdump installed?"),
        }
    }

    let mut ok = true;
    let n = args.connections as usize;
    let predict = |key: &str, port: u16, dst: SocketAddrV4| {
        tables[key]
            .backend(client_addr, port, *dst.ip(), dst.port())
            .and_then(|a| lab.pod_name(a))
            .map(str::to_string)
    };
    let mut entry_points = vec![(
        format!("LoadBalancer VIP (ECMP over {})", edges.join(", ")),
        SocketAddrV4::new(vip, WEB_PORT),
    )];
    for e in &edges {
        entry_points.push((
            format!("NodePort of {e}"),
            SocketAddrV4::new(lab.node_addr(e), WEB_NODE_PORT),
        ));
    }
    for (label, dst) in &entry_points {
        lab::check_interrupted()?;
        out!("== {n} TCP connections from {client_addr} to the {label}: {dst}");
        let report = demo_connections(&lab, *dst, n, timeout);
        let (mut mispredicted, mut wrong_client) = (0, 0);
        let mut via: BTreeMap<String, usize> = BTreeMap::new();
        for c in &report.conns {
            if predict(&http, c.src_port, *dst).as_deref() != Some(c.pod.as_str()) {
                mispredicted += 1;
            }
            if c.seen != SocketAddrV4::new(client_addr, c.src_port) {
                wrong_client += 1;
            }
            if *dst.ip() == vip {
                let hop = lab
                    .next_hop("client", Proto::Tcp, c.src_port, *dst)
                    .ok()
                    .and_then(|a| lab.node_by_addr(a).map(str::to_string))
                    .unwrap_or_else(|| "?".into());
                *via.entry(hop).or_default() += 1;
            }
        }
        let per_pod: Vec<String> = report
            .per_pod()
            .iter()
            .map(|(p, c)| format!("{p} {c}"))
            .collect();
        out!("   served by: {}", per_pod.join(", "));
        if !via.is_empty() {
            let v: Vec<String> = via.iter().map(|(e, c)| format!("{e} {c}")).collect();
            out!(
                "   entered via (the client's ECMP choice): {}",
                v.join(", ")
            );
        }
        out!(
            "   completed {}/{n}, failed {}, on the Maglev-predicted pod {}/{}, pod saw the real client {}/{}",
            report.conns.len(),
            report.failures.len(),
            report.conns.len() - mispredicted,
            report.conns.len(),
            report.conns.len() - wrong_client,
            report.conns.len()
        );
        for (port, e) in report.failures.iter().take(3) {
            out!("   failure from source port {port}: {e}");
        }
        ok &= report.failures.is_empty()
            && report.conns.len() == n
            && mispredicted == 0
            && wrong_client == 0;
    }

    lab::check_interrupted()?;
    let vip_dst = SocketAddrV4::new(vip, WEB_PORT);
    out!("== {n} UDP requests to the VIP {vip_dst}");
    let (mut answered, mut right) = (0, 0);
    let mut udp_pods: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..n {
        let port = lab.client().alloc_port();
        match udp_request(lab.client(), vip_dst, Some(port), timeout) {
            Ok(r) => {
                answered += 1;
                if r.from == vip_dst
                    && r.seen == SocketAddrV4::new(client_addr, port)
                    && predict(&udp, port, vip_dst).as_deref() == Some(r.pod.as_str())
                {
                    right += 1;
                }
                *udp_pods.entry(r.pod).or_default() += 1;
            }
            Err(e) => {
                out!("   request from port {port}: {e:#}");
                if answered == 0 && i >= 2 {
                    break;
                }
            }
        }
    }
    let u: Vec<String> = udp_pods.iter().map(|(p, c)| format!("{p} {c}")).collect();
    out!("   answered by: {}", u.join(", "));
    out!(
        "   answered {answered}/{n}, from {vip_dst} by the predicted pod with the real client seen: {right}/{n}"
    );
    ok &= answered == n && right == n;

    lab::check_interrupted()?;
    out!("== one connection moved from edge-a to edge-b mid-stream (edge-a's next hop removed)");
    match demo_move(&lab, vip_dst, timeout) {
        Ok(line) => out!("   {line}"),
        Err(e) => {
            out!("   FAILED: {e:#}");
            ok = false;
        }
    }

    out!("== what the pods saw");
    for s in servers.servers() {
        let peers = s.stats.peers();
        let ips: BTreeSet<Ipv4Addr> = peers.iter().map(|(_, a)| *a.ip()).collect();
        let ips: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        let node = spec
            .pods()
            .find(|(_, p)| p.name == s.pod)
            .map(|(n, _)| n.name.clone())
            .unwrap_or_default();
        out!(
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
        ok &= peers.iter().all(|(_, a)| *a.ip() == client_addr);
    }

    out!("== direct server return, seen on the edges' links (captures on their bridge ports)");
    let replies = format!(
        "ip and not udp port 6081 and (src host {vip} or src port {WEB_PORT} or src port {WEB_NODE_PORT} or {})",
        spec.nodes
            .iter()
            .filter(|n| !n.pods.is_empty())
            .map(|n| format!("src net {}", n.pod_subnet.network()))
            .collect::<Vec<_>>()
            .join(" or ")
    );
    std::thread::sleep(Duration::from_millis(300));
    for (edge, cap) in &mut captures {
        let addr = lab.node_addr(edge);
        let geneve = cap.count(&format!("src host {addr} and udp dst port 6081"));
        let back = lab
            .uplink_mac(edge)
            .and_then(|mac| cap.count(&format!("ether host {mac} and {replies}")));
        match (geneve, back) {
            (Ok(g), Ok(b)) => {
                out!("   {edge}: {g} Geneve packets sent to the backends' nodes, {b} replies");
                ok &= b == 0 && g > 0;
            }
            (g, b) => out!("   {edge}: reading the capture failed: {g:?} {b:?}"),
        }
    }

    out!("== what each node's datapath counted (xlb stats)");
    for p in xlb.nodes() {
        let counters = p.stats().ok().and_then(|s| s.get("counters").cloned());
        let c = |k: &str| {
            counters
                .as_ref()
                .and_then(|m| m.get(k))
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
        };
        out!(
            "   {:<7} encapsulated {} (XDP_TX {}, redirect {}, via the kernel {}), decapsulated {}, replies rewritten {}, ICMP too big {}",
            p.host().name(),
            c("forward_encap_tx") + c("forward_encap_redirect") + c("encap_fib_pass"),
            c("forward_encap_tx"),
            c("forward_encap_redirect"),
            c("encap_fib_pass"),
            c("decap"),
            c("reply_rewritten"),
            c("icmp_too_big")
        );
    }
    out!("== xlb services (on edge-a)");
    out_raw(&indent(
        &xlb.node("edge-a")
            .cli(&["services"])
            .unwrap_or_else(|e| format!("{e:#}\n")),
    ));

    out!("== tearing down");
    drop(captures);
    let exits = xlb.stop();
    drop(xlb); // xlb down on every node
    drop(servers);
    let names = lab.namespaces();
    drop(lab);
    let left: Vec<&String> = names
        .iter()
        .filter(|n| lab_namespaces().contains(n))
        .collect();
    if !left.is_empty() {
        out!("   namespaces left behind: {left:?}");
        ok = false;
    }
    for (node, exit) in exits {
        match exit {
            Ok(st) if st.success() => {}
            Ok(st) => out!("   note: xlb run on {node} exited with {st} on SIGTERM"),
            Err(e) => out!("   note: {node}: {e:#}"),
        }
    }
    out!(
        "{}",
        if ok {
            "demo: OK"
        } else {
            "demo: some connections misbehaved"
        }
    );
    Ok(ok)
}

/// `n` TCP connections from the client to `dst`, each from its own source port; gives up
/// after 3 failures in a row (a broken datapath would otherwise cost `n` timeouts).
fn demo_connections(lab: &Lab, dst: SocketAddrV4, n: usize, timeout: Duration) -> TcpManyReport {
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

/// Opens a connection to the VIP that the client's ECMP hash sends via edge-a, removes edge-a
/// from the route mid-stream, and checks the connection keeps working on the same pod.
fn demo_move(lab: &Lab, vip: SocketAddrV4, timeout: Duration) -> Result<String> {
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
    let mut conn = connect_tcp(lab.client(), vip, Some(port), timeout)?;
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

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}
