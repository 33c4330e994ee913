//! `xlb-bench`: lab demos and benchmarks for xlb.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use xlb_bench::lab::{self, *};

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
    /// Build the single-node lab, run xlb in it, make connections to the VIP and the NodePort,
    /// show which pod served them and what the pods saw, then tear everything down.
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Connections to the VIP, and again to the NodePort.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=1000))]
    connections: u16,
    /// XDP attach mode passed to `xlb run`.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// Per-connection timeout, in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..=10000))]
    timeout_ms: u64,
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
    }
}

/// Runs the demo; `Ok(false)` when traffic misbehaved. Everything it builds is torn down when
/// it returns (the locals' destructors), also on error or Ctrl-C.
fn demo(args: &DemoArgs) -> Result<bool> {
    lab::install_interrupt_handler();
    let timeout = Duration::from_millis(args.timeout_ms);
    let bin = xlb_binary()?;
    out!("== building the lab (network namespaces, 198.18.0.0/15 only)");
    let lab = Lab::single_node()?;
    let spec = lab.spec().clone();
    let node = &spec.nodes[0];
    let client_addr = lab.client().addr();
    out!("   client  {client_addr:<15} ns {}", lab.client().ns_name());
    out!(
        "   {:<7} {:<15} ns {} (xlb on {UPLINK})",
        node.name,
        node.addr,
        lab.host(&node.name).ns_name()
    );
    for p in &node.pods {
        out!(
            "   {:<7} {:<15} ns {}",
            p.name,
            p.addr,
            lab.host(&p.name).ns_name()
        );
    }
    let servers = PodServers::start(&lab, POD_PORT)?;
    let set = ManifestSet::web(&spec);
    let manifests = lab.write_manifests(&set)?;
    out!(
        "== starting {} run in {} (manifests {})",
        bin.display(),
        node.name,
        manifests.path().display()
    );
    let mut opts = XlbOptions::new(&node.name, manifests.path());
    opts.extra_args = vec!["--xdp-mode".into(), args.xdp_mode.clone()];
    let mut xlb = XlbProcess::start(&lab, &opts)?;
    let svc = set.services[0].clone();
    let vip = spec.vips[0];
    let http = svc.port_key("http");
    let status = xlb
        .wait_for_service(
            &http,
            &[(Some(vip), WEB_PORT), (None, WEB_NODE_PORT)],
            &svc.ready_addrs(),
            Duration::from_secs(30),
        )
        .context("xlb did not program the demo Service")?;
    let predictor = status.maglev()?;
    let link = lab.host(&node.name).netns().ip(&["link", "show", UPLINK])?;
    let mode = if link.contains("xdpgeneric") {
        "generic"
    } else if link.contains("xdpoffload") {
        "offload"
    } else if link.contains(" xdp") {
        "native"
    } else {
        "none?"
    };
    out!(
        "   xlb programmed {http} (Maglev M={}); XDP on {UPLINK}: {mode}",
        status.table_size
    );

    let mut ok = true;
    let n = args.connections as usize;
    for (label, dst) in [
        ("LoadBalancer VIP", SocketAddrV4::new(vip, WEB_PORT)),
        ("NodePort", SocketAddrV4::new(node.addr, WEB_NODE_PORT)),
    ] {
        lab::check_interrupted()?;
        out!("== {n} TCP connections from {client_addr} to {label} {dst}");
        let report = tcp_many(lab.client(), dst, n, timeout);
        let mut mispredicted = 0;
        let mut wrong_client = 0;
        for c in &report.conns {
            let want = predictor.backend(client_addr, c.src_port, *dst.ip(), dst.port());
            if want.and_then(|a| lab.pod_name(a)) != Some(c.pod.as_str()) {
                mispredicted += 1;
            }
            if c.seen != SocketAddrV4::new(client_addr, c.src_port) {
                wrong_client += 1;
            }
        }
        for (pod, count) in report.per_pod() {
            out!("   {pod}: {count}");
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
        for (port, e) in report.failures.iter().take(5) {
            out!("   failure from source port {port}: {e}");
        }
        ok &= report.failures.is_empty() && mispredicted == 0 && wrong_client == 0;
    }

    out!("== what the pods saw");
    for s in servers.servers() {
        let peers = s.stats.peers();
        let ips: BTreeSet<Ipv4Addr> = peers.iter().map(|(_, a)| *a.ip()).collect();
        let sample: Vec<String> = peers.iter().take(3).map(|(_, a)| a.to_string()).collect();
        out!(
            "   {} ({}): {} connections, client addresses {:?} (e.g. {})",
            s.pod,
            s.addr,
            s.stats.tcp_connections(),
            ips,
            sample.join(", ")
        );
        ok &= ips.iter().all(|ip| *ip == client_addr);
    }
    let by_pod: BTreeMap<String, u64> = servers.tcp_counts();
    if by_pod.values().filter(|&&c| c > 0).count() < by_pod.len() {
        out!("   note: not every pod got a connection");
    }

    out!("== xlb services");
    out_raw(&indent(
        &xlb.cli(&["services"])
            .unwrap_or_else(|e| format!("{e:#}\n")),
    ));
    out!("== xlb stats");
    out_raw(&indent(
        &xlb.cli(&["stats"]).unwrap_or_else(|e| format!("{e:#}\n")),
    ));

    out!("== tearing down");
    let exit = xlb.stop();
    drop(xlb); // xlb down
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
    match exit {
        Ok(st) if st.success() => {}
        Ok(st) => out!("   note: xlb run exited with {st} on SIGTERM"),
        Err(e) => out!("   note: {e:#}"),
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

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("   {l}\n")).collect()
}
