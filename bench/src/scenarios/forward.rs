//! `xlb-bench forward`: packets/s delivered to the pods through the edge node, for xlb, for
//! kube-proxy-shaped iptables and nftables rules, and for a bare XDP forwarder (the ceiling of
//! the path), with 1, 1,000 and 10,000 Services programmed; ratios from the same run.
//!
//! Two labs ([`LabKind`]); every measurement builds a fresh one.
//!
//! `--lab single` (the default): one node with local backends (client — node-a — pods). The
//! node uplink's NAPI is enabled (`gro on`: what lets a veth receive `XDP_TX` frames without an
//! XDP program, as a NIC would), a count-and-drop sink is attached to every pod, the path under
//! test is programmed, the lab warms up (so flows exist), then the generator runs in the client
//! and the sinks count what they saw. Packets/s is measured where packets land. The node's pods
//! are the Services' endpoints.
//!
//! `--lab dsr`: the multi-node lab ([`Lab::dsr`]: client, edge-a, edge-b, node-c with pods c1
//! and c2, node-d with pod d1, one fabric bridge, pod subnets routed by nobody). The generator
//! sends everything to edge-a (its uplink MAC); every pod of the lab is an endpoint, so every
//! packet crosses the fabric twice: client → edge-a → backend node → pod. The paths
//! ([`program_dsr`]):
//! * xlb: `xlb run` on every node; edge-a encapsulates in Geneve to the pod's node, which
//!   decapsulates and hands the packet to the kernel, which routes it to the pod;
//! * iptables / nftables: the same rules on edge-a, plus routes on edge-a (only) for node-c's
//!   and node-d's pod subnets via those nodes: edge-a's kernel DNATs and forwards the packet
//!   over the fabric, the backend node's kernel routes it to the pod;
//! * ceiling: two bare XDP hops. `xlb-fwd` on edge-a picks a backend node and redirects the
//!   frame back out of its uplink to that node's MAC; `xlb-fwd` on node-c and node-d redirects
//!   it into a pod's veth. Neither rewrites anything but the MACs, nothing is encapsulated and
//!   no kernel stack is crossed. `xlb-fwd` spreads by a mix of the whole flow modulo its ports;
//!   both hops get one port per pod of the lab (on edge-a: the pod's node's MAC; on a backend
//!   node: the pod's veth, or nothing for another node's pod), so both pick the same pod and
//!   every pod gets a third, as Maglev gives it with equal weights. (One port per node on the
//!   edge would give node-d's single pod half of the traffic.)
//!
//! Before the path is programmed, the fabric bridge gets static FDB entries for every uplink
//! (an unlearned MAC would be flooded to every node, whose XDP programs would see the frame
//! too) and edge-a permanent neighbour entries for the backend nodes (no ARP in the
//! measurement; xlb's FIB lookup finds its next hop from the first packet).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::baseline::{self, SvcPort};
use crate::bpf::{self, Forwarder, FwdPort, GenConfig, Sink, SinkCounts, Sinks};
use crate::lab::topology::{LAB_RANGE, POD_IF};
use crate::lab::{
    EndpointDef, Host, Lab, ManifestSet, PortDef, ServiceDef, ServiceStatusExt as _, UPLINK,
    XlbCluster, XlbOptions, XlbProcess,
};
use crate::say;
use crate::scenarios::{Machine, median, si};
use crate::traffic::{self, Generator, Mix, SERVICE_PORT, TARGET_PORT, Traffic};

