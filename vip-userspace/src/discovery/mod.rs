//! Backends discovered from the cluster, without depending on it (issue 16
//! item 4): the services with `backends_from: kubernetes` take the
//! apiservers the `kubernetes` Service's EndpointSlices list.
//!
//! - `slice`: the slices as typed data, and slices -> each family's set;
//! - `admit`: listed -> vetted -> backend, and removals (pure);
//! - `client`: list and watch over HTTPS with the cluster's credentials;
//! - `cache`: the last known set on disk, written atomically;
//! - `metrics`: `vipd_discovery_*`;
//! - this file: the watch task, the vetting tasks, and [`Discovery`], the
//!   agent's part (its state and the merge into the configuration).
//!
//! Never waits on the apiserver: the agent starts from the cache (else the
//! file's `backends:`), elects and forwards at once; the watch runs beside
//! it, and while it fails the set stays as it was.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use crate::{
    certcheck::{self, CertCheck, SanName},
    config::{Backend, BackendsFrom, Config},
    probe::{self, Outcome, ProbeKind, ProbeSpec},
};

pub mod admit;
pub mod cache;
pub mod client;
pub mod metrics;
pub mod slice;

use admit::Admission;
use client::{Client, ClientError};
use slice::{Family, Found, Slices};

/// What the watch task reports.
#[derive(Debug)]
pub enum WatchReport {
    /// The slices now (after a list, or a watch event that changed them).
    Listed {
        found: BTreeMap<Family, Found>,
        /// Slices ignored (malformed, or of a family no service reads),
        /// with why.
        ignored: Vec<String>,
    },
    /// A list or watch failed; the set stays. Retried after a pause.
    Failed { error: String, label: &'static str },
}

/// Lists, then watches from the list's resourceVersion; lists again when
/// the watch's version is gone, waits (1 s doubling to 30 s) after a failure.
pub fn spawn_watch(
    client: std::sync::Arc<Client>,
    families: BTreeSet<Family>,
    default_port: u16,
    tx: mpsc::UnboundedSender<WatchReport>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pause = Duration::from_secs(1);
        let mut slices = Slices::default();
        loop {
            let res: Result<std::convert::Infallible, ClientError> = async {
                let list = client.list().await?;
                let errors = slices.replace(&list, default_port);
                let mut ignored: Vec<String> = errors.iter().map(ToString::to_string).collect();
                ignored.extend(unread(&slices, &families));
                let _ = tx.send(WatchReport::Listed {
                    found: found(&slices, &families),
                    ignored,
                });
                pause = Duration::from_secs(1);
                loop {
                    let rv = slices.resource_version.clone();
                    client
                        .watch(&rv, |ev| match slices.event(&ev, default_port) {
                            Ok(false) => {}
                            Ok(true) => {
                                let _ = tx.send(WatchReport::Listed {
                                    found: found(&slices, &families),
                                    ignored: unread(&slices, &families),
                                });
                            }
                            Err(e) => {
                                let _ = tx.send(WatchReport::Listed {
                                    found: found(&slices, &families),
                                    ignored: vec![e.to_string()],
                                });
                            }
                        })
                        .await?;
                }
            }
            .await;
            let Err(e) = res;
            if !matches!(e, ClientError::Gone) {
                let _ = tx.send(WatchReport::Failed {
                    error: e.to_string(),
                    label: e.label(),
                });
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    })
}

fn found(slices: &Slices, families: &BTreeSet<Family>) -> BTreeMap<Family, Found> {
    families.iter().map(|f| (*f, slices.found(*f))).collect()
}

/// Families the slices hold that no service reads (a dual-stack cluster
/// with only an IPv4 VIP): said once, as the other family's slices are
/// ignored.
fn unread(slices: &Slices, families: &BTreeSet<Family>) -> Vec<String> {
    slices
        .families()
        .difference(families)
        .map(|f| {
            format!(
                "{} slices ignored: no backends_from service has a VIP of that family",
                f.label()
            )
        })
        .collect()
}

/// A candidate's vetting: its probe, as the service probes it, must pass
/// `rise` times in a row, then its certificate must be valid for every
/// VIP it would serve (the certificate gate's check, required here whatever
/// `cert_gate.on_missing_san` says: a new apiserver is never brought in
/// to fail its clients' TLS). A TCP-probed service has no TLS to check.
#[derive(Clone)]
pub struct Vet {
    pub spec: Arc<ProbeSpec>,
    pub interval: Duration,
    pub rise: u32,
    pub want: Vec<SanName>,
}

/// How a vetting round went, for logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VetReport {
    Passed(SocketAddr),
    /// Not (yet): why, said once per reason.
    Waiting(SocketAddr, String),
}

