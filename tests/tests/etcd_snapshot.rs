//! etcd snapshots against a real etcd 3.4 (issue 19): `vipd etcd-snapshot`
//! over mutual TLS, verified, restored with `etcdctl snapshot restore` into a
//! fresh member that serves every key byte for byte; and the faults: etcd
//! unreachable, wrong CA, untrusted client certificate, a full disk, too
//! little space for the next one, a killed run, a corrupt snapshot on disk;
//! the scheduled snapshot on two and on three vipd nodes, and the restore
//! runbook for a three-member cluster with peer TLS.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use vip_tests::{
    certs::TestPki,
    etcd::{self, Creds, Member},
    netns::Lab,
    vipd_bin,
};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs `vipd etcd-snapshot` inside `node` with these credentials.
fn snapshot(lab: &Lab, node: &str, url: &str, creds: &Creds, dir: &Path, extra: &[&str]) -> Output {
    snapshot_cmd(lab, node, url, creds, dir)
        .args(extra)
        .output()
        .expect("run vipd etcd-snapshot")
}

/// `vipd etcd-snapshot` inside `node`, not started yet.
fn snapshot_cmd(lab: &Lab, node: &str, url: &str, creds: &Creds, dir: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.node(node).ns])
        .arg(vipd_bin())
        .args(["etcd-snapshot", "--endpoint", url])
        .arg("--ca")
        .arg(&creds.ca)
        .arg("--cert")
        .arg(&creds.cert)
        .arg("--key")
        .arg(&creds.key)
        .arg("--dir")
        .arg(dir);
    c
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The snapshot files (by name) in `dir`, sorted; and every other entry.
fn files(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut snaps = Vec::new();
    let mut other = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if vip_userspace::snapshot::plan::parse_name(&n).is_some() {
                snaps.push(n);
            } else {
                other.push(n);
            }
        }
    }
    snaps.sort();
    other.sort();
    (snaps, other)
}

fn ok_snapshot(lab: &Lab, m: &Member, dir: &Path, extra: &[&str]) -> PathBuf {
    let before = files(dir).0;
    let out = snapshot(lab, &m.node, &m.url(), &m.creds, dir, extra);
    assert!(out.status.success(), "snapshot failed: {}", text(&out));
    let after = files(dir).0;
    let new: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
    assert_eq!(
        new.len(),
        1,
        "one new snapshot expected: {before:?} -> {after:?}"
    );
    dir.join(new[0])
}

fn keys(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            // Values of varied length and content, so a restore that lost or
            // mixed up bytes shows.
            // (etcdctl txn parses its input like a shell: no quotes.)
            const ALPHABET: &[u8] =
                b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.:/+=";
            let v: String = (0..(i % 97) + 1)
                .map(|j| char::from(ALPHABET[(i * 31 + j * 7) % ALPHABET.len()]))
                .collect();
            (format!("/vipd-test/key-{i:05}"), v)
        })
        .collect()
}

#[test]
fn snapshot_is_verified_and_restores_every_key() {
    let lab = Lab::new("etcd-snap", &["cp1"]);
    let pki = TestPki::new();
    let m = etcd::start_fresh(&lab, "cp1", &pki, LOCAL);
    let written = keys(3000);
    etcd::put_all(&m, &written);

    let dir = lab.dir().join("snapshots");
    let out = snapshot(&lab, "cp1", &m.url(), &m.creds, &dir, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (snaps, other) = files(&dir);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(other.is_empty(), "no partial files left: {other:?}");
    let file = dir.join(&snaps[0]);

    // vipd's verification agrees with etcd's own tool.
    let (rev, total) = etcd::snapshot_status(&file);
    let mine = vip_userspace::snapshot::verify_file(&file).expect("vipd verifies its own snapshot");
    assert_eq!((mine.revision, mine.total_keys), (rev, total));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("revision {rev}, {total} keys")),
        "vipd reports what it verified: {stdout}"
    );
    assert!(
        total as usize >= written.len(),
        "{total} keys in the snapshot"
    );

    // The README's runbook, single member: stop, restore into a fresh data
    // folder, start on it.
    m.proc.term_within(Duration::from_secs(10), "etcd");
    let restored = lab.dir().join("restored");
    let peer = m.peer_url();
    let r = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&file)
        .args(["--name", "cp1"])
        .args(["--initial-cluster", &format!("cp1={peer}")])
        .args(["--initial-advertise-peer-urls", &peer])
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .expect("etcdctl snapshot restore");
    assert!(r.status.success(), "restore: {}", text(&r));
    let m2 = etcd::start_restored(&lab, &m, &restored);
    let read = etcd::get_prefix(&m2, "/vipd-test/");
    assert_eq!(read.len(), written.len(), "every key restored");
    assert!(read == written, "every value restored byte for byte");
}

