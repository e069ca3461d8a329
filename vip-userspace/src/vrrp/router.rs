//! The async shell around one virtual router: it moves packets, time, link
//! state and priority changes into the [`Machine`] and carries out its
//! actions (send advertisements, add or remove the VIPs, announce them).
//! Everything that decides lives in the machine; this file only does.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use super::{
    Family,
    announce::{Announcer, ClaimWatch},
    auth,
    machine::{self, Action, Input, Machine, Params, Peer, State, Why},
    metrics::RouterStats,
    net::{self, NetError, Transport, VrrpSocket},
    packet::{self, Advert, DISCARD_LABELS, Discard, RxPolicy},
};
use super::{Priority, Vrid, VrrpPlan};
use crate::keys::KeySource;
use crate::{
    host,
    link::{SourceState, format_mac},
};

/// How often the link state is read (ioctl, cheap): a link that goes down
/// releases the VIPs within this time.
const LINK_POLL: Duration = Duration::from_millis(100);
/// A stopping router waits at most this long for its last advertisement and
/// the VIP removal.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// The same complaint (a discard reason, a send error) is logged at most
/// once per this period; the counters carry the totals.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One virtual router to run.
#[derive(Debug, Clone)]
pub struct RouterSpec {
    pub ifname: String,
    pub family: Family,
    pub plan: VrrpPlan,
    /// The VIPs of this family, sorted.
    pub vips: Vec<IpAddr>,
}

#[derive(Debug, Error)]
pub enum RouterError {
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{family:?} VRRP on {ifname}: no VIP of this family")]
    NoVips { ifname: String, family: Family },
    #[error("vrrp.auth_hmac.key_file: {0}")]
    Key(#[from] crate::keys::KeyError),
    #[error("{family:?} VRRP: its thread did not start: {source}")]
    Thread {
        family: Family,
        source: std::io::Error,
    },
}

/// The HMAC option's state ([`super::auth`]): the keys, our sequence, the
/// senders' marks.
struct Auth {
    keys: Arc<KeySource>,
    seq: auth::Sequencer,
    guard: auth::Guard,
}

/// What `vipd status` shows of one virtual router; kept by its task.
#[derive(Debug, Clone)]
pub struct RouterInfo {
    pub vrid: Vrid,
    /// Our address in the advertisements.
    pub source: IpAddr,
    /// The priority we advertise now (after tracking).
    pub priority: Priority,
    /// Why the certificate gate holds us out, if it does.
    pub hold: Option<String>,
    /// Every router whose advertisements passed the RFC 9568 7.1 checks.
    pub peers: BTreeMap<IpAddr, PeerSeen>,
    pub last_change: Option<ChangeSeen>,
    pub last_failover: Option<Failover>,
}

#[derive(Debug, Clone, Copy)]
pub struct PeerSeen {
    pub priority: Priority,
    /// The Max Adver Interval of its last advert (centiseconds): as a
    /// master, how often it advertises.
    pub interval_cs: u16,
    pub at: SystemTime,
    pub seen: Instant,
}

impl RouterInfo {
    /// The master as far as a Backup can tell at `now`: the router heard
    /// last with a non-zero priority (a Backup never advertises), if heard
    /// within its Master_Down_Interval. RFC 9568 6.3 and 6.4.2: a Backup
    /// learns Master_Adver_Interval from the master's adverts and declares
    /// it down only after 3 of those plus its skew time, so that, not this
    /// node's own interval, is "heard lately" (a master at 1 s behind a
    /// node configured for 100 ms would otherwise be "none" most of the
    /// time).
    pub fn heard_master(&self, now: Instant) -> Option<IpAddr> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.priority > Priority::LEAVING
                    && now.saturating_duration_since(p.seen)
                        < machine::master_down_interval(p.interval_cs, self.priority)
            })
            .max_by_key(|(_, p)| p.seen)
            .map(|(a, _)| *a)
    }
}

#[derive(Debug, Clone)]
pub struct ChangeSeen {
    pub at: SystemTime,
    pub from: State,
    pub to: State,
    pub why: String,
}

