//! The capability set of the deploy manifests, proven on the real vipd: it
//! runs with exactly the `capabilities.add` of deploy/daemonset.yaml (as uid
//! 0 with no_new_privs, through setpriv, which is what a container runtime
//! gives `drop: [ALL]` plus that list), elects itself VRRP master, holds
//! the VIP and forwards through it, in mode dsr and mode nat; and with any
//! one capability of the set removed it fails, each with the error that
//! names the missing one. Needs root; run by `cargo xtask test`.
//!
//! The set is read from the manifest, so this tests what is deployed;
//! vip-userspace/tests/deploy.rs checks that the static pod and the systemd
//! unit carry the same set.

use std::{net::IpAddr, time::Duration};

use vip_tests::{
    container::{assert_runs_with, manifest_caps},
    netns::{Lab, VIP_V4, VIP_V6, poll_until},
    scenario::{Fwd, LbLab, LbOptions, setpriv_args},
};
use vip_userspace::dataplane::kernel::AttachMode;

/// VRRP elects the lab's only vipd master for both families; it adds both
/// VIPs and its metrics say master.
fn assert_vrrp_holds_the_vips(l: &LbLab) {
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        l.lab.wait_addr("lb", vip, true, Duration::from_secs(5));
    }
    for family in ["ipv4", "ipv6"] {
        let series = format!("vipd_vrrp_state{{family=\"{family}\",state=\"master\"}}");
        // Metrics are copied in once a second.
        poll_until(
            Duration::from_secs(5),
            || format!("{series} is not 1:\n{}", l.vipd.logs()),
            || l.metric(&series) == Some(1.0),
        );
    }
}

/// New connections through the IPv4 VIP reach all three backends, and the
/// client reached the VIP at the LB's MAC (VRRP's address, answered by ARP).
fn assert_traffic_through_the_vip(l: &LbLab) {
    let seen = l.answering(30);
    assert_eq!(
        seen.len(),
        3,
        "30 new connections through the VIP reached {seen:?}, not all three backends\n{}",
        l.vipd.logs()
    );
    let lb_mac = l.lab.node("lb").mac_string();
    assert_eq!(
        l.lab.neighbour("client", IpAddr::V4(VIP_V4)).as_deref(),
        Some(lb_mac.as_str()),
        "the client does not reach the VIP at the LB's MAC"
    );
}

fn lab_with_manifest_caps(hint: &str, fwd: Fwd) -> (LbLab, Vec<String>) {
    let caps = manifest_caps();
    let mut opts = LbOptions::new(AttachMode::Skb, fwd);
    opts.vrrp = true;
    opts.caps = Some(caps.clone());
    (LbLab::start_with(hint, &opts), caps)
}

/// Mode dsr with VRRP (IPv4 and IPv6: raw protocol-112 sockets, gratuitous
/// ARP, unsolicited NA), then a restart that adopts the pinned maps and
/// link, then a SIGTERM stop that gives the VIPs up: all with the set.
#[test]
fn dsr_with_vrrp_runs_with_the_manifest_capabilities() {
    let (mut l, caps) = lab_with_manifest_caps("caps-dsr", Fwd::Dsr);
    assert_runs_with(l.vipd.pid(), &caps);
    assert_vrrp_holds_the_vips(&l);
    assert_traffic_through_the_vip(&l);

    l.restart_vipd();
    assert_runs_with(l.vipd.pid(), &caps);
    assert!(
        l.vipd.logs().contains("mode=adopted"),
        "the restarted vipd did not adopt the pinned link:\n{}",
        l.vipd.logs()
    );
    assert_vrrp_holds_the_vips(&l);
    assert_traffic_through_the_vip(&l);

    l.stop_vipd();
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        l.lab.wait_addr("lb", vip, false, Duration::from_secs(5));
    }
}