#[test]
fn snapshot_faults_lose_nothing_and_name_the_fix() {
    let lab = Lab::new("etcd-faults", &["cp1"]);
    let pki = TestPki::new();
    let m = etcd::start_fresh(&lab, "cp1", &pki, LOCAL);
    etcd::put_all(&m, &keys(2000));
    let dir = lab.dir().join("snapshots");

    // Unreachable: nothing listens on 2399.
    let out = snapshot(&lab, "cp1", "https://127.0.0.1:2399", &m.creds, &dir, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[unreachable]") && err.contains("listen"),
        "{err}"
    );

    // A CA that did not sign etcd's server certificate.
    let other = TestPki::new();
    let odir = lab.dir().join("other-pki");
    let (ocreds, _) = etcd::issue(&other, &odir, "other", LOCAL);
    let wrong_ca = Creds {
        ca: ocreds.ca.clone(),
        ..m.creds.clone()
    };
    let out = snapshot(&lab, "cp1", &m.url(), &wrong_ca, &dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("[tls]") && err.contains("snapshot.ca"),
        "{}",
        text(&out)
    );

    // A client certificate etcd's --trusted-ca-file did not sign.
    let wrong_client = Creds {
        ca: m.creds.ca.clone(),
        ..ocreds
    };
    let out = snapshot(&lab, "cp1", &m.url(), &wrong_client, &dir, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("[tls]"),
        "{}",
        text(&out)
    );
    assert_eq!(
        files(&dir).0,
        Vec::<String>::new(),
        "no snapshot from the failures"
    );

    // A good one, then a second (a second later: a new name), then a third
    // with keep 2 after the middle one is corrupted on disk: the corrupt one
    // is reported, neither counted nor pruned, and the good old one stays.
    let first = ok_snapshot(&lab, &m, &dir, &[]);
    std::thread::sleep(Duration::from_millis(1100));
    let second = ok_snapshot(&lab, &m, &dir, &[]);
    let mut bytes = std::fs::read(&second).expect("read second");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&second, &bytes).expect("corrupt second");
    std::thread::sleep(Duration::from_millis(1100));
    let out = snapshot(&lab, "cp1", &m.url(), &m.creds, &dir, &["--keep", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let second_name = second.file_name().map(|n| n.to_string_lossy().into_owned());
    assert!(
        stdout.contains(&format!(
            "warning: {} is corrupt",
            second_name.clone().unwrap_or_default()
        )),
        "corrupt snapshot reported: {stdout}"
    );
    let (snaps, _) = files(&dir);
    assert_eq!(
        snaps.len(),
        3,
        "nothing pruned in favour of the corrupt one: {snaps:?}"
    );
    assert!(first.exists() && second.exists());
    // With a fourth, keep 2 prunes the oldest good one, never the corrupt.
    std::thread::sleep(Duration::from_millis(1100));
    let out = snapshot(&lab, "cp1", &m.url(), &m.creds, &dir, &["--keep", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!first.exists(), "oldest good one pruned: {}", text(&out));
    assert!(second.exists(), "the corrupt one is left for the operator");
    assert_eq!(files(&dir).0.len(), 3);

    let size = std::fs::metadata(dir.join(files(&dir).0.last().expect("a snapshot")))
        .expect("stat")
        .len();

    // A filesystem too small for one snapshot: disk full, nothing left.
    let small = Tmpfs::mount(&lab.dir().join("tiny"), size / 2);
    let out = snapshot(&lab, "cp1", &m.url(), &m.creds, &small.0, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("[disk_full]") && err.contains("snapshot.dir"),
        "{}",
        text(&out)
    );
    assert_eq!(
        files(&small.0),
        (vec![], vec![]),
        "the partial file is removed"
    );
    drop(small);

    // Room for one more but not twice the previous: refused before starting,
    // the previous one intact.
    let tight = Tmpfs::mount(&lab.dir().join("tight"), size * 3 / 2 + 64 * 1024);
    let prev = tight.0.join(files(&dir).0.last().expect("a snapshot"));
    std::fs::copy(dir.join(files(&dir).0.last().expect("a snapshot")), &prev).expect("copy");
    let out = snapshot(&lab, "cp1", &m.url(), &m.creds, &tight.0, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("[disk_space]") && err.contains("twice"),
        "{}",
        text(&out)
    );
    vip_userspace::snapshot::verify_file(&prev).expect("previous snapshot intact");
    assert_eq!(files(&tight.0).0.len(), 1);
}

#[test]
fn snapshot_killed_midway_leaves_no_snapshot_named_file() {
    let lab = Lab::new("etcd-kill", &["cp1"]);
    let pki = TestPki::new();
    let m = etcd::start_fresh(&lab, "cp1", &pki, LOCAL);
    // About 40 MB, so the stream takes long enough to be cut.
    let big: Vec<(String, String)> = (0..40_000)
        .map(|i| (format!("/big/{i:06}"), "x".repeat(1000)))
        .collect();
    etcd::put_all(&m, &big);
    let dir = lab.dir().join("snapshots");
    let good = ok_snapshot(&lab, &m, &dir, &[]);
    std::thread::sleep(Duration::from_millis(1100));

    let mut child = snapshot_cmd(&lab, "cp1", &m.url(), &m.creds, &dir)
        .spawn()
        .expect("spawn vipd");
    // Kill it once the partial file exists (ip netns exec execs vipd: the
    // child's pid is vipd's).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let cut = loop {
        if files(&dir).1.iter().any(|n| n.ends_with(".part")) {
            child.kill().expect("SIGKILL vipd");
            break true;
        }
        if child.try_wait().expect("wait").is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = child.wait();
    assert!(
        cut,
        "vipd finished before it could be killed mid-snapshot; make the database bigger"
    );
    let (snaps, other) = files(&dir);
    assert_eq!(
        snaps.len(),
        1,
        "only the earlier, complete snapshot has a snapshot's name: {snaps:?} {other:?}"
    );
    vip_userspace::snapshot::verify_file(&good).expect("the earlier snapshot is intact");
    // The next run clears the dead partial file and takes a good one.
    ok_snapshot(&lab, &m, &dir, &[]);
    let (snaps, other) = files(&dir);
    assert!(other.is_empty(), "partial file cleared: {other:?}");
    for s in snaps {
        vip_userspace::snapshot::verify_file(&dir.join(s)).expect("every named snapshot verifies");
    }
}

/// A tmpfs of `bytes` mounted on `dir` for one test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir tmpfs mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "vipd-test-tmpfs",
            ])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(out.status.success(), "mount tmpfs: {}", text(&out));
        Tmpfs(dir.into())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = Command::new("umount").arg(&self.0).output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("umount {}: {out:?}", self.0.display());
        }
    }
}

