//! Typed handles on the datapath's maps, opened from a freshly loaded object or from pins.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, ArrayOfMaps, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use lb_common::maps::*;

use crate::datapath::pins;

pub type MaglevInner = Array<MapData, MaglevPair>;

/// Every map of the datapath.
pub struct Maps {
    pub frontends: HashMap<MapData, FrontendKey, FrontendValue>,
    pub local_addrs: HashMap<MapData, u32, u32>,
    pub backends: Array<MapData, Backend>,
    pub maglev: ArrayOfMaps<MapData, MaglevInner>,
    pub conntrack: HashMap<MapData, FlowKey, CtValue>,
    pub revnat: HashMap<MapData, FlowKey, RevNatValue>,
    pub src_ranges: LpmTrie<MapData, SrcRangeKey, u32>,
    pub global_stats: PerCpuArray<MapData, u64>,
    pub frontend_stats: PerCpuArray<MapData, Counter>,
    pub backend_stats: PerCpuArray<MapData, Counter>,
    pub config: Array<MapData, Config>,
    pub nodes: HashMap<MapData, u32, u32>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub svc_backends: HashMap<MapData, SvcBackendKey, u32>,
    pub local_backends: HashMap<MapData, LocalBackendKey, u32>,
    /// How frames leave each interface (written at attach, see `datapath::egress`).
    pub ifaces: HashMap<MapData, u32, IfaceValue>,
    /// The pods' host-side interfaces and how to deliver into them (see `datapath::pods`).
    pub pod_ifaces: HashMap<MapData, u32, PodIface>,
    /// `PORT_F_*` bits per destination port (see `Reconciler`'s port step).
    pub ports: Array<MapData, u32>,
    /// The SYN-flood guard's per-CPU window.
    pub syn_guard: PerCpuArray<MapData, SynGuardState>,
    /// Prepared outer headers per remote node (see `datapath::hops`).
    pub node_hops: HashMap<MapData, u32, NodeHop>,
    /// A second fd of `XLB_MAGLEV`, for batch updates (aya 0.14 exposes none for map-of-maps).
    pub maglev_fd: std::os::fd::OwnedFd,
}

fn typed<T: TryFrom<Map>>(map: Map, name: &str) -> anyhow::Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

impl Maps {
    /// Takes the maps out of a loaded object (the programs keep their own references).
    pub fn from_ebpf(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        Self::build(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("object has no map {name}"))
        })
    }

    /// Opens the maps pinned under `pin_dir` (what the CLI's inspection commands use).
    pub fn from_pins(pin_dir: &Path) -> anyhow::Result<Self> {
        Self::build(|name| {
            let path = pins::map_pin(pin_dir, name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("map {name}"))
        })
    }

    fn build(mut get: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        let mut maglev_fd = None;
        Ok(Self {
            frontends: typed(get(MAP_FRONTENDS)?, MAP_FRONTENDS)?,
            local_addrs: typed(get(MAP_LOCAL_ADDRS)?, MAP_LOCAL_ADDRS)?,
            backends: typed(get(MAP_BACKENDS)?, MAP_BACKENDS)?,
            maglev: {
                let m = get(MAP_MAGLEV)?;
                if let Map::ArrayOfMaps(d) = &m {
                    use std::os::fd::AsFd;
                    maglev_fd = Some(d.fd().as_fd().try_clone_to_owned()?);
                }
                typed(m, MAP_MAGLEV)?
            },
            conntrack: typed(get(MAP_CONNTRACK)?, MAP_CONNTRACK)?,
            revnat: typed(get(MAP_REVNAT)?, MAP_REVNAT)?,
            src_ranges: typed(get(MAP_SRC_RANGES)?, MAP_SRC_RANGES)?,
            global_stats: typed(get(MAP_GLOBAL_STATS)?, MAP_GLOBAL_STATS)?,
            frontend_stats: typed(get(MAP_FRONTEND_STATS)?, MAP_FRONTEND_STATS)?,
            backend_stats: typed(get(MAP_BACKEND_STATS)?, MAP_BACKEND_STATS)?,
            config: typed(get(MAP_CONFIG)?, MAP_CONFIG)?,
            nodes: typed(get(MAP_NODES)?, MAP_NODES)?,
            affinity: typed(get(MAP_AFFINITY)?, MAP_AFFINITY)?,
            svc_backends: typed(get(MAP_SVC_BACKENDS)?, MAP_SVC_BACKENDS)?,
            local_backends: typed(get(MAP_LOCAL_BACKENDS)?, MAP_LOCAL_BACKENDS)?,
            ifaces: typed(get(MAP_IFACES)?, MAP_IFACES)?,
            pod_ifaces: typed(get(MAP_POD_IFACES)?, MAP_POD_IFACES)?,
            ports: typed(get(MAP_PORTS)?, MAP_PORTS)?,
            syn_guard: typed(get(MAP_SYN_GUARD)?, MAP_SYN_GUARD)?,
            node_hops: typed(get(MAP_NODE_HOPS)?, MAP_NODE_HOPS)?,
            maglev_fd: maglev_fd.ok_or_else(|| anyhow!("{MAP_MAGLEV} is not an array of maps"))?,
        })
    }

    /// Sums a per-CPU global counter.
    pub fn global(&self, reason: Reason) -> anyhow::Result<u64> {
        let v = self.global_stats.get(&(reason as u32), 0)?;
        Ok(v.iter().sum())
    }

    pub fn frontend_counter(&self, id: u32) -> anyhow::Result<Counter> {
        sum_counters(&self.frontend_stats, id)
    }

    pub fn backend_counter(&self, id: u32) -> anyhow::Result<Counter> {
        sum_counters(&self.backend_stats, id)
    }
}

