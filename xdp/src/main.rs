//! xlb's kernel programs.
//!
//! * `xlb_xdp` (XDP, on every `--iface`): frontend traffic is load-balanced, everything else is
//!   passed to the kernel untouched. See `ingress.rs` for the packet walk.
//! * `xlb_tc_egress` (TC egress, same interfaces): replies of load-balanced flows get the
//!   frontend address back as their source. See `egress.rs`.
//! * `xlb_tc_ingress` (TC ingress, same interfaces): frames the XDP program built for an egress
//!   whose driver drops XDP frames are redirected out of it as skbs. See `redirect.rs`.
#![no_std]
#![no_main]

mod checksum;
mod deliver;
mod egress;
mod encap;
mod icmp;
mod ingress;
mod maps;
mod pod;
mod redirect;
mod stats;
mod tunnel;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

// Inlined into the entry the macro generates: Linux 6.1 rounds every frame of a call chain up
// to 32 bytes, so a separate, empty entry frame alone would take the program past 512 bytes.
#[xdp]
#[inline(always)]
pub fn xlb_xdp(ctx: XdpContext) -> u32 {
    ingress::run(&ctx)
}

#[classifier]
pub fn xlb_tc_egress(ctx: TcContext) -> i32 {
    egress::run(&ctx)
}

#[classifier]
pub fn xlb_tc_ingress(ctx: TcContext) -> i32 {
    redirect::run(&ctx)
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
