use std::{net::IpAddr, path::PathBuf, time::Duration};

use vip_common::{MAGLEV_DEFAULT_SIZE, MODE_NAT, SVC_F_SYNC};

use super::*;

const GOOD: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
        mac: 02:00:00:00:00:0b
      - address: 10.0.0.12
        local: true
";

const NAT: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: nat
    snat: node
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
        port: 443
";

#[test]
fn nat_needs_no_macs_and_resolves_snat() {
    let c = parse(NAT).expect("valid");
    assert_eq!(c.nat.port_range(), (40000, 59999));
    let node: Vec<IpAddr> = vec![
        "fe80::1".parse().expect("ip"),
        "10.0.0.2".parse().expect("ip"),
    ];
    let d = c.desired(&node).expect("node address found");
    assert_eq!(d[0].mode, MODE_NAT);
    assert_eq!(
        d[0].snat_addr,
        addr_bytes("10.0.0.2".parse().expect("ip")).1
    );
    assert_eq!(d[0].backends[1].port_be, 443u16.to_be());
    let e = c
        .desired(&["fe80::1".parse().expect("ip")])
        .expect_err("no IPv4 on the interface")
        .to_string();
    assert!(
        e.contains("services[0].snat") && e.contains("no IPv4 address"),
        "{e}"
    );
    let vip = parse(&NAT.replace("snat: node", "snat: vip")).expect("valid");
    assert_eq!(
        vip.desired(&[]).expect("vip")[0].snat_addr,
        addr_bytes("10.0.0.100".parse().expect("ip")).1
    );
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("vipd.yaml"), text)
}

#[test]
fn state_sync_defaults_flags_services_and_refuses_what_cannot_work() {
    let synced = format!(
        "state_sync:\n  peers: [10.0.0.3]\n{}",
        NAT.replace("snat: node", "snat: vip")
    );
    let c = parse(&synced).expect("valid");
    let s = c.state_sync.as_ref().expect("state_sync");
    assert_eq!(s.port, DEFAULT_SYNC_PORT);
    let d = c.desired(&[]).expect("desired");
    assert_ne!(d[0].flags & SVC_F_SYNC, 0, "nat service flagged for sync");
    let node: Vec<IpAddr> = ["fe80::1", "10.0.0.100", "10.0.0.2"]
        .iter()
        .map(|a| a.parse().expect("ip"))
        .collect();
    let vips = [c.services[0].vip];
    assert_eq!(
        s.listen_addr(&node, &vips),
        Ok("10.0.0.2".parse().expect("ip")),
        "the node address, not the VIP"
    );
    assert!(
        s.listen_addr(&[], &vips)
            .expect_err("none")
            .to_string()
            .contains("state_sync.listen")
    );
    // Without state_sync, no flag.
    let plain = parse(&NAT.replace("snat: node", "snat: vip")).expect("valid");
    assert_eq!(
        plain.desired(&[]).expect("desired")[0].flags & SVC_F_SYNC,
        0
    );

    for (text, want) in [
        (
            format!("state_sync:\n  peers: [10.0.0.3]\n{NAT}"),
            vec!["services[0].snat", "snat: vip"],
        ),
        (
            synced.replace("[10.0.0.3]", "[]"),
            vec!["state_sync.peers", "other LB nodes"],
        ),
        (
            synced.replace("[10.0.0.3]", "[10.0.0.3, fd00::3]"),
            vec!["state_sync.peers[1]", "one address family"],
        ),
        (
            synced.replace("[10.0.0.3]", "[10.0.0.100]"),
            vec!["state_sync.peers[0]", "is a VIP"],
        ),
        (
            synced.replace("[10.0.0.3]", "[10.0.0.3]\n  port: 45000"),
            vec!["state_sync.port", "nat.ports", "6446"],
        ),
        (
            format!("state_sync:\n  peers: [10.0.0.3]\n{GOOD}"),
            vec!["state_sync.peers", "no service is mode nat"],
        ),
        (
            synced.replace("[10.0.0.3]", "[10.0.0.3]\n  secret: x"),
            vec!["state_sync", "secret"],
        ),
    ] {
        let e = parse(&text).expect_err(&text).to_string();
        for w in want {
            assert!(e.contains(w), "{e:?} lacks {w:?}");
        }
    }
}

