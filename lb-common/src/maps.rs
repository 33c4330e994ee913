//! Map names, sizes and layouts shared by the kernel programs and the `xlb` process.
//!
//! Conventions: addresses and ports inside keys and values are stored in **network byte order**
//! (exactly the bytes the packet carries) so the datapath compares and copies them without
//! swapping. Every struct is `#[repr(C)]` with explicit padding so its size is the same for the
//! BPF target and the host, and the asserts at the bottom pin those sizes.
//!
//! Changing any layout here requires bumping [`LAYOUT_VERSION`]: pins live in a directory named
//! after it, so a new `xlb` never reads maps of an old layout as its own. It takes an older
//! layout's datapath over through the entry [`crate::layout`] has for that version.

/// Pins live under `/sys/fs/bpf/xlb/ns-<netns cookie>/<LAYOUT_VERSION>/`.
#[cfg(not(feature = "layout-next"))]
pub const LAYOUT_VERSION: &str = "v5";
/// The test build of the upgrade tests: the conntrack value has one more field.
#[cfg(feature = "layout-next")]
pub const LAYOUT_VERSION: &str = "v5-next";

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
pub const MAP_LOCAL_BACKENDS: &str = "XLB_LOCAL_BACKENDS";
pub const MAP_IFACES: &str = "XLB_IFACES";
pub const MAP_POD_IFACES: &str = "XLB_POD_IFACES";
pub const MAP_PORTS: &str = "XLB_PORTS";
pub const MAP_SYN_GUARD: &str = "XLB_SYN_GUARD";
pub const MAP_NODE_HOPS: &str = "XLB_NODE_HOPS";
pub const MAP_SCRATCH: &str = "XLB_SCRATCH";

/// Every map the programs own; the loader pins each of these.
pub const ALL_MAPS: [&str; 21] = [
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
    MAP_LOCAL_BACKENDS,
    MAP_IFACES,
    MAP_POD_IFACES,
    MAP_PORTS,
    MAP_SYN_GUARD,
    MAP_NODE_HOPS,
    MAP_SCRATCH,
];

// ---- program names ----
pub const PROG_XDP: &str = "xlb_xdp";
pub const PROG_TC_EGRESS: &str = "xlb_tc_egress";
pub const PROG_TC_INGRESS: &str = "xlb_tc_ingress";

// ---- capacities ----
// The sizes the kernel object declares. `xlb run` creates the maps with the sizes of its flags
// instead (`--max-frontends`, `--max-services`, `--max-backends`, `--conntrack-size`), so for
// the maps these size they are only the defaults; the programs never read them (every lookup is
// bounded by its map). The others (local addresses, source ranges, nodes, interfaces) are fixed.
/// Default of `--max-frontends`: (address, port, protocol) entries, across all Services.
pub const MAX_FRONTENDS: u32 = 65_536;
/// Default of `--max-services`: Service ports, each owning one Maglev table and one backend set.
pub const MAX_SERVICES: u32 = 16_384;
/// Default of `--max-backends`: backend ids (pod address + port), including draining ones kept
/// for open connections.
pub const MAX_BACKENDS: u32 = 131_072;
pub const MAX_LOCAL_ADDRS: u32 = 256;
pub const MAX_SRC_RANGES: u32 = 16_384;
/// Default conntrack / reverse-NAT capacity; `--conntrack-size` overrides at load time.
pub const DEFAULT_CONNTRACK_SIZE: u32 = 262_144;

/// Default cap of the Maglev table size (prime; `--maglev-table-size`). Each Service's own size
/// is a step of [`crate::maglev::MAGLEV_LADDER`] below it. Configurable up to
/// [`MAGLEV_MAX_TABLE_SIZE`].
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
/// Slot value "no backend" of a 16-bit table (see [`maglev_narrow`]).
pub const NO_BACKEND16: u32 = u16::MAX as u32;
/// The most backends a Service's table can list with 16-bit slots: ordinals `0..=65534`, and
/// `0xFFFF` is [`NO_BACKEND16`]. A Service with more gets 32-bit slots.
pub const MAGLEV_NARROW_MAX_BACKENDS: u32 = 65_535;

/// One element of a Maglev inner table: 8 bytes, seen as two `u32` words (BPF arrays store
/// each element at an 8-byte stride, so nothing smaller saves memory).
///
/// # Inner table layout (v5)
///
/// A table is self-describing, so that swapping one inner map changes a Service's size `M`,
/// backend list and slots in one step (a packet sees all old or all new):
///
/// * element 0, the header: word 0 = `M`, word 1 = `n`, the number of backends listed;
/// * elements `1 .. 1 + ceil(n / 2)`: the backend ids, ordinal `o` in word `o & 1` of element
///   `1 + o / 2` (the Service's backends in canonical Maglev order, draining ones included);
/// * from element [`maglev_slot_base`]`(n)`: the `M` slots, each the *ordinal* of its backend in
///   that list. With `n <=` [`MAGLEV_NARROW_MAX_BACKENDS`] a slot is 16 bits, four per element
///   (slot `s` is bits `16 * (s & 3)` of the element read as `word0 | word1 << 32`), and
///   [`NO_BACKEND16`] means no backend; otherwise a slot is 32 bits, two per element (word
///   `s & 1`), and [`NO_BACKEND`] means no backend. Unused trailing slots are "no backend".
///
/// All words are native-endian `u32`s, the same on both sides of the kernel boundary.
pub type MaglevPair = [u32; 2];