/// This node took the VIP over from another master.
#[derive(Debug, Clone)]
pub struct Failover {
    pub at: SystemTime,
    /// From the previous master's last advertisement to our takeover: how
    /// long the VIP had no working master as far as this node can see (the
    /// old master died at most one advert interval before its last advert
    /// would have been due).
    pub took: Duration,
    pub from: IpAddr,
    pub why: String,
}

enum Command {
    Priority(Priority),
    /// Keep out of the election (Initialize, no adverts, no VIP) while
    /// set, with the reason; `None` joins again.
    Hold(Option<String>),
    Stop,
}

/// The longest a stopping master keeps the VIPs after its priority-0
/// advert, waiting for a Backup to take over (which takes its skew time,
/// under one advert interval: RFC 9568 6.4.2).
pub const HANDOVER_MAX: Duration = Duration::from_secs(2);

/// The running router, owned by the agent.
pub struct RouterHandle {
    tx: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<State>,
    stats: Arc<RouterStats>,
    info: Arc<Mutex<RouterInfo>>,
    /// Closed when the router's thread ends.
    done: oneshot::Receiver<()>,
    family: Family,
}

impl RouterHandle {
    /// A copy of what status shows.
    pub fn info(&self) -> RouterInfo {
        lock(&self.info).clone()
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// One line for the periodic log: state and the non-zero counters.
    pub fn summary(&self) -> String {
        let s = &self.stats;
        let mut parts = vec![format!("state={}", self.state().label())];
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, v) in [
            ("adverts_sent", s.adverts_sent.get()),
            ("adverts_received", s.adverts_received.get()),
            ("send_errors", load(&s.send_errors)),
            ("became_master", s.became_master.get()),
            ("left_master", s.left_master.get()),
            ("split_brain", s.split_brain.get()),
            ("preempted_by_us", s.preempted_by_us.get()),
            ("preempted_by_peer", s.preempted_by_peer.get()),
            ("vip_errors", load(&s.vip_errors)),
            ("announce_errors", load(&s.announce_errors)),
        ] {
            if v > 0 {
                parts.push(format!("{name}={v}"));
            }
        }
        for (label, c) in DISCARD_LABELS.iter().zip(&s.discards) {
            let v = c.get();
            if v > 0 {
                parts.push(format!("discarded_{label}={v}"));
            }
        }
        parts.join(" ")
    }

    /// The effective priority after tracking (1..=255).
    pub fn set_priority(&self, p: Priority) {
        let _ = self.tx.send(Command::Priority(p.max(Priority(1))));
    }

    /// Holds the router out of the election with a reason (the certificate
    /// gate refusing this node), or lets it join again with `None`. A held
    /// Master sends priority 0 (RFC 9568 6.4.3) and gives the VIPs up at
    /// once; only a stop keeps them until the new master is heard.
    pub fn set_hold(&self, why: Option<String>) {
        let _ = self.tx.send(Command::Hold(why));
    }

    /// RFC 9568 6.4.3 Shutdown: a Master sends priority 0 so that a Backup
    /// takes over after its skew time, then the VIPs go. Asks only; see
    /// [`RouterHandle::stopped`].
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    /// Waits (bounded) until the router has stopped.
    pub async fn stopped(self) {
        let family = self.family;
        if tokio::time::timeout(STOP_TIMEOUT, self.done).await.is_err() {
            warn!(family = %label(family), "VRRP router did not stop in time");
        }
    }
}

