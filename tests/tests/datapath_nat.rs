//! Program tests for mode nat: the real XDP program through BPF_PROG_TEST_RUN,
//! run inside a namespace whose `eth0` is the ingress interface, so the
//! program's FIB lookups see real routes and (permanent) neighbour entries.
//! Every rewritten field is checked with its own message; checksums are
//! recomputed from scratch by `packet::decode`.
//!
//! Needs root; run by `cargo xtask test`.

use std::net::IpAddr;

use aya::maps::{HashMap, MapData};
use vip_common::{
    ConnKey, ConnValue, FAMILY_V4, FibHop, Globals, MODE_NAT, NatValue, PROTO_TCP, PROTO_UDP,
    Reason, flow_hash, nat_port_try,
};
use vip_tests::{
    netns::{Lab, in_netns},
    packet::{Decoded, Pkt, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, decode},
    progtest::{Dp, XDP_DROP, XDP_PASS, XDP_TX, require_root},
};
use vip_userspace::{
    config::addr_bytes,
    dataplane::{
        Maps,
        programmer::{DesiredBackend, DesiredService},
    },
};

const PORT: u16 = 6443;
const VIP4: &str = "10.77.0.100";
const VIP6: &str = "fd77::100";
const CLIENT4: &str = "10.77.0.50";
const CLIENT6: &str = "fd77::50";
const CLIENT_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x50];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn backend_ip(v6: bool, i: u8) -> IpAddr {
    if v6 {
        ip(&format!("fd77::{}", 20 + i))
    } else {
        ip(&format!("10.77.0.{}", 20 + i))
    }
}

fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0x77, 0, 0, 0, 0x20 + i]
}

fn backend(v6: bool, i: u8) -> DesiredBackend {
    let (family, addr) = addr_bytes(backend_ip(v6, i));
    DesiredBackend {
        family,
        addr,
        port_be: PORT.to_be(),
        mac: [0; 6],
        local: false,
        encap: None,
        alive: true,
        draining: false,
    }
}

/// A nat service on `vip` with SNAT to `snat` and the given backends.
fn service(vip: IpAddr, snat: IpAddr, proto: u8, backends: Vec<DesiredBackend>) -> DesiredService {
    vip_tests::progtest::service(vip, PORT, proto, MODE_NAT, addr_bytes(snat).1, backends)
}

/// A one-node lab whose `lb` namespace knows the client and backends 1..=3 as
/// permanent neighbours (backend 9 is left unresolved on purpose).
struct NatLab {
    lab: Lab,
}

