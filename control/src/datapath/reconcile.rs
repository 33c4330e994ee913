//! Applies a [`DatapathPlan`] to the maps, writing only the difference.
//!
//! Order matters so that a packet never sees a dangling reference: backends are written before
//! any table points at them; a Service's changed Maglev table is rewritten in place when its
//! size and layout stay (only the changed words, ordered so that every slot resolves to a
//! programmed backend: [`maglev_map::patch_writes`]), and is otherwise a fresh inner map swapped
//! in with one update of `XLB_MAGLEV` (which costs an RCU grace period); frontends are added
//! after their table and removed before anything they
//! reference, and backends that left the plan stay readable while conntrack still points at
//! them (their open connections keep working; they get no new flows since no table has them).
//!
//! On start the reconciler adopts what the maps hold (ids, tables), so a restarted `xlb run`
//! rewrites nothing that did not change and keeps every established flow.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    os::fd::{AsFd as _, BorrowedFd},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use aya::maps::{ArrayOfMaps, IterableMap, MapData, MapError};
use lb_common::maps::*;
use serde::{Deserialize, Serialize};

use crate::{
    compile::plan::{BackendState, DatapathPlan, FrontendKind, ServicePlan, ServicePortKey},
    datapath::capacity::Capacity,
    datapath::conntrack,
    datapath::maglev_map,
    datapath::maps::{MaglevInner, Maps, src_range_key},
    sys::bpf,
    sys::clock::monotonic_ns,
};

fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// What one `apply` changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub frontends_written: usize,
    pub frontends_removed: usize,
    /// Tables replaced by a new inner map (a new size or layout, or a new Service port).
    pub tables_swapped: usize,
    /// Tables rewritten in place, only their changed words (same size and layout).
    pub tables_patched: usize,
    pub backends_written: usize,
    pub backends_released: usize,
    pub backends_draining: usize,
    pub src_ranges_changed: usize,
    pub local_addrs_changed: usize,
    pub local_backends_changed: usize,
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

/// One Service port's share of the maps, as the last apply wrote it: what an apply that
/// touches this port diffs against, so that a change costs its own ports, never a pass over
/// every port of the plan.
#[derive(Debug, Clone, Default)]
struct PortState {
    service_id: u32,
    frontends: Vec<FrontendKey>,
    /// Backend ids in plan order (weight 0 included).
    backends: Vec<u32>,
    /// Backend ids that take new flows (`XLB_SVC_BACKENDS`).
    members: Vec<u32>,
    /// (network address, prefix length) of its source ranges (`XLB_SRC_RANGES`, by service id).
    src_ranges: Vec<(u32, u8)>,
    /// (frontend, local backend) pairs (`XLB_LOCAL_BACKENDS`).
    pairs: Vec<LocalBackendKey>,
}

pub struct Reconciler {
    pub maps: Maps,
    frontends: HashMap<FrontendKey, FrontendValue>,
    /// (addr, port) in network order, protocol → id.
    backend_ids: HashMap<(u32, u16, u8), u32>,
    backends: HashMap<u32, Backend>,
    backend_alloc: Ids,
    /// Service ids in use (by a planned port, or by a frontend the maps still hold).
    service_alloc: Ids,
    /// Frontend ids in use.
    frontend_alloc: Ids,
    /// Fingerprint and length of each Service port's table as the maps hold it (its encoded
    /// words: header, backend ids, slots). Not a copy: M slots per Service port would be most of
    /// the process's memory.
    tables: HashMap<u32, TableMark>,
    /// Whether a changed table of unchanged size and layout is rewritten in place (else every
    /// change swaps in a new inner map).
    patch_tables: bool,
    src_ranges: HashSet<(u32, u32, u8)>,
    local_addrs: HashSet<u32>,
    nodes: HashSet<u32>,
    /// `XLB_NODE_HOPS` as written (node address → prepared hop).
    hops: HashMap<u32, NodeHop>,
    /// (service id, backend id) pairs in `XLB_SVC_BACKENDS`.
    svc_backends: HashSet<(u32, u32)>,
    /// (frontend, local backend) pairs in `XLB_LOCAL_BACKENDS`.
    local_backends: HashSet<LocalBackendKey>,
    /// Pairs in the map that the last applied plan no longer has: kept while a live flow uses
    /// them.
    unwanted_pairs: HashSet<LocalBackendKey>,
    /// Every planned port's share of the maps.
    ports: HashMap<ServicePortKey, PortState>,
    /// Which planned port holds each service id.
    sid_owner: HashMap<u32, ServicePortKey>,
    /// How many planned ports list each backend id; an id not in here is draining (kept while
    /// conntrack uses it, released by [`Reconciler::release_unreferenced`]).
    backend_users: HashMap<u32, u32>,
    /// When (monotonic ns) each draining backend left the plan: only a connection census that
    /// began after that may release it ([`Reconciler::release_unreferenced`]).
    unplanned_ns: HashMap<u32, u64>,
    /// The next apply compares everything: after adoption, and after an apply that failed
    /// half-way (the per-port record may then be ahead of or behind the maps).
    needs_full: bool,
    config: Config,
    /// What the maps hold; a plan that does not fit is refused before anything is written.
    capacity: Capacity,
    /// Non-zero `XLB_PORTS` entries as written (port in host order).
    port_bits: HashMap<u16, u32>,
    /// Per port (host order), how many programmed frontends set each frontend bit of
    /// `XLB_PORTS` (bit `i` of [`port_flags`] counted in `[i]`): a change recomputes the bits
    /// of its own ports only.
    port_users: HashMap<u16, [u32; PORT_USER_BITS]>,
    /// Ports that lost a frontend since their `XLB_PORTS` entry was last written.
    ports_dirty: BTreeSet<u16>,
    snapshot: Snapshot,
    /// Each Service port's part of the snapshot, kept so that an apply rebuilds only the
    /// touched ones (counting slots is a pass over the table).
    snapshot_parts: BTreeMap<ServicePortKey, Arc<ServiceSnapshot>>,
}

/// How long before a census's walk a backend must have left the plan for the census to release
/// it: a packet that read the Maglev table before the swap is long done by then.
pub const DRAIN_GRACE_NS: u64 = 200_000_000;

/// What one refresh of the prepared next hops did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HopReport {
    /// Remote nodes with a prepared hop now.
    pub prepared: usize,
    /// Remote nodes without one (no route, no valid neighbour yet).
    pub unresolved: usize,
    /// Entries written (new or changed) and removed.
    pub written: usize,
    pub removed: usize,
}

