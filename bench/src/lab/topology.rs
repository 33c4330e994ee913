//! What a lab looks like, as data, and how that becomes namespaces, links, addresses and routes.
//!
//! [`LabSpec`] describes hosts at the level a test thinks in (clients, nodes, pods, VIPs);
//! [`LabSpec::plan`] turns it into a [`Plan`] of namespaces, veth links, addresses, routes and
//! sysctls (pure, unit-tested without root), and [`super::Lab::new`] carries the plan out.
//!
//! Two fabrics:
//! * [`Fabric::Direct`]: one client and one node joined by a veth pair (the single-node lab);
//! * [`Fabric::Bridge`]: a `fabric` namespace holding a bridge `br0`, with every client and node
//!   attached by its own veth (the multi-node lab: ECMP for the VIPs over the edge nodes).
//!
//! Every node routes its pods' addresses over one veth per pod (`lxcN` on the node, `eth0` in the
//! pod); the node side carries the pod gateway address as a /32, the pod has its address as a /32
//! and a default route via the gateway. Other hosts reach a node's pod subnet via that node.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use anyhow::{Result, bail};

/// The only addresses a lab may use: 198.18.0.0/15 (RFC 2544 benchmarking range).
pub const LAB_RANGE: Cidr = Cidr {
    addr: Ipv4Addr::new(198, 18, 0, 0),
    prefix: 15,
};

/// The LoadBalancer ingress address of the default lab Service.
pub const DEFAULT_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);

/// An IPv4 prefix such as `198.18.0.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub const fn new(addr: Ipv4Addr, prefix: u8) -> Cidr {
        Cidr { addr, prefix }
    }

    pub const fn host(addr: Ipv4Addr) -> Cidr {
        Cidr { addr, prefix: 32 }
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Cidr {
        Cidr {
            addr: Ipv4Addr::from(u32::from(self.addr) & self.mask()),
            prefix: self.prefix,
        }
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Whether all of `other` lies inside `self`.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Cidr> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let prefix: u8 = p.parse()?;
        if prefix > 32 {
            bail!("bad prefix length in {s}");
        }
        Ok(Cidr {
            addr: a.parse()?,
            prefix,
        })
    }
}

/// How clients and nodes are joined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fabric {
    /// One client, one node, one veth pair between them.
    Direct,
    /// A bridge in its own `fabric` namespace; every client and node has a veth to it.
    Bridge,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientSpec {
    pub name: String,
    pub addr: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    pub addr: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Host name, also the Kubernetes Node name (`--node-name`).
    pub name: String,
    /// Address on the fabric (the Node's InternalIP); lives on the node's uplink `eth0`.
    pub addr: Ipv4Addr,
    /// Whether clients route the VIPs via this node (it runs the edge path).
    pub edge: bool,
    /// Address the node holds on every pod veth; the pods' default gateway.
    pub pod_gateway: Ipv4Addr,
    /// The node's pod subnet, routed to it by the other hosts.
    pub pod_subnet: Cidr,
    pub pods: Vec<PodSpec>,
}

/// A whole lab, as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    pub fabric: Fabric,
    /// The subnet clients and nodes share (198.18.0.0/24 by default).
    pub subnet: Cidr,
    pub clients: Vec<ClientSpec>,
    pub nodes: Vec<NodeSpec>,
    /// Addresses clients route (as /32, ECMP) via the edge nodes.
    pub vips: Vec<Ipv4Addr>,
    /// Enable IPv6 in the namespaces (off by default: no router solicitations, MLD or DAD
    /// noise in the datapath's counters).
    pub ipv6: bool,
    /// Route every node's pod subnet via that node on the clients and the other nodes (a flat
    /// pod network). Off in the direct-server-return lab ([`LabSpec::dsr`]): there a client
    /// reaches pods only through xlb, and an edge node only through its tunnel.
    pub pod_routes: bool,
    /// Benchmark helpers ([`LabSpec::for_benchmarks`]); off in every lab the tests and the
    /// demo build, which are plain veths on a plain bridge with default offloads, as kind
    /// nodes and containers are.
    pub bench_helpers: bool,
    /// GRO on the bridge ports ([`LabSpec::with_fabric_gro`]): a plain kernel setting, no
    /// program, but one that gives the ports NAPI, so XDP frames sent into the fabric are
    /// delivered and xlb takes its `XDP_TX` path.
    pub fabric_gro: bool,
}

