//! `xlb-bench forward`: packets/s delivered to the pods through the edge node, for xlb, for
//! kube-proxy-shaped iptables and nftables rules, and for a bare XDP forwarder (the ceiling of
//! the path), with 1, 1,000 and 10,000 Services programmed; ratios from the same run.
//!
//! Every measurement builds a fresh single-node lab (client — node-a — pods), enables the node
//! uplink's NAPI (`gro on`: what lets a veth receive `XDP_TX` frames without an XDP program,
//! as a NIC would), attaches a count-and-drop sink to every pod, programs the path under test,
//! warms up (so flows exist), then runs the generator in the client and counts what the sinks
//! saw. Packets/s is measured where packets land. The node's pods are the Services' endpoints
//! (local backends). The multi-node lab (issue 3: edge nodes forwarding to pods on other nodes
//! over the tunnel) plugs in at [`Setup`]: a `LabSpec` with edge and backend nodes, the sinks on
//! the backend nodes' pods, the generator routed to the edge; nothing else changes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::baseline::{self, SvcPort};
use crate::bpf::{self, Forwarder, FwdPort, Sink, SinkCounts, Sinks};
use crate::lab::topology::POD_IF;
use crate::lab::{
    EndpointDef, Lab, ManifestSet, PortDef, ServiceDef, UPLINK, XlbOptions, XlbProcess,
};
use crate::say;
use crate::scenarios::{Machine, median, si};
use crate::traffic::{self, Generator, Mix, SERVICE_PORT, TARGET_PORT, Traffic};

/// A forwarding path under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// xlb's XDP program (`xlb run`), DNAT in XDP, then the kernel delivers to the pod.
    Xlb,
    /// kube-proxy iptables mode: KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-* (statistic random).
    Iptables,
    /// kube-proxy nftables mode: verdict maps.
    Nftables,
    /// A bare XDP forwarder: parse, pick a pod, redirect into its veth (the ceiling).
    Ceiling,
}

impl Path {
    pub fn name(&self) -> &'static str {
        match self {
            Path::Xlb => "xlb",
            Path::Iptables => "iptables",
            Path::Nftables => "nftables",
            Path::Ceiling => "ceiling",
        }
    }
    /// Whether the path rewrites the destination to the pod (the sink checks it).
    fn dnat(&self) -> bool {
        *self != Path::Ceiling
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ForwardOptions {
    pub paths: Vec<Path>,
    pub services: Vec<u32>,
    pub mix: Mix,
    pub flows: u32,
    pub frame_size: u16,
    /// Measured window per run.
    pub seconds: f64,
    /// Upper bound of frames per measured window.
    pub max_packets: u64,
    pub warmup_seconds: f64,
    pub rounds: usize,
    pub threads: usize,
    /// `Some((frames per call, pause))`: paced sending for exact counts (the smoke test).
    pub pace: Option<(u32, Duration)>,
    pub xdp_mode: String,
}

/// One measured run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Run {
    pub path: Path,
    pub services: u32,
    pub round: usize,
    /// Time to program the path (rules loaded, or `xlb services` showing every Service).
    pub setup_s: f64,
    pub sent: u64,
    pub elapsed_s: f64,
    pub sent_pps: f64,
    pub delivered: SinkCounts,
    pub delivered_pps: f64,
    pub per_pod: Vec<(String, u64)>,
    /// Problems with the counts (empty when the run is correct).
    pub problems: Vec<String>,
    pub note: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Ratio {
    pub services: u32,
    pub xlb_pps: f64,
    pub baseline: Path,
    pub baseline_pps: f64,
    pub ratio: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ForwardReport {
    pub scenario: &'static str,
    pub machine: Machine,
    pub options: ForwardOptions,
    pub iptables: String,
    pub nft: String,
    pub runs: Vec<Run>,
    /// Median delivered packets/s per (path, services).
    pub medians: Vec<(Path, u32, f64)>,
    pub ratios: Vec<Ratio>,
}

impl ForwardReport {
    pub fn problems(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.problems
                    .iter()
                    .map(move |p| format!("{} @ {} Services: {p}", r.path.name(), r.services))
            })
            .collect()
    }
}

