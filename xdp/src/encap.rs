//! Remote backends: Geneve encapsulation to the backend's node, next hop by `bpf_fib_lookup`,
//! and the MTU guard (ICMP fragmentation-needed to the client).
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use lb_common::{
    hash::flow_hash,
    maps::{
        Backend, Config, ENCAP_OVERHEAD, FrontendOpt, GENEVE_PROTO_IPV4, GeneveHdr, IPPROTO_UDP,
        Reason, XLB_OPT_CLASS, XLB_OPT_LEN_WORDS, XLB_OPT_TYPE_FRONTEND,
    },
};
use xlb_xdp::parse::{Headers, read};

use crate::{icmp, maps::XLB_CONFIG, stats};

const AF_INET: u8 = 2;
const ETH_P_IP: u16 = 0x0800;
/// Outer Ethernet + IPv4 + UDP + Geneve + option: where the inner IPv4 packet starts.
const OUTER_LEN: usize = 14 + ENCAP_OVERHEAD as usize;

/// Everything in front of the inner packet, written in one store.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Outer {
    dmac: [u8; 6],
    smac: [u8; 6],
    ethertype: u16,
    ver_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    udp_len: u16,
    udp_check: u16,
    geneve: GeneveHdr,
    opt: FrontendOpt,
}

const _: () = assert!(core::mem::size_of::<Outer>() == OUTER_LEN);

#[inline(always)]
fn config() -> Option<Config> {
    XLB_CONFIG.get(0).copied()
}

/// What the next hop lookup said.
enum NextHop {
    /// Send with these MACs out of `ifindex`.
    Found {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// No usable next hop from XDP: let the kernel route the encapsulated packet.
    Kernel,
    /// The encapsulated packet would exceed the egress MTU (the route's MTU).
    TooBig { mtu: u16 },
}

#[inline(always)]
fn next_hop(ctx: &XdpContext, src: u32, dst: u32, outer_len: u16) -> NextHop {
    // SAFETY: an all-zero bpf_fib_lookup is a valid starting point; fields are set below.
    let mut p: FibParams = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = IPPROTO_UDP;
    p.__bindgen_anon_1.tot_len = outer_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_3.ipv4_src = src;
    p.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: the helper reads and writes only `p`, of the size we pass.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        NextHop::Found {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        }
    } else if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // SAFETY: on FRAG_NEEDED the kernel stores the MTU in this union member.
        NextHop::TooBig {
            mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        }
    } else {
        NextHop::Kernel
    }
}

/// The RFC 1071 checksum of an IPv4 header given as its ten 16-bit words (host order).
#[inline(always)]
fn ipv4_check(words: [u16; 10]) -> u16 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 10 {
        sum += words[i] as u32;
        i += 1;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Checks the MTU, applies `dnat` to the inner packet, then encapsulates it to the backend's
/// node and sends it. Counts exactly one reason.
#[inline(always)]
pub fn forward_remote(
    ctx: &XdpContext,
    hdr: &Headers,
    b: &Backend,
    dnat: impl FnOnce() -> Result<(), ()>,
) -> u32 {
    let Some(cfg) = config() else {
        return drop(Reason::DropNoNodeAddr);
    };
    if cfg.node_addr == 0 || b.node_addr == 0 {
        return drop(Reason::DropNoNodeAddr);
    }
    let outer_len = hdr.tot_len as u32 + ENCAP_OVERHEAD;
    if outer_len > 0xffff {
        return drop(Reason::DropTooBig);
    }
    let hop = next_hop(ctx, cfg.node_addr, b.node_addr, outer_len as u16);
    if let NextHop::TooBig { mtu } = hop {
        let inner_mtu = (mtu as u32).saturating_sub(ENCAP_OVERHEAD) as u16;
        return icmp::too_big(ctx, hdr, inner_mtu);
    }
    // The original MACs, for handing the packet to the kernel: it must still look addressed
    // to this host.
    let Some(eth) = read::<[u8; 12]>(ctx.data(), ctx.data_end()) else {
        return drop(Reason::EncapFailed);
    };
    if dnat().is_err() {
        return drop(Reason::EncapFailed);
    }
    let hash = flow_hash(
        u32::from_be(hdr.saddr),
        u32::from_be(hdr.daddr),
        u16::from_be(hdr.sport),
        u16::from_be(hdr.dport),
        hdr.proto,
    );
    // Grow the head so that the inner IPv4 packet starts right after the outer headers; an
    // inner VLAN tag is dropped with the inner Ethernet header.
    let delta = hdr.l3_off as i32 - OUTER_LEN as i32;
    // SAFETY: the helper only moves ctx->data; pointers are re-read after it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return drop(Reason::EncapFailed);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + OUTER_LEN > data_end {
        return drop(Reason::EncapFailed);
    }
    let (dmac, smac) = match hop {
        NextHop::Found { dmac, smac, .. } => (dmac, smac),
        _ => (
            [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]],
            [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]],
        ),
    };
    let saddr = cfg.node_addr;
    let daddr = b.node_addr;
    let tot_len = outer_len as u16;
    let check = ipv4_check([
        0x4500,
        tot_len,
        0,
        0x4000,
        (64 << 8) | IPPROTO_UDP as u16,
        0,
        (u32::from_be(saddr) >> 16) as u16,
        u32::from_be(saddr) as u16,
        (u32::from_be(daddr) >> 16) as u16,
        u32::from_be(daddr) as u16,
    ]);
    let outer = Outer {
        dmac,
        smac,
        ethertype: ETH_P_IP.to_be(),
        ver_ihl: 0x45,
        tos: 0,
        tot_len: tot_len.to_be(),
        id: 0,
        frag_off: 0x4000u16.to_be(),
        ttl: 64,
        proto: IPPROTO_UDP,
        check: check.to_be(),
        saddr,
        daddr,
        // The flow hash in the ephemeral range: receive-side scaling spreads flows over queues.
        sport: (hash as u16 | 0x8000).to_be(),
        dport: cfg.tunnel_port,
        udp_len: (tot_len - 20).to_be(),
        // Zero: no UDP checksum, which RFC 8926 allows over IPv4 (the inner packet has its own).
        udp_check: 0,
        geneve: GeneveHdr {
            ver_opt_len: 3,
            flags: 0,
            proto: GENEVE_PROTO_IPV4.to_be(),
            vni_rsvd: [0; 4],
        },
        opt: FrontendOpt {
            class: XLB_OPT_CLASS.to_be(),
            opt_type: XLB_OPT_TYPE_FRONTEND,
            len: XLB_OPT_LEN_WORDS,
            addr: hdr.daddr,
            port: hdr.dport,
            proto: hdr.proto,
            _pad: 0,
        },
    };
    // SAFETY: OUTER_LEN bytes at data were bounds-checked above.
    unsafe { core::ptr::write_unaligned(data as *mut Outer, outer) };
    match hop {
        NextHop::Found { ifindex, .. } if ifindex == ctx.ingress_ifindex() as u32 => {
            stats::count(Reason::FwdEncapTx);
            xdp_action::XDP_TX
        }
        NextHop::Found { ifindex, .. } => {
            stats::count(Reason::FwdEncapRedirect);
            // SAFETY: plain helper call.
            unsafe { bpf_redirect(ifindex, 0) as u32 }
        }
        _ => {
            stats::count(Reason::EncapFibPass);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn drop(reason: Reason) -> u32 {
    stats::count(reason);
    xdp_action::XDP_DROP
}