impl NatLab {
    fn new(hint: &str) -> NatLab {
        require_root();
        let lab = Lab::new(hint, &["lb"]);
        lab.sh("lb", &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let mac = |m: [u8; 6]| vip_tests::netns::mac_to_string(&m);
        for (a, m) in [(ip(CLIENT4), CLIENT_MAC), (ip(CLIENT6), CLIENT_MAC)] {
            lab.add_neighbour("lb", &a.to_string(), &mac(m));
        }
        for i in 1..=3 {
            for v6 in [false, true] {
                let a = backend_ip(v6, i).to_string();
                lab.add_neighbour("lb", &a, &mac(backend_mac(i)));
            }
        }
        NatLab { lab }
    }

    /// A nat service on the VIP of that family, SNAT to this node, backends
    /// 1..=3.
    fn three(&self, v6: bool, proto: u8) -> DesiredService {
        let vip = ip(if v6 { VIP6 } else { VIP4 });
        service(
            vip,
            self.lb_ip(v6),
            proto,
            (1..=3).map(|i| backend(v6, i)).collect(),
        )
    }

    /// The port-allocation tests' program: one IPv4 TCP service with backend
    /// 1, and only `ports` as mode nat source ports.
    fn one_backend_with_ports<T: Send>(
        &self,
        ports: std::ops::RangeInclusive<u16>,
        f: impl FnOnce(&mut Dp) -> T + Send,
    ) -> T {
        self.one_backend_with_ports_flagged(ports, 0, f)
    }

    /// The same, the service's flags or'ed with `flags` (`SVC_F_SYNC`).
    fn one_backend_with_ports_flagged<T: Send>(
        &self,
        ports: std::ops::RangeInclusive<u16>,
        flags: u8,
        f: impl FnOnce(&mut Dp) -> T + Send,
    ) -> T {
        let mut svc = service(
            ip(VIP4),
            self.lb_ip(false),
            PROTO_TCP,
            vec![backend(false, 1)],
        );
        svc.flags |= flags;
        self.with_dp(vec![svc], |dp| {
            dp.prog
                .maps_mut()
                .set_globals(&Globals {
                    nat_port_lo: *ports.start(),
                    nat_port_hi: *ports.end(),
                    nat_alloc_lo: *ports.start(),
                    nat_alloc_hi: *ports.end(),
                    ..Globals::DEFAULT
                })
                .expect("globals");
            f(dp)
        })
    }

    fn lb_ip(&self, v6: bool) -> IpAddr {
        self.lab.node("lb").ip(v6)
    }

    /// Runs `f` with a freshly loaded program, inside the lb namespace.
    fn with_dp<T: Send>(
        &self,
        services: Vec<DesiredService>,
        f: impl FnOnce(&mut Dp) -> T + Send,
    ) -> T {
        vip_tests::progtest::with_dp_on(self.lab.node("lb"), services, f)
    }
}

fn syn(v6: bool, sport: u16) -> Pkt {
    let (c, v) = if v6 { (CLIENT6, VIP6) } else { (CLIENT4, VIP4) };
    Pkt {
        dst_mac: [0x02, 0x77, 0, 0, 0, 0x10],
        src_mac: CLIENT_MAC,
        ..Pkt::tcp(ip(c), sport, ip(v), PORT, TCP_SYN)
    }
}

/// The client's ACK that completes `syn(v6, sport)`'s handshake: it
/// confirms the flow (vip-ebpf `confirm`).
fn handshake_ack(v6: bool, sport: u16) -> Pkt {
    Pkt {
        l4: vip_tests::packet::L4::Tcp {
            flags: TCP_ACK,
            seq: 2,
            ack: 2,
        },
        ..syn(v6, sport)
    }
}

/// Which backend (1..=3 or 9) got the flow, from the connection table.
fn chosen(dp: &Dp, client: IpAddr, sport: u16, v6: bool) -> u8 {
    let id = dp.conntrack_backend(client, sport);
    [1u8, 2, 3, 9]
        .into_iter()
        .find(|i| dp.prog.backend_id(&backend(v6, *i)) == Some(id))
        .unwrap_or_else(|| panic!("connection entry names unknown backend id {id}"))
}

/// The forward (`CONNTRACK`) key of the IPv4 client's flow from `sport` to
/// the VIP's service port.
fn fwd_key(sport: u16, proto: u8) -> ConnKey {
    ConnKey {
        saddr: addr_bytes(ip(CLIENT4)).1,
        daddr: addr_bytes(ip(VIP4)).1,
        sport_be: sport.to_be(),
        dport_be: PORT.to_be(),
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

/// The reverse (`NAT_REV`) key of IPv4 backend `be`'s TCP replies to
/// `snat`:`nat_port`.
fn rev_key(be: u8, snat: IpAddr, nat_port: u16) -> ConnKey {
    ConnKey {
        saddr: addr_bytes(backend_ip(false, be)).1,
        daddr: addr_bytes(snat).1,
        sport_be: PORT.to_be(),
        dport_be: nat_port.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

/// A forward entry of service 0: to `backend_id`, through `nat_port`.
fn ct_value(last_seen_ns: u64, backend_id: u32, nat_port: u16, flags: u8) -> ConnValue {
    ConnValue {
        last_seen_ns,
        backend_id,
        service_id: 0,
        nat_port_be: nat_port.to_be(),
        flags,
        _pad: [0; 5],
        hop: FibHop::NONE,
    }
}

/// A reverse entry leading back to `client`:`client_port` from the VIP's
/// service port.
fn nat_value(last_seen_ns: u64, client: IpAddr, client_port: u16, flags: u8) -> NatValue {
    NatValue {
        last_seen_ns,
        client_addr: addr_bytes(client).1,
        vip: addr_bytes(ip(VIP4)).1,
        client_port_be: client_port.to_be(),
        vip_port_be: PORT.to_be(),
        flags,
        _pad: [0; 3],
        hop: FibHop::NONE,
    }
}

/// Writes `entries` into the program's hash map `name` as they are.
fn insert<K: aya::Pod, V: aya::Pod>(
    dp: &mut Dp,
    name: &'static str,
    entries: impl IntoIterator<Item = (K, V)>,
) {
    let m = dp
        .prog
        .maps_mut()
        .raw_map_mut(name)
        .unwrap_or_else(|e| panic!("map {name}: {e}"));
    let mut map: HashMap<&mut MapData, K, V> =
        HashMap::try_from(m).unwrap_or_else(|e| panic!("{name} as a hash map: {e}"));
    for (k, v) in entries {
        map.insert(k, v, 0)
            .unwrap_or_else(|e| panic!("insert into {name}: {e}"));
    }
}

/// The connection table by client port.
fn conntrack_by_sport(dp: &Dp) -> std::collections::BTreeMap<u16, ConnValue> {
    dp.prog
        .maps()
        .conntrack()
        .expect("dump the connection table")
        .into_iter()
        .map(|(k, v)| (u16::from_be(k.sport_be), v))
        .collect()
}

/// The (client port, flags) of every reverse entry holding SNAT port `port`.
fn rev_owners(dp: &Dp, port: u16) -> Vec<(u16, u8)> {
    dp.prog
        .maps()
        .nat_entries()
        .expect("dump the reverse entries")
        .into_iter()
        .filter(|(k, _)| u16::from_be(k.dport_be) == port)
        .map(|(_, v)| (u16::from_be(v.client_port_be), v.flags))
        .collect()
}

/// A flow from client port `client_port` through SNAT port `port` to
/// backend 1 (id `id1`): its reverse entry closing (`CT_F_CLOSING`), last
/// seen at `rev_last`; its forward entry last seen at `fwd.0`, flags `fwd.1`.
fn nat_flow(
    dp: &mut Dp,
    snat: IpAddr,
    id1: u32,
    (port, client_port): (u16, u16),
    rev_last: u64,
    fwd: (u64, u8),
) {
    use vip_common::CT_F_CLOSING;
    insert(
        dp,
        "NAT_REV",
        [(
            rev_key(1, snat, port),
            nat_value(rev_last, ip(CLIENT4), client_port, CT_F_CLOSING),
        )],
    );
    insert(
        dp,
        "CONNTRACK",
        [(
            fwd_key(client_port, PROTO_TCP),
            ct_value(fwd.0, id1, port, fwd.1),
        )],
    );
}

/// Checks a forward-translated packet field by field; returns the SNAT port.
fn check_forward(l: &NatLab, dp: &Dp, input: &Decoded, out: &[u8], v6: bool) -> u16 {
    let o = decode(out).unwrap_or_else(|e| panic!("translated packet does not decode: {e}"));
    let b = chosen(dp, input.src, input.sport, v6);
    let lb = l.lab.node("lb");
    assert_eq!(
        o.dst_mac,
        backend_mac(b),
        "destination MAC is the backend's neighbour entry"
    );
    assert_eq!(o.src_mac, lb.mac, "source MAC is the LB's eth0");
    assert_eq!(o.src, l.lb_ip(v6), "source address is the SNAT address");
    assert_eq!(
        o.dst,
        backend_ip(v6, b),
        "destination address is the chosen backend"
    );
    assert_eq!(o.dport, PORT, "destination port is the backend port");
    let g = Globals::DEFAULT;
    assert!(
        (g.nat_port_lo..=g.nat_port_hi).contains(&o.sport),
        "SNAT port {} outside the range",
        o.sport
    );
    assert_eq!(o.ttl, input.ttl, "TTL unchanged");
    assert_eq!(o.tcp_flags, input.tcp_flags, "TCP flags unchanged");
    assert_eq!(
        (o.seq, o.ack),
        (input.seq, input.ack),
        "sequence numbers unchanged"
    );
    assert_eq!(o.payload, input.payload, "payload unchanged");
    assert!(o.ip_csum_ok, "IPv4 header checksum valid");
    assert!(o.l4_csum_ok, "L4 checksum valid");
    o.sport
}

#[test]
fn nat_new_flow_established_and_reply_v4_v6() {
    let l = NatLab::new("natfx");
    for v6 in [false, true] {
        let vip = ip(if v6 { VIP6 } else { VIP4 });
        let svc = l.three(v6, PROTO_TCP);
        let lb_mac = l.lab.node("lb").mac;
        l.with_dp(vec![svc], |dp| {
            let s = syn(v6, 41000).build();
            let (action, out) = dp.run(&s, Reason::TxNat);
            assert_eq!(
                action, XDP_TX,
                "new flow: XDP_TX back out of eth0 (v6={v6})"
            );
            let input = decode(&s).expect("input");
            let nat_port = check_forward(&l, dp, &input, &out, v6);
            let b = chosen(dp, input.src, input.sport, v6);

            // The reverse entry names the client side.
            let nat = dp.prog.maps().nat_entries().expect("NAT entries");
            assert_eq!(nat.len(), 1, "one reverse entry");
            let (k, v) = nat[0];
            assert_eq!(
                u16::from_be(k.dport_be),
                nat_port,
                "reverse key holds the SNAT port"
            );
            assert_eq!(
                v.client_addr,
                addr_bytes(input.src).1,
                "reverse value holds the client"
            );
            assert_eq!(u16::from_be(v.client_port_be), 41000);

            // Established: same backend, same port.
            let data = Pkt {
                l4: vip_tests::packet::L4::Tcp {
                    flags: TCP_ACK | TCP_PSH,
                    seq: 1001,
                    ack: 9,
                },
                ..syn(v6, 41000)
            }
            .payload(b"GET /readyz HTTP/1.1\r\n\r\n")
            .build();
            let (action, out) = dp.run(&data, Reason::TxNat);
            assert_eq!(action, XDP_TX);
            let p2 = check_forward(&l, dp, &decode(&data).expect("input"), &out, v6);
            assert_eq!(p2, nat_port, "established flow keeps its SNAT port");
            assert_eq!(
                chosen(dp, input.src, 41000, v6),
                b,
                "established flow keeps its backend"
            );

            // The backend's SYN-ACK comes back to the SNAT address and port.
            let reply = syn_ack(v6, b, l.lb_ip(v6), nat_port, lb_mac).build();
            let (action, out) = dp.run(&reply, Reason::TxReverseNat);
            assert_eq!(action, XDP_TX, "reply: XDP_TX");
            let o = decode(&out).expect("reply decodes");
            assert_eq!(o.src, vip, "reply source is the VIP");
            assert_eq!(o.sport, PORT, "reply source port is the service port");
            assert_eq!(o.dst, input.src, "reply goes to the client");
            assert_eq!(o.dport, 41000, "reply goes to the client's port");
            assert_eq!(
                o.dst_mac, CLIENT_MAC,
                "reply destination MAC is the client's"
            );
            assert_eq!(o.src_mac, lb_mac, "reply source MAC is ours");
            assert_eq!(
                (o.seq, o.ack, o.tcp_flags),
                (7000, 1001, TCP_SYN | TCP_ACK),
                "TCP fields unchanged"
            );
            assert!(o.ip_csum_ok, "reply IPv4 checksum");
            assert!(o.l4_csum_ok, "reply TCP checksum");
        });
    }
}

#[test]
fn nat_mid_connection_packet_gets_rst() {
    let l = NatLab::new("natrst");
    let svc = l.three(false, PROTO_TCP);
    l.with_dp(vec![svc], |dp| {
        let p = Pkt {
            l4: vip_tests::packet::L4::Tcp {
                flags: TCP_ACK,
                seq: 5,
                ack: 77,
            },
            ..syn(false, 42000)
        }
        .build();
        let (action, out) = dp.run(&p, Reason::TxRst);
        assert_eq!(action, XDP_TX);
        let o = decode(&out).expect("RST decodes");
        assert_eq!(
            o.tcp_flags, TCP_RST,
            "RST without ACK (the segment had ACK)"
        );
        assert_eq!(o.seq, 77, "SEQ = SEG.ACK");
        assert_eq!((o.src, o.dst), (ip(VIP4), ip(CLIENT4)), "addresses swapped");
        assert!(o.ip_csum_ok && o.l4_csum_ok, "checksums");
        assert!(
            dp.prog.maps().nat_entries().expect("NAT").is_empty(),
            "no port allocated"
        );
    });
}

/// The port the hash picks first is taken for every backend: the program must
/// take its second try, never share a (backend, SNAT, port) tuple.
#[test]
fn nat_port_collision_probes_another_port() {
    let l = NatLab::new("natcol");
    let snat = l.lb_ip(false);
    let svc = l.three(false, PROTO_TCP);
    l.with_dp(vec![svc], |dp| {
        let s = syn(false, 43000).build();
        let input = decode(&s).expect("input");
        let key = fwd_key(43000, PROTO_TCP);
        assert_eq!(
            (key.saddr, key.daddr),
            (addr_bytes(input.src).1, addr_bytes(input.dst).1),
            "the key is the SYN's flow"
        );
        let g = Globals::DEFAULT;
        let range = (g.nat_port_hi - g.nat_port_lo) as u32 + 1;
        let first = g.nat_port_lo + (flow_hash(&key) % range) as u16;
        assert_eq!(
            nat_port_try(flow_hash(&key), 0, g.nat_port_lo, range),
            first
        );
        // Another client's live flow holds the first port for each backend.
        let other = nat_value(u64::MAX / 2, ip("10.77.0.99"), 1, 0);
        insert(
            dp,
            "NAT_REV",
            (1..=3).map(|i| (rev_key(i, snat, first), other)),
        );
        let (action, out) = dp.run(&s, Reason::TxNat);
        assert_eq!(action, XDP_TX);
        let port = check_forward(&l, dp, &input, &out, false);
        assert_ne!(port, first, "took a port another flow holds");
        assert_eq!(
            port,
            nat_port_try(flow_hash(&key), 1, g.nat_port_lo, range),
            "the second try"
        );
    });
}

/// No neighbour entry for the backend: the rewritten packet goes to the kernel,
/// which resolves the neighbour and forwards it.
#[test]
fn nat_fib_miss_passes_rewritten_packet() {
    let l = NatLab::new("natmiss");
    let svc = service(ip(VIP4), l.lb_ip(false), PROTO_TCP, vec![backend(false, 9)]);
    l.with_dp(vec![svc], |dp| {
        let s = syn(false, 44000).build();
        let (action, out) = dp.run(&s, Reason::PassFibMiss);
        assert_eq!(action, XDP_PASS);
        let o = decode(&out).expect("decodes");
        assert_eq!(
            o.dst,
            backend_ip(false, 9),
            "destination already translated"
        );
        assert_eq!(o.src, l.lb_ip(false), "source already translated");
        assert!(o.ip_csum_ok && o.l4_csum_ok, "checksums");
    });
}

/// UDP: a zero IPv4 checksum (none) stays zero; a real one stays valid.
#[test]
fn nat_udp_checksums() {
    let l = NatLab::new("natudp");
    let svc = l.three(false, PROTO_UDP);
    l.with_dp(vec![svc], |dp| {
        let p = Pkt {
            l4: vip_tests::packet::L4::Udp,
            ..syn(false, 45000)
        }
        .payload(b"ping")
        .build();
        let (action, out) = dp.run(&p, Reason::TxNat);
        assert_eq!(action, XDP_TX);
        assert!(
            decode(&out).expect("decodes").l4_csum_ok,
            "UDP checksum valid after translation"
        );
        let mut nocsum = Pkt {
            l4: vip_tests::packet::L4::Udp,
            ..syn(false, 45001)
        }
        .payload(b"ping")
        .build();
        let udp_off = 14 + 20;
        nocsum[udp_off + 6] = 0;
        nocsum[udp_off + 7] = 0;
        let (action, out) = dp.run(&nocsum, Reason::TxNat);
        assert_eq!(action, XDP_TX);
        assert_eq!(
            &out[udp_off + 6..udp_off + 8],
            &[0, 0],
            "no checksum stays no checksum"
        );
    });
}

/// The agent's sweep of the flow tables against the real maps: it deletes
/// what the program treats as expired (by the same rule, `Globals::expired`)
/// and nothing else; a reverse entry whose forward flow lives keeps its port
/// however stale it is; the live flows are counted per backend; and an
/// established flow still forwards afterwards.
#[test]
fn nat_sweep_deletes_expired_flows_and_keeps_live_ones() {
    use vip_common::CT_F_CLOSING;
    use vip_userspace::dataplane::flows::monotonic_ns;
    let l = NatLab::new("natsweep");
    let snat = l.lb_ip(false);
    let svc = l.three(false, PROTO_TCP);
    l.with_dp(vec![svc], |dp| {
        // One real flow, through the program, confirmed by its ACK (the
        // sweep walks the confirmed tables).
        let s = syn(false, 43000).build();
        let (action, _) = dp.run(&s, Reason::TxNat);
        assert_eq!(action, XDP_TX);
        dp.run(&handshake_ack(false, 43000).build(), Reason::TxNat);
        let real_be = chosen(dp, ip(CLIENT4), 43000, false);
        let now = monotonic_ns();
        let s_ago = |s: u64| now.saturating_sub(s * 1_000_000_000);
        let id1 = dp
            .prog
            .backend_id(&backend(false, 1))
            .expect("id of backend 1");
        let fwd = |sport: u16, last: u64, flags: u8, nat_port: u16| {
            (
                fwd_key(sport, PROTO_TCP),
                ct_value(last, id1, nat_port, flags),
            )
        };
        let rev = |nat_port: u16, last: u64, flags: u8, sport: u16| {
            (
                rev_key(1, snat, nat_port),
                nat_value(last, ip(CLIENT4), sport, flags),
            )
        };
        // The sweep's TCP idle time is 60 s (not the default 7500 s, which
        // a freshly booted host's clock has not reached yet).
        let g = Globals {
            tcp_idle_s: 60,
            ..Globals::DEFAULT
        };
        // (client port, forward entry, reverse entry): what must stay.
        // 41001: closed 11 s ago (closing_s 10) both ways: both go.
        // 41002: live forward, reverse idle 120 s, past the TCP timeout:
        //        both stay.
        // 41003: forward closed, no reverse: goes.
        // 41004: reverse closed, no forward: goes.
        // 41005: live both ways, 5 s idle: stays.
        insert(
            dp,
            "CONNTRACK",
            [
                fwd(41001, s_ago(11), CT_F_CLOSING, 50001),
                fwd(41002, s_ago(1), 0, 50002),
                fwd(41003, s_ago(11), CT_F_CLOSING, 50003),
                fwd(41005, s_ago(5), 0, 50005),
            ],
        );
        insert(
            dp,
            "NAT_REV",
            [
                rev(50001, s_ago(11), CT_F_CLOSING, 41001),
                rev(50002, s_ago(120), 0, 41002),
                rev(50004, s_ago(11), CT_F_CLOSING, 41004),
                rev(50005, s_ago(5), 0, 41005),
            ],
        );
        assert!(
            g.expired(now, s_ago(120), 0, true),
            "41002's reverse entry is stale by itself"
        );
        let mut tables = dp.prog.maps().flow_tables().expect("flow tables");
        let sw = tables.sweep(&g, monotonic_ns()).expect("sweep");
        assert_eq!(sw.removed, 4, "41001 both ways, 41003, 41004: {sw:?}");
        assert_eq!(sw.flows, 3, "43000, 41002, 41005 live: {sw:?}");
        assert_eq!(
            sw.nat_flows, 3,
            "43000's, 41002's (its flow lives), 41005's: {sw:?}"
        );
        assert_eq!(sw.capacity, 4096, "the table Dp loads");
        let real_id = dp.prog.backend_id(&backend(false, real_be)).expect("id");
        let mut want = std::collections::BTreeMap::new();
        *want.entry(id1).or_insert(0) += 2;
        *want.entry(real_id).or_insert(0) += 1;
        assert_eq!(sw.per_backend, want, "live flows per backend");
        let ct = conntrack_by_sport(dp);
        for (sport, kept) in [
            (41001, false),
            (41002, true),
            (41003, false),
            (41005, true),
            (43000, true),
        ] {
            assert_eq!(
                ct.contains_key(&sport),
                kept,
                "forward entry of {sport}: {ct:?}"
            );
        }
        let nr: Vec<u16> = dp
            .prog
            .maps()
            .nat_entries()
            .expect("dump")
            .iter()
            .map(|(_, v)| u16::from_be(v.client_port_be))
            .collect();
        for (sport, kept) in [(41001, false), (41002, true), (41004, false), (41005, true)] {
            assert_eq!(
                nr.contains(&sport),
                kept,
                "reverse entry of {sport}: {nr:?}"
            );
        }
        // A second sweep finds nothing more, and the real flow forwards on.
        let again = tables.sweep(&g, monotonic_ns()).expect("sweep");
        assert_eq!((again.removed, again.flows), (0, 3));
        let ack = Pkt {
            dst_mac: [0x02, 0x77, 0, 0, 0, 0x10],
            src_mac: CLIENT_MAC,
            ..Pkt::tcp(ip(CLIENT4), 43000, ip(VIP4), PORT, TCP_ACK)
        }
        .build();
        let (action, _) = dp.run(&ack, Reason::TxNat);
        assert_eq!(
            action, XDP_TX,
            "the established flow forwards after the sweep"
        );
    });
}

/// Mode nat's host settings come back as they were, the empty port
/// reservation included (a zero-byte write would leave ours in place).
#[test]
fn nat_host_settings_are_restored() {
    let l = NatLab::new("natsys");
    let ns = l.lab.node("lb").ns.clone();
    in_netns(&ns, || {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .trim()
                .to_owned()
        };
        let reserved = "/proc/sys/net/ipv4/ip_local_reserved_ports";
        let accept = "/proc/sys/net/ipv4/conf/eth0/accept_local";
        let before = (read(reserved), read(accept));
        assert_eq!(before.0, "", "a fresh namespace reserves no ports");
        let changed = vip_userspace::host::prepare_nat("eth0", 40000, 40999).expect("prepare");
        assert_eq!(read(reserved), "40000-40999");
        assert_eq!(read(accept), "1");
        vip_userspace::host::restore_all(changed);
        assert_eq!((read(reserved), read(accept)), before);
    });
}

/// A dead backend's flows: `poke_dead` pokes the client of each live TCP
/// flow of that backend once and marks it closing; flows of live backends,
/// UDP flows and flows already closing are left alone. The client's answer
/// to the poke (an ACK carrying its RCV.NXT) then draws an RST whose
/// sequence number is that RCV.NXT, the only one the client accepts
/// (RFC 5961 section 3.2).
#[test]
fn dead_backend_flows_are_poked_once_and_answered_with_an_exact_rst() {
    use vip_common::CT_F_CLOSING;
    use vip_userspace::dataplane::flows::monotonic_ns;
    let l = NatLab::new("natpoke");
    let svc = l.three(false, PROTO_TCP);
    l.with_dp(vec![svc.clone()], |dp| {
        let id = |i: u8| dp.prog.backend_id(&backend(false, i)).expect("id");
        let (id1, id2) = (id(1), id(2));
        let now = monotonic_ns();
        let two_s_ago = now.saturating_sub(2_000_000_000);
        let val = |be: u32, flags: u8| ct_value(two_s_ago, be, 50000, flags);
        // 42001: backend 1, live: poked. 42002: backend 1, closing: not.
        // 42003: backend 1, UDP: not. 42004: backend 2: not.
        let entries = [
            (fwd_key(42001, PROTO_TCP), val(id1, 0)),
            (fwd_key(42002, PROTO_TCP), val(id1, CT_F_CLOSING)),
            (fwd_key(42003, PROTO_UDP), val(id1, 0)),
            (fwd_key(42004, PROTO_TCP), val(id2, 0)),
        ];
        insert(dp, "CONNTRACK", entries);
        let mut tables = dp.prog.maps().flow_tables().expect("flow tables");
        let g = Globals::DEFAULT;
        let none = tables.poke_dead(&g, monotonic_ns()).expect("poke");
        assert_eq!(none.flows, 0, "every backend alive: nothing to poke");

        // Backend 1 dies.
        let mut dead = svc.clone();
        dead.backends[0].alive = false;
        dp.prog.apply(&[dead]).expect("apply");
        let p = tables.poke_dead(&g, monotonic_ns()).expect("poke");
        assert_eq!((p.flows, p.failed), (1, 0), "only 42001 is poked: {p:?}");
        let after = conntrack_by_sport(dp);
        assert_eq!(
            after[&42001].flags & CT_F_CLOSING,
            CT_F_CLOSING,
            "the poked flow is marked closing"
        );
        assert!(after[&42001].last_seen_ns > now, "and touched");
        for (k, v) in entries.iter().skip(1) {
            assert_eq!(
                after[&u16::from_be(k.sport_be)],
                *v,
                "flow {} changed",
                u16::from_be(k.sport_be)
            );
        }
        let again = tables.poke_dead(&g, monotonic_ns()).expect("poke");
        assert_eq!(again.flows, 0, "a flow is poked once");

        // The client answers the poke with an ACK: it gets the RST.
        let rcv_nxt = 0x5eed_1234u32;
        let answer = Pkt {
            dst_mac: [0x02, 0x77, 0, 0, 0, 0x10],
            src_mac: CLIENT_MAC,
            l4: vip_tests::packet::L4::Tcp {
                flags: TCP_ACK,
                seq: 77,
                ack: rcv_nxt,
            },
            ..Pkt::tcp(ip(CLIENT4), 42001, ip(VIP4), PORT, TCP_ACK)
        }
        .build();
        let (action, out) = dp.run(&answer, Reason::TxRst);
        assert_eq!(action, XDP_TX);
        let d = decode(&out).expect("decode the RST");
        assert_eq!(d.tcp_flags, TCP_RST, "a bare RST");
        assert_eq!(
            d.seq, rcv_nxt,
            "the RST's sequence number is the client's RCV.NXT"
        );
        assert_eq!((d.src, d.sport), (ip(VIP4), PORT), "from the VIP");
        assert_eq!((d.dst, d.dport), (ip(CLIENT4), 42001), "to the client");
    });
}

/// State sync (`state_sync:`), both ends through the real program:
/// a new flow on a `SVC_F_SYNC` service puts one event on the ring and an
/// unflagged one does not; the event, turned into a wire record with node
/// A's ids and applied by the receiver on node B (whose ids differ), makes
/// B translate a mid-stream packet of that flow to the same backend and NAT
/// port, where without it B answers with an RST; the backend's reply
/// translates back; and a record that would take a live local flow's port
/// is refused.
#[test]
fn nat_sync_event_on_new_flow_and_receiver_entries_translate_mid_stream() {
    use vip_common::{SVC_F_SYNC, SYNC_F_PENDING, SyncEvent};
    use vip_userspace::sync::{self, SyncStats, receive_datagram, wire};
    let l = NatLab::new("natsync");
    let vip = ip(VIP4);
    let other_vip = ip("10.77.0.101");
    let synced = || {
        let mut s = service(
            vip,
            vip,
            PROTO_TCP,
            (1..=3).map(|i| backend(false, i)).collect(),
        );
        s.flags |= SVC_F_SYNC;
        s
    };
    let plain = service(
        other_vip,
        other_vip,
        PROTO_TCP,
        (1..=3).map(|i| backend(false, i)).collect(),
    );
    let peer = ip("10.77.0.99");

    // Node A: the program reports the flagged service's new flow only.
    let (ev, a_backend, datagram) = l.with_dp(vec![synced(), plain.clone()], |dp| {
        let mut ring = dp.prog.maps().sync_events().expect("SYNC_EVENTS");
        let s = syn(false, 46000).build();
        let (action, _) = dp.run(&s, Reason::TxNat);
        assert_eq!(action, XDP_TX);
        let pending: SyncEvent = {
            let item = ring
                .next()
                .expect("a synced flow's SYN puts an event on the ring");
            sync::parse_event(&item).expect("the event has SyncEvent's size")
        };
        assert_ne!(
            pending.flags & SYNC_F_PENDING,
            0,
            "the SYN's event says the flow is not confirmed yet"
        );
        assert!(ring.next().is_none(), "one event for the SYN");
        dp.run(&handshake_ack(false, 46000).build(), Reason::TxNat);
        let ev: SyncEvent = {
            let item = ring
                .next()
                .expect("a synced flow confirmed by its ACK puts an event on the ring");
            sync::parse_event(&item).expect("the event has SyncEvent's size")
        };
        assert!(ring.next().is_none(), "one event per confirmed flow");
        assert_eq!(
            ev.flags & SYNC_F_PENDING,
            0,
            "the ACK's event is of the confirmed flow"
        );
        assert_eq!(
            (pending.key, pending.backend_id, pending.nat_port_be),
            (ev.key, ev.backend_id, ev.nat_port_be),
            "both events are of the same flow, backend and port"
        );
        assert_eq!(
            ev.key.saddr,
            addr_bytes(ip(CLIENT4)).1,
            "event key is the client's flow"
        );
        assert_eq!(u16::from_be(ev.key.sport_be), 46000);
        assert_eq!(
            ev.backend_id,
            dp.conntrack_backend(ip(CLIENT4), 46000),
            "event names the flow's backend"
        );
        let ct = dp.prog.maps().conntrack().expect("dump");
        let (_, cv) = ct
            .iter()
            .find(|(k, _)| k.sport_be == ev.key.sport_be)
            .expect("entry");
        assert_eq!(ev.nat_port_be, cv.nat_port_be, "event holds the NAT port");
        assert_eq!(ev.service_id, cv.service_id);

        // The same flow again (established) and a new flow of the unflagged
        // service: no event.
        let data = Pkt {
            l4: vip_tests::packet::L4::Tcp {
                flags: TCP_ACK,
                seq: 2,
                ack: 2,
            },
            ..syn(false, 46000)
        }
        .build();
        dp.run(&data, Reason::TxNat);
        let other = |flags| {
            Pkt {
                dst_mac: [0x02, 0x77, 0, 0, 0, 0x10],
                src_mac: CLIENT_MAC,
                ..Pkt::tcp(ip(CLIENT4), 46001, other_vip, PORT, flags)
            }
            .build()
        };
        dp.run(&other(TCP_SYN), Reason::TxNat);
        dp.run(&other(TCP_ACK), Reason::TxNat);
        assert!(
            ring.next().is_none(),
            "no event for an established flow or an unflagged service"
        );

        let mut dir = vip_userspace::sync::resolve::Directory::of(&dp.prog);
        dir.globals = Some(Globals::DEFAULT);
        let rec = dir.to_wire(&ev).expect("backend id resolves on A");
        let mut buf = vec![];
        wire::encode(1, &[rec], None, &mut buf);
        let rec = dir.to_wire(&pending).expect("backend id resolves on A");
        let mut pending_buf = vec![];
        wire::encode(1, &[rec], None, &mut pending_buf);
        let b = chosen(dp, ip(CLIENT4), 46000, false);
        (ev, b, (buf, pending_buf))
    });
    let (datagram, pending_datagram) = datagram;

    // Node B: other ids for the same backends (an extra backend took id 0
    // first), the same services.
    l.with_dp(vec![], |dp| {
        let mut extra = synced();
        extra.backends.insert(0, backend(false, 0));
        dp.prog.apply(&[extra]).expect("first state");
        dp.prog.apply(&[synced(), plain.clone()]).expect("services");
        let b_id = dp
            .prog
            .backend_id(&backend(false, a_backend))
            .expect("B's id");
        assert_ne!(b_id, ev.backend_id, "the test needs ids that differ");

        let mid = Pkt {
            l4: vip_tests::packet::L4::Tcp {
                flags: TCP_ACK | TCP_PSH,
                seq: 3000,
                ack: 4000,
            },
            ..syn(false, 46000)
        }
        .payload(b"watch event")
        .build();
        let (action, _) = dp.run(&mid, Reason::TxRst);
        assert_eq!(action, XDP_TX, "without sync B can only reset the flow");

        let mut dir = vip_userspace::sync::resolve::Directory::of(&dp.prog);
        dir.globals = Some(Globals::DEFAULT);
        let mut tables =
            vip_userspace::sync::tables::SyncTables::of(dp.prog.maps()).expect("tables");

        // The SYN's record: B keeps the flow unconfirmed, and translates
        // the backend's SYN-ACK with it (behind ECMP the reply may reach B
        // before the client's ACK reaches A).
        let stats = SyncStats::default();
        assert_eq!(
            receive_datagram(
                &pending_datagram,
                peer,
                &[peer],
                &mut sync::Admission::default(),
                &dir,
                &mut tables,
                &stats
            )
            .applied,
            1,
            "the peer's pending record applies"
        );
        let confirmed = |dp: &Dp| {
            dp.prog
                .maps()
                .confirmed_flows()
                .expect("dump")
                .iter()
                .any(|(k, _)| u16::from_be(k.sport_be) == 46000)
        };
        let entries = |dp: &Dp| {
            dp.prog
                .maps()
                .conntrack()
                .expect("dump")
                .iter()
                .filter(|(k, _)| u16::from_be(k.sport_be) == 46000)
                .count()
        };
        assert!(!confirmed(dp), "a pending record never reaches CONNTRACK");
        assert_eq!(entries(dp), 1, "it is in CT_UNCONFIRMED");
        let synack = Pkt {
            dst_mac: l.lab.node("lb").mac,
            src_mac: backend_mac(a_backend),
            l4: vip_tests::packet::L4::Tcp {
                flags: TCP_SYN | TCP_ACK,
                seq: 3999,
                ack: 3000,
            },
            ..Pkt::tcp(
                backend_ip(false, a_backend),
                PORT,
                vip,
                u16::from_be(ev.nat_port_be),
                0,
            )
        }
        .build();
        let (action, out) = dp.run(&synack, Reason::TxReverseNat);
        assert_eq!(action, XDP_TX, "B translates the SYN-ACK");
        let o = decode(&out).expect("SYN-ACK decodes");
        assert_eq!((o.dst, o.dport), (ip(CLIENT4), 46000), "to the client");

        let stats = SyncStats::default();
        let mut adm = sync::Admission::default();
        let stranger = ip("10.77.0.98");
        assert_eq!(
            receive_datagram(
                &datagram,
                stranger,
                &[peer],
                &mut adm,
                &dir,
                &mut tables,
                &stats
            )
            .applied,
            0,
            "a datagram from a non-peer is dropped"
        );
        // A datagram with no records is a starting peer's hello: nothing
        // to apply, and the sweeper sends that peer every flow held. Not
        // from a stranger.
        let mut hello = vec![];
        wire::encode(9, &[], None, &mut hello);
        assert_eq!(
            receive_datagram(&hello, peer, &[peer], &mut adm, &dir, &mut tables, &stats),
            sync::Received {
                applied: 0,
                hello: true,
                end: false,
            },
            "a peer's empty datagram is its hello"
        );
        // The end of a peer's welcome dump: nothing to apply, not a hello;
        // the agent stops waiting for that peer. Not from a stranger.
        let mut end = vec![];
        wire::encode_end(10, None, &mut end);
        assert_eq!(
            receive_datagram(&end, peer, &[peer], &mut adm, &dir, &mut tables, &stats),
            sync::Received {
                applied: 0,
                hello: false,
                end: true,
            },
            "the end of a peer's dump"
        );
        assert!(
            !receive_datagram(&end, stranger, &[peer], &mut adm, &dir, &mut tables, &stats).end,
            "a stranger's end is dropped"
        );
        assert!(
            !receive_datagram(
                &hello,
                stranger,
                &[peer],
                &mut adm,
                &dir,
                &mut tables,
                &stats
            )
            .hello,
            "a stranger's hello is dropped like its records"
        );
        assert_eq!(
            receive_datagram(
                &datagram[..20],
                peer,
                &[peer],
                &mut adm,
                &dir,
                &mut tables,
                &stats
            )
            .applied,
            0,
            "a truncated datagram is dropped"
        );
        assert_eq!(
            receive_datagram(
                &datagram,
                peer,
                &[peer],
                &mut adm,
                &dir,
                &mut tables,
                &stats
            )
            .applied,
            1,
            "the peer's record applies"
        );
        let rejected: std::collections::BTreeMap<&str, u64> = stats
            .rejected()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(
            rejected,
            // The stranger's records, its hello and its end of a dump.
            [("malformed", 1), ("stranger", 3)].into_iter().collect(),
            "refusals counted by reason"
        );
        assert_eq!(
            dp.conntrack_backend(ip(CLIENT4), 46000),
            b_id,
            "B's entry names B's id for A's backend"
        );
        assert!(confirmed(dp), "the confirmed record is in CONNTRACK");
        assert_eq!(entries(dp), 1, "and the pending copy is gone");
        // Applying it again is a refresh, not a conflict.
        assert_eq!(
            receive_datagram(
                &datagram,
                peer,
                &[peer],
                &mut adm,
                &dir,
                &mut tables,
                &stats
            )
            .applied,
            1,
            "the same record again refreshes"
        );

        let (action, out) = dp.run(&mid, Reason::TxNat);
        assert_eq!(action, XDP_TX, "B translates the mid-stream packet");
        let o = decode(&out).expect("translated packet decodes");
        assert_eq!(o.dst, backend_ip(false, a_backend), "to A's backend");
        assert_eq!(o.src, vip, "from the VIP (snat: vip)");
        assert_eq!(
            o.sport,
            u16::from_be(ev.nat_port_be),
            "from A's NAT port: the backend's connection is the same"
        );
        assert_eq!((o.seq, o.ack), (3000, 4000), "TCP untouched");
        assert!(o.ip_csum_ok && o.l4_csum_ok, "checksums");

        let reply = Pkt {
            dst_mac: l.lab.node("lb").mac,
            src_mac: backend_mac(a_backend),
            l4: vip_tests::packet::L4::Tcp {
                flags: TCP_ACK,
                seq: 4000,
                ack: 3011,
            },
            ..Pkt::tcp(
                backend_ip(false, a_backend),
                PORT,
                vip,
                u16::from_be(ev.nat_port_be),
                0,
            )
        }
        .build();
        let (action, out) = dp.run(&reply, Reason::TxReverseNat);
        assert_eq!(action, XDP_TX);
        let o = decode(&out).expect("reply decodes");
        assert_eq!((o.src, o.sport), (vip, PORT), "reply from the VIP");
        assert_eq!((o.dst, o.dport), (ip(CLIENT4), 46000), "to the client");

        // Another client's record for the same backend and NAT port: the
        // live flow keeps its port, the record is refused.
        let mut d = wire::decode(&datagram).expect("decode");
        d.records[0].client_port = 47000;
        let mut clash = vec![];
        wire::encode(2, &d.records, None, &mut clash);
        assert_eq!(
            receive_datagram(&clash, peer, &[peer], &mut adm, &dir, &mut tables, &stats).applied,
            0,
            "a record taking a live flow's port is refused"
        );
        let conflicts = stats
            .rejected()
            .into_iter()
            .find(|(l, _)| *l == "conflict")
            .map(|(_, n)| n);
        assert_eq!(conflicts, Some(1), "counted as a conflict");
        let ct = dp.prog.maps().conntrack().expect("dump");
        assert!(
            !ct.iter().any(|(k, _)| u16::from_be(k.sport_be) == 47000),
            "no forward entry for the refused record"
        );
    });
}

/// A closed flow's source port is taken over by a new flow at once, not
/// only after the agent's sweep: with every port of a 4-port range held by
/// expired reverse entries, a new flow gets one whose forward flow is over
/// too, and never one whose forward entry lives (a flow whose forward entry
/// lives keeps its port, however stale its reverse entry), nor one another
/// CPU or the sweep holds the lock for (`NAT_LOCK`).
#[test]
fn nat_expired_ports_are_reclaimed_under_the_lock() {
    use vip_common::CT_F_CLOSING;
    use vip_userspace::dataplane::flows::monotonic_ns;
    let l = NatLab::new("natreclaim");
    let snat = l.lb_ip(false);
    l.one_backend_with_ports(50000..=50003, |dp| {
        let now = monotonic_ns();
        let ago = |s: u64| now.saturating_sub(s * 1_000_000_000);
        let id1 = dp.prog.backend_id(&backend(false, 1)).expect("id");
        // Every port held by a flow closed 11 s ago (closing_s 10): expired.
        // Client ports 41000 + i. Ports 50000..=50002: the forward flow is
        // expired too. Port 50003: the forward flow still lives.
        let fill = |dp: &mut Dp, live_fwd: &[u16]| {
            for i in 0..4u16 {
                let port = 50000 + i;
                let fwd = if live_fwd.contains(&port) {
                    (ago(1), 0)
                } else {
                    (ago(11), CT_F_CLOSING)
                };
                nat_flow(dp, snat, id1, (port, 41000 + i), ago(11), fwd);
            }
        };
        let nat_port_of = |dp: &Dp, sport: u16| {
            conntrack_by_sport(dp)
                .get(&sport)
                .map(|v| u16::from_be(v.nat_port_be))
        };

        fill(dp, &[50003]);
        let (action, _) = dp.run(&syn(false, 45000).build(), Reason::TxNat);
        assert_eq!(action, XDP_TX, "a new flow takes over a closed flow's port");
        let port = nat_port_of(dp, 45000).expect("the new flow's entry");
        assert!(
            (50000..=50002).contains(&port),
            "port {port}: not one whose forward flow is over"
        );
        let owner = *rev_owners(dp, port).first().expect("the reverse entry");
        assert_eq!(
            owner,
            (45000, vip_common::NAT_F_SOLE),
            "the reverse entry is the new flow's, allocated here"
        );

        // Only ports whose forward flows live: nothing to take.
        fill(dp, &[50000, 50001, 50002, 50003]);
        let (action, _) = dp.run(&syn(false, 45001).build(), Reason::DropNatPortsExhausted);
        assert_eq!(action, XDP_DROP, "dropped: every port's forward flow lives");

        // Reclaimable again, but every port locked (a sweep or another CPU
        // at work on them): left alone.
        fill(dp, &[]);
        insert(
            dp,
            "NAT_LOCK",
            (0..4u16).map(|i| (rev_key(1, snat, 50000 + i), 1u8)),
        );
        let (action, _) = dp.run(&syn(false, 45002).build(), Reason::DropNatPortsExhausted);
        assert_eq!(action, XDP_DROP, "dropped while the ports are locked");
    });
}

/// A taken port whose flow is over is taken over as soon as the search
/// meets it, with free ports left in the range, when the service has no
/// state sync: a search that tried every port for a free one first cost a
/// SYN up to `NAT_PORT_TRIES` failed LRU inserts whenever the range was
/// busy with recently closed flows (`lb::allocate_port`). With state sync a
/// peer may still hold that flow, so a free port comes first and the old
/// flow keeps its entry. The first port of the new flow's sequence holds a
/// flow closed 11 s ago (`closing_s` 10); the other 15 are free.
#[test]
fn nat_an_over_flows_port_is_taken_when_the_search_meets_it_without_sync() {
    use vip_common::{CT_F_CLOSING, NAT_F_SOLE, SVC_F_SYNC};
    use vip_userspace::dataplane::flows::monotonic_ns;
    let l = NatLab::new("natmeet");
    let snat = l.lb_ip(false);
    for (flags, taken) in [(0, true), (SVC_F_SYNC, false)] {
        l.one_backend_with_ports_flagged(50000..=50015, flags, |dp| {
            let now = monotonic_ns();
            let ago = now.saturating_sub(11_000_000_000);
            let id1 = dp.prog.backend_id(&backend(false, 1)).expect("id");
            let first = nat_port_try(flow_hash(&fwd_key(45100, PROTO_TCP)), 0, 50000, 16);
            nat_flow(dp, snat, id1, (first, 41000), ago, (ago, CT_F_CLOSING));
            let (action, _) = dp.run(&syn(false, 45100).build(), Reason::TxNat);
            assert_eq!(action, XDP_TX);
            let port = conntrack_by_sport(dp)
                .get(&45100)
                .map(|v| u16::from_be(v.nat_port_be))
                .expect("the new flow's entry");
            let sole = if flags == 0 { NAT_F_SOLE } else { 0 };
            if taken {
                assert_eq!(
                    port, first,
                    "without sync: the over flow's port, the first tried"
                );
                assert_eq!(
                    rev_owners(dp, first),
                    vec![(45100, sole)],
                    "one reverse entry for the port, the new flow's"
                );
            } else {
                assert_ne!(port, first, "with sync: a free port first");
                assert_eq!(
                    rev_owners(dp, first),
                    vec![(41000, CT_F_CLOSING)],
                    "the over flow keeps its port while free ones remain"
                );
            }
        });
    }
}

/// How the backend's end closed decides how long its port stays taken
/// (`Globals::port_free`). One port in the range; the flow opens, then:
/// - the client closes first and the backend answers with its FIN (the
///   backend ends CLOSED, no TIME-WAIT): `NAT_F_DONE`, and a new flow gets
///   the port once both sides are 2 s quiet, not before;
/// - the backend closes first (it waits in TIME-WAIT): no flag, and the port
///   stays taken for `closing_s`;
/// - the backend resets: `NAT_F_DONE`.
#[test]
fn nat_port_hold_follows_how_the_backend_closed() {
    use vip_common::{CT_F_CLOSING, NAT_F_DONE};
    use vip_userspace::dataplane::flows::monotonic_ns;
    let l = NatLab::new("natclose");
    let snat = l.lb_ip(false);
    l.one_backend_with_ports(50000..=50000, |dp| {
        let lb_mac = l.lab.node("lb").mac;
        let client = |sport: u16, flags: u8| {
            Pkt {
                l4: vip_tests::packet::L4::Tcp {
                    flags,
                    seq: 1001,
                    ack: 9,
                },
                ..syn(false, sport)
            }
            .build()
        };
        let from_backend = |flags: u8| {
            Pkt {
                dst_mac: lb_mac,
                src_mac: backend_mac(1),
                l4: vip_tests::packet::L4::Tcp {
                    flags,
                    seq: 9,
                    ack: 1002,
                },
                ..Pkt::tcp(backend_ip(false, 1), PORT, snat, 50000, 0)
            }
            .build()
        };
        // The flags that say how the flow closed (every entry here is
        // this LB's alone, `NAT_F_SOLE`: the service has no state sync).
        let rev_flags = |dp: &Dp| {
            let e = dp.prog.maps().nat_entries().expect("dump");
            assert_eq!(e.len(), 1, "one reverse entry: {e:?}");
            assert_ne!(e[0].1.flags & vip_common::NAT_F_SOLE, 0, "allocated here");
            e[0].1.flags & !vip_common::NAT_F_SOLE
        };
        // Ages both entries of the flow from client port `sport` by `secs`.
        let age = |dp: &mut Dp, sport: u16, secs: u64| {
            let back = secs * 1_000_000_000;
            let now = monotonic_ns();
            let (k, mut v) = dp.prog.maps().nat_entries().expect("dump")[0];
            v.last_seen_ns = now - back;
            insert(dp, "NAT_REV", [(k, v)]);
            let mut c = conntrack_by_sport(dp)[&sport];
            c.last_seen_ns = now - back;
            insert(dp, "CONNTRACK", [(fwd_key(sport, PROTO_TCP), c)]);
        };
        let open = |dp: &mut Dp, sport: u16| {
            let (action, _) = dp.run(&syn(false, sport).build(), Reason::TxNat);
            assert_eq!(
                action, XDP_TX,
                "client port {sport}: a new flow gets the port"
            );
            dp.run(&client(sport, TCP_ACK), Reason::TxNat);
            assert_eq!(
                u16::from_be(conntrack_by_sport(dp)[&sport].nat_port_be),
                50000
            );
        };
        let refused = |dp: &mut Dp, sport: u16, why: &str| {
            let (action, _) = dp.run(&syn(false, sport).build(), Reason::DropNatPortsExhausted);
            assert_eq!(action, XDP_DROP, "{why}");
        };

        // The client closes first; the backend closes passively.
        open(dp, 41000);
        dp.run(&client(41000, TCP_FIN | TCP_ACK), Reason::TxNat);
        assert_eq!(rev_flags(dp) & NAT_F_DONE, 0, "the client's FIN alone");
        dp.run(&from_backend(TCP_FIN | TCP_ACK), Reason::TxReverseNat);
        assert_ne!(
            rev_flags(dp) & NAT_F_DONE,
            0,
            "the backend closed passively"
        );
        dp.run(&client(41000, TCP_ACK), Reason::TxNat);
        refused(dp, 42000, "the port is held for 2 s after the last packet");
        age(dp, 41000, 3);
        open(dp, 42000);
        assert_eq!(rev_flags(dp), 0, "the reverse entry is the new flow's");

        // The backend closes first: it waits in TIME-WAIT, the port is held
        // for closing_s (10 s).
        dp.run(&from_backend(TCP_FIN | TCP_ACK), Reason::TxReverseNat);
        dp.run(&client(42000, TCP_FIN | TCP_ACK), Reason::TxNat);
        dp.run(&from_backend(TCP_ACK), Reason::TxReverseNat);
        assert_eq!(rev_flags(dp), CT_F_CLOSING, "closing, not done");
        age(dp, 42000, 3);
        refused(dp, 43000, "the backend's TIME-WAIT keeps the port");
        age(dp, 42000, 11);
        open(dp, 43000);

        // The backend resets: done at once.
        dp.run(&from_backend(TCP_RST), Reason::TxReverseNat);
        assert_eq!(rev_flags(dp), CT_F_CLOSING | NAT_F_DONE, "reset");
        age(dp, 43000, 3);
        open(dp, 44000);
    });
}

/// Waits until the program's clock (`bpf_ktime_get_coarse_ns`, which is
/// CLOCK_MONOTONIC_COARSE) is at least 200 ms from the end of its current
/// `FibHop` epoch, so that the next few runs all see the same epoch.
fn early_in_epoch() {
    let epoch_ns = 1u64 << FibHop::EPOCH_SHIFT;
    loop {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a timespec to write.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC_COARSE)");
        let now = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let left = epoch_ns - now % epoch_ns;
        if left > 200_000_000 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_nanos(left + 10_000_000));
    }
}

/// The destination MAC `run` gives after `change` (a neighbour's MAC
/// moving) in the same epoch as a run before it, which keeps the hop:
/// `undo`, a run, `change`, a run. A try in which the kept hop's epoch
/// (`epoch`) moved between the two runs (the epoch ended in between) is
/// made again.
fn after_change_same_epoch(
    dp: &Dp,
    run: &dyn Fn(&Dp) -> [u8; 6],
    epoch: &dyn Fn(&Dp) -> u32,
    undo: &dyn Fn(),
    change: &dyn Fn(),
) -> [u8; 6] {
    for _ in 0..3 {
        undo();
        early_in_epoch();
        run(dp);
        let before = epoch(dp);
        change();
        let mac = run(dp);
        if epoch(dp) == before {
            return mac;
        }
    }
    panic!("three tries in a row crossed the end of an epoch");
}

/// The IP length of a frame as the FIB takes it (`tot_len`).
fn ip_len(frame: &[u8]) -> u16 {
    let v6 = frame[14] >> 4 == 6;
    if v6 {
        u16::from_be_bytes([frame[18], frame[19]]) + 40
    } else {
        u16::from_be_bytes([frame[16], frame[17]])
    }
}

/// The connection-table entry of the client's flow from `sport`.
fn ct_entry(dp: &Dp, sport: u16) -> (ConnKey, ConnValue) {
    dp.prog
        .maps()
        .conntrack()
        .expect("dump the connection table")
        .into_iter()
        .find(|(k, _)| u16::from_be(k.sport_be) == sport)
        .unwrap_or_else(|| panic!("no connection entry for client port {sport}"))
}

/// The reverse entry of the client's flow from `sport`.
fn rev_entry(dp: &Dp, sport: u16) -> (ConnKey, NatValue) {
    dp.prog
        .maps()
        .nat_entries()
        .expect("dump the reverse entries")
        .into_iter()
        .find(|(_, v)| u16::from_be(v.client_port_be) == sport)
        .unwrap_or_else(|| panic!("no reverse entry for client port {sport}"))
}

/// Mode nat keeps each flow's next hop in its entries (`FibHop`, issue 17):
/// the forward one in the connection entry, the way back to the client in
/// the reverse entry. Fixture rows, both directions, IPv4 and IPv6:
/// - a new flow keeps none; its next packet asks the FIB and keeps the
///   answer (interface, both MACs, the length checked);
/// - cached: a neighbour's MAC changes, and within the epoch the flow still
///   uses the kept hop (no FIB lookup; what the benchmark's speed rests on);
/// - a packet longer than the FIB checked is looked up (the FIB's MTU check
///   still sees every larger packet);
/// - revalidated: a hop of an older epoch is looked up again and sees the
///   change; a neighbour that is gone then sends the packet to the kernel
///   (PassFibMiss), never to the kept MAC.
#[test]
fn nat_next_hop_kept_per_flow_and_looked_up_again() {
    let l = NatLab::new("nathop");
    let mac = vip_tests::netns::mac_to_string;
    let moved = [0x02, 0x77, 0, 0, 0, 0x99];
    let moved_again = [0x02, 0x77, 0, 0, 0, 0x98];
    for v6 in [false, true] {
        let svc = l.three(v6, PROTO_TCP);
        let lb = l.lab.node("lb").clone();
        let client = ip(if v6 { CLIENT6 } else { CLIENT4 });
        l.with_dp(vec![svc], |dp| {
            let sport = 42000;
            let s = syn(v6, sport).build();
            let (_, out) = dp.run(&s, Reason::TxNat);
            let nat_port = check_forward(&l, dp, &decode(&s).expect("input"), &out, v6);
            let b = chosen(dp, client, sport, v6);
            let backend_addr = backend_ip(v6, b).to_string();
            assert_eq!(
                ct_entry(dp, sport).1.hop,
                FibHop::NONE,
                "a new flow's entry keeps no hop (v6={v6})"
            );
            let data = |payload: &[u8]| {
                Pkt {
                    l4: vip_tests::packet::L4::Tcp {
                        flags: TCP_ACK | TCP_PSH,
                        seq: 1001,
                        ack: 9,
                    },
                    ..syn(v6, sport)
                }
                .payload(payload)
                .build()
            };
            let short = data(b"GET");
            let dst_mac = |dp: &Dp, frame: &[u8], reason: Reason| {
                let (action, out) = dp.run(frame, reason);
                assert_eq!(action, XDP_TX, "{reason:?}: XDP_TX (v6={v6})");
                decode(&out).expect("output decodes").dst_mac
            };

            // Forward: looked up and kept.
            assert_eq!(dst_mac(dp, &short, Reason::TxNat), backend_mac(b));
            let h = ct_entry(dp, sport).1.hop;
            assert_eq!(h.ifindex, lb.ifindex, "kept hop: egress interface");
            assert_eq!(h.dmac, backend_mac(b), "kept hop: the backend's MAC");
            assert_eq!(h.smac, lb.mac, "kept hop: our MAC");
            assert_eq!(h.checked_len, ip_len(&short), "kept hop: length checked");
            // Cached: the backend's MAC moves; the kept hop is used.
            let seen = after_change_same_epoch(
                dp,
                &|dp| dst_mac(dp, &short, Reason::TxNat),
                &|dp| ct_entry(dp, sport).1.hop.epoch,
                &|| {
                    l.lab
                        .add_neighbour("lb", &backend_addr, &mac(&backend_mac(b)))
                },
                &|| l.lab.add_neighbour("lb", &backend_addr, &mac(&moved)),
            );
            assert_eq!(
                seen,
                backend_mac(b),
                "same epoch: the kept hop is used, not the FIB (v6={v6})"
            );
            // A longer packet is looked up, and its length kept.
            let long = data(&[7; 200]);
            assert_eq!(
                dst_mac(dp, &long, Reason::TxNat),
                moved,
                "a packet longer than the FIB checked is looked up (v6={v6})"
            );
            assert_eq!(ct_entry(dp, sport).1.hop.checked_len, ip_len(&long));
            // Revalidated: an older epoch's hop is looked up again.
            l.lab.add_neighbour("lb", &backend_addr, &mac(&moved_again));
            let age = |dp: &mut Dp| {
                let (k, mut v) = ct_entry(dp, sport);
                v.hop.epoch = v.hop.epoch.wrapping_sub(1);
                insert(dp, "CONNTRACK", [(k, v)]);
                v.hop.epoch.wrapping_add(1)
            };
            let epoch = age(dp);
            assert_eq!(
                dst_mac(dp, &short, Reason::TxNat),
                moved_again,
                "a hop of an older epoch is looked up again (v6={v6})"
            );
            let h = ct_entry(dp, sport).1.hop;
            assert_eq!(
                (h.dmac, h.epoch),
                (moved_again, epoch),
                "the new answer is kept for this epoch"
            );
            // Gone: no neighbour any more, so the kernel gets the packet.
            l.lab
                .sh("lb", &["ip", "neigh", "del", &backend_addr, "dev", "eth0"]);
            age(dp);
            let (action, _) = dp.run(&short, Reason::PassFibMiss);
            assert_eq!(
                action, XDP_PASS,
                "a neighbour that is gone is never sent to from the kept hop (v6={v6})"
            );
            l.lab
                .add_neighbour("lb", &backend_addr, &mac(&backend_mac(b)));

            // Reverse: the way back to the client, kept in the reverse entry.
            let reply = Pkt {
                dst_mac: lb.mac,
                src_mac: backend_mac(b),
                ..Pkt::tcp(backend_ip(v6, b), PORT, l.lb_ip(v6), nat_port, TCP_ACK)
            }
            .payload(b"ok")
            .build();
            assert_eq!(dst_mac(dp, &reply, Reason::TxReverseNat), CLIENT_MAC);
            let h = rev_entry(dp, sport).1.hop;
            assert_eq!(
                (h.ifindex, h.dmac, h.smac, h.checked_len),
                (lb.ifindex, CLIENT_MAC, lb.mac, ip_len(&reply)),
                "the reverse entry keeps the hop to the client (v6={v6})"
            );
            let client_addr = client.to_string();
            let seen = after_change_same_epoch(
                dp,
                &|dp| dst_mac(dp, &reply, Reason::TxReverseNat),
                &|dp| rev_entry(dp, sport).1.hop.epoch,
                &|| l.lab.add_neighbour("lb", &client_addr, &mac(&CLIENT_MAC)),
                &|| l.lab.add_neighbour("lb", &client_addr, &mac(&moved)),
            );
            assert_eq!(
                seen, CLIENT_MAC,
                "same epoch: the reverse path uses its kept hop (v6={v6})"
            );
            let (k, mut v) = rev_entry(dp, sport);
            v.hop.epoch = v.hop.epoch.wrapping_sub(1);
            insert(dp, "NAT_REV", [(k, v)]);
            assert_eq!(
                dst_mac(dp, &reply, Reason::TxReverseNat),
                moved,
                "the reverse path looks an older epoch's hop up again (v6={v6})"
            );
            l.lab
                .add_neighbour("lb", &client.to_string(), &mac(&CLIENT_MAC));
        });
    }
}

/// Mode nat under a flood (issue 17 item 4): 200 confirmed flows, then more
/// distinct SYNs than `CT_UNCONFIRMED`/`NAT_REV_UNCONFIRMED` hold and a
/// flood of segments with no flow, far more than the 4096 entries of
/// `Dp`'s `CONNTRACK` and `NAT_REV`. The flood's entries go to the
/// unconfirmed tables (evicting only each other), so every confirmed flow
/// keeps both entries: its next packet leaves with its port, and the
/// backend's reply is translated back. Every flood packet is counted: a SYN
/// as a new flow sent on (`tx_nat`) or refused for want of a port
/// (`drop_nat_ports_exhausted`), a segment with no flow answered with an
/// RST (`tx_rst`).
#[test]
fn nat_flood_evicts_no_confirmed_flow() {
    use vip_common::UNCONFIRMED_CAPACITY;
    use vip_tests::flood::{self, Counts};
    let l = NatLab::new("natflood");
    let snat = l.lb_ip(false);
    let svc = l.three(false, PROTO_TCP);
    l.with_dp(vec![svc], |dp| {
        let flows = 200u16;
        let mut ports = vec![];
        for i in 0..flows {
            let sport = 30000 + i;
            dp.run(&syn(false, sport).build(), Reason::TxNat);
            let (_, out) = dp.run(&handshake_ack(false, sport).build(), Reason::TxNat);
            ports.push(decode(&out).expect("decodes").sport);
        }
        let before = Counts::read(dp.prog.maps(), 16);
        let syns = UNCONFIRMED_CAPACITY + 4_000;
        let segments = 5_000u32;
        for i in 0..syns {
            dp.run_raw(
                &Pkt {
                    dst_mac: [0x02, 0x77, 0, 0, 0, 0x10],
                    ..flood::frame(i, true, ip(VIP4), PORT)
                }
                .build(),
            );
        }
        for i in 0..segments {
            dp.run_raw(
                &Pkt {
                    dst_mac: [0x02, 0x77, 0, 0, 0, 0x10],
                    ..flood::frame(syns + i, false, ip(VIP4), PORT)
                }
                .build(),
            );
        }
        let after = Counts::read(dp.prog.maps(), 16);
        let sent = after.moved(&before, Reason::TxNat);
        let refused = after.moved(&before, Reason::DropNatPortsExhausted);
        assert_eq!(
            sent + refused,
            u64::from(syns),
            "every SYN sent or refused: {:?}",
            after.diff(&before)
        );
        assert_eq!(
            after.moved(&before, Reason::TxRst),
            u64::from(segments),
            "every segment with no flow answered with an RST: {:?}",
            after.diff(&before)
        );
        assert_eq!(
            after.diff(&before).len(),
            2 + usize::from(refused > 0),
            "no other reason moved: {:?}",
            after.diff(&before)
        );
        assert_eq!(
            after.new_flows - before.new_flows,
            sent,
            "new flows = SYNs sent"
        );
        assert_eq!(
            dp.prog.maps().confirmed_flows().expect("CONNTRACK").len(),
            usize::from(flows),
            "CONNTRACK holds the confirmed flows and nothing of the flood"
        );
        for i in 0..flows {
            let sport = 30000 + i;
            let (_, out) = dp.run(&handshake_ack(false, sport).build(), Reason::TxNat);
            let port = decode(&out).expect("decodes").sport;
            assert_eq!(port, ports[usize::from(i)], "flow {sport} keeps its port");
            let be = chosen(dp, ip(CLIENT4), sport, false);
            let reply = Pkt {
                dst_mac: l.lab.node("lb").mac,
                src_mac: backend_mac(be),
                ..Pkt::tcp(backend_ip(false, be), PORT, snat, port, TCP_ACK)
            }
            .build();
            let (action, out) = dp.run(&reply, Reason::TxReverseNat);
            assert_eq!(action, XDP_TX, "flow {sport}: the reply is translated");
            let o = decode(&out).expect("decodes");
            assert_eq!((o.dst, o.dport), (ip(CLIENT4), sport), "back to the client");
        }
    });
}

/// A port held by a handshake that never completed (a spoofed SYN's) goes
/// to a new flow that finds no other port once both its unconfirmed entries
/// are idle past `HANDSHAKE_HOLD_NS` (1 s), not after `closing_s` (10 s):
/// under a SYN flood real clients get through. Not before: half a second
/// idle, or a forward entry its client's retransmitted SYN refreshed, keeps
/// it. The old flow's forward entry goes with the port, so its client's
/// late ACK finds no flow (an RST) instead of leaving under the new flow's
/// port. One port in the range.
#[test]
fn nat_stalled_handshakes_give_their_ports_up_after_a_second() {
    use vip_userspace::dataplane::flows::monotonic_ns;
    let l = NatLab::new("natpending");
    let snat = l.lb_ip(false);
    l.one_backend_with_ports(50000..=50000, |dp| {
        dp.run(&syn(false, 41000).build(), Reason::TxNat);
        let (action, _) = dp.run(&syn(false, 42000).build(), Reason::DropNatPortsExhausted);
        assert_eq!(action, XDP_DROP, "a pending handshake holds the port");
        let age = |dp: &mut Dp, fwd_ms: u64, rev_ms: u64| {
            let now = monotonic_ns();
            let mut c = conntrack_by_sport(dp)[&41000];
            c.last_seen_ns = now - fwd_ms * 1_000_000;
            insert(dp, "CT_UNCONFIRMED", [(fwd_key(41000, PROTO_TCP), c)]);
            let (k, mut v) = dp.prog.maps().nat_entries().expect("dump")[0];
            assert_eq!(k, rev_key(1, snat, 50000), "the pending flow's port");
            v.last_seen_ns = now - rev_ms * 1_000_000;
            insert(dp, "NAT_REV_UNCONFIRMED", [(k, v)]);
        };
        for (fwd_ms, rev_ms, what) in [
            (500, 500, "half a second idle"),
            (1500, 500, "the backend's side half a second idle"),
            (
                500,
                1500,
                "the client's side half a second idle (a retransmitted SYN)",
            ),
        ] {
            age(dp, fwd_ms, rev_ms);
            let (action, _) = dp.run(&syn(false, 42000).build(), Reason::DropNatPortsExhausted);
            assert_eq!(action, XDP_DROP, "{what}: the handshake keeps its port");
        }
        age(dp, 1500, 1500);
        let (action, _) = dp.run(&syn(false, 42000).build(), Reason::TxNat);
        assert_eq!(action, XDP_TX, "the stalled handshake's port is taken over");
        let e = dp.prog.maps().nat_entries().expect("dump");
        assert_eq!(e.len(), 1, "one reverse entry: {e:?}");
        assert_eq!(u16::from_be(e[0].1.client_port_be), 42000, "now 42000's");
        assert!(
            !conntrack_by_sport(dp).contains_key(&41000),
            "the old flow's forward entry went with its port"
        );
        let (action, _) = dp.run(&handshake_ack(false, 41000).build(), Reason::TxRst);
        assert_eq!(action, XDP_TX, "the abandoned flow's late ACK gets an RST");
    });
}

/// The backend answers a new flow's SYN with a bare ACK: it still holds an
/// older connection on that source port (RFC 9293 3.10.7.4, RFC 5961
/// section 4). The LB answers that ACK itself with the RST the client would
/// send, <SEQ=SEG.ACK><CTL=RST>, back to the backend from the flow's SNAT
/// address and port (`tx_rst_stale_backend`), and the flow keeps its port,
/// so the client's retransmitted SYN leaves under it. The SYN-ACK, a
/// confirmed flow's ACK, and a peer's copy of a pending flow (no
/// `NAT_F_SOLE`, as with any service that syncs: its handshake may have
/// completed through the peer) are
/// translated to the client as before.
#[test]
fn nat_a_backends_stale_ack_to_a_new_flow_is_reset() {
    use vip_common::NAT_F_SOLE;
    let l = NatLab::new("natstale");
    let snat = l.lb_ip(false);
    let lb_mac = l.lab.node("lb").mac;
    l.one_backend_with_ports(50000..=50000, |dp| {
        dp.run(&syn(false, 41000).build(), Reason::TxNat);
        let stale = bare_ack(snat, 50000, lb_mac);
        let (action, out) = dp.run(&stale, Reason::TxRstStale);
        assert_eq!(action, XDP_TX, "the stale ACK is answered");
        let o = decode(&out).expect("the RST decodes");
        assert_eq!(
            (o.src, o.sport, o.dst, o.dport),
            (snat, 50000, backend_ip(false, 1), PORT),
            "to the backend, from the flow's SNAT address and port"
        );
        assert_eq!(
            (o.tcp_flags, o.seq),
            (TCP_RST, 123_456),
            "<SEQ=SEG.ACK><CTL=RST>"
        );
        assert_eq!((o.dst_mac, o.src_mac), (backend_mac(1), lb_mac));
        assert!(o.ip_csum_ok && o.l4_csum_ok, "checksums: {o:?}");
        let (_, out) = dp.run(&syn(false, 41000).build(), Reason::TxNat);
        assert_eq!(
            decode(&out).expect("decodes").sport,
            50000,
            "the client's retransmitted SYN leaves under the same port"
        );
        let (_, out) = dp.run(
            &syn_ack(false, 1, snat, 50000, lb_mac).build(),
            Reason::TxReverseNat,
        );
        let o = decode(&out).expect("decodes");
        assert_eq!((o.dst, o.dport), (ip(CLIENT4), 41000), "the SYN-ACK");

        // A peer's copy of the same pending flow.
        let (k, mut v) = dp.prog.maps().nat_entries().expect("dump")[0];
        assert_ne!(
            v.flags & NAT_F_SOLE,
            0,
            "our own allocation, no state sync: marked"
        );
        v.flags &= !NAT_F_SOLE;
        insert(dp, "NAT_REV_UNCONFIRMED", [(k, v)]);
        let (action, out) = dp.run(&stale, Reason::TxReverseNat);
        assert_eq!(action, XDP_TX);
        let o = decode(&out).expect("decodes");
        assert_eq!(
            (o.dst, o.dport, o.tcp_flags),
            (ip(CLIENT4), 41000, TCP_ACK),
            "a peer's pending flow: the ACK passes to the client"
        );

        // Confirmed by the client's ACK: the backend's ACKs pass.
        v.flags |= NAT_F_SOLE;
        insert(dp, "NAT_REV_UNCONFIRMED", [(k, v)]);
        dp.run(&handshake_ack(false, 41000).build(), Reason::TxNat);
        let (_, out) = dp.run(&stale, Reason::TxReverseNat);
        let o = decode(&out).expect("decodes");
        assert_eq!(
            (o.dst, o.dport),
            (ip(CLIENT4), 41000),
            "a confirmed flow's ACK"
        );
    });
}

/// With state sync the same ACK passes to the client: the flow's entry is
/// not this LB's alone (no `NAT_F_SOLE`), because the client's ACK may have
/// confirmed it through a peer (the router's ECMP hash changed as an LB
/// came back, or the VIP moved) whose record has not arrived yet. Resetting
/// the backend there broke a connection in the fabric lab (`cargo xtask
/// soak`, fabric, mode nat).
#[test]
fn nat_with_state_sync_a_backends_ack_to_a_pending_flow_passes() {
    use vip_common::{NAT_F_SOLE, SVC_F_SYNC};
    let l = NatLab::new("natstalesync");
    let snat = l.lb_ip(false);
    let lb_mac = l.lab.node("lb").mac;
    let mut svc = service(ip(VIP4), snat, PROTO_TCP, vec![backend(false, 1)]);
    svc.flags |= SVC_F_SYNC;
    l.with_dp(vec![svc], |dp| {
        let (_, out) = dp.run(&syn(false, 41000).build(), Reason::TxNat);
        let port = decode(&out).expect("decodes").sport;
        let (_, v) = dp.prog.maps().nat_entries().expect("dump")[0];
        assert_eq!(
            v.flags & NAT_F_SOLE,
            0,
            "a syncing service's flow is not this LB's alone"
        );
        let ack = bare_ack(snat, port, lb_mac);
        let (action, out) = dp.run(&ack, Reason::TxReverseNat);
        assert_eq!(action, XDP_TX);
        let o = decode(&out).expect("decodes");
        assert_eq!(
            (o.dst, o.dport, o.tcp_flags),
            (ip(CLIENT4), 41000, TCP_ACK),
            "translated to the client, not reset"
        );
    });
}

/// Backend 1's bare ACK (seq 9000, ack 123456) to `to`:`port`, the LB's
/// SNAT address and port, in a frame to `lb_mac`: what it sends a SYN that
/// lands on an older connection it still holds.
fn bare_ack(to: IpAddr, port: u16, lb_mac: [u8; 6]) -> Vec<u8> {
    Pkt {
        dst_mac: lb_mac,
        src_mac: backend_mac(1),
        l4: vip_tests::packet::L4::Tcp {
            flags: TCP_ACK,
            seq: 9000,
            ack: 123_456,
        },
        ..Pkt::tcp(backend_ip(false, 1), PORT, to, port, 0)
    }
    .build()
}

/// Backend `be`'s SYN-ACK (seq 7000, ack 1001) to `to`:`port`, the LB's
/// SNAT address and port, in a frame to `lb_mac`.
fn syn_ack(v6: bool, be: u8, to: IpAddr, port: u16, lb_mac: [u8; 6]) -> Pkt {
    Pkt {
        dst_mac: lb_mac,
        src_mac: backend_mac(be),
        l4: vip_tests::packet::L4::Tcp {
            flags: TCP_SYN | TCP_ACK,
            seq: 7000,
            ack: 1001,
        },
        ..Pkt::tcp(backend_ip(v6, be), PORT, to, port, 0)
    }
}

/// Another LB of a port-sliced group, on the LB's segment.
const PEER4: &str = "10.77.0.2";
const PEER6: &str = "fd77::2";
const PEER_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x02];
/// An address that is not a listed peer.
const STRANGER4: &str = "10.77.0.3";

/// `frame` inside IPIP / IPv6 in IPv6 from `from` to `to`, as a peer's
/// `encap::handoff` sends it (Ethernet from `src_mac` to `dst_mac`).
fn wrapped(frame: &[u8], from: IpAddr, to: IpAddr, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    let inner = &frame[14..];
    let mut out = Vec::with_capacity(frame.len() + 40);
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    match (from, to) {
        (IpAddr::V4(f), IpAddr::V4(t)) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((inner.len() + 20) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0x40, 0, 64, vip_common::PROTO_IPIP, 0, 0]);
            h.extend_from_slice(&f.octets());
            h.extend_from_slice(&t.octets());
            let c = vip_tests::packet::checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&h);
        }
        (IpAddr::V6(f), IpAddr::V6(t)) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&(inner.len() as u16).to_be_bytes());
            out.extend_from_slice(&[vip_common::PROTO_IPV6, 64]);
            out.extend_from_slice(&f.octets());
            out.extend_from_slice(&t.octets());
        }
        _ => panic!("one family inside and out"),
    }
    out.extend_from_slice(inner);
    out
}

