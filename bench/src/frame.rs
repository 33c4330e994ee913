//! Frames for tests and benchmarks: Ethernet, optional VLAN tags, IPv4, TCP or UDP, built from
//! etherparse's headers with correct lengths and checksums; the Geneve payload xlb's tunnel
//! carries; and the RFC 1071 sums that check a frame independently of the datapath.
//!
//! ```
//! use xlb_bench::frame::{self, Frame};
//! let syn = Frame::tcp([198, 18, 0, 10], 40000, [198, 19, 255, 1], 80).syn().build();
//! assert_eq!(frame::checksum(&syn[14..34]), 0);
//! ```

use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, Ipv4Options, TcpHeader, UdpHeader};
use lb_common::csum;

/// Source MAC of the frames (a client), and destination MAC (the node's uplink).
pub const MAC_CLIENT: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const MAC_NODE: [u8; 6] = [2, 0, 0, 0, 0, 2];
/// TTL of every frame, and the window of TCP segments.
pub const TTL: u8 = 64;
pub const WINDOW: u16 = 64240;
const ETH_P_IP: u16 = 0x0800;

#[derive(Clone, Debug)]
enum L4 {
    Tcp(TcpHeader),
    Udp {
        sport: u16,
        dport: u16,
        checksum: bool,
    },
}

/// An IPv4 frame under construction: `Frame::tcp(..)` or `Frame::udp(..)`, then adjustments,
/// then [`Frame::build`] (the Ethernet frame) or [`Frame::ip_packet`] (from the IPv4 header on).
/// Defaults: [`MAC_CLIENT`] → [`MAC_NODE`], TTL 64, DF set, IP id 0, no payload.
#[derive(Clone, Debug)]
pub struct Frame {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// VLAN tags, outermost first: (TPID, tag control word).
    tags: Vec<(u16, u16)>,
    ip: Ipv4Header,
    l4: L4,
    payload: Vec<u8>,
    min_len: usize,
}

impl Frame {
    fn new(src: [u8; 4], dst: [u8; 4], proto: IpNumber, l4: L4) -> Frame {
        Frame {
            src_mac: MAC_CLIENT,
            dst_mac: MAC_NODE,
            tags: Vec::new(),
            ip: Ipv4Header {
                time_to_live: TTL,
                protocol: proto,
                source: src,
                destination: dst,
                ..Default::default()
            },
            l4,
            payload: Vec::new(),
            min_len: 0,
        }
    }

    /// A TCP segment with sequence number 0, no flags and window [`WINDOW`].
    pub fn tcp(
        src: impl Into<Ipv4Addr>,
        sport: u16,
        dst: impl Into<Ipv4Addr>,
        dport: u16,
    ) -> Frame {
        let tcp = TcpHeader::new(sport, dport, 0, WINDOW);
        Frame::new(
            src.into().octets(),
            dst.into().octets(),
            IpNumber::TCP,
            L4::Tcp(tcp),
        )
    }