/// Elements of the header of an inner table.
pub const MAGLEV_HEADER_ELEMS: u32 = 1;

/// Whether a table listing `backends` backends has 16-bit slots.
pub const fn maglev_narrow(backends: u32) -> bool {
    backends <= MAGLEV_NARROW_MAX_BACKENDS
}

/// Slots per 8-byte element for a table listing `backends` backends: 4 (16-bit) or 2.
pub const fn maglev_slots_per_elem(backends: u32) -> u32 {
    if maglev_narrow(backends) { 4 } else { 2 }
}

/// The element at which the slots start: after the header and the backend ids.
pub const fn maglev_slot_base(backends: u32) -> u32 {
    MAGLEV_HEADER_ELEMS + backends.div_ceil(2)
}

/// Elements an inner table of `m` slots listing `backends` backends needs.
pub const fn maglev_elems(m: u32, backends: u32) -> u32 {
    maglev_slot_base(backends) + m.div_ceil(maglev_slots_per_elem(backends))
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
    /// Size M of the Service's Maglev table, as the table's own header says. Informational
    /// (`xlb services`, takeover): the datapath reads M from the table, so that a new size and
    /// the new slots arrive together.
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

impl FlowKey {
    /// The key of `src → dst` over `proto` (addresses and ports as they are on the wire).
    ///
    /// Built from four words: in the BPF program a `[0; 3]` pad becomes a call to `memset`, a
    /// subprogram, and Linux 6.1 counts each frame of a call chain as at least 32 bytes of the
    /// 512-byte stack, which the XDP program cannot spare.
    #[inline(always)]
    pub const fn new(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> FlowKey {
        let s = src_port.to_ne_bytes();
        let d = dst_port.to_ne_bytes();
        let words = [
            src_addr,
            dst_addr,
            u32::from_ne_bytes([s[0], s[1], d[0], d[1]]),
            u32::from_ne_bytes([proto, 0, 0, 0]),
        ];
        // SAFETY: FlowKey is 16 bytes of plain data with no invalid bit patterns (asserted
        // below), laid out as these four words.
        unsafe { core::mem::transmute::<[u32; 4], FlowKey>(words) }
    }

    /// The tuple of the replies to this flow (client → frontend) once it is sent to the backend
    /// at `backend_addr:backend_port` (network order): the key under which the datapath
    /// records the flow's reverse NAT, and under which the sweeper must find it again.
    #[inline(always)]
    pub const fn reply(&self, backend_addr: u32, backend_port: u16) -> FlowKey {
        FlowKey::new(
            backend_addr,
            self.src_addr,
            backend_port,
            self.src_port,
            self.proto,
        )
    }
}

/// `CtValue::flags`: the client sent a FIN or an RST. The flow is closing: it no longer counts
/// as active and is removed after [`CT_CLOSE_TIMEOUT_S`] without packets. An edge sees only the
/// client's half of the connection (replies go from the backend straight to the client), so
/// this is all it can infer: after a FIN the client has nothing more to send but may still ACK
/// the backend's data (each ACK keeps the entry), after an RST it is gone. A new SYN on the
/// same tuple opens a new flow and clears it.
pub const CT_F_CLOSING: u32 = 1;

/// Value of `XLB_CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub backend_id: u32,
    pub frontend_id: u32,
    /// `bpf_ktime_get_ns()` when the flow was first seen.
    pub created_ns: u64,
    /// `bpf_ktime_get_ns()` of the latest packet (refreshed at most once a second, and at the
    /// packet that closes the flow).
    pub last_seen_ns: u64,
    /// `CT_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// Only in the `layout-next` test build, which must take over a running datapath whose
    /// conntrack record is shorter. Always 0.
    #[cfg(feature = "layout-next")]
    pub next: u64,
}

impl CtValue {
    /// A flow first seen at `now` and sent to `backend_id`.
    #[inline(always)]
    pub const fn new(backend_id: u32, frontend_id: u32, now: u64) -> CtValue {
        CtValue {
            backend_id,
            frontend_id,
            created_ns: now,
            last_seen_ns: now,
            flags: 0,
            _pad: 0,
            #[cfg(feature = "layout-next")]
            next: 0,
        }
    }

    /// Whether a FIN or RST closed the flow.
    #[inline(always)]
    pub const fn is_closing(&self) -> bool {
        self.flags & CT_F_CLOSING != 0
    }

    /// How long the flow may be idle before it is over: [`CT_CLOSE_TIMEOUT_S`] once closing,
    /// else its protocol's idle timeout.
    #[inline(always)]
    pub const fn timeout_ns(&self, proto: u8) -> u64 {
        if self.is_closing() {
            CT_CLOSE_TIMEOUT_S * 1_000_000_000
        } else {
            flow_idle_ns(proto)
        }
    }

    /// An active connection: not closed by a FIN or RST, and not idle beyond its protocol's
    /// timeout at `now_ns` (`bpf_ktime_get_ns` / `CLOCK_MONOTONIC`). What every "active
    /// connections" figure (the `CONNS` columns, `/metrics`) counts; the one place that says so.
    pub const fn is_active(&self, proto: u8, now_ns: u64) -> bool {
        !self.is_closing() && now_ns.saturating_sub(self.last_seen_ns) <= flow_idle_ns(proto)
    }

    /// The sweeper removes the entry at `now_ns`: idle beyond [`Self::timeout_ns`].
    pub const fn is_expired(&self, proto: u8, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns(proto)
    }
}

/// Value of `XLB_REVNAT`: what the reply's source must become.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNatValue {
    /// The address and port the client sent to (network order).
    pub frontend_addr: u32,
    pub frontend_port: u16,
    /// [`REVNAT_F_CLOSED`] or 0. The padding of layout v4 and before, which was always 0.
    pub flags: u16,
    /// `bpf_ktime_get_ns()` of the flow's latest packet seen by the program that records it
    /// (refreshed at most once a second): a tunnel packet may give the reply tuple another
    /// frontend only once the flow has been idle for [`flow_idle_ns`], or, for TCP, closed.
    pub last_ns: u64,
}

