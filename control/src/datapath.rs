//! Typed handles on the datapath's maps, opened from a freshly loaded object or from pins.
use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{Array, ArrayOfMaps, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use lb_common::maps::*;

use crate::pins;

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