/// Runs until the candidate passes (reported, then ends) or is aborted.
pub fn spawn_vet(addr: SocketAddr, v: Vet, tx: mpsc::UnboundedSender<VetReport>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut passes = 0;
        let mut said = String::new();
        let mut tick = tokio::time::interval(v.interval);
        loop {
            tick.tick().await;
            let why = match probe::probe(addr, &v.spec).await {
                Outcome::Up => {
                    passes += 1;
                    if passes < v.rise {
                        continue;
                    }
                    match cert_ok(addr, &v).await {
                        Ok(()) => {
                            let _ = tx.send(VetReport::Passed(addr));
                            return;
                        }
                        Err(why) => {
                            passes = 0;
                            why
                        }
                    }
                }
                other => {
                    passes = 0;
                    format!("its probe does not pass ({other})")
                }
            };
            if why != said {
                said = why.clone();
                let _ = tx.send(VetReport::Waiting(addr, why));
            }
        }
    })
}

async fn cert_ok(addr: SocketAddr, v: &Vet) -> Result<(), String> {
    let ProbeKind::Https {
        server_name, tls, ..
    } = &v.spec.kind
    else {
        return Ok(());
    };
    match certcheck::inspect(addr, server_name, tls, &v.want, v.spec.timeout).await {
        CertCheck::Checked(r) if r.missing.is_empty() => Ok(()),
        CertCheck::Checked(r) => Err(format!(
            "its certificate lacks {}: {}",
            join_all(&r.missing),
            certcheck::fix_hint(&r.missing)
        )),
        CertCheck::Untrusted(why) | CertCheck::Unreachable(why) => {
            Err(format!("its certificate could not be checked: {why}"))
        }
    }
}

/// Where the backend list of the `backends_from` services comes from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The file's `backends:` (nothing known yet).
    File,
    /// The cache written by an earlier run (no answer from the apiserver
    /// since this start).
    Cache,
    /// The apiserver's slices, since this start.
    Kubernetes,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Cache => "cache",
            Source::Kubernetes => "kubernetes",
        }
    }
}

/// The agent's part: what is admitted, what is being vetted, and what
/// status shows.
pub struct Discovery {
    pub admission: Admission,
    pub source: Source,
    cache_path: PathBuf,
    pub last_sync: Option<SystemTime>,
    pub last_error: Option<String>,
    /// Why each candidate is not admitted yet.
    pub waiting: BTreeMap<SocketAddr, String>,
    vets: BTreeMap<SocketAddr, JoinHandle<()>>,
    /// Warnings already given about ignored slices (each said once).
    ignored_said: BTreeSet<String>,
    /// Since when the watch has been failing (for the log's "since").
    failing_since: Option<Instant>,
    /// The cache writer's turn: the number of the newest set to write, and
    /// a lock that writes one at a time (see [`Discovery::save`]).
    saves: Arc<(std::sync::atomic::AtomicU64, std::sync::Mutex<()>)>,
}

/// What a report from the watch means for the agent.
#[derive(Debug, Default)]
pub struct Changed {
    /// The backend set changed: merge and apply.
    pub apply: bool,
    /// Start vetting these.
    pub vet: Vec<SocketAddr>,
}

