//! The namespace lab itself: topology, addressing, offloads, process and
//! namespace lifetime. Needs root (run through `cargo xtask test`); without
//! it every test panics with a message instead of skipping.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use vip_tests::certs::TestPki;
use vip_tests::netns::{self, Lab, add_namespace, in_netns};
use vip_tests::standin::{self, HttpsConn, StandinOptions, client_config};

const TIMEOUT: Duration = Duration::from_secs(5);

fn netns_list() -> HashSet<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

fn ping(lab: &Lab, from: &str, to: IpAddr) {
    let family = if to.is_ipv6() { "-6" } else { "-4" };
    let out = lab.try_sh(
        from,
        &["ping", family, "-c", "1", "-W", "2", &to.to_string()],
    );
    assert!(
        out.status.success(),
        "ping {to} from {from} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn topology_addresses_macs_and_offloads() {
    let lab = Lab::new("topology", &["client", "be1", "be2"]);
    let client = lab.node("client");
    assert_eq!(client.ipv4.to_string(), "10.77.0.10");
    assert_eq!(client.ipv6.to_string(), "fd77::10");
    assert_eq!(lab.node("be2").ipv4.to_string(), "10.77.0.12");
    assert_eq!(lab.node("be2").switch_port, "p2");

    for name in ["be1", "be2"] {
        let node = lab.node(name);
        ping(&lab, "client", IpAddr::V4(node.ipv4));
        ping(&lab, "client", IpAddr::V6(node.ipv6));
    }

    for node in lab.nodes() {
        let host = node.ipv4.octets()[3];
        // The MAC's last octet reads like the host number (.11 -> :11).
        let expected_mac = format!("02:77:00:00:00:{host}");
        assert_eq!(node.mac_string(), expected_mac);
        let link = lab.sh(&node.name, &["ip", "-o", "link", "show", "dev", "eth0"]);
        assert!(
            link.contains(&format!("link/ether {expected_mac}")),
            "{link}"
        );
        assert!(
            link.starts_with(&format!("{}: eth0@", node.ifindex)),
            "ifindex {} does not match: {link}",
            node.ifindex
        );
        let addrs = lab.ip_addr_show(&node.name);
        assert!(addrs.contains(&format!("{}/24", node.ipv4)), "{addrs}");
        assert!(addrs.contains(&format!("{}/64", node.ipv6)), "{addrs}");

        let k = lab.sh(&node.name, &["ethtool", "-k", "eth0"]);
        assert!(
            k.contains("tx-checksumming: off"),
            "{} eth0:\n{k}",
            node.name
        );
        let k = lab.switch_sh(&["ethtool", "-k", &node.switch_port]);
        assert!(
            k.contains("tx-checksumming: off"),
            "{}:\n{k}",
            node.switch_port
        );

        let fwd = lab.sh(&node.name, &["sysctl", "-n", "net.ipv4.ip_forward"]);
        assert_eq!(fwd.trim(), "1", "ip_forward in {}", node.name);
        let port = lab.switch_sh(&["ip", "-d", "link", "show", "dev", &node.switch_port]);
        assert!(port.contains("master br0"), "{port}");
    }
    let br = lab.switch_sh(&["ip", "-d", "link", "show", "dev", "br0"]);
    assert!(br.contains("mcast_snooping 0"), "{br}");
    assert!(br.contains("forward_delay 0"), "{br}");

    // Extra addresses (a VIP) come and go.
    let vip = format!("{}/32", netns::VIP_V4);
    lab.add_addr("be1", &vip);
    ping(&lab, "client", IpAddr::V4(netns::VIP_V4));
    lab.del_addr("be1", &vip);
    assert!(!lab.ip_addr_show("be1").contains(&netns::VIP_V4.to_string()));

    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lab.node("nope")))
        .expect_err("unknown node must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("\"nope\""),
        "panic should name the node: {msg}"
    );
}

#[test]
fn concurrent_labs_get_unique_names() {
    let before = netns_list();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Lab::new("par-a", &["client", "lb1"]));
        let b = s.spawn(|| Lab::new("par-b", &["client", "lb1"]));
        (
            a.join().expect("lab a builds"),
            b.join().expect("lab b builds"),
        )
    });
    let names_a: HashSet<&String> = a.namespaces().iter().collect();
    let names_b: HashSet<&String> = b.namespaces().iter().collect();
    assert!(names_a.is_disjoint(&names_b), "{names_a:?} vs {names_b:?}");
    let prefix = format!("vt-{}-", std::process::id());
    for ns in names_a.iter().chain(&names_b) {
        assert!(ns.starts_with(&prefix) && ns.len() < 30, "bad name {ns}");
        assert!(!before.contains(*ns), "{ns} existed before");
    }
    let now = netns_list();
    assert!(names_a.iter().chain(&names_b).all(|ns| now.contains(*ns)));
    // Identical addressing in both labs, isolated from each other.
    for lab in [&a, &b] {
        ping(lab, "client", IpAddr::V4(lab.node("lb1").ipv4));
    }
}