/// Opens the sockets (so that a missing interface or address fails the
/// start, not later) and runs the router on a thread of its own, held out of
/// the election from the start when `hold` is set (see
/// [`RouterHandle::set_hold`]); `stats` are its series of the metrics
/// ([`super::metrics::VrrpMetrics::router`]).
///
/// A thread and a runtime of its own because the agent's runtime is one
/// thread, and whatever holds it (a map rewrite, an fsync on a busy disk, a
/// debug build under load) would hold the advertisements too: a master that
/// misses three (RFC 9568 6.4.3, Master_Down_Interval, 361 ms at 100 ms
/// adverts) is taken over while it still holds the VIP, and the split brain
/// that follows resets the flows the other node does not know. Seen in CI:
/// the master's agent loop stopped for about 400 ms while a discovery event
/// was handled, and the backup took the VIP. keepalived runs VRRP in a
/// process apart from its checkers for the same reason. The router shares
/// nothing with the agent but channels, atomics and a mutex held for copies.
pub fn spawn(
    spec: RouterSpec,
    hold: Option<String>,
    stats: RouterStats,
) -> Result<RouterHandle, RouterError> {
    if spec.vips.is_empty() {
        return Err(RouterError::NoVips {
            ifname: spec.ifname,
            family: spec.family,
        });
    }
    // Before any socket: a bad key file stops the start.
    let auth = match &spec.plan.auth_hmac {
        Some(a) => Some(Auth {
            keys: Arc::new(KeySource::open_for(&a.key_file, "VRRP")?),
            seq: auth::Sequencer::default(),
            guard: auth::Guard::new(a.time_window),
        }),
        None => None,
    };
    let source = net::source_address(&spec.ifname, spec.family, &spec.vips)?;
    let peers: Vec<IpAddr> = spec
        .plan
        .unicast_peers
        .iter()
        .filter(|p| Family::of(p) == spec.family)
        .copied()
        .collect();
    let transport = if peers.is_empty() {
        Transport::Multicast
    } else {
        Transport::Unicast(peers.clone())
    };
    let mac = crate::link::mac_address(&spec.ifname).map_err(NetError::from)?;
    let plan = &spec.plan;
    let machine = Machine::new(Params {
        vrid: plan.vrid,
        priority: plan.priority,
        advert_interval_cs: plan.advert_interval_cs,
        preempt: plan.preempt,
        preempt_delay: plan.preempt_delay,
        primary_addr: source,
        announce_count: plan.announce_count,
        announce_interval: plan.announce_interval,
        announce_refresh: plan.announce_refresh,
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let (state_tx, state) = watch::channel(State::Initialize);
    stats.held.set(i64::from(hold.is_some()));
    let stats = Arc::new(stats);
    let info = Arc::new(Mutex::new(RouterInfo {
        vrid: plan.vrid,
        source,
        priority: plan.priority,
        hold: hold.clone(),
        peers: BTreeMap::new(),
        last_change: None,
        last_failover: None,
    }));
    info!(
        family = %label(spec.family),
        vrid = %plan.vrid,
        priority = %plan.priority,
        interval_ms = u32::from(plan.advert_interval_cs) * 10,
        source = %source,
        transport = %if peers.is_empty() { "multicast" } else { "unicast" },
        auth_hmac = auth.as_ref().map(|a| a.guard.window().as_secs()).map_or("off".to_owned(), |w| format!("on, window {w} s")),
        vips = ?spec.vips,
        "VRRP router starting"
    );
    let family = spec.family;
    let (stats2, info2) = (stats.clone(), info.clone());
    // The sockets are registered with the runtime that polls them, so they
    // are opened on the router's thread; how that went comes back here.
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), RouterError>>(1);
    let (done_tx, done) = oneshot::channel();
    let thread_err = move |source| RouterError::Thread { family, source };
    let thread = move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready_tx.send(Err(thread_err(e)));
                return;
            }
        };
        rt.block_on(async move {
            let opened = (|| {
                Ok::<_, RouterError>((
                    VrrpSocket::open(&spec.ifname, spec.family, source, &transport)?,
                    Announcer::open(&spec.ifname)?,
                    ClaimWatch::open(&spec.ifname)?,
                ))
            })();
            let (sock, announcer, claims) = match opened {
                Ok(o) => o,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let router = Router {
                spec,
                source,
                peers,
                mac,
                sock,
                announcer,
                claims,
                machine,
                state: state_tx,
                stats: stats2,
                info: info2,
                last_log: HashMap::new(),
                source_state: SourceState::Usable,
                send_failed: false,
                intervals: HashMap::new(),
                auth,
            };
            let _ = ready_tx.send(Ok(()));
            router.run(rx, hold).await;
        });
        drop(done_tx);
    };
    std::thread::Builder::new()
        .name(format!("vrrp-{}", label(family)))
        .spawn(thread)
        .map_err(thread_err)?;
    // Opening takes milliseconds; a thread that ended without a word
    // panicked, and its message is on stderr.
    ready_rx.recv().unwrap_or_else(|_| {
        Err(thread_err(std::io::Error::other(
            "the VRRP thread ended before its sockets were open",
        )))
    })?;
    Ok(RouterHandle {
        tx,
        state,
        stats,
        info,
        done,
        family,
    })
}

