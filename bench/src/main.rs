//! `xlb-bench`: lab demos and benchmarks for xlb.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use xlb_bench::demo::{self, DemoOptions};
use xlb_bench::lab;
use xlb_bench::say;
use xlb_bench::scenarios::{
    self, forward, forward::Path, generator, latency, maglev, micro, profile, report,
};
use xlb_bench::traffic::Mix;

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
    /// Paths to measure (comma-separated). Default: xlb,iptables,nftables,ceiling, and for the
    /// `syn` mix also xlb-noguard (the SYN-flood guard off), so the run shows the guard's effect.
    #[arg(long, value_enum, value_delimiter = ',')]
    paths: Option<Vec<Path>>,
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

impl DemoArgs {
    fn options(&self) -> DemoOptions {
        DemoOptions {
            connections: self.connections,
            xdp_mode: self.xdp_mode.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

#[derive(clap::Args)]
struct ControlArgs {
    /// Numbers of Services to program (comma-separated); a fresh lab and `xlb run` for each.
    /// `xlb run` gets `--max-services`, `--max-frontends` and `--max-backends` sized for N where
    /// the defaults are too small. 100000 takes several minutes here.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
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
    /// Synthetic flows in the connection table of a second `xlb run` per Service count, for
    /// the `/metrics` and `xlb services` figures (0: skip them).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(0..=8_000_000))]
    conntrack_entries: u32,
    /// `/metrics` scrapes timed against that table.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10000))]
    scrapes: u32,
    /// Skip loading kube-proxy's rules with `iptables-restore` and `nft -f`.
    #[arg(long)]
    no_baselines: bool,
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
        Command::Demo(args) => finish("demo", demo::run(&args.options())),
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
    say!("wrote {}", path.display());
    Ok(())
}

/// Prints a scenario's problems (and, for `--quick`, the verdict line the smoke tests look
/// for); whether it passed.
fn conclude(name: &str, quick: bool, problems: &[String]) -> bool {
    for p in problems {
        say!("problem: {p}");
    }
    if quick {
        say!(
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
        conntrack_entries: a.conntrack_entries,
        scrapes: a.scrapes,
        baselines: !a.no_baselines,
    };
    if a.quick {
        opts.services = vec![1, 100];
        opts.endpoints = 3;
        opts.changes = 5;
        opts.conntrack_entries = 20_000;
        opts.scrapes = 20;
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
    say!("updated {} from {}", a.doc.display(), a.from.display());
    Ok(true)
}

fn forward_cmd(a: &ForwardArgs) -> Result<bool> {
    lab::install_interrupt_handler();
    let t = &a.traffic;
    t.check()?;
    let mut opts = forward::ForwardOptions {
        lab: a.lab,
        paths: a
            .paths
            .clone()
            .unwrap_or_else(|| forward::default_paths(t.mix)),
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
