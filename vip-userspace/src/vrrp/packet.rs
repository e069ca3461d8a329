//! The VRRPv3 advertisement on the wire (RFC 9568 section 5) and the checks
//! a received one must pass before it reaches the state machine (section 7.1).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Family, Priority, Received, Vrid, auth::TRAILER_LEN};
use crate::csum::pseudo_header_checksum;

/// IP protocol / IPv6 next header of VRRP (RFC 9568 5.1.1.4, 5.1.2.4).
pub const PROTO_VRRP: u8 = 112;
/// Destination of IPv4 advertisements (RFC 9568 5.1.1.2).
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// Destination of IPv6 advertisements (RFC 9568 5.1.2.2).
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL / hop limit every advertisement is sent with (RFC 9568 5.1.1.3, 5.1.2.3).
pub const HOP_LIMIT: u8 = 255;
/// The fixed part of the message, before the address list.
pub const HEADER_LEN: usize = 8;
/// Max Adver Int is a 12-bit field of centiseconds (RFC 9568 5.2.7).
pub const MAX_INTERVAL_CS: u16 = 4095;

/// RFC 9568 5.2.1.
const VERSION: u8 = 3;
/// RFC 9568 5.2.2: ADVERTISEMENT is the only type.
const TYPE_ADVERTISEMENT: u8 = 1;

/// The VRRP multicast group of one address family.
pub fn group(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(GROUP_V4),
        Family::V6 => IpAddr::V6(GROUP_V6),
    }
}

fn addr_len(family: Family) -> usize {
    match family {
        Family::V4 => 4,
        Family::V6 => 16,
    }
}

// VRRPv3 advertisement (RFC 9568 5.1), carried directly in IPv4 or IPv6:
//
//  0                   1                   2                   3
//  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |Version| Type  |     VRID      |   Priority    |IPvX Addr Count|
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// | Rsvd  |  Max Adver Int (cs)   |           Checksum            |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
// |                                                               |
// :        IPvX Address(es): Count x 4 (IPv4) or x 16 (IPv6)      :
// |                                                               |
// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Version is 3 and Type 1. Rsvd is sent as zero and ignored on receive
// (5.2.6). The address family is not in the message: it is the family of
// the IP packet that carries it (5.2.9).
/// One VRRPv3 advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advert {
    pub vrid: Vrid,
    pub priority: Priority,
    /// Centiseconds, 1..=4095.
    pub max_adver_int: u16,
    pub addrs: Vec<IpAddr>,
}

/// Why an [`Advert`] cannot be put on the wire: a configuration the agent
/// should have refused earlier.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("{other} and the source {src} are not one address family (RFC 9568 5.2.9)")]
    MixedFamilies { src: IpAddr, other: IpAddr },
    #[error("no virtual addresses: IPvX Addr Count must be at least 1 (RFC 9568 5.2.5)")]
    NoAddresses,
    #[error("{0} virtual addresses: IPvX Addr Count is one byte, at most 255")]
    TooManyAddresses(usize),
    #[error("advertisement interval {0} cs is outside 1..=4095 (12-bit field, RFC 9568 5.2.7)")]
    Interval(u16),
    #[error("VRID 0 is not valid: VRIDs are 1..=255 (RFC 9568 5.2.3)")]
    VridZero,
}

/// Why a received packet was not handed to the state machine. Each variant
/// is counted under [`Discard::label`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    #[error("hop limit {0}, not 255: the sender is not on our link (RFC 9568 7.1)")]
    HopLimit(u8),
    #[error("VRRP version {0}, not 3")]
    Version(u8),
    #[error("VRRP type {0}, not 1 (ADVERTISEMENT)")]
    Type(u8),
    #[error("truncated: {len} bytes, need {need}")]
    Truncated { len: usize, need: usize },
    #[error("{len} bytes, expected {expected} for the address count")]
    Length { len: usize, expected: usize },
    #[error("IPvX Addr Count is zero")]
    AddrCount,
    #[error("bad checksum")]
    Checksum,
    #[error("{src} -> {dst} is not the address family of this virtual router")]
    Family { src: IpAddr, dst: IpAddr },
    #[error("Max Adver Int is zero")]
    IntervalZero,
    #[error("VRID {0} is not configured here")]
    OtherVrid(u8),
    #[error("we own the addresses (priority 255) and ignore advertisements")]
    Owner,
    #[error("the address list differs from ours and the sender is not the owner")]
    AddrMismatch,
    #[error("{0} is not a configured unicast peer")]
    NotPeer(IpAddr),
    #[error("our own advertisement came back")]
    OwnPacket,
    #[error("sent to {0}, not to the VRRP multicast group")]
    Destination(IpAddr),
    #[error(
        "no HMAC trailer, and vrrp.auth_hmac is set here: the sender runs without it; give every node the same vrrp.auth_hmac key file"
    )]
    Unsigned,
    #[error(
        "HMAC trailer of scheme {ext_type} with reserved bits {reserved:#06x}: only scheme 1 (HMAC-SHA256) with zero reserved bits exists (draft-cassen-vrrp-auth-hmac)"
    )]
    BadTrailer { ext_type: u8, reserved: u16 },
    #[error(
        "HMAC key id {0} is not in this node's vrrp.auth_hmac key file: copy the current key file to every node"
    )]
    UnknownKey(u8),
    #[error(
        "the HMAC does not verify: another key under the same id on the sender, or someone spoofing its address"
    )]
    Forged,
    #[error(
        "HMAC sequence {skew_s} s from this node's clock, outside the {window_s} s window: check NTP, or a replay of an old capture"
    )]
    Stale { skew_s: i64, window_s: i64 },
    #[error(
        "HMAC sequence not above the last one accepted from this sender: a replay from someone spoofing its address"
    )]
    Replayed,
}

