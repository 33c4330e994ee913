//! The backend-node side of direct server return: Geneve packets carrying xlb's option, from a
//! known node, addressed to this node's tunnel port, are stripped to their inner packet, which
//! goes into the pod (`pod.rs`); the reply's rewrite is recorded for TC egress.
//!
//! The tunnel port is shared with whatever else speaks Geneve on the node (the CNI's pod
//! network uses 6081 too), so only packets whose first option is xlb's are ours: everything
//! else goes to the kernel untouched. Ours are untrusted input all the same (the outer source
//! can be forged wherever anti-spoofing is absent): the inner packet must be what a real edge
//! could have sent, and it never takes over a live flow's reply rewrite.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::maps::{
    FrontendOpt, GENEVE_PROTO_IPV4, GeneveHdr, IPPROTO_TCP, IPPROTO_UDP, LocalBackendKey,
    REVNAT_F_CLOSED, Reason, RevNatValue, XLB_OPT_CLASS, XLB_OPT_LEN_WORDS, XLB_OPT_TYPE_FRONTEND,
    flow_idle_ns,
};
use xlb_xdp::net::{
    ETH_HLEN, ETH_P_IP, EthHdr, GENEVE_HLEN, GENEVE_OPT_LEN, TCP_FLAG_ACK, TCP_FLAG_FIN,
    TCP_FLAG_RST, TCP_FLAG_SYN, UDP_HLEN,
};
use xlb_xdp::parse::{self, Headers, read};

use crate::{
    ingress::CT_REFRESH_NS,
    maps::{XLB_CONFIG, XLB_LOCAL_ADDRS, XLB_LOCAL_BACKENDS, XLB_NODES, XLB_REVNAT},
    pod, stats,
};

/// A UDP packet to this node's tunnel port: xlb's to decapsulate or drop, or another Geneve
/// user's to pass.
#[inline(always)]
pub fn is_tunnel(hdr: &Headers) -> bool {
    if hdr.proto != IPPROTO_UDP {
        return false;
    }
    let Some(cfg) = XLB_CONFIG.get(0) else {
        return false;
    };
    // SAFETY: presence check only.
    hdr.dport == cfg.tunnel_port && unsafe { XLB_LOCAL_ADDRS.get(&hdr.daddr) }.is_some()
}

#[inline(always)]
fn drop(reason: Reason) -> u32 {
    stats::count(reason);
    xdp_action::XDP_DROP
}

#[inline(always)]
fn pass_foreign() -> u32 {
    stats::count(Reason::PassTunnelForeign);
    xdp_action::XDP_PASS
}

#[inline(always)]
pub fn decap(ctx: &XdpContext, outer: &Headers) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let gnv_off = outer.l4_off + UDP_HLEN;
    let opt_off = gnv_off + GENEVE_HLEN;
    let Some(gnv) = read::<GeneveHdr>(data + gnv_off, data_end) else {
        return pass_foreign();
    };
    let Some(class) = read::<u16>(data + opt_off, data_end) else {
        return pass_foreign();
    };
    if !claims_xlb(&gnv, class) {
        return pass_foreign();
    }
    let Some(opt) = read::<FrontendOpt>(data + opt_off, data_end) else {
        return drop(Reason::DropTunnelMalformed);
    };
    if !well_formed(&gnv, &opt) {
        return drop(Reason::DropTunnelMalformed);
    }
    // SAFETY: presence check only.
    if unsafe { XLB_NODES.get(&outer.saddr) }.is_none() {
        return drop(Reason::DropTunnelUnknownNode);
    }
    let inner_off = opt_off + GENEVE_OPT_LEN;
    let inner = match parse::parse_ipv4(data, data_end, inner_off, data_end - data) {
        Ok(h) => h,
        Err(_) => return drop(Reason::DropTunnelMalformed),
    };
    if !is_local_backend(&opt, &inner) {
        return drop(Reason::DropTunnelNotBackend);
    }
    if let Err(reason) = record_reply(&opt, &inner) {
        return drop(reason);
    }
    // Where the inner packet goes is decided before the strip: its headers are parsed here.
    // It stays an skb (or a frame) with the checksum the edge gave it.
    let to = pod::target_decap(ctx, &inner);
    let action = strip(ctx, inner_off);
    if action != xdp_action::XDP_PASS {
        return action;
    }
    pod::deliver(ctx, to)
}

/// The first option (there is one when the options length is not 0) is in xlb's class. Any
/// other Geneve packet, or anything on the port that is not Geneve, belongs to someone else.
#[inline(always)]
fn claims_xlb(gnv: &GeneveHdr, class: u16) -> bool {
    gnv.ver_opt_len & 0x3f != 0 && u16::from_be(class) == XLB_OPT_CLASS
}

