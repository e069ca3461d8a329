use super::*;

#[test]
fn ipv4_header_fixture() {
    let h = ipv4_header(
        Ipv4Addr::new(10, 77, 0, 10),
        Ipv4Addr::new(224, 0, 0, 18),
        32,
    );
    #[rustfmt::skip]
        let want: [u8; 20] = [
            0x45, 0xc0, 0x00, 0x20, // v4, IHL 5, CS6, total 32
            0x00, 0x00, 0x00, 0x00, // id 0, DF clear, offset 0
            0xff, 0x70, 0x00, 0x00, // TTL 255, VRRP, checksum (below)
            10, 77, 0, 10,
            224, 0, 0, 18,
        ];
    assert_eq!(h[..10], want[..10], "fields before the checksum");
    assert_eq!(h[12..], want[12..], "addresses");
    // Independent check: a correct header sums to 0xffff, so its
    // checksum over itself is 0 (RFC 1071 section 1).
    assert_eq!(internet_checksum(&h), 0, "header checksum of {h:02x?}");
    assert_eq!(u16::from_be_bytes([h[10], h[11]]), 0xd044, "known checksum");
}

fn packet(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut p = header.to_vec();
    p.extend_from_slice(payload);
    p
}

#[test]
fn parse_ipv4_plain_and_with_options() {
    let src = Ipv4Addr::new(10, 77, 0, 11);
    let dst = GROUP_V4;
    let payload = [0x31, 51, 100, 1, 0, 100, 0xaa, 0xbb, 10, 77, 0, 100];
    let h = ipv4_header(src, dst, 32);
    let p = packet(&h, &payload);
    let f = parse_ipv4(&p).expect("plain header parses");
    assert_eq!((f.src, f.dst, f.ttl), (src, dst, 255));
    assert_eq!(&p[f.payload], &payload);

    // IHL 6: one 4-byte option (router alert) before the payload.
    let mut h6 = h.to_vec();
    h6[0] = 0x46;
    h6[2..4].copy_from_slice(&36u16.to_be_bytes());
    h6.extend_from_slice(&[0x94, 0x04, 0x00, 0x00]);
    let p = packet(&h6, &payload);
    let f = parse_ipv4(&p).expect("header with options parses");
    assert_eq!(f.payload, 24..36);
    assert_eq!(&p[f.payload], &payload);

    // Trailing bytes beyond Total Length (link padding) are not payload.
    let mut padded = packet(&h, &payload);
    padded.extend_from_slice(&[0; 14]);
    assert_eq!(parse_ipv4(&padded).expect("padded").payload, 20..32);
}

#[test]
fn parse_ipv4_rejects_malformed_without_panicking() {
    let h = ipv4_header(Ipv4Addr::LOCALHOST, GROUP_V4, 32);
    let p = packet(&h, &[0; 12]);
    for n in 0..p.len() {
        assert_eq!(parse_ipv4(&p[..n]), None, "truncated to {n} bytes");
    }
    let bad = |f: fn(&mut Vec<u8>)| {
        let mut q = p.clone();
        f(&mut q);
        parse_ipv4(&q)
    };
    assert_eq!(bad(|q| q[0] = 0x65), None, "version 6");
    assert_eq!(bad(|q| q[0] = 0x44), None, "IHL 4 < 5");
    assert_eq!(bad(|q| q[0] = 0x4f), None, "IHL 15 beyond the packet");
    assert_eq!(
        bad(|q| q[2..4].copy_from_slice(&[0, 19])),
        None,
        "total < IHL"
    );
    assert_eq!(
        bad(|q| q[2..4].copy_from_slice(&[0, 33])),
        None,
        "total > len"
    );
    // Every length and every first byte: no panic.
    for b in 0..=255u8 {
        let mut q = p.clone();
        q[0] = b;
        for n in 0..q.len() {
            let _ = parse_ipv4(&q[..n]);
        }
    }
}

fn cmsg(level: c_int, ty: c_int, data: &[u8]) -> Vec<u8> {
    let len = CMSG_HDR + data.len();
    let mut m = vec![0u8; cmsg_align(len)];
    m[..LEVEL_AT].copy_from_slice(&len.to_ne_bytes());
    m[LEVEL_AT..TYPE_AT].copy_from_slice(&level.to_ne_bytes());
    m[TYPE_AT..TYPE_AT + 4].copy_from_slice(&ty.to_ne_bytes());
    m[CMSG_HDR..len].copy_from_slice(data);
    m
}

