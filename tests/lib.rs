//! Shared helpers for the end-to-end tests. The lab itself lives in `xlb_bench::lab`.
//!
//! The tests need root (they create network namespaces and load XDP programs) and an `xlb`
//! binary (`$XLB_BIN`, else `target/release/xlb`, else `target/debug/xlb`). `XLB_XDP_MODE`
//! (`native`, `generic`, `auto`) is passed to `xlb run --xdp-mode` when set.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
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
    let lab = Lab::single_node().expect("building the lab");
    let servers = PodServers::start(&lab, POD_PORT).expect("starting the pod servers");
    let web = ServiceDef::web(lab.spec());
    let set = ManifestSet {
        services: vec![web.clone()],
        nodes: ManifestSet::nodes_of(lab.spec()),
    };
    let manifests = lab.write_manifests(&set).expect("writing manifests");
    let opts = xlb_options(&manifests);
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

/// The default pin directory `xlb` uses in the namespace of `host` (`xlb pin-dir` run there).
pub fn default_pin_dir(host: &Host) -> PathBuf {
    xlb_bench::lab::netns::xlb_pin_dir(host.netns()).expect("xlb pin-dir")
}
