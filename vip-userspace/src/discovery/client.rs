//! A list/watch client for the one resource vipd reads, over the rustls
//! dial the probes use and the HTTP/1.1 codec of `crate::http`.
//!
//! Why not the `kube` + `k8s-openapi` crates: measured here, their cold
//! debug build adds ~95 s of compile time (k8s-openapi alone 42 s, generated
//! types for the whole API), and the musl release build of the image pays it
//! again, for one GET and one watch of one resource type. The few fields
//! read are typed in `slice.rs`.
//!
//! Credentials, as a client-go program finds them: a kubeconfig (kubeadm's
//! `/etc/kubernetes/admin.conf`, `super-admin.conf`, or a vipd-only one with
//! a token or client certificate), else the pod's service account
//! (`KUBERNETES_SERVICE_HOST`/`_PORT`, the token and CA under
//! `/var/run/secrets/kubernetes.io/serviceaccount`, the token read again
//! for each request since the kubelet rotates it).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use super::slice::{NAMESPACE, SERVICE, SERVICE_LABEL, SliceList, WatchEvent};
use crate::{
    config::DiscoverySettings,
    probe::{self, ProbeTls},
};

/// Where a pod finds its service account.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// A list answer larger than this is refused (the `kubernetes` Service's
/// slices are a few hundred bytes per apiserver).
const MAX_LIST: usize = 4 << 20;
/// One watch line larger than this ends the watch.
const MAX_LINE: usize = 1 << 20;
/// Connect, send and read a list within this.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// The server ends a watch after this (`timeoutSeconds`); we list again then.
pub const WATCH_SECONDS: u64 = 290;
/// No byte for this long on a watch: the server is gone silently.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECONDS + 30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{path}: {why}")]
    Kubeconfig { path: PathBuf, why: String },
    #[error(
        "no kubeconfig given and not in a pod ({0}); set discovery.kubeconfig (kubeadm: /etc/kubernetes/admin.conf) or run vipd as the DaemonSet with its service account"
    )]
    NotInCluster(String),
    #[error("discovery.servers: {0:?} is not https://HOST:PORT")]
    Server(String),
    #[error("TLS material: {0}")]
    Tls(#[source] crate::probe::ProbeSetupError),
    #[error("{server}: {why}")]
    Request { server: String, why: String },
    #[error(
        "{server}: {status} for the EndpointSlices; give vipd's identity list and watch on endpointslices.discovery.k8s.io in namespace default (deploy/rbac.yaml)"
    )]
    Forbidden { server: String, status: u16 },
    #[error("{server}: HTTP {status}: {body}")]
    Status {
        server: String,
        status: u16,
        body: String,
    },
    #[error("the watch ended: {0}")]
    WatchEnded(String),
    /// 410 Gone: the resourceVersion is too old; list again.
    #[error("the watch's resourceVersion is gone (410): listing again")]
    Gone,
}

impl ClientError {
    /// The metrics' error label.
    pub fn label(&self) -> &'static str {
        match self {
            ClientError::Kubeconfig { .. } | ClientError::NotInCluster(_) => "credentials",
            ClientError::Server(_) | ClientError::Tls(_) => "credentials",
            ClientError::Request { .. } => "unreachable",
            ClientError::Forbidden { .. } => "forbidden",
            ClientError::Status { .. } => "status",
            ClientError::WatchEnded(_) | ClientError::Gone => "watch",
        }
    }
}

/// A bearer token: fixed, or read from a file at each request.
#[derive(Debug, Clone)]
enum Token {
    None,
    Fixed(String),
    File(PathBuf),
}

/// One apiserver URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
}

impl Server {
    /// `https://HOST[:PORT][/]` (IPv6 in brackets), as a kubeconfig writes it.
    pub fn parse(url: &str) -> Result<Server, ClientError> {
        let bad = || ClientError::Server(url.to_owned());
        let rest = url.strip_prefix("https://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.is_empty() {
            return Err(bad());
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| bad())?),
                None if after.is_empty() => (h, 443),
                None => return Err(bad()),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
                None => (rest, 443),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Server {
            host: host.to_owned(),
            port,
        })
    }

    fn name(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }
}

