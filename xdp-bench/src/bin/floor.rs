//! The floor for micro benchmarks: parse Ethernet/IPv4/L4 exactly as the datapath does, then
//! `XDP_TX`. Anything the datapath costs above this is its own work (lookups, rewrite, counters).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use xlb_xdp_bench::parse;

#[xdp]
pub fn xlb_floor(ctx: XdpContext) -> u32 {
    match parse::parse(ctx.data(), ctx.data_end()) {
        Ok(_) => xdp_action::XDP_TX,
        Err(_) => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
