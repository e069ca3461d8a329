//! The Internet checksum (RFC 1071) and the pseudo-header checksum that TCP,
//! UDP and VRRP share, for every encoder in user space: the VRRP codec and
//! the frames of `dataplane::poke`. Here, below both, so that neither
//! reaches into the other.

use std::net::IpAddr;

/// The Internet checksum (RFC 1071) of `msg` behind the pseudo-header that
/// VRRP (RFC 9568 5.2.8), TCP and UDP share:
/// IPv4: src, dst, zero, protocol, 16-bit length (RFC 768, RFC 9293 3.1);
/// IPv6: src, dst, 32-bit length, three zero bytes, next header (RFC 8200 8.1).
/// Callers have checked that `src` and `dst` are one family.
pub fn pseudo_header_checksum(src: IpAddr, dst: IpAddr, proto: u8, msg: &[u8]) -> u16 {
    let addrs: u64 = [src, dst]
        .iter()
        .map(|a| match a {
            IpAddr::V4(a) => word_sum(&a.octets()),
            IpAddr::V6(a) => word_sum(&a.octets()),
        })
        .sum();
    // The length and protocol words. Word order does not matter to a one's
    // complement sum: the IPv6 32-bit length is its two 16-bit halves, and
    // the IPv4 16-bit length its low half (the high one is zero for any
    // message that fits an IPv4 packet). `as` widens usize to u64.
    let len = msg.len() as u64;
    fold(addrs + (len >> 16) + (len & 0xffff) + u64::from(proto) + word_sum(msg))
}

/// The sum of the 16-bit big-endian words of `data`, an odd last byte
/// padded with zero (RFC 1071), not yet folded.
fn word_sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum()
}

/// Folds the carries back in and complements (RFC 1071).
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // Folded to 16 bits above, so the cast drops nothing.
    !(sum as u16)
}

/// The Internet checksum of `data` alone: the IPv4 header checksum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    fold(word_sum(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_rfc1071_example() {
        // RFC 1071 section 3 example: sum 0xddf2, checksum its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
        // Odd length pads with a zero byte.
        assert_eq!(internet_checksum(&[0x12]), !0x1200);
    }
}
