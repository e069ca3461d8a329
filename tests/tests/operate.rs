//! What an operator reads from a running vipd, against the real agent in
//! namespaces: `/metrics` scraped and parsed while traffic flows and a
//! backend fails, `vipd status` (table and JSON) from the agent itself, and
//! the failover a backup records when the master dies.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use vip_tests::{
    keepalived::VrrpState,
    netns::{Lab, VIP_V4, in_netns},
    scenario::{Fwd, LbLab, LbOptions, parse_metrics},
    standin::{HttpsConn, client_config},
    vipd_bin,
    vrrpd::{VipdVrrp, VipdVrrpConf},
};
use vip_userspace::{dataplane::kernel::AttachMode, status::Status};

/// `vipd status` in `node` against the agent there, as JSON.
fn status_json(lab: &Lab, node: &str, config: &str) -> Status {
    let bin = vipd_bin();
    let out = lab.sh(
        node,
        &[
            bin.to_str().expect("utf-8"),
            "status",
            "--config",
            config,
            "--output",
            "json",
        ],
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("vipd status -o json: {e}\n{out}"))
}

fn wait_status(
    lab: &Lab,
    node: &str,
    config: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&Status) -> bool,
) -> Status {
    let end = Instant::now() + timeout;
    loop {
        let s = status_json(lab, node, config);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{what}: not within {timeout:?}; last status:\n{}",
            s.render()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_and_status_follow_traffic_and_a_failing_backend() {
    let l = LbLab::start_with(
        "operate",
        &LbOptions {
            vrrp: true,
            // Closed flows linger 1 s, so the 10 s sweep finds some to delete.
            extra: "nat: { closing_s: 1 }\n".into(),
            ..LbOptions::new(AttachMode::Skb, Fwd::Nat)
        },
    );
    let cfg = l.config_path.to_str().expect("utf-8").to_owned();
    let s = wait_status(&l.lab, "lb", &cfg, "master", Duration::from_secs(5), |s| {
        !s.vrrp.is_empty() && s.vrrp.iter().all(|v| v.state == "master")
    });
    assert_eq!(s.vrrp.len(), 2, "one router per family: {s:?}");
    // The node's own connections do not leave from the VIP (an IPv6 /128
    // would win source selection over the node's /64 unless deprecated).
    let be1_v6 = l.lab.node("be1").ipv6.to_string();
    let route = l.lab.sh("lb", &["ip", "-6", "route", "get", &be1_v6]);
    let own = l.lab.node("lb").ipv6.to_string();
    assert!(
        route.contains(&format!("src {own} ")),
        "the node's IPv6 source must be its own address, not the VIP: {route}"
    );
    assert!(
        s.services
            .iter()
            .all(|svc| svc.vip_here && svc.mode == "nat")
    );
    assert_eq!(s.flows.capacity, 262_144);

    // One kept-alive connection, then 30 short ones.
    let ns = l.lab.node("client").ns.clone();
    let ca = l.pki.ca_pem();
    let mut kept = in_netns(&ns, || {
        HttpsConn::connect(
            LbLab::vip_addr(false),
            "kubernetes",
            client_config(&ca, None),
            Duration::from_secs(3),
        )
    })
    .expect("kept-alive connection through the VIP");
    assert_eq!(kept.get("/whoami").expect("GET /whoami").status, 200);
    let answered = l.answering(30);
    assert_eq!(
        answered.len(),
        3,
        "30 new connections through the VIP reached {answered:?}, not all three backends"
    );

    // The sweep counts the live flow and deletes the closed ones; status
    // and metrics show both.
    let s = wait_status(
        &l.lab,
        "lb",
        &cfg,
        "a sweep counting the kept-alive flow and deleting closed ones",
        Duration::from_secs(25),
        |s| s.flows.entries.is_some_and(|n| n >= 1) && s.flows.swept >= 20,
    );
    let svc = &s.services[0];
    let flows: u64 = svc.backends.iter().filter_map(|b| b.flows).sum();
    let new_flows: u64 = svc.backends.iter().map(|b| b.new_flows).sum();
    assert!(flows >= 1, "the kept-alive flow is live: {}", s.render());
    assert!(new_flows >= 31, "31 connections: {}", s.render());
    assert!(
        svc.backends
            .iter()
            .all(|b| b.state == "up" && b.probe_latency_ms.is_some_and(|ms| ms < 1000.0)),
        "{}",
        s.render()
    );

    let m = l.metrics();
    let be1 = l.backend("be1").to_string();
    for (series, want) in [
        (
            "vipd_vrrp_state{family=\"ipv4\",state=\"master\"}".to_owned(),
            1.0,
        ),
        (
            "vipd_vrrp_state{family=\"ipv4\",state=\"backup\"}".to_owned(),
            0.0,
        ),
        ("vipd_vrrp_priority{family=\"ipv4\"}".to_owned(), 150.0),
        ("vipd_conntrack_capacity".to_owned(), 262_144.0),
        (format!("vipd_backend_serving{{backend=\"{be1}\"}}"), 1.0),
        (
            format!("vipd_backend_state{{backend=\"{be1}\",state=\"up\"}}"),
            1.0,
        ),
        (format!("vipd_cert_san_ok{{backend=\"{be1}\"}}"), 1.0),
    ] {
        assert_eq!(m.get(&series), Some(&want), "{series}");
    }
    assert!(sum(&m, "vipd_backend_new_flows_total{") >= 31.0);
    assert!(m["vipd_conntrack_entries"] >= 1.0);
    assert!(m["vipd_conntrack_swept_total"] >= 20.0);
    assert!(sum(&m, "vipd_dataplane_packets_total{reason=\"tx_nat\"") > 0.0);
    assert!(sum(&m, "vipd_backend_bytes_total{") > 0.0);
    assert!(m[&format!("vipd_probe_duration_seconds_count{{backend=\"{be1}\"}}")] >= 1.0);
    assert!(m[&format!("vipd_cert_expiry_seconds{{backend=\"{be1}\"}}")] > 86_400.0);
    assert!(m["vipd_vrrp_adverts_sent_total{family=\"ipv4\"}"] > 0.0);

    // be1 turns not ready: status says when and why, metrics count it.
    l.control("be1", "readyz", "503");
    let s = wait_status(
        &l.lab,
        "lb",
        &cfg,
        "be1 down",
        Duration::from_secs(5),
        |s| {
            s.services[0]
                .backends
                .iter()
                .any(|b| b.address.to_string() == be1 && b.state == "down")
        },
    );
    let b = s.services[0]
        .backends
        .iter()
        .find(|b| b.address.to_string() == be1)
        .expect("be1");
    assert!(!b.serving);
    assert_eq!(b.last_probe.as_deref(), Some("http_status"));
    let change = b.last_change.as_ref().expect("be1's change is recorded");
    assert_eq!(
        (change.to.as_str(), change.reason.as_str()),
        ("down", "http_status")
    );
    let m = l.metrics();
    assert_eq!(
        m.get(&format!(
            "vipd_backend_state{{backend=\"{be1}\",state=\"down\"}}"
        )),
        Some(&1.0)
    );
    assert!(
        m[&format!("vipd_probe_failures_total{{backend=\"{be1}\",reason=\"http_status\"}}")] >= 2.0
    );

    // The table, as an operator reads it.
    let bin = vipd_bin();
    let table = l.lab.sh(
        "lb",
        &[bin.to_str().expect("utf-8"), "status", "--config", &cfg],
    );
    assert!(
        table.contains("VRRP ipv4 vrid 51: MASTER, priority 150"),
        "{table}"
    );
    let be1_row = table
        .lines()
        .find(|r| r.trim_start().starts_with(&be1))
        .unwrap_or_else(|| panic!("no be1 row:\n{table}"));
    assert!(
        be1_row.contains("down") && be1_row.contains("http_status"),
        "{be1_row}"
    );
    // The kept-alive connection saw none of this.
    assert_eq!(kept.get("/whoami").expect("kept-alive GET").status, 200);

    // Nothing listens on the address given: a clear error, non-zero exit.
    let out = l.lab.try_sh(
        "lb",
        &[
            bin.to_str().expect("utf-8"),
            "status",
            "--address",
            "127.0.0.1:1",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no vipd answers on 127.0.0.1:1"), "{err}");
}

#[test]
fn a_backup_records_the_failover_it_made() {
    let lab = Lab::new("opfail", &["n1", "n2"]);
    let vip = IpAddr::V4(VIP_V4);
    let conf = |p| VipdVrrpConf {
        announce_count: 1,
        ..VipdVrrpConf::new(51, p, &[vip])
    };
    let n1 = VipdVrrp::start(&lab, "n1", &conf(150));
    n1.wait_state(VrrpState::Master, Duration::from_secs(5));
    let n2 = VipdVrrp::start(&lab, "n2", &conf(100));
    let cfg2 = n2.conf_path().to_str().expect("utf-8").to_owned();
    let n1_addr = IpAddr::V4(lab.node("n1").ipv4);
    let s = wait_status(&lab, "n2", &cfg2, "n1 heard", Duration::from_secs(5), |s| {
        s.vrrp[0].master == Some(n1_addr)
    });
    let v = &s.vrrp[0];
    assert_eq!(v.state, "backup");
    assert_eq!(v.peers.len(), 1, "{v:?}");
    assert_eq!((v.peers[0].address, v.peers[0].priority), (n1_addr, 150));
    assert!(v.last_failover.is_none());

    n1.kill9();
    let s = wait_status(
        &lab,
        "n2",
        &cfg2,
        "n2 master",
        Duration::from_secs(5),
        |s| s.vrrp[0].state == "master",
    );
    let v = &s.vrrp[0];
    assert_eq!(v.master, Some(v.source));
    let f = v
        .last_failover
        .as_ref()
        .unwrap_or_else(|| panic!("no failover recorded:\n{}", s.render()));
    assert_eq!(f.from, n1_addr);
    // RFC 9568 6.1: Master_Down_Interval = 3 x 100 ms + skew (256-100)/256 x
    // 100 ms = 361 ms after the last advert; the kill falls anywhere in the
    // advert interval, and the timer runs on a busy machine.
    assert!(
        (300..2000).contains(&f.took_ms),
        "failover took {} ms:\n{}",
        f.took_ms,
        s.render()
    );
    let change = v.last_change.as_ref().expect("change");
    assert_eq!(
        (change.from.as_str(), change.to.as_str()),
        ("backup", "master")
    );

    // The histogram has it once.
    let (code, body) = in_netns(&lab.node("n2").ns, || {
        vip_userspace::status::get(
            "127.0.0.1:9590".parse().expect("address"),
            "/metrics",
            Duration::from_secs(5),
        )
    })
    .expect("GET /metrics from n2");
    assert_eq!(code, 200, "{body}");
    let m = parse_metrics(&body);
    let count = m
        .get("vipd_vrrp_failover_duration_seconds_count{family=\"ipv4\"}")
        .unwrap_or_else(|| panic!("no failover histogram:\n{body}"));
    assert_eq!(*count, 1.0);
    let table = lab.sh(
        "n2",
        &[
            vipd_bin().to_str().expect("utf-8"),
            "status",
            "--config",
            &cfg2,
        ],
    );
    assert!(
        table.contains(&format!("ms, from {n1_addr}")),
        "the table names the failover:\n{table}"
    );
}

/// Issue 16 item 5: vipd reads every apiserver's `GET /version` over the
/// probe's TLS, shows it per backend (status, `vipd_backend_version_info`)
/// and warns (log, status, `vipd_apiserver_version_skew`) when they are more
/// than one minor version apart, as Kubernetes' version-skew policy allows
/// between the apiservers of a cluster: 1.31 and 1.33 warn, 1.31 and 1.32
/// do not.
#[test]
fn apiserver_version_skew_is_shown_and_warned() {
    for (hint, versions, skewed) in [
        ("skew", ["v1.31.2", "v1.33.0", "v1.31.2"], true),
        ("noskew", ["v1.31.2", "v1.32.0", "v1.32.0"], false),
    ] {
        let l = LbLab::start_with(
            hint,
            &LbOptions {
                git_versions: versions,
                ..LbOptions::new(AttachMode::Skb, Fwd::Nat)
            },
        );
        let cfg = l.config_path.to_str().expect("utf-8").to_owned();
        let s = wait_status(
            &l.lab,
            "lb",
            &cfg,
            "every backend's version read",
            Duration::from_secs(10),
            |s| {
                s.services
                    .iter()
                    .flat_map(|svc| &svc.backends)
                    .all(|b| b.version.is_some())
            },
        );
        let want: BTreeMap<IpAddr, &str> = vip_tests::scenario::BACKENDS
            .iter()
            .zip(versions)
            .flat_map(|(be, v)| {
                let n = l.lab.node(be);
                [(IpAddr::V4(n.ipv4), v), (IpAddr::V6(n.ipv6), v)]
            })
            .collect();
        for b in s.services.iter().flat_map(|svc| &svc.backends) {
            assert_eq!(
                b.version.as_deref(),
                Some(want[&b.address.ip()]),
                "{hint}: {}",
                b.address
            );
        }
        assert_eq!(
            s.version_skew.is_some(),
            skewed,
            "{hint}: {:?}",
            s.version_skew
        );
        let table = s.render();
        assert_eq!(
            table.contains("WARNING: apiserver version skew"),
            skewed,
            "{hint}:\n{table}"
        );
        if skewed {
            let w = s.version_skew.as_deref().unwrap_or_default();
            assert!(w.contains("v1.31.2") && w.contains("v1.33.0"), "{w}");
        }
        let m = l.metrics();
        assert_eq!(
            m.get("vipd_apiserver_version_skew"),
            Some(&f64::from(u8::from(skewed))),
            "{hint}"
        );
        let be2 = format!("{}:6443", l.lab.node("be2").ipv4);
        assert_eq!(
            m.get(&format!(
                "vipd_backend_version_info{{backend=\"{be2}\",git_version=\"{}\"}}",
                versions[1]
            )),
            Some(&1.0),
            "{hint}: {m:?}"
        );
        let logs = l.vipd.logs();
        assert_eq!(
            logs.contains("apiserver version skew"),
            skewed,
            "{hint}:\n{logs}"
        );
    }
}
