//! The hashes every node must compute identically.
//!
//! All inputs are taken in *host* order as numbers: an IPv4 address is
//! `u32::from_be_bytes(octets)` (so 198.18.0.1 is `0xC612_0001`), a port is its numeric value.
//! The kernel converts from network byte order before hashing. Outputs are identical on every
//! architecture because only wrapping integer arithmetic on fixed-width values is used.
//!
//! The mixing function is the 64-bit finaliser of MurmurHash3 (`fmix64`): a handful of
//! multiplies and shifts, cheap for the BPF verifier (no loops, no tables) and with full
//! avalanche, which is all a load balancer needs from it. Seeds are fixed constants; changing any
//! of them changes every Maglev table and every flow's backend, so they are part of the wire
//! contract between nodes and must never change within a major version.

/// Seed mixed into the flow hash.
pub const FLOW_SEED: u64 = 0x7862_6c66_6c6f_7731; // "xblflow1"
/// Seed for a backend's Maglev offset.
pub const MAGLEV_OFFSET_SEED: u64 = 0x7862_6c6f_6666_7331; // "xbloffs1"
/// Seed for a backend's Maglev skip.
pub const MAGLEV_SKIP_SEED: u64 = 0x7862_6c73_6b69_7031; // "xblskip1"

/// MurmurHash3's 64-bit finaliser.
#[inline(always)]
pub const fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// 32-bit hash of a flow's 5-tuple as the client sent it (destination = the frontend).
///
/// `table[flow_hash(..) % M]` picks the flow's backend; the same value is the outer UDP source
/// port (low 16 bits) when the flow is encapsulated.
#[inline(always)]
pub const fn flow_hash(
    src_addr: u32,
    dst_addr: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let addrs = ((src_addr as u64) << 32) | dst_addr as u64;
    let ports = ((src_port as u64) << 48) | ((dst_port as u64) << 32) | proto as u64;
    let h = fmix64(fmix64(addrs ^ FLOW_SEED) ^ ports);
    (h >> 32) as u32 ^ h as u32
}

/// The 64-bit identity of a backend for Maglev: address in the high 32 bits, port below it.
#[inline(always)]
pub const fn backend_key(addr: u32, port: u16) -> u64 {
    ((addr as u64) << 16) | port as u64
}

/// A backend's Maglev `(offset, skip)` for a table of prime size `m` (`m >= 2`).
///
/// offset = fmix64(key ^ OFFSET_SEED) mod m, skip = fmix64(key ^ SKIP_SEED) mod (m - 1) + 1,
/// exactly as in the Maglev paper with our two hash functions.
#[inline]
pub const fn maglev_offset_skip(addr: u32, port: u16, m: u32) -> (u32, u32) {
    let key = backend_key(addr, port);
    let m = m as u64;
    let offset = fmix64(key ^ MAGLEV_OFFSET_SEED) % m;
    let skip = fmix64(key ^ MAGLEV_SKIP_SEED) % (m - 1) + 1;
    (offset as u32, skip as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden vectors: these numbers are the contract between nodes of different builds.
    #[test]
    fn flow_hash_golden() {
        let client = u32::from_be_bytes([198, 18, 0, 10]);
        let vip = u32::from_be_bytes([198, 19, 255, 1]);
        assert_eq!(flow_hash(client, vip, 40000, 80, 6), GOLDEN_FLOW[0]);
        assert_eq!(flow_hash(client, vip, 40001, 80, 6), GOLDEN_FLOW[1]);
        assert_eq!(flow_hash(client, vip, 40000, 80, 17), GOLDEN_FLOW[2]);
        assert_eq!(flow_hash(0, 0, 0, 0, 0), GOLDEN_FLOW[3]);
    }

    const GOLDEN_FLOW: [u32; 4] = [0x754e_0eb0, 0xad26_6908, 0x7715_1fcb, 0x33a4_461c];

    #[test]
    fn maglev_offset_skip_golden() {
        let b1 = u32::from_be_bytes([198, 18, 1, 1]);
        let b2 = u32::from_be_bytes([198, 18, 1, 2]);
        assert_eq!(backend_key(b1, 8080), 0xC612_0101_1F90);
        assert_eq!(maglev_offset_skip(b1, 8080, 7), (5, 2));
        assert_eq!(maglev_offset_skip(b1, 8080, 16381), (341, 608));
        assert_eq!(maglev_offset_skip(b1, 8080, 65537), (48344, 59496));
        assert_eq!(maglev_offset_skip(b2, 8443, 16381), (5973, 10599));
        assert_eq!(maglev_offset_skip(0, 0, 131071), (62970, 13173));
        assert_eq!(
            maglev_offset_skip(u32::MAX, u16::MAX, 131071),
            (18237, 102794)
        );
    }

    #[test]
    fn fmix64_golden() {
        // Reference values of MurmurHash3 fmix64.
        assert_eq!(fmix64(0), 0);
        assert_eq!(fmix64(1), 0xb456_bcfc_34c2_cb2c);
    }

    #[test]
    fn offset_skip_in_range() {
        for m in [7u32, 251, 16381, 65537, 131071] {
            for a in 0..200u32 {
                let (o, s) = maglev_offset_skip(0xC612_0000 + a, 8080, m);
                assert!(o < m);
                assert!(s >= 1 && s < m);
            }
        }
    }
}