    /// A UDP datagram with its checksum.
    pub fn udp(
        src: impl Into<Ipv4Addr>,
        sport: u16,
        dst: impl Into<Ipv4Addr>,
        dport: u16,
    ) -> Frame {
        let udp = L4::Udp {
            sport,
            dport,
            checksum: true,
        };
        Frame::new(src.into().octets(), dst.into().octets(), IpNumber::UDP, udp)
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Frame {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds a VLAN tag (`tpid` 0x8100, or 0x88a8 for an 802.1ad service tag) inside the ones
    /// added before: call it outermost first.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Frame {
        self.tags.push((tpid, vid & 0x0fff));
        self
    }

    pub fn ip_id(mut self, id: u16) -> Frame {
        self.ip.identification = id;
        self
    }

    /// Clears DF.
    pub fn may_fragment(mut self) -> Frame {
        self.ip.dont_fragment = false;
        self
    }

    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub fn ip_options(mut self, options: &[u8]) -> Frame {
        self.ip.options = Ipv4Options::try_from(options).expect("IPv4 options: 4n bytes, n <= 10");
        self
    }

    pub fn seq(mut self, seq: u32) -> Frame {
        self.tcp_mut().sequence_number = seq;
        self
    }

    pub fn syn(mut self) -> Frame {
        self.tcp_mut().syn = true;
        self
    }

    pub fn fin(mut self) -> Frame {
        self.tcp_mut().fin = true;
        self
    }

    pub fn rst(mut self) -> Frame {
        self.tcp_mut().rst = true;
        self
    }

    /// Sets ACK and the acknowledgment number.
    pub fn ack(mut self, ack: u32) -> Frame {
        let tcp = self.tcp_mut();
        tcp.ack = true;
        tcp.acknowledgment_number = ack;
        self
    }

    /// The acknowledgment number alone (the ACK flag unchanged).
    pub fn ack_number(mut self, ack: u32) -> Frame {
        self.tcp_mut().acknowledgment_number = ack;
        self
    }

    /// A UDP checksum of 0: none.
    pub fn no_udp_checksum(mut self) -> Frame {
        match &mut self.l4 {
            L4::Udp { checksum, .. } => *checksum = false,
            L4::Tcp(_) => panic!("no_udp_checksum on a TCP frame"),
        }
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Frame {
        self.payload = payload.to_vec();
        self
    }

    /// Zero bytes after the packet up to `len` bytes of frame (Ethernet padding).
    pub fn pad_to(mut self, len: usize) -> Frame {
        self.min_len = len;
        self
    }

    fn tcp_mut(&mut self) -> &mut TcpHeader {
        match &mut self.l4 {
            L4::Tcp(tcp) => tcp,
            L4::Udp { .. } => panic!("a TCP field on a UDP frame"),
        }
    }

    /// The Ethernet frame.
    pub fn build(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.payload.len());
        v.extend_from_slice(&self.dst_mac);
        v.extend_from_slice(&self.src_mac);
        for &(tpid, tci) in &self.tags {
            v.extend_from_slice(&tpid.to_be_bytes());
            v.extend_from_slice(&tci.to_be_bytes());
        }
        v.extend_from_slice(&ETH_P_IP.to_be_bytes());
        v.extend_from_slice(&self.ip_packet());
        if v.len() < self.min_len {
            v.resize(self.min_len, 0);
        }
        v
    }

    /// The IPv4 packet (no Ethernet header, no padding).
    pub fn ip_packet(&self) -> Vec<u8> {
        let mut ip = self.ip.clone();
        let mut v = Vec::new();
        match &self.l4 {
            L4::Tcp(tcp) => {
                let mut tcp = tcp.clone();
                ip.set_payload_len(tcp.header_len() + self.payload.len())
                    .expect("IPv4 payload length");
                tcp.checksum = tcp
                    .calc_checksum_ipv4(&ip, &self.payload)
                    .expect("TCP length");
                ip.write(&mut v).expect("write to a Vec");
                tcp.write(&mut v).expect("write to a Vec");
            }
            &L4::Udp {
                sport,
                dport,
                checksum,
            } => {
                let mut udp = UdpHeader::without_ipv4_checksum(sport, dport, self.payload.len())
                    .expect("UDP length");
                ip.set_payload_len(UdpHeader::LEN + self.payload.len())
                    .expect("IPv4 payload length");
                if checksum {
                    udp.checksum = udp
                        .calc_checksum_ipv4(&ip, &self.payload)
                        .expect("UDP length");
                }
                ip.write(&mut v).expect("write to a Vec");
                udp.write(&mut v).expect("write to a Vec");
            }
        }
        v.extend_from_slice(&self.payload);
        v
    }
}

/// The packet tests' TCP segment as a [`Frame`] to adjust: a SYN (sequence 1000), or an ACK of
/// 5000 carrying `hello`.
pub fn tcp_frame(
    src: impl Into<Ipv4Addr>,
    sport: u16,
    dst: impl Into<Ipv4Addr>,
    dport: u16,
    syn: bool,
) -> Frame {
    let f = Frame::tcp(src, sport, dst, dport).seq(1000);
    if syn {
        f.syn()
    } else {
        f.ack(5000).payload(b"hello")
    }
}

/// [`tcp_frame`], built.
pub fn tcp(
    src: impl Into<Ipv4Addr>,
    sport: u16,
    dst: impl Into<Ipv4Addr>,
    dport: u16,
    syn: bool,
) -> Vec<u8> {
    tcp_frame(src, sport, dst, dport, syn).build()
}

/// The packet tests' UDP datagram, carrying `query`.
pub fn udp(src: impl Into<Ipv4Addr>, sport: u16, dst: impl Into<Ipv4Addr>, dport: u16) -> Vec<u8> {
    Frame::udp(src, sport, dst, dport).payload(b"query").build()
}

/// The Geneve header xlb's tunnel writes (version 0, protocol IPv4, VNI 0) with xlb's option
/// (class 0xfff0, type 1, 8 bytes: the frontend's address, port and protocol), then `inner`.
/// Written out byte by byte, not from the datapath's constants, so tests compare the datapath
/// with an independent reference.
pub fn geneve(frontend: impl Into<Ipv4Addr>, port: u16, proto: u8, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0x03, 0x00, 0x08, 0x00, 0, 0, 0, 0];
    v.extend_from_slice(&[0xff, 0xf0, 0x01, 0x02]);
    v.extend_from_slice(&frontend.into().octets());
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[proto, 0]);
    v.extend_from_slice(inner);
    v
}

