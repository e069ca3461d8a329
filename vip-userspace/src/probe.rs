//! Apiserver health probes: one attempt per call, either an HTTPS `GET /readyz`
//! verified against the cluster CA or a bare TCP connect, classified into an
//! [`Outcome`]. Rise/fall counting and scheduling belong to the caller; this
//! module only moves bytes and time, and never panics on what a peer sends.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::{Resumption, VerifierBuilderError, WebPkiServerVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, InconsistentKeys, RootCertStore};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

#[cfg(test)]
pub(crate) mod test_support;

/// The configuration keys named in messages, so that the operator reading a
/// log line knows which setting to change.
const CA_SETTING: &str = "probe.ca";
const SERVER_NAME_SETTING: &str = "probe.server_name";
const CLIENT_CERT_SETTING: &str = "probe.client_cert";
const CLIENT_KEY_SETTING: &str = "probe.client_key";

/// The status line must be complete within this many bytes. Go's net/http
/// writes `HTTP/1.1 NNN Reason\r\n` first, far below this; the bound only
/// stops a misbehaving peer from making us buffer without end.
pub const MAX_STATUS_LINE: usize = 16 * 1024;

const USER_AGENT: &str = concat!("vipd/", env!("CARGO_PKG_VERSION"));

/// Which piece of probe TLS material an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Material {
    /// The cluster CA bundle that server certificates must chain to.
    Ca,
    /// The client certificate presented to the apiserver.
    ClientCert,
    /// The private key of the client certificate.
    ClientKey,
}

impl Material {
    /// What the operator should set, with the kubeadm location where there is one.
    fn fix(self) -> String {
        match self {
            Material::Ca => format!(
                "set {CA_SETTING} to the cluster CA certificate (kubeadm: /etc/kubernetes/pki/ca.crt)"
            ),
            Material::ClientCert => format!(
                "set {CLIENT_CERT_SETTING} to a PEM client certificate signed by the CA the apiserver trusts for clients (--client-ca-file)"
            ),
            Material::ClientKey => {
                format!("set {CLIENT_KEY_SETTING} to the PEM private key of {CLIENT_CERT_SETTING}")
            }
        }
    }
}

impl fmt::Display for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Material::Ca => "cluster CA",
            Material::ClientCert => "client certificate",
            Material::ClientKey => "client key",
        })
    }
}

/// Where PEM material came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PemOrigin {
    /// Read from this file.
    File(PathBuf),
    /// Passed as bytes ([`ProbeTls::from_pem`]).
    Inline,
}

impl fmt::Display for PemOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemOrigin::File(path) => write!(f, "{}", path.display()),
            PemOrigin::Inline => f.write_str("inline PEM"),
        }
    }
}

