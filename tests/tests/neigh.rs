//! Mode dsr without a single `mac:` line: vipd takes each backend's MAC from
//! the LB's neighbour table, follows a MAC that changes under running
//! streams, and never forwards to a backend whose address does not
//! resolve. Real kernel neighbour tables (ARP, IPv6 ND) in namespaces, a
//! real bridge, tcpdump as the witness. Needs root (`cargo xtask test`).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use vip_tests::bench::reaction::parse_timestamp;
use vip_tests::{
    capture::{Capture, dump, epoch_now},
    netns::poll_until,
    scenario::{Fwd, LbLab, LbOptions, PORT},
    standin::client_config,
    traffic::{End, Poller, Watches},
};
use vip_userspace::{dataplane::kernel::AttachMode, status::Status};

/// The lab with neither `mac:` nor `local:` in vipd's config.
fn lab(hint: &str, xdp: AttachMode) -> LbLab {
    let l = LbLab::start_with(
        hint,
        &LbOptions {
            backend_macs: false,
            ..LbOptions::new(xdp, Fwd::Dsr)
        },
    );
    let cfg = std::fs::read_to_string(&l.config_path).expect("read vipd config");
    assert!(
        !cfg.contains("mac:") && !cfg.contains("local:"),
        "the lab must not name MACs or the local backend:\n{cfg}"
    );
    l
}

fn wait_status(l: &LbLab, timeout: Duration, what: &str, ok: impl Fn(&Status) -> bool) {
    poll_until(
        timeout,
        || {
            let last = l
                .try_status_of("lb")
                .map(|s| s.render())
                .unwrap_or_else(|e| e);
            format!("{what}; lb's status:\n{last}\n{}", l.vipd.logs())
        },
        || l.try_status_of("lb").is_ok_and(|s| ok(&s)),
    );
}

/// The time (unix seconds) of vipd's first "neighbour changed" log line
/// for backend `a`: tracing's RFC 3339 UTC stamp at the line's start
/// (`bench::reaction::parse_timestamp`).
fn repointed_at(logs: &str, a: IpAddr) -> Option<f64> {
    let needle = format!("backend={a} ");
    logs.lines()
        .find(|l| l.contains("neighbour changed") && l.contains(&needle))
        .and_then(|l| l.split_whitespace().next())
        .and_then(parse_timestamp)
}

/// The stamp itself is `parse_timestamp`'s (its tests in
/// `bench::reaction`); this is which line and which backend.
#[test]
fn the_repoint_time_is_read_from_the_backends_log_line() {
    let logs = "2026-12-07T11:56:25.5Z  WARN vip_userspace::agent: neighbour changed: re-pointed backend=fd77::13 from=a to=b\n";
    assert_eq!(
        repointed_at(logs, "fd77::13".parse().expect("addr")),
        Some(1_796_644_585.5)
    );
    assert_eq!(repointed_at(logs, "fd77::1".parse().expect("addr")), None);
}

/// Until every backend of every service is up and serving (the MACs
/// resolved).
fn wait_all_serving(l: &LbLab) {
    wait_status(l, Duration::from_secs(10), "every backend up", |s| {
        s.services
            .iter()
            .all(|svc| svc.backends.iter().all(|b| b.state == "up" && b.serving))
    });
}

/// Every backend row of every service for `addr`: (state, serving).
fn rows(s: &Status, addr: IpAddr) -> Vec<(String, bool)> {
    s.services
        .iter()
        .flat_map(|svc| &svc.backends)
        .filter(|b| b.address.ip() == addr)
        .map(|b| (b.state.clone(), b.serving))
        .collect()
}

/// (a) The dsr lab with no `mac:` lines serves through the VIP, over both
/// families, and the LB's kernel holds the MACs vipd uses.
#[test]
fn dsr_without_mac_lines_serves_through_the_vip() {
    let l = lab("ng-serve", AttachMode::Native);
    wait_all_serving(&l);
    let seen = l.answering(60);
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["be1", "be2", "be3"],
        "every backend answers through the VIP"
    );
    for be in ["be1", "be2", "be3"] {
        let n = l.lab.node(be);
        assert_eq!(
            l.lab.neighbour("lb", n.ipv4.into()).as_deref(),
            Some(n.mac_string().as_str()),
            "the LB resolved {be}"
        );
    }
    let m = l.metrics();
    let stuck: Vec<_> = m
        .iter()
        .filter(|(k, v)| k.contains("state=\"no_neighbour\"") && **v != 0.0)
        .collect();
    assert!(stuck.is_empty(), "backends without a neighbour: {stuck:?}");
}

