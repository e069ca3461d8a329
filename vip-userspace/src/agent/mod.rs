//! The running agent: loads and attaches the dataplane, hands the maps to
//! the [`Controller`], runs one probe task per backend and the certificate
//! gate, the VRRP routers, reloads, and the orderly stop. Every decision
//! lives in the controller, the VRRP machine or the health counter; this
//! file moves events between them.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info, warn};
use vip_common::{Globals, Reason};

use crate::{
    certcheck::{self, CertCheck},
    config::{Config, Mode, ProbeSettings, parse_duration},
    controller::Controller,
    dataplane::{
        Maps,
        flows::{FlowTables, Pokes, Refresh, Sweep, monotonic_ns},
        kernel::{KernelMaps, LoadOptions, PROG_VIP},
        programmer::{ApplyReport, Programmer},
    },
    health::Change,
    host,
    metrics::{self, Metrics},
    probe::{self, Outcome, ProbeKind, ProbeSpec, ProbeTls},
    vrrp::{
        Family,
        router::{self, RouterHandle, RouterSpec},
    },
};

mod observe;

use observe::Observed;

/// How often the flow tables are swept (expired entries deleted, live ones
/// counted for status and metrics).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What the flow-table thread reports.
enum FlowReport {
    Swept(Sweep),
    Poked(Pokes),
}

/// State sync's side of the sweep: the directory (which services are
/// synced), where to send the active flows, and the interface whose
/// addresses say which VIPs this node holds.
struct SweepSync {
    dir: tokio::sync::watch::Receiver<Arc<crate::sync::resolve::Directory>>,
    tx: mpsc::Sender<Vec<(vip_common::ConnKey, vip_common::ConnValue)>>,
    iface: String,
}

/// Sweeps the flow tables every [`SWEEP_EVERY`] (and hands state sync the
/// flows active since the last sweep), and pokes the clients of dead
/// backends whenever `poke` says a backend was just taken out; both in a
/// blocking thread. Ends when the receiver goes.
fn spawn_sweeper(
    mut tables: FlowTables,
    g: Globals,
    tx: mpsc::Sender<FlowReport>,
    mut poke: mpsc::Receiver<()>,
    sync: Option<SweepSync>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prev: Option<u64> = None;
        let mut n: u32 = 0;
        loop {
            let poking = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = poke.recv() => true,
            };
            if poking {
                let res = tokio::task::spawn_blocking(move || {
                    let r = tables.poke_dead(&g, monotonic_ns());
                    (tables, r)
                })
                .await;
                let Ok((t, r)) = res else { return };
                tables = t;
                match r {
                    Ok(p) => {
                        if tx.send(FlowReport::Poked(p)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(error = %format!("{e:#}"), "walking the flow tables failed"),
                }
                continue;
            }
            let refresh = match &sync {
                Some(s) => Refresh {
                    services: s.dir.borrow().synced_service_ids(),
                    vips: host::interface_addrs(&s.iface)
                        .map(|a| {
                            a.into_iter()
                                .map(|ip| crate::config::addr_bytes(ip).1)
                                .collect()
                        })
                        .unwrap_or_default(),
                    since: if n.is_multiple_of(crate::sync::FULL_REFRESH_EVERY) {
                        None
                    } else {
                        prev
                    },
                },
                None => Refresh::default(),
            };
            n = n.wrapping_add(1);
            let res = tokio::task::spawn_blocking(move || {
                let now = monotonic_ns();
                let r = tables.sweep_with(&g, now, &refresh);
                (tables, r, now)
            })
            .await;
            let Ok((t, r, now)) = res else { return };
            tables = t;
            prev = Some(now);
            match r {
                Ok(mut s) => {
                    let active = std::mem::take(&mut s.active);
                    if let Some(sy) = &sync
                        && !active.is_empty()
                        && sy.tx.try_send(active).is_err()
                    {
                        warn!("state sync is behind; this refresh is skipped");
                    }
                    if tx.send(FlowReport::Swept(s)).await.is_err() {
                        return;
                    }
                }
                Err(e) => warn!(error = %format!("{e:#}"), "walking the flow tables failed"),
            }
        }
    })
}