impl Reconciler {
    /// Adopts the current content of the maps.
    /// Every map is read with batched lookups: one `BPF_MAP_LOOKUP_BATCH` per few thousand
    /// entries, where a walk costs two syscalls per entry (and the backend array one per slot,
    /// used or not: a million at `--max-backends 1000000`).
    pub fn adopt(maps: Maps) -> anyhow::Result<Self> {
        let capacity = Capacity::of(&maps)?;
        let mut frontends = HashMap::new();
        bpf::lookup_all(fd(&maps.frontends), READ_CHUNK, |k, v: FrontendValue| {
            frontends.insert(k, v);
        })
        .context("reading XLB_FRONTENDS")?;
        let mut backend_ids = HashMap::new();
        let mut backends = HashMap::new();
        bpf::lookup_all(fd(&maps.backends), READ_CHUNK, |id: u32, b: Backend| {
            if b.flags != 0 {
                backend_ids.insert((b.addr, b.port, b.proto), id);
                backends.insert(id, b);
            }
        })
        .context("reading XLB_BACKENDS")?;
        let mut tables = HashMap::new();
        for v in frontends.values() {
            if tables.contains_key(&v.service_id) {
                continue;
            }
            match maps.maglev.get(&v.service_id, 0) {
                Ok(inner) => {
                    let words = maglev_map::read(&inner)?;
                    tables.insert(v.service_id, TableMark::of(&words));
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
        let mut hops = HashMap::new();
        for kv in maps.node_hops.iter() {
            let (k, v) = kv.context("reading XLB_NODE_HOPS")?;
            hops.insert(k, v);
        }
        let mut svc_backends = HashSet::new();
        bpf::lookup_all(
            fd(&maps.svc_backends),
            READ_CHUNK,
            |k: SvcBackendKey, _: u32| {
                svc_backends.insert((k.service_id, k.backend_id));
            },
        )
        .context("reading XLB_SVC_BACKENDS")?;
        let mut local_addrs = HashSet::new();
        for k in maps.local_addrs.keys() {
            local_addrs.insert(k.context("reading XLB_LOCAL_ADDRS")?);
        }
        let mut local_backends = HashSet::new();
        bpf::lookup_all(
            fd(&maps.local_backends),
            READ_CHUNK,
            |k: LocalBackendKey, _: u32| {
                local_backends.insert(k);
            },
        )
        .context("reading XLB_LOCAL_BACKENDS")?;
        let mut port_users = HashMap::new();
        for k in frontends.keys() {
            count_port_user(&mut port_users, k, true);
        }
        Ok(Self {
            maps,
            backend_alloc: Ids::new(capacity.backends, backends.keys().copied()),
            service_alloc: Ids::new(capacity.services, frontends.values().map(|v| v.service_id)),
            frontend_alloc: Ids::new(
                capacity.frontends,
                frontends.values().map(|v| v.frontend_id),
            ),
            frontends,
            backend_ids,
            backends,
            tables,
            patch_tables: true,
            src_ranges,
            local_addrs,
            nodes,
            hops,
            svc_backends,
            unwanted_pairs: HashSet::new(),
            local_backends,
            ports: HashMap::new(),
            sid_owner: HashMap::new(),
            backend_users: HashMap::new(),
            unplanned_ns: HashMap::new(),
            needs_full: true,
            config,
            capacity,
            port_bits: HashMap::new(),
            port_users,
            ports_dirty: BTreeSet::new(),
            snapshot: Snapshot::default(),
            snapshot_parts: BTreeMap::new(),
        })
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// With `false`, every changed table is swapped in as a new inner map, as before tables
    /// were rewritten in place: for tests and benchmarks that compare the two.
    pub fn set_patch_tables(&mut self, on: bool) {
        self.patch_tables = on;
    }

    /// The capacities of the maps being written.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Makes the maps hold `plan`. On error, what was written so far is consistent (every step
    /// leaves a valid datapath) and the next `apply` completes it.
    pub fn apply(&mut self, plan: &DatapathPlan) -> anyhow::Result<ApplyReport> {
        self.apply_changed(plan, None)
    }

    /// [`Reconciler::apply`] for a plan of which only the Service ports in `touched` may have
    /// changed, appeared or gone since the previous apply (`None`: any may have; what
    /// [`crate::compile::Compiler::last_touched`] reports). Only those ports are compared and
    /// written: each port's share of every map (frontends, backends, table, members, source
    /// ranges, tunnel pairs) is recorded, so a change costs its own ports, never a pass over
    /// every port of the plan. The plan-wide parts (local addresses) are small and compared in
    /// full.
    ///
    /// A full apply runs the same per-port steps over every port (planned, or recorded from
    /// before) and then removes whatever the maps hold that no port accounts for (what an
    /// adopted datapath held), so both reach the same maps, ids included
    /// (`tests/compile_incremental.rs` checks this on random change sequences). After an error
    /// the next apply is a full one.
    ///
    /// Backends that leave the plan are not released here (that needs a walk over conntrack):
    /// they drain, and [`Reconciler::release_unreferenced`] (the run loop, after each
    /// connection census) releases them once no flow uses them.
    ///
    /// Nothing is written unless all of the plan fits ([`Reconciler::check_capacity`] runs
    /// first): a refused plan leaves the last good state whole, and the per-port record with
    /// it, so the next apply may still be a partial one.
    pub fn apply_changed(
        &mut self,
        plan: &DatapathPlan,
        touched: Option<&BTreeSet<ServicePortKey>>,
    ) -> anyhow::Result<ApplyReport> {
        let full = touched.is_none() || self.needs_full;
        self.check_capacity(plan, touched)?;
        // Cleared once this apply completes.
        self.needs_full = true;
        let keys: Vec<ServicePortKey> = match touched {
            Some(t) if !full => t
                .iter()
                .filter(|k| plan.services.contains_key(*k) || self.ports.contains_key(*k))
                .cloned()
                .collect(),
            _ => {
                let all: BTreeSet<&ServicePortKey> =
                    plan.services.keys().chain(self.ports.keys()).collect();
                all.into_iter().cloned().collect()
            }
        };
        let mut report = ApplyReport::default();
        // Additions first, removals last, so that no step leaves a reference dangling.
        let want_local = self.add_local_addrs(plan, &mut report)?;
        let mut fresh = self.write_backends(plan, &keys, &mut report)?;
        let closing = self.add_local_backends(&keys, &fresh, full, &mut report)?;
        self.service_ids(plan, &mut fresh)?;
        let slot_counts = self.swap_tables(plan, &fresh, &mut report)?;
        self.write_members(&keys, &fresh, full)?;
        let want_ranges = self.add_src_ranges(&fresh, &mut report)?;
        // A port's `XLB_PORTS` bits are set before a frontend on it exists, cleared after the
        // last is gone.
        let planned = keys
            .iter()
            .filter_map(|k| plan.services.get(k).map(|svc| (k, svc)))
            .flat_map(|(key, svc)| {
                svc.frontends
                    .iter()
                    .map(move |f| frontend_key(f.addr, f.port, key.protocol.number()))
            })
            .collect::<Vec<_>>();
        self.add_port_bits(&planned, None)?;
        let want_frontends = self.write_frontends(plan, &fresh, &mut report)?;
        self.remove_frontends(&keys, &want_frontends, full, &mut report)?;
        // Only the ports that lost a frontend can lose a bit; a full apply looks at every port
        // (an adopted map, or bits added for frontends a failed apply never wrote).
        let mut recheck = std::mem::take(&mut self.ports_dirty);
        if full {
            recheck.extend(self.port_bits.keys().chain(self.port_users.keys()));
        }
        self.clear_port_bits(recheck)?;
        self.remove_stale(&keys, &want_ranges, full, &want_local, &mut report)?;
        self.commit_ports(&keys, fresh, full);
        // Pairs kept for a live flow from before are the sweep's business: only pairs this
        // apply left unwanted cost a look at the reverse-NAT table now.
        if closing {
            report.local_backends_changed += self.release_local_backends()?.0;
        }
        report.backends_draining = self.backends.len().saturating_sub(self.backend_users.len());
        self.build_snapshot(plan, &keys, &slot_counts)?;
        self.needs_full = false;
        Ok(report)
    }

    /// Refuses a plan the maps cannot hold, before anything is written, with an error that
    /// names the flag to raise. Counts what the maps hold at the fullest moment of the apply:
    /// new entries are written before stale ones go, and ids of backends that left the plan
    /// stay taken while connections use them (they drain until the sweep). Only the ports in
    /// `touched` are walked (the others' entries are all in the maps already), unless the
    /// next apply is a full one anyway (after adoption or a failed apply).
    pub fn check_capacity(
        &self,
        plan: &DatapathPlan,
        touched: Option<&BTreeSet<ServicePortKey>>,
    ) -> anyhow::Result<()> {
        let cap = self.capacity;
        let touched = touched.filter(|_| !self.needs_full);
        let ports: Vec<(&ServicePortKey, &ServicePlan)> = match touched {
            None => plan.services.iter().collect(),
            Some(t) => t
                .iter()
                .filter_map(|k| plan.services.get_key_value(k))
                .collect(),
        };
        let full = touched.is_none();
        let services = plan.services.len() as u64;
        if services > cap.services as u64 {
            bail!(
                "{services} Service ports exceed the datapath's capacity of {} (--max-services); \
                 nothing of this configuration was applied",
                cap.services
            );
        }
        let mut new_frontends = 0u64;
        let mut new_backends = HashSet::new();
        let (mut members_new, mut members_old) = (0u64, 0u64);
        let mut new_pairs = HashSet::new();
        for (key, svc) in &ports {
            let proto = key.protocol.number();
            for f in &svc.frontends {
                if !self
                    .frontends
                    .contains_key(&frontend_key(f.addr, f.port, proto))
                {
                    new_frontends += 1;
                }
            }
            for b in &svc.backends {
                let k = (be(b.addr), b.port.to_be(), proto);
                if !self.backend_ids.contains_key(&k) {
                    new_backends.insert(k);
                }
            }
            members_new += svc.backends.iter().filter(|b| b.weight > 0).count() as u64;
            new_pairs.extend(
                local_backend_pairs_of(key, svc).filter(|p| !self.local_backends.contains(p)),
            );
        }
        // The members a touched port had (also one the plan no longer has) go before new
        // ones are added.
        for key in touched.into_iter().flatten() {
            if let Some(port) = self.ports.get(key) {
                members_old += port.members.len() as u64;
            }
        }
        let frontends = self.frontends.len() as u64 + new_frontends;
        if frontends > cap.frontends as u64 {
            bail!(
                "{frontends} frontends (the {} programmed and {new_frontends} new ones, added \
                 before stale ones are removed) exceed the datapath's capacity of {} \
                 (--max-frontends); nothing of this configuration was applied",
                self.frontends.len(),
                cap.frontends
            );
        }
        let backends = self.backends.len() as u64 + new_backends.len() as u64;
        if backends > cap.backends as u64 {
            bail!(
                "{backends} backends (the {} programmed or still draining and {} new ones) \
                 exceed the datapath's capacity of {} (--max-backends); nothing of this \
                 configuration was applied",
                self.backends.len(),
                new_backends.len(),
                cap.backends
            );
        }
        // Stale members are removed before new ones are added.
        let members = if full {
            members_new
        } else {
            (self.svc_backends.len() as u64).saturating_sub(members_old) + members_new
        };
        if members > cap.members() as u64 {
            bail!(
                "{members} (Service port, backend) pairs exceed the datapath's capacity of {} \
                 (twice --max-backends); nothing of this configuration was applied",
                cap.members()
            );
        }
        // Pairs that left the plan are removed after the new ones are added.
        let pairs = (self.local_backends.len() + new_pairs.len()) as u64;
        if pairs > cap.backends as u64 {
            bail!(
                "{pairs} (frontend, local backend) pairs exceed the datapath's capacity of {} \
                 (--max-backends); nothing of this configuration was applied",
                cap.backends
            );
        }
        if plan.local_addrs.len() as u64 > MAX_LOCAL_ADDRS as u64 {
            bail!(
                "{} local addresses exceed the capacity of {MAX_LOCAL_ADDRS}",
                plan.local_addrs.len()
            );
        }
        Ok(())
    }

    /// Step 1: the plan's local addresses (NodePort matching) are added; stale ones are removed
    /// by [`Self::remove_stale`]. Returns the wanted set.
    fn add_local_addrs(
        &mut self,
        plan: &DatapathPlan,
        report: &mut ApplyReport,
    ) -> anyhow::Result<HashSet<u32>> {
        let want_local: HashSet<u32> = plan.local_addrs.iter().map(|a| be(*a)).collect();
        for a in want_local.difference(&self.local_addrs.clone()) {
            self.maps
                .local_addrs
                .insert(a, 1, 0)
                .context("writing XLB_LOCAL_ADDRS")?;
            self.local_addrs.insert(*a);
            report.local_addrs_changed += 1;
        }
        Ok(want_local)
    }

    /// Step 2: every backend of the ports in `keys` gets a stable id and an up-to-date record,
    /// before any table refers to it. Returns the new share of each of those ports the plan
    /// has (service id still unset).
    fn write_backends<'k>(
        &mut self,
        plan: &DatapathPlan,
        keys: &'k [ServicePortKey],
        report: &mut ApplyReport,
    ) -> anyhow::Result<BTreeMap<&'k ServicePortKey, PortState>> {
        let mut fresh = BTreeMap::new();
        // Written in batches after the walk: new ids' counters first, then the records.
        let mut new_ids = HashSet::new();
        let mut writes: Vec<(u32, Backend, Option<Backend>)> = Vec::new();
        for svc_key in keys {
            let Some(svc) = plan.services.get(svc_key) else {
                continue;
            };
            let proto = svc_key.protocol.number();
            let mut port = PortState {
                frontends: svc
                    .frontends
                    .iter()
                    .map(|f| frontend_key(f.addr, f.port, proto))
                    .collect(),
                src_ranges: svc
                    .source_ranges
                    .iter()
                    .map(|(a, len)| (be(*a), *len))
                    .collect(),
                ..PortState::default()
            };
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
                    None => match self.free_backend_id() {
                        Ok(id) => {
                            self.backend_ids.insert(key, id);
                            new_ids.insert(id);
                            id
                        }
                        Err(e) => {
                            self.undo_backend_writes(&new_ids, &writes);
                            return Err(e);
                        }
                    },
                };
                port.backends.push(id);
                if b.weight > 0 {
                    port.members.push(id);
                }
                if self.backends.get(&id) != Some(&rec) {
                    // Recorded now so that a pod listed twice is written once; undone below
                    // for what the kernel did not take.
                    let prev = self.backends.insert(id, rec);
                    writes.push((id, rec, prev));
                }
            }
            port.pairs = local_backend_pairs_of(svc_key, svc).collect();
            fresh.insert(svc_key, port);
        }
        let mut zero: Vec<u32> = new_ids.iter().copied().collect();
        zero.sort();
        if let Err(e) = zero_counters(fd(&self.maps.backend_stats), &zero) {
            self.undo_backend_writes(&new_ids, &writes);
            return Err(e.context("resetting the counters of new backends"));
        }
        let ids: Vec<u32> = writes.iter().map(|w| w.0).collect();
        let recs: Vec<Backend> = writes.iter().map(|w| w.1).collect();
        if let Err(e) = bpf::update_batch(fd(&self.maps.backends), &ids, &recs, 1) {
            self.undo_backend_writes(&new_ids, &writes[e.done..]);
            return Err(e).context("writing XLB_BACKENDS");
        }
        report.backends_written += writes.len();
        Ok(fresh)
    }

