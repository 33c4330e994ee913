//! The maps, declared with the layouts from `lb_common::maps` (names must match its `MAP_*`).
use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::maps::{
    AffinityKey, AffinityValue, Backend, Config, Counter, CtValue, DEFAULT_CONNTRACK_SIZE, FlowKey,
    FrontendKey, FrontendValue, IfaceValue, LocalBackendKey, MAGLEV_DEFAULT_TABLE_SIZE,
    MAGLEV_INNER_FLAGS, MAX_BACKENDS, MAX_FRONTENDS, MAX_IFACES, MAX_LOCAL_ADDRS,
    MAX_LOCAL_BACKENDS, MAX_NODES, MAX_POD_IFACES, MAX_SERVICES, MAX_SRC_RANGES, MaglevPair,
    NodeHop, PORTS_LEN, PodIface, REASON_COUNT, RevNatValue, Scratch, SrcRangeKey, SvcBackendKey,
    SynGuardState, maglev_elems,
};

/// Template of a Service's Maglev table. `BPF_F_INNER_MAP` lets user space swap in tables of
/// any length; each table's header gives its M and slot width (`lb_common::maps::MaglevPair`).
pub type MaglevTable = Array<
    MaglevPair,
    { maglev_elems(MAGLEV_DEFAULT_TABLE_SIZE, 1) as usize },
    { MAGLEV_INNER_FLAGS as usize },
>;

#[btf_map]
pub static XLB_FRONTENDS: HashMap<FrontendKey, FrontendValue, { MAX_FRONTENDS as usize }> =
    HashMap::new();

#[btf_map]
pub static XLB_LOCAL_ADDRS: HashMap<u32, u32, { MAX_LOCAL_ADDRS as usize }> = HashMap::new();

#[btf_map]
pub static XLB_BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

#[btf_map]
pub static XLB_MAGLEV: ArrayOfMaps<MaglevTable, { MAX_SERVICES as usize }> = ArrayOfMaps::new();

#[btf_map]
pub static XLB_CONNTRACK: LruHashMap<FlowKey, CtValue, { DEFAULT_CONNTRACK_SIZE as usize }> =
    LruHashMap::new();

#[btf_map]
pub static XLB_REVNAT: LruHashMap<FlowKey, RevNatValue, { DEFAULT_CONNTRACK_SIZE as usize }> =
    LruHashMap::new();

#[btf_map]
pub static XLB_SRC_RANGES: LpmTrie<SrcRangeKey, u32, { MAX_SRC_RANGES as usize }> = LpmTrie::new();

#[btf_map]
pub static XLB_GLOBAL_STATS: PerCpuArray<u64, { REASON_COUNT as usize }> = PerCpuArray::new();

#[btf_map]
pub static XLB_FRONTEND_STATS: PerCpuArray<Counter, { MAX_FRONTENDS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static XLB_BACKEND_STATS: PerCpuArray<Counter, { MAX_BACKENDS as usize }> = PerCpuArray::new();

#[btf_map]
pub static XLB_CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static XLB_NODES: HashMap<u32, u32, { MAX_NODES as usize }> = HashMap::new();

#[btf_map]
pub static XLB_AFFINITY: LruHashMap<
    AffinityKey,
    AffinityValue,
    { DEFAULT_CONNTRACK_SIZE as usize },
> = LruHashMap::new();

#[btf_map]
pub static XLB_SVC_BACKENDS: HashMap<SvcBackendKey, u32, { (2 * MAX_BACKENDS) as usize }> =
    HashMap::new();

#[btf_map]
pub static XLB_LOCAL_BACKENDS: HashMap<LocalBackendKey, u32, { MAX_LOCAL_BACKENDS as usize }> =
    HashMap::new();

#[btf_map]
pub static XLB_IFACES: HashMap<u32, IfaceValue, { MAX_IFACES as usize }> = HashMap::new();

#[btf_map]
pub static XLB_POD_IFACES: HashMap<u32, PodIface, { MAX_POD_IFACES as usize }> = HashMap::new();
/// Per destination port (host order): the `PORT_F_*` bits of the frontends and the tunnel
/// using it. The first read of every packet: most of a node's own traffic is decided "not
/// ours" by it alone (an array read the verifier inlines: no hashing).
#[btf_map]
pub static XLB_PORTS: Array<u32, { PORTS_LEN as usize }> = Array::new();

#[btf_map]
pub static XLB_SYN_GUARD: PerCpuArray<SynGuardState, 1> = PerCpuArray::new();

/// Working memory for what would not fit the program's stack (see `Scratch`).
#[btf_map]
pub static XLB_SCRATCH: PerCpuArray<Scratch, 1> = PerCpuArray::new();

#[btf_map]
pub static XLB_NODE_HOPS: HashMap<u32, NodeHop, { MAX_NODES as usize }> = HashMap::new();

/// This CPU's `bpf_fib_lookup` parameters in `XLB_SCRATCH`, zeroed (a valid starting point for
/// a lookup). The pod's and the remote node's lookups share it: a packet takes one of them.
#[inline(always)]
pub fn fib_params() -> Option<&'static mut aya_ebpf::bindings::bpf_fib_lookup> {
    let s = XLB_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot only this program run uses; `fib` has the size (asserted below)
    // and at least the alignment of the kernel's struct.
    unsafe {
        // Word by word: zeroing the whole array compiles to a call of the byte-wise `memset`
        // subprogram (64 iterations); volatile keeps the stores from being merged back into
        // one.
        for i in 0..8 {
            core::ptr::write_volatile(&mut (*s).fib[i], 0);
        }
        Some(
            &mut *(*s)
                .fib
                .as_mut_ptr()
                .cast::<aya_ebpf::bindings::bpf_fib_lookup>(),
        )
    }
}

const _: () = assert!(
    core::mem::size_of::<aya_ebpf::bindings::bpf_fib_lookup>() == core::mem::size_of::<Scratch>()
);