/// The peer LB `peer` owns ports 50000-59999 (`NAT_OWNERS`), reached from
/// our sync address `me`.
fn peer_slice(dp: &mut Dp, peer: IpAddr, me: IpAddr) {
    let (family, saddr) = addr_bytes(me);
    dp.prog
        .maps_mut()
        .set_nat_owners(&[vip_common::NatOwner {
            addr: addr_bytes(peer).1,
            saddr,
            lo: 50000,
            hi: 59999,
            mtu: 1500,
            family,
            _pad: 0,
        }])
        .expect("NAT_OWNERS");
}

/// Mode nat with port slices, the race the fabric's ECMP makes: a backend's
/// reply reaches an LB before the flow's sync record does. Fixture rows,
/// IPv4 and IPv6:
/// - a reply to a port of the peer's slice with no entry here goes to that
///   peer inside IPIP / IPv6 in IPv6 (outer header field by field, the
///   inner packet unchanged, next hop from the FIB);
/// - one to a port of our own slice with no entry goes to the kernel as
///   before (no owner to ask);
/// - what the peer sends us for a flow we hold is unwrapped and translated
///   back to the client exactly like a reply the router sent us;
/// - a handed packet we hold nothing for goes to the kernel, never back;
/// - the same tunnel from an address that is not a listed peer, or to an
///   address that is not ours, is left alone (the kernel's);
/// - one that would not fit the path once wrapped is dropped and counted.
#[test]
fn nat_replies_without_an_entry_are_handed_to_the_slice_owner() {
    let l = NatLab::new("nathand");
    let mac = vip_tests::netns::mac_to_string;
    l.lab.add_neighbour("lb", PEER4, &mac(&PEER_MAC));
    l.lab.add_neighbour("lb", PEER6, &mac(&PEER_MAC));
    let lb_mac = l.lab.node("lb").mac;
    for v6 in [false, true] {
        let svc = l.three(v6, PROTO_TCP);
        let me = l.lb_ip(v6);
        let peer = ip(if v6 { PEER6 } else { PEER4 });
        let client = ip(if v6 { CLIENT6 } else { CLIENT4 });
        let saddr = addr_bytes(me).1;
        l.with_dp(vec![svc], |dp| {
            // Our slice 40000-49999, the peer's 50000-59999.
            dp.prog
                .maps_mut()
                .set_globals(&Globals {
                    nat_alloc_lo: 40000,
                    nat_alloc_hi: 49999,
                    ..Globals::DEFAULT
                })
                .expect("globals");
            peer_slice(dp, peer, me);
            let reply = |port: u16, payload: &[u8]| {
                syn_ack(v6, 1, me, port, lb_mac).payload(payload).build()
            };

            // A reply on the peer's slice: handed over, unchanged inside.
            let r = reply(50010, b"");
            let (action, out) = dp.run(&r, Reason::TxHandoff);
            assert_eq!(action, XDP_TX, "handed back out of eth0 (v6={v6})");
            assert_eq!(&out[0..6], &PEER_MAC, "Ethernet to the peer (FIB)");
            assert_eq!(&out[6..12], &lb_mac, "Ethernet from us");
            let (olen, src, dst) = if v6 {
                assert_eq!(&out[12..14], &[0x86, 0xdd]);
                assert_eq!(out[20], vip_common::PROTO_IPV6, "next header 41");
                assert_eq!(
                    u16::from_be_bytes([out[18], out[19]]) as usize,
                    r.len() - 14,
                    "outer payload = the inner packet"
                );
                (40, &out[22..38], &out[38..54])
            } else {
                assert_eq!(&out[12..14], &[0x08, 0x00]);
                let o = &out[14..34];
                assert_eq!(o[0], 0x45);
                assert_eq!(o[9], vip_common::PROTO_IPIP, "protocol 4");
                assert_eq!(vip_tests::packet::checksum(o), 0, "outer checksum");
                assert_eq!(
                    u16::from_be_bytes([o[2], o[3]]) as usize,
                    r.len() - 14 + 20,
                    "outer total length"
                );
                (20, &out[26..30], &out[30..34])
            };
            let n = if v6 { 16 } else { 4 };
            assert_eq!(src, &saddr[..n], "outer source: our sync address");
            assert_eq!(dst, &addr_bytes(peer).1[..n], "outer destination: the peer");
            assert_eq!(&out[14 + olen..], &r[14..], "inner packet unchanged");

            // Our own slice, no entry: nobody else to ask.
            dp.run(&reply(45000, b""), Reason::PassNoService);

            // What the peer hands us for a flow of ours: translated.
            let s = syn(v6, 41000).build();
            let (_, out) = dp.run(&s, Reason::TxNat);
            let nat_port = check_forward(&l, dp, &decode(&s).expect("input"), &out, v6);
            assert!((40000..=49999).contains(&nat_port), "our slice: {nat_port}");
            let b = chosen(dp, client, 41000, v6);
            let inner = syn_ack(v6, b, me, nat_port, lb_mac).build();
            let handed = wrapped(&inner, peer, me, PEER_MAC, lb_mac);
            let (action, out) = dp.run(&handed, Reason::TxReverseNat);
            assert_eq!(action, XDP_TX);
            let o = decode(&out).expect("the translated reply decodes");
            assert_eq!(
                (o.src, o.sport, o.dst, o.dport),
                (ip(if v6 { VIP6 } else { VIP4 }), PORT, client, 41000),
                "from the VIP to the client"
            );
            assert_eq!(o.dst_mac, CLIENT_MAC, "to the client's MAC");
            assert!(o.l4_csum_ok, "TCP checksum");

            // Handed, and nothing here either: the kernel's, not handed on.
            let lost = wrapped(&reply(50020, b""), peer, me, PEER_MAC, lb_mac);
            let (action, _) = dp.run(&lost, Reason::PassHandoffUnknown);
            assert_eq!(action, XDP_PASS);

            // Not from a listed peer, or not to our address: untouched.
            if !v6 {
                let stranger = wrapped(&inner, ip(STRANGER4), me, PEER_MAC, lb_mac);
                let (action, out) = dp.run(&stranger, Reason::PassNotL4);
                assert_eq!((action, &out), (XDP_PASS, &stranger));
                let elsewhere = wrapped(&inner, peer, ip(STRANGER4), PEER_MAC, lb_mac);
                let (action, out) = dp.run(&elsewhere, Reason::PassNotL4);
                assert_eq!((action, &out), (XDP_PASS, &elsewhere));
            }

            // A full-size reply would exceed the path once wrapped.
            let hdrs = if v6 { 40 + 20 } else { 20 + 20 };
            let big = reply(50030, &vec![0x55; 1500 - hdrs]);
            let (action, _) = dp.run(&big, Reason::DropHandoffTooBig);
            assert_eq!(action, XDP_DROP);
        });
    }
}

