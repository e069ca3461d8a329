//! Program tests: the real XDP object, loaded into the kernel, run on crafted
//! packets through BPF_PROG_TEST_RUN. Each fixture is {description, map setup,
//! input packet, expected verdict and reason, expected output}. Maps are written
//! through the agent's own `Programmer`, every rewritten field is checked with
//! its own message, and checksums are verified from scratch by `packet::decode`.
//!
//! Needs root (CAP_BPF); run by `cargo xtask test`.

use std::net::IpAddr;

use vip_common::{MODE_DSR, MODE_NAT, PROTO_TCP, PROTO_UDP, Reason};
use vip_tests::fuzz;
use vip_tests::packet::{MAC_LB, Pkt, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, decode};
use vip_tests::progtest::{Dp, XDP_DROP, XDP_PASS, XDP_TX, require_root};
use vip_userspace::config::addr_bytes;
use vip_userspace::dataplane::Maps;
use vip_userspace::dataplane::{
    kernel::{PINNED_MAPS, UNPINNED_MAPS},
    programmer::{DesiredBackend, DesiredService},
};

const VIP4: &str = "10.77.0.100";
const VIP6: &str = "fd77::100";
const CLIENT4: &str = "10.77.0.10";
const CLIENT6: &str = "fd77::10";
const PORT: u16 = 6443;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0x77, 0, 0, 0, 0x20 + i]
}

/// Backend `i` (1-based) of the family of `vip`.
fn backend(vip: IpAddr, i: u8, alive: bool, local: bool) -> DesiredBackend {
    let a = match vip {
        IpAddr::V4(_) => ip(&format!("10.77.0.{}", 20 + i)),
        IpAddr::V6(_) => ip(&format!("fd77::{}", 20 + i)),
    };
    let (family, addr) = addr_bytes(a);
    DesiredBackend {
        family,
        addr,
        port_be: PORT.to_be(),
        mac: backend_mac(i),
        local,
        encap: None,
        alive,
        draining: false,
    }
}

fn service(vip: IpAddr, proto: u8, backends: Vec<DesiredBackend>) -> DesiredService {
    vip_tests::progtest::service(vip, PORT, proto, MODE_DSR, [0; 16], backends)
}

fn three(vip: IpAddr) -> DesiredService {
    service(
        vip,
        PROTO_TCP,
        (1..=3).map(|i| backend(vip, i, true, false)).collect(),
    )
}

/// What a fixture expects to come out.
enum Expect {
    /// Passed or dropped, bytes untouched.
    Unchanged,
    /// Sent to the chosen backend by destination MAC rewrite; IP and above
    /// untouched.
    Dsr,
    /// Answered with a TCP RST built from the input.
    Rst { seq: u32, ack: u32, flags: u8 },
}

struct Fixture {
    desc: &'static str,
    services: Vec<DesiredService>,
    /// Packets sent before the one under test (to build connection state).
    before: Vec<Vec<u8>>,
    /// Services applied after `before` and before the packet under test.
    then: Option<Vec<DesiredService>>,
    input: Vec<u8>,
    action: u32,
    reason: Reason,
    expect: Expect,
}

fn fx(
    desc: &'static str,
    services: Vec<DesiredService>,
    input: Vec<u8>,
    action: u32,
    reason: Reason,
    expect: Expect,
) -> Fixture {
    Fixture {
        desc,
        services,
        before: vec![],
        then: None,
        input,
        action,
        reason,
        expect,
    }
}

fn syn4() -> Pkt {
    Pkt::tcp(ip(CLIENT4), 40000, ip(VIP4), PORT, TCP_SYN)
}

fn syn6() -> Pkt {
    Pkt::tcp(ip(CLIENT6), 40000, ip(VIP6), PORT, TCP_SYN)
}

