//! A kube-apiserver stand-in: HTTPS with `/readyz`, `/livez`, `/healthz`,
//! `/version`, a watch stream, and control endpoints that make it fail on
//! purpose. It speaks HTTP/2 to clients that offer `h2` in ALPN (as
//! kube-apiserver does, and as client-go always asks: every watch and request
//! of a client multiplexed on one connection) and HTTP/1.1 to the others.
//! Every response says which in `X-Standin-Protocol`. Plus a small blocking
//! HTTP/1.1 client for tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Request heads larger than this get 431 and the connection is closed.
pub const MAX_HEAD: usize = 16 * 1024;
/// Request bodies (ignored) larger than this get 413.
const MAX_BODY: usize = 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections are closed after this (the apiserver uses
/// Go's default, which is longer; the value only bounds leaked tasks).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

pub const GIT_VERSION: &str = "v1.31.0-vipd-standin";

pub struct StandinOptions {
    pub listen: SocketAddr,
    pub cert_pem: String,
    pub key_pem: String,
    pub name: String,
    pub watch_interval: Duration,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<String>,
    /// What `/version` reports as `gitVersion` (`major`/`minor` are derived
    /// from it); [`GIT_VERSION`] unless a test needs apiservers of several
    /// versions.
    pub git_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StandinError {
    #[error("no certificate in the server certificate PEM (expected a `BEGIN CERTIFICATE` block)")]
    NoCertificate,
    #[error("server certificate PEM is malformed: {0:?}")]
    BadCertificate(rustls::pki_types::pem::Error),
    #[error("server key PEM holds no usable private key (PKCS#8, PKCS#1 or SEC1): {0:?}")]
    BadKey(rustls::pki_types::pem::Error),
    #[error("client CA PEM holds no usable CA certificate")]
    BadClientCa,
    #[error("TLS configuration rejected (does the key match the certificate?)")]
    Tls(#[source] rustls::Error),
    #[error("client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    #[error("listener")]
    Io(#[source] std::io::Error),
}

/// What `/readyz` answers; changed by `POST /standin/readyz?status=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ready {
    Status(u16),
    /// Read the request, never answer: a wedged apiserver.
    Hang,
}

struct State {
    name: String,
    git_version: String,
    watch_interval: Duration,
    ready: Mutex<Ready>,
    /// 200 = normal; 401/403 = every non-control request is refused.
    auth: Mutex<u16>,
    /// Shared across streams so resourceVersions only grow, as on a real server.
    events: AtomicU64,
    /// The `kubernetes` Service's EndpointSlices (`crate::slices`).
    slices: Mutex<crate::slices::SliceStore>,
    /// Each slice change, as a watch event line, to the open slice watches.
    slice_tx: tokio::sync::broadcast::Sender<SliceEvent>,
}

fn provider() -> Arc<CryptoProvider> {
    // Explicit: the process-level default may be unset or be another provider.
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, StandinError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(StandinError::BadCertificate)?;
    if certs.is_empty() {
        return Err(StandinError::NoCertificate);
    }
    Ok(certs)
}

/// Builds the server TLS config; ALPN offers only `http/1.1` (Go clients,
/// kubectl included, fall back to HTTP/1.1 when h2 is not selected).
pub fn tls_config(opts: &StandinOptions) -> Result<Arc<ServerConfig>, StandinError> {
    let certs = parse_certs(&opts.cert_pem)?;
    let key =
        PrivateKeyDer::from_pem_slice(opts.key_pem.as_bytes()).map_err(StandinError::BadKey)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(StandinError::Tls)?;
    let builder = match &opts.client_ca_pem {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let ca_certs = parse_certs(ca).map_err(|_| StandinError::BadClientCa)?;
            let (added, _ignored) = roots.add_parsable_certificates(ca_certs);
            if added == 0 {
                return Err(StandinError::BadClientCa);
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(StandinError::Verifier)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(StandinError::Tls)?;
    // The server's preference decides (rustls): h2 first, as Go's
    // net/http, which kube-apiserver uses, configures it.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves on `listener` until the future is dropped. Only configuration
/// errors are returned; per-connection problems are logged to stderr.
pub async fn serve(opts: StandinOptions, listener: TcpListener) -> Result<(), StandinError> {
    let config = tls_config(&opts)?;
    serve_with(config, opts, listener).await
}

async fn serve_with(
    config: Arc<ServerConfig>,
    opts: StandinOptions,
    listener: TcpListener,
) -> Result<(), StandinError> {
    let acceptor = TlsAcceptor::from(config);
    let state = Arc::new(State {
        name: opts.name,
        git_version: opts.git_version,
        watch_interval: opts.watch_interval.max(Duration::from_millis(1)),
        ready: Mutex::new(Ready::Status(200)),
        auth: Mutex::new(200),
        events: AtomicU64::new(0),
        slices: Mutex::new(crate::slices::SliceStore::default()),
        slice_tx: tokio::sync::broadcast::channel(256).0,
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("standin {}: accept: {e}", state.name);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            // Watch events go out as they are written.
            let _ = stream.set_nodelay(true);
            // Connected and closed without a byte: a TCP probe (vipd's
            // `type: tcp`, the fabric labs'), not a failed handshake worth
            // a line per probe.
            let mut first = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await
            {
                return;
            }
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    eprintln!(
                        "standin {}: TLS handshake from {peer} failed: {e}",
                        state.name
                    );
                    return;
                }
                Err(_) => {
                    eprintln!(
                        "standin {}: TLS handshake from {peer} timed out",
                        state.name
                    );
                    return;
                }
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(tls, state).await;
            } else {
                serve_conn(tls, &state).await;
            }
        });
    }
}

/// Runs the stand-in on its own thread and tokio runtime. Bind `listener`
/// wherever it must live (e.g. inside `netns::in_netns`); it stays in that
/// namespace. Panics on a bad certificate or key.
pub fn spawn_in_thread(opts: StandinOptions, listener: std::net::TcpListener) -> StandinHandle {
    let config = tls_config(&opts).unwrap_or_else(|e| panic!("stand-in {}: {e}", opts.name));
    let addr = listener
        .local_addr()
        .expect("stand-in listener has a local address");
    listener
        .set_nonblocking(true)
        .expect("set stand-in listener non-blocking");
    let name = opts.name.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("standin-{name}"))
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("standin {}: tokio runtime: {e}", opts.name);
                    return;
                }
            };
            rt.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("standin {}: listener: {e}", opts.name);
                        return;
                    }
                };
                let name = opts.name.clone();
                tokio::select! {
                    r = serve_with(config, opts, listener) => {
                        if let Err(e) = r {
                            eprintln!("standin {name}: {e}");
                        }
                    }
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime cancels every connection task: clients see
            // their connections closed, as when an apiserver process dies.
            rt.shutdown_timeout(Duration::from_millis(200));
        })
        .expect("spawn stand-in thread");
    StandinHandle {
        addr,
        name,
        stop_tx: Some(stop_tx),
        thread: Some(thread),
    }
}