/// Exactly what an edge sends: version 0, our one option, an IPv4 payload.
#[inline(always)]
fn well_formed(gnv: &GeneveHdr, opt: &FrontendOpt) -> bool {
    gnv.ver_opt_len == (GENEVE_OPT_LEN / 4) as u8
        && u16::from_be(gnv.proto) == GENEVE_PROTO_IPV4
        && opt.opt_type & 0x7f == XLB_OPT_TYPE_FRONTEND
        && opt.len & 0x1f == XLB_OPT_LEN_WORDS
}

/// The inner destination is a backend on this node of the frontend the option names, with
/// that frontend's protocol: an exact frontend (VIP, external IP) first, then the NodePort,
/// which the client may have reached on any address of the edge.
#[inline(always)]
fn is_local_backend(opt: &FrontendOpt, inner: &Headers) -> bool {
    if opt.proto != inner.proto {
        return false;
    }
    let mut key = LocalBackendKey::new(opt.addr, inner.daddr, opt.port, inner.dport, inner.proto);
    // SAFETY: presence checks only.
    if unsafe { XLB_LOCAL_BACKENDS.get(&key) }.is_some() {
        return true;
    }
    key.frontend_addr = 0;
    unsafe { XLB_LOCAL_BACKENDS.get(&key) }.is_some()
}

/// Records the frontend the replies of the inner flow must come from. A reply tuple that a
/// live flow (one seen within its protocol's idle timeout) recorded for another frontend is
/// never taken over, but by a TCP SYN once that flow's connection has closed.
#[inline(always)]
fn record_reply(opt: &FrontendOpt, inner: &Headers) -> Result<(), Reason> {
    let reply = inner.flow_key().reply(inner.daddr, inner.dport);
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let closing = closes(inner);
    // Most packets belong to flows already recorded: a lookup is far cheaper than rewriting the
    // LRU entry on every packet.
    if let Some(known) = XLB_REVNAT.get_ptr_mut(&reply) {
        // SAFETY: LRU values stay valid for the program's run; racing writers only store
        // timestamps and the closed flag.
        let (addr, port, flags, last) = unsafe {
            (
                (*known).frontend_addr,
                (*known).frontend_port,
                (*known).flags,
                (*known).last_ns,
            )
        };
        let idle = now.saturating_sub(last);
        if addr == opt.addr && port == opt.port {
            // A SYN on a closed tuple opens it again.
            let want = if closing {
                REVNAT_F_CLOSED
            } else if opens(inner) {
                0
            } else {
                flags
            };
            if want != flags {
                unsafe { (*known).flags = want };
            }
            if idle > CT_REFRESH_NS {
                unsafe { (*known).last_ns = now };
            }
            return Ok(());
        }
        let reusable = flags & REVNAT_F_CLOSED != 0 && opens(inner);
        if idle <= flow_idle_ns(inner.proto) && !reusable {
            return Err(Reason::DropTunnelFlowConflict);
        }
    }
    let rev = RevNatValue {
        frontend_addr: opt.addr,
        frontend_port: opt.port,
        flags: if closing { REVNAT_F_CLOSED } else { 0 },
        last_ns: now,
    };
    if XLB_REVNAT.insert(&reply, &rev, 0).is_err() {
        stats::count(Reason::CtInsertFailed);
    }
    Ok(())
}

/// A TCP segment that ends its connection (FIN or RST).
#[inline(always)]
fn closes(inner: &Headers) -> bool {
    inner.proto == IPPROTO_TCP && inner.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0
}

/// A TCP segment that opens a connection (SYN without ACK).
#[inline(always)]
fn opens(inner: &Headers) -> bool {
    inner.proto == IPPROTO_TCP && inner.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
}

/// Strips everything up to the inner packet, keeping the outer MACs (the frame is still
/// addressed to this host), and hands it to the kernel.
#[inline(always)]
fn strip(ctx: &XdpContext, inner_off: usize) -> u32 {
    let Some(eth) = read::<EthHdr>(ctx.data(), ctx.data_end()) else {
        return drop(Reason::DropTunnelMalformed);
    };
    let delta = (inner_off - ETH_HLEN) as i32;
    // SAFETY: the helper only moves ctx->data; pointers are re-read after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return drop(Reason::EncapFailed);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > data_end {
        return drop(Reason::EncapFailed);
    }
    let eth = EthHdr {
        ethertype: ETH_P_IP.to_be(),
        ..eth
    };
    // SAFETY: ETH_HLEN bytes at data were bounds-checked above.
    unsafe { core::ptr::write_unaligned(data as *mut EthHdr, eth) };
    stats::count(Reason::Decap);
    xdp_action::XDP_PASS
}
