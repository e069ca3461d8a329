//! The apiservers' versions: each backend's `GET /version` (over the probe's
//! TLS, every [`EVERY`]) and the check that they are within Kubernetes'
//! version-skew policy: "kube-apiserver instances in a highly-available
//! cluster must be within one minor version" of each other
//! (<https://kubernetes.io/releases/version-skew-policy/>). Apiservers
//! further apart during an upgrade serve APIs the others do not know; a
//! load balancer that spreads clients over them makes that visible as
//! intermittent errors. The decision is pure ([`skew`]); the fetch only
//! moves bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout_at;

use crate::{
    http::HttpError,
    probe::{Failure, ProbeTls, deadline_after, dial_tls, host_header, io_failure, request},
};

/// How often the versions are read: a version changes only when an
/// apiserver is upgraded, so far less often than the health probes.
pub const EVERY: Duration = Duration::from_secs(30);
/// The whole response must fit in this (kube-apiserver's is ~300 bytes).
const MAX_RESPONSE: usize = 64 * 1024;

/// `major.minor` of a Kubernetes gitVersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Minor {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for Minor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Reads `v1.31.2`, `v1.33.0-rc.1`, `v1.30.4+k3s1`, `v1.29.8-eks-a737599`
/// (a leading `v`, then major.minor.patch, anything after). None for
/// anything else.
pub fn parse(git_version: &str) -> Option<Minor> {
    let rest = git_version.strip_prefix('v')?;
    let mut parts = rest.splitn(3, '.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next()?;
    let digits = patch.split(['-', '+']).next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Minor { major, minor })
}

/// What [`skew`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Skew {
    /// The oldest and the newest apiserver, when they are more than one
    /// minor apart (or of another major).
    pub apart: Option<((SocketAddr, String), (SocketAddr, String))>,
    /// Versions that do not parse: left out of the decision.
    pub ignored: Vec<(SocketAddr, String)>,
}

impl Skew {
    pub fn warns(&self) -> bool {
        self.apart.is_some()
    }

    /// The warning (None when within the policy).
    pub fn warning(&self) -> Option<String> {
        let ((lo_addr, lo), (hi_addr, hi)) = self.apart.as_ref()?;
        Some(format!(
            "apiserver version skew: {lo_addr} runs {lo} and {hi_addr} runs {hi}, more than one minor version apart; Kubernetes' version-skew policy allows one minor between the apiservers of a cluster: finish (or roll back) the upgrade"
        ))
    }

    /// The note for malformed versions (None when there are none).
    pub fn note(&self) -> Option<String> {
        if self.ignored.is_empty() {
            return None;
        }
        let list: Vec<String> = self
            .ignored
            .iter()
            .map(|(a, v)| format!("{a} {v:?}"))
            .collect();
        Some(format!(
            "not a Kubernetes version (vMAJOR.MINOR.PATCH), left out of the skew check: {}",
            list.join(", ")
        ))
    }
}

/// The skew decision over every apiserver's gitVersion.
pub fn skew(versions: &BTreeMap<SocketAddr, String>) -> Skew {
    let mut parsed = vec![];
    let mut ignored = vec![];
    for (addr, v) in versions {
        match parse(v) {
            Some(m) => parsed.push((m, *addr, v)),
            None => ignored.push((*addr, v.clone())),
        }
    }
    let lo = parsed.iter().min_by_key(|(m, a, _)| (*m, *a));
    let hi = parsed
        .iter()
        .max_by_key(|(m, a, _)| (*m, std::cmp::Reverse(*a)));
    let apart = match (lo, hi) {
        (Some(lo), Some(hi)) if lo.0.major != hi.0.major || hi.0.minor - lo.0.minor > 1 => {
            Some(((lo.1, lo.2.to_string()), (hi.1, hi.2.to_string())))
        }
        _ => None,
    };
    Skew { apart, ignored }
}

/// `GET /version` over the probe's TLS: the `gitVersion` field.
pub async fn fetch(
    addr: SocketAddr,
    server_name: &ServerName<'static>,
    tls: &ProbeTls,
    timeout: Duration,
) -> Result<String, Failure> {
    let deadline = deadline_after(timeout);
    let mut stream = dial_tls(addr, server_name, tls, deadline)
        .await
        .map_err(|e| e.into_failure())?;
    let req = request("/version", &host_header(server_name, addr));
    let exchange = async {
        let io = |e: std::io::Error| io_failure(&e, server_name, &tls.ca);
        stream.write_all(req.as_bytes()).await.map_err(io)?;
        stream.flush().await.map_err(io)?;
        // `Connection: close`: the response ends with the connection.
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 4096];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(n) => n,
                // Go closes without close_notify now and then: what came is it.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(io(e)),
            };
            if n == 0 {
                return Ok(buf);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE {
                return Err(Failure::Protocol(format!(
                    "/version: more than {MAX_RESPONSE} bytes"
                )));
            }
        }
    };
    let raw = timeout_at(deadline, exchange)
        .await
        .map_err(|_elapsed| Failure::Timeout)??;
    git_version(&raw)
}