/// `RevNatValue::flags`: the TCP connection on this reply tuple sent or received a FIN or an RST.
/// The pod sees one socket per 4-tuple whatever frontend the client used, so once that socket is
/// closing a new connection (a SYN) on the same tuple may come through another frontend: a
/// client reusing its source port towards the NodePort after the VIP, say. Without the flag such
/// a SYN would be dropped for a day (TCP's idle timeout).
pub const REVNAT_F_CLOSED: u16 = 1;

/// Idle time after which a TCP flow is over: conntrack entries are removed, and a reply tuple
/// may be recorded for another frontend. Long, as kube-proxy's established TCP entries are: an
/// LB in front of long-lived connections must not be shorter than its clients' keepalives.
pub const TCP_IDLE_TIMEOUT_S: u64 = 86_400;
/// The same for UDP (and any other protocol).
pub const UDP_IDLE_TIMEOUT_S: u64 = 300;
/// Idle time after which a closing TCP flow (a FIN or RST seen) is removed: long enough for the
/// last ACKs and a retransmitted FIN, short enough that closed connections do not fill the
/// table (Cilium uses the same 10 s).
pub const CT_CLOSE_TIMEOUT_S: u64 = 10;

/// The idle timeout of protocol `proto`, in nanoseconds.
#[inline(always)]
pub const fn flow_idle_ns(proto: u8) -> u64 {
    if proto == IPPROTO_TCP {
        TCP_IDLE_TIMEOUT_S * 1_000_000_000
    } else {
        UDP_IDLE_TIMEOUT_S * 1_000_000_000
    }
}

/// Key of `XLB_LOCAL_BACKENDS`: a backend running on this node of a frontend (addresses and
/// ports in network order; `frontend_addr == 0` is a NodePort, on whichever node address the
/// client used). Value: unused `u32`. A tunnel packet is decapsulated only if its inner
/// destination and the frontend its option names form one of these: what a real edge could
/// have sent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct LocalBackendKey {
    pub frontend_addr: u32,
    pub backend_addr: u32,
    pub frontend_port: u16,
    pub backend_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl LocalBackendKey {
    /// Built from words for the reason [`FlowKey::new`] gives (same layout).
    #[inline(always)]
    pub const fn new(
        frontend_addr: u32,
        backend_addr: u32,
        frontend_port: u16,
        backend_port: u16,
        proto: u8,
    ) -> LocalBackendKey {
        let k = FlowKey::new(
            frontend_addr,
            backend_addr,
            frontend_port,
            backend_port,
            proto,
        );
        // SAFETY: both are 16 bytes of plain data with the same fields in the same order
        // (asserted below).
        unsafe { core::mem::transmute::<FlowKey, LocalBackendKey>(k) }
    }
}

/// `XLB_LOCAL_BACKENDS` entries: (frontend, local backend) pairs. Sized like the backends
/// (`--max-backends` at load time).
pub const MAX_LOCAL_BACKENDS: u32 = MAX_BACKENDS;

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

/// The outer headers in front of an encapsulated packet: Ethernet, then the
/// [`ENCAP_OVERHEAD`] bytes (62).
pub const OUTER_HDR_LEN: usize = 14 + ENCAP_OVERHEAD as usize;

