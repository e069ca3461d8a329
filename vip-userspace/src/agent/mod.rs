//! The running agent: loads and attaches the dataplane, hands the maps to
//! the [`Controller`], runs one probe task per backend and the certificate
//! gate, the VIP holder, reloads, and the orderly stop.
//!
//! This file is the shell: after the start-up sequence (`start`), a loop
//! that turns signals, ticks and channel messages into events for the pure
//! [`AgentState`] and carries out the effects it returns. Every decision
//! lives in the state, the controller, the VIP holder (`hold`: VRRP,
//! static, none) or the health counter; probe results, certificates and
//! flow sweeps go straight to the controller and the observer.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info, warn};
use vip_common::{Globals, Reason};

use crate::{
    certcheck::CertCheck,
    config::Config,
    controller::Controller,
    dataplane::{Maps, kernel::KernelMaps, programmer::ApplyReport},
    discovery::{self, Discovery, VetReport, WatchReport},
    health::Change,
    host::{self, HostGuard},
    metrics::Metrics,
    neigh::{self, Decision, NeighEvent},
    probe::Outcome,
    sync::SyncHandle,
    vrrp::{Family, router},
};

pub mod hold;
mod observe;
mod probes;
mod snapshots;
mod stall;
mod start;
mod state;
mod sweep;
pub mod telemetry;

use hold::VipHolder;
pub use hold::vrrp::effective_priority;
use observe::Observed;
use probes::{ProbeEvent, Probes, spawn_gate_round, spawn_version_round};
pub use probes::{ProbeJob, probe_jobs, timing_report};
use snapshots::Snapshots;
use state::{AgentState, Effect, Event, Note, Signal, StatsLines, Verdicts};
use sweep::FlowReport;
use telemetry::Telemetry;

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