/// `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it for a `len`-byte frame arriving on interface
/// `ifindex` (data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex).
pub fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut md = [0u8; 24];
    md[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    md[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    md
}

/// `acc` plus the one's-complement sum of `data` as 16-bit words (RFC 1071), not yet folded.
pub fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

/// The Internet checksum of `data`: the value to store in a zeroed checksum field, and 0 when
/// `data` includes a correct one.
pub fn checksum(data: &[u8]) -> u16 {
    !csum::fold(sum16(data, 0))
}

/// The TCP or UDP checksum of segment `l4` under IPv4 header `ip` (pseudo-header included):
/// 0 when the segment carries a correct one.
pub fn l4_checksum(ip: &[u8], l4: &[u8]) -> u16 {
    let pseudo = sum16(&ip[12..20], ip[9] as u64 + l4.len() as u64);
    !csum::fold(sum16(l4, pseudo))
}

/// Recomputes the checksum of IPv4 header `ip` (after a test changed a field).
pub fn set_ipv4_checksum(ip: &mut [u8]) {
    ip[10..12].fill(0);
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frame written out field by field, independently of etherparse.
    #[test]
    fn tcp_frame_matches_a_hand_written_one() {
        let f = tcp([198, 18, 0, 10], 40000, [198, 19, 255, 1], 80, false);
        let mut want = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        want.extend_from_slice(&[0x45, 0, 0, 45, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        want.extend_from_slice(&[198, 18, 0, 10, 198, 19, 255, 1]);
        set_ipv4_checksum(&mut want[14..34]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&80u16.to_be_bytes());
        want.extend_from_slice(&1000u32.to_be_bytes());
        want.extend_from_slice(&5000u32.to_be_bytes());
        want.extend_from_slice(&[5 << 4, 0x10]);
        want.extend_from_slice(&WINDOW.to_be_bytes());
        want.extend_from_slice(&[0, 0, 0, 0]);
        want.extend_from_slice(b"hello");
        let c = l4_checksum(&want[14..34], &want[34..]);
        want[50..52].copy_from_slice(&c.to_be_bytes());
        assert_eq!(f, want);
        assert_eq!(checksum(&f[14..34]), 0);
        assert_eq!(l4_checksum(&f[14..34], &f[34..]), 0);
    }

    #[test]
    fn options_tags_padding_and_no_udp_checksum() {
        let f = Frame::udp([198, 18, 0, 10], 1, [198, 18, 0, 2], 2)
            .vlan(0x88a8, 10)
            .vlan(0x8100, 100)
            .ip_options(&[1, 1, 1, 0])
            .no_udp_checksum()
            .pad_to(80)
            .build();
        assert_eq!(&f[12..22], &[0x88, 0xa8, 0, 10, 0x81, 0, 0, 100, 0x08, 0]);
        let ip = &f[22..46];
        assert_eq!(ip[0], 0x46);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]), 24 + 8);
        assert_eq!(checksum(ip), 0);
        assert_eq!(&f[46 + 6..46 + 8], &[0, 0]);
        assert_eq!(f.len(), 80);
        assert!(f[54..].iter().all(|&b| b == 0));
    }

    #[test]
    fn checksum_of_odd_lengths_pads_with_zero() {
        assert_eq!(checksum(&[0x45, 0, 0, 0x1c]), !0x451c);
        assert_eq!(checksum(&[0x12, 0x34, 0x56]), !(0x1234u16 + 0x5600));
    }
}
