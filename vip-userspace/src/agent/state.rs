//! The agent's own decisions as a pure state machine: (state, event, now)
//! to effects, as [`crate::vrrp::machine`] is for one virtual router.
//!
//! No sockets, no tokio, no BPF: the shell in `agent/mod.rs` turns signals,
//! ticks and what it read (the controller's verdicts, the XDP attachment,
//! the config file) into [`Event`]s and carries out the returned
//! [`Effect`]s in order. What this decides: when start-up hands over to the
//! VIP holder and announces readiness; what this node can do
//! ([`Fitness`]) and when the holder hears of it; when a changed config
//! file is read and whether it may be applied; which periodic lines are
//! worth logging (changes only); when the status is rebuilt and state sync
//! republished; and the order of an orderly stop. Probe results,
//! certificates and flow sweeps go straight to their owner (the
//! [`crate::controller::Controller`]), whose verdicts come back here as
//! [`Verdicts`].

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use super::hold::Fitness;
use crate::{
    config::Config,
    snapshot::{duty::Duty, plan::Schedule},
    vrrp::Family,
};

/// How often metrics and the status snapshot are rebuilt.
const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The config file's identity for change detection: modification time and
/// length.
pub type Stamp = (SystemTime, u64);

/// What the agent is told at start and keeps.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The configuration as loaded: the settings it fixes for the life of
    /// the process, and the services a reload is compared with.
    pub config: Config,
    /// Where it was read from (named in a refusal).
    pub config_path: PathBuf,
    /// The file's stamp when it was read.
    pub stamp: Option<Stamp>,
    /// Program and maps are pinned: they outlive this process, and so do
    /// the host changes they need.
    pub pinned: bool,
    /// State sync runs, holding the directory built at this programmer
    /// generation.
    pub sync: Option<u64>,
    /// `snapshot:` on: when the periods start (planned once, at start).
    pub snapshot: Option<Schedule>,
    /// State sync started with empty tables: the peers whose flows this
    /// node waits for before it holds the VIP.
    pub welcome: Option<Welcome>,
}

/// The wait for state sync's peers at start. A node that starts with empty
/// tables (a reboot, no pinned maps) says hello and each peer answers with
/// every flow it holds, then an end marker (`sync::Received::end`). Until
/// every peer's end has arrived, or `until`, this node does not hold the
/// VIP: a flow that a router (ECMP) or an election moved here before its
/// entry arrived would be reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The peers whose dump has not ended yet.
    pub waiting: BTreeSet<IpAddr>,
    /// When the wait ends whoever has not answered (a peer that is down).
    pub until: Instant,
}

impl Welcome {
    /// Why the node waits, as `vipd status` and the holder say it: the
    /// same until the wait ends (a changed reason would be a new hold or
    /// withdrawal for the holder); the log names the peers that never
    /// answered.
    fn reason(&self) -> String {
        format!(
            "state sync: started with empty tables, waiting for the peers' flows (at most {} s after start)",
            crate::sync::WELCOME_WAIT.as_secs()
        )
    }
}

/// The signals that stop the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

/// What the controller says after whatever happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdicts {
    /// [`crate::controller::Controller::local_ok`].
    pub local_ok: bool,
    /// Some backend serves (passes its probe and the gate).
    pub serving: bool,
    /// [`crate::controller::Controller::gate_hold`] per family.
    pub gate_v4: Option<String>,
    pub gate_v6: Option<String>,
    /// The programmer's generation: changes with every map write.
    pub generation: u64,
}

