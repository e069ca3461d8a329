//! Mode nat state sync in the two-LB lab: watch streams through the VIP
//! survive the master's death because lb2 holds their flows (issue 7: "in
//! nat mode either they continue (connection state replicated to the peer,
//! SNAT to the VIP) or each gets an RST within one second, never silence").
//!
//! Needs root; run by `cargo xtask test`.

use std::time::{Duration, Instant};

use vip_tests::{
    netns::poll_until,
    progtest::require_root,
    scenario::{Fwd, LbLab, LbOptions},
    standin::client_config,
    traffic::{End, Watches},
};
use vip_userspace::dataplane::kernel::AttachMode;

const STREAMS: usize = 100;

fn all_master(l: &LbLab, node: &str) -> bool {
    l.try_status_of(node)
        .is_ok_and(|s| !s.vrrp.is_empty() && s.vrrp.iter().all(|v| v.state == "master"))
}

fn metric_on(l: &LbLab, node: &str, series: &str) -> f64 {
    let (_, body) = l.vipd_http_on(node, "/metrics");
    vip_tests::scenario::parse_metrics(&body)
        .get(series)
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn nat_sync_watch_streams_continue_when_the_master_dies() {
    require_root();
    let l = LbLab::start_with(
        "nsync",
        &LbOptions {
            second_lb: true,
            sync: true,
            ..LbOptions::new(AttachMode::Skb, Fwd::Nat)
        },
    );
    poll_until(
        Duration::from_secs(5),
        || format!("lb did not become master:\n{}", l.vipd.logs()),
        || all_master(&l, "lb"),
    );
    let client_ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let opened = Instant::now();
    let watches = Watches::open(&client_ns, &cfg, STREAMS).expect("open the watch streams");
    let open_took = opened.elapsed();
    // Every stream's flow reaches lb2 (one record per flow, plus any
    // refresh): how long after the last stream opened.
    let replicated = poll_until(
        Duration::from_secs(5),
        || {
            format!(
                "lb2 applied {} of {STREAMS} flows\nlb:\n{}\nlb2:\n{}",
                metric_on(&l, "lb2", "vipd_state_sync_applied_total"),
                l.vipd.logs(),
                l.vipd2.as_ref().map(|v| v.0.logs()).unwrap_or_default()
            )
        },
        || metric_on(&l, "lb2", "vipd_state_sync_applied_total") >= STREAMS as f64,
    );
    // The metrics are refreshed once a second.
    poll_until(
        Duration::from_secs(3),
        || "lb's vipd_state_sync_sent_total stays below the stream count".into(),
        || metric_on(&l, "lb", "vipd_state_sync_sent_total") >= STREAMS as f64,
    );
    eprintln!(
        "{STREAMS} streams opened in {open_took:?}; lb2 held all their flows {replicated:?} later"
    );

    let before: Vec<u64> = watches.report().iter().map(|r| r.events).collect();
    let killed = Instant::now();
    // The master dies as a node does: no priority-0 advert, no VIP removal.
    l.vipd.signal(libc::SIGKILL);
    l.lab.sh("lb", &["ip", "link", "set", "eth0", "down"]);
    let took = poll_until(
        Duration::from_secs(5),
        || "lb2 did not take over within 5 s".into(),
        || all_master(&l, "lb2"),
    );
    // Events come every 200 ms: 3 s is many events for a live stream, and
    // well past the one second a reset stream may take.
    std::thread::sleep(Duration::from_secs(3));
    let report = watches.report();
    let mut continued = 0;
    let mut reset = 0;
    let mut silent = vec![];
    for (i, r) in report.iter().enumerate() {
        match &r.end {
            End::Open if r.events > before[i] && r.longest_gap < Duration::from_secs(2) => {
                continued += 1
            }
            End::Reset
                if r.ended.is_some_and(|t| {
                    t.saturating_duration_since(killed) < took + Duration::from_secs(1)
                }) =>
            {
                reset += 1
            }
            other => silent.push(format!(
                "stream {i} on {}: {other:?}, {} events ({} before), longest gap {:?}",
                r.server, r.events, before[i], r.longest_gap
            )),
        }
    }
    eprintln!(
        "after the takeover ({took:?}): {continued} continued, {reset} reset, {} neither",
        silent.len()
    );
    assert!(
        silent.is_empty(),
        "streams neither continuing nor reset within a second:\n{}\nlb2:\n{}",
        silent.join("\n"),
        l.vipd2.as_ref().map(|v| v.0.logs()).unwrap_or_default()
    );
    assert!(
        continued * 100 >= STREAMS * 99,
        "{continued} of {STREAMS} streams continued on lb2 (want 99%)"
    );
    let (_, body) = l.vipd_http_on("lb2", "/metrics");
    let rejected: Vec<(String, f64)> = vip_tests::scenario::parse_metrics(&body)
        .into_iter()
        .filter(|(k, v)| k.starts_with("vipd_state_sync_rejected_total") && *v > 0.0)
        .collect();
    assert!(rejected.is_empty(), "lb2 refused records: {rejected:?}");
}