impl Maps {
    /// The counters of frontend ids `0..n`, summed over CPUs: batched reads (one syscall per
    /// 4096 ids), so a scrape of 10,000 Services does not make 10,000 syscalls.
    pub fn frontend_counters(&self, n: u32) -> anyhow::Result<Vec<Counter>> {
        all_counters(&self.frontend_stats, n)
    }

    /// The counters of backend ids `0..n`, as [`Maps::frontend_counters`].
    pub fn backend_counters(&self, n: u32) -> anyhow::Result<Vec<Counter>> {
        all_counters(&self.backend_stats, n)
    }
}

fn all_counters(map: &PerCpuArray<MapData, Counter>, n: u32) -> anyhow::Result<Vec<Counter>> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting CPUs")?;
    let fd = std::os::fd::AsFd::as_fd(aya::maps::IterableMap::map(map).fd());
    let size = size_of::<Counter>();
    let stride = size.div_ceil(8) * 8;
    let mut out = vec![Counter::default(); n as usize];
    crate::sys::bpf::percpu_array_lookup_batch(fd, size, cpus, n, 4096, |i, per_cpu| {
        let mut sum = Counter::default();
        for c in per_cpu.chunks_exact(stride) {
            // SAFETY: `c` holds at least one Counter, plain old data, read unaligned.
            let v: Counter = unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<Counter>()) };
            sum.packets += v.packets;
            sum.bytes += v.bytes;
            sum.new_flows += v.new_flows;
        }
        if let Some(slot) = out.get_mut(i as usize) {
            *slot = sum;
        }
    })?;
    Ok(out)
}

/// The SYN-flood guard as the CPUs see it at `now_ns` (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynGuardReading {
    /// CPUs on which the guard is engaged in the current window.
    pub engaged_cpus: u32,
    /// Windows (per CPU) in which it engaged, since the maps were created.
    pub trips: u64,
}

impl Maps {
    pub fn syn_guard(&self, now_ns: u64) -> anyhow::Result<SynGuardReading> {
        let v = self.syn_guard.get(&0, 0)?;
        Ok(v.iter().fold(SynGuardReading::default(), |a, g| {
            let current = now_ns.saturating_sub(g.window_ns) < SYN_GUARD_WINDOW_NS;
            SynGuardReading {
                engaged_cpus: a.engaged_cpus + (current && g.engaged != 0) as u32,
                trips: a.trips + g.trips,
            }
        }))
    }

    /// The SYN guard's configured rate (0 = off).
    pub fn syn_guard_rate(&self) -> anyhow::Result<u32> {
        Ok(self.config.get(&0, 0)?.syn_guard_rate)
    }
}

fn sum_counters(map: &PerCpuArray<MapData, Counter>, id: u32) -> anyhow::Result<Counter> {
    let v = map.get(&id, 0)?;
    Ok(v.iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
        new_flows: a.new_flows + c.new_flows,
    }))
}

/// LPM key for a Service's source range.
pub fn src_range_key(service_id: u32, addr: std::net::Ipv4Addr, len: u8) -> Key<SrcRangeKey> {
    Key::new(
        32 + len as u32,
        SrcRangeKey {
            service_id_be: service_id.to_be(),
            addr: u32::from_ne_bytes(addr.octets()),
        },
    )
}