/// The lines the periodic log would show now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsLines {
    /// The program's non-zero drop/verdict counters; `None`: unreadable.
    pub counters: Option<Vec<String>>,
    /// Each VRRP router's summary.
    pub vrrp: Vec<(Family, String)>,
    /// Every backend's state.
    pub backends: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Start-up is done up to the VIP (maps programmed, program attached,
    /// the first certificate round over): the controller's verdicts now.
    Started(Verdicts),
    /// The VIP holder runs; whether it acts on the node's fitness.
    HolderStarted {
        tracks: bool,
    },
    /// After any event: what the controller says now.
    Settled(Verdicts),
    /// The once-a-second tick.
    Second,
    /// This state-sync peer's welcome dump ended: every flow it held has
    /// arrived.
    SyncAnswered(IpAddr),
    /// Whether an XDP program is attached to the interface, as read.
    Xdp(bool),
    /// The periodic log is due.
    StatsDue,
    Stats(StatsLines),
    /// The config file's stamp, read once a second (`None`: unreadable).
    FileStamp(Option<Stamp>),
    /// SIGHUP: reload now.
    Hangup,
    /// Once a second with `snapshot:` on: the wall clock, and whether (and
    /// how soon after the slot) the snapshot is this node's to take.
    SnapshotTick {
        unix: u64,
        turn: crate::snapshot::duty::Turn,
    },
    /// The scheduled snapshot of `period` ended (at `unix`).
    SnapshotDone {
        period: u64,
        outcome: crate::snapshot::duty::Outcome,
        unix: u64,
    },
    /// The config file as read for a reload, with its stamp then.
    ConfigRead {
        stamp: Option<Stamp>,
        config: Result<Box<Config>, String>,
    },
    /// The controller applied the new configuration, or refused it (why).
    Applied(Result<(), String>),
    Signal(Signal),
}

/// Lines to log, carried out by the shell with their fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Stopping(Signal),
    ReloadRefused(String),
    /// The XDP attachment changed (true: attached again).
    Xdp(bool),
    /// The local apiserver's verdict changed (true: answers again).
    LocalApiserver(bool),
    Traffic(String),
    Vrrp(Family, String),
    Health(String),
    /// The wait for state sync's peers is over: every peer answered (empty),
    /// or the deadline passed without these.
    SyncWelcomed(Vec<IpAddr>),
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start the VIP holder the configuration asks for, this fit.
    StartHolder(Fitness),
    /// Publish the first status, mark ready, print "vipd ready".
    Ready,
    /// Tell the holder what this node can do now.
    Fit(Fitness),
    /// Retry failed map writes; follow the interface's MAC.
    Upkeep,
    /// Read the XDP attachment (answered with [`Event::Xdp`]).
    CheckXdp,
    /// Build the periodic log's lines (answered with [`Event::Stats`]).
    ReadStats,
    /// Read the config file (answered with [`Event::ConfigRead`]).
    ReadConfig,
    /// Apply the new configuration (answered with [`Event::Applied`]).
    Apply(Box<Config>),
    /// Hand state sync the directory the maps hold now.
    Publish,
    /// Rebuild metrics and the status snapshot.
    Refresh,
    /// Take period N's etcd snapshot (answered, later, with
    /// [`Event::SnapshotDone`]).
    TakeSnapshot(u64),
    Log(Note),
    /// Stop, 1: not ready; metrics, sweeper, state sync and probes end.
    Quiesce,
    /// Stop, 2: the holder lets the VIP go (VRRP hands it over first).
    StopHolder,
    /// Stop, 3: the host changes are undone...
    RestoreHost,
    /// ... or, pinned, kept for the program that goes on forwarding.
    KeepHost,
    /// Stop, 4: leave.
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Setting up; no holder yet.
    Starting,
    /// The holder is being started.
    Holding,
    /// Serving; the status is next rebuilt at `refresh_at`.
    Running {
        refresh_at: Instant,
    },
    Stopping,
}

pub struct AgentState {
    settings: Settings,
    phase: Phase,
    /// The configuration running now (a reload is compared with it).
    running: Config,
    /// One accepted by the checks here, awaiting the controller.
    pending: Option<Box<Config>>,
    /// The config file's stamp at the last reload, and the last one seen:
    /// a changed file is read once it has stopped changing for a tick, so
    /// an editor's half-written file is not.
    loaded: Option<Stamp>,
    seen: Option<Stamp>,
    /// The holder acts on fitness: XDP is watched, changes logged.
    tracks: bool,
    xdp: bool,
    /// What the holder was last told.
    fitness: Fitness,
    /// The generation state sync's directory was built from.
    published: Option<u64>,
    last_counters: Vec<String>,
    last_vrrp: HashMap<Family, String>,
    last_backends: String,
    /// Whose turn the scheduled etcd snapshot is (`snapshot:` on).
    snapshot: Option<Duty>,
    /// The wait for state sync's peers, while it lasts.
    welcome: Option<Welcome>,
}

