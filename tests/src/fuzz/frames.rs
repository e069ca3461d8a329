//! The valid frames the mutations start from: every kind the issue names, and
//! the helpers that insert VLAN tags and IPv6 extension headers.

use std::net::{IpAddr, Ipv4Addr};

use super::reference::{
    CLIENT4, CLIENT6, DNS, NODE4, NODE6, PORT, REPLY_PORT, VIP4, VIP4_DEAD, VIP4_LOCAL, VIP6,
    VIP6_DEAD, be16,
};
use crate::packet::{L4, MAC_CLIENT, Pkt, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};

fn tcp(src: IpAddr, dst: IpAddr, dport: u16, flags: u8) -> Pkt {
    Pkt::tcp(src, 40000, dst, dport, flags)
}

/// Valid frames the mutations start from: every kind the issue names.
pub fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    let (c4, c6): (IpAddr, IpAddr) = (CLIENT4.into(), CLIENT6.into());
    let (v4, v6): (IpAddr, IpAddr) = (VIP4.into(), VIP6.into());
    let data = |p: Pkt| p.payload(b"GET /readyz HTTP/1.1\r\n\r\n");
    let mut f: Vec<(&'static str, Vec<u8>)> = vec![
        ("v4 SYN to the VIP", tcp(c4, v4, PORT, TCP_SYN).build()),
        (
            "v4 data to the VIP",
            data(tcp(c4, v4, PORT, TCP_ACK | TCP_PSH)).build(),
        ),
        (
            "v4 FIN to the VIP",
            tcp(c4, v4, PORT, TCP_FIN | TCP_ACK).build(),
        ),
        ("v4 RST to the VIP", tcp(c4, v4, PORT, TCP_RST).build()),
        (
            "v4 SYN with TCP options",
            Pkt {
                // MSS 1460, SACK permitted, timestamps, window scale 7.
                tcp_options: vec![
                    2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
                ],
                ..tcp(c4, v4, PORT, TCP_SYN)
            }
            .build(),
        ),
        (
            "v4 SYN with IP options",
            Pkt {
                // Router alert, then a record-route with room for 2 hops.
                ip_options: vec![0x94, 4, 0, 0, 7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..tcp(c4, v4, PORT, TCP_SYN)
            }
            .build(),
        ),
        (
            "v4 SYN with an 802.1Q tag",
            Pkt {
                vlan: Some(100),
                ..tcp(c4, v4, PORT, TCP_SYN)
            }
            .build(),
        ),
        (
            "v4 SYN to the dead service",
            tcp(c4, VIP4_DEAD.into(), PORT, TCP_SYN).build(),
        ),
        (
            "v4 data to the dead service",
            data(tcp(c4, VIP4_DEAD.into(), PORT, TCP_ACK | TCP_PSH)).build(),
        ),
        (
            "v4 SYN to the local backend",
            tcp(c4, VIP4_LOCAL.into(), PORT, TCP_SYN).build(),
        ),
        (
            "v4 SSH to the node",
            tcp(c4, NODE4.into(), 22, TCP_SYN).build(),
        ),
        ("v4 the VIP on port 22", tcp(c4, v4, 22, TCP_SYN).build()),
        (
            "v4 a reply-range port on the nat VIP",
            tcp(c4, VIP4_DEAD.into(), REPLY_PORT, TCP_ACK).build(),
        ),
        (
            "v4 UDP to the UDP service",
            Pkt::udp(c4, 5353, v4, DNS).payload(b"query").build(),
        ),
        ("v4 UDP to a TCP port", Pkt::udp(c4, 5353, v4, PORT).build()),
        ("v6 SYN to the VIP", tcp(c6, v6, PORT, TCP_SYN).build()),
        (
            "v6 data to the VIP",
            data(tcp(c6, v6, PORT, TCP_ACK | TCP_PSH)).build(),
        ),
        (
            "v6 SYN with an 802.1Q tag",
            Pkt {
                vlan: Some(7),
                ..tcp(c6, v6, PORT, TCP_SYN)
            }
            .build(),
        ),
        (
            "v6 SYN to the dead service",
            tcp(c6, VIP6_DEAD.into(), PORT, TCP_SYN).build(),
        ),
        (
            "v6 FIN without ACK to the dead service",
            tcp(c6, VIP6_DEAD.into(), PORT, TCP_FIN)
                .payload(b"xyz")
                .build(),
        ),
        (
            "v6 UDP to the dead UDP service",
            Pkt::udp(c6, 5353, VIP6_DEAD.into(), DNS).build(),
        ),
        ("v6 to the node", tcp(c6, NODE6.into(), 22, TCP_SYN).build()),
        ("ARP request for the VIP", arp()),
        ("VRRPv3 advert (IPv4)", vrrp4()),
        ("VRRPv3 advert (IPv6)", vrrp6()),
        ("ICMP echo to the VIP", icmp4()),
        ("ICMPv6 neighbour solicitation", icmp6()),
        (
            "v4 first fragment to the VIP",
            Pkt {
                frag: 0x2000,
                ..data(tcp(c4, v4, PORT, TCP_ACK))
            }
            .build(),
        ),
        (
            "v4 later fragment to the VIP",
            Pkt {
                frag: 0x0003,
                ..data(tcp(c4, v4, PORT, TCP_ACK))
            }
            .build(),
        ),
        ("LLDP", lldp()),
    ];
    // Extension-header and double-tag variants of valid packets.
    let syn6 = tcp(c6, v6, PORT, TCP_SYN).build();
    f.push((
        "v6 SYN behind hop-by-hop options",
        insert_ext6(&syn6, 14, 0),
    ));
    f.push((
        "v6 SYN behind a fragment header",
        insert_ext6(&syn6, 14, 44),
    ));
    f.push((
        "v6 SYN behind destination options",
        insert_ext6(&syn6, 14, 60),
    ));
    let syn4 = tcp(c4, v4, PORT, TCP_SYN).build();
    f.push((
        "v4 SYN double-tagged (QinQ)",
        insert_tag(&insert_tag(&syn4, 0x8100), 0x88a8),
    ));
    f.push(("v4 SYN with an 802.1ad tag", insert_tag(&syn4, 0x88a8)));
    // Ethernet padding after a short packet (minimum frame 60 bytes).
    let mut padded = tcp(c4, v4, PORT, TCP_ACK).build();
    padded.resize(padded.len() + 6, 0);
    f.push(("v4 ACK with Ethernet padding", padded));
    f
}