/// A forwarding path under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// xlb's XDP program (`xlb run`), DNAT in XDP, then into the pod by its default delivery
    /// (`--pod-delivery peer`: `bpf_redirect_peer` from TC, past the kernel's IP stack).
    Xlb,
    /// The same with the SYN-flood guard off (`--syn-guard-rate 0`): every SYN writes its
    /// conntrack entry. Against `xlb` in the `syn` mix, the guard's effect.
    #[value(name = "xlb-noguard")]
    #[serde(rename = "xlb-noguard")]
    XlbNoGuard,
    /// kube-proxy iptables mode: KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-* (statistic random).
    Iptables,
    /// kube-proxy nftables mode: verdict maps.
    Nftables,
    /// A bare XDP forwarder: parse, pick a pod, redirect into its veth (the ceiling).
    Ceiling,
    /// xlb with `--pod-delivery kernel`: the kernel routes the DNATed packet to the pod.
    #[serde(rename = "xlb-kernel")]
    XlbKernel,
    /// xlb with `--pod-delivery redirect`: `bpf_redirect` out of the pod's host-side veth.
    #[serde(rename = "xlb-redirect")]
    XlbRedirect,
    /// xlb with `--pod-delivery neigh`: `bpf_redirect_neigh` out of the host-side veth.
    #[serde(rename = "xlb-neigh")]
    XlbNeigh,
    /// xlb with `--pod-delivery xdp`: the XDP frame redirected into the host-side veth. Needs
    /// NAPI on the pod's end (here: the native sink), so not for ordinary pods.
    #[serde(rename = "xlb-xdp")]
    XlbXdp,
}

impl Path {
    pub fn name(&self) -> &'static str {
        match self {
            Path::Xlb => "xlb",
            Path::XlbNoGuard => "xlb-noguard",
            Path::Iptables => "iptables",
            Path::Nftables => "nftables",
            Path::Ceiling => "ceiling",
            Path::XlbKernel => "xlb-kernel",
            Path::XlbRedirect => "xlb-redirect",
            Path::XlbNeigh => "xlb-neigh",
            Path::XlbXdp => "xlb-xdp",
        }
    }
    /// `xlb run` arguments of an xlb path beyond the lab's.
    fn xlb_args(&self) -> Vec<String> {
        if *self == Path::XlbNoGuard {
            vec!["--syn-guard-rate".into(), "0".into()]
        } else {
            vec![]
        }
    }

    /// Whether the path rewrites the destination to the pod (the sink checks it).
    fn dnat(&self) -> bool {
        *self != Path::Ceiling
    }
    /// xlb's `--pod-delivery` for an xlb path.
    pub fn pod_delivery(&self) -> Option<&'static str> {
        Some(match self {
            Path::Xlb => "peer",
            Path::XlbKernel => "kernel",
            Path::XlbRedirect => "redirect",
            Path::XlbNeigh => "neigh",
            Path::XlbXdp => "xdp",
            _ => return None,
        })
    }
    /// Whether packets reach the pods as XDP frames (the ceiling's, `xlb-xdp`'s), which need
    /// NAPI on the pod's end: a native sink. Every other path delivers skbs, into ordinary pods:
    /// GRO off and a generic (skb) sink, which gives the pod's veth no NAPI, as in a cluster.
    pub fn frames_to_pods(&self) -> bool {
        matches!(self, Path::Ceiling | Path::XlbXdp)
    }
}

/// The paths `xlb-bench forward` measures unless told: xlb and its baselines, and in the `syn`
/// mix xlb with the SYN-flood guard off as well, the guard's own baseline.
pub fn default_paths(mix: Mix) -> Vec<Path> {
    let mut paths = vec![Path::Xlb, Path::Iptables, Path::Nftables, Path::Ceiling];
    if mix == Mix::Syn {
        paths.insert(1, Path::XlbNoGuard);
    }
    paths
}

/// The lab a forward run measures on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabKind {
    /// One node with local backends: client — node-a — pods.
    #[default]
    Single,
    /// The multi-node lab: client → edge-a → node-c (c1, c2) or node-d (d1), over a fabric bridge.
    Dsr,
}

impl LabKind {
    pub fn name(&self) -> &'static str {
        match self {
            LabKind::Single => "single",
            LabKind::Dsr => "dsr",
        }
    }

    fn build(&self) -> Result<Lab> {
        match self {
            LabKind::Single => Lab::new(crate::lab::LabSpec::single_node().for_benchmarks()),
            LabKind::Dsr => Lab::new(crate::lab::LabSpec::dsr().for_benchmarks()),
        }
    }
}