impl LabSpec {
    /// The single-node lab: `client` (198.18.0.10) — `node-a` (198.18.0.2, uplink `eth0`,
    /// edge) — pods `pod-1..3` (198.18.1.11-13, gateway 198.18.1.1); the client routes the VIP
    /// 198.19.255.1 via the node.
    pub fn single_node() -> LabSpec {
        LabSpec {
            fabric: Fabric::Direct,
            subnet: Cidr::new(Ipv4Addr::new(198, 18, 0, 0), 24),
            clients: vec![ClientSpec {
                name: "client".into(),
                addr: Ipv4Addr::new(198, 18, 0, 10),
            }],
            nodes: vec![NodeSpec {
                name: "node-a".into(),
                addr: Ipv4Addr::new(198, 18, 0, 2),
                edge: true,
                pod_gateway: Ipv4Addr::new(198, 18, 1, 1),
                pod_subnet: Cidr::new(Ipv4Addr::new(198, 18, 1, 0), 24),
                pods: (1..=3u8)
                    .map(|i| PodSpec {
                        name: format!("pod-{i}"),
                        addr: Ipv4Addr::new(198, 18, 1, 10 + i),
                    })
                    .collect(),
            }],
            vips: vec![DEFAULT_VIP],
            ipv6: false,
            pod_routes: true,
            bench_helpers: false,
            fabric_gro: false,
        }
    }

    /// The direct-server-return lab of issue 3, all hosts on one fabric bridge
    /// (198.18.0.0/24, in its own `fabric` namespace):
    ///
    /// | host | fabric address | pod subnet | pods |
    /// | --- | --- | --- | --- |
    /// | `client` | 198.18.0.10 | | |
    /// | `edge-a` (edge) | 198.18.0.2 | 198.18.1.0/24 | |
    /// | `edge-b` (edge) | 198.18.0.3 | 198.18.2.0/24 | |
    /// | `node-c` | 198.18.0.4 | 198.18.3.0/24 | `c1` .11, `c2` .12 |
    /// | `node-d` | 198.18.0.5 | 198.18.4.0/24 | `d1` .11 |
    ///
    /// The client routes the VIP 198.19.255.1 over edge-a and edge-b (one ECMP route, L4
    /// multipath hash: `fib_multipath_hash_policy=1`). Nobody routes the pod subnets
    /// ([`LabSpec::pod_routes`] off): the client reaches pods only through xlb (the VIP or a
    /// NodePort on a node address), the edges reach them only through their tunnel, and the
    /// pods' replies go from their node straight to the client on the fabric. Every node
    /// forwards (`ip_forward=1`).
    pub fn dsr() -> LabSpec {
        let node = |name: &str, last: u8, edge: bool, subnet: u8, pods: &[&str]| NodeSpec {
            name: name.into(),
            addr: Ipv4Addr::new(198, 18, 0, last),
            edge,
            pod_gateway: Ipv4Addr::new(198, 18, subnet, 1),
            pod_subnet: Cidr::new(Ipv4Addr::new(198, 18, subnet, 0), 24),
            pods: pods
                .iter()
                .enumerate()
                .map(|(i, p)| PodSpec {
                    name: (*p).into(),
                    addr: Ipv4Addr::new(198, 18, subnet, 11 + i as u8),
                })
                .collect(),
        };
        LabSpec {
            fabric: Fabric::Bridge,
            subnet: Cidr::new(Ipv4Addr::new(198, 18, 0, 0), 24),
            clients: vec![ClientSpec {
                name: "client".into(),
                addr: Ipv4Addr::new(198, 18, 0, 10),
            }],
            nodes: vec![
                node("edge-a", 2, true, 1, &[]),
                node("edge-b", 3, true, 2, &[]),
                node("node-c", 4, false, 3, &["c1", "c2"]),
                node("node-d", 5, false, 4, &["d1"]),
            ],
            vips: vec![DEFAULT_VIP],
            ipv6: false,
            pod_routes: false,
            bench_helpers: false,
            fabric_gro: false,
        }
    }

