//! The comparison over fixed snapshots: agreement, a disagreement on the
//! serving set, split brain, a node that did not answer.

use super::*;
use crate::status::{BackendStatus, FlowStatus, VrrpStatus};

const AT: u64 = 1_800_000_000_000;
const BE: [&str; 3] = ["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"];

fn backend(addr: &str, state: &str, serving: bool) -> BackendStatus {
    BackendStatus {
        address: addr.parse().expect("addr"),
        local: false,
        encap: None,
        state: state.into(),
        serving,
        cert: "ok".into(),
        last_probe: Some(if state == "up" { "up" } else { "timeout" }.into()),
        probe_latency_ms: Some(1.0),
        flows: Some(0),
        new_flows: 0,
        packets: 0,
        bytes: 0,
        rsts: 0,
        last_change: None,
        version: None,
    }
}

/// A node's snapshot: its VRRP state for vrid 51 and, per backend of
/// [`BE`], whether it serves.
fn node(name: &str, ip: &str, vrrp_state: &str, serving: [bool; 3]) -> NodeView {
    let source: IpAddr = ip.parse().expect("ip");
    let st = Status {
        version: "0.1.0".into(),
        node: name.into(),
        interface: "eth0".into(),
        xdp_mode: "native".into(),
        xdp_attached: true,
        vip_holding: "vrrp".into(),
        started_unix_ms: AT - 60_000,
        at_unix_ms: AT,
        vrrp: vec![VrrpStatus {
            family: "ipv4".into(),
            vrid: 51,
            state: vrrp_state.into(),
            priority: 100,
            configured_priority: 100,
            held: None,
            source,
            vips: vec!["10.0.0.100".parse().expect("ip")],
            master: None,
            peers: vec![],
            last_change: None,
            last_failover: None,
        }],
        announce: vec![],
        services: vec![ServiceStatus {
            vip: "10.0.0.100".parse().expect("ip"),
            port: 6443,
            protocol: "tcp".into(),
            mode: "dsr".into(),
            vip_here: vrrp_state == "master",
            fail_open: false,
            backends: BE
                .iter()
                .zip(serving)
                .map(|(a, s)| backend(a, if s { "up" } else { "down" }, s))
                .collect(),
        }],
        flows: FlowStatus::default(),
        sync: None,
        version_skew: None,
        etcd_snapshot: None,
        discovery: None,
    };
    NodeView {
        address: SocketAddr::new(source, 9590),
        answer: Answer::Status(Box::new(st)),
    }
}

fn unreachable(addr: &str) -> NodeView {
    NodeView {
        address: addr.parse().expect("addr"),
        answer: Answer::Unreachable("timed out".into()),
    }
}

#[test]
fn a_group_that_agrees_has_no_warning_and_one_master() {
    let views = [
        node("cp1", "10.0.0.11", "master", [true, true, false]),
        node("cp2", "10.0.0.12", "backup", [true, true, false]),
        node("cp3", "10.0.0.13", "backup", [true, true, false]),
    ];
    let c = compare(&views);
    assert_eq!(c.labels, ["cp1", "cp2", "cp3"]);
    assert!(c.disagreements.is_empty(), "{c:?}");
    assert!(c.unreachable.is_empty());
    assert_eq!(c.elections.len(), 1);
    assert_eq!(c.elections[0].masters, ["cp1"]);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let t = render(&views, &c);
    assert!(t.contains("3 nodes asked, 3 answered"), "{t}");
    assert!(
        t.contains("ok: all 3 nodes answered and agree") && t.contains("one master: cp1"),
        "{t}"
    );
    assert!(!t.contains("WARNING"), "{t}");
    // Side by side: one column per node, one row per backend.
    let header = t
        .lines()
        .find(|l| l.contains("BACKEND"))
        .expect("backend header");
    assert!(header.contains("cp1") && header.contains("cp3"), "{header}");
    let row = t
        .lines()
        .find(|l| l.trim_start().starts_with(BE[2]))
        .expect("be3 row");
    assert_eq!(row.matches("down (timeout)").count(), 3, "{row}");
}

#[test]
fn different_serving_sets_are_named_with_nodes_and_backends() {
    let views = [
        node("cp1", "10.0.0.11", "master", [true, true, true]),
        node("cp2", "10.0.0.12", "backup", [true, true, true]),
        node("cp3", "10.0.0.13", "backup", [true, false, true]),
    ];
    let c = compare(&views);
    assert_eq!(
        c.disagreements,
        [Disagreement {
            service: "10.0.0.100:6443 tcp".into(),
            backends: vec![BackendSplit {
                backend: BE[1].parse().expect("addr"),
                serving_on: vec!["cp1".into(), "cp2".into()],
                not_serving_on: vec!["cp3".into()],
                unlisted_on: vec![],
            }],
            missing_on: vec![],
        }]
    );
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    for want in [
        "DIFFERENT MAGLEV TABLES",
        "10.0.0.12:6443 serves on cp1, cp2 but NOT on cp3",
        "connections do not survive",
    ] {
        assert!(w[0].contains(want), "{want:?} missing in {}", w[0]);
    }
    let t = render(&views, &c);
    assert!(t.contains("WARNING: the nodes disagree"), "{t}");
    assert!(!t.contains("ok: "), "{t}");

    // A backend no one serves is agreement, not a disagreement; a node
    // without the service at all is one.
    let mut odd = node("cp3", "10.0.0.13", "backup", [true, true, true]);
    if let Answer::Status(s) = &mut odd.answer {
        s.services.clear();
    }
    let c = compare(&[
        node("cp1", "10.0.0.11", "master", [true, true, false]),
        node("cp2", "10.0.0.12", "backup", [true, true, false]),
        odd,
    ]);
    assert_eq!(c.disagreements.len(), 1, "{c:?}");
    assert!(c.disagreements[0].backends.is_empty());
    assert_eq!(c.disagreements[0].missing_on, ["cp3"]);
    assert!(
        c.warnings()[0].contains("cp3 has no such service"),
        "{:?}",
        c.warnings()
    );
}

