//! Internet checksum arithmetic: incremental updates (RFC 1624) for the XDP programs, which have
//! no checksum helpers, and the fold the frame builders of user space share.
//!
//! Values are the raw header words as loaded from the packet (network order bytes read in host
//! order): the one's-complement sum commutes with byte swapping, so no conversion is needed.

/// A one's-complement sum folded to 16 bits (not inverted).
#[inline(always)]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum after a 32-bit field changed from `old` to `new`.
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

/// The checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
    let sum = (!check) as u64 + (!old) as u64 + new as u64;
    !fold(sum)
}