/// An ARP request from the client for the VIP.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC_CLIENT);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_CLIENT);
    f.extend_from_slice(&CLIENT4.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&VIP4.octets());
    f
}

/// A VRRPv3 advert from the node: version 3, type 1, VRID 51, priority
/// 100, one address (the VIP).
pub fn vrrp4() -> Vec<u8> {
    let mut p = Pkt::tcp(NODE4.into(), 0, Ipv4Addr::new(224, 0, 0, 18).into(), 0, 0);
    p.l4 = L4::Other(112);
    p.ttl = 255;
    p.dst_mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12];
    p.payload = vec![0x31, 51, 100, 1, 0, 100, 0, 0, 10, 77, 0, 100];
    p.build()
}

fn vrrp6() -> Vec<u8> {
    let src: IpAddr = "fe80::77:ff:fe00:11".parse().expect("ip");
    let mut p = Pkt::tcp(src, 0, "ff02::12".parse().expect("ip"), 0, 0);
    p.l4 = L4::Other(112);
    p.ttl = 255;
    p.dst_mac = [0x33, 0x33, 0, 0, 0, 0x12];
    let mut body = vec![0x31, 51, 100, 1, 0, 100, 0, 0];
    body.extend_from_slice(&VIP6.octets());
    p.payload = body;
    p.build()
}

fn icmp4() -> Vec<u8> {
    let mut p = Pkt::tcp(CLIENT4.into(), 0, VIP4.into(), 0, 0);
    p.l4 = L4::Other(1);
    p.payload = vec![8, 0, 0xf7, 0xfe, 0, 1, 0, 0];
    p.build()
}

fn icmp6() -> Vec<u8> {
    let mut p = Pkt::tcp(
        CLIENT6.into(),
        0,
        "ff02::1:ff00:100".parse().expect("ip"),
        0,
        0,
    );
    p.l4 = L4::Other(58);
    p.ttl = 255;
    let mut body = vec![135, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&VIP6.octets());
    p.payload = body;
    p.build()
}

fn lldp() -> Vec<u8> {
    let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
    f.extend_from_slice(&MAC_CLIENT);
    f.extend_from_slice(&0x88ccu16.to_be_bytes());
    f.extend_from_slice(&[0x02, 0x07, 0x04, 2, 0x77, 0, 0, 0, 0x0a, 0, 0]);
    f.resize(60, 0);
    f
}

/// Inserts an 802.1Q/802.1ad tag right after the MAC addresses.
pub fn insert_tag(f: &[u8], tpid: u16) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&0x0064u16.to_be_bytes());
    out.extend_from_slice(&f[12..]);
    out
}

/// Inserts an 8-byte IPv6 extension header `kind` (hop-by-hop or
/// destination options: a PadN; fragment: offset 0, M clear, an atomic
/// fragment of RFC 6946) after the fixed header at `l3`, fixing the chain
/// and the payload length.
pub fn insert_ext6(f: &[u8], l3: usize, kind: u8) -> Vec<u8> {
    let next = f[l3 + 6];
    let ext: [u8; 8] = match kind {
        44 => [next, 0, 0, 0, 0x12, 0x34, 0x56, 0x78],
        _ => [next, 0, 1, 4, 0, 0, 0, 0],
    };
    let mut out = f[..l3 + 40].to_vec();
    out[l3 + 6] = kind;
    let plen = be16(f, l3 + 4).wrapping_add(8);
    out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&f[l3 + 40..]);
    out
}