/// Every [`Discard::label`], to register the counters before the first drop.
pub const DISCARD_LABELS: &[&str] = &[
    "hop_limit",
    "version",
    "type",
    "truncated",
    "length",
    "addr_count",
    "checksum",
    "family",
    "interval_zero",
    "other_vrid",
    "owner",
    "addr_mismatch",
    "not_peer",
    "own_packet",
    "destination",
    "unsigned",
    "bad_trailer",
    "unknown_key",
    "forged",
    "stale",
    "replayed",
];

impl Discard {
    /// Position in [`DISCARD_LABELS`]: where a per-reason counter lives.
    pub fn index(&self) -> usize {
        match self {
            Discard::HopLimit(_) => 0,
            Discard::Version(_) => 1,
            Discard::Type(_) => 2,
            Discard::Truncated { .. } => 3,
            Discard::Length { .. } => 4,
            Discard::AddrCount => 5,
            Discard::Checksum => 6,
            Discard::Family { .. } => 7,
            Discard::IntervalZero => 8,
            Discard::OtherVrid(_) => 9,
            Discard::Owner => 10,
            Discard::AddrMismatch => 11,
            Discard::NotPeer(_) => 12,
            Discard::OwnPacket => 13,
            Discard::Destination(_) => 14,
            Discard::Unsigned => 15,
            Discard::BadTrailer { .. } => 16,
            Discard::UnknownKey(_) => 17,
            Discard::Forged => 18,
            Discard::Stale { .. } => 19,
            Discard::Replayed => 20,
        }
    }

    /// The metric label: stable, snake_case, one per variant.
    pub fn label(&self) -> &'static str {
        DISCARD_LABELS[self.index()]
    }

    /// True for a defective packet; false for a sound one that is not for us
    /// or that our policy refuses. The first kind is worth a warning, the
    /// second is routine on a shared segment.
    pub fn is_malformed(&self) -> bool {
        match self {
            Discard::HopLimit(_)
            | Discard::Version(_)
            | Discard::Type(_)
            | Discard::Truncated { .. }
            | Discard::Length { .. }
            | Discard::AddrCount
            | Discard::Checksum
            | Discard::Family { .. }
            | Discard::IntervalZero => true,
            Discard::OtherVrid(_)
            | Discard::Owner
            | Discard::AddrMismatch
            | Discard::NotPeer(_)
            | Discard::OwnPacket
            | Discard::Destination(_)
            | Discard::Unsigned
            // Another Ext Type may be a newer sender's scheme, not a defect.
            | Discard::BadTrailer { .. }
            | Discard::UnknownKey(_)
            | Discard::Forged
            | Discard::Stale { .. }
            | Discard::Replayed => false,
        }
    }
}

impl Advert {
    /// Wire bytes with the checksum computed over the IPv4/IPv6
    /// pseudo-header (RFC 9568 5.2.8: in v3 the pseudo-header is included
    /// for IPv4 too, unlike VRRPv2).
    pub fn encode(&self, src: IpAddr, dst: IpAddr) -> Result<Vec<u8>, EncodeError> {
        let mut buf = self.body(src, dst)?;
        let sum = checksum(src, dst, &buf).to_be_bytes();
        buf[6..8].copy_from_slice(&sum);
        Ok(buf)
    }

