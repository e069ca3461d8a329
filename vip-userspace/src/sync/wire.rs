//! The state-sync datagram: plain data in, bytes out, and back.
//!
//! One UDP datagram carries a header and up to [`MAX_RECORDS`] flow records.
//! Everything is in network byte order; nothing node-local (backend or
//! service ids) is on the wire: a flow names its service by the client's
//! destination (VIP, port, protocol) and its backend by address and port,
//! which both LBs resolve to their own ids.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 magic "VPSY" (0x56 0x50 0x53 0x59)            |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  version (1)  |  reserved (0) |         record count          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 sequence (per sender, +1 per datagram)        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  records: count x 60 bytes                                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! record (60 bytes):
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | family (4/6)  | proto (6/17)  |  flags (CT_F) |  reserved (0) |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |              client address (16 bytes; IPv4: 4 + 12 zeros)    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |              VIP (16 bytes, the client's destination)         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          client port          |     VIP (service) port        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |              backend address (16 bytes)                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          backend port         |   NAT source port (SNAT)      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Size: 12 + 20 x 60 = 1212 bytes, within the 1232 bytes of UDP payload
//! that the IPv6 minimum MTU (RFC 8200 section 5: 1280) leaves after the
//! IPv6 and UDP headers, so a datagram is never fragmented on any path.
//! A receiver refuses a version it does not know (whole datagram, counted):
//! a later format gets a new version number, never a reinterpretation.
//!
//! The record count's top bit marks the end of a welcome dump (the flows a
//! node sends a peer that said hello): a datagram with that bit and no
//! records, sent after the dump's last record, tells the starting peer it
//! has them all ([`Datagram::end`]). The bit was always zero before, and a
//! vipd that predates it refuses the marker as malformed (its count is too
//! large) while reading every record before it; a starting peer that
//! never gets one waits out its deadline instead.
//!
//! Version 2 is the authenticated form (`state_sync.key_file`, see
//! [`super::auth`]): the reserved byte holds the key id, the header grows by
//! the sender's boot epoch and send time, and a 16-byte tag follows the
//! records; 19 records keep it within the same 1232 bytes.
//!
//! ```text
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 magic "VPSY"                                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  version (2)  |    key id     |         record count          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 sequence                                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 epoch (64 bits: the sender's start, unix ms)  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 send time (64 bits, unix ms)                  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  records: count x 60 bytes                                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  tag: HMAC-SHA256 of everything above, left 128 bits          |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use thiserror::Error;
use vip_common::{AddrBytes, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use super::auth::{self, Key, TAG_LEN};

pub const MAGIC: [u8; 4] = *b"VPSY";
pub const VERSION: u8 = 1;
/// The authenticated form.
pub const VERSION_AUTH: u8 = 2;
pub const HEADER_LEN: usize = 12;
/// Version 2's header: version 1's plus epoch and send time.
pub const HEADER_LEN_AUTH: usize = HEADER_LEN + 16;
pub const RECORD_LEN: usize = 60;
/// The record count's top bit: the end of a welcome dump (no records).
pub const COUNT_END: u16 = 0x8000;
/// Records per datagram: the most that fit 1232 bytes (see the module doc).
pub const MAX_RECORDS: usize = 20;
/// The largest datagram [`encode`] writes.
pub const MAX_DATAGRAM: usize = HEADER_LEN + MAX_RECORDS * RECORD_LEN;
const _: () = assert!(MAX_DATAGRAM <= 1280 - 40 - 8);
/// Records per authenticated datagram.
pub const MAX_RECORDS_AUTH: usize = 19;
pub const MAX_DATAGRAM_AUTH: usize = HEADER_LEN_AUTH + MAX_RECORDS_AUTH * RECORD_LEN + TAG_LEN;
const _: () = assert!(MAX_DATAGRAM_AUTH <= 1280 - 40 - 8);

/// What makes a version 2 datagram: the signing key, the sender's boot
/// epoch and the send time (both unix ms).
#[derive(Clone, Copy, Debug)]
pub struct Seal<'a> {
    pub key: &'a Key,
    pub epoch: u64,
    pub sent_ms: u64,
}

/// The authentication fields of a version 2 datagram, as decoded (the tag
/// itself is checked by [`auth::verify`] before anything else is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    pub key_id: u8,
    pub epoch: u64,
    pub sent_ms: u64,
}

/// One replicated flow, in node-independent terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub family: u8,
    pub proto: u8,
    /// `CT_F_*` of the flow when it was reported.
    pub flags: u8,
    pub client: AddrBytes,
    pub vip: AddrBytes,
    pub client_port: u16,
    pub vip_port: u16,
    pub backend: AddrBytes,
    pub backend_port: u16,
    pub nat_port: u16,
}