    /// Forgets the backend records of `writes` that did not reach the map, and frees the ids
    /// among them that were new (in `new_ids`): no port records them, so nothing else would.
    fn undo_backend_writes(
        &mut self,
        new_ids: &HashSet<u32>,
        writes: &[(u32, Backend, Option<Backend>)],
    ) {
        for (id, rec, prev) in writes {
            match prev {
                Some(b) => {
                    self.backends.insert(*id, *b);
                }
                None => {
                    self.backends.remove(id);
                }
            }
            if prev.is_none() && new_ids.contains(id) {
                self.backend_ids.remove(&(rec.addr, rec.port, rec.proto));
                self.backend_alloc.release(*id);
            }
        }
    }

    /// Step 2b: every (frontend, backend on this node) pair of the ports, which tunnel packets
    /// must match, is added before the frontend is; pairs the plan no longer has are removed
    /// by [`Self::release_local_backends`] once the frontends are. Returns whether this apply
    /// left pairs unwanted.
    fn add_local_backends(
        &mut self,
        keys: &[ServicePortKey],
        fresh: &BTreeMap<&ServicePortKey, PortState>,
        full: bool,
        report: &mut ApplyReport,
    ) -> anyhow::Result<bool> {
        let want: HashSet<LocalBackendKey> = fresh
            .values()
            .flat_map(|p| p.pairs.iter().copied())
            .collect();
        let mut new: Vec<LocalBackendKey> = want
            .iter()
            .filter(|k| !self.local_backends.contains(*k))
            .copied()
            .collect();
        new.sort();
        let written = insert_batch(fd(&self.maps.local_backends), &new, 1u32);
        let done = match &written {
            Ok(()) => new.len(),
            Err(e) => e.done,
        };
        self.local_backends.extend(&new[..done]);
        report.local_backends_changed += done;
        written.context("writing XLB_LOCAL_BACKENDS")?;
        // A pair belongs to one port (its frontend does), so the ports in `keys` are the only
        // ones whose pairs can have changed.
        let mut closing = false;
        if full {
            self.unwanted_pairs = self.local_backends.difference(&want).copied().collect();
            closing = !self.unwanted_pairs.is_empty();
        } else {
            for k in keys {
                for pair in self.ports.get(k).into_iter().flat_map(|p| &p.pairs) {
                    if !want.contains(pair) && self.local_backends.contains(pair) {
                        closing |= self.unwanted_pairs.insert(*pair);
                    }
                }
            }
            for pair in &want {
                self.unwanted_pairs.remove(pair);
            }
        }
        Ok(closing)
    }

