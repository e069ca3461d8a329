//! The apiserver stand-in over loopback: TLS verification, endpoints, watch
//! stream, failure controls, and kubectl as an independent client.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rustls::CertificateError;
use vip_tests::certs::TestPki;
use vip_tests::standin::{
    self, ClientError, HttpsConn, StandinHandle, StandinOptions, client_config,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const TIMEOUT: Duration = Duration::from_secs(5);

fn start(pki: &TestPki, dns: &[&str], ips: &[IpAddr], name: &str) -> StandinHandle {
    let (cert_pem, key_pem) = pki.issue_server(dns, ips);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let listen = listener.local_addr().expect("local addr");
    standin::spawn_in_thread(
        StandinOptions {
            listen,
            cert_pem,
            key_pem,
            name: name.to_string(),
            watch_interval: Duration::from_millis(50),
            client_ca_pem: None,
            git_version: standin::GIT_VERSION.into(),
        },
        listener,
    )
}

fn connect(pki: &TestPki, addr: SocketAddr, server_name: &str) -> HttpsConn {
    HttpsConn::connect(
        addr,
        server_name,
        client_config(&pki.ca_pem(), None),
        TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("TLS connect to {addr} as {server_name}: {e:?}"))
}

/// A temp dir removed on drop, also when the test panics.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vt-standin-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn endpoints_and_keepalive() {
    let pki = TestPki::new();
    let server = start(&pki, &["localhost"], &[LOCALHOST], "be1");
    let mut c = connect(&pki, server.addr(), "127.0.0.1");

    // Several requests on one connection: keep-alive works.
    for path in ["/readyz", "/livez", "/healthz"] {
        let r = c.get(path).expect("GET health endpoint");
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert_eq!(r.text(), "ok", "{path}");
        assert_eq!(r.header("X-Standin-Name"), Some("be1"), "{path}");
    }
    let r = c.get("/version").expect("GET /version");
    assert_eq!(r.status, 200);
    let v = r.json().expect("/version is JSON");
    assert_eq!(v["gitVersion"], standin::GIT_VERSION, "{v}");
    assert_eq!(v["major"], "1", "{v}");
    assert_eq!(c.get("/whoami").expect("GET /whoami").text(), "be1");

    let r = c
        .get("/api/v1/namespaces/default/configmaps/x")
        .expect("GET missing object");
    assert_eq!(r.status, 404);
    let s = r.json().expect("404 body is a Status");
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["reason"], "NotFound");
    assert_eq!(s["message"], "configmaps \"x\" not found");

    // SNI by DNS name works as well as by IP.
    let mut c2 = connect(&pki, server.addr(), "localhost");
    assert_eq!(c2.get("/readyz").expect("GET via DNS name").status, 200);
}

