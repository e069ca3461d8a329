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
    l.vipd.wait_for_logs(counter, Duration::from_secs(5));
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

/// Stopping vipd removes the VIP it held but leaves the pinned program
/// forwarding (for the next vipd to adopt); `vipd detach` removes it.
#[test]
fn vipd_stop_keeps_pinned_program_until_detach() {
    let l = LbLab::start("dsr-stop", AttachMode::Skb, Fwd::Dsr);
    let xdp_on = || {
        l.lab
            .sh("lb", &["ip", "link", "show", "eth0"])
            .contains("xdp")
    };
    assert!(
        l.lab.ip_addr_show("lb").contains("10.77.0.100/32"),
        "VIP not added"
    );
    assert!(xdp_on(), "no XDP on eth0");
    l.stop_vipd();
    assert!(
        !l.lab.ip_addr_show("lb").contains("10.77.0.100/32"),
        "VIP left behind"
    );
    assert!(xdp_on(), "the pinned program did not survive the stop");
    assert!(
        l.vipd.logs().contains("vipd detach"),
        "the stop did not say how to detach:\n{}",
        l.vipd.logs()
    );
    let bin = vip_tests::vipd_bin();
    let pin = l.pin_root.to_str().expect("utf-8");
    l.lab.sh(
        "lb",
        &[
            bin.to_str().expect("utf-8"),
            "detach",
            "--interface",
            "eth0",
            "--pin-dir",
            pin,
        ],
    );
    assert!(!xdp_on(), "XDP still attached after vipd detach");
}

/// `systemctl restart vipd` under continuous traffic: the new vipd adopts the
/// pinned program and maps, and a client that keeps making requests (a new
/// TLS connection every 20 ms, and one kept-alive connection) sees no failure.
fn restart_under_traffic(mode: AttachMode, fwd: Fwd, hint: &str) {
    let mut l = LbLab::start(hint, mode, fwd);
    let cfg = client_config(&l.pki.ca_pem(), None);
    let ns = l.lab.node("client").ns.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            in_netns(&ns, || {
                let addr = LbLab::vip_addr(false);
                let connect =
                    || HttpsConn::connect(addr, "kubernetes", cfg.clone(), Duration::from_secs(3));
                let mut kept = connect().expect("kept-alive connection");
                let (mut ok, mut failures) = (0u32, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match connect().and_then(|mut c| c.get("/whoami")) {
                        Ok(r) if r.status == 200 => ok += 1,
                        other => failures.push(format!("new connection: {other:?}")),
                    }
                    match kept.get("/readyz") {
                        Ok(r) if r.status == 200 => ok += 1,
                        other => failures.push(format!("kept-alive connection: {other:?}")),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (ok, failures)
            })
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    l.restart_vipd();
    assert!(
        l.vipd.stdout().contains("(adopted)"),
        "the new vipd did not adopt the pinned link: {}",
        l.vipd.logs()
    );
    assert!(
        l.vipd.logs().contains("adopting the pinned maps"),
        "{}",
        l.vipd.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    l.restart_vipd();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failures) = client.join().expect("client thread");
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across two restarts: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        failures
    );
    assert!(ok > 40, "only {ok} requests made");
}

#[test]
fn dsr_restart_under_traffic_loses_nothing() {
    restart_under_traffic(AttachMode::Native, Fwd::Dsr, "rs-dsr");
}

#[test]
fn nat_restart_under_traffic_loses_nothing() {
    restart_under_traffic(AttachMode::Skb, Fwd::Nat, "rs-nat");
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

/// `cargo xtask run -- --demo`: the master dies, then a backend, with watch
/// streams and a poller running; the walkthrough reports what the client
/// saw, and in mode dsr that is: the takeover within 190 ms of the
/// protocol's 361 ms bound, the client's outage within one attempt timeout of it,
/// every stream kept across it, be1's streams reset by XDP and no other
/// stream touched. Then nothing is left behind.
#[test]
fn lab_demo_reports_what_the_client_saw() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vip-lab"))
        .args(["--demo", "--xdp-mode", "skb", "--watches", "24"])
        .env("VIPD_BIN", vip_tests::vipd_bin())
        .output()
        .expect("run vip-lab --demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vip-lab --demo failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let line = |prefix: &str| {
        stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?}:\n{stdout}"))
            .to_owned()
    };
    let took: u64 = line("lb2 took the VIP over")
        .rsplit_once("took ")
        .and_then(|(_, r)| r.trim_end_matches(" ms").parse().ok())
        .unwrap_or_else(|| panic!("failover figure:\n{stdout}"));
    // RFC 9568 6.1: Master_Down_Interval = 3 x 100 ms + Skew_Time
    // ((256 - 100) x 100 / 256 = 60.9 ms) = 361 ms after the last advert
    // lb2 heard. It cannot take over before that, and after it only the
    // scheduling of a loaded 2-core machine delays it (the README says 190
    // ms at most).
    assert!(
        (355..=551).contains(&took),
        "failover took {took} ms, against the protocol's 361 ms"
    );
    // What the client saw: new connections fail from the crash until the
    // takeover (at most the 361 ms above, counted from the last advert
    // before the crash) and its gratuitous ARP. The demo's attempts
    // overlap (one every 10 ms, each on its own), so the outage is not
    // rounded up to whole 300 ms attempts: the first attempt after the
    // takeover answers (issue 17), and 200 ms covers its handshake on a
    // loaded machine.
    let outage: u64 = line("new connections: longest time without an answer")
        .split("answer ")
        .nth(1)
        .and_then(|r| r.split(" ms").next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("outage figure:\n{stdout}"));
    assert!(
        outage <= took + 200,
        "the client went {outage} ms without an answer; the takeover took {took} ms"
    );
    assert!(
        line("watch streams:").contains("24 of 24 still streaming"),
        "{stdout}"
    );
    let be1 = line("be1's");
    let n: usize = be1
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{be1}"));
    assert!(n > 0, "no stream was on be1, so none could be reset: {be1}");
    assert!(
        be1.contains(&format!("{n} reset by an RST from XDP")),
        "{be1}"
    );
    let others = line("streams on be2 and be3:");
    let kept: Vec<usize> = others
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(kept.len(), 2, "{others}");
    assert_eq!(kept[0], kept[1], "every other stream kept: {others}");
    assert_eq!(kept[0] + n, 24, "{stdout}");
    assert!(stdout.contains("clean: nothing left behind"), "{stdout}");
}