    /// Step 9 (and the periodic sweep): removes the pairs the plan no longer has, except those
    /// a live flow on this node still uses (its reverse-NAT entry names the pair's frontend and
    /// was seen within the idle timeout): edges keep sending an established flow to a backend
    /// that left the plan (a pod gone not-ready), as they keep its conntrack entry. Returns
    /// (removed, kept).
    pub fn release_local_backends(&mut self) -> anyhow::Result<(usize, usize)> {
        if self.unwanted_pairs.is_empty() {
            return Ok((0, 0));
        }
        let gone: Vec<LocalBackendKey> = self.unwanted_pairs.iter().copied().collect();
        let live = conntrack::live_replies(&self.maps)?;
        let (mut removed, mut kept) = (0, 0);
        for k in gone {
            if live.contains(&k) {
                kept += 1;
                continue;
            }
            remove_ok(self.maps.local_backends.remove(&k))
                .context("removing from XLB_LOCAL_BACKENDS")?;
            self.local_backends.remove(&k);
            self.unwanted_pairs.remove(&k);
            removed += 1;
        }
        Ok((removed, kept))
    }

    /// Step 3: the Service id of each port in `fresh`. A port keeps the id it has; a new port
    /// takes the id its frontends already carry if no other planned port holds it (a frontend
    /// that moves to another Service keeps pointing at a valid table until it is rewritten),
    /// or a free one. The ids the maps hold now stay reserved while the plan is applied (their
    /// frontends are removed only at the end). Ports are visited in key order, whether the
    /// apply is full or not, so both hand out the same ids.
    fn service_ids(
        &mut self,
        plan: &DatapathPlan,
        fresh: &mut BTreeMap<&ServicePortKey, PortState>,
    ) -> anyhow::Result<()> {
        let mut taken: HashSet<u32> = HashSet::new();
        // Ports that keep their id first, so that a new port cannot take it.
        for (key, port) in fresh.iter_mut() {
            if let Some(old) = self.ports.get(*key) {
                port.service_id = old.service_id;
                taken.insert(old.service_id);
            }
        }
        for (key, port) in fresh.iter_mut() {
            if self.ports.contains_key(*key) {
                continue;
            }
            let free = |id: &u32| {
                !taken.contains(id)
                    && self
                        .sid_owner
                        .get(id)
                        .is_none_or(|owner| owner == *key || !plan.services.contains_key(owner))
            };
            let existing = port.frontends.iter().find_map(|fk| {
                self.frontends
                    .get(fk)
                    .map(|v| v.service_id)
                    .filter(|id| free(id))
            });
            let id = match existing {
                Some(id) => id,
                None => self
                    .service_alloc
                    .alloc()
                    .context("no free service id: XLB_MAGLEV is full (raise --max-services)")?,
            };
            taken.insert(id);
            port.service_id = id;
        }
        Ok(())
    }

    /// Step 4: the tables of the ports in `fresh` are built (in parallel, on every core) and
    /// compared with what the maps hold by fingerprint. A changed one of the same size and
    /// layout is rewritten in place, only its changed words ([`maglev_map::patch`]: no RCU
    /// wait, so a change does not pay a grace period); any other is written into a fresh inner
    /// map and swapped in, so a packet sees a Service's old table or its new one.
    /// Nothing of a table is kept but its fingerprint. Returns each built port's slots per
    /// backend (canonical order), for the snapshot.
    fn swap_tables(
        &mut self,
        plan: &DatapathPlan,
        fresh: &BTreeMap<&ServicePortKey, PortState>,
        report: &mut ApplyReport,
    ) -> anyhow::Result<HashMap<u32, Vec<u32>>> {
        let jobs: Vec<TableJob<'_>> = fresh
            .iter()
            .map(|(key, port)| TableJob {
                sid: port.service_id,
                key,
                svc: &plan.services[*key],
                ids: &port.backends,
                old: self.tables.get(&port.service_id).copied(),
            })
            .collect();
        let patch_into = self.patch_tables.then_some(&self.maps.maglev);
        // Each new table is an open fd until it is swapped in: at 100,000 Service ports,
        // holding them all would pass the process's file limit, so tables are built (in
        // parallel) and swapped in chunks (each swap costs the kernel one wait for running
        // programs).
        let mut counts = HashMap::with_capacity(jobs.len());
        for chunk in jobs.chunks(tables_per_swap()) {
            let mut swaps = Vec::new();
            let mut prints = Vec::new();
            for b in build_tables(chunk, patch_into)? {
                counts.insert(b.sid, b.counts);
                match b.write {
                    TableWrite::Unchanged => {}
                    TableWrite::Patched => {
                        self.tables.insert(b.sid, b.mark);
                        report.tables_patched += 1;
                    }
                    TableWrite::Swap(table) => {
                        swaps.push((b.sid, table));
                        prints.push(b.mark);
                    }
                }
            }
            maglev_map::swap_all(&self.maps.maglev_fd, &swaps)?;
            for ((sid, _), print) in swaps.into_iter().zip(prints) {
                self.tables.insert(sid, print);
                report.tables_swapped += 1;
            }
        }
        Ok(counts)
    }

