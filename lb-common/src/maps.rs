//! Map names, sizes and layouts shared by the kernel programs and the `xlb` process.
//!
//! Conventions: addresses and ports inside keys and values are stored in **network byte order**
//! (exactly the bytes the packet carries) so the datapath compares and copies them without
//! swapping. Every struct is `#[repr(C)]` with explicit padding so its size is the same for the
//! BPF target and the host, and the asserts at the bottom pin those sizes.
//!
//! Changing any layout here requires bumping [`LAYOUT_VERSION`]: pins live in a directory named
//! after it, so a new `xlb` never reads maps of an old layout.

/// Pins live under `/sys/fs/bpf/xlb/ns-<netns cookie>/<LAYOUT_VERSION>/`.
pub const LAYOUT_VERSION: &str = "v3";

// ---- map names (the `#[btf_map]` statics in the kernel crate carry exactly these names) ----
pub const MAP_FRONTENDS: &str = "XLB_FRONTENDS";
pub const MAP_LOCAL_ADDRS: &str = "XLB_LOCAL_ADDRS";
pub const MAP_BACKENDS: &str = "XLB_BACKENDS";
pub const MAP_MAGLEV: &str = "XLB_MAGLEV";
pub const MAP_CONNTRACK: &str = "XLB_CONNTRACK";
pub const MAP_REVNAT: &str = "XLB_REVNAT";
pub const MAP_SRC_RANGES: &str = "XLB_SRC_RANGES";
pub const MAP_GLOBAL_STATS: &str = "XLB_GLOBAL_STATS";
pub const MAP_FRONTEND_STATS: &str = "XLB_FRONTEND_STATS";
pub const MAP_BACKEND_STATS: &str = "XLB_BACKEND_STATS";
pub const MAP_CONFIG: &str = "XLB_CONFIG";
pub const MAP_AFFINITY: &str = "XLB_AFFINITY";
pub const MAP_SVC_BACKENDS: &str = "XLB_SVC_BACKENDS";
pub const MAP_NODES: &str = "XLB_NODES";

/// Every map the programs own; the loader pins each of these.
pub const ALL_MAPS: [&str; 14] = [
    MAP_FRONTENDS,
    MAP_LOCAL_ADDRS,
    MAP_BACKENDS,
    MAP_MAGLEV,
    MAP_CONNTRACK,
    MAP_REVNAT,
    MAP_SRC_RANGES,
    MAP_GLOBAL_STATS,
    MAP_FRONTEND_STATS,
    MAP_BACKEND_STATS,
    MAP_CONFIG,
    MAP_NODES,
    MAP_AFFINITY,
    MAP_SVC_BACKENDS,
];

// ---- program names ----
pub const PROG_XDP: &str = "xlb_xdp";
pub const PROG_TC_EGRESS: &str = "xlb_tc_egress";

// ---- capacities (compile-time in the kernel object) ----
/// Frontends: (address, port, protocol) entries, across all Services.
pub const MAX_FRONTENDS: u32 = 65_536;
/// Service ports: each owns one Maglev table and one backend set.
pub const MAX_SERVICES: u32 = 16_384;
/// Backend ids (pod address + port), including draining ones kept for open connections.
pub const MAX_BACKENDS: u32 = 131_072;
pub const MAX_LOCAL_ADDRS: u32 = 256;
pub const MAX_SRC_RANGES: u32 = 16_384;
/// Default conntrack / reverse-NAT capacity; `--conntrack-size` overrides at load time.
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262_144;

/// Default Maglev table size (prime). Configurable up to [`MAGLEV_MAX_TABLE_SIZE`].
pub const MAGLEV_DEFAULT_TABLE_SIZE: u32 = 16_381;
pub const MAGLEV_MAX_TABLE_SIZE: u32 = 131_071;
/// `BPF_F_INNER_MAP`: lets inner Maglev arrays differ in size from the template (kernel 5.10+).
pub const BPF_F_INNER_MAP: u32 = 0x1000;
/// `BPF_F_MMAPABLE`: user space writes and reads a whole table through one mapping instead of
/// one syscall per slot (kernel 5.5+).
pub const BPF_F_MMAPABLE: u32 = 0x400;
/// Flags of every Maglev inner table; the kernel requires the template's and each inner map's
/// flags to be equal.
pub const MAGLEV_INNER_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;
/// A Maglev slot that holds no backend (a Service with no usable endpoint).
pub const NO_BACKEND: u32 = u32::MAX;
/// Maglev slots per element of an inner table. BPF arrays store each element at an 8-byte
/// stride, so a table of `u32` slots would waste half its memory; two slots share an element
/// (slot `s` is half `s & 1` of element `s >> 1`), which also makes the mmap view of a table a
/// plain contiguous `[u32]`.
pub const MAGLEV_SLOTS_PER_ELEM: u32 = 2;
/// One element of a Maglev inner table: two consecutive slots.
pub type MaglevPair = [u32; 2];