#[test]
fn kubeadm_shape_parses_with_defaults() {
    let c = parse(GOOD).expect("valid");
    assert_eq!(c.services[0].port, 6443);
    assert_eq!(c.services[0].maglev_size, MAGLEV_DEFAULT_SIZE);
    assert!(c.services[0].rst_unservable);
    assert_eq!(c.xdp_mode, AttachMode::Auto);
    let d = c.desired(&[]).expect("dsr needs no node address");
    assert_eq!(d[0].backends.len(), 2);
    assert_eq!(d[0].backends[0].mac, [2, 0, 0, 0, 0, 0x0b]);
    assert!(d[0].backends[1].local);
}

#[test]
fn announce_section_defaults() {
    let c = parse(&format!("announce: {{}}\n{GOOD}")).expect("valid");
    let a = c.announce.as_ref().expect("announce");
    assert_eq!(
        a.route_table().expect("table"),
        crate::route::RouteTable::default()
    );
    assert_eq!(a.drain, Duration::from_secs(1));
    let c = parse(&format!(
        "announce:\n  table: 1000\n  proto: 250\n  drain: 0s\n{GOOD}"
    ))
    .expect("valid");
    let a = c.announce.as_ref().expect("announce");
    let t = a.route_table().expect("table");
    assert_eq!((t.table, t.proto), (1000, 250));
    assert_eq!(a.drain, Duration::ZERO);
    assert!(parse(GOOD).expect("valid").announce.is_none());
}

#[test]
fn vrrp_section_defaults_and_units() {
    let c = parse(&format!("vrrp:\n  vrid: 51\n{GOOD}")).expect("valid");
    let p = c.vrrp.as_ref().expect("vrrp").plan();
    assert_eq!(p.vrid.0, 51);
    assert_eq!(p.priority.0, 100);
    assert_eq!(p.advert_interval_cs, 10);
    assert!(p.preempt);
    assert_eq!(p.preempt_delay, Duration::ZERO);
    assert!(p.unicast_peers.is_empty());
    assert_eq!(p.announce_count, 3);
    assert_eq!(p.announce_refresh, Duration::from_secs(60));
    let c = parse(&format!(
            "vrrp:\n  vrid: 7\n  advert_interval: 1.5s\n  preempt_delay: 250ms\n  unicast_peers: [10.0.0.3]\n{GOOD}"
        ))
        .expect("valid");
    let p = c.vrrp.as_ref().expect("vrrp").plan();
    assert_eq!(p.advert_interval_cs, 150);
    assert_eq!(p.preempt_delay, Duration::from_millis(250));
    assert_eq!(p.unicast_peers, ["10.0.0.3".parse::<IpAddr>().expect("ip")]);
    assert_eq!(p.auth_hmac, None, "auth_hmac is off by default");
    let c = parse(&format!(
        "vrrp:\n  vrid: 7\n  advert_interval: 2s\n  auth_hmac: {{ key_file: /etc/vipd/vrrp.key }}\n{GOOD}"
    ))
    .expect("valid");
    let a = c.vrrp.as_ref().expect("vrrp").plan().auth_hmac;
    assert_eq!(
        a,
        Some(crate::vrrp::AuthPlan {
            key_file: "/etc/vipd/vrrp.key".into(),
            time_window: Duration::from_secs(6),
        }),
        "the draft's default window: max(3 x interval, 5 s)"
    );
}

