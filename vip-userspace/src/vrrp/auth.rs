//! The HMAC authentication trailer of draft-cassen-vrrp-auth-hmac-00
//! (keepalived 2.4's `auth_hmac`), as an option (`vrrp.auth_hmac`).
//!
//! VRRPv3 has no authentication (RFC 9568 section 9): anyone who can send
//! from a configured peer's address (or, in multicast mode, any address on
//! the link) with TTL 255 can advertise priority 255 and take the VIP, or
//! priority 0 and force an election, and a captured advert can be replayed.
//! With the trailer every advert carries, after the VRRP message, a key id,
//! a time-based 64-bit sequence and HMAC-SHA256 truncated to 128 bits over
//! a pseudo-header (family, version, VRID, source address), the message with
//! its checksum read as zero, and the trailer with its HMAC field read as
//! zero. A receiver refuses, before the state machine sees it:
//!
//! - **unsigned**: no trailer (the exact length decides, as in the draft);
//! - **bad trailer**: an unknown scheme or non-zero reserved bits;
//! - **unknown key** / **forged**: the key id is not in our key file, or
//!   the HMAC does not verify (constant-time comparison);
//! - **stale**: the sequence's seconds are more than the time window from our
//!   clock (checked before the HMAC, so replayed captures cost no digest);
//! - **replayed**: the sequence is not above the last one accepted from that
//!   sender (RFC 1982 serial arithmetic), checked after the HMAC so forged
//!   packets never move the mark.
//!
//! The keys, their file format and their rotation are shared with state sync
//! ([`crate::keys`]): `ID HEX` lines, the first signs, every listed key
//! verifies, the file is read again when it changes.
//!
//! Interop: the layout, the HMAC input and the sequence below were learnt
//! from the draft's text and keepalived's implementation and test vectors
//! (its `test/auth_hmac_test.c` carries the draft appendix's wire images,
//! which the unit tests here check). No keepalived 2.4 runs on Debian 12, so
//! interop with it is untested.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use super::packet::Discard;
use crate::keys::{self, Key, Keys, TagError};

// The trailer, appended after the VRRP message (draft section 3):
//
//  0                   1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |   Ext Type    |    Key ID     |           Reserved            |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |              Seconds (UTC since 1970, 32 bits)                |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |    Fraction (1/65536 s)       |            Counter            |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                                                               |
// +           HMAC-SHA256, left 128 bits (16 bytes)               +
// |                                                               |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Seconds, Fraction and Counter read together are the 64-bit sequence.

/// Bytes of the trailer.
pub const TRAILER_LEN: usize = 28;
/// The bytes before the HMAC field.
const PREFIX_LEN: usize = TRAILER_LEN - keys::TAG_LEN;
/// Ext Type 1: HMAC-SHA256 truncated to 128 bits, the draft's only scheme.
pub const EXT_HMAC_SHA256: u8 = 1;
/// The pseudo-header bound into the HMAC: family (4 or 6), VRRP version,
/// VRID, a zero byte, the source address zero-padded to 16 bytes. It ties
/// an advert to its sender and instance, while the IP header (TTL, the
/// destination of a unicast copy) stays out.
const PSEUDO_LEN: usize = 20;
/// The VRRP version the pseudo-header names.
const VRRP_V3: u8 = 3;
/// Offset of the VRRP checksum, read as zero by the HMAC (it depends on the
/// destination, and for IPv6 covers the trailer).
const CHECKSUM_AT: usize = 6;
/// The draft's default window: max(3 x advert interval, 5 s).
pub const MIN_DEFAULT_WINDOW: Duration = Duration::from_secs(5);
/// Multicast has no peer list to bound the senders remembered; only senders
/// whose HMAC verified get an entry, so this holds every key holder on a
/// real segment.
const MAX_SENDERS: usize = 16;

/// The draft's default time window for an advert interval.
pub fn default_window(advert_interval: Duration) -> Duration {
    let three = advert_interval * 3;
    // Whole seconds: the window is compared with the trailer's seconds.
    Duration::from_secs(three.as_secs() + u64::from(three.subsec_nanos() > 0))
        .max(MIN_DEFAULT_WINDOW)
}

/// The sequence of a clock reading, the counter zero: seconds in the top 32
/// bits (they wrap in 2106; serial arithmetic below survives it), a binary
/// fraction of the second in the next 16.
pub fn clock_seq(now: SystemTime) -> u64 {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let frac = (u64::from(since.subsec_nanos()) << 16) / 1_000_000_000;
    // Truncation to 32 bits is the field's (and the draft's) wrap.
    (u64::from(since.as_secs() as u32) << 32) | (frac << 16)
}

/// RFC 1982 serial number arithmetic: `a` comes after `b`.
fn after(a: u64, b: u64) -> bool {
    (a.wrapping_sub(b) as i64) > 0
}

/// Seconds from `seq`'s timestamp to `now`'s (positive: `seq` is older).
fn age_s(seq: u64, now: SystemTime) -> i64 {
    let now_s = (clock_seq(now) >> 32) as u32;
    i64::from(now_s.wrapping_sub((seq >> 32) as u32) as i32)
}

/// The sender's sequence: the clock, or the last one plus one when the
/// clock has not moved past it (two adverts in one 1/65536 s, a clock
/// stepped back). No state survives a restart: the clock carries the order.
#[derive(Debug, Default)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    pub fn next(&mut self, now: SystemTime, window: Duration) -> u64 {
        let clk = clock_seq(now);
        self.last = if after(clk, self.last) {
            clk
        } else if -age_s(self.last, now) > window.as_secs() as i64 {
            // The clock was stepped back by more than the window: receivers
            // would refuse our sequence as stale, so follow the clock (they
            // expire their mark for us after the window, see Guard::accept).
            clk
        } else {
            self.last.wrapping_add(1)
        };
        self.last
    }
}