/// A backend removed (by config reload) while watch streams are open: streams
/// on the other backends go on untouched; streams on the removed one are reset
/// at once (never left silent); new connections avoid it.
fn backend_removed_under_watches(mode: AttachMode, fwd: Fwd, hint: &str) {
    let l = LbLab::start(hint, mode, fwd);
    let cfg = client_config(&l.pki.ca_pem(), None);
    let ns = l.lab.node("client").ns.clone();
    let path = "/api/v1/namespaces/default/configmaps?watch=1";
    let server_of = |ev: &serde_json::Value| {
        ev["object"]["data"]["server"]
            .as_str()
            .unwrap_or("?")
            .to_owned()
    };

    // Open 18 watches, and more (up to 60) until be2, the backend removed
    // below, serves one: Maglev spreads the client's ephemeral ports at
    // random, so 18 alone leave a given backend without a stream about once
    // in 1 500 runs (2/3 to the 18th; seen once in CI), and the test would
    // have nothing to remove. Note which backend serves each.
    let mut streams = in_netns(&ns, || {
        let mut streams = Vec::new();
        for i in 0..60 {
            let has = |name: &str, v: &Vec<(String, _)>| v.iter().any(|(s, _)| s == name);
            if i >= 18 && has("be2", &streams) && (has("be1", &streams) || has("be3", &streams)) {
                break;
            }
            let c = HttpsConn::connect(
                LbLab::vip_addr(false),
                "kubernetes",
                cfg.clone(),
                Duration::from_secs(5),
            )
            .unwrap_or_else(|e| panic!("watch {i}: connect: {e:?}"));
            let mut w = c.watch(path).unwrap_or_else(|e| panic!("watch {i}: {e:?}"));
            let ev = w
                .next_event()
                .unwrap_or_else(|e| panic!("watch {i}: first event: {e:?}"));
            streams.push((server_of(&ev), w));
        }
        streams
    });
    let on = |name: &str| streams.iter().filter(|(s, _)| s == name).count();
    assert!(
        on("be2") > 0 && on("be1") + on("be3") > 0,
        "{} watches did not spread: be1={} be2={} be3={}",
        streams.len(),
        on("be1"),
        on("be2"),
        on("be3")
    );

    // Remove be2 from both services and reload.
    let text = std::fs::read_to_string(&l.config_path).expect("read config");
    let be2 = l.lab.node("be2");
    let mut out = String::new();
    let mut skip = 0;
    for line in text.lines() {
        if line.contains(&format!("\"{}\"", be2.ipv4))
            || line.contains(&format!("\"{}\"", be2.ipv6))
        {
            skip = if fwd == Fwd::Dsr { 1 } else { 0 }; // its mac: line follows in dsr
            continue;
        }
        if skip > 0 {
            skip -= 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    std::fs::write(&l.config_path, out).expect("write config");
    l.vipd.signal(libc::SIGHUP);
    l.vipd
        .wait_for_logs("configuration reloaded", Duration::from_secs(5));

    // Let the change act: the clients keep ACKing what the backends stream,
    // so a broken flow would have been answered (or dropped) by now.
    std::thread::sleep(Duration::from_millis(1500));

    // Every stream: survivors deliver events produced after the reload (more
    // than the ~8 that can sit in the buffer at one per 200 ms), be2's are
    // reset, never silent.
    in_netns(&ns, || {
        for (i, (server, w)) in streams.iter_mut().enumerate() {
            w.set_read_timeout(Duration::from_secs(1)).expect("timeout");
            let mut got = 0;
            let mut failed = None;
            for _ in 0..12 {
                match w.next_event() {
                    Ok(ev) => {
                        assert_eq!(&server_of(&ev), server, "watch {i} changed backend");
                        got += 1;
                    }
                    Err(e) => {
                        failed = Some(format!("{e:?}"));
                        break;
                    }
                }
            }
            if server == "be2" {
                let e = failed.unwrap_or_else(|| {
                    panic!("watch {i} on the removed be2 still delivers events")
                });
                assert!(
                    !e.contains("WouldBlock") && !e.contains("TimedOut"),
                    "watch {i} on be2 went silent instead of being reset: {e}"
                );
            } else {
                assert!(
                    failed.is_none() && got == 12,
                    "watch {i} on {server} was disturbed after {got} events: {failed:?}"
                );
            }
        }
    });

    // New connections avoid be2.
    let seen = spread(&l, false, 12);
    assert!(
        !seen.contains_key("be2"),
        "a new connection went to the removed backend: {seen:?}"
    );

    // A broken file is refused loudly and the running configuration stays.
    let good = std::fs::read_to_string(&l.config_path).expect("read config");
    std::fs::write(&l.config_path, good.replace("mode:", "mood:")).expect("write config");
    l.vipd.signal(libc::SIGHUP);
    l.vipd
        .wait_for_logs("configuration reload refused", Duration::from_secs(5));
    assert!(
        l.vipd.logs().contains("mood"),
        "the refusal does not name the bad field:\n{}",
        l.vipd.logs()
    );
    let seen = spread(&l, false, 6);
    assert!(
        !seen.is_empty() && !seen.contains_key("be2"),
        "after a refused reload: {seen:?}"
    );
}

#[test]
fn dsr_backend_removed_under_watches() {
    backend_removed_under_watches(AttachMode::Native, Fwd::Dsr, "rm-dsr");
}

#[test]
fn nat_backend_removed_under_watches() {
    backend_removed_under_watches(AttachMode::Skb, Fwd::Nat, "rm-nat");
}

/// A frame for the VIP flooded to the LB for another host (the lab's bridge
/// floods unknown unicast, and veth hands XDP every frame, as a promiscuous
/// NIC would) is left to the kernel, which drops it: mode nat would
/// otherwise answer another host's mid-connection segment with an RST and
/// kill its connection. The same segment addressed to the LB is answered
/// (the control: the test sees RSTs when there are any).
#[test]
fn nat_frames_flooded_for_another_host_are_not_answered() {
    use vip_tests::{
        netns::{VIP_V4, poll_until, send_frame},
        packet::{Pkt, TCP_ACK},
    };
    let l = LbLab::start("flood", AttachMode::Native, Fwd::Nat);
    // The lab turns unknown-unicast flooding off towards the LB (see
    // `flood_off`); this test wants what a switch does after its MAC table
    // forgot a host.
    let port = l.lab.node("lb").switch_port.clone();
    l.lab
        .switch_sh(&["bridge", "link", "set", "dev", &port, "flood", "on"]);
    let client = l.lab.node("client").clone();
    let lb_mac = l.lab.node("lb").mac;
    let segment = |dst_mac: [u8; 6], sport: u16| {
        Pkt {
            dst_mac,
            src_mac: client.mac,
            ..Pkt::tcp(client.ipv4.into(), sport, VIP_V4.into(), 6443, TCP_ACK)
        }
        .build()
    };
    let counter = |reason: &str| {
        l.metric(&format!(
            "vipd_dataplane_packets_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    };
    let wait_counter = |reason: &str, at_least: f64| {
        poll_until(
            Duration::from_secs(5),
            || format!("{reason} stayed at {}", counter(reason)),
            || counter(reason) >= at_least,
        );
    };

    // Control: no connection entry, addressed to the LB: an RST (mode nat
    // cannot pick up a connection in the middle).
    let rst0 = counter("tx_rst");
    send_frame(&client.ns, client.ifindex, &segment(lb_mac, 45001)).expect("send");
    wait_counter("tx_rst", rst0 + 1.0);

    // Another host's MAC, then broadcast: passed, not answered.
    let other0 = counter("pass_other_host");
    let rst1 = counter("tx_rst");
    let nobody = [0x02, 0x77, 0, 0, 0, 0xee];
    send_frame(&client.ns, client.ifindex, &segment(nobody, 45002)).expect("send");
    send_frame(&client.ns, client.ifindex, &segment([0xff; 6], 45003)).expect("send");
    wait_counter("pass_other_host", other0 + 2.0);
    assert_eq!(
        counter("tx_rst"),
        rst1,
        "a segment addressed to another host was answered with an RST"
    );
}
