//! Program tests for mode dsr across subnets: the real XDP program through
//! BPF_PROG_TEST_RUN, inside a namespace whose `eth0` is the ingress
//! interface and whose routes send the backends' subnet through a router
//! (a permanent neighbour), so the program's FIB lookup for the outer
//! header sees a real next hop. Each case checks the exact bytes: the outer
//! header field by field, its checksum from scratch, and the inner packet
//! unchanged; the ICMP "too big" answers likewise.
//!
//! Needs root; run by `cargo xtask test`.

use std::net::IpAddr;

use vip_common::{
    ENCAP_DEFAULT_MTU, EncapValue, MODE_DSR, PROTO_ICMP, PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6,
    PROTO_TCP, PROTO_UDP, Reason,
};
use vip_tests::{
    netns::{Lab, mac_to_string},
    packet::{Pkt, TCP_ACK, TCP_PSH, TCP_SYN, checksum, l4_checksum},
    progtest::{Dp, XDP_DROP, XDP_PASS, XDP_TX, require_root},
};
use vip_userspace::{
    config::addr_bytes,
    dataplane::programmer::{DesiredBackend, DesiredService},
};

const PORT: u16 = 6443;
const VIP4: &str = "10.77.0.100";
const VIP6: &str = "fd77::100";
const CLIENT4: &str = "10.77.0.50";
const CLIENT6: &str = "fd77::50";
const CLIENT_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x50];
/// The router towards the backends' subnet, on the LB's segment.
const ROUTER4: &str = "10.77.0.1";
const ROUTER6: &str = "fd77::1";
const ROUTER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x01];
/// A backend in another subnet (behind the router).
const BACKEND4: &str = "10.88.0.21";
const BACKEND6: &str = "fd88::21";
/// A backend in a subnet whose router has no neighbour entry yet.
const UNRESOLVED4: &str = "10.99.0.21";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

struct EncapLab {
    lab: Lab,
}