/// One trailer as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub key_id: u8,
    pub seq: u64,
}

fn prefix(key_id: u8, seq: u64) -> [u8; PREFIX_LEN] {
    let mut p = [0u8; PREFIX_LEN];
    p[0] = EXT_HMAC_SHA256;
    p[1] = key_id;
    p[4..12].copy_from_slice(&seq.to_be_bytes());
    p
}

/// The HMAC's input (draft section 4): pseudo-header, the message with its
/// checksum zero, the trailer with its HMAC field zero.
fn hmac_input(src: IpAddr, msg: &[u8], prefix: &[u8; PREFIX_LEN]) -> Vec<u8> {
    let mut d = Vec::with_capacity(PSEUDO_LEN + msg.len() + TRAILER_LEN);
    let mut pseudo = [0u8; PSEUDO_LEN];
    pseudo[1] = VRRP_V3;
    pseudo[2] = msg.get(1).copied().unwrap_or(0);
    match src {
        IpAddr::V4(a) => {
            pseudo[0] = 4;
            pseudo[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            pseudo[0] = 6;
            pseudo[4..20].copy_from_slice(&a.octets());
        }
    }
    d.extend_from_slice(&pseudo);
    d.extend_from_slice(msg);
    if let Some(sum) = d.get_mut(PSEUDO_LEN + CHECKSUM_AT..PSEUDO_LEN + CHECKSUM_AT + 2) {
        sum.fill(0);
    }
    d.extend_from_slice(prefix);
    d.extend_from_slice(&[0; keys::TAG_LEN]);
    d
}

/// The trailer for `msg` (the VRRP message, its checksum not yet final)
/// sent from `src`, signed with `key`.
pub fn sign(key: &Key, src: IpAddr, msg: &[u8], seq: u64) -> [u8; TRAILER_LEN] {
    let p = prefix(key.id, seq);
    let mut t = [0u8; TRAILER_LEN];
    t[..PREFIX_LEN].copy_from_slice(&p);
    t[PREFIX_LEN..].copy_from_slice(&keys::tag(key, &hmac_input(src, msg, &p)));
    t
}

/// Reads the trailer's fields; an unknown scheme or non-zero reserved bits
/// are refused (draft: receivers check both).
pub fn parse(t: &[u8; TRAILER_LEN]) -> Result<Trailer, Discard> {
    if t[0] != EXT_HMAC_SHA256 || t[2..4] != [0, 0] {
        return Err(Discard::BadTrailer {
            ext_type: t[0],
            reserved: u16::from_be_bytes([t[2], t[3]]),
        });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&t[4..12]);
    Ok(Trailer {
        key_id: t[1],
        seq: u64::from_be_bytes(seq),
    })
}

/// Checks the HMAC of a trailer over `msg` from `src`.
pub fn verify(
    keys: &Keys,
    src: IpAddr,
    msg: &[u8],
    t: &[u8; TRAILER_LEN],
) -> Result<Trailer, Discard> {
    let tr = parse(t)?;
    let p = prefix(tr.key_id, tr.seq);
    keys::verify(keys, tr.key_id, &hmac_input(src, msg, &p), &t[PREFIX_LEN..]).map_err(
        |e| match e {
            TagError::UnknownKey(id) => Discard::UnknownKey(id),
            TagError::Forged => Discard::Forged,
        },
    )?;
    Ok(tr)
}

/// The receiver's replay state: the window and each sender's last
/// accepted sequence.
#[derive(Debug)]
pub struct Guard {
    window: Duration,
    marks: BTreeMap<IpAddr, u64>,
}

impl Guard {
    pub fn new(window: Duration) -> Guard {
        Guard {
            window,
            marks: BTreeMap::new(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Every check of one received trailer, in the draft's order: fields,
    /// freshness (before the HMAC: cheap, and grants nothing), HMAC, then
    /// the sender's mark (only for a verified trailer).
    pub fn check(
        &mut self,
        keys: &Keys,
        src: IpAddr,
        msg: &[u8],
        t: &[u8; TRAILER_LEN],
        now: SystemTime,
    ) -> Result<Trailer, Discard> {
        let tr = parse(t)?;
        let w = self.window.as_secs() as i64;
        let age = age_s(tr.seq, now);
        if age.abs() > w {
            return Err(Discard::Stale {
                skew_s: age,
                window_s: w,
            });
        }
        let tr = verify(keys, src, msg, t)?;
        self.accept(src, tr.seq, now)?;
        Ok(tr)
    }

    /// Raises `src`'s mark to `seq` if it is above it. A mark older than
    /// the window is forgotten: the window already refuses what it would
    /// order, and a sender whose clock was stepped back recovers.
    fn accept(&mut self, src: IpAddr, seq: u64, now: SystemTime) -> Result<(), Discard> {
        let w = self.window.as_secs() as i64;
        if let Some(&mark) = self.marks.get(&src)
            && age_s(mark, now).abs() <= w
            && !after(seq, mark)
        {
            return Err(Discard::Replayed);
        }
        if !self.marks.contains_key(&src)
            && self.marks.len() >= MAX_SENDERS
            && let Some(oldest) = self
                .marks
                .iter()
                .max_by_key(|(_, m)| age_s(**m, now))
                .map(|(a, _)| *a)
        {
            self.marks.remove(&oldest);
        }
        self.marks.insert(src, seq);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