impl AgentState {
    pub fn new(settings: Settings) -> AgentState {
        let snapshot = settings.snapshot.map(Duty::new);
        let welcome = settings.welcome.clone().filter(|w| !w.waiting.is_empty());
        AgentState {
            running: settings.config.clone(),
            pending: None,
            loaded: settings.stamp,
            seen: settings.stamp,
            published: settings.sync,
            settings,
            phase: Phase::Starting,
            tracks: false,
            // Until read otherwise: this process just attached it.
            xdp: true,
            fitness: Fitness {
                xdp_attached: true,
                local_ok: true,
                serving: true,
                gate_v4: None,
                gate_v6: None,
                sync_wait: welcome.as_ref().map(Welcome::reason),
            },
            welcome,
            last_counters: vec![],
            last_vrrp: HashMap::new(),
            last_backends: String::new(),
            snapshot,
        }
    }

    pub fn on(&mut self, now: Instant, ev: Event) -> Vec<Effect> {
        let mut out = vec![];
        match (self.phase, ev) {
            (Phase::Stopping, _) => {}
            (_, Event::Signal(s)) => self.stop(s, &mut out),
            // Whenever it comes: the fitness follows at the next settle.
            (_, Event::SyncAnswered(peer)) => {
                if let Some(w) = &mut self.welcome {
                    w.waiting.remove(&peer);
                    if w.waiting.is_empty() {
                        self.welcome = None;
                        out.push(Effect::Log(Note::SyncWelcomed(vec![])));
                    }
                }
            }
            (Phase::Starting, Event::Started(v)) => {
                // The first certificate round is over: a node whose
                // certificates lack the VIP starts held out.
                self.fitness = self.fit_of(&v);
                self.phase = Phase::Holding;
                out.push(Effect::StartHolder(self.fitness.clone()));
            }
            (Phase::Holding, Event::HolderStarted { tracks }) => {
                self.tracks = tracks;
                self.phase = Phase::Running {
                    refresh_at: now + REFRESH_EVERY,
                };
                out.push(Effect::Ready);
            }
            (Phase::Running { refresh_at }, ev) => self.running(now, refresh_at, ev, &mut out),
            // Nothing else happens before the holder runs.
            (Phase::Starting | Phase::Holding, _) => {}
        }
        out
    }

    fn fit_of(&self, v: &Verdicts) -> Fitness {
        Fitness {
            xdp_attached: self.xdp,
            local_ok: v.local_ok,
            serving: v.serving,
            gate_v4: v.gate_v4.clone(),
            gate_v6: v.gate_v6.clone(),
            sync_wait: self.welcome.as_ref().map(Welcome::reason),
        }
    }

    fn running(&mut self, now: Instant, refresh_at: Instant, ev: Event, out: &mut Vec<Effect>) {
        match ev {
            Event::Settled(v) => self.settled(now, refresh_at, &v, out),
            Event::Second => {
                out.push(Effect::Upkeep);
                // The check spawns `ip`: only when it can move the VIP.
                if self.tracks {
                    out.push(Effect::CheckXdp);
                }
            }
            Event::Xdp(now_xdp) => {
                if now_xdp != self.xdp {
                    self.xdp = now_xdp;
                    out.push(Effect::Log(Note::Xdp(now_xdp)));
                }
            }
            Event::StatsDue => out.push(Effect::ReadStats),
            Event::Stats(lines) => self.stats(lines, out),
            Event::FileStamp(stamp) => {
                if stamp != self.loaded && stamp.is_some() {
                    if stamp == self.seen {
                        out.push(Effect::ReadConfig);
                    }
                    self.seen = stamp;
                }
            }
            Event::Hangup => out.push(Effect::ReadConfig),
            Event::SnapshotTick { unix, turn } => {
                if let Some(n) = self.snapshot.as_mut().and_then(|d| d.tick(unix, turn)) {
                    out.push(Effect::TakeSnapshot(n));
                }
            }
            Event::SnapshotDone {
                period,
                outcome,
                unix,
            } => {
                if let Some(d) = &mut self.snapshot {
                    d.finished(period, outcome, unix);
                }
            }
            Event::ConfigRead { stamp, config } => {
                self.loaded = stamp;
                self.seen = stamp;
                match config.and_then(|c| self.reloadable(c)) {
                    Ok(c) => {
                        self.pending = Some(c.clone());
                        out.push(Effect::Apply(c));
                    }
                    Err(why) => out.push(Effect::Log(Note::ReloadRefused(why))),
                }
            }
            Event::Applied(res) => {
                let pending = self.pending.take();
                match (res, pending) {
                    (Ok(()), Some(c)) => self.running = *c,
                    (Ok(()), None) => {}
                    (Err(why), _) => out.push(Effect::Log(Note::ReloadRefused(why))),
                }
            }
            Event::Signal(_)
            | Event::Started(_)
            | Event::HolderStarted { .. }
            | Event::SyncAnswered(_) => {}
        }
    }

