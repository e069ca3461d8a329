//! The trailer against the draft's appendix wire images, one changed field
//! at a time, and the replay guard and sequence as pure functions of time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::vrrp::packet::{Advert, GROUP_V4};
use crate::vrrp::{Priority, Vrid};

/// The draft appendix's key: bytes 00..1f under id 1.
const KEY1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEY2: &str = "2 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
/// The appendix's sequence: seconds 0x68000000, fraction one half, counter 0.
const SEQ: u64 = 0x6800_0000_8000_0000;

fn keys(text: &str) -> Keys {
    Keys::parse("k", text).expect("valid key file")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn trailer_of(buf: &[u8]) -> [u8; TRAILER_LEN] {
    <[u8; TRAILER_LEN]>::try_from(&buf[buf.len() - TRAILER_LEN..]).expect("28 bytes")
}

/// The time the appendix's sequence was made at.
fn seq_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(0x6800_0000) + Duration::from_millis(500)
}

const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));
const SRC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10));
const DST6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x20));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x100));

/// draft-cassen-vrrp-auth-hmac appendix, IPv4: VRID 51, priority 200, one
/// VIP, 1 s. Its checksum is the appendix's message-only sum (not the
/// RFC 9568 pseudo-header one), so only the trailer is checked here.
const IPV4_IMAGE: &str = "3133c80100644402c0000264010100006800000080000000\
                          1b84bc4e8e43892dc6d98448f8ee2265";
/// The appendix, IPv6, from fe80::10 to fe80::20: the checksum is the
/// transport one over the whole payload, trailer included.
const IPV6_IMAGE: &str = "3133c8010064a2e9fe800000000000000000000000000100\
                          010100006800000080000000c8c56146ebfd66ee10ec4d8186461b78";

fn advert(vip: IpAddr) -> Advert {
    Advert {
        vrid: Vrid(51),
        priority: Priority(200),
        max_adver_int: 100,
        addrs: vec![vip],
    }
}

#[test]
fn the_draft_appendix_images_verify_and_ours_are_byte_identical() {
    let k = keys(KEY1);
    for (image, src, msg_len) in [(IPV4_IMAGE, SRC4, 12), (IPV6_IMAGE, SRC6, 24)] {
        let img = unhex(image);
        let t = trailer_of(&img);
        assert_eq!(
            verify(&k, src, &img[..msg_len], &t),
            Ok(Trailer {
                key_id: 1,
                seq: SEQ
            }),
            "{image}"
        );
        assert_eq!(
            sign(k.signing(), src, &img[..msg_len], SEQ),
            t,
            "our trailer for the appendix message is the appendix's"
        );
    }
    // The whole IPv6 packet, checksum included, as our encoder writes it.
    let ours = advert(VIP6)
        .encode_signed(SRC6, DST6, k.signing(), SEQ)
        .expect("encodes");
    assert_eq!(ours, unhex(IPV6_IMAGE), "IPv6 wire image");
    let (a, t) = Advert::decode_framed(&ours, SRC6, DST6, true).expect("decodes");
    assert_eq!(a, advert(VIP6));
    assert_eq!(t, Some(trailer_of(&ours)));
}

#[test]
fn ipv4_signed_checksum_covers_the_message_only() {
    // RFC 9568 5.2.8 for IPv4: the pseudo-header's length is the
    // message's; keepalived checks the sum over the message alone and
    // then the trailer. Derived here by summing by hand.
    let k = keys(KEY1);
    let dst = IpAddr::V4(GROUP_V4);
    let ours = advert(VIP4)
        .encode_signed(SRC4, dst, k.signing(), SEQ)
        .expect("encodes");
    assert_eq!(ours.len(), 12 + TRAILER_LEN);
    let plain = advert(VIP4).encode(SRC4, dst).expect("encodes");
    assert_eq!(
        ours[..12],
        plain[..],
        "the message, checksum included, is the unsigned one"
    );
    let img = unhex(IPV4_IMAGE);
    assert_eq!(ours[12..], img[12..], "the trailer is the appendix's");
    assert!(Advert::decode_framed(&ours, SRC4, dst, true).is_ok());
}

#[test]
fn each_changed_field_is_refused_for_its_reason() {
    let k = keys(KEY1);
    let img = unhex(IPV6_IMAGE);
    // Offsets into the IPv6 image: message 0..24, trailer 24..52.
    for (what, at, want) in [
        ("priority", 2, Err(Discard::Forged)),
        ("interval", 5, Err(Discard::Forged)),
        ("checksum (read as zero)", 6, Ok(())),
        ("the VIP", 23, Err(Discard::Forged)),
        (
            "ext type",
            24,
            Err(Discard::BadTrailer {
                ext_type: 0xfe,
                reserved: 0,
            }),
        ),
        ("key id", 25, Err(Discard::UnknownKey(0xfe))),
        (
            "reserved",
            26,
            Err(Discard::BadTrailer {
                ext_type: 1,
                reserved: 0xff00,
            }),
        ),
        ("seconds", 28, Err(Discard::Forged)),
        ("counter", 35, Err(Discard::Forged)),
        ("hmac", 40, Err(Discard::Forged)),
    ] {
        let mut m = img.clone();
        m[at] ^= 0xff;
        let got = verify(&k, SRC6, &m[..24], &trailer_of(&m)).map(|_| ());
        assert_eq!(got, want, "{what}");
    }
    // Another sender's address or another VRID is another pseudo-header.
    let other = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x11));
    assert_eq!(
        verify(&k, other, &img[..24], &trailer_of(&img)),
        Err(Discard::Forged)
    );
    let mut vrid = img.clone();
    vrid[1] = 52;
    assert_eq!(
        verify(&k, SRC6, &vrid[..24], &trailer_of(&vrid)),
        Err(Discard::Forged)
    );
    // Another key under the same id.
    let wrong = keys("1 ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100");
    assert_eq!(
        verify(&wrong, SRC6, &img[..24], &trailer_of(&img)),
        Err(Discard::Forged)
    );
}