pub struct AgentOptions {
    pub config_path: PathBuf,
    /// Seconds between counter log lines (0: never).
    pub stats_interval: u64,
    /// Where program and maps are pinned; `None`: nothing is pinned.
    pub pin: Option<PathBuf>,
    /// Where the host changes (`host::Changed`) are recorded for `vipd
    /// detach`.
    pub sysctl_record: Option<PathBuf>,
}

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
        let plan = p
            .plan()
            .map_err(|(f, m)| anyhow::anyhow!("services[{i}].probe.{f}: {m}"))?;
        let kind = match plan.server_name.clone() {
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
            timeout: plan.timeout,
        });
        for b in &s.backends {
            jobs.entry(SocketAddr::new(b.address, b.port.unwrap_or(s.port)))
                .or_insert_with(|| ProbeJob {
                    settings: p.clone(),
                    spec: spec.clone(),
                    interval: plan.interval,
                    jitter: plan.jitter,
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
        let Ok(plan) = s.probe.plan() else { continue };
        let fast = plan.worst_fast_fail();
        let hung = plan.worst_detection();
        let delay = plan.shutdown_delay;
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

struct ProbeEvent {
    addr: SocketAddr,
    started: Instant,
    finished: Instant,
    outcome: Outcome,
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
struct Probes {
    tasks: BTreeMap<SocketAddr, (ProbeSettings, JoinHandle<()>)>,
    tx: mpsc::Sender<ProbeEvent>,
}

impl Probes {
    fn sync(&mut self, jobs: BTreeMap<SocketAddr, ProbeJob>) {
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
fn spawn_gate_round(
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

/// The VIPs of mode dsr services that have this node's own apiserver as a
/// backend (`local: true`): a stacked control plane, see
/// `host::prepare_stacked`.
fn stacked_vips(cfg: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = cfg
        .services
        .iter()
        .filter(|s| s.mode == Mode::Dsr && s.backends.iter().any(|b| b.local))
        .map(|s| s.vip)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn has_nat(cfg: &Config) -> bool {
    cfg.services.iter().any(|s| s.mode == Mode::Nat)
}

pub fn service_vips(cfg: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = cfg.services.iter().map(|s| s.vip).collect();
    v.sort();
    v.dedup();
    v
}

/// Keeps the program's `LOCAL_MAC` equal to the interface's MAC (read once
/// a second, so a MAC changed under a running agent is followed within a
/// second). Returns what the program now holds. A MAC that cannot be read
/// (not Ethernet) leaves the program's check off, which only costs the
/// protection against flooded frames (`pass_other_host`); the caller logs
/// that at start.
fn write_local_mac(maps: &mut KernelMaps, iface: &str, last: Option<[u8; 6]>) -> Option<[u8; 6]> {
    let mac = match crate::vrrp::net::mac_address(iface) {
        Ok(m) => m,
        Err(e) => {
            if last.is_some() {
                warn!(interface = %iface, error = %e, "reading the interface's MAC failed; keeping the last one");
            }
            return last;
        }
    };
    if Some(mac) == last {
        return last;
    }
    match maps.set_local_mac(mac) {
        Ok(()) => {
            if last.is_some() {
                info!(interface = %iface, mac = %crate::config::format_mac(&mac), "the interface's MAC changed; frames for the VIP must now be addressed to it");
            }
            Some(mac)
        }
        Err(e) => {
            warn!(interface = %iface, error = %e, "writing the interface's MAC to the program failed; retrying in a second");
            last
        }
    }
}

fn held_vips(cfg: &Config) -> Vec<IpAddr> {
    if cfg.hold_vips {
        service_vips(cfg)
    } else {
        vec![]
    }
}

/// One VRRP virtual router per address family with VIPs (RFC 9568: the
/// families are separate instances, here with the same VRID).
fn start_vrrp(cfg: &Config, holds: &HashMap<Family, Option<String>>) -> Result<Vec<RouterHandle>> {
    let Some(v) = &cfg.vrrp else {
        return Ok(vec![]);
    };
    let plan = v.plan().map_err(|(f, m)| anyhow::anyhow!("{f}: {m}"))?;
    let mut routers = vec![];
    for family in [Family::V4, Family::V6] {
        let vips: Vec<IpAddr> = service_vips(cfg)
            .into_iter()
            .filter(|a| Family::of(a) == family)
            .collect();
        if vips.is_empty() {
            continue;
        }
        let spec = RouterSpec {
            ifname: cfg.interface.clone(),
            family,
            plan: plan.clone(),
            vips,
        };
        match router::spawn(spec, holds.get(&family).cloned().flatten()) {
            Ok(r) => routers.push(r),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("starting {} VRRP", router::label(family))));
            }
        }
    }
    Ok(routers)
}

/// Priority tracking: the advertised priority drops by the configured weight
/// while this node cannot forward for the VIP, or cannot serve it from its
/// own apiserver.
pub fn effective_priority(cfg: &Config, xdp_attached: bool, local_ok: bool) -> u8 {
    let Some(v) = &cfg.vrrp else { return 0 };
    let mut p = v.priority;
    if !xdp_attached {
        p = p.saturating_sub(v.track.xdp_detached);
    }
    if !local_ok {
        p = p.saturating_sub(v.track.local_apiserver);
    }
    p.max(1)
}

/// Settings fixed at load time need a restart; a file changing them is
/// refused whole and the running configuration stays.
fn check_reloadable(old: &Config, new: &Config) -> Result<()> {
    let fixed = [
        ("interface", old.interface != new.interface),
        ("xdp_mode", old.xdp_mode != new.xdp_mode),
        (
            "conntrack_capacity",
            old.conntrack_capacity != new.conntrack_capacity,
        ),
        ("nat", old.nat != new.nat),
        ("state_sync", old.state_sync != new.state_sync),
        ("vrrp", old.vrrp != new.vrrp),
        ("hold_vips", old.hold_vips != new.hold_vips),
        ("metrics_listen", old.metrics_listen != new.metrics_listen),
        (
            "services[].vip: the VIPs VRRP elects a holder for",
            old.vrrp.is_some() && service_vips(old) != service_vips(new),
        ),
        (
            "services[].mode: the first nat service",
            !has_nat(old) && has_nat(new),
        ),
    ];
    if let Some((field, _)) = fixed.iter().find(|(_, changed)| *changed) {
        bail!("{field} changed; that takes a restart of vipd (systemctl restart vipd)");
    }
    Ok(())
}

/// The config file's identity for change detection.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn remove_vips(iface: &str, vips: &[IpAddr]) {
    for vip in vips {
        match host::set_vip(iface, *vip, false) {
            Ok(()) => info!(vip = %vip, "VIP removed"),
            Err(e) => {
                warn!(vip = %vip, error = %e, "removing the VIP failed; remove it by hand with `ip addr del`")
            }
        }
    }
}

fn log_probe_change(addr: SocketAddr, change: &Change, written: Instant) {
    match change {
        Change::Down {
            outcome,
            first_failure,
            fall_reached,
        } => {
            let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
            let probe_to_fall_ms = ms(fall_reached.saturating_duration_since(*first_failure));
            let fall_to_map_ms = ms(written.saturating_duration_since(*fall_reached));
            let total_ms = ms(written.saturating_duration_since(*first_failure));
            if matches!(outcome, Outcome::Fail(f) if f.unreachable()) {
                error!(
                    backend = %addr, reason = %outcome, probe_to_fall_ms, fall_to_map_ms, total_ms,
                    "backend down: no new flows; its open connections get an RST"
                );
            } else {
                error!(
                    backend = %addr, reason = %outcome, probe_to_fall_ms, fall_to_map_ms, total_ms,
                    "backend not ready: no new flows; its open connections stay until it closes them"
                );
            }
        }
        Change::Up => info!(backend = %addr, "backend up: receives new flows"),
        Change::AuthRefused(code) => error!(
            backend = %addr,
            status = code,
            "auth misconfigured: the apiserver refuses the probe ({code}); it stays in use. Allow anonymous /readyz (the default) or give probe.client_cert/client_key"
        ),
        Change::AuthAccepted => info!(backend = %addr, "the probe is accepted again"),
    }
}

/// Runs until SIGINT or SIGTERM.
pub async fn serve(opts: AgentOptions, cfg: Config) -> Result<()> {
    let mut jobs = probe_jobs(&cfg)?;
    let metrics = Arc::new(Metrics::new());
    metrics.beat();
    let metrics_task = match cfg.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("metrics_listen: {addr}: cannot listen; pick a free address, or set metrics_listen: null")
            })?;
            info!(listen = %addr, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(metrics::serve(l, metrics.clone())))
        }
        None => None,
    };
    for (ok, line) in timing_report(&cfg) {
        if ok {
            info!("{line}");
        } else {
            warn!("{line}");
        }
    }
    let maps = KernelMaps::load(&LoadOptions {
        conntrack_capacity: cfg.conntrack_capacity,
        pin_dir: opts.pin.clone(),
    })?;
    let mut prog = if maps.adopted() {
        info!(pins = %opts.pin.as_deref().unwrap_or(Path::new("")).display(), "adopting the pinned maps: established flows keep their backends");
        Programmer::adopt(maps).context("reading the adopted maps")?
    } else {
        Programmer::new(maps)
    };
    let globals = cfg.nat.globals().map_err(anyhow::Error::msg)?;
    let node_addrs = host::interface_addrs(&cfg.interface)?;
    // Read before anything is changed: a bad key file stops the start.
    let sync_keys = match cfg.state_sync.as_ref().and_then(|s| s.key_file.as_deref()) {
        Some(p) => Some(Arc::new(crate::sync::auth::KeySource::open(p)?)),
        None => None,
    };
    let sync_listen = match &cfg.state_sync {
        Some(s) => Some(
            s.listen_addr(&node_addrs, &service_vips(&cfg))
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    // Program the maps before attaching: the first packet the program sees
    // already finds every service.
    prog.maps_mut().set_globals(&globals)?;
    let mut local_mac = write_local_mac(prog.maps_mut(), &cfg.interface, None);
    if local_mac.is_none() {
        warn!(interface = %cfg.interface, "the interface's MAC could not be read or written: frames for a service are served whatever MAC they are addressed to");
    }
    let (mut ctl, report) =
        Controller::new(prog, cfg, node_addrs).context("programming the services")?;
    info!(
        services = report.services_published,
        backends = report.backend_writes,
        maglev_writes = report.maglev_writes,
        "services programmed"
    );
    // The settings fixed for the life of this process (a reload may not
    // change the interface, VRRP or hold_vips); the services are the
    // controller's, ctl.config().
    let cfg = ctl.config().clone();
    let directory = |ctl: &Controller<KernelMaps>| {
        let mut d = ctl.programmer().directory();
        d.globals = Some(globals);
        d
    };
    // State sync before attaching: the ring buffer keeps the first flows'
    // events until the sender reads them.
    let sync = match (&cfg.state_sync, sync_listen) {
        (Some(s), Some(ip)) => {
            let maps = ctl.programmer().maps();
            let h = crate::sync::start(
                SocketAddr::new(ip, s.port),
                s.peers.clone(),
                sync_keys,
                maps.sync_events()
                    .context("state_sync: opening the event ring")?,
                maps.sync_tables()
                    .context("state_sync: opening the flow tables")?,
                directory(&ctl),
            )?;
            Some(h)
        }
        _ => None,
    };
    // The programmer generation the directory state sync holds was built
    // from: republished when the maps change.
    let mut published = ctl.programmer().generation();
    let mut sysctls = if has_nat(&cfg) {
        let c = host::prepare_nat(&cfg.interface, globals.nat_port_lo, globals.nat_port_hi)?;
        info!(ports = %cfg.nat.ports, "mode nat: accept_local on, redirects off, source ports reserved");
        c
    } else {
        vec![]
    };
    let stacked = stacked_vips(&cfg);
    if !stacked.is_empty() {
        match host::prepare_stacked(&cfg.interface, &stacked) {
            Ok(c) => sysctls.extend(c),
            Err(e) => {
                host::restore_all(sysctls);
                return Err(
                    anyhow::Error::new(e).context("preparing this node for stacked mode dsr")
                );
            }
        }
        info!(vips = ?stacked, interface = %cfg.interface, "stacked mode dsr: the VIPs on lo, arp_ignore=1, arp_announce=2 (flows the master sends here are taken locally, and only the master answers ARP)");
    }
    if let Some(rec) = opts.sysctl_record.as_ref().filter(|_| !sysctls.is_empty()) {
        // The pinned program needs these after we stop; `vipd detach`
        // restores the originals recorded by the first run.
        if let Err(e) = host::record(&sysctls, rec) {
            host::restore_all(sysctls);
            return Err(e.into());
        }
    }
    let attached =
        match ctl
            .programmer_mut()
            .maps_mut()
            .attach(PROG_VIP, &cfg.interface, cfg.xdp_mode)
        {
            Ok(a) => a,
            Err(e) => {
                host::restore_all(sysctls);
                return Err(
                    anyhow::Error::new(e).context(format!("attaching to {}", cfg.interface))
                );
            }
        };
    info!(interface = %cfg.interface, mode = %attached, "XDP program attached");
    let mut obs = Observed::new(attached.to_string());
    obs.sync = sync.as_ref().map(|s| s.stats.clone());
    let (sweep_tx, mut sweep_rx) = mpsc::channel::<FlowReport>(2);
    // One pending poke is enough: a round pokes every flow of every dead
    // backend.
    let (poke_tx, poke_rx) = mpsc::channel::<()>(1);
    // Every map write that took an alive backend out (a probe verdict, a
    // certificate, a retried write, a reload) wakes its clients. A full
    // channel means a round is pending and will see this backend too.
    let poke_after = |r: Option<&ApplyReport>| {
        if r.is_some_and(|r| r.backends_killed > 0) {
            let _ = poke_tx.try_send(());
        }
    };
    let sweeper = match ctl.programmer().maps().flow_tables() {
        Ok(t) => Some(spawn_sweeper(
            t,
            globals,
            sweep_tx,
            poke_rx,
            sync.as_ref().map(|s| SweepSync {
                dir: s.directory(),
                tx: s.refresh_sender(),
                iface: cfg.interface.clone(),
            }),
        )),
        Err(e) => {
            // Forwarding does not need the sweep; status and the flow
            // metrics go without counts, and the LRU evicts as before.
            error!(error = %format!("{e:#}"), "opening the flow tables for the sweep failed; flows will not be counted");
            None
        }
    };

    let (probe_tx, mut probe_rx) = mpsc::channel::<ProbeEvent>(256);
    let (cert_tx, mut cert_rx) = mpsc::channel::<(SocketAddr, CertCheck)>(64);
    let mut probes = Probes {
        tasks: BTreeMap::new(),
        tx: probe_tx,
    };
    probes.sync(jobs.clone());

    // The first certificate round before VRRP starts: a node whose
    // certificates lack the VIP must not win an election meanwhile.
    let gate_targets = ctl.gate_targets();
    let mut pending = gate_targets.len();
    spawn_gate_round(gate_targets, &jobs, &cert_tx);
    let first_round_end = Instant::now() + Duration::from_secs(5);
    while pending > 0 {
        match tokio::time::timeout_at(first_round_end.into(), cert_rx.recv()).await {
            Ok(Some((addr, check))) => {
                pending -= 1;
                match ctl.cert(addr, check, SystemTime::now()) {
                    Ok(r) => poke_after(r.as_ref()),
                    Err(e) => {
                        error!(error = %format!("{e:#}"), "writing the maps failed; retrying")
                    }
                }
            }
            _ => break,
        }
    }
    let hold_of =
        |ctl: &Controller<KernelMaps>, f: Family| ctl.gate_hold(|vip| Family::of(&vip) == f);
    let mut holds: HashMap<Family, Option<String>> = [Family::V4, Family::V6]
        .into_iter()
        .map(|f| (f, hold_of(&ctl, f)))
        .collect();

    let vips = held_vips(&cfg);
    let mut added = vec![];
    for vip in &vips {
        match host::set_vip(&cfg.interface, *vip, true) {
            Ok(()) => {
                info!(vip = %vip, interface = %cfg.interface, "VIP added");
                added.push(*vip);
            }
            Err(e) => {
                remove_vips(&cfg.interface, &added);
                host::restore_all(sysctls);
                return Err(e.into());
            }
        }
    }
    let routers = match start_vrrp(&cfg, &holds) {
        Ok(r) => r,
        Err(e) => {
            remove_vips(&cfg.interface, &added);
            host::restore_all(sysctls);
            return Err(e);
        }
    };
    // The first status snapshot exists before readiness is announced, so
    // `vipd status` run right after "vipd ready" never answers "starting".
    observe::refresh(&metrics, &ctl, &routers, &mut obs);
    metrics.set_ready(true);
    println!("vipd ready: {} attached ({attached})", cfg.interface);

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut stats = tokio::time::interval(Duration::from_secs(opts.stats_interval.max(1)));
    // Priority tracking is read once a second: the XDP check spawns `ip`.
    let mut track = tokio::time::interval(Duration::from_secs(1));
    let gate_every = parse_duration(&cfg.cert_gate.interval).unwrap_or(Duration::from_secs(600));
    let mut gate_tick = tokio::time::interval_at((Instant::now() + gate_every).into(), gate_every);
    let mut file_tick = tokio::time::interval(Duration::from_secs(1));
    let mut loaded_stamp = file_stamp(&opts.config_path);
    let mut seen_stamp = loaded_stamp;
    let mut xdp_ok = true;
    let mut refresh_due = Instant::now();
    let mut local_ok = true;
    let mut priority = None;
    let mut last_counters = vec![];
    let mut last_vrrp = HashMap::new();
    let mut last_backends = String::new();
    loop {
        let mut reload_now = false;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break }
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = hup.recv() => reload_now = true,
            _ = file_tick.tick() => {
                // A changed file is reloaded once it has stopped changing
                // for a tick, so an editor's half-written file is not read.
                let now = file_stamp(&opts.config_path);
                if now != loaded_stamp && now.is_some() {
                    if now == seen_stamp {
                        reload_now = true;
                    }
                    seen_stamp = now;
                }
            }
            Some(ev) = probe_rx.recv() => {
                let took = ev.finished.saturating_duration_since(ev.started);
                metrics.probe(ev.addr, &ev.outcome, took);
                obs.probe_last.insert(ev.addr, (took, ev.outcome.label()));
                let res = ctl.probe(ev.addr, ev.started, ev.finished, &ev.outcome);
                let written = Instant::now();
                match res {
                    Ok(effect) => {
                        poke_after(effect.report.as_ref());
                        for c in &effect.changes {
                            log_probe_change(ev.addr, c, written);
                            let (to, reason) = match c {
                                Change::Down { outcome, .. } => ("down", outcome.label()),
                                Change::Up => ("up", "probe passes"),
                                Change::AuthRefused(_) => ("auth_misconfigured", "auth"),
                                Change::AuthAccepted => ("up", "probe accepted again"),
                            };
                            obs.record_change(ev.addr, to, reason.to_owned());
                            if *c == Change::Up {
                                // A restarted apiserver may present another
                                // certificate: read it now.
                                let t: Vec<_> = ctl.gate_targets().into_iter().filter(|t| t.addr == ev.addr).collect();
                                spawn_gate_round(t, &jobs, &cert_tx);
                            }
                        }
                    }
                    Err(e) => error!(error = %format!("{e:#}"), "writing the maps failed; retrying"),
                }
            }
            Some(rep) = sweep_rx.recv() => match rep {
                FlowReport::Swept(sw) => {
                    obs.swept_total += sw.removed;
                    if sw.removed > 0 {
                        tracing::debug!(removed = sw.removed, live = sw.flows, took_us = sw.took_us, "flow tables swept");
                    }
                    obs.sweep = Some((sw, SystemTime::now()));
                }
                FlowReport::Poked(p) => {
                    metrics.conntrack_poked.inc_by(p.flows);
                    if let Some(e) = &p.first_error {
                        warn!(poked = p.flows, failed = p.failed, error = %e, "poking the clients of a dead backend failed for some; they get their RST at their next packet");
                    } else if p.flows > 0 {
                        info!(poked = p.flows, "poked the clients of dead backends: each gets an RST within a round trip");
                    }
                }
            },
            Some((addr, check)) = cert_rx.recv() => {
                match ctl.cert(addr, check, SystemTime::now()) {
                    Ok(r) => poke_after(r.as_ref()),
                    Err(e) => error!(error = %format!("{e:#}"), "writing the maps failed; retrying"),
                }
            }
            _ = gate_tick.tick() => spawn_gate_round(ctl.gate_targets(), &jobs, &cert_tx),
            _ = track.tick() => {
                match ctl.tick() {
                    Ok(r) => poke_after(r.as_ref()),
                    Err(e) => error!(error = %format!("{e:#}"), "writing the maps failed; retrying"),
                }
                local_mac = write_local_mac(ctl.programmer_mut().maps_mut(), &cfg.interface, local_mac);
                if !routers.is_empty() {
                    let iface = cfg.interface.clone();
                    let now_xdp = tokio::task::spawn_blocking(move || host::xdp_attached(&iface))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .unwrap_or_else(|e| {
                            warn!(error = %e, "reading the XDP attachment failed; counting it as detached");
                            false
                        });
                    if now_xdp != xdp_ok {
                        xdp_ok = now_xdp;
                        if xdp_ok {
                            info!(interface = %cfg.interface, "XDP program attached again");
                        } else {
                            error!(interface = %cfg.interface, "XDP program not attached: this node cannot forward for the VIP; lowering the VRRP priority");
                        }
                    }
                }
            }
            _ = stats.tick(), if opts.stats_interval > 0 => {
                match ctl.programmer().maps().reason_counters() {
                    Ok(c) => {
                        let line: Vec<String> = Reason::ALL
                            .iter()
                            .filter(|r| c[**r as usize].packets > 0)
                            .map(|r| format!("{}={}", r.label(), c[*r as usize].packets))
                            .collect();
                        if line != last_counters {
                            info!(counters = %line.join(" "), "traffic");
                            last_counters = line;
                        }
                    }
                    Err(e) => warn!(error = %e, "reading counters failed"),
                }
                for r in &routers {
                    let line = r.summary();
                    if last_vrrp.get(&r.family()) != Some(&line) {
                        info!(family = %router::label(r.family()), counters = %line, "vrrp");
                        last_vrrp.insert(r.family(), line);
                    }
                }
                let line: Vec<String> = ctl
                    .status()
                    .iter()
                    .map(|b| format!("{}={}{}", b.addr, b.state, if b.cert == "san_missing" { "+san_missing" } else { "" }))
                    .collect();
                let line = line.join(" ");
                if line != last_backends {
                    info!(backends = %line, "health");
                    last_backends = line;
                }
            }
        }
        if reload_now {
            loaded_stamp = file_stamp(&opts.config_path);
            seen_stamp = loaded_stamp;
            match reload(&opts.config_path, &mut ctl) {
                Ok((new_jobs, report)) => {
                    poke_after(Some(&report));
                    let want = held_vips(ctl.config());
                    for vip in &want {
                        if !added.contains(vip) {
                            match host::set_vip(&cfg.interface, *vip, true) {
                                Ok(()) => added.push(*vip),
                                Err(e) => {
                                    error!(vip = %vip, error = %format!("{e:#}"), "adding a VIP failed")
                                }
                            }
                        }
                    }
                    let gone: Vec<IpAddr> = added
                        .iter()
                        .filter(|v| !want.contains(v))
                        .copied()
                        .collect();
                    remove_vips(&cfg.interface, &gone);
                    added.retain(|v| want.contains(v));
                    probes.sync(new_jobs.clone());
                    jobs = new_jobs;
                    spawn_gate_round(ctl.gate_targets(), &jobs, &cert_tx);
                }
                Err(e) => error!(
                    error = %format!("{e:#}"),
                    "configuration reload refused; the running configuration stays"
                ),
            }
        }
        // What VRRP must know after whatever happened.
        for r in &routers {
            let now = hold_of(&ctl, r.family());
            if holds.get(&r.family()) != Some(&now) {
                r.set_hold(now.clone());
                holds.insert(r.family(), now);
            }
        }
        let now_local = ctl.local_ok();
        if now_local != local_ok && !routers.is_empty() {
            local_ok = now_local;
            let locals = ctl.config().local_backends();
            if local_ok {
                info!(backends = ?locals, "local apiserver answers again; VRRP priority restored");
            } else {
                error!(backends = ?locals, "local apiserver does not answer: lowering the VRRP priority");
            }
        }
        let p = effective_priority(&cfg, xdp_ok, local_ok);
        obs.xdp_ok = xdp_ok;
        if priority != Some(p) {
            priority = Some(p);
            for r in &routers {
                r.set_priority(p);
            }
        }
        metrics.beat();
        if let Some(s) = &sync
            && ctl.programmer().generation() != published
        {
            // Ids and members may have changed (probes, reloads): the
            // shells resolve with what the maps hold now.
            published = ctl.programmer().generation();
            s.publish(directory(&ctl));
        }
        if refresh_due.elapsed() >= Duration::from_secs(1) {
            refresh_due = Instant::now();
            if sync.is_some() {
                obs.sync_ring_lost = ctl
                    .programmer()
                    .maps()
                    .sync_lost()
                    .unwrap_or(obs.sync_ring_lost);
            }
            observe::refresh(&metrics, &ctl, &routers, &mut obs);
        }
    }
    metrics.set_ready(false);
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(t) = sweeper {
        t.abort();
    }
    drop(sync);
    drop(probes);
    // VRRP first: the priority-0 advertisement lets a Backup take over after
    // its skew time; the router keeps the VIP until it hears the new master,
    // and the pinned program keeps forwarding meanwhile.
    routers.iter().for_each(RouterHandle::stop);
    for r in routers {
        r.stopped().await;
    }
    remove_vips(&cfg.interface, &added);
    match &opts.pin {
        Some(dir) => {
            // Pinned: the program keeps forwarding with these maps until the
            // next vipd adopts them, so its sysctls stay too.
            info!(
                pins = %dir.display(),
                "the XDP program stays attached and keeps forwarding; `vipd detach --interface {}` removes it",
                cfg.interface
            );
        }
        None => host::restore_all(sysctls),
    }
    // Dropping the controller closes our map handles; without pins the XDP
    // link goes with them and the program detaches.
    drop(ctl);
    info!("stopped");
    Ok(())
}