/// Why probe TLS material cannot be used. Every message names
/// the file and the setting to change.
#[derive(Debug, Error)]
pub enum ProbeSetupError {
    /// The file could not be read (missing, permissions).
    #[error("cannot read the {material} file {}; {}", path.display(), material.fix())]
    Read {
        /// Which material.
        material: Material,
        /// The file.
        path: PathBuf,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// A PEM section is malformed (bad base64, unterminated block).
    #[error("{origin}: malformed PEM in the {material}; {}", material.fix())]
    BadPem {
        /// Which material.
        material: Material,
        /// Where it came from.
        origin: PemOrigin,
        /// The PEM error.
        #[source]
        source: pem::Error,
    },
    /// The PEM holds no `CERTIFICATE` block (e.g. a key file given as the CA).
    #[error(
        "{origin}: no certificate in the {material} (expected a `-----BEGIN CERTIFICATE-----` block); {}",
        material.fix()
    )]
    NoCertificate {
        /// Which material.
        material: Material,
        /// Where it came from.
        origin: PemOrigin,
    },
    /// Certificates were found but none can serve as a trust anchor.
    #[error(
        "{origin}: none of the {count} certificates in the cluster CA is usable as a trust anchor; {}",
        Material::Ca.fix()
    )]
    UnusableCa {
        /// Where the CA came from.
        origin: PemOrigin,
        /// How many certificates the PEM held.
        count: usize,
    },
    /// The key PEM holds no usable private key.
    #[error(
        "{origin}: no usable private key in the client key (expected a PKCS#8, PKCS#1 or SEC1 PEM block); {}",
        Material::ClientKey.fix()
    )]
    NoKey {
        /// Where the key came from.
        origin: PemOrigin,
        /// The PEM error.
        #[source]
        source: pem::Error,
    },
    /// The client key is not the key of the client certificate.
    #[error(
        "the client key {key} does not belong to the client certificate {cert}: set {CLIENT_KEY_SETTING} to the key issued with {CLIENT_CERT_SETTING}"
    )]
    KeyMismatch {
        /// Where the certificate came from.
        cert: PemOrigin,
        /// Where the key came from.
        key: PemOrigin,
    },
    /// rustls refused the client certificate and key for another reason
    /// (e.g. an unsupported key type).
    #[error("the client certificate {cert} with key {key} is not usable; {}", Material::ClientCert.fix())]
    ClientAuth {
        /// Where the certificate came from.
        cert: PemOrigin,
        /// Where the key came from.
        key: PemOrigin,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The server certificate verifier could not be built from the CA.
    #[error("cannot build a certificate verifier from the cluster CA {origin}; {}", Material::Ca.fix())]
    Verifier {
        /// Where the CA came from.
        origin: PemOrigin,
        /// The builder error.
        #[source]
        source: VerifierBuilderError,
    },
    /// The crypto provider refused the protocol versions (not expected with ring).
    #[error("TLS client setup failed")]
    Tls(#[source] rustls::Error),
}

/// TLS material for probes and the certificate gate, loaded once. Cheap to
/// share (`Arc`) between every backend's probe.
#[derive(Debug)]
pub struct ProbeTls {
    config: Arc<ClientConfig>,
    /// Where the CA came from, named in "unknown CA" messages.
    pub(crate) ca: PemOrigin,
}

/// PEM bytes with their origin, before parsing.
struct PemInput<'a> {
    bytes: &'a [u8],
    origin: PemOrigin,
}

impl ProbeTls {
    /// Reads the CA bundle and the optional client certificate and key.
    ///
    /// `ca`: PEM bundle of the cluster CA (kubeadm: `/etc/kubernetes/pki/ca.crt`).
    /// `client`: optional (certificate PEM path, key PEM path) presented to the
    /// apiserver. Not needed for `/readyz` on a default cluster: kube-apiserver
    /// lets anonymous requests read it through the `system:public-info-viewer`
    /// ClusterRole; a cluster with `--anonymous-auth=false` answers 401 without one.
    ///
    /// Reads files synchronously: call it at start and on reload, not per probe.
    pub fn load(ca: &Path, client: Option<(&Path, &Path)>) -> Result<ProbeTls, ProbeSetupError> {
        let ca_bytes = read_file(Material::Ca, ca)?;
        let client_bytes = match client {
            Some((cert, key)) => Some((
                (read_file(Material::ClientCert, cert)?, cert),
                (read_file(Material::ClientKey, key)?, key),
            )),
            None => None,
        };
        build(
            PemInput {
                bytes: &ca_bytes,
                origin: PemOrigin::File(ca.to_path_buf()),
            },
            client_bytes
                .as_ref()
                .map(|((cert, cert_path), (key, key_path))| {
                    (
                        PemInput {
                            bytes: cert,
                            origin: PemOrigin::File(cert_path.to_path_buf()),
                        },
                        PemInput {
                            bytes: key,
                            origin: PemOrigin::File(key_path.to_path_buf()),
                        },
                    )
                }),
        )
    }

    /// As [`ProbeTls::load`], from PEM bytes (`client` is (certificate, key)).
    pub fn from_pem(
        ca_pem: &[u8],
        client: Option<(&[u8], &[u8])>,
    ) -> Result<ProbeTls, ProbeSetupError> {
        build(
            PemInput {
                bytes: ca_pem,
                origin: PemOrigin::Inline,
            },
            client.map(|(cert, key)| {
                (
                    PemInput {
                        bytes: cert,
                        origin: PemOrigin::Inline,
                    },
                    PemInput {
                        bytes: key,
                        origin: PemOrigin::Inline,
                    },
                )
            }),
        )
    }

    /// The rustls client configuration: verifies against the CA, offers only
    /// ALPN `http/1.1`, presents the client certificate if one was given, and
    /// never resumes sessions.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }
}

