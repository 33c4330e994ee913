//! Traffic generator for `xlb-bench`, run with `BPF_PROG_TEST_RUN` and
//! `BPF_F_TEST_XDP_LIVE_FRAMES` in a client namespace: every iteration turns the template frame
//! into flow `i` (source address, source port, destination VIP), fixes the checksums from the
//! template's, and returns `XDP_TX`, which transmits the frame on the client's uplink.
//!
//! Flow `i` (cycling `seq % flows`, or random for a SYN flood): Service `s = i % services`,
//! source `src_base + i % src_count`, source port `sport_base + (i / src_count) % sport_count`
//! (every flow its own client tuple, as distinct connections have: flows to two Services that
//! share a pod never share a reply tuple), destination VIP
//! `vip_base + 256 * (s / 250) + s % 250` (so no VIP ends in .0 or .255).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::bpf_get_prandom_u32,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::bench::{GEN_HDR_WORDS, GenConfig};
use xlb_xdp_bench::{
    csum,
    net::{ETH_HLEN, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_MIN_HLEN, IPV4_SADDR_OFF, L4_SPORT_OFF},
};

/// Written by user space before the run.
#[btf_map]
static XLB_GEN_CONFIG: Array<GenConfig, 1> = Array::new();

/// The template's first [`HDR_LEN`] bytes (every header of the smallest frame). Live frames
/// are recycled pages whose contents persist: a frame the kernel forwarded comes back with the
/// next hop's MACs, a lower TTL and a rewritten destination, so every iteration writes the
/// headers back before patching the flow's fields.
#[btf_map]
static XLB_GEN_HEADER: Array<[u64; HDR_WORDS], 1> = Array::new();

const HDR_WORDS: usize = GEN_HDR_WORDS;
/// 56 bytes of words plus 4 more: 60 bytes, a 64-byte frame without its FCS.
const HDR_LEN: usize = HDR_WORDS * 8 + 4;

/// Per-CPU: [0] packets generated (the flow sequence), [1] frames too short for the template.
#[btf_map]
static XLB_GEN_STATS: PerCpuArray<u64, 2> = PerCpuArray::new();

/// The template is untagged Ethernet + IPv4 without options.
const L3: usize = ETH_HLEN;
const L4: usize = L3 + IPV4_MIN_HLEN;

#[xdp]
pub fn xlb_gen(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Some(cfg) = XLB_GEN_CONFIG.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let Some(seq) = XLB_GEN_STATS.get_ptr_mut(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: per-CPU slot.
    let n = unsafe {
        let n = *seq;
        *seq = n + 1;
        n
    };
    let i = if cfg.random != 0 {
        unsafe { bpf_get_prandom_u32() }
    } else {
        (n % cfg.flows.max(1) as u64) as u32
    };
    let services = cfg.services.max(1);
    let s = i % services;
    let src_count = cfg.src_count.max(1);
    let saddr = (cfg.src_base + i % src_count).to_be();
    let sport = ((cfg.sport_base + (i / src_count) % cfg.sport_count.max(1)) as u16).to_be();
    let daddr = (cfg.vip_base + 256 * (s / 250) + s % 250).to_be();

    let csum_off = cfg.l4_csum_off as usize;
    if data + HDR_LEN > data_end || csum_off > 64 || data + csum_off + 2 > data_end {
        if let Some(bad) = XLB_GEN_STATS.get_ptr_mut(1) {
            unsafe { *bad += 1 };
        }
        return xdp_action::XDP_DROP;
    }
    let Some(hdr) = XLB_GEN_HEADER.get(0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: data + HDR_LEN <= data_end was checked above; bytes 56..60 come from the
    // config's `hdr_tail`.
    unsafe {
        let mut k = 0;
        while k < HDR_WORDS {
            core::ptr::write_unaligned((data + k * 8) as *mut u64, hdr[k]);
            k += 1;
        }
        core::ptr::write_unaligned((data + HDR_WORDS * 8) as *mut u32, cfg.hdr_tail);
    }
    let ip_csum = csum::replace4(
        csum::replace4(cfg.t_ip_csum, cfg.t_saddr, saddr),
        cfg.t_daddr,
        daddr,
    );
    let l4_csum = if cfg.l4_csum_zero != 0 {
        0
    } else {
        let c = csum::replace4(cfg.t_l4_csum, cfg.t_saddr, saddr);
        let c = csum::replace4(c, cfg.t_daddr, daddr);
        let c = csum::replace2(c, cfg.t_sport, sport);
        if c == 0 { 0xffff } else { c }
    };
    // SAFETY: every write is inside the bounds checked above.
    unsafe {
        core::ptr::write_unaligned((data + L3 + IPV4_CSUM_OFF) as *mut u16, ip_csum);
        core::ptr::write_unaligned((data + L3 + IPV4_SADDR_OFF) as *mut u32, saddr);
        core::ptr::write_unaligned((data + L3 + IPV4_DADDR_OFF) as *mut u32, daddr);
        core::ptr::write_unaligned((data + L4 + L4_SPORT_OFF) as *mut u16, sport);
        core::ptr::write_unaligned((data + csum_off) as *mut u16, l4_csum);
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