/// The benchmark Services: `default/svc-<s>`, LoadBalancer at [`traffic::vip`]`(s)`, one port
/// (80 → 8080, the mix's protocol), every pod of the lab as an endpoint.
pub fn services(lab: &Lab, n: u32, mix: Mix) -> (Vec<ServiceDef>, Vec<SvcPort>) {
    let pods: Vec<(String, String, Ipv4Addr)> = lab
        .spec()
        .pods()
        .map(|(node, p)| (node.name.clone(), p.name.clone(), p.addr))
        .collect();
    let port_name = mix.protocol().to_ascii_lowercase();
    let defs = (0..n)
        .map(|s| ServiceDef {
            namespace: "default".into(),
            name: format!("svc-{s}"),
            service_type: "LoadBalancer".into(),
            cluster_ip: None,
            lb_ingress: vec![traffic::vip(s)],
            external_ips: vec![],
            ports: vec![PortDef {
                name: port_name.clone(),
                protocol: mix.protocol().into(),
                port: SERVICE_PORT,
                target_port: TARGET_PORT,
                node_port: None,
            }],
            endpoints: pods
                .iter()
                .map(|(node, pod, addr)| EndpointDef {
                    addr: *addr,
                    node: node.clone(),
                    pod: pod.clone(),
                    ready: true,
                    terminating: false,
                })
                .collect(),
        })
        .collect();
    let proto = if mix == Mix::Udp { "udp" } else { "tcp" };
    let ports = (0..n)
        .map(|s| SvcPort {
            namespace: "default".into(),
            name: format!("svc-{s}"),
            port_name: port_name.clone(),
            proto,
            vip: traffic::vip(s),
            port: SERVICE_PORT,
            endpoints: pods.iter().map(|(_, _, a)| (*a, TARGET_PORT)).collect(),
        })
        .collect();
    (defs, ports)
}

/// Whatever keeps a path programmed while it is measured (dropped after).
pub(crate) enum Setup<'lab> {
    Xlb(Box<XlbProcess<'lab>>),
    Rules,
    Ceiling(Forwarder),
}

/// Programs `path` on the single node of `lab` with `n` benchmark Services (every pod an
/// endpoint); returns what keeps it programmed and a note on how it runs.
pub(crate) fn program<'lab>(
    lab: &'lab Lab,
    path: Path,
    n: u32,
    mix: Mix,
    xdp_mode: &str,
) -> Result<(Setup<'lab>, String)> {
    let node = lab.host(&lab.spec().nodes[0].name);
    let (defs, ports) = services(lab, n, mix);
    match path {
        Path::Xlb => {
            let set = ManifestSet {
                services: defs,
                nodes: ManifestSet::nodes_of(lab.spec()),
            };
            let manifests = lab.write_manifests(&set)?;
            let mut xo = XlbOptions::new(node.name(), manifests.path());
            xo.extra_args = vec!["--xdp-mode".into(), xdp_mode.into()];
            let mut xlb = XlbProcess::start(lab, &xo)?;
            let want = n as usize;
            let timeout = Duration::from_secs(60) + Duration::from_millis(100) * n;
            let pods = lab.spec().pods().count();
            xlb.wait_until(timeout, &format!("{n} Services programmed"), |svcs| {
                svcs.iter()
                    .filter(|s| s.name.starts_with("default/svc-"))
                    .filter(|s| s.ready_backends().len() == pods)
                    .count()
                    >= want
            })?;
            let link = node.netns().ip(&["link", "show", UPLINK])?;
            let mode = if link.contains("xdpgeneric") {
                "generic XDP"
            } else {
                "native XDP"
            };
            Ok((Setup::Xlb(Box::new(xlb)), format!("xlb attached in {mode}")))
        }
        Path::Iptables => {
            baseline::apply_iptables(node, &ports, lab.workdir())?;
            Ok((Setup::Rules, baseline::iptables_version()))
        }
        Path::Nftables => {
            baseline::apply_nft(node, &ports, lab.workdir())?;
            Ok((Setup::Rules, baseline::nft_version()))
        }
        Path::Ceiling => {
            let mut fwd = Vec::new();
            for (i, (_, p)) in lab.spec().pods().enumerate() {
                let (ifindex, src_mac) = bpf::link_info(node, &format!("lxc{i}"))?;
                let (_, dst_mac) = bpf::link_info(lab.host(&p.name), POD_IF)?;
                fwd.push(FwdPort {
                    ifindex,
                    dst_mac,
                    src_mac,
                });
            }
            Ok((
                Setup::Ceiling(Forwarder::attach(node, UPLINK, &fwd)?),
                "bare XDP forwarder (xlb-fwd), redirect into the pod veth".into(),
            ))
        }
    }
}

