//! The benchmark sink, attached to a pod's interface: counts every generator packet (source in
//! 198.18.128.0/17) that arrives, checks where it was addressed, and drops it. Everything else
//! (the pod's own traffic, latency probes) passes untouched.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::bench::{
    SINK_BYTES, SINK_PACKETS, SINK_PASSED, SINK_STATS, SINK_TCP_SYN, SINK_TO_OTHER, SINK_TO_POD,
    SINK_UDP, SinkConfig,
};
use xlb_xdp_bench::{
    from_generator,
    net::{IPPROTO_UDP, TCP_FLAG_SYN},
    parse,
};

#[btf_map]
static XLB_SINK_CONFIG: Array<SinkConfig, 1> = Array::new();

/// Per-CPU counters, indexed by the `SINK_*` constants.
#[btf_map]
static XLB_SINK_STATS: PerCpuArray<u64, { SINK_STATS as usize }> = PerCpuArray::new();

#[inline(always)]
fn count(idx: u32, v: u64) {
    if let Some(c) = XLB_SINK_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot.
        unsafe { *c += v };
    }
}

#[xdp]
pub fn xlb_sink(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let Ok(h) = parse::parse(data, data_end) else {
        count(SINK_PASSED, 1);
        return xdp_action::XDP_PASS;
    };
    if !from_generator(h.saddr) {
        count(SINK_PASSED, 1);
        return xdp_action::XDP_PASS;
    }
    count(SINK_PACKETS, 1);
    count(SINK_BYTES, (data_end - data) as u64);
    let to_pod = XLB_SINK_CONFIG
        .get(0)
        .is_some_and(|c| c.pod_addr == h.daddr && c.pod_port == h.dport);
    count(if to_pod { SINK_TO_POD } else { SINK_TO_OTHER }, 1);
    if h.proto == IPPROTO_UDP {
        count(SINK_UDP, 1);
    } else if h.tcp_flags & TCP_FLAG_SYN != 0 {
        count(SINK_TCP_SYN, 1);
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
