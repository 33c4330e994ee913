//! Header parsing shared by the XDP and TC programs: Ethernet (+ one VLAN tag), IPv4, TCP/UDP.
//!
//! Every read is preceded, right next to it, by the bounds check the verifier needs. Failures
//! carry the `Reason` the caller counts; none of them drops a packet by itself.
use lb_common::{
    hash::flow_hash,
    maps::{FlowKey, Reason},
};

use crate::net::{
    ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, IP_DF, IP_MF_OFFSET,
    IPPROTO_TCP, IPPROTO_UDP, IPV4_MIN_HLEN, Ipv4Hdr, TCP_CSUM_OFF, TCP_MIN_HLEN, TcpPrefix,
    UDP_CSUM_OFF, UDP_HLEN, UdpHdr, VLAN_HLEN, VlanTag,
};

/// Where the headers are (offsets from the start of the frame) and what they say. Addresses
/// and ports are raw network-order values.
pub struct Headers {
    pub l3_off: usize,
    pub l4_off: usize,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// IPv4 total length (host order).
    pub tot_len: u16,
    /// The don't-fragment bit is set.
    pub df: bool,
}

impl Headers {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == IPPROTO_TCP {
            self.l4_off + TCP_CSUM_OFF
        } else {
            self.l4_off + UDP_CSUM_OFF
        }
    }

    /// The packet's 5-tuple as it is on the wire.
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        FlowKey::new(self.saddr, self.daddr, self.sport, self.dport, self.proto)
    }

    /// [`flow_hash`] of the packet's 5-tuple.
    #[inline(always)]
    pub fn flow_hash(&self) -> u32 {
        flow_hash(
            u32::from_be(self.saddr),
            u32::from_be(self.daddr),
            u16::from_be(self.sport),
            u16::from_be(self.dport),
            self.proto,
        )
    }
}

/// Copies a header of type `T` out of the packet at `ptr`, after the bounds check the verifier
/// needs. One check per header keeps the compiler from merging checks across differently
/// offset pointers, which the verifier cannot follow.
#[inline(always)]
pub fn read<T: Copy>(ptr: usize, data_end: usize) -> Option<T> {
    if ptr + core::mem::size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; unaligned read.
    Some(unsafe { core::ptr::read_unaligned(ptr as *const T) })
}

/// Ethernet and at most one VLAN tag: returns (ethertype, offset of the L3 header).
#[inline(always)]
fn parse_eth(data: usize, data_end: usize) -> Result<(u16, usize), Reason> {
    let eth = read::<EthHdr>(data, data_end).ok_or(Reason::PassMalformed)?;
    let ethertype = u16::from_be(eth.ethertype);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag = read::<VlanTag>(data + ETH_HLEN, data_end).ok_or(Reason::PassMalformed)?;
        return Ok((u16::from_be(tag.ethertype), ETH_HLEN + VLAN_HLEN));
    }
    Ok((ethertype, ETH_HLEN))
}

/// Parses down to the L4 ports. `Err` carries the pass reason to count. IPv4 options are
/// allowed and skipped. For XDP, where the whole frame is `data..data_end`.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Headers, Reason> {
    parse_len(data, data_end, data_end - data)
}

/// As [`parse`], for a packet of `pkt_len` bytes of which only `data..data_end` is linear (TC:
/// the headers are, the payload may sit in pages). Lengths are checked against `pkt_len`.
#[inline(always)]
pub fn parse_len(data: usize, data_end: usize, pkt_len: usize) -> Result<Headers, Reason> {
    let (ethertype, l3_off) = parse_eth(data, data_end)?;
    if ethertype == ETH_P_IPV6 {
        return Err(Reason::PassIpv6);
    }
    if ethertype != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    parse_ipv4(data, data_end, l3_off, pkt_len)
}

/// Parses an IPv4 packet that starts `l3_off` bytes into a frame of `pkt_len` bytes, down to
/// its L4 ports (the inner packet of a tunnel, too).
#[inline(always)]
pub fn parse_ipv4(
    data: usize,
    data_end: usize,
    l3_off: usize,
    pkt_len: usize,
) -> Result<Headers, Reason> {
    let ip = read::<Ipv4Hdr>(data + l3_off, data_end).ok_or(Reason::PassMalformed)?;
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Err(Reason::PassMalformed);
    }
    let tot_len = u16::from_be(ip.tot_len) as usize;
    // The datagram (options included) must be in the packet; trailing padding is allowed.
    // Compared as lengths, not pointers: the reads below keep their own bounds checks.
    if tot_len < ihl || l3_off + tot_len > pkt_len {
        return Err(Reason::PassMalformed);
    }
    if u16::from_be(ip.frag_off) & IP_MF_OFFSET != 0 {
        return Err(Reason::PassFragment);
    }
    let l4_off = l3_off + ihl;
    let (sport, dport, tcp_flags) = match ip.proto {
        // The length checks against tot_len come after the reads: placed before, they would let
        // the compiler drop the read's own bounds check, which the verifier needs to see.
        IPPROTO_TCP => {
            let l4 = read::<TcpPrefix>(data + l4_off, data_end).ok_or(Reason::PassMalformed)?;
            if tot_len < ihl + TCP_MIN_HLEN {
                return Err(Reason::PassMalformed);
            }
            (l4.sport, l4.dport, l4.flags)
        }
        IPPROTO_UDP => {
            let l4 = read::<UdpHdr>(data + l4_off, data_end).ok_or(Reason::PassMalformed)?;
            if tot_len < ihl + UDP_HLEN {
                return Err(Reason::PassMalformed);
            }
            (l4.sport, l4.dport, 0)
        }
        _ => return Err(Reason::PassNotL4),
    };
    Ok(Headers {
        l3_off,
        l4_off,
        saddr: ip.saddr,
        daddr: ip.daddr,
        sport,
        dport,
        proto: ip.proto,
        tcp_flags,
        tot_len: tot_len as u16,
        df: u16::from_be(ip.frag_off) & IP_DF != 0,
    })
}