    /// The same lab with GRO on at the bridge ports, as some container bridges have it: the
    /// edges' XDP frames then reach the fabric (xlb's `xdp` path, with its checksum completion),
    /// while everything else stays plain.
    pub fn with_fabric_gro(self) -> LabSpec {
        LabSpec {
            fabric_gro: true,
            ..self
        }
    }

    /// The same lab tuned for benchmarks: a pass-through XDP program and GRO on every bridge
    /// port, so that XDP frames sent into the fabric land on the fast path (a veth peer with
    /// NAPI) and xlb keeps its `XDP_TX` path; TX checksum offload off and GRO on at clients
    /// and pods, as the traffic generators and servers were measured with. Figures then
    /// measure xlb's fast path, not veth's skb path. Never for tests or the demo: those must
    /// see what a user's kind or container network does.
    pub fn for_benchmarks(self) -> LabSpec {
        LabSpec {
            bench_helpers: true,
            ..self
        }
    }

    /// Adds pod `pod` to node `node`, at the first free address from `.11` of its pod subnet
    /// (e.g. a spare pod a test scales the Service onto).
    pub fn with_pod(mut self, node: &str, pod: &str) -> Result<LabSpec> {
        let Some(n) = self.nodes.iter_mut().find(|n| n.name == node) else {
            bail!("no node {node} to add pod {pod} to");
        };
        let base = u32::from(n.pod_subnet.network().addr);
        let taken: BTreeSet<Ipv4Addr> = n.pods.iter().map(|p| p.addr).collect();
        let Some(addr) = (11..250u32)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|a| n.pod_subnet.contains(*a) && !taken.contains(a) && *a != n.pod_gateway)
        else {
            bail!("node {node}: no free pod address in {}", n.pod_subnet);
        };
        n.pods.push(PodSpec {
            name: pod.into(),
            addr,
        });
        self.validate()?;
        Ok(self)
    }

    /// The edge nodes (those the clients route the VIPs via), in spec order.
    pub fn edges(&self) -> impl Iterator<Item = &NodeSpec> {
        self.nodes.iter().filter(|n| n.edge)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every pod with the node it runs on.
    pub fn pods(&self) -> impl Iterator<Item = (&NodeSpec, &PodSpec)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (n, p)))
    }

    /// The pod that owns `addr`.
    pub fn pod_by_addr(&self, addr: Ipv4Addr) -> Option<&PodSpec> {
        self.pods().map(|(_, p)| p).find(|p| p.addr == addr)
    }

    /// Checks the spec and turns it into the list of things to create.
    pub fn plan(&self) -> Result<Plan> {
        self.validate()?;
        let mut plan = Plan::default();
        let common = |role: Role| {
            let mut s: Vec<(String, String)> = vec![
                ("net.ipv4.conf.all.rp_filter".into(), "0".into()),
                ("net.ipv4.conf.default.rp_filter".into(), "0".into()),
            ];
            if !self.ipv6 {
                s.push(("net.ipv6.conf.all.disable_ipv6".into(), "1".into()));
                s.push(("net.ipv6.conf.default.disable_ipv6".into(), "1".into()));
            }
            match role {
                Role::Node => s.push(("net.ipv4.ip_forward".into(), "1".into())),
                Role::Client => {
                    // Lab code picks explicit source ports below 40000; the kernel's own
                    // ephemeral ports stay above.
                    s.push((
                        "net.ipv4.ip_local_port_range".into(),
                        format!(
                            "{} {}",
                            super::EPHEMERAL_PORTS.start(),
                            super::EPHEMERAL_PORTS.end()
                        ),
                    ));
                    // ECMP over the edge nodes by the 5-tuple.
                    s.push(("net.ipv4.fib_multipath_hash_policy".into(), "1".into()));
                }
                Role::Pod { .. } | Role::Fabric => {}
            }
            s
        };
        if self.fabric == Fabric::Bridge {
            plan.hosts.push(HostPlan {
                name: FABRIC_HOST.into(),
                role: Role::Fabric,
                sysctls: common(Role::Fabric),
            });
            plan.bridges.push(BridgePlan {
                host: FABRIC_HOST.into(),
                name: BRIDGE.into(),
            });
        }
        for c in &self.clients {
            plan.hosts.push(HostPlan {
                name: c.name.clone(),
                role: Role::Client,
                sysctls: common(Role::Client),
            });
        }
        for n in &self.nodes {
            plan.hosts.push(HostPlan {
                name: n.name.clone(),
                role: Role::Node,
                sysctls: common(Role::Node),
            });
            for p in &n.pods {
                let role = Role::Pod {
                    node: n.name.clone(),
                };
                plan.hosts.push(HostPlan {
                    name: p.name.clone(),
                    role: role.clone(),
                    sysctls: common(role),
                });
            }
        }

        // Clients and nodes onto the fabric.
        let on_subnet = |a: Ipv4Addr| Cidr::new(a, self.subnet.prefix);
        let helpers = self.bench_helpers;
        let fabric_end = |host: &str, addr: Ipv4Addr, client: bool| EndPlan {
            host: host.into(),
            ifname: UPLINK.into(),
            addrs: vec![on_subnet(addr)],
            tx_checksum_off: helpers && client,
            gro: helpers && client,
            xdp_pass: false,
            master: None,
        };
        match self.fabric {
            Fabric::Direct => {
                let (c, n) = (&self.clients[0], &self.nodes[0]);
                plan.links.push(LinkPlan {
                    a: fabric_end(&c.name, c.addr, true),
                    b: fabric_end(&n.name, n.addr, false),
                });
            }
            Fabric::Bridge => {
                let attached = self
                    .clients
                    .iter()
                    .map(|c| (&c.name, c.addr, true))
                    .chain(self.nodes.iter().map(|n| (&n.name, n.addr, false)));
                for (i, (name, addr, client)) in attached.enumerate() {
                    plan.links.push(LinkPlan {
                        a: fabric_end(name, addr, client),
                        b: EndPlan {
                            host: FABRIC_HOST.into(),
                            ifname: format!("port{i}"),
                            addrs: vec![],
                            tx_checksum_off: false,
                            // Benchmarks only: lets XDP_TX/redirect from a node's uplink land
                            // in the bridge port as XDP frames.
                            gro: helpers || self.fabric_gro,
                            xdp_pass: helpers,
                            master: Some(BRIDGE.into()),
                        },
                    });
                }
            }
        }

        // Pods onto their nodes.
        for n in &self.nodes {
            for (i, p) in n.pods.iter().enumerate() {
                let node_if = format!("lxc{i}");
                plan.links.push(LinkPlan {
                    a: EndPlan {
                        host: p.name.clone(),
                        ifname: POD_IF.into(),
                        addrs: vec![Cidr::host(p.addr)],
                        tx_checksum_off: helpers,
                        gro: helpers,
                        xdp_pass: false,
                        master: None,
                    },
                    b: EndPlan {
                        host: n.name.clone(),
                        ifname: node_if.clone(),
                        addrs: vec![Cidr::host(n.pod_gateway)],
                        tx_checksum_off: false,
                        gro: false,
                        xdp_pass: false,
                        master: None,
                    },
                });
                plan.routes.push(RoutePlan {
                    host: n.name.clone(),
                    dst: Cidr::host(p.addr),
                    via: vec![],
                    dev: Some(node_if),
                });
                plan.routes.push(RoutePlan {
                    host: p.name.clone(),
                    dst: Cidr::host(n.pod_gateway),
                    via: vec![],
                    dev: Some(POD_IF.into()),
                });
                plan.routes.push(RoutePlan {
                    host: p.name.clone(),
                    dst: Cidr::new(Ipv4Addr::UNSPECIFIED, 0),
                    via: vec![n.pod_gateway],
                    dev: Some(POD_IF.into()),
                });
            }
        }

        // Pod subnets via their nodes, for every client and every other node (a flat pod
        // network), unless the spec wants pods reachable only through xlb.
        let routers = self
            .clients
            .iter()
            .map(|c| &c.name)
            .chain(self.nodes.iter().map(|n| &n.name))
            .filter(|_| self.pod_routes);
        for host in routers {
            for n in self.nodes.iter().filter(|n| &n.name != host) {
                plan.routes.push(RoutePlan {
                    host: host.clone(),
                    dst: n.pod_subnet.network(),
                    via: vec![n.addr],
                    dev: Some(UPLINK.into()),
                });
            }
        }
        // VIPs via the edge nodes (ECMP when there are several).
        let edges: Vec<Ipv4Addr> = self
            .nodes
            .iter()
            .filter(|n| n.edge)
            .map(|n| n.addr)
            .collect();
        for c in &self.clients {
            for &vip in &self.vips {
                plan.routes.push(RoutePlan {
                    host: c.name.clone(),
                    dst: Cidr::host(vip),
                    via: edges.clone(),
                    dev: Some(UPLINK.into()),
                });
            }
        }
        plan.check_addresses()?;
        Ok(plan)
    }

    fn validate(&self) -> Result<()> {
        if self.clients.is_empty() || self.nodes.is_empty() {
            bail!("a lab needs at least one client and one node");
        }
        if self.fabric == Fabric::Direct && (self.clients.len() != 1 || self.nodes.len() != 1) {
            bail!("a direct fabric joins exactly one client and one node; use Fabric::Bridge");
        }
        if !self.vips.is_empty() && !self.nodes.iter().any(|n| n.edge) {
            bail!("VIPs need at least one edge node to be routed via");
        }
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        let hosts = self
            .clients
            .iter()
            .map(|c| (&c.name, Some(c.addr)))
            .chain(self.nodes.iter().map(|n| (&n.name, Some(n.addr))))
            .chain(self.pods().map(|(_, p)| (&p.name, Some(p.addr))));
        for (name, addr) in hosts {
            if name.is_empty()
                || name.len() > 40
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                bail!("host name {name:?}: use 1-40 characters of [A-Za-z0-9-]");
            }
            if name == FABRIC_HOST || !names.insert(name.clone()) {
                bail!("host name {name:?} is used twice (or is reserved)");
            }
            if let Some(a) = addr
                && !addrs.insert(a)
            {
                bail!("address {a} is used twice");
            }
        }
        for c in &self.clients {
            if !self.subnet.contains(c.addr) {
                bail!(
                    "client {} address {} is outside the fabric subnet {}",
                    c.name,
                    c.addr,
                    self.subnet
                );
            }
        }
        for n in &self.nodes {
            if !self.subnet.contains(n.addr) {
                bail!(
                    "node {} address {} is outside the fabric subnet {}",
                    n.name,
                    n.addr,
                    self.subnet
                );
            }
            if n.pods.len() > 1000 {
                bail!("node {}: too many pods", n.name);
            }
            for p in &n.pods {
                if !n.pod_subnet.contains(p.addr) {
                    bail!(
                        "pod {} address {} is outside {}'s pod subnet {}",
                        p.name,
                        p.addr,
                        n.name,
                        n.pod_subnet
                    );
                }
            }
            if !n.pod_subnet.contains(n.pod_gateway) {
                bail!(
                    "node {}: gateway {} is outside its pod subnet {}",
                    n.name,
                    n.pod_gateway,
                    n.pod_subnet
                );
            }
        }
        Ok(())
    }
}