/// Value of `XLB_NODE_HOPS` (key: a remote node's address, network order): the outer headers
/// to that node, prepared by user space from the route and the neighbour table (see
/// `docs/datapath.md`, "Prepared next hops"). The program copies `hdr` in front of the inner
/// packet and patches only what differs per packet: the IPv4 total length and checksum, the
/// UDP source port and length, and the option's frontend. An entry exists only while its next
/// hop is valid; without one the program looks the next hop up (`bpf_fib_lookup`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeHop {
    /// The first [`OUTER_HDR_LEN`] bytes are the outer headers as sent, with zeros in the
    /// per-packet fields; the rest is padding.
    pub hdr: [u8; 64],
    /// The interface the route to the node leaves by.
    pub ifindex: u32,
    /// One's-complement sum (not folded) of the outer IPv4 header's raw 16-bit words other
    /// than the total length and the checksum: the checksum is `!fold(ip_sum + tot_len)`.
    pub ip_sum: u32,
    /// The largest outer IPv4 packet the route takes (its MTU, else the interface's). A
    /// larger one goes the lookup path, which answers with ICMP fragmentation-needed.
    pub mtu: u32,
    pub _pad: u32,
}

/// Value of `XLB_SCRATCH` (per-CPU array of one): working memory of the XDP program for the
/// records too large for its 512-byte stack once every step of the packet walk is inlined into
/// it. Only the program uses it, within one run (nothing is carried between packets, and user
/// space never reads it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch {
    /// The `struct bpf_fib_lookup` of the next-hop lookup (the pod's or the remote node's).
    pub fib: [u64; 8],
}

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
    /// SYN-flood guard: new flows per second per CPU above which a SYN is forwarded without a
    /// conntrack write (its flow is recorded from its first packet after the handshake). 0 =
    /// off.
    pub syn_guard_rate: u32,
    /// 1 once `XLB_PORTS` holds every frontend port and the tunnel port: the datapath then
    /// passes a packet whose destination port has no bit for its protocol after that one array
    /// read. 0 (a fresh or taken-over datapath before its first apply): every packet takes the
    /// full frontend lookup.
    pub ports_ready: u32,
}

/// `XLB_PORTS` (array indexed by the host-order destination port): bits for what a packet to
/// that port may be. A packet whose port has no bit of its protocol is not ours.
pub const PORT_F_TCP: u32 = 1;
/// Some UDP frontend (exact or NodePort) uses the port.
pub const PORT_F_UDP: u32 = 2;
/// Some NodePort (wildcard) frontend of the protocol uses it: the local-address lookup is
/// needed. TCP and UDP shifted as above (`PORT_F_NODEPORT << 0` TCP, `<< 1` UDP).
pub const PORT_F_TCP_NODEPORT: u32 = 4;
pub const PORT_F_UDP_NODEPORT: u32 = 8;
/// The tunnel port (UDP).
pub const PORT_F_TUNNEL: u32 = 16;
/// Entries of `XLB_PORTS`.
pub const PORTS_LEN: u32 = 65_536;

/// The `XLB_PORTS` bits a packet of protocol `proto` may match, and the NodePort bit.
#[inline(always)]
pub const fn port_bits(proto: u8) -> (u32, u32) {
    if proto == IPPROTO_TCP {
        (PORT_F_TCP, PORT_F_TCP_NODEPORT)
    } else {
        (PORT_F_UDP | PORT_F_TUNNEL, PORT_F_UDP_NODEPORT)
    }
}

/// Value of `XLB_SYN_GUARD` (per-CPU array of one): this CPU's new-flow count in the current
/// one-second window, and how often the guard engaged.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SynGuardState {
    /// `bpf_ktime_get_ns()` when the current window began.
    pub window_ns: u64,
    /// New flows seen in the window (recorded or not).
    pub count: u32,
    /// 1 while the guard is engaged in the window (`count` reached the rate).
    pub engaged: u32,
    /// Windows in which the guard engaged (trips), since the maps were created.
    pub trips: u64,
}

/// Length of the SYN guard's counting window.
pub const SYN_GUARD_WINDOW_NS: u64 = 1_000_000_000;
/// Default `--syn-guard-rate`: new flows per second per CPU. Far above what one CPU's share of a
/// node's legitimate connection rate is, far below what a flood at line rate makes (millions).
pub const DEFAULT_SYN_GUARD_RATE: u32 = 50_000;

/// Key of `XLB_NODES`: the address of a known cluster node (network order). Value: unused `u32`.
/// Only these may send us tunnel packets.
pub const MAX_NODES: u32 = 16_384;

/// Interfaces `XLB_IFACES` describes: the ones xlb attaches to (and redirect targets probed
/// with them).
pub const MAX_IFACES: u32 = 256;

