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

/// Sum of the 16-bit words of `bytes` (even length, as in memory).
#[inline(always)]
pub fn sum_words<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_ne_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit field changes from `old` to
/// `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}
