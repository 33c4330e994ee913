//! The output of [`compile`](crate::compile::compile): what the datapath of one node should hold.
//!
//! Plain data, no behaviour beyond formatting: the reconciler diffs two [`DatapathPlan`]s (or a
//! plan against the maps) and the CLI prints them as JSON. Everything here is ordered
//! deterministically (`BTreeMap`/`BTreeSet`, sorted vectors) so that equal inputs give equal,
//! byte-identical plans on every node.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::{Serialize, Serializer};

/// Who "this node" is and the node-local knobs `compile` needs besides the cluster state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeIdentity {
    /// The Kubernetes Node name of this host (`spec.nodeName` of the pods running here).
    pub node_name: String,
    /// `--maglev-table-size`: the cap (a prime) of every service port's Maglev table size `M`;
    /// each port's own `M` is [`lb_common::maglev::table_size_for`] its backends.
    pub table_size: u32,
    /// IPv4 addresses of the `--iface` interfaces: NodePorts also match on these, whether or not
    /// the Node object lists them.
    pub extra_local_addrs: Vec<Ipv4Addr>,
}

/// Everything one node's datapath should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DatapathPlan {
    /// One entry per load-balanced service port.
    pub services: BTreeMap<ServicePortKey, ServicePlan>,
    /// This node's addresses for NodePort matching: the Node's `status.addresses` of type
    /// `InternalIP` / `ExternalIP` (IPv4) plus [`NodeIdentity::extra_local_addrs`].
    pub local_addrs: BTreeSet<Ipv4Addr>,
    /// `spec.healthCheckNodePort` of every `type: LoadBalancer` Service with
    /// `externalTrafficPolicy: Local`, and what `xlb run` answers there (HTTP on every local
    /// address, as kube-proxy does). Not a datapath map: the health-check server serves these.
    pub health_check_node_ports: BTreeMap<u16, HealthCheckPlan>,
    /// Human-readable notes about input that was ignored or repaired, in a deterministic order.
    /// Not errors: the plan is still complete for everything that was usable.
    pub warnings: Vec<String>,
}

/// A Service port: the unit that owns one backend set and one Maglev table.
///
/// Ordered by namespace, name, port name, protocol. Displays (and serialises) like kube-proxy's
/// `ServicePortName`: `ns/name:port_name/TCP`, or `ns/name/TCP` when the port has no name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortKey {
    pub namespace: String,
    pub name: String,
    /// `spec.ports[].name`; empty for the (single) unnamed port.
    pub port_name: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        write!(f, "/{}", self.protocol)
    }
}

/// Serialised as its display string so that a plan's `services` map is a JSON object.
impl Serialize for ServicePortKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The L4 protocols xlb load-balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Protocol {
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// The IP protocol number (`IPPROTO_TCP` = 6, `IPPROTO_UDP` = 17).
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::maps::IPPROTO_TCP,
            Protocol::Udp => lb_common::maps::IPPROTO_UDP,
        }
    }

    /// The Kubernetes spelling, `TCP` or `UDP`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    /// Parses the Kubernetes spelling (`TCP`, `UDP`; case-sensitive like the API).
    pub fn from_k8s(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One service port's frontends, backends and Maglev table size.
///
/// The Maglev table itself is not kept: it is a pure function of `backends` and `table_size`
/// ([`ServicePlan::maglev_table`]), built when it is written to the maps and dropped after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePlan {
    /// Sorted by (kind, addr, port); no two share `(addr, port)`.
    pub frontends: Vec<FrontendPlan>,
    /// Canonical Maglev order (sorted by address, then port): the table's slots index this.
    /// Includes terminating backends with weight 0, which own no slot but keep a backend id so
    /// that established flows (conntrack) still reach them.
    pub backends: Vec<BackendPlan>,
    /// Maglev `M`: [`lb_common::maglev::table_size_for`] the backends, capped by
    /// [`NodeIdentity::table_size`].
    pub table_size: u32,
    /// Parsed IPv4 `loadBalancerSourceRanges` as (network, prefix length), sorted, deduplicated.
    /// Empty means every source is allowed. Enforced only on frontends whose
    /// [`FrontendPlan::source_ranges_apply`] is set.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// `externalTrafficPolicy: Local`: `backends` and `table` hold only this node's endpoints
    /// (kube-proxy's terminating fallback computed over those), so traffic is never encapsulated
    /// and the client address reaches the pod. With no local endpoint the table is all
    /// [`lb_common::maps::NO_BACKEND`]: the datapath drops and counts (`drop_no_backend`) instead
    /// of passing to the kernel.
    pub local_only: bool,
    /// `sessionAffinity: ClientIP`: for this many seconds after a client's last new flow, its
    /// next new flows go to the same backend (if that backend still takes new flows), instead
    /// of `table[hash % M]`. `None` without affinity. Kubernetes' default is 10800 s (3 h).
    pub affinity_timeout: Option<u32>,
}