fn fixtures() -> Vec<Fixture> {
    let v4 = ip(VIP4);
    let v6 = ip(VIP6);
    let mut f = vec![
        fx(
            "ARP passes untouched",
            vec![three(v4)],
            fuzz::frames::arp(),
            XDP_PASS,
            Reason::PassNotIp,
            Expect::Unchanged,
        ),
        fx(
            "VRRP advert passes untouched",
            vec![three(v4)],
            fuzz::frames::vrrp4(),
            XDP_PASS,
            Reason::PassNotL4,
            Expect::Unchanged,
        ),
        fx(
            "SSH to the node passes",
            vec![three(v4)],
            Pkt::tcp(ip(CLIENT4), 40000, ip("10.77.0.11"), 22, TCP_SYN).build(),
            XDP_PASS,
            Reason::PassNoService,
            Expect::Unchanged,
        ),
        fx(
            "the VIP on another port passes",
            vec![three(v4)],
            Pkt::tcp(ip(CLIENT4), 40000, ip(VIP4), 22, TCP_SYN).build(),
            XDP_PASS,
            Reason::PassNoService,
            Expect::Unchanged,
        ),
        fx(
            "the service port on another address passes",
            vec![three(v4)],
            Pkt::tcp(ip(CLIENT4), 40000, ip("10.77.0.11"), PORT, TCP_SYN).build(),
            XDP_PASS,
            Reason::PassNoService,
            Expect::Unchanged,
        ),
        fx(
            "UDP to a TCP-only service passes",
            vec![three(v4)],
            Pkt::udp(ip(CLIENT4), 40000, ip(VIP4), PORT).build(),
            XDP_PASS,
            Reason::PassNoService,
            Expect::Unchanged,
        ),
        fx(
            "a new IPv4 flow goes to a backend",
            vec![three(v4)],
            syn4().build(),
            XDP_TX,
            Reason::TxDsr,
            Expect::Dsr,
        ),
        fx(
            "a new IPv6 flow goes to a backend",
            vec![three(v6)],
            syn6().build(),
            XDP_TX,
            Reason::TxDsr,
            Expect::Dsr,
        ),
        fx(
            "a UDP service forwards",
            vec![service(
                v4,
                PROTO_UDP,
                (1..=3).map(|i| backend(v4, i, true, false)).collect(),
            )],
            Pkt::udp(ip(CLIENT4), 5353, ip(VIP4), PORT)
                .payload(b"q")
                .build(),
            XDP_TX,
            Reason::TxDsr,
            Expect::Dsr,
        ),
        fx(
            "IPv4 with options forwards (L4 found through IHL)",
            vec![three(v4)],
            Pkt {
                ip_options: vec![0x94, 0x04, 0, 0, 1, 1, 1, 0],
                ..syn4()
            }
            .build(), // router alert, NOPs
            XDP_TX,
            Reason::TxDsr,
            Expect::Dsr,
        ),
        fx(
            "an 802.1Q-tagged flow forwards with its tag",
            vec![three(v4)],
            Pkt {
                vlan: Some(100),
                ..syn4()
            }
            .build(),
            XDP_TX,
            Reason::TxDsr,
            Expect::Dsr,
        ),
        fx(
            "a first fragment passes to the kernel",
            vec![three(v4)],
            Pkt {
                frag: 0x2000,
                ..syn4()
            }
            .build(),
            XDP_PASS,
            Reason::PassFragment,
            Expect::Unchanged,
        ),
        fx(
            "a later fragment passes to the kernel",
            vec![three(v4)],
            Pkt {
                frag: 0x0010,
                ..syn4()
            }
            .build(),
            XDP_PASS,
            Reason::PassFragment,
            Expect::Unchanged,
        ),
        fx(
            "IPv6 with a hop-by-hop header passes",
            vec![three(v6)],
            {
                let mut b = syn6().build();
                b[14 + 6] = 0; // next header: hop-by-hop options
                b
            },
            XDP_PASS,
            Reason::PassIpv6ExtHeader,
            Expect::Unchanged,
        ),
        fx(
            "the local backend goes to the local stack",
            vec![service(v4, PROTO_TCP, vec![backend(v4, 1, true, true)])],
            syn4().build(),
            XDP_PASS,
            Reason::PassLocalBackend,
            Expect::Unchanged,
        ),
        fx(
            "a SYN with no alive backend gets RST+ACK (SEQ=0, ACK=SEG.SEQ+1)",
            vec![service(v4, PROTO_TCP, vec![backend(v4, 1, false, false)])],
            syn4().build(),
            XDP_TX,
            Reason::TxRst,
            Expect::Rst {
                seq: 0,
                ack: 1001,
                flags: TCP_RST | TCP_ACK,
            },
        ),
        fx(
            "IPv6: a SYN with no alive backend gets RST+ACK",
            vec![service(v6, PROTO_TCP, vec![backend(v6, 1, false, false)])],
            syn6().build(),
            XDP_TX,
            Reason::TxRst,
            Expect::Rst {
                seq: 0,
                ack: 1001,
                flags: TCP_RST | TCP_ACK,
            },
        ),
        fx(
            "UDP with no alive backend is dropped, not passed",
            vec![service(v4, PROTO_UDP, vec![backend(v4, 1, false, false)])],
            Pkt::udp(ip(CLIENT4), 5353, ip(VIP4), PORT).build(),
            XDP_DROP,
            Reason::DropNoBackend,
            Expect::Unchanged,
        ),
        fx(
            "an RST to a dead service is absorbed, never answered nor counted as a drop",
            vec![service(v4, PROTO_TCP, vec![backend(v4, 1, false, false)])],
            Pkt::tcp(ip(CLIENT4), 40000, ip(VIP4), PORT, TCP_RST | TCP_ACK).build(),
            XDP_DROP,
            Reason::AbsorbRst,
            Expect::Unchanged,
        ),
    ];

    // Found by the differential fuzz (fuzz_differential_parser): an L4 header
    // must lie inside the IP payload, not merely inside the frame. Each of
    // these was forwarded or answered with an RST before the fix.
    let mut cut_by_ip_len = syn4().build();
    cut_by_ip_len[14 + 2..14 + 4].copy_from_slice(&30u16.to_be_bytes()); // 20 + 10
    let mut doff_past_segment = syn4().payload(b"abcd").build();
    doff_past_segment[14 + 20 + 12] = 7 << 4; // 28 bytes of header in a 24-byte segment
    let mut v6_short = syn6().build();
    v6_short[14 + 4..14 + 6].copy_from_slice(&19u16.to_be_bytes());
    let mut udp_len_past = Pkt::udp(ip(CLIENT4), 5353, ip(VIP4), PORT)
        .payload(b"q")
        .build();
    udp_len_past[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&10u16.to_be_bytes()); // 9 in the payload
    let udp_service = || {
        service(
            v4,
            PROTO_UDP,
            (1..=3).map(|i| backend(v4, i, true, false)).collect(),
        )
    };
    for (desc, services, input) in [
        (
            "a TCP header cut by the IPv4 total length passes (padding is no header)",
            vec![service(v4, PROTO_TCP, vec![backend(v4, 1, false, false)])],
            cut_by_ip_len,
        ),
        (
            "a TCP data offset past the segment passes, not answered with an RST",
            vec![service(v4, PROTO_TCP, vec![backend(v4, 1, false, false)])],
            doff_past_segment,
        ),
        (
            "an IPv6 payload length shorter than the TCP header passes",
            vec![three(v6)],
            v6_short,
        ),
        (
            "a UDP length past the IP payload passes",
            vec![udp_service()],
            udp_len_past,
        ),
    ] {
        f.push(fx(
            desc,
            services,
            input,
            XDP_PASS,
            Reason::PassMalformed,
            Expect::Unchanged,
        ));
    }

    // Frames for a service flooded to us for another host (a promiscuous
    // interface): the kernel drops them as PACKET_OTHERHOST; serving them
    // would duplicate the other host's packet, and in mode nat answer its
    // connection with an RST.
    let other_mac = [0x02, 0x77, 0, 0, 0, 0x0c];
    let to = |mac: [u8; 6], p: Pkt| Pkt { dst_mac: mac, ..p }.build();
    let nat_vip = || {
        vip_tests::progtest::service(
            v4,
            PORT,
            PROTO_TCP,
            MODE_NAT,
            addr_bytes(ip("10.77.0.11")).1,
            vec![backend(v4, 1, true, false)],
        )
    };
    for (desc, services, input) in [
        (
            "a SYN for the VIP addressed to another host passes untouched",
            vec![three(v4)],
            to(other_mac, syn4()),
        ),
        (
            "a broadcast SYN for the VIP passes untouched",
            vec![three(v4)],
            to([0xff; 6], syn4()),
        ),
        (
            "an IPv6 SYN for the VIP addressed to another host passes untouched",
            vec![three(v6)],
            to(other_mac, syn6()),
        ),
        (
            "mode nat: another host's mid-connection segment gets no RST",
            vec![nat_vip()],
            to(
                other_mac,
                Pkt::tcp(ip(CLIENT4), 40000, ip(VIP4), PORT, TCP_ACK),
            ),
        ),
    ] {
        f.push(fx(
            desc,
            services,
            input,
            XDP_PASS,
            Reason::PassOtherHost,
            Expect::Unchanged,
        ));
    }
    f.push(Fixture {
        before: vec![syn4().build()],
        ..fx(
            "an established flow's segment addressed to another host passes",
            vec![three(v4)],
            to(
                other_mac,
                Pkt::tcp(ip(CLIENT4), 40000, ip(VIP4), PORT, TCP_ACK),
            ),
            XDP_PASS,
            Reason::PassOtherHost,
            Expect::Unchanged,
        )
    });

    // Established flows.
    let data = Pkt::tcp(ip(CLIENT4), 40000, ip(VIP4), PORT, TCP_ACK | TCP_PSH)
        .payload(b"GET /readyz HTTP/1.1\r\n\r\n");
    f.push(Fixture {
        before: vec![syn4().build()],
        ..fx(
            "an established flow keeps its backend",
            vec![three(v4)],
            data.build(),
            XDP_TX,
            Reason::TxDsr,
            Expect::Dsr,
        )
    });
    f.push(Fixture {
        before: vec![syn4().build()],
        then: Some(vec![service(
            v4,
            PROTO_TCP,
            (1..=7).map(|i| backend(v4, i, true, false)).collect(),
        )]),
        ..fx(
            "an established flow keeps its backend when backends are added",
            vec![three(v4)],
            data.build(),
            XDP_TX,
            Reason::TxDsr,
            Expect::Dsr,
        )
    });
    f.push(Fixture {
        before: vec![syn4().build()],
        then: Some(vec![service(
            v4,
            PROTO_TCP,
            (1..=3).map(|i| backend(v4, i, false, false)).collect(),
        )]),
        ..fx(
            "a flow whose backend died gets RST (SEQ=SEG.ACK)",
            vec![three(v4)],
            data.build(),
            XDP_TX,
            Reason::TxRst,
            Expect::Rst {
                seq: 5000,
                ack: 0,
                flags: TCP_RST,
            },
        )
    });
    f.push(Fixture {
        before: vec![syn4().build()],
        then: Some(vec![service(
            v4,
            PROTO_TCP,
            (1..=3).map(|i| backend(v4, i, false, false)).collect(),
        )]),
        ..fx(
            "a FIN without ACK to a dead backend gets RST+ACK counting the FIN",
            vec![three(v4)],
            Pkt::tcp(ip(CLIENT4), 40000, ip(VIP4), PORT, TCP_FIN)
                .payload(b"xyz")
                .build(),
            XDP_TX,
            Reason::TxRst,
            Expect::Rst {
                seq: 0,
                ack: 1000 + 3 + 1,
                flags: TCP_RST | TCP_ACK,
            },
        )
    });
    f
}

