//! The probes: one task per backend on its own jittered rhythm, the probe
//! settings built from the configuration (and checked by `vipd
//! check-config`), and the certificate gate's dialling rounds. Results go
//! to the agent loop over channels; the controller decides what they mean.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    certcheck::{self, CertCheck},
    config::{Config, ProbeSettings},
    probe::{self, Outcome, ProbeKind, ProbeSpec, ProbeTls},
};

/// One probe's settings ready to run.
#[derive(Clone)]
pub struct ProbeJob {
    pub settings: ProbeSettings,
    pub spec: Arc<ProbeSpec>,
    pub interval: Duration,
    pub jitter: Duration,
}

/// Builds every backend's probe: loads the CA and client certificates
/// (errors name the field and the file). Touches nothing but the files it
/// reads, so `vipd check-config` runs it too.
pub fn probe_jobs(cfg: &Config) -> Result<BTreeMap<SocketAddr, ProbeJob>> {
    let mut tls: HashMap<(PathBuf, Option<PathBuf>, Option<PathBuf>), Arc<ProbeTls>> =
        HashMap::new();
    let mut jobs = BTreeMap::new();
    for (i, s) in cfg.services.iter().enumerate() {
        let p = &s.probe;
        // Nothing to probe, nothing to read: a service without backends
        // yet must not need the CA file.
        if s.backends.is_empty() {
            continue;
        }
        let kind = match p.tls_name().map(|n| n.server_name().clone()) {
            None => ProbeKind::Tcp,
            Some(server_name) => {
                let key = (p.ca.clone(), p.client_cert.clone(), p.client_key.clone());
                let t = match tls.get(&key) {
                    Some(t) => t.clone(),
                    None => {
                        let client = p.client_cert.as_deref().zip(p.client_key.as_deref());
                        let t = Arc::new(
                            ProbeTls::load(&p.ca, client)
                                .with_context(|| format!("services[{i}].probe"))?,
                        );
                        tls.insert(key, t.clone());
                        t
                    }
                };
                ProbeKind::Https {
                    path: p.path.clone(),
                    server_name,
                    tls: t,
                }
            }
        };
        let spec = Arc::new(ProbeSpec {
            kind,
            timeout: p.timeout,
        });
        for b in &s.backends {
            jobs.entry(s.backend_addr(b)).or_insert_with(|| ProbeJob {
                settings: p.clone(),
                spec: spec.clone(),
                interval: p.interval,
                jitter: p.jitter,
            });
        }
    }
    Ok(jobs)
}

/// Says, per service, how fast a failing apiserver is taken out, and warns
/// when that cannot beat its `--shutdown-delay-duration` (after which the
/// apiserver closes its listener and new connections are refused).
pub fn timing_report(cfg: &Config) -> Vec<(bool, String)> {
    let mut out = vec![];
    for (i, s) in cfg.services.iter().enumerate() {
        let plan = &s.probe;
        let fast = plan.worst_fast_fail();
        let hung = plan.worst_detection();
        let delay = plan.apiserver_shutdown_delay;
        let at = format!("services[{i}] ({}:{})", s.vip, s.port);
        if fast >= delay {
            out.push((
                false,
                format!(
                    "{at}: a draining apiserver is taken out up to {fast:?} after its /readyz fails, but probe.apiserver_shutdown_delay is {delay:?}: clients would reach a closed listener. Lower probe.interval or probe.fall, or raise the apiservers' --shutdown-delay-duration (kubeadm: apiServer.extraArgs) above {fast:?}"
                ),
            ));
        } else {
            out.push((
                true,
                format!(
                    "{at}: a draining apiserver is out within {fast:?} (a hung one within {hung:?}), inside its {delay:?} shutdown delay"
                ),
            ));
        }
    }
    out
}

/// A small xorshift for probe jitter: nothing here needs more than
/// spreading probes apart.
struct Jitter(u64);

impl Jitter {
    fn new(seed: &SocketAddr) -> Jitter {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        seed.hash(&mut h);
        SystemTime::now().hash(&mut h);
        Jitter(h.finish() | 1)
    }

    /// Uniform in [0, 2 * max], as an offset around `max`.
    fn around(&mut self, base: Duration, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = max.as_micros() as u64 * 2;
        let off = if span == 0 { 0 } else { self.0 % (span + 1) };
        (base + Duration::from_micros(off)).saturating_sub(max)
    }
}

pub struct ProbeEvent {
    pub addr: SocketAddr,
    pub started: Instant,
    pub finished: Instant,
    pub outcome: Outcome,
}

/// One backend's probe loop: its own task, so a hung apiserver holds up
/// only its own next probe (each attempt is bounded by the timeout anyway).
fn spawn_probe(addr: SocketAddr, job: ProbeJob, tx: mpsc::Sender<ProbeEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut jitter = Jitter::new(&addr);
        // Spread the first probes of all backends over the jitter.
        tokio::time::sleep(jitter.around(job.jitter, job.jitter)).await;
        loop {
            let started = Instant::now();
            let outcome = probe::probe(addr, &job.spec).await;
            let finished = Instant::now();
            let ev = ProbeEvent {
                addr,
                started,
                finished,
                outcome,
            };
            if tx.send(ev).await.is_err() {
                return;
            }
            let next = started + jitter.around(job.interval, job.jitter);
            tokio::time::sleep_until(next.into()).await;
        }
    })
}

