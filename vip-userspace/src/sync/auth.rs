//! Authenticated state sync (`state_sync.key_file`): the keys, the tag and
//! the replay guard. Plain data and pure functions; the shells in `mod.rs`
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
//! - **rotation**: the key file lists keys by id, the first one signs; every
//!   listed key verifies. Add the new key as a second line on every node, then
//!   move it first on every node, then remove the old one. The file is read
//!   again when it changes (within a second): no restart.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use thiserror::Error;

/// Bytes of the truncated HMAC-SHA256 tag.
pub const TAG_LEN: usize = 16;
/// The shortest key accepted: HMAC-SHA256's block-size-independent strength
/// is the hash output, 32 bytes (RFC 2104 section 3: less than L is
/// "strongly discouraged").
pub const MIN_KEY_LEN: usize = 32;
/// A datagram's send time may differ from the receiver's clock by this much.
pub const MAX_SKEW: Duration = Duration::from_secs(30);
/// How often a shell looks at the key file's modification time.
const RECHECK: Duration = Duration::from_secs(1);

/// One key: its id on the wire and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    pub id: u8,
    secret: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a debug log.
        write!(f, "Key {{ id: {} }}", self.id)
    }
}

/// The keys of one key file: the first signs, all verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys(Vec<Key>);

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error(
        "{path}: cannot read it ({error}); create it on every LB node with the same content, e.g. `printf '1 %s\\n' \"$(openssl rand -hex 32)\" > {path}; chmod 600 {path}`"
    )]
    Read { path: String, error: String },
    #[error(
        "{path}:{line}: expected `ID HEX` (a key id 1..255 and at least {MIN_KEY_LEN} bytes as hex), e.g. `1 $(openssl rand -hex 32)`"
    )]
    Syntax { path: String, line: usize },
    #[error(
        "{path}:{line}: the key is {len} bytes; HMAC-SHA256 needs at least {MIN_KEY_LEN} (openssl rand -hex 32)"
    )]
    Short {
        path: String,
        line: usize,
        len: usize,
    },
    #[error("{path}:{line}: key id {id} is listed twice; each key needs its own id")]
    Duplicate { path: String, line: usize, id: u8 },
    #[error("{path}: no key; add a line `ID HEX`, e.g. `1 $(openssl rand -hex 32)`")]
    Empty { path: String },
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Keys {
    /// Parses a key file's text: one `ID HEX` per line, `#` comments and
    /// blank lines allowed.
    pub fn parse(path: &str, text: &str) -> Result<Keys, KeyError> {
        let mut keys: Vec<Key> = vec![];
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.split('#').next().unwrap_or("").trim();
            if l.is_empty() {
                continue;
            }
            let syntax = || KeyError::Syntax {
                path: path.to_owned(),
                line,
            };
            let mut w = l.split_whitespace();
            let (Some(id), Some(secret), None) = (w.next(), w.next(), w.next()) else {
                return Err(syntax());
            };
            let id: u8 = id.parse().ok().filter(|i| *i != 0).ok_or_else(syntax)?;
            let secret = hex(secret).ok_or_else(syntax)?;
            if secret.len() < MIN_KEY_LEN {
                return Err(KeyError::Short {
                    path: path.to_owned(),
                    line,
                    len: secret.len(),
                });
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyError::Duplicate {
                    path: path.to_owned(),
                    line,
                    id,
                });
            }
            keys.push(Key { id, secret });
        }
        if keys.is_empty() {
            return Err(KeyError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Keys(keys))
    }

    pub fn load(path: &Path) -> Result<Keys, KeyError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Read {
            path: p.clone(),
            error: e.to_string(),
        })?;
        Keys::parse(&p, &text)
    }

    /// The key that signs.
    pub fn signing(&self) -> &Key {
        &self.0[0]
    }

    pub fn ids(&self) -> Vec<u8> {
        self.0.iter().map(|k| k.id).collect()
    }

    fn get(&self, id: u8) -> Option<&Key> {
        self.0.iter().find(|k| k.id == id)
    }
}

fn mac(key: &Key, data: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (RFC 2104 section 2): new_from_slice
    // cannot fail for it.
    let mut m = <Hmac<Sha256>>::new_from_slice(&key.secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    m.update(data);
    m
}

/// The tag of `data` under `key`.
pub fn tag(key: &Key, data: &[u8]) -> [u8; TAG_LEN] {
    let full = mac(key, data).finalize().into_bytes();
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&full[..TAG_LEN]);
    t
}

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

