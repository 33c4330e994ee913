//! Applies a [`DatapathPlan`] to the maps, writing only the difference.
//!
//! Order matters so that a packet never sees a mixed state: backends are written before any
//! table points at them, a Service's new Maglev table is a fresh inner map swapped in with one
//! update of `XLB_MAGLEV`, frontends are added after their table and removed before anything they
//! reference, and backends that left the plan stay readable while conntrack still points at
//! them (their open connections keep working; they get no new flows since no table has them).
//!
//! On start the reconciler adopts what the maps hold (ids, tables), so a restarted `xlb run`
//! rewrites nothing that did not change and keeps every established flow.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use anyhow::{Context as _, bail};
use aya::maps::MapError;
use lb_common::maps::*;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{Maps, src_range_key},
    plan::{BackendState, DatapathPlan, FrontendKind, ServicePortKey},
    table_map,
};

fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// What one `apply` changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub frontends_written: usize,
    pub frontends_removed: usize,
    pub tables_swapped: usize,
    pub backends_written: usize,
    pub backends_released: usize,
    pub backends_draining: usize,
    pub src_ranges_changed: usize,
    pub local_addrs_changed: usize,
}

impl ApplyReport {
    pub fn is_empty(&self) -> bool {
        *self == ApplyReport::default()
    }
}

