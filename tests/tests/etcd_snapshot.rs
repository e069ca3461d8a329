//! etcd snapshots against a real etcd 3.4 (issue 19): `vipd etcd-snapshot`
//! over mutual TLS, verified, restored with `etcdctl snapshot restore` into a
//! fresh member that serves every key byte for byte; and the faults: etcd
//! unreachable, wrong CA, untrusted client certificate, a full disk, too
//! little space for the next one, a killed run, a corrupt snapshot on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use vip_tests::{
    certs::TestPki,
    etcd::{self, Creds, Member},
    netns::Lab,
    vipd_bin,
};

/// Runs `vipd etcd-snapshot` inside `node` with these credentials.
fn snapshot(lab: &Lab, node: &str, url: &str, creds: &Creds, dir: &Path, extra: &[&str]) -> Output {
    let ns = lab.node(node).ns.clone();
    Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(vipd_bin())
        .arg("etcd-snapshot")
        .args(["--endpoint", url])
        .arg("--ca")
        .arg(&creds.ca)
        .arg("--cert")
        .arg(&creds.cert)
        .arg("--key")
        .arg(&creds.key)
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run vipd etcd-snapshot")
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
    let m = etcd::start_fresh(&lab, "cp1", &pki);
    let written = keys(3000);
    etcd::put_all(&lab, &m, &written);

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
    let peer = format!("http://127.0.0.1:{}", etcd::PEER_PORT);
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
    let m2 = etcd::start_restored(&lab, &m, "cp1", &restored);
    let read = etcd::get_prefix(&lab, &m2, "/vipd-test/");
    assert_eq!(read.len(), written.len(), "every key restored");
    assert!(read == written, "every value restored byte for byte");
}

#[test]
fn snapshot_faults_lose_nothing_and_name_the_fix() {
    let lab = Lab::new("etcd-faults", &["cp1"]);
    let pki = TestPki::new();
    let m = etcd::start_fresh(&lab, "cp1", &pki);
    etcd::put_all(&lab, &m, &keys(2000));
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
    let (ocreds, _) = etcd::issue(&other, &odir, "other");
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
    let m = etcd::start_fresh(&lab, "cp1", &pki);
    // About 40 MB, so the stream takes long enough to be cut.
    let big: Vec<(String, String)> = (0..40_000)
        .map(|i| (format!("/big/{i:06}"), "x".repeat(1000)))
        .collect();
    etcd::put_all(&lab, &m, &big);
    let dir = lab.dir().join("snapshots");
    let good = ok_snapshot(&lab, &m, &dir, &[]);
    std::thread::sleep(Duration::from_millis(1100));

    let ns = lab.node("cp1").ns.clone();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(vipd_bin())
        .args(["etcd-snapshot", "--endpoint", &m.url()])
        .arg("--ca")
        .arg(&m.creds.ca)
        .arg("--cert")
        .arg(&m.creds.cert)
        .arg("--key")
        .arg(&m.creds.key)
        .arg("--dir")
        .arg(&dir)
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