/// A backend one node does not list at all (its discovery cannot read the
/// slices and kept an older set) is attributed to the lists, with what
/// that node's discovery says, not to a probe path.
#[test]
fn a_backend_a_node_does_not_list_is_put_down_to_its_list() {
    let mut stale = node("cp3", "10.0.0.13", "backup", [true, true, true]);
    if let Answer::Status(s) = &mut stale.answer {
        s.services[0].backends.remove(1);
        s.discovery = Some(crate::status::DiscoveryStatus {
            source: "cache".into(),
            last_sync_unix_ms: Some(AT - 90_000),
            last_error: Some("connect: timed out".into()),
            cache: "/var/lib/vipd/backends.json".into(),
            candidates: vec![],
        });
    }
    let views = [
        node("cp1", "10.0.0.11", "master", [true, true, true]),
        node("cp2", "10.0.0.12", "backup", [true, true, true]),
        stale,
    ];
    let c = compare(&views);
    let split = &c.disagreements[0].backends[0];
    assert_eq!(split.not_serving_on, ["cp3"]);
    assert_eq!(
        split.unlisted_on,
        [(
            "cp3".to_owned(),
            Some(
                "discovery source cache, failing: connect: timed out, last read 90 s ago"
                    .to_owned()
            )
        )]
    );
    let w = &c.warnings()[0];
    for want in [
        "cp3 does not list it (discovery source cache, failing: connect: timed out",
        "the nodes' discovered sets differ",
        "compare its backend list",
    ] {
        assert!(w.contains(want), "{want:?} missing in {w}");
    }
    assert!(!w.contains("probe path"), "nothing here is a probe's: {w}");

    // Without discovery: the file.
    let mut other_file = node("cp3", "10.0.0.13", "backup", [true, true, true]);
    if let Answer::Status(s) = &mut other_file.answer {
        s.services[0].backends.remove(1);
    }
    let c = compare(&[
        node("cp1", "10.0.0.11", "master", [true, true, true]),
        other_file,
    ]);
    assert!(
        c.warnings()[0].contains(
            "cp3 does not list it: its backends differ from the others' (a different file?)"
        ),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn failing_open_puts_every_backend_with_a_neighbour_in_the_table() {
    // cp1 fails open (all probes down): its table holds every backend, the
    // same as cp2's that sees all three up. cp3 fails open too but one
    // backend has no neighbour there: that one is missing from its table.
    let mut cp1 = node("cp1", "10.0.0.11", "master", [false, false, false]);
    let mut cp3 = node("cp3", "10.0.0.13", "backup", [false, false, false]);
    if let (Answer::Status(a), Answer::Status(b)) = (&mut cp1.answer, &mut cp3.answer) {
        a.services[0].fail_open = true;
        b.services[0].fail_open = true;
        b.services[0].backends[2].state = NO_NEIGHBOUR.into();
    }
    let c = compare(&[cp1, node("cp2", "10.0.0.12", "backup", [true; 3]), cp3]);
    assert_eq!(c.disagreements.len(), 1, "{c:?}");
    assert_eq!(
        c.disagreements[0].backends[0].backend,
        BE[2].parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(c.disagreements[0].backends[0].not_serving_on, ["cp3"]);
}

#[test]
fn two_masters_are_a_split_brain_and_none_is_said_too() {
    let views = [
        node("cp1", "10.0.0.11", "master", [true; 3]),
        node("cp2", "10.0.0.12", "master", [true; 3]),
        node("cp3", "10.0.0.13", "backup", [true; 3]),
    ];
    let c = compare(&views);
    assert_eq!(c.elections[0].masters, ["cp1", "cp2"]);
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("SPLIT BRAIN: 2 masters for VRRP ipv4 vrid 51: cp1, cp2"),
        "{}",
        w[0]
    );
    assert!(render(&views, &c).contains("WARNING: SPLIT BRAIN"));

    let c = compare(&[
        node("cp1", "10.0.0.11", "backup", [true; 3]),
        node("cp2", "10.0.0.12", "initialize", [true; 3]),
    ]);
    let w = c.warnings();
    assert!(
        w[0].starts_with("NO MASTER for VRRP ipv4 vrid 51") && w[0].contains("cp2 initialize"),
        "{w:?}"
    );
}

#[test]
fn an_unreachable_node_is_shown_and_leaves_agreement_unconfirmed() {
    let views = [
        node("cp1", "10.0.0.11", "master", [true; 3]),
        unreachable("10.0.0.13:9590"),
        node("cp2", "10.0.0.12", "backup", [true; 3]),
    ];
    let c = compare(&views);
    assert_eq!(c.labels, ["cp1", "10.0.0.13:9590", "cp2"]);
    assert!(c.disagreements.is_empty(), "{c:?}");
    assert_eq!(
        c.unreachable,
        [("10.0.0.13:9590".to_owned(), "timed out".to_owned())]
    );
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("1 of 3 nodes did not answer (10.0.0.13:9590: timed out)"),
        "{}",
        w[0]
    );
    let t = render(&views, &c);
    assert!(t.contains("UNREACHABLE: timed out"), "{t}");
    // The answering nodes still show side by side, without a column for it.
    let header = t.lines().find(|l| l.contains("BACKEND")).expect("header");
    assert!(!header.contains("10.0.0.13"), "{header}");

    // Nobody answered at all: no election to judge, only the unreachable
    // (and that one node is no group).
    let c = compare(&[unreachable("10.0.0.11:9590")]);
    assert!(c.elections.is_empty() && c.disagreements.is_empty());
    assert_eq!(c.warnings().len(), 2, "{:?}", c.warnings());
    // One node that answered alone: no comparison, and that is said.
    let c = compare(&[node("cp1", "10.0.0.11", "master", [true; 3])]);
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("only one node was asked (cp1)"),
        "{}",
        w[0]
    );

    // The JSON carries each node's snapshot or error and the warnings.
    let j = to_json(&views, &compare(&views));
    assert_eq!(j["nodes"][1]["unreachable"], "timed out");
    assert_eq!(j["nodes"][0]["status"]["node"], "cp1");
    assert_eq!(j["nodes"][2]["label"], "cp2");
    assert_eq!(j["elections"][0]["masters"][0], "cp1");
    assert_eq!(j["warnings"].as_array().map(Vec::len), Some(1));
}

