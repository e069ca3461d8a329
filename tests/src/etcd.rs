//! A real etcd 3.4 member (Debian's etcd-server) inside a lab node's namespace,
//! secured the way kubeadm runs a stacked member (its etcd.yaml): client TLS
//! with `--client-cert-auth --trusted-ca-file`, peer TLS with
//! `--peer-client-cert-auth --peer-trusted-ca-file` and a peer certificate
//! for both ends, peer URLs `https://<node address>:2380`, clients on
//! 127.0.0.1 and the node's address. Certificates from a `TestPki`. One
//! member alone, or several forming one cluster ([`spawn`] each, then
//! [`wait_healthy`]). The tests drive it with Debian's etcdctl,
//! independently of vipd's client.

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

/// A member's own certificates and keys, as kubeadm's `etcd/server.crt`
/// (to clients) and `etcd/peer.crt` (to and from the other members).
#[derive(Debug, Clone)]
pub struct MemberCerts {
    pub server: (PathBuf, PathBuf),
    pub peer: (PathBuf, PathBuf),
}

/// A running etcd member.
pub struct Member {
    /// The lab node it runs in (a label; `ns` is where).
    pub node: String,
    /// Its network namespace.
    pub ns: String,
    pub name: String,
    pub data_dir: PathBuf,
    /// The client credentials a healthy client uses (kubeadm's
    /// healthcheck-client equivalent).
    pub creds: Creds,
    /// The member's certificates (reused by a restored member).
    certs: MemberCerts,
    /// The address it serves clients and peers on.
    pub listen: IpAddr,
    pub proc: Proc,
}

impl Member {
    /// `https://<listen>:2379`.
    pub fn url(&self) -> String {
        format!("https://{}", SocketAddr::new(self.listen, CLIENT_PORT))
    }

    /// `https://<listen>:2380`, its peer URL.
    pub fn peer_url(&self) -> String {
        peer_url(self.listen)
    }
}

/// A member's peer URL on `ip`: https, as kubeadm's
/// `--initial-advertise-peer-urls`.
pub fn peer_url(ip: IpAddr) -> String {
    format!("https://{}", SocketAddr::new(ip, PEER_PORT))
}

/// Issues the member's server and peer certificates (SANs localhost,
/// `name`, 127.0.0.1 and `ip`, as kubeadm's etcd/server.crt and
/// etcd/peer.crt have the node's name and address) and a client
/// certificate under `pki`, in `dir`.
pub fn issue(pki: &TestPki, dir: &Path, name: &str, ip: IpAddr) -> (Creds, MemberCerts) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let ca = dir.join("etcd-ca.crt");
    std::fs::write(&ca, pki.ca_pem()).unwrap_or_else(|e| panic!("write {}: {e}", ca.display()));
    let ips = [IpAddr::V4(Ipv4Addr::LOCALHOST), ip];
    let (c, k) = pki.issue_server(&["localhost", name], &ips);
    let server = pki.write(dir, &format!("{name}-server"), &c, &k);
    let (c, k) = pki.issue_peer(&["localhost", name], &ips);
    let peer = pki.write(dir, &format!("{name}-peer"), &c, &k);
    let (c, k) = pki.issue_client("kube-etcd-healthcheck-client", &[]);
    let (cert, key) = pki.write(dir, "healthcheck-client", &c, &k);
    (Creds { ca, cert, key }, MemberCerts { server, peer })
}

fn arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Starts etcd named `name` in `node` with data in `data_dir` (fresh, or a
/// restored one) as a member of `initial_cluster` (`name=peer-url,...`,
/// etcd's `--initial-cluster`), serving clients on `listen`:2379 (and
/// 127.0.0.1:2379) with client-cert auth and peers on `listen`:2380 with
/// peer-cert auth. Returns at once: a member of several answers only once
/// a quorum runs ([`wait_healthy`]).
#[expect(
    clippy::too_many_arguments,
    reason = "etcd's own flags, one per argument, read best at the call"
)]
pub fn spawn(
    lab: &Lab,
    node: &str,
    name: &str,
    data_dir: &Path,
    creds: Creds,
    certs: MemberCerts,
    listen: IpAddr,
    initial_cluster: &str,
) -> Member {
    let ns = lab.node(node).ns.clone();
    let launch = |args: &[&str]| lab.spawn(node, "etcd", args, &[]);
    spawn_with(
        launch,
        &ns,
        node,
        name,
        data_dir,
        creds,
        certs,
        listen,
        initial_cluster,
    )
}