/// A datagram as decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram {
    pub seq: u32,
    pub records: Vec<Record>,
    /// Version 2 only.
    pub sealed: Option<Sealed>,
    /// The end of a welcome dump ([`COUNT_END`]); never with records.
    pub end: bool,
}

/// Why a datagram was refused; also the `reason` label of
/// `vipd_state_sync_rejected_total`.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("shorter than the {HEADER_LEN}-byte header")]
    Short,
    #[error("no state-sync magic: not a vipd state-sync datagram")]
    Magic,
    #[error(
        "version {0}; this vipd speaks versions {VERSION} and {VERSION_AUTH}: upgrade the older node"
    )]
    Version(u8),
    #[error("length does not match the record count")]
    Length,
    #[error("record {0}: bad family, protocol or address")]
    Record(usize),
}

impl DecodeError {
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Short | DecodeError::Length => "malformed",
            DecodeError::Magic => "magic",
            DecodeError::Version(_) => "version",
            DecodeError::Record(_) => "malformed",
        }
    }
}

/// Records per datagram in the form `seal` selects.
pub fn max_records(sealed: bool) -> usize {
    if sealed {
        MAX_RECORDS_AUTH
    } else {
        MAX_RECORDS
    }
}

/// Encodes `records` (at most [`max_records`]; more is a caller bug and the
/// excess is left out) into `out`, which is cleared first: version 1, or
/// version 2 with a tag when `seal` is given.
pub fn encode(seq: u32, records: &[Record], seal: Option<&Seal>, out: &mut Vec<u8>) {
    encode_count(seq, records, 0, seal, out);
}

/// Encodes the end of a welcome dump: no records, [`COUNT_END`] set.
pub fn encode_end(seq: u32, seal: Option<&Seal>, out: &mut Vec<u8>) {
    encode_count(seq, &[], COUNT_END, seal, out);
}

fn encode_count(seq: u32, records: &[Record], flag: u16, seal: Option<&Seal>, out: &mut Vec<u8>) {
    let records = &records[..records.len().min(max_records(seal.is_some()))];
    out.clear();
    out.extend_from_slice(&MAGIC);
    match seal {
        None => out.extend_from_slice(&[VERSION, 0]),
        Some(s) => out.extend_from_slice(&[VERSION_AUTH, s.key.id]),
    }
    out.extend_from_slice(&(records.len() as u16 | flag).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    if let Some(s) = seal {
        out.extend_from_slice(&s.epoch.to_be_bytes());
        out.extend_from_slice(&s.sent_ms.to_be_bytes());
    }
    for r in records {
        out.extend_from_slice(&[r.family, r.proto, r.flags, 0]);
        out.extend_from_slice(&r.client);
        out.extend_from_slice(&r.vip);
        out.extend_from_slice(&r.client_port.to_be_bytes());
        out.extend_from_slice(&r.vip_port.to_be_bytes());
        out.extend_from_slice(&r.backend);
        out.extend_from_slice(&r.backend_port.to_be_bytes());
        out.extend_from_slice(&r.nat_port.to_be_bytes());
    }
    if let Some(s) = seal {
        let t = auth::tag(s.key, out);
        out.extend_from_slice(&t);
    }
}

/// A version 2 datagram seen before its records are read: its header and
/// tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tagged<'a> {
    pub sealed: Sealed,
    pub seq: u32,
    /// The bytes the tag covers: everything before it.
    pub signed: &'a [u8],
    pub tag: &'a [u8],
}