/// Probe tasks following the configuration: a backend whose settings did
/// not change keeps its task (and its rhythm) across a reload.
pub struct Probes {
    tasks: BTreeMap<SocketAddr, (ProbeSettings, JoinHandle<()>)>,
    tx: mpsc::Sender<ProbeEvent>,
}

impl Probes {
    pub fn new(tx: mpsc::Sender<ProbeEvent>) -> Probes {
        Probes {
            tasks: BTreeMap::new(),
            tx,
        }
    }

    pub fn sync(&mut self, jobs: BTreeMap<SocketAddr, ProbeJob>) {
        self.tasks.retain(|addr, (settings, task)| {
            let keep = jobs.get(addr).is_some_and(|j| j.settings == *settings);
            if !keep {
                task.abort();
            }
            keep
        });
        for (addr, job) in jobs {
            if self.tasks.contains_key(&addr) {
                continue;
            }
            let settings = job.settings.clone();
            let task = spawn_probe(addr, job, self.tx.clone());
            self.tasks.insert(addr, (settings, task));
        }
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for (_, (_, t)) in std::mem::take(&mut self.tasks) {
            t.abort();
        }
    }
}

/// Dials the gate's targets (all of them, or one) in parallel; results
/// arrive on `tx`.
pub fn spawn_gate_round(
    targets: Vec<crate::controller::GateTarget>,
    jobs: &BTreeMap<SocketAddr, ProbeJob>,
    tx: &mpsc::Sender<(SocketAddr, CertCheck)>,
) {
    for t in targets {
        let Some(job) = jobs.get(&t.addr) else {
            continue;
        };
        let ProbeKind::Https {
            server_name, tls, ..
        } = &job.spec.kind
        else {
            continue;
        };
        let (server_name, tls, timeout) = (server_name.clone(), tls.clone(), job.spec.timeout);
        let tx = tx.clone();
        tokio::spawn(async move {
            let check = certcheck::inspect(t.addr, &server_name, &tls, &t.want, timeout).await;
            let _ = tx.send((t.addr, check)).await;
        });
    }
}

/// Reads every https backend's `GET /version` in parallel ([`crate::version`]);
/// results arrive on `tx`. TCP-probed backends have no TLS settings to
/// reach it with and are skipped.
pub fn spawn_version_round(
    jobs: &BTreeMap<SocketAddr, ProbeJob>,
    tx: &mpsc::Sender<(SocketAddr, Result<String, crate::probe::Failure>)>,
) {
    for (addr, job) in jobs {
        let ProbeKind::Https {
            server_name, tls, ..
        } = &job.spec.kind
        else {
            continue;
        };
        let (addr, server_name, tls, timeout) =
            (*addr, server_name.clone(), tls.clone(), job.spec.timeout);
        let tx = tx.clone();
        tokio::spawn(async move {
            let got = crate::version::fetch(addr, &server_name, &tls, timeout).await;
            let _ = tx.send((addr, got)).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn with_backends(backends: &str) -> Config {
        let text = format!(
            "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: nat
    probe: {{ ca: /nonexistent/vipd-test/ca.crt }}
    backends: {backends}
"
        );
        Config::parse(std::path::Path::new("t.yaml"), &text).expect("valid")
    }

    /// Issue 18: `backends: []` failed on the missing CA file although
    /// nothing would be probed.
    #[test]
    fn no_backend_no_ca_needed() {
        let jobs = match probe_jobs(&with_backends("[]")) {
            Ok(j) => j,
            Err(e) => panic!("nothing to probe, no CA to read: {e:#}"),
        };
        assert!(jobs.is_empty());
    }

    /// Issue 18: the missing CA's "No such file or directory" came twice
    /// (in the message and again as its source).
    #[test]
    fn missing_ca_says_the_os_error_once() {
        let Err(e) = probe_jobs(&with_backends("[{ address: 10.0.0.11 }]")) else {
            panic!("a missing CA file was accepted");
        };
        let text = format!("{e:#}");
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("/nonexistent/vipd-test/ca.crt") && text.contains("probe.ca"),
            "{text}"
        );
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let mut j = Jitter::new(&"10.0.0.1:6443".parse().expect("addr"));
        let base = Duration::from_secs(1);
        let max = Duration::from_millis(100);
        let mut lo = Duration::MAX;
        let mut hi = Duration::ZERO;
        for _ in 0..10_000 {
            let d = j.around(base, max);
            assert!(d >= base - max && d <= base + max, "{d:?}");
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert!(lo < Duration::from_millis(910) && hi > Duration::from_millis(1090));
        assert_eq!(j.around(base, Duration::ZERO), base);
    }

    #[test]
    fn default_timing_beats_a_five_second_shutdown_delay_and_warns_below() {
        let text = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: nat
    backends:
      - address: 10.0.0.11
";
        let cfg = Config::parse(Path::new("t.yaml"), text).expect("valid");
        let r = timing_report(&cfg);
        assert!(r[0].0, "{r:?}");
        assert!(r[0].1.contains("2.2s"), "{r:?}");
        let slow = text.replace(
            "    backends:",
            "    probe: { interval: 3s, timeout: 1s, fall: 3, jitter: 0s }\n    backends:",
        );
        let cfg = Config::parse(Path::new("t.yaml"), &slow).expect("valid");
        let r = timing_report(&cfg);
        assert!(!r[0].0, "9 s cannot beat 5 s: {r:?}");
        assert!(r[0].1.contains("--shutdown-delay-duration"), "{r:?}");
    }
}