/// Everything a request needs.
pub struct Client {
    servers: Vec<Server>,
    tls: Arc<ProbeTls>,
    /// The name the certificate is verified for; the server's host unless
    /// `discovery.tls_name` says otherwise.
    tls_name: Option<ServerName<'static>>,
    token: Token,
}

// The kubeconfig fields vipd reads (clientcmd's v1 Config).
#[derive(Deserialize)]
struct Kubeconfig {
    #[serde(default, rename = "current-context")]
    current_context: String,
    #[serde(default)]
    contexts: Vec<Named<ContextEntry>>,
    #[serde(default)]
    clusters: Vec<Named<ClusterEntry>>,
    #[serde(default)]
    users: Vec<Named<UserEntry>>,
}
#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "context", alias = "cluster", alias = "user")]
    inner: T,
}
#[derive(Deserialize)]
struct ContextEntry {
    cluster: String,
    #[serde(default)]
    user: String,
}
#[derive(Deserialize)]
struct ClusterEntry {
    server: String,
    #[serde(default, rename = "certificate-authority-data")]
    ca_data: Option<String>,
    #[serde(default, rename = "certificate-authority")]
    ca_file: Option<PathBuf>,
    #[serde(default, rename = "tls-server-name")]
    tls_server_name: Option<String>,
}
#[derive(Deserialize, Default)]
struct UserEntry {
    #[serde(default)]
    token: Option<String>,
    #[serde(default, rename = "tokenFile")]
    token_file: Option<PathBuf>,
    #[serde(default, rename = "client-certificate-data")]
    cert_data: Option<String>,
    #[serde(default, rename = "client-key-data")]
    key_data: Option<String>,
    #[serde(default, rename = "client-certificate")]
    cert_file: Option<PathBuf>,
    #[serde(default, rename = "client-key")]
    key_file: Option<PathBuf>,
    #[serde(default)]
    exec: Option<serde_yaml_ng::Value>,
}

/// The material a kubeconfig names: (server, CA PEM, client cert+key PEM,
/// token, TLS name).
struct FromKubeconfig {
    server: String,
    ca: Vec<u8>,
    client: Option<(Vec<u8>, Vec<u8>)>,
    token: Token,
    tls_name: Option<String>,
}

/// Reads a kubeconfig's current context. Relative file paths in it are
/// relative to the kubeconfig's folder, as in clientcmd.
fn read_kubeconfig(path: &Path) -> Result<FromKubeconfig, ClientError> {
    let err = |why: String| ClientError::Kubeconfig {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    parse_kubeconfig(&text, path.parent().unwrap_or(Path::new("/"))).map_err(err)
}

fn parse_kubeconfig(text: &str, dir: &Path) -> Result<FromKubeconfig, String> {
    let k: Kubeconfig =
        serde_yaml_ng::from_str(text).map_err(|e| format!("not a kubeconfig: {e}"))?;
    let ctx = k
        .contexts
        .iter()
        .find(|c| c.name == k.current_context)
        .or_else(|| (k.current_context.is_empty() && k.contexts.len() == 1).then(|| &k.contexts[0]))
        .ok_or_else(|| {
            format!(
                "current-context {:?} names no context; set it (kubectl config use-context)",
                k.current_context
            )
        })?;
    let cluster = k
        .clusters
        .iter()
        .find(|c| c.name == ctx.inner.cluster)
        .ok_or_else(|| {
            format!(
                "context names cluster {:?}, which is not listed",
                ctx.inner.cluster
            )
        })?;
    let user = k
        .users
        .iter()
        .find(|u| u.name == ctx.inner.user)
        .map(|u| &u.inner);
    let b64 = |what: &str, s: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("{what} is not base64: {e}"))
    };
    let file = |what: &str, p: &Path| {
        let p = dir.join(p);
        std::fs::read(&p).map_err(|e| format!("{what} {}: {e}", p.display()))
    };
    let c = &cluster.inner;
    let ca = match (&c.ca_data, &c.ca_file) {
        (Some(d), _) => b64("certificate-authority-data", d)?,
        (None, Some(p)) => file("certificate-authority", p)?,
        (None, None) => {
            return Err("the cluster has no certificate-authority(-data): vipd verifies the apiserver, it does not skip TLS verification".into());
        }
    };
    let mut client = None;
    let mut token = Token::None;
    if let Some(u) = user {
        if u.exec.is_some() {
            return Err("the user runs an exec credential plugin, which vipd does not run; give it a token or a client certificate (kubeadm's admin.conf has one)".into());
        }
        let cert = match (&u.cert_data, &u.cert_file) {
            (Some(d), _) => Some(b64("client-certificate-data", d)?),
            (None, Some(p)) => Some(file("client-certificate", p)?),
            _ => None,
        };
        let key = match (&u.key_data, &u.key_file) {
            (Some(d), _) => Some(b64("client-key-data", d)?),
            (None, Some(p)) => Some(file("client-key", p)?),
            _ => None,
        };
        client = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("the user has a client certificate without its key (or a key without its certificate)".into()),
        };
        token = match (&u.token, &u.token_file) {
            (Some(t), _) => Token::Fixed(t.trim().to_owned()),
            (None, Some(p)) => Token::File(dir.join(p)),
            _ => Token::None,
        };
    }
    Ok(FromKubeconfig {
        server: c.server.clone(),
        ca,
        client,
        token,
        tls_name: c.tls_server_name.clone(),
    })
}