/// The backend (1-based index) the program chose for a flow, from the
/// connection-table entry it wrote.
fn chosen_backend(dp: &Dp, d: &vip_tests::packet::Decoded) -> u8 {
    let id = dp.conntrack_backend(d.src, d.sport);
    (1..=16u8)
        .find(|j| {
            [false, true]
                .iter()
                .any(|local| dp.prog.backend_id(&backend(d.dst, *j, true, *local)) == Some(id))
        })
        .unwrap_or_else(|| {
            panic!("connection-table entry names backend id {id} which is none of the service's")
        })
}

#[test]
fn fixture_table() {
    require_root();
    let mut failures = vec![];
    for fx in fixtures() {
        let mut dp = Dp::new(&fx.services);
        // As a running agent has it: every fixture frame is addressed to
        // MAC_LB unless it says otherwise.
        dp.set_local_mac(MAC_LB);
        for b in &fx.before {
            dp.run_raw(b);
        }
        let chosen_before = if fx.before.is_empty() {
            None
        } else {
            let d = decode(&fx.before[0]).expect("decode");
            Some(chosen_backend(&dp, &d))
        };
        if let Some(s) = &fx.then {
            dp.prog.apply(s).expect("apply the second state");
        }
        let (action, out) = dp.run(&fx.input, fx.reason);
        let desc = fx.desc;
        if action != fx.action {
            failures.push(format!("{desc}: action {action}, want {}", fx.action));
            continue;
        }
        let input = decode(&fx.input).ok();
        match fx.expect {
            Expect::Unchanged => {
                if out != fx.input {
                    failures.push(format!("{desc}: packet was modified"));
                }
            }
            Expect::Dsr => {
                let i = decode(&fx.input).expect("input decodes");
                let o = match decode(&out) {
                    Ok(o) => o,
                    Err(e) => {
                        failures.push(format!("{desc}: output does not decode: {e}"));
                        continue;
                    }
                };
                let chosen = chosen_backend(&dp, &i);
                if let Some(b) = chosen_before
                    && b != chosen
                {
                    failures.push(format!("{desc}: flow moved from backend {b} to {chosen}"));
                }
                let checks: [(&str, bool); 5] = [
                    (
                        "destination MAC is the chosen backend's",
                        o.dst_mac == backend_mac(chosen),
                    ),
                    (
                        "source MAC is ours (the frame's old destination)",
                        o.src_mac == MAC_LB,
                    ),
                    (
                        "everything after the Ethernet addresses is unchanged",
                        out[12..] == fx.input[12..],
                    ),
                    ("IPv4 header checksum valid", o.ip_csum_ok),
                    ("L4 checksum valid", o.l4_csum_ok),
                ];
                for (what, ok) in checks {
                    if !ok {
                        failures.push(format!("{desc}: {what}"));
                    }
                }
            }
            Expect::Rst { seq, ack, flags } => {
                let i = input.expect("input decodes");
                let o = match decode(&out) {
                    Ok(o) => o,
                    Err(e) => {
                        failures.push(format!("{desc}: RST does not decode: {e}"));
                        continue;
                    }
                };
                let checks: [(&str, bool); 13] = [
                    ("destination MAC is the client's", o.dst_mac == i.src_mac),
                    ("source MAC is ours", o.src_mac == i.dst_mac),
                    ("VLAN tag kept", o.vlan == i.vlan),
                    ("source address is the VIP", o.src == i.dst),
                    ("destination address is the client", o.dst == i.src),
                    ("source port is the service port", o.sport == i.dport),
                    ("destination port is the client's", o.dport == i.sport),
                    ("flags", o.tcp_flags == flags),
                    ("sequence number", o.seq == seq),
                    (
                        "acknowledgement number",
                        o.ack == if flags & TCP_ACK != 0 { ack } else { 0 },
                    ),
                    ("no payload", o.payload.is_empty()),
                    ("IPv4 header checksum valid", o.ip_csum_ok),
                    ("TCP checksum valid", o.l4_csum_ok),
                ];
                for (what, ok) in checks {
                    if !ok {
                        failures.push(format!("{desc}: {what} (got {o:?})"));
                    }
                }
                if o.ttl != 64 {
                    failures.push(format!("{desc}: TTL/hop limit {} != 64", o.ttl));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "fixture failures:\n  {}",
        failures.join("\n  ")
    );
}

/// Cut a VIP-bound packet at every length short of whole: every cut passes to the
/// kernel untouched, counted as malformed.
#[test]
fn truncation_at_every_boundary_passes_untouched() {
    require_root();
    let v4 = ip(VIP4);
    let dp = Dp::new(&[three(v4), three(ip(VIP6))]);
    let full4 = Pkt {
        vlan: Some(7),
        ip_options: vec![1, 1, 1, 0],
        ..syn4()
    }
    .payload(b"abcd")
    .build();
    let full6 = syn6().payload(b"abcd").build();
    for full in [full4, full6] {
        // Inside a header the walk stops; past the TCP header the IP length
        // field claims bytes that are missing. Both are malformed.
        // BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header
        // (EINVAL, net/bpf/test_run.c), so cuts start at 14 bytes.
        for len in 14..full.len() {
            let cut = &full[..len];
            let (action, out) = dp.run(cut, Reason::PassMalformed);
            assert_eq!(action, XDP_PASS, "cut at {len} bytes: action");
            assert_eq!(out, cut, "cut at {len} bytes: modified");
        }
    }
}

/// New flows spread over all backends, and each goes where its connection-table
/// entry says.
#[test]
fn new_flows_spread_over_backends() {
    require_root();
    let v4 = ip(VIP4);
    let dp = Dp::new(&[three(v4)]);
    let mut per_backend = [0u32; 4];
    for sport in 20000..20300u16 {
        let p = Pkt::tcp(ip(CLIENT4), sport, v4, PORT, TCP_SYN).build();
        let (action, out) = dp.run(&p, Reason::TxDsr);
        assert_eq!(action, XDP_TX);
        let o = decode(&out).expect("decode");
        let chosen = chosen_backend(&dp, &o);
        assert_eq!(
            o.dst_mac,
            backend_mac(chosen),
            "port {sport}: MAC and connection table disagree"
        );
        per_backend[chosen as usize] += 1;
    }
    for (i, n) in per_backend.iter().enumerate().skip(1) {
        assert!(*n > 60, "backend {i} got {n} of 300 flows: {per_backend:?}");
    }
}

/// A backend that answers from another MAC is re-pointed in two map
/// updates (`BackendValue::staged`, then `flipped`): after the first, its
/// established flow and new flows still go to the old MAC (the program reads
/// the slot in use, untouched); after the second, to the new one, read from
/// the other slot. Both selector values are run, in both families.
#[test]
fn a_moved_mac_is_read_whole_at_every_step() {
    require_root();
    for vip in [ip(VIP4), ip(VIP6)] {
        let client = if vip.is_ipv4() {
            ip(CLIENT4)
        } else {
            ip(CLIENT6)
        };
        let mut dp = Dp::new(&[three(vip)]);
        let syn = Pkt::tcp(client, 41000, vip, PORT, TCP_SYN).build();
        let (_, out) = dp.run(&syn, Reason::TxDsr);
        let first = decode(&out).expect("decode");
        let chosen = chosen_backend(&dp, &first);
        assert_eq!(first.dst_mac, backend_mac(chosen));
        let id = dp.conntrack_backend(client, 41000);
        let ack = Pkt::tcp(client, 41000, vip, PORT, TCP_ACK).build();
        let dst = |dp: &Dp| {
            let (action, out) = dp.run(&ack, Reason::TxDsr);
            assert_eq!(action, XDP_TX);
            decode(&out).expect("decode").dst_mac
        };
        let entry = |dp: &Dp| {
            dp.prog
                .maps()
                .read_backends()
                .expect("read BACKENDS")
                .into_iter()
                .find(|(i, _)| *i == id)
                .expect("the chosen backend's entry")
                .1
        };
        let mut mac = backend_mac(chosen);
        for (step, new) in [[0x02, 0x99, 0, 0, 0, 1], [0x02, 0x99, 0, 0, 0, 2]]
            .into_iter()
            .enumerate()
        {
            let staged = entry(&dp).staged(new);
            dp.prog
                .maps_mut()
                .set_backend(id, &staged)
                .expect("write the idle slot");
            assert_eq!(dst(&dp), mac, "{vip} step {step}: staged, the old MAC");
            dp.prog
                .maps_mut()
                .set_backend(id, &staged.flipped())
                .expect("select it");
            assert_eq!(
                entry(&dp).mac_sel,
                u8::from(step == 0),
                "{vip}: both slots in turn"
            );
            assert_eq!(dst(&dp), new, "{vip} step {step}: selected, the new MAC");
            mac = new;
        }
    }
}

/// Every map is pinned for restarts or listed, with its reason, as
/// deliberately not: a map added to the program and to neither list would
/// lose its state.
#[test]
fn every_state_map_is_pinned() {
    let dp = Dp::new(&[]);
    // Sections such as .rodata.cst16 become constant maps of the compiler's;
    // they hold no state.
    let mut names: Vec<String> = dp
        .prog
        .maps()
        .map_names()
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut want: Vec<String> = PINNED_MAPS
        .iter()
        .chain(UNPINNED_MAPS.iter())
        .map(|m| m.to_string())
        .collect();
    want.sort();
    assert_eq!(
        names, want,
        "maps in the object vs PINNED_MAPS + UNPINNED_MAPS"
    );
}

/// The desired state for the fuzz's reference services: one backend each,
/// at addresses no other service uses (10.77.0.3x / fd77::3x).
fn fuzz_services(refs: &[fuzz::reference::RefService]) -> Vec<DesiredService> {
    refs.iter()
        .enumerate()
        .map(|(i, s)| {
            let n = 30 + i as u8;
            let be = match s.vip {
                IpAddr::V4(_) => ip(&format!("10.77.0.{n}")),
                IpAddr::V6(_) => ip(&format!("fd77::{n}")),
            };
            let (family, addr) = addr_bytes(be);
            let (mac, local, alive) = match s.outcome {
                fuzz::reference::Outcome::Dsr(mac) => (mac, false, true),
                fuzz::reference::Outcome::Local => ([0; 6], true, true),
                fuzz::reference::Outcome::Dead => ([0; 6], false, false),
            };
            let (mode, snat) = if s.nat {
                (MODE_NAT, addr_bytes(IpAddr::V4(fuzz::reference::NODE4)).1)
            } else {
                (MODE_DSR, [0; 16])
            };
            vip_tests::progtest::service(
                s.vip,
                s.port,
                s.proto,
                mode,
                snat,
                vec![DesiredBackend {
                    family,
                    addr,
                    port_be: s.port.to_be(),
                    mac,
                    local,
                    encap: None,
                    alive,
                    draining: false,
                }],
            )
        })
        .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: not a number ({e})")))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Issue 7, bad input: random and mutated frames (truncations around every
/// header boundary, bad IPv4 lengths and IHL, options, IPv6 extension
/// headers, VLAN and QinQ, fragments, ARP, VRRP, other addresses and ports,
/// TCP flag mixes, UDP) through the real program, each checked against the
/// host-side reference of `vip_tests::fuzz::reference` (written from issue 3's
/// rules, not from the program): the verdict, the one reason counter that
/// must tick (read per packet; all counters, packets and bytes, compared
/// every 10 000 packets), and the output frame byte for byte, which for
/// everything that is not ours is the input.
///
/// `VIPD_FUZZ_SEED` (decimal or 0x-hex) and `VIPD_FUZZ_COUNT` override the
/// fixed seed and the 100 000 packets; the seed is printed either way.
#[test]
fn fuzz_differential_parser() {
    require_root();
    let seed = env_u64("VIPD_FUZZ_SEED").unwrap_or(fuzz::DEFAULT_SEED);
    let count = env_u64("VIPD_FUZZ_COUNT").unwrap_or(fuzz::DEFAULT_COUNT);
    eprintln!(
        "xdp parser fuzz: seed {seed:#x}, {count} packets \
         (reproduce: VIPD_FUZZ_SEED={seed:#x} VIPD_FUZZ_COUNT={count})"
    );
    let refs = fuzz::reference::services();
    let mut dp = Dp::new(&fuzz_services(&refs));
    dp.set_local_mac(MAC_LB);
    let fixtures = fuzz::frames::fixtures();
    let mut rng = fuzz::Rng::new(seed);
    let base = dp.prog.maps().reason_counters().expect("read counters");
    // What the counters must say: the baseline plus the reference's
    // reasons, packets and bytes (the program counts the input length).
    let mut model = base.clone();
    let mut seen = std::collections::BTreeMap::<Reason, u64>::new();
    let mut failures: Vec<String> = vec![];
    let mut mismatched = 0u64;
    let started = std::time::Instant::now();
    for i in 0..count {
        let (frame, how) = fuzz::mutate::generate(&mut rng, &fixtures);
        let want = fuzz::reference::classify(&frame, &refs);
        let (action, out) = dp.run_raw(&frame);
        let r = want.reason as usize;
        model[r].packets += 1;
        model[r].bytes += frame.len() as u64;
        *seen.entry(want.reason).or_default() += 1;
        let counted = dp.reason_counter(want.reason);
        let mut wrong = vec![];
        if action != want.action {
            wrong.push(format!("action {action}, want {}", want.action));
        }
        if counted != model[r] {
            wrong.push(format!(
                "counter {} is {counted:?}, want {:?}",
                want.reason.label(),
                model[r]
            ));
        }
        if !want.matches_output(&out) {
            wrong.push(format!(
                "output\n      got  {}\n      want {}",
                hex(&out),
                hex(&want.out)
            ));
        }
        let checkpoint = (i + 1) % 10_000 == 0 || i + 1 == count;
        if wrong.is_empty() && checkpoint {
            let all = dp.prog.maps().reason_counters().expect("read counters");
            if all != model {
                wrong.push(format!(
                    "counters after {} packets differ from the reference's",
                    i + 1
                ));
            }
        }
        if !wrong.is_empty() {
            mismatched += 1;
            if failures.len() < 25 {
                failures.push(format!(
                    "packet {i} ({how}), want {:?}:\n    in   {}\n    {}",
                    want.reason,
                    hex(&frame),
                    wrong.join("\n    ")
                ));
            }
            // Take the program's counters as they are, so one miscount
            // is reported once and not again for every later packet.
            model = dp.prog.maps().reason_counters().expect("read counters");
        }
    }
    let took = started.elapsed();
    eprintln!(
        "xdp parser fuzz: {count} packets in {took:.2?} ({:.1} µs each), {mismatched} mismatches; \
         by expected reason: {seen:?}",
        took.as_secs_f64() * 1e6 / count.max(1) as f64
    );
    assert!(
        failures.is_empty(),
        "{mismatched} of {count} packets disagree with the reference (seed {seed:#x}):\n  {}",
        failures.join("\n  ")
    );
}
