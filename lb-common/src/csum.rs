//! Internet checksum arithmetic: incremental updates (RFC 1624) for the XDP programs, which have
//! no checksum helpers, the checksum of headers they build, and the fold the frame builders of
//! user space share.
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

/// The one's-complement sum (not folded) of the IPv4 pseudo-header of a TCP/UDP segment: raw
/// addresses, the protocol and the segment's length in bytes (host order).
#[inline(always)]
pub fn pseudo_sum(saddr: u32, daddr: u32, proto: u8, len: u16) -> u64 {
    (saddr & 0xffff) as u64
        + (saddr >> 16) as u64
        + (daddr & 0xffff) as u64
        + (daddr >> 16) as u64
        // The protocol byte and the length as they lie in memory (network order).
        + u16::from_be_bytes([0, proto]).to_be() as u64
        + len.to_be() as u64
}

/// What the L4 checksum field holds when the sender left the checksum to its device
/// (`CHECKSUM_PARTIAL`): the folded pseudo-header sum, not inverted. A full checksum holds this
/// value only by chance (about one segment in 65536).
#[inline(always)]
pub fn partial(saddr: u32, daddr: u32, proto: u8, len: u16) -> u16 {
    fold(pseudo_sum(saddr, daddr, proto, len))
}

/// `sum` with the 16-bit word `word` taken out (one's-complement subtraction).
#[inline(always)]
pub fn sub(sum: u64, word: u16) -> u64 {
    sum + (!word) as u64
}

/// The checksum (RFC 1071) of a header given as its 16-bit words in host order, with its own
/// checksum field as 0.
#[inline(always)]
pub fn of_words<const N: usize>(words: [u16; N]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < N {
        sum += words[i] as u64;
        i += 1;
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum() {
        // 192.168.0.1 → 192.168.0.199, UDP, total length 0x73, DF, TTL 64: the header's
        // checksum is 0xb861 (the worked example of the Wikipedia article on the IPv4 header
        // checksum).
        let words = [
            0x4500, 0x0073, 0x0000, 0x4000, 0x4011, 0x0000, 0xc0a8, 0x0001, 0xc0a8, 0x00c7,
        ];
        assert_eq!(of_words(words), 0xb861);
    }

    #[test]
    fn partial_is_the_folded_pseudo_header() {
        // 198.18.0.10 → 198.19.255.1, TCP, 40 bytes: 0xc612 + 0x000a + 0xc613 + 0xff01 + 6 + 40
        // = 0x28b5e → 0x8b60 in network order; the raw (memory-order) value is its byte swap.
        let raw = |a: [u8; 4]| u32::from_ne_bytes(a);
        let p = partial(raw([198, 18, 0, 10]), raw([198, 19, 255, 1]), 6, 40);
        assert_eq!(u16::from_be(p), 0x8b60);
    }

    #[test]
    fn fold_carries_twice() {
        // 0xffff + 0xffff = 0x1fffe → 0xffff; a sum whose first fold carries again.
        assert_eq!(fold(0x1fffe), 0xffff);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x0001_0000), 0x0001);
    }
}