    /// Step 5: which backends may take new flows of each Service port (weight > 0): session
    /// affinity only returns a client to one of these.
    fn write_members(
        &mut self,
        keys: &[ServicePortKey],
        fresh: &BTreeMap<&ServicePortKey, PortState>,
        full: bool,
    ) -> anyhow::Result<()> {
        let want: HashSet<(u32, u32)> = fresh
            .values()
            .flat_map(|p| p.members.iter().map(|b| (p.service_id, *b)))
            .collect();
        let gone: Vec<(u32, u32)> = if full {
            self.svc_backends.difference(&want).copied().collect()
        } else {
            keys.iter()
                .filter_map(|k| self.ports.get(k))
                .flat_map(|p| p.members.iter().map(|b| (p.service_id, *b)))
                .filter(|m| !want.contains(m) && self.svc_backends.contains(m))
                .collect()
        };
        for m in &gone {
            let k = SvcBackendKey {
                service_id: m.0,
                backend_id: m.1,
            };
            remove_ok(self.maps.svc_backends.remove(&k))
                .context("removing from XLB_SVC_BACKENDS")?;
            self.svc_backends.remove(m);
        }
        let mut new: Vec<SvcBackendKey> = want
            .iter()
            .filter(|m| !self.svc_backends.contains(*m))
            .map(|m| SvcBackendKey {
                service_id: m.0,
                backend_id: m.1,
            })
            .collect();
        new.sort_by_key(|k| (k.service_id, k.backend_id));
        let written = insert_batch(fd(&self.maps.svc_backends), &new, 1u32);
        let done = match &written {
            Ok(()) => new.len(),
            Err(e) => e.done,
        };
        self.svc_backends
            .extend(new[..done].iter().map(|k| (k.service_id, k.backend_id)));
        written.context("writing XLB_SVC_BACKENDS")?;
        Ok(())
    }

    /// Step 6: source ranges are added; stale ones go after the frontends. Returns the wanted
    /// set of the ports in `fresh`.
    fn add_src_ranges(
        &mut self,
        fresh: &BTreeMap<&ServicePortKey, PortState>,
        report: &mut ApplyReport,
    ) -> anyhow::Result<HashSet<(u32, u32, u8)>> {
        let want_ranges: HashSet<(u32, u32, u8)> = fresh
            .values()
            .flat_map(|p| p.src_ranges.iter().map(|(a, l)| (p.service_id, *a, *l)))
            .collect();
        let new: Vec<(u32, u32, u8)> = want_ranges
            .iter()
            .filter(|r| !self.src_ranges.contains(*r))
            .copied()
            .collect();
        for r in new {
            let k = src_range_key(r.0, Ipv4Addr::from(u32::from_be(r.1)), r.2);
            self.maps
                .src_ranges
                .insert(&k, 1, 0)
                .context("writing XLB_SRC_RANGES")?;
            self.src_ranges.insert(r);
            report.src_ranges_changed += 1;
        }
        Ok(want_ranges)
    }

    /// Step 7: the frontends of the ports in `fresh` written (new ids zero their counters
    /// first). Returns them; [`Self::remove_frontends`] removes the stale ones.
    fn write_frontends(
        &mut self,
        plan: &DatapathPlan,
        fresh: &BTreeMap<&ServicePortKey, PortState>,
        report: &mut ApplyReport,
    ) -> anyhow::Result<HashSet<FrontendKey>> {
        let mut want: Vec<(FrontendKey, u32, u32, u32, u32)> = Vec::new();
        for (key, port) in fresh {
            let svc = &plan.services[*key];
            for (f, fk) in svc.frontends.iter().zip(&port.frontends) {
                let flags = if f.source_ranges_apply && !svc.source_ranges.is_empty() {
                    FRONTEND_F_SOURCE_RANGES
                } else {
                    0
                };
                let affinity = svc.affinity_timeout.unwrap_or(0);
                want.push((*fk, port.service_id, flags, svc.table_size, affinity));
            }
        }
        want.sort();
        // Written in batches: new ids' counters first, then the frontends.
        let mut new_ids = Vec::new();
        let (mut write_keys, mut write_values) = (Vec::new(), Vec::new());
        for &(fk, service_id, flags, table_size, affinity_timeout_s) in &want {
            let frontend_id = match self.frontends.get(&fk) {
                Some(v) => v.frontend_id,
                None => match self.frontend_alloc.alloc() {
                    Some(id) => {
                        new_ids.push(id);
                        id
                    }
                    None => {
                        self.release_frontend_ids(&new_ids);
                        bail!("no free frontend id: XLB_FRONTENDS is full (raise --max-frontends)");
                    }
                },
            };
            let v = FrontendValue {
                service_id,
                frontend_id,
                flags,
                table_size,
                affinity_timeout_s,
            };
            if self.frontends.get(&fk) != Some(&v) {
                write_keys.push(fk);
                write_values.push(v);
            }
        }
        if let Err(e) = zero_counters(fd(&self.maps.frontend_stats), &new_ids) {
            self.release_frontend_ids(&new_ids);
            return Err(e.context("resetting the counters of new frontends"));
        }
        let written = bpf::update_batch(fd(&self.maps.frontends), &write_keys, &write_values, 1);
        let done = match &written {
            Ok(()) => write_keys.len(),
            Err(e) => e.done,
        };
        for (k, v) in write_keys.iter().zip(&write_values).take(done) {
            if self.frontends.insert(*k, *v).is_none() {
                count_port_user(&mut self.port_users, k, true);
            }
        }
        report.frontends_written += done;
        if let Err(e) = written {
            // The ids of new frontends the kernel did not take are no one's.
            let taken: HashSet<u32> = write_values[..done].iter().map(|v| v.frontend_id).collect();
            let lost: Vec<u32> = new_ids
                .iter()
                .copied()
                .filter(|id| !taken.contains(id))
                .collect();
            self.release_frontend_ids(&lost);
            return Err(e).context("writing XLB_FRONTENDS");
        }
        Ok(want.into_iter().map(|w| w.0).collect())
    }

    fn release_frontend_ids(&mut self, ids: &[u32]) {
        for id in ids {
            self.frontend_alloc.release(*id);
        }
    }

    /// Step 8: frontends that no port wants any more: those the ports in `keys` had (a
    /// frontend belongs to one port, so a frontend that moved has both ports in `keys`), or
    /// on a full apply every one the plan does not have.
    fn remove_frontends(
        &mut self,
        keys: &[ServicePortKey],
        want: &HashSet<FrontendKey>,
        full: bool,
        report: &mut ApplyReport,
    ) -> anyhow::Result<()> {
        let mut stale: Vec<FrontendKey> = if full {
            self.frontends
                .keys()
                .filter(|k| !want.contains(*k))
                .copied()
                .collect()
        } else {
            keys.iter()
                .filter_map(|k| self.ports.get(k))
                .flat_map(|p| p.frontends.iter())
                .filter(|k| !want.contains(*k) && self.frontends.contains_key(*k))
                .copied()
                .collect()
        };
        stale.sort();
        stale.dedup();
        for fk in stale {
            remove_ok(self.maps.frontends.remove(&fk)).context("removing from XLB_FRONTENDS")?;
            if let Some(v) = self.frontends.remove(&fk) {
                self.frontend_alloc.release(v.frontend_id);
                count_port_user(&mut self.port_users, &fk, false);
                self.ports_dirty.insert(u16::from_be(fk.port));
            }
            report.frontends_removed += 1;
        }
        Ok(())
    }