fn read_file(material: Material, path: &Path) -> Result<Vec<u8>, ProbeSetupError> {
    std::fs::read(path).map_err(|source| ProbeSetupError::Read {
        material,
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certs(
    material: Material,
    input: &PemInput<'_>,
) -> Result<Vec<CertificateDer<'static>>, ProbeSetupError> {
    let certs = CertificateDer::pem_slice_iter(input.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProbeSetupError::BadPem {
            material,
            origin: input.origin.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ProbeSetupError::NoCertificate {
            material,
            origin: input.origin.clone(),
        });
    }
    Ok(certs)
}

fn build(
    ca: PemInput<'_>,
    client: Option<(PemInput<'_>, PemInput<'_>)>,
) -> Result<ProbeTls, ProbeSetupError> {
    // Explicit: the process-level default provider may be unset or another one.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_certs = parse_certs(Material::Ca, &ca)?;
    let count = ca_certs.len();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(ca_certs);
    if added == 0 {
        return Err(ProbeSetupError::UnusableCa {
            origin: ca.origin,
            count,
        });
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .map_err(|source| ProbeSetupError::Verifier {
                origin: ca.origin.clone(),
                source,
            })?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ProbeSetupError::Tls)?
        .with_webpki_verifier(verifier);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = parse_certs(Material::ClientCert, &cert)?;
            let key_der = PrivateKeyDer::from_pem_slice(key.bytes).map_err(|source| {
                ProbeSetupError::NoKey {
                    origin: key.origin.clone(),
                    source,
                }
            })?;
            // rustls compares the key's public half with the certificate's
            // (CertifiedKey::from_der), so a mismatch is caught here, at
            // load, and not as a handshake failure on every probe.
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| match e {
                    rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                        ProbeSetupError::KeyMismatch {
                            cert: cert.origin.clone(),
                            key: key.origin.clone(),
                        }
                    }
                    source => ProbeSetupError::ClientAuth {
                        cert: cert.origin.clone(),
                        key: key.origin.clone(),
                        source,
                    },
                })?
        }
    };
    // kube-apiserver (Go net/http) selects h2 whenever a client offers it;
    // we read an HTTP/1.1 status line, so offer only that (RFC 7301 section 3.1).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A full handshake on every probe: each one verifies the certificate the
    // apiserver serves now (rotated, expired), as a new client through the VIP
    // would. A resumed session would skip that.
    config.resumption = Resumption::disabled();
    Ok(ProbeTls {
        config: Arc::new(config),
        ca: ca.origin,
    })
}

/// What one probe does.
#[derive(Debug, Clone)]
pub enum ProbeKind {
    /// HTTPS `GET path` (default `/readyz`), verifying the certificate chain
    /// against the CA and its names against `server_name`, as kubectl would.
    /// kube-apiserver's `/readyz` answers 200 once it serves, 500 while a
    /// check fails, and fails from the start of a graceful shutdown
    /// (`--shutdown-delay-duration`) so that load balancers drain it first.
    Https {
        /// The request path; the config has checked it starts with `/` and
        /// holds no spaces or control characters.
        path: String,
        /// The name the certificate must be valid for; also the SNI (DNS
        /// names only, RFC 6066 section 3) and the Host header.
        server_name: ServerName<'static>,
        /// CA and client certificate.
        tls: Arc<ProbeTls>,
    },
    /// TCP connect only: proves the port is open, not that the apiserver serves.
    Tcp,
}

/// A probe and its time budget.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// What to do.
    pub kind: ProbeKind,
    /// The whole attempt (connect, handshake, request and status line) must
    /// finish within this.
    pub timeout: Duration,
}

/// The result of one probe attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 (https) or connected (tcp).
    Up,
    /// 401 or 403: the apiserver answered but refuses our credentials. Our
    /// configuration is wrong, not the apiserver (it is serving), so this is
    /// its own state rather than a failure: marking every backend down for it
    /// would take the VIP away from a healthy control plane.
    AuthRefused(u16),
    /// The backend is not (yet) serving.
    Fail(Failure),
}

impl Outcome {
    /// Every label a failed probe gets ([`Outcome::label`] of all but
    /// `Up`): the reasons of `vipd_probe_failures_total`.
    pub const FAILURE_LABELS: [&'static str; 7] = [
        "timeout",
        "refused",
        "connect",
        "tls",
        "http_status",
        "protocol",
        "auth",
    ];

