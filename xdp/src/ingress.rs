//! The XDP packet walk: parse → (tunnel → decap) → classify → admit → decide → rewrite →
//! forward (local: into the pod, `pod.rs`; remote: encapsulated to the backend's node).
use aya_ebpf::{
    bindings::xdp_action, btf_maps::lpm_trie::Key, helpers::bpf_ktime_get_ns, programs::XdpContext,
};
use lb_common::maps::{
    AffinityKey, AffinityValue, BACKEND_F_LOCAL, Backend, CT_F_CLOSING, Config, CtValue,
    FRONTEND_F_SOURCE_RANGES, FlowKey, FrontendKey, FrontendValue, IPPROTO_TCP, IPPROTO_UDP,
    MAGLEV_HEADER_ELEMS, NO_BACKEND, NO_BACKEND16, PORT_F_TUNNEL, Reason, RevNatValue,
    SYN_GUARD_WINDOW_NS, SrcRangeKey, SvcBackendKey, maglev_narrow, maglev_slot_base, port_bits,
};
use xlb_xdp::csum;
use xlb_xdp::net::{
    IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_MIN_HLEN, L4_DPORT_OFF, TCP_FLAG_ACK, TCP_FLAG_FIN,
    TCP_FLAG_RST, TCP_FLAG_SYN,
};
use xlb_xdp::parse::{self, Headers};

use crate::{
    checksum::{self, Leaves},
    encap,
    maps::{
        XLB_AFFINITY, XLB_BACKENDS, XLB_CONFIG, XLB_CONNTRACK, XLB_FRONTENDS, XLB_LOCAL_ADDRS,
        XLB_MAGLEV, XLB_PORTS, XLB_REVNAT, XLB_SRC_RANGES, XLB_SVC_BACKENDS, XLB_SYN_GUARD,
    },
    pod, stats, tunnel,
};

/// Refresh a flow's `last_seen_ns` at most this often, to keep hot flows from writing their
/// conntrack entry on every packet.
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let hdr = match parse::parse(data, data_end) {
        Ok(h) => h,
        Err(reason) => return pass(reason),
    };
    let cfg = config();
    let ports = port_flags(&hdr, &cfg);
    let (ours, nodeport) = port_bits(hdr.proto);
    if ports & ours == 0 {
        return pass(Reason::PassNoFrontend);
    }
    if ports & PORT_F_TUNNEL != 0 && tunnel::is_tunnel(&hdr) {
        return tunnel::decap(ctx, &hdr);
    }
    let Some(fe) = classify(&hdr, ports & nodeport != 0) else {
        return pass(Reason::PassNoFrontend);
    };
    if !admit(&hdr, &fe) {
        stats::count(Reason::DropSourceRange);
        return xdp_action::XDP_DROP;
    }
    let (backend_id, backend, new_flow, hash) = match decide(&hdr, &fe, cfg.syn_guard_rate) {
        Ok(b) => b,
        Err(reason) => {
            stats::count(reason);
            return xdp_action::XDP_DROP;
        }
    };
    let bytes = (data_end - data) as u64;
    stats::count_frontend(fe.frontend_id, bytes, new_flow);
    stats::count_backend(backend_id, bytes, new_flow);
    if backend.flags & BACKEND_F_LOCAL == 0 {
        // The outer source port carries the flow hash: the one Maglev used, else computed now.
        let hash = hash.unwrap_or_else(|| hdr.flow_hash());
        return encap::forward_remote(ctx, &hdr, hash, &backend, |leaves| {
            rewrite_dnat(ctx.data(), ctx.data_end(), &hdr, &backend, leaves)
        });
    }
    // Straight into the pod where it can (an skb past the kernel's IP stack, whatever checksum
    // state it carries going on with it), else through the kernel.
    let to = pod::target(ctx, &hdr, backend.addr, backend.port);
    if rewrite_dnat(data, data_end, &hdr, &backend, to.leaves()).is_err() {
        // Unreachable after a successful parse; counted rather than assumed.
        return pass(Reason::PassMalformed);
    }
    stats::count(Reason::FwdLocal);
    pod::deliver(ctx, to)
}