    /// Wire bytes with the HMAC trailer of draft-cassen-vrrp-auth-hmac
    /// signed by `key` with sequence `seq` ([`super::auth`]). The checksum
    /// is computed after signing (the HMAC reads it as zero) and covers
    /// what keepalived's does: for IPv4 the message alone, its pseudo-header
    /// length the message's (RFC 9568 5.2.8, the trailer is not part of the
    /// message); for IPv6 the whole payload, trailer included, as the
    /// kernel's IPV6_CHECKSUM that keepalived's receive socket uses
    /// computes it (RFC 8200 8.1 upper-layer length).
    pub fn encode_signed(
        &self,
        src: IpAddr,
        dst: IpAddr,
        key: &crate::keys::Key,
        seq: u64,
    ) -> Result<Vec<u8>, EncodeError> {
        let mut buf = self.body(src, dst)?;
        let msg_len = buf.len();
        let trailer = super::auth::sign(key, src, &buf, seq);
        buf.extend_from_slice(&trailer);
        let covered = match Family::of(&src) {
            Family::V4 => &buf[..msg_len],
            Family::V6 => &buf[..],
        };
        let sum = checksum(src, dst, covered).to_be_bytes();
        buf[6..8].copy_from_slice(&sum);
        Ok(buf)
    }

    /// The message with its checksum field zero, after the checks that keep
    /// it encodable.
    fn body(&self, src: IpAddr, dst: IpAddr) -> Result<Vec<u8>, EncodeError> {
        let family = Family::of(&src);
        if let Some(other) = std::iter::once(&dst)
            .chain(&self.addrs)
            .find(|addr| Family::of(addr) != family)
        {
            return Err(EncodeError::MixedFamilies { src, other: *other });
        }
        if self.vrid.0 == 0 {
            return Err(EncodeError::VridZero);
        }
        if !(1..=MAX_INTERVAL_CS).contains(&self.max_adver_int) {
            return Err(EncodeError::Interval(self.max_adver_int));
        }
        let count = match u8::try_from(self.addrs.len()) {
            Ok(0) => return Err(EncodeError::NoAddresses),
            Ok(count) => count,
            Err(_) => return Err(EncodeError::TooManyAddresses(self.addrs.len())),
        };

        // The interval is at most 12 bits, so the 4 reserved bits go out as
        // zero (5.2.6).
        let [int_hi, int_lo] = self.max_adver_int.to_be_bytes();
        let mut buf = Vec::with_capacity(HEADER_LEN + self.addrs.len() * addr_len(family));
        // The checksum field (bytes 6 and 7) is zero while the sum is taken.
        buf.extend_from_slice(&[
            VERSION << 4 | TYPE_ADVERTISEMENT,
            self.vrid.0,
            self.priority.0,
            count,
            int_hi,
            int_lo,
            0,
            0,
        ]);
        for addr in &self.addrs {
            match addr {
                IpAddr::V4(addr) => buf.extend_from_slice(&addr.octets()),
                IpAddr::V6(addr) => buf.extend_from_slice(&addr.octets()),
            }
        }
        Ok(buf)
    }

    /// Structural decode: length, version 3, type 1 (ADVERTISEMENT), count
    /// non-zero, length == 8 + count * address length, checksum. The
    /// family is that of `src`; `src` and `dst` must be the same family.
    pub fn decode(buf: &[u8], src: IpAddr, dst: IpAddr) -> Result<Advert, Discard> {
        Advert::decode_framed(buf, src, dst, false).map(|(a, _)| a)
    }