/// Checks `tag` over `data` with key `id`.
pub fn verify(keys: &Keys, id: u8, data: &[u8], tag: &[u8]) -> Result<(), AuthError> {
    let key = keys.get(id).ok_or(AuthError::UnknownKey(id))?;
    mac(key, data)
        .verify_truncated_left(tag)
        .map_err(|_| AuthError::Forged)
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

/// The key file, read again when it changes; shared by the sender task and
/// the receiver thread.
#[derive(Debug)]
pub struct KeySource {
    path: PathBuf,
    /// Who reads it, for the log ("state sync", "VRRP").
    what: &'static str,
    /// The keys (shared, so a datagram's check copies no secret), the
    /// file's modification time, when it was last looked at.
    state: Mutex<(Arc<Keys>, Option<SystemTime>, Instant)>,
}

impl KeySource {
    /// Reads the file once; a bad file is an error at start.
    pub fn open(path: &Path) -> Result<KeySource, KeyError> {
        KeySource::open_for(path, "state sync")
    }

    /// [`KeySource::open`] for another user of the format, named in the log.
    pub fn open_for(path: &Path, what: &'static str) -> Result<KeySource, KeyError> {
        let keys = Keys::load(path)?;
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(KeySource {
            path: path.to_owned(),
            what,
            state: Mutex::new((Arc::new(keys), mtime, Instant::now())),
        })
    }

    /// The keys in force. At most once a [`RECHECK`] the file's
    /// modification time is read; a changed file that parses replaces the
    /// keys, one that does not keeps the old ones and is logged (a half
    /// edited file must not stop sync).
    pub fn keys(&self) -> Arc<Keys> {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if g.2.elapsed() >= RECHECK {
            g.2 = Instant::now();
            let mtime = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if mtime != g.1 {
                match Keys::load(&self.path) {
                    Ok(k) => {
                        tracing::info!(file = %self.path.display(), ids = ?k.ids(), signing = k.signing().id, "{}: key file changed; keys replaced", self.what);
                        g.0 = Arc::new(k);
                        g.1 = mtime;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "{}: the changed key file is not valid; keeping the previous keys", self.what);
                        g.1 = mtime;
                    }
                }
            }
        }
        g.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn keys(text: &str) -> Keys {
        Keys::parse("k", text).expect("valid key file")
    }

    /// RFC 4231 test case 2 ("Jefe"), truncated as we truncate: the tag is
    /// standard HMAC-SHA256, not something of ours.
    #[test]
    fn tag_is_rfc_4231_hmac_sha256_truncated_to_128_bits() {
        let k = Key {
            id: 1,
            secret: b"Jefe".to_vec(),
        };
        let t = tag(&k, b"what do ya want for nothing?");
        assert_eq!(
            t,
            [
                0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e, 0x6a, 0x04, 0x24, 0x26, 0x08, 0x95,
                0x75, 0xc7
            ]
        );
    }

    #[test]
    fn key_files_parse_and_bad_ones_name_the_line_and_the_fix() {
        let k = keys(&format!("# rotation under way\n{K2}\n\n{K1} # old\n"));
        assert_eq!(k.ids(), [2, 1]);
        assert_eq!(k.signing().id, 2, "the first key signs");
        for (text, want) in [
            ("", "no key"),
            ("1 abcd", "the key is 2 bytes"),
            ("1", "expected `ID HEX`"),
            ("0 00", "expected `ID HEX`"),
            ("300 00", "expected `ID HEX`"),
            ("1 zz", "expected `ID HEX`"),
            (&format!("{K1}\n{K1}")[..], "listed twice"),
        ] {
            let e = Keys::parse("/etc/vipd/sync.key", text)
                .expect_err(text)
                .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("/etc/vipd/sync.key"), "{e}");
        }
        let e = Keys::load(Path::new("/nonexistent/sync.key"))
            .expect_err("missing")
            .to_string();
        assert!(e.contains("openssl rand -hex 32"), "{e}");
        assert!(
            !format!("{k:?}").contains("0001"),
            "Debug never prints a secret"
        );
    }

    #[test]
    fn every_listed_key_verifies_and_a_wrong_or_unknown_one_does_not() {
        let both = keys(&format!("{K2}\n{K1}"));
        let old = keys(K1);
        let data = b"datagram";
        let t1 = tag(old.signing(), data);
        assert_eq!(
            verify(&both, 1, data, &t1),
            Ok(()),
            "old key during rotation"
        );
        assert_eq!(verify(&both, 2, data, &t1), Err(AuthError::Forged));
        assert_eq!(verify(&old, 2, data, &t1), Err(AuthError::UnknownKey(2)));
        let mut bad = t1;
        bad[15] ^= 1;
        assert_eq!(verify(&old, 1, data, &bad), Err(AuthError::Forged));
        assert_eq!(
            verify(&old, 1, b"datagraM", &t1),
            Err(AuthError::Forged),
            "one changed byte"
        );
    }

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

    #[test]
    fn a_changed_key_file_is_read_again_and_a_broken_one_keeps_the_keys() {
        let dir = std::env::temp_dir().join(format!("vipd-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("sync.key");
        std::fs::write(&path, K1).expect("write");
        let src = KeySource::open(&path).expect("valid");
        assert_eq!(src.keys().ids(), [1]);
        // Rotation, step 1: the new key listed second on every node.
        std::fs::write(&path, format!("{K1}\n{K2}\n")).expect("write");
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert_eq!(src.keys().ids(), [1, 2]);
        // A half-written file does not stop sync: the last keys stay.
        std::fs::write(&path, "2 ffee").expect("write");
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert_eq!(src.keys().ids(), [1, 2]);
        std::fs::write(&path, K2).expect("write");
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        assert_eq!(src.keys().signing().id, 2, "step 3: only the new key");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