#[inline(always)]
fn pass(reason: Reason) -> u32 {
    stats::count(reason);
    xdp_action::XDP_PASS
}

/// The node-wide settings (an array read the verifier inlines).
#[inline(always)]
fn config() -> Config {
    XLB_CONFIG.get(0).copied().unwrap_or_default()
}

/// The `PORT_F_*` bits of the destination port: what the packet may be. Until user space has
/// filled `XLB_PORTS` (`ports_ready`), anything.
#[inline(always)]
fn port_flags(hdr: &Headers, cfg: &Config) -> u32 {
    if cfg.ports_ready == 0 {
        return u32::MAX;
    }
    XLB_PORTS
        .get(u16::from_be(hdr.dport) as u32)
        .copied()
        .unwrap_or(u32::MAX)
}

/// Frontend lookup: exact (dst, port, proto) first (LoadBalancer ingress IPs, externalIPs), then
/// the NodePort wildcard if a NodePort uses the port and the destination is one of this node's
/// addresses.
#[inline(always)]
fn classify(hdr: &Headers, nodeport: bool) -> Option<FrontendValue> {
    let mut key = FrontendKey {
        addr: hdr.daddr,
        port: hdr.dport,
        proto: hdr.proto,
        _pad: 0,
    };
    // SAFETY: values are plain data copied out immediately.
    if let Some(fe) = unsafe { XLB_FRONTENDS.get(&key) } {
        return Some(*fe);
    }
    if !nodeport {
        return None;
    }
    // SAFETY: as above.
    unsafe { XLB_LOCAL_ADDRS.get(&hdr.daddr) }?;
    key.addr = 0;
    // SAFETY: as above.
    unsafe { XLB_FRONTENDS.get(&key) }.copied()
}

/// `loadBalancerSourceRanges`: allowed when the frontend has none or the source matches one.
#[inline(always)]
fn admit(hdr: &Headers, fe: &FrontendValue) -> bool {
    if fe.flags & FRONTEND_F_SOURCE_RANGES == 0 {
        return true;
    }
    let key = Key::new(
        64,
        SrcRangeKey {
            service_id_be: fe.service_id.to_be(),
            addr: hdr.saddr,
        },
    );
    XLB_SRC_RANGES.get(&key).is_some()
}

/// Conntrack first (a SYN re-picks), then Maglev by the flow hash for new flows. Returns the
/// backend id, its record, whether a conntrack entry was created for it and the flow hash if
/// Maglev computed it (a conntrack hit needs none), or the drop reason.
#[inline(always)]
fn decide(
    hdr: &Headers,
    fe: &FrontendValue,
    guard_rate: u32,
) -> Result<(u32, Backend, bool, Option<u32>), Reason> {
    let key = hdr.flow_key();
    let now = unsafe { bpf_ktime_get_ns() };
    let tcp = hdr.proto == IPPROTO_TCP;
    let is_syn = tcp && hdr.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    let closes = tcp && hdr.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0;
    if !is_syn {
        if let Some(ct) = XLB_CONNTRACK.get_ptr_mut(&key) {
            // SAFETY: LRU values stay valid for the program's run; racing writers only store
            // timestamps and the closing bit.
            let backend_id = unsafe { (*ct).backend_id };
            if let Some(b) = backend(backend_id) {
                let flags = unsafe { (*ct).flags };
                if closes && flags & CT_F_CLOSING == 0 {
                    // The close timeout counts from the FIN or RST.
                    unsafe {
                        (*ct).flags = flags | CT_F_CLOSING;
                        (*ct).last_seen_ns = now;
                    }
                    stats::count(Reason::CtClosing);
                } else if now.wrapping_sub(unsafe { (*ct).last_seen_ns }) > CT_REFRESH_NS {
                    unsafe { (*ct).last_seen_ns = now };
                }
                stats::count(Reason::CtHit);
                return Ok((backend_id, b, false, None));
            }
            stats::count(Reason::CtStaleBackend);
        } else if tcp {
            stats::count(Reason::CtMissMidFlow);
        }
    }
    let (backend_id, hash) = match affinity_pick(hdr, fe, now) {
        Some(id) => (id, None),
        None => {
            let hash = hdr.flow_hash();
            (maglev_pick(hash, fe)?, Some(hash))
        }
    };
    let b = backend(backend_id).ok_or(Reason::DropNoBackend)?;
    remember_affinity(hdr, fe, backend_id, now);
    let guarded = syn_guard_engaged(guard_rate, now) && is_syn;
    let created = record_flow(&key, hdr, fe, backend_id, &b, now, guarded, closes);
    stats::count(if guarded {
        Reason::SynGuarded
    } else {
        Reason::CtNew
    });
    Ok((backend_id, b, created, hash))
}

