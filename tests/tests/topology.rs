//! Topology tests: the real vipd attached to a veth in a namespace lab, real TCP
//! and TLS from a client namespace through the VIP to apiserver stand-ins, in
//! native and in generic (SKB) XDP mode. Needs root; run by `cargo xtask test`.

use std::{collections::BTreeMap, time::Duration};

use vip_tests::{
    netns::in_netns,
    scenario::{BACKENDS, Fwd, LbLab},
    standin::{HttpsConn, client_config},
};
use vip_userspace::dataplane::kernel::AttachMode;

/// Opens `n` TLS connections to the VIP from the client namespace, asks each who
/// served it, and checks /readyz on the way. Returns connections per backend.
fn spread(l: &LbLab, v6: bool, n: usize) -> BTreeMap<String, usize> {
    let cfg = client_config(&l.pki.ca_pem(), None);
    let addr = LbLab::vip_addr(v6);
    let ns = l.lab.node("client").ns.clone();
    in_netns(&ns, || {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let mut c = HttpsConn::connect(addr, "kubernetes", cfg.clone(), Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connection {i} to {addr} through the VIP: {e:?}"));
            let who = c
                .get("/whoami")
                .unwrap_or_else(|e| panic!("GET /whoami on connection {i}: {e:?}"));
            assert_eq!(who.status, 200, "GET /whoami status");
            let ready = c
                .get("/readyz")
                .unwrap_or_else(|e| panic!("GET /readyz on connection {i}: {e:?}"));
            assert_eq!(
                (ready.status, ready.text()),
                (200, "ok".to_owned()),
                "/readyz through the VIP"
            );
            *seen.entry(who.text().trim().to_owned()).or_insert(0) += 1;
        }
        seen
    })
}

fn carries_tls_and_kubectl(mode: AttachMode, fwd: Fwd, hint: &str) {
    let l = LbLab::start(hint, mode, fwd);
    let want = if mode == AttachMode::Native {
        "(native)"
    } else {
        "(skb)"
    };
    assert!(
        l.vipd.stdout().contains(want),
        "vipd did not attach {want}: {}",
        l.vipd.logs()
    );

    for v6 in [false, true] {
        let seen = spread(&l, v6, 24);
        for name in seen.keys() {
            assert!(
                BACKENDS.contains(&name.as_str()),
                "served by unknown {name:?}"
            );
        }
        assert!(
            seen.len() >= 2,
            "24 connections (v6={v6}) all went to one backend: {seen:?}"
        );
        assert_eq!(seen.values().sum::<usize>(), 24);
    }

    assert_eq!(
        l.kubectl(&["get", "--raw", "/readyz"]).trim(),
        "ok",
        "kubectl get --raw /readyz"
    );
    assert!(
        l.kubectl(&["get", "--raw", "/version"])
            .contains("gitVersion"),
        "kubectl get --raw /version"
    );

    // The program counted what it forwarded (vipd logs counters every second).
    let counter = match fwd {
        Fwd::Dsr => "tx_dsr=",
        Fwd::Nat => "tx_reverse_nat=",
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let logs = l.vipd.logs();
        if logs.contains(counter) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "vipd never reported tx_dsr counters:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The LB's own kernel has no listener on the port: had a packet reached it
    // instead of being forwarded in XDP, the connection would have been reset.
    let listeners = l.lab.sh("lb", &["ss", "-Htln", "sport", "= :6443"]);
    assert!(
        listeners.trim().is_empty(),
        "something listens on the LB: {listeners}"
    );
}

#[test]
fn dsr_native_xdp_carries_tls_and_kubectl() {
    carries_tls_and_kubectl(AttachMode::Native, Fwd::Dsr, "dsr-drv");
}

#[test]
fn dsr_skb_xdp_carries_tls_and_kubectl() {
    carries_tls_and_kubectl(AttachMode::Skb, Fwd::Dsr, "dsr-skb");
}

#[test]
fn nat_native_xdp_carries_tls_and_kubectl() {
    carries_tls_and_kubectl(AttachMode::Native, Fwd::Nat, "nat-drv");
}

#[test]
fn nat_skb_xdp_carries_tls_and_kubectl() {
    carries_tls_and_kubectl(AttachMode::Skb, Fwd::Nat, "nat-skb");
}

/// Stopping vipd detaches the program and removes the VIP it held.
#[test]
fn vipd_stop_removes_vip_and_program() {
    let l = LbLab::start("dsr-stop", AttachMode::Skb, Fwd::Dsr);
    assert!(
        l.lab.ip_addr_show("lb").contains("10.77.0.100/32"),
        "VIP not added"
    );
    assert!(
        l.lab
            .sh("lb", &["ip", "link", "show", "eth0"])
            .contains("xdp"),
        "no XDP on eth0"
    );
    l.vipd.signal(libc::SIGTERM);
    let status = l
        .vipd
        .wait_timeout(Duration::from_secs(10))
        .expect("vipd exits on SIGTERM");
    assert!(
        status.success(),
        "vipd exit status {status}: {}",
        l.vipd.logs()
    );
    assert!(
        !l.lab.ip_addr_show("lb").contains("10.77.0.100/32"),
        "VIP left behind"
    );
    assert!(
        !l.lab
            .sh("lb", &["ip", "link", "show", "eth0"])
            .contains("xdp"),
        "XDP left attached"
    );
}

/// `cargo xtask run`'s lab: starts, carries traffic through XDP, stops by itself
/// and leaves nothing behind (the binary checks its namespaces are gone and
/// fails if vipd never counted forwarded packets).
#[test]
fn lab_runs_and_cleans_up() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vip-lab"))
        .args(["--duration", "4"])
        .env("VIPD_BIN", vip_tests::vipd_bin())
        .output()
        .expect("run vip-lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vip-lab failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("answered by be"),
        "no request answered through the VIP:\n{stdout}"
    );
    assert!(stdout.contains("clean: nothing left behind"), "{stdout}");
}
