//! The wire formats the kernel programs read and write: header layouts and protocol constants,
//! each written once. Multi-byte fields hold the raw network-order values of the packet.
//! The Geneve header and xlb's option are shared with user space and live in `lb_common::maps`.
use lb_common::csum;
pub use lb_common::maps::{FrontendOpt, GeneveHdr, IPPROTO_TCP, IPPROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
/// An IPv4 header without options.
pub const IPV4_MIN_HLEN: usize = 20;
/// An IPv4 header with the most options it can carry.
pub const IPV4_MAX_HLEN: usize = 60;
/// More-fragments flag and fragment offset bits of `frag_off` (host order).
pub const IP_MF_OFFSET: u16 = 0x3fff;
/// Don't-fragment bit of `frag_off` (host order).
pub const IP_DF: u16 = 0x4000;
/// The TTL of the headers the programs build.
pub const IP_TTL: u8 = 64;

pub const TCP_MIN_HLEN: usize = 20;
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;
pub const UDP_HLEN: usize = 8;
/// Offsets of fields the programs rewrite in place, within their headers.
pub const IPV4_CSUM_OFF: usize = core::mem::offset_of!(Ipv4Hdr, check);
pub const IPV4_SADDR_OFF: usize = core::mem::offset_of!(Ipv4Hdr, saddr);
pub const IPV4_DADDR_OFF: usize = core::mem::offset_of!(Ipv4Hdr, daddr);
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = core::mem::offset_of!(UdpHdr, check);
/// Source and destination port: the first two fields of TCP and UDP alike.
pub const L4_SPORT_OFF: usize = 0;
pub const L4_DPORT_OFF: usize = 2;

pub const GENEVE_HLEN: usize = core::mem::size_of::<GeneveHdr>();
pub const GENEVE_OPT_LEN: usize = core::mem::size_of::<FrontendOpt>();

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanTag {
    pub tci: u16,
    pub ethertype: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

impl Ipv4Hdr {
    /// A header without options from `saddr` to `daddr` (network order), of `tot_len` bytes
    /// (host order), with its checksum. `df` sets the don't-fragment bit.
    #[inline(always)]
    pub fn new(saddr: u32, daddr: u32, proto: u8, tot_len: u16, df: bool) -> Ipv4Hdr {
        let frag_off = if df { IP_DF } else { 0 };
        let (s, d) = (u32::from_be(saddr), u32::from_be(daddr));
        let check = csum::of_words([
            0x4500,
            tot_len,
            0,
            frag_off,
            ((IP_TTL as u16) << 8) | proto as u16,
            0,
            (s >> 16) as u16,
            s as u16,
            (d >> 16) as u16,
            d as u16,
        ]);
        Ipv4Hdr {
            ver_ihl: 0x45,
            tos: 0,
            tot_len: tot_len.to_be(),
            id: 0,
            frag_off: frag_off.to_be(),
            ttl: IP_TTL,
            proto,
            check: check.to_be(),
            saddr,
            daddr,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

/// The start of a TCP header, through the flags byte (padded to 16 bytes, within the 20 every
/// TCP header has).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpPrefix {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub data_off: u8,
    pub flags: u8,
}

const _: () = assert!(core::mem::size_of::<EthHdr>() == ETH_HLEN);
const _: () = assert!(core::mem::size_of::<VlanTag>() == VLAN_HLEN);
const _: () = assert!(core::mem::size_of::<Ipv4Hdr>() == IPV4_MIN_HLEN);
const _: () = assert!(core::mem::size_of::<UdpHdr>() == UDP_HLEN);
const _: () = assert!(core::mem::size_of::<TcpPrefix>() <= TCP_MIN_HLEN);