/// Every example under examples/ is a valid configuration.
#[test]
fn the_examples_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("examples folder") {
        let path = e.expect("entry").path();
        if path.extension().is_some_and(|x| x == "yaml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3, "{n} examples");
}

#[test]
fn probe_and_gate_settings_default_and_refuse_nonsense() {
    let c = parse(GOOD).expect("valid");
    let p = &c.services[0].probe;
    assert_eq!(p.kind, ProbeType::Https);
    assert_eq!(p.path, "/readyz");
    assert_eq!(p.ca, PathBuf::from("/etc/kubernetes/pki/ca.crt"));
    assert_eq!(p.server_name.as_str(), "kubernetes");
    let plan = p;
    assert_eq!(
        (plan.interval, plan.timeout, plan.rise, plan.fall),
        (Duration::from_secs(1), Duration::from_secs(1), 2, 2)
    );
    assert_eq!(plan.worst_fast_fail(), Duration::from_millis(2200));
    assert_eq!(plan.worst_detection(), Duration::from_millis(3200));
    assert_eq!(c.cert_gate.on_missing_san, GateAction::Refuse);
    assert!(!c.bootstrap);
    let with = |probe: &str| {
        GOOD.replace(
            "    backends:",
            &format!("    probe: {{ {probe} }}\n    backends:"),
        )
    };
    for (probe, want) in [
        ("interval: 50ms", "services[0].probe.interval"),
        ("timeout: 2s", "services[0].probe.timeout"),
        ("jitter: 600ms", "services[0].probe.jitter"),
        ("fall: 0", "services[0].probe.fall"),
        ("path: readyz", "services[0].probe.path"),
        ("client_cert: /x.crt", "client_key go together"),
        (
            "server_name: \"not a name\"",
            "services[0].probe.server_name",
        ),
        ("kind: https", "unknown field `kind`"),
    ] {
        let e = err(&with(probe));
        assert!(e.contains(want), "{probe}: {e}");
    }
    let e = err(&format!("cert_gate: {{ interval: 1s }}\n{GOOD}"));
    assert!(e.contains("cert_gate.interval"), "{e}");
    let e = err(&format!("cert_gate: {{ names: [10.0.0.1] }}\n{GOOD}"));
    assert!(e.contains("cert_gate.names[0]"), "{e}");
    // One backend in two services with different probes.
    let two = format!(
        "{GOOD}  - vip: 10.0.0.101\n    mode: dsr\n    probe: {{ type: tcp }}\n    backends:\n      - address: 10.0.0.12\n        local: true\n"
    );
    let e = err(&two);
    assert!(
        e.contains("services[1].backends[0]") && e.contains("same probe"),
        "{e}"
    );
}

#[test]
fn durations_parse_or_say_how_to_write_them() {
    assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration(" 0.25s "), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["100", "ms", "-1s", "25h", "nan s", "1e9s", "1d"] {
        let e = parse_duration(bad).expect_err(bad);
        assert!(e.contains("100ms or 1s"), "{e}");
    }
}

fn err(text: &str) -> String {
    parse(text).expect_err("must be refused").to_string()
}

/// Each broken variant of a good file, and what its error must name: the
/// file, the field path, and the fix.
#[test]
fn errors_name_file_field_and_fix() {
    let cases: Vec<(String, &[&str])> = vec![
        (
            GOOD.replace(
                "address: 10.0.0.12",
                "address: 10.0.0.12\n        colour: red",
            ),
            &["vipd.yaml: services[0].backends[1]", "colour"],
        ),
        (
            GOOD.replace("mac: 02:00:00:00:00:0b", "mac: 02:00:00:00:0b"),
            &["services[0].backends[0].mac", "02:42:ac:11:00:02"],
        ),
        (
            GOOD.replace("mode: dsr", "mode: dsr\n    maglev_size: 1000"),
            &["services[0].maglev_size", "prime"],
        ),
        (
            GOOD.replace("address: 10.0.0.11", "address: fd00::11"),
            &["address family"],
        ),
        (
            GOOD.replace("vip: 10.0.0.100", "vip: 10.0.0.300"),
            &["services[0].vip"],
        ),
        (
            GOOD.replace("mode: dsr", "mode: dsr\n    snat: vip"),
            &["services[0].snat", "mode nat"],
        ),
        (
            NAT.replace("snat: node", "snat: somewhere"),
            &["services[0].snat", "`node`, `vip`"],
        ),
        (
            NAT.replace("snat: node", "snat: fd00::1"),
            &["services[0].snat", "family"],
        ),
        (
            format!("nat:\n  ports: 100-200\n{NAT}"),
            &["nat.ports", "40000-59999"],
        ),
        (
            "interface: eth0\nservices: []\n".to_owned(),
            &["services: no service"],
        ),
        (
            format!("vrrp:\n  vrid: 0\n{GOOD}"),
            &["vrrp.vrid", "1..=255"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  priority: 0\n{GOOD}"),
            &["vrrp.priority", "1..=254"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  advert_interval: 10ms\n{GOOD}"),
            &["vrrp.advert_interval", "20ms..40950ms"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  advert_interval: 105ms\n{GOOD}"),
            &["vrrp.advert_interval", "steps of 10ms"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  advert_interval: fast\n{GOOD}"),
            &["vrrp.advert_interval", "100ms or 1s"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  announce:\n    count: 0\n{GOOD}"),
            &["vrrp.announce.count", "at least 1"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  unicast_peers: [fe80::3]\n{GOOD}"),
            &["vrrp.unicast_peers[0]", "address family"],
        ),
        (
            format!(
                "vrrp:\n  vrid: 1\n  auth_hmac: {{ key_file: /k, time_window: 500ms }}\n{GOOD}"
            ),
            &["vrrp.auth_hmac.time_window", "1s..300s"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  auth_hmac: {{ key_file: /k, time_window: 301s }}\n{GOOD}"),
            &["vrrp.auth_hmac.time_window", "1s..300s"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  auth_hmac: {{ key: abc }}\n{GOOD}"),
            &["vrrp.auth_hmac", "key_file"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  unicast_peers: [224.0.0.18]\n{GOOD}"),
            &["vrrp.unicast_peers[0]", "unicast"],
        ),
        (
            format!("hold_vips: true\nvrrp:\n  vrid: 1\n{GOOD}"),
            &["hold_vips", "remove hold_vips"],
        ),
        (
            format!("vrrp:\n  vrid: 1\n  prio: 5\n{GOOD}"),
            &["vrrp", "prio"],
        ),
        (
            format!("vrrp:\n  vrid: 1\nannounce: {{ table: 198 }}\n{GOOD}"),
            &["announce:", "two ways to hold the VIP", "remove `vrrp:`"],
        ),
        (
            format!("hold_vips: true\nannounce: {{}}\n{GOOD}"),
            &["hold_vips", "remove hold_vips"],
        ),
        (
            format!("announce: {{ table: 254 }}\n{GOOD}"),
            &["announce.table", "254 main", "table of its own"],
        ),
        (
            format!("announce: {{ proto: 12 }}\n{GOOD}"),
            &["announce.proto", "BIRD"],
        ),
        (
            format!("announce: {{ drain: 5m }}\n{GOOD}"),
            &["announce.drain", "use 1s"],
        ),
        (
            format!("announce: {{ tabel: 198 }}\n{GOOD}"),
            &["announce", "tabel"],
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.starts_with("vipd.yaml: "), "{e}");
        for w in want {
            assert!(e.contains(w), "error {e:?} lacks {w:?}");
        }
    }
}

/// Issue 18: the parser's own message repeated the field path
/// (`services[0].port: services[0].port: invalid value ...`); say it
/// once, and say the fix.
#[test]
fn parse_errors_say_the_path_once_and_the_fix() {
    let e = err(&GOOD.replace("mode: dsr", "mode: dsr\n    port: 70000"));
    assert_eq!(e.matches("services[0].port").count(), 1, "{e}");
    assert!(e.starts_with("vipd.yaml: services[0].port: "), "{e}");
    assert!(e.contains("70000") && e.contains("1..65535"), "{e}");

    let e = err("interface: eth0\nservices:\n  - vip: 10.0.0.100\n    mode: dsr\n");
    assert_eq!(e.matches("services[0]").count(), 1, "{e}");
    assert!(e.contains("missing field `backends`"), "{e}");
    assert!(e.contains("add `backends:`"), "{e}");

    let e = err(&format!("vrrp:\n  vrid: 300\n{GOOD}"));
    assert_eq!(e.matches("vrrp.vrid").count(), 1, "{e}");
    assert!(e.contains("use 1..255"), "{e}");
}

/// RFC 9568 5.1.2.1: an IPv6 advert's source is the sender's link-local
/// address, and unicast peers are matched on the source: a global
/// address would never match (every advert of that peer discarded as
/// `not_peer`). Refused with the reason.
#[test]
fn ipv6_unicast_peer_must_be_link_local() {
    let v6 = GOOD.replace("vip: 10.0.0.100", "vip: fd00::100").replace(
        "address: 10.0.0.11\n        mac: 02:00:00:00:00:0b\n      - address: 10.0.0.12",
        "address: fd00::11\n        mac: 02:00:00:00:00:0b\n      - address: fd00::12",
    );
    parse(&v6).expect("the IPv6 base file is valid");
    parse(&format!(
        "vrrp:\n  vrid: 1\n  unicast_peers: [\"fe80::3\"]\n{v6}"
    ))
    .expect("a link-local peer is fine");
    let e = err(&format!(
        "vrrp:\n  vrid: 1\n  unicast_peers: [\"fd00::3\"]\n{v6}"
    ));
    assert!(e.contains("vrrp.unicast_peers[0]"), "{e}");
    assert!(e.contains("link-local") && e.contains("5.1.2.1"), "{e}");
}

/// Mode dsr needs no `mac:` (the neighbour table gives it) and no
/// `local:` (the node's own address says it); a written MAC still parses
/// and must be one.
#[test]
fn dsr_needs_neither_mac_nor_local() {
    let c = parse(
        "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
",
    )
    .expect("valid without mac and local");
    let d = c.desired(&[]).expect("desired");
    assert_eq!(
        d[0].backends[0].mac, [0; 6],
        "filled in from the neighbour table"
    );
    assert!(!c.services[0].backends[0].local);
}

const ENCAP: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: dsr
    encap: ipip
    backends:
      - address: 10.1.0.11
      - address: 10.2.0.12
        encap: none
        mac: 02:00:00:00:00:0c
      - address: 10.0.0.13
        local: true
";

/// `encap` on the service applies to the backends that set none; such a
/// backend needs no MAC; the outer source is the interface's address that is
/// no VIP, and the path MTU defaults to 1500.
#[test]
fn encap_backends_need_no_mac_and_get_this_nodes_source() {
    let c = parse(ENCAP).expect("valid");
    let node: Vec<IpAddr> = ["10.0.0.100", "fe80::1", "10.0.0.2"]
        .iter()
        .map(|a| a.parse().expect("ip"))
        .collect();
    let d = c.desired(&node).expect("desired");
    let e = d[0].backends[0].encap.expect("backend 0 encapsulated");
    assert_eq!(e.saddr, addr_bytes("10.0.0.2".parse().expect("ip")).1);
    assert_eq!(e.mtu, 1500);
    assert_eq!(d[0].backends[1].encap, None, "encap: none opts out");
    assert_eq!(d[0].backends[2].encap, None, "local");
    let c =
        parse(&ENCAP.replace("encap: ipip", "encap: ipip\n    encap_mtu: 9000")).expect("valid");
    assert_eq!(
        c.desired(&node).expect("desired")[0].backends[0]
            .encap
            .map(|e| e.mtu),
        Some(9000)
    );
    let only_vip: Vec<IpAddr> = vec!["10.0.0.100".parse().expect("ip")];
    let e = c
        .desired(&only_vip)
        .expect_err("no source address")
        .to_string();
    assert!(
        e.contains("services[0].backends[0].encap") && e.contains("no IPv4 address"),
        "{e}"
    );
}

#[test]
fn encap_errors_name_the_field_and_the_fix() {
    let cases: Vec<(String, &[&str])> = vec![
        (
            ENCAP.replace("mode: dsr", "mode: nat"),
            &["services[0].backends[0].encap", "only mode dsr"],
        ),
        (
            ENCAP.replace(
                "address: 10.1.0.11",
                "address: 10.1.0.11\n        encap: ip6ip6",
            ),
            &["services[0].backends[0].encap", "encap: ipip"],
        ),
        (
            ENCAP
                .replace("vip: 10.0.0.100", "vip: fd00::100")
                .replace("10.1.0.11", "fd01::11")
                .replace("10.2.0.12", "fd02::12")
                .replace("10.0.0.13", "fd00::13"),
            &["services[0].backends[0].encap", "encap: ip6ip6"],
        ),
        (
            ENCAP.replace(
                "        local: true\n",
                "        local: true\n        encap: ipip\n",
            ),
            &["services[0].backends[2].encap", "remove its encap"],
        ),
        (
            ENCAP.replace("encap: ipip", "encap: ipip\n    encap_mtu: 500"),
            &["services[0].encap_mtu", "576", "9000"],
        ),
        (
            ENCAP.replace("encap: ipip", "encap: gre"),
            &["services[0].encap", "ipip"],
        ),
        (
            ENCAP.replace("        encap: none\n        mac: 02:00:00:00:00:0c\n", ""),
            &[],
        ),
    ];
    for (text, want) in cases {
        if want.is_empty() {
            parse(&text).expect("a service-wide encap covers a backend without a MAC");
            continue;
        }
        let e = err(&text);
        for w in want {
            assert!(e.contains(w), "error {e:?} should contain {w:?}");
        }
    }
}

/// A value written as text is parsed once, at its field: the error names
/// the path once (not serde_yaml_ng's copy of the section again) and says
/// how to write it; the value arrives typed.
#[test]
fn text_values_are_typed_at_load_and_refused_at_their_field() {
    let c = parse(&format!(
        "nat: {{ ports: 41000-42000 }}\ncert_gate: {{ interval: 15m }}\n{}",
        NAT.replace("snat: node", "snat: 10.0.0.9")
    ))
    .expect("valid");
    assert_eq!(
        c.nat.ports,
        PortRange {
            lo: 41000,
            hi: 42000
        }
    );
    assert_eq!(c.cert_gate.interval, Duration::from_secs(900));
    assert_eq!(
        c.services[0].snat(),
        Snat::Addr("10.0.0.9".parse().expect("ip"))
    );
    assert_eq!(
        parse(GOOD).expect("valid").services[0].backends[0].mac,
        Some([2, 0, 0, 0, 0, 0x0b])
    );
    for (text, field, fix) in [
        (
            format!("nat: {{ ports: 10-20 }}\n{GOOD}"),
            "nat.ports",
            "write it as 40000-59999",
        ),
        (
            GOOD.replace("02:00:00:00:00:0b", "02:00:00:00:00:zz"),
            "services[0].backends[0].mac",
            "write it as 02:42:ac:11:00:02",
        ),
        (
            GOOD.replace(
                "    backends:",
                "    probe: { jitter: soon }\n    backends:",
            ),
            "services[0].probe.jitter",
            "write it like 100ms or 1s",
        ),
        (
            NAT.replace("snat: node", "snat: somewhere"),
            "services[0].snat",
            "`node`, `vip` or an IP address",
        ),
    ] {
        let e = err(&text);
        let (path, message) = e.split_once(": ").expect("file: ...");
        assert_eq!(path, "vipd.yaml", "{e}");
        assert!(message.starts_with(&format!("{field}: ")), "{e}");
        assert_eq!(e.matches(field).count(), 1, "the path said once: {e}");
        assert!(e.contains(fix), "{e}");
    }
}

/// Active-active mode nat (`announce:` with `state_sync:` and `snat: vip`):
/// every LB translates to the VIP at once, so each hands out a slice of
/// its own; the slices tile `nat.ports` with no overlap, whatever node
/// computes them, and a split that leaves too few ports per LB is refused.
/// Every LB computes every other LB's slice exactly as that LB computes
/// its own: the map a reply is handed by must match the owner's allocator.
#[test]
fn each_lb_knows_the_others_slices_as_they_know_their_own() {
    let all: Vec<IpAddr> = ["10.0.2.2", "10.0.1.2", "10.0.3.2", "10.0.0.9"]
        .iter()
        .map(|a| a.parse().expect("test address"))
        .collect();
    let nat = NatSettings::default();
    let own = |me: IpAddr| {
        let others: Vec<IpAddr> = all.iter().copied().filter(|&p| p != me).collect();
        nat.slice(nat_rank(me, &others), all.len())
            .expect("a slice")
    };
    for &me in &all {
        let peers: Vec<IpAddr> = all.iter().copied().filter(|&p| p != me).collect();
        let owners = nat_owners(&nat, me, &peers);
        assert_eq!(owners.len(), 3, "one entry per peer");
        for (peer, slice) in owners {
            assert_ne!(peer, me);
            assert_eq!(slice, own(peer), "{me}'s view of {peer}'s slice");
            let mine = own(me);
            assert!(
                slice.hi < mine.lo || slice.lo > mine.hi,
                "disjoint from ours"
            );
        }
    }
}

#[test]
fn announcing_lbs_split_the_nat_ports_and_need_sync_for_snat_vip() {
    let peers: Vec<IpAddr> = ["10.0.2.2", "10.0.1.2", "10.0.3.2"]
        .iter()
        .map(|a| a.parse().expect("ip"))
        .collect();
    // Each node sees the others (its own address left out, as for_node
    // does): ranks 0, 1, 2 by address, each once.
    let mut ranks: Vec<usize> = peers
        .iter()
        .map(|&me| {
            let others: Vec<IpAddr> = peers.iter().copied().filter(|&p| p != me).collect();
            nat_rank(me, &others)
        })
        .collect();
    assert_eq!(ranks, [1, 0, 2]);
    ranks.sort_unstable();
    assert_eq!(ranks, [0, 1, 2]);

    let nat = NatSettings::default(); // 40000-59999
    let slices: Vec<PortRange> = (0..3).map(|r| nat.slice(r, 3).expect("a slice")).collect();
    assert_eq!(
        slices.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["40000-46665", "46666-53331", "53332-59999"],
        "equal slices, the last one takes the remainder"
    );
    assert!(nat.slice(3, 3).is_none(), "no rank beyond the nodes");
    let g = nat.globals(Some(slices[1]));
    assert_eq!(
        (g.nat_port_lo, g.nat_port_hi, g.nat_alloc_lo, g.nat_alloc_hi),
        (40000, 59999, 46666, 53331),
        "replies are taken on the whole range, new flows get the slice"
    );
    let whole = nat.globals(None);
    assert_eq!((whole.nat_alloc_lo, whole.nat_alloc_hi), (40000, 59999));

    let active = format!(
        "announce: {{ table: 198 }}\nstate_sync:\n  peers: [10.0.1.2, 10.0.2.2, 10.0.3.2]\n{}",
        NAT.replace("snat: node", "snat: vip")
    );
    parse(&active).expect("active-active nat is valid");
    for (text, want) in [
        (
            active.replace("state_sync:\n  peers: [10.0.1.2, 10.0.2.2, 10.0.3.2]\n", ""),
            &["services[0].snat", "add state_sync listing every LB"][..],
        ),
        (
            format!("nat:\n  ports: 40000-40999\n{active}"),
            &["nat.ports", "4 LBs", "at least 1024 ports"][..],
        ),
    ] {
        let e = parse(&text).expect_err(&text).to_string();
        for w in want {
            assert!(e.contains(w), "{e:?} lacks {w:?}");
        }
    }
    // Without announce one VRRP holder allocates at a time: no split, so
    // the same narrow range stays valid.
    parse(&format!(
        "nat:\n  ports: 40000-40999\nstate_sync:\n  peers: [10.0.1.2, 10.0.2.2, 10.0.3.2]\n{}",
        NAT.replace("snat: node", "snat: vip")
    ))
    .expect("valid under VRRP");
}