    /// What the holder, state sync and the status must know after
    /// whatever happened.
    fn settled(&mut self, now: Instant, refresh_at: Instant, v: &Verdicts, out: &mut Vec<Effect>) {
        if let Some(w) = self.welcome.take_if(|w| now >= w.until) {
            out.push(Effect::Log(Note::SyncWelcomed(
                w.waiting.into_iter().collect(),
            )));
        }
        let f = self.fit_of(v);
        if f.local_ok != self.fitness.local_ok && self.tracks {
            out.push(Effect::Log(Note::LocalApiserver(f.local_ok)));
        }
        if f != self.fitness {
            self.fitness = f.clone();
            out.push(Effect::Fit(f));
        }
        if let Some(p) = self.published
            && p != v.generation
        {
            // Ids and members may have changed (probes, reloads): the
            // shells resolve with what the maps hold now.
            self.published = Some(v.generation);
            out.push(Effect::Publish);
        }
        if now >= refresh_at {
            self.phase = Phase::Running {
                refresh_at: now + REFRESH_EVERY,
            };
            out.push(Effect::Refresh);
        }
    }

    /// The periodic log says only what changed since it last spoke.
    fn stats(&mut self, lines: StatsLines, out: &mut Vec<Effect>) {
        if let Some(c) = lines.counters
            && c != self.last_counters
        {
            out.push(Effect::Log(Note::Traffic(c.join(" "))));
            self.last_counters = c;
        }
        for (family, line) in lines.vrrp {
            if self.last_vrrp.get(&family) != Some(&line) {
                out.push(Effect::Log(Note::Vrrp(family, line.clone())));
                self.last_vrrp.insert(family, line);
            }
        }
        if lines.backends != self.last_backends {
            out.push(Effect::Log(Note::Health(lines.backends.clone())));
            self.last_backends = lines.backends;
        }
    }

    /// The new file, unless it changes what only a restart may.
    fn reloadable(&self, new: Box<Config>) -> Result<Box<Config>, String> {
        match self.running.split().0.refuses(&new.split().0) {
            None => Ok(new),
            Some(field) => Err(format!(
                "{}: {field} changed; that takes a restart of vipd (systemctl restart vipd)",
                self.settings.config_path.display()
            )),
        }
    }

    /// The orderly stop, in its order: readiness and the side tasks go, the
    /// holder lets the VIP go (VRRP: the priority-0 advertisement, and the
    /// VIP kept until the new master is heard, while the program still
    /// forwards), then the host changes are undone unless the pinned
    /// program goes on forwarding with them.
    fn stop(&mut self, s: Signal, out: &mut Vec<Effect>) {
        let held = self.phase != Phase::Starting;
        self.phase = Phase::Stopping;
        out.push(Effect::Log(Note::Stopping(s)));
        out.push(Effect::Quiesce);
        if held {
            out.push(Effect::StopHolder);
        }
        out.push(if self.settings.pinned {
            Effect::KeepHost
        } else {
            Effect::RestoreHost
        });
        out.push(Effect::Exit);
    }
}

#[cfg(test)]
mod tests;
