//! Frame-restoring wrapper for `BPF_PROG_TEST_RUN` micro benchmarks of paths that rewrite the
//! frame: `repeat > 1` runs a program on its own output from the second iteration on, so this
//! wrapper first writes the original frame back (from `XLB_RESTORE_FRAME`, moving the head back
//! if the program under test grew or shrank it) and then tail-calls slot 0 of
//! `XLB_RESTORE_PROGS`. Its own cost is measured by tail-calling the floor program in the same
//! run and subtracted.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray, ProgramArray},
    helpers::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::bench::{RESTORE_MAX_FRAME, RestoreFrame};

/// The original frame.
#[btf_map]
static XLB_RESTORE_FRAME: Array<RestoreFrame, 1> = Array::new();

#[btf_map]
static XLB_RESTORE_PROGS: ProgramArray<1> = ProgramArray::new();

/// Per-CPU: [0] frames restored, [1] head moved, [2] tail call failed.
#[btf_map]
static XLB_RESTORE_STATS: PerCpuArray<u64, 3> = PerCpuArray::new();

#[inline(always)]
fn count(idx: u32) {
    if let Some(c) = XLB_RESTORE_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}

#[xdp]
pub fn xlb_restore(ctx: XdpContext) -> u32 {
    let Some(frame) = XLB_RESTORE_FRAME.get(0) else {
        return xdp_action::XDP_DROP;
    };
    let want = frame.len as usize;
    // Whole words only (pad frames with Ethernet padding to a multiple of 8): byte-granular
    // packet writes at computed offsets do not pass the verifier.
    if want == 0 || want > RESTORE_MAX_FRAME || want % 8 != 0 {
        return xdp_action::XDP_DROP;
    }
    let have = ctx.data_end() - ctx.data();
    if have != want {
        // SAFETY: helper call on our own context.
        let r = unsafe { bpf_xdp_adjust_head(ctx.ctx, have as i32 - want as i32) };
        if r != 0 {
            return xdp_action::XDP_DROP;
        }
        count(1);
    }
    let (data, data_end) = (ctx.data(), ctx.data_end());
    let mut i = 0;
    while i < RESTORE_MAX_FRAME / 8 {
        let off = i * 8;
        if off >= want || data + off + 8 > data_end {
            break;
        }
        // SAFETY: bounds checked just above; the map value holds RESTORE_MAX_FRAME bytes.
        unsafe {
            let v = core::ptr::read_unaligned(frame.bytes.as_ptr().add(off) as *const u64);
            core::ptr::write_unaligned((data + off) as *mut u64, v);
        }
        i += 1;
    }
    count(0);
    // SAFETY: the tail call does not return on success.
    unsafe { XLB_RESTORE_PROGS.tail_call(&ctx, 0) };
    count(2);
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