impl Client {
    /// The client `settings` describe: a kubeconfig, else the pod's service
    /// account (`sa_dir`, with the `KUBERNETES_SERVICE_*` variables as
    /// `env` gives them). `discovery.servers` replaces the server(s) found.
    pub fn new(
        settings: &DiscoverySettings,
        env: impl Fn(&str) -> Option<String>,
        sa_dir: &Path,
    ) -> Result<Client, ClientError> {
        let (found_server, ca, client, token, tls_name) = match &settings.kubeconfig {
            Some(p) => {
                let k = read_kubeconfig(p)?;
                (Some(k.server), k.ca, k.client, k.token, k.tls_name)
            }
            None => {
                let server = match (
                    env("KUBERNETES_SERVICE_HOST"),
                    env("KUBERNETES_SERVICE_PORT"),
                ) {
                    (Some(h), Some(p)) if h.contains(':') => Some(format!("https://[{h}]:{p}")),
                    (Some(h), Some(p)) => Some(format!("https://{h}:{p}")),
                    _ => None,
                };
                let ca_path = sa_dir.join("ca.crt");
                let ca = std::fs::read(&ca_path).map_err(|e| {
                    ClientError::NotInCluster(format!("{}: {e}", ca_path.display()))
                })?;
                if server.is_none() && settings.servers.is_empty() {
                    return Err(ClientError::NotInCluster(
                        "KUBERNETES_SERVICE_HOST/PORT are not set".into(),
                    ));
                }
                (server, ca, None, Token::File(sa_dir.join("token")), None)
            }
        };
        let servers = if settings.servers.is_empty() {
            found_server.into_iter().collect()
        } else {
            settings.servers.clone()
        };
        let servers = servers
            .iter()
            .map(|s| Server::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = ProbeTls::from_pem(
            &ca,
            client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
        .map_err(ClientError::Tls)?;
        let tls_name = settings
            .tls_name
            .as_ref()
            .map(|n| n.server_name().clone())
            .or_else(|| tls_name.and_then(|n| ServerName::try_from(n).ok()));
        Ok(Client {
            servers,
            tls: Arc::new(tls),
            tls_name,
            token,
        })
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    fn headers(&self) -> Result<Vec<(String, String)>, ClientError> {
        let mut h = vec![("Accept".to_owned(), "application/json".to_owned())];
        let token = match &self.token {
            Token::None => None,
            Token::Fixed(t) => Some(t.clone()),
            Token::File(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| ClientError::Kubeconfig {
                        path: p.clone(),
                        why: format!("cannot read the token: {e}"),
                    })?
                    .trim()
                    .to_owned(),
            ),
        };
        if let Some(t) = token {
            h.push(("Authorization".to_owned(), format!("Bearer {t}")));
        }
        Ok(h)
    }

    /// Dials the servers in order; the first that completes a verified
    /// handshake sends `path`. Returns the stream after the response head,
    /// the head's status, the bytes read past the head, and the server.
    async fn request(&self, path: &str, deadline: Instant) -> Result<Opened, ClientError> {
        let mut last = None;
        for s in &self.servers {
            match self.request_one(s, path, deadline).await {
                Ok(o) => return Ok(o),
                Err(e @ ClientError::Request { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClientError::Server("(none)".into())))
    }

    async fn request_one(
        &self,
        s: &Server,
        path: &str,
        deadline: Instant,
    ) -> Result<Opened, ClientError> {
        let server = s.name();
        let fail = |why: String| ClientError::Request {
            server: server.clone(),
            why,
        };
        let addr: SocketAddr = match s.host.parse() {
            Ok(ip) => SocketAddr::new(ip, s.port),
            Err(_) => timeout_at(deadline, tokio::net::lookup_host((s.host.as_str(), s.port)))
                .await
                .map_err(|_| fail("name lookup timed out".into()))?
                .map_err(|e| fail(format!("name lookup: {e}")))?
                .next()
                .ok_or_else(|| fail("the name has no address".into()))?,
        };
        let name = match &self.tls_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(s.host.clone())
                .map_err(|_| ClientError::Server(server.clone()))?,
        };
        let mut stream = probe::dial_tls(addr, &name, &self.tls, deadline)
            .await
            .map_err(|e| fail(e.into_failure().to_string()))?;
        let headers = self.headers()?;
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let req = crate::http::get(path, &format!("{}:{}", s.host, s.port), &headers);
        timeout_at(deadline, stream.write_all(req.as_bytes()))
            .await
            .map_err(|_| fail("sending the request timed out".into()))?
            .map_err(|e| fail(format!("sending the request: {e}")))?;
        let mut buf = Vec::with_capacity(4096);
        let end = loop {
            if let Some(end) = crate::http::head_end(&buf) {
                break end;
            }
            if buf.len() > 64 * 1024 {
                return Err(fail("the response head is too large".into()));
            }
            let mut chunk = [0u8; 4096];
            let n = timeout_at(deadline, stream.read(&mut chunk))
                .await
                .map_err(|_| fail("no answer in time".into()))?
                .map_err(|e| fail(format!("reading the answer: {e}")))?;
            if n == 0 {
                return Err(fail(
                    "the server closed the connection without an answer".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = crate::http::response(&buf).map_err(|e| fail(e.to_string()))?;
        let status = head.status;
        let chunked = String::from_utf8_lossy(&buf[..end])
            .to_ascii_lowercase()
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        Ok(Opened {
            server,
            status,
            chunked,
            rest: buf[end..].to_vec(),
            stream: Box::new(stream),
        })
    }

    /// Lists the `kubernetes` Service's slices.
    pub async fn list(&self) -> Result<SliceList, ClientError> {
        let deadline = Instant::now() + LIST_TIMEOUT;
        let mut o = self.request(&list_path(None), deadline).await?;
        let mut body = o.rest.clone();
        loop {
            let mut chunk = [0u8; 8192];
            let n = timeout_at(deadline, o.stream.read(&mut chunk))
                .await
                .map_err(|_| o.fail("the list did not finish in time"))?
                .map_err(|e| o.fail(&format!("reading the list: {e}")))?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > MAX_LIST {
                return Err(o.fail("the list is larger than 4 MiB"));
            }
        }
        let body = if o.chunked {
            let mut d = Dechunker::default();
            let out = d.feed(&body).map_err(|e| o.fail(e))?;
            if !d.done() {
                return Err(o.fail("the list ended before its last chunk"));
            }
            out
        } else {
            body
        };
        o.check(&body)?;
        serde_json::from_slice(&body).map_err(|e| o.fail(&format!("not an EndpointSliceList: {e}")))
    }

    /// Watches from `resource_version`, handing each event to `each` until
    /// the server ends the watch (`Ok`) or it fails.
    pub async fn watch(
        &self,
        resource_version: &str,
        mut each: impl FnMut(WatchEvent),
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + LIST_TIMEOUT;
        let mut o = self
            .request(&list_path(Some(resource_version)), deadline)
            .await?;
        if o.status != 200 {
            let mut body = o.rest.clone();
            let _ = timeout_at(deadline, o.stream.read_to_end(&mut body)).await;
            o.check(&body)?;
        }
        let mut dechunk = Dechunker::default();
        let mut lines = Lines::default();
        let mut pending = std::mem::take(&mut o.rest);
        loop {
            let data = if o.chunked {
                dechunk.feed(&pending).map_err(|e| o.fail(e))?
            } else {
                pending
            };
            for line in lines.feed(&data).map_err(|e| o.fail(e))? {
                let ev: WatchEvent = serde_json::from_slice(&line)
                    .map_err(|e| o.fail(&format!("a watch line is not an event: {e}")))?;
                if ev.kind == "ERROR" {
                    let code = ev.object.get("code").and_then(|c| c.as_u64());
                    return Err(if code == Some(410) {
                        ClientError::Gone
                    } else {
                        ClientError::WatchEnded(ev.object.to_string())
                    });
                }
                each(ev);
            }
            if dechunk.done() {
                return Ok(());
            }
            let mut chunk = vec![0u8; 8192];
            let n = tokio::time::timeout(WATCH_IDLE, o.stream.read(&mut chunk))
                .await
                .map_err(|_| {
                    ClientError::WatchEnded("no data from the server for too long".into())
                })?
                .map_err(|e| ClientError::WatchEnded(e.to_string()))?;
            if n == 0 {
                return Ok(());
            }
            chunk.truncate(n);
            pending = chunk;
        }
    }
}

/// A request whose response head was read.
struct Opened {
    server: String,
    status: u16,
    chunked: bool,
    rest: Vec<u8>,
    stream: Box<dyn AsyncRead + Unpin + Send>,
}

impl Opened {
    fn fail(&self, why: &str) -> ClientError {
        ClientError::Request {
            server: self.server.clone(),
            why: why.to_owned(),
        }
    }

    /// A status other than 200 as its error.
    fn check(&self, body: &[u8]) -> Result<(), ClientError> {
        match self.status {
            200 => Ok(()),
            401 | 403 => Err(ClientError::Forbidden {
                server: self.server.clone(),
                status: self.status,
            }),
            status => Err(ClientError::Status {
                server: self.server.clone(),
                status,
                body: String::from_utf8_lossy(body).chars().take(200).collect(),
            }),
        }
    }
}

/// The slices' path, with the label selector; with a resourceVersion, the
/// watch from there (bookmarks on, so a quiet watch still moves its
/// resourceVersion and a reconnect does not start from a compacted one).
pub fn list_path(watch_from: Option<&str>) -> String {
    let mut p = format!(
        "/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices?labelSelector={}%3D{SERVICE}",
        SERVICE_LABEL.replace('/', "%2F")
    );
    if let Some(rv) = watch_from {
        let rv: String = rv.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        p.push_str(&format!(
            "&watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={rv}"
        ));
    }
    p
}

/// RFC 9112 section 7.1 chunked transfer coding, decoded as the bytes
/// arrive (a watch is one endless response).
#[derive(Debug, Default)]
pub struct Dechunker {
    buf: Vec<u8>,
    /// Bytes left in the current chunk's data (+2 for its CRLF).
    left: usize,
    done: bool,
}

impl Dechunker {
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<u8>, &'static str> {
        self.buf.extend_from_slice(input);
        let mut out = vec![];
        loop {
            if self.done {
                return Ok(out);
            }
            if self.left > 0 {
                let take = self.left.min(self.buf.len());
                // The data, then its CRLF (the last 2 of `left`).
                let data = take.min(self.left.saturating_sub(2));
                out.extend_from_slice(&self.buf[..data]);
                self.buf.drain(..take);
                self.left -= take;
                if self.left > 0 {
                    return Ok(out);
                }
                continue;
            }
            let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                if self.buf.len() > 1024 {
                    return Err("a chunk size line is too long");
                }
                return Ok(out);
            };
            let line =
                std::str::from_utf8(&self.buf[..eol]).map_err(|_| "a chunk size is not text")?;
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "a chunk size is not hex")?;
            self.buf.drain(..eol + 2);
            if size == 0 {
                self.done = true;
            } else {
                self.left = size.checked_add(2).ok_or("a chunk size overflows")?;
            }
        }
    }

    /// The last (zero) chunk was read.
    pub fn done(&self) -> bool {
        self.done
    }
}

/// Newline-delimited JSON (a watch sends one event per line).
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
        self.buf.extend_from_slice(input);
        let mut out = vec![];
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).take(i).collect();
            if !line.iter().all(u8::is_ascii_whitespace) {
                out.push(line);
            }
        }
        if self.buf.len() > MAX_LINE {
            return Err("a watch line is larger than 1 MiB");
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_as_kubeconfigs_write_them() {
        assert_eq!(
            Server::parse("https://10.0.0.1:6443").expect("v4"),
            Server {
                host: "10.0.0.1".into(),
                port: 6443
            }
        );
        assert_eq!(
            Server::parse("https://[fd00::1]:6443/").expect("v6").host,
            "fd00::1"
        );
        assert_eq!(
            Server::parse("https://api.example").expect("name").port,
            443
        );
        for bad in [
            "http://10.0.0.1:6443",
            "https://",
            "https://h:x",
            "https://h:1/path",
            "10.0.0.1",
        ] {
            assert!(Server::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunks_and_lines_come_apart_at_any_split() {
        let body = b"5\r\n{\"a\":\r\n9\r\n1}\n{\"b\":2\r\n3;x=y\r\n}\n\n\r\n0\r\n\r\n";
        for split in 0..body.len() {
            let mut d = Dechunker::default();
            let mut l = Lines::default();
            let mut got = vec![];
            for part in [&body[..split], &body[split..]] {
                let data = d.feed(part).expect("valid");
                got.extend(l.feed(&data).expect("lines"));
            }
            assert!(d.done(), "split {split}");
            assert_eq!(
                got,
                [b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()],
                "split {split}"
            );
        }
        assert!(Dechunker::default().feed(b"zz\r\n").is_err());
    }

    #[test]
    fn the_list_and_watch_paths() {
        assert_eq!(
            list_path(None),
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes"
        );
        assert!(list_path(Some("12&x=1")).ends_with("&resourceVersion=12x1"));
    }

    #[test]
    fn kubeconfigs_of_kubeadm_and_with_tokens_and_refusals() {
        let dir = std::env::temp_dir();
        let ca = base64::engine::general_purpose::STANDARD.encode("CA PEM");
        let admin = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: kubernetes-admin@kubernetes\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: https://10.0.0.100:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\nusers:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {ca}\n    client-key-data: {ca}\n"
        );
        let k = parse_kubeconfig(&admin, &dir).expect("kubeadm's admin.conf");
        assert_eq!(k.server, "https://10.0.0.100:6443");
        assert_eq!(k.ca, b"CA PEM");
        assert!(k.client.is_some() && matches!(k.token, Token::None));
        let token = admin
            .replace(
                "    client-certificate-data",
                "    token: abc\n    x-client-certificate-data",
            )
            .replace("x-client-certificate-data", "#")
            .replace(&format!("    client-key-data: {ca}\n"), "");
        let k = parse_kubeconfig(&token, &dir).expect("token");
        assert!(matches!(k.token, Token::Fixed(ref t) if t == "abc"));
        let e = parse_kubeconfig(
            &admin.replace("kubernetes-admin@kubernetes\nclusters", "other\nclusters"),
            &dir,
        )
        .err()
        .expect("no such context");
        assert!(e.contains("current-context \"other\""), "{e}");
        let e = parse_kubeconfig(
            &admin.replace(&format!("certificate-authority-data: {ca}\n"), ""),
            &dir,
        )
        .err()
        .expect("no CA");
        assert!(e.contains("does not skip TLS verification"), "{e}");
        let exec = admin.replace(
            &format!("    client-certificate-data: {ca}\n    client-key-data: {ca}\n"),
            "    exec: {command: aws}\n",
        );
        let e = parse_kubeconfig(&exec, &dir).err().expect("exec");
        assert!(e.contains("exec credential plugin"), "{e}");
    }
}
