//! Resolution of per-node values from one file: pure, no sockets.

use std::path::Path;

use super::*;

/// Three stacked control-plane nodes, one file: no interface, no priority,
/// metrics on the node's address.
const ONE: &str = "
metrics_listen: node:9590
vrrp: { vrid: 51 }
services:
  - vip: 10.0.0.100
    mode: nat
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 10.0.0.13
";

fn cfg(text: &str) -> Config {
    Config::parse(Path::new("vipd.yaml"), text).expect("valid config")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A node with `lo`, `eth0` holding `addr/24`, and `eth1` on another subnet.
fn node(name: &str, addr: &str) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        interfaces: vec![
            Interface {
                name: "lo".into(),
                addrs: vec![(ip("127.0.0.1"), 8), (ip("::1"), 128)],
            },
            Interface {
                name: "eth0".into(),
                addrs: vec![(ip(addr), 24), (ip("fe80::1"), 64)],
            },
            Interface {
                name: "eth1".into(),
                addrs: vec![(ip("192.168.5.2"), 24)],
            },
        ],
        routes: vec![],
    }
}

#[test]
fn one_file_gives_each_node_its_interface_priority_and_metrics_address() {
    let c = cfg(ONE);
    let got: Vec<(String, Option<u8>, Option<SocketAddr>)> = [
        ("cp1", "10.0.0.11"),
        ("cp2", "10.0.0.12"),
        ("cp3", "10.0.0.13"),
    ]
    .iter()
    .map(|(n, a)| {
        let r = c.resolve(&node(n, a)).expect("resolves");
        assert_eq!(r.interface_from, "backends' subnet");
        assert_eq!(r.priority_from, "backend order");
        (r.interface, r.priority, r.metrics_listen)
    })
    .collect();
    assert_eq!(
        got,
        vec![
            (
                "eth0".into(),
                Some(200),
                Some("10.0.0.11:9590".parse().expect("sa"))
            ),
            (
                "eth0".into(),
                Some(190),
                Some("10.0.0.12:9590".parse().expect("sa"))
            ),
            (
                "eth0".into(),
                Some(180),
                Some("10.0.0.13:9590".parse().expect("sa"))
            ),
        ],
        "the first backend's node is the preferred master, 10 apart"
    );
    // What vipd runs: the values written in, the rest untouched.
    let r = c.resolve(&node("cp2", "10.0.0.12")).expect("resolves");
    let run = c.clone().for_node(&r);
    assert_eq!(run.interface, "eth0");
    assert_eq!(run.vrrp.as_ref().and_then(|v| v.priority), Some(190));
    assert_eq!(
        run.metrics_listen,
        Some(MetricsListen::Addr("10.0.0.12:9590".parse().expect("sa")))
    );
    assert_eq!(run.services, c.services);
}

#[test]
fn a_joining_node_appended_to_the_backends_needs_no_edit_elsewhere() {
    let four = ONE.replace(
        "      - address: 10.0.0.13\n",
        "      - address: 10.0.0.13\n      - address: 10.0.0.14\n",
    );
    let c = cfg(&four);
    let p = |n: &str, a: &str| c.resolve(&node(n, a)).expect("resolves").priority;
    assert_eq!(p("cp4", "10.0.0.14"), Some(170));
    assert_eq!(p("cp1", "10.0.0.11"), Some(200), "the others keep theirs");
}

#[test]
fn precedence_nodes_entry_then_top_level_then_derived() {
    let c = cfg(&format!(
        "{ONE}nodes:\n  cp2: {{ priority: 250, interface: eth1 }}\n  lb9: {{ priority: 20 }}\n"
    ));
    let r = c.resolve(&node("cp2", "10.0.0.12")).expect("resolves");
    assert_eq!(
        (
            r.entry.as_deref(),
            r.priority,
            r.priority_from,
            r.interface.as_str(),
            r.interface_from
        ),
        (Some("cp2"), Some(250), "nodes", "eth1", "nodes")
    );
    // A node that is no backend (a dedicated LB) gets its entry.
    let r = c.resolve(&node("lb9", "10.0.0.50")).expect("resolves");
    assert_eq!((r.priority, r.backend_index), (Some(20), None));
    // cp1 is not listed: derived.
    let r = c.resolve(&node("cp1", "10.0.0.11")).expect("resolves");
    assert_eq!((r.priority, r.entry), (Some(200), None));
    // An explicit top-level priority beats the derived one, not the entry.
    let c = cfg(&format!(
        "{}nodes:\n  cp2: {{ priority: 250 }}\n",
        ONE.replace("vrid: 51", "vrid: 51, priority: 120")
            .replace("interface: eth0\n", "")
    ));
    let p = |n: &str, a: &str| {
        let r = c.resolve(&node(n, a)).expect("resolves");
        (r.priority, r.priority_from)
    };
    assert_eq!(p("cp1", "10.0.0.11"), (Some(120), "vrrp.priority"));
    assert_eq!(p("cp2", "10.0.0.12"), (Some(250), "nodes"));
    // A top-level interface beats the derived one.
    let c = cfg(&format!("interface: eth1\n{ONE}"));
    let r = c.resolve(&node("cp1", "10.0.0.11")).expect("resolves");
    assert_eq!(
        (r.interface.as_str(), r.interface_from),
        ("eth1", "interface")
    );
}