/// The snapshot names in `dir`.
fn names_in(dir: &Path) -> Vec<String> {
    files(dir).0
}

/// Two vipd nodes electing the VIP holder with VRRP, `snapshot:` on with a
/// 12 s period against a real etcd member on be1: exactly one snapshot per
/// period, by the master; after a failover the new master takes the next.
/// (LbLab runs at most two vipd nodes; the three-node case is
/// `three_stacked_nodes_one_snapshot_per_period_then_a_three_member_restore`.)
#[test]
fn snapshot_lab_one_per_period_by_the_master_and_the_next_after_failover() {
    use vip_tests::scenario::{Fwd, LbLab, LbOptions};
    use vip_userspace::dataplane::kernel::AttachMode;
    let cleanup = scratch("snap-lab");
    let root = cleanup.0.clone();
    let pki = TestPki::new();
    // be1 is node index 2: 10.77.0.12 (LbLab's order: client, lb, be1...).
    let be1_ip = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 12));
    let (creds, server) = etcd::issue(&pki, &root.join("pki"), "be1", be1_ip);
    let interval = 12u64;
    let extra = format!(
        "snapshot: {{ endpoints: [\"https://{be1_ip}:2379\"], ca: \"{}\", cert: \"{}\", key: \"{}\", dir: \"{}\", interval: {interval}s, jitter: 0s, keep: 20 }}\n",
        creds.ca.display(),
        creds.cert.display(),
        creds.key.display(),
        root.join("snaps-lb").display()
    );
    let mut l = LbLab::start_with(
        "etcd-snap-lab",
        &LbOptions {
            second_lb: true,
            extra,
            ..LbOptions::new(AttachMode::Skb, Fwd::Dsr)
        },
    );
    assert_eq!(l.lab.node("be1").ipv4.to_string(), be1_ip.to_string());
    let m = etcd::start(
        &l.lab,
        "be1",
        "be1",
        &root.join("etcd-data"),
        creds,
        server,
        be1_ip,
    );
    etcd::put_all(&m, &keys(500));
    // lb2 writes into its own folder (its config is lb's with priority 100).
    let lb2_cfg = l.vipd2.as_ref().expect("lb2").1.clone();
    let text = std::fs::read_to_string(&lb2_cfg).expect("read lb2 config");
    std::fs::write(&lb2_cfg, text.replace("snaps-lb\"", "snaps-lb2\"")).expect("write lb2 config");
    l.respawn_vipd("lb2");
    let (d1, d2) = (root.join("snaps-lb"), root.join("snaps-lb2"));

    let master = |l: &LbLab, node: &str| {
        l.try_status_of(node)
            .is_ok_and(|s| s.vrrp.iter().all(|v| v.state == "master"))
    };
    let wait = |what: &str, secs: u64, f: &dyn Fn() -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(secs);
        while !f() {
            assert!(
                std::time::Instant::now() < end,
                "{what} within {secs}s\n{}",
                l.lab.all_logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("lb master", 20, &|| master(&l, "lb"));
    // Two periods by lb, none by lb2.
    wait("two snapshots by lb", 3 * interval + 5, &|| {
        names_in(&d1).len() >= 2
    });
    assert!(
        names_in(&d2).is_empty(),
        "the backup took none: {:?}",
        names_in(&d2)
    );
    let by_lb = names_in(&d1);
    let periods: Vec<u64> = by_lb
        .iter()
        .map(|n| vip_userspace::snapshot::plan::parse_name(n).expect("a snapshot name") / interval)
        .collect();
    let mut unique = periods.clone();
    unique.dedup();
    assert_eq!(unique, periods, "one snapshot per period: {by_lb:?}");
    // The claim in etcd names lb.
    let key = vip_userspace::snapshot::period_key(periods[0]);
    let out = etcd::etcdctl(&m, &["get", &key, "--print-value-only"]);
    let who = String::from_utf8_lossy(&out.stdout);
    assert!(who.contains("taken by 10.77.0.11"), "{key}: {who}");
    let lb = l.metrics_of("lb");
    assert!(
        lb.get("vipd_etcd_snapshot_taken_total")
            .copied()
            .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        lb.get("vipd_etcd_snapshot_last_success_timestamp_seconds")
            .copied()
            .unwrap_or(0.0)
            > 0.0
    );
    assert_eq!(
        l.metrics_of("lb2")
            .get("vipd_etcd_snapshot_taken_total")
            .copied(),
        Some(0.0)
    );

    // Failover: lb stops; lb2 becomes master and takes the next period's.
    l.stop_vipd();
    wait("lb2 master", 20, &|| master(&l, "lb2"));
    let lb_final = names_in(&d1);
    wait("a snapshot by lb2", 2 * interval + 5, &|| {
        !names_in(&d2).is_empty()
    });
    let by_lb2 = names_in(&d2);
    let all: Vec<&String> = lb_final.iter().chain(by_lb2.iter()).collect();
    let mut periods: Vec<u64> = all
        .iter()
        .map(|n| vip_userspace::snapshot::plan::parse_name(n).expect("a snapshot name") / interval)
        .collect();
    periods.sort_unstable();
    let n = periods.len();
    periods.dedup();
    assert_eq!(
        periods.len(),
        n,
        "never two snapshots of one period: {lb_final:?} {by_lb2:?}"
    );
    for f in by_lb2 {
        vip_userspace::snapshot::verify_file(&d2.join(f)).expect("lb2's snapshot verifies");
    }
}

/// Removes a folder when dropped.
struct RemoveDir(PathBuf);

/// A fresh folder of this test's own outside any lab, removed on drop.
fn scratch(hint: &str) -> RemoveDir {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    RemoveDir(std::env::temp_dir().join(format!(
        "vipd-{hint}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )))
}

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Issue 19 on the stacked lab (tests/src/stacked.rs): three nodes, each
/// with vipd and an etcd member of ONE three-member cluster run as kubeadm
/// runs it (peer URLs over https, peer and client certificate auth), every
/// vipd reading the same file with `snapshot:` on (its local member at
/// 127.0.0.1, the default). Exactly one snapshot per period across a master
/// change (be1's apiserver stops: its priority drops, be2 takes over) and a
/// master death (be2's vipd SIGKILLed: be3 takes over): none twice, none
/// missing. Then the README's restore runbook for all three members, peer
/// URLs over https, on the last snapshot vipd took.
#[test]
fn three_stacked_nodes_one_snapshot_per_period_then_a_three_member_restore() {
    use vip_tests::{netns::poll_until, scenario::BACKENDS, stacked::StackedLab};
    let cleanup = scratch("snap-stacked");
    let root = cleanup.0.clone();
    let interval = 12u64;
    // One folder for the three nodes (one filesystem here; on real nodes
    // each has its own): one file per period in it is the cluster's count.
    let snaps = root.join("snaps");
    let pki_dir = |be: &str| root.join("pki").join(be);
    // Every node names the same client credentials: be1's (one CA).
    let extra = format!(
        "snapshot: {{ ca: \"{ca}\", cert: \"{cert}\", key: \"{key}\", dir: \"{dir}\", interval: {interval}s, jitter: 0s, keep: 50 }}\n",
        ca = pki_dir("be1").join("etcd-ca.crt").display(),
        cert = pki_dir("be1").join("healthcheck-client.crt").display(),
        key = pki_dir("be1").join("healthcheck-client.key").display(),
        dir = snaps.display(),
    );
    let (mut l, mut members) = StackedLab::start_with("etcd-stacked", &extra, |lab, pki| {
        let ips: Vec<IpAddr> = BACKENDS.iter().map(|be| lab.node(be).ipv4.into()).collect();
        let cluster: Vec<String> = BACKENDS
            .iter()
            .zip(&ips)
            .map(|(be, ip)| format!("{be}={}", etcd::peer_url(*ip)))
            .collect();
        let cluster = cluster.join(",");
        let members: Vec<Member> = BACKENDS
            .iter()
            .zip(&ips)
            .map(|(be, ip)| {
                let (creds, certs) = etcd::issue(pki, &pki_dir(be), be, *ip);
                let data = root.join("etcd").join(be);
                etcd::spawn(lab, be, be, &data, creds, certs, *ip, &cluster)
            })
            .collect();
        for m in &members {
            etcd::wait_healthy(m, Duration::from_secs(30));
        }
        members
    });
    let m1 = &members[0];
    let out = etcd::etcdctl(m1, &["member", "list"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    for m in &members {
        assert!(
            list.contains(&m.peer_url()),
            "member list has {}'s https peer URL: {list}",
            m.name
        );
    }
    let written = keys(300);
    etcd::put_all(m1, &written);

    let wait = |l: &StackedLab, what: &str, secs: u64, f: &dyn Fn(&StackedLab) -> bool| {
        poll_until(
            Duration::from_secs(secs),
            || format!("{what}\n{}", l.logs()),
            || f(l),
        );
    };
    let taken = |l: &StackedLab, be: &str| etcd::periods_taken(&l.vipd(be).logs());
    let master = |l: &StackedLab, be: &str| {
        l.try_status_of(be)
            .is_ok_and(|s| !s.vrrp.is_empty() && s.vrrp.iter().all(|v| v.state == "master"))
    };
    wait(&l, "be1 master", 30, &|l| master(l, "be1"));
    wait(&l, "two snapshots by be1", 3 * interval + 10, &|l| {
        taken(l, "be1").len() >= 2
    });

    // A master change: be1's apiserver stops, its priority drops below
    // be2's (local apiserver tracking); be1's vipd lives on as a backup.
    l.stop_apiserver("be1");
    wait(&l, "be2 master", 30, &|l| master(l, "be2"));
    wait(&l, "a snapshot by be2", 2 * interval + 10, &|l| {
        !taken(l, "be2").is_empty()
    });
    // A master death, right after its snapshot (well before the next
    // slot): be2's vipd is SIGKILLed; be3 (180) outranks be1 (200 - 50).
    l.vipd("be2").signal(libc::SIGKILL);
    let be2_took = taken(&l, "be2");
    wait(&l, "be3 master", 30, &|l| master(l, "be3"));
    wait(&l, "two snapshots by be3", 3 * interval + 10, &|l| {
        taken(l, "be3").len() >= 2
    });
    // Stop the scheduling before counting (and before the restore).
    for be in ["be1", "be3"] {
        l.vipd(be).term_within(Duration::from_secs(10), "vipd");
    }

    let by: Vec<(&str, Vec<u64>)> = vec![
        ("be1", taken(&l, "be1")),
        ("be2", be2_took),
        ("be3", taken(&l, "be3")),
    ];
    println!("periods taken by each node: {by:?}");
    let mut all: Vec<u64> = by.iter().flat_map(|(_, p)| p.clone()).collect();
    all.sort_unstable();
    let mut unique = all.clone();
    unique.dedup();
    assert_eq!(unique, all, "no period taken twice: {by:?}");
    let (first, last) = (all[0], all[all.len() - 1]);
    assert_eq!(
        all,
        (first..=last).collect::<Vec<_>>(),
        "no period missing between the first and the last: {by:?}"
    );
    // Each master took its own: be1's come first, be3's last.
    let (b1, b2, b3) = (&by[0].1, &by[1].1, &by[2].1);
    assert!(
        b1.iter().max() < b2.iter().min() && b2.iter().max() < b3.iter().min(),
        "the takers follow the masters: {by:?}"
    );
    // The folder holds exactly those, one file each.
    let files: Vec<u64> = names_in(&snaps)
        .iter()
        .map(|n| vip_userspace::snapshot::plan::parse_name(n).expect("a snapshot name") / interval)
        .collect();
    assert_eq!(
        files,
        all,
        "one file per period taken: {:?}",
        names_in(&snaps)
    );

    // The README's runbook on the last one (be3's), all three members.
    let newest = snaps.join(names_in(&snaps).last().expect("a snapshot"));
    etcd::put_all(
        m1,
        &[("/vipd-test/after-the-snapshot".into(), "gone".into())],
    );
    for m in &members {
        m.proc.term_within(Duration::from_secs(10), "etcd");
    }
    let cluster: Vec<String> = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect();
    let cluster = cluster.join(",");
    let mut restored = vec![];
    for m in &members {
        let data = root.join("restored").join(&m.name);
        let r = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&newest)
            .args(["--name", &m.name])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-token", "etcd-restored"])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("etcdctl snapshot restore");
        assert!(r.status.success(), "restore {}: {}", m.name, text(&r));
        restored.push(etcd::spawn_restored(&l.lab, m, &data, &cluster));
    }
    for m in &restored {
        etcd::wait_healthy(m, Duration::from_secs(30));
    }
    let health = etcd::etcdctl(&restored[0], &["endpoint", "health", "--cluster"]);
    assert!(
        health.status.success(),
        "endpoint health --cluster: {}",
        text(&health)
    );
    for m in &restored {
        let read = etcd::get_prefix(m, "/vipd-test/");
        assert!(
            read == written,
            "{} serves every key byte for byte, and nothing written after the snapshot ({} keys read, {} written)",
            m.name,
            read.len(),
            written.len()
        );
    }
    drop(restored);
    members.clear();
}
