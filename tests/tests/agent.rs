//! The agent end to end in a namespace lab: the real vipd probing three
//! apiserver stand-ins over TLS (certificates minted by the test), taking
//! failing ones out of the XDP tables and putting them back, the
//! certificate gate, reloads, and the CA-mismatch fail-open. Needs root;
//! run by `cargo xtask test`.

use std::{collections::BTreeSet, time::Duration};

use vip_tests::{
    certs::TestPki,
    netns::{in_netns, poll_until},
    scenario::{CertKind, Fwd, LbLab, LbOptions, QUICK_PROBE},
    standin::{HttpsConn, client_config},
};
use vip_userspace::dataplane::kernel::AttachMode;

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until vipd's logs hold `needle` at least `n` times.
fn wait_log(l: &LbLab, needle: &str, n: usize, timeout: Duration) {
    poll_until(
        timeout,
        || format!("{n} x {needle:?} in vipd's logs:\n{}", l.vipd.logs()),
        || l.vipd.logs().matches(needle).count() >= n,
    );
}

/// Waits until new connections through the VIP reach exactly `want`.
fn wait_answering(l: &LbLab, want: &[&str]) {
    let want = set(want);
    let mut last = BTreeSet::new();
    let done = (0..40).any(|_| {
        last = l.answering(24);
        if last == want {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(
        done,
        "new connections reach {last:?}, want {want:?}\n{}",
        l.vipd.logs()
    );
}

/// The log line of a backend that stopped answering (its flows get an
/// RST).
fn down_line(l: &LbLab, be: &str, reason: &str) -> String {
    format!(
        "its open connections get an RST backend={} reason={reason}",
        l.backend(be)
    )
}

/// The log line of a backend that answers "not ready" (its flows stay).
fn not_ready_line(l: &LbLab, be: &str, reason: &str) -> String {
    format!(
        "its open connections stay until it closes them backend={} reason={reason}",
        l.backend(be)
    )
}

/// be3's certificate lacks the VIP: it never gets a flow. be1 answers 503,
/// then comes back; be2's /readyz hangs, then comes back; be2 answers 401
/// (auth misconfigured: still used); be2 is killed. Through all of it an
/// open connection to be1 keeps working and new connections go only where
/// the probes say.
#[test]
fn probes_follow_503_hung_401_and_killed_backends() {
    let mut opts = LbOptions::new(AttachMode::Skb, Fwd::Nat);
    opts.certs = [CertKind::Good, CertKind::Good, CertKind::NoVipSan];
    opts.probe = QUICK_PROBE.into();
    let mut l = LbLab::start_with("ag-probe", &opts);

    // The gate reads be3's certificate before vipd is ready.
    let logs = l.vipd.logs();
    assert!(
        logs.contains("certificate lacks names clients use for the VIP")
            && logs.contains(&format!("backend={}", l.backend("be3")))
            && logs.contains("certSANs"),
        "{logs}"
    );
    wait_answering(&l, &["be1", "be2"]);

    // One kept-alive connection on be1, for the rest of the test.
    let cfg = client_config(&l.pki.ca_pem(), None);
    let ns = l.lab.node("client").ns.clone();
    let mut kept = in_netns(&ns, || {
        (0..50)
            .find_map(|_| {
                let mut c = HttpsConn::connect(
                    LbLab::vip_addr(false),
                    "kubernetes",
                    cfg.clone(),
                    Duration::from_secs(3),
                )
                .ok()?;
                let who = c.get("/whoami").ok()?;
                (who.text().trim() == "be1").then_some(c)
            })
            .expect("a connection through the VIP lands on be1")
    });
    let mut kept_alive = |what: &str| {
        let r = in_netns(&ns, || kept.get("/whoami"))
            .unwrap_or_else(|e| panic!("kept-alive connection to be1 after {what}: {e:?}"));
        assert_eq!((r.status, r.text().trim()), (200, "be1"), "after {what}");
    };

    // 503 (an apiserver in its shutdown delay): out of the table after two
    // probes, with the reaction chain measured; its open connections are
    // left for it to finish.
    l.control("be1", "readyz", "503");
    let not_ready = not_ready_line(&l, "be1", "HTTP 503");
    l.vipd.wait_for_logs(&not_ready, Duration::from_secs(5));
    let logs = l.vipd.logs();
    let line = logs
        .lines()
        .find(|x| x.contains(&not_ready))
        .expect("not-ready line");
    assert!(
        line.contains("probe_to_fall_ms=") && line.contains("fall_to_map_ms="),
        "{line}"
    );
    wait_answering(&l, &["be2"]);
    kept_alive("be1's 503");
    l.control("be1", "readyz", "200");
    l.vipd.wait_for_logs(
        &format!(
            "backend up: receives new flows backend={}",
            l.backend("be1")
        ),
        Duration::from_secs(5),
    );
    wait_answering(&l, &["be1", "be2"]);
    kept_alive("be1's 503 and recovery");

    // Hung: the probe times out, and be1's probes go on meanwhile.
    l.control("be2", "readyz", "hang");
    l.vipd.wait_for_logs(
        &down_line(&l, "be2", "timed out (no answer within the probe timeout)"),
        Duration::from_secs(5),
    );
    wait_answering(&l, &["be1"]);
    l.control("be2", "readyz", "200");
    wait_answering(&l, &["be1", "be2"]);
    assert_eq!(
        l.vipd.logs().matches(&down_line(&l, "be1", "")).count(),
        0,
        "a hung be2 must not make be1 look down:\n{}",
        l.vipd.logs()
    );

    // 401: its own state and line, and be2 keeps its flows.
    l.control("be2", "auth", "401");
    l.vipd.wait_for_logs(&format!(
            "auth misconfigured: the apiserver refuses the probe (401); it stays in use. Allow anonymous /readyz (the default) or give probe.client_cert/client_key backend={}",
            l.backend("be2")
        ), Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(600));
    let statuses: BTreeSet<u16> = l
        .ask_vip(24)
        .into_iter()
        .map(|r| r.expect("connection through the VIP").0)
        .collect();
    assert_eq!(
        statuses,
        [200, 401].into(),
        "be2 (401) still gets new flows next to be1 (200)"
    );
    l.control("be2", "auth", "200");
    l.vipd
        .wait_for_logs("the probe is accepted again", Duration::from_secs(5));

    // Killed: refused, out; be1's connection never notices.
    l.standins.remove(1).stop();
    l.vipd.wait_for_logs(
        &down_line(&l, "be2", "connection refused"),
        Duration::from_secs(5),
    );
    wait_answering(&l, &["be1"]);
    kept_alive("be2's death");
    assert!(
        !l.vipd.logs().contains("fail open"),
        "be1 was up throughout:\n{}",
        l.vipd.logs()
    );

    // The same story in the metrics (refreshed once a second).
    let series = |name: &str, be: &str, extra: &str| {
        format!("{name}{{backend=\"{}\"{extra}}}", l.backend(be))
    };
    // (series, lowest, highest) of its value.
    let wants = [
        (
            series("vipd_backend_state", "be2", ",state=\"down\""),
            1.0,
            1.0,
        ),
        (
            series("vipd_backend_state", "be1", ",state=\"up\""),
            1.0,
            1.0,
        ),
        (series("vipd_backend_serving", "be3", ""), 0.0, 0.0),
        (series("vipd_cert_san_ok", "be3", ""), 0.0, 0.0),
        (series("vipd_cert_san_ok", "be1", ""), 1.0, 1.0),
        (
            series("vipd_cert_expiry_seconds", "be1", ""),
            86_400.0,
            f64::MAX,
        ),
        (
            series("vipd_probe_failures_total", "be2", ",reason=\"auth\""),
            2.0,
            f64::MAX,
        ),
        (
            series(
                "vipd_probe_failures_total",
                "be1",
                ",reason=\"http_status\"",
            ),
            2.0,
            f64::MAX,
        ),
        (
            series("vipd_probe_failures_total", "be2", ",reason=\"timeout\""),
            2.0,
            f64::MAX,
        ),
        (
            series("vipd_probe_failures_total", "be2", ",reason=\"refused\""),
            2.0,
            f64::MAX,
        ),
        (
            series("vipd_backend_new_flows_total", "be1", ""),
            10.0,
            f64::MAX,
        ),
        (
            series("vipd_backend_packets_total", "be1", ""),
            100.0,
            f64::MAX,
        ),
        (
            series("vipd_backend_bytes_total", "be1", ""),
            10_000.0,
            f64::MAX,
        ),
    ];
    poll_until(
        Duration::from_secs(5),
        || l.vipd_http("/metrics").1,
        || {
            wants
                .iter()
                .all(|(s, lo, hi)| l.metric(s).is_some_and(|v| (*lo..=*hi).contains(&v)))
        },
    );
    assert_eq!(l.vipd_http("/readyz"), (200, "ok\n".to_owned()));
    assert_eq!(l.vipd_http("/healthz").0, 200);
}

/// vipd's probes trust another CA: every backend fails TLS, and rather
/// than cutting the cluster off vipd forwards to all of them (fail open)
/// with an error naming the setting. Fixing the file (no signal) reloads
/// it; a broken file is refused and the running configuration stays; a
/// reload that drops a backend takes effect.
#[test]
fn ca_mismatch_fails_open_and_reloads_fix_it() {
    let mut opts = LbOptions::new(AttachMode::Skb, Fwd::Dsr);
    opts.probe = QUICK_PROBE.into();
    let stranger = TestPki::new();
    let wrong_ca = std::env::temp_dir().join(format!("vipd-wrong-ca-{}.crt", std::process::id()));
    std::fs::write(&wrong_ca, stranger.ca_pem()).expect("write the wrong CA");
    opts.probe_ca = Some(wrong_ca.clone());
    let l = LbLab::start_with("ag-ca", &opts);
    let _ = std::fs::remove_file(&wrong_ca);

    l.vipd.wait_for_logs(
        "forwarding to all of them (fail open)",
        Duration::from_secs(5),
    );
    let logs = l.vipd.logs();
    assert!(
        logs.contains("reason=TLS: certificate signed by an unknown CA: is probe.ca"),
        "{logs}"
    );
    wait_answering(&l, &["be1", "be2", "be3"]);

    // The right CA, written in place: reloaded without a signal.
    let cfg = std::fs::read_to_string(&l.config_path).expect("read config");
    let fixed = cfg.replace(
        &wrong_ca.display().to_string(),
        &l.ca_path.display().to_string(),
    );
    assert_ne!(cfg, fixed);
    std::fs::write(&l.config_path, &fixed).expect("write config");
    l.vipd
        .wait_for_logs("configuration reloaded", Duration::from_secs(5));
    l.vipd
        .wait_for_logs("fail open is over", Duration::from_secs(5));
    wait_answering(&l, &["be1", "be2", "be3"]);

    // A typo: refused, loudly, and nothing changes.
    std::fs::write(&l.config_path, fixed.replace("xdp_mode:", "xdp_mdoe:")).expect("write config");
    l.vipd.wait_for_logs(
        "configuration reload refused; the running configuration stays",
        Duration::from_secs(5),
    );
    assert!(l.vipd.logs().contains("xdp_mdoe"), "{}", l.vipd.logs());
    assert!(l.vipd.is_running());
    wait_answering(&l, &["be1", "be2", "be3"]);

    // be3 removed by SIGHUP.
    let be3 = l.lab.node("be3");
    let without: String = {
        let mut skip = 0;
        fixed
            .lines()
            .filter(|line| {
                if skip > 0 {
                    skip -= 1;
                    return false;
                }
                if line.contains(&format!("\"{}\"", be3.ipv4))
                    || line.contains(&format!("\"{}\"", be3.ipv6))
                {
                    skip = 1; // its mac line
                    return false;
                }
                true
            })
            .map(|x| format!("{x}\n"))
            .collect()
    };
    assert!(!without.contains(&be3.ipv4.to_string()), "{without}");
    std::fs::write(&l.config_path, &without).expect("write config");
    l.vipd.signal(libc::SIGHUP);
    wait_log(&l, "configuration reloaded", 2, Duration::from_secs(5));
    wait_answering(&l, &["be1", "be2"]);
}

/// With VRRP, a node whose backends all lack the VIP in their certificate
/// refuses to become master and says why; turning the gate to `warn` by
/// reload lets it take the VIP.
#[test]
fn cert_gate_refuses_master_until_told_to_warn() {
    let mut opts = LbOptions::new(AttachMode::Skb, Fwd::Dsr);
    opts.certs = [CertKind::NoVipSan; 3];
    opts.probe = QUICK_PROBE.into();
    opts.vrrp = true;
    let l = LbLab::start_with("ag-gate", &opts);
    let vip = std::net::IpAddr::V4(vip_tests::netns::VIP_V4);
    // One line per family, from each family's router task: wait for both
    // (the IPv6 one may come a few ms after the IPv4 one).
    for reason in [
        "no backend of 10.77.0.100:6443 has a certificate for it",
        "no backend of [fd77::100]:6443 has a certificate for it",
    ] {
        l.vipd.wait_for_logs(reason, Duration::from_secs(5));
    }
    let logs = l.vipd.logs();
    assert!(
        logs.contains("no backend of 10.77.0.100:6443 has a certificate for it")
            && logs.contains("no backend of [fd77::100]:6443 has a certificate for it")
            && logs.contains("kubeadm init phase certs apiserver"),
        "{logs}"
    );
    // Far beyond the master-down interval (about 0.36 s).
    std::thread::sleep(Duration::from_secs(2));
    let logs = l.vipd.logs();
    assert!(
        !l.lab.has_addr("lb", vip),
        "the gate let the VIP on:\n{logs}"
    );
    assert!(!logs.contains("to=master"), "{logs}");
    poll_until(
        Duration::from_secs(3),
        || l.vipd_http("/metrics").1,
        || {
            l.metric("vipd_vrrp_held{family=\"ipv4\"}") == Some(1.0)
                && l.metric("vipd_vrrp_state{family=\"ipv4\",state=\"initialize\"}") == Some(1.0)
                && l.metric("vipd_fail_open{service=\"10.77.0.100:6443\"}") == Some(1.0)
        },
    );

    let cfg = std::fs::read_to_string(&l.config_path).expect("read config");
    std::fs::write(
        &l.config_path,
        format!("cert_gate: {{ on_missing_san: warn }}\n{cfg}"),
    )
    .expect("write config");
    l.vipd.signal(libc::SIGHUP);
    l.vipd
        .wait_for_logs("the hold is lifted", Duration::from_secs(5));
    l.lab.wait_addr("lb", vip, true, Duration::from_secs(3));
    wait_log(&l, "to=master", 2, Duration::from_secs(3));
    poll_until(
        Duration::from_secs(3),
        || l.vipd_http("/metrics").1,
        || {
            l.metric("vipd_vrrp_held{family=\"ipv4\"}") == Some(0.0)
                && l.metric("vipd_vrrp_state{family=\"ipv4\",state=\"master\"}") == Some(1.0)
                && l.metric("vipd_vrrp_became_master_total{family=\"ipv4\"}") == Some(1.0)
                && l.metric("vipd_vrrp_adverts_sent_total{family=\"ipv4\"}")
                    .is_some_and(|v| v > 0.0)
        },
    );
}
