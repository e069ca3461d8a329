//! Issue 16's must-show: a three-node stacked control plane runs from ONE
//! file, the same bytes on every node, and passes a failover and a backend
//! failure (tests/src/stacked.rs builds the lab).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use vip_tests::{
    netns::{VIP_V4, poll_until},
    stacked::StackedLab,
    standin::client_config,
    traffic::{End, Watches},
    vrrpd::set_link,
};
use vip_userspace::status::Status;

fn wait_status(l: &StackedLab, node: &str, timeout: Duration, ok: impl Fn(&Status) -> bool) {
    poll_until(
        timeout,
        || {
            let last = l
                .try_status_of(node)
                .map(|s| s.render())
                .unwrap_or_else(|e| e);
            format!("{node}'s status did not get there:\n{last}\n{}", l.logs())
        },
        || l.try_status_of(node).is_ok_and(|s| ok(&s)),
    );
}

fn in_state(s: &Status, state: &str) -> bool {
    !s.vrrp.is_empty() && s.vrrp.iter().all(|v| v.state == state)
}

/// `node`'s status shows the IPv4 backend at `addr` in `state`.
fn backend_is(s: &Status, addr: IpAddr, state: &str) -> bool {
    s.services
        .iter()
        .flat_map(|svc| &svc.backends)
        .any(|b| b.address.ip() == addr && b.state == state)
}

/// Until new connections through the VIP all succeed (20 in a row); the
/// nodes that answered the last round.
fn wait_all_answer(l: &StackedLab, timeout: Duration) -> std::collections::BTreeSet<String> {
    let start = Instant::now();
    loop {
        match l.answering(20) {
            Ok(seen) => return seen,
            Err(e) => assert!(
                start.elapsed() < timeout,
                "new connections through the VIP still fail after {timeout:?}: {e}\n{}",
                l.logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn one_file_on_three_stacked_nodes_fails_over_and_drops_a_dead_backend() {
    let mut l = StackedLab::start("stk");
    // The file carries nothing per node.
    let text = std::fs::read_to_string(&l.config_path).expect("read the one file");
    for per_node in ["interface", "mac:", "local:", "priority", "nodes:"] {
        assert!(
            !text.contains(per_node),
            "the one file says {per_node}:\n{text}"
        );
    }
    // Priorities derived from the backends' order: be1 (200) is master.
    wait_status(&l, "be1", Duration::from_secs(10), |s| {
        in_state(s, "master")
    });
    for be in ["be2", "be3"] {
        wait_status(&l, be, Duration::from_secs(10), |s| in_state(s, "backup"));
    }
    assert!(
        l.lab.has_addr("be1", IpAddr::V4(VIP_V4)),
        "the master holds no VIP"
    );
    // Every node's apiserver serves through the VIP: the local one by
    // XDP_PASS, the others by MAC from the master's neighbour table.
    let all: std::collections::BTreeSet<String> = ["be1", "be2", "be3"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let seen = wait_all_answer(&l, Duration::from_secs(10));
    let seen = if seen == all {
        seen
    } else {
        l.answering(60).expect("60 new connections through the VIP")
    };
    assert_eq!(seen, all, "new connections did not reach every node");

    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let watches = Watches::open(&ns, &cfg, 30).expect("30 watch streams");
    let before = watches.by_server();
    assert!(
        ["be2", "be3"].iter().all(|b| before.contains_key(*b)),
        "the streams missed a node: {before:?}"
    );

    // A backend fails: be3's apiserver dies, its vipd lives on. Every node
    // marks it down and new flows avoid it. Every node, not only the
    // master: a node the master forwards a flow to runs it through its own
    // Maglev table again (its XDP cannot tell the master's frame from a
    // client's), so until its probes agree it may send the flow on to be3.
    l.stop_apiserver("be3");
    let be3: IpAddr = l.lab.node("be3").ipv4.into();
    for node in ["be1", "be2", "be3"] {
        wait_status(&l, node, Duration::from_secs(10), |s| {
            backend_is(s, be3, "down")
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    let seen = l
        .answering(30)
        .unwrap_or_else(|e| panic!("a new connection failed with be3 marked down: {e}"));
    assert!(
        !seen.contains("be3") && seen.contains("be2"),
        "with be3's apiserver down new connections reached {seen:?}"
    );

    // The master dies as a node does: vipd killed, its link gone. be2
    // (190) takes the VIP; once it marks be1 down, every new connection
    // lands on the one apiserver left, and be2's streams never noticed.
    let t = Instant::now();
    l.vipd("be1").signal(libc::SIGKILL);
    set_link(&l.lab, "be1", false);
    wait_status(&l, "be2", Duration::from_secs(10), |s| {
        in_state(s, "master")
    });
    let took = t.elapsed();
    let be1: IpAddr = l.lab.node("be1").ipv4.into();
    wait_status(&l, "be2", Duration::from_secs(10), |s| {
        backend_is(s, be1, "down")
    });
    let seen = wait_all_answer(&l, Duration::from_secs(5));
    assert_eq!(
        seen,
        ["be2".to_string()].into(),
        "after be1's crash with be3 down"
    );
    std::thread::sleep(Duration::from_secs(1));
    for w in watches.report() {
        match w.server.as_str() {
            "be2" => assert!(
                w.end == End::Open && w.longest_gap < Duration::from_secs(3),
                "a stream on be2 ended or stalled across the failover: {w:?}"
            ),
            "be3" => assert_ne!(w.end, End::Open, "a stream on the dead be3 is open"),
            _ => {}
        }
    }
    eprintln!("stacked one file: be2 master {took:?} after be1's crash; streams before {before:?}");
}
