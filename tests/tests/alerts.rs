//! The shipped alert rules (`deploy/prometheus-alerts.yaml`) against real
//! vipds, evaluated by a real Prometheus (`vip_tests::prom`) scraping both
//! LBs of a namespace lab every second: each lab failure makes its alert
//! pending (the rules' `for:` only delays firing), and the normal events of
//! a cluster's life (a backend dying with two healthy left, a planned restart
//! of the master) raise none but the ones they should, and those only as
//! long as the event lasts.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use vip_tests::{
    netns::in_netns,
    prom::Prom,
    scenario::{CertKind, Fwd, LbLab, LbOptions, QUICK_PROBE},
    standin::{HttpsConn, client_config},
    vrrpd::{block_vrrp_to, set_link, unblock_vrrp_to},
};
use vip_userspace::dataplane::kernel::AttachMode;

/// Every LB serves /metrics on all its addresses, so the Prometheus in the
/// client namespace reaches it at the node's address (the README's advice
/// for a static pod: the node's own address).
const METRICS: &str = "metrics_listen: \"0.0.0.0:9590\"\n";

fn targets(l: &LbLab, nodes: &[&str]) -> Vec<SocketAddr> {
    nodes
        .iter()
        .map(|n| SocketAddr::new(IpAddr::V4(l.lab.node(n).ipv4), 9590))
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until the VIP's holder for both families is `node`, as Prometheus
/// sees it.
fn wait_master(p: &Prom, l: &LbLab, node: &str) {
    let instance = format!("instance={}:9590", l.lab.node(node).ipv4);
    p.wait(&format!("{node} master"), Duration::from_secs(20), |p| {
        let m = p.query("vipd_vrrp_state{state=\"master\"} == 1");
        m.len() == 2 && m.iter().all(|(labels, _)| labels.contains(&instance))
    });
}

/// The sum of lb's `vipd_dataplane_packets_total` whose reason starts with
/// `prefix`.
fn dataplane(l: &LbLab, node: &str, prefix: &str) -> f64 {
    let want = format!("vipd_dataplane_packets_total{{reason=\"{prefix}");
    l.metrics_of(node)
        .iter()
        .filter(|(k, _)| k.starts_with(&want))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn lab_failures_raise_their_alerts_and_normal_events_none() {
    let mut l = LbLab::start_with(
        "alerts",
        &LbOptions {
            second_lb: true,
            // 1 s adverts (keepalived's default): lb2 takes over only after
            // 3 x 1 s + skew = 3.6 s of silence. At vipd's 100 ms (361 ms)
            // a stall of the master's vipd under load average 26-29 made
            // lb2 master for a moment and lb counted a split brain, a true
            // one that VipdSplitBrain reported in the middle of "one backend
            // dead" (xtask soak). Every wait below is 10 s or more.
            advert_ms: Some(1000),
            probe: QUICK_PROBE.into(),
            extra: METRICS.into(),
            ..LbOptions::new(AttachMode::Skb, Fwd::Dsr)
        },
    );
    let p = Prom::start(&l.lab, "client", &targets(&l, &["lb", "lb2"]));
    wait_master(&p, &l, "lb");

    // A healthy lab raises nothing.
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(p.seen_since(t), names(&[]), "a healthy lab");

    // Normal event: be1 dies under kept-alive connections with two healthy
    // backends left. Only VipdBackendDown; its clients get their RSTs (the
    // poke), and nothing the program does for them counts as a drop.
    let ns = l.lab.node("client").ns.clone();
    let ca = l.pki.ca_pem();
    let mut kept = vec![];
    for _ in 0..40 {
        let mut c = in_netns(&ns, || {
            HttpsConn::connect(
                LbLab::vip_addr(false),
                "kubernetes",
                client_config(&ca, None),
                Duration::from_secs(3),
            )
        })
        .expect("kept-alive connection through the VIP");
        let who = c.get("/whoami").expect("GET /whoami").text();
        kept.push((who.trim().to_owned(), c));
        if kept.iter().filter(|(w, _)| w == "be1").count() >= 3 && kept.len() >= 9 {
            break;
        }
    }
    let on_be1 = kept.iter().filter(|(w, _)| w == "be1").count();
    assert!(on_be1 >= 1, "no kept-alive connection reached be1");
    let t = Instant::now();
    set_link(&l.lab, "be1", false);
    let down = p.wait_alert("VipdBackendDown", Duration::from_secs(15));
    // be1 over IPv4 and IPv6, nobody else.
    let be1 = [
        l.backend("be1").to_string(),
        format!("[{}]:{}", l.lab.node("be1").ipv6, l.backend("be1").port()),
    ];
    assert!(
        down.iter().all(|a| a
            .label("backend")
            .is_some_and(|b| be1.iter().any(|x| x == b))),
        "{down:?}"
    );
    // The poke reached be1's clients and the XDP program reset them.
    let poked = || l.metric("vipd_conntrack_poked_total").unwrap_or(0.0);
    let end = Instant::now() + Duration::from_secs(10);
    while poked() < on_be1 as f64 {
        assert!(Instant::now() < end, "be1's flows were not poked");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Scrapes and evaluations after the pokes' answers.
    std::thread::sleep(Duration::from_secs(4));
    let drops = dataplane(&l, "lb", "drop_");
    let absorbed = dataplane(&l, "lb", "absorb_rst");
    let rsts = dataplane(&l, "lb", "tx_rst");
    eprintln!("be1 down: {on_be1} flows, tx_rst {rsts}, absorb_rst {absorbed}, drops {drops}");
    assert!(rsts >= on_be1 as f64, "be1's clients got their RSTs");
    assert_eq!(drops, 0.0, "a dead backend's clients are no drop");
    assert_eq!(
        p.seen_since(t),
        names(&["VipdBackendDown"]),
        "one backend dead with two healthy left"
    );
    drop(kept);
    set_link(&l.lab, "be1", true);
    p.wait_quiet(Duration::from_secs(20));

    // Normal event: a planned restart of the master (SIGTERM: priority 0,
    // lb2 takes over; the new vipd preempts back). Prometheus scrapes the
    // two nodes at different moments, so a handover between two scrapes can
    // read as no master or two for one evaluation, and the restarted node's
    // own scrape may fail: VipdNoMaster, VipdMultipleMasters and VipdDown may
    // go pending, which is what their `for:` (1 m, 30 s, 2 m) is for, and
    // must be gone within seconds. Nothing else.
    let t = Instant::now();
    l.restart_vipd();
    wait_master(&p, &l, "lb");
    std::thread::sleep(Duration::from_secs(3));
    let seen = p.seen_since(t);
    let handover = names(&["VipdDown", "VipdNoMaster", "VipdMultipleMasters"]);
    assert!(
        seen.is_subset(&handover),
        "a planned restart of the master: {seen:?}"
    );
    eprintln!("planned restart of the master, pending for a moment: {seen:?}");
    p.wait_quiet(Duration::from_secs(10));

    // Fail open: every backend's /readyz fails.
    for be in ["be1", "be2", "be3"] {
        l.control(be, "readyz", "503");
    }
    p.wait_alert("VipdFailOpen", Duration::from_secs(15));
    p.wait_alert("VipdBackendDown", Duration::from_secs(5));
    for be in ["be1", "be2", "be3"] {
        l.control(be, "readyz", "200");
    }
    p.wait_quiet(Duration::from_secs(20));

    // Two masters: lb and lb2 stop hearing each other's adverts.
    block_vrrp_to(&l.lab, &["lb", "lb2"]);
    let two = p.wait_alerts("VipdMultipleMasters", 2, Duration::from_secs(20));
    assert_eq!(two.len(), 2, "both families: {two:?}");
    unblock_vrrp_to(&l.lab, &["lb", "lb2"]);
    wait_master(&p, &l, "lb");

    // vipd down: both stop.
    l.vipd.kill();
    if let Some((v, _)) = &l.vipd2 {
        v.kill();
    }
    p.wait("VipdDown for both LBs", Duration::from_secs(10), |p| {
        p.alerts().iter().filter(|a| a.name == "VipdDown").count() == 2
    });
    p.wait_alert("VipdAllDown", Duration::from_secs(10));
}

/// Every backend's certificate lacks the VIP: the gate keeps the node out
/// of the election, so nobody holds the VIP.
#[test]
fn certificate_san_missing_holds_the_node_out_and_no_one_is_master() {
    let l = LbLab::start_with(
        "alerts-san",
        &LbOptions {
            vrrp: true,
            certs: [CertKind::NoVipSan; 3],
            extra: METRICS.into(),
            ..LbOptions::new(AttachMode::Skb, Fwd::Dsr)
        },
    );
    let p = Prom::start(&l.lab, "client", &targets(&l, &["lb"]));
    let san = p.wait_alert("VipdCertificateSanMissing", Duration::from_secs(15));
    let backends: BTreeSet<String> = san
        .iter()
        .filter_map(|a| a.label("backend").map(str::to_owned))
        .collect();
    assert_eq!(backends.len(), 6, "3 backends, both families: {san:?}");
    p.wait_alert("VipdHeldByCertificateGate", Duration::from_secs(10));
    p.wait_alert("VipdNoMaster", Duration::from_secs(10));
}