#[test]
fn during_rotation_the_old_and_the_new_key_verify() {
    let both = keys(&format!("{KEY2}\n{KEY1}"));
    let old = keys(KEY1);
    let new = keys(KEY2);
    let msg = &advert(VIP6).encode(SRC6, DST6).expect("encodes");
    for signer in [&old, &new] {
        let t = sign(signer.signing(), SRC6, msg, SEQ);
        assert!(verify(&both, SRC6, msg, &t).is_ok());
    }
    let t = sign(new.signing(), SRC6, msg, SEQ);
    assert_eq!(verify(&old, SRC6, msg, &t), Err(Discard::UnknownKey(2)));
}

#[test]
fn the_guard_refuses_stale_and_replayed_trailers_per_sender() {
    let k = keys(KEY1);
    let now = seq_time();
    let msg = advert(VIP6).encode(SRC6, DST6).expect("encodes");
    let signed = |seq| sign(k.signing(), SRC6, &msg, seq);
    let mut g = Guard::new(Duration::from_secs(5));
    assert!(g.check(&k, SRC6, &msg, &signed(SEQ), now).is_ok());
    assert_eq!(
        g.check(&k, SRC6, &msg, &signed(SEQ), now),
        Err(Discard::Replayed)
    );
    assert_eq!(
        g.check(&k, SRC6, &msg, &signed(SEQ - 1), now),
        Err(Discard::Replayed),
        "older than the mark"
    );
    assert!(g.check(&k, SRC6, &msg, &signed(SEQ + 1), now).is_ok());
    // Another sender has its own mark (its trailer binds its own address).
    let other = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x11));
    let t = sign(k.signing(), other, &msg, SEQ);
    assert!(g.check(&k, other, &msg, &t, now).is_ok());
    // Outside the window either way, whatever the HMAC.
    for (secs, skew) in [(6i64, 6i64), (-6, -6)] {
        let seq = SEQ.wrapping_add_signed(-secs << 32) + 7;
        assert_eq!(
            g.check(&k, SRC6, &msg, &signed(seq), now),
            Err(Discard::Stale {
                skew_s: skew,
                window_s: 5
            })
        );
    }
    // A forged trailer never moves the mark: the next real one still passes.
    let mut forged = signed(SEQ + 100);
    forged[27] ^= 1;
    assert_eq!(g.check(&k, SRC6, &msg, &forged, now), Err(Discard::Forged));
    assert!(g.check(&k, SRC6, &msg, &signed(SEQ + 2), now).is_ok());
    // A mark older than the window is forgotten (a sender whose clock was
    // stepped back recovers once the window has passed).
    let later = now + Duration::from_secs(7);
    let back = clock_seq(later) - (1 << 32);
    assert!(g.check(&k, SRC6, &msg, &signed(back), later).is_ok());
}

#[test]
fn the_sequence_follows_the_clock_and_never_repeats() {
    let w = Duration::from_secs(5);
    let mut s = Sequencer::default();
    let t = seq_time();
    let a = s.next(t, w);
    assert_eq!(a, SEQ, "seconds, then the binary fraction");
    assert_eq!(s.next(t, w), SEQ + 1, "the same instant: the counter");
    let b = s.next(t + Duration::from_millis(100), w);
    assert!(after(b, SEQ + 1) && b >> 32 == SEQ >> 32);
    // Stepped back within the window: keep counting up.
    assert_eq!(s.next(t - Duration::from_secs(2), w), b + 1);
    // Stepped back beyond it: receivers would call ours stale; follow the clock.
    let back = t - Duration::from_secs(60);
    assert_eq!(s.next(back, w), clock_seq(back));
    // 2106: the seconds wrap and serial arithmetic keeps the order.
    assert!(after(5 << 32, 0xffff_fffe_u64 << 32));
}

#[test]
fn default_window_is_three_intervals_and_at_least_five_seconds() {
    assert_eq!(
        default_window(Duration::from_millis(100)),
        Duration::from_secs(5)
    );
    assert_eq!(
        default_window(Duration::from_secs(2)),
        Duration::from_secs(6)
    );
    assert_eq!(
        default_window(Duration::from_millis(2010)),
        Duration::from_secs(7),
        "rounded up to whole seconds"
    );
}