#[test]
fn standin_in_a_backend_is_reachable_over_tls() {
    let lab = Lab::new("standin", &["client", "be1", "be2"]);
    let pki = TestPki::new();
    let be1 = lab.node("be1");

    // In-process: bind inside be1's namespace, serve from a runtime thread.
    let addr = SocketAddr::new(IpAddr::V4(be1.ipv4), 6443);
    let listener = in_netns(&be1.ns, || std::net::TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr} in be1: {e}"));
    let (cert_pem, key_pem) = pki.issue_server(&["kubernetes"], &[IpAddr::V4(be1.ipv4)]);
    let server = standin::spawn_in_thread(
        StandinOptions {
            listen: addr,
            cert_pem,
            key_pem,
            name: "be1".into(),
            watch_interval: Duration::from_millis(50),
            client_ca_pem: None,
            git_version: standin::GIT_VERSION.into(),
        },
        listener,
    );
    lab.keep(Box::new(server));
    lab.wait_tcp("client", addr, TIMEOUT);
    let cfg = client_config(&pki.ca_pem(), None);
    let mut c = in_netns(&lab.node("client").ns, || {
        HttpsConn::connect(addr, &be1.ipv4.to_string(), cfg.clone(), TIMEOUT)
    })
    .unwrap_or_else(|e| panic!("TLS from client to be1: {e:?}"));
    let r = c.get("/whoami").expect("GET /whoami");
    assert_eq!(r.text(), "be1");
    // The server saw the client's lab address: traffic crossed the bridge.
    let peer = c.local_addr().expect("local addr");
    assert_eq!(peer.ip(), IpAddr::V4(lab.node("client").ipv4));

    // As a process (what the lab runs), over IPv6.
    let be2 = lab.node("be2");
    let dir = lab.dir().join("pki");
    let (cert, key) = pki.issue_server(&["kubernetes"], &[IpAddr::V6(be2.ipv6)]);
    let (cert_path, key_path) = pki.write(&dir, "be2", &cert, &key);
    let addr6 = SocketAddr::new(IpAddr::V6(be2.ipv6), 6443);
    let proc = lab.spawn(
        "be2",
        env!("CARGO_BIN_EXE_apiserver-standin"),
        &[
            "--listen",
            &addr6.to_string(),
            "--cert",
            &cert_path.to_string_lossy(),
            "--key",
            &key_path.to_string_lossy(),
            "--name",
            "be2",
        ],
        &[],
    );
    proc.wait_for_stdout("listening on", TIMEOUT);
    lab.wait_tcp("client", addr6, TIMEOUT);
    let mut c6 = in_netns(&lab.node("client").ns, || {
        HttpsConn::connect(addr6, &be2.ipv6.to_string(), cfg.clone(), TIMEOUT)
    })
    .unwrap_or_else(|e| panic!("TLS from client to be2 over IPv6: {e:?}\n{}", proc.logs()));
    let r = c6.get("/readyz").expect("GET /readyz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(r.header("X-Standin-Name"), Some("be2"));
}

fn netns_inode(path: &str) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    (m.dev(), m.ino())
}

#[test]
fn spawned_processes_live_in_the_namespace_and_die_with_their_owner() {
    let lab = Lab::new("procs", &["be1"]);
    let ns = lab.node("be1").ns.clone();

    let p = lab.spawn("be1", "sleep", &["1000"], &[]);
    let pid = p.pid();
    assert!(p.is_running());
    let proc_ns = format!("/proc/{pid}/ns/net");
    // `ip netns exec` execs in place: the pid is sleep's, inside the namespace.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while netns_inode(&proc_ns) != netns_inode(&format!("/run/netns/{ns}")) {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} never entered {ns}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(p);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists after Proc was dropped"
    );

    // Exit status and env reach the caller.
    let p = lab.spawn(
        "be1",
        "sh",
        &["-c", "echo $VT_MARK; exit 3"],
        &[("VT_MARK", "m4rk")],
    );
    let status = p.wait_timeout(TIMEOUT).expect("sh exits");
    assert_eq!(status.code(), Some(3));
    assert!(p.logs().contains("m4rk"), "{}", p.logs());

    // A Proc the test leaks is still killed when the lab goes.
    let leaked = lab.spawn("be1", "sleep", &["1000"], &[]);
    let leaked_pid = leaked.pid();
    std::mem::forget(leaked);
    drop(lab);
    assert!(
        !std::path::Path::new(&format!("/proc/{leaked_pid}")).exists(),
        "leaked pid {leaked_pid} survived the lab"
    );
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    let lab = Lab::new("cleanup", &["client", "lb1"]);
    let names = lab.namespaces().to_vec();
    let dir = lab.dir().to_path_buf();
    assert_eq!(names.len(), 3, "switch + 2 nodes: {names:?}");
    assert!(names.iter().all(|n| netns_list().contains(n)));
    assert!(dir.is_dir());
    drop(lab);
    let left = netns_list();
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "left behind: {left:?}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());

    let seen = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::new("panics", &["client", "lb1", "be1"]);
        let _p = lab.spawn("be1", "sleep", &["1000"], &[]);
        seen.lock()
            .expect("lock")
            .extend(lab.namespaces().iter().cloned());
        panic!("deliberate panic inside a lab");
    });
    assert!(result.is_err());
    let seen = seen.into_inner().expect("lock");
    assert_eq!(seen.len(), 4);
    let left = netns_list();
    assert!(
        seen.iter().all(|n| !left.contains(n)),
        "left behind after panic: {left:?}"
    );
}

#[test]
fn stale_namespaces_of_dead_processes_are_swept() {
    // A pid that just exited stands in for a SIGKILLed test run.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait true");
    let stale = format!("vt-{dead}-0-stale");
    add_namespace(&stale);

    let lab = Lab::new("sweep", &["client"]);
    let left = netns_list();
    if left.contains(&stale) {
        // Never leave our fixture behind, even when failing.
        let _ = Command::new("ip").args(["netns", "del", &stale]).output();
        panic!("stale namespace {stale} was not swept");
    }
    // Our own live lab is untouched by the sweep.
    assert!(lab.namespaces().iter().all(|n| left.contains(n)));
}
