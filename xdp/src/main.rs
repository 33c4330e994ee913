//! xlb's kernel programs.
//!
//! * `xlb_xdp` (XDP, on every `--iface`): frontend traffic is load-balanced, everything else is
//!   passed to the kernel untouched. See `ingress.rs` for the packet walk.
//! * `xlb_tc_egress` (TC egress, same interfaces): replies of load-balanced flows get the
//!   frontend address back as their source. See `egress.rs`.
#![no_std]
#![no_main]

mod egress;
mod encap;
mod icmp;
mod ingress;
mod maps;
mod stats;
mod tunnel;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn xlb_xdp(ctx: XdpContext) -> u32 {
    ingress::run(&ctx)
}

#[classifier]
pub fn xlb_tc_egress(ctx: TcContext) -> i32 {
    egress::run(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never called.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
