//! Pieces shared by the benchmark programs (`xlb-gen`, `xlb-sink`, `xlb-fwd`, `xlb-restore`).
//! Not part of the datapath: `xlb-xdp` never links this.
#![allow(dead_code)]

use aya_ebpf::bindings::xdp_action;

pub const XDP_DROP: u32 = xdp_action::XDP_DROP;
pub const XDP_PASS: u32 = xdp_action::XDP_PASS;
pub const XDP_TX: u32 = xdp_action::XDP_TX;

/// Generator traffic comes from this prefix (198.18.128.0/17, network order when compared via
/// [`from_generator`]); the sink counts and drops only such packets, everything else passes.
pub const GEN_NET: u32 = 0xc612_8000;
pub const GEN_MASK: u32 = 0xffff_8000;

/// Whether a source address (network order, as read from the packet) is the generator's.
#[inline(always)]
pub fn from_generator(saddr_be: u32) -> bool {
    u32::from_be(saddr_be) & GEN_MASK == GEN_NET
}

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 update of a checksum after a 32-bit field changed (raw packet words).
#[inline(always)]
pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let not_old = !old;
    let sum = (!check) as u64
        + (not_old >> 16) as u64
        + (not_old & 0xffff) as u64
        + (new >> 16) as u64
        + (new & 0xffff) as u64;
    !fold(sum)
}

/// RFC 1624 update of a checksum after a 16-bit field changed (raw packet words).
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u64 + (!old) as u64 + new as u64;
    !fold(sum)
}