#[test]
fn an_fqdn_hostname_matches_its_short_entry() {
    let c = cfg(&format!("{ONE}nodes:\n  lb1: {{ priority: 99 }}\n"));
    let r = c
        .resolve(&node("lb1.example.com", "10.0.0.50"))
        .expect("short name");
    assert_eq!((r.entry.as_deref(), r.priority), (Some("lb1"), Some(99)));
}

#[test]
fn a_node_neither_listed_nor_a_backend_is_told_the_fix() {
    // Priority to derive, and nothing to derive it from.
    let e = cfg(ONE)
        .resolve(&node("lb7", "10.0.0.50"))
        .expect_err("unknown node")
        .to_string();
    for want in [
        "\"lb7\"",
        "10.0.0.50",
        "nodes: { lb7: { priority: N } }",
        "NODE_NAME",
    ] {
        assert!(e.contains(want), "{want:?} in {e}");
    }
    assert!(!e.contains("127.0.0.1"), "loopback is no node address: {e}");
    // A file that lists nodes: a node outside the list is refused even
    // without VRRP (most likely a wrong NODE_NAME).
    let listed = cfg(&format!(
        "{}nodes:\n  cp1: {{ interface: eth0 }}\n",
        ONE.replace("vrrp: { vrid: 51 }\n", "hold_vips: true\n")
    ));
    let e = listed
        .resolve(&node("lb7", "10.0.0.50"))
        .expect_err("unknown");
    assert!(matches!(e, NodeError::Unknown { .. }), "{e}");
    // No `nodes:` and no priority to derive: a single-node file, fine.
    let single = cfg(&ONE.replace("vrrp: { vrid: 51 }\n", "hold_vips: true\n"));
    let r = single
        .resolve(&node("lb7", "10.0.0.50"))
        .expect("single node");
    assert_eq!((r.priority, r.interface.as_str()), (None, "eth0"));
}

#[test]
fn interface_ambiguous_or_missing_names_the_fix() {
    let mut two = node("cp1", "10.0.0.11");
    two.interfaces.push(Interface {
        name: "eth2".into(),
        addrs: vec![(ip("10.0.0.200"), 16)],
    });
    let e = cfg(ONE)
        .resolve(&two)
        .expect_err("two interfaces")
        .to_string();
    for want in ["eth0, eth2", "set `interface:`", "nodes.cp1.interface"] {
        assert!(e.contains(want), "{want:?} in {e}");
    }
    // Off the backends' subnet: the route to them decides.
    let mut routed = node("cp1", "172.16.0.5");
    routed.interfaces[2].addrs.push((ip("10.0.0.11"), 32));
    routed.interfaces[2].name = "eth1".into();
    let mut far = node("lb1", "172.16.0.5");
    far.routes = vec![
        (ip("10.0.0.11"), "eth1".into()),
        (ip("10.0.0.12"), "eth1".into()),
        (ip("10.0.0.13"), "eth1".into()),
    ];
    let c = cfg(&format!("{ONE}nodes:\n  lb1: {{ priority: 10 }}\n"));
    let r = c.resolve(&far).expect("by route");
    assert_eq!(
        (r.interface.as_str(), r.interface_from),
        ("eth1", "route to the backends")
    );
    assert_eq!(
        r.metrics_listen,
        Some("192.168.5.2:9590".parse().expect("sa")),
        "the routed interface's address"
    );
    // A /32 holding the node's own backend address counts as the subnet.
    let r = cfg(ONE).resolve(&routed).expect("host address");
    assert_eq!((r.interface.as_str(), r.priority), ("eth1", Some(200)));
    // Routes that disagree, or none at all.
    far.routes[1].1 = "eth0".into();
    let e = c.resolve(&far).expect_err("two routes");
    assert!(matches!(e, NodeError::AmbiguousInterface { .. }), "{e}");
    far.routes.clear();
    let e = c.resolve(&far).expect_err("no route").to_string();
    assert!(
        e.contains("no route") && e.contains("set `interface:`"),
        "{e}"
    );
}

