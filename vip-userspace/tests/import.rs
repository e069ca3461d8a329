//! `vipd import` as an operator runs it: the real binary on the sample files
//! under `tests/import/`, its output loaded with vipd's own config loader.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use vip_userspace::config::{Config, Mode, NodeFacts, format_mac, node::Interface};

const VIPD: &str = env!("CARGO_BIN_EXE_vipd");

fn samples(set: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import")
        .join(set)
}

/// A fresh folder for one test's files, unique per test and process.
fn scratch(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("import-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

fn vipd(args: &[&str]) -> Output {
    Command::new(VIPD)
        .arg("import")
        .args(args)
        .output()
        .expect("run vipd")
}

/// The flags the kubeadm recipe pair needs besides its files: this node
/// and the other two nodes' MACs.
const RECIPE_FLAGS: [&str; 6] = [
    "--node-address",
    "10.0.0.13",
    "--mac",
    "10.0.0.11=52:54:00:00:00:11",
    "--mac",
    "10.0.0.12=52:54:00:00:00:12",
];

/// `vipd import` of a sample set's keepalived.conf and haproxy.cfg, with
/// `extra` flags.
fn import_set(set: &str, extra: &[&str]) -> Output {
    let ka = samples(set).join("keepalived.conf");
    let ha = samples(set).join("haproxy.cfg");
    let files = [
        "--keepalived",
        ka.to_str().expect("path"),
        "--haproxy",
        ha.to_str().expect("path"),
    ];
    vipd(&[&files[..], extra].concat())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn a(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn recipe_pair_becomes_a_config_vipd_loads() {
    let dir = scratch("recipe");
    let out = dir.join("vipd.yaml");
    let o = import_set(
        "kubeadm",
        &[
            &RECIPE_FLAGS[..],
            &["--output", out.to_str().expect("path")],
        ]
        .concat(),
    );
    assert!(
        o.status.success(),
        "vipd import failed: {}",
        text(&o.stderr)
    );
    assert!(o.stdout.is_empty(), "--output: nothing on stdout");
    // The count src/import.rs's recipe test pins, as the operator reads it.
    assert!(
        text(&o.stderr).contains("(1 service(s); 25 settings not carried over"),
        "{}",
        text(&o.stderr)
    );
    let c = Config::load(&out).unwrap_or_else(|e| panic!("vipd refuses its own import: {e}"));
    assert_eq!(c.interface, "eth0");
    let v = c.vrrp.as_ref().expect("vrrp");
    assert_eq!((v.vrid, v.priority(), v.preempt), (51, 101, true));
    assert_eq!(v.track.local_apiserver, 2, "check_apiserver's weight -2");
    let s = &c.services[0];
    assert_eq!((s.vip, s.port, s.mode), (a("10.0.0.100"), 6443, Mode::Dsr));
    let backends: Vec<(IpAddr, Option<String>, bool)> = s
        .backends
        .iter()
        .map(|b| (b.address, b.mac.as_ref().map(format_mac), b.local))
        .collect();
    assert_eq!(
        backends,
        vec![
            (a("10.0.0.11"), Some("52:54:00:00:00:11".into()), false),
            (a("10.0.0.12"), Some("52:54:00:00:00:12".into()), false),
            (a("10.0.0.13"), None, true),
        ]
    );
    assert_eq!(s.probe.path, "/readyz");
    let yaml = std::fs::read_to_string(&out).expect("output");
    let ka = samples("kubeadm").join("keepalived.conf");
    let ha = samples("kubeadm").join("haproxy.cfg");
    let (ka, ha) = (ka.display(), ha.display());
    for want in [
        format!("# not carried over: {ka}:16: state MASTER ("),
        format!("# not carried over: {ka}:20: authentication {{ ... }} (VRRPv3"),
        format!("# not carried over: {ha}:40: balance roundrobin ("),
        format!("# not carried over: {ha}:21: timeout client 35s ("),
        format!("HAProxy checked /healthz ({ha}:36)"),
        "controlPlaneEndpoint: 10.0.0.100:6443".into(),
    ] {
        assert!(yaml.contains(&want), "output lacks {want:?}:\n{yaml}");
    }
    // Deterministic: the same inputs write the same bytes.
    let again = import_set("kubeadm", &RECIPE_FLAGS);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), yaml, "stdout and --output differ");
}

#[test]
fn unsupported_settings_are_listed_and_the_rest_loads() {
    let dir = scratch("unsupported");
    let out = dir.join("vipd.yaml");
    let o = import_set(
        "unsupported",
        &[
            "--mac",
            "10.1.0.12=52:54:00:01:00:12",
            "--mac",
            "10.1.0.13=52:54:00:01:00:13",
            "-o",
            out.to_str().expect("path"),
        ],
    );
    assert!(
        o.status.success(),
        "vipd import failed: {}",
        text(&o.stderr)
    );
    let c = Config::load(&out).unwrap_or_else(|e| panic!("vipd refuses its own import: {e}"));
    let v = c.vrrp.as_ref().expect("vrrp");
    assert_eq!((v.vrid, v.priority(), v.preempt), (7, 150, false));
    assert_eq!(v.advert_interval, Duration::from_millis(500));
    assert_eq!(v.unicast_peers, vec![a("10.1.0.12"), a("10.1.0.13")]);
    let s = &c.services[0];
    assert!(
        s.backends[0].local,
        "unicast_src_ip 10.1.0.11 is this node when --node-address is not given"
    );
    assert_eq!(
        (s.probe.interval, s.probe.fall, s.probe.rise),
        (Duration::from_secs(2), 3, 2)
    );
    let yaml = std::fs::read_to_string(&out).expect("output");
    let ka = samples("unsupported").join("keepalived.conf");
    let ha = samples("unsupported").join("haproxy.cfg");
    let (ka, ha) = (ka.display(), ha.display());
    for want in [
        format!("{ka}:32: authentication {{ ... }} ("),
        format!("{ka}:39: track_interface {{ ... }} ("),
        format!("{ka}:41: notify_master \"/etc/keepalived/notify.sh MASTER\" ("),
        format!("{ka}:43: notify /etc/keepalived/notify.sh ("),
        format!("{ha}:6: maxconn 4000 ("),
        format!("{ha}:15: option redispatch ("),
        format!("{ha}:19: timeout client 4h ("),
        format!("{ha}:24: listen stats ("),
        format!("{ha}:41: weight 50 ("),
    ] {
        assert!(
            yaml.contains(&format!("# not carried over: {want}")),
            "output lacks {want:?}:\n{yaml}"
        );
    }
    assert!(!yaml.contains("s3cret"), "the VRRP password was copied");
}

#[test]
fn bad_input_exits_non_zero_naming_file_and_line() {
    let dir = scratch("bad");
    let out = dir.join("vipd.yaml");
    let ka = dir.join("keepalived.conf");
    let recipe = std::fs::read_to_string(samples("kubeadm").join("keepalived.conf"))
        .expect("recipe keepalived.conf");
    // The authentication block loses its `}`, so the vrrp_instance that
    // holds it (line 15) is never closed.
    std::fs::write(&ka, recipe.replacen("    }\n", "", 1)).expect("write");
    let ha = samples("kubeadm").join("haproxy.cfg");
    let o = vipd(&[
        "--keepalived",
        ka.to_str().expect("path"),
        "--haproxy",
        ha.to_str().expect("path"),
        "--output",
        out.to_str().expect("path"),
    ]);
    assert!(!o.status.success(), "a broken file must fail");
    let e = text(&o.stderr);
    assert!(
        e.contains(&format!("{}:15:", ka.display())) && e.contains("never closed"),
        "{e}"
    );
    assert!(!out.exists(), "nothing is written on error");
}

#[test]
fn unknown_mac_exits_non_zero_naming_the_fixes() {
    let dir = scratch("mac");
    let out = dir.join("vipd.yaml");
    // An interface no host has: its neighbour table is empty.
    let base = [
        "--node-address",
        "10.0.0.13",
        "--interface",
        "vipdtest-none0",
    ];
    let o = import_set(
        "kubeadm",
        &[&base[..], &["--output", out.to_str().expect("path")]].concat(),
    );
    assert!(!o.status.success(), "missing MACs must fail");
    let e = text(&o.stderr);
    for w in [
        "10.0.0.11, 10.0.0.12 on vipdtest-none0",
        "ping -c 1 10.0.0.11",
        "--mac ADDR=MAC",
        "--mode nat",
    ] {
        assert!(e.contains(w), "error lacks {w:?}: {e}");
    }
    assert!(!out.exists(), "nothing is written on error");
    // The third fix works: mode nat needs no MACs and keeps HAProxy's port.
    let o = import_set("kubeadm", &[&base[..], &["--mode", "nat"]].concat());
    assert!(o.status.success(), "{}", text(&o.stderr));
    let c = Config::parse(Path::new("stdout"), &text(&o.stdout)).expect("loads");
    assert_eq!(c.interface, "vipdtest-none0");
    assert_eq!((c.services[0].mode, c.services[0].port), (Mode::Nat, 8443));
}

#[test]
fn bad_flags_are_refused() {
    let o = vipd(&["--mac", "10.0.0.11"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("ADDR=MAC"), "{}", text(&o.stderr));
    let o = vipd(&[]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--keepalived FILE"),
        "{}",
        text(&o.stderr)
    );
}

/// `vipd import` on cp3 (10.0.0.13, keepalived.conf `cp3`) with cp1's and
/// cp2's files as `--other-node`s, mode nat: the one file, as vipd loads it,
/// and its text for the assertions' messages.
fn import_three(dir: &Path, cp3: &Path, cp1: &Path, cp2: &Path) -> (Config, String) {
    let out = dir.join("vipd.yaml");
    let ha = samples("kubeadm").join("haproxy.cfg");
    let o = vipd(&[
        "--keepalived",
        cp3.to_str().expect("path"),
        "--haproxy",
        ha.to_str().expect("path"),
        "--mode",
        "nat",
        "--node-address",
        "10.0.0.13",
        "--node-name",
        "cp3",
        "--other-node",
        &format!("cp1={}", cp1.display()),
        "--other-node",
        &format!("cp2={}", cp2.display()),
        "--output",
        out.to_str().expect("path"),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let yaml = std::fs::read_to_string(&out).expect("output");
    let c =
        Config::load(&out).unwrap_or_else(|e| panic!("vipd refuses its own import: {e}\n{yaml}"));
    (c, yaml)
}

/// The facts of node `name` with one interface holding `addr`/24.
fn facts(name: &str, iface: &str, addr: &str) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        interfaces: vec![Interface {
            name: iface.into(),
            addrs: vec![(a(addr), 24)],
        }],
        routes: vec![],
    }
}

/// Issue 16: the three nodes' keepalived.conf files (the recipe's cp3 and
/// cp1/cp2 as BACKUPs with priorities 100 and 99, cp2 on another NIC name)
/// become ONE file: each node's priority under `nodes:`, cp2's interface
/// with it, and every node resolves its own values from the same bytes.
#[test]
fn several_nodes_keepalived_files_become_one_file_with_nodes() {
    let dir = scratch("nodes");
    let ka = std::fs::read_to_string(samples("kubeadm").join("keepalived.conf")).expect("read");
    let backup = |prio: &str, iface: &str| {
        ka.replace("state MASTER", "state BACKUP")
            .replace("priority 101", &format!("priority {prio}"))
            .replace("interface eth0", &format!("interface {iface}"))
    };
    let (cp1, cp2) = (dir.join("cp1.conf"), dir.join("cp2.conf"));
    std::fs::write(&cp1, backup("100", "eth0")).expect("write");
    std::fs::write(&cp2, backup("99", "ens3")).expect("write");
    let cp3 = samples("kubeadm").join("keepalived.conf");
    let (c, yaml) = import_three(&dir, &cp3, &cp1, &cp2);
    let v = c.vrrp.as_ref().expect("vrrp");
    assert_eq!(v.priority, None, "no top-level priority:\n{yaml}");
    let nodes: Vec<(String, Option<u8>, Option<String>)> = c
        .nodes
        .iter()
        .map(|(n, s)| (n.clone(), s.priority, s.interface.clone()))
        .collect();
    assert_eq!(
        nodes,
        vec![
            ("cp1".into(), Some(100), None),
            ("cp2".into(), Some(99), Some("ens3".into())),
            // The recipe's track_script weight -2 is vipd's
            // track.local_apiserver, not part of the priority.
            ("cp3".into(), Some(101), None),
        ],
        "{yaml}"
    );
    // The same bytes on every node: each resolves its own.
    for (name, addr, iface, prio) in [
        ("cp1", "10.0.0.11", "eth0", 100),
        ("cp2", "10.0.0.12", "ens3", 99),
        ("cp3", "10.0.0.13", "eth0", 101),
    ] {
        let r = c
            .resolve(&facts(name, iface, addr))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            (r.interface.as_str(), r.priority),
            (iface, Some(prio)),
            "{name}"
        );
    }
    // Another VRRP group's file is refused, naming both files.
    let other = dir.join("other.conf");
    std::fs::write(
        &other,
        backup("100", "eth0").replace("virtual_router_id 51", "virtual_router_id 52"),
    )
    .expect("write");
    let o = import_set(
        "kubeadm",
        &[
            "--mode",
            "nat",
            "--node-name",
            "cp3",
            "--other-node",
            &format!("cp1={}", other.display()),
        ],
    );
    let e = text(&o.stderr);
    assert!(
        !o.status.success() && e.contains("virtual_router_id differs") && e.contains("other.conf"),
        "{e}"
    );
}

/// Unicast VRRP: each node's keepalived.conf names the OTHER nodes. The one
/// file lists the whole group, and each node resolves it to the other two
/// (with this node's list alone, cp3 would have no peer cp3 lists and cp1
/// would send to itself and never to cp3).
#[test]
fn several_nodes_unicast_peers_become_the_whole_group() {
    let dir = scratch("unicast");
    let ka = std::fs::read_to_string(samples("kubeadm").join("keepalived.conf")).expect("read");
    let conf = |prio: &str, peers: [&str; 2]| {
        ka.replace("priority 101", &format!("priority {prio}"))
            .replace(
                "    virtual_router_id 51\n",
                &format!(
                    "    virtual_router_id 51\n    unicast_peer {{\n        {}\n        {}\n    }}\n",
                    peers[0], peers[1]
                ),
            )
    };
    let (cp1, cp2) = (dir.join("cp1.conf"), dir.join("cp2.conf"));
    std::fs::write(&cp1, conf("100", ["10.0.0.12", "10.0.0.13"])).expect("write");
    std::fs::write(&cp2, conf("99", ["10.0.0.11", "10.0.0.13"])).expect("write");
    let cp3 = dir.join("cp3.conf");
    std::fs::write(&cp3, conf("101", ["10.0.0.11", "10.0.0.12"])).expect("write");
    let (c, yaml) = import_three(&dir, &cp3, &cp1, &cp2);
    let group: Vec<IpAddr> = ["10.0.0.11", "10.0.0.12", "10.0.0.13"].map(a).to_vec();
    assert_eq!(
        c.vrrp.as_ref().map(|v| v.unicast_peers.clone()),
        Some(group),
        "{yaml}"
    );
    for (name, addr) in [
        ("cp1", "10.0.0.11"),
        ("cp2", "10.0.0.12"),
        ("cp3", "10.0.0.13"),
    ] {
        let r = c
            .resolve(&facts(name, "eth0", addr))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut want: Vec<IpAddr> = ["10.0.0.11", "10.0.0.12", "10.0.0.13"].map(a).to_vec();
        want.retain(|p| *p != a(addr));
        let mut got = r.unicast_peers.clone().expect("unicast");
        got.sort();
        assert_eq!(got, want, "{name}");
    }
}

/// Issue 16, mode dsr: with `--other-node` the output is one file for every
/// node, so it carries nothing one node sees: no `local: true` (each node's
/// own apiserver is the backend with its address), no MAC from this host's
/// neighbour table (this test host has none for 10.0.0.11-13, which a
/// single-node import would refuse; each node's vipd reads them at run
/// time), only the `--mac` the user gave, as an override.
#[test]
fn one_file_in_mode_dsr_has_no_local_and_only_the_given_macs() {
    let dir = scratch("nodes-dsr");
    let ka = std::fs::read_to_string(samples("kubeadm").join("keepalived.conf")).expect("read");
    let cp1 = dir.join("cp1.conf");
    std::fs::write(
        &cp1,
        ka.replace("state MASTER", "state BACKUP")
            .replace("priority 101", "priority 100"),
    )
    .expect("write");
    let out = dir.join("vipd.yaml");
    let o = import_set(
        "kubeadm",
        &[
            "--mode",
            "dsr",
            "--node-address",
            "10.0.0.13",
            "--node-name",
            "cp3",
            "--other-node",
            &format!("cp1={}", cp1.display()),
            "--mac",
            "10.0.0.12=52:54:00:00:00:12",
            "--output",
            out.to_str().expect("path"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let yaml = std::fs::read_to_string(&out).expect("output");
    assert!(!yaml.contains("local: true"), "{yaml}");
    assert!(!yaml.contains("this node: "), "{yaml}");
    assert_eq!(yaml.matches("mac:").count(), 1, "{yaml}");
    let c =
        Config::load(&out).unwrap_or_else(|e| panic!("vipd refuses its own import: {e}\n{yaml}"));
    let s = &c.services[0];
    assert_eq!(s.mode, Mode::Dsr);
    let macs: Vec<(IpAddr, Option<String>, bool)> = s
        .backends
        .iter()
        .map(|b| (b.address, b.mac.as_ref().map(format_mac), b.local))
        .collect();
    assert_eq!(
        macs,
        vec![
            (a("10.0.0.11"), None, false),
            (a("10.0.0.12"), Some("52:54:00:00:00:12".into()), false),
            (a("10.0.0.13"), None, false),
        ],
        "{yaml}"
    );
}