/// Elements an inner table needs for `m` slots (the odd last half is `NO_BACKEND`).
pub const fn maglev_elems(m: u32) -> u32 {
    m.div_ceil(MAGLEV_SLOTS_PER_ELEM)
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of `XLB_FRONTENDS`. `addr == 0` is the NodePort wildcard: it matches any address in
/// `XLB_LOCAL_ADDRS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FrontendKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The frontend enforces `loadBalancerSourceRanges` through `XLB_SRC_RANGES`.
pub const FRONTEND_F_SOURCE_RANGES: u32 = 1;

/// Value of `XLB_FRONTENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrontendValue {
    /// Index into `XLB_MAGLEV` (the Service port's table) and key prefix in `XLB_SRC_RANGES`.
    pub service_id: u32,
    /// Index into `XLB_FRONTEND_STATS`.
    pub frontend_id: u32,
    /// `FRONTEND_F_*` bits.
    pub flags: u32,
    /// Size M of the Service's Maglev table; `flow_hash % M` is the slot.
    pub table_size: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 = no affinity.
    pub affinity_timeout_s: u32,
}

/// Key of `XLB_LOCAL_ADDRS`: an IPv4 address of this node (network order). Value: unused `u32`.
pub type LocalAddrKey = u32;

/// The backend runs on this node: DNAT and hand to the kernel, which routes to the pod.
pub const BACKEND_F_LOCAL: u8 = 1;
/// The backend runs on another node: encapsulate to `node_addr`.
pub const BACKEND_F_REMOTE: u8 = 2;

/// Value of `XLB_BACKENDS`, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Pod address (network order).
    pub addr: u32,
    /// Target port (network order).
    pub port: u16,
    /// `BACKEND_F_*` bits; 0 for an unused slot.
    pub flags: u8,
    /// IP protocol of the Service port: a pod's TCP and UDP ports are distinct backends with
    /// their own counters.
    pub proto: u8,
    /// Address of the node the pod runs on (network order).
    pub node_addr: u32,
}

/// A 5-tuple as seen on the wire (network order). Key of `XLB_CONNTRACK` (client → frontend)
/// and of `XLB_REVNAT` (pod → client, i.e. the reply's tuple).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Value of `XLB_CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub backend_id: u32,
    pub frontend_id: u32,
    /// `bpf_ktime_get_ns()` when the flow was first seen.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns()` of the latest packet.
    pub last_seen_ns: u64,
}

/// Value of `XLB_REVNAT`: what the reply's source must become.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNatValue {
    /// The address and port the client sent to (network order).
    pub frontend_addr: u32,
    pub frontend_port: u16,
    pub _pad: u16,
}

/// Data of an `XLB_SRC_RANGES` LPM key: the service id (big endian, so it forms the first 32
/// bits of the prefix) followed by the client address. Prefix length = 32 + CIDR length.
/// Value: unused `u32` (presence means allowed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SrcRangeKey {
    pub service_id_be: u32,
    pub addr: u32,
}

/// Key of `XLB_AFFINITY` (LRU, `--conntrack-size`): a client of a Service port with
/// `sessionAffinity: ClientIP`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    pub service_id: u32,
    /// Client address (network order).
    pub client_addr: u32,
}

/// Value of `XLB_AFFINITY`: the backend the client's new flows go to, and when it last opened
/// one (the timeout counts from there, as kube-proxy's `recent` match does).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_ns: u64,
}

/// Key of `XLB_SVC_BACKENDS`: a backend that may take new flows of a Service port (weight > 0).
/// Value: unused `u32`. Affinity only ever returns a client to a backend listed here, so a
/// draining or removed backend gets no new flows through affinity either.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SvcBackendKey {
    pub service_id: u32,
    pub backend_id: u32,
}

/// Packets, bytes and new flows: the value of the per-CPU frontend and backend counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
    /// Flows this frontend or backend was picked for: conntrack entries created (a new TCP
    /// connection, a new UDP flow). Exact, unlike counting conntrack entries by age, which
    /// misses flows evicted or expired between two readings.
    pub new_flows: u64,
}