impl Discovery {
    /// Starts from the cache, if there is one, else from `seed` (the file's
    /// backends of the `backends_from` services, in service already: the
    /// first list keeps those it lists, without vetting them again, and
    /// drops the others).
    pub fn new(cache_path: PathBuf, seed: Vec<SocketAddr>) -> Discovery {
        let (admission, source) = match cache::read(&cache_path) {
            Ok(Some(c)) => {
                info!(cache = %cache_path.display(), backends = %join_all(&c.backends), "discovery: starting from the last known apiservers");
                (Admission::with(c.backends), Source::Cache)
            }
            Ok(None) => {
                info!(cache = %cache_path.display(), "discovery: no cache yet; the file's backends serve until the apiserver lists its apiservers");
                (Admission::with(seed), Source::File)
            }
            Err(e) => {
                warn!("discovery: {e}");
                (Admission::with(seed), Source::File)
            }
        };
        Discovery {
            admission,
            source,
            cache_path,
            last_sync: None,
            last_error: None,
            waiting: BTreeMap::new(),
            vets: BTreeMap::new(),
            ignored_said: BTreeSet::new(),
            failing_since: None,
            saves: Arc::default(),
        }
    }

    /// A report of the watch.
    pub fn watched(&mut self, r: WatchReport) -> Changed {
        let mut out = Changed::default();
        match r {
            WatchReport::Failed { error, .. } => {
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                if self.last_error.as_deref() != Some(&error) {
                    warn!(error = %error, failing_for_s = since.elapsed().as_secs(), "discovery: the apiserver's EndpointSlices cannot be read; forwarding continues to the last known apiservers");
                }
                self.last_error = Some(error);
            }
            WatchReport::Listed { found, ignored } => {
                if self.failing_since.take().is_some() {
                    info!("discovery: the apiserver answers again");
                }
                self.last_error = None;
                self.last_sync = Some(SystemTime::now());
                for i in ignored {
                    if self.ignored_said.insert(i.clone()) {
                        warn!(
                            "discovery: {i}; the slice is ignored, the backend set is not emptied by it"
                        );
                    }
                }
                for (family, f) in &found {
                    if *f == Found::Nothing {
                        warn!(
                            family = family.label(),
                            "discovery: the slices list no apiserver of this family; keeping the last known set"
                        );
                        continue;
                    }
                    let step = self.admission.discovered(*family, f);
                    for a in &step.removed {
                        info!(backend = %a, "discovery: no longer listed: removed, its flows drained (reset)");
                    }
                    for a in &step.unvet {
                        self.waiting.remove(a);
                        if let Some(t) = self.vets.remove(a) {
                            t.abort();
                        }
                    }
                    out.apply |= !step.removed.is_empty();
                    out.vet.extend(step.vet);
                }
                if self.source != Source::Kubernetes {
                    self.source = Source::Kubernetes;
                    // Confirmed as is: the cache's time moves on.
                    out.apply = true;
                }
            }
        }
        out
    }

    /// Keeps a vetting task (aborted when the address goes).
    pub fn vetting(&mut self, addr: SocketAddr, task: JoinHandle<()>) {
        self.waiting
            .insert(addr, "waiting for its first probes".into());
        if let Some(old) = self.vets.insert(addr, task) {
            old.abort();
        }
    }

    /// A vetting report; true if the set changed.
    pub fn vetted(&mut self, r: VetReport) -> bool {
        match r {
            VetReport::Waiting(addr, why) => {
                if self.admission.candidates().contains(&addr) {
                    warn!(backend = %addr, "discovery: listed, not admitted yet: {why}");
                    self.waiting.insert(addr, why);
                }
                false
            }
            VetReport::Passed(addr) => {
                self.vets.remove(&addr);
                self.waiting.remove(&addr);
                let added = self.admission.vetted(addr);
                if added {
                    info!(backend = %addr, "discovery: a new apiserver passed its probes and carries the VIP: added, receives new flows");
                }
                added
            }
        }
    }