/// Names and ids of what is programmed, written to the state file for the CLI.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Shared with the reconciler's per-port cache and the metrics' copy: a generation that
    /// touches one Service port copies pointers, not 10,000 Services' backends.
    pub services: Vec<Arc<ServiceSnapshot>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceSnapshot {
    pub name: String,
    pub protocol: String,
    pub service_id: u32,
    pub table_size: u32,
    pub frontends: Vec<FrontendSnapshot>,
    pub backends: Vec<BackendSnapshot>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FrontendSnapshot {
    /// `None`: NodePort on every local address.
    pub addr: Option<Ipv4Addr>,
    pub port: u16,
    pub kind: String,
    pub frontend_id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackendSnapshot {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub node: Option<String>,
    pub local: bool,
    pub weight: u32,
    pub state: String,
    pub backend_id: u32,
    pub slots: u32,
}

pub struct Reconciler {
    pub maps: Maps,
    frontends: HashMap<FrontendKey, FrontendValue>,
    /// (addr, port) in network order, protocol → id.
    backend_ids: HashMap<(u32, u16, u8), u32>,
    backends: HashMap<u32, Backend>,
    backend_alloc: Ids,
    /// Fingerprint of each Service port's table as the maps hold it: a full copy per Service
    /// doubled the process's memory at 10,000 Services (16381 slots each).
    tables: HashMap<u32, u64>,
    src_ranges: HashSet<(u32, u32, u8)>,
    local_addrs: HashSet<u32>,
    nodes: HashSet<u32>,
    /// (service id, backend id) pairs in `XLB_SVC_BACKENDS`.
    svc_backends: HashSet<(u32, u32)>,
    config: Config,
    snapshot: Snapshot,
    /// Each Service port's part of the snapshot, kept so that an apply rebuilds only the
    /// touched ones (counting slots is a pass over the table).
    snapshot_parts: HashMap<ServicePortKey, Arc<ServiceSnapshot>>,
}

impl Reconciler {
    /// Adopts the current content of the maps.
    pub fn adopt(maps: Maps) -> anyhow::Result<Self> {
        let mut frontends = HashMap::new();
        for kv in maps.frontends.iter() {
            let (k, v) = kv.context("reading XLB_FRONTENDS")?;
            frontends.insert(k, v);
        }
        let mut backend_ids = HashMap::new();
        let mut backends = HashMap::new();
        for id in 0..maps.backends.len() {
            let b = maps.backends.get(&id, 0).context("reading XLB_BACKENDS")?;
            if b.flags != 0 {
                backend_ids.insert((b.addr, b.port, b.proto), id);
                backends.insert(id, b);
            }
        }
        let mut tables = HashMap::new();
        for v in frontends.values() {
            if tables.contains_key(&v.service_id) {
                continue;
            }
            match maps.maglev.get(&v.service_id, 0) {
                Ok(inner) => {
                    let slots = table_map::read(&inner, v.table_size)?;
                    tables.insert(v.service_id, fingerprint(&slots));
                }
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("reading XLB_MAGLEV"),
            }
        }
        let mut src_ranges = HashSet::new();
        for k in maps.src_ranges.keys() {
            let k = k.context("reading XLB_SRC_RANGES")?;
            let data = k.data();
            src_ranges.insert((
                u32::from_be(data.service_id_be),
                data.addr,
                (k.prefix_len() - 32) as u8,
            ));
        }
        let mut nodes = HashSet::new();
        for k in maps.nodes.keys() {
            nodes.insert(k.context("reading XLB_NODES")?);
        }
        let config = maps.config.get(&0, 0).context("reading XLB_CONFIG")?;
        let mut svc_backends = HashSet::new();
        for k in maps.svc_backends.keys() {
            let k = k.context("reading XLB_SVC_BACKENDS")?;
            svc_backends.insert((k.service_id, k.backend_id));
        }
        let mut local_addrs = HashSet::new();
        for k in maps.local_addrs.keys() {
            local_addrs.insert(k.context("reading XLB_LOCAL_ADDRS")?);
        }
        Ok(Self {
            maps,
            frontends,
            backend_alloc: Ids::new(MAX_BACKENDS, backends.keys().copied()),
            backend_ids,
            backends,
            tables,
            src_ranges,
            local_addrs,
            nodes,
            svc_backends,
            config,
            snapshot: Snapshot::default(),
            snapshot_parts: HashMap::new(),
        })
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Makes the maps hold `plan`. On error, what was written so far is consistent (every step
    /// leaves a valid datapath) and the next `apply` completes it.
    pub fn apply(&mut self, plan: &DatapathPlan) -> anyhow::Result<ApplyReport> {
        self.apply_changed(plan, None)
    }

    /// [`Reconciler::apply`] for a plan of which only the Service ports in `touched` may have
    /// changed since the previous apply (`None`: any may have; what
    /// [`crate::compile::Compiler::last_touched`] reports). The Maglev tables (and the
    /// snapshot) of the others are not rebuilt and compared: that is a pass over M slots per
    /// Service port, which made every change cost O(Services × M). Everything else is still
    /// compared in full, so a wrong `touched` can only leave a stale table, never a dangling
    /// reference; a port's table is rebuilt anyway if its id has no table recorded.
    ///
    /// Sound because an untouched port keeps its Service id (its frontends carry it) and its
    /// backends keep their ids (an id is released only when no planned port uses it).
    pub fn apply_changed(
        &mut self,
        plan: &DatapathPlan,
        touched: Option<&BTreeSet<ServicePortKey>>,
    ) -> anyhow::Result<ApplyReport> {
        let unchanged = |key: &ServicePortKey| touched.is_some_and(|t| !t.contains(key));
        let mut report = ApplyReport::default();

        // 1. Local addresses (NodePort matching): add now, remove at the end.
        let want_local: HashSet<u32> = plan.local_addrs.iter().map(|a| be(*a)).collect();
        for a in want_local.difference(&self.local_addrs.clone()) {
            self.maps
                .local_addrs
                .insert(a, 1, 0)
                .context("writing XLB_LOCAL_ADDRS")?;
            self.local_addrs.insert(*a);
            report.local_addrs_changed += 1;
        }

        // 2. Backends: every backend of the plan gets a stable id and an up-to-date record.
        let mut wanted_backends = HashSet::new();
        for (svc_key, svc) in &plan.services {
            // An unchanged port's backends have the records and ids its snapshot part shows.
            if unchanged(svc_key)
                && let Some(part) = self.snapshot_parts.get(svc_key)
            {
                wanted_backends.extend(part.backends.iter().map(|b| b.backend_id));
                continue;
            }
            let proto = svc_key.protocol.number();
            for b in &svc.backends {
                let key = (be(b.addr), b.port.to_be(), proto);
                let rec = Backend {
                    addr: key.0,
                    port: key.1,
                    flags: if b.local {
                        BACKEND_F_LOCAL
                    } else {
                        BACKEND_F_REMOTE
                    },
                    proto,
                    node_addr: b.node_addr.map(be).unwrap_or(0),
                };
                let id = match self.backend_ids.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = self.free_backend_id()?;
                        self.backend_ids.insert(key, id);
                        zero_counter(&mut self.maps.backend_stats, id)?;
                        id
                    }
                };
                wanted_backends.insert(id);
                if self.backends.get(&id) != Some(&rec) {
                    self.maps
                        .backends
                        .set(id, rec, 0)
                        .context("writing XLB_BACKENDS")?;
                    self.backends.insert(id, rec);
                    report.backends_written += 1;
                }
            }
        }

        // 3. Service ids and tables. A Service port keeps the id its frontends already carry.
        let mut used_service_ids: HashSet<u32> = HashSet::new();
        let mut service_ids: BTreeMap<&crate::plan::ServicePortKey, u32> = BTreeMap::new();
        // Ids of the Service ports the maps hold now stay reserved while the new plan is
        // applied: their frontends are removed only at the end.
        let mut service_alloc =
            Ids::new(MAX_SERVICES, self.frontends.values().map(|v| v.service_id));
        for (key, svc) in &plan.services {
            let existing = svc.frontends.iter().find_map(|f| {
                self.frontends
                    .get(&frontend_key(f.addr, f.port, key.protocol.number()))
                    .map(|v| v.service_id)
                    .filter(|id| !used_service_ids.contains(id))
            });
            let id = match existing {
                Some(id) => id,
                None => service_alloc
                    .alloc()
                    .context("no free service id: XLB_MAGLEV is full")?,
            };
            used_service_ids.insert(id);
            service_ids.insert(key, id);
        }
        let mut swaps = Vec::new();
        for (key, svc) in &plan.services {
            let sid = service_ids[key];
            if unchanged(key) && self.tables.contains_key(&sid) {
                continue;
            }
            // Backend index → id once per backend, then a plain index per slot (a hash lookup
            // per slot made every apply cost service ports × M lookups).
            let ids: Vec<u32> = svc
                .backends
                .iter()
                .map(|b| self.backend_ids[&(be(b.addr), b.port.to_be(), key.protocol.number())])
                .collect();
            let slots: Vec<u32> = svc
                .table
                .iter()
                .map(|&i| {
                    if i == NO_BACKEND {
                        NO_BACKEND
                    } else {
                        ids[i as usize]
                    }
                })
                .collect();
            let print = fingerprint(&slots);
            if self.tables.get(&sid) != Some(&print) {
                swaps.push((sid, table_map::create(&slots)?, print));
            }
        }
        let (ids, tables): (Vec<(u32, _)>, Vec<u64>) = swaps
            .into_iter()
            .map(|(sid, t, print)| ((sid, t), print))
            .unzip();
        table_map::swap_all(&self.maps.maglev_fd, &ids)?;
        for ((sid, _), print) in ids.into_iter().zip(tables) {
            self.tables.insert(sid, print);
            report.tables_swapped += 1;
        }

        // Which backends may take new flows of each Service port (weight > 0): session
        // affinity only returns a client to one of these.
        let mut want_members = HashSet::new();
        for (key, svc) in &plan.services {
            let sid = service_ids[key];
            if unchanged(key)
                && let Some(part) = self.snapshot_parts.get(key)
                && part.service_id == sid
            {
                let live = part.backends.iter().filter(|b| b.weight > 0);
                want_members.extend(live.map(|b| (sid, b.backend_id)));
                continue;
            }
            for b in svc.backends.iter().filter(|b| b.weight > 0) {
                let id = self.backend_ids[&(be(b.addr), b.port.to_be(), key.protocol.number())];
                want_members.insert((sid, id));
            }
        }
        let gone: Vec<(u32, u32)> = self
            .svc_backends
            .difference(&want_members)
            .copied()
            .collect();
        for m in &gone {
            let k = SvcBackendKey {
                service_id: m.0,
                backend_id: m.1,
            };
            remove_ok(self.maps.svc_backends.remove(&k))
                .context("removing from XLB_SVC_BACKENDS")?;
            self.svc_backends.remove(m);
        }
        let new: Vec<(u32, u32)> = want_members
            .difference(&self.svc_backends)
            .copied()
            .collect();
        for m in &new {
            let k = SvcBackendKey {
                service_id: m.0,
                backend_id: m.1,
            };
            self.maps
                .svc_backends
                .insert(k, 1, 0)
                .context("writing XLB_SVC_BACKENDS")?;
            self.svc_backends.insert(*m);
        }

        // 4. Source ranges: add now, remove after the frontends.
        let mut want_ranges = HashSet::new();
        for (key, svc) in &plan.services {
            let sid = service_ids[key];
            for (addr, len) in &svc.source_ranges {
                want_ranges.insert((sid, be(*addr), *len));
            }
        }
        for r in want_ranges.difference(&self.src_ranges.clone()) {
            let k = src_range_key(r.0, Ipv4Addr::from(u32::from_be(r.1)), r.2);
            self.maps
                .src_ranges
                .insert(&k, 1, 0)
                .context("writing XLB_SRC_RANGES")?;
            self.src_ranges.insert(*r);
            report.src_ranges_changed += 1;
        }

        // 5. Frontends.
        let mut want_frontends: HashMap<FrontendKey, (u32, u32, u32, u32)> = HashMap::new();
        for (key, svc) in &plan.services {
            let sid = service_ids[key];
            for f in &svc.frontends {
                let fk = frontend_key(f.addr, f.port, key.protocol.number());
                let flags = if f.source_ranges_apply && !svc.source_ranges.is_empty() {
                    FRONTEND_F_SOURCE_RANGES
                } else {
                    0
                };
                let affinity = svc.affinity_timeout.unwrap_or(0);
                want_frontends.insert(fk, (sid, flags, svc.table_size, affinity));
            }
        }
        let mut frontend_alloc = Ids::new(
            MAX_FRONTENDS,
            self.frontends
                .iter()
                .filter(|(k, _)| want_frontends.contains_key(k))
                .map(|(_, v)| v.frontend_id),
        );
        let mut keys: Vec<_> = want_frontends.keys().copied().collect();
        keys.sort();
        for fk in keys {
            let (sid, flags, table_size, affinity_timeout_s) = want_frontends[&fk];
            let frontend_id = match self.frontends.get(&fk) {
                Some(v) => v.frontend_id,
                None => {
                    let id = frontend_alloc
                        .alloc()
                        .context("no free frontend id: XLB_FRONTENDS is full")?;
                    zero_counter(&mut self.maps.frontend_stats, id)?;
                    id
                }
            };
            let v = FrontendValue {
                service_id: sid,
                frontend_id,
                flags,
                table_size,
                affinity_timeout_s,
            };
            if self.frontends.get(&fk) != Some(&v) {
                self.maps
                    .frontends
                    .insert(fk, v, 0)
                    .context("writing XLB_FRONTENDS")?;
                self.frontends.insert(fk, v);
                report.frontends_written += 1;
            }
        }
        let stale: Vec<FrontendKey> = self
            .frontends
            .keys()
            .filter(|k| !want_frontends.contains_key(k))
            .copied()
            .collect();
        for fk in stale {
            remove_ok(self.maps.frontends.remove(&fk)).context("removing from XLB_FRONTENDS")?;
            self.frontends.remove(&fk);
            report.frontends_removed += 1;
        }

        // 6. Stale source ranges, local addresses and tables of Services that are gone.
        for r in self.src_ranges.clone().difference(&want_ranges) {
            let k = src_range_key(r.0, Ipv4Addr::from(u32::from_be(r.1)), r.2);
            remove_ok(self.maps.src_ranges.remove(&k)).context("removing from XLB_SRC_RANGES")?;
            self.src_ranges.remove(r);
            report.src_ranges_changed += 1;
        }
        for a in self.local_addrs.clone().difference(&want_local) {
            remove_ok(self.maps.local_addrs.remove(a)).context("removing from XLB_LOCAL_ADDRS")?;
            self.local_addrs.remove(a);
            report.local_addrs_changed += 1;
        }
        self.tables.retain(|sid, _| used_service_ids.contains(sid));

        // 7. Backends that left the plan: kept while conntrack uses them, released after.
        let (released, draining) = self.release_backends(&wanted_backends)?;
        report.backends_released = released;
        report.backends_draining = draining;

        self.snapshot = self.build_snapshot(plan, &service_ids, &unchanged);
        Ok(report)
    }

    /// Makes `XLB_CONFIG` and `XLB_NODES` hold `plan`: known nodes are added before the own
    /// address changes and removed after. Returns how many entries changed.
    pub fn apply_tunnel(&mut self, plan: &crate::tunnel::TunnelPlan) -> anyhow::Result<usize> {
        let mut changed = 0;
        let want: HashSet<u32> = plan.nodes.iter().map(|a| be(*a)).collect();
        for a in want.difference(&self.nodes.clone()) {
            self.maps
                .nodes
                .insert(a, 1, 0)
                .context("writing XLB_NODES")?;
            self.nodes.insert(*a);
            changed += 1;
        }
        let config = Config {
            node_addr: plan.node_addr.map(be).unwrap_or(0),
            tunnel_port: plan.port.to_be(),
            _pad: 0,
        };
        if config != self.config {
            self.maps
                .config
                .set(0, config, 0)
                .context("writing XLB_CONFIG")?;
            self.config = config;
            changed += 1;
        }
        for a in self.nodes.clone().difference(&want) {
            remove_ok(self.maps.nodes.remove(a)).context("removing from XLB_NODES")?;
            self.nodes.remove(a);
            changed += 1;
        }
        Ok(changed)
    }

    /// Releases backend ids that are neither planned nor referenced by a conntrack entry.
    /// Returns (released, still draining).
    pub fn release_backends(&mut self, wanted: &HashSet<u32>) -> anyhow::Result<(usize, usize)> {
        let candidates: Vec<u32> = self
            .backends
            .keys()
            .filter(|id| !wanted.contains(id))
            .copied()
            .collect();
        if candidates.is_empty() {
            return Ok((0, 0));
        }
        let mut referenced = HashSet::new();
        for kv in self.maps.conntrack.iter() {
            match kv {
                Ok((_, ct)) => {
                    referenced.insert(ct.backend_id);
                }
                // LRU entries can vanish between get_next_key and lookup.
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("reading XLB_CONNTRACK"),
            }
        }
        let (mut released, mut draining) = (0, 0);
        for id in candidates {
            if referenced.contains(&id) {
                draining += 1;
                continue;
            }
            self.maps
                .backends
                .set(id, Backend::default(), 0)
                .context("clearing XLB_BACKENDS")?;
            self.backend_alloc.release(id);
            if let Some(b) = self.backends.remove(&id) {
                self.backend_ids.remove(&(b.addr, b.port, b.proto));
            }
            released += 1;
        }
        Ok((released, draining))
    }

    /// The ids of backends currently planned (for periodic draining sweeps).
    pub fn planned_backends(&self) -> HashSet<u32> {
        self.snapshot
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.backend_id))
            .collect()
    }

    fn free_backend_id(&mut self) -> anyhow::Result<u32> {
        self.backend_alloc
            .alloc()
            .context("no free backend id: XLB_BACKENDS is full")
    }

    /// The snapshot of `plan`, reusing the parts of the ports `unchanged` says are unchanged.
    fn build_snapshot(
        &mut self,
        plan: &DatapathPlan,
        ids: &BTreeMap<&ServicePortKey, u32>,
        unchanged: &dyn Fn(&ServicePortKey) -> bool,
    ) -> Snapshot {
        self.snapshot_parts
            .retain(|k, _| plan.services.contains_key(k));
        let mut services = Vec::with_capacity(plan.services.len());
        for (key, svc) in &plan.services {
            match self.snapshot_parts.get(key) {
                Some(part) if unchanged(key) && part.service_id == ids[key] => {
                    services.push(Arc::clone(part));
                }
                _ => {
                    let part = Arc::new(self.service_snapshot(key, svc, ids[key]));
                    self.snapshot_parts.insert(key.clone(), Arc::clone(&part));
                    services.push(part);
                }
            }
        }
        Snapshot { services }
    }

    fn service_snapshot(
        &self,
        key: &ServicePortKey,
        svc: &crate::plan::ServicePlan,
        service_id: u32,
    ) -> ServiceSnapshot {
        let proto = key.protocol.number();
        let mut slots = vec![0u32; svc.backends.len()];
        for &i in &svc.table {
            if i != NO_BACKEND {
                slots[i as usize] += 1;
            }
        }
        ServiceSnapshot {
            name: key.to_string(),
            protocol: key.protocol.as_str().to_string(),
            service_id,
            table_size: svc.table_size,
            frontends: svc
                .frontends
                .iter()
                .map(|f| FrontendSnapshot {
                    addr: f.addr,
                    port: f.port,
                    kind: match f.kind {
                        FrontendKind::LoadBalancer => "LoadBalancer",
                        FrontendKind::NodePort => "NodePort",
                        FrontendKind::ExternalIp => "ExternalIP",
                    }
                    .to_string(),
                    frontend_id: self.frontends[&frontend_key(f.addr, f.port, proto)].frontend_id,
                })
                .collect(),
            backends: svc
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| BackendSnapshot {
                    addr: b.addr,
                    port: b.port,
                    node: b.node_name.clone(),
                    local: b.local,
                    weight: b.weight,
                    state: match (b.state, b.weight) {
                        (BackendState::Ready, 0) => "draining",
                        (BackendState::Ready, _) => "ready",
                        (BackendState::Terminating, _) => "terminating",
                    }
                    .to_string(),
                    backend_id: self.backend_ids[&(be(b.addr), b.port.to_be(), proto)],
                    slots: slots[i],
                })
                .collect(),
        }
    }
}