/// The logical name of the bridge namespace in a [`Fabric::Bridge`] lab.
pub const FABRIC_HOST: &str = "fabric";
/// The bridge inside it.
pub const BRIDGE: &str = "br0";
/// The interface of clients and nodes facing the fabric (the node's XDP interface).
pub const UPLINK: &str = "eth0";
/// The pod's interface.
pub const POD_IF: &str = "eth0";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Client,
    Node,
    Pod { node: String },
    Fabric,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlan {
    pub name: String,
    pub role: Role,
    /// Written right after the namespace is created, before any interface exists.
    pub sysctls: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgePlan {
    pub host: String,
    pub name: String,
}

/// One end of a veth pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndPlan {
    pub host: String,
    pub ifname: String,
    pub addrs: Vec<Cidr>,
    /// `ethtool -K tx off` (benchmarks only): full checksums instead of the partial ones a veth
    /// passes with TX checksum offload, as the benchmarks' generators were measured with.
    pub tx_checksum_off: bool,
    /// `ethtool -K gro on`: enables the veth's NAPI, so XDP frames its peer sends (XDP_TX /
    /// redirect) are delivered; without it xlb sends through the TC path instead.
    pub gro: bool,
    /// Attach a pass-through XDP program ([`super::xdp_pass`], benchmarks only): XDP frames
    /// from the peer then stay on the XDP fast path.
    pub xdp_pass: bool,
    /// Bridge to enslave this end to.
    pub master: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPlan {
    pub a: EndPlan,
    pub b: EndPlan,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePlan {
    pub host: String,
    pub dst: Cidr,
    /// Next hops; several make an ECMP route; none makes a link-scope route on `dev`.
    pub via: Vec<Ipv4Addr>,
    pub dev: Option<String>,
}

impl RoutePlan {
    /// Arguments for `ip route add`.
    pub fn ip_args(&self) -> Vec<String> {
        let dst = if self.dst.prefix == 0 {
            "default".to_string()
        } else {
            self.dst.to_string()
        };
        let mut args = vec!["route".to_string(), "add".to_string(), dst];
        match self.via.as_slice() {
            [] => {
                args.push("dev".into());
                args.push(self.dev.clone().unwrap_or_default());
                args.extend(["scope".to_string(), "link".to_string()]);
            }
            [gw] => {
                args.extend(["via".to_string(), gw.to_string()]);
                if let Some(d) = &self.dev {
                    args.extend(["dev".to_string(), d.clone()]);
                }
            }
            many => {
                for gw in many {
                    args.extend(["nexthop".to_string(), "via".to_string(), gw.to_string()]);
                    if let Some(d) = &self.dev {
                        args.extend(["dev".to_string(), d.clone()]);
                    }
                }
            }
        }
        args
    }
}

/// Everything to create, in order: namespaces (with sysctls), bridges, links, routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub hosts: Vec<HostPlan>,
    pub bridges: Vec<BridgePlan>,
    pub links: Vec<LinkPlan>,
    pub routes: Vec<RoutePlan>,
}

impl Plan {
    /// The network-safety rule, enforced: every address and route is inside 198.18.0.0/15
    /// (the pods' default route excepted, which only points at their node), and every
    /// interface name fits the kernel's 15 characters.
    fn check_addresses(&self) -> Result<()> {
        for l in &self.links {
            for e in [&l.a, &l.b] {
                if e.ifname.is_empty() || e.ifname.len() > 15 {
                    bail!("interface name {:?} does not fit 15 characters", e.ifname);
                }
                for a in &e.addrs {
                    if !LAB_RANGE.covers(a) {
                        bail!("{a} on {}/{} is outside {LAB_RANGE}", e.host, e.ifname);
                    }
                }
            }
        }
        for r in &self.routes {
            if r.dst.prefix != 0 && !LAB_RANGE.covers(&r.dst) {
                bail!("route {} on {} is outside {LAB_RANGE}", r.dst, r.host);
            }
            if let Some(gw) = r.via.iter().find(|g| !LAB_RANGE.contains(**g)) {
                bail!("gateway {gw} on {} is outside {LAB_RANGE}", r.host);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_plan() {
        let plan = LabSpec::single_node().plan().unwrap();
        let names: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["client", "node-a", "pod-1", "pod-2", "pod-3"]);
        assert!(plan.bridges.is_empty());
        assert_eq!(plan.links.len(), 4);
        let up = &plan.links[0];
        assert_eq!(
            (up.a.host.as_str(), up.a.ifname.as_str()),
            ("client", "eth0")
        );
        assert_eq!(up.a.addrs, ["198.18.0.10/24".parse::<Cidr>().unwrap()]);
        assert_eq!(
            (up.b.host.as_str(), up.b.ifname.as_str()),
            ("node-a", "eth0")
        );
        assert_eq!(up.b.addrs, ["198.18.0.2/24".parse::<Cidr>().unwrap()]);
        let pod1 = &plan.links[1];
        assert_eq!(pod1.a.addrs, ["198.18.1.11/32".parse::<Cidr>().unwrap()]);
        // A plain lab: default offloads, no XDP helper anywhere.
        assert!(
            plan.links
                .iter()
                .flat_map(|l| [&l.a, &l.b])
                .all(|e| !e.tx_checksum_off && !e.gro && !e.xdp_pass)
        );
        assert_eq!(
            (pod1.b.host.as_str(), pod1.b.ifname.as_str()),
            ("node-a", "lxc0")
        );
        let node = plan.hosts.iter().find(|h| h.name == "node-a").unwrap();
        assert!(
            node.sysctls
                .contains(&("net.ipv4.ip_forward".into(), "1".into()))
        );
        let vip = plan
            .routes
            .iter()
            .find(|r| r.host == "client" && r.dst == Cidr::host(DEFAULT_VIP))
            .unwrap();
        assert_eq!(
            vip.ip_args().join(" "),
            "route add 198.19.255.1/32 via 198.18.0.2 dev eth0"
        );
        let pods = plan
            .routes
            .iter()
            .find(|r| r.host == "client" && r.dst.prefix == 24)
            .unwrap();
        assert_eq!(
            pods.ip_args().join(" "),
            "route add 198.18.1.0/24 via 198.18.0.2 dev eth0"
        );
        let default = plan
            .routes
            .iter()
            .find(|r| r.host == "pod-2" && r.dst.prefix == 0)
            .unwrap();
        assert_eq!(
            default.ip_args().join(" "),
            "route add default via 198.18.1.1 dev eth0"
        );
        let to_pod = plan
            .routes
            .iter()
            .find(|r| r.host == "node-a" && r.dst.prefix == 32)
            .unwrap();
        assert_eq!(
            to_pod.ip_args().join(" "),
            "route add 198.18.1.11/32 dev lxc0 scope link"
        );
    }

    /// The DSR lab with the pod subnets routed (as a flat pod network would).
    fn two_edges_two_backends() -> LabSpec {
        LabSpec {
            pod_routes: true,
            ..LabSpec::dsr()
        }
        .for_benchmarks()
    }

    #[test]
    fn bridge_plan_with_ecmp() {
        let plan = two_edges_two_backends().plan().unwrap();
        assert_eq!(
            plan.bridges,
            [BridgePlan {
                host: "fabric".into(),
                name: "br0".into()
            }]
        );
        assert_eq!(plan.hosts[0].name, "fabric");
        let ports: Vec<_> = plan.links.iter().filter(|l| l.b.master.is_some()).collect();
        assert_eq!(ports.len(), 5);
        let vip = plan
            .routes
            .iter()
            .find(|r| r.host == "client" && r.dst == Cidr::host(DEFAULT_VIP))
            .unwrap();
        assert_eq!(
            vip.ip_args().join(" "),
            "route add 198.19.255.1/32 nexthop via 198.18.0.2 dev eth0 nexthop via 198.18.0.3 dev eth0"
        );
        // node-c reaches node-d's pods via node-d, and not its own.
        assert!(
            plan.routes
                .iter()
                .any(|r| r.host == "node-c" && r.dst.to_string() == "198.18.4.0/24")
        );
        assert!(
            !plan
                .routes
                .iter()
                .any(|r| r.host == "node-c" && r.dst.to_string() == "198.18.3.0/24")
        );
    }

    #[test]
    fn dsr_plan() {
        let spec = LabSpec::dsr();
        let plan = spec.plan().unwrap();
        let names: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "fabric", "client", "edge-a", "edge-b", "node-c", "c1", "c2", "node-d", "d1"
            ]
        );
        let edges: Vec<&str> = spec.edges().map(|n| n.name.as_str()).collect();
        assert_eq!(edges, ["edge-a", "edge-b"]);
        // Client and nodes on a plain bridge: default offloads, no XDP but xlb's.
        let ports: Vec<_> = plan.links.iter().filter(|l| l.b.master.is_some()).collect();
        assert_eq!(ports.len(), 5);
        assert!(ports.iter().all(|l| l.b.host == "fabric"));
        assert!(
            plan.links
                .iter()
                .flat_map(|l| [&l.a, &l.b])
                .all(|e| !e.tx_checksum_off && !e.gro && !e.xdp_pass)
        );
        // The benchmark variant: GRO and the pass program on the bridge ports only.
        let bench = spec.clone().for_benchmarks().plan().unwrap();
        let ports: Vec<_> = bench
            .links
            .iter()
            .filter(|l| l.b.master.is_some())
            .collect();
        assert!(ports.iter().all(|l| l.b.gro && l.b.xdp_pass));
        assert!(
            bench
                .links
                .iter()
                .flat_map(|l| [&l.a, &l.b])
                .filter(|e| e.xdp_pass)
                .all(|e| e.host == "fabric"),
            "only bridge ports get the pass program"
        );
        assert_eq!(ports[1].a.host, "edge-a");
        assert_eq!(ports[1].a.addrs, ["198.18.0.2/24".parse::<Cidr>().unwrap()]);
        assert_eq!(
            spec.pod_by_addr(Ipv4Addr::new(198, 18, 3, 12))
                .unwrap()
                .name,
            "c2"
        );
        assert_eq!(
            spec.pod_by_addr(Ipv4Addr::new(198, 18, 4, 11))
                .unwrap()
                .name,
            "d1"
        );
        // The VIP over both edges; nothing else routed beyond the fabric, except pods' own.
        let client_routes: Vec<String> = plan
            .routes
            .iter()
            .filter(|r| r.host == "client")
            .map(|r| r.ip_args().join(" "))
            .collect();
        assert_eq!(
            client_routes,
            [
                "route add 198.19.255.1/32 nexthop via 198.18.0.2 dev eth0 nexthop via 198.18.0.3 dev eth0"
            ]
        );
        for n in ["edge-a", "edge-b", "node-c", "node-d"] {
            assert!(
                plan.routes
                    .iter()
                    .filter(|r| r.host == n)
                    .all(|r| r.dst.prefix == 32 && r.via.is_empty()),
                "{n} routes more than its own pods"
            );
        }
        let client = plan.hosts.iter().find(|h| h.name == "client").unwrap();
        assert!(
            client
                .sysctls
                .contains(&("net.ipv4.fib_multipath_hash_policy".into(), "1".into()))
        );
        for n in ["edge-a", "edge-b", "node-c", "node-d"] {
            let h = plan.hosts.iter().find(|h| h.name == n).unwrap();
            assert!(
                h.sysctls
                    .contains(&("net.ipv4.ip_forward".into(), "1".into()))
            );
        }
    }

    #[test]
    fn with_pod_takes_the_next_free_address() {
        let spec = LabSpec::dsr().with_pod("node-d", "d2").unwrap();
        let d = spec.node("node-d").unwrap();
        assert_eq!(d.pods.len(), 2);
        assert_eq!(d.pods[1].name, "d2");
        assert_eq!(d.pods[1].addr, Ipv4Addr::new(198, 18, 4, 12));
        assert!(LabSpec::dsr().with_pod("node-x", "x1").is_err());
        assert!(
            LabSpec::dsr().with_pod("node-d", "c1").is_err(),
            "duplicate name"
        );
        assert_eq!(spec.plan().unwrap().hosts.len(), 10);
    }

    #[test]
    fn refuses_addresses_outside_the_lab_range() {
        let mut spec = LabSpec::single_node();
        spec.vips = vec![Ipv4Addr::new(10, 0, 0, 1)];
        assert!(
            spec.plan()
                .unwrap_err()
                .to_string()
                .contains("outside 198.18.0.0/15")
        );
        let mut spec = LabSpec::single_node();
        spec.subnet = Cidr::new(Ipv4Addr::new(192, 168, 0, 0), 16);
        spec.clients[0].addr = Ipv4Addr::new(192, 168, 0, 10);
        spec.nodes[0].addr = Ipv4Addr::new(192, 168, 0, 2);
        assert!(spec.plan().is_err());
    }

    #[test]
    fn refuses_duplicates_and_bad_shapes() {
        let mut spec = LabSpec::single_node();
        spec.nodes[0].pods[1].addr = spec.nodes[0].pods[0].addr;
        assert!(spec.plan().is_err());
        let mut spec = LabSpec::single_node();
        spec.nodes[0].pods[1].name = "client".into();
        assert!(spec.plan().is_err());
        let mut spec = two_edges_two_backends();
        spec.fabric = Fabric::Direct;
        assert!(spec.plan().is_err());
    }

    #[test]
    fn cidr() {
        let c: Cidr = "198.18.1.7/24".parse().unwrap();
        assert_eq!(c.network().to_string(), "198.18.1.0/24");
        assert!(LAB_RANGE.contains(Ipv4Addr::new(198, 19, 255, 1)));
        assert!(!LAB_RANGE.contains(Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!LAB_RANGE.covers(&"198.0.0.0/8".parse().unwrap()));
    }
}