struct Router {
    spec: RouterSpec,
    source: IpAddr,
    /// Unicast peers; empty: multicast.
    peers: Vec<IpAddr>,
    mac: [u8; 6],
    sock: VrrpSocket,
    announcer: Announcer,
    claims: ClaimWatch,
    machine: Machine,
    state: watch::Sender<State>,
    stats: Arc<RouterStats>,
    info: Arc<Mutex<RouterInfo>>,
    last_log: HashMap<&'static str, Instant>,
    /// The source address's state as last told to the machine
    /// ([`Input::CanSend`]); the machine starts assuming it usable.
    source_state: SourceState,
    /// A send failed since the last input: look at the source again.
    send_failed: bool,
    /// The advert interval each router was last heard with (logged once
    /// per change).
    intervals: HashMap<IpAddr, u16>,
    /// `vrrp.auth_hmac`; None: adverts go out and are taken unsigned.
    auth: Option<Auth>,
}

/// The info lock is held for copies only; a poisoned one (a panic while
/// copying) still holds consistent data.
fn lock(m: &Mutex<RouterInfo>) -> std::sync::MutexGuard<'_, RouterInfo> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Router {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>, mut hold: Option<String>) {
        // A VIP left by an earlier vipd that died as Master (SIGKILL, crash)
        // would keep answering ARP here while another node holds it. The
        // owner's addresses are real and stay.
        if self.spec.plan.priority != Priority::OWNER {
            self.remove_vips("left by an earlier run");
        }
        let mut link_up = self.link_up();
        if link_up && let Some(input) = self.source_change() {
            self.feed(input).await;
        }
        if let Some(w) = &hold {
            error!(family = %label(self.spec.family), reason = %w, "VRRP: this node will not hold the VIP");
        } else if link_up {
            self.feed(Input::Startup).await;
        } else {
            warn!(
                family = %label(self.spec.family),
                interface = %self.spec.ifname,
                "link is down; VRRP starts when it comes up"
            );
        }
        let mut link_tick = tokio::time::interval(LINK_POLL);
        link_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.machine.next_deadline();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            // Biased: commands first (a stop must not wait), then
            // advertisements before claims, so that a peer's takeover
            // advertisement is seen before its gratuitous ARP and the ARP is
            // not mistaken for a split brain.
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    Some(Command::Priority(p)) => {
                        if p != self.machine.priority() {
                            info!(family = %label(self.spec.family), from = %self.machine.priority(), to = %p, "VRRP priority changed");
                            self.feed(Input::Priority(p)).await;
                            lock(&self.info).priority = p;
                            self.stats.priority.set(i64::from(p.0));
                        }
                    }
                    Some(Command::Hold(why)) => {
                        let was_active = link_up && hold.is_none();
                        match &why {
                            Some(w) if hold.as_ref() != Some(w) => error!(family = %label(self.spec.family), reason = %w, "VRRP: this node will not hold the VIP"),
                            None if hold.is_some() => info!(family = %label(self.spec.family), "VRRP: the hold is lifted; joining the election"),
                            _ => {}
                        }
                        hold = why;
                        lock(&self.info).hold = hold.clone();
                        self.stats.held.set(i64::from(hold.is_some()));
                        let active = link_up && hold.is_none();
                        if active != was_active {
                            self.feed(if active { Input::Startup } else { Input::Shutdown }).await;
                        }
                    }
                    Some(Command::Stop) | None => {
                        self.hand_over().await;
                        break;
                    }
                },
                pkt = self.sock.recv() => match pkt {
                    Ok(pkt) => self.received(pkt).await,
                    Err(e) => self.complain("recv", &format!("receiving VRRP failed: {}", with_sources(&e))),
                },
                claim = self.claims.next() => match claim {
                    Ok(c) => {
                        if self.machine.state() == State::Master
                            && c.mac != self.mac
                            && self.spec.vips.contains(&c.addr)
                        {
                            self.feed(Input::Conflict { mac: c.mac }).await;
                        }
                    }
                    Err(e) => self.complain("claims", &format!("watching ARP/NA failed: {}", with_sources(&e))),
                },
                () = sleep => self.feed(Input::Timer).await,
                _ = link_tick.tick() => {
                    let now_up = self.link_up();
                    // Before the Startup of a link coming up: a source that
                    // cannot send yet must keep the machine from timing out
                    // into Master (RFC 9568 6.4.2).
                    if now_up && let Some(input) = self.source_change() {
                        self.feed(input).await;
                    }
                    if now_up != link_up {
                        link_up = now_up;
                        info!(family = %label(self.spec.family), interface = %self.spec.ifname, up = now_up, "link state changed");
                        if hold.is_none() {
                            self.feed(if now_up { Input::Startup } else { Input::Shutdown }).await;
                        }
                    }
                }
            }
        }
        debug!(family = %label(self.spec.family), "VRRP router stopped");
    }

    /// Stop: a Master sends priority 0 (RFC 9568 6.4.3) and keeps the VIPs
    /// until the Backup that takes over is heard, or for three advert
    /// intervals but never more than [`HANDOVER_MAX`], so
    /// that nothing sent to the VIP meanwhile lands on a node without it.
    async fn hand_over(&mut self) {
        // The machine's Shutdown actions, but the VIP removal held back
        // until the new master is heard (an owner's addresses stay anyway).
        let yielding =
            self.machine.state() == State::Master && self.spec.plan.priority != Priority::OWNER;
        let mut release = false;
        for a in self.machine.handle(Instant::now(), Input::Shutdown) {
            if yielding && a == Action::RemoveVips {
                release = true;
            } else {
                self.act(a).await;
            }
        }
        if !release {
            return;
        }
        let start = Instant::now();
        let wait = (Duration::from_millis(u64::from(self.spec.plan.advert_interval_cs) * 10) * 3)
            .min(HANDOVER_MAX);
        let deadline = start + wait;
        let heard = loop {
            tokio::select! {
                pkt = self.sock.recv() => {
                    let Ok(pkt) = pkt else { continue };
                    if let Ok(c) = self.check(&pkt)
                        && c.advert.priority > Priority::LEAVING
                    {
                        break Some(pkt.src);
                    }
                }
                () = tokio::time::sleep_until(deadline.into()) => break None,
            }
        };
        match heard {
            Some(peer) => {
                info!(family = %label(self.spec.family), peer = %peer, after_ms = start.elapsed().as_millis() as u64, "VRRP: the new master is heard; handing the VIP over")
            }
            None => {
                info!(family = %label(self.spec.family), waited_ms = wait.as_millis() as u64, "VRRP: no new master heard; releasing the VIP anyway")
            }
        }
        self.remove_vips("handed over");
    }

    fn link_up(&mut self) -> bool {
        match crate::link::link_up(&self.spec.ifname) {
            Ok(up) => up,
            Err(e) => {
                self.complain(
                    "link",
                    &format!("reading the link state failed: {}", with_sources(&e)),
                );
                false
            }
        }
    }

    /// The RFC 9568 7.1 receive checks with this router's settings.
    fn check(&mut self, pkt: &super::Received) -> Result<packet::Checked, Discard> {
        let own = [self.source];
        let policy = RxPolicy {
            vrid: self.spec.plan.vrid,
            family: self.spec.family,
            owner: self.machine.priority() == Priority::OWNER,
            unicast_peers: (!self.peers.is_empty()).then_some(self.peers.as_slice()),
            vips: &self.spec.vips,
            own_addrs: &own,
            signed: self.auth.is_some(),
        };
        let checked = packet::check(pkt, &policy)?;
        if let (Some(a), Some(t)) = (&mut self.auth, &checked.trailer) {
            let msg = &pkt.payload[..pkt.payload.len() - auth::TRAILER_LEN];
            a.guard
                .check(&a.keys.keys(), pkt.src, msg, t, SystemTime::now())?;
        }
        Ok(checked)
    }

    async fn received(&mut self, pkt: super::Received) {
        match self.check(&pkt) {
            Ok(c) => {
                self.stats.adverts_received.inc();
                lock(&self.info).peers.insert(
                    pkt.src,
                    PeerSeen {
                        priority: c.advert.priority,
                        interval_cs: c.advert.max_adver_int,
                        at: SystemTime::now(),
                        seen: Instant::now(),
                    },
                );
                self.note_interval(pkt.src, c.advert.priority, c.advert.max_adver_int);
                if !c.addrs_match {
                    // RFC 9568 7.1: the owner's list wins, but say so.
                    self.complain(
                        "addr_list",
                        &format!(
                            "the owner {} advertises {:?}, we have {:?}; align the VIP lists",
                            pkt.src, c.advert.addrs, self.spec.vips
                        ),
                    );
                }
                self.feed(Input::Advert {
                    src: pkt.src,
                    priority: c.advert.priority,
                    max_adver_int_cs: c.advert.max_adver_int,
                })
                .await;
            }
            Err(d) => {
                self.stats.discards[d.index()].inc();
                // Another VRID on the segment is normal; everything else is a
                // misconfiguration or a broken sender worth one line.
                if !matches!(d, Discard::OtherVrid(_)) {
                    self.complain(
                        d.label(),
                        &format!("VRRP packet from {} discarded: {d}", pkt.src),
                    );
                }
            }
        }
    }

    /// Says once per router and interval when a router that may be master
    /// (non-zero priority) advertises at another interval than ours, as
    /// keepalived does: a Backup follows the master's (RFC 9568 6.4.2
    /// learns Master_Adver_Interval from its adverts), so failover takes
    /// 3 of the master's intervals, not of ours.
    fn note_interval(&mut self, src: IpAddr, priority: Priority, interval_cs: u16) {
        let ours = self.spec.plan.advert_interval_cs;
        if priority == Priority::LEAVING || self.intervals.get(&src) == Some(&interval_cs) {
            return;
        }
        self.intervals.insert(src, interval_cs);
        if interval_cs != ours {
            info!(
                family = %label(self.spec.family),
                vrid = %self.spec.plan.vrid,
                peer = %src,
                "VRRP: {src} advertises every {}, our configured {}; while it is master this node uses the master's as RFC 9568 6.4.2 says (Master_Down_Interval {} ms)",
                interval(interval_cs),
                interval(ours),
                machine::master_down_interval(interval_cs, self.machine.priority()).as_millis()
            );
        }
    }

    async fn feed(&mut self, input: Input) {
        let mut next = Some(input);
        while let Some(input) = next.take() {
            let actions = self.machine.handle(Instant::now(), input);
            for a in actions {
                self.act(a).await;
            }
            // A failed send may mean the source just became unusable (DAD
            // restarted, the address removed): tell the machine now rather
            // than at the next link poll.
            if std::mem::take(&mut self.send_failed) {
                next = self.source_change();
            }
        }
    }

    /// Reads the source address's state; when it changed since the machine
    /// was last told, logs why and returns the [`Input::CanSend`] to feed.
    fn source_change(&mut self) -> Option<Input> {
        let state = match crate::link::source_state(&self.spec.ifname, self.source) {
            Ok(s) => s,
            Err(e) => {
                // Unknown: keep what the machine believes, say so once.
                self.complain(
                    "source_state",
                    &format!(
                        "reading the state of {} from /proc/net/if_inet6 failed: {e}",
                        self.source
                    ),
                );
                return None;
            }
        };
        if state == self.source_state {
            return None;
        }
        let family = tracing::field::display(label(self.spec.family));
        let usable = state == SourceState::Usable;
        if usable {
            info!(
                family,
                source = %self.source,
                interface = %self.spec.ifname,
                was = %self.source_state.describe(),
                "VRRP source address usable again; the election resumes (master-down timer restarted)"
            );
        } else {
            warn!(
                family,
                source = %self.source,
                interface = %self.spec.ifname,
                state = %state.describe(),
                "VRRP cannot send its advertisements from this source address; this node stays backup until it can (a master nobody hears would hold the VIP next to the real one)"
            );
        }
        self.source_state = state;
        Some(Input::CanSend(usable))
    }

    async fn act(&mut self, a: Action) {
        let family = tracing::field::display(label(self.spec.family));
        match a {
            Action::SendAdvert { priority } => self.send_advert(priority).await,
            Action::AddVips => {
                for vip in self.spec.vips.clone() {
                    match host::set_vip(&self.spec.ifname, vip, true) {
                        Ok(()) => info!(family, vip = %vip, "VIP added"),
                        Err(e) => {
                            self.stats.vip_errors.fetch_add(1, Ordering::Relaxed);
                            error!(family, vip = %vip, error = %e, "adding the VIP failed");
                        }
                    }
                }
            }
            Action::RemoveVips => {
                // The owner's addresses are real and stay.
                if self.spec.plan.priority != Priority::OWNER {
                    self.remove_vips("no longer master");
                }
            }
            Action::Announce => {
                for vip in &self.spec.vips {
                    if let Err(e) = self.announcer.announce(*vip) {
                        self.stats.announce_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(family, vip = %vip, error = %e, "announcing the VIP failed");
                    }
                }
            }
            Action::Transition { from, to, why } => {
                info!(
                    family,
                    vrid = %self.spec.plan.vrid,
                    from = %from.label(),
                    to = %to.label(),
                    why = %describe(why),
                    priority = %self.machine.priority(),
                    "VRRP state change"
                );
                if to == State::Master {
                    self.stats.became_master.inc();
                } else if from == State::Master {
                    self.stats.left_master.inc();
                }
                match why {
                    Why::Preempt { .. } => {
                        self.stats.preempted_by_us.inc();
                    }
                    Why::Preempted { .. } => {
                        self.stats.preempted_by_peer.inc();
                    }
                    _ => {}
                }
                self.record_change(from, to, why);
                self.stats.set_state(to);
                self.state.send_replace(to);
            }
            Action::SplitBrain { peer, won } => {
                self.stats.split_brain.inc();
                let (kind, peer) = match peer {
                    Peer::Router { addr, priority } => (
                        "split_brain_router",
                        format!("router {addr} priority {priority}"),
                    ),
                    Peer::Mac(m) => (
                        "split_brain_mac",
                        format!("MAC {} claims a VIP", format_mac(&m)),
                    ),
                };
                if won {
                    // A takeover burst of gratuitous ARPs from the other
                    // holder would give one line each: rate-limited per kind
                    // of peer, and counted.
                    self.complain(
                        kind,
                        &format!(
                            "VRRP split brain: another master on the segment ({peer}); we win and re-announce"
                        ),
                    );
                } else {
                    // Only when this mastership met the other master
                    // before (machine.rs, "Preemption or split brain"); a
                    // plain preemption is a state change, not this.
                    info!(
                        family,
                        vrid = %self.spec.plan.vrid,
                        peer = %peer,
                        "VRRP split brain resolved: the other master has a higher priority; yielding"
                    );
                }
            }
        }
    }

    /// Keeps the last change, and a takeover from a master that went
    /// silent or left (RFC 9568 6.4.2: Master_Down_Timer) as a failover.
    /// Becoming master at startup with no master ever heard is not one.
    fn record_change(&mut self, from: State, to: State, why: Why) {
        let now = SystemTime::now();
        let mut info = lock(&self.info);
        info.last_change = Some(ChangeSeen {
            at: now,
            from,
            to,
            why: describe(why),
        });
        if to != State::Master || !matches!(why, Why::MasterDown | Why::MasterLeft) {
            return;
        }
        let last = info
            .peers
            .iter()
            .max_by_key(|(_, p)| p.seen)
            .map(|(a, p)| (*a, p.seen));
        if let Some((from, seen)) = last {
            let took = seen.elapsed();
            info!(
                family = %label(self.spec.family),
                vrid = %self.spec.plan.vrid,
                previous_master = %from,
                took_ms = took.as_millis() as u64,
                "VRRP failover: this node took the VIP over"
            );
            self.stats.failover(took.as_secs_f64());
            info.last_failover = Some(Failover {
                at: now,
                took,
                from,
                why: describe(why),
            });
        }
    }

    async fn send_advert(&mut self, priority: Priority) {
        let advert = Advert {
            vrid: self.spec.plan.vrid,
            priority,
            max_adver_int: self.spec.plan.advert_interval_cs,
            addrs: self.spec.vips.clone(),
        };
        let dsts = if self.peers.is_empty() {
            vec![packet::group(self.spec.family)]
        } else {
            self.peers.clone()
        };
        // One sequence per advert: every unicast copy carries the same
        // trailer (the HMAC leaves the destination out).
        let signing = self.auth.as_mut().map(|a| {
            let window = a.guard.window();
            (a.keys.keys(), a.seq.next(SystemTime::now(), window))
        });
        for dst in dsts {
            let encoded = match &signing {
                Some((keys, seq)) => advert.encode_signed(self.source, dst, keys.signing(), *seq),
                None => advert.encode(self.source, dst),
            };
            let sent = match encoded {
                Ok(bytes) => self
                    .sock
                    .send(&bytes, dst)
                    .await
                    .map_err(|e| with_sources(&e)),
                Err(e) => Err(with_sources(&e)),
            };
            match sent {
                Ok(()) => {
                    self.stats.adverts_sent.inc();
                }
                Err(e) => {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    self.send_failed = true;
                    self.complain("send", &format!("sending VRRP to {dst} failed: {e}"));
                }
            }
        }
    }

    fn remove_vips(&mut self, why: &str) {
        // Only those present: the common case (a backup starting) then costs
        // one address listing and no `ip` run, and logs nothing.
        let present = crate::link::addresses(&self.spec.ifname).ok();
        for vip in self.spec.vips.clone() {
            if present.as_ref().is_some_and(|a| !a.contains(&vip)) {
                continue;
            }
            match host::set_vip(&self.spec.ifname, vip, false) {
                Ok(()) => {
                    info!(family = %label(self.spec.family), vip = %vip, why = %why, "VIP removed")
                }
                Err(e) => {
                    self.stats.vip_errors.fetch_add(1, Ordering::Relaxed);
                    error!(vip = %vip, error = %e, "removing the VIP failed; remove it by hand with `ip addr del`");
                }
            }
        }
    }

    /// Logs one line per kind per [`LOG_EVERY`].
    fn complain(&mut self, kind: &'static str, msg: &str) {
        let now = Instant::now();
        let due = self
            .last_log
            .get(kind)
            .is_none_or(|t| now.duration_since(*t) >= LOG_EVERY);
        if due {
            self.last_log.insert(kind, now);
            warn!(family = %label(self.spec.family), kind = %kind, "{msg}");
        } else {
            debug!(family = %label(self.spec.family), kind = %kind, "{msg}");
        }
    }
}

