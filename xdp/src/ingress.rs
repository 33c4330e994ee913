//! The XDP packet walk: parse → (tunnel → decap) → classify → admit → decide → rewrite →
//! forward (local: to the kernel; remote: encapsulated to the backend's node).
use aya_ebpf::{
    bindings::xdp_action, btf_maps::lpm_trie::Key, helpers::bpf_ktime_get_ns, programs::XdpContext,
};
use lb_common::{
    hash::flow_hash,
    maps::{
        AffinityKey, AffinityValue, BACKEND_F_LOCAL, Backend, CtValue, FRONTEND_F_SOURCE_RANGES,
        FlowKey, FrontendKey, FrontendValue, IPPROTO_TCP, IPPROTO_UDP, NO_BACKEND, Reason,
        RevNatValue, SrcRangeKey, SvcBackendKey,
    },
};

use xlb_xdp::parse::{self, Headers, TCP_FLAG_ACK, TCP_FLAG_SYN};

use xlb_xdp::csum;

use crate::{
    encap,
    maps::{
        XLB_AFFINITY, XLB_BACKENDS, XLB_CONNTRACK, XLB_FRONTENDS, XLB_LOCAL_ADDRS, XLB_MAGLEV,
        XLB_REVNAT, XLB_SRC_RANGES, XLB_SVC_BACKENDS,
    },
    stats, tunnel,
};

/// Refresh a flow's `last_seen_ns` at most this often, to keep hot flows from writing their
/// conntrack entry on every packet.
const CT_REFRESH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let hdr = match parse::parse(data, data_end) {
        Ok(h) => h,
        Err(reason) => return pass(reason),
    };
    if tunnel::is_tunnel(&hdr) {
        return tunnel::decap(ctx, &hdr);
    }
    let Some(fe) = classify(&hdr) else {
        return pass(Reason::PassNoFrontend);
    };
    if !admit(&hdr, &fe) {
        stats::count(Reason::DropSourceRange);
        return xdp_action::XDP_DROP;
    }
    let (backend_id, backend, new_flow) = match decide(&hdr, &fe) {
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
        return encap::forward_remote(ctx, &hdr, &backend, || {
            rewrite_dnat(ctx.data(), ctx.data_end(), &hdr, &backend)
        });
    }
    if rewrite_dnat(data, data_end, &hdr, &backend).is_err() {
        // Unreachable after a successful parse; counted rather than assumed.
        return pass(Reason::PassMalformed);
    }
    stats::count(Reason::FwdLocal);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn pass(reason: Reason) -> u32 {
    stats::count(reason);
    xdp_action::XDP_PASS
}

