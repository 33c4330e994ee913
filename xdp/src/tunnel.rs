//! The backend-node side of direct server return: Geneve packets from a known node, addressed to
//! this node's tunnel port, are stripped to their inner packet, which the kernel delivers to
//! the pod; the reply's rewrite is recorded for TC egress.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::maps::{
    FlowKey, FrontendOpt, GENEVE_PROTO_IPV4, GeneveHdr, IPPROTO_UDP, Reason, RevNatValue,
    XLB_OPT_CLASS, XLB_OPT_LEN_WORDS, XLB_OPT_TYPE_FRONTEND,
};
use xlb_xdp::parse::{self, Headers, read};

use crate::{
    maps::{XLB_CONFIG, XLB_LOCAL_ADDRS, XLB_NODES, XLB_REVNAT},
    stats,
};

const ETH_P_IP: u16 = 0x0800;
const UDP_HLEN: usize = 8;
const GENEVE_HLEN: usize = 8;
const OPT_LEN: usize = 12;

/// A UDP packet to this node's tunnel port: ours to decapsulate or drop.
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
pub fn decap(ctx: &XdpContext, outer: &Headers) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let gnv_off = outer.l4_off + UDP_HLEN;
    let Some(gnv) = read::<GeneveHdr>(data + gnv_off, data_end) else {
        return drop(Reason::DropTunnelMalformed);
    };
    let Some(opt) = read::<FrontendOpt>(data + gnv_off + GENEVE_HLEN, data_end) else {
        return drop(Reason::DropTunnelMalformed);
    };
    // Version 0, exactly our one option, an IPv4 payload.
    if gnv.ver_opt_len != (OPT_LEN / 4) as u8
        || u16::from_be(gnv.proto) != GENEVE_PROTO_IPV4
        || u16::from_be(opt.class) != XLB_OPT_CLASS
        || opt.opt_type & 0x7f != XLB_OPT_TYPE_FRONTEND
        || opt.len & 0x1f != XLB_OPT_LEN_WORDS
    {
        return drop(Reason::DropTunnelMalformed);
    }
    // SAFETY: presence check only.
    if unsafe { XLB_NODES.get(&outer.saddr) }.is_none() {
        return drop(Reason::DropTunnelUnknownNode);
    }
    let inner_off = gnv_off + GENEVE_HLEN + OPT_LEN;
    let inner = match parse::parse_ipv4(data, data_end, inner_off, data_end - data) {
        Ok(h) => h,
        Err(_) => return drop(Reason::DropTunnelMalformed),
    };
    let reply = FlowKey {
        src_addr: inner.daddr,
        dst_addr: inner.saddr,
        src_port: inner.dport,
        dst_port: inner.sport,
        proto: inner.proto,
        _pad: [0; 3],
    };
    let rev = RevNatValue {
        frontend_addr: opt.addr,
        frontend_port: opt.port,
        _pad: 0,
    };
    // Most packets belong to flows already recorded: a lookup is far cheaper than rewriting the
    // LRU entry on every packet.
    // SAFETY: copied out immediately.
    let known = unsafe { XLB_REVNAT.get(&reply) }.copied();
    if known != Some(rev) && XLB_REVNAT.insert(&reply, &rev, 0).is_err() {
        stats::count(Reason::CtInsertFailed);
    }
    let Some(macs) = read::<[u8; 12]>(data, data_end) else {
        return drop(Reason::DropTunnelMalformed);
    };
    // Strip everything up to the inner packet, keeping room for an Ethernet header.
    let delta = (inner_off - 14) as i32;
    // SAFETY: the helper only moves ctx->data; pointers are re-read after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return drop(Reason::EncapFailed);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + 14 > data_end {
        return drop(Reason::EncapFailed);
    }
    let mut eth = [0u8; 14];
    eth[..12].copy_from_slice(&macs);
    eth[12..].copy_from_slice(&ETH_P_IP.to_be_bytes());
    // SAFETY: 14 bytes at data were bounds-checked above.
    unsafe { core::ptr::write_unaligned(data as *mut [u8; 14], eth) };
    stats::count(Reason::Decap);
    xdp_action::XDP_PASS
}
