//! etcd snapshots (issue 19): the last line of defence for a stacked control
//! plane, taken by the agent already on every control-plane node.
//!
//! A snapshot is the etcd v3 Maintenance `Snapshot` RPC, streamed over mutual
//! TLS from the local member into a hidden `.part` file in the snapshot
//! folder, fsynced, verified (the trailing SHA-256, then the revision and key
//! count read back from the bbolt database, `bolt.rs`), and only then renamed
//! to its `etcd-snapshot-<UTC>.db` name and the folder fsynced: a file with a
//! snapshot's name is always a complete, verified one. Old snapshots are
//! pruned only after that, by `plan::to_prune`, which never counts or deletes
//! a corrupt one.

pub mod bolt;
pub mod duty;
pub mod metrics;
pub mod plan;

use std::{
    ffi::CString,
    io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::Deserialize;
use thiserror::Error;
use tokio::io::AsyncWriteExt;

use crate::config::types::{format_span, opt_span, span};

pub use plan::{OnDisk, Schedule};

/// kubeadm's etcd PKI: the CA every member and client certificate chains
/// to, and the client certificate kubeadm issues for etcd's own health checks
/// (any certificate this CA signed is a full etcd client when etcd's RBAC is
/// off, as kubeadm leaves it).
pub const KUBEADM_ETCD_CA: &str = "/etc/kubernetes/pki/etcd/ca.crt";
pub const KUBEADM_CLIENT_CERT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
pub const KUBEADM_CLIENT_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";

/// The `snapshot:` config section. Absent: no snapshots (the default).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSettings {
    /// etcd client URLs; the local member first (a stacked member is next to
    /// vipd, and reading it costs the other members nothing).
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<String>,
    /// The etcd CA certificate (PEM).
    #[serde(default = "default_ca")]
    pub ca: PathBuf,
    /// A client certificate and key the etcd CA signed (PEM).
    #[serde(default = "default_cert")]
    pub cert: PathBuf,
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// Where snapshots are written.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// How often: one snapshot per period of this length (`24h`, `7d`, `30m`).
    #[serde(default = "default_interval", deserialize_with = "span")]
    pub interval: Duration,
    /// How far into each period the snapshot may be (the same offset on every
    /// node, different per period).
    #[serde(default = "default_jitter", deserialize_with = "span")]
    pub jitter: Duration,
    /// How many verified snapshots to keep (`null`: no count limit).
    #[serde(default = "default_keep")]
    pub keep: Option<usize>,
    /// Delete verified snapshots older than this (`null`: no age limit). The
    /// newest verified snapshot is kept whatever its age.
    #[serde(default, deserialize_with = "opt_span")]
    pub max_age: Option<Duration>,
    /// The longest one snapshot may take, connection to rename.
    #[serde(default = "default_timeout", deserialize_with = "span")]
    pub timeout: Duration,
    /// `announce` mode: the nodes that take turns, lowest address first
    /// (`duty::head_start`). Empty (the default): the backends and
    /// `state_sync.peers`, which in the stacked shape are the control-plane
    /// nodes; list the LBs' addresses where they are neither.
    #[serde(default)]
    pub nodes: Vec<std::net::IpAddr>,
}

fn default_endpoints() -> Vec<String> {
    vec!["https://127.0.0.1:2379".into()]
}
fn default_ca() -> PathBuf {
    KUBEADM_ETCD_CA.into()
}
fn default_cert() -> PathBuf {
    KUBEADM_CLIENT_CERT.into()
}
fn default_key() -> PathBuf {
    KUBEADM_CLIENT_KEY.into()
}
fn default_dir() -> PathBuf {
    "/var/lib/vipd/etcd-snapshots".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_jitter() -> Duration {
    Duration::from_secs(3600)
}
fn default_keep() -> Option<usize> {
    Some(7)
}
fn default_timeout() -> Duration {
    Duration::from_secs(600)
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            endpoints: default_endpoints(),
            ca: default_ca(),
            cert: default_cert(),
            key: default_key(),
            dir: default_dir(),
            interval: default_interval(),
            jitter: default_jitter(),
            keep: default_keep(),
            max_age: None,
            timeout: default_timeout(),
            nodes: Vec::new(),
        }
    }
}

/// The settings validated and in units.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotPlan {
    pub endpoints: Vec<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub dir: PathBuf,
    pub schedule: Schedule,
    pub keep: Option<usize>,
    pub max_age: Option<Duration>,
    pub timeout: Duration,
    /// `announce` mode's turn order; empty: derived from the config.
    pub nodes: Vec<std::net::IpAddr>,
}

