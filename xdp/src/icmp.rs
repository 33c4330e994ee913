//! ICMP "fragmentation needed" back to the client when an encapsulated packet would not fit
//! the egress MTU: the client's path MTU discovery then sends smaller packets.
use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::maps::Reason;
use xlb_xdp::csum;
use xlb_xdp::net::{ETH_HLEN, EthHdr, IPPROTO_ICMP, IPV4_MIN_HLEN, Ipv4Hdr};
use xlb_xdp::parse::{Headers, read};

use crate::{deliver, stats};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// What the ICMP message quotes: the original IPv4 header (without options) and 8 bytes of L4.
const QUOTE_LEN: usize = IPV4_MIN_HLEN + 8;
/// IPv4 header + ICMP header + quote.
const ICMP_PKT_LEN: usize = IPV4_MIN_HLEN + 8 + QUOTE_LEN;

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct IcmpTooBig {
    ip: Ipv4Hdr,
    icmp_type: u8,
    code: u8,
    icmp_check: u16,
    unused: u16,
    mtu: u16,
    quote: [u8; QUOTE_LEN],
}

const _: () = assert!(core::mem::size_of::<IcmpTooBig>() == ICMP_PKT_LEN);

/// Turns the packet into an ICMP fragmentation-needed to its sender, from the address it was
/// sent to, advertising `mtu`, and sends it back out of the interface it came in on (`XDP_TX`,
/// or the TC path where that interface drops XDP frames).
#[inline(always)]
pub fn too_big(ctx: &XdpContext, hdr: &Headers, mtu: u16) -> u32 {
    // Without DF the sender allows fragmentation, which XDP cannot do; with IPv4 options the
    // quote would not be the header plus 8 bytes. Both are rare enough to drop and count.
    if !hdr.df || hdr.l4_off - hdr.l3_off != IPV4_MIN_HLEN {
        stats::count(Reason::DropTooBig);
        return xdp_action::XDP_DROP;
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(eth) = read::<EthHdr>(data, data_end) else {
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
    if data + ETH_HLEN > data_end || l3 + ICMP_PKT_LEN > data_end {
        stats::count(Reason::DropTooBig);
        return xdp_action::XDP_DROP;
    }
    let back = EthHdr {
        dst: eth.src,
        src: eth.dst,
        ethertype: eth.ethertype,
    };
    // SAFETY: ETH_HLEN bytes at data were bounds-checked above.
    unsafe { core::ptr::write_unaligned(data as *mut EthHdr, back) };

    let mut icmp_sum = ((ICMP_DEST_UNREACH as u32) << 8) | ICMP_FRAG_NEEDED as u32;
    icmp_sum += mtu as u32;
    let mut i = 0;
    while i < QUOTE_LEN {
        icmp_sum += u16::from_be_bytes([quote[i], quote[i + 1]]) as u32;
        i += 2;
    }
    let pkt = IcmpTooBig {
        ip: Ipv4Hdr::new(
            hdr.daddr,
            hdr.saddr,
            IPPROTO_ICMP,
            ICMP_PKT_LEN as u16,
            false,
        ),
        icmp_type: ICMP_DEST_UNREACH,
        code: ICMP_FRAG_NEEDED,
        icmp_check: (!csum::fold(icmp_sum as u64)).to_be(),
        unused: 0,
        mtu: mtu.to_be(),
        quote,
    };
    // SAFETY: ICMP_PKT_LEN bytes at l3 were bounds-checked above.
    unsafe { core::ptr::write_unaligned(l3 as *mut IcmpTooBig, pkt) };
    let ingress = ctx.ingress_ifindex() as u32;
    let way = deliver::way(ctx, ingress);
    deliver::send(ctx, way, ingress, Reason::IcmpTooBig, || {
        // For the kernel to route: addressed to this host, as the packet arrived.
        let data = ctx.data();
        if data + ETH_HLEN > ctx.data_end() {
            return false;
        }
        // SAFETY: ETH_HLEN bytes at data were bounds-checked just above.
        unsafe { core::ptr::write_unaligned(data as *mut EthHdr, eth) };
        true
    })
}