/// The name (without `.json`) a forward run's results are written under: `forward`, then
/// `-quick` for the smoke test, `-dsr` for the multi-node lab, and `-<mix>` for a mix other than
/// `established` (not for the smoke test): `forward`, `forward-syn`, `forward-dsr`,
/// `forward-dsr-udp`, `forward-quick`, `forward-quick-dsr`.
pub fn file_name(lab: LabKind, mix: Mix, quick: bool) -> String {
    let mut name = String::from("forward");
    if quick {
        name.push_str("-quick");
    }
    if lab != LabKind::Single {
        name.push('-');
        name.push_str(lab.name());
    }
    if !quick && mix != Mix::Established {
        name.push('-');
        name.push_str(mix.name());
    }
    name
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ForwardOptions {
    /// The lab measured on.
    pub lab: LabKind,
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
    /// xlb's SYN-flood guard over the measured window (xlb paths; on the multi-node lab,
    /// edge-a's).
    pub syn_guard: Option<GuardWindow>,
}

/// What xlb's SYN-flood guard did in a measured window: `xlb stats`' `syn_guard` and
/// `conntrack_new`, after less before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GuardWindow {
    /// `--syn-guard-rate` (0: off).
    pub rate: u32,
    /// Seconds (per CPU) in which the guard engaged.
    pub trips: u64,
    /// SYNs forwarded without a conntrack write.
    pub skipped: u64,
    /// New flows recorded in conntrack.
    pub recorded: u64,
}

impl GuardWindow {
    fn since(&self, before: &GuardWindow) -> GuardWindow {
        GuardWindow {
            rate: self.rate,
            trips: self.trips.saturating_sub(before.trips),
            skipped: self.skipped.saturating_sub(before.skipped),
            recorded: self.recorded.saturating_sub(before.recorded),
        }
    }
}

/// The guard's reading of the xlb that receives the traffic (none for the other paths).
fn guard_reading(setup: &Setup<'_>, edge: &str) -> Result<Option<GuardWindow>> {
    let x = match setup {
        Setup::Xlb(x) => &**x,
        Setup::XlbCluster(c) => c.node(edge),
        _ => return Ok(None),
    };
    let st = x.stats()?;
    let g = st
        .syn_guard
        .context("`xlb stats -o json` has no syn_guard")?;
    Ok(Some(GuardWindow {
        rate: g.rate,
        trips: g.trips,
        skipped: g.skipped,
        recorded: st.counters.get("conntrack_new").copied().unwrap_or(0),
    }))
}