/// Frontend lookup: exact (dst, port, proto) first (LoadBalancer ingress IPs, externalIPs), then
/// the NodePort wildcard if the destination is one of this node's addresses.
#[inline(always)]
fn classify(hdr: &Headers) -> Option<FrontendValue> {
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

/// Conntrack first (a SYN re-picks), then Maglev for new flows. Returns the backend id, its
/// record and whether a conntrack entry was created for it, or the drop reason.
#[inline(always)]
fn decide(hdr: &Headers, fe: &FrontendValue) -> Result<(u32, Backend, bool), Reason> {
    let key = FlowKey {
        src_addr: hdr.saddr,
        dst_addr: hdr.daddr,
        src_port: hdr.sport,
        dst_port: hdr.dport,
        proto: hdr.proto,
        _pad: [0; 3],
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let is_syn =
        hdr.proto == IPPROTO_TCP && hdr.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if !is_syn {
        if let Some(ct) = XLB_CONNTRACK.get_ptr_mut(&key) {
            // SAFETY: LRU values stay valid for the program's run; racing writers only store
            // timestamps.
            let backend_id = unsafe { (*ct).backend_id };
            if let Some(b) = backend(backend_id) {
                if now.wrapping_sub(unsafe { (*ct).last_seen_ns }) > CT_REFRESH_NS {
                    unsafe { (*ct).last_seen_ns = now };
                }
                stats::count(Reason::CtHit);
                return Ok((backend_id, b, false));
            }
            stats::count(Reason::CtStaleBackend);
        }
    }
    let backend_id = match affinity_pick(hdr, fe, now) {
        Some(id) => id,
        None => maglev_pick(hdr, fe)?,
    };
    let b = backend(backend_id).ok_or(Reason::DropNoBackend)?;
    remember_affinity(hdr, fe, backend_id, now);
    let created = record_flow(&key, hdr, fe, backend_id, &b, now);
    stats::count(Reason::CtNew);
    Ok((backend_id, b, created))
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

#[inline(always)]
fn maglev_pick(hdr: &Headers, fe: &FrontendValue) -> Result<u32, Reason> {
    if fe.table_size == 0 {
        return Err(Reason::DropNoTable);
    }
    let h = flow_hash(
        u32::from_be(hdr.saddr),
        u32::from_be(hdr.daddr),
        u16::from_be(hdr.sport),
        u16::from_be(hdr.dport),
        hdr.proto,
    );
    let slot = h % fe.table_size;
    let pair = *XLB_MAGLEV
        .get_value(fe.service_id, &(slot >> 1))
        .ok_or(Reason::DropNoTable)?;
    // Select the half with shifts, not an index: the compiler turns an index into a pointer
    // `or`, which the verifier rejects.
    let both = pair[0] as u64 | ((pair[1] as u64) << 32);
    let id = (both >> ((slot & 1) * 32)) as u32;
    if id == NO_BACKEND {
        return Err(Reason::DropNoBackend);
    }
    Ok(id)
}

/// Conntrack for the client's direction, reverse NAT for the reply's; whether both were
/// written.
#[inline(always)]
fn record_flow(
    key: &FlowKey,
    hdr: &Headers,
    fe: &FrontendValue,
    backend_id: u32,
    b: &Backend,
    now: u64,
) -> bool {
    let ct = CtValue {
        backend_id,
        frontend_id: fe.frontend_id,
        created_ns: now,
        last_seen_ns: now,
    };
    let reply = FlowKey {
        src_addr: b.addr,
        dst_addr: hdr.saddr,
        src_port: b.port,
        dst_port: hdr.sport,
        proto: hdr.proto,
        _pad: [0; 3],
    };
    let rev = RevNatValue {
        frontend_addr: hdr.daddr,
        frontend_port: hdr.dport,
        _pad: 0,
    };
    if XLB_CONNTRACK.insert(key, &ct, 0).is_err() || XLB_REVNAT.insert(&reply, &rev, 0).is_err() {
        stats::count(Reason::CtInsertFailed);
        return false;
    }
    true
}

/// Destination NAT to the backend, with incremental IPv4 and TCP/UDP checksum updates.
#[inline(always)]
fn rewrite_dnat(data: usize, data_end: usize, hdr: &Headers, b: &Backend) -> Result<(), ()> {
    let ip = data + hdr.l3_off;
    if ip + 20 > data_end {
        return Err(());
    }
    let csum_off = hdr.l4_csum_off();
    if data + csum_off + 2 > data_end || data + hdr.l4_off + 4 > data_end {
        return Err(());
    }
    // SAFETY: every pointer below was bounds-checked just above.
    unsafe {
        let ip_csum = (ip + 10) as *mut u16;
        *ip_csum = csum::replace4(*ip_csum, hdr.daddr, b.addr);
        core::ptr::write_unaligned((ip + 16) as *mut u32, b.addr);
        let l4_csum = (data + csum_off) as *mut u16;
        let old = core::ptr::read_unaligned(l4_csum);
        // A zero UDP checksum means "none" and stays so.
        if !(hdr.proto == IPPROTO_UDP && old == 0) {
            let mut c = csum::replace4(old, hdr.daddr, b.addr);
            c = csum::replace2(c, hdr.dport, b.port);
            if hdr.proto == IPPROTO_UDP && c == 0 {
                c = 0xffff;
            }
            core::ptr::write_unaligned(l4_csum, c);
        }
        core::ptr::write_unaligned((data + hdr.l4_off + 2) as *mut u16, b.port);
    }
    Ok(())
}
