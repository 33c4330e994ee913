//! Per-CPU counters: one global reason per early exit; packets, bytes and new flows per frontend
//! and backend.
use lb_common::maps::{Counter, Reason};

use crate::maps::{XLB_BACKEND_STATS, XLB_FRONTEND_STATS, XLB_GLOBAL_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = XLB_GLOBAL_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// Packets, bytes and (when the packet opened a flow) one new flow, for a frontend.
#[inline(always)]
pub fn count_frontend(frontend_id: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = XLB_FRONTEND_STATS.get_ptr_mut(frontend_id) {
        add(c, bytes, new_flow);
    }
}

/// The same for the backend the packet goes to.
#[inline(always)]
pub fn count_backend(backend_id: u32, bytes: u64, new_flow: bool) {
    if let Some(c) = XLB_BACKEND_STATS.get_ptr_mut(backend_id) {
        add(c, bytes, new_flow);
    }
}

#[inline(always)]
fn add(c: *mut Counter, bytes: u64, new_flow: bool) {
    // SAFETY: a per-CPU slot from a successful lookup; only this CPU writes it while the
    // program runs.
    unsafe {
        (*c).packets += 1;
        (*c).bytes += bytes;
        (*c).new_flows += new_flow as u64;
    }
}