/// SIGHUP or a changed file: validates the file again (probe files
/// included) and applies the difference; anything wrong refuses the whole
/// file and the running configuration stays.
fn reload<M: Maps>(
    path: &Path,
    ctl: &mut Controller<M>,
) -> Result<(BTreeMap<SocketAddr, ProbeJob>, ApplyReport)> {
    let new = Config::load(path)?;
    check_reloadable(ctl.config(), &new).with_context(|| path.display().to_string())?;
    let jobs = probe_jobs(&new).with_context(|| path.display().to_string())?;
    let node_addrs = host::interface_addrs(&new.interface)?;
    let report = ctl
        .reload(new, node_addrs)
        .with_context(|| format!("{}: programming the new services", path.display()))?;
    info!(
        services = report.services_published,
        removed = report.services_removed,
        backends = report.backend_writes,
        maglev_writes = report.maglev_writes,
        "configuration reloaded"
    );
    for (ok, line) in timing_report(ctl.config()) {
        if !ok {
            warn!("{line}");
        }
    }
    Ok((jobs, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_priority_subtracts_the_weights_of_what_fails() {
        let text = "
interface: eth0
vrrp:
  vrid: 1
  priority: 150
  track:
    xdp_detached: 100
    local_apiserver: 60
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
        local: true
";
        let cfg = Config::parse(Path::new("t.yaml"), text).expect("valid");
        assert_eq!(effective_priority(&cfg, true, true), 150);
        assert_eq!(effective_priority(&cfg, false, true), 50);
        assert_eq!(effective_priority(&cfg, true, false), 90);
        assert_eq!(
            effective_priority(&cfg, false, false),
            1,
            "never 0: that means leaving"
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