pub fn label(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

/// An error and its sources, `: `-separated: the OS error under a
/// [`NetError::Send`] is what tells EINVAL (a tentative source) from
/// ENETUNREACH.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(src) = next {
        s.push_str(": ");
        s.push_str(&src.to_string());
        next = src.source();
    }
    s
}

/// "100ms", "1s", "1500ms": an advert interval in centiseconds as the
/// config writes it.
fn interval(cs: u16) -> String {
    if cs.is_multiple_of(100) {
        format!("{}s", cs / 100)
    } else {
        format!("{}ms", u32::from(cs) * 10)
    }
}

fn describe(why: Why) -> String {
    match why {
        Why::Owner => "address owner (priority 255)".into(),
        Why::Startup => "startup".into(),
        Why::MasterDown => "no master heard for the master-down interval".into(),
        Why::MasterLeft => "the master left (priority 0)".into(),
        Why::Preempt { master, priority } => format!(
            "preemption: the master {master} has the lower priority {priority} (RFC 9568 6.4.2 Preempt_Mode)"
        ),
        Why::Preempted { by, priority } => {
            format!("preempted: {by} advertises priority {priority}")
        }
        Why::Outranked { by, priority } => {
            format!("split brain resolved: {by} advertises priority {priority}")
        }
        Why::StepDown { priority } => format!("our priority fell to {priority}"),
        Why::CannotSend => {
            "our advertisements cannot be sent (see the source address warning)".into()
        }
        Why::Shutdown => "shutdown or link down".into(),
    }
}

#[cfg(test)]
mod tests;