/// `IfaceValue::xdp_mode`: xlb's XDP program runs in the driver (frames are `xdp_buff`s; an
/// `XDP_TX` or redirect leaves as an `xdp_frame` through the egress driver's `ndo_xdp_xmit`).
pub const XDP_MODE_NATIVE: u8 = 1;
/// `IfaceValue::xdp_mode`: generic (skb) mode: the program sees skbs, and `XDP_TX` or a redirect
/// is sent as an skb (`dev_queue_xmit`), which every driver takes.
pub const XDP_MODE_GENERIC: u8 = 2;

/// `IfaceValue::path`: frames out of this interface go as XDP frames (`XDP_TX` / redirect).
pub const EGRESS_XDP: u8 = 1;
/// `IfaceValue::path`: xlb's XDP program runs in generic mode here; its `XDP_TX` goes out as an
/// skb.
pub const EGRESS_XDP_GENERIC: u8 = 2;
/// `IfaceValue::path`: this interface's driver would drop XDP frames; frames for it are passed
/// to the kernel with [`XdpMeta`] and the TC ingress program redirects the skb out of it.
pub const EGRESS_TC_REDIRECT: u8 = 3;

/// Why an interface got its `IfaceValue::path` (`IfaceValue::why`), for `xlb stats` and the
/// attach log. [`EgressWhy::text`] gives the sentence.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressWhy {
    Unknown = 0,
    /// The driver reports `NETDEV_XDP_ACT_NDO_XMIT` in its xdp_features.
    DriverXmit = 1,
    /// A veth whose peer runs an XDP program or has GRO on (the kernel reports
    /// `NETDEV_XDP_ACT_NDO_XMIT` for it).
    VethPeerReady = 2,
    /// A veth whose peer has neither an XDP program nor GRO: the peer has no NAPI and the
    /// kernel drops every XDP frame sent to it (`xdp_tx_errors`).
    VethPeerNotReady = 3,
    /// A driver without `ndo_xdp_xmit`.
    DriverNoXmit = 4,
    /// xlb's program runs in generic mode on this interface.
    Generic = 5,
    /// A veth on a kernel without xdp_features (before 6.3): whether its peer (maybe in another
    /// namespace) takes XDP frames cannot be seen, so the skb path is taken.
    VethUnknownPeer = 6,
    /// Not a veth, on a kernel without xdp_features: a driver that runs XDP natively is assumed
    /// to transmit what it receives (`XDP_TX` is part of every native XDP driver).
    AssumedNative = 7,
    /// A veth whose peer takes XDP frames by the kernel's account (`NETDEV_XDP_ACT_NDO_XMIT`:
    /// an XDP program or GRO there), but which of the two cannot be seen; with GRO alone the
    /// frames were lost in the lab, so the skb path is taken.
    VethPeerUnverified = 8,
}

impl EgressWhy {
    pub const fn from_u8(v: u8) -> EgressWhy {
        match v {
            1 => EgressWhy::DriverXmit,
            2 => EgressWhy::VethPeerReady,
            3 => EgressWhy::VethPeerNotReady,
            4 => EgressWhy::DriverNoXmit,
            5 => EgressWhy::Generic,
            6 => EgressWhy::VethUnknownPeer,
            7 => EgressWhy::AssumedNative,
            8 => EgressWhy::VethPeerUnverified,
            _ => EgressWhy::Unknown,
        }
    }

    /// Stable snake_case name for JSON and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            EgressWhy::Unknown => "unknown",
            EgressWhy::DriverXmit => "driver_xdp_xmit",
            EgressWhy::VethPeerReady => "veth_peer_ready",
            EgressWhy::VethPeerNotReady => "veth_peer_without_xdp_or_gro",
            EgressWhy::DriverNoXmit => "driver_without_xdp_xmit",
            EgressWhy::Generic => "generic_mode",
            EgressWhy::VethUnknownPeer => "veth_peer_unknown",
            EgressWhy::AssumedNative => "assumed_native",
            EgressWhy::VethPeerUnverified => "veth_peer_unverified",
        }
    }

    /// The reason as a sentence, for the attach log and `xlb stats`.
    pub const fn text(self) -> &'static str {
        match self {
            EgressWhy::Unknown => "not probed",
            EgressWhy::DriverXmit => "the driver transmits XDP frames (ndo_xdp_xmit)",
            EgressWhy::VethPeerReady => {
                "veth whose peer runs an XDP program or has GRO on: it takes XDP frames"
            }
            EgressWhy::VethPeerNotReady => {
                "veth whose peer has no XDP program and GRO off (no NAPI): the kernel would drop \
                 XDP frames sent to it"
            }
            EgressWhy::DriverNoXmit => "the driver cannot transmit XDP frames (no ndo_xdp_xmit)",
            EgressWhy::Generic => "XDP runs in generic (skb) mode here: XDP_TX is sent as an skb",
            EgressWhy::VethUnknownPeer => {
                "veth on a kernel without xdp_features: whether its peer takes XDP frames cannot \
                 be seen"
            }
            EgressWhy::AssumedNative => {
                "native XDP driver on a kernel without xdp_features: assumed to transmit XDP frames"
            }
            EgressWhy::VethPeerUnverified => {
                "veth whose peer has an XDP program or GRO on (the kernel does not say which; \
                 GRO alone did not deliver XDP frames in the lab)"
            }
        }
    }
}

