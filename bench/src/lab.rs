//! The lab: hosts in network namespaces joined by veth links, with real traffic between them.
//!
//! Used by the end-to-end tests, the demo and the benchmarks. Safety rules, enforced here:
//!
//! * everything lives in network namespaces the lab creates (`xlblab-<pid>-<n>-<host>`); the
//!   root namespace gets no address, route or interface (veth pairs are created directly inside
//!   the namespaces);
//! * only addresses in 198.18.0.0/15 ([`topology::LAB_RANGE`], checked by [`LabSpec::plan`]);
//! * a [`Lab`] deletes its namespaces when dropped (also on panic); namespaces of lab processes
//!   that died are removed by the next lab ([`netns::clean_stale`]);
//! * every client call and command has a timeout, every server is bounded.
//!
//! Namespaces are entered with `nsenter --net=` or `setns(2)`, never `ip netns exec` (which
//! remounts `/sys` and hides `/sys/fs/bpf`).
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use xlb_bench::lab::*;
//! let lab = Lab::new(LabSpec::single_node())?;
//! let servers = PodServers::start(&lab, POD_PORT)?;
//! let manifests = lab.write_manifests(&ManifestSet::web(lab.spec()))?;
//! let mut xlb = XlbProcess::start(&lab, &XlbOptions::new("node-a", manifests.path()))?;
//! let vip = std::net::SocketAddrV4::new(DEFAULT_VIP, WEB_PORT);
//! let conn = connect_tcp(lab.client(), vip, None, Duration::from_secs(3))?;
//! println!("{} saw {}", conn.pod, conn.seen);
//! # Ok(()) }
//! ```

pub mod capture;
pub mod client;
pub mod manifest;
pub mod netns;
pub mod relink;
pub mod servers;
pub mod topology;
pub mod xdp_pass;
pub mod xlb;

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use anyhow::{Context as _, Result, bail};

pub use capture::Capture;
pub use client::{
    ConnRecord, TcpConn, TcpManyReport, UdpReply, connect_tcp, path_mtu, tcp_from_ports, tcp_many,
    udp_connected_df, udp_request,
};
pub use manifest::{
    EndpointDef, ManifestDir, ManifestSet, NodeDef, PortDef, ServiceDef, WEB_NODE_PORT, WEB_PORT,
    WEB_SERVICE,
};
pub use netns::{Netns, lab_namespaces};
pub use servers::{POD_PORT, PodServer, PodServers, Proto, ServerStats};
pub use topology::{
    Cidr, ClientSpec, DEFAULT_VIP, Fabric, LabSpec, NodeSpec, POD_IF, PodSpec, Role, UPLINK,
};
pub use xlb::{
    BackendStatus, FlowRow, FrontendStatus, Predictor, ServiceStatus, ServiceStatusExt,
    ServicesOutput, StatsOutput, XlbCluster, XlbOptions, XlbProcess, unix_now, xlb_binary, xlb_cli,
};

/// Source ports lab clients pick explicitly ([`Host::alloc_port`]); the kernel's own ephemeral
/// range in client namespaces is set to [`EPHEMERAL_PORTS`] so the two never meet.
pub const LAB_PORTS: RangeInclusive<u16> = 10000..=39999;
/// The kernel's ephemeral port range in client namespaces.
pub const EPHEMERAL_PORTS: RangeInclusive<u16> = 40000..=60999;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the process, so a lab program can
/// tear down its namespaces; long waits in the lab check it ([`check_interrupted`]).
pub fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Fails once SIGINT/SIGTERM arrived (after [`install_interrupt_handler`]).
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// One lab host: its namespace and what the spec says about it.
#[derive(Debug)]
pub struct Host {
    name: String,
    role: Role,
    addr: Option<Ipv4Addr>,
    netns: Netns,
    next_port: AtomicU32,
}

impl Host {
    /// Logical name (`client`, `node-a`, `pod-1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn role(&self) -> &Role {
        &self.role
    }
    /// The host's main address (fabric address for clients and nodes, pod address for pods).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
            .unwrap_or_else(|| panic!("host {} has no address", self.name))
    }
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    /// The real namespace name (`xlblab-<pid>-<n>-<host>`).
    pub fn ns_name(&self) -> &str {
        self.netns.name()
    }
    /// A source port from [`LAB_PORTS`] not handed out before by this host (wraps after 30,000).
    pub fn alloc_port(&self) -> u16 {
        let span = (LAB_PORTS.end() - LAB_PORTS.start()) as u32 + 1;
        let n = self.next_port.fetch_add(1, Ordering::Relaxed);
        LAB_PORTS.start() + (n % span) as u16
    }
}