/// Keeps the program's `LOCAL_MAC` equal to the interface's MAC (read once
/// a second, so a MAC changed under a running agent is followed within a
/// second). Returns what the program now holds. A MAC that cannot be read
/// (not Ethernet) leaves the program's check off, which only costs the
/// protection against flooded frames (`pass_other_host`); the caller logs
/// that at start.
fn write_local_mac(maps: &mut KernelMaps, iface: &str, last: Option<[u8; 6]>) -> Option<[u8; 6]> {
    let mac = match crate::link::mac_address(iface) {
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

/// The config file's identity for change detection.
fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
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

/// Everything the running agent owns. Fields drop in order: the host
/// changes are undone before the controller's map handles go (which,
/// unpinned, detaches the program), as on an orderly stop.
struct Agent {
    opts: AgentOptions,
    /// The configuration as started: its `Fixed` part holds for the life
    /// of this process (a reload that changes it is refused); the live
    /// part is the controller's, `ctl.config()`.
    cfg: Config,
    state: AgentState,
    holder: Option<Box<dyn VipHolder>>,
    host: Option<HostGuard>,
    ctl: Controller<KernelMaps>,
    globals: Globals,
    /// How the program was attached.
    attached: String,
    /// The MAC the program holds as the interface's.
    local_mac: Option<[u8; 6]>,
    metrics: Arc<Metrics>,
    /// Every component's metric families.
    telemetry: Telemetry,
    metrics_task: Option<JoinHandle<()>>,
    sweeper: Option<JoinHandle<()>>,
    sync: Option<SyncHandle>,
    probes: Option<Probes>,
    jobs: BTreeMap<SocketAddr, ProbeJob>,
    obs: Observed,
    poke_tx: mpsc::Sender<()>,
    cert_tx: mpsc::Sender<(SocketAddr, CertCheck)>,
    version_tx: mpsc::Sender<(SocketAddr, Result<String, crate::probe::Failure>)>,
    /// The neighbour table task (mode dsr backend MACs).
    neigh: neigh::Commands,
    /// `snapshot:` on: the scheduled etcd snapshot's shell.
    snapshots: Option<Snapshots>,
    /// `backends_from: kubernetes`: the discovered backends, and the file's
    /// configuration they are merged into (`discovery::merge`).
    discovery: Option<Discovery>,
    file_cfg: Config,
    /// A file read for a reload, kept as `file_cfg` once applied.
    pending_file: Option<Config>,
    vet_tx: mpsc::UnboundedSender<VetReport>,
    /// The list/watch task.
    watch: Option<Watch>,
}

/// The families and the default port a list/watch task reads slices for
/// (`discovery::families` of the file).
type Watching = (
    std::collections::BTreeSet<crate::discovery::slice::Family>,
    u16,
);

/// `backends_from: kubernetes`: the list/watch task, and what it needs to
/// start again for other families.
struct Watch {
    client: Arc<crate::discovery::client::Client>,
    task: JoinHandle<()>,
    tx: mpsc::UnboundedSender<WatchReport>,
    watching: Watching,
}

impl Watch {
    /// The list/watch task for the families `watching` names.
    fn start(
        client: Arc<crate::discovery::client::Client>,
        watching: Watching,
        tx: mpsc::UnboundedSender<WatchReport>,
    ) -> Watch {
        let task =
            discovery::spawn_watch(client.clone(), watching.0.clone(), watching.1, tx.clone());
        Watch {
            client,
            task,
            tx,
            watching,
        }
    }

    /// A reload changed which families read their backends from the
    /// cluster (an IPv6 service now has `backends_from`, say): the task
    /// starts again with a list, so slices it ignored until now count at
    /// once rather than at their next change.
    fn follow(&mut self, file: &Config) {
        let now = discovery::families(file);
        if now == self.watching {
            return;
        }
        let label = |f: &std::collections::BTreeSet<crate::discovery::slice::Family>| {
            f.iter().map(|f| f.label()).collect::<Vec<_>>().join("+")
        };
        info!(
            from = %label(&self.watching.0),
            to = %label(&now.0),
            "discovery: the services reading the cluster changed; listing the EndpointSlices again"
        );
        // The old task is aborted as its `Watch` drops.
        *self = Watch::start(self.client.clone(), now, self.tx.clone());
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the side tasks send the agent loop.
struct Inbox {
    probes: mpsc::Receiver<ProbeEvent>,
    certs: mpsc::Receiver<(SocketAddr, CertCheck)>,
    versions: mpsc::Receiver<(SocketAddr, Result<String, crate::probe::Failure>)>,
    sweeps: mpsc::Receiver<FlowReport>,
    neigh: mpsc::Receiver<NeighEvent>,
    /// Finished snapshots (never anything without `snapshot:`).
    snapshots: mpsc::UnboundedReceiver<snapshots::Done>,
    /// The EndpointSlices' watch and the candidates' vetting (never
    /// anything without `backends_from`).
    watch: mpsc::UnboundedReceiver<WatchReport>,
    vets: mpsc::UnboundedReceiver<VetReport>,
    /// State sync's peers whose welcome dump ended (never anything
    /// without state sync).
    sync_answers: mpsc::Receiver<std::net::IpAddr>,
}

/// Runs until SIGINT or SIGTERM.
pub async fn serve(opts: AgentOptions, cfg: Config) -> Result<()> {
    let (mut agent, mut inbox) = Agent::start(opts, cfg).await?;
    let stalls = tokio::spawn(stall::watch(|late| {
        warn!(
            late_ms = late.as_millis() as u64,
            "the agent's thread was held: probes, the API and state sync waited (VRRP did not, it runs on its own thread); the lines just before name what ran"
        )
    }));
    let ran = agent.run(&mut inbox).await;
    stalls.abort();
    ran?;
    // Dropping the controller closes our map handles; without pins the XDP
    // link goes with them and the program detaches.
    drop(agent);
    info!("stopped");
    Ok(())
}

impl Agent {
    /// Until SIGINT or SIGTERM: each signal, tick or message becomes an
    /// event, and after each the controller's verdicts are settled.
    async fn run(&mut self, inbox: &mut Inbox) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut stats = tokio::time::interval(Duration::from_secs(self.opts.stats_interval.max(1)));
        // Priority tracking is read once a second: the XDP check spawns `ip`.
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let gate_tick_every =
            |every: Duration| tokio::time::interval_at((Instant::now() + every).into(), every);
        let mut gate_every = self.cfg.cert_gate.interval;
        let mut gate_tick = gate_tick_every(gate_every);
        let mut file_tick = tokio::time::interval(Duration::from_secs(1));
        // The first tick is at once: the versions are known from the start.
        let mut version_tick = tokio::time::interval(crate::version::EVERY);
        loop {
            let ev = tokio::select! {
                _ = tokio::signal::ctrl_c() => Some(Event::Signal(Signal::Int)),
                _ = term.recv() => Some(Event::Signal(Signal::Term)),
                _ = hup.recv() => Some(Event::Hangup),
                _ = file_tick.tick() => Some(Event::FileStamp(file_stamp(&self.opts.config_path))),
                Some(ev) = inbox.probes.recv() => { self.probed(ev); None }
                Some(rep) = inbox.sweeps.recv() => { self.swept(rep); None }
                Some(ev) = inbox.neigh.recv() => { self.neighboured(ev); None }
                Some((addr, check)) = inbox.certs.recv() => { self.cert(addr, check); None }
                _ = gate_tick.tick() => { spawn_gate_round(self.ctl.gate_targets(), &self.jobs, &self.cert_tx); None }
                _ = version_tick.tick() => { spawn_version_round(&self.jobs, &self.version_tx); None }
                Some((addr, got)) = inbox.versions.recv() => { self.versioned(addr, got); None }
                Some(done) = inbox.snapshots.recv() => Some(self.snapshot_done(done)),
                Some(r) = inbox.watch.recv() => { self.watched(r); None }
                Some(r) = inbox.vets.recv() => { self.vetted(r); None }
                Some(peer) = inbox.sync_answers.recv() => Some(Event::SyncAnswered(peer)),
                _ = second.tick() => Some(Event::Second),
                _ = stats.tick(), if self.opts.stats_interval > 0 => Some(Event::StatsDue),
            };
            let second = ev == Some(Event::Second);
            if let Some(ev) = ev
                && self.feed(ev).await?
            {
                return Ok(());
            }
            if second && self.snapshots.is_some() {
                let holding = self.holder.as_ref().map(|h| h.holding());
                let turn = self.snapshots.as_ref().map(|s| s.turn(holding));
                let unix = crate::snapshot::unix_now();
                if let Some(turn) = turn {
                    self.feed(Event::SnapshotTick { unix, turn }).await?;
                }
            }
            // `cert_gate` is live: a reload may change its interval.
            if self.ctl.config().cert_gate.interval != gate_every {
                gate_every = self.ctl.config().cert_gate.interval;
                gate_tick = gate_tick_every(gate_every);
            }
            self.metrics.beat();
            self.telemetry.show_controller(&self.ctl);
            let v = self.verdicts();
            self.feed(Event::Settled(v)).await?;
        }
    }

    /// Hands the state an event and carries out its effects, and those of
    /// the answers they bring, in order. True once the agent is to exit.
    async fn feed(&mut self, ev: Event) -> Result<bool> {
        let mut queue: VecDeque<Effect> = self.state.on(Instant::now(), ev).into();
        let mut exit = false;
        while let Some(e) = queue.pop_front() {
            exit |= e == Effect::Exit;
            if let Some(answer) = self.execute(e).await? {
                queue.extend(self.state.on(Instant::now(), answer));
            }
        }
        Ok(exit)
    }

    /// What the controller says now.
    fn verdicts(&self) -> Verdicts {
        let gate = |f: Family| self.ctl.gate_hold(|vip| Family::of(&vip) == f);
        Verdicts {
            local_ok: self.ctl.local_ok(),
            serving: self.ctl.status().iter().any(|b| b.serving),
            gate_v4: gate(Family::V4),
            gate_v6: gate(Family::V6),
            generation: self.ctl.programmer().generation(),
        }
    }

    /// Carries out one effect; some are answered with an event.
    async fn execute(&mut self, e: Effect) -> Result<Option<Event>> {
        match e {
            Effect::StartHolder(f) => {
                let h = hold::start(&self.cfg, &f, &self.telemetry).await?;
                self.obs.xdp_ok = f.xdp_attached;
                let tracks = h.tracks();
                self.holder = Some(h);
                return Ok(Some(Event::HolderStarted { tracks }));
            }
            Effect::Ready => {
                // The first status snapshot exists before readiness is
                // announced, so `vipd status` run right after "vipd ready"
                // never answers "starting".
                self.refresh();
                self.metrics.set_ready(true);
                println!(
                    "vipd ready: {} attached ({})",
                    self.cfg.interface, self.attached
                );
            }
            Effect::Fit(f) => {
                self.obs.xdp_ok = f.xdp_attached;
                if let Some(h) = &mut self.holder {
                    h.fit(&f);
                }
            }
            Effect::Upkeep => {
                let r = self.ctl.tick();
                self.wrote(r);
                self.local_mac = write_local_mac(
                    self.ctl.programmer_mut().maps_mut(),
                    &self.cfg.interface,
                    self.local_mac,
                );
            }
            Effect::CheckXdp => return Ok(Some(Event::Xdp(self.xdp_attached().await))),
            Effect::ReadStats => return Ok(Some(Event::Stats(self.stats_lines()))),
            Effect::ReadConfig => {
                let path = &self.opts.config_path;
                // Resolved for this node again: the file is the same on
                // every node, its per-node values are not.
                let read = Config::load_for_node(path).await.map(|(c, _)| c);
                if let Ok(c) = &read {
                    self.pending_file = Some(c.clone());
                }
                return Ok(Some(Event::ConfigRead {
                    stamp: file_stamp(path),
                    config: read
                        .map_err(anyhow::Error::new)
                        .and_then(|c| self.merged(&c))
                        .map(Box::new)
                        .map_err(|e| format!("{e:#}")),
                }));
            }
            Effect::Apply(c) => {
                let res = self.apply(*c).map_err(|e| format!("{e:#}"));
                if res.is_ok()
                    && let Some(f) = self.pending_file.take()
                {
                    self.file_cfg = f;
                    if let Some(w) = &mut self.watch {
                        w.follow(&self.file_cfg);
                    }
                }
                return Ok(Some(Event::Applied(res)));
            }
            Effect::Publish => {
                if let Some(s) = &self.sync {
                    s.publish(start::directory(&self.ctl, self.globals));
                }
            }
            Effect::Refresh => self.refresh(),
            Effect::TakeSnapshot(period) => {
                if let Some(s) = &self.snapshots {
                    s.spawn(period);
                }
            }
            Effect::Log(n) => self.log(n),
            Effect::Quiesce => self.quiesce(),
            Effect::StopHolder => {
                if let Some(h) = self.holder.take() {
                    h.stop().await;
                }
            }
            Effect::RestoreHost => self.host.take().into_iter().for_each(HostGuard::restore),
            Effect::KeepHost => {
                // Pinned: the program keeps forwarding with these maps until
                // the next vipd adopts them, so its sysctls stay too.
                info!(
                    pins = %self.opts.pin.as_deref().unwrap_or(Path::new("")).display(),
                    "the XDP program stays attached and keeps forwarding; `vipd detach --interface {}` removes it",
                    self.cfg.interface
                );
                self.host.take().into_iter().for_each(HostGuard::keep);
            }
            Effect::Exit => {}
        }
        Ok(None)
    }

    /// Every map write that took an alive backend out (a probe verdict, a
    /// certificate, a retried write, a reload) wakes its clients. A full
    /// channel means a round is pending and will see this backend too.
    fn poke_after(&self, r: Option<&ApplyReport>) {
        if r.is_some_and(|r| r.backends_killed > 0) {
            let _ = self.poke_tx.try_send(());
        }
    }

    /// A map write's outcome: pokes if a backend died, retried on the next
    /// tick if it failed.
    fn wrote<E: std::fmt::Display>(&self, r: Result<Option<ApplyReport>, E>) {
        match r {
            Ok(r) => self.poke_after(r.as_ref()),
            Err(e) => error!(error = %format!("{e:#}"), "writing the maps failed; retrying"),
        }
    }

    /// One backend's `GET /version`: its version kept (and exported), the
    /// skew decided again over every backend, and a change of the decision
    /// logged once.
    fn versioned(&mut self, addr: SocketAddr, got: Result<String, crate::probe::Failure>) {
        let m = &self.telemetry.versions;
        // A backend gone from the config (a reload) leaves the check.
        let gone: Vec<SocketAddr> = self
            .obs
            .versions
            .keys()
            .filter(|a| !self.jobs.contains_key(a))
            .copied()
            .collect();
        for a in gone {
            if let Some(v) = self.obs.versions.remove(&a) {
                m.forget(a, &v);
            }
        }
        match got {
            // An apiserver that does not answer keeps its last version: it
            // still runs it (or will when it is back).
            Err(e) => {
                tracing::debug!(backend = %addr, error = %e, "GET /version failed; keeping the last version read");
            }
            Ok(v) if self.jobs.contains_key(&addr) => {
                let old = self.obs.versions.insert(addr, v.clone());
                if let Some(old) = &old
                    && *old != v
                {
                    info!(backend = %addr, from = %old, to = %v, "apiserver version changed");
                }
                m.set(addr, old.as_deref(), &v);
            }
            Ok(_) => {}
        }
        let skew = crate::version::skew(&self.obs.versions);
        if skew.note() != self.obs.skew.note()
            && let Some(n) = skew.note()
        {
            warn!("{n}");
        }
        match (skew.warning(), self.obs.skew.warning()) {
            (Some(w), old) if old.as_ref() != Some(&w) => {
                warn!("{w}; vipd_apiserver_version_skew is 1 until they are within one minor")
            }
            (None, Some(_)) => info!("apiserver versions are within one minor version again"),
            _ => {}
        }
        m.skew.set(i64::from(skew.warns()));
        self.obs.skew = skew;
    }

    fn cert(&mut self, addr: SocketAddr, check: CertCheck) {
        let r = self.ctl.cert(addr, check, SystemTime::now());
        self.wrote(r);
    }

    fn probed(&mut self, ev: ProbeEvent) {
        let took = ev.finished.saturating_duration_since(ev.started);
        self.telemetry.probes.probe(ev.addr, &ev.outcome, took);
        self.obs
            .probe_last
            .insert(ev.addr, (took, ev.outcome.label()));
        let res = self
            .ctl
            .probe(ev.addr, ev.started, ev.finished, &ev.outcome);
        let written = Instant::now();
        if matches!(ev.outcome, Outcome::Fail(_)) {
            // Perhaps the backend answers from another MAC now: the task
            // asks the kernel afresh (rate-limited) if the MAC is the
            // neighbour table's.
            self.neigh.probe_failed(ev.addr.ip());
        }
        let effect = match res {
            Ok(effect) => effect,
            Err(e) => {
                error!(error = %format!("{e:#}"), "writing the maps failed; retrying");
                return;
            }
        };
        self.poke_after(effect.report.as_ref());
        for c in &effect.changes {
            log_probe_change(ev.addr, c, written);
            let (to, reason) = match c {
                Change::Down { outcome, .. } => ("down", outcome.label()),
                Change::Up => ("up", "probe passes"),
                Change::AuthRefused(_) => ("auth_misconfigured", "auth"),
                Change::AuthAccepted => ("up", "probe accepted again"),
            };
            self.obs.record_change(ev.addr, to, reason.to_owned());
            if *c == Change::Up {
                // A restarted apiserver may present another certificate:
                // read it now.
                let t: Vec<_> = self
                    .ctl
                    .gate_targets()
                    .into_iter()
                    .filter(|t| t.addr == ev.addr)
                    .collect();
                spawn_gate_round(t, &self.jobs, &self.cert_tx);
            }
        }
    }

    /// The file's configuration with the discovered backends in, resolved
    /// for this node (its own apiserver derived again: a discovered
    /// address may be this node's).
    fn merged(&self, file: &Config) -> Result<Config> {
        let c = match &self.discovery {
            Some(d) => discovery::merge(file, &d.admission, false),
            None => file.clone(),
        };
        start::derive_local(c)
    }

    /// A report of the EndpointSlices' watch.
    fn watched(&mut self, r: WatchReport) {
        let Some(d) = &mut self.discovery else {
            return;
        };
        if let WatchReport::Failed { label, .. } = &r {
            self.telemetry.discovery.failed(label);
        }
        let changed = d.watched(r);
        if !changed.vet.is_empty() {
            // The candidates' probes as their service probes its backends.
            let with = discovery::merge(&self.file_cfg, &d.admission, true);
            match probe_jobs(&with) {
                Ok(jobs) => {
                    for addr in changed.vet {
                        let Some(job) = jobs.get(&addr) else {
                            continue;
                        };
                        info!(backend = %addr, "discovery: a new apiserver is listed; it is added once its probe passes rise times and its certificate carries the VIP");
                        let v = discovery::Vet {
                            spec: job.spec.clone(),
                            interval: job.interval,
                            rise: job.settings.rise,
                            want: discovery::wanted_names(&with, addr),
                        };
                        let task = discovery::spawn_vet(addr, v, self.vet_tx.clone());
                        d.vetting(addr, task);
                    }
                }
                Err(e) => {
                    error!(error = %format!("{e:#}"), "discovery: the probes of new apiservers cannot be built")
                }
            }
        }
        if changed.apply {
            self.rediscovered();
        } else {
            self.show_discovery();
        }
    }

    fn vetted(&mut self, r: VetReport) {
        let Some(d) = &mut self.discovery else {
            return;
        };
        if d.vetted(r) {
            self.rediscovered();
        } else {
            self.show_discovery();
        }
    }

    /// The discovered set changed: the merged configuration is applied as a
    /// reload applies one (a removed backend's flows are reset, a new one
    /// gets its share of new flows), then kept on disk.
    fn rediscovered(&mut self) {
        let res = self
            .merged(&self.file_cfg.clone())
            .and_then(|c| self.apply(c));
        match res {
            Ok(()) => {
                if let Some(d) = &self.discovery {
                    d.save();
                }
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "discovery: applying the new backend set failed; the running set stays")
            }
        }
        self.show_discovery();
    }

    fn show_discovery(&mut self) {
        let Some(d) = &self.discovery else {
            return;
        };
        self.telemetry.discovery.show(d);
        self.obs.discovery = Some(crate::status::DiscoveryStatus {
            source: d.source.label().to_owned(),
            last_sync_unix_ms: d.last_sync.map(crate::status::unix_ms),
            last_error: d.last_error.clone(),
            cache: d.cache_path().display().to_string(),
            candidates: d
                .waiting
                .iter()
                .map(|(a, w)| (a.to_string(), w.clone()))
                .collect(),
        });
        self.refresh();
    }

    /// A backend's MAC appeared, moved or went.
    fn neighboured(&mut self, ev: NeighEvent) {
        let iface = &self.cfg.interface;
        let r = self.ctl.neighbour(ev.addr, ev.decision.mac(), ev.seen);
        let written_us = ev.seen.elapsed().as_micros() as u64;
        let mac = |m: &[u8; 6]| crate::config::format_mac(m);
        let (to, why) = match ev.decision {
            Decision::Learnt(m) => {
                info!(backend = %ev.addr, mac = %mac(&m), interface = %iface, "neighbour resolved: the backend may be served");
                ("up", "neighbour resolved")
            }
            Decision::Moved { from, to } => {
                warn!(backend = %ev.addr, from = %mac(&from), to = %mac(&to), interface = %iface, written_us, "neighbour changed: the backend answers from another MAC; re-pointed (its flows stay), nothing more is sent to the old MAC");
                ("up", "neighbour changed")
            }
            Decision::Lost(m) => {
                error!(backend = %ev.addr, mac = %mac(&m), interface = %iface, "no neighbour: the backend's address does not resolve on the interface; not served, its clients get an RST. Check that it is up and on this segment (`ip neigh show {} dev {iface}`)", ev.addr);
                (crate::controller::NO_NEIGHBOUR, "no neighbour")
            }
        };
        for b in self.ctl.status() {
            if b.addr.ip() == ev.addr {
                self.obs.record_change(b.addr, to, why.to_owned());
            }
        }
        self.wrote(r);
    }

    fn swept(&mut self, rep: FlowReport) {
        match rep {
            FlowReport::Swept(sw) => {
                self.obs.swept_total += sw.removed;
                if sw.removed > 0 {
                    tracing::debug!(
                        removed = sw.removed,
                        live = sw.flows,
                        took_us = sw.took_us,
                        "flow tables swept"
                    );
                }
                self.telemetry
                    .flows
                    .swept(&sw, &self.ctl.counted_backends());
                self.obs.sweep = Some((sw, SystemTime::now()));
            }
            FlowReport::Poked(p) => {
                self.telemetry.flows.poked.inc_by(p.flows);
                if let Some(e) = &p.first_error {
                    warn!(poked = p.flows, failed = p.failed, error = %e, "poking the clients of a dead backend failed for some; they get their RST at their next packet");
                } else if p.flows > 0 {
                    info!(
                        poked = p.flows,
                        "poked the clients of dead backends: each gets an RST within a round trip"
                    );
                }
            }
        }
    }

    /// Whether the program is attached, as the kernel says (an unreadable
    /// answer counts as detached).
    async fn xdp_attached(&self) -> bool {
        let iface = self.cfg.interface.clone();
        tokio::task::spawn_blocking(move || host::xdp_attached(&iface))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .unwrap_or_else(|e| {
                warn!(error = %e, "reading the XDP attachment failed; counting it as detached");
                false
            })
    }

    fn stats_lines(&self) -> StatsLines {
        let counters = match self.ctl.programmer().maps().reason_counters() {
            Ok(c) => Some(
                Reason::ALL
                    .iter()
                    .filter(|r| c[**r as usize].packets > 0)
                    .map(|r| format!("{}={}", r.label(), c[*r as usize].packets))
                    .collect(),
            ),
            Err(e) => {
                warn!(error = %e, "reading counters failed");
                None
            }
        };
        let vrrp = self
            .routers()
            .iter()
            .map(|r| (r.family(), r.summary()))
            .collect();
        let backends: Vec<String> = self
            .ctl
            .status()
            .iter()
            .map(|b| {
                let san = if b.cert == crate::controller::CertKind::SanMissing {
                    "+san_missing"
                } else {
                    ""
                };
                format!("{}={}{san}", b.addr, b.state.label())
            })
            .collect();
        StatsLines {
            counters,
            vrrp,
            backends: backends.join(" "),
        }
    }

    fn announces(&self) -> bool {
        self.cfg.announce.is_some()
    }

    /// A finished scheduled snapshot: metrics and logs, then the state.
    fn snapshot_done(&mut self, done: snapshots::Done) -> Event {
        let period = done.0;
        let outcome = match &mut self.snapshots {
            Some(s) => s.done(done),
            None => crate::snapshot::duty::Outcome::Failed,
        };
        Event::SnapshotDone {
            period,
            outcome,
            unix: crate::snapshot::unix_now(),
        }
    }

    fn routers(&self) -> &[router::RouterHandle] {
        self.holder.as_ref().map_or(&[][..], |h| h.routers())
    }

    fn refresh(&mut self) {
        if self.sync.is_some() {
            self.obs.sync_ring_lost = self
                .ctl
                .programmer()
                .maps()
                .sync_lost()
                .unwrap_or(self.obs.sync_ring_lost);
        }
        if let Some(s) = &self.snapshots {
            self.obs.etcd_snapshot = Some(s.status());
        }
        // The holder runs from before readiness until the stop.
        if let Some(h) = &self.holder {
            observe::refresh(&self.metrics, &self.ctl, h.as_ref(), &self.obs);
        }
    }

    /// A new configuration the state accepted: validated again (probe
    /// files included) and handed to the controller, which applies the
    /// difference or refuses it whole.
    fn apply(&mut self, new: Config) -> Result<()> {
        let path = self.opts.config_path.display().to_string();
        let jobs = probe_jobs(&new).with_context(|| path.clone())?;
        let node_addrs = crate::link::addresses(&new.interface)?;
        let report = self
            .ctl
            .reload(new, node_addrs)
            .with_context(|| format!("{path}: programming the new services"))?;
        info!(
            services = report.services_published,
            removed = report.services_removed,
            backends = report.backend_writes,
            maglev_writes = report.maglev_writes,
            "configuration reloaded"
        );
        for (ok, line) in timing_report(self.ctl.config()) {
            if !ok {
                warn!("{line}");
            }
        }
        self.poke_after(Some(&report));
        if let Some(h) = &mut self.holder {
            h.set_vips(&self.ctl.config().vips());
        }
        if let Some(p) = &mut self.probes {
            p.sync(jobs.clone());
        }
        self.neigh.watch(self.ctl.neighbour_targets());
        self.telemetry.probes.known_backends(jobs.keys().copied());
        self.jobs = jobs;
        spawn_gate_round(self.ctl.gate_targets(), &self.jobs, &self.cert_tx);
        Ok(())
    }

    /// Not ready any more; the side tasks end.
    fn quiesce(&mut self) {
        self.metrics.set_ready(false);
        if let Some(t) = self.metrics_task.take() {
            t.abort();
        }
        if let Some(t) = self.sweeper.take() {
            t.abort();
        }
        self.sync = None;
        self.probes = None;
        self.watch = None;
        self.discovery = None;
    }

    fn log(&self, n: Note) {
        let iface = &self.cfg.interface;
        match n {
            Note::Stopping(Signal::Int) => info!("SIGINT: stopping"),
            Note::Stopping(Signal::Term) => info!("SIGTERM: stopping"),
            Note::ReloadRefused(e) => error!(
                error = %e,
                "configuration reload refused; the running configuration stays"
            ),
            Note::Xdp(true) => info!(interface = %iface, "XDP program attached again"),
            Note::Xdp(false) if self.announces() => {
                error!(interface = %iface, "XDP program not attached: this node cannot forward for the VIP; withdrawing the VIP routes")
            }
            Note::Xdp(false) => {
                error!(interface = %iface, "XDP program not attached: this node cannot forward for the VIP; lowering the VRRP priority")
            }
            Note::LocalApiserver(ok) => {
                let locals = self.ctl.config().local_backends();
                // announce: the other backends serve the VIP as well; only
                // "no backend serving" withdraws the routes.
                let effect = if self.announces() {
                    "the VIP routes stay while another backend serves"
                } else if ok {
                    "VRRP priority restored"
                } else {
                    "lowering the VRRP priority"
                };
                if ok {
                    info!(backends = ?locals, "local apiserver answers again; {effect}");
                } else {
                    error!(backends = ?locals, "local apiserver does not answer: {effect}");
                }
            }
            Note::Traffic(line) => info!(counters = %line, "traffic"),
            Note::Vrrp(family, line) => {
                info!(family = %router::label(family), counters = %line, "vrrp")
            }
            Note::Health(line) => info!(backends = %line, "health"),
            Note::SyncWelcomed(missing) if missing.is_empty() => info!(
                "state sync: every peer has sent the flows it holds; this node may hold the VIP"
            ),
            Note::SyncWelcomed(missing) => warn!(
                peers = ?missing,
                "state sync: no end of the flows from these peers within {} s of start (down, or a vipd without welcome dumps); this node holds the VIP without them: their flows that come here are reset",
                crate::sync::WELCOME_WAIT.as_secs()
            ),
        }
    }
}