/// A 64-bit fingerprint of a table's slots, to notice a changed table without keeping a copy.
/// A multiply-rotate mix over 64-bit words: about ten times faster than SipHash, which
/// dominated every apply at 1,000 Services; tables are not attacker-chosen, so a fast
/// non-cryptographic mix is enough. Deterministic across runs (restart adoption compares it).
fn fingerprint(slots: &[u32]) -> u64 {
    let mut h: u64 = slots.len() as u64;
    let mut words = slots.chunks_exact(2);
    for w in &mut words {
        let v = (w[0] as u64) << 32 | w[1] as u64;
        h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
    if let [last] = words.remainder() {
        h = (h ^ *last as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
    lb_common::hash::fmix64(h)
}

/// Hands out unused ids below `max`, scanning on from the last one handed out: linear in the
/// number of ids allocated, where searching from 0 each time made programming 10,000 Services
/// quadratic.
struct Ids {
    used: HashSet<u32>,
    next: u32,
    max: u32,
}

impl Ids {
    fn new(max: u32, used: impl IntoIterator<Item = u32>) -> Self {
        Ids {
            used: used.into_iter().collect(),
            next: 0,
            max,
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        if self.used.len() as u64 >= self.max as u64 {
            return None;
        }
        loop {
            let id = self.next;
            self.next = (self.next + 1) % self.max;
            if self.used.insert(id) {
                return Some(id);
            }
        }
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

pub fn frontend_key(addr: Option<Ipv4Addr>, port: u16, proto: u8) -> FrontendKey {
    FrontendKey {
        addr: addr.map(be).unwrap_or(0),
        port: port.to_be(),
        proto,
        _pad: 0,
    }
}

fn zero_counter(
    map: &mut aya::maps::PerCpuArray<aya::maps::MapData, Counter>,
    id: u32,
) -> anyhow::Result<()> {
    let ncpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting CPUs")?;
    let zeros = aya::maps::PerCpuValues::try_from(vec![Counter::default(); ncpus])?;
    map.set(id, zeros, 0).context("resetting a counter")?;
    Ok(())
}

/// Removing something already gone is not an error.
fn remove_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Refuses plans the maps cannot hold, before anything is written.
pub fn check_capacity(plan: &DatapathPlan) -> anyhow::Result<()> {
    let services = plan.services.len() as u64;
    let frontends: u64 = plan
        .services
        .values()
        .map(|s| s.frontends.len() as u64)
        .sum();
    if services > MAX_SERVICES as u64 {
        bail!("{services} service ports exceed the datapath's capacity of {MAX_SERVICES}");
    }
    if frontends > MAX_FRONTENDS as u64 {
        bail!("{frontends} frontends exceed the datapath's capacity of {MAX_FRONTENDS}");
    }
    if plan.local_addrs.len() as u64 > MAX_LOCAL_ADDRS as u64 {
        bail!(
            "{} local addresses exceed the capacity of {MAX_LOCAL_ADDRS}",
            plan.local_addrs.len()
        );
    }
    Ok(())
}
