//! Per-CPU counters: one per reason, one set per backend. Per-CPU arrays need no
//! atomics; the agent sums the CPUs when it reads.

use vip_common::Reason;

use crate::{
    Verdict,
    maps::{BACKEND_STATS, REASONS, SYNC_LOST},
};

#[inline(always)]
pub fn count(v: &Verdict, len: u64) {
    if let Some(c) = REASONS.get_ptr_mut(v.reason as u32) {
        // SAFETY: per-CPU slot, valid for the program's run on this CPU.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    if let Some(id) = v.backend
        && let Some(b) = BACKEND_STATS.get_ptr_mut(id)
    {
        // SAFETY: as above.
        unsafe {
            (*b).packets += 1;
            (*b).bytes += len;
            if v.reason as u32 == Reason::TxRst as u32 {
                (*b).rsts += 1;
            }
        }
    }
}

/// Counts a new flow for a backend (a connection-table insert).
#[inline(always)]
pub fn new_flow(backend: u32) {
    if let Some(b) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: per-CPU slot.
        unsafe { (*b).new_flows += 1 };
    }
}

/// Counts a sync event the ring buffer had no room for.
#[inline(always)]
pub fn sync_lost() {
    if let Some(c) = SYNC_LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
}
