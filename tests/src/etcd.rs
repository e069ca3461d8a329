//! A real etcd 3.4 member (Debian's etcd-server) inside a lab node's namespace,
//! secured the way kubeadm runs a stacked member: client TLS with
//! `--client-cert-auth --trusted-ca-file`, certificates from a `TestPki`.
//! The tests drive it with Debian's etcdctl, independently of vipd's client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::certs::TestPki;
use crate::netns::{Lab, Proc};

/// The client port etcd listens on in the member's namespace (kubeadm's).
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// Client credentials: the CA, a client certificate and key.
#[derive(Debug, Clone)]
pub struct Creds {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running single-member etcd.
pub struct Member {
    pub node: String,
    pub name: String,
    pub data_dir: PathBuf,
    /// The client credentials a healthy client uses (kubeadm's
    /// healthcheck-client equivalent).
    pub creds: Creds,
    /// The member's server certificate and key (reused by a restored member).
    server: (PathBuf, PathBuf),
    /// The address it serves clients on.
    pub listen: IpAddr,
    pub proc: Proc,
}

impl Member {
    /// `https://<listen>:2379`.
    pub fn url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.listen, CLIENT_PORT))
    }
}

/// Issues the member's server certificate (SANs localhost, 127.0.0.1 and
/// `ip`, as kubeadm's etcd/server.crt has the node's address) and a client
/// certificate under `pki`, in `dir`.
pub fn issue(pki: &TestPki, dir: &Path, name: &str, ip: IpAddr) -> (Creds, (PathBuf, PathBuf)) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let ca = dir.join("etcd-ca.crt");
    std::fs::write(&ca, pki.ca_pem()).unwrap_or_else(|e| panic!("write {}: {e}", ca.display()));
    let (c, k) = pki.issue_server(&["localhost", name], &[IpAddr::V4(Ipv4Addr::LOCALHOST), ip]);
    let server = pki.write(dir, &format!("{name}-server"), &c, &k);
    let (c, k) = pki.issue_client("kube-etcd-healthcheck-client", &[]);
    let (cert, key) = pki.write(dir, "healthcheck-client", &c, &k);
    (Creds { ca, cert, key }, server)
}