#[test]
fn watch_stream_delivers_events() {
    let pki = TestPki::new();
    let server = start(&pki, &["localhost"], &[LOCALHOST], "be2");
    let c = connect(&pki, server.addr(), "localhost");
    let mut w = c
        .watch("/api/v1/namespaces/default/configmaps?watch=1")
        .expect("start watch");
    let chunked = w
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked");
    assert!(chunked, "watch must be chunked: {:?}", w.headers);

    let mut last_rv = 0u64;
    for i in 0..3 {
        let ev = w
            .next_event()
            .unwrap_or_else(|e| panic!("watch event {i}: {e:?}"));
        assert_eq!(ev["type"], "ADDED", "{ev}");
        assert_eq!(ev["object"]["kind"], "ConfigMap", "{ev}");
        assert_eq!(ev["object"]["data"]["server"], "be2", "{ev}");
        let rv: u64 = ev["object"]["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("resourceVersion is a numeric string: {ev}"));
        assert!(
            rv > last_rv,
            "resourceVersion must grow: {rv} after {last_rv}"
        );
        last_rv = rv;
    }

    // Stopping the server ends the stream (no silent hang).
    server.stop();
    w.set_read_timeout(TIMEOUT).expect("set timeout");
    let start = Instant::now();
    let end = loop {
        match w.next_event() {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        !matches!(&end, ClientError::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "stream should end when the server stops, got a timeout: {end:?}"
    );
    assert!(start.elapsed() < TIMEOUT);
}

#[test]
fn readyz_and_auth_controls() {
    let pki = TestPki::new();
    let server = start(&pki, &["localhost"], &[LOCALHOST], "be3");
    let mut c = connect(&pki, server.addr(), "127.0.0.1");
    assert_eq!(c.get("/readyz").expect("readyz").status, 200);

    let r = c
        .request("POST", "/standin/readyz?status=503")
        .expect("control");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c.get("/readyz").expect("readyz after 503");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("readyz check failed"), "{}", r.text());
    // Liveness is independent of readiness.
    assert_eq!(c.get("/livez").expect("livez").status, 200);

    c.request("POST", "/standin/readyz?status=200")
        .expect("control");
    assert_eq!(c.get("/readyz").expect("readyz restored").status, 200);

    let r = c
        .request("POST", "/standin/auth?status=401")
        .expect("control");
    assert_eq!(r.status, 200);
    let r = c.get("/version").expect("version under 401");
    assert_eq!(r.status, 401);
    assert_eq!(r.json().expect("Status JSON")["reason"], "Unauthorized");
    c.request("POST", "/standin/auth?status=403")
        .expect("control");
    let r = c.get("/readyz").expect("readyz under 403");
    assert_eq!(r.status, 403);
    assert_eq!(r.json().expect("Status JSON")["code"], 403);
    c.request("POST", "/standin/auth?status=200")
        .expect("control");
    assert_eq!(c.get("/version").expect("version restored").status, 200);

    // Bad control input is a 400, not a state change.
    let r = c
        .request("POST", "/standin/readyz?status=banana")
        .expect("control");
    assert_eq!(r.status, 400);
    assert_eq!(c.get("/readyz").expect("readyz").status, 200);

    // hang: the request is read but never answered.
    c.request("POST", "/standin/readyz?status=hang")
        .expect("control");
    let mut h = connect(&pki, server.addr(), "127.0.0.1");
    h.set_read_timeout(Duration::from_millis(300))
        .expect("timeout");
    match h.get("/readyz") {
        Err(ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("hanging /readyz must time out, got {other:?}"),
    }
    // Other endpoints still answer while /readyz hangs.
    assert_eq!(c.get("/livez").expect("livez while hanging").status, 200);
}

#[test]
fn wrong_ca_and_missing_san_fail_verification() {
    let pki = TestPki::new();
    let other = TestPki::new();
    assert_ne!(
        pki.ca_pem(),
        other.ca_pem(),
        "two PKIs must have different CAs"
    );
    // The SAN holds localhost/127.0.0.1 but not the VIP name or address.
    let server = start(&pki, &["localhost"], &[LOCALHOST], "be1");

    let err = HttpsConn::connect(
        server.addr(),
        "127.0.0.1",
        client_config(&other.ca_pem(), None),
        TIMEOUT,
    )
    .err()
    .expect("a client trusting another CA must fail the handshake");
    assert!(
        matches!(
            err,
            ClientError::Tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        ),
        "{err:?}"
    );

    for name in ["kubernetes.vip", "10.77.0.100"] {
        let err = HttpsConn::connect(
            server.addr(),
            name,
            client_config(&pki.ca_pem(), None),
            TIMEOUT,
        )
        .err()
        .unwrap_or_else(|| panic!("certificate without SAN {name} must not verify for it"));
        assert!(
            matches!(
                err,
                ClientError::Tls(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ))
            ),
            "{name}: {err:?}"
        );
    }
    // The server survives failed handshakes.
    let mut c = connect(&pki, server.addr(), "127.0.0.1");
    assert_eq!(
        c.get("/readyz")
            .expect("readyz after bad handshakes")
            .status,
        200
    );
}

#[test]
fn client_certificates_are_required_when_configured() {
    let pki = TestPki::new();
    let (cert_pem, key_pem) = pki.issue_server(&["localhost"], &[LOCALHOST]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let listen = listener.local_addr().expect("addr");
    let server = standin::spawn_in_thread(
        StandinOptions {
            listen,
            cert_pem,
            key_pem,
            name: "mtls".into(),
            watch_interval: Duration::from_millis(50),
            client_ca_pem: Some(pki.ca_pem()),
            git_version: standin::GIT_VERSION.into(),
        },
        listener,
    );
    let (ccert, ckey) = pki.issue_client("vipd-probe", &["system:monitoring"]);
    let cfg = client_config(&pki.ca_pem(), Some((&ccert, &ckey)));
    let mut c = HttpsConn::connect(server.addr(), "localhost", cfg, TIMEOUT).expect("mTLS connect");
    assert_eq!(
        c.get("/readyz").expect("readyz with client cert").status,
        200
    );

    // Without a certificate: TLS 1.3 finishes the client side first, so the
    // rejection shows up on the first read at the latest.
    let res = HttpsConn::connect(
        server.addr(),
        "localhost",
        client_config(&pki.ca_pem(), None),
        TIMEOUT,
    )
    .and_then(|mut c| c.get("/readyz"));
    assert!(
        res.is_err(),
        "request without a client certificate must fail: {res:?}"
    );

    // A client certificate from another CA is rejected too.
    let other = TestPki::new();
    let (ocert, okey) = other.issue_client("intruder", &[]);
    let res = HttpsConn::connect(
        server.addr(),
        "localhost",
        client_config(&pki.ca_pem(), Some((&ocert, &okey))),
        TIMEOUT,
    )
    .and_then(|mut c| c.get("/readyz"));
    assert!(
        res.is_err(),
        "foreign client certificate must be rejected: {res:?}"
    );
}

#[test]
fn malformed_requests_do_not_kill_the_server() {
    let pki = TestPki::new();
    let server = start(&pki, &["localhost"], &[LOCALHOST], "be1");

    let mut c = connect(&pki, server.addr(), "127.0.0.1");
    c.write_raw(b"NOT A REQUEST\r\n\r\n").expect("write");
    assert_eq!(c.read_head().expect("answer to garbage").0, 400);

    let mut c = connect(&pki, server.addr(), "127.0.0.1");
    let mut big = b"GET /readyz HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    // The server may close before reading everything; only the status matters.
    let _ = c.write_raw(&big);
    assert_eq!(c.read_head().expect("answer to oversized head").0, 431);

    // Plain TCP garbage instead of a ClientHello.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(server.addr()).expect("tcp connect");
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
    }

    let mut c = connect(&pki, server.addr(), "127.0.0.1");
    assert_eq!(c.get("/readyz").expect("still serving").status, 200);
}

#[test]
fn binary_serves_and_reports_bad_files() {
    let bin = env!("CARGO_BIN_EXE_apiserver-standin");
    let scratch = Scratch::new("bin");
    let dir = &scratch.0;
    let pki = TestPki::new();
    let (cert, key) = pki.issue_server(&["localhost"], &[LOCALHOST]);
    let (cert_path, key_path) = pki.write(dir, "server", &cert, &key);

    // Missing file: clean error naming the flag, no panic.
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--name", "x", "--cert"])
        .arg(dir.join("nope.crt"))
        .arg("--key")
        .arg(&key_path)
        .output()
        .expect("run apiserver-standin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--cert") && stderr.contains("nope.crt"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Key that is not a key.
    let out = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--name", "x", "--cert"])
        .arg(&cert_path)
        .arg("--key")
        .arg(&cert_path)
        .output()
        .expect("run apiserver-standin");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("private key"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A real run: wait for the ready line, then talk to it.
    let mut child = Command::new(bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--name",
            "proc1",
            "--watch-interval-ms",
            "20",
        ])
        .arg("--cert")
        .arg(&cert_path)
        .arg("--key")
        .arg(&key_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn apiserver-standin");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("read ready line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("address in the ready line");
    let mut c = connect(&pki, addr, "localhost");
    let r = c.get("/whoami").expect("whoami");
    assert_eq!(r.text(), "proc1");
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "SIGTERM should exit cleanly: {status}");
}

#[test]
fn kubectl_talks_to_the_standin() {
    let pki = TestPki::new();
    let server = start(&pki, &["localhost"], &[LOCALHOST], "be1");
    let scratch = Scratch::new("kubectl");
    let dir = &scratch.0;
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, pki.ca_pem()).expect("write CA");
    let kubeconfig = dir.join("kubeconfig");
    // No insecure-skip-tls-verify: kubectl must verify the chain and the SAN.
    // A token (ignored by the stand-in) because with no credentials at all
    // kubectl prompts for a basic-auth username on stdin.
    let cfg = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: standin
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: anon
  user:
    token: vipd-standin-token
contexts:
- name: standin
  context:
    cluster: standin
    user: anon
current-context: standin
",
        port = server.addr().port(),
        ca = ca.display()
    );
    std::fs::write(&kubeconfig, cfg).expect("write kubeconfig");

    let kubectl = |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::null())
            .env("HOME", dir) // keep kubectl's cache out of the real home
            .output()
            .unwrap_or_else(|e| panic!("run kubectl (is it installed?): {e}"));
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(kubectl(&["get", "--raw", "/readyz"]).trim(), "ok");
    let v: serde_json::Value =
        serde_json::from_str(&kubectl(&["get", "--raw", "/version"])).expect("version JSON");
    assert_eq!(v["gitVersion"], standin::GIT_VERSION);

    // And kubectl refuses a server whose CA it does not trust.
    std::fs::write(&ca, TestPki::new().ca_pem()).expect("rewrite CA");
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "--raw", "/readyz"])
        .stdin(std::process::Stdio::null())
        .env("HOME", dir)
        .output()
        .expect("run kubectl");
    assert!(
        !out.status.success(),
        "kubectl must reject an untrusted server"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
}
