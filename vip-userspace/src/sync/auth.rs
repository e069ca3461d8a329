//! Authenticated state sync (`state_sync.key_file`): the refusal reasons and
//! the replay guard; the keys and the tag are [`crate::keys`]. Plain data and pure functions; the shells in `mod.rs`
//! call them.
//!
//! Without a key the receiver trusts a datagram for its source address, and
//! anyone on the segment who can spoof a peer's address can write flow
//! entries on every LB. With a key every datagram carries an HMAC-SHA256 tag
//! (RFC 2104; truncated to its left 128 bits, RFC 2104 section 5, as IPsec's
//! HMAC-SHA-256-128 of RFC 4868 does) over all the bytes before it, the id of
//! the key that made it, the sender's boot epoch and its sequence number:
//!
//! - **forged**: a tag that does not verify under the named key (constant-time
//!   comparison);
//! - **replayed**: per peer, the highest (epoch, sequence) seen and a 64-bit
//!   window below it, as IPsec's anti-replay window (RFC 4303 section 3.4.3);
//!   a datagram from an older epoch than the peer's newest is refused, a new
//!   epoch (the peer restarted) starts a new window;
//! - **stale**: a datagram whose send time is more than [`MAX_SKEW`] from ours.
//!   That bounds what a replay can do after *this* node restarted (and lost its
//!   windows) to datagrams of the last [`MAX_SKEW`], which only refresh flows
//!   that existed then.
//! - **rotation**: see [`crate::keys`].

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use thiserror::Error;

use crate::keys::TagError;
pub use crate::keys::{Key, KeyError, KeySource, Keys, TAG_LEN, tag};

/// A datagram's send time may differ from the receiver's clock by this much.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

/// Why an authenticated datagram was refused; the `reason` label of
/// `vipd_state_sync_rejected_total`.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "no tag, and state_sync.key_file is set: the peer runs without the key; give every LB the same key file"
    )]
    Unkeyed,
    #[error("tagged, and this node has no state_sync.key_file: give it the peers' key file")]
    Keyed,
    #[error("key id {0} is not in this node's key file: copy the current key file to every node")]
    UnknownKey(u8),
    #[error(
        "the tag does not verify: another key under the same id on the peer, or someone spoofing its address"
    )]
    Forged,
    #[error(
        "sequence already seen or older than the replay window: a replay from someone spoofing the peer's address"
    )]
    Replayed,
    #[error("sent {0:?} away from this node's clock (more than the allowed skew): check NTP")]
    Stale(Duration),
}

impl AuthError {
    pub fn label(&self) -> &'static str {
        match self {
            AuthError::Unkeyed => "unkeyed",
            AuthError::Keyed => "keyed",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::Forged => "forged",
            AuthError::Replayed => "replayed",
            AuthError::Stale(_) => "stale",
        }
    }
}

impl From<TagError> for AuthError {
    fn from(e: TagError) -> Self {
        match e {
            TagError::UnknownKey(id) => AuthError::UnknownKey(id),
            TagError::Forged => AuthError::Forged,
        }
    }
}

/// Checks `tag` over `data` with key `id`.
pub fn verify(keys: &Keys, id: u8, data: &[u8], tag: &[u8]) -> Result<(), AuthError> {
    crate::keys::verify(keys, id, data, tag).map_err(AuthError::from)
}

/// One peer's anti-replay state (RFC 4303 section 3.4.3, with the sender's
/// boot epoch in front of the sequence number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    epoch: u64,
    top: u32,
    /// Bit i: `top - i` was seen.
    seen: u64,
}

impl Window {
    /// Accepts (and records) `(epoch, seq)` if it is new. Only call it for a
    /// datagram whose tag verified: a forged one must not move the window.
    pub fn accept(&mut self, epoch: u64, seq: u32) -> bool {
        if *self == Window::default() || epoch > self.epoch {
            *self = Window {
                epoch,
                top: seq,
                seen: 1,
            };
            return true;
        }
        if epoch < self.epoch {
            return false;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// The replay windows of every peer, plus the clock check.
#[derive(Debug, Default)]
pub struct Replay {
    peers: BTreeMap<IpAddr, Window>,
}

impl Replay {
    /// The checks after the tag verified: the send time against `now`, then
    /// the peer's window.
    pub fn check(
        &mut self,
        peer: IpAddr,
        epoch: u64,
        seq: u32,
        sent_ms: u64,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let sent = SystemTime::UNIX_EPOCH + Duration::from_millis(sent_ms);
        let skew = match now.duration_since(sent) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if skew > MAX_SKEW {
            return Err(AuthError::Stale(skew));
        }
        if self.peers.entry(peer).or_default().accept(epoch, seq) {
            Ok(())
        } else {
            Err(AuthError::Replayed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_takes_each_sequence_once() {
        let mut w = Window::default();
        assert!(w.accept(5, 10));
        assert!(!w.accept(5, 10), "replay");
        assert!(w.accept(5, 12));
        assert!(w.accept(5, 11), "late but new, inside the window");
        assert!(!w.accept(5, 11));
        assert!(w.accept(5, 200));
        assert!(!w.accept(5, 136), "older than the 64-datagram window");
        assert!(w.accept(5, 137), "the oldest the window still holds");
        assert!(!w.accept(4, 1000), "an older epoch");
        assert!(w.accept(6, 0), "the peer restarted: a new window");
        assert!(!w.accept(5, 201), "the previous boot is over");
        assert!(!w.accept(6, 0));
    }

    #[test]
    fn stale_and_replayed_datagrams_are_refused_per_peer() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after the epoch")
                .as_millis() as u64
        };
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("a"),
            "10.0.0.2".parse().expect("b"),
        );
        let mut r = Replay::default();
        assert_eq!(r.check(a, 1, 1, ms(now), now), Ok(()));
        assert_eq!(r.check(a, 1, 1, ms(now), now), Err(AuthError::Replayed));
        assert_eq!(
            r.check(b, 1, 1, ms(now), now),
            Ok(()),
            "windows are per peer"
        );
        let old = now - Duration::from_secs(31);
        assert!(matches!(
            r.check(a, 1, 2, ms(old), now),
            Err(AuthError::Stale(_))
        ));
        let ahead = now + Duration::from_secs(31);
        assert!(matches!(
            r.check(a, 1, 3, ms(ahead), now),
            Err(AuthError::Stale(_))
        ));
        assert_eq!(
            r.check(a, 1, 4, ms(now - Duration::from_secs(29)), now),
            Ok(())
        );
    }
}