    /// [`Advert::decode`], and with `signed` the message must be followed
    /// by exactly one HMAC trailer (its length decides, as the draft says:
    /// the message length is known from the count), returned unverified.
    /// The checksum covers what [`Advert::encode_signed`] says.
    pub fn decode_framed(
        buf: &[u8],
        src: IpAddr,
        dst: IpAddr,
        signed: bool,
    ) -> Result<(Advert, Option<[u8; TRAILER_LEN]>), Discard> {
        let family = Family::of(&src);
        if Family::of(&dst) != family {
            return Err(Discard::Family { src, dst });
        }
        let Some((header, body)) = buf.split_first_chunk::<HEADER_LEN>() else {
            return Err(Discard::Truncated {
                len: buf.len(),
                need: HEADER_LEN,
            });
        };
        let [ver_type, vrid, priority, count, int_hi, int_lo, _, _] = *header;

        // 5.2.1: anything but 3 is discarded (we do not speak VRRPv2).
        let version = ver_type >> 4;
        if version != VERSION {
            return Err(Discard::Version(version));
        }
        // 5.2.2: a packet of unknown type MUST be discarded.
        let kind = ver_type & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(Discard::Type(kind));
        }
        // 5.2.5 with verified erratum 8299: the count is non-zero. An empty
        // list would also leave the address comparison of 7.1 nothing to do.
        if count == 0 {
            return Err(Discard::AddrCount);
        }
        // 7.1: the packet must hold the complete message. The RFC does not
        // forbid more, but we refuse it: senders (keepalived included) send
        // exactly the list, so trailing bytes mean a sender we misread.
        let msg_len = HEADER_LEN + usize::from(count) * addr_len(family);
        if signed && buf.len() == msg_len {
            return Err(Discard::Unsigned);
        }
        let need = msg_len + if signed { TRAILER_LEN } else { 0 };
        if buf.len() < need {
            return Err(Discard::Truncated {
                len: buf.len(),
                need,
            });
        }
        if buf.len() > need {
            return Err(Discard::Length {
                len: buf.len(),
                expected: need,
            });
        }
        // 5.2.8: summing the message with its checksum field in place gives
        // a complemented sum of zero when the checksum is right.
        let covered = match family {
            Family::V4 => &buf[..msg_len],
            Family::V6 => buf,
        };
        if checksum(src, dst, covered) != 0 {
            return Err(Discard::Checksum);
        }
        let trailer = buf
            .get(msg_len..)
            .and_then(|t| <[u8; TRAILER_LEN]>::try_from(t).ok());

        // 5.2.6: the reserved bits are ignored on receive.
        let max_adver_int = u16::from_be_bytes([int_hi, int_lo]) & MAX_INTERVAL_CS;
        let body = &body[..msg_len - HEADER_LEN];
        let addrs = match family {
            Family::V4 => body
                .as_chunks::<4>()
                .0
                .iter()
                .map(|octets| IpAddr::V4(Ipv4Addr::from(*octets)))
                .collect(),
            Family::V6 => body
                .as_chunks::<16>()
                .0
                .iter()
                .map(|octets| IpAddr::V6(Ipv6Addr::from(*octets)))
                .collect(),
        };
        Ok((
            Advert {
                vrid: Vrid(vrid),
                priority: Priority(priority),
                max_adver_int,
                addrs,
            },
            trailer,
        ))
    }
}

/// The VRRP checksum (RFC 9568 5.2.8): [`pseudo_header_checksum`] with
/// protocol 112.
pub(super) fn checksum(src: IpAddr, dst: IpAddr, msg: &[u8]) -> u16 {
    pseudo_header_checksum(src, dst, PROTO_VRRP, msg)
}

/// Who we are when checking a received packet.
#[derive(Debug, Clone, Copy)]
pub struct RxPolicy<'a> {
    pub vrid: Vrid,
    pub family: Family,
    /// Our configured priority is 255: we own the addresses (RFC 9568 7.1:
    /// an owner discards all adverts for its VRID).
    pub owner: bool,
    /// None: multicast mode. Some(peers): unicast mode; only these sources
    /// are accepted.
    pub unicast_peers: Option<&'a [IpAddr]>,
    /// The VIPs configured for this VRID (to compare with the advert's list).
    pub vips: &'a [IpAddr],
    /// This node's own addresses: our own packets looped back are discarded.
    pub own_addrs: &'a [IpAddr],
    /// `vrrp.auth_hmac` is set: every advert must carry an HMAC trailer
    /// (returned in [`Checked::trailer`] for the caller to verify).
    pub signed: bool,
}

/// An advertisement that passed every check of RFC 9568 7.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub advert: Advert,
    /// false: the address list differs from ours (accepted only because the
    /// sender is the owner, priority 255; RFC 9568 7.1 says log it).
    pub addrs_match: bool,
    /// The HMAC trailer, unverified (only with [`RxPolicy::signed`]).
    pub trailer: Option<[u8; TRAILER_LEN]>,
}

