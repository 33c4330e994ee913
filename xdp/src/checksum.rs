//! The TCP/UDP checksum of a destination-NATed packet, right whatever the sender offloaded.
//!
//! A sender behind a veth with TX checksum offload on (the default of containers and kind
//! nodes) hands over segments whose L4 checksum field holds only the pseudo-header sum; the
//! skb says so (`CHECKSUM_PARTIAL`), but XDP cannot see the skb. Such a field equals
//! `csum::partial` of the packet's own addresses and length, which a full checksum does only
//! one time in 65536. When it matches, the payload is summed (a few `bpf_csum_diff` calls) to
//! tell the two apart:
//! * the sum verifies: it was a full checksum after all, updated incrementally as any other;
//! * it does not: a partial one. If the packet leaves as an XDP frame (`XDP_TX`, a native
//!   redirect), no checksum state travels with it and the receiver verifies the field, so the
//!   full checksum is written. If it stays an skb (`XDP_PASS`, generic mode, the TC redirect),
//!   the skb still says `CHECKSUM_PARTIAL` and whoever completes it sums from the field, so the
//!   field stays a pseudo-header sum, now of the new destination.
use aya_ebpf::helpers::bpf_csum_diff;
use lb_common::maps::{IPPROTO_UDP, Reason};
use xlb_xdp::csum;
use xlb_xdp::parse::Headers;

use crate::stats;

/// How the rewritten packet leaves the XDP program.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Leaves {
    /// As an `xdp_frame`: the checksum must be complete.
    Frame,
    /// As the skb it arrived in (or one built from it), with its checksum state.
    Skb,
}

/// Bytes summed per `bpf_csum_diff` call (the helper's limit is 512).
const BLOCK: usize = 512;
/// Whole blocks summed at most: 4 KiB, more than a frame without XDP fragments can hold.
const MAX_BLOCKS: usize = 8;
/// The longest segment summed: the blocks and a tail of less than one block.
const MAX_LEN: usize = BLOCK * (MAX_BLOCKS + 1) - 1;
/// Covers every bit of a length up to [`MAX_LEN`]; masking with it bounds offsets for the
/// verifier.
const LEN_MASK: usize = 0x1fff;
const _: () = assert!(MAX_LEN <= LEN_MASK);

/// The one's-complement sum of `len` bytes at `start`, or `None` when they are not all in the
/// frame (or exceed [`MAX_LEN`]).
///
/// Every chunk's address is computed afresh from `start` and the bits of `len` above the
/// chunk's size, so no pointer carries from one chunk to the next: whichever chunks a segment
/// has, the verifier's states meet again after each one, and the walk costs it a few hundred
/// instructions, not one path per length.
#[inline(always)]
fn sum_bytes(start: usize, data_end: usize, len: usize) -> Option<u64> {
    if len > MAX_LEN {
        return None;
    }
    let mut sum = 0u64;
    let mut i = 0;
    while i < MAX_BLOCKS {
        if (i + 1) * BLOCK > len {
            break;
        }
        let p = start + i * BLOCK;
        if p + BLOCK > data_end {
            return None;
        }
        sum += block::<BLOCK>(p)?;
        i += 1;
    }
    // The rest in halving chunks, each at the offset the larger bits of `len` give.
    macro_rules! chunk {
        ($n:literal) => {
            if len & $n != 0 {
                let p = start + (len & (LEN_MASK & !(2 * $n - 1)));
                if p + $n > data_end {
                    return None;
                }
                sum += block::<$n>(p)?;
            }
        };
    }
    chunk!(256);
    chunk!(128);
    chunk!(64);
    chunk!(32);
    chunk!(16);
    chunk!(8);
    chunk!(4);
    if len & 2 != 0 {
        let p = start + (len & (LEN_MASK & !3));
        if p + 2 > data_end {
            return None;
        }
        // SAFETY: bounds checked just above.
        sum += unsafe { core::ptr::read_unaligned(p as *const u16) } as u64;
    }
    if len & 1 != 0 {
        let p = start + (len & (LEN_MASK & !1));
        if p + 1 > data_end {
            return None;
        }
        // An odd last byte is summed as if followed by a zero byte; in memory order that is
        // the byte itself on the little-endian BPF target.
        // SAFETY: bounds checked just above.
        sum += unsafe { *(p as *const u8) } as u64;
    }
    Some(sum)
}

/// The sum of `N` bytes at `p` (`N` a multiple of 4, at most 512), bounds-checked by the caller.
#[inline(always)]
fn block<const N: usize>(p: usize) -> Option<u64> {
    // SAFETY: the helper reads N bytes at p, checked against data_end by the caller.
    let r = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *mut u32, N as u32, 0) };
    if r < 0 { None } else { Some(r as u32 as u64) }
}

/// The new L4 checksum field after the destination changed from (`hdr.daddr`, `hdr.dport`) to
/// (`addr`, `port`), for a segment at `hdr.l4_off` whose field holds `old`.
#[inline(always)]
pub fn after_dnat(
    data: usize,
    data_end: usize,
    hdr: &Headers,
    old: u16,
    addr: u32,
    port: u16,
    leaves: Leaves,
) -> u16 {
    let seg_len = hdr.tot_len as usize - (hdr.l4_off - hdr.l3_off);
    if old == csum::partial(hdr.saddr, hdr.daddr, hdr.proto, seg_len as u16) {
        let seg = sum_bytes(data + hdr.l4_off, data_end, seg_len);
        let pseudo = csum::pseudo_sum(hdr.saddr, hdr.daddr, hdr.proto, seg_len as u16);
        let verifies = seg.is_some_and(|s| csum::fold(s + pseudo) == 0xffff);
        if !verifies {
            match (leaves, seg) {
                (Leaves::Frame, Some(seg)) => {
                    stats::count(Reason::L4CsumCompleted);
                    let new_pseudo = csum::pseudo_sum(hdr.saddr, addr, hdr.proto, seg_len as u16);
                    // The payload without the old field and port, with the new port.
                    let rest = csum::sub(csum::sub(seg, old), hdr.dport) + port as u64;
                    return no_zero_udp(hdr, !csum::fold(new_pseudo + rest));
                }
                // An skb keeps its CHECKSUM_PARTIAL state; so does a frame too long to sum,
                // which the caller sends through the kernel (see `encap::forward_remote`).
                _ => {
                    stats::count(Reason::L4CsumPartialKept);
                    return csum::partial(hdr.saddr, addr, hdr.proto, seg_len as u16);
                }
            }
        }
    }
    let c = csum::replace4(old, hdr.daddr, addr);
    no_zero_udp(hdr, csum::replace2(c, hdr.dport, port))
}

/// Whether a frame of this packet can be given a complete checksum: false when its field looks
/// partial and its segment is too long to sum, so it must stay an skb.
#[inline(always)]
pub fn completable(hdr: &Headers) -> bool {
    let seg_len = hdr.tot_len as usize - (hdr.l4_off - hdr.l3_off);
    seg_len <= MAX_LEN
}

/// A computed UDP checksum of zero is sent as 0xffff: zero means "no checksum".
#[inline(always)]
fn no_zero_udp(hdr: &Headers, c: u16) -> u16 {
    if hdr.proto == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}
