use std::time::{Instant as StdInstant, SystemTime};

use super::test_support::{
    Behaviour, LONG, Pki, TempDir, closed_port, http, server_config, silent_tcp_server, tls_server,
};
use super::*;

/// The budget for the tests that expect a timeout.
const SHORT: Duration = Duration::from_millis(500);
/// How late a timed-out probe may return: a correctness bound, not a speed target.
const SLACK: Duration = Duration::from_millis(500);

fn tls_for(pki: &Pki) -> Arc<ProbeTls> {
    Arc::new(ProbeTls::from_pem(pki.ca_pem.as_bytes(), None).expect("probe TLS from test CA"))
}

fn https(tls: Arc<ProbeTls>, server_name: &str, timeout: Duration) -> ProbeSpec {
    ProbeSpec {
        kind: ProbeKind::Https {
            path: "/readyz".to_owned(),
            server_name: ServerName::try_from(server_name.to_owned()).expect("server name"),
            tls,
        },
        timeout,
    }
}

/// A server with a certificate for 127.0.0.1 from `pki`, doing `behaviour`.
async fn server(pki: &Pki, behaviour: Behaviour) -> test_support::TestServer {
    tls_server(server_config(&pki.server(&["127.0.0.1"]), None), behaviour).await
}

async fn probe_status(behaviour: Behaviour) -> Outcome {
    let pki = Pki::new();
    let srv = server(&pki, behaviour).await;
    probe(srv.addr, &https(tls_for(&pki), "127.0.0.1", LONG)).await
}

fn tls_message(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Fail(Failure::Tls(m)) => m,
        other => panic!("expected a TLS failure, got {other:?}"),
    }
}

