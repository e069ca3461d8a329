//! The survival suite: what long-lived clients (watch streams, as client-go
//! keeps them to the apiserver) and a client making new connections live
//! through when things fail. Every failure is real: a master node dies
//! (vipd SIGKILL and its link down), a backend's link goes down, VRRP is
//! partitioned and healed, vipd restarts. Needs root (`cargo xtask test`).
//!
//! The rule throughout: a stream either goes on or is reset promptly;
//! never silence, which a client cannot tell from a slow apiserver.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use vip_tests::{
    capture::{Capture, VRRP_FILTER, adverts_from, dump, epoch_now},
    failover::{dsr_vip_move_keeps_watches, is_master, master_dies, summary, two_lbs, wait_status},
    h2client::H2Watches,
    keepalived::VrrpState,
    netns::{Lab, VIP_V4, poll_until},
    scenario::{Fwd, LbLab, LbOptions},
    standin::client_config,
    traffic::{End, Poller, Watches, outage},
    vrrpd::{VipdVrrp, VipdVrrpConf, advert_src, block_vrrp_to, unblock_vrrp_to},
};
use vip_userspace::{config::ProbeSettings, dataplane::kernel::AttachMode, vrrp::Family};

/// Mode dsr: 200 watch streams through the VIP; the master dies; at least
/// 99% go on through lb2 with no reset (Maglev gives lb2 the same backend
/// for every flow, and the backends hold the connections), and none is
/// silent: every one either streams or was reset. The same check runs on
/// the image in podman (tests/tests/image.rs).
#[test]
fn dsr_vip_move_keeps_200_watches() {
    let l = two_lbs("sv-dsr", LbOptions::new(AttachMode::Native, Fwd::Dsr));
    dsr_vip_move_keeps_watches(&l, "dsr VIP move");
}

/// Mode nat without state sync (`snat: node`): the new master has no translation for the
/// streams (and their backends answer the old master's SNAT address), so
/// it cannot carry them on; each one is reset at its next packet (a TCP
/// keepalive a second after its last event), within a second of lb2 taking
/// over. None is left silent.
#[test]
fn nat_vip_move_resets_every_stream_within_a_second() {
    let l = two_lbs("sv-nat", LbOptions::new(AttachMode::Skb, Fwd::Nat));
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let watches = Watches::open(&ns, &cfg, 60).expect("60 watch streams");
    std::thread::sleep(Duration::from_millis(500));
    let (t_crash, t_master) = master_dies(&l);
    std::thread::sleep(Duration::from_secs(3));
    let report = watches.report();
    let line = summary(&report);
    let latest = report
        .iter()
        .filter_map(|w| w.ended)
        .map(|e| e.saturating_duration_since(t_master))
        .max()
        .unwrap_or_default();
    eprintln!(
        "nat VIP move: lb2 master {:?} after the crash; streams: {line}; last reset {latest:?} after the takeover",
        t_master - t_crash
    );
    for w in &report {
        assert_eq!(
            w.end,
            End::Reset,
            "a stream on {} was not reset: {line}",
            w.server
        );
        let ended = w.ended.expect("a reset stream has its time");
        assert!(
            ended >= t_crash,
            "a stream on {} was reset {:?} before the crash: {line}",
            w.server,
            t_crash - ended
        );
        let after = ended.saturating_duration_since(t_master);
        // The RST answers the client's first packet after the takeover:
        // its keepalive, due at most a second after its last event (which
        // came before the crash) or after a probe lost before the takeover.
        // 250 ms for the keepalive timer and the machine (XDP answers in
        // microseconds).
        assert!(
            after <= Duration::from_millis(1250),
            "a stream on {} was reset {after:?} after lb2 took over: {line}",
            w.server
        );
    }
    assert!(
        l.metrics_of("lb2")
            .get("vipd_dataplane_packets_total{reason=\"tx_rst\"}")
            .copied()
            .unwrap_or(0.0)
            >= 60.0,
        "the resets did not come from lb2's XDP program"
    );
}

/// `ProbeSettings::worst_detection` for the default probe settings, which the
/// labs here run with.
fn worst_detection() -> Duration {
    ProbeSettings::default().worst_detection()
}