impl EncapLab {
    fn new(hint: &str) -> EncapLab {
        require_root();
        let lab = Lab::new(hint, &["lb"]);
        lab.sh("lb", &["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
        lab.sh("lb", &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let mac = mac_to_string;
        for a in [CLIENT4, CLIENT6] {
            lab.add_neighbour("lb", a, &mac(&CLIENT_MAC));
        }
        for a in [ROUTER4, ROUTER6] {
            lab.add_neighbour("lb", a, &mac(&ROUTER_MAC));
        }
        lab.sh(
            "lb",
            &["ip", "route", "add", "10.88.0.0/24", "via", ROUTER4],
        );
        lab.sh(
            "lb",
            &["ip", "-6", "route", "add", "fd88::/64", "via", ROUTER6],
        );
        // A next hop with no neighbour entry (ARP would be needed).
        lab.sh(
            "lb",
            &["ip", "route", "add", "10.99.0.0/24", "via", "10.77.0.2"],
        );
        EncapLab { lab }
    }

    fn lb_ip(&self, v6: bool) -> IpAddr {
        self.lab.node("lb").ip(v6)
    }

    fn lb_mac(&self) -> [u8; 6] {
        self.lab.node("lb").mac
    }

    /// A dsr service on the VIP of that family with one encapsulated
    /// backend at `backend`, outer source this node, path MTU `mtu`.
    fn service(&self, v6: bool, proto: u8, backend: &str, mtu: u16) -> DesiredService {
        let vip = ip(if v6 { VIP6 } else { VIP4 });
        let (family, addr) = addr_bytes(ip(backend));
        let b = DesiredBackend {
            family,
            addr,
            port_be: PORT.to_be(),
            mac: [0; 6],
            local: false,
            encap: Some(EncapValue {
                saddr: addr_bytes(self.lb_ip(v6)).1,
                mtu,
                _pad: [0; 2],
            }),
            alive: true,
            draining: false,
        };
        vip_tests::progtest::service(vip, PORT, proto, MODE_DSR, [0; 16], vec![b])
    }

    fn with_dp<T: Send>(
        &self,
        services: Vec<DesiredService>,
        f: impl FnOnce(&mut Dp) -> T + Send,
    ) -> T {
        vip_tests::progtest::with_dp_on(self.lab.node("lb"), services, f)
    }
}

fn client_pkt(v6: bool, flags: u8) -> Pkt {
    let (c, v) = if v6 { (CLIENT6, VIP6) } else { (CLIENT4, VIP4) };
    Pkt {
        src_mac: CLIENT_MAC,
        dst_mac: [0; 6], // set to the LB's by `frame`
        ..Pkt::tcp(ip(c), 40000, ip(v), PORT, flags)
    }
}

fn frame(lab: &EncapLab, mut p: Pkt) -> Vec<u8> {
    p.dst_mac = lab.lb_mac();
    p.build()
}

/// Checks an encapsulated frame: Ethernet to the router from the LB, the
/// outer header's every field, and the inner packet byte for byte.
fn check_encapsulated(lab: &EncapLab, input: &[u8], out: &[u8], v6: bool, backend: &str) {
    assert_eq!(
        &out[0..6],
        &ROUTER_MAC,
        "Ethernet destination: the router (FIB)"
    );
    assert_eq!(&out[6..12], &lab.lb_mac(), "Ethernet source: the LB (FIB)");
    let inner = &input[14..];
    if !v6 {
        assert_eq!(&out[12..14], &[0x08, 0x00], "EtherType IPv4");
        let o = &out[14..34];
        assert_eq!(o[0], 0x45, "version 4, IHL 5");
        assert_eq!(
            o[1], inner[1],
            "TOS copied from the inner header (RFC 2003 3.1)"
        );
        assert_eq!(
            u16::from_be_bytes([o[2], o[3]]) as usize,
            inner.len() + 20,
            "outer total length = inner + 20"
        );
        assert_eq!(&o[4..6], &[0, 0], "IP ID 0 (RFC 6864)");
        assert_eq!(&o[6..8], &inner[6..8], "DF copied from the inner header");
        assert_eq!(o[8], 64, "outer TTL");
        assert_eq!(o[9], PROTO_IPIP, "protocol 4 (IPIP)");
        assert_eq!(checksum(o), 0, "outer header checksum");
        assert_eq!(
            &o[12..16],
            &addr_bytes(lab.lb_ip(false)).1[..4],
            "outer source: the LB"
        );
        assert_eq!(
            &o[16..20],
            &addr_bytes(ip(backend)).1[..4],
            "outer destination: the backend"
        );
        assert_eq!(&out[34..], inner, "inner packet unchanged");
    } else {
        assert_eq!(&out[12..14], &[0x86, 0xdd], "EtherType IPv6");
        let o = &out[14..54];
        assert_eq!(
            &o[0..4],
            &inner[0..4],
            "version, traffic class, flow label copied"
        );
        assert_eq!(
            u16::from_be_bytes([o[4], o[5]]) as usize,
            inner.len(),
            "outer payload length = the inner packet"
        );
        assert_eq!(o[6], PROTO_IPV6, "next header 41 (IPv6 in IPv6)");
        assert_eq!(o[7], 64, "outer hop limit");
        assert_eq!(
            &o[8..24],
            &addr_bytes(lab.lb_ip(true)).1,
            "outer source: the LB"
        );
        assert_eq!(
            &o[24..40],
            &addr_bytes(ip(backend)).1,
            "outer destination: the backend"
        );
        assert_eq!(&out[54..], inner, "inner packet unchanged");
    }
}

#[test]
fn encapsulates_new_and_established_flows_to_a_backend_in_another_subnet() {
    let lab = EncapLab::new("encap");
    for v6 in [false, true] {
        let backend = if v6 { BACKEND6 } else { BACKEND4 };
        for proto in [PROTO_TCP, PROTO_UDP] {
            let svc = lab.service(v6, proto, backend, ENCAP_DEFAULT_MTU);
            let cases: Vec<(&str, Vec<u8>)> = if proto == PROTO_TCP {
                vec![
                    ("a SYN", frame(&lab, client_pkt(v6, TCP_SYN))),
                    (
                        "data of the established flow (the connection-table fast path)",
                        frame(
                            &lab,
                            client_pkt(v6, TCP_ACK | TCP_PSH).payload(&[0x5a; 1000]),
                        ),
                    ),
                ]
            } else {
                let (c, v) = if v6 { (CLIENT6, VIP6) } else { (CLIENT4, VIP4) };
                let mut p = Pkt::udp(ip(c), 5353, ip(v), PORT).payload(b"query");
                p.src_mac = CLIENT_MAC;
                vec![("a UDP datagram", frame(&lab, p))]
            };
            lab.with_dp(vec![svc], |dp| {
                for (desc, input) in &cases {
                    let (action, out) = dp.run(input, Reason::TxEncap);
                    assert_eq!(action, XDP_TX, "v6={v6} {desc}: XDP_TX (egress = ingress)");
                    check_encapsulated(&lab, input, &out, v6, backend);
                }
            });
        }
    }
}

#[test]
fn the_first_packet_to_an_unresolved_next_hop_goes_to_the_kernel_encapsulated() {
    let lab = EncapLab::new("encapnn");
    let svc = lab.service(false, PROTO_TCP, UNRESOLVED4, ENCAP_DEFAULT_MTU);
    let input = frame(&lab, client_pkt(false, TCP_SYN));
    lab.with_dp(vec![svc], |dp| {
        let (action, out) = dp.run(&input, Reason::PassFibMiss);
        assert_eq!(
            action, XDP_PASS,
            "no neighbour: the kernel resolves it and forwards"
        );
        assert_eq!(out.len(), input.len() + 20, "passed encapsulated");
        assert_eq!(out[14 + 9], PROTO_IPIP, "outer protocol");
        assert_eq!(&out[34..], &input[14..], "inner packet unchanged");
    });
}

/// A segment whose encapsulation exceeds the path MTU: the client gets the
/// ICMP error a router would send, from the VIP, quoting its packet's IP
/// header and first 8 payload bytes, with the MTU it may use.
#[test]
fn too_big_for_the_path_gets_icmp_too_big_back_to_the_client() {
    let lab = EncapLab::new("encapbig");
    for v6 in [false, true] {
        let backend = if v6 { BACKEND6 } else { BACKEND4 };
        let svc = lab.service(v6, PROTO_TCP, backend, ENCAP_DEFAULT_MTU);
        let ip_hdr = if v6 { 40 } else { 20 };
        // A full 1500-byte inner packet: 20 (40) bytes too many once
        // encapsulated.
        let mss = 1500 - ip_hdr - 20;
        let input = frame(
            &lab,
            client_pkt(v6, TCP_ACK | TCP_PSH).payload(&vec![0xa5; mss]),
        );
        // What fits: exactly the largest packet that is not answered.
        let fits = frame(
            &lab,
            client_pkt(v6, TCP_ACK | TCP_PSH).payload(&vec![0xa5; mss - ip_hdr]),
        );
        lab.with_dp(vec![svc], |dp| {
            let (action, out) = dp.run(&fits, Reason::TxEncap);
            assert_eq!(
                action, XDP_TX,
                "v6={v6}: a packet that fits exactly is sent"
            );
            assert_eq!(out.len(), 14 + 1500, "v6={v6}: 1500 bytes on the wire");

            let (action, out) = dp.run(&input, Reason::TxTooBig);
            assert_eq!(action, XDP_TX, "v6={v6}: the ICMP error goes back out");
            assert_eq!(&out[0..6], &CLIENT_MAC, "to the client's MAC");
            assert_eq!(&out[6..12], &lab.lb_mac(), "from the LB's");
            let quote = &input[14..14 + ip_hdr + 8];
            let (c, v) = if v6 {
                (ip(CLIENT6), ip(VIP6))
            } else {
                (ip(CLIENT4), ip(VIP4))
            };
            if !v6 {
                assert_eq!(&out[12..14], &[0x08, 0x00], "EtherType IPv4");
                let h = &out[14..34];
                assert_eq!(h[0], 0x45, "version 4, IHL 5");
                assert_eq!(
                    u16::from_be_bytes([h[2], h[3]]) as usize,
                    20 + 8 + 28,
                    "total length"
                );
                assert_eq!(h[9], PROTO_ICMP, "protocol ICMP");
                assert_eq!(checksum(h), 0, "IP header checksum");
                assert_eq!(&h[12..16], &addr_bytes(v).1[..4], "from the VIP");
                assert_eq!(&h[16..20], &addr_bytes(c).1[..4], "to the client");
                let icmp = &out[34..];
                assert_eq!(icmp.len(), 8 + 28, "ICMP header and quote, nothing more");
                assert_eq!(
                    (icmp[0], icmp[1]),
                    (3, 4),
                    "destination unreachable, fragmentation needed"
                );
                assert_eq!(checksum(icmp), 0, "ICMP checksum");
                assert_eq!(&icmp[4..6], &[0, 0], "unused");
                assert_eq!(
                    u16::from_be_bytes([icmp[6], icmp[7]]),
                    1480,
                    "next-hop MTU (RFC 1191)"
                );
                assert_eq!(&icmp[8..], quote, "the quote: IP header and 8 bytes");
            } else {
                assert_eq!(&out[12..14], &[0x86, 0xdd], "EtherType IPv6");
                let h = &out[14..54];
                assert_eq!(h[0] >> 4, 6, "version 6");
                assert_eq!(
                    u16::from_be_bytes([h[4], h[5]]) as usize,
                    8 + 48,
                    "payload length"
                );
                assert_eq!(h[6], PROTO_ICMPV6, "next header ICMPv6");
                assert_eq!(&h[8..24], &addr_bytes(v).1, "from the VIP");
                assert_eq!(&h[24..40], &addr_bytes(c).1, "to the client");
                let icmp = &out[54..];
                assert_eq!(icmp.len(), 8 + 48, "ICMPv6 header and quote, nothing more");
                assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
                assert_eq!(l4_checksum(v, c, PROTO_ICMPV6, icmp), 0, "ICMPv6 checksum");
                assert_eq!(
                    u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
                    1460,
                    "MTU (RFC 4443 3.2)"
                );
                assert_eq!(&icmp[8..], quote, "the quote: IPv6 header and 8 bytes");
            }
        });
    }
}

#[test]
fn too_big_without_df_is_dropped_and_counted() {
    let lab = EncapLab::new("encapdf");
    let svc = lab.service(false, PROTO_TCP, BACKEND4, ENCAP_DEFAULT_MTU);
    let mut p = client_pkt(false, TCP_ACK | TCP_PSH).payload(&[1; 1460]);
    p.frag = 0;
    let input = frame(&lab, p);
    lab.with_dp(vec![svc], |dp| {
        let (action, out) = dp.run(&input, Reason::DropEncapTooBig);
        assert_eq!(
            action, XDP_DROP,
            "XDP cannot fragment; no ICMP for a non-DF sender"
        );
        assert_eq!(out, input, "untouched");
    });
}

/// Jumbo frames: with `encap_mtu: 9000` a full 1500-byte packet is simply
/// encapsulated, if the egress interface carries it: the FIB lookup checks
/// the outer packet against the interface's MTU (BPF_FIB_LKUP_RET_FRAG_NEEDED),
/// so an `encap_mtu` above it drops instead of sending what the link refuses.
#[test]
fn a_larger_path_mtu_carries_full_size_packets() {
    let lab = EncapLab::new("encapjumbo");
    let svc = lab.service(false, PROTO_TCP, BACKEND4, 9000);
    let input = frame(&lab, client_pkt(false, TCP_ACK).payload(&[7; 1460]));
    lab.with_dp(vec![svc.clone()], |dp| {
        let (action, _) = dp.run(&input, Reason::DropNoRoute);
        assert_eq!(action, XDP_DROP, "eth0 has MTU 1500: the FIB refuses 1520");
    });
    lab.lab
        .sh("lb", &["ip", "link", "set", "eth0", "mtu", "9000"]);
    lab.with_dp(vec![svc], |dp| {
        let (action, out) = dp.run(&input, Reason::TxEncap);
        assert_eq!(action, XDP_TX);
        check_encapsulated(&lab, &input, &out, false, BACKEND4);
    });
}
