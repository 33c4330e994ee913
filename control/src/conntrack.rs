//! Reading and expiring the connection table from user space.
use anyhow::Context as _;
use aya::maps::MapError;
use lb_common::maps::{Backend, FlowKey, IPPROTO_UDP};

use crate::datapath::Maps;

/// Idle time after which user space removes a TCP flow (kube-proxy keeps established TCP
/// conntrack entries for a day; an LB in front of long-lived connections must not be shorter
/// than its clients' keepalives).
pub const TCP_IDLE_TIMEOUT_S: u64 = 86_400;
/// Idle time after which a UDP flow is removed.
pub const UDP_IDLE_TIMEOUT_S: u64 = 300;

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The reply tuple under which the datapath recorded a flow's reverse NAT.
pub fn revnat_key(k: &FlowKey, b: &Backend) -> FlowKey {
    FlowKey {
        src_addr: b.addr,
        dst_addr: k.src_addr,
        src_port: b.port,
        dst_port: k.src_port,
        proto: k.proto,
        _pad: [0; 3],
    }
}

/// Removes flows idle longer than their protocol's timeout, with their reverse-NAT entries.
/// Returns how many were removed.
pub fn expire(maps: &mut Maps) -> anyhow::Result<usize> {
    let now = monotonic_ns();
    let mut stale: Vec<(FlowKey, u32)> = Vec::new();
    for kv in maps.conntrack.iter() {
        let (k, v) = match kv {
            Ok(kv) => kv,
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("reading XLB_CONNTRACK"),
        };
        let timeout = if k.proto == IPPROTO_UDP {
            UDP_IDLE_TIMEOUT_S
        } else {
            TCP_IDLE_TIMEOUT_S
        };
        if now.saturating_sub(v.last_seen_ns) > timeout * 1_000_000_000 {
            stale.push((k, v.backend_id));
        }
    }
    let n = stale.len();
    for (k, backend_id) in stale {
        if let Ok(b) = maps.backends.get(&backend_id, 0) {
            let _ = maps.revnat.remove(&revnat_key(&k, &b));
        }
        let _ = maps.conntrack.remove(&k);
    }
    Ok(n)
}