/// Mode nat with port slices: this LB's copy of another LB's flow may be
/// out of date. The owner frees a closed flow's port 2 s after the close
/// (`NAT_F_DONE`) and gives it to a new connection, while a copy here lives
/// on; the new connection's SYN-ACK, translated by the copy, went to the old
/// client, whose TIME-WAIT answered with an ACK that the backend reset
/// (fabric lab, captured on the router). Fixture rows, IPv4 and IPv6, for a
/// flow on a port of the peer's slice (opened while that range was ours,
/// then the slices set as a copy stands):
/// - the backend's data is translated here, as before (a live copy);
/// - a SYN-ACK on the port goes to the owner, unchanged inside;
/// - the backend's FIN is translated (the copy is live) and makes it
///   closing; the backend's next segment then goes to the owner too.
#[test]
fn nat_syn_acks_and_closing_copies_of_a_peers_port_go_to_its_owner() {
    let l = NatLab::new("natstale");
    let mac = vip_tests::netns::mac_to_string;
    l.lab.add_neighbour("lb", PEER4, &mac(&PEER_MAC));
    l.lab.add_neighbour("lb", PEER6, &mac(&PEER_MAC));
    let lb_mac = l.lab.node("lb").mac;
    for v6 in [false, true] {
        let mut svc = l.three(v6, PROTO_TCP);
        svc.flags |= vip_common::SVC_F_SYNC;
        let me = l.lb_ip(v6);
        let peer = ip(if v6 { PEER6 } else { PEER4 });
        let client = ip(if v6 { CLIENT6 } else { CLIENT4 });
        l.with_dp(vec![svc], |dp| {
            let slice = |dp: &mut Dp, lo: u16, hi: u16| {
                dp.prog
                    .maps_mut()
                    .set_globals(&Globals {
                        nat_alloc_lo: lo,
                        nat_alloc_hi: hi,
                        ..Globals::DEFAULT
                    })
                    .expect("globals");
            };
            slice(dp, 50000, 59999);
            let s = syn(v6, 41100).build();
            let (_, out) = dp.run(&s, Reason::TxNat);
            let nat_port = check_forward(&l, dp, &decode(&s).expect("input"), &out, v6);
            assert!((50000..=59999).contains(&nat_port), "{nat_port}");
            dp.run(&handshake_ack(v6, 41100).build(), Reason::TxNat);
            // Now the peer's slice: our entry stands as a copy of its flow.
            slice(dp, 40000, 49999);
            peer_slice(dp, peer, me);
            let b = chosen(dp, client, 41100, v6);
            let from_backend = |flags: u8, seq: u32, payload: &[u8]| {
                Pkt {
                    l4: vip_tests::packet::L4::Tcp {
                        flags,
                        seq,
                        ack: 1001,
                    },
                    ..syn_ack(v6, b, me, nat_port, lb_mac)
                }
                .payload(payload)
                .build()
            };
            let to_client = |out: &[u8]| {
                let o = decode(out).expect("the translated reply decodes");
                assert_eq!(
                    (o.src, o.sport, o.dst, o.dport),
                    (ip(if v6 { VIP6 } else { VIP4 }), PORT, client, 41100),
                    "from the VIP to the client (v6={v6})"
                );
            };
            let handed = |out: &[u8], r: &[u8]| {
                assert_eq!(&out[0..6], &PEER_MAC, "Ethernet to the owner (v6={v6})");
                let olen = if v6 { 40 } else { 20 };
                let proto = if v6 { out[20] } else { out[23] };
                let want = if v6 {
                    vip_common::PROTO_IPV6
                } else {
                    vip_common::PROTO_IPIP
                };
                assert_eq!(proto, want, "wrapped (v6={v6})");
                assert_eq!(&out[14 + olen..], &r[14..], "inner packet unchanged");
            };

            // A live copy: the backend's data is translated here.
            let (_, out) = dp.run(
                &from_backend(TCP_ACK | TCP_PSH, 7001, b"event"),
                Reason::TxReverseNat,
            );
            to_client(&out);

            // A SYN-ACK on the port: a new connection's, whose SYN the owner
            // saw; the copy may be of the port's previous flow.
            let r = syn_ack(v6, b, me, nat_port, lb_mac).build();
            let (action, out) = dp.run(&r, Reason::TxHandoff);
            assert_eq!(action, XDP_TX);
            handed(&out, &r);

            // The backend's FIN is translated and makes the copy closing;
            // what follows goes to the owner.
            let (_, out) = dp.run(
                &from_backend(TCP_FIN | TCP_ACK, 7006, b""),
                Reason::TxReverseNat,
            );
            to_client(&out);
            let r = from_backend(TCP_ACK, 7007, b"");
            let (action, out) = dp.run(&r, Reason::TxHandoff);
            assert_eq!(action, XDP_TX);
            handed(&out, &r);
        });
    }
}