/// Geneve (RFC 8926), the encapsulation between an edge node and a backend's node. Chosen over
/// GUE because it is a standard with a registered port that tcpdump and Wireshark decode, and
/// because its TLV options carry the frontend the client used without inventing a header.
pub const GENEVE_PORT: u16 = 6081;
/// Geneve protocol type of the payload: an IPv4 packet (no inner Ethernet header).
pub const GENEVE_PROTO_IPV4: u16 = 0x0800;
/// Option class for xlb's option (from the range RFC 8926 reserves for experimental use).
pub const XLB_OPT_CLASS: u16 = 0xfff0;
/// Option type: "frontend" (not critical: a receiver that does not know it may still decap).
pub const XLB_OPT_TYPE_FRONTEND: u8 = 0x01;
/// Length of our option's data, in 4-byte words.
pub const XLB_OPT_LEN_WORDS: u8 = 2;

/// The Geneve header as it appears on the wire (8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GeneveHdr {
    /// Version (2 bits, 0) and options length in 4-byte words (6 bits).
    pub ver_opt_len: u8,
    /// O (control) and C (critical options) bits, then reserved.
    pub flags: u8,
    /// Payload protocol (network order).
    pub proto: u16,
    /// VNI (24 bits, 0) and a reserved byte.
    pub vni_rsvd: [u8; 4],
}

/// xlb's Geneve option: the frontend the client sent to, so the backend's node can give the
/// reply that source (12 bytes on the wire).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FrontendOpt {
    pub class: u16,
    pub opt_type: u8,
    /// Reserved bits and the data length in 4-byte words.
    pub len: u8,
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Bytes the encapsulation adds: outer IPv4, UDP, Geneve and the frontend option.
pub const ENCAP_OVERHEAD: u32 = 20 + 8 + 8 + 12;

/// Value of `XLB_CONFIG` (an array of one): node-wide settings user space gives the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// This node's address: the outer source of encapsulated packets (network order; 0 =
    /// unknown, remote backends are then dropped and counted).
    pub node_addr: u32,
    /// The Geneve port (network order).
    pub tunnel_port: u16,
    pub _pad: u16,
}

/// Key of `XLB_NODES`: the address of a known cluster node (network order). Value: unused `u32`.
/// Only these may send us tunnel packets.
pub const MAX_NODES: u32 = 16_384;

/// Index into `XLB_GLOBAL_STATS` (per-CPU `u64`): why a packet left the datapath the way it did.
/// Every early exit of a program increments exactly one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4 (ARP, LLDP, ...). Passed.
    PassNotIpv4 = 0,
    /// IPv6: not load-balanced yet. Passed.
    PassIpv6 = 1,
    /// IPv4 but neither TCP nor UDP. Passed.
    PassNotL4 = 2,
    /// No frontend for (dst, port, proto). Passed.
    PassNoFrontend = 3,
    /// An IPv4 fragment: not load-balanced. Passed.
    PassFragment = 4,
    /// Truncated or inconsistent headers. Passed (the kernel drops and counts them too).
    PassMalformed = 5,
    /// Source address outside `loadBalancerSourceRanges`. Dropped.
    DropSourceRange = 6,
    /// The frontend's Service has no usable backend. Dropped.
    DropNoBackend = 7,
    /// DNAT to a pod on this node, handed to the kernel to deliver.
    FwdLocal = 8,
    /// A new flow was recorded in conntrack (Maglev pick).
    CtNew = 9,
    /// A packet matched an existing conntrack entry.
    CtHit = 10,
    /// A flow's conntrack entry pointed to a backend that is gone: re-picked.
    CtStaleBackend = 11,
    /// conntrack or reverse-NAT insert failed. The packet is still forwarded.
    CtInsertFailed = 12,
    /// TC egress: a reply's source was rewritten to the frontend.
    ReplyRewritten = 13,
    /// TC egress: not one of our replies. Passed.
    ReplyPass = 14,
    /// The Service's Maglev table is missing. Dropped.
    DropNoTable = 15,
    /// Encapsulated to the backend's node and sent back out the ingress interface (`XDP_TX`).
    FwdEncapTx = 16,
    /// Encapsulated to the backend's node and redirected to another interface.
    FwdEncapRedirect = 17,
    /// Encapsulated, but the FIB lookup gave no next hop (no neighbour yet, no route, forwarding off): handed to the kernel to route.
    EncapFibPass = 18,
    /// Too big to encapsulate within the egress MTU: ICMP fragmentation-needed sent to the client.
    IcmpTooBig = 19,
    /// Too big to encapsulate and no ICMP could be built (DF clear, or IPv4 options). Dropped.
    DropTooBig = 20,
    /// A remote backend whose node address, or this node's own address, is unknown. Dropped.
    DropNoNodeAddr = 21,
    /// A tunnel packet from a known node was decapsulated and handed to the kernel for its pod.
    Decap = 22,
    /// A tunnel packet whose outer source is not a known cluster node. Dropped.
    DropTunnelUnknownNode = 23,
    /// A packet to our tunnel port that is not a well-formed xlb Geneve packet. Dropped.
    DropTunnelMalformed = 24,
    /// Growing or shrinking the frame failed (the driver lacks headroom). Dropped.
    EncapFailed = 25,
    /// A new flow followed its client's session affinity instead of the Maglev table.
    AffinityHit = 26,
}

