//! Remote backends: Geneve encapsulation to the backend's node, and the MTU guard (ICMP
//! fragmentation-needed to the client).
//!
//! Two ways to the node, one result on the wire:
//! * prepared: user space keeps the node's outer headers and egress interface in
//!   `XLB_NODE_HOPS` while its next hop is valid; the program copies them and patches the
//!   lengths, the IPv4 checksum (from the prepared partial sum), the entropy port and the
//!   frontend. No lookup, no header build.
//! * looked up (no valid prepared hop, or too big for its MTU): `bpf_fib_lookup`, and the
//!   kernel when that finds no neighbour yet, which makes it resolve one.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    programs::XdpContext,
};
use lb_common::encap::{
    IP_CHECK_OFF, IP_TOT_LEN_OFF, OPT_DATA_OFF, UDP_LEN_OFF, UDP_SPORT_OFF, outer_ip_check,
};
use lb_common::maps::{
    Backend, Config, ENCAP_OVERHEAD, FrontendOpt, GENEVE_PROTO_IPV4, GeneveHdr, IPPROTO_UDP,
    NodeHop, OUTER_HDR_LEN, Reason, XLB_OPT_CLASS, XLB_OPT_LEN_WORDS, XLB_OPT_TYPE_FRONTEND,
};
use xlb_xdp::net::{ETH_HLEN, ETH_P_IP, EthHdr, GENEVE_OPT_LEN, IPV4_MIN_HLEN, Ipv4Hdr, UdpHdr};
use xlb_xdp::parse::{Headers, read};

use crate::{
    checksum::{self, Leaves},
    deliver::{self, Way},
    icmp,
    maps::{XLB_CONFIG, XLB_NODE_HOPS, fib_params},
    stats,
};

const AF_INET: u8 = 2;
/// Outer Ethernet + IPv4 + UDP + Geneve + option: where the inner IPv4 packet starts.
const OUTER_LEN: usize = ETH_HLEN + ENCAP_OVERHEAD as usize;

/// Everything in front of the inner packet, written in one store.
#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Outer {
    eth: EthHdr,
    ip: Ipv4Hdr,
    udp: UdpHdr,
    geneve: GeneveHdr,
    opt: FrontendOpt,
}

const _: () = assert!(core::mem::size_of::<Outer>() == OUTER_LEN);
const _: () = assert!(OUTER_HDR_LEN == OUTER_LEN);

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
    // In the per-CPU scratch map: on the stack it would not fit beside the rest of the walk.
    let Some(p) = fib_params() else {
        return NextHop::Kernel;
    };
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
            &mut *p,
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

/// How the packet gets to the backend's node.
enum Route<'a> {
    /// By the node's prepared outer headers.
    Prepared(&'a NodeHop),
    /// By the FIB's next hop: send out of `ifindex` with these MACs, from `src`.
    Found {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
        cfg: Config,
    },
    /// No next hop from XDP: the kernel routes the encapsulated packet (and resolves a missing
    /// neighbour).
    Kernel { cfg: Config },
}