#[test]
fn metrics_node_needs_an_address_of_the_backends_family() {
    let mut n = node("cp1", "10.0.0.11");
    n.interfaces[1].addrs = vec![(ip("fe80::1"), 64)];
    let c = cfg(&format!(
        "interface: eth0\n{}",
        ONE.replace("vrrp: { vrid: 51 }\n", "")
    ));
    let e = c.resolve(&n).expect_err("no IPv4").to_string();
    assert!(
        e.contains("node:9590") && e.contains("127.0.0.1:9590"),
        "{e}"
    );
}

#[test]
fn metrics_listen_forms_parse_and_bad_ones_say_how() {
    assert_eq!(
        MetricsListen::parse("node:9590"),
        Ok(MetricsListen::Node(9590))
    );
    assert_eq!(
        MetricsListen::parse("[::]:9590"),
        Ok(MetricsListen::Addr("[::]:9590".parse().expect("sa")))
    );
    assert_eq!(MetricsListen::Node(9590).to_string(), "node:9590");
    for bad in ["node:0", "node:x", "node", "eth0:9590"] {
        let e = MetricsListen::parse(bad).expect_err(bad);
        assert!(e.contains("node:9590"), "{bad}: {e}");
    }
    let e = Config::parse(Path::new("v.yaml"), &ONE.replace("node:9590", "node:99999"))
        .expect_err("bad port")
        .to_string();
    assert!(
        e.contains("metrics_listen") && e.contains("1..65535"),
        "{e}"
    );
    let c = cfg(&ONE.replace("metrics_listen: node:9590\n", "metrics_listen: null\n"));
    assert_eq!(c.metrics_listen, None);
}

#[test]
fn nodes_entries_are_validated_at_load() {
    let bad = |extra: &str, want: &[&str]| {
        let text = format!(
            "{}{extra}",
            ONE.replace("vrrp: { vrid: 51 }\n", "hold_vips: true\n")
        );
        let e = Config::parse(Path::new("v.yaml"), &text)
            .expect_err(extra)
            .to_string();
        for w in want {
            assert!(e.contains(w), "{w:?} in {e}");
        }
    };
    bad(
        "nodes:\n  cp1: { priority: 150 }\n",
        &["nodes.cp1.priority", "add vrrp"],
    );
    bad(
        "nodes:\n  cp1: { interface: \"\" }\n",
        &["nodes.cp1.interface", "empty"],
    );
    bad("nodes:\n  cp1: { weight: 3 }\n", &["nodes.cp1", "weight"]);
    let e = Config::parse(
        Path::new("v.yaml"),
        &format!("{ONE}nodes:\n  cp1: {{ priority: 0 }}\n"),
    )
    .expect_err("0")
    .to_string();
    assert!(
        e.contains("nodes.cp1.priority") && e.contains("1..=254"),
        "{e}"
    );
}

#[test]
fn derived_priorities_stay_valid() {
    assert_eq!(derived_priority(0), Some(200));
    assert_eq!(derived_priority(19), Some(10));
    assert_eq!(derived_priority(20), None, "0 would mean leaving");
    assert_eq!(derived_priority(300), None);
}

#[test]
fn prefixes_match_like_the_kernel() {
    assert!(in_prefix(ip("10.0.0.13"), ip("10.0.0.11"), 24));
    assert!(!in_prefix(ip("10.0.1.13"), ip("10.0.0.11"), 24));
    assert!(in_prefix(ip("10.9.9.9"), ip("10.0.0.11"), 0));
    assert!(in_prefix(ip("10.0.0.11"), ip("10.0.0.11"), 32));
    assert!(in_prefix(ip("fd00::13"), ip("fd00::11"), 64));
    assert!(
        !in_prefix(ip("fd00::13"), ip("10.0.0.11"), 0),
        "families differ"
    );
}

