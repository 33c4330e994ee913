//! The connection table from user space: one bounded walk for every reader (the idle sweep,
//! backend release, the CLI and metrics), and expiry.
//!
//! The datapath inserts and the LRU evicts while user space walks the table, and
//! `BPF_MAP_GET_NEXT_KEY` restarts from the first key when the current one vanished, so a naive
//! walk can repeat entries or, under heavy churn, never end. [`walk`] stops after twice the
//! capacity; callers that count entries de-duplicate ([`scan`], the census). Readers that run
//! beside the datapath for long (the census) pace the same walk ([`walk_paced`]).
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{IterableMap as _, MapError};
use lb_common::maps::{Backend, CtValue, FlowKey, LocalBackendKey, RevNatValue, flow_idle_ns};

use crate::{datapath::maps::Maps, sys::clock::monotonic_ns};

/// Idle times after which user space removes a flow (a closing one after the close timeout);
/// the datapath uses the same ones to tell a live flow's reverse NAT from a stale one.
pub use lb_common::maps::{CT_CLOSE_TIMEOUT_S, TCP_IDLE_TIMEOUT_S, UDP_IDLE_TIMEOUT_S};

/// The conntrack capacity (`--conntrack-size` of the `xlb run` that created the maps).
pub fn capacity(maps: &Maps) -> anyhow::Result<u32> {
    Ok(maps
        .conntrack
        .map()
        .info()
        .context("reading XLB_CONNTRACK's info")?
        .max_entries())
}

/// Calls `visit` for every entry of `XLB_CONNTRACK`, reading at most twice the capacity (plus
/// slack) of entries, so it ends however the table churns. An entry can be visited twice.
pub fn walk(maps: &Maps, mut visit: impl FnMut(FlowKey, CtValue)) -> anyhow::Result<()> {
    walk_paced(maps, None, |k, v| {
        visit(k, v);
        true
    })
    .map(|_| ())
}

/// Entries read between two looks at the clock of a paced walk.
const CHUNK: u64 = 512;

/// [`walk`], stopping when `visit` returns false, and with `per_s` reading at most that many
/// entries a second: it sleeps between chunks of entries, so a background reader (the connection
/// census) takes a bounded share of a core however large the table. Returns the entries read.
pub fn walk_paced(
    maps: &Maps,
    per_s: Option<u32>,
    visit: impl FnMut(FlowKey, CtValue) -> bool,
) -> anyhow::Result<u64> {
    let limit = capacity(maps)? as usize * 2 + 1024;
    bounded(maps.conntrack.iter(), limit, "XLB_CONNTRACK", per_s, visit)
}

/// [`walk`] over `XLB_REVNAT`, which has the conntrack capacity.
pub fn walk_revnat(maps: &Maps, mut visit: impl FnMut(FlowKey, RevNatValue)) -> anyhow::Result<()> {
    let limit = capacity(maps)? as usize * 2 + 1024;
    bounded(maps.revnat.iter(), limit, "XLB_REVNAT", None, |k, v| {
        visit(k, v);
        true
    })
    .map(|_| ())
}

fn bounded<K, V>(
    entries: impl Iterator<Item = Result<(K, V), MapError>>,
    limit: usize,
    map: &str,
    per_s: Option<u32>,
    mut visit: impl FnMut(K, V) -> bool,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut read = 0u64;
    for kv in entries.take(limit) {
        read += 1;
        if let Some(rate) = per_s.filter(|r| *r > 0)
            && read.is_multiple_of(CHUNK)
        {
            let due = Duration::from_secs_f64(read as f64 / f64::from(rate));
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        match kv {
            Ok((k, v)) => {
                if !visit(k, v) {
                    break;
                }
            }
            // An LRU entry evicted between GET_NEXT_KEY and LOOKUP.
            Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(e).with_context(|| format!("reading {map}")),
        }
    }
    Ok(read)
}

/// The (frontend, backend) pairs of the flows whose reverse NAT was seen within their idle
/// timeout, each twice: with the frontend's address and with 0 (a NodePort names any address).
pub fn live_replies(maps: &Maps) -> anyhow::Result<HashSet<LocalBackendKey>> {
    let now = monotonic_ns();
    let mut live = HashSet::new();
    walk_revnat(maps, |k, v| {
        if now.saturating_sub(v.last_ns) > flow_idle_ns(k.proto) {
            return;
        }
        let pair = LocalBackendKey {
            frontend_addr: v.frontend_addr,
            backend_addr: k.src_addr,
            frontend_port: v.frontend_port,
            backend_port: k.src_port,
            proto: k.proto,
            _pad: [0; 3],
        };
        live.insert(pair);
        live.insert(LocalBackendKey {
            frontend_addr: 0,
            ..pair
        });
    })?;
    Ok(live)
}

/// Every entry of `XLB_CONNTRACK`, each once.
pub fn scan(maps: &Maps) -> anyhow::Result<HashMap<FlowKey, CtValue>> {
    let mut flows = HashMap::new();
    walk(maps, |k, v| {
        flows.insert(k, v);
    })?;
    Ok(flows)
}

/// The reply tuple under which the datapath recorded a flow's reverse NAT.
pub fn revnat_key(k: &FlowKey, b: &Backend) -> FlowKey {
    k.reply(b.addr, b.port)
}

/// Removes flow `k` (to `backend_id`) and its reverse-NAT entry; false if it was gone already
/// (the LRU evicted it).
pub fn remove_flow(maps: &mut Maps, k: &FlowKey, backend_id: u32) -> anyhow::Result<bool> {
    if let Ok(b) = maps.backends.get(&backend_id, 0) {
        match maps.revnat.remove(&revnat_key(k, &b)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("removing from XLB_REVNAT"),
        }
    }
    match maps.conntrack.remove(k) {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(e).context("removing from XLB_CONNTRACK"),
    }
}
