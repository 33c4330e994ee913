//! Header parsing shared by the XDP and TC programs: Ethernet (+ one VLAN tag), IPv4, TCP/UDP.
//!
//! Every read is preceded, right next to it, by the bounds check the verifier needs. Failures
//! carry the `Reason` the caller counts; none of them drops a packet by itself.
use lb_common::maps::{IPPROTO_TCP, IPPROTO_UDP, Reason};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_MIN_HLEN: usize = 20;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
/// More-fragments flag and fragment offset bits of `frag_off` (host order).
const IP_MF_OFFSET: u16 = 0x3fff;

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

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
}

impl Headers {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == IPPROTO_TCP { self.l4_off + 16 } else { self.l4_off + 6 }
    }
}

#[inline(always)]
fn load<T: Copy>(data: usize, data_end: usize, off: usize) -> Option<T> {
    let start = data + off;
    if start + core::mem::size_of::<T>() > data_end {
        return None;
    }
    // SAFETY: bounds checked against data_end just above; unaligned read.
    Some(unsafe { core::ptr::read_unaligned(start as *const T) })
}

/// Ethernet and at most one VLAN tag: returns (ethertype, offset of the L3 header).
#[inline(always)]
fn parse_eth(data: usize, data_end: usize) -> Result<(u16, usize), Reason> {
    let ethertype = u16::from_be(load::<u16>(data, data_end, 12).ok_or(Reason::PassMalformed)?);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let inner = load::<u16>(data, data_end, ETH_HLEN + 2).ok_or(Reason::PassMalformed)?;
        return Ok((u16::from_be(inner), ETH_HLEN + VLAN_HLEN));
    }
    Ok((ethertype, ETH_HLEN))
}

/// IPv4 header checks: returns the header length. Options are allowed and skipped.
#[inline(always)]
fn parse_ipv4(data: usize, data_end: usize, l3: usize) -> Result<usize, Reason> {
    let ver_ihl = load::<u8>(data, data_end, l3).ok_or(Reason::PassMalformed)?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Err(Reason::PassMalformed);
    }
    // The whole header, options included, must be in the frame.
    if data + l3 + ihl > data_end {
        return Err(Reason::PassMalformed);
    }
    let tot_len = u16::from_be(load::<u16>(data, data_end, l3 + 2).ok_or(Reason::PassMalformed)?)
        as usize;
    if tot_len < ihl || data + l3 + tot_len > data_end {
        return Err(Reason::PassMalformed);
    }
    let frag = u16::from_be(load::<u16>(data, data_end, l3 + 6).ok_or(Reason::PassMalformed)?);
    if frag & IP_MF_OFFSET != 0 {
        return Err(Reason::PassFragment);
    }
    Ok(ihl)
}

/// Parses down to the L4 ports. `Err` carries the pass reason to count.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Result<Headers, Reason> {
    let (ethertype, l3_off) = parse_eth(data, data_end)?;
    if ethertype == ETH_P_IPV6 {
        return Err(Reason::PassIpv6);
    }
    if ethertype != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    let ihl = parse_ipv4(data, data_end, l3_off)?;
    let proto = load::<u8>(data, data_end, l3_off + 9).ok_or(Reason::PassMalformed)?;
    let saddr = load::<u32>(data, data_end, l3_off + 12).ok_or(Reason::PassMalformed)?;
    let daddr = load::<u32>(data, data_end, l3_off + 16).ok_or(Reason::PassMalformed)?;
    let l4_off = l3_off + ihl;
    let l4_len = match proto {
        IPPROTO_TCP => TCP_MIN_HLEN,
        IPPROTO_UDP => UDP_HLEN,
        _ => return Err(Reason::PassNotL4),
    };
    if data + l4_off + l4_len > data_end {
        return Err(Reason::PassMalformed);
    }
    let sport = load::<u16>(data, data_end, l4_off).ok_or(Reason::PassMalformed)?;
    let dport = load::<u16>(data, data_end, l4_off + 2).ok_or(Reason::PassMalformed)?;
    let tcp_flags = if proto == IPPROTO_TCP {
        load::<u8>(data, data_end, l4_off + 13).ok_or(Reason::PassMalformed)?
    } else {
        0
    };
    Ok(Headers { l3_off, l4_off, saddr, daddr, sport, dport, proto, tcp_flags })
}