/// The gitVersion of a whole HTTP/1.1 response to `GET /version`.
pub fn git_version(raw: &[u8]) -> Result<String, Failure> {
    let protocol = |m: &str| Failure::Protocol(format!("/version: {m}"));
    let r = crate::http::response(raw).map_err(|e| match e {
        HttpError::StatusLine(_) => Failure::Protocol(e.to_string()),
        e => protocol(&e.to_string()),
    })?;
    if r.status != 200 {
        return Err(Failure::Status(r.status));
    }
    let body = r.body().map_err(|e| protocol(&e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| protocol(&format!("not JSON: {e}")))?;
    v.get("gitVersion")
        .and_then(|g| g.as_str())
        .map(str::to_owned)
        .ok_or_else(|| protocol("no gitVersion string"))
}

/// The versions' metric families: each backend's gitVersion, and whether
/// they are too far apart; set as each `GET /version` answer arrives.
#[derive(Clone, Debug, Default)]
pub struct VersionMetrics {
    pub info: prometheus_client::metrics::family::Family<
        BackendVersion,
        prometheus_client::metrics::gauge::Gauge,
    >,
    pub skew: prometheus_client::metrics::gauge::Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct BackendVersion {
    pub backend: String,
    pub git_version: String,
}

impl VersionMetrics {
    pub fn register(r: &mut crate::metrics::Scope) -> VersionMetrics {
        let m = VersionMetrics::default();
        r.register(
            "backend_version_info",
            "1 for the gitVersion the backend's apiserver reports at GET /version (read every 30 s)",
            m.info.clone(),
        );
        r.register(
            "apiserver_version_skew",
            "1 while the apiservers are more than one minor version apart (Kubernetes version-skew policy)",
            m.skew.clone(),
        );
        m
    }

    /// `backend` runs `version` now: its one series (an earlier version's
    /// goes).
    pub fn set(&self, backend: SocketAddr, old: Option<&str>, version: &str) {
        if let Some(old) = old.filter(|o| *o != version) {
            self.forget(backend, old);
        }
        self.info.get_or_create(&label(backend, version)).set(1);
    }

    /// `backend` left the configuration, or runs another version.
    pub fn forget(&self, backend: SocketAddr, version: &str) {
        self.info.remove(&label(backend, version));
    }
}

fn label(backend: SocketAddr, version: &str) -> BackendVersion {
    BackendVersion {
        backend: backend.to_string(),
        git_version: version.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn versions(list: &[(&str, &str)]) -> BTreeMap<SocketAddr, String> {
        list.iter()
            .map(|(a, v)| (a.parse().expect("addr"), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn versions_parse_with_their_suffixes_and_others_do_not() {
        let m = |major, minor| Some(Minor { major, minor });
        assert_eq!(parse("v1.31.2"), m(1, 31));
        assert_eq!(parse("v1.33.0-rc.1"), m(1, 33));
        assert_eq!(parse("v1.30.4+k3s1"), m(1, 30));
        assert_eq!(parse("v1.29.8-eks-a737599"), m(1, 29));
        for bad in [
            "", "1.31.2", "v1.31", "v1", "vx.31.0", "v1.x.0", "v1.31.", "v1.31.x", "latest",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn more_than_one_minor_apart_warns_one_does_not() {
        let s = skew(&versions(&[
            ("10.0.0.11:6443", "v1.31.2"),
            ("10.0.0.12:6443", "v1.33.0"),
            ("10.0.0.13:6443", "v1.32.1"),
        ]));
        assert!(s.warns());
        let w = s.warning().expect("warning");
        assert!(
            w.contains("10.0.0.11:6443 runs v1.31.2") && w.contains("10.0.0.12:6443 runs v1.33.0"),
            "{w}"
        );
        for ok in [
            &[("10.0.0.11:6443", "v1.31.2"), ("10.0.0.12:6443", "v1.32.0")][..],
            &[("10.0.0.11:6443", "v1.31.2"), ("10.0.0.12:6443", "v1.31.9")],
            &[("10.0.0.11:6443", "v1.31.2")],
            &[],
        ] {
            let s = skew(&versions(ok));
            assert!(!s.warns(), "{ok:?}: {s:?}");
            assert_eq!(s.warning(), None);
        }
        let major = skew(&versions(&[
            ("10.0.0.11:6443", "v1.31.2"),
            ("10.0.0.12:6443", "v2.0.0"),
        ]));
        assert!(major.warns(), "another major");
    }

    #[test]
    fn malformed_versions_are_left_out_with_a_note() {
        let s = skew(&versions(&[
            ("10.0.0.11:6443", "v1.31.2"),
            ("10.0.0.12:6443", "banana"),
            ("10.0.0.13:6443", "v1.32.0"),
        ]));
        assert!(!s.warns(), "banana is not 1.0 or 99.0: {s:?}");
        let note = s.note().expect("note");
        assert!(note.contains("10.0.0.12:6443 \"banana\""), "{note}");
        assert_eq!(
            skew(&versions(&[("10.0.0.11:6443", "v1.31.2")])).note(),
            None
        );
    }

    #[test]
    fn the_git_version_is_read_from_plain_and_chunked_responses() {
        let body = r#"{"major":"1","minor":"31","gitVersion":"v1.31.2"}"#;
        let plain = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(git_version(plain.as_bytes()), Ok("v1.31.2".into()));
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            10,
            &body[..10],
            body.len() - 10,
            &body[10..]
        );
        assert_eq!(git_version(chunked.as_bytes()), Ok("v1.31.2".into()));
        assert_eq!(
            git_version(b"HTTP/1.1 403 Forbidden\r\n\r\n{}"),
            Err(Failure::Status(403))
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\n\r\nnot json"[..],
            b"HTTP/1.1 200 OK\r\n\r\n{\"gitVersion\":31}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\n",
        ] {
            assert!(
                matches!(git_version(bad), Err(Failure::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