/// The stable name of an `IfaceValue::path`.
pub const fn egress_path_name(path: u8) -> &'static str {
    match path {
        EGRESS_XDP => "xdp",
        EGRESS_XDP_GENERIC => "xdp-generic",
        EGRESS_TC_REDIRECT => "tc-redirect",
        _ => "unknown",
    }
}

/// Value of `XLB_IFACES` (key: ifindex, `u32`): how xlb's XDP program runs on an interface and
/// how frames leave through it. An interface without an entry is treated as native and as
/// taking XDP frames.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceValue {
    /// `XDP_MODE_*`, 0 when xlb is not attached to it (a redirect target).
    pub xdp_mode: u8,
    /// `EGRESS_*`.
    pub path: u8,
    /// [`EgressWhy`] as `u8`.
    pub why: u8,
    pub _pad: u8,
}

/// What the XDP program leaves in front of a frame it passes for the TC ingress program to
/// redirect (XDP metadata, `bpf_xdp_adjust_meta`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct XdpMeta {
    /// [`XDP_META_MAGIC`]: the metadata is xlb's.
    pub magic: u32,
    /// Interface to send the frame out of.
    pub ifindex: u32,
}

/// `XdpMeta::magic` ("xlbR"): `bpf_redirect` to the egress of `ifindex`.
pub const XDP_META_MAGIC: u32 = 0x786c_6252;
/// `XdpMeta::magic` ("xlbP"): `bpf_redirect_peer` into the namespace of `ifindex`'s veth peer
/// (a pod), whose ingress then sees the skb as if its own NIC had received it.
pub const XDP_META_PEER: u32 = 0x786c_6250;
/// `XdpMeta::magic` ("xlbN"): `bpf_redirect_neigh` out of `ifindex`, the kernel filling in the
/// MACs from its neighbour table.
pub const XDP_META_NEIGH: u32 = 0x786c_624e;

/// Host-side pod interfaces `XLB_POD_IFACES` can hold (a node runs at most a few hundred pods).
pub const MAX_POD_IFACES: u32 = 4096;

/// `PodIface::how`: redirect the skb into the pod's namespace (`bpf_redirect_peer` from the TC
/// ingress program): no routing, no netfilter, no backlog queue. The default.
pub const DELIVER_PEER: u8 = 1;
/// `PodIface::how`: redirect the skb out of the host-side veth (`bpf_redirect` from TC): the
/// veth hands it to its peer through the receive backlog.
pub const DELIVER_REDIRECT: u8 = 2;
/// `PodIface::how`: `bpf_redirect_neigh` out of the host-side veth (MACs from the kernel's
/// neighbour table, through the neighbour output path).
pub const DELIVER_NEIGH: u8 = 3;
/// `PodIface::how`: redirect the XDP frame itself into the host-side veth (`bpf_redirect` from
/// XDP). Works only when the pod's end runs an XDP program (or has GRO on): a veth drops XDP
/// frames for a peer without NAPI. A benchmark candidate, not for ordinary pods.
pub const DELIVER_XDP: u8 = 4;

/// Value of `XLB_POD_IFACES` (key: ifindex of a host-side veth whose peer lives in another
/// network namespace, `u32`): how packets for the pod behind it are delivered past the kernel's
/// IP stack. Written by user space from the node's links (`--pod-delivery`); an interface
/// without an entry gets the packet through the kernel (`deliver_kernel_not_pod`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodIface {
    /// `DELIVER_*`.
    pub how: u8,
    pub _pad: [u8; 3],
}