#[test]
fn cmsg_layout_matches_libc() {
    // SAFETY: CMSG_LEN/CMSG_SPACE are pure arithmetic.
    let (l, s) = unsafe { (libc::CMSG_LEN(20), libc::CMSG_SPACE(20)) };
    assert_eq!(CMSG_HDR + PKTINFO_LEN, l as usize);
    assert_eq!(cmsg_align(CMSG_HDR + PKTINFO_LEN), s as usize);
    assert_eq!(PKTINFO_LEN, 20);
    let mut buf = [0u8; 64];
    let src: Ipv6Addr = "fe80::77:ff:fe00:11".parse().expect("addr");
    let n = write_pktinfo_cmsg(&mut buf, src, 7);
    assert_eq!(n, s as usize);
    assert_eq!(parse_cmsgs_v6(&buf[..n]).dst, Some(src));
    assert_eq!(write_pktinfo_cmsg(&mut buf[..10], src, 7), 0, "no room");
}

#[test]
fn cmsgs_hop_limit_and_pktinfo_in_any_order() {
    let dst = GROUP_V6;
    let mut pktinfo = dst.octets().to_vec();
    pktinfo.extend_from_slice(&3u32.to_ne_bytes());
    let hop = cmsg(
        libc::IPPROTO_IPV6,
        libc::IPV6_HOPLIMIT,
        &255i32.to_ne_bytes(),
    );
    let info = cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &pktinfo);
    let other = cmsg(libc::SOL_SOCKET, libc::IPV6_HOPLIMIT, &7i32.to_ne_bytes());
    let want = V6Info {
        dst: Some(dst),
        hop_limit: Some(255),
    };
    assert_eq!(parse_cmsgs_v6(&[hop.clone(), info.clone()].concat()), want);
    assert_eq!(
        parse_cmsgs_v6(&[other.clone(), info.clone(), hop.clone()].concat()),
        want,
        "other levels are skipped"
    );
    assert_eq!(parse_cmsgs_v6(&[]), V6Info::default());
    // Truncated anywhere: what fits is read, nothing panics.
    let all = [info.clone(), hop].concat();
    // The last message needs its data, not its trailing padding.
    let hop_end = info.len() + CMSG_HDR + 4;
    for n in 0..=all.len() {
        let got = parse_cmsgs_v6(&all[..n]);
        let want = (n >= hop_end).then_some(255);
        assert_eq!(got.hop_limit, want, "hop limit from {n} bytes");
    }
    // A cmsg_len smaller than its header ends the walk (no endless loop).
    let mut zero = other;
    zero[..LEVEL_AT].copy_from_slice(&0usize.to_ne_bytes());
    assert_eq!(
        parse_cmsgs_v6(&[zero, want_hop()].concat()),
        V6Info::default()
    );
    // A hop limit outside 0..=255 is not one.
    let weird = cmsg(
        libc::IPPROTO_IPV6,
        libc::IPV6_HOPLIMIT,
        &256i32.to_ne_bytes(),
    );
    assert_eq!(parse_cmsgs_v6(&weird).hop_limit, None);
    // A length word that overflows the offset ends the walk (the
    // minimal case proptest found: a panic before checked_add).
    let mut huge = want_hop();
    huge[..LEVEL_AT].copy_from_slice(&usize::MAX.to_ne_bytes());
    let info = parse_cmsgs_v6(&[want_hop(), huge].concat());
    assert_eq!(info.hop_limit, Some(255));
    assert_eq!(info.dst, None);
}

fn want_hop() -> Vec<u8> {
    cmsg(
        libc::IPPROTO_IPV6,
        libc::IPV6_HOPLIMIT,
        &255i32.to_ne_bytes(),
    )
}

#[test]
fn scopes() {
    let p = |s: &str| s.parse::<Ipv6Addr>().expect("addr");
    assert!(needs_scope(&p("fe80::1")));
    assert!(needs_scope(&GROUP_V6));
    assert!(needs_scope(&p("ff01::1")));
    assert!(!needs_scope(&p("ff05::2")));
    assert!(!needs_scope(&p("fd77::11")));
}

#[test]
fn errors_name_the_interface_and_the_fix() {
    let e = NetError::NoLinkLocal {
        ifname: "eth0".into(),
    };
    let s = e.to_string();
    assert!(s.starts_with("eth0: no IPv6 link-local address"), "{s}");
    assert!(s.contains("net.ipv6.conf.eth0.disable_ipv6=0"), "{s}");
}
