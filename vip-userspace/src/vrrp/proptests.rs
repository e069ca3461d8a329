//! Property tests of the VRRP receive path (issue 7, bad input): whatever
//! arrives on the raw socket (the IPv4 header, the IPv6 control messages,
//! the VRRP message) is judged with `Some`/`None` or `Ok`/`Err`, never a
//! panic. Arbitrary bytes, and valid advertisements mutated field by field
//! so the checks past the checksum are reached too (random bytes almost
//! never carry a right checksum).
//!
//! Case counts are kept small (a few hundred each) so `cargo test` stays
//! fast; `PROPTEST_CASES=100000` runs more.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::net::{parse_cmsgs_v6, parse_ipv4};
use super::packet::{Advert, Discard, GROUP_V4, GROUP_V6, HEADER_LEN, RxPolicy, check, checksum};
use super::{Family, Priority, Received, Vrid};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Fail with the shrunk case, not a persistence file in the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn any_v4() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        Just(IpAddr::V4(GROUP_V4)),
        Just(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 11))),
        Just(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 12))),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
    ]
}

fn any_v6() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        Just(IpAddr::V6(GROUP_V6)),
        Just("fe80::11".parse::<IpAddr>().expect("addr")),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn any_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![any_v4(), any_v6()]
}

/// An address of one family: IPv6 if `v6`.
fn any_in(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 {
        any_v6().boxed()
    } else {
        any_v4().boxed()
    }
}

/// A valid advertisement of either family: source, destination, message.
fn valid_advert() -> impl Strategy<Value = (IpAddr, IpAddr, Advert)> {
    any::<bool>().prop_flat_map(valid_advert_in)
}

/// A valid advertisement of one family (IPv6 if `v6`).
fn valid_advert_in(v6: bool) -> impl Strategy<Value = (IpAddr, IpAddr, Advert)> {
    (
        // Mostly the VRID the policy has, so the checks behind it run.
        prop_oneof![Just(51u8), 1u8..=255],
        any::<u8>(),
        1u16..=4095,
        1usize..=8,
    )
        .prop_flat_map(move |(vrid, priority, interval, n)| {
            let dst = if v6 {
                IpAddr::V6(GROUP_V6)
            } else {
                IpAddr::V4(GROUP_V4)
            };
            (
                any_in(v6),
                Just(dst),
                proptest::collection::vec(any_in(v6), n),
            )
                .prop_map(move |(s, d, addrs)| {
                    (
                        s,
                        d,
                        Advert {
                            vrid: Vrid(vrid),
                            priority: Priority(priority),
                            max_adver_int: interval,
                            addrs,
                        },
                    )
                })
        })
}

/// One structure-aware edit of an encoded advertisement.
#[derive(Debug, Clone)]
enum Edit {
    /// Overwrite the byte at (index mod length).
    Set(usize, u8),
    Truncate(usize),
    Append(Vec<u8>),
    /// Version/type byte, VRID, priority, count, interval bytes.
    Field(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (0usize..80).prop_map(Edit::Truncate),
        proptest::collection::vec(any::<u8>(), 1..40).prop_map(Edit::Append),
        (
            prop_oneof![Just(0usize), Just(1), Just(2), Just(3), Just(4), Just(5)],
            prop_oneof![
                Just(0u8),
                Just(1),
                Just(0x21),
                Just(0x31),
                Just(0x32),
                Just(255),
                any::<u8>()
            ]
        )
            .prop_map(|(i, b)| Edit::Field(i, b)),
    ]
}

fn apply(buf: &mut Vec<u8>, e: &Edit) {
    match e {
        Edit::Set(i, b) if !buf.is_empty() => {
            let n = buf.len();
            buf[i % n] = *b;
        }
        Edit::Set(..) => {}
        Edit::Truncate(n) => buf.truncate(*n),
        Edit::Append(tail) => buf.extend_from_slice(tail),
        Edit::Field(i, b) => {
            if let Some(x) = buf.get_mut(*i) {
                *x = *b;
            }
        }
    }
}