#[test]
fn status_lines() {
    let cases: &[(&str, &[u8], Option<u16>)] = &[
        ("HTTP/1.1 with reason", b"HTTP/1.1 200 OK", Some(200)),
        ("HTTP/1.0", b"HTTP/1.0 503 Service Unavailable", Some(503)),
        ("no reason, SP kept", b"HTTP/1.1 401 ", Some(401)),
        ("no reason, no SP", b"HTTP/1.1 403", Some(403)),
        ("HTTP/2 is not 1.x", b"HTTP/2 200 OK", None),
        ("two-digit code", b"HTTP/1.1 20 OK", None),
        ("four-digit code", b"HTTP/1.1 2000 OK", None),
        ("letters in code", b"HTTP/1.1 2x0 OK", None),
        ("lower-case version", b"http/1.1 200 OK", None),
        ("empty", b"", None),
        ("garbage", b"SSH-2.0-OpenSSH_9.2", None),
    ];
    for (what, line, want) in cases {
        match (parse_status_line(line), want) {
            (Ok(code), Some(w)) => assert_eq!(code, *w, "{what}"),
            (Err(Failure::Protocol(_)), None) => {}
            (got, _) => panic!("{what}: {line:?} gave {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn request_is_http11_with_close() {
    let expected = format!(
        "GET /readyz HTTP/1.1\r\nHost: api.example.com:6443\r\nUser-Agent: vipd/{}\r\nAccept: application/json, */*\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(request("/readyz", "api.example.com:6443"), expected);
}

#[test]
fn host_header_names_dns_or_address() {
    let dns = ServerName::try_from("api.example.com").expect("dns name");
    let ip = ServerName::try_from("10.0.0.1").expect("ip name");
    let v4: SocketAddr = "10.0.0.1:6443".parse().expect("addr");
    let v6: SocketAddr = "[fd00::1]:6443".parse().expect("addr");
    let https_port: SocketAddr = "10.0.0.1:443".parse().expect("addr");
    assert_eq!(host_header(&dns, v4), "api.example.com:6443");
    assert_eq!(host_header(&dns, https_port), "api.example.com");
    assert_eq!(host_header(&ip, v4), "10.0.0.1:6443");
    assert_eq!(host_header(&ip, v6), "[fd00::1]:6443");
}

#[test]
fn labels_are_stable() {
    let cases = [
        (Outcome::Up, "up"),
        (Outcome::AuthRefused(401), "auth"),
        (Outcome::Fail(Failure::Timeout), "timeout"),
        (Outcome::Fail(Failure::Refused), "refused"),
        (Outcome::Fail(Failure::Connect("x".into())), "connect"),
        (Outcome::Fail(Failure::Tls("x".into())), "tls"),
        (Outcome::Fail(Failure::Status(503)), "http_status"),
        (Outcome::Fail(Failure::Protocol("x".into())), "protocol"),
    ];
    for (outcome, label) in cases {
        assert_eq!(outcome.label(), label, "{outcome:?}");
        // The metrics export each failure label at 0 from the start.
        assert_eq!(
            Outcome::FAILURE_LABELS.contains(&label),
            outcome != Outcome::Up,
            "{label} in FAILURE_LABELS"
        );
    }
    assert_eq!(Failure::Status(503).to_string(), "HTTP 503");
}

#[tokio::test]
async fn up_on_200() {
    assert_eq!(probe_status(http(200)).await, Outcome::Up);
}

#[tokio::test]
async fn auth_refused_on_401_and_403() {
    assert_eq!(probe_status(http(401)).await, Outcome::AuthRefused(401));
    assert_eq!(probe_status(http(403)).await, Outcome::AuthRefused(403));
}

#[tokio::test]
async fn status_failure_on_503_and_500() {
    assert_eq!(
        probe_status(http(503)).await,
        Outcome::Fail(Failure::Status(503))
    );
    assert_eq!(
        probe_status(http(500)).await,
        Outcome::Fail(Failure::Status(500))
    );
}

#[tokio::test]
async fn timeout_when_the_handshake_never_completes() {
    let pki = Pki::new();
    let srv = silent_tcp_server().await;
    let start = StdInstant::now();
    let outcome = probe(srv.addr, &https(tls_for(&pki), "127.0.0.1", SHORT)).await;
    let took = start.elapsed();
    assert_eq!(outcome, Outcome::Fail(Failure::Timeout));
    assert!(took < SHORT + SLACK, "took {took:?} for a {SHORT:?} budget");
}

#[tokio::test]
async fn timeout_when_the_apiserver_hangs_after_the_handshake() {
    let pki = Pki::new();
    let srv = server(&pki, Behaviour::Hang).await;
    let start = StdInstant::now();
    let outcome = probe(srv.addr, &https(tls_for(&pki), "127.0.0.1", SHORT)).await;
    let took = start.elapsed();
    assert_eq!(outcome, Outcome::Fail(Failure::Timeout));
    assert!(took < SHORT + SLACK, "took {took:?} for a {SHORT:?} budget");
}

#[tokio::test]
async fn refused_on_a_closed_port() {
    let pki = Pki::new();
    let addr = closed_port().await;
    assert_eq!(
        probe(addr, &https(tls_for(&pki), "127.0.0.1", LONG)).await,
        Outcome::Fail(Failure::Refused)
    );
}

#[tokio::test]
async fn tls_failure_names_the_ca_when_another_ca_signed_the_server() {
    let (ours, theirs) = (Pki::new(), Pki::new());
    let srv = server(&theirs, http(200)).await;
    let outcome = probe(srv.addr, &https(tls_for(&ours), "127.0.0.1", LONG)).await;
    let message = tls_message(&outcome);
    assert!(
        message.contains("unknown CA") && message.contains("probe.ca"),
        "{message}"
    );
}

#[tokio::test]
async fn tls_failure_lists_the_names_when_server_name_is_not_in_the_certificate() {
    let pki = Pki::new();
    let leaf = pki.server(&["kubernetes", "10.96.0.1"]);
    let srv = tls_server(server_config(&leaf, None), http(200)).await;
    let outcome = probe(srv.addr, &https(tls_for(&pki), "127.0.0.1", LONG)).await;
    let message = tls_message(&outcome);
    for needle in [
        "not valid for name 127.0.0.1",
        "DNS:kubernetes",
        "IP:10.96.0.1",
        "probe.server_name",
    ] {
        assert!(message.contains(needle), "{needle:?} missing in {message}");
    }
}

#[tokio::test]
async fn tls_failure_says_expired() {
    let pki = Pki::new();
    let yesterday = SystemTime::now() - Duration::from_secs(86_400);
    let leaf = pki.server_until(&["127.0.0.1"], Some(yesterday));
    let srv = tls_server(server_config(&leaf, None), http(200)).await;
    let outcome = probe(srv.addr, &https(tls_for(&pki), "127.0.0.1", LONG)).await;
    let message = tls_message(&outcome);
    assert!(
        message.contains("expired") && message.contains("kubeadm certs renew"),
        "{message}"
    );
}

#[tokio::test]
async fn client_certificate_is_presented_when_configured() {
    let pki = Pki::new();
    let config = server_config(&pki.server(&["127.0.0.1"]), Some(&pki.ca_pem));
    let srv = tls_server(config, http(200)).await;

    let anonymous = probe(srv.addr, &https(tls_for(&pki), "127.0.0.1", LONG)).await;
    let message = tls_message(&anonymous);
    assert!(
        message.contains("requires a client certificate") && message.contains("probe.client_cert"),
        "{message}"
    );

    let client = pki.client("vipd-probe");
    let tls = ProbeTls::from_pem(
        pki.ca_pem.as_bytes(),
        Some((client.cert_pem.as_bytes(), client.key_pem.as_bytes())),
    )
    .expect("probe TLS with a client certificate");
    assert_eq!(
        probe(srv.addr, &https(Arc::new(tls), "127.0.0.1", LONG)).await,
        Outcome::Up
    );
}

#[tokio::test]
async fn protocol_failure_when_closed_after_the_handshake() {
    let outcome = probe_status(Behaviour::Close).await;
    assert!(
        matches!(&outcome, Outcome::Fail(Failure::Protocol(m)) if m.contains("closed before the HTTP status line")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn protocol_failure_on_garbage() {
    let outcome = probe_status(Behaviour::Respond(b"SSH-2.0-OpenSSH_9.2\r\n".to_vec())).await;
    assert_eq!(
        outcome,
        Outcome::Fail(Failure::Protocol(
            "malformed HTTP status line \"SSH-2.0-OpenSSH_9.2\"".to_owned()
        ))
    );
}

#[tokio::test]
async fn protocol_failure_when_no_status_line_within_the_bound() {
    let outcome = probe_status(Behaviour::Respond(vec![b'x'; MAX_STATUS_LINE + 100])).await;
    assert_eq!(
        outcome,
        Outcome::Fail(Failure::Protocol(format!(
            "no status line in the first {MAX_STATUS_LINE} bytes"
        )))
    );
}

#[tokio::test]
async fn tcp_probe_up_and_refused() {
    let srv = silent_tcp_server().await;
    let tcp = ProbeSpec {
        kind: ProbeKind::Tcp,
        timeout: LONG,
    };
    assert_eq!(probe(srv.addr, &tcp).await, Outcome::Up);
    assert_eq!(
        probe(closed_port().await, &tcp).await,
        Outcome::Fail(Failure::Refused)
    );
}

#[tokio::test]
async fn concurrent_probes_do_not_serialize() {
    let pki = Pki::new();
    let tls = tls_for(&pki);
    let hung = server(&pki, Behaviour::Hang).await;
    let silent = silent_tcp_server().await;
    let good = server(&pki, http(200)).await;
    let budget = Duration::from_secs(2);
    let spec = https(tls, "127.0.0.1", budget);
    let timed = |addr| {
        let spec = &spec;
        async move {
            let start = StdInstant::now();
            (probe(addr, spec).await, start.elapsed())
        }
    };
    let (a, b, c) = tokio::join!(timed(hung.addr), timed(silent.addr), timed(good.addr));
    assert_eq!(a.0, Outcome::Fail(Failure::Timeout));
    assert_eq!(b.0, Outcome::Fail(Failure::Timeout));
    assert_eq!(c.0, Outcome::Up);
    assert!(
        c.1 < budget / 2,
        "the good probe took {:?} next to two hung ones ({budget:?} budget)",
        c.1
    );
}

#[test]
fn load_names_a_missing_file() {
    let dir = TempDir::new();
    let missing = dir.path().join("no-such-ca.crt");
    let err = ProbeTls::load(&missing, None).expect_err("missing CA file");
    let message = err.to_string();
    assert!(
        matches!(
            err,
            ProbeSetupError::Read {
                material: Material::Ca,
                ..
            }
        ) && message.contains(&missing.display().to_string())
            && message.contains("/etc/kubernetes/pki/ca.crt"),
        "{message}"
    );
}

#[test]
fn load_refuses_a_file_without_a_certificate() {
    let pki = Pki::new();
    let dir = TempDir::new();
    // A key where the CA belongs: a plausible slip.
    let key_only = dir.file("ca.key", &pki.client("x").key_pem);
    let err = ProbeTls::load(&key_only, None).expect_err("no certificate");
    let message = err.to_string();
    assert!(
        matches!(&err, ProbeSetupError::NoCertificate { material: Material::Ca, origin }
                if *origin == PemOrigin::File(key_only.clone()))
            && message.contains("BEGIN CERTIFICATE"),
        "{message}"
    );
}

#[test]
fn load_refuses_a_client_key_that_does_not_match_the_certificate() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let ca = dir.file("ca.crt", &pki.ca_pem);
    let (one, other) = (pki.client("one"), pki.client("other"));
    let cert = dir.file("client.crt", &one.cert_pem);
    let key = dir.file("client.key", &other.key_pem);
    let err = ProbeTls::load(&ca, Some((&cert, &key))).expect_err("mismatched key");
    assert!(
        matches!(&err, ProbeSetupError::KeyMismatch { cert: c, key: k }
                if *c == PemOrigin::File(cert.clone()) && *k == PemOrigin::File(key.clone())),
        "{err}"
    );
}

#[tokio::test]
async fn load_from_files_with_a_client_certificate_probes_up() {
    let pki = Pki::new();
    let dir = TempDir::new();
    let client = pki.client("vipd-probe");
    let ca = dir.file("ca.crt", &pki.ca_pem);
    let cert = dir.file("client.crt", &client.cert_pem);
    let key = dir.file("client.key", &client.key_pem);
    let tls = ProbeTls::load(&ca, Some((&cert, &key))).expect("load probe TLS");
    let config = server_config(&pki.server(&["127.0.0.1"]), Some(&pki.ca_pem));
    let srv = tls_server(config, http(200)).await;
    assert_eq!(
        probe(srv.addr, &https(Arc::new(tls), "127.0.0.1", LONG)).await,
        Outcome::Up
    );
}
