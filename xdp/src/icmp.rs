//! ICMP "fragmentation needed" back to the client when an encapsulated packet would not fit
//! the egress MTU: the client's path MTU discovery then sends smaller packets.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::maps::Reason;
use xlb_xdp::csum;
use xlb_xdp::parse::{Headers, read};

use crate::stats;

const IPPROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// What the ICMP message quotes: the original IPv4 header (without options) and 8 bytes of L4.
const QUOTE_LEN: usize = 28;
/// IPv4 header + ICMP header + quote.
const ICMP_PKT_LEN: usize = 20 + 8 + QUOTE_LEN;

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct IcmpTooBig {
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
    icmp_type: u8,
    code: u8,
    icmp_check: u16,
    unused: u16,
    mtu: u16,
    quote: [u8; QUOTE_LEN],
}

const _: () = assert!(core::mem::size_of::<IcmpTooBig>() == ICMP_PKT_LEN);

/// Turns the packet into an ICMP fragmentation-needed to its sender, from the address it was
/// sent to, advertising `mtu`, and sends it back out (`XDP_TX`).
#[inline(always)]
pub fn too_big(ctx: &XdpContext, hdr: &Headers, mtu: u16) -> u32 {
    // Without DF the sender allows fragmentation, which XDP cannot do; with IPv4 options the
    // quote would not be the header plus 8 bytes. Both are rare enough to drop and count.
    if !hdr.df || hdr.l4_off - hdr.l3_off != 20 {
        stats::count(Reason::DropTooBig);
        return xdp_action::XDP_DROP;
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(macs) = read::<[u8; 12]>(data, data_end) else {
        stats::count(Reason::DropTooBig);
        return xdp_action::XDP_DROP;
    };
    let Some(quote) = read::<[u8; QUOTE_LEN]>(data + hdr.l3_off, data_end) else {
        stats::count(Reason::DropTooBig);
        return xdp_action::XDP_DROP;
    };
    let new_len = hdr.l3_off + ICMP_PKT_LEN;
    let delta = new_len as i32 - (data_end - data) as i32;
    // SAFETY: the helper only moves ctx->data_end; pointers are re-read below.
    if delta > 0 || unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        stats::count(Reason::DropTooBig);
        return xdp_action::XDP_DROP;
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let l3 = data + hdr.l3_off;
    if data + 12 > data_end || l3 + ICMP_PKT_LEN > data_end {
        stats::count(Reason::DropTooBig);
        return xdp_action::XDP_DROP;
    }
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    // SAFETY: 12 bytes at data were bounds-checked above.
    unsafe { core::ptr::write_unaligned(data as *mut [u8; 12], swapped) };

    let (src, dst) = (u32::from_be(hdr.daddr), u32::from_be(hdr.saddr));
    let ip_sum = 0x4500
        + ICMP_PKT_LEN as u32
        + ((64u32 << 8) | IPPROTO_ICMP as u32)
        + (src >> 16)
        + (src & 0xffff)
        + (dst >> 16)
        + (dst & 0xffff);
    let ip_check = !csum::fold(ip_sum as u64);
    let mut icmp_sum = ((ICMP_DEST_UNREACH as u32) << 8) | ICMP_FRAG_NEEDED as u32;
    icmp_sum += mtu as u32;
    let mut i = 0;
    while i < QUOTE_LEN {
        icmp_sum += u16::from_be_bytes([quote[i], quote[i + 1]]) as u32;
        i += 2;
    }
    let pkt = IcmpTooBig {
        ver_ihl: 0x45,
        tos: 0,
        tot_len: (ICMP_PKT_LEN as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: 64,
        proto: IPPROTO_ICMP,
        check: ip_check.to_be(),
        saddr: hdr.daddr,
        daddr: hdr.saddr,
        icmp_type: ICMP_DEST_UNREACH,
        code: ICMP_FRAG_NEEDED,
        icmp_check: (!csum::fold(icmp_sum as u64)).to_be(),
        unused: 0,
        mtu: mtu.to_be(),
        quote,
    };
    // SAFETY: ICMP_PKT_LEN bytes at l3 were bounds-checked above.
    unsafe { core::ptr::write_unaligned(l3 as *mut IcmpTooBig, pkt) };
    stats::count(Reason::IcmpTooBig);
    xdp_action::XDP_TX
}
