//! Test fixtures for the probe and certcheck tests: a throwaway PKI (rcgen)
//! and tiny TLS servers on 127.0.0.1:0 that answer, hang or misbehave on
//! purpose. Servers stop (with their connections) when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A certificate and its key, PEM.
pub(crate) struct Leaf {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

/// A CA with a fresh key. Each has a distinct subject: verifiers pick the
/// issuer by name, so two CAs with one DN fail as BadSignature, not UnknownIssuer.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub(crate) fn new() -> Pki {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("vipd test CA {}", unique()));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A serving certificate for `sans` (IP literals become IP SANs).
    pub(crate) fn server(&self, sans: &[&str]) -> Leaf {
        self.server_until(sans, None)
    }

    /// As [`Pki::server`], with notAfter set when given.
    pub(crate) fn server_until(&self, sans: &[&str], not_after: Option<SystemTime>) -> Leaf {
        let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if let Some(t) = not_after {
            let since_epoch = t.duration_since(UNIX_EPOCH).expect("not_after after 1970");
            params.not_after = date_time_ymd(1970, 1, 1) + since_epoch;
        }
        self.sign(params)
    }

    /// A client certificate (CN = user name, as kube-apiserver reads it).
    pub(crate) fn client(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A rustls server config serving `leaf`; with `client_ca`, clients must
/// present a certificate from it. ALPN http/1.1, as kube-apiserver picks
/// when h2 is not offered.
pub(crate) fn server_config(leaf: &Leaf, client_ca: Option<&str>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("server cert PEM");
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("server key PEM");
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(cert.expect("client CA PEM")).expect("client CA");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .expect("server cert and key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What a test server does once the TLS handshake is done.
#[derive(Clone)]
pub(crate) enum Behaviour {
    /// Read the request head, write these bytes, close with close_notify.
    Respond(Vec<u8>),
    /// Read the request head, never answer: a wedged apiserver.
    Hang,
    /// Close (TCP FIN, no close_notify) right after the handshake.
    Close,
}

/// A minimal HTTP/1.1 response with `status` and body `ok`.
pub(crate) fn http(status: u16) -> Behaviour {
    Behaviour::Respond(
        format!(
            "HTTP/1.1 {status} Test\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        .into_bytes(),
    )
}

/// A listening test server; the accept loop and every connection end on drop.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// A TLS server that does `behaviour` on every connection. Handshake and
/// I/O errors (a client that rejected our certificate) end that connection.
pub(crate) async fn tls_server(config: Arc<ServerConfig>, behaviour: Behaviour) -> TestServer {
    let listener = listen().await;
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        // Owned by the accept loop: aborting it drops (and aborts) them all.
        let mut conns = JoinSet::new();
        while let Ok((tcp, _peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let behaviour = behaviour.clone();
            conns.spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                match behaviour {
                    Behaviour::Close => drop(tls),
                    Behaviour::Hang => {
                        read_head(&mut tls).await;
                        std::future::pending::<()>().await;
                    }
                    Behaviour::Respond(bytes) => {
                        read_head(&mut tls).await;
                        let _ = tls.write_all(&bytes).await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    TestServer { addr, task }
}

/// Reads until the end of the request head (or EOF/error, or 16 KiB).
async fn read_head<S: AsyncReadExt + Unpin>(stream: &mut S) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// Accepts TCP and holds the connections open without a word: a port that
/// is open but never completes a TLS handshake.
pub(crate) async fn silent_tcp_server() -> TestServer {
    let listener = listen().await;
    let addr = listener.local_addr().expect("local addr");
    let task = tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((tcp, _peer)) = listener.accept().await {
            held.push(tcp);
        }
    });
    TestServer { addr, task }
}

/// A loopback port nothing listens on: bound, then released. Nothing else
/// in the tests binds a fixed port, so it stays free for the test's duration.
pub(crate) async fn closed_port() -> SocketAddr {
    let listener = listen().await;
    listener.local_addr().expect("local addr")
}

/// A directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("vipd-probe-test-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// Writes `name` with `contents` and returns its path.
    pub(crate) fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Generous budget for probes that should succeed: only a bound on a broken test.
pub(crate) const LONG: Duration = Duration::from_secs(5);