impl SnapshotSettings {
    /// Validates and converts; errors name the field under `snapshot.` and
    /// the fix.
    pub fn plan(&self) -> Result<SnapshotPlan, (String, String)> {
        let field = |f: &str, m: String| (format!("snapshot.{f}"), m);
        if self.endpoints.is_empty() {
            return Err(field(
                "endpoints",
                "empty; list the local etcd member's client URL (https://127.0.0.1:2379)".into(),
            ));
        }
        if let Some(e) = self.endpoints.iter().find(|e| !e.starts_with("https://")) {
            return Err(field(
                "endpoints",
                format!("{e:?}: use an https:// URL; vipd talks to etcd only over mutual TLS"),
            ));
        }
        let (interval, jitter, max_age, timeout) =
            (self.interval, self.jitter, self.max_age, self.timeout);
        if interval < Duration::from_secs(10) {
            return Err(field(
                "interval",
                format!(
                    "{} is too often; use at least 10s (daily is usual)",
                    format_span(interval)
                ),
            ));
        }
        if jitter >= interval {
            return Err(field(
                "jitter",
                format!(
                    "{}: use less than the interval ({})",
                    format_span(jitter),
                    format_span(interval)
                ),
            ));
        }
        if self.keep == Some(0) {
            return Err(field(
                "keep",
                "0 would delete the snapshot just taken; use 1 or more, or null for no count limit"
                    .into(),
            ));
        }
        if self.keep.is_none() && max_age.is_none() {
            return Err(field(
                "keep",
                "with no max_age either, snapshots would pile up until the disk is full; set keep or max_age".into(),
            ));
        }
        if timeout < Duration::from_secs(1) {
            return Err(field(
                "timeout",
                format!("{}: use at least 1s", format_span(timeout)),
            ));
        }
        if !self.dir.is_absolute() {
            return Err(field(
                "dir",
                format!("{}: use an absolute path", self.dir.display()),
            ));
        }
        Ok(SnapshotPlan {
            endpoints: self.endpoints.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            dir: self.dir.clone(),
            schedule: Schedule { interval, jitter },
            keep: self.keep,
            max_age,
            timeout,
            nodes: self.nodes.clone(),
        })
    }
}

/// Why a snapshot was not taken. Each says what to do, and has a `reason`
/// that is the `reason` label of `vipd_etcd_snapshot_failures_total`.
#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error(
        "cannot read {path}: set snapshot.ca, snapshot.cert and snapshot.key to the etcd CA and a client certificate and key it signed (kubeadm: {KUBEADM_ETCD_CA}, {KUBEADM_CLIENT_CERT})"
    )]
    Credentials {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "TLS with etcd at {endpoints} failed ({detail}): check that snapshot.ca is the CA that signed etcd's server certificate and that snapshot.cert/key were signed by etcd's --trusted-ca-file"
    )]
    Tls { endpoints: String, detail: String },
    #[error(
        "etcd at {endpoints} is unreachable ({detail}): check that the member runs and listens there (its --listen-client-urls), and snapshot.endpoints"
    )]
    Unreachable { endpoints: String, detail: String },
    #[error("etcd refused the snapshot ({0}): see the etcd member's log")]
    Etcd(String),
    #[error(
        "{dir}: {free} bytes free, a snapshot needs {needed} (twice the previous one): free space there or point snapshot.dir at a larger filesystem"
    )]
    DiskSpace {
        dir: PathBuf,
        free: u64,
        needed: u64,
    },
    #[error(
        "{path}: the filesystem filled up while writing the snapshot; the partial file was removed and older snapshots are untouched: free space or point snapshot.dir at a larger filesystem"
    )]
    DiskFull { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the snapshot from etcd failed verification ({detail}); it was discarded and older snapshots are untouched: check the etcd member (`etcdctl endpoint status`) and its disk"
    )]
    Corrupt { detail: String },
    #[error(
        "the snapshot took longer than snapshot.timeout ({0:?}); the partial file was removed: raise snapshot.timeout if the database is large"
    )]
    Timeout(Duration),
}

impl SnapshotError {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SnapshotError::Credentials { .. } => "credentials",
            SnapshotError::Tls { .. } => "tls",
            SnapshotError::Unreachable { .. } => "unreachable",
            SnapshotError::Etcd(_) => "etcd",
            SnapshotError::DiskSpace { .. } => "disk_space",
            SnapshotError::DiskFull { .. } => "disk_full",
            SnapshotError::Io { .. } => "io",
            SnapshotError::Corrupt { .. } => "corrupt",
            SnapshotError::Timeout(_) => "timeout",
        }
    }

    /// Every reason, for metrics that start at zero.
    pub const REASONS: &'static [&'static str] = &[
        "credentials",
        "tls",
        "unreachable",
        "etcd",
        "disk_space",
        "disk_full",
        "io",
        "corrupt",
        "timeout",
    ];
}

