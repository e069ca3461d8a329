//! `vipd status --group` against two real vipd nodes in namespaces (issue 16
//! item 6): the normal case shows both views agreeing and one master; a
//! backend that one LB cannot probe (a blackhole route in that LB's
//! namespace only) shows as a disagreement naming the node and the backend;
//! a node that does not answer is a row, within the timeout.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use vip_tests::{
    netns::poll_until,
    scenario::{Fwd, LbLab, LbOptions},
    vipd_bin,
};
use vip_userspace::dataplane::kernel::AttachMode;

/// `vipd status --group` run in `node`'s namespace as that node (NODE_NAME,
/// as the DaemonSet sets it), with `args` after it.
fn group(l: &LbLab, node: &str, args: &[&str]) -> Output {
    let bin = vipd_bin();
    let env = format!("NODE_NAME={node}");
    let cfg = l.config_path.to_str().expect("utf-8").to_owned();
    let mut full = vec![
        "env",
        &env,
        bin.to_str().expect("utf-8"),
        "status",
        "--group",
        "--config",
        &cfg,
    ];
    full.extend(args);
    l.lab.try_sh(node, &full)
}

fn json(o: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "vipd status --group --json: {e}\n{text}\n{}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn group_status_shows_agreement_then_the_backend_one_lb_cannot_reach() {
    // Both LBs from one file with `metrics_listen: node:9590` (each serves
    // status on its own address) and no peer list: multicast VRRP, so lb2
    // is found only as the router lb has heard.
    let l = LbLab::start_with(
        "grp",
        &LbOptions {
            second_lb: true,
            one_file: true,
            probe: "interval: 200ms, timeout: 200ms, jitter: 20ms, fall: 2, rise: 2".into(),
            ..LbOptions::new(AttachMode::Skb, Fwd::Dsr)
        },
    );
    let be3 = l.backend("be3").to_string();

    // The normal case, asked on the backup: lb2 finds lb as the master it
    // hears. Both answered, one master (lb, priority 150), the same serving
    // backends everywhere. Polled: lb2 may still be probing.
    let end = Instant::now() + Duration::from_secs(15);
    let last = loop {
        let o = group(&l, "lb2", &[]);
        let t = text(&o);
        if o.status.success()
            && t.contains("2 nodes asked, 2 answered")
            && t.contains("one master: lb for ipv4 vrid 51")
        {
            break t;
        }
        assert!(
            Instant::now() < end,
            "the group never agreed with lb master:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        last.contains("ok: all 2 nodes answered and agree"),
        "{last}"
    );
    assert!(!last.contains("WARNING"), "{last}");
    let header = last
        .lines()
        .find(|r| r.contains("BACKEND"))
        .unwrap_or_else(|| panic!("no side-by-side table:\n{last}"));
    assert!(
        header.contains(" lb2 ") && header.ends_with(" lb"),
        "{header}"
    );
    let j = json(&group(&l, "lb2", &["--json"]));
    assert_eq!(j["nodes"].as_array().map(Vec::len), Some(2), "{j:#}");
    assert_eq!(j["nodes"][0]["label"], "lb2", "{j:#}");
    assert_eq!(
        j["nodes"][0]["status"]["vrrp"][0]["state"], "backup",
        "{j:#}"
    );
    assert_eq!(j["nodes"][1]["label"], "lb", "{j:#}");
    assert_eq!(
        j["nodes"][1]["status"]["vrrp"][0]["state"], "master",
        "{j:#}"
    );
    assert_eq!(
        j["elections"][0]["masters"],
        serde_json::json!(["lb"]),
        "{j:#}"
    );
    assert_eq!(j["disagreements"], serde_json::json!([]), "{j:#}");
    assert_eq!(j["warnings"], serde_json::json!([]), "{j:#}");
    // The master hears no backup (RFC 9568 6.4.3: a backup does not
    // advertise) and the file names no peer: it says it found only itself.
    let o = group(&l, "lb", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("WARNING: only one node was asked (lb)"),
        "{}",
        text(&o)
    );
    // Named with --peers (addresses only: the port is metrics_listen's).
    let lb_ip = l.lab.node("lb").ipv4.to_string();
    let lb2_ip = l.lab.node("lb2").ipv4.to_string();
    let o = group(&l, "lb", &["--peers", &format!("{lb_ip},{lb2_ip}")]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("one master: lb for ipv4 vrid 51"),
        "{}",
        text(&o)
    );

    // lb2 alone loses its path to be3: a blackhole route in its namespace,
    // so its probes fail while lb's keep passing.
    let be3_ip = l.lab.node("be3").ipv4.to_string();
    l.lab.sh(
        "lb2",
        &["ip", "route", "add", "blackhole", &format!("{be3_ip}/32")],
    );
    poll_until(
        Duration::from_secs(10),
        || "lb2 never saw be3 down".into(),
        || {
            l.try_status_of("lb2").is_ok_and(|s| {
                s.services
                    .iter()
                    .flat_map(|s| &s.backends)
                    .any(|b| b.address.to_string() == be3 && !b.serving)
            })
        },
    );
    let o = group(&l, "lb2", &["--json"]);
    assert_eq!(o.status.code(), Some(2), "it warned: {}", text(&o));
    let j = json(&o);
    let d = &j["disagreements"];
    assert_eq!(
        d.as_array().map(Vec::len),
        Some(1),
        "only the IPv4 service: {j:#}"
    );
    assert_eq!(d[0]["backends"][0]["backend"], be3.as_str(), "{j:#}");
    assert_eq!(d[0]["backends"][0]["serving_on"], serde_json::json!(["lb"]));
    assert_eq!(
        d[0]["backends"][0]["not_serving_on"],
        serde_json::json!(["lb2"])
    );
    // lb2 lists be3 and its probe fails: a probe path, not another list.
    assert_eq!(d[0]["backends"][0]["unlisted_on"], serde_json::json!([]));
    let o = group(&l, "lb2", &[]);
    assert_eq!(o.status.code(), Some(2));
    let t = text(&o);
    assert!(t.contains("WARNING: the nodes disagree"), "{t}");
    assert!(t.contains("DIFFERENT MAGLEV TABLES"), "{t}");
    assert!(
        t.contains(&format!("{be3} serves on lb but NOT on lb2")),
        "{t}"
    );
    // The backend's row, side by side: down on lb2 (first column), up on lb.
    let row = t
        .lines()
        .find(|r| r.trim_start().starts_with(&be3))
        .unwrap_or_else(|| panic!("no row for {be3}:\n{t}"));
    let (on_lb2, on_lb) = row
        .trim_start()
        .trim_start_matches(&be3)
        .trim()
        .split_once("  ")
        .unwrap_or_else(|| panic!("two cells in {row:?}"));
    assert!(on_lb2.starts_with("down"), "{row}");
    assert_eq!(on_lb.trim(), "up", "{row}");
    eprintln!("{t}");

    // A node that does not answer: lb2 stopped, and an address where
    // nothing is (ARP goes unanswered), both named explicitly. Each is a
    // row saying why, within the timeout, and the exit status says so.
    l.lab.sh(
        "lb2",
        &["ip", "route", "del", "blackhole", &format!("{be3_ip}/32")],
    );
    l.vipd2.as_ref().expect("lb2 runs").0.kill();
    let lb = l.metrics_addr_of("lb").to_string();
    let silent = "10.77.0.250";
    assert!(
        l.lab.nodes().iter().all(|n| n.ipv4.to_string() != silent),
        "{silent} must be nobody's"
    );
    let peers = format!("{lb},{lb2_ip},{silent}");
    let start = Instant::now();
    let o = group(&l, "lb", &["--peers", &peers, "--timeout", "1s", "--json"]);
    let took = start.elapsed();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        took < Duration::from_secs(4),
        "asked at once with a 1 s timeout, yet took {took:?}"
    );
    let j = json(&o);
    let nodes = j["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{j:#}");
    assert_eq!(nodes[0]["status"]["node"], "lb", "{j:#}");
    assert!(
        nodes[1]["unreachable"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{j:#}"
    );
    assert!(nodes[2]["unreachable"].is_string(), "{j:#}");
    assert_eq!(j["unreachable"].as_array().map(Vec::len), Some(2), "{j:#}");
    eprintln!("group status with a stopped and a silent node took {took:?}");
}