    /// Writes the cache (after the set changed or was confirmed), off the
    /// agent's thread: the write fsyncs the file and its folder, which on
    /// a busy disk takes as long as the disk's queue, and the agent's
    /// runtime is one thread (its probes and their timeouts, the API, state
    /// sync would wait). Writes run one at a time, and one whose set is no
    /// longer the newest is skipped, so the file ends with the newest set.
    pub fn save(&self) {
        if self.source != Source::Kubernetes {
            return;
        }
        let c = cache::Cached {
            backends: self.admission.all(),
            synced_unix: self
                .last_sync
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs()),
        };
        if c.backends.is_empty() {
            return;
        }
        use std::sync::atomic::Ordering::SeqCst;
        let turn = self.saves.0.fetch_add(1, SeqCst) + 1;
        let (saves, path) = (self.saves.clone(), self.cache_path.clone());
        tokio::task::spawn_blocking(move || {
            let _one = saves
                .1
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if saves.0.load(SeqCst) != turn {
                return;
            }
            match cache::write(&path, &c) {
                Ok(()) => debug!(cache = %path.display(), "discovery: cache written"),
                Err(e) => warn!("discovery: {e}"),
            }
        });
    }

    pub fn cache_path(&self) -> &std::path::Path {
        &self.cache_path
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        for t in self.vets.values() {
            t.abort();
        }
    }
}

/// The services with `backends_from: kubernetes` as `known` says, the
/// file's entries kept for their overrides (`mac`, `encap`, `local`) where
/// the address is the same; a family with nothing known keeps the file's
/// list. With `candidates`, the addresses being vetted are included (their
/// probe settings are built from that).
pub fn merge(file: &Config, admission: &Admission, candidates: bool) -> Config {
    let mut c = file.clone();
    for s in c
        .services
        .iter_mut()
        .filter(|s| s.backends_from == Some(BackendsFrom::Kubernetes))
    {
        let family = Family::of(&s.vip);
        let mut set: BTreeSet<SocketAddr> = admission.backends(family).cloned().unwrap_or_default();
        if candidates {
            set.extend(
                admission
                    .candidates()
                    .iter()
                    .filter(|a| Family::of(&a.ip()) == family),
            );
        }
        if set.is_empty() {
            continue;
        }
        let seed = std::mem::take(&mut s.backends);
        s.backends = set
            .iter()
            .map(|a| {
                let mut b = seed
                    .iter()
                    .find(|b| b.address == a.ip())
                    .cloned()
                    .unwrap_or(Backend {
                        address: a.ip(),
                        port: None,
                        mac: None,
                        local: false,
                        encap: None,
                    });
                b.port = (a.port() != s.port).then_some(a.port());
                b
            })
            .collect();
    }
    c
}

/// The file's backends of the `backends_from` services.
pub fn seed(cfg: &Config) -> Vec<SocketAddr> {
    cfg.services
        .iter()
        .filter(|s| s.backends_from.is_some())
        .flat_map(|s| s.backends.iter().map(|b| s.backend_addr(b)))
        .collect()
}

/// The families and the default port of the `backends_from` services.
pub fn families(cfg: &Config) -> (BTreeSet<Family>, u16) {
    let mut fams = BTreeSet::new();
    let mut port = None;
    for s in cfg.services.iter().filter(|s| s.backends_from.is_some()) {
        fams.insert(Family::of(&s.vip));
        port.get_or_insert(s.port);
    }
    (fams, port.unwrap_or(6443))
}

/// The names a candidate's certificate must carry: the VIP of every
/// `backends_from` service of its family.
pub fn wanted_names(cfg: &Config, addr: SocketAddr) -> Vec<SanName> {
    let mut v: Vec<SanName> = cfg
        .services
        .iter()
        .filter(|s| s.backends_from.is_some() && Family::of(&s.vip) == Family::of(&addr.ip()))
        .map(|s| SanName::Ip(s.vip))
        .collect();
    v.dedup();
    v.extend(cfg.cert_gate.names.iter().map(|n| SanName::Dns(n.clone())));
    v
}

#[cfg(test)]
mod tests;

/// "a, b, c".
pub fn join_all<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