    /// Step 9: source ranges and local addresses the plan no longer has.
    fn remove_stale(
        &mut self,
        keys: &[ServicePortKey],
        want_ranges: &HashSet<(u32, u32, u8)>,
        full: bool,
        want_local: &HashSet<u32>,
        report: &mut ApplyReport,
    ) -> anyhow::Result<()> {
        let stale: Vec<(u32, u32, u8)> = if full {
            self.src_ranges.difference(want_ranges).copied().collect()
        } else {
            keys.iter()
                .filter_map(|k| self.ports.get(k))
                .flat_map(|p| p.src_ranges.iter().map(|(a, l)| (p.service_id, *a, *l)))
                .filter(|r| !want_ranges.contains(r) && self.src_ranges.contains(r))
                .collect()
        };
        for r in &stale {
            let k = src_range_key(r.0, Ipv4Addr::from(u32::from_be(r.1)), r.2);
            remove_ok(self.maps.src_ranges.remove(&k)).context("removing from XLB_SRC_RANGES")?;
            if self.src_ranges.remove(r) {
                report.src_ranges_changed += 1;
            }
        }
        for a in self.local_addrs.clone().difference(want_local) {
            remove_ok(self.maps.local_addrs.remove(a)).context("removing from XLB_LOCAL_ADDRS")?;
            self.local_addrs.remove(a);
            report.local_addrs_changed += 1;
        }
        Ok(())
    }

    /// Records the new share of each port in `keys` (gone if the plan no longer has it),
    /// counts backend users, and frees the service ids no port holds any more (their
    /// frontends are gone by now).
    fn commit_ports(
        &mut self,
        keys: &[ServicePortKey],
        mut fresh: BTreeMap<&ServicePortKey, PortState>,
        full: bool,
    ) {
        let mut freed: Vec<u32> = Vec::new();
        for key in keys {
            if let Some(old) = self.ports.remove(key) {
                for id in &old.backends {
                    if let Some(n) = self.backend_users.get_mut(id) {
                        *n -= 1;
                        if *n == 0 {
                            self.backend_users.remove(id);
                            self.unplanned_ns.insert(*id, monotonic_ns());
                        }
                    }
                }
                if self.sid_owner.get(&old.service_id) == Some(key) {
                    self.sid_owner.remove(&old.service_id);
                }
                freed.push(old.service_id);
            }
        }
        for key in keys {
            if let Some(port) = fresh.remove(key) {
                for id in &port.backends {
                    *self.backend_users.entry(*id).or_default() += 1;
                    self.unplanned_ns.remove(id);
                }
                self.sid_owner.insert(port.service_id, key.clone());
                self.ports.insert(key.clone(), port);
            }
        }
        if full {
            // Also the ids of an adopted datapath's Services that no port took.
            freed = self.service_alloc.used.iter().copied().collect();
        }
        freed.sort();
        for id in freed {
            if !self.sid_owner.contains_key(&id) {
                self.service_alloc.release(id);
                self.tables.remove(&id);
            }
        }
    }