/// Full RFC 9568 7.1 check of one received packet: the cheap IP header
/// checks first, then the message, then whether it concerns our VRID.
pub fn check(rx: &Received, policy: &RxPolicy) -> Result<Checked, Discard> {
    // IPv4 and IPv6 virtual routers are separate instances even with one
    // VRID (RFC 9568 abstract, 1), so a packet of the other family is never
    // ours.
    if Family::of(&rx.src) != policy.family || Family::of(&rx.dst) != policy.family {
        return Err(Discard::Family {
            src: rx.src,
            dst: rx.dst,
        });
    }
    // Multicast loops back to the sender, and a raw socket sees its own
    // packets: without this, a master would hear itself as a peer.
    if policy.own_addrs.contains(&rx.src) {
        return Err(Discard::OwnPacket);
    }
    match policy.unicast_peers {
        None => {
            // 5.1.1.2, 5.1.2.2: advertisements go to the group.
            if rx.dst != group(policy.family) {
                return Err(Discard::Destination(rx.dst));
            }
            // 7.1: TTL / hop limit 255. Routers decrement it, so 255 proves
            // the sender is on our link (the GTSM argument of RFC 5082).
            if rx.hop_limit != HOP_LIMIT {
                return Err(Discard::HopLimit(rx.hop_limit));
            }
        }
        Some(peers) => {
            // Unicast mode is outside RFC 9568: peers may sit behind a
            // router, so the hop limit proves nothing and is not checked.
            // The sender is authenticated by its address instead.
            if !peers.contains(&rx.src) {
                return Err(Discard::NotPeer(rx.src));
            }
        }
    }
    // 7.1: version, complete packet, checksum.
    let (advert, trailer) = Advert::decode_framed(&rx.payload, rx.src, rx.dst, policy.signed)?;
    // Treated as malformed: with a zero interval, Master_Down_Interval
    // (6.1: 3 * interval + skew) would shrink to the skew time and backups
    // would take over between two adverts.
    if advert.max_adver_int == 0 {
        return Err(Discard::IntervalZero);
    }
    // 7.1: the VRID must be configured here.
    if advert.vrid != policy.vrid {
        return Err(Discard::OtherVrid(advert.vrid.0));
    }
    // 7.1: the address owner discards advertisements for its VRID; it is
    // master whenever it is up (6.4.1).
    if policy.owner {
        return Err(Discard::Owner);
    }
    // 7.1: compare the address list with ours. Order carries no meaning,
    // so compare as sets. A mismatch is dropped unless the sender is the
    // owner (priority 255), which wins regardless; the caller logs it.
    let theirs: BTreeSet<&IpAddr> = advert.addrs.iter().collect();
    let ours: BTreeSet<&IpAddr> = policy.vips.iter().collect();
    let addrs_match = theirs == ours;
    if !addrs_match && advert.priority != Priority::OWNER {
        return Err(Discard::AddrMismatch);
    }
    Ok(Checked {
        advert,
        addrs_match,
        trailer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 11));
    const PEER4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 12));
    const ME4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 13));
    const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100));
    const VIP4B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 101));
    const DST4: IpAddr = IpAddr::V4(GROUP_V4);
    const SRC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x11));
    const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100));
    const VIP6B: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101));
    const DST6: IpAddr = IpAddr::V6(GROUP_V6);

    /// Reference checksum, written apart from the module's: lay out the
    /// pseudo-header byte for byte as the RFCs draw it, append the message,
    /// pad to even length, sum big-endian words, fold, complement.
    fn reference_checksum(src: IpAddr, dst: IpAddr, msg: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                bytes.extend_from_slice(&s.octets());
                bytes.extend_from_slice(&d.octets());
                bytes.extend_from_slice(&[0, 112]);
                let len = u16::try_from(msg.len()).expect("message fits the IPv4 length");
                bytes.extend_from_slice(&len.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                bytes.extend_from_slice(&s.octets());
                bytes.extend_from_slice(&d.octets());
                let len = u32::try_from(msg.len()).expect("message fits the IPv6 length");
                bytes.extend_from_slice(&len.to_be_bytes());
                bytes.extend_from_slice(&[0, 0, 0, 112]);
            }
            _ => panic!("reference checksum needs one family"),
        }
        bytes.extend_from_slice(msg);
        if bytes.len() % 2 == 1 {
            bytes.push(0);
        }
        let mut sum: u32 = bytes
            .chunks_exact(2)
            .map(|pair| u32::from(pair[0]) << 8 | u32::from(pair[1]))
            .sum();
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !u16::try_from(sum).expect("folded to 16 bits")
    }

    fn advert4() -> Advert {
        Advert {
            vrid: Vrid(51),
            priority: Priority(100),
            max_adver_int: 100,
            addrs: vec![VIP4],
        }
    }

    fn with(edit: impl FnOnce(&mut Advert)) -> Advert {
        let mut advert = advert4();
        edit(&mut advert);
        advert
    }

    fn encoded(advert: &Advert, src: IpAddr, dst: IpAddr) -> Vec<u8> {
        advert.encode(src, dst).expect("valid advert encodes")
    }

    /// `advert4` from SRC4 to the group, edited by hand, checksum redone so
    /// that only the edit is wrong.
    fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = encoded(&advert4(), SRC4, DST4);
        edit(&mut buf);
        buf[6..8].fill(0);
        let sum = reference_checksum(SRC4, DST4, &buf);
        buf[6..8].copy_from_slice(&sum.to_be_bytes());
        buf
    }

    fn rx(advert: &Advert, src: IpAddr, dst: IpAddr, hop_limit: u8) -> Received {
        Received {
            src,
            dst,
            hop_limit,
            payload: encoded(advert, src, dst),
        }
    }

    fn accepted(advert: Advert, addrs_match: bool) -> Result<Checked, Discard> {
        Ok(Checked {
            advert,
            addrs_match,
            trailer: None,
        })
    }

    #[test]
    fn ipv4_fixture_round_trips() {
        #[rustfmt::skip]
        let mut fixture = vec![
            0x31, 51, 100, 1, // version 3 | type 1, VRID, priority, count
            0x00, 100, 0, 0,  // rsvd | 100 cs, checksum (below)
            10, 77, 0, 100,   // the VIP
        ];
        let sum = reference_checksum(SRC4, DST4, &fixture);
        // Also worked out by hand, so the reference cannot share a mistake.
        assert_eq!(sum, 0x74cf, "checksum of the IPv4 fixture");
        fixture[6..8].copy_from_slice(&sum.to_be_bytes());

        assert_eq!(encoded(&advert4(), SRC4, DST4), fixture, "encode");
        assert_eq!(
            Advert::decode(&fixture, SRC4, DST4),
            Ok(advert4()),
            "decode"
        );
    }

    #[test]
    fn ipv6_fixture_round_trips() {
        let advert = Advert {
            priority: Priority(200),
            max_adver_int: 4095,
            addrs: vec![VIP6, VIP6B],
            ..advert4()
        };
        #[rustfmt::skip]
        let mut fixture = vec![
            0x31, 51, 200, 2,
            0x0f, 0xff, 0, 0,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x01,
        ];
        let sum = reference_checksum(SRC6, DST6, &fixture);
        fixture[6..8].copy_from_slice(&sum.to_be_bytes());

        assert_eq!(encoded(&advert, SRC6, DST6), fixture, "encode");
        assert_eq!(Advert::decode(&fixture, SRC6, DST6), Ok(advert), "decode");
    }

    /// One row per structural check, with the edit that breaks only it.
    #[test]
    fn decode_fixtures() {
        let mut bad_sum = edited(|_| {});
        bad_sum[7] ^= 1;
        #[rustfmt::skip]
        let cases = [
            ("as sent", edited(|_| {}), Ok(advert4())),
            ("reserved bits set: ignored (5.2.6)", edited(|b| b[4] |= 0xf0), Ok(advert4())),
            ("version 2", edited(|b| b[0] = 0x21), Err(Discard::Version(2))),
            ("type 2", edited(|b| b[0] = 0x32), Err(Discard::Type(2))),
            ("count 0, no addresses", edited(|b| { b.truncate(HEADER_LEN); b[3] = 0 }), Err(Discard::AddrCount)),
            ("count 2, one address", edited(|b| b[3] = 2), Err(Discard::Truncated { len: 12, need: 16 })),
            ("one byte past the list", edited(|b| b.push(0)), Err(Discard::Length { len: 13, expected: 12 })),
            ("checksum one bit off", bad_sum, Err(Discard::Checksum)),
        ];
        for (what, buf, want) in cases {
            assert_eq!(Advert::decode(&buf, SRC4, DST4), want, "{what}");
        }
        let mixed = Discard::Family {
            src: SRC4,
            dst: DST6,
        };
        assert_eq!(
            Advert::decode(&edited(|_| {}), SRC4, DST6),
            Err(mixed),
            "mixed families"
        );
    }

    #[test]
    fn every_truncation_is_discarded() {
        for (src, dst, addrs) in [(SRC4, DST4, vec![VIP4, VIP4B]), (SRC6, DST6, vec![VIP6])] {
            let advert = Advert { addrs, ..advert4() };
            let buf = encoded(&advert, src, dst);
            for len in 0..buf.len() {
                let got = Advert::decode(&buf[..len], src, dst);
                assert!(
                    matches!(got, Err(Discard::Truncated { .. })),
                    "{len} of {} bytes: {got:?}",
                    buf.len()
                );
            }
            assert_eq!(Advert::decode(&buf, src, dst), Ok(advert), "full length");
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let buf = encoded(&advert4(), SRC4, DST4);
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let got = Advert::decode(&bad, SRC4, DST4);
            match bit / 8 {
                // Version/type and the count have checks of their own first.
                0 => assert!(
                    matches!(got, Err(Discard::Version(_) | Discard::Type(_))),
                    "bit {bit}: {got:?}"
                ),
                3 => assert!(got.is_err(), "bit {bit}: {got:?}"),
                _ => assert_eq!(got, Err(Discard::Checksum), "bit {bit}"),
            }
        }
        // The pseudo-header is covered too: the same bytes from another source.
        assert_eq!(Advert::decode(&buf, PEER4, DST4), Err(Discard::Checksum));
    }

    /// RFC 9568 7.1, one row per check and its passing counterpart. The base
    /// policy: VRID 51, IPv4, multicast, not owner, VIP4, own address ME4.
    #[test]
    fn check_fixtures() {
        type Tweak = fn(&mut RxPolicy<'static>);
        let keep: Tweak = |_| {};
        let unicast: Tweak = |p| p.unicast_peers = Some(&[PEER4]);
        let ipv6: Tweak = |p| {
            p.family = Family::V6;
            p.vips = &[VIP6];
        };
        let owner: Tweak = |p| p.owner = true;
        let signed: Tweak = |p| p.signed = true;
        let key = crate::keys::Keys::parse("k", &format!("1 {}", "ab".repeat(32))).expect("key");
        let signed_payload = advert4()
            .encode_signed(SRC4, DST4, key.signing(), 7)
            .expect("encodes");
        let mut bad_sum = signed_payload.clone();
        bad_sum[7] ^= 1;
        let other_vips: Tweak = |p| p.vips = &[VIP4B];
        let two_vips: Tweak = |p| p.vips = &[VIP4, VIP4B];
        let v6 = with(|a| a.addrs = vec![VIP6]);
        let owner_advert = with(|a| a.priority = Priority::OWNER);
        let reordered = with(|a| a.addrs = vec![VIP4B, VIP4]);

        let mc = |advert: &Advert| rx(advert, SRC4, DST4, 255);
        let payload = |payload| Received {
            payload,
            ..mc(&advert4())
        };
        let other_family = Discard::Family {
            src: SRC6,
            dst: DST6,
        };

        #[rustfmt::skip]
        let cases: Vec<(&str, Received, Tweak, Result<Checked, Discard>)> = vec![
            ("valid IPv4", mc(&advert4()), keep, accepted(advert4(), true)),
            ("valid IPv6", rx(&v6, SRC6, DST6, 255), ipv6, accepted(v6.clone(), true)),
            ("IPv6 packet, IPv4 router", rx(&v6, SRC6, DST6, 255), keep, Err(other_family)),
            ("our own packet", rx(&advert4(), ME4, DST4, 255), keep, Err(Discard::OwnPacket)),
            ("multicast, hop limit 254", rx(&advert4(), SRC4, DST4, 254), keep, Err(Discard::HopLimit(254))),
            ("multicast, sent to us", rx(&advert4(), SRC4, ME4, 255), keep, Err(Discard::Destination(ME4))),
            ("unicast peer, routed", rx(&advert4(), PEER4, ME4, 64), unicast, accepted(advert4(), true)),
            ("unicast, not a peer", rx(&advert4(), SRC4, ME4, 255), unicast, Err(Discard::NotPeer(SRC4))),
            ("decode error", payload(vec![0x31]), keep, Err(Discard::Truncated { len: 1, need: HEADER_LEN })),
            ("interval 0", payload(edited(|b| b[4..6].fill(0))), keep, Err(Discard::IntervalZero)),
            ("other VRID", mc(&with(|a| a.vrid = Vrid(52))), keep, Err(Discard::OtherVrid(52))),
            ("we own the VIPs", mc(&advert4()), owner, Err(Discard::Owner)),
            ("other VIPs, backup", mc(&advert4()), other_vips, Err(Discard::AddrMismatch)),
            ("other VIPs, owner", mc(&owner_advert), other_vips, accepted(owner_advert.clone(), false)),
            ("same VIPs, other order", mc(&reordered), two_vips, accepted(reordered.clone(), true)),
            ("a subset of our VIPs", mc(&advert4()), two_vips, Err(Discard::AddrMismatch)),
            // vrrp.auth_hmac: the trailer is required when on, and refused
            // as before (keepalived 2.2 does the same) when off.
            ("unsigned, auth_hmac on", mc(&advert4()), signed, Err(Discard::Unsigned)),
            ("signed, auth_hmac on", payload(signed_payload.clone()), signed,
                Ok(Checked { advert: advert4(), addrs_match: true, trailer: Some(<[u8; TRAILER_LEN]>::try_from(&signed_payload[12..]).expect("trailer")) })),
            ("signed, bad checksum", payload(bad_sum), signed, Err(Discard::Checksum)),
            ("signed, auth_hmac off", payload(signed_payload.clone()), keep, Err(Discard::Length { len: 40, expected: 12 })),
            ("signed, truncated trailer", payload(signed_payload[..39].to_vec()), signed, Err(Discard::Truncated { len: 39, need: 40 })),
        ];
        for (what, packet, tweak, want) in cases {
            let mut policy = RxPolicy {
                vrid: Vrid(51),
                family: Family::V4,
                owner: false,
                unicast_peers: None,
                vips: &[VIP4],
                own_addrs: &[ME4],
                signed: false,
            };
            tweak(&mut policy);
            assert_eq!(check(&packet, &policy), want, "{what}");
        }
    }

    #[test]
    fn encode_refuses_what_cannot_be_sent() {
        let mixed = |other| EncodeError::MixedFamilies { src: SRC4, other };
        #[rustfmt::skip]
        let cases = [
            (advert4(), DST6, mixed(DST6)),
            (with(|a| a.addrs.push(VIP6)), DST4, mixed(VIP6)),
            (with(|a| a.addrs.clear()), DST4, EncodeError::NoAddresses),
            (with(|a| a.addrs = vec![VIP4; 256]), DST4, EncodeError::TooManyAddresses(256)),
            (with(|a| a.max_adver_int = 0), DST4, EncodeError::Interval(0)),
            (with(|a| a.max_adver_int = 4096), DST4, EncodeError::Interval(4096)),
            (with(|a| a.vrid = Vrid(0)), DST4, EncodeError::VridZero),
        ];
        for (advert, dst, want) in cases {
            assert_eq!(advert.encode(SRC4, dst), Err(want));
        }
        // The limits themselves are fine.
        let widest = with(|a| {
            a.addrs = vec![VIP6; 255];
            a.max_adver_int = MAX_INTERVAL_CS;
        });
        let buf = encoded(&widest, SRC6, DST6);
        assert_eq!(buf.len(), HEADER_LEN + 255 * 16);
        assert_eq!(Advert::decode(&buf, SRC6, DST6), Ok(widest));
    }

    #[test]
    fn labels_are_listed_distinct_and_classified() {
        // Wire defects first, then policy, as in DISCARD_LABELS.
        let all = [
            Discard::HopLimit(1),
            Discard::Version(2),
            Discard::Type(2),
            Discard::Truncated { len: 0, need: 8 },
            Discard::Length {
                len: 13,
                expected: 12,
            },
            Discard::AddrCount,
            Discard::Checksum,
            Discard::Family {
                src: SRC4,
                dst: DST6,
            },
            Discard::IntervalZero,
            Discard::OtherVrid(1),
            Discard::Owner,
            Discard::AddrMismatch,
            Discard::NotPeer(SRC4),
            Discard::OwnPacket,
            Discard::Destination(SRC4),
            Discard::Unsigned,
            Discard::BadTrailer {
                ext_type: 2,
                reserved: 0,
            },
            Discard::UnknownKey(9),
            Discard::Forged,
            Discard::Stale {
                skew_s: 9,
                window_s: 5,
            },
            Discard::Replayed,
        ];
        let labels: Vec<&str> = all.iter().map(Discard::label).collect();
        assert_eq!(labels, DISCARD_LABELS, "one label per variant");
        assert_eq!(
            labels.iter().collect::<BTreeSet<_>>().len(),
            labels.len(),
            "labels are distinct"
        );
        let (malformed, policy) = all.split_at(9);
        assert!(malformed.iter().all(Discard::is_malformed), "wire defects");
        assert!(!policy.iter().any(Discard::is_malformed), "policy drops");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let policies = [None, Some(&[SRC4, SRC6][..])].map(|unicast_peers| RxPolicy {
            vrid: Vrid(51),
            family: Family::V4,
            owner: false,
            unicast_peers,
            vips: &[VIP4],
            own_addrs: &[],
            signed: false,
        });
        // xorshift64: deterministic, no dependency.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..10_000 {
            let len = usize::try_from(next() % 80).expect("small");
            let mut payload: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            // Half of them look like VRRPv3 so that the later checks run too.
            if let Some(first) = payload.first_mut()
                && next() % 2 == 0
            {
                *first = 0x31;
            }
            let (src, dst) = if next() % 2 == 0 {
                (SRC4, DST4)
            } else {
                (SRC6, DST6)
            };
            let _ = Advert::decode(&payload, src, dst);
            let packet = Received {
                src,
                dst,
                hop_limit: 255,
                payload,
            };
            for policy in &policies {
                let _ = check(&packet, policy);
            }
        }
    }
}
