//! Reading and expiring the connection table from user space.
use std::net::Ipv4Addr;

use anyhow::Context as _;
use aya::maps::MapError;
use lb_common::maps::{FlowKey, IPPROTO_TCP, IPPROTO_UDP};
use serde::Serialize;

use crate::datapath::Maps;

/// Idle time after which user space removes a TCP flow (kube-proxy keeps established TCP
/// conntrack entries for a day; an LB in front of long-lived connections must not be shorter
/// than its clients' keepalives).
pub const TCP_IDLE_TIMEOUT_S: u64 = 86_400;
/// Idle time after which a UDP flow is removed.
pub const UDP_IDLE_TIMEOUT_S: u64 = 300;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flow {
    pub client: Ipv4Addr,
    pub client_port: u16,
    pub frontend: Ipv4Addr,
    pub frontend_port: u16,
    pub protocol: String,
    pub backend: Option<Ipv4Addr>,
    pub backend_port: Option<u16>,
    pub backend_id: u32,
    pub age_s: f64,
    pub idle_s: f64,
}

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

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "TCP".into(),
        IPPROTO_UDP => "UDP".into(),
        other => other.to_string(),
    }
}

/// Every flow, sorted by frontend, client.
pub fn list(maps: &Maps) -> anyhow::Result<Vec<Flow>> {
    let now = monotonic_ns();
    let mut flows = Vec::new();
    for kv in maps.conntrack.iter() {
        let (k, v) = match kv {
            Ok(kv) => kv,
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e).context("reading XLB_CONNTRACK"),
        };
        let b = maps
            .backends
            .get(&v.backend_id, 0)
            .ok()
            .filter(|b| b.flags != 0);
        flows.push(Flow {
            client: addr(k.src_addr),
            client_port: u16::from_be(k.src_port),
            frontend: addr(k.dst_addr),
            frontend_port: u16::from_be(k.dst_port),
            protocol: proto_name(k.proto),
            backend: b.map(|b| addr(b.addr)),
            backend_port: b.map(|b| u16::from_be(b.port)),
            backend_id: v.backend_id,
            age_s: now.saturating_sub(v.created_ns) as f64 / 1e9,
            idle_s: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
        });
    }
    flows.sort_by(|a, b| {
        (a.frontend, a.frontend_port, a.client, a.client_port).cmp(&(
            b.frontend,
            b.frontend_port,
            b.client,
            b.client_port,
        ))
    });
    Ok(flows)
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
            let reply = FlowKey {
                src_addr: b.addr,
                dst_addr: k.src_addr,
                src_port: b.port,
                dst_port: k.src_port,
                proto: k.proto,
                _pad: [0; 3],
            };
            let _ = maps.revnat.remove(&reply);
        }
        let _ = maps.conntrack.remove(&k);
    }
    Ok(n)
}