/// The name of a `DELIVER_*` value (`--pod-delivery`, logs).
pub const fn deliver_name(how: u8) -> &'static str {
    match how {
        DELIVER_PEER => "peer",
        DELIVER_REDIRECT => "redirect",
        DELIVER_NEIGH => "neigh",
        DELIVER_XDP => "xdp",
        _ => "unknown",
    }
}

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
    /// An xlb tunnel packet whose outer source is not a known cluster node. Dropped.
    DropTunnelUnknownNode = 23,
    /// A packet to the tunnel port that carries xlb's option class but is not a well-formed xlb
    /// Geneve packet. Dropped.
    DropTunnelMalformed = 24,
    /// Growing or shrinking the frame failed (the driver lacks headroom). Dropped.
    EncapFailed = 25,
    /// A new flow followed its client's session affinity instead of the Maglev table.
    AffinityHit = 26,
    /// A packet to the tunnel port that does not carry xlb's option (another Geneve user, such
    /// as the CNI's pod network, or not Geneve at all). Passed untouched.
    PassTunnelForeign = 27,
    /// An xlb tunnel packet whose inner destination is not a backend on this node of the
    /// frontend its option names (address, port and protocol). Dropped.
    DropTunnelNotBackend = 28,
    /// An xlb tunnel packet that would give a live flow's replies another frontend as their
    /// source. Dropped.
    DropTunnelFlowConflict = 29,
    /// A TCP/UDP checksum that was only the pseudo-header sum (the sender offloads it,
    /// `CHECKSUM_PARTIAL`) was completed over the payload, because the packet leaves as an XDP
    /// frame, which carries no checksum state. Counted on the way.
    L4CsumCompleted = 30,
    /// A pseudo-header-only checksum was updated as such: the packet stays an skb that still
    /// carries the kernel's `CHECKSUM_PARTIAL` state, so whoever completes it must find the
    /// pseudo-header sum there. Counted on the way.
    L4CsumPartialKept = 31,
    /// Encapsulated (or answered) and sent through the kernel's skb path: the XDP program passed
    /// the frame with metadata and the TC ingress program redirected it out of the egress
    /// interface, whose driver would drop an XDP frame (see `XLB_IFACES`).
    FwdEncapSkb = 32,
    /// A packet for a pod on this node (after the local DNAT or the decapsulation) was put
    /// straight into the pod's interface past the kernel's IP stack (`XLB_POD_IFACES`).
    /// Counted on the way, with `forward_local` or `decap`.
    DeliverPod = 33,
    /// Delivery to a local pod fell back to the kernel: the FIB has no usable route to the pod
    /// from the ingress interface (no route, a route not via one interface, forwarding off).
    /// Counted on the way.
    DeliverKernelNoRoute = 34,
    /// Delivery to a local pod fell back to the kernel: no neighbour entry for the pod yet (the
    /// kernel resolves it; the next packets take the fast path). Counted on the way.
    DeliverKernelNoNeigh = 35,
    /// Delivery to a local pod fell back to the kernel: the pod's route leaves through an
    /// interface without an `XLB_POD_IFACES` entry (not a veth whose peer is in another
    /// namespace, or `--pod-delivery kernel`). Counted on the way.
    DeliverKernelNotPod = 36,
    /// Delivery to a local pod fell back to the kernel: the TTL would expire, the packet exceeds
    /// the pod link's MTU, or the driver left no room for the metadata. Counted on the way.
    DeliverKernelOther = 37,
    /// SYN-flood guard: a SYN above the per-CPU new-flow rate was forwarded by Maglev without a
    /// conntrack write (its flow is recorded at its first packet after the handshake).
    SynGuarded = 38,
    /// A FIN or RST from the client moved its flow to the short close timeout.
    CtClosing = 39,
    /// A TCP packet other than a SYN found no conntrack entry (the entry was evicted from a full
    /// table, expired or flushed, or the SYN guard skipped it): re-picked by Maglev and
    /// recorded now.
    CtMissMidFlow = 40,
    /// Encapsulated with the node's prepared outer headers (`XLB_NODE_HOPS`), no next-hop
    /// lookup. Counted on the way (the exit is one of the `FwdEncap*`).
    EncapPrepared = 41,
    /// A remote backend's node had no usable prepared next hop (none yet: no neighbour entry,
    /// no route; or the packet exceeds its MTU): the next hop was looked up instead
    /// (`bpf_fib_lookup`). Counted on the way.
    EncapHopFallback = 42,
}