pub const REASON_COUNT: u32 = 27;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassNotIpv4,
        Reason::PassIpv6,
        Reason::PassNotL4,
        Reason::PassNoFrontend,
        Reason::PassFragment,
        Reason::PassMalformed,
        Reason::DropSourceRange,
        Reason::DropNoBackend,
        Reason::FwdLocal,
        Reason::CtNew,
        Reason::CtHit,
        Reason::CtStaleBackend,
        Reason::CtInsertFailed,
        Reason::ReplyRewritten,
        Reason::ReplyPass,
        Reason::DropNoTable,
        Reason::FwdEncapTx,
        Reason::FwdEncapRedirect,
        Reason::EncapFibPass,
        Reason::IcmpTooBig,
        Reason::DropTooBig,
        Reason::DropNoNodeAddr,
        Reason::Decap,
        Reason::DropTunnelUnknownNode,
        Reason::DropTunnelMalformed,
        Reason::EncapFailed,
        Reason::AffinityHit,
    ];

    /// Stable snake_case name used by the CLI, JSON output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIpv4 => "pass_not_ipv4",
            Reason::PassIpv6 => "pass_ipv6",
            Reason::PassNotL4 => "pass_not_tcp_udp",
            Reason::PassNoFrontend => "pass_no_frontend",
            Reason::PassFragment => "pass_fragment",
            Reason::PassMalformed => "pass_malformed",
            Reason::DropSourceRange => "drop_source_range",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::FwdLocal => "forward_local",
            Reason::CtNew => "conntrack_new",
            Reason::CtHit => "conntrack_hit",
            Reason::CtStaleBackend => "conntrack_stale_backend",
            Reason::CtInsertFailed => "conntrack_insert_failed",
            Reason::ReplyRewritten => "reply_rewritten",
            Reason::ReplyPass => "reply_pass",
            Reason::DropNoTable => "drop_no_table",
            Reason::FwdEncapTx => "forward_encap_tx",
            Reason::FwdEncapRedirect => "forward_encap_redirect",
            Reason::EncapFibPass => "encap_fib_pass",
            Reason::IcmpTooBig => "icmp_too_big",
            Reason::DropTooBig => "drop_too_big",
            Reason::DropNoNodeAddr => "drop_no_node_addr",
            Reason::Decap => "decap",
            Reason::DropTunnelUnknownNode => "drop_tunnel_unknown_node",
            Reason::DropTunnelMalformed => "drop_tunnel_malformed",
            Reason::EncapFailed => "drop_encap_failed",
            Reason::AffinityHit => "affinity_hit",
        }
    }
}

// Layout pins: the same sizes on the BPF target and the host.
const _: () = assert!(core::mem::size_of::<FrontendKey>() == 8);
const _: () = assert!(core::mem::size_of::<FrontendValue>() == 20);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<SvcBackendKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 12);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtValue>() == 24);
const _: () = assert!(core::mem::size_of::<RevNatValue>() == 8);
const _: () = assert!(core::mem::size_of::<SrcRangeKey>() == 8);
const _: () = assert!(core::mem::size_of::<Counter>() == 24);
const _: () = assert!(core::mem::size_of::<GeneveHdr>() == 8);
const _: () = assert!(core::mem::size_of::<FrontendOpt>() == 12);
const _: () = assert!(core::mem::size_of::<Config>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain old data with explicit padding fields, valid for
    // any bit pattern.
    unsafe impl aya::Pod for FrontendKey {}
    unsafe impl aya::Pod for FrontendValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for SrcRangeKey {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SvcBackendKey {}
}