/// Counts a new flow in this CPU's one-second window; whether the window is above the SYN
/// guard's rate (0: the guard is off).
#[inline(always)]
fn syn_guard_engaged(rate: u32, now: u64) -> bool {
    if rate == 0 {
        return false;
    }
    let Some(g) = XLB_SYN_GUARD.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU slot; only this CPU writes it while the program runs.
    unsafe {
        if now.wrapping_sub((*g).window_ns) >= SYN_GUARD_WINDOW_NS {
            (*g).window_ns = now;
            (*g).count = 0;
            (*g).engaged = 0;
        }
        if (*g).count < rate {
            (*g).count += 1;
            return false;
        }
        if (*g).engaged == 0 {
            (*g).engaged = 1;
            (*g).trips += 1;
        }
    }
    true
}

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    let b = *XLB_BACKENDS.get(id)?;
    if b.flags == 0 { None } else { Some(b) }
}

/// `sessionAffinity: ClientIP`: the backend this client's last new flow went to, if that was
/// within the timeout and the backend still takes new flows for this Service port.
#[inline(always)]
fn affinity_pick(hdr: &Headers, fe: &FrontendValue, now: u64) -> Option<u32> {
    if fe.affinity_timeout_s == 0 {
        return None;
    }
    let key = AffinityKey {
        service_id: fe.service_id,
        client_addr: hdr.saddr,
    };
    // SAFETY: copied out immediately.
    let a = unsafe { XLB_AFFINITY.get(&key) }.copied()?;
    if now.wrapping_sub(a.last_ns) > fe.affinity_timeout_s as u64 * 1_000_000_000 {
        return None;
    }
    let member = SvcBackendKey {
        service_id: fe.service_id,
        backend_id: a.backend_id,
    };
    // SAFETY: presence check only.
    unsafe { XLB_SVC_BACKENDS.get(&member) }?;
    stats::count(Reason::AffinityHit);
    Some(a.backend_id)
}

/// Records (or refreshes) the client's affinity: the timeout counts from its latest new flow.
#[inline(always)]
fn remember_affinity(hdr: &Headers, fe: &FrontendValue, backend_id: u32, now: u64) {
    if fe.affinity_timeout_s == 0 {
        return;
    }
    let key = AffinityKey {
        service_id: fe.service_id,
        client_addr: hdr.saddr,
    };
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_ns: now,
    };
    if XLB_AFFINITY.insert(&key, &value, 0).is_err() {
        stats::count(Reason::CtInsertFailed);
    }
}

/// The Service's table, read through one inner map so that its header, slots and backend
/// list are all from the same table even if user space swaps in a new one meanwhile.
#[inline(always)]
fn maglev_pick(hash: u32, fe: &FrontendValue) -> Result<u32, Reason> {
    let table = XLB_MAGLEV.get(fe.service_id).ok_or(Reason::DropNoTable)?;
    let header = *table.get(0).ok_or(Reason::DropNoTable)?;
    let (m, backends) = (header[0], header[1]);
    if m == 0 {
        return Err(Reason::DropNoTable);
    }
    let slot = hash % m;
    let base = maglev_slot_base(backends);
    let ordinal = if maglev_narrow(backends) {
        let quad = *table.get(base + (slot >> 2)).ok_or(Reason::DropNoTable)?;
        let o = (pair_u64(quad) >> ((slot & 3) * 16)) as u32 & 0xffff;
        if o == NO_BACKEND16 {
            return Err(Reason::DropNoBackend);
        }
        o
    } else {
        let pair = *table.get(base + (slot >> 1)).ok_or(Reason::DropNoTable)?;
        let o = (pair_u64(pair) >> ((slot & 1) * 32)) as u32;
        if o == NO_BACKEND {
            return Err(Reason::DropNoBackend);
        }
        o
    };
    if ordinal >= backends {
        return Err(Reason::DropNoBackend);
    }
    let ids = *table
        .get(MAGLEV_HEADER_ELEMS + (ordinal >> 1))
        .ok_or(Reason::DropNoBackend)?;
    Ok((pair_u64(ids) >> ((ordinal & 1) * 32)) as u32)
}

