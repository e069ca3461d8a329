//! Internet checksum arithmetic (RFC 1071), incremental updates (RFC 1624).
//! Words are summed in the byte order they have in memory; the one's-complement
//! sum is byte-order independent (RFC 1071 section 2(B)), so no swaps are needed.

/// Folds a 32-bit accumulator into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), for any number of changed words:
/// `delta` is the sum of ~m + m' over them.
#[inline(always)]
pub fn apply(check: u16, delta: u32) -> u16 {
    !fold((!check) as u32 + fold(delta) as u32)
}

/// The new checksum after one 16-bit field changes from `old` to `new`.
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    apply(check, (!old) as u32 + new as u32)
}