/// A running in-process stand-in; stopped (all connections closed) on drop.
pub struct StandinHandle {
    addr: SocketAddr,
    name: String,
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandinHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops serving and closes every connection, then returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("standin {}: server thread panicked", self.name);
        }
    }
}

impl Drop for StandinHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

// ---------------------------------------------------------------- HTTP server

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    /// HTTP/1.0 or `Connection: close`.
    close: bool,
}

enum ReadError {
    /// Clean EOF between requests, idle timeout, or I/O error: just close.
    Closed,
    Malformed(&'static str),
    HeadTooLarge,
    BodyTooLarge,
    Unsupported(&'static str),
}

struct Conn<S> {
    io: S,
    buf: Vec<u8>,
}

async fn serve_conn<S: AsyncRead + AsyncWrite + Unpin>(io: S, state: &State) {
    let mut conn = Conn {
        io,
        buf: Vec::new(),
    };
    loop {
        let req = match read_request(&mut conn).await {
            Ok(req) => req,
            Err(ReadError::Closed) => return,
            Err(e) => {
                let (code, msg) = match e {
                    ReadError::HeadTooLarge => (431, "request header fields too large".to_string()),
                    ReadError::BodyTooLarge => (413, "request entity too large".to_string()),
                    ReadError::Malformed(what) => (400, format!("malformed request: {what}")),
                    ReadError::Unsupported(what) => (501, format!("not implemented: {what}")),
                    ReadError::Closed => return,
                };
                let body = status_json(code, &msg);
                let _ = respond(&mut conn.io, state, code, JSON, body.as_bytes(), true).await;
                let _ = conn.io.shutdown().await;
                return;
            }
        };
        match handle(&mut conn, state, &req).await {
            Ok(true) if !req.close => {}
            _ => {
                let _ = conn.io.shutdown().await;
                return;
            }
        }
    }
}

async fn read_request<S: AsyncRead + Unpin>(conn: &mut Conn<S>) -> Result<Request, ReadError> {
    let head_end = loop {
        // RFC 9112 §2.2: ignore empty lines before a request line.
        while conn.buf.starts_with(b"\r\n") {
            conn.buf.drain(..2);
        }
        if let Some(pos) = find(&conn.buf, b"\r\n\r\n") {
            break pos;
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(ReadError::HeadTooLarge);
        }
        if fill(conn).await? == 0 {
            return Err(if conn.buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Malformed("connection closed inside the request head")
            });
        }
    };
    if head_end > MAX_HEAD {
        return Err(ReadError::HeadTooLarge);
    }
    let head: Vec<u8> = conn.buf.drain(..head_end + 4).collect();
    let head = std::str::from_utf8(&head[..head_end])
        .map_err(|_| ReadError::Malformed("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed(
            "request line is not `METHOD TARGET VERSION`",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(ReadError::Malformed(
            "request target must be an absolute path",
        ));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(ReadError::Malformed("unsupported HTTP version")),
    };
    let mut close = http10;
    let mut content_length = 0usize;
    for l in lines {
        let Some((name, value)) = l.split_once(':') else {
            return Err(ReadError::Malformed("header line without a colon"));
        };
        if name.is_empty() || name.contains(' ') {
            return Err(ReadError::Malformed("bad header name"));
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value
                .parse()
                .map_err(|_| ReadError::Malformed("bad Content-Length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Unsupported(
                "request bodies with Transfer-Encoding",
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if content_length > MAX_BODY {
        return Err(ReadError::BodyTooLarge);
    }
    // Bodies are never used: discard them to keep the connection in sync.
    while conn.buf.len() < content_length {
        if fill(conn).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
    conn.buf.drain(..content_length);

    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
        close,
    })
}

async fn fill<S: AsyncRead + Unpin>(conn: &mut Conn<S>) -> Result<usize, ReadError> {
    let mut chunk = [0u8; 4096];
    match tokio::time::timeout(IDLE_TIMEOUT, conn.io.read(&mut chunk)).await {
        Ok(Ok(n)) => {
            conn.buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
        Ok(Err(_)) | Err(_) => Err(ReadError::Closed),
    }
}

/// Where `needle` first occurs in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// Handles one request; `Ok(true)` if the connection may be reused.
/// What a request gets, whatever the protocol carries it.
enum Reply {
    Full {
        code: u16,
        content_type: &'static str,
        body: Vec<u8>,
    },
    /// A watch stream: one event per interval until the client goes.
    Watch,
    /// A watch of the EndpointSlices from this resourceVersion.
    SliceWatch(u64),
    /// Read the request, never answer (a wedged apiserver's `/readyz`).
    Hang,
}

fn full(code: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
    Reply::Full {
        code,
        content_type,
        body: body.into(),
    }
}

/// The apiserver's answer to `method path?query`, for HTTP/1.1 and HTTP/2
/// alike.
fn route(state: &State, method: &str, path: &str, query: &HashMap<String, String>) -> Reply {
    if let Some(what) = path.strip_prefix("/standin/") {
        return control(state, method, query, what);
    }
    let auth = *state.auth.lock().unwrap_or_else(|e| e.into_inner());
    if auth != 200 {
        let body = match auth {
            401 => status_json(401, "Unauthorized"),
            403 => status_json(
                403,
                &format!("forbidden: User \"system:anonymous\" cannot get path \"{path}\""),
            ),
            code => status_json(code, "refused by stand-in control"),
        };
        return full(auth, JSON, body);
    }
    if method != "GET" {
        let body = status_json(
            405,
            "the server does not allow this method on the requested resource",
        );
        return full(405, JSON, body);
    }
    let watching = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    if path == crate::slices::PATH {
        let store = state.slices.lock().unwrap_or_else(|e| e.into_inner());
        if watching {
            let rv = query
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            return Reply::SliceWatch(rv);
        }
        return full(200, JSON, store.list());
    }
    if watching {
        return Reply::Watch;
    }
    if let Some(body) = crate::slices::discovery_doc(path) {
        return full(200, JSON, body);
    }
    match path {
        "/readyz" => {
            let ready = *state.ready.lock().unwrap_or_else(|e| e.into_inner());
            match ready {
                Ready::Status(200) => full(200, TEXT, "ok"),
                Ready::Status(code) => full(
                    code,
                    TEXT,
                    "[-]standin-control failed: reason withheld\nreadyz check failed\n",
                ),
                Ready::Hang => Reply::Hang,
            }
        }
        "/livez" | "/healthz" => full(200, TEXT, "ok"),
        "/version" => {
            // "v1.33.0" -> "1", "33", as kube-apiserver fills them.
            let mut parts = state.git_version.trim_start_matches('v').split('.');
            let (major, minor) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let body = serde_json::json!({
                "major": major,
                "minor": minor,
                "gitVersion": state.git_version,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2024-08-13T00:00:00Z",
                "goVersion": "go1.22.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            })
            .to_string();
            full(200, JSON, body)
        }
        "/whoami" => full(200, TEXT, state.name.clone()),
        path => full(404, JSON, not_found(path)),
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    state: &State,
    req: &Request,
) -> std::io::Result<bool> {
    let close = req.close;
    match route(state, &req.method, &req.path, &req.query) {
        Reply::Full {
            code,
            content_type,
            body,
        } => {
            respond(&mut conn.io, state, code, content_type, &body, close).await?;
            Ok(true)
        }
        Reply::Watch => {
            watch(&mut conn.io, state).await?;
            Ok(false)
        }
        Reply::SliceWatch(rv) => {
            slice_watch(&mut conn.io, state, rv).await?;
            Ok(false)
        }
        Reply::Hang => {
            // Keep the connection, answer nothing, until the client leaves.
            let mut scratch = [0u8; 1024];
            while let Ok(n) = conn.io.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
            Ok(false)
        }
    }
}

/// `POST /standin/readyz?status=200|503|hang`, `POST /standin/auth?status=200|401|403`.
fn control(state: &State, method: &str, query: &HashMap<String, String>, what: &str) -> Reply {
    if method != "POST" {
        return full(405, TEXT, "control endpoints take POST\n");
    }
    let status = query.get("status").map(String::as_str).unwrap_or("");
    let code = status
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c));
    let reply = match (what, code) {
        ("readyz", _) if status == "hang" => {
            *state.ready.lock().unwrap_or_else(|e| e.into_inner()) = Ready::Hang;
            Some("readyz: hang\n".to_string())
        }
        ("readyz", Some(code)) => {
            *state.ready.lock().unwrap_or_else(|e| e.into_inner()) = Ready::Status(code);
            Some(format!("readyz: {code}\n"))
        }
        ("auth", Some(code @ (200 | 401 | 403))) => {
            *state.auth.lock().unwrap_or_else(|e| e.into_inner()) = code;
            Some(format!("auth: {code}\n"))
        }
        ("slices", _) => {
            let mut store = state.slices.lock().unwrap_or_else(|e| e.into_inner());
            match store.control(query, state.events.fetch_add(1, Ordering::Relaxed) + 1) {
                Ok(events) => {
                    for e in events {
                        // No watcher: nothing to tell.
                        let _ = state.slice_tx.send(e);
                    }
                    Some(store.list())
                }
                Err(usage) => return full(400, TEXT, usage),
            }
        }
        _ => None,
    };
    match reply {
        Some(body) => full(200, TEXT, body),
        None => full(
            400,
            TEXT,
            "usage: POST /standin/readyz?status=200|503|<code>|hang, \
             POST /standin/auth?status=200|401|403, \
             POST /standin/slices?add=IP|remove=IP|bad=NAME|other=NAME\n",
        ),
    }
}

/// A slice watch event: its resourceVersion and its line.
type SliceEvent = (u64, String);

/// The head of a chunked watch response (HTTP/1.1).
async fn watch_head<S: AsyncWrite + Unpin>(io: &mut S, state: &State) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {JSON}\r\nTransfer-Encoding: chunked\r\n\
         X-Standin-Name: {}\r\nX-Standin-Protocol: http/1.1\r\nCache-Control: no-cache, private\r\n\r\n",
        state.name
    );
    io.write_all(head.as_bytes()).await?;
    io.flush().await
}

/// A slice watch's events: the kept ones after `rv`, then the receiver of
/// new ones. Subscribed before the backlog is read: an event in between
/// comes twice at most, and the resourceVersion check drops the second.
fn slice_subscribe(
    state: &State,
    rv: u64,
) -> (
    tokio::sync::broadcast::Receiver<SliceEvent>,
    Vec<SliceEvent>,
) {
    let rx = state.slice_tx.subscribe();
    let backlog = state
        .slices
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .since(rv);
    (rx, backlog)
}

async fn write_chunk<S: AsyncWrite + Unpin>(io: &mut S, line: &str) -> std::io::Result<()> {
    let chunk = format!("{:x}\r\n{line}\r\n", line.len());
    io.write_all(chunk.as_bytes()).await?;
    io.flush().await
}

/// The slice events after `rv` (those kept), then each new one, as chunks,
/// until the client goes.
async fn slice_watch<S: AsyncWrite + Unpin>(
    io: &mut S,
    state: &State,
    rv: u64,
) -> std::io::Result<()> {
    let (mut rx, backlog) = slice_subscribe(state, rv);
    watch_head(io, state).await?;
    let mut last = rv;
    for (n, line) in backlog {
        last = n;
        write_chunk(io, &line).await?;
    }
    loop {
        match rx.recv().await {
            Ok((n, line)) if n > last => {
                last = n;
                write_chunk(io, &line).await?;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                // Too far behind: the apiserver ends such a watch; the
                // client lists again.
                return Ok(());
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// The watch stream's next event: one ADDED ConfigMap, resourceVersions
/// growing across every stream of the server.
fn next_event(state: &State) -> String {
    let n = state.events.fetch_add(1, Ordering::Relaxed) + 1;
    let event = serde_json::json!({
        "type": "ADDED",
        "object": {
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": {
                "name": format!("standin-{n}"),
                "namespace": "default",
                "resourceVersion": n.to_string(),
            },
            "data": { "server": state.name },
        },
    });
    format!("{event}\n")
}

/// One ADDED event per interval, each a chunk ending in `\n`, until a write
/// fails (the client went away).
async fn watch<S: AsyncWrite + Unpin>(io: &mut S, state: &State) -> std::io::Result<()> {
    watch_head(io, state).await?;
    let mut tick = tokio::time::interval(state.watch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        write_chunk(io, &next_event(state)).await?;
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    state: &State,
    code: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let mut msg = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         X-Standin-Name: {}\r\nX-Standin-Protocol: http/1.1\r\nCache-Control: no-cache, private\r\n",
        reason(code),
        body.len(),
        state.name
    )
    .into_bytes();
    if close {
        msg.extend_from_slice(b"Connection: close\r\n");
    }
    msg.extend_from_slice(b"\r\n");
    msg.extend_from_slice(body);
    io.write_all(&msg).await?;
    io.flush().await
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn k8s_reason(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        413 => "RequestEntityTooLarge",
        503 => "ServiceUnavailable",
        400 | 431 => "BadRequest",
        _ => "InternalError",
    }
}

/// A `metav1.Status` failure body, as the apiserver sends with errors.
fn status_json(code: u16, message: &str) -> String {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": k8s_reason(code),
        "code": code,
    })
    .to_string()
}

fn not_found(path: &str) -> String {
    // /api/v1/namespaces/<ns>/<resource>/<name>: name the object like the apiserver.
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let message = match parts.as_slice() {
        ["api", "v1", "namespaces", _, resource, name] => {
            format!("{resource} \"{name}\" not found")
        }
        _ => "the server could not find the requested resource".to_string(),
    };
    status_json(404, &message)
}

// ---------------------------------------------------------------- HTTP/2 server

/// One HTTP/2 connection (RFC 9113): every request a stream of its own task,
/// all of them multiplexed on this one TCP connection, as client-go does.
async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin>(io: S, state: Arc<State>) {
    let mut conn = match h2::server::handshake(io).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("standin {}: HTTP/2 preface: {e}", state.name);
            return;
        }
    };
    while let Some(next) = conn.accept().await {
        let Ok((req, respond)) = next else { return };
        let state = state.clone();
        tokio::spawn(async move {
            let _ = h2_stream(req, respond, &state).await;
        });
    }
}

fn h2_head(
    state: &State,
    code: u16,
    content_type: &str,
) -> Result<http::Response<()>, http::Error> {
    http::Response::builder()
        .status(code)
        .header("content-type", content_type)
        .header("x-standin-name", state.name.as_str())
        .header("x-standin-protocol", "h2")
        .header("cache-control", "no-cache, private")
        .body(())
}

async fn h2_stream(
    req: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<bytes::Bytes>,
    state: &State,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match route(state, req.method().as_str(), req.uri().path(), &query) {
        Reply::Full {
            code,
            content_type,
            body,
        } => {
            let mut out = respond.send_response(h2_head(state, code, content_type)?, false)?;
            out.send_data(bytes::Bytes::from(body), true)?;
        }
        Reply::Watch => {
            let mut out = respond.send_response(h2_head(state, 200, JSON)?, false)?;
            let mut tick = tokio::time::interval(state.watch_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Fails once the client reset the stream or the connection
                // went: the stream's task ends.
                out.send_data(bytes::Bytes::from(next_event(state)), false)?;
            }
        }
        Reply::SliceWatch(rv) => {
            let (mut rx, backlog) = slice_subscribe(state, rv);
            let mut out = respond.send_response(h2_head(state, 200, JSON)?, false)?;
            let mut last = rv;
            for (n, line) in backlog {
                last = n;
                out.send_data(bytes::Bytes::from(line), false)?;
            }
            while let Ok((n, line)) = rx.recv().await {
                if n > last {
                    last = n;
                    out.send_data(bytes::Bytes::from(line), false)?;
                }
            }
        }
        Reply::Hang => {
            // Answer nothing until the client resets the stream.
            let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- test client

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O")]
    Io(#[source] std::io::Error),
    #[error("TLS")]
    Tls(#[source] rustls::Error),
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    #[error("connection closed by the server")]
    Closed,
    #[error("watch event is not JSON")]
    Json(#[source] serde_json::Error),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        // rustls reports handshake failures through io::Error(InvalidData).
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => ClientError::Tls(tls.clone()),
            None => ClientError::Io(e),
        }
    }
}

/// Client TLS config trusting only `ca_pem`, optionally presenting a client
/// certificate; ALPN `http/1.1`. The probes' own (`vipd`'s `ProbeTls`): tests
/// and agent trust certificates the same way. It never resumes a session, so
/// every connection makes a full handshake, as client-go's do.
pub fn client_config(ca_pem: &str, client_cert: Option<(&str, &str)>) -> Arc<ClientConfig> {
    vip_userspace::probe::ProbeTls::from_pem(
        ca_pem.as_bytes(),
        client_cert.map(|(c, k)| (c.as_bytes(), k.as_bytes())),
    )
    .unwrap_or_else(|e| panic!("test TLS client configuration: {e}"))
    .client_config()
}

/// A blocking HTTPS/1.1 connection (keep-alive) for tests. Create it inside
/// `in_netns` to connect from a namespace; use it from any thread after.
pub struct HttpsConn {
    tls: rustls::StreamOwned<rustls::ClientConnection, StdTcpStream>,
    buf: Vec<u8>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body).map_err(ClientError::Json)
    }
}

impl HttpsConn {
    /// Connects and completes the handshake, so certificate errors surface
    /// here as `ClientError::Tls`. `timeout` also bounds every later read.
    pub fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
        timeout: Duration,
    ) -> Result<HttpsConn, ClientError> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| ClientError::ServerName(server_name.to_string()))?;
        let mut sock = StdTcpStream::connect_timeout(&addr, timeout)?;
        sock.set_read_timeout(Some(timeout))?;
        sock.set_write_timeout(Some(timeout))?;
        sock.set_nodelay(true)?;
        let mut conn = rustls::ClientConnection::new(config, name).map_err(ClientError::Tls)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        Ok(HttpsConn {
            tls: rustls::StreamOwned::new(conn, sock),
            buf: Vec::new(),
        })
    }

    pub fn set_read_timeout(&self, timeout: Duration) -> Result<(), ClientError> {
        Ok(self.tls.sock.set_read_timeout(Some(timeout))?)
    }

    /// The local address (useful to find the flow in conntrack or tcpdump).
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.tls.sock.local_addr()?)
    }