/// A lab built from a [`LabSpec`]. Dropping it deletes its namespaces (which removes every
/// veth, address and route in them) and its work directory (kept, and its path printed, when
/// the thread is panicking or `XLB_LAB_KEEP` is set).
pub struct Lab {
    spec: LabSpec,
    plan: topology::Plan,
    prefix: String,
    workdir: PathBuf,
    hosts: Vec<Host>,
    /// The pass-through program on bridge ports ([`xdp_pass`]), owner of its links.
    xdp_pass: Option<aya::Ebpf>,
}

impl Lab {
    /// The single-node lab ([`LabSpec::single_node`]).
    pub fn single_node() -> Result<Lab> {
        Lab::new(LabSpec::single_node())
    }

    /// The direct-server-return lab of issue 3 ([`LabSpec::dsr`]): a client, edge nodes
    /// `edge-a` and `edge-b` (ECMP for the VIP), backend nodes `node-c` (pods `c1`, `c2`) and
    /// `node-d` (pod `d1`), all on one fabric bridge.
    pub fn dsr() -> Result<Lab> {
        Lab::new(LabSpec::dsr())
    }

    /// Builds the lab: namespaces, sysctls, bridges, veths, addresses, offloads, routes.
    pub fn new(spec: LabSpec) -> Result<Lab> {
        netns::require_root()?;
        let plan = spec.plan()?;
        netns::clean_stale_once();
        let prefix = netns::unique_prefix();
        let workdir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&workdir)
            .with_context(|| format!("creating {}", workdir.display()))?;
        let mut lab = Lab {
            spec,
            plan: plan.clone(),
            prefix,
            workdir,
            hosts: Vec::new(),
            xdp_pass: None,
        };
        lab.build(&plan)
            .with_context(|| format!("building lab {}", lab.prefix))?;
        Ok(lab)
    }

    fn build(&mut self, plan: &topology::Plan) -> Result<()> {
        for h in &plan.hosts {
            let netns = Netns::create(&format!("{}-{}", self.prefix, h.name))?;
            let addr = self
                .spec
                .clients
                .iter()
                .find(|c| c.name == h.name)
                .map(|c| c.addr)
                .or_else(|| self.spec.node(&h.name).map(|n| n.addr))
                .or_else(|| {
                    self.spec
                        .pods()
                        .find(|(_, p)| p.name == h.name)
                        .map(|(_, p)| p.addr)
                });
            let host = Host {
                name: h.name.clone(),
                role: h.role.clone(),
                addr,
                netns,
                next_port: AtomicU32::new(0),
            };
            self.hosts.push(host);
            let host = self.hosts.last().expect("pushed");
            for (k, v) in &h.sysctls {
                host.netns.sysctl(k, v)?;
            }
        }
        for b in &plan.bridges {
            let ns = self.host(&b.host).netns();
            ns.ip(&["link", "add", &b.name, "type", "bridge"])?;
            ns.ip(&["link", "set", &b.name, "up"])?;
        }
        for l in &plan.links {
            self.create_link(l)?;
        }
        let pass_ends: Vec<&topology::EndPlan> = plan
            .links
            .iter()
            .flat_map(|l| [&l.a, &l.b])
            .filter(|e| e.xdp_pass)
            .collect();
        if !pass_ends.is_empty() {
            let mut prog = xdp_pass::load()?;
            for end in pass_ends {
                xdp_pass::attach(self.host(&end.host).netns(), &mut prog, &end.ifname)?;
            }
            self.xdp_pass = Some(prog);
        }
        for r in &plan.routes {
            let args = r.ip_args();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.host(&r.host).netns().ip(&args)?;
        }
        Ok(())
    }

    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// `xlblab-<pid>-<n>`: every namespace of this lab is `<prefix>-<host>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A per-lab scratch directory (logs, manifests).
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host named `name`; panics if there is none (a bug in the caller).
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab {} has no host {name}", self.prefix))
    }

    /// The first client.
    pub fn client(&self) -> &Host {
        self.host(&self.spec.clients[0].name)
    }

    /// The real names of every namespace of this lab.
    pub fn namespaces(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.ns_name().to_string()).collect()
    }

    /// Tears the lab down now; the names of its namespaces still there afterwards (none when
    /// the teardown worked).
    pub fn close(self) -> Vec<String> {
        let names = self.namespaces();
        drop(self);
        let present = lab_namespaces();
        names.into_iter().filter(|n| present.contains(n)).collect()
    }

    /// The pod owning `addr`, by name.
    pub fn pod_name(&self, addr: Ipv4Addr) -> Option<&str> {
        self.spec.pod_by_addr(addr).map(|p| p.name.as_str())
    }

    /// The address of node `name` on the fabric (its InternalIP); panics if there is no such
    /// node.
    pub fn node_addr(&self, name: &str) -> Ipv4Addr {
        self.spec
            .node(name)
            .unwrap_or_else(|| panic!("lab {} has no node {name}", self.prefix))
            .addr
    }

    /// The node whose fabric address is `addr`.
    pub fn node_by_addr(&self, addr: Ipv4Addr) -> Option<&str> {
        self.spec
            .nodes
            .iter()
            .find(|n| n.addr == addr)
            .map(|n| n.name.as_str())
    }

    /// The interface in the `fabric` namespace (a port of the bridge) that is the peer of
    /// `host`'s uplink: where a capture sees every frame to and from that host, including the
    /// ones its XDP program sends back out with `XDP_TX`. `None` without a bridge fabric.
    pub fn fabric_port(&self, host: &str) -> Option<&str> {
        self.plan
            .links
            .iter()
            .find(|l| l.a.host == host && l.b.master.is_some())
            .map(|l| l.b.ifname.as_str())
    }

    /// The namespace holding the fabric bridge (`fabric`), if the lab has one.
    pub fn fabric(&self) -> Option<&Host> {
        self.hosts.iter().find(|h| h.role == Role::Fabric)
    }

    /// Replaces, on every client, the route for `vip` with one via the given nodes (ECMP when
    /// several): `route_vip_via(vip, &["edge-b"])` takes edge-a out of the VIP's next hops.
    pub fn route_vip_via(&self, vip: Ipv4Addr, nodes: &[&str]) -> Result<()> {
        if !topology::LAB_RANGE.contains(vip) {
            bail!("{vip} is outside {}", topology::LAB_RANGE);
        }
        if nodes.is_empty() {
            bail!("a route for {vip} needs at least one node");
        }
        let mut args: Vec<String> = vec!["route".into(), "replace".into(), format!("{vip}/32")];
        let via: Vec<Ipv4Addr> = nodes.iter().map(|n| self.node_addr(n)).collect();
        if let [one] = via.as_slice() {
            args.extend(["via".into(), one.to_string(), "dev".into(), UPLINK.into()]);
        } else {
            for gw in &via {
                args.extend([
                    "nexthop".into(),
                    "via".into(),
                    gw.to_string(),
                    "dev".into(),
                    UPLINK.into(),
                ]);
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for c in &self.spec.clients {
            self.host(&c.name)
                .netns()
                .ip(&args)
                .with_context(|| format!("rerouting {vip} on {} via {nodes:?}", c.name))?;
        }
        Ok(())
    }

    /// The next hop `client` routes a flow to `dst` over (`ip route get ... ipproto sport
    /// dport`): with an ECMP route and the L4 multipath hash, which edge node carries that flow.
    pub fn next_hop(
        &self,
        client: &str,
        proto: Proto,
        src_port: u16,
        dst: std::net::SocketAddrV4,
    ) -> Result<Ipv4Addr> {
        let host = self.host(client);
        let (from, sport, dport) = (
            host.addr().to_string(),
            src_port.to_string(),
            dst.port().to_string(),
        );
        let ipproto = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let dst_ip = dst.ip().to_string();
        let out = host.netns().ip(&[
            "-j", "route", "get", &dst_ip, "from", &from, "ipproto", ipproto, "sport", &sport,
            "dport", &dport,
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j route get` output {out:?}"))?;
        let route = v.get(0).unwrap_or(&v);
        let gw = route
            .get("gateway")
            .and_then(|g| g.as_str())
            .or_else(|| route.get("dst").and_then(|d| d.as_str()))
            .ok_or_else(|| anyhow::anyhow!("no next hop in `ip route get` output {out:?}"))?;
        gw.parse()
            .with_context(|| format!("next hop {gw:?} in `ip route get` output"))
    }

    /// The MAC address of `host`'s uplink (for capture filters such as `ether host MAC`).
    pub fn uplink_mac(&self, host: &str) -> Result<String> {
        let out = self
            .host(host)
            .netns()
            .ip(&["-j", "link", "show", UPLINK])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j link show` output {out:?}"))?;
        v.get(0)
            .and_then(|l| l.get("address"))
            .and_then(|a| a.as_str())
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no MAC address for {host}/{UPLINK} in {out:?}"))
    }

    /// Sets `host`'s uplink (its link to the fabric) down or up, as if the host went away.
    pub fn set_uplink(&self, host: &str, up: bool) -> Result<()> {
        self.host(host)
            .netns()
            .ip(&["link", "set", UPLINK, if up { "up" } else { "down" }])?;
        Ok(())
    }

    /// Writes `set` to `<workdir>/manifests` and returns the directory.
    pub fn write_manifests(&self, set: &ManifestSet) -> Result<ManifestDir> {
        let dir = ManifestDir::create(self.workdir.join("manifests"))?;
        dir.write(set)?;
        Ok(dir)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.xdp_pass = None;
        // Pods first, then nodes, clients and the fabric: deleting a namespace removes its
        // veths and with them their peers.
        while let Some(h) = self.hosts.pop() {
            drop(h);
        }
        let keep = std::env::var_os("XLB_LAB_KEEP").is_some();
        if std::thread::panicking() || keep {
            netns::log(&format!(
                "lab: {} torn down; logs kept in {}",
                self.prefix,
                self.workdir.display()
            ));
        } else {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
    }
}
