//! Delivery to a pod on this node, after the local DNAT or the decapsulation, past the kernel's
//! IP stack (no routing decision, no netfilter, no forwarding):
//!
//! 1. *Where*: `bpf_fib_lookup` for the pod's address gives the interface the node routes it
//!    through (CNIs route each pod's /32 to its host-side veth) and the MACs from the neighbour
//!    table. `XLB_POD_IFACES` says whether that interface is a pod's host-side veth (its peer in
//!    another namespace) and how to deliver into it.
//! 2. *How*: the TTL is decremented (the pod is a hop away, as when the kernel routes), the MACs
//!    become the host veth's and the pod's, and [`XdpMeta`] in front of the frame asks the TC
//!    ingress program (`redirect.rs`) to `bpf_redirect_peer` the skb into the pod (or, for the
//!    other `DELIVER_*` candidates, to redirect it out of the host veth); `DELIVER_XDP`
//!    redirects the XDP frame itself.
//! 3. Anything else goes to the kernel as before, counted by why (`deliver_kernel_*`).
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use lb_common::maps::{
    DELIVER_NEIGH, DELIVER_PEER, DELIVER_XDP, Reason, XDP_META_MAGIC, XDP_META_NEIGH,
    XDP_META_PEER, XdpMeta,
};
use xlb_xdp::net::{ETH_HLEN, IPV4_CSUM_OFF, IPV4_MIN_HLEN};
use xlb_xdp::parse::Headers;

use crate::{
    checksum::Leaves,
    maps::{XLB_POD_IFACES, fib_params},
    stats,
};

const AF_INET: u8 = 2;
/// Offset of the TTL in the IPv4 header.
const IPV4_TTL_OFF: usize = 8;

/// Where a packet for a local pod goes.
#[derive(Clone, Copy)]
pub enum Target {
    /// Straight into the pod behind host-side veth `ifindex`, the way `how` (`DELIVER_*`) says.
    Pod {
        ifindex: u32,
        how: u8,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Through the kernel's stack, for the reason counted.
    Kernel(Reason),
}

impl Target {
    /// What the L4 checksum must be ready for: only an XDP frame redirected as such carries no
    /// checksum state.
    #[inline(always)]
    pub fn leaves(&self) -> Leaves {
        match self {
            Target::Pod { how, .. } if *how == DELIVER_XDP => Leaves::Frame,
            _ => Leaves::Skb,
        }
    }
}

/// The pod target of a packet `hdr` (as received) whose destination becomes `(pod, port)`.
#[inline(always)]
pub fn target(ctx: &XdpContext, hdr: &Headers, pod: u32, port: u16) -> Target {
    // A VLAN tag would go into the pod with the frame; the kernel strips it on its way.
    if hdr.l3_off != ETH_HLEN {
        return Target::Kernel(Reason::DeliverKernelOther);
    }
    lookup(ctx, hdr, pod, port)
}

/// The pod target of the inner packet `inner` of a tunnel packet, which the strip puts right
/// after an Ethernet header. Its checksum is the edge's: a `DELIVER_XDP` frame carries it as
/// the edge made it.
#[inline(always)]
pub fn target_decap(ctx: &XdpContext, inner: &Headers) -> Target {
    lookup(ctx, inner, inner.daddr, inner.dport)
}

#[inline(always)]
fn lookup(ctx: &XdpContext, hdr: &Headers, pod: u32, port: u16) -> Target {
    // In the per-CPU scratch map: on the stack it would not fit beside the rest of the walk.
    let Some(p) = fib_params() else {
        return Target::Kernel(Reason::DeliverKernelOther);
    };
    p.family = AF_INET;
    p.l4_protocol = hdr.proto;
    p.sport = hdr.sport;
    p.dport = port;
    p.__bindgen_anon_1.tot_len = hdr.tot_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    p.__bindgen_anon_3.ipv4_src = hdr.saddr;
    p.__bindgen_anon_4.ipv4_dst = pod;
    // SAFETY: the helper reads and writes only `p`, of the size we pass.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx.cast(),
            &mut *p,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Target::Kernel(Reason::DeliverKernelNoNeigh);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        // FRAG_NEEDED included: the kernel answers what exceeds the pod link's MTU.
        return Target::Kernel(if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
            Reason::DeliverKernelOther
        } else {
            Reason::DeliverKernelNoRoute
        });
    }
    let ifindex = p.ifindex;
    // SAFETY: copied out immediately.
    let Some(how) = (unsafe { XLB_POD_IFACES.get(&ifindex) }).map(|e| e.how) else {
        return Target::Kernel(Reason::DeliverKernelNotPod);
    };
    if how == DELIVER_XDP && !crate::checksum::completable(hdr) {
        return Target::Kernel(Reason::DeliverKernelOther);
    }
    Target::Pod {
        ifindex,
        how,
        smac: p.smac,
        dmac: p.dmac,
    }
}