/// Starts etcd named `name` in `node` with data in `data_dir` (fresh, or a
/// restored one), listening for clients on `listen`:2379 with client-cert
/// auth, and waits until it answers `endpoint health` through TLS.
pub fn start(
    lab: &Lab,
    node: &str,
    name: &str,
    data_dir: &Path,
    creds: Creds,
    server: (PathBuf, PathBuf),
    listen: IpAddr,
) -> Member {
    let client = format!("https://{}", SocketAddr::new(listen, CLIENT_PORT));
    let peer = format!("http://127.0.0.1:{PEER_PORT}");
    let d = data_dir.to_string_lossy().into_owned();
    let (scert, skey) = (
        server.0.to_string_lossy().into_owned(),
        server.1.to_string_lossy().into_owned(),
    );
    let ca = creds.ca.to_string_lossy().into_owned();
    let proc = lab.spawn(
        node,
        "etcd",
        &[
            "--name",
            name,
            "--data-dir",
            &d,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            // A single member: peer traffic never leaves the namespace.
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("{name}={peer}"),
            // As kubeadm's etcd.yaml: clients must present a certificate
            // the etcd CA signed.
            "--client-cert-auth=true",
            "--trusted-ca-file",
            &ca,
            "--cert-file",
            &scert,
            "--key-file",
            &skey,
            // The tests write their keys in a few big transactions.
            "--max-txn-ops=5000",
            "--logger=zap",
        ],
        &[],
    );
    let m = Member {
        node: node.into(),
        name: name.into(),
        data_dir: data_dir.into(),
        creds,
        server,
        listen,
        proc,
    };
    lab.wait_tcp(
        node,
        SocketAddr::new(listen, CLIENT_PORT),
        Duration::from_secs(20),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = etcdctl(lab, &m, &["endpoint", "health"]);
        if out.status.success() {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "etcd {name} not healthy: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.proc.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A fresh single member with fresh credentials under `pki`, serving
/// clients on `listen` (127.0.0.1, or the node's lab address for clients in
/// other nodes).
pub fn start_fresh(lab: &Lab, node: &str, pki: &TestPki, listen: IpAddr) -> Member {
    let dir = lab.dir().join(format!("etcd-{node}"));
    let (creds, server) = issue(pki, &dir.join("pki"), node, listen);
    start(lab, node, node, &dir.join("data"), creds, server, listen)
}

/// Starts a member on a restored data folder with the first member's
/// certificates (the first must be stopped: same ports).
pub fn start_restored(lab: &Lab, old: &Member, name: &str, data_dir: &Path) -> Member {
    start(
        lab,
        &old.node,
        name,
        data_dir,
        old.creds.clone(),
        old.server.clone(),
        old.listen,
    )
}

/// The TLS flags etcdctl needs for `m`.
fn tls_args(m: &Member) -> Vec<String> {
    vec![
        format!("--endpoints={}", m.url()),
        format!("--cacert={}", m.creds.ca.display()),
        format!("--cert={}", m.creds.cert.display()),
        format!("--key={}", m.creds.key.display()),
        "--command-timeout=30s".into(),
    ]
}

/// Runs etcdctl (API v3) against `m` from inside its node.
pub fn etcdctl(lab: &Lab, m: &Member, args: &[&str]) -> Output {
    etcdctl_stdin(lab, m, args, None)
}

fn etcdctl_stdin(lab: &Lab, m: &Member, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let ns = lab.node(&m.node).ns.clone();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &ns, "etcdctl"])
        .args(tls_args(m))
        .args(args)
        .env("ETCDCTL_API", "3")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .expect("spawn etcdctl (cargo xtask bootstrap installs etcd-client)");
    if let Some(input) = stdin
        && let Some(mut w) = child.stdin.take()
    {
        // A broken pipe means etcdctl stopped reading: its stderr says why.
        let _ = w.write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("wait etcdctl")
}

/// Writes `pairs` in transactions of up to 1000 puts (one `etcdctl txn`
/// each: thousands of separate `etcdctl put` processes would take minutes).
/// Keys and values must be free of whitespace.
pub fn put_all(lab: &Lab, m: &Member, pairs: &[(String, String)]) {
    for chunk in pairs.chunks(1000) {
        // etcdctl txn's stdin: compares, blank line, success ops, blank
        // line, failure ops, blank line.
        let mut txn = String::from("\n");
        for (k, v) in chunk {
            assert!(!k.contains(char::is_whitespace) && !v.contains(char::is_whitespace));
            txn.push_str(&format!("put {k} {v}\n"));
        }
        txn.push_str("\n\n");
        let out = etcdctl_stdin(lab, m, &["txn"], Some(&txn));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SUCCESS"),
            "etcdctl txn failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every key under `prefix` with its value, as etcdctl reads them.
pub fn get_prefix(lab: &Lab, m: &Member, prefix: &str) -> Vec<(String, String)> {
    let out = etcdctl(lab, m, &["get", "--prefix", prefix]);
    assert!(
        out.status.success(),
        "etcdctl get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines
        .chunks(2)
        .map(|c| {
            (
                c[0].to_string(),
                c.get(1).copied().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `etcdctl snapshot status -w json`: (revision, totalKey), for checking
/// vipd's own reading of a snapshot against etcd's tool.
pub fn snapshot_status(file: &Path) -> (u64, u64) {
    let out = std::process::Command::new("etcdctl")
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .env("ETCDCTL_API", "3")
        .output()
        .expect("run etcdctl snapshot status");
    assert!(
        out.status.success(),
        "etcdctl snapshot status {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("etcdctl snapshot status prints JSON");
    (
        v["revision"].as_u64().expect("revision"),
        v["totalKey"].as_u64().expect("totalKey"),
    )
}