impl ServicePlan {
    /// The backends as the Maglev builder takes them, in canonical order.
    pub fn maglev_backends(&self) -> Vec<lb_common::maglev::MaglevBackend> {
        self.backends
            .iter()
            .map(|b| lb_common::maglev::MaglevBackend::from_ipv4(b.addr, b.port, b.weight))
            .collect()
    }

    /// The Maglev table of this port: `table_size` slots, each an index into `backends` (the
    /// canonical order) or [`lb_common::maps::NO_BACKEND`]. Built on every call (a few
    /// microseconds per thousand slots); callers keep what they need of it, not the table.
    pub fn maglev_table(
        &self,
    ) -> Result<lb_common::maglev::MaglevTable, lb_common::maglev::MaglevError> {
        lb_common::maglev::build_table(&self.maglev_backends(), self.table_size)
    }
}

/// What the health check at one `healthCheckNodePort` reports (see
/// [`DatapathPlan::health_check_node_ports`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheckPlan {
    pub namespace: String,
    pub name: String,
    /// This node's distinct ready endpoint addresses over all ports of the Service (kube-proxy
    /// counts addresses, not address:port pairs, and not terminating endpoints): HTTP 200 when
    /// non-zero, 503 otherwise.
    pub local_endpoints: u32,
}

/// An address and port that reaches a service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FrontendPlan {
    /// `None` = a NodePort: matches on any address in [`DatapathPlan::local_addrs`].
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    pub kind: FrontendKind,
    /// The service's `source_ranges` are enforced on this frontend (LoadBalancer ingress IPs
    /// only, and only when the list is non-empty).
    pub source_ranges_apply: bool,
}

/// Where a frontend comes from in the Service object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrontendKind {
    /// `status.loadBalancer.ingress[].ip` of a `type: LoadBalancer` Service.
    LoadBalancer,
    /// `spec.externalIPs[]` (any Service type).
    ExternalIp,
    /// `spec.ports[].nodePort` of a `NodePort` / `LoadBalancer` Service, on every local address.
    NodePort,
}

/// One endpoint (pod address and target port) of a service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendPlan {
    pub addr: Ipv4Addr,
    /// The target port, as resolved by the EndpointSlice.
    pub port: u16,
    /// `endpoints[].nodeName`.
    pub node_name: Option<String>,
    /// The first IPv4 `InternalIP` of that Node, if the Node is known: where encapsulated
    /// packets for this backend go.
    pub node_addr: Option<Ipv4Addr>,
    /// The backend runs on this node (`node_name == NodeIdentity::node_name`).
    pub local: bool,
    /// Maglev weight: 1 for a backend that takes new flows, 0 for one that only keeps its
    /// established flows.
    pub weight: u32,
    pub state: BackendState,
}

/// The endpoint's condition as compile saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum BackendState {
    /// `ready` (or unset): takes new flows.
    Ready,
    /// `terminating`: keeps established flows; takes new ones (weight 1) only as kube-proxy's
    /// fallback, when the service port has no ready endpoint and this one is still `serving`.
    Terminating,
}