/// Mode nat with state sync (`snat: vip`, `state_sync` peers): 200 watch
/// streams; every stream's flow reaches lb2 before the master dies, and at
/// least 99% go on through lb2 (it translates them to the same backend and
/// source port, and the backends answer the VIP, which lb2 now holds); the
/// rest are reset within a second of the takeover; none is silent.
#[test]
fn nat_vip_move_with_state_sync_keeps_200_watches() {
    const STREAMS: usize = 200;
    let l = LbLab::start_with(
        "sv-nsync",
        &LbOptions {
            second_lb: true,
            sync: true,
            ..LbOptions::new(AttachMode::Skb, Fwd::Nat)
        },
    );
    wait_status(&l, "lb", Duration::from_secs(5), is_master);
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let opened = Instant::now();
    let watches = Watches::open(&ns, &cfg, STREAMS).expect("200 watch streams");
    let open_took = opened.elapsed();
    let applied = |node: &str, name: &str| l.metrics_of(node).get(name).copied().unwrap_or(0.0);
    // One record per flow (plus any refresh); the metrics are refreshed
    // once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while applied("lb2", "vipd_state_sync_applied_total") < STREAMS as f64 {
        assert!(
            Instant::now() < deadline,
            "lb2 applied {} of {STREAMS} flows",
            applied("lb2", "vipd_state_sync_applied_total")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let replicated = opened.elapsed() - open_took;
    // lb's own count, refreshed once a second too.
    let deadline = Instant::now() + Duration::from_secs(3);
    while applied("lb", "vipd_state_sync_sent_total") < STREAMS as f64 {
        assert!(
            Instant::now() < deadline,
            "lb counts {} records sent for {STREAMS} flows",
            applied("lb", "vipd_state_sync_sent_total")
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let before: Vec<u64> = watches.report().iter().map(|r| r.events).collect();
    let (t_crash, t_master) = master_dies(&l);
    std::thread::sleep(Duration::from_secs(3));
    let report = watches.report();
    let line = summary(&report);
    eprintln!(
        "nat VIP move with state sync: {STREAMS} streams opened in {open_took:?}, all on lb2 {replicated:?} later; lb2 master {:?} after the crash; streams: {line}",
        t_master - t_crash
    );
    let mut continued = 0;
    for (i, r) in report.iter().enumerate() {
        match &r.end {
            End::Open => {
                assert!(
                    r.events > before[i] && r.longest_gap < Duration::from_secs(2),
                    "stream {i} on {} stayed open but silent: {} events ({} before), longest gap {:?}",
                    r.server,
                    r.events,
                    before[i],
                    r.longest_gap
                );
                continued += 1;
            }
            End::Reset => {
                let ended = r.ended.expect("time");
                assert!(
                    ended >= t_crash,
                    "stream {i} on {} reset {:?} before the crash",
                    r.server,
                    t_crash - ended
                );
                let after = ended.saturating_duration_since(t_master);
                assert!(
                    after <= Duration::from_millis(1250),
                    "stream {i} on {} reset {after:?} after the takeover",
                    r.server
                );
            }
            other => panic!("stream {i} on {} ended with {other:?}: {line}", r.server),
        }
    }
    assert!(
        continued * 100 >= STREAMS * 99,
        "{continued} of {STREAMS} streams continued on lb2 (want 99%): {line}"
    );
    let rejected: Vec<(String, f64)> = l
        .metrics_of("lb2")
        .into_iter()
        .filter(|(k, v)| k.starts_with("vipd_state_sync_rejected_total") && *v > 0.0)
        .collect();
    assert!(rejected.is_empty(), "lb2 refused records: {rejected:?}");
    // `vipd status` says the same as the metrics.
    let st = l.status_of("lb2");
    let sync = st
        .sync
        .as_ref()
        .unwrap_or_else(|| panic!("no sync in lb2's status:\n{}", st.render()));
    assert!(
        sync.applied >= STREAMS as u64 && sync.rejected.is_empty(),
        "lb2's status: {sync:?}"
    );
    assert!(st.render().contains("state sync: "), "{}", st.render());
}

/// client-go's shape: 50 watches multiplexed on one HTTP/2 connection (ALPN
/// `h2`), so one TCP flow carries them all. The master dies (mode dsr): the
/// flow's next packet reaches the same backend through lb2, and all 50
/// streams go on.
#[test]
fn h2_fifty_watches_on_one_connection_survive_the_masters_death() {
    let l = two_lbs("sv-h2m", LbOptions::new(AttachMode::Native, Fwd::Dsr));
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let w = H2Watches::open(&ns, &cfg, LbLab::vip_addr(false), 50).expect("50 h2 watches");
    assert_eq!(w.protocol, "h2", "the stand-in negotiates HTTP/2");
    let servers: std::collections::BTreeSet<String> =
        w.report().into_iter().map(|r| r.server).collect();
    assert_eq!(servers.len(), 1, "one connection, one backend: {servers:?}");
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<u64> = w.report().iter().map(|r| r.events).collect();
    let (t_crash, t_master) = master_dies(&l);
    std::thread::sleep(Duration::from_secs(3));
    let report = w.report();
    let line = summary(&report);
    eprintln!(
        "h2, 50 watches on one connection: lb2 master {:?} after the crash; {line}",
        t_master - t_crash
    );
    for (i, r) in report.iter().enumerate() {
        assert_eq!(r.end, End::Open, "stream {i} ended: {line}");
        assert!(
            r.events > before[i] && r.longest_gap < Duration::from_secs(2),
            "stream {i} stayed open but silent: {} events ({} before), gap {:?}",
            r.events,
            before[i],
            r.longest_gap
        );
    }
}

/// Issue 17: new connections work again as soon as lb2 holds the VIP, in
/// mode nat (with state sync, SNAT to the VIP) as in mode dsr: no extra
/// attempt. The master dies (vipd SIGKILL, its link down) under a client
/// that starts a new TLS connection every 10 ms, each on its own thread;
/// every attempt that starts once lb2 holds the VIP must answer. Each step
/// of an attempt gives up after 900 ms, before the kernel's 1 s SYN
/// retransmission, so a lost first packet on the new master, a backend's
/// stale neighbour entry for the SNAT address (RFC 9568 6.4.2: the new
/// master's gratuitous ARP must replace it) or a SNAT port clash with a
/// replicated flow would each show as a failed attempt here. (The demo's
/// nat outage that looked one attempt longer was its attempts running one
/// after another: the one in flight when the VIP moved had sent its SYN to
/// the dead lb, in either mode.)
#[test]
fn new_connections_answer_from_the_takeover_in_dsr_and_nat() {
    // The VIP is added and announced right after the state change lb2's
    // status dates (the same task, no wait between): this covers the
    // status's millisecond rounding and a loaded machine. The nat defect
    // this guards against cost a whole attempt (300 ms).
    const SETTLE: Duration = Duration::from_millis(100);
    const STEP: Duration = Duration::from_millis(900);
    for (fwd, hint) in [(Fwd::Dsr, "sv-tkd"), (Fwd::Nat, "sv-tkn")] {
        let l = two_lbs(
            hint,
            LbOptions {
                sync: fwd == Fwd::Nat,
                ..LbOptions::new(AttachMode::Skb, fwd)
            },
        );
        let ns = l.lab.node("client").ns.clone();
        let cfg = client_config(&l.pki.ca_pem(), None);
        let poller = Poller::start_overlapping(&ns, &cfg, Duration::from_millis(10), STEP);
        std::thread::sleep(Duration::from_secs(1));
        let (t_crash, t_master) = master_dies(&l);
        std::thread::sleep(Duration::from_secs(2));
        let stop = Instant::now();
        let attempts = poller.finish();
        let (worst, failed, total) = outage(&attempts, t_crash);
        eprintln!(
            "{fwd:?}: lb2 master {:?} after the crash; outage {worst:?}, {failed} of {total} attempts failed",
            t_master - t_crash
        );
        let before: Vec<_> = attempts.iter().filter(|a| a.done < t_crash).collect();
        assert!(
            !before.is_empty() && before.iter().all(|a| a.result.is_ok()),
            "{fwd:?}: the client did not work before the crash: {before:?}"
        );
        let after: Vec<_> = attempts
            .iter()
            .filter(|a| a.at >= t_master + SETTLE && a.at + STEP < stop)
            .collect();
        assert!(
            after.len() >= 50,
            "{fwd:?}: only {} attempts after the takeover",
            after.len()
        );
        let bad: Vec<String> = after
            .iter()
            .filter_map(|a| {
                a.result
                    .as_ref()
                    .err()
                    .map(|e| format!("{:?} after the takeover: {e}", a.at - t_master))
            })
            .collect();
        assert!(
            bad.is_empty(),
            "{fwd:?}: {} of {} new connections started after lb2 held the VIP failed (the first attempt after the takeover must answer): {bad:?}",
            bad.len(),
            after.len()
        );
        // Nothing answered before lb2 took over: the client really lost
        // the old master (its link is down), so the check above is about
        // the takeover.
        assert!(
            worst >= t_master - t_crash - SETTLE,
            "{fwd:?}: outage {worst:?} shorter than the takeover {:?}",
            t_master - t_crash
        );
    }
}

/// The backend under that one HTTP/2 connection dies (its link down): the
/// client sends nothing, yet vipd's poke draws the XDP program's RST and
/// the connection, with all 50 watches, ends within the probes' detection
/// (plus a round trip), never silent. client-go would otherwise notice only
/// after its 30 s ping and 15 s timeout.
#[test]
fn h2_connection_of_a_dead_backend_is_reset_within_detection() {
    let l = LbLab::start("sv-h2b", AttachMode::Native, Fwd::Dsr);
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let w = H2Watches::open(&ns, &cfg, LbLab::vip_addr(false), 50).expect("50 h2 watches");
    assert_eq!(w.protocol, "h2");
    let server = w.report()[0].server.clone();
    assert!(server.starts_with("be"), "served by a stand-in: {server:?}");
    std::thread::sleep(Duration::from_millis(300));
    let t_dead = Instant::now();
    l.lab.sh(&server, &["ip", "link", "set", "eth0", "down"]);
    let limit = worst_detection() + Duration::from_millis(300);
    poll_until(
        limit + Duration::from_secs(2),
        || {
            format!(
                "the h2 connection to the dead {server} was not reset: {}",
                summary(&w.report())
            )
        },
        || w.report().iter().all(|r| r.end != End::Open),
    );
    let report = w.report();
    let line = summary(&report);
    for (i, r) in report.iter().enumerate() {
        assert_eq!(r.end, End::Reset, "stream {i}: {line}");
        let after = r.ended.expect("time").saturating_duration_since(t_dead);
        assert!(
            after <= limit,
            "stream {i} ended {after:?} after {server} died, past detection + 300 ms ({limit:?}): {line}"
        );
    }
    eprintln!("h2 connection to the dead {server}: {line}");
}

/// kubectl through the VIP speaks HTTP/2 (the stand-in reports the
/// protocol it served in a header, which kubectl prints at -v=8).
#[test]
fn kubectl_negotiates_h2_through_the_vip() {
    let l = LbLab::start("sv-h2k", AttachMode::Skb, Fwd::Dsr);
    let out = l.kubectl_output(&["get", "--raw", "/version", "-v=8"]);
    assert!(
        out.contains("X-Standin-Protocol: h2"),
        "kubectl did not get HTTP/2 through the VIP:\n{out}"
    );
}

/// A backend's link goes down under 30 watch streams whose clients send
/// nothing at all (no keepalives: client-go pings only every 30 s). The
/// probes take it out within their worst-case detection time; vipd then
/// pokes each of its clients, whose answer draws the XDP program's RST: the
/// dead backend's streams end within a round trip of the map write. Streams
/// on the other backends go on, and new connections avoid the dead one.
fn backend_death(xdp: AttachMode, fwd: Fwd, hint: &str) {
    let l = LbLab::start(hint, xdp, fwd);
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let watches = Watches::open_with(&ns, &cfg, 30, None).expect("30 watch streams");
    let before = watches.by_server();
    assert!(
        before.get("be1").is_some_and(|v| v.0 > 0),
        "no stream on be1: {before:?}"
    );
    let poller = Poller::start(
        &ns,
        &cfg,
        Duration::from_millis(20),
        Duration::from_millis(300),
    );
    std::thread::sleep(Duration::from_millis(500));

    let t_dead = Instant::now();
    l.lab.sh("be1", &["ip", "link", "set", "eth0", "down"]);
    let be1: IpAddr = l.lab.node("be1").ipv4.into();
    let t_down = wait_status(&l, "lb", Duration::from_secs(10), |s| {
        s.services[0]
            .backends
            .iter()
            .any(|b| b.address.ip() == be1 && b.state == "down")
    });
    // The status snapshot is rebuilt once a second, so `t_down` is late by
    // up to that: the deadline below is measured from the death itself.
    std::thread::sleep(Duration::from_secs(2));
    let attempts = poller.finish();
    let report = watches.report();
    let line = summary(&report);
    let mut latest = Duration::ZERO;
    for w in &report {
        if w.server == "be1" {
            assert_eq!(
                w.end,
                End::Reset,
                "a stream on the dead be1 was not reset: {line}"
            );
            let ended = w.ended.expect("a reset stream has its time");
            assert!(
                ended >= t_dead,
                "a stream on be1 was reset {:?} before be1 died: {line}",
                t_dead - ended
            );
            let after = ended.saturating_duration_since(t_dead);
            latest = latest.max(after);
            // The probes' worst case with the defaults: (1 s interval +
            // 100 ms jitter) x fall 2 + 1 s timeout = 3.2 s; then a round
            // trip for the poke and its answer.
            assert!(
                after <= worst_detection() + Duration::from_millis(300),
                "a stream on be1 was reset {after:?} after be1 died, past the probes' detection time: {line}"
            );
        } else {
            assert_eq!(
                w.end,
                End::Open,
                "a stream on the live {} ended: {line}",
                w.server
            );
            assert!(
                w.longest_gap < Duration::from_secs(1),
                "a stream on the live {} stalled for {:?}",
                w.server,
                w.longest_gap
            );
        }
    }
    // New connections: only those Maglev sent to be1 before it was marked
    // down fail; none after.
    let late_failures: Vec<_> = attempts
        .iter()
        .filter(|a| a.at > t_down + Duration::from_millis(50) && a.result.is_err())
        .collect();
    assert!(
        late_failures.is_empty(),
        "new connections failed after be1 was marked down: {late_failures:?}"
    );
    let poked = l.metric("vipd_conntrack_poked_total").unwrap_or(0.0);
    eprintln!(
        "{hint}: be1's streams all reset within {latest:?} of its death (worst-case detection {:?}); {line}; {poked} clients poked",
        worst_detection()
    );
    assert!(
        poked >= before["be1"].0 as f64,
        "vipd poked {poked} clients, be1 had {} streams",
        before["be1"].0
    );
}

#[test]
fn dsr_backend_death_resets_its_streams_within_detection() {
    backend_death(AttachMode::Native, Fwd::Dsr, "sv-be-dsr");
}

#[test]
fn nat_backend_death_resets_its_streams_within_detection() {
    backend_death(AttachMode::Skb, Fwd::Nat, "sv-be-nat");
}

/// `systemctl restart vipd` twice under 100 watch streams and a new
/// connection every 10 ms: nothing is lost, nothing is reset.
#[test]
fn agent_restart_loses_no_request_and_no_stream() {
    let mut l = LbLab::start("sv-rst", AttachMode::Native, Fwd::Dsr);
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let watches = Watches::open(&ns, &cfg, 100).expect("100 watch streams");
    let poller = Poller::start(
        &ns,
        &cfg,
        Duration::from_millis(10),
        Duration::from_millis(300),
    );
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    l.restart_vipd();
    std::thread::sleep(Duration::from_millis(500));
    l.restart_vipd();
    std::thread::sleep(Duration::from_millis(1000));
    let attempts = poller.finish();
    let (worst, failed, total) = outage(&attempts, t0);
    let report = watches.report();
    let line = summary(&report);
    eprintln!("restarts: {failed} of {total} new connections failed; streams: {line}");
    assert!(total > 100, "only {total} attempts");
    assert_eq!(
        failed, 0,
        "{failed} of {total} new connections failed across two restarts (longest {worst:?})"
    );
    assert!(
        report.iter().all(|w| w.end == End::Open),
        "a stream ended across the restarts: {line}"
    );
    // Never silence: events come every 200 ms, and a restart must not
    // stall a stream either.
    for w in &report {
        assert!(
            w.longest_gap < Duration::from_secs(1),
            "a stream on {} went silent for {:?} across the restarts: {line}",
            w.server,
            w.longest_gap
        );
    }
}

/// VRRP between two vipd nodes is cut: both become master, and both are
/// seen advertising. Once it heals, the two masters last at most one
/// advertisement interval: the winner's next advert reaches the loser
/// within one interval of the path opening and the loser yields at once
/// (RFC 9568 section 6.4.3). Each half is measured from the moment it can
/// start (the unblock command's end; the winner's first advert after it), so a slow
/// `nft` spawn on a loaded machine is not counted against vipd (issue 18:
/// this test failed at 142-290 ms against the old single bound under load).
#[test]
fn split_brain_ends_within_one_advert_interval_of_healing() {
    const INTERVAL: Duration = Duration::from_millis(100);
    let vip = IpAddr::V4(VIP_V4);
    let lab = Lab::new("sv-split", &["client", "lb1", "lb2"]);
    let cap = Capture::start(&lab, "client", VRRP_FILTER);
    let (n1, n2) = (lab.node("lb1").clone(), lab.node("lb2").clone());
    let v1 = VipdVrrp::start(&lab, "lb1", &VipdVrrpConf::new(51, 150, &[vip]));
    v1.wait_state(VrrpState::Master, Duration::from_secs(3));
    let v2 = VipdVrrp::start(&lab, "lb2", &VipdVrrpConf::new(51, 100, &[vip]));
    v2.wait_state(VrrpState::Backup, Duration::from_secs(3));

    let mut worst = 0.0f64;
    for round in 1..=5 {
        block_vrrp_to(&lab, &["lb1", "lb2"]);
        lab.wait_addr("lb2", vip, true, Duration::from_secs(3));
        let t_block = epoch_now();
        assert!(lab.has_addr("lb1", vip), "round {round}: lb1 lost the VIP");
        // Let both masters advertise for a while, at a random-ish phase.
        std::thread::sleep(Duration::from_millis(400 + 37 * round));
        // Before the unblock: the first advert through may precede the
        // command's return.
        let t_heal = epoch_now();
        unblock_vrrp_to(&lab, &["lb1", "lb2"]);
        // The path is open for certain from here; how long the command
        // took (a process spawn, slow on a loaded 2-core machine) is not
        // vipd's time.
        let t_open = epoch_now();
        lab.wait_addr("lb2", vip, false, Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(300));
        let packets = cap.snapshot();
        let loser: Vec<f64> = adverts_from(&packets, advert_src(&n2, vip))
            .iter()
            .map(|(t, _)| *t)
            .collect();
        // lb2's adverts are matched at all: the measure below starts at
        // t_heal, so without them it would read 0.
        assert!(
            loser.iter().any(|t| (t_block..t_heal).contains(t)),
            "round {round}: lb2 was not seen advertising as master before healing:\n{}",
            dump(&packets)
        );
        let loser_last = loser
            .iter()
            .copied()
            .filter(|t| *t > t_heal)
            .fold(t_heal, f64::max);
        // The capture is on the client: an advert of lb1's seen there
        // before the unblock command ended may not have reached lb2 yet
        // (its side of the block can be lifted last). The first one after
        // the command ended reached both.
        let winner_first = adverts_from(&packets, advert_src(&n1, vip))
            .iter()
            .map(|(t, _)| *t)
            .find(|t| *t > t_open)
            .expect("lb1 advertises after healing");
        let two_masters = loser_last - t_heal;
        worst = worst.max(two_masters);
        eprintln!(
            "round {round}: unblock took {:.1} ms; lb1's first advert after it {:.1} ms after \
             healing, lb2's last {:.1} ms after ({:.1} ms after lb1's)",
            (t_open - t_heal) * 1e3,
            (winner_first - t_heal) * 1e3,
            two_masters * 1e3,
            (loser_last - winner_first) * 1e3
        );
        // The two halves of the promise, each against the moment it can
        // start. The master keeps advertising every interval, so its first
        // advert through comes at most one interval (and a little
        // scheduling) after the path opened.
        let bound = INTERVAL.as_secs_f64() + 0.03;
        assert!(
            winner_first - t_open <= bound,
            "round {round}: lb1's first advert came {:.1} ms after the path opened:\n{}",
            (winner_first - t_open) * 1e3,
            dump(&packets)
        );
        // A master hearing a higher priority goes to Backup at once (RFC
        // 9568 section 6.4.3): no advert of lb2's follows lb1's by more
        // than the time to receive and process it. Half an interval: a
        // second advert of lb2's as master would come a whole interval on.
        assert!(
            loser_last - winner_first <= INTERVAL.as_secs_f64() / 2.0,
            "round {round}: lb2 still advertised as master {:.1} ms after an advert of lb1's \
             reached it:\n{}",
            (loser_last - winner_first) * 1e3,
            dump(&packets)
        );
        assert!(lab.has_addr("lb1", vip), "round {round}: lb1 lost the VIP");
        assert_eq!(v2.state(Family::V4), Some(VrrpState::Backup));
    }
    eprintln!(
        "split brain: two masters at most {:.1} ms after healing",
        worst * 1e3
    );
}

/// Issue 16: both LBs run from ONE config file (the very same path, so the
/// same bytes), as the DaemonSet's single ConfigMap key: no `interface:`,
/// per-node priorities under `nodes:` picked by NODE_NAME, `metrics_listen:
/// node:9590`, and one state-sync peer list naming both LBs. Each node
/// resolves its own values (lb 150 and master, lb2 100 and backup, status on
/// each node's own address, each syncing to the other), and a failover
/// still keeps the watch streams through lb2.
#[test]
fn one_config_file_for_both_lbs_elects_syncs_and_fails_over() {
    const STREAMS: usize = 20;
    let l = LbLab::start_with(
        "sv-1cfg",
        &LbOptions {
            second_lb: true,
            one_file: true,
            sync: true,
            ..LbOptions::new(AttachMode::Skb, Fwd::Nat)
        },
    );
    let (_, lb2_path) = l.vipd2.as_ref().expect("lb2 runs");
    assert_eq!(lb2_path, &l.config_path, "lb2 reads lb's very file");
    let text = std::fs::read_to_string(&l.config_path).expect("the config");
    assert!(
        !text.contains("interface:") && text.contains("vrrp: { vrid: 51 }\nnodes:\n"),
        "the one file names no interface and gives priorities only under nodes:\n{text}"
    );
    wait_status(&l, "lb", Duration::from_secs(5), is_master);
    wait_status(&l, "lb2", Duration::from_secs(5), |s| {
        !s.vrrp.is_empty() && s.vrrp.iter().all(|v| v.state == "backup")
    });
    // The values each node resolved from the one file. Status answered on
    // each node's own address (`node:9590`), not loopback.
    for (node, prio) in [("lb", 150), ("lb2", 100)] {
        let st = l.status_of(node);
        assert!(
            st.vrrp.iter().all(|v| v.configured_priority == prio),
            "{node}: configured priority not {prio}:\n{}",
            st.render()
        );
        assert_eq!(st.interface, "eth0", "{node}: derived interface");
        let addr = l.metrics_addr_of(node);
        assert!(
            !addr.ip().is_loopback() && addr.ip() == IpAddr::V4(l.lab.node(node).ipv4),
            "{node}: served on {addr}"
        );
        let logs = l.vipd_on(node).expect("vipd").logs();
        assert!(
            logs.contains(&format!("node \"{node}\" (entry nodes.{node}): interface eth0 (from backends' subnet), VRRP priority {prio} (from nodes)")),
            "{node}: no resolution line in the log:\n{logs}"
        );
    }
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let watches = Watches::open(&ns, &cfg, STREAMS).expect("watch streams");
    // Each node synced to the other, never to itself: lb2 applied every flow.
    poll_until(
        Duration::from_secs(5),
        || {
            format!(
                "lb2 applied {:?} records",
                l.metrics_of("lb2").get("vipd_state_sync_applied_total")
            )
        },
        || {
            l.metrics_of("lb2")
                .get("vipd_state_sync_applied_total")
                .is_some_and(|v| *v >= STREAMS as f64)
        },
    );
    let (t_crash, t_master) = master_dies(&l);
    std::thread::sleep(Duration::from_secs(3));
    let report = watches.report();
    let line = summary(&report);
    eprintln!(
        "one file: lb2 master {:?} after the crash; streams: {line}",
        t_master - t_crash
    );
    let open = report.iter().filter(|w| w.end == End::Open).count();
    assert!(
        open * 100 >= STREAMS * 95,
        "{open} of {STREAMS} streams went on through lb2: {line}"
    );
    let answers = l.ask_vip(10);
    assert!(
        answers.iter().all(Result::is_ok),
        "new requests through the VIP after the failover: {answers:?}"
    );
}
