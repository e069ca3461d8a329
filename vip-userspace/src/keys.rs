//! Shared HMAC keys (`state_sync.key_file`, `vrrp.auth_hmac.key_file`):
//! the key file, its rotation, and HMAC-SHA256 tags truncated to 128 bits
//! (RFC 2104 section 5, as IPsec's HMAC-SHA-256-128 of RFC 4868). State
//! sync's datagrams and VRRP's adverts are signed with them; each owns its
//! own replay rules (`sync::auth`, `vrrp::auth`), and neither imports the
//! other.
//!
//! Rotation: the key file lists keys by id, the first one signs; every
//! listed key verifies. Add the new key as a second line on every node, then
//! move it first on every node, then remove the old one. The file is read
//! again when it changes (within a second): no restart.

#[cfg(test)]
use std::time::Duration;
use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
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
/// How often a shell looks at the key file's modification time.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

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

/// Why a tag did not verify; each user turns it into its own refusal
/// reason.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum TagError {
    #[error("key id {0} is not in this node's key file")]
    UnknownKey(u8),
    #[error("the tag does not verify")]
    Forged,
}

/// Checks `tag` over `data` with key `id` (constant-time comparison).
pub fn verify(keys: &Keys, id: u8, data: &[u8], tag: &[u8]) -> Result<(), TagError> {
    let key = keys.get(id).ok_or(TagError::UnknownKey(id))?;
    mac(key, data)
        .verify_truncated_left(tag)
        .map_err(|_| TagError::Forged)
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
        assert_eq!(verify(&both, 2, data, &t1), Err(TagError::Forged));
        assert_eq!(verify(&old, 2, data, &t1), Err(TagError::UnknownKey(2)));
        let mut bad = t1;
        bad[15] ^= 1;
        assert_eq!(verify(&old, 1, data, &bad), Err(TagError::Forged));
        assert_eq!(
            verify(&old, 1, b"datagraM", &t1),
            Err(TagError::Forged),
            "one changed byte"
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
