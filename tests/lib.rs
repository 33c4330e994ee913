//! Shared helpers for the end-to-end tests. The lab itself lives in `xlb_bench::lab`.
//!
//! The tests need root (they create network namespaces and load XDP programs) and an `xlb`
//! binary (`$XLB_BIN`, else `target/release/xlb`, else `target/debug/xlb`). `XLB_XDP_MODE`
//! (`native`, `generic`, `auto`) is passed to `xlb run --xdp-mode` when set.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow};
use xlb_bench::lab::*;

/// How long xlb gets to program (or re-program) a Service.
pub const PROGRAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Per-connection / per-request timeout.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// The single-node lab with pod servers and xlb running on `node-a`, programmed with the
/// default Service `default/web`, as the tests see it.
pub struct Local<'a, 'lab> {
    pub lab: &'lab Lab,
    pub servers: &'a PodServers<'lab>,
    pub manifests: &'a ManifestDir,
    pub xlb: &'a mut XlbProcess<'lab>,
    pub web: ServiceDef,
}

impl Local<'_, '_> {
    pub fn client_addr(&self) -> Ipv4Addr {
        self.lab.client().addr()
    }
    pub fn node_addr(&self) -> Ipv4Addr {
        self.lab.host("node-a").addr()
    }
    pub fn vip(&self) -> Ipv4Addr {
        self.lab.spec().vips[0]
    }
    pub fn pod_addr(&self, pod: &str) -> Ipv4Addr {
        self.lab.host(pod).addr()
    }
    /// The frontends of the web Service: the VIP and the NodePort.
    pub fn frontends(&self) -> [(Option<Ipv4Addr>, u16); 2] {
        [(Some(self.vip()), WEB_PORT), (None, WEB_NODE_PORT)]
    }
    /// Waits until `xlb services` shows Service port `port_name` of `web` with its frontends
    /// and exactly `backends` ready.
    pub fn wait_programmed(
        &mut self,
        port_name: &str,
        backends: &[Ipv4Addr],
    ) -> Result<ServiceStatus> {
        let key = self.web.port_key(port_name);
        let fe = self.frontends();
        self.xlb
            .wait_for_service(&key, &fe, backends, PROGRAM_TIMEOUT)
    }
}

/// Builds the single-node lab, starts the pod servers and `xlb run` on `node-a`, waits until
/// both ports of `default/web` are programmed with all three pods, and runs `test`. Everything
/// is torn down afterwards, whether `test` returns, fails or panics; a failure panics with the
/// error and the tail of xlb's log.
pub fn with_local_lab(test: impl FnOnce(&mut Local<'_, '_>) -> Result<()>) {
    with_local_lab_options(|_| {}, test)
}

/// Like [`with_local_lab`], with `xlb run`'s options changed by `options` first.
pub fn with_local_lab_options(
    options: impl FnOnce(&mut XlbOptions),
    test: impl FnOnce(&mut Local<'_, '_>) -> Result<()>,
) {
    with_local_lab_spec(LabSpec::single_node(), ServiceDef::web, options, test)
}

/// Like [`with_local_lab_options`] for a variant of the single-node lab (`spec`) and of the
/// Service (`web`, given the spec: e.g. without a spare pod).
pub fn with_local_lab_spec(
    spec: LabSpec,
    web: impl FnOnce(&LabSpec) -> ServiceDef,
    options: impl FnOnce(&mut XlbOptions),
    test: impl FnOnce(&mut Local<'_, '_>) -> Result<()>,
) {
    let lab = Lab::new(spec).expect("building the lab");
    let servers = PodServers::start(&lab, POD_PORT).expect("starting the pod servers");
    let web = web(lab.spec());
    let set = ManifestSet {
        services: vec![web.clone()],
        nodes: ManifestSet::nodes_of(lab.spec()),
    };
    let manifests = lab.write_manifests(&set).expect("writing manifests");
    let mut opts = xlb_options(&manifests);
    options(&mut opts);
    let mut xlb = XlbProcess::start(&lab, &opts).expect("starting xlb");
    let mut local = Local {
        lab: &lab,
        servers: &servers,
        manifests: &manifests,
        xlb: &mut xlb,
        web,
    };
    let result = (|| {
        let all = local.web.ready_addrs();
        local.wait_programmed("http", &all)?;
        local.wait_programmed("udp", &all)?;
        test(&mut local)
    })();
    if let Err(e) = result {
        let log = local.xlb.log_tail(4000);
        panic!("{e:#}\n--- xlb log ---\n{log}");
    }
}

/// Options for `xlb run` on `node-a` with `manifests` (and `--xdp-mode $XLB_XDP_MODE`).
pub fn xlb_options(manifests: &ManifestDir) -> XlbOptions {
    let mut opts = XlbOptions::new("node-a", manifests.path());
    if let Ok(mode) = std::env::var("XLB_XDP_MODE") {
        opts.extra_args = vec!["--xdp-mode".into(), mode];
    }
    opts
}