#[test]
fn offline_lists_what_only_the_node_can_check() {
    let c = cfg(&format!(
        "{}nodes:\n  lb9: {{ priority: 20 }}\n",
        ONE.replace(
            "mode: nat",
            "mode: nat\n    probe: { client_cert: /etc/c.crt, client_key: /etc/c.key }"
        )
    ));
    let l = c.offline_unchecked().join("\n");
    for want in [
        "services[0].probe.ca (the cluster CA): /etc/kubernetes/pki/ca.crt",
        "client_cert: /etc/c.crt",
        "client_key: /etc/c.key",
        "interface: derived on each node",
        "one of nodes: lb9",
        "10.0.0.11 200, 10.0.0.12 190, 10.0.0.13 180",
        "metrics_listen: node:9590",
    ] {
        assert!(l.contains(want), "{want:?} in\n{l}");
    }
}

#[test]
fn state_sync_peers_may_list_every_lb_and_each_skips_itself() {
    let text = "
vrrp: { vrid: 51 }
nodes:
  lb1: { priority: 150 }
  lb2: { priority: 100 }
state_sync: { peers: [10.0.0.2, 10.0.0.3] }
services:
  - vip: 10.0.0.100
    mode: nat
    snat: vip
    backends:
      - address: 10.0.0.11
";
    let c = cfg(text);
    let r = c.resolve(&node("lb1", "10.0.0.2")).expect("lb1");
    assert_eq!(r.sync_peers, Some(vec![ip("10.0.0.3")]));
    let run = c.clone().for_node(&r);
    assert_eq!(
        run.state_sync.as_ref().map(|s| s.peers.clone()),
        Some(vec![ip("10.0.0.3")])
    );
    let r = c.resolve(&node("lb2", "10.0.0.3")).expect("lb2");
    assert_eq!(r.sync_peers, Some(vec![ip("10.0.0.2")]));
    let alone = cfg(&text.replace("peers: [10.0.0.2, 10.0.0.3]", "peers: [10.0.0.2]"));
    let e = alone
        .resolve(&node("lb1", "10.0.0.2"))
        .expect_err("only itself")
        .to_string();
    assert!(
        e.contains("state_sync.peers") && e.contains("other LB nodes"),
        "{e}"
    );
}

/// The same for VRRP: one file lists every node's address under
/// `unicast_peers`, and each node sends to the others only (an advert to
/// itself would be its own, discarded, and a list of only itself would
/// silently turn into multicast).
#[test]
fn unicast_peers_may_list_every_node_and_each_skips_itself() {
    let text = "
vrrp: { vrid: 51, unicast_peers: [10.0.0.11, 10.0.0.12, 10.0.0.13] }
services:
  - vip: 10.0.0.100
    mode: nat
    snat: vip
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 10.0.0.13
";
    let c = cfg(text);
    for (n, me, want) in [
        ("cp1", "10.0.0.11", ["10.0.0.12", "10.0.0.13"]),
        ("cp2", "10.0.0.12", ["10.0.0.11", "10.0.0.13"]),
        ("cp3", "10.0.0.13", ["10.0.0.11", "10.0.0.12"]),
    ] {
        let r = c.resolve(&node(n, me)).expect(n);
        let want: Vec<IpAddr> = want.iter().map(|a| ip(a)).collect();
        assert_eq!(r.unicast_peers.as_ref(), Some(&want), "{n}");
        let run = c.clone().for_node(&r);
        assert_eq!(
            run.vrrp.as_ref().map(|v| v.unicast_peers.clone()),
            Some(want),
            "{n}"
        );
    }
    let multicast = cfg(&text.replace(", unicast_peers: [10.0.0.11, 10.0.0.12, 10.0.0.13]", ""));
    let r = multicast
        .resolve(&node("cp1", "10.0.0.11"))
        .expect("multicast");
    assert_eq!(r.unicast_peers, None);
    let alone = cfg(&text.replace("[10.0.0.11, 10.0.0.12, 10.0.0.13]", "[10.0.0.11]"));
    let e = alone
        .resolve(&node("cp1", "10.0.0.11"))
        .expect_err("only itself")
        .to_string();
    assert!(
        e.contains("vrrp.unicast_peers") && e.contains("other nodes") && e.contains("multicast"),
        "{e}"
    );
}