/// [`spawn`] in any namespace `ns` (a `Lab`'s or another harness's):
/// `launch` starts `etcd` with the arguments given, in `ns`.
#[expect(
    clippy::too_many_arguments,
    reason = "etcd's own flags, one per argument, read best at the call"
)]
pub fn spawn_with(
    launch: impl FnOnce(&[&str]) -> Proc,
    ns: &str,
    node: &str,
    name: &str,
    data_dir: &Path,
    creds: Creds,
    certs: MemberCerts,
    listen: IpAddr,
    initial_cluster: &str,
) -> Member {
    let client = format!("https://{}", SocketAddr::new(listen, CLIENT_PORT));
    // kubeadm listens on 127.0.0.1 and the node's address: a vipd on the
    // node reaches its member at https://127.0.0.1:2379 (snapshot's
    // default), the others at the address.
    let listen_clients = if listen.is_loopback() {
        client.clone()
    } else {
        format!("https://127.0.0.1:{CLIENT_PORT},{client}")
    };
    let peer = peer_url(listen);
    let d = arg(data_dir);
    let ca = arg(&creds.ca);
    let (scert, skey) = (arg(&certs.server.0), arg(&certs.server.1));
    let (pcert, pkey) = (arg(&certs.peer.0), arg(&certs.peer.1));
    let proc = launch(&[
        "--name",
        name,
        "--data-dir",
        &d,
        "--listen-client-urls",
        &listen_clients,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        initial_cluster,
        // As kubeadm's etcd.yaml: clients must present a certificate
        // the etcd CA signed...
        "--client-cert-auth=true",
        "--trusted-ca-file",
        &ca,
        "--cert-file",
        &scert,
        "--key-file",
        &skey,
        // ...and so must peers, over TLS.
        "--peer-client-cert-auth=true",
        "--peer-trusted-ca-file",
        &ca,
        "--peer-cert-file",
        &pcert,
        "--peer-key-file",
        &pkey,
        // The tests write their keys in a few big transactions.
        "--max-txn-ops=5000",
        "--logger=zap",
    ]);
    Member {
        node: node.into(),
        ns: ns.into(),
        name: name.into(),
        data_dir: data_dir.into(),
        creds,
        certs,
        listen,
        proc,
    }
}

/// Waits until `m` answers `endpoint health` through TLS.
pub fn wait_healthy(m: &Member, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let out = etcdctl(m, &["endpoint", "health"]);
        if out.status.success() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "etcd {} not healthy: {}\n{}",
            m.name,
            String::from_utf8_lossy(&out.stderr),
            m.proc.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A member alone ([`spawn`] with itself as the whole cluster), once
/// healthy.
pub fn start(
    lab: &Lab,
    node: &str,
    name: &str,
    data_dir: &Path,
    creds: Creds,
    certs: MemberCerts,
    listen: IpAddr,
) -> Member {
    let cluster = format!("{name}={}", peer_url(listen));
    let m = spawn(lab, node, name, data_dir, creds, certs, listen, &cluster);
    wait_healthy(&m, Duration::from_secs(20));
    m
}

/// A fresh single member with fresh credentials under `pki`, serving
/// clients on `listen` (127.0.0.1, or the node's lab address for clients in
/// other nodes).
pub fn start_fresh(lab: &Lab, node: &str, pki: &TestPki, listen: IpAddr) -> Member {
    let dir = lab.dir().join(format!("etcd-{node}"));
    let (creds, certs) = issue(pki, &dir.join("pki"), node, listen);
    start(lab, node, node, &dir.join("data"), creds, certs, listen)
}

/// Starts a member on a restored data folder with the first member's
/// certificates (the first must be stopped: same ports). Not waited for:
/// a restored member of several needs its peers ([`wait_healthy`]).
pub fn spawn_restored(lab: &Lab, old: &Member, data_dir: &Path, initial_cluster: &str) -> Member {
    spawn(
        lab,
        &old.node,
        &old.name,
        data_dir,
        old.creds.clone(),
        old.certs.clone(),
        old.listen,
        initial_cluster,
    )
}

/// A lone member restarted on a restored data folder, once healthy.
pub fn start_restored(lab: &Lab, old: &Member, data_dir: &Path) -> Member {
    let cluster = format!("{}={}", old.name, old.peer_url());
    let m = spawn_restored(lab, old, data_dir, &cluster);
    wait_healthy(&m, Duration::from_secs(20));
    m
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
pub fn etcdctl(m: &Member, args: &[&str]) -> Output {
    etcdctl_stdin(m, args, None)
}

fn etcdctl_stdin(m: &Member, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let ns = m.ns.clone();
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
pub fn put_all(m: &Member, pairs: &[(String, String)]) {
    for chunk in pairs.chunks(1000) {
        // etcdctl txn's stdin: compares, blank line, success ops, blank
        // line, failure ops, blank line.
        let mut txn = String::from("\n");
        for (k, v) in chunk {
            assert!(!k.contains(char::is_whitespace) && !v.contains(char::is_whitespace));
            txn.push_str(&format!("put {k} {v}\n"));
        }
        txn.push_str("\n\n");
        let out = etcdctl_stdin(m, &["txn"], Some(&txn));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("SUCCESS"),
            "etcdctl txn failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every key under `prefix` with its value, as etcdctl reads them.
pub fn get_prefix(m: &Member, prefix: &str) -> Vec<(String, String)> {
    let out = etcdctl(m, &["get", "--prefix", prefix]);
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

/// The periods whose scheduled snapshot a vipd log says that vipd took
/// (its "etcd snapshot taken and verified period=N" lines).
pub fn periods_taken(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("etcd snapshot taken and verified"))
        .map(|l| {
            let at = l.find("period=").expect("the log line names its period") + "period=".len();
            let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().expect("a period number")
        })
        .collect()
}