/// One measurement on a fresh lab.
fn measure(path: Path, n: u32, round: usize, opts: &ForwardOptions) -> Result<Run> {
    crate::lab::check_interrupted()?;
    let lab = Lab::single_node()?;
    let node = lab.host(&lab.spec().nodes[0].name);
    node.netns().exec("ethtool", &["-K", UPLINK, "gro", "on"])?;
    let mut sinks = Vec::new();
    for (_, p) in lab.spec().pods() {
        sinks.push(Sink::attach(
            lab.host(&p.name),
            POD_IF,
            p.addr,
            TARGET_PORT,
        )?);
    }
    let sinks = Sinks { sinks };
    let t0 = Instant::now();
    let (setup, note) = program(&lab, path, n, opts.mix, &opts.xdp_mode)
        .with_context(|| format!("programming {}", path.name()))?;
    let setup_s = t0.elapsed().as_secs_f64();
    let (_, node_mac) = bpf::link_info(node, UPLINK)?;
    let (_, client_mac) = bpf::link_info(lab.client(), UPLINK)?;
    let traffic = Traffic {
        mix: opts.mix,
        flows: opts.flows,
        services: n,
        frame_size: opts.frame_size,
        dst_mac: node_mac,
        src_mac: client_mac,
    };
    let mut generator = Generator::new(&traffic)?;
    if let Some((chunk, pause)) = opts.pace {
        generator.pace(chunk, pause);
    }
    let client = lab.client();
    // Warm-up: every flow at least once (conntrack entries exist), caches warm.
    let warm = (opts.flows as u64 * 2).max(10_000);
    generator.run(
        client,
        UPLINK,
        warm,
        Duration::from_secs_f64(opts.warmup_seconds),
        opts.threads,
    )?;
    std::thread::sleep(Duration::from_millis(200));
    let before = sinks.total()?;
    let pods_before = sinks.per_pod()?;
    let xlb_before = match &setup {
        Setup::Xlb(x) => Some(x.counter("forward_local")?),
        _ => None,
    };
    let r = generator.run(
        client,
        UPLINK,
        opts.max_packets,
        Duration::from_secs_f64(opts.seconds),
        opts.threads,
    )?;
    // Let the last batches drain out of the veth queues.
    std::thread::sleep(Duration::from_millis(300));
    let delivered = sinks.total()?.since(&before);
    if std::env::var_os("XLB_BENCH_DEBUG").is_some() {
        for (h, i) in [(node, UPLINK), (node, "lxc0"), (lab.host("pod-1"), POD_IF)] {
            let s = h.netns().exec("ethtool", &["-S", i]).unwrap_or_default();
            let l = h.netns().ip(&["-s", "link", "show", i]).unwrap_or_default();
            eprintln!(
                "--- {} {i}\n{l}{}",
                h.name(),
                s.lines()
                    .filter(|l| !l.ends_with(": 0"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    let per_pod: Vec<(String, u64)> = sinks
        .per_pod()?
        .into_iter()
        .zip(pods_before)
        .map(|((pod, c), (_, b))| (pod, c.packets - b.packets))
        .collect();
    let mut problems = Vec::new();
    if delivered.packets > r.sent {
        problems.push(format!(
            "the sinks counted {} packets but only {} were sent",
            delivered.packets, r.sent
        ));
    }
    if path.dnat() && delivered.to_other != 0 {
        problems.push(format!(
            "{} packets arrived not addressed to the pod's address and target port",
            delivered.to_other
        ));
    }
    if !path.dnat() && delivered.to_pod != 0 {
        problems.push(format!(
            "{} packets were rewritten by a forwarder that does not rewrite",
            delivered.to_pod
        ));
    }
    match opts.mix {
        Mix::Syn if delivered.tcp_syn != delivered.packets => problems.push(format!(
            "{} of {} delivered packets were SYNs",
            delivered.tcp_syn, delivered.packets
        )),
        Mix::Udp if delivered.udp != delivered.packets => problems.push(format!(
            "{} of {} delivered packets were UDP",
            delivered.udp, delivered.packets
        )),
        _ => {}
    }
    if let (Setup::Xlb(x), Some(b)) = (&setup, xlb_before) {
        let fwd = x.counter("forward_local")? - b;
        if fwd < delivered.packets {
            problems.push(format!(
                "xlb counted {fwd} local forwards but the pods received {}",
                delivered.packets
            ));
        }
    }
    if let Setup::Ceiling(f) = &setup {
        let (redirected, _) = f.counts()?;
        if redirected < delivered.packets {
            problems.push(format!(
                "the forwarder redirected {redirected} packets but the pods received {}",
                delivered.packets
            ));
        }
    }
    if opts.pace.is_some() {
        // Paced runs must lose nothing, and every pod must get its share.
        if delivered.packets != r.sent {
            problems.push(format!(
                "{} packets sent, {} delivered",
                r.sent, delivered.packets
            ));
        }
        if let Some((pod, _)) = per_pod.iter().find(|(_, c)| *c == 0) {
            problems.push(format!("{pod} received nothing"));
        }
    } else if delivered.packets == 0 {
        problems.push("nothing was delivered".into());
    }
    drop(setup);
    let elapsed_s = r.elapsed.as_secs_f64();
    Ok(Run {
        path,
        services: n,
        round,
        setup_s,
        sent: r.sent,
        elapsed_s,
        sent_pps: r.pps(),
        delivered_pps: delivered.packets as f64 / elapsed_s.max(1e-9),
        delivered,
        per_pod,
        problems,
        note,
    })
}

pub fn run(opts: &ForwardOptions) -> Result<ForwardReport> {
    if opts.paths.is_empty() || opts.services.is_empty() {
        bail!("nothing to measure");
    }
    if let Some(&n) = opts
        .services
        .iter()
        .find(|&&n| n == 0 || n > traffic::MAX_SERVICES)
    {
        bail!("{n} Services: use 1..={}", traffic::MAX_SERVICES);
    }
    let mut runs = Vec::new();
    let total = opts.rounds * opts.services.len() * opts.paths.len();
    let mut k = 0;
    for round in 0..opts.rounds {
        for &n in &opts.services {
            for &path in &opts.paths {
                k += 1;
                eprint!(
                    "[{k}/{total}] {} with {n} Services (round {})... ",
                    path.name(),
                    round + 1
                );
                crate::lab::check_interrupted()?;
                // A failed measurement is recorded (and fails the scenario) without losing
                // the others.
                let r = measure(path, n, round, opts).unwrap_or_else(|e| Run {
                    path,
                    services: n,
                    round,
                    setup_s: 0.0,
                    sent: 0,
                    elapsed_s: 0.0,
                    sent_pps: 0.0,
                    delivered: SinkCounts::default(),
                    delivered_pps: 0.0,
                    per_pod: vec![],
                    problems: vec![format!("{e:#}")],
                    note: String::new(),
                });
                eprintln!(
                    "{} pkt/s delivered (setup {:.1} s){}",
                    si(r.delivered_pps),
                    r.setup_s,
                    if r.problems.is_empty() {
                        ""
                    } else {
                        " PROBLEMS"
                    }
                );
                runs.push(r);
            }
        }
    }
    let mut medians = Vec::new();
    for &n in &opts.services {
        for &path in &opts.paths {
            let v: Vec<f64> = runs
                .iter()
                .filter(|r| r.path == path && r.services == n && r.sent > 0)
                .map(|r| r.delivered_pps)
                .collect();
            if !v.is_empty() {
                medians.push((path, n, median(&v)));
            }
        }
    }
    let get = |p: Path, n: u32| {
        medians
            .iter()
            .find(|(q, m, _)| *q == p && *m == n)
            .map(|x| x.2)
    };
    let mut ratios = Vec::new();
    for &n in &opts.services {
        let Some(x) = get(Path::Xlb, n) else { continue };
        for b in [Path::Iptables, Path::Nftables, Path::Ceiling] {
            if let Some(bp) = get(b, n) {
                ratios.push(Ratio {
                    services: n,
                    xlb_pps: x,
                    baseline: b,
                    baseline_pps: bp,
                    ratio: x / bp.max(1e-9),
                });
            }
        }
    }
    Ok(ForwardReport {
        scenario: "forward",
        machine: Machine::this(),
        options: opts.clone(),
        iptables: baseline::iptables_version(),
        nft: baseline::nft_version(),
        runs,
        medians,
        ratios,
    })
}

pub fn print(rep: &ForwardReport) {
    let o = &rep.options;
    say!(
        "forward: packets/s delivered to the pods (mix {}, {} flows, {} B frames, {:.1} s windows, {} generator thread(s), {} CPUs)",
        o.mix.name(),
        o.flows,
        o.frame_size,
        o.seconds,
        o.threads,
        rep.machine.cpus
    );
    say!(
        "{:>9}  {:<9} {:>13} {:>11} {:>7} {:>9}  {}",
        "Services",
        "path",
        "delivered/s",
        "sent/s",
        "loss",
        "setup s",
        "checks"
    );
    for r in &rep.runs {
        let loss = if r.sent > 0 {
            1.0 - r.delivered.packets as f64 / r.sent as f64
        } else {
            0.0
        };
        say!(
            "{:>9}  {:<9} {:>13} {:>11} {:>6.1}% {:>9.1}  {}",
            r.services,
            r.path.name(),
            si(r.delivered_pps),
            si(r.sent_pps),
            loss * 100.0,
            r.setup_s,
            if r.problems.is_empty() {
                "ok".to_string()
            } else {
                r.problems.join("; ")
            }
        );
    }
    if !rep.ratios.is_empty() {
        say!("ratios (median delivered packets/s, same run):");
        say!(
            "{:>9}  {:>14} {:>14} {:>14}",
            "Services",
            "xlb/iptables",
            "xlb/nftables",
            "xlb/ceiling"
        );
        for &n in &o.services {
            let f = |b: Path| {
                rep.ratios
                    .iter()
                    .find(|r| r.services == n && r.baseline == b)
                    .map(|r| format!("{:.2}", r.ratio))
                    .unwrap_or_else(|| "-".into())
            };
            say!(
                "{:>9}  {:>14} {:>14} {:>14}",
                n,
                f(Path::Iptables),
                f(Path::Nftables),
                f(Path::Ceiling)
            );
        }
    }
}
