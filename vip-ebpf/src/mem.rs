//! Zeroing and copies that stay inline. A plain assignment of a byte array
//! or a zeroed struct may compile to a call of compiler-builtins' `memset`
//! or `memmove`, which in BPF are subprograms looping byte by byte: zeroing
//! the 64-byte FIB parameters cost 64 iterations on every mode nat packet
//! (seen in `bpftool prog dump xlated`). The stores here are volatile so
//! LLVM cannot merge them back into such a call.

use core::mem::{align_of, size_of};

/// Zeroes `*p` in u32 words.
///
/// # Safety
/// `p` must be valid for writes of a `T`.
#[inline(always)]
pub unsafe fn zero<T>(p: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(4) && align_of::<T>() >= 4) };
    let w = p.cast::<u32>();
    let mut i = 0;
    while i < size_of::<T>() / 4 {
        // SAFETY: inside `*p` (the caller's promise), u32-aligned (asserted).
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Copies a MAC address in u16 words.
///
/// # Safety
/// Both must be valid and 2-byte aligned: every Ethernet header field and
/// the FIB result's `smac`/`dmac` are.
#[inline(always)]
pub unsafe fn copy_mac(dst: *mut [u8; 6], src: *const [u8; 6]) {
    let (d, s) = (dst.cast::<u16>(), src.cast::<u16>());
    // SAFETY: the caller's promise.
    unsafe {
        d.write_volatile(s.read());
        d.add(1).write_volatile(s.add(1).read());
        d.add(2).write_volatile(s.add(2).read());
    }
}