    /// Stable label for metrics and logs: `up`, `auth`, or [`Failure::label`].
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Up => "up",
            Outcome::AuthRefused(_) => "auth",
            Outcome::Fail(failure) => failure.label(),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Up => f.write_str("up"),
            Outcome::AuthRefused(code) => write!(
                f,
                "HTTP {code}: the apiserver refuses the probe's credentials (set {CLIENT_CERT_SETTING}/{CLIENT_KEY_SETTING}, or allow anonymous /readyz)"
            ),
            Outcome::Fail(failure) => failure.fmt(f),
        }
    }
}

/// Why a probe attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The whole attempt (connect, handshake or response) exceeded
    /// [`ProbeSpec::timeout`]: host down, packets dropped, or a wedged apiserver.
    Timeout,
    /// ECONNREFUSED (RST to our SYN): the host is up, nothing listens.
    Refused,
    /// Any other connect error (unreachable, no route, ...).
    Connect(String),
    /// The TLS handshake failed, or the server ended the session with an
    /// alert; the text says what to fix.
    Tls(String),
    /// Any status but 200, 401 and 403, e.g. 500 from `/readyz` while a check
    /// fails or the apiserver is shutting down.
    Status(u16),
    /// Closed before a status line, or not HTTP/1.x.
    Protocol(String),
}

impl Failure {
    /// The backend no longer answers at all (hung, refused, unreachable),
    /// as opposed to answering "not ready" or with a certificate we refuse:
    /// its established connections are gone or stuck too.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            Failure::Timeout | Failure::Refused | Failure::Connect(_)
        )
    }

    /// Stable label for metrics and logs: `timeout`, `refused`, `connect`,
    /// `tls`, `http_status`, `protocol`.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Refused => "refused",
            Failure::Connect(_) => "connect",
            Failure::Tls(_) => "tls",
            Failure::Status(_) => "http_status",
            Failure::Protocol(_) => "protocol",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timed out (no answer within the probe timeout)"),
            Failure::Refused => f.write_str("connection refused"),
            Failure::Connect(message) => write!(f, "connect: {message}"),
            Failure::Tls(message) => write!(f, "TLS: {message}"),
            Failure::Status(code) => write!(f, "HTTP {code}"),
            Failure::Protocol(message) => write!(f, "protocol: {message}"),
        }
    }
}

/// One probe attempt. Never takes longer than `spec.timeout` (plus scheduling
/// delay), never panics; probes share nothing, so any number can run at once.
pub async fn probe(addr: SocketAddr, spec: &ProbeSpec) -> Outcome {
    let deadline = deadline_after(spec.timeout);
    match &spec.kind {
        ProbeKind::Tcp => match connect_tcp(addr, deadline).await {
            // Dropped at once: the connect was the whole test.
            Ok(_stream) => Outcome::Up,
            Err(failure) => Outcome::Fail(failure),
        },
        ProbeKind::Https {
            path,
            server_name,
            tls,
        } => https(addr, path, server_name, tls, deadline)
            .await
            .unwrap_or_else(Outcome::Fail),
    }
}

/// The instant a probe or inspection must be done by.
pub(crate) fn deadline_after(budget: Duration) -> Instant {
    let now = Instant::now();
    // A budget too large for the clock means "no limit" in practice.
    now.checked_add(budget)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

async fn https(
    addr: SocketAddr,
    path: &str,
    server_name: &ServerName<'static>,
    tls: &ProbeTls,
    deadline: Instant,
) -> Result<Outcome, Failure> {
    // The config validates the path; checked again because it goes verbatim
    // into the request line, where a CR or LF would inject headers.
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(Failure::Protocol(format!(
            "probe path {path:?} cannot be sent: it must start with / and hold no spaces or control characters"
        )));
    }
    let mut stream = dial_tls(addr, server_name, tls, deadline)
        .await
        .map_err(DialError::into_failure)?;
    let request = request(path, &host_header(server_name, addr));
    let exchange = async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| io_failure(&e, server_name, &tls.ca))?;
        stream
            .flush()
            .await
            .map_err(|e| io_failure(&e, server_name, &tls.ca))?;
        read_status(&mut stream, server_name, &tls.ca).await
    };
    let status = timeout_at(deadline, exchange)
        .await
        .map_err(|_elapsed| Failure::Timeout)??;
    Ok(match status {
        200 => Outcome::Up,
        401 | 403 => Outcome::AuthRefused(status),
        other => Outcome::Fail(Failure::Status(other)),
    })
}