    /// Makes `XLB_CONFIG` and `XLB_NODES` hold `plan`: known nodes are added before the own
    /// address changes and removed after. Returns how many entries changed.
    pub fn apply_tunnel(
        &mut self,
        plan: &crate::compile::tunnel::TunnelPlan,
    ) -> anyhow::Result<usize> {
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
            ..self.config
        };
        if config != self.config {
            // The new tunnel port's bit before the port is used, the old one's cleared after.
            let old_port = u16::from_be(self.config.tunnel_port);
            self.add_port_bits(&[], Some(config.tunnel_port))?;
            self.write_config(Config {
                ports_ready: self.config.ports_ready,
                ..config
            })?;
            self.clear_port_bits(BTreeSet::from([old_port]))?;
            changed += 1;
        }
        for a in self.nodes.clone().difference(&want) {
            remove_ok(self.maps.nodes.remove(a)).context("removing from XLB_NODES")?;
            self.nodes.remove(a);
            changed += 1;
        }
        // The nodes or the outer source changed: their prepared headers with them (otherwise
        // the hop watch's notifications and timer keep them current; a change must not pay a
        // read of the kernel's routes and neighbours). A failure to read them only leaves the
        // lookup path in use.
        if changed > 0
            && let Err(e) = self.refresh_hops()
        {
            tracing::warn!(
                error = format!("{e:#}"),
                "cannot prepare the remote nodes' next hops; encapsulating by lookup"
            );
        }
        Ok(changed)
    }

    fn write_config(&mut self, config: Config) -> anyhow::Result<()> {
        self.maps
            .config
            .set(0, config, 0)
            .context("writing XLB_CONFIG")?;
        self.config = config;
        Ok(())
    }

    /// Sets the SYN-flood guard's rate (new flows per second per CPU; 0 = off).
    pub fn set_syn_guard_rate(&mut self, rate: u32) -> anyhow::Result<()> {
        if self.config.syn_guard_rate != rate {
            self.write_config(Config {
                syn_guard_rate: rate,
                ..self.config
            })?;
        }
        Ok(())
    }

    /// Adds to `XLB_PORTS` the bits of `extra` (frontends about to be written) and of the
    /// tunnel port `extra_tunnel_port` (network order) before either is used. Only their ports
    /// are looked at (and every wanted port on the first call).
    fn add_port_bits(
        &mut self,
        extra: &[FrontendKey],
        extra_tunnel_port: Option<u16>,
    ) -> anyhow::Result<()> {
        let mut add: HashMap<u16, u32> = HashMap::new();
        for k in extra {
            *add.entry(u16::from_be(k.port)).or_default() |= port_flags(k);
        }
        if let Some(tp) = extra_tunnel_port.filter(|p| *p != 0) {
            *add.entry(u16::from_be(tp)).or_default() |= PORT_F_TUNNEL;
        }
        let ports: BTreeSet<u16> = add.keys().copied().collect();
        self.write_ports(ports, &add, true)
    }

    /// Makes the `XLB_PORTS` entries of `ports` hold exactly the bits of their programmed
    /// frontends and of the tunnel port: bits no frontend uses any more are cleared.
    fn clear_port_bits(&mut self, ports: BTreeSet<u16>) -> anyhow::Result<()> {
        self.write_ports(ports, &HashMap::new(), false)
    }

    /// Writes the entries of `ports` whose bits differ from what their frontends' counts, the
    /// tunnel port and `add` want; with `additive`, bits are only added. The first call writes
    /// every wanted port (the map may be new, after an upgrade) and then tells the datapath it
    /// may trust the map (`ports_ready`).
    fn write_ports(
        &mut self,
        mut ports: BTreeSet<u16>,
        add: &HashMap<u16, u32>,
        additive: bool,
    ) -> anyhow::Result<()> {
        let first = self.config.ports_ready == 0;
        let tunnel = u16::from_be(self.config.tunnel_port);
        if first {
            ports.extend(self.port_users.keys().chain(self.port_bits.keys()));
            if tunnel != 0 {
                ports.insert(tunnel);
            }
        }
        for p in ports {
            let have = self.port_bits.get(&p).copied().unwrap_or(0);
            let mut bits = self.port_users.get(&p).map_or(0, port_user_bits)
                | add.get(&p).copied().unwrap_or(0);
            if tunnel != 0 && p == tunnel {
                bits |= PORT_F_TUNNEL;
            }
            if additive {
                bits |= have;
            }
            if have == bits && !first {
                continue;
            }
            self.maps
                .ports
                .set(p as u32, bits, 0)
                .context("writing XLB_PORTS")?;
            if bits == 0 {
                self.port_bits.remove(&p);
            } else {
                self.port_bits.insert(p, bits);
            }
        }
        if first {
            self.write_config(Config {
                ports_ready: 1,
                ..self.config
            })?;
        }
        Ok(())
    }

    /// Makes `XLB_NODE_HOPS` hold a prepared hop for every remote node whose next hop the
    /// kernel's tables resolve now (route, interface, valid neighbour), and none for the
    /// others, which the program then looks up. The remote nodes: the known nodes and the
    /// nodes of remote backends, without this one.
    pub fn refresh_hops(&mut self) -> anyhow::Result<HopReport> {
        let mut report = HopReport::default();
        let mut want: HashMap<u32, NodeHop> = HashMap::new();
        if self.config.node_addr != 0 {
            let own = self.config.node_addr;
            let mut nodes: BTreeSet<u32> = self.nodes.iter().copied().collect();
            nodes.extend(
                self.backends
                    .values()
                    .filter(|b| b.flags & BACKEND_F_REMOTE != 0)
                    .map(|b| b.node_addr),
            );
            nodes.retain(|a| *a != own && *a != 0);
            let raw = |a: u32| Ipv4Addr::from(a.to_ne_bytes());
            let resolved = crate::datapath::hops::resolve(
                nodes.iter().map(|a| raw(*a)),
                raw(own),
                u16::from_be(self.config.tunnel_port),
            )
            .context("reading the routes and neighbours of the remote nodes")?;
            for (node, r) in resolved {
                match r {
                    Ok(hop) => {
                        want.insert(u32::from_ne_bytes(node.octets()), hop);
                    }
                    Err(why) => {
                        report.unresolved += 1;
                        tracing::debug!(%node, ?why, "no prepared next hop: encapsulating by lookup");
                    }
                }
            }
        }
        report.prepared = want.len();
        for (a, hop) in &want {
            if self.hops.get(a) != Some(hop) {
                self.maps
                    .node_hops
                    .insert(a, hop, 0)
                    .context("writing XLB_NODE_HOPS")?;
                self.hops.insert(*a, *hop);
                report.written += 1;
            }
        }
        for a in self.hops.keys().copied().collect::<Vec<_>>() {
            if !want.contains_key(&a) {
                remove_ok(self.maps.node_hops.remove(&a)).context("removing from XLB_NODE_HOPS")?;
                self.hops.remove(&a);
                report.removed += 1;
            }
        }
        Ok(report)
    }

    /// Releases, against a connection census (the run loop never walks the table itself), the
    /// draining backends that left the plan over [`DRAIN_GRACE_NS`] before
    /// the census's walk began (`walk_started_ns`, monotonic) and that none of the flows it
    /// read points at (`referenced`). A flow to a backend is only created while the backend
    /// is planned, so every flow it may still have was in the table when such a walk began.
    /// Returns (released, still draining).
    pub fn release_unreferenced(
        &mut self,
        referenced: &HashSet<u32>,
        walk_started_ns: u64,
    ) -> anyhow::Result<(usize, usize)> {
        // Every planned id is a known backend: no more known ones, none draining.
        if self.backends.len() == self.backend_users.len() {
            return Ok((0, 0));
        }
        let now = monotonic_ns();
        let candidates: Vec<u32> = self
            .backends
            .keys()
            .filter(|id| !self.backend_users.contains_key(id))
            .copied()
            .collect();
        let (mut released, mut draining) = (0, 0);
        for id in candidates {
            // One that left the plan unseen (an adopted datapath's, a failed apply's) counts
            // from now.
            let left = *self.unplanned_ns.entry(id).or_insert(now);
            if referenced.contains(&id) || left.saturating_add(DRAIN_GRACE_NS) > walk_started_ns {
                draining += 1;
                continue;
            }
            self.maps
                .backends
                .set(id, Backend::default(), 0)
                .context("clearing XLB_BACKENDS")?;
            self.release_backend(id);
            released += 1;
        }
        Ok((released, draining))
    }

    fn release_backend(&mut self, id: u32) {
        self.backend_alloc.release(id);
        self.unplanned_ns.remove(&id);
        if let Some(b) = self.backends.remove(&id) {
            self.backend_ids.remove(&(b.addr, b.port, b.proto));
        }
    }

    fn free_backend_id(&mut self) -> anyhow::Result<u32> {
        self.backend_alloc
            .alloc()
            .context("no free backend id: XLB_BACKENDS is full (raise --max-backends)")
    }

    /// Rebuilds the snapshot parts of the ports in `keys` (dropping those the plan no longer
    /// has); the others are shared with the previous snapshot.
    fn build_snapshot(
        &mut self,
        plan: &DatapathPlan,
        keys: &[ServicePortKey],
        slot_counts: &HashMap<u32, Vec<u32>>,
    ) -> anyhow::Result<()> {
        for key in keys {
            match (plan.services.get(key), self.ports.get(key)) {
                (Some(svc), Some(port)) => {
                    let counts = match slot_counts.get(&port.service_id) {
                        Some(c) => c.clone(),
                        // Not built this apply (swap_tables builds every port in `keys` the
                        // plan has, so this is a fallback only).
                        None => svc
                            .maglev_table()
                            .with_context(|| format!("building the Maglev table of {key}"))?
                            .slot_counts(),
                    };
                    let part = Arc::new(self.service_snapshot(key, svc, port.service_id, &counts));
                    self.snapshot_parts.insert(key.clone(), part);
                }
                _ => {
                    self.snapshot_parts.remove(key);
                }
            }
        }
        self.snapshot = Snapshot {
            services: self.snapshot_parts.values().cloned().collect(),
        };
        Ok(())
    }

    fn service_snapshot(
        &self,
        key: &ServicePortKey,
        svc: &ServicePlan,
        service_id: u32,
        slots: &[u32],
    ) -> ServiceSnapshot {
        let proto = key.protocol.number();
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
                    slots: slots.get(i).copied().unwrap_or(0),
                })
                .collect(),
        }
    }
}

/// A 64-bit fingerprint of a table's words, to notice a changed table without keeping a copy.
/// A multiply-rotate mix over 64-bit words: about ten times faster than SipHash, which
/// dominated every apply at 1,000 Services; tables are not attacker-chosen, so a fast
/// non-cryptographic mix is enough. Deterministic across runs (restart adoption compares it).
fn fingerprint(table: &[u32]) -> u64 {
    let mut h: u64 = table.len() as u64;
    let mut words = table.chunks_exact(2);
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

/// What the reconciler keeps of a table the maps hold: enough to tell a change, and whether it
/// can be made in place (same length), without a copy of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableMark {
    print: u64,
    /// Words of the inner map (two per element).
    words: usize,
}

impl TableMark {
    fn of(words: &[u32]) -> TableMark {
        TableMark {
            print: fingerprint(words),
            words: words.len(),
        }
    }
}

/// How a built table reached the maps.
enum TableWrite {
    /// The maps hold it already.
    Unchanged,
    /// Its changed words were written into the inner map in place.
    Patched,
    /// A fresh inner map holding it, to be swapped in.
    Swap(MaglevInner),
}

/// One table to build: a port of the plan whose table may have changed.
struct TableJob<'p> {
    sid: u32,
    key: &'p ServicePortKey,
    svc: &'p ServicePlan,
    /// The backend id of each of `svc.backends`.
    ids: &'p [u32],
    /// The table the maps hold for `sid`, if any.
    old: Option<TableMark>,
}