/// (b) be2 changes its MAC under 30 watch streams and a client opening a
/// connection every 50 ms. vipd notices (its probe fails, it asks the
/// kernel afresh), re-points be2 in place, and new flows reach be2 again
/// within a few seconds; the other backends' streams never notice; and
/// after vipd saw the change, nothing more goes to the old MAC.
#[test]
fn a_backend_whose_mac_changes_is_repointed() {
    let l = lab("ng-move", AttachMode::Native);
    wait_all_serving(&l);
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let watches = Watches::open(&ns, &cfg, 30).expect("30 watch streams");
    let before = watches.by_server();
    assert!(
        before.get("be2").is_some_and(|v| v.0 > 0),
        "no stream on be2: {before:?}"
    );
    let be2 = l.lab.node("be2").clone();
    let old = be2.mac_string();
    let new = "02:77:00:00:00:99";
    let cap = Capture::start(&l.lab, "be2", &format!("ether dst {old}"));
    let poller = Poller::start(
        &ns,
        &cfg,
        Duration::from_millis(50),
        Duration::from_millis(500),
    );
    std::thread::sleep(Duration::from_millis(500));

    let t_change = Instant::now();
    let epoch_change = epoch_now();
    l.lab
        .sh("be2", &["ip", "link", "set", "dev", "eth0", "address", new]);
    // Both of be2's addresses (IPv4 by ARP, IPv6 by ND) are re-pointed.
    let addrs: [IpAddr; 2] = [be2.ipv4.into(), be2.ipv6.into()];
    // When vipd re-pointed each address, from its log (written after the
    // map write).
    let moved_at = |a: IpAddr| repointed_at(&l.vipd.logs(), a).map(|t| (t * 1e3) as u64);
    poll_until(
        Duration::from_secs(15),
        || format!("be2 re-pointed\n{}", l.vipd.logs()),
        || addrs.iter().all(|a| moved_at(*a).is_some()),
    );
    let seen_ms: Vec<u64> = addrs
        .iter()
        .map(|a| moved_at(*a).expect("re-pointed"))
        .collect();
    let repoint: Vec<f64> = seen_ms
        .iter()
        .map(|ms| *ms as f64 / 1e3 - epoch_change)
        .collect();
    for a in addrs {
        assert_eq!(
            l.lab.neighbour("lb", a).as_deref(),
            Some(new),
            "the LB's kernel has be2's new MAC for {a}"
        );
    }
    // New flows reach be2 again.
    poll_until(
        Duration::from_secs(10),
        || format!("be2 gets no new flows again\n{}", l.vipd.logs()),
        || l.answering(12).contains("be2"),
    );
    let back = t_change.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let attempts = poller.finish();
    let report = watches.report();
    let packets = cap.stop();

    // Nothing to the old MAC once vipd re-pointed the later of the two
    // addresses (its status stamps the change after the map write; 2 ms for
    // the millisecond stamp and the capture's own timestamping).
    let seen = *seen_ms.iter().max().expect("two") as f64 / 1e3;
    let before_seen: Vec<_> = packets
        .iter()
        .filter(|p| p.time >= epoch_change && p.time <= seen)
        .collect();
    assert!(
        !before_seen.is_empty(),
        "the capture saw nothing to the old MAC before the re-point (is it capturing?)"
    );
    let late: Vec<_> = packets
        .iter()
        .filter(|p| p.time > seen + 0.002)
        .cloned()
        .collect();
    assert!(
        late.is_empty(),
        "frames to be2's old MAC {old} after vipd re-pointed it:\n{}",
        dump(&late)
    );
    // The other backends' streams went on untouched; be2's own were kept
    // (same backend, same table slot: only its MAC changed).
    for w in &report {
        assert_eq!(
            w.end,
            End::Open,
            "a stream on {} ended across be2's MAC change",
            w.server
        );
        if w.server != "be2" {
            assert!(
                w.longest_gap < Duration::from_secs(1),
                "a stream on {} stalled for {:?}",
                w.server,
                w.longest_gap
            );
        }
    }
    // A MAC change is not a death: probes that failed on the old MAC, or
    // timed out while the kernel re-resolved it (IPv6 ND goes through
    // DELAY and PROBE first), never take be2 out, which would reset its
    // clients on that family.
    let logs = l.vipd.logs();
    let downs: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("backend down") || line.contains("backend not ready"))
        .filter(|line| {
            addrs
                .iter()
                .any(|a| line.contains(&format!("backend={}", std::net::SocketAddr::new(*a, PORT))))
        })
        .collect();
    assert!(
        downs.is_empty(),
        "be2 was taken out across its MAC change:\n{}",
        downs.join("\n")
    );
    let failed = attempts
        .iter()
        .filter(|a| a.at > t_change && a.result.is_err())
        .count();
    eprintln!(
        "neigh: be2 re-pointed {:.3} s (IPv4) and {:.3} s (IPv6) after its MAC changed; new flows on be2 again within {:.3} s (checked after both re-points); {} frames to the old MAC before, 0 after; {failed} of {} new connections failed meanwhile (those Maglev sent to be2 before the re-point)",
        repoint[0],
        repoint[1],
        back.as_secs_f64(),
        before_seen.len(),
        attempts.iter().filter(|a| a.at > t_change).count(),
    );
    assert!(
        repoint.iter().all(|r| *r < 5.0),
        "re-pointing took {repoint:?} s; a probe failure should trigger it within about 2 s"
    );
}

