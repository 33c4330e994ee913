//! The benchmark sink, attached to a pod's interface: counts every generator packet (source in
//! 198.18.128.0/17) that arrives, checks where it was addressed, and drops it. Everything else
//! (the pod's own traffic, latency probes) passes untouched.
#![no_std]
#![no_main]

mod common;

use aya_ebpf::{
    btf_maps::{Array, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use xlb_xdp::parse;

/// The address and port a load balancer must have rewritten generator packets to (raw packet
/// words; layout mirrored in `bench/src/bpf.rs`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SinkConfig {
    pub pod_addr: u32,
    pub pod_port: u16,
    pub _pad: u16,
}

#[btf_map]
static XLB_SINK_CONFIG: Array<SinkConfig, 1> = Array::new();

/// Per-CPU counters, indexed by the `SINK_*` constants of `bench/src/bpf.rs`.
#[btf_map]
static XLB_SINK_STATS: PerCpuArray<u64, 8> = PerCpuArray::new();

const PACKETS: u32 = 0;
const BYTES: u32 = 1;
/// Addressed to this pod's address and port (a DNAT load balancer delivered it).
const TO_POD: u32 = 2;
/// Addressed elsewhere (the VIP, for a forwarder that does not rewrite).
const TO_OTHER: u32 = 3;
const TCP_SYN: u32 = 4;
const UDP: u32 = 5;
/// Not generator traffic: passed.
const PASSED: u32 = 6;

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
        count(PASSED, 1);
        return common::XDP_PASS;
    };
    if !common::from_generator(h.saddr) {
        count(PASSED, 1);
        return common::XDP_PASS;
    }
    count(PACKETS, 1);
    count(BYTES, (data_end - data) as u64);
    let to_pod = XLB_SINK_CONFIG
        .get(0)
        .is_some_and(|c| c.pod_addr == h.daddr && c.pod_port == h.dport);
    count(if to_pod { TO_POD } else { TO_OTHER }, 1);
    if h.proto == 17 {
        count(UDP, 1);
    } else if h.tcp_flags & parse::TCP_FLAG_SYN != 0 {
        count(TCP_SYN, 1);
    }
    common::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