/// Encapsulates the packet to the backend's node, by its prepared outer headers where they
/// are valid, else by a next-hop lookup; checks the MTU; applies `dnat` to the inner packet
/// (told how the packet will leave, for its checksum); sends it the way the egress interface
/// delivers. Counts exactly one exit reason.
#[inline(always)]
pub fn forward_remote(
    ctx: &XdpContext,
    hdr: &Headers,
    hash: u32,
    b: &Backend,
    dnat: impl FnOnce(Leaves) -> Result<(), ()>,
) -> u32 {
    let outer_len = hdr.tot_len as u32 + ENCAP_OVERHEAD;
    if outer_len > 0xffff {
        return drop(Reason::DropTooBig);
    }
    let tot_len = outer_len as u16;
    // SAFETY: a map value stays valid while the program runs; user space replaces an entry
    // whole (a hash map update swaps in a new element), so it is never seen half written.
    let route = match unsafe { XLB_NODE_HOPS.get(&b.node_addr) } {
        Some(hop) if outer_len <= hop.mtu => Route::Prepared(hop),
        _ => {
            stats::count(Reason::EncapHopFallback);
            let Some(cfg) = config() else {
                return drop(Reason::DropNoNodeAddr);
            };
            if cfg.node_addr == 0 || b.node_addr == 0 {
                return drop(Reason::DropNoNodeAddr);
            }
            match next_hop(ctx, cfg.node_addr, b.node_addr, tot_len) {
                NextHop::TooBig { mtu } => {
                    let inner_mtu = (mtu as u32).saturating_sub(ENCAP_OVERHEAD) as u16;
                    return icmp::too_big(ctx, hdr, inner_mtu);
                }
                NextHop::Found {
                    ifindex,
                    smac,
                    dmac,
                } => Route::Found {
                    ifindex,
                    smac,
                    dmac,
                    cfg,
                },
                NextHop::Kernel => Route::Kernel { cfg },
            }
        }
    };
    // The original MACs, for handing the packet to the kernel: it must still look addressed
    // to this host.
    let Some(eth) = read::<EthHdr>(ctx.data(), ctx.data_end()) else {
        return drop(Reason::EncapFailed);
    };
    let ifindex = match &route {
        Route::Prepared(hop) => Some(hop.ifindex),
        Route::Found { ifindex, .. } => Some(*ifindex),
        Route::Kernel { .. } => None,
    };
    let way = match ifindex {
        Some(i) => match deliver::way(ctx, i) {
            // A segment too long to complete its checksum stays an skb.
            Way::Frame if !checksum::completable(hdr) => Way::Tc,
            w => w,
        },
        // The kernel routes it: an skb.
        None => Way::GenericSkb,
    };
    if dnat(way.leaves()).is_err() {
        return drop(Reason::EncapFailed);
    }
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
    let (dmac, smac, cfg) = match route {
        Route::Prepared(hop) => {
            if !copy_prepared(ctx, hop, hdr, hash, tot_len) {
                return drop(Reason::EncapFailed);
            }
            stats::count(Reason::EncapPrepared);
            let i = hop.ifindex;
            return deliver::send(ctx, way, i, sent(ctx, way, i), || to_this_host(ctx, &eth));
        }
        Route::Found {
            dmac, smac, cfg, ..
        } => (dmac, smac, cfg),
        Route::Kernel { cfg } => (eth.dst, eth.src, cfg),
    };
    // SAFETY: as above.
    unsafe { build(data, hdr, hash, b, &cfg, dmac, smac, tot_len) };
    let Some(ifindex) = ifindex else {
        stats::count(Reason::EncapFibPass);
        return xdp_action::XDP_PASS;
    };
    deliver::send(ctx, way, ifindex, sent(ctx, way, ifindex), || {
        to_this_host(ctx, &eth)
    })
}

/// Copies the node's prepared outer headers to the front of the packet and patches what
/// differs per packet: the lengths, the IPv4 checksum (from the prepared partial sum), the
/// entropy port, the frontend. Whether it could. The copy is one `bpf_xdp_store_bytes`: the
/// kernel's memcpy, where the program itself, which cannot know the packet's alignment, would
/// store byte by byte.
#[inline(always)]
fn copy_prepared(ctx: &XdpContext, hop: &NodeHop, hdr: &Headers, hash: u32, tot_len: u16) -> bool {
    // SAFETY: the helper reads OUTER_LEN bytes of the map value (it holds 64) and writes them
    // within the packet, which it checks itself.
    let rc = unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            0,
            hop.hdr.as_ptr() as *mut aya_ebpf::cty::c_void,
            OUTER_LEN as u32,
        )
    };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if rc != 0 || data + OUTER_LEN > data_end {
        return false;
    }
    let d = data as *mut u8;
    let tot_len_raw = tot_len.to_be();
    // SAFETY: OUTER_LEN bytes at d were bounds-checked just above.
    unsafe {
        put(d, IP_TOT_LEN_OFF, tot_len_raw);
        put(d, IP_CHECK_OFF, outer_ip_check(hop.ip_sum, tot_len_raw));
        // The flow hash in the ephemeral range: receive-side scaling spreads flows over queues.
        put(d, UDP_SPORT_OFF, (hash as u16 | 0x8000).to_be());
        put(d, UDP_LEN_OFF, (tot_len - IPV4_MIN_HLEN as u16).to_be());
        put(d, OPT_DATA_OFF, hdr.daddr);
        put(d, OPT_DATA_OFF + 4, hdr.dport);
        put(d, OPT_DATA_OFF + 6, hdr.proto);
    }
    true
}

