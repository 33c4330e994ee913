//! The maps, declared with the layouts from `lb_common::maps` (names must match its `MAP_*`).
use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::maps::{
    AffinityKey, AffinityValue, Backend, Config, Counter, CtValue, DEFAULT_CONNTRACK_SIZE, FlowKey,
    FrontendKey, FrontendValue, MAGLEV_DEFAULT_TABLE_SIZE, MAGLEV_INNER_FLAGS, MAX_BACKENDS,
    MAX_FRONTENDS, MAX_LOCAL_ADDRS, MAX_NODES, MAX_SERVICES, MAX_SRC_RANGES, MaglevPair,
    REASON_COUNT, RevNatValue, SrcRangeKey, SvcBackendKey, maglev_elems,
};

/// Template of a Service's Maglev table. `BPF_F_INNER_MAP` lets user space swap in tables of
/// any size M; the program bounds the slot by the frontend's `table_size`.
pub type MaglevTable = Array<
    MaglevPair,
    { maglev_elems(MAGLEV_DEFAULT_TABLE_SIZE) as usize },
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
