//! Per-CPU counters: one global reason per early exit; packets, bytes and new flows per frontend
//! and backend.
use lb_common::maps::Reason;

use crate::maps::{XLB_BACKEND_STATS, XLB_FRONTEND_STATS, XLB_GLOBAL_STATS};

#[inline(always)]
pub fn count(reason: Reason) {
    if let Some(c) = XLB_GLOBAL_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub fn count_frontend(frontend_id: u32, bytes: u64) {
    if let Some(c) = XLB_FRONTEND_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// A conntrack entry was created: one more flow for the frontend and for the backend picked.
#[inline(always)]
pub fn count_new_flow(frontend_id: u32, backend_id: u32) {
    if let Some(c) = XLB_FRONTEND_STATS.get_ptr_mut(frontend_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { (*c).new_flows += 1 };
    }
    if let Some(c) = XLB_BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe { (*c).new_flows += 1 };
    }
}

#[inline(always)]
pub fn count_backend(backend_id: u32, bytes: u64) {
    if let Some(c) = XLB_BACKEND_STATS.get_ptr_mut(backend_id) {
        // SAFETY: as above.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}