/// Stores `v` at `off` bytes into the packet at `d`.
///
/// # Safety
/// `off + size_of::<T>()` bytes at `d` must be within the packet (bounds-checked).
#[inline(always)]
unsafe fn put<T>(d: *mut u8, off: usize, v: T) {
    // SAFETY: the caller's bounds check.
    unsafe { core::ptr::write_unaligned(d.add(off).cast::<T>(), v) };
}

/// Builds the outer headers at `data` from the lookup's MACs, header by header: a whole
/// `Outer` value would be assembled on the stack first, which the walk has no room for.
///
/// # Safety
/// `OUTER_LEN` bytes at `data` must be within the packet (bounds-checked).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn build(
    data: usize,
    hdr: &Headers,
    hash: u32,
    b: &Backend,
    cfg: &Config,
    dmac: [u8; 6],
    smac: [u8; 6],
    tot_len: u16,
) {
    let o = data as *mut Outer;
    // SAFETY: the caller's bounds check; every field lies within the `Outer` at `data`.
    unsafe {
        core::ptr::addr_of_mut!((*o).eth).write_unaligned(EthHdr {
            dst: dmac,
            src: smac,
            ethertype: ETH_P_IP.to_be(),
        });
        core::ptr::addr_of_mut!((*o).ip).write_unaligned(Ipv4Hdr::new(
            cfg.node_addr,
            b.node_addr,
            IPPROTO_UDP,
            tot_len,
            true,
        ));
        core::ptr::addr_of_mut!((*o).udp).write_unaligned(UdpHdr {
            // The flow hash in the ephemeral range: receive-side scaling spreads flows over
            // queues.
            sport: (hash as u16 | 0x8000).to_be(),
            dport: cfg.tunnel_port,
            len: (tot_len - IPV4_MIN_HLEN as u16).to_be(),
            // Zero: no UDP checksum, which RFC 8926 allows over IPv4 (the inner packet has its
            // own).
            check: 0,
        });
        core::ptr::addr_of_mut!((*o).geneve).write_unaligned(GeneveHdr {
            ver_opt_len: (GENEVE_OPT_LEN / 4) as u8,
            flags: 0,
            proto: GENEVE_PROTO_IPV4.to_be(),
            vni_rsvd: [0; 4],
        });
        core::ptr::addr_of_mut!((*o).opt).write_unaligned(FrontendOpt {
            class: XLB_OPT_CLASS.to_be(),
            opt_type: XLB_OPT_TYPE_FRONTEND,
            len: XLB_OPT_LEN_WORDS,
            addr: hdr.daddr,
            port: hdr.dport,
            proto: hdr.proto,
            _pad: 0,
        });
    }
}

/// The reason of an encapsulated frame that leaves by `way` out of `ifindex`.
#[inline(always)]
fn sent(ctx: &XdpContext, way: Way, ifindex: u32) -> Reason {
    if way == Way::Tc {
        Reason::FwdEncapSkb
    } else if ifindex == ctx.ingress_ifindex() as u32 {
        Reason::FwdEncapTx
    } else {
        Reason::FwdEncapRedirect
    }
}

/// Readdresses the outer Ethernet header to this host (as it arrived), for the kernel to route
/// the encapsulated packet. Whether it could.
#[inline(always)]
fn to_this_host(ctx: &XdpContext, eth: &EthHdr) -> bool {
    let data = ctx.data();
    if data + ETH_HLEN > ctx.data_end() {
        return false;
    }
    let back = EthHdr {
        dst: eth.dst,
        src: eth.src,
        ethertype: ETH_P_IP.to_be(),
    };
    // SAFETY: ETH_HLEN bytes at data were bounds-checked just above.
    unsafe { core::ptr::write_unaligned(data as *mut EthHdr, back) };
    true
}

#[inline(always)]
fn drop(reason: Reason) -> u32 {
    stats::count(reason);
    xdp_action::XDP_DROP
}