pub const REASON_COUNT: u32 = 43;

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
        Reason::PassTunnelForeign,
        Reason::DropTunnelNotBackend,
        Reason::DropTunnelFlowConflict,
        Reason::L4CsumCompleted,
        Reason::L4CsumPartialKept,
        Reason::FwdEncapSkb,
        Reason::DeliverPod,
        Reason::DeliverKernelNoRoute,
        Reason::DeliverKernelNoNeigh,
        Reason::DeliverKernelNotPod,
        Reason::DeliverKernelOther,
        Reason::SynGuarded,
        Reason::CtClosing,
        Reason::CtMissMidFlow,
        Reason::EncapPrepared,
        Reason::EncapHopFallback,
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
            Reason::PassTunnelForeign => "pass_tunnel_foreign",
            Reason::DropTunnelNotBackend => "drop_tunnel_not_backend",
            Reason::DropTunnelFlowConflict => "drop_tunnel_flow_conflict",
            Reason::L4CsumCompleted => "l4_csum_completed",
            Reason::L4CsumPartialKept => "l4_csum_partial_kept",
            Reason::FwdEncapSkb => "forward_encap_skb",
            Reason::DeliverPod => "deliver_pod",
            Reason::DeliverKernelNoRoute => "deliver_kernel_no_route",
            Reason::DeliverKernelNoNeigh => "deliver_kernel_no_neigh",
            Reason::DeliverKernelNotPod => "deliver_kernel_not_pod",
            Reason::DeliverKernelOther => "deliver_kernel_other",
            Reason::SynGuarded => "syn_guard_skipped",
            Reason::CtClosing => "conntrack_closing",
            Reason::CtMissMidFlow => "conntrack_miss_mid_flow",
            Reason::EncapPrepared => "encap_prepared_hop",
            Reason::EncapHopFallback => "encap_hop_fallback",
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
#[cfg(not(feature = "layout-next"))]
const _: () = assert!(core::mem::size_of::<CtValue>() == 32);
#[cfg(feature = "layout-next")]
const _: () = assert!(core::mem::size_of::<CtValue>() == 40);
const _: () = assert!(core::mem::size_of::<RevNatValue>() == 16);
const _: () = assert!(core::mem::size_of::<LocalBackendKey>() == 16);
const _: () = assert!(core::mem::size_of::<SrcRangeKey>() == 8);
const _: () = assert!(core::mem::size_of::<Counter>() == 24);
const _: () = assert!(core::mem::size_of::<GeneveHdr>() == 8);
const _: () = assert!(core::mem::size_of::<FrontendOpt>() == 12);
const _: () = assert!(core::mem::size_of::<Config>() == 16);
const _: () = assert!(core::mem::size_of::<SynGuardState>() == 24);
const _: () = assert!(core::mem::size_of::<IfaceValue>() == 4);
const _: () = assert!(core::mem::size_of::<XdpMeta>() == 8);
const _: () = assert!(core::mem::size_of::<PodIface>() == 4);
const _: () = assert!(core::mem::size_of::<NodeHop>() == 80);
const _: () = assert!(OUTER_HDR_LEN <= 64);
const _: () = assert!(core::mem::size_of::<Scratch>() == 64);

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
    unsafe impl aya::Pod for SynGuardState {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for SvcBackendKey {}
    unsafe impl aya::Pod for LocalBackendKey {}
    unsafe impl aya::Pod for IfaceValue {}
    unsafe impl aya::Pod for PodIface {}
    unsafe impl aya::Pod for NodeHop {}
    unsafe impl aya::Pod for Scratch {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_is_active_until_closed_or_idle() {
        const S: u64 = 1_000_000_000;
        let t0 = 1_000 * S;
        let mut ct = CtValue::new(1, 2, t0);
        assert!(ct.is_active(IPPROTO_TCP, t0 + 3_600 * S));
        assert!(!ct.is_active(IPPROTO_TCP, t0 + TCP_IDLE_TIMEOUT_S * S + 1));
        assert!(ct.is_active(IPPROTO_UDP, t0 + UDP_IDLE_TIMEOUT_S * S));
        assert!(!ct.is_active(IPPROTO_UDP, t0 + UDP_IDLE_TIMEOUT_S * S + 1));
        assert!(!ct.is_expired(IPPROTO_TCP, t0 + 3_600 * S));
        // A FIN or RST: no longer active at once, removed after the close timeout.
        ct.flags |= CT_F_CLOSING;
        assert!(!ct.is_active(IPPROTO_TCP, t0));
        assert!(!ct.is_expired(IPPROTO_TCP, t0 + CT_CLOSE_TIMEOUT_S * S));
        assert!(ct.is_expired(IPPROTO_TCP, t0 + CT_CLOSE_TIMEOUT_S * S + 1));
        // A clock read before the entry's own stamp (another CPU) is not idle time.
        assert!(CtValue::new(1, 2, t0).is_active(IPPROTO_TCP, t0 - S));
    }

    #[test]
    fn reply_key_is_the_pod_answering_the_client() {
        // Client 198.18.0.10:40000 → frontend 198.19.255.1:80 (TCP), sent to pod
        // 198.18.1.11:8080; the pod's reply travels 198.18.1.11:8080 → 198.18.0.10:40000.
        let raw = |a: [u8; 4]| u32::from_ne_bytes(a);
        let port = |p: u16| u16::from_ne_bytes(p.to_be_bytes());
        let flow = FlowKey {
            src_addr: raw([198, 18, 0, 10]),
            dst_addr: raw([198, 19, 255, 1]),
            src_port: port(40000),
            dst_port: port(80),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let reply = flow.reply(raw([198, 18, 1, 11]), port(8080));
        // The wire bytes of the reply's key, written out by hand.
        let mut want = [0u8; 16];
        want[..4].copy_from_slice(&[198, 18, 1, 11]);
        want[4..8].copy_from_slice(&[198, 18, 0, 10]);
        want[8..10].copy_from_slice(&8080u16.to_be_bytes());
        want[10..12].copy_from_slice(&40000u16.to_be_bytes());
        want[12] = 6;
        // SAFETY: FlowKey is 16 bytes of plain data (asserted above).
        let got: [u8; 16] = unsafe { core::mem::transmute(reply) };
        assert_eq!(got, want);
    }
}