/// What is wrong with the guard's window: it must never skip when off, and must engage when
/// on and every CPU's share of the new flows was above its rate (a per-CPU window may start
/// anywhere, so two windows of slack).
pub fn guard_problems(
    g: &GuardWindow,
    mix: Mix,
    new_flows: u64,
    elapsed_s: f64,
    cpus: usize,
) -> Vec<String> {
    let mut p = Vec::new();
    if g.rate == 0 && (g.skipped != 0 || g.trips != 0) {
        p.push(format!(
            "the guard is off but skipped {} SYNs in {} trips",
            g.skipped, g.trips
        ));
    }
    let above = g.rate as f64 * cpus.max(1) as f64 * (elapsed_s + 2.0);
    if mix == Mix::Syn && g.rate > 0 && new_flows as f64 > above && (g.trips == 0 || g.skipped == 0)
    {
        p.push(format!(
            "{new_flows} new flows in {elapsed_s:.1} s on {cpus} CPUs, above the guard's {} per \
             second per CPU, but it never engaged",
            g.rate
        ));
    }
    p
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
    /// `xlb run` on every node of the multi-node lab.
    XlbCluster(Box<XlbCluster<'lab>>),
    /// The two-hop ceiling of the multi-node lab: the edge's forwarder, then the backend
    /// nodes', by node name.
    Forwarders(Vec<(String, Forwarder)>),
}

/// Counters of the path under test that must account for every delivered packet: (subject,
/// value, noun) for "`subject` `value` `noun` but the pods received ...".
type PathCounters = Vec<(String, u64, &'static str)>;

fn path_counters(setup: &Setup<'_>, edge: &str, path: Path) -> Result<PathCounters> {
    // Every delivery must have taken the fast path where the path has one.
    let fast = path.pod_delivery().is_some_and(|d| d != "kernel");
    Ok(match setup {
        Setup::Xlb(x) => {
            let mut c = vec![(
                "xlb counted".into(),
                x.counter("forward_local")?,
                "local forwards",
            )];
            if fast {
                c.push((
                    "xlb counted".into(),
                    x.counter("deliver_pod")?,
                    "deliveries into pods",
                ));
            }
            c
        }
        Setup::Rules => vec![],
        Setup::Ceiling(f) => vec![("the forwarder redirected".into(), f.counts()?.0, "packets")],
        Setup::XlbCluster(c) => {
            let (mut encap, mut decap) = (0, 0);
            let mut backends = Vec::new();
            for p in c.nodes() {
                if p.host().name() == edge {
                    for k in [
                        "forward_encap_tx",
                        "forward_encap_redirect",
                        "forward_encap_skb",
                        "encap_fib_pass",
                    ] {
                        encap += p.counter(k)?;
                    }
                } else {
                    decap += p.counter("decap")?;
                    backends.push(p.host().name().to_string());
                }
            }
            let mut v = vec![
                (format!("xlb on {edge} counted"), encap, "encapsulations"),
                (
                    format!("xlb on {} counted", backends.join(", ")),
                    decap,
                    "decapsulations",
                ),
            ];
            if fast {
                let mut delivered = 0;
                for p in c.nodes() {
                    if p.host().name() != edge {
                        delivered += p.counter("deliver_pod")?;
                    }
                }
                v.push((
                    format!("xlb on {} counted", backends.join(", ")),
                    delivered,
                    "deliveries into pods",
                ));
            }
            v
        }
        Setup::Forwarders(fs) => {
            let mut edge_fwd = 0;
            let mut nodes = Vec::new();
            let mut node_fwd = 0;
            for (name, f) in fs {
                if name == edge {
                    edge_fwd += f.counts()?.0;
                } else {
                    node_fwd += f.counts()?.0;
                    nodes.push(name.clone());
                }
            }
            vec![
                (
                    format!("the forwarder on {edge} redirected"),
                    edge_fwd,
                    "packets",
                ),
                (
                    format!("the forwarders on {} redirected", nodes.join(", ")),
                    node_fwd,
                    "packets",
                ),
            ]
        }
    })
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
        Path::Xlb
        | Path::XlbNoGuard
        | Path::XlbKernel
        | Path::XlbRedirect
        | Path::XlbNeigh
        | Path::XlbXdp => {
            let set = ManifestSet {
                services: defs,
                nodes: ManifestSet::nodes_of(lab.spec()),
            };
            let manifests = lab.write_manifests(&set)?;
            let mut xo = XlbOptions::new(node.name(), manifests.path());
            xo.extra_args = vec![
                "--xdp-mode".into(),
                xdp_mode.into(),
                "--pod-delivery".into(),
                path.pod_delivery().unwrap_or("peer").into(),
            ];
            xo.extra_args.extend(path.xlb_args());
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
            Ok((
                Setup::Xlb(Box::new(xlb)),
                format!(
                    "xlb attached in {mode}, --pod-delivery {}",
                    path.pod_delivery().unwrap_or("peer")
                ),
            ))
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

/// The backend nodes of the multi-node lab: every node that runs pods, with its pods.
fn backend_nodes(lab: &Lab) -> Vec<&crate::lab::NodeSpec> {
    lab.spec()
        .nodes
        .iter()
        .filter(|n| !n.edge && !n.pods.is_empty())
        .collect()
}

/// Prepares the multi-node lab for a measurement through `edge`: static FDB entries on the
/// fabric bridge for every client's and node's uplink (never flood a frame to every node), and
/// permanent neighbour entries on `edge` for the backend nodes (no ARP in the measurement).
fn prepare_dsr(lab: &Lab, edge: &Host) -> Result<()> {
    let fabric = lab
        .fabric()
        .context("the multi-node lab has a fabric bridge")?;
    let spec = lab.spec();
    let hosts = spec
        .clients
        .iter()
        .map(|c| c.name.as_str())
        .chain(spec.nodes.iter().map(|n| n.name.as_str()));
    for h in hosts {
        let port = lab
            .fabric_port(h)
            .with_context(|| format!("{h} has no bridge port"))?;
        let mac = lab.uplink_mac(h)?;
        fabric.netns().exec(
            "bridge",
            &["fdb", "replace", &mac, "dev", port, "master", "static"],
        )?;
    }
    for n in backend_nodes(lab) {
        let mac = lab.uplink_mac(&n.name)?;
        let addr = n.addr.to_string();
        edge.netns().ip(&[
            "neigh",
            "replace",
            &addr,
            "lladdr",
            &mac,
            "dev",
            UPLINK,
            "nud",
            "permanent",
        ])?;
    }
    Ok(())
}

/// Programs `path` on the multi-node lab with `n` benchmark Services (every pod of the lab an
/// endpoint), all traffic entering at `edge`; returns what keeps it programmed and a note on
/// how it runs (see the module docs for the paths).
pub(crate) fn program_dsr<'lab>(
    lab: &'lab Lab,
    edge: &'lab Host,
    path: Path,
    n: u32,
    mix: Mix,
    xdp_mode: &str,
) -> Result<(Setup<'lab>, String)> {
    let spec = lab.spec();
    let (defs, ports) = services(lab, n, mix);
    match path {
        Path::Xlb
        | Path::XlbNoGuard
        | Path::XlbKernel
        | Path::XlbRedirect
        | Path::XlbNeigh
        | Path::XlbXdp => {
            let set = ManifestSet {
                services: defs,
                nodes: ManifestSet::nodes_of(spec),
            };
            let manifests = lab.write_manifests(&set)?;
            let mut args = vec![
                "--xdp-mode".to_string(),
                xdp_mode.to_string(),
                "--pod-delivery".to_string(),
                path.pod_delivery().unwrap_or("peer").to_string(),
            ];
            args.extend(path.xlb_args());
            let mut cluster = XlbCluster::start(lab, manifests.path(), &args)?;
            let want = n as usize;
            let pods = spec.pods().count();
            // One deadline for all nodes (they program in parallel).
            let deadline =
                Instant::now() + Duration::from_secs(60) + Duration::from_millis(100) * n;
            for node in &spec.nodes {
                let left = deadline.saturating_duration_since(Instant::now());
                cluster
                    .node_mut(&node.name)
                    .wait_until(
                        left.max(Duration::from_millis(1)),
                        &format!("{n} Services programmed"),
                        |svcs| {
                            svcs.iter()
                                .filter(|s| s.name.starts_with("default/svc-"))
                                .filter(|s| s.ready_backends().len() == pods)
                                .count()
                                >= want
                        },
                    )
                    .with_context(|| format!("on {}", node.name))?;
            }
            let mut modes = Vec::new();
            for node in &spec.nodes {
                let link = lab.host(&node.name).netns().ip(&["link", "show", UPLINK])?;
                modes.push(if link.contains("xdpgeneric") {
                    "generic"
                } else {
                    "native"
                });
            }
            modes.dedup();
            Ok((
                Setup::XlbCluster(Box::new(cluster)),
                format!(
                    "xlb on every node ({} XDP): {} encapsulates in Geneve, the pods' nodes decapsulate and deliver to the pod (--pod-delivery {})",
                    modes.join("/"),
                    edge.name(),
                    path.pod_delivery().unwrap_or("peer")
                ),
            ))
        }
        Path::Iptables | Path::Nftables => {
            // Only the edge routes the pod subnets, via their nodes (the lab routes none).
            for b in backend_nodes(lab) {
                let net = b.pod_subnet.network();
                if !LAB_RANGE.covers(&net) || !LAB_RANGE.contains(b.addr) {
                    bail!("{net} via {} is outside {LAB_RANGE}", b.addr);
                }
                edge.netns().ip(&[
                    "route",
                    "replace",
                    &net.to_string(),
                    "via",
                    &b.addr.to_string(),
                    "dev",
                    UPLINK,
                ])?;
            }
            let version = if path == Path::Iptables {
                baseline::apply_iptables(edge, &ports, lab.workdir())?;
                baseline::iptables_version()
            } else {
                baseline::apply_nft(edge, &ports, lab.workdir())?;
                baseline::nft_version()
            };
            Ok((
                Setup::Rules,
                format!(
                    "{version} on {}, which routes the pod subnets via their nodes",
                    edge.name()
                ),
            ))
        }
        Path::Ceiling => {
            // Both hops pick the same pod (the same flow mix over every pod of the lab):
            // the edge sends the frame to that pod's node (back out of the uplink it came in
            // on), the node redirects it into that pod's veth. A node's entries for other
            // nodes' pods have no interface (such a frame would be dropped and show as lost).
            let (up_index, up_mac) = bpf::link_info(edge, UPLINK)?;
            let pods: Vec<(&str, &str)> = backend_nodes(lab)
                .iter()
                .flat_map(|b| b.pods.iter().map(|p| (b.name.as_str(), p.name.as_str())))
                .collect();
            let mut edge_ports = Vec::new();
            for (node, _) in &pods {
                let (_, node_mac) = bpf::link_info(lab.host(node), UPLINK)?;
                edge_ports.push(FwdPort {
                    ifindex: up_index,
                    dst_mac: node_mac,
                    src_mac: up_mac,
                });
            }
            let mut fwd = vec![(
                edge.name().to_string(),
                Forwarder::attach(edge, UPLINK, &edge_ports)?,
            )];
            for b in backend_nodes(lab) {
                let host = lab.host(&b.name);
                let mut ports = Vec::new();
                for (node, pod) in &pods {
                    let local = b.pods.iter().position(|p| p.name == *pod);
                    ports.push(match local {
                        Some(i) if *node == b.name => {
                            let (ifindex, src_mac) = bpf::link_info(host, &format!("lxc{i}"))?;
                            let (_, dst_mac) = bpf::link_info(lab.host(pod), POD_IF)?;
                            FwdPort {
                                ifindex,
                                dst_mac,
                                src_mac,
                            }
                        }
                        _ => FwdPort::default(),
                    });
                }
                fwd.push((b.name.clone(), Forwarder::attach(host, UPLINK, &ports)?));
            }
            Ok((
                Setup::Forwarders(fwd),
                format!(
                    "bare XDP forwarders (xlb-fwd): {} redirects to the pod's node's MAC back out of its uplink, the node redirects into the pod veth",
                    edge.name()
                ),
            ))
        }
    }
}

/// The pods (indices in the lab's pod order) the bare forwarder can pick for the generator's
/// flows ([`bpf::fwd_pick`]); with a handful of flows it may miss a pod. The SYN mix's random
/// sources reach every pod.
pub fn ceiling_reach(cfg: &GenConfig, pods: usize) -> BTreeSet<usize> {
    if cfg.random != 0 || pods == 0 {
        return (0..pods).collect();
    }
    let mut reach = BTreeSet::new();
    for i in 0..cfg.flows.min(1 << 20) {
        let (saddr, sport, daddr) = traffic::flow(cfg, i);
        reach.insert(
            bpf::fwd_pick(saddr, daddr, sport, traffic::SERVICE_PORT, pods as u32) as usize,
        );
        if reach.len() == pods {
            break;
        }
    }
    reach
}

/// One measurement on a fresh lab.
fn measure(path: Path, n: u32, round: usize, opts: &ForwardOptions) -> Result<Run> {
    crate::lab::check_interrupted()?;
    let lab = opts.lab.build()?;
    // Where the generator's traffic enters: the single node, or the multi-node lab's first edge
    // (edge-a). Both are the spec's first node.
    let node = lab.host(&lab.spec().nodes[0].name);
    match opts.lab {
        LabKind::Single => {
            node.netns().exec("ethtool", &["-K", UPLINK, "gro", "on"])?;
        }
        LabKind::Dsr => prepare_dsr(&lab, node)?,
    }
    let mut sinks = Vec::new();
    for (_, p) in lab.spec().pods() {
        let pod = lab.host(&p.name);
        if !path.frames_to_pods() {
            // An ordinary pod's veth: no NAPI (GRO off, the sink in generic mode).
            pod.netns().exec("ethtool", &["-K", POD_IF, "gro", "off"])?;
        }
        sinks.push(Sink::attach(
            pod,
            POD_IF,
            p.addr,
            TARGET_PORT,
            path.frames_to_pods(),
        )?);
    }
    let sinks = Sinks { sinks };
    let t0 = Instant::now();
    let programmed = match opts.lab {
        LabKind::Single => program(&lab, path, n, opts.mix, &opts.xdp_mode),
        LabKind::Dsr => program_dsr(&lab, node, path, n, opts.mix, &opts.xdp_mode),
    };
    let (setup, note) = programmed.with_context(|| format!("programming {}", path.name()))?;
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
    let counters_before = path_counters(&setup, node.name(), path)?;
    let guard_before = guard_reading(&setup, node.name())?;
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
        let (pod_node, pod) = lab.spec().pods().next().expect("a lab with pods");
        let pod_node = lab.host(&pod_node.name);
        for (h, i) in [
            (node, UPLINK),
            (pod_node, UPLINK),
            (pod_node, "lxc0"),
            (lab.host(&pod.name), POD_IF),
        ] {
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
    // The path's own counters (xlb's, the forwarders') must account for every delivery.
    let counters = path_counters(&setup, node.name(), path)?;
    for ((subject, after, noun), (_, before, _)) in counters.iter().zip(&counters_before) {
        let count = after - before;
        if count < delivered.packets {
            problems.push(format!(
                "{subject} {count} {noun} but the pods received {}",
                delivered.packets
            ));
        }
    }
    let syn_guard = match (guard_reading(&setup, node.name())?, guard_before) {
        (Some(after), Some(before)) => Some(after.since(&before)),
        _ => None,
    };
    if let Some(g) = &syn_guard {
        problems.extend(guard_problems(
            g,
            opts.mix,
            delivered.packets,
            r.elapsed.as_secs_f64(),
            crate::traffic::num_cpus(),
        ));
    }
    if opts.pace.is_some() {
        // Paced runs must lose nothing, and every pod must get its share.
        if delivered.packets != r.sent {
            problems.push(format!(
                "{} packets sent, {} delivered",
                r.sent, delivered.packets
            ));
        }
    } else if delivered.packets == 0 {
        problems.push("nothing was delivered".into());
    }
    // Every pod must get some (always on the multi-node lab: a backend node left out is a
    // broken path, whatever the rate); the ceiling's only the pods its spread can reach.
    let reach = if path == Path::Ceiling {
        ceiling_reach(&generator.config, per_pod.len())
    } else {
        (0..per_pod.len()).collect()
    };
    if (opts.pace.is_some() || opts.lab == LabKind::Dsr)
        && let Some((pod, _)) = per_pod
            .iter()
            .enumerate()
            .find(|(i, (_, c))| reach.contains(i) && *c == 0)
            .map(|(_, p)| p)
    {
        problems.push(format!("{pod} received nothing"));
    }
    let mut note = note;
    if reach.len() < per_pod.len() {
        let names: Vec<&str> = reach.iter().map(|&i| per_pod[i].0.as_str()).collect();
        note.push_str(&format!(
            "; the generator's flows reach only {} through the forwarder's spread",
            names.join(", ")
        ));
    }
    if let Setup::XlbCluster(c) = &setup {
        // How edge-a sent its encapsulated packets (warm-up included): XDP_TX is the fast
        // path; "via the kernel" means the FIB lookup found no neighbour.
        let p = c.node(node.name());
        note.push_str(&format!(
            "; {} since start: XDP_TX {}, redirect {}, TC redirect {}, via the kernel {}",
            node.name(),
            p.counter("forward_encap_tx")?,
            p.counter("forward_encap_redirect")?,
            p.counter("forward_encap_skb")?,
            p.counter("encap_fib_pass")?
        ));
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
        syn_guard,
    })
}

pub fn run(opts: &ForwardOptions) -> Result<ForwardReport> {
    if opts.paths.is_empty() || opts.services.is_empty() {
        bail!("nothing to measure");
    }
    traffic::check_service_counts(&opts.services)?;
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
                    syn_guard: None,
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
        for b in [
            Path::Iptables,
            Path::Nftables,
            Path::Ceiling,
            Path::XlbNoGuard,
        ] {
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
    if o.lab == LabKind::Dsr {
        say!(
            "forward on the multi-node lab: client -> edge-a -> node-c (c1, c2) / node-d (d1); sinks on the pods"
        );
    }
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
        "{:>9}  {:<11} {:>13} {:>11} {:>7} {:>9}  {}",
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
            "{:>9}  {:<11} {:>13} {:>11} {:>6.1}% {:>9.1}  {}",
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
    if o.mix == Mix::Syn {
        for r in &rep.runs {
            if let Some(g) = &r.syn_guard {
                say!(
                    "{:>9}  {:<11} SYN guard {}: {} trips, {} SYNs without a conntrack write, {} new flows recorded",
                    r.services,
                    r.path.name(),
                    if g.rate == 0 {
                        "off".to_string()
                    } else {
                        format!("at {}/s per CPU", g.rate)
                    },
                    g.trips,
                    g.skipped,
                    g.recorded
                );
            }
        }
    }
    if !rep.ratios.is_empty() {
        say!("ratios (median delivered packets/s, same run):");
        say!(
            "{:>9}  {:>14} {:>14} {:>14} {:>14}",
            "Services",
            "xlb/iptables",
            "xlb/nftables",
            "xlb/ceiling",
            "xlb/no-guard"
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
                "{:>9}  {:>14} {:>14} {:>14} {:>14}",
                n,
                f(Path::Iptables),
                f(Path::Nftables),
                f(Path::Ceiling),
                f(Path::XlbNoGuard)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syn_mix_measures_the_guard_against_no_guard_by_default() {
        assert!(default_paths(Mix::Syn).contains(&Path::XlbNoGuard));
        assert!(default_paths(Mix::Syn).contains(&Path::Xlb));
        assert!(!default_paths(Mix::Established).contains(&Path::XlbNoGuard));
        assert_eq!(default_paths(Mix::Udp).len(), 4);
    }

    #[test]
    fn guard_problems_flag_a_guard_that_never_engaged_or_skipped_while_off() {
        let on = |trips, skipped| GuardWindow {
            rate: 50_000,
            trips,
            skipped,
            recorded: 1,
        };
        // 3 s on 2 CPUs: engaging is required above 50,000 x 2 x 5 new flows.
        assert!(guard_problems(&on(0, 0), Mix::Syn, 400_000, 3.0, 2).is_empty());
        assert_eq!(
            guard_problems(&on(0, 0), Mix::Syn, 600_000, 3.0, 2).len(),
            1
        );
        assert_eq!(
            guard_problems(&on(3, 0), Mix::Syn, 600_000, 3.0, 2).len(),
            1
        );
        assert!(guard_problems(&on(3, 9), Mix::Syn, 600_000, 3.0, 2).is_empty());
        // Established traffic makes no new flows to speak of.
        assert!(guard_problems(&on(0, 0), Mix::Established, 600_000, 3.0, 2).is_empty());
        let off = |skipped| GuardWindow {
            rate: 0,
            skipped,
            ..GuardWindow::default()
        };
        assert!(guard_problems(&off(0), Mix::Syn, 600_000, 3.0, 2).is_empty());
        assert_eq!(guard_problems(&off(1), Mix::Syn, 600_000, 3.0, 2).len(), 1);
    }

    #[test]
    fn file_names_distinguish_lab_mix_and_quick() {
        let f = |lab, mix, quick| file_name(lab, mix, quick);
        assert_eq!(f(LabKind::Single, Mix::Established, false), "forward");
        assert_eq!(f(LabKind::Single, Mix::Syn, false), "forward-syn");
        assert_eq!(f(LabKind::Single, Mix::Udp, true), "forward-quick");
        assert_eq!(f(LabKind::Dsr, Mix::Established, false), "forward-dsr");
        assert_eq!(f(LabKind::Dsr, Mix::Syn, false), "forward-dsr-syn");
        assert_eq!(f(LabKind::Dsr, Mix::Udp, false), "forward-dsr-udp");
        assert_eq!(f(LabKind::Dsr, Mix::Established, true), "forward-quick-dsr");
    }

    fn config(mix: Mix, services: u32, flows: u32) -> GenConfig {
        let t = Traffic {
            mix,
            flows,
            services,
            frame_size: 64,
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
        };
        traffic::template(&t).unwrap().1
    }

    #[test]
    fn ceiling_reach_follows_the_flows() {
        let all: BTreeSet<usize> = (0..3).collect();
        assert_eq!(ceiling_reach(&config(Mix::Established, 1, 1000), 3), all);
        assert_eq!(ceiling_reach(&config(Mix::Udp, 100, 1000), 3), all);
        // As many Services as flows: one source, and still every pod (the spread mixes in
        // the destination).
        assert_eq!(
            ceiling_reach(&config(Mix::Established, 10_000, 10_000), 3),
            all
        );
        // Two flows cannot reach three pods.
        assert!(ceiling_reach(&config(Mix::Established, 1, 2), 3).len() <= 2);
        assert_eq!(ceiling_reach(&config(Mix::Syn, 10_000, 10_000), 3), all);
    }
}
