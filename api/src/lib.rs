//! What the `xlb` inspection commands print with `-o json` or `-o yaml`, as types. `xlb`
//! serialises them; `xlb-bench`, the end-to-end tests and the benchmark report deserialise the
//! same types, so a change to the shape is a change to this crate (and to its shape test).
//!
//! Fields are only ever added; readers tolerate fields they do not know.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

/// `xlb services -o json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicesOutput {
    pub services: Vec<ServiceStatus>,
    pub conntrack: ConntrackUsage,
    /// Where the connection counts (and `conntrack.entries`) come from: `xlb run`'s
    /// connection census, not a walk of the table by the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub census: Option<CensusStatus>,
}

/// The connection census the counts of `xlb services` come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CensusStatus {
    /// `current`: the running `xlb run`'s last census; `pending`: its first census is not done
    /// yet; `no-daemon`: no `xlb run` is running, so nobody counts and connections read 0.
    pub state: String,
    /// Unix time the census ended, seconds since then, and how long its walk took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_unix: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub walk_s: Option<f64>,
}

/// How full the connection table is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConntrackUsage {
    /// Entries in the table (its fill), active or not.
    pub entries: u64,
    pub capacity: u32,
    /// Active connections: entries neither closed (FIN/RST) nor idle beyond their timeout.
    #[serde(default)]
    pub active: u64,
}

/// The SYN-flood guard in `xlb stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynGuardStatus {
    /// New flows per second per CPU above which SYNs get no conntrack write (0 = off).
    pub rate: u32,
    /// CPUs on which the guard is engaged now (in the current one-second window).
    pub engaged_cpus: u32,
    /// One-second windows (per CPU) in which it engaged.
    pub trips: u64,
    /// SYNs forwarded without a conntrack write.
    pub skipped: u64,
}

/// One Service port: its frontends, its backends, their counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `namespace/name:port/PROTOCOL`.
    pub name: String,
    pub protocol: String,
    pub service_id: u32,
    /// The Maglev table size M.
    pub table_size: u32,
    /// Open connections over all its frontends.
    pub connections: u64,
    pub frontends: Vec<FrontendStatus>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrontendStatus {
    /// `None` for a NodePort (any node address).
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    /// `loadBalancer`, `externalIP` or `nodePort`.
    pub kind: String,
    pub frontend_id: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub connections: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub addr: Ipv4Addr,
    pub port: u16,
    /// The Kubernetes node the pod runs on, when the EndpointSlice names it.
    pub node: Option<String>,
    /// On this node (DNAT) rather than another (encapsulated).
    pub local: bool,
    pub weight: u32,
    /// `ready`, `terminating` or `draining`.
    pub state: String,
    pub backend_id: u32,
    /// Slots of the Maglev table that point at it.
    pub slots: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub connections: u64,
}

impl BackendStatus {
    /// Takes new flows: state `ready` and a weight above 0.
    pub fn is_ready(&self) -> bool {
        self.state == "ready" && self.weight > 0
    }
}

impl ServiceStatus {
    /// The frontend at `(addr, port)` (`None` = the NodePort).
    pub fn frontend(&self, addr: Option<Ipv4Addr>, port: u16) -> Option<&FrontendStatus> {
        self.frontends
            .iter()
            .find(|f| f.addr == addr && f.port == port)
    }

    pub fn backend(&self, addr: Ipv4Addr) -> Option<&BackendStatus> {
        self.backends.iter().find(|b| b.addr == addr)
    }
}

impl ServicesOutput {
    pub fn service(&self, name: &str) -> Option<&ServiceStatus> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// `xlb stats -o json`: every global counter; with `--interval`, rates over it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsOutput {
    pub counters: BTreeMap<String, u64>,
    /// The interfaces frames are sent out of: how, why, and their drivers' XDP errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<f64>,
    /// The interfaces the datapath is attached to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<IfaceAttachment>,
    /// The SYN-flood guard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_guard: Option<SynGuardStatus>,
}

/// An interface the datapath is attached to, and how its egress program is attached:
/// `tcx` (a TCX link) or `legacy` (a cls_bpf filter on the clsact qdisc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceAttachment {
    pub iface: String,
    pub tc_attach: String,
}

/// One interface in `xlb stats`: the way frames xlb builds leave it, chosen at attach.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// `None` when the interface is gone.
    pub name: Option<String>,
    pub ifindex: u32,
    /// How xlb's XDP program runs on it: `native`, `generic`, or `none` (a redirect target).
    pub xdp_mode: String,
    /// `xdp` (XDP_TX / redirect), `xdp-generic` (the same actions, sent as skbs) or
    /// `tc-redirect` (passed to the kernel, redirected by the TC ingress program).
    pub path: String,
    /// Why, as a stable name (`veth_peer_without_xdp_or_gro`, ...).
    pub reason: String,
    /// Why, as a sentence.
    pub reason_text: String,
    /// The driver's XDP error statistics, by their ethtool names.
    pub xdp_errors: BTreeMap<String, u64>,
}

/// One flow as `xlb conntrack list -o json` prints it (a JSON array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub frontend: Ipv4Addr,
    pub frontend_port: u16,
    pub protocol: String,
    /// `None` when the backend id was released (the flow will re-pick on its next packet).
    pub backend: Option<Ipv4Addr>,
    pub backend_port: Option<u16>,
    pub backend_id: u32,
    pub age_s: f64,
    pub idle_s: f64,
    pub frontend_id: u32,
    /// The Service port the frontend belongs to, when `xlb run` published its names.
    pub service: Option<String>,
    /// The Kubernetes node of the backend.
    pub backend_node: Option<String>,
}

/// A line of `xlb conntrack watch -o json`: first one `start`, then `new` and `end` events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum WatchEvent {
    Start {
        time: f64,
        flows: usize,
        filter: String,
    },
    New {
        time: f64,
        #[serde(flatten)]
        flow: FlowRow,
    },
    End {
        time: f64,
        #[serde(flatten)]
        flow: FlowRow,
    },
}

/// `xlb conntrack flush -o json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlushReport {
    pub filter: String,
    pub matched: usize,
    pub flushed: usize,
    pub revnat_removed: usize,
    pub flows: Vec<FlowRow>,
}

/// `xlb maglev show -o json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaglevOutput {
    pub services: Vec<MaglevView>,
}

/// One Service port's live Maglev table.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MaglevView {
    pub name: String,
    pub protocol: String,
    pub service_id: u32,
    pub table_size: u32,
    pub empty_slots: u32,
    /// The most loaded backend's slots over its ideal (1.0 = perfect).
    pub max_over_ideal: f64,
    /// The least loaded backend's slots over its ideal.
    pub min_over_ideal: f64,
    pub backends: Vec<MaglevBackendView>,
    /// With `--slots`: each slot's backend as `addr:port` (`null`: no backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Vec<Option<String>>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaglevBackendView {
    /// `None` for a slot's backend id the published names do not know.
    pub addr: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub node: Option<String>,
    pub state: String,
    pub weight: u32,
    pub backend_id: u32,
    pub slots: u32,
    /// Fraction of the table's slots.
    pub share: f64,
    /// Fraction its weight asks for.
    pub ideal_share: f64,
}