/// Whether an XDP program is attached to `iface` in `host`.
pub fn xdp_attached(host: &Host, iface: &str) -> Result<bool> {
    let link = host.netns().ip(&["link", "show", iface])?;
    Ok(link.contains(" xdp") || link.contains("prog/xdp"))
}

/// Checks that `pod`'s interface is as a CNI leaves it: no XDP program and GRO off, so its
/// veth has no NAPI and takes no XDP frames: the fast path into it must work with skbs alone.
pub fn ensure_ordinary_pod(pod: &Host) -> Result<()> {
    anyhow::ensure!(
        !xdp_attached(pod, POD_IF)?,
        "{}: an XDP program on its {POD_IF}",
        pod.name()
    );
    let features = pod.netns().exec("ethtool", &["-k", POD_IF])?;
    anyhow::ensure!(
        features.contains("generic-receive-offload: off"),
        "{}: GRO is not off on its {POD_IF}",
        pod.name()
    );
    Ok(())
}

/// The default pin directory `xlb` uses in the namespace of `host` (`xlb pin-dir` run there).
pub fn default_pin_dir(host: &Host) -> PathBuf {
    xlb_bench::lab::netns::xlb_pin_dir(host.netns()).expect("xlb pin-dir")
}

/// `--xdp-mode $XLB_XDP_MODE` when set, for every `xlb run`.
pub fn xdp_mode_args() -> Vec<String> {
    match std::env::var("XLB_XDP_MODE") {
        Ok(mode) => vec!["--xdp-mode".into(), mode],
        Err(_) => vec![],
    }
}

/// The direct-server-return lab ([`Lab::dsr`], or a variant of it) with pod servers and
/// `xlb run` on every node, all reading the same manifests, as the tests see it.
pub struct Dsr<'a, 'lab> {
    pub lab: &'lab Lab,
    pub servers: &'a PodServers<'lab>,
    pub manifests: &'a ManifestDir,
    pub xlb: &'a mut XlbCluster<'lab>,
    /// The Service `default/web` as the manifests hold it now.
    pub web: ServiceDef,
    /// TCP connections each pod had accepted when `test` started (the harness's probe).
    pub tcp_baseline: std::collections::BTreeMap<String, u64>,
}

/// The edge nodes of the DSR lab.
pub const EDGES: [&str; 2] = ["edge-a", "edge-b"];

impl Dsr<'_, '_> {
    pub fn client(&self) -> &Host {
        self.lab.client()
    }
    pub fn client_addr(&self) -> Ipv4Addr {
        self.lab.client().addr()
    }
    pub fn vip(&self) -> Ipv4Addr {
        self.lab.spec().vips[0]
    }
    /// `VIP:80`.
    pub fn vip_dst(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.vip(), WEB_PORT)
    }
    /// `nodeIP:30080` of node `node`.
    pub fn node_port(&self, node: &str) -> SocketAddrV4 {
        SocketAddrV4::new(self.lab.node_addr(node), WEB_NODE_PORT)
    }
    /// The VIP and the NodePort of each edge: every way in a client has.
    pub fn entry_points(&self) -> Vec<SocketAddrV4> {
        let mut v = vec![self.vip_dst()];
        v.extend(EDGES.iter().map(|e| self.node_port(e)));
        v
    }
    pub fn pod_addr(&self, pod: &str) -> Ipv4Addr {
        self.lab.host(pod).addr()
    }
    /// The frontends of the web Service: the VIP and the NodePort.
    pub fn frontends(&self) -> [(Option<Ipv4Addr>, u16); 2] {
        [(Some(self.vip()), WEB_PORT), (None, WEB_NODE_PORT)]
    }

    /// Waits until every node shows Service port `port_name` of `web` with its frontends and
    /// exactly `backends` ready, all with the same Maglev table; returns edge-a's view.
    pub fn wait_programmed(
        &mut self,
        port_name: &str,
        backends: &[Ipv4Addr],
    ) -> Result<ServiceStatus> {
        let key = self.web.port_key(port_name);
        let fe = self.frontends();
        let views = self
            .xlb
            .wait_for_service(&key, &fe, backends, PROGRAM_TIMEOUT)?;
        views
            .into_iter()
            .find(|(n, _)| n == EDGES[0])
            .map(|(_, s)| s)
            .ok_or_else(|| anyhow!("no view of {key} from {}", EDGES[0]))
    }

    /// Writes `web` (and every Node of the lab) to the manifests; the nodes reload it.
    pub fn set_web(&mut self, web: ServiceDef) -> Result<()> {
        self.manifests.write(&ManifestSet {
            services: vec![web.clone()],
            nodes: ManifestSet::nodes_of(self.lab.spec()),
        })?;
        self.web = web;
        Ok(())
    }

    /// TCP connections accepted per pod since the test started (the harness's own probe
    /// connection not counted).
    pub fn tcp_counts(&self) -> std::collections::BTreeMap<String, u64> {
        self.servers
            .tcp_counts()
            .into_iter()
            .map(|(pod, n)| {
                let before = self.tcp_baseline.get(&pod).copied().unwrap_or(0);
                (pod, n - before)
            })
            .collect()
    }

    /// The pod Maglev predicts for a new flow from the client's `src_port` to `dst`.
    pub fn predict(&self, p: &Predictor, src_port: u16, dst: SocketAddrV4) -> Option<String> {
        p.backend(self.client_addr(), src_port, *dst.ip(), dst.port())
            .and_then(|a| self.lab.pod_name(a))
            .map(str::to_string)
    }

    /// The edge node the client's ECMP route sends the flow from `src_port` to the VIP over.
    pub fn edge_of(&self, proto: Proto, src_port: u16) -> Result<String> {
        let hop = self
            .lab
            .next_hop(self.client().name(), proto, src_port, self.vip_dst())?;
        self.lab
            .node_by_addr(hop)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("the VIP is routed via {hop}, which is no node"))
    }

    /// Up to `want` fresh source ports (from the client's allocator, at most 5,000 tried)
    /// whose flows to `dst` satisfy `pick`.
    pub fn ports_where(
        &self,
        want: usize,
        mut pick: impl FnMut(u16) -> Result<bool>,
    ) -> Result<Vec<u16>> {
        let mut found = Vec::new();
        for _ in 0..5000 {
            if found.len() == want {
                break;
            }
            let p = self.client().alloc_port();
            if pick(p)? {
                found.push(p);
            }
        }
        Ok(found)
    }
}