/// An element's two words as one number: word 0 in the low half. Halves are then selected with
/// shifts, not an index: the compiler turns an index into a pointer `or`, which the verifier
/// rejects.
#[inline(always)]
fn pair_u64(pair: [u32; 2]) -> u64 {
    pair[0] as u64 | ((pair[1] as u64) << 32)
}

/// The state the flow needs, one map write each: conntrack for the client's direction (not for
/// a SYN the guard let through: the flow's next packet records it), and the reverse NAT for the
/// replies only when the backend is on this node. A remote backend's replies never pass here:
/// its node records their rewrite when it decapsulates. Whether the conntrack entry was written.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn record_flow(
    key: &FlowKey,
    hdr: &Headers,
    fe: &FrontendValue,
    backend_id: u32,
    b: &Backend,
    now: u64,
    guarded: bool,
    closes: bool,
) -> bool {
    let mut ok = true;
    if !guarded {
        let mut ct = CtValue::new(backend_id, fe.frontend_id, now);
        if closes {
            ct.flags = CT_F_CLOSING;
        }
        ok = XLB_CONNTRACK.insert(key, &ct, 0).is_ok();
    }
    if b.flags & BACKEND_F_LOCAL != 0 {
        // The SYN-ACK leaves before the handshake completes: a guarded SYN still needs this.
        let rev = RevNatValue {
            frontend_addr: hdr.daddr,
            frontend_port: hdr.dport,
            flags: 0,
            last_ns: now,
        };
        ok &= XLB_REVNAT
            .insert(&key.reply(b.addr, b.port), &rev, 0)
            .is_ok();
    }
    if !ok {
        stats::count(Reason::CtInsertFailed);
    }
    ok && !guarded
}

/// Destination NAT to the backend: an incremental IPv4 checksum update, and the TCP/UDP checksum
/// as `checksum::after_dnat` makes it for the way the packet `leaves`.
#[inline(always)]
fn rewrite_dnat(
    data: usize,
    data_end: usize,
    hdr: &Headers,
    b: &Backend,
    leaves: Leaves,
) -> Result<(), ()> {
    let ip = data + hdr.l3_off;
    if ip + IPV4_MIN_HLEN > data_end {
        return Err(());
    }
    let csum_off = hdr.l4_csum_off();
    let dport = data + hdr.l4_off + L4_DPORT_OFF;
    if data + csum_off + 2 > data_end || dport + 2 > data_end {
        return Err(());
    }
    // SAFETY: every pointer below was bounds-checked just above.
    unsafe {
        let ip_csum = (ip + IPV4_CSUM_OFF) as *mut u16;
        *ip_csum = csum::replace4(*ip_csum, hdr.daddr, b.addr);
        core::ptr::write_unaligned((ip + IPV4_DADDR_OFF) as *mut u32, b.addr);
        let l4_csum = (data + csum_off) as *mut u16;
        let old = core::ptr::read_unaligned(l4_csum);
        // A zero UDP checksum means "none" and stays so.
        if !(hdr.proto == IPPROTO_UDP && old == 0) {
            let c = checksum::after_dnat(data, data_end, hdr, old, b.addr, b.port, leaves);
            core::ptr::write_unaligned(l4_csum, c);
        }
        core::ptr::write_unaligned(dport as *mut u16, b.port);
    }
    Ok(())
}
