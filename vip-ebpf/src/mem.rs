//! Zeroing, copies and comparisons that stay inline. A plain assignment or
//! comparison of a byte array, or a zeroed struct, may compile to a call of
//! compiler-builtins' `memset`, `memmove` or `bcmp`, which in BPF are
//! subprograms looping byte by byte: zeroing the flow key's address tails
//! cost 32 iterations on every VIP packet, and the 64-byte FIB parameters 64
//! on every mode nat packet (seen in `bpftool prog dump xlated`). These work
//! in words, and their stores are volatile so LLVM cannot merge them back
//! into such a call. Constant counts: the loops unroll.

/// Copies `N` u16 words from `src` to `dst`.
///
/// # Safety
/// Both valid for `2 * N` bytes and 2-byte aligned: every header field
/// behind a 14- or 18-byte Ethernet header is, and so is any map value.
#[inline(always)]
pub unsafe fn copy_u16s<const N: usize>(dst: *mut u8, src: *const u8) {
    let (d, s) = (dst.cast::<u16>(), src.cast::<u16>());
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's promise.
        unsafe { d.add(i).write_volatile(s.add(i).read()) };
        i += 1;
    }
}

/// Whether `N` u16 words at `a` and `b` are equal.
///
/// # Safety
/// As for [`copy_u16s`].
#[inline(always)]
pub unsafe fn eq_u16s<const N: usize>(a: *const u8, b: *const u8) -> bool {
    let (a, b) = (a.cast::<u16>(), b.cast::<u16>());
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's promise.
        if unsafe { a.add(i).read() != b.add(i).read() } {
            return false;
        }
        i += 1;
    }
    true
}

/// Writes `N` zero u32 words at `dst`.
///
/// # Safety
/// `dst` valid for `4 * N` bytes and 4-byte aligned.
#[inline(always)]
pub unsafe fn zero_u32s<const N: usize>(dst: *mut u8) {
    let w = dst.cast::<u32>();
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's promise.
        unsafe { w.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Writes `N` zero bytes at `dst` (for fields of no useful alignment).
///
/// # Safety
/// `dst` valid for `N` bytes.
#[inline(always)]
pub unsafe fn zero_bytes<const N: usize>(dst: *mut u8) {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's promise.
        unsafe { dst.add(i).write_volatile(0) };
        i += 1;
    }
}

/// Copies a MAC address.
///
/// # Safety
/// As for [`copy_u16s`].
#[inline(always)]
pub unsafe fn copy_mac(dst: *mut [u8; 6], src: *const [u8; 6]) {
    // SAFETY: the caller's promise.
    unsafe { copy_u16s::<3>(dst.cast(), src.cast()) }
}