/// For a version 2 datagram, its header, the bytes the tag covers and the
/// tag, so that the tag is checked before any record is read; `None` for
/// version 1. Checks only the magic, the version and that a tag fits.
pub fn tagged(buf: &[u8]) -> Result<Option<Tagged<'_>>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Short);
    }
    if buf[..4] != MAGIC {
        return Err(DecodeError::Magic);
    }
    match buf[4] {
        VERSION => Ok(None),
        VERSION_AUTH if buf.len() >= HEADER_LEN_AUTH + TAG_LEN => {
            let (signed, tag) = buf.split_at(buf.len() - TAG_LEN);
            Ok(Some(Tagged {
                sealed: Sealed {
                    key_id: buf[5],
                    epoch: be64(&buf[12..20]),
                    sent_ms: be64(&buf[20..28]),
                },
                seq: be32(&buf[8..12]),
                signed,
                tag,
            }))
        }
        VERSION_AUTH => Err(DecodeError::Short),
        v => Err(DecodeError::Version(v)),
    }
}

fn addr(b: &[u8]) -> AddrBytes {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// An address valid for `family`: IPv4 keeps the 12 trailing bytes zero, as
/// the map keys do, or the lookup would never match.
fn addr_ok(family: u8, a: &AddrBytes) -> bool {
    match family {
        FAMILY_V4 => a[4..].iter().all(|b| *b == 0) && a[..4] != [0; 4],
        _ => *a != [0; 16],
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Decodes one datagram of either version; every length is checked before
/// it is read. A version 2 tag is not checked here ([`tagged`] and
/// [`auth::verify`] do that first).
pub fn decode(buf: &[u8]) -> Result<Datagram, DecodeError> {
    let sealed = tagged(buf)?.map(|t| t.sealed);
    let sealed_form = sealed.is_some();
    let (header, trailer) = if sealed_form {
        (HEADER_LEN_AUTH, TAG_LEN)
    } else {
        (HEADER_LEN, 0)
    };
    let raw = be16(&buf[6..8]);
    let end = raw & COUNT_END != 0;
    let count = usize::from(raw & !COUNT_END);
    if (end && count != 0)
        || count > max_records(sealed_form)
        || buf.len() != header + count * RECORD_LEN + trailer
    {
        return Err(DecodeError::Length);
    }
    let seq = be32(&buf[8..12]);
    let mut records = Vec::with_capacity(count);
    for (i, r) in buf[header..buf.len() - trailer]
        .chunks_exact(RECORD_LEN)
        .enumerate()
    {
        let rec = Record {
            family: r[0],
            proto: r[1],
            flags: r[2],
            client: addr(&r[4..20]),
            vip: addr(&r[20..36]),
            client_port: be16(&r[36..38]),
            vip_port: be16(&r[38..40]),
            backend: addr(&r[40..56]),
            backend_port: be16(&r[56..58]),
            nat_port: be16(&r[58..60]),
        };
        let ok = matches!(rec.family, FAMILY_V4 | FAMILY_V6)
            && matches!(rec.proto, PROTO_TCP | PROTO_UDP)
            && addr_ok(rec.family, &rec.client)
            && addr_ok(rec.family, &rec.vip)
            && addr_ok(rec.family, &rec.backend)
            && rec.vip_port != 0
            && rec.backend_port != 0
            && rec.nat_port != 0;
        if !ok {
            return Err(DecodeError::Record(i));
        }
        records.push(rec);
    }
    Ok(Datagram {
        seq,
        records,
        sealed,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> AddrBytes {
        let mut x = [0; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    fn rec(i: u16) -> Record {
        Record {
            family: FAMILY_V4,
            proto: PROTO_TCP,
            flags: 0,
            client: v4([10, 77, 0, 50]),
            vip: v4([10, 77, 0, 100]),
            client_port: 40000 + i,
            vip_port: 6443,
            backend: v4([10, 77, 0, 12]),
            backend_port: 6443,
            nat_port: 50000 + i,
        }
    }

    /// The bytes of one fixed record, written out by hand: the format is
    /// the contract between two vipd versions, not whatever encode does.
    #[test]
    fn fixed_fixture_decodes_and_encodes_byte_for_byte() {
        let mut want = vec![];
        want.extend_from_slice(b"VPSY");
        want.extend_from_slice(&[1, 0, 0, 1]); // version, reserved, count 1
        want.extend_from_slice(&[0, 0, 0, 7]); // seq 7
        want.extend_from_slice(&[4, 6, 0, 0]); // v4, TCP, flags, reserved
        want.extend_from_slice(&[10, 77, 0, 50]);
        want.extend_from_slice(&[0; 12]);
        want.extend_from_slice(&[10, 77, 0, 100]);
        want.extend_from_slice(&[0; 12]);
        want.extend_from_slice(&[0x9c, 0x40, 0x19, 0x2b]); // 40000, 6443
        want.extend_from_slice(&[10, 77, 0, 12]);
        want.extend_from_slice(&[0; 12]);
        want.extend_from_slice(&[0x19, 0x2b, 0xc3, 0x50]); // 6443, 50000
        let d = decode(&want).expect("fixture decodes");
        assert_eq!(d.seq, 7);
        assert_eq!(d.records, vec![rec(0)]);
        let mut out = vec![];
        encode(7, &[rec(0)], None, &mut out);
        assert_eq!(out, want, "encode writes the documented layout");
    }

    #[test]
    fn full_datagram_round_trips_and_fits_the_minimum_mtu() {
        let recs: Vec<Record> = (0..MAX_RECORDS as u16).map(rec).collect();
        let mut out = vec![];
        encode(u32::MAX, &recs, None, &mut out);
        assert_eq!(out.len(), MAX_DATAGRAM);
        assert!(out.len() + 40 + 8 <= 1280, "fits IPv6's minimum MTU");
        let d = decode(&out).expect("round trip");
        assert_eq!((d.seq, d.records, d.sealed), (u32::MAX, recs, None));
        // More than fit are cut, never written past the limit.
        let many: Vec<Record> = (0..50).map(rec).collect();
        encode(1, &many, None, &mut out);
        assert_eq!(out.len(), MAX_DATAGRAM);
    }

    /// The end of a welcome dump, byte for byte: the count's top bit and no
    /// records; with records the bit is refused, and a hello (count 0) is
    /// not an end.
    #[test]
    fn the_end_of_a_dump_is_the_counts_top_bit_with_no_records() {
        let mut out = vec![];
        encode_end(9, None, &mut out);
        let mut want = vec![];
        want.extend_from_slice(b"VPSY");
        want.extend_from_slice(&[1, 0, 0x80, 0]);
        want.extend_from_slice(&[0, 0, 0, 9]);
        assert_eq!(out, want);
        let d = decode(&out).expect("end decodes");
        assert!(d.end && d.records.is_empty(), "{d:?}");
        encode(9, &[], None, &mut out);
        assert!(!decode(&out).expect("hello").end, "a hello is no end");
        encode(9, &[rec(0)], None, &mut out);
        out[6] |= 0x80;
        assert_eq!(decode(&out), Err(DecodeError::Length), "end with records");
        let k = key();
        let seal = Seal {
            key: k.signing(),
            epoch: 1,
            sent_ms: 2,
        };
        encode_end(10, Some(&seal), &mut out);
        assert_eq!(out.len(), HEADER_LEN_AUTH + TAG_LEN);
        assert!(decode(&out).expect("sealed end").end);
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let recs: Vec<Record> = (0..3).map(rec).collect();
        let mut out = vec![];
        encode(1, &recs, None, &mut out);
        for n in 0..out.len() {
            let e = decode(&out[..n]).expect_err("truncated datagram accepted");
            let want = if n < HEADER_LEN {
                DecodeError::Short
            } else {
                DecodeError::Length
            };
            assert_eq!(e, want, "cut at {n}");
        }
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(DecodeError::Length));
    }

    #[test]
    fn wrong_magic_version_count_and_fields_are_refused() {
        let mut out = vec![];
        encode(1, &[rec(0)], None, &mut out);
        let mut bad = out.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad), Err(DecodeError::Magic));
        let mut bad = out.clone();
        bad[4] = 3;
        assert_eq!(decode(&bad), Err(DecodeError::Version(3)));
        assert_eq!(DecodeError::Version(3).label(), "version");
        let mut bad = out.clone();
        bad[6..8].copy_from_slice(&0xffffu16.to_be_bytes());
        assert_eq!(decode(&bad), Err(DecodeError::Length));
        for (off, val, what) in [
            (HEADER_LEN, 5u8, "family"),
            (HEADER_LEN + 1, 1, "protocol"),
            (HEADER_LEN + 4 + 5, 1, "IPv4 client with trailing bytes"),
            (HEADER_LEN + 56, 0, "backend port 0 (with the next byte)"),
        ] {
            let mut bad = out.clone();
            bad[off] = val;
            if what.starts_with("backend port") {
                bad[off + 1] = 0;
            }
            assert_eq!(decode(&bad), Err(DecodeError::Record(0)), "{what}");
        }
    }

    fn key() -> super::super::auth::Keys {
        super::super::auth::Keys::parse(
            "k",
            "7 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        )
        .expect("key")
    }

    #[test]
    fn sealed_datagram_round_trips_fits_the_minimum_mtu_and_its_tag_covers_every_byte() {
        let keys = key();
        let seal = Seal {
            key: keys.signing(),
            epoch: 0x0102_0304_0506_0708,
            sent_ms: 1_800_000_000_000,
        };
        let recs: Vec<Record> = (0..30).map(rec).collect();
        let mut out = vec![];
        encode(5, &recs, Some(&seal), &mut out);
        assert_eq!(
            out.len(),
            MAX_DATAGRAM_AUTH,
            "cut at {MAX_RECORDS_AUTH} records"
        );
        assert!(out.len() + 40 + 8 <= 1280);
        assert_eq!(&out[4..6], &[VERSION_AUTH, 7], "version 2, key id 7");
        assert_eq!(&out[12..20], &seal.epoch.to_be_bytes());
        let d = decode(&out).expect("round trip");
        assert_eq!(d.records, recs[..MAX_RECORDS_AUTH]);
        assert_eq!(
            d.sealed,
            Some(Sealed {
                key_id: 7,
                epoch: seal.epoch,
                sent_ms: seal.sent_ms
            })
        );
        let t = tagged(&out).expect("v2").expect("tagged");
        assert_eq!(t.sealed.key_id, 7);
        assert_eq!(
            auth::verify(&keys, t.sealed.key_id, t.signed, t.tag),
            Ok(())
        );
        // Any byte changed, header or record, breaks the tag.
        for at in [5usize, 8, 12, 20, 40, out.len() - TAG_LEN - 1] {
            let mut bad = out.clone();
            bad[at] ^= 0x40;
            let t = tagged(&bad).expect("v2").expect("tagged");
            assert!(
                auth::verify(&keys, t.sealed.key_id, t.signed, t.tag).is_err(),
                "byte {at} is not covered"
            );
        }
        // A v2 datagram too short for its tag, or cut inside a record.
        assert_eq!(tagged(&out[..HEADER_LEN_AUTH + 3]), Err(DecodeError::Short));
        assert_eq!(decode(&out[..out.len() - 1]), Err(DecodeError::Length));
    }

    /// Garbage of every length and content: an error or a datagram, never
    /// a panic. A fixed xorshift keeps it deterministic.
    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut good = vec![];
        encode(9, &[rec(1), rec(2)], None, &mut good);
        for i in 0..20_000 {
            let buf: Vec<u8> = if i % 2 == 0 {
                let len = (next() % 1400) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                // Mutations of a valid datagram reach the record checks.
                let mut b = good.clone();
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
                b
            };
            let _ = decode(&buf);
        }
    }
}