#[test]
fn one_agent_reached_twice_counts_once_and_shared_names_get_addresses() {
    let a = node("cp1", "10.0.0.11", "master", [true; 3]);
    let mut again = a.clone();
    again.address = "127.0.0.1:9590".parse().expect("addr");
    let b = node("lb", "10.0.0.12", "backup", [true; 3]);
    let mut c = node("lb", "10.0.0.13", "backup", [true; 3]);
    if let Answer::Status(s) = &mut c.answer {
        s.started_unix_ms -= 1;
    }
    let views = dedupe(vec![a, again, b, c]);
    assert_eq!(views.len(), 3);
    assert_eq!(
        compare(&views).labels,
        ["cp1", "lb@10.0.0.12:9590", "lb@10.0.0.13:9590"]
    );
}

#[test]
fn peers_come_from_the_config_and_from_what_the_nodes_heard() {
    let stacked = Config::parse(
        std::path::Path::new("vipd.yaml"),
        r#"
vrrp: { vrid: 51, priority: 100, unicast_peers: ["10.0.0.21"] }
services:
  - vip: 10.0.0.100
    port: 6443
    mode: dsr
    backends: [{ address: 10.0.0.11 }, { address: 10.0.0.12 }, { address: 10.0.0.13 }]
"#,
    )
    .expect("a valid config");
    let here: Vec<IpAddr> = vec!["10.0.0.11".parse().expect("ip")];
    let ips =
        |v: &[&str]| -> BTreeSet<IpAddr> { v.iter().map(|a| a.parse().expect("ip")).collect() };
    // This node is one of the backends: stacked, every backend is a node.
    assert_eq!(
        config_peers(&stacked, &here),
        ips(&["10.0.0.12", "10.0.0.13", "10.0.0.21"])
    );
    // Not among them: a dedicated LB, whose backends run no vipd.
    assert_eq!(
        config_peers(&stacked, &["10.0.0.5".parse().expect("ip")]),
        ips(&["10.0.0.21"])
    );

    let mut v = node("cp1", "10.0.0.11", "master", [true; 3]);
    if let Answer::Status(s) = &mut v.answer {
        s.vrrp[0].peers.push(crate::status::PeerStatus {
            address: "10.0.0.12".parse().expect("ip"),
            priority: 90,
            last_heard_unix_ms: AT,
        });
        // An IPv6 router heard from its link-local source: not askable.
        let mut v6 = s.vrrp[0].clone();
        v6.family = "ipv6".into();
        v6.master = Some("fe80::77:ff:fe00:12".parse().expect("ip"));
        s.vrrp.push(v6);
    }
    assert_eq!(
        heard_peers(
            &[v.clone(), unreachable("10.0.0.9:9590")],
            &ips(&["10.0.0.11"])
        ),
        ips(&["10.0.0.12"])
    );
    assert!(heard_peers(&[v], &ips(&["10.0.0.11", "10.0.0.12"])).is_empty());
}
