//! Sending a frame the XDP program built out of an interface, by a way that interface's driver
//! delivers (user space probes each interface at attach and writes `XLB_IFACES`):
//! * `XDP_TX` / `bpf_redirect` where the driver transmits XDP frames, or where the program runs
//!   in generic mode (its actions then send skbs);
//! * otherwise (a veth whose peer has no NAPI, a driver without `ndo_xdp_xmit`) `XDP_PASS` with
//!   [`XdpMeta`] in front of the frame; the TC ingress program (`redirect.rs`) sees it first
//!   and redirects the skb out of the interface.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_redirect, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use lb_common::maps::{EGRESS_TC_REDIRECT, Reason, XDP_META_MAGIC, XDP_MODE_GENERIC, XdpMeta};

use crate::{checksum::Leaves, maps::XLB_IFACES, stats};

/// How a frame for one egress interface is sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// `XDP_TX` or redirect, leaving as an XDP frame.
    Frame,
    /// `XDP_TX` or redirect from a program in generic mode: sent as the skb it is.
    GenericSkb,
    /// Passed with metadata; the TC ingress program redirects the skb.
    Tc,
}

impl Way {
    /// What the checksum of a packet sent this way must be ready for.
    #[inline(always)]
    pub fn leaves(self) -> Leaves {
        if self == Way::Frame {
            Leaves::Frame
        } else {
            Leaves::Skb
        }
    }
}

/// The way frames received on this program's interface go out of `egress`. Interfaces without
/// an entry are taken as native and transmitting XDP frames.
#[inline(always)]
pub fn way(ctx: &XdpContext, egress: u32) -> Way {
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: copied out immediately.
    if let Some(i) = unsafe { XLB_IFACES.get(&ingress) } {
        if i.xdp_mode == XDP_MODE_GENERIC {
            return Way::GenericSkb;
        }
    }
    // SAFETY: as above.
    match unsafe { XLB_IFACES.get(&egress) } {
        Some(e) if e.path == EGRESS_TC_REDIRECT => Way::Tc,
        _ => Way::Frame,
    }
}

/// Sends the frame out of `egress` the way chosen, counting `sent` (the caller's reason for a
/// frame that leaves). A frame for the TC path that cannot carry its metadata is given to the
/// kernel to route instead (`fallback`, counted as `EncapFibPass`): it must then be addressed
/// to this host, which `fallback` does.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    way: Way,
    egress: u32,
    sent: Reason,
    fallback: impl FnOnce() -> bool,
) -> u32 {
    if way == Way::Tc {
        return via_tc(ctx, egress, sent, fallback);
    }
    stats::count(sent);
    if egress == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_redirect(egress, 0) as u32 }
    }
}

#[inline(always)]
fn via_tc(ctx: &XdpContext, egress: u32, sent: Reason, fallback: impl FnOnce() -> bool) -> u32 {
    let len = core::mem::size_of::<XdpMeta>();
    // SAFETY: the helper only moves ctx->data_meta; pointers are re-read after it.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(len as i32)) } == 0 {
        let (meta, data) = (ctx.metadata(), ctx.data());
        if meta + len <= data {
            let m = XdpMeta {
                magic: XDP_META_MAGIC,
                ifindex: egress,
            };
            // SAFETY: len bytes at meta were bounds-checked against data just above.
            unsafe { core::ptr::write_unaligned(meta as *mut XdpMeta, m) };
            stats::count(sent);
            return xdp_action::XDP_PASS;
        }
    }
    if !fallback() {
        stats::count(Reason::EncapFailed);
        return xdp_action::XDP_DROP;
    }
    stats::count(Reason::EncapFibPass);
    xdp_action::XDP_PASS
}