/// A snapshot taken, verified and in place.
#[derive(Debug, Clone)]
pub struct Taken {
    pub path: PathBuf,
    pub size: u64,
    pub revision: u64,
    pub total_keys: u64,
    pub duration: Duration,
    /// Older snapshots deleted by retention.
    pub pruned: Vec<String>,
    /// Snapshots on disk whose hash does not hold: reported, left in place.
    pub corrupt: Vec<String>,
}

/// What `status` reports about the folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Newest {
    pub name: String,
    pub taken: u64,
    pub size: u64,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            SnapshotError::DiskFull { path: path.into() }
        } else {
            SnapshotError::Io {
                what,
                path: path.into(),
                source,
            }
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The snapshots in `dir` (names vipd wrote), newest first, with sizes.
pub fn list(dir: &Path) -> io::Result<Vec<Newest>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(taken) = plan::parse_name(&name) {
            out.push(Newest {
                name,
                taken,
                size: e.metadata()?.len(),
            });
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.taken));
    Ok(out)
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
fn free_space(dir: &Path) -> io::Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the right type;
    // statvfs writes it in full when it returns 0.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

fn fsync_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync folder", dir))
}

/// Verifies a whole snapshot file: its trailing SHA-256, then the bbolt
/// database it holds.
pub fn verify(bytes: &[u8]) -> Result<bolt::DbStatus, String> {
    if !plan::hash_holds(bytes) {
        return Err(format!(
            "its trailing SHA-256 does not match its {} bytes",
            bytes.len().saturating_sub(plan::HASH_LEN)
        ));
    }
    bolt::status(&bytes[..bytes.len() - plan::HASH_LEN]).map_err(|e| e.to_string())
}

/// Verifies a snapshot file on disk.
pub fn verify_file(path: &Path) -> Result<bolt::DbStatus, SnapshotError> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    verify(&bytes).map_err(|detail| SnapshotError::Corrupt {
        detail: format!("{}: {detail}", path.display()),
    })
}

/// An error with its whole source chain, for the operator.
fn chain(e: &etcd_client::Error) -> String {
    let mut detail = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    detail
}

/// Classifies an error before etcd sent any data by what the operator must
/// fix. tonic folds every connection problem into one transport error, so
/// the source chain's text tells them apart: a connection that could not be
/// made (refused, timed out, no route, a name that does not resolve) is an
/// unreachable member; a genuine gRPC status from etcd is etcd's; anything
/// else is the TLS session failing. With TLS 1.3 the client finishes its
/// side of the handshake before the server checks the client certificate,
/// so a refused certificate shows as whatever the first request meets: a
/// closed connection, a broken pipe, a cancelled or unknown-status request
/// (all seen against etcd 3.4 here), not always as a TLS alert.
fn classify(plan: &SnapshotPlan, e: etcd_client::Error) -> SnapshotError {
    let endpoints = plan.endpoints.join(",");
    let detail = chain(&e);
    let lower = detail.to_lowercase();
    let unreachable = [
        "connection refused",
        "tcp connect",
        "timed out",
        "timeout",
        "no route",
        "network is unreachable",
        "failed to lookup",
        "name or service not known",
    ]
    .iter()
    .any(|w| lower.contains(w));
    match e {
        etcd_client::Error::GRpcStatus(s)
            if !matches!(
                s.code(),
                tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
            ) =>
        {
            SnapshotError::Etcd(detail)
        }
        _ if unreachable => SnapshotError::Unreachable { endpoints, detail },
        _ => SnapshotError::Tls { endpoints, detail },
    }
}

async fn client(plan: &SnapshotPlan) -> Result<Client, SnapshotError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| SnapshotError::Credentials {
            path: p.clone(),
            source,
        })
    };
    let (ca, cert, key) = (read(&plan.ca)?, read(&plan.cert)?, read(&plan.key)?);
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(5));
    Client::connect(&plan.endpoints, Some(opts))
        .await
        .map_err(|e| classify(plan, e))
}

