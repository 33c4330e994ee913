//! TC egress: a reply from a backend pod to a client we load-balanced leaves with the frontend
//! address and port the client used as its source.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use lb_common::maps::{IPPROTO_TCP, IPPROTO_UDP, REVNAT_F_CLOSED, Reason};

use xlb_xdp::net::{
    ETH_HLEN, IPV4_CSUM_OFF, IPV4_MAX_HLEN, IPV4_SADDR_OFF, L4_SPORT_OFF, TCP_FLAG_FIN,
    TCP_FLAG_RST, TCP_MIN_HLEN, VLAN_HLEN,
};
use xlb_xdp::parse;

use crate::{maps::XLB_REVNAT, stats};

const BPF_F_PSEUDO_HDR: u64 = 0x10;
const BPF_F_MARK_MANGLED_0: u64 = 0x20;
/// Ethernet + VLAN + the largest IPv4 header + a TCP header: what must be linear to parse.
const MAX_HDR_LEN: u32 = (ETH_HLEN + VLAN_HLEN + IPV4_MAX_HLEN + TCP_MIN_HLEN) as u32;

#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    // Headers may sit in paged data on egress: make them linear (never more than the packet).
    let want = if ctx.len() < MAX_HDR_LEN {
        ctx.len()
    } else {
        MAX_HDR_LEN
    };
    if ctx.data() + (want as usize) > ctx.data_end() && ctx.pull_data(want).is_err() {
        stats::count(Reason::PassMalformed);
        return TC_ACT_OK;
    }
    let hdr = match parse::parse_len(ctx.data(), ctx.data_end(), ctx.len() as usize) {
        Ok(h) => h,
        Err(_) => {
            // Not load-balanced traffic; the ingress reasons are not counted twice here.
            stats::count(Reason::ReplyPass);
            return TC_ACT_OK;
        }
    };
    let key = hdr.flow_key();
    let Some(known) = XLB_REVNAT.get_ptr_mut(&key) else {
        stats::count(Reason::ReplyPass);
        return TC_ACT_OK;
    };
    // SAFETY: LRU values stay valid for the program's run; copied out at once.
    let rev = unsafe { *known };
    // The pod ends the connection: a SYN on this tuple may then come through another frontend
    // (see `REVNAT_F_CLOSED`).
    if hdr.proto == IPPROTO_TCP
        && hdr.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0
        && rev.flags & REVNAT_F_CLOSED == 0
    {
        // SAFETY: as above; racing writers store the same flag or a timestamp.
        unsafe { (*known).flags = REVNAT_F_CLOSED };
    }
    if rewrite_snat(ctx, &hdr, rev.frontend_addr, rev.frontend_port).is_err() {
        stats::count(Reason::PassMalformed);
        return TC_ACT_OK;
    }
    stats::count(Reason::ReplyRewritten);
    TC_ACT_OK
}

/// Source NAT back to the frontend through the kernel's checksum helpers, which also handle
/// `CHECKSUM_PARTIAL` packets from local pods.
#[inline(always)]
fn rewrite_snat(ctx: &TcContext, hdr: &parse::Headers, addr: u32, port: u16) -> Result<(), i64> {
    let l4_csum = hdr.l4_csum_off();
    let mangled = if hdr.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0
    } else {
        0
    };
    ctx.l4_csum_replace(
        l4_csum,
        hdr.saddr as u64,
        addr as u64,
        BPF_F_PSEUDO_HDR | mangled | 4,
    )?;
    ctx.l3_csum_replace(hdr.l3_off + IPV4_CSUM_OFF, hdr.saddr as u64, addr as u64, 4)?;
    ctx.store(hdr.l3_off + IPV4_SADDR_OFF, &addr, 0)?;
    ctx.l4_csum_replace(l4_csum, hdr.sport as u64, port as u64, mangled | 2)?;
    ctx.store(hdr.l4_off + L4_SPORT_OFF, &port, 0)?;
    Ok(())
}
