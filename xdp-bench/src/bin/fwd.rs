//! The ceiling of the forward benchmark: a bare XDP forwarder on the node's uplink. Generator
//! packets (source in 198.18.128.0/17) are parsed with the datapath's parser, spread over the
//! pods by a mix of the whole flow (addresses and ports), given the pod's MAC addresses and
//! redirected straight into the pod's veth: no frontend lookup, no conntrack, no DNAT, no kernel
//! stack. Everything else passes.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::bpf_redirect,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::bench::{FWD_MAX_PORTS, FwdPort};
use xlb_xdp_bench::{from_generator, parse};

#[btf_map]
static XLB_FWD_PORTS: Array<FwdPort, { FWD_MAX_PORTS as usize }> = Array::new();

/// [0]: number of ports in use.
#[btf_map]
static XLB_FWD_CONFIG: Array<u32, 1> = Array::new();

/// Per-CPU: [0] redirected, [1] passed.
#[btf_map]
static XLB_FWD_STATS: PerCpuArray<u64, 2> = PerCpuArray::new();

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = XLB_FWD_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn xlb_fwd(ctx: XdpContext) -> u32 {
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let h = match parse::parse(data, data_end) {
        Ok(h) if from_generator(h.saddr) => h,
        _ => {
            count(1);
            return xdp_action::XDP_PASS;
        }
    };
    let n = XLB_FWD_CONFIG.get(0).copied().unwrap_or(0);
    if n == 0 || n > FWD_MAX_PORTS {
        count(1);
        return xdp_action::XDP_PASS;
    }
    // The whole flow picks the port, mixed so that every input bit reaches the bits `% n`
    // keeps: one source talking to many Services must still spread over the pods. On the
    // multi-node lab both hops run this and pick the same pod (the packet is unchanged between).
    let ports = ((h.sport as u32) << 16) | h.dport as u32;
    let x = (h.saddr ^ h.daddr.rotate_left(16) ^ ports).wrapping_mul(0x9e37_79b1);
    let idx = (x >> 16) % n;
    let Some(port) = XLB_FWD_PORTS.get(idx) else {
        count(1);
        return xdp_action::XDP_PASS;
    };
    if data + 12 > data_end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 12 MAC bytes are inside the frame (checked above).
    unsafe {
        core::ptr::write_unaligned(data as *mut [u8; 6], port.dst_mac);
        core::ptr::write_unaligned((data + 6) as *mut [u8; 6], port.src_mac);
    }
    count(0);
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(port.ifindex, 0) as u32 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