/// Builds the DSR lab ([`Lab::dsr`]), starts the pod servers and `xlb run` on all four nodes
/// with `default/web` over every pod, waits until every node has programmed both ports, and
/// runs `test`. Torn down afterwards in every case (each node's `xlb down`, the namespaces);
/// a failure panics with the error and every node's log.
pub fn with_dsr_lab(test: impl FnOnce(&mut Dsr<'_, '_>) -> Result<()>) {
    with_dsr_lab_spec(LabSpec::dsr(), ServiceDef::web, test)
}

/// Like [`with_dsr_lab`] for a variant of the lab (`spec`) and of the Service (`web`, given
/// the spec: e.g. without a spare pod).
pub fn with_dsr_lab_spec(
    spec: LabSpec,
    web: impl FnOnce(&LabSpec) -> ServiceDef,
    test: impl FnOnce(&mut Dsr<'_, '_>) -> Result<()>,
) {
    with_dsr_lab_args(spec, web, &[], test)
}

/// Like [`with_dsr_lab_spec`], with `args` added to every node's `xlb run`.
pub fn with_dsr_lab_args(
    spec: LabSpec,
    web: impl FnOnce(&LabSpec) -> ServiceDef,
    args: &[&str],
    test: impl FnOnce(&mut Dsr<'_, '_>) -> Result<()>,
) {
    let mut run_args = xdp_mode_args();
    run_args.extend(args.iter().map(|a| a.to_string()));
    let lab = Lab::new(spec).expect("building the DSR lab");
    let servers = PodServers::start(&lab, POD_PORT).expect("starting the pod servers");
    let web = web(lab.spec());
    let set = ManifestSet {
        services: vec![web.clone()],
        nodes: ManifestSet::nodes_of(lab.spec()),
    };
    let manifests = lab.write_manifests(&set).expect("writing manifests");
    let mut xlb = XlbCluster::start(&lab, manifests.path(), &run_args).expect("starting xlb");
    let mut dsr = Dsr {
        lab: &lab,
        servers: &servers,
        manifests: &manifests,
        xlb: &mut xlb,
        web,
        tcp_baseline: Default::default(),
    };
    let result = (|| {
        let all = dsr.web.ready_addrs();
        dsr.wait_programmed("http", &all)?;
        dsr.wait_programmed("udp", &all)?;
        // One connection first, so a datapath that forwards nothing fails in seconds.
        let probe = dsr.vip_dst();
        connect_tcp(dsr.client(), probe, None, IO_TIMEOUT)
            .map_err(|e| anyhow!("the first connection to {probe} failed: {e:#}"))?;
        dsr.tcp_baseline = dsr.servers.tcp_counts();
        test(&mut dsr)
    })();
    if let Err(e) = result {
        let counters = dsr.xlb.counters_summary();
        let logs = dsr.xlb.log_tails(3000);
        panic!("{e:#}\n--- non-zero counters ---\n{counters}{logs}");
    }
}

/// Sums a counter over nodes.
pub fn sum_over(counters: &std::collections::BTreeMap<String, u64>, nodes: &[&str]) -> u64 {
    nodes
        .iter()
        .map(|n| counters.get(*n).copied().unwrap_or(0))
        .sum()
}