/// What building one table gave.
struct BuiltTable {
    sid: u32,
    mark: TableMark,
    /// Slots per backend, canonical order.
    counts: Vec<u32>,
    write: TableWrite,
}

/// Fewer jobs than this per extra thread are built on the calling thread: a change to one
/// Service must not pay for starting threads.
const JOBS_PER_THREAD: usize = 64;

/// Builds, encodes and (when changed) writes the tables of `jobs`, on up to every core: in
/// place into the inner map `patch_into` holds for the job when the layout allows it, else
/// into a fresh inner map. Each worker takes the next few jobs from a shared counter and drops
/// each table as soon as it is written, so at most one table per thread is in memory.
fn build_tables(
    jobs: &[TableJob<'_>],
    patch_into: Option<&ArrayOfMaps<MapData, MaglevInner>>,
) -> anyhow::Result<Vec<BuiltTable>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const GRAIN: usize = 16;
    let build = |job: &TableJob<'_>| -> anyhow::Result<BuiltTable> {
        let table = job
            .svc
            .maglev_table()
            .with_context(|| format!("building the Maglev table of {}", job.key))?;
        let words = lb_common::maglev::encode(&table, job.ids)?;
        let mark = TableMark::of(&words);
        let write = match (job.old, patch_into) {
            (Some(old), _) if old == mark => TableWrite::Unchanged,
            (Some(old), Some(outer)) if old.words == words.len() => {
                patch_or_swap(outer, job.sid, &words)?
            }
            _ => TableWrite::Swap(maglev_map::create(&words)?),
        };
        Ok(BuiltTable {
            sid: job.sid,
            mark,
            counts: table.slot_counts(),
            write,
        })
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(jobs.len().div_ceil(JOBS_PER_THREAD)).max(1);
    if threads == 1 {
        return jobs.iter().map(build).collect();
    }
    let next = AtomicUsize::new(0);
    let worker = || -> anyhow::Result<Vec<BuiltTable>> {
        let mut out = Vec::new();
        loop {
            let start = next.fetch_add(GRAIN, Ordering::Relaxed);
            if start >= jobs.len() {
                return Ok(out);
            }
            for job in &jobs[start..(start + GRAIN).min(jobs.len())] {
                out.push(build(job)?);
            }
        }
    };
    let results: Vec<anyhow::Result<Vec<BuiltTable>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads)
            .map(|_| {
                std::thread::Builder::new()
                    .name("xlb-maglev".into())
                    .spawn_scoped(s, worker)
            })
            .collect();
        let mut results = vec![worker()];
        for h in handles {
            results.push(match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a Maglev build thread panicked"))),
                Err(e) => Err(anyhow::Error::from(e).context("starting a Maglev build thread")),
            });
        }
        results
    });
    let mut built = Vec::with_capacity(jobs.len());
    for r in results {
        built.extend(r?);
    }
    Ok(built)
}

/// Rewrites the table of `sid` in place if its layout allows, else builds a fresh inner map.
fn patch_or_swap(
    outer: &ArrayOfMaps<MapData, MaglevInner>,
    sid: u32,
    words: &[u32],
) -> anyhow::Result<TableWrite> {
    let inner = match outer.get(&sid, 0) {
        Ok(inner) => inner,
        Err(MapError::KeyNotFound) => return Ok(TableWrite::Swap(maglev_map::create(words)?)),
        Err(e) => return Err(e).context("reading XLB_MAGLEV"),
    };
    Ok(match maglev_map::patch(&inner, words)? {
        Some(_) => TableWrite::Patched,
        None => TableWrite::Swap(maglev_map::create(words)?),
    })
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

/// The frontend bits of `XLB_PORTS` (TCP, UDP, and their NodePort bits; not the tunnel's).
const PORT_USER_BITS: usize = 4;

/// Counts `k` in (or out of) its port's frontend bits.
fn count_port_user(users: &mut HashMap<u16, [u32; PORT_USER_BITS]>, k: &FrontendKey, add: bool) {
    let port = u16::from_be(k.port);
    let flags = port_flags(k);
    let counts = users.entry(port).or_default();
    for (i, c) in counts.iter_mut().enumerate() {
        if flags & (1 << i) != 0 {
            *c = if add { *c + 1 } else { c.saturating_sub(1) };
        }
    }
    if counts.iter().all(|c| *c == 0) {
        users.remove(&port);
    }
}

/// The bits a port's frontend counts set.
fn port_user_bits(counts: &[u32; PORT_USER_BITS]) -> u32 {
    counts
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

/// The `XLB_PORTS` bits a frontend sets on its port.
fn port_flags(k: &FrontendKey) -> u32 {
    let (ours, nodeport) = port_bits(k.proto);
    // `port_bits` of UDP includes the tunnel bit, which only the tunnel port gets.
    let ours = ours & !PORT_F_TUNNEL;
    if k.addr == 0 { ours | nodeport } else { ours }
}

/// New Maglev tables created before they are swapped in: a quarter of the file limit (the
/// rest is the process's), between 256 and 16,384.
fn tables_per_swap() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (soft / 4).clamp(256, 16_384) as usize
}

/// Entries per `BPF_MAP_LOOKUP_BATCH` when adopting the maps.
const READ_CHUNK: u32 = 8192;

/// The fd of a typed map, for the batched calls of [`bpf`].
fn fd<K: aya::Pod, V>(map: &impl IterableMap<K, V>) -> BorrowedFd<'_> {
    map.map().fd().as_fd()
}

/// Inserts `keys`, each with `value`, in batches.
fn insert_batch<K: Copy, V: Copy>(
    map: BorrowedFd<'_>,
    keys: &[K],
    value: V,
) -> Result<(), bpf::BatchFailed> {
    bpf::update_batch(map, keys, &vec![value; keys.len()], 1)
}

/// Zeroes the per-CPU counters of `ids` (an id used before keeps its old counts otherwise), a
/// bounded number of ids per batch: a per-CPU value is one counter per possible CPU.
fn zero_counters(map: BorrowedFd<'_>, ids: &[u32]) -> anyhow::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    const IDS_PER_CALL: usize = 1024;
    let ncpus = aya::util::nr_cpus()
        .map_err(|(_, e)| e)
        .context("counting CPUs")?;
    let zeros = vec![Counter::default(); IDS_PER_CALL.min(ids.len()) * ncpus];
    for chunk in ids.chunks(IDS_PER_CALL) {
        bpf::update_batch(map, chunk, &zeros[..chunk.len() * ncpus], ncpus)?;
    }
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

/// The (frontend, backend on this node) pairs of `plan`: what a tunnel packet from an edge may
/// carry. Every backend the plan lists counts, draining and terminating ones included, since
/// edges keep sending their established flows.
pub fn local_backend_pairs(plan: &DatapathPlan) -> HashSet<LocalBackendKey> {
    plan.services
        .iter()
        .flat_map(|(key, svc)| local_backend_pairs_of(key, svc))
        .collect()
}

/// The pairs of one Service port.
fn local_backend_pairs_of<'a>(
    key: &ServicePortKey,
    svc: &'a ServicePlan,
) -> impl Iterator<Item = LocalBackendKey> + 'a {
    let proto = key.protocol.number();
    svc.backends.iter().filter(|b| b.local).flat_map(move |b| {
        svc.frontends.iter().map(move |f| LocalBackendKey {
            frontend_addr: f.addr.map(be).unwrap_or(0),
            backend_addr: be(b.addr),
            frontend_port: f.port.to_be(),
            backend_port: b.port.to_be(),
            proto,
            _pad: [0; 3],
        })
    })
}