    pub fn request(&mut self, method: &str, path: &str) -> Result<Response, ClientError> {
        self.send(method, path)?;
        let (status, headers) = self.read_head()?;
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse::<usize>())
            .transpose()
            .map_err(|_| ClientError::Malformed("bad Content-Length"))?
            .ok_or(ClientError::Malformed("response without Content-Length"))?;
        while self.buf.len() < len {
            self.fill()?;
        }
        let body = self.buf.drain(..len).collect();
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub fn get(&mut self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path)
    }

    /// Starts a watch (`path` should carry `watch=1`); the server must answer
    /// 200 with a chunked body.
    pub fn watch(mut self, path: &str) -> Result<WatchStream, ClientError> {
        self.send("GET", path)?;
        let (status, headers) = self.read_head()?;
        if status != 200 {
            return Err(ClientError::Malformed(
                "watch answered with a non-200 status",
            ));
        }
        Ok(WatchStream {
            conn: self,
            headers,
            pending: Vec::new(),
        })
    }

    fn send(&mut self, method: &str, path: &str) -> Result<(), ClientError> {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: standin\r\nContent-Length: 0\r\n\r\n");
        self.tls.write_all(req.as_bytes())?;
        self.tls.flush()?;
        Ok(())
    }

    /// Writes raw bytes (for malformed-input tests).
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.tls.write_all(bytes)?;
        self.tls.flush()?;
        Ok(())
    }

    /// Reads one response head (after `write_raw`); status and headers.
    pub fn read_head(&mut self) -> Result<(u16, Vec<(String, String)>), ClientError> {
        let end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            self.fill()?;
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let head = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or(ClientError::Malformed("bad status line"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok((status, headers))
    }

    fn fill(&mut self) -> Result<(), ClientError> {
        let mut chunk = [0u8; 4096];
        match self.tls.read(&mut chunk)? {
            0 => Err(ClientError::Closed),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

/// The body of a watch: newline-delimited JSON events in HTTP chunks.
pub struct WatchStream {
    conn: HttpsConn,
    pub headers: Vec<(String, String)>,
    pending: Vec<u8>,
}

impl WatchStream {
    /// The next event; blocks up to the connection's read timeout.
    pub fn next_event(&mut self) -> Result<serde_json::Value, ClientError> {
        loop {
            if let Some(nl) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map_err(ClientError::Json);
            }
            self.read_chunk()?;
        }
    }

    pub fn set_read_timeout(&self, timeout: Duration) -> Result<(), ClientError> {
        self.conn.set_read_timeout(timeout)
    }

    /// TCP keepalive probes after `every` of silence, then every `every`.
    pub fn keepalive(&self, every: Duration) -> Result<(), ClientError> {
        use std::os::fd::AsRawFd;
        let fd = self.conn.tls.sock.as_raw_fd();
        let secs = every.as_secs().max(1) as libc::c_int;
        for (level, opt, val) in [
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
            (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs),
            (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs),
        ] {
            // SAFETY: setsockopt on a socket we own, with a c_int value of
            // the size given.
            let r = unsafe {
                libc::setsockopt(
                    fd,
                    level,
                    opt,
                    (&val as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(ClientError::Io(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }

    fn read_chunk(&mut self) -> Result<(), ClientError> {
        let c = &mut self.conn;
        let end = loop {
            if let Some(p) = find(&c.buf, b"\r\n") {
                break p;
            }
            c.fill()?;
        };
        let size_line: Vec<u8> = c.buf.drain(..end + 2).collect();
        let size_str = String::from_utf8_lossy(&size_line[..end]);
        let size_str = size_str.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| ClientError::Malformed("bad chunk size"))?;
        if size == 0 {
            return Err(ClientError::Closed);
        }
        while c.buf.len() < size + 2 {
            c.fill()?;
        }
        self.pending.extend(c.buf.drain(..size));
        c.buf.drain(..2);
        Ok(())
    }
}