/// Deletes `.part` files a killed run left behind: only one snapshot is
/// written into a folder at a time (one vipd per node), so any that exists
/// before a snapshot starts is dead.
fn remove_stale_parts(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(plan::PART_SUFFIX) && name.contains(plan::PREFIX)
        {
            tracing::info!(file = %name, "removing the partial snapshot a stopped run left");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Takes one snapshot named for `stamp` (unix seconds: the period start for
/// scheduled snapshots, now for one-off ones), verifies it, puts it in place
/// and prunes. On any error the partial file is removed and the folder is as
/// it was.
pub async fn take(plan: &SnapshotPlan, stamp: u64) -> Result<Taken, SnapshotError> {
    let started = Instant::now();
    let dir = &plan.dir;
    std::fs::create_dir_all(dir).map_err(io_err("create folder", dir))?;
    remove_stale_parts(dir);
    let existing = list(dir).map_err(io_err("list", dir))?;
    let free = free_space(dir).map_err(io_err("statvfs", dir))?;
    if let Err(needed) = plan::space_check(free, existing.first().map(|s| s.size)) {
        return Err(SnapshotError::DiskSpace {
            dir: dir.clone(),
            free,
            needed,
        });
    }
    let name = plan::file_name(stamp);
    let part = dir.join(format!(".{name}{}", plan::PART_SUFFIX));
    let fut = stream_to(plan, &part);
    let streamed = match tokio::time::timeout(plan.timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(SnapshotError::Timeout(plan.timeout)),
    };
    let status = streamed.and_then(|()| verify_file(&part));
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    let path = dir.join(&name);
    if let Err(e) = std::fs::rename(&part, &path).map_err(io_err("rename", &part)) {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    fsync_dir(dir)?;
    let size = std::fs::metadata(&path)
        .map_err(io_err("stat", &path))?
        .len();
    let (pruned, corrupt) = prune(plan, &name)?;
    Ok(Taken {
        path,
        size,
        revision: status.revision,
        total_keys: status.total_keys,
        duration: started.elapsed(),
        pruned,
        corrupt,
    })
}

async fn stream_to(plan: &SnapshotPlan, part: &Path) -> Result<(), SnapshotError> {
    let mut client = client(plan).await?;
    let mut stream = client.snapshot().await.map_err(|e| classify(plan, e))?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(part)
        .await
        .map_err(io_err("create", part))?;
    let mut complete = false;
    let mut received = 0u64;
    let broke = |e: etcd_client::Error, received: u64| {
        if received == 0 {
            classify(plan, e)
        } else {
            SnapshotError::Etcd(format!(
                "the stream broke after {received} bytes: {}",
                chain(&e)
            ))
        }
    };
    while let Some(msg) = stream.message().await.map_err(|e| broke(e, received))? {
        received += msg.blob().len() as u64;
        file.write_all(msg.blob())
            .await
            .map_err(io_err("write", part))?;
        // etcd counts down the bytes still to come; the last message
        // (the SHA-256) has 0. A stream that ends before is cut short.
        complete = msg.remaining_bytes() == 0;
    }
    if !complete {
        return Err(SnapshotError::Etcd(
            "the snapshot stream ended before etcd sent all of it".into(),
        ));
    }
    file.flush().await.map_err(io_err("write", part))?;
    file.sync_all().await.map_err(io_err("fsync", part))?;
    Ok(())
}

/// Retention after `new` was verified: re-checks every other snapshot's
/// hash (a corrupt one must not count as kept), deletes what `to_prune`
/// says, fsyncs the folder. Returns (pruned, corrupt).
fn prune(plan: &SnapshotPlan, new: &str) -> Result<(Vec<String>, Vec<String>), SnapshotError> {
    let dir = &plan.dir;
    let mut disk = Vec::new();
    let mut corrupt = Vec::new();
    for s in list(dir).map_err(io_err("list", dir))? {
        let intact = s.name == new || verify_file(&dir.join(&s.name)).is_ok();
        if !intact {
            tracing::error!(
                file = %dir.join(&s.name).display(),
                "snapshot on disk is corrupt (its hash or database does not verify): kept out of retention and left in place; move it away once looked at"
            );
            corrupt.push(s.name.clone());
        }
        disk.push(OnDisk {
            name: s.name,
            taken: s.taken,
            intact,
        });
    }
    let pruned = plan::to_prune(&disk, plan.keep, plan.max_age, unix_now());
    for name in &pruned {
        let p = dir.join(name);
        std::fs::remove_file(&p).map_err(io_err("delete", &p))?;
    }
    if !pruned.is_empty() {
        fsync_dir(dir)?;
    }
    Ok((pruned, corrupt))
}

/// The etcd key that records who took period `n`'s snapshot (see `duty`).
pub fn period_key(n: u64) -> String {
    format!("vipd/etcd-snapshot/period-{n}")
}

/// A scheduled attempt's result.
#[derive(Debug)]
pub enum Scheduled {
    Taken(Taken),
    /// The period is claimed or done by another node: what its key says.
    Elsewhere(String),
}

/// Period `period`'s snapshot, if this node wins the period's claim in etcd:
/// an atomic create of [`period_key`] under a lease as long as a snapshot
/// may take (a taker that dies lets it expire), replaced once verified by a
/// record that lives two intervals (so the keys do not pile up).
pub async fn take_scheduled(
    plan: &SnapshotPlan,
    period: u64,
    node: &str,
) -> Result<Scheduled, SnapshotError> {
    use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
    let mut c = client(plan).await?;
    let err = |e| classify(plan, e);
    let ttl = i64::try_from(plan.timeout.as_secs() + 60).unwrap_or(i64::MAX);
    let claim = c.lease_grant(ttl, None).await.map_err(err)?.id();
    let key = period_key(period);
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            format!("taking by {node}"),
            Some(PutOptions::new().with_lease(claim)),
        )])
        .or_else([TxnOp::get(key.clone(), None)]);
    let resp = c.txn(txn).await.map_err(err)?;
    if !resp.succeeded() {
        let _ = c.lease_revoke(claim).await;
        let holder = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            })
            .unwrap_or_default();
        return Ok(Scheduled::Elsewhere(holder));
    }
    match take(plan, plan.schedule.period_start(period)).await {
        Ok(t) => {
            let keep = i64::try_from(plan.schedule.interval.as_secs() * 2).unwrap_or(i64::MAX);
            // Best effort: if recording fails, the claim's lease still
            // covers this period for as long as a retry could come.
            if let Ok(l) = c.lease_grant(keep, None).await {
                let record = format!("taken by {node}, revision {}", t.revision);
                let _ = c
                    .put(key, record, Some(PutOptions::new().with_lease(l.id())))
                    .await;
                let _ = c.lease_revoke(claim).await;
            }
            Ok(Scheduled::Taken(t))
        }
        Err(e) => {
            // Free the period for the next attempt, here or on a new master.
            let _ = c.lease_revoke(claim).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kubeadm_and_daily() {
        let p = SnapshotSettings::default()
            .plan()
            .expect("defaults are valid");
        assert_eq!(p.endpoints, ["https://127.0.0.1:2379"]);
        assert_eq!(p.ca, Path::new(KUBEADM_ETCD_CA));
        assert_eq!(p.schedule.interval, Duration::from_secs(86_400));
        assert_eq!(p.keep, Some(7));
    }

    #[test]
    fn bad_settings_name_the_field_and_the_fix() {
        let bad = |f: fn(&mut SnapshotSettings)| {
            let mut s = SnapshotSettings::default();
            f(&mut s);
            s.plan().expect_err("must be refused")
        };
        assert_eq!(
            bad(|s| s.endpoints = vec!["http://x:2379".into()]).0,
            "snapshot.endpoints"
        );
        assert_eq!(
            bad(|s| s.interval = Duration::from_secs(5)).0,
            "snapshot.interval"
        );
        assert_eq!(
            bad(|s| s.jitter = Duration::from_secs(2 * 86_400)).0,
            "snapshot.jitter"
        );
        assert_eq!(bad(|s| s.keep = Some(0)).0, "snapshot.keep");
        assert_eq!(bad(|s| s.keep = None).0, "snapshot.keep");
        assert_eq!(bad(|s| s.dir = "snaps".into()).0, "snapshot.dir");
        // Spans are read once, with the file: a bad one never reaches the
        // plan, and the error names the field.
        let read = |yaml: &str| serde_yaml_ng::from_str::<SnapshotSettings>(yaml);
        let e = read("max_age: forever")
            .expect_err("not a span")
            .to_string();
        assert!(e.contains("\"forever\"") && e.contains("whole days"), "{e}");
        let s = read("interval: 7d\nmax_age: 30d\nkeep: null").expect("spans in days");
        assert_eq!(s.interval, Duration::from_secs(7 * 86_400));
        let p = s.plan().expect("weekly with a month's age is valid");
        assert_eq!(p.max_age, Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn reasons_are_listed_once() {
        let mut r = SnapshotError::REASONS.to_vec();
        r.sort_unstable();
        r.dedup();
        assert_eq!(r.len(), SnapshotError::REASONS.len());
    }
}