/// Sends the rewritten packet (Ethernet, then IPv4 at `ETH_HLEN`) to `to`; counts
/// `deliver_pod` or the fallback's reason (the caller counts its own exit reason).
#[inline(always)]
pub fn deliver(ctx: &XdpContext, to: Target) -> u32 {
    let (ifindex, how, smac, dmac) = match to {
        Target::Pod {
            ifindex,
            how,
            smac,
            dmac,
        } => (ifindex, how, smac, dmac),
        Target::Kernel(reason) => return kernel(reason),
    };
    let magic = match how {
        DELIVER_PEER => XDP_META_PEER,
        DELIVER_NEIGH => XDP_META_NEIGH,
        DELIVER_XDP => 0,
        _ => XDP_META_MAGIC,
    };
    let (data, data_end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + IPV4_MIN_HLEN > data_end {
        // Unreachable after a successful parse; counted rather than assumed.
        return kernel(Reason::DeliverKernelOther);
    }
    // SAFETY: bounds-checked above.
    if unsafe { *((data + ETH_HLEN + IPV4_TTL_OFF) as *const u8) } <= 1 {
        // The kernel sends the time-exceeded.
        return kernel(Reason::DeliverKernelOther);
    }
    // The metadata before any rewrite: without it the frame must reach the kernel as it came
    // (addressed to this host).
    if magic != 0 && !put_meta(ctx, magic, ifindex) {
        return kernel(Reason::DeliverKernelOther);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let ip = data + ETH_HLEN;
    if ip + IPV4_MIN_HLEN > data_end {
        // As above; the metadata goes again so that nothing redirects the frame.
        // SAFETY: the helper only moves ctx->data_meta.
        unsafe { bpf_xdp_adjust_meta(ctx.ctx, core::mem::size_of::<XdpMeta>() as i32) };
        return kernel(Reason::DeliverKernelOther);
    }
    // SAFETY: the IPv4 header and the Ethernet header in front of it were bounds-checked above.
    unsafe {
        let ttl = (ip + IPV4_TTL_OFF) as *mut u8;
        *ttl = (*ttl).wrapping_sub(1);
        // RFC 1141: the TTL is the high byte of its 16-bit word.
        let c = (ip + IPV4_CSUM_OFF) as *mut u16;
        let sum = u16::from_be(core::ptr::read_unaligned(c)) as u32 + 0x0100;
        let folded = (sum & 0xffff) + (sum >> 16);
        core::ptr::write_unaligned(c, (folded as u16).to_be());
        core::ptr::write_unaligned(data as *mut [u8; 6], dmac);
        core::ptr::write_unaligned((data + 6) as *mut [u8; 6], smac);
    }
    stats::count(Reason::DeliverPod);
    if magic == 0 {
        // SAFETY: plain helper call.
        return unsafe { bpf_redirect(ifindex, 0) as u32 };
    }
    xdp_action::XDP_PASS
}

#[inline(always)]
fn kernel(reason: Reason) -> u32 {
    stats::count(reason);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn put_meta(ctx: &XdpContext, magic: u32, ifindex: u32) -> bool {
    let len = core::mem::size_of::<XdpMeta>();
    // SAFETY: the helper only moves ctx->data_meta; pointers are re-read after it.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(len as i32)) } != 0 {
        return false;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + len > data {
        return false;
    }
    // SAFETY: len bytes at meta were bounds-checked against data just above.
    unsafe { core::ptr::write_unaligned(meta as *mut XdpMeta, XdpMeta { magic, ifindex }) };
    true
}