/// The request: HTTP/1.1 with `Connection: close` (RFC 9112 section 9.6), so
/// the apiserver does not keep an idle connection for us.
pub(crate) fn request(path: &str, host: &str) -> String {
    crate::http::get(
        path,
        host,
        &[
            ("User-Agent", USER_AGENT),
            ("Accept", "application/json, */*"),
        ],
    )
}

/// Host (RFC 9110 section 7.2): the server name if it is a DNS name, with the
/// port unless 443; otherwise the address we dialled.
pub(crate) fn host_header(server_name: &ServerName<'_>, addr: SocketAddr) -> String {
    match server_name {
        ServerName::DnsName(name) if addr.port() == 443 => name.as_ref().to_owned(),
        ServerName::DnsName(name) => format!("{}:{}", name.as_ref(), addr.port()),
        _ => addr.to_string(),
    }
}

/// Reads until the first CRLF (at most [`MAX_STATUS_LINE`] bytes) and parses
/// the status code; the rest of the response is not needed.
async fn read_status(
    stream: &mut TlsStream<TcpStream>,
    server_name: &ServerName<'_>,
    ca: &PemOrigin,
) -> Result<u16, Failure> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            return parse_status_line(&buf[..end]);
        }
        let room = MAX_STATUS_LINE.saturating_sub(buf.len()).min(chunk.len());
        if room == 0 {
            return Err(Failure::Protocol(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            )));
        }
        let n = stream
            .read(&mut chunk[..room])
            .await
            .map_err(|e| io_failure(&e, server_name, ca))?;
        if n == 0 {
            return Err(closed_early(buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn closed_early(received: usize) -> Failure {
    Failure::Protocol(format!(
        "connection closed before the HTTP status line ({received} bytes received)"
    ))
}

/// The status code of a response's first line ([`crate::http::status_line`]).
pub(crate) fn parse_status_line(line: &[u8]) -> Result<u16, Failure> {
    crate::http::status_line(line).map_err(|e| Failure::Protocol(e.to_string()))
}

/// A read or write error after the handshake: a TLS alert (the server
/// rejected our client certificate, TLS 1.3 sends that after its Finished) or
/// the connection going away.
pub(crate) fn io_failure(e: &io::Error, server_name: &ServerName<'_>, ca: &PemOrigin) -> Failure {
    if let Some(err) = rustls_error(e) {
        return Failure::Tls(describe_tls(err, server_name, ca));
    }
    match e.kind() {
        // rustls reports a close without close_notify as UnexpectedEof.
        io::ErrorKind::UnexpectedEof => closed_early(0),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Failure::Protocol(
            "connection reset by the server before the HTTP status line".to_owned(),
        ),
        _ => Failure::Protocol(e.to_string()),
    }
}

/// Why a dial did not produce a TLS stream.
pub(crate) enum DialError {
    /// We rejected the server's certificate (chain, name, validity): the
    /// message says which and how to fix it.
    Untrusted(String),
    /// Anything else: timeout, refused, other handshake failure.
    Failed(Failure),
}

impl DialError {
    pub(crate) fn into_failure(self) -> Failure {
        match self {
            DialError::Untrusted(message) => Failure::Tls(message),
            DialError::Failed(failure) => failure,
        }
    }
}

async fn connect_tcp(addr: SocketAddr, deadline: Instant) -> Result<TcpStream, Failure> {
    match timeout_at(deadline, TcpStream::connect(addr)).await {
        Err(_elapsed) => Err(Failure::Timeout),
        Ok(Ok(stream)) => {
            // The request goes out in one write; don't let Nagle hold it.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(match e.kind() {
            io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => Failure::Refused,
            _ => Failure::Connect(e.to_string()),
        }),
    }
}

/// TCP connect and TLS handshake to `addr`, verifying the chain against the
/// CA and the leaf against `server_name`, all before `deadline`.
pub(crate) async fn dial_tls(
    addr: SocketAddr,
    server_name: &ServerName<'static>,
    tls: &ProbeTls,
    deadline: Instant,
) -> Result<TlsStream<TcpStream>, DialError> {
    let tcp = connect_tcp(addr, deadline)
        .await
        .map_err(DialError::Failed)?;
    let connector = TlsConnector::from(tls.client_config());
    match timeout_at(deadline, connector.connect(server_name.clone(), tcp)).await {
        Err(_elapsed) => Err(DialError::Failed(Failure::Timeout)),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(match rustls_error(&e) {
            Some(err @ rustls::Error::InvalidCertificate(_)) => {
                DialError::Untrusted(describe_tls(err, server_name, &tls.ca))
            }
            Some(err) => DialError::Failed(Failure::Tls(describe_tls(err, server_name, &tls.ca))),
            None => DialError::Failed(Failure::Tls(match e.kind() {
                io::ErrorKind::UnexpectedEof => {
                    "the server closed the connection during the handshake (is this a TLS port?)"
                        .to_owned()
                }
                io::ErrorKind::ConnectionReset => {
                    "the server reset the connection during the handshake".to_owned()
                }
                _ => format!("handshake failed: {e}"),
            })),
        }),
    }
}

/// tokio-rustls wraps rustls errors in `io::Error` (kind InvalidData).
fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A rustls error as an operator-facing sentence: what is wrong and which
/// setting, file or command fixes it.
pub(crate) fn describe_tls(
    err: &rustls::Error,
    server_name: &ServerName<'_>,
    ca: &PemOrigin,
) -> String {
    let name = server_name.to_str();
    match err {
        rustls::Error::InvalidCertificate(cert_err) => match cert_err {
            CertificateError::UnknownIssuer => format!(
                "certificate signed by an unknown CA: is {CA_SETTING} ({ca}) the cluster CA?"
            ),
            CertificateError::BadSignature => format!(
                "certificate signature does not verify with {CA_SETTING} ({ca}): is it the cluster CA?"
            ),
            CertificateError::NotValidForName => format!(
                "certificate not valid for name {name}: set {SERVER_NAME_SETTING} to a name in the apiserver certificate"
            ),
            CertificateError::NotValidForNameContext { presented, .. } => {
                let names: Vec<String> = presented.iter().map(|p| san_text(p)).collect();
                format!(
                    "certificate not valid for name {name} (it is valid for {}): set {SERVER_NAME_SETTING} to one of them",
                    if names.is_empty() { "no names".to_owned() } else { names.join(", ") }
                )
            }
            CertificateError::Expired => {
                "certificate expired: renew it (kubeadm: `kubeadm certs renew apiserver`)".to_owned()
            }
            CertificateError::ExpiredContext { time, not_after } => format!(
                "certificate expired {} ago: renew it (kubeadm: `kubeadm certs renew apiserver`)",
                age(time.as_secs().saturating_sub(not_after.as_secs()))
            ),
            CertificateError::NotValidYet => {
                "certificate not valid yet: is this node's clock right?".to_owned()
            }
            CertificateError::NotValidYetContext { time, not_before } => format!(
                "certificate not valid for another {}: is this node's clock right?",
                age(not_before.as_secs().saturating_sub(time.as_secs()))
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "certificate is not for server authentication (extended key usage): is this the apiserver's serving certificate?".to_owned()
            }
            other => format!("invalid certificate: {other:?}"),
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => format!(
            "the apiserver requires a client certificate: set {CLIENT_CERT_SETTING} and {CLIENT_KEY_SETTING}"
        ),
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied),
        ) => format!(
            "the apiserver rejected our client certificate (alert {alert:?}): {}",
            Material::ClientCert.fix()
        ),
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => {
            "the server does not speak HTTP/1.1 (ALPN refused): is this an apiserver port?".to_owned()
        }
        rustls::Error::AlertReceived(alert) => format!("the server sent alert {alert:?}"),
        rustls::Error::InvalidMessage(_) => {
            format!("not a TLS server ({err}): is this the apiserver port?")
        }
        other => format!("handshake failed: {other}"),
    }
}

/// webpki's `presented` names (`DnsName("x")`, `IpAddress(1.2.3.4)`) in the
/// `DNS:x` / `IP:1.2.3.4` form that openssl and the cert gate print.
fn san_text(presented: &str) -> String {
    if let Some(dns) = presented
        .strip_prefix("DnsName(\"")
        .and_then(|s| s.strip_suffix("\")"))
    {
        return format!("DNS:{dns}");
    }
    if let Some(ip) = presented
        .strip_prefix("IpAddress(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return format!("IP:{ip}");
    }
    presented.to_owned()
}

/// Seconds as a short human age: `3d 4h`, `5h 6m`, `42s`.
fn age(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m {}s", secs % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

pub mod metrics;

#[cfg(test)]
mod tests;