/// The VRRP checksum (RFC 9568 5.2.8) recomputed over an edited message,
/// so the edit itself, not the checksum, is what the checks see. `src` and
/// `dst` are one family (as `valid_advert` makes them).
fn fix_checksum(buf: &mut [u8], src: IpAddr, dst: IpAddr) {
    if buf.len() < HEADER_LEN {
        return;
    }
    buf[6..8].fill(0);
    let c = checksum(src, dst, buf);
    buf[6..8].copy_from_slice(&c.to_be_bytes());
}

fn policy<'a>(
    family: Family,
    unicast: Option<&'a [IpAddr]>,
    vips: &'a [IpAddr],
    own: &'a [IpAddr],
    owner: bool,
) -> RxPolicy<'a> {
    RxPolicy {
        vrid: Vrid(51),
        family,
        owner,
        unicast_peers: unicast,
        vips,
        own_addrs: own,
        signed: false,
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes from arbitrary addresses: decode answers, never panics,
    /// and what it accepts is exactly as long as its count says.
    #[test]
    fn decode_takes_any_bytes(
        buf in proptest::collection::vec(any::<u8>(), 0..600),
        src in any_addr(),
        dst in any_addr(),
    ) {
        if let Ok(a) = Advert::decode(&buf, src, dst) {
            let alen = if src.is_ipv4() { 4 } else { 16 };
            prop_assert_eq!(buf.len(), HEADER_LEN + a.addrs.len() * alen);
            prop_assert!(!a.addrs.is_empty());
        }
    }

    /// The full receive check with any packet and any policy: no panic.
    #[test]
    fn check_takes_any_packet(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        src in any_addr(),
        dst in any_addr(),
        hop_limit in any::<u8>(),
        v6 in any::<bool>(),
        unicast in any::<bool>(),
        owner in any::<bool>(),
        peers in proptest::collection::vec(any_addr(), 0..3),
        vips in proptest::collection::vec(any_addr(), 0..3),
    ) {
        let rx = Received { src, dst, hop_limit, payload };
        let family = if v6 { Family::V6 } else { Family::V4 };
        let own = [src];
        let own = if hop_limit % 7 == 0 { &own[..] } else { &[][..] };
        let p = policy(family, unicast.then_some(&peers[..]), &vips, own, owner);
        let _ = check(&rx, &p);
    }

    /// Valid adverts edited one to four times, with the checksum redone half
    /// the time so that the checks behind it (count, length, interval, VRID,
    /// owner, address list) are reached (a redone checksum is never the
    /// discard reason): no panic, and an accepted message is one that
    /// encodes back to the same bytes (reserved bits aside).
    #[test]
    fn edited_adverts_are_judged(
        (src, dst, advert) in valid_advert(),
        edits in proptest::collection::vec(edit(), 1..5),
        redo_checksum in any::<bool>(),
        hop_limit in prop_oneof![Just(255u8), Just(254), Just(1), any::<u8>()],
        unicast in any::<bool>(),
    ) {
        let mut buf = advert.encode(src, dst).expect("a valid advert encodes");
        for e in &edits {
            apply(&mut buf, e);
        }
        if redo_checksum {
            fix_checksum(&mut buf, src, dst);
        }
        let family = Family::of(&src);
        let peers = [src];
        let vips = advert.addrs.clone();
        let rx = Received { src, dst, hop_limit, payload: buf.clone() };
        let p = policy(family, unicast.then_some(&peers[..]), &vips, &[], false);
        match check(&rx, &p) {
            Ok(c) => {
                let again = c.advert.encode(src, dst).expect("an accepted advert encodes");
                let mut want = buf.clone();
                // 5.2.6: the reserved nibble is ignored on receive, sent as 0.
                want[4] &= 0x0f;
                fix_checksum(&mut want, src, dst);
                prop_assert_eq!(again, want);
            }
            Err(d) => {
                prop_assert!(
                    !(redo_checksum && d == Discard::Checksum),
                    "a redone checksum is refused: {:?}",
                    buf
                );
            }
        }
    }

    /// The unicast-mode rules hold whatever the message: a source that is not
    /// a configured peer is `NotPeer`, ours is `OwnPacket`, before any byte of
    /// the message is looked at; in multicast mode a hop limit other than
    /// 255 is `HopLimit` (RFC 9568 7.1). Both families.
    #[test]
    fn sender_rules_come_first(
        ((src, dst, advert), other) in any::<bool>()
            .prop_flat_map(|v6| (valid_advert_in(v6), any_in(v6))),
        hop_limit in any::<u8>(),
        garbage in any::<bool>(),
    ) {
        // A vacuous case rather than a rejection keeps proptest's reject
        // budget out of it.
        if other == src {
            return Ok(());
        }
        let family = Family::of(&src);
        let mut payload = advert.encode(src, dst).expect("encodes");
        if garbage {
            payload.truncate(3);
        }
        let vips = advert.addrs.clone();
        let peers = [other];
        let rx = Received { src, dst, hop_limit, payload: payload.clone() };
        let r = check(&rx, &policy(family, Some(&peers), &vips, &[], false));
        prop_assert_eq!(r, Err(Discard::NotPeer(src)));
        let own = [src];
        let r = check(&rx, &policy(family, Some(&own), &vips, &own, false));
        prop_assert_eq!(r, Err(Discard::OwnPacket));
        if hop_limit != 255 {
            let r = check(&rx, &policy(family, None, &vips, &[], false));
            prop_assert_eq!(r, Err(Discard::HopLimit(hop_limit)));
        }
    }

    /// The IPv4 header in front of a raw socket's payload: any bytes.
    #[test]
    fn ipv4_header_takes_any_bytes(buf in proptest::collection::vec(any::<u8>(), 0..120)) {
        if let Some(h) = parse_ipv4(&buf) {
            prop_assert!(h.payload.start <= h.payload.end && h.payload.end <= buf.len());
            prop_assert!(h.payload.start >= 20);
        }
    }

    /// A valid IPv4 header with IHL, total length and version edited.
    #[test]
    fn ipv4_header_edited(
        ver_ihl in any::<u8>(),
        total in prop_oneof![0u16..80, any::<u16>()],
        body in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut buf = super::net::ipv4_header(
            Ipv4Addr::new(10, 77, 0, 11),
            GROUP_V4,
            (20 + body.len()) as u16,
        )
        .to_vec();
        buf.extend_from_slice(&body);
        buf[0] = ver_ihl;
        buf[2..4].copy_from_slice(&total.to_be_bytes());
        match parse_ipv4(&buf) {
            Some(h) => {
                prop_assert_eq!(ver_ihl >> 4, 4);
                prop_assert_eq!(h.payload, usize::from(ver_ihl & 0x0f) * 4..usize::from(total));
            }
            None => prop_assert!(
                ver_ihl >> 4 != 4
                    || ver_ihl & 0x0f < 5
                    || usize::from(total) < usize::from(ver_ihl & 0x0f) * 4
                    || usize::from(total) > buf.len()
            ),
        }
    }

    /// IPv6 control messages: any bytes, no panic.
    #[test]
    fn cmsgs_take_any_bytes(buf in proptest::collection::vec(any::<u8>(), 0..160)) {
        let _ = parse_cmsgs_v6(&buf);
    }

    /// A well-formed IPV6_HOPLIMIT message, then one whose length word is
    /// anything, including lengths that overflow when added to the offset
    /// (the kernel writes these, but a parser that trusts a length word is
    /// one bug away from reading past the buffer): the first still counts.
    #[test]
    fn cmsg_lengths_edited(
        len in prop_oneof![
            0usize..64,
            Just(usize::MAX),
            Just(usize::MAX - 7),
            (usize::MAX - 64)..=usize::MAX,
            any::<usize>()
        ],
        hop in 0i32..=255,
        tail in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let hdr = std::mem::size_of::<libc::cmsghdr>();
        let cmsg = |len: usize, ty: i32, data: &[u8]| {
            let mut m = Vec::new();
            m.extend_from_slice(&len.to_ne_bytes());
            m.extend_from_slice(&libc::IPPROTO_IPV6.to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.resize(hdr, 0);
            m.extend_from_slice(data);
            m
        };
        let mut buf = cmsg(hdr + 4, libc::IPV6_HOPLIMIT, &hop.to_ne_bytes());
        // CMSG_ALIGN: the next message starts on a size_t boundary.
        buf.resize(buf.len().next_multiple_of(std::mem::size_of::<usize>()), 0);
        buf.extend_from_slice(&cmsg(len, libc::IPV6_PKTINFO, &tail));
        let info = parse_cmsgs_v6(&buf);
        prop_assert_eq!(info.hop_limit, u8::try_from(hop).ok());
    }
}
