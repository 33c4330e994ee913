//! The outer headers of the Geneve path to a remote node, prepared once per node by user space
//! ([`prepare`]) and completed per packet by the XDP program ([`outer_ip_check`] and the
//! offsets below): what makes an encapsulation cost a copy instead of a next-hop lookup and a
//! header build.
use core::net::Ipv4Addr;

use crate::csum;
use crate::maps::{
    GENEVE_PROTO_IPV4, IPPROTO_UDP, NodeHop, XLB_OPT_CLASS, XLB_OPT_LEN_WORDS,
    XLB_OPT_TYPE_FRONTEND,
};

/// Offsets within [`NodeHop::hdr`] of the fields patched per packet.
pub const IP_OFF: usize = 14;
pub const IP_TOT_LEN_OFF: usize = IP_OFF + 2;
pub const IP_CHECK_OFF: usize = IP_OFF + 10;
pub const UDP_OFF: usize = IP_OFF + 20;
pub const UDP_SPORT_OFF: usize = UDP_OFF;
pub const UDP_LEN_OFF: usize = UDP_OFF + 4;
pub const GENEVE_OFF: usize = UDP_OFF + 8;
/// The option's data: frontend address (4), port (2), protocol (1), padding (1).
pub const OPT_DATA_OFF: usize = GENEVE_OFF + 8 + 4;

/// The TTL of the outer header.
pub const OUTER_TTL: u8 = 64;

/// What one node's outer headers are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopSpec {
    /// This node's address (the outer source) and the remote node's.
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The Geneve port (host order).
    pub port: u16,
    /// The egress interface's MAC and the next hop's (the node itself, or the route's
    /// gateway), from the neighbour table.
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub ifindex: u32,
    /// The route's MTU, else the interface's.
    pub mtu: u32,
}

/// The prepared outer headers of `s`: Ethernet, IPv4 (DF, TTL 64, id 0), UDP to the Geneve
/// port (no checksum, which RFC 8926 allows over IPv4), Geneve carrying an IPv4 payload and
/// xlb's option header. Zero: the IPv4 total length and checksum, the UDP source port and
/// length, the option's data.
pub fn prepare(s: &HopSpec) -> NodeHop {
    let mut h = [0u8; 64];
    h[0..6].copy_from_slice(&s.dst_mac);
    h[6..12].copy_from_slice(&s.src_mac);
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = IP_OFF;
    h[ip] = 0x45;
    // Don't fragment: XDP cannot fragment, so a too-big packet is answered with ICMP instead.
    h[ip + 6] = 0x40;
    h[ip + 8] = OUTER_TTL;
    h[ip + 9] = IPPROTO_UDP;
    h[ip + 12..ip + 16].copy_from_slice(&s.src.octets());
    h[ip + 16..ip + 20].copy_from_slice(&s.dst.octets());
    h[UDP_OFF + 2..UDP_OFF + 4].copy_from_slice(&s.port.to_be_bytes());
    let g = GENEVE_OFF;
    // Version 0, options length in 4-byte words (the 12-byte option).
    h[g] = 3;
    h[g + 2..g + 4].copy_from_slice(&GENEVE_PROTO_IPV4.to_be_bytes());
    h[g + 8..g + 10].copy_from_slice(&XLB_OPT_CLASS.to_be_bytes());
    h[g + 10] = XLB_OPT_TYPE_FRONTEND;
    h[g + 11] = XLB_OPT_LEN_WORDS;
    // The raw words, as the program's checksum arithmetic reads them (see `csum`); the total
    // length and the checksum are zero here, so they add nothing.
    let mut sum = 0u32;
    let mut i = ip;
    while i < ip + 20 {
        sum += u16::from_ne_bytes([h[i], h[i + 1]]) as u32;
        i += 2;
    }
    NodeHop {
        hdr: h,
        ifindex: s.ifindex,
        ip_sum: sum,
        mtu: s.mtu,
        _pad: 0,
    }
}

/// The outer IPv4 checksum (raw, as stored) for a packet of `tot_len_raw` bytes (the total
/// length field as it lies in the packet, network order read in host order).
#[inline(always)]
pub fn outer_ip_check(ip_sum: u32, tot_len_raw: u16) -> u16 {
    !csum::fold(ip_sum as u64 + tot_len_raw as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> HopSpec {
        HopSpec {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 0, 4),
            port: 6081,
            src_mac: [2, 0, 0, 0, 0, 2],
            dst_mac: [2, 0, 0, 0, 0, 4],
            ifindex: 7,
            mtu: 1500,
        }
    }

    /// The bytes, written out by hand from RFC 791, RFC 768 and RFC 8926.
    #[test]
    fn prepared_headers_are_the_wire_bytes() {
        let hop = prepare(&spec());
        #[rustfmt::skip]
        let want: [u8; 62] = [
            // Ethernet: next hop, egress interface, IPv4.
            2, 0, 0, 0, 0, 4, 2, 0, 0, 0, 0, 2, 0x08, 0x00,
            // IPv4: 0x45, tos, tot_len (per packet), id, DF, TTL 64, UDP, check (per packet).
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0,
            198, 18, 0, 2, 198, 18, 0, 4,
            // UDP: source port (per packet), 6081, length (per packet), no checksum.
            0, 0, 0x17, 0xc1, 0, 0, 0, 0,
            // Geneve: 3 words of options, no flags, IPv4 payload, VNI 0.
            3, 0, 0x08, 0x00, 0, 0, 0, 0,
            // xlb's option: class 0xfff0, type 1, 2 words; the frontend (per packet).
            0xff, 0xf0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(hop.hdr[..62], want);
        assert_eq!(hop.hdr[62..], [0, 0]);
        assert_eq!((hop.ifindex, hop.mtu), (7, 1500));
    }

    /// The checksum from the partial sum equals the one computed over the whole header once
    /// the length is in, for short and long packets.
    #[test]
    fn checksum_from_the_partial_sum_is_the_full_one() {
        for s in [
            spec(),
            HopSpec {
                src: Ipv4Addr::new(255, 255, 255, 254),
                dst: Ipv4Addr::new(255, 255, 255, 255),
                ..spec()
            },
        ] {
            let hop = prepare(&s);
            for len in [48u16, 100, 1500, 9000, 65535] {
                let mut ip = [0u8; 20];
                ip.copy_from_slice(&hop.hdr[IP_OFF..IP_OFF + 20]);
                ip[2..4].copy_from_slice(&len.to_be_bytes());
                let check =
                    outer_ip_check(hop.ip_sum, u16::from_ne_bytes([ip[2], ip[3]])).to_ne_bytes();
                ip[10..12].copy_from_slice(&check);
                // A correct header sums to 0xffff (RFC 1071).
                let mut sum = 0u32;
                for w in ip.chunks(2) {
                    sum += u16::from_be_bytes([w[0], w[1]]) as u32;
                }
                while sum > 0xffff {
                    sum = (sum & 0xffff) + (sum >> 16);
                }
                assert_eq!(sum, 0xffff, "{s:?} len {len}");
            }
        }
    }

    #[test]
    fn another_neighbour_changes_only_the_destination_mac() {
        let a = prepare(&spec());
        let b = prepare(&HopSpec {
            dst_mac: [2, 0, 0, 0, 0, 0x44],
            ..spec()
        });
        assert_eq!(b.hdr[..6], [2, 0, 0, 0, 0, 0x44]);
        assert_eq!(a.hdr[6..], b.hdr[6..]);
        assert_eq!(a.ip_sum, b.ip_sum);
    }
}