/// Mode nat: besides the above, vipd writes the interface's forwarding
/// (IPv4 and IPv6), accept_local and send_redirects sysctls (and all's
/// send_redirects) and reserves its ports in ip_local_reserved_ports, each
/// checked here (NET_ADMIN in the namespace, uid 0 owning /proc/sys). In a
/// container /proc/sys is
/// read-only whatever the capabilities, which is why the manifests say
/// mode nat runs with vipd.service.
#[test]
fn nat_with_vrrp_runs_with_the_manifest_capabilities() {
    let (l, caps) = lab_with_manifest_caps("caps-nat", Fwd::Nat);
    assert_runs_with(l.vipd.pid(), &caps);
    assert_vrrp_holds_the_vips(&l);
    assert_traffic_through_the_vip(&l);
    let sysctl = |key: &str| l.lab.sh("lb", &["sysctl", "-n", key]).trim().to_owned();
    for (key, want) in [
        ("net.ipv4.conf.eth0.forwarding", "1"),
        ("net.ipv6.conf.eth0.forwarding", "1"),
        ("net.ipv4.conf.eth0.accept_local", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.eth0.send_redirects", "0"),
    ] {
        assert_eq!(sysctl(key), want, "vipd did not set {key} to {want}");
    }
    let (lo, hi) = vip_userspace::config::NatSettings::default().port_range();
    let reserved = sysctl("net.ipv4.ip_local_reserved_ports");
    assert!(
        reserved.split(',').any(|r| r == format!("{lo}-{hi}")),
        "vipd did not reserve its NAT ports {lo}-{hi}: {reserved:?}"
    );
}

/// What vipd says when one capability is missing (every capability of the
/// manifest must be here: the reason it is in the set).
fn failure_without(cap: &str) -> &'static str {
    match cap {
        // BPF_MAP_CREATE needs CAP_BPF: the first map fails.
        "bpf" => "failed to create map",
        // BPF_PROG_LOAD of an XDP program needs CAP_NET_ADMIN (or SYS_ADMIN);
        // attaching and the VIP addresses would need it next.
        "net_admin" => "the BPF_PROG_LOAD syscall returned Operation not permitted",
        // Without CAP_PERFMON the verifier refuses packet pointer
        // arithmetic (`data_end - data`, or an offset added to a packet
        // pointer, whichever it meets first), and vipd names the capability.
        "perfmon" => "vipd needs CAP_PERFMON",
        // VRRP's raw IP protocol 112 socket (then AF_PACKET for ARP).
        "net_raw" => "vipd needs CAP_NET_RAW",
        other => panic!(
            "deploy/daemonset.yaml adds capability {other:?}, for which this test knows no use: \
             add what vipd does without it here, or drop it from the manifests"
        ),
    }
}

/// Each capability of the set is needed: without it vipd does not start,
/// and says which operation failed. The full set, with the same config,
/// starts (the control).
#[test]
fn every_manifest_capability_is_needed() {
    let caps = manifest_caps();
    let lab = Lab::new("caps-each", &["lb"]);
    let config = lab.dir().join("vipd.yaml");
    // VRRP and XDP, the parts that need privileges; nothing behind the VIP.
    std::fs::write(
        &config,
        format!(
            "interface: eth0\nxdp_mode: skb\nmetrics_listen: null\nvrrp: {{ vrid: 51, priority: 150 }}\n\
             services:\n  - vip: \"{VIP_V4}\"\n    mode: dsr\n    probe: {{ type: tcp }}\n    backends:\n\
             \x20     - {{ address: 10.77.0.50, mac: \"02:77:00:00:00:50\" }}\n"
        ),
    )
    .expect("write config");
    let vipd = vip_tests::vipd_bin();
    let run = |caps: &[String]| {
        let mut args = setpriv_args(caps);
        args.extend(
            [
                vipd.to_str().expect("utf-8"),
                "run",
                "--config",
                config.to_str().expect("utf-8"),
                "--no-pin",
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.spawn("lb", "setpriv", &args, &[("RUST_LOG", "info")])
    };

    let full = run(&caps);
    full.wait_for_stdout("vipd ready", Duration::from_secs(30));
    assert_runs_with(full.pid(), &caps);
    let status = full.term_within(Duration::from_secs(10), "vipd with the full set");
    assert!(status.success(), "{}", full.logs());

    for cap in &caps {
        let without: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        let p = run(&without);
        let status = p.wait_timeout(Duration::from_secs(30)).unwrap_or_else(|| {
            panic!(
                "vipd without {cap} still runs after 30 s: the capability is not needed\n{}",
                p.logs()
            )
        });
        assert!(
            !status.success(),
            "vipd without {cap} exited successfully\n{}",
            p.logs()
        );
        let want = failure_without(cap);
        assert!(
            p.logs().contains(want),
            "vipd without {cap} failed, but not with {want:?}\n{}",
            p.logs()
        );
        // The kernel's words name no capability; vipd's must.
        let named = format!("vipd needs CAP_{}", cap.to_uppercase());
        assert!(
            p.logs().contains(&named),
            "vipd without {cap} does not say {named:?}\n{}",
            p.logs()
        );
    }
}