/// (c) A backend whose address nobody answers (ARP and ND go unanswered):
/// it is "no_neighbour" in status and metrics, has no Maglev slot, and
/// every new connection through the VIP reaches one of the others; none
/// hangs.
#[test]
fn an_unresolvable_backend_is_not_served() {
    let l = lab("ng-silent", AttachMode::Skb);
    wait_all_serving(&l);
    // A fourth backend on the segment with no host behind it, added by a
    // reload (the file watcher picks it up).
    let silent: IpAddr = "10.77.0.99".parse().expect("ip");
    let text = std::fs::read_to_string(&l.config_path).expect("read vipd config");
    let first = text.find("    backends:\n").expect("a backends list") + "    backends:\n".len();
    let mut edited = text.clone();
    edited.insert_str(first, &format!("      - address: \"{silent}\"\n"));
    std::fs::write(&l.config_path, edited).expect("write vipd config");
    l.vipd
        .wait_for_logs("configuration reloaded", Duration::from_secs(10));
    wait_status(
        &l,
        Duration::from_secs(15),
        "the silent backend shown",
        |s| rows(s, silent) == [("no_neighbour".to_owned(), false)],
    );
    let series = format!("vipd_backend_state{{backend=\"{silent}:6443\",state=\"no_neighbour\"}}");
    poll_until(
        Duration::from_secs(5),
        || format!("{series} is not 1: {:?}", l.metric(&series)),
        || l.metric(&series) == Some(1.0),
    );
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let poller = Poller::start(
        &ns,
        &cfg,
        Duration::from_millis(20),
        Duration::from_millis(500),
    );
    std::thread::sleep(Duration::from_secs(4));
    let attempts = poller.finish();
    let failed: Vec<_> = attempts.iter().filter(|a| a.result.is_err()).collect();
    assert!(
        attempts.len() > 50 && failed.is_empty(),
        "{} of {} connections through the VIP failed with a silent backend in the list: {failed:?}",
        failed.len(),
        attempts.len()
    );
    let answered: std::collections::BTreeSet<String> = attempts
        .iter()
        .filter_map(|a| a.result.clone().ok())
        .collect();
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        ["be1", "be2", "be3"]
    );
    // Still the same a probe interval later: vipd keeps asking, nobody
    // answers, nothing is sent to it.
    let s = l.status_of("lb");
    assert_eq!(rows(&s, silent), [("no_neighbour".to_owned(), false)]);
    assert!(
        l.vipd.logs().contains("10.77.0.99"),
        "vipd's log names the silent backend"
    );
    let rendered = s.render();
    assert!(
        rendered.contains("no_neighbour"),
        "`vipd status` shows it:\n{rendered}"
    );
}
