//! `announce:` holds the VIPs across an L3 fabric (DESIGN.md, "Third shape"):
//! each VIP's host route goes into the announce table (`crate::route`) only
//! while this node can serve it, and the node's routing daemon (BIRD, FRR)
//! carries that table over BGP to the upstream router, which spreads clients
//! over every LB announcing it (ECMP). [`Announcing`] decides, purely, what
//! the table should hold; a task owning the netlink socket makes the kernel
//! table match it, on every change and once a second (so a failed write is
//! retried, a foreign route that goes away frees its VIP, and a route
//! someone deleted comes back).
//!
//! The VIP is also a local address here, on `lo` (the agent's
//! `prepare_host`, with arp_ignore=1/arp_announce=2 as for stacked mode dsr),
//! for as long as vipd runs or its pinned program forwards. The router sends
//! packets for the VIP to this node's link address; the XDP program takes
//! those of a service before the kernel sees them, so the data path needs
//! no address. The kernel needs one for the rest: without it, a packet for
//! the VIP that the program passes (ICMP, a port with no service, mode nat's
//! first packet to an unresolved neighbour is already translated and is
//! fine) is forwarded (mode nat turns forwarding on) back out the default
//! route to the router, which sends it back here until its TTL runs out.
//! With the VIP on `lo` the kernel answers or refuses it itself, and the
//! node's own connections to the VIP stay local: FRR's `ip import-table`
//! also installs the blackhole in the main table (deploy/frr-vipd.conf),
//! which a local address overrides (the local table is looked up first).
//! On `lo`, not the interface: it is not announced on the segment (ARP is
//! answered only for the interface's own addresses with arp_ignore=1), and a
//! BIRD `protocol direct` would only pick it up if configured for `lo`.

pub mod metrics;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use tokio::{sync::watch, task::JoinHandle};
use tracing::{error, info, warn};

use super::{Fitness, Holding, Stopping, VipHolder};
use crate::{
    config::Config,
    route::{Holder, RouteAnnouncer, RouteError, RouteTable, TableView},
    status::{self, RouteStatus},
    vrrp::Family,
};
use metrics::AnnounceMetrics;

/// How often the task compares the table with what it should hold, besides
/// every change.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// The longest the stop waits for the withdrawals themselves (a netlink
/// round trip each; the kernel does not block on them).
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a VIP's route is not in the table. The label is the `reason` of
/// `vipd_announce_withdrawals_total` and of `vipd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// No XDP program on the interface: packets routed here would reach
    /// the kernel, which does not forward them to a backend.
    XdpDetached,
    /// No backend passes its probe and the gate (every service fails open):
    /// an LB that cannot reach any backend is one the router should skip.
    /// If every LB is in that state, every route goes and the VIP is
    /// unreachable, which it effectively is already.
    NoBackend,
    /// The certificate gate refuses this family's VIPs, for this reason.
    CertGate(String),
    /// State sync's peers have not all sent this node their flows since it
    /// started with empty tables ([`super::Fitness::sync_wait`]).
    SyncWait(String),
    /// An orderly stop: withdrawn before the program stops forwarding.
    Stopping,
    /// A route of vipd's for an address that is no VIP of this
    /// configuration (an earlier run's).
    Unconfigured,
}

impl Why {
    pub fn label(&self) -> &'static str {
        match self {
            Why::XdpDetached => "xdp_detached",
            Why::NoBackend => "no_backend",
            Why::CertGate(_) => "cert_gate",
            Why::SyncWait(_) => "sync_wait",
            Why::Stopping => "stopping",
            Why::Unconfigured => "unconfigured",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Why::XdpDetached => {
                "the XDP program is not attached: this node cannot forward for the VIP".into()
            }
            Why::NoBackend => "no backend passes its probe".into(),
            Why::CertGate(why) => format!("certificate gate: {why}"),
            Why::SyncWait(why) => why.clone(),
            Why::Stopping => "vipd is stopping".into(),
            Why::Unconfigured => "not a VIP of the configuration (left by an earlier run)".into(),
        }
    }
}

/// Whether this node may announce `vip` now, and if not the first reason
/// (in the order an operator fixes them: forwarding, backends, gate; then
/// the wait for state sync's peers, which ends by itself).
/// `local_ok` does not count: another backend serves the VIP just as well.
pub fn verdict(f: &Fitness, vip: IpAddr) -> Result<(), Why> {
    if !f.xdp_attached {
        return Err(Why::XdpDetached);
    }
    if !f.serving {
        return Err(Why::NoBackend);
    }
    if let Some(why) = f.gate(Family::of(&vip)) {
        return Err(Why::CertGate(why.clone()));
    }
    if let Some(why) = &f.sync_wait {
        return Err(Why::SyncWait(why.clone()));
    }
    Ok(())
}

/// What changed for one VIP's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Install(IpAddr),
    Withdraw(IpAddr, Why),
}

/// What each VIP's route should be: the desired state the task carries
/// out. `Err`: not installed, and why.
pub type Wanted = BTreeMap<IpAddr, Result<(), Why>>;

/// The decisions, pure: the agent's unit tests drive it as the holder does.
#[derive(Debug, Clone)]
pub struct Announcing {
    vips: Vec<IpAddr>,
    /// Empty until the first fitness: the first one decides every VIP.
    want: Wanted,
    stopping: bool,
}

impl Announcing {
    pub fn new(vips: &[IpAddr]) -> Announcing {
        Announcing {
            vips: vips.to_vec(),
            want: Wanted::new(),
            stopping: false,
        }
    }

    /// The commands `f` calls for: only what changed. Nothing once
    /// stopping: the routes stay withdrawn whatever the node can do.
    pub fn fit(&mut self, f: &Fitness) -> Vec<Command> {
        if self.stopping {
            return vec![];
        }
        let mut out = vec![];
        for &vip in &self.vips {
            let v = verdict(f, vip);
            if self.want.get(&vip) != Some(&v) {
                out.push(match &v {
                    Ok(()) => Command::Install(vip),
                    Err(why) => Command::Withdraw(vip, why.clone()),
                });
                self.want.insert(vip, v);
            }
        }
        out
    }

    /// The orderly stop: every route that is (or was to be) installed goes.
    pub fn stop(&mut self) -> Vec<Command> {
        self.stopping = true;
        let mut out = vec![];
        for &vip in &self.vips {
            if self.want.get(&vip) != Some(&Err(Why::Stopping)) {
                if self.want.get(&vip).is_some_and(Result::is_ok) {
                    out.push(Command::Withdraw(vip, Why::Stopping));
                }
                self.want.insert(vip, Err(Why::Stopping));
            }
        }
        out
    }

    pub fn wanted(&self) -> &Wanted {
        &self.want
    }
}

/// What the task is told: the routes wanted, and whether this is the stop
/// (withdraw and end).
#[derive(Debug, Clone, Default)]
struct Desired {
    want: Wanted,
    stopping: bool,
}

/// Each VIP's route as the task last saw and made it, for status and
/// metrics; transitions are logged here, once each.
struct Book {
    table: u32,
    vips: BTreeMap<IpAddr, RouteStatus>,
    metrics: AnnounceMetrics,
}

impl Book {
    fn new(table: u32, vips: &[IpAddr], metrics: AnnounceMetrics) -> Book {
        for vip in vips {
            metrics.installed(*vip, false);
        }
        Book {
            table,
            vips: vips
                .iter()
                .map(|&vip| (vip, RouteStatus::new(vip, table)))
                .collect(),
            metrics,
        }
    }

    fn entry(&mut self, vip: IpAddr) -> &mut RouteStatus {
        let table = self.table;
        self.vips
            .entry(vip)
            .or_insert_with(|| RouteStatus::new(vip, table))
    }

    fn installed(&mut self, vip: IpAddr) {
        // The series are shared handles; a copy leaves `self` to the entry.
        let m = self.metrics.clone();
        let table = self.table;
        let e = self.entry(vip);
        if !e.installed || e.since_unix_ms.is_none() {
            info!(vip = %vip, table, "VIP route installed: the routing daemon announces this node for it");
            e.since_unix_ms = Some(status::unix_ms(SystemTime::now()));
        }
        e.installed = true;
        e.reason = None;
        e.why = None;
        e.blocked_by = None;
        e.error = None;
        m.installed(vip, true);
    }

    /// vipd's route for `vip` is gone (`removed`: by this call) or was
    /// never there, for `why`.
    fn withdrawn(&mut self, vip: IpAddr, why: &Why, removed: bool) {
        // The series are shared handles; a copy leaves `self` to the entry.
        let m = self.metrics.clone();
        let table = self.table;
        let e = self.entry(vip);
        if removed {
            warn!(vip = %vip, table, reason = why.label(), why = %why.describe(), "VIP route withdrawn: the router stops sending this VIP's new flows here");
            *e.withdrawals.entry(why.label().to_owned()).or_default() += 1;
            m.withdrawn(vip, why.label());
        }
        if removed || e.installed || e.since_unix_ms.is_none() {
            e.since_unix_ms = Some(status::unix_ms(SystemTime::now()));
        }
        e.installed = false;
        e.reason = Some(why.label().to_owned());
        e.why = Some(why.describe());
        e.error = None;
        m.installed(vip, false);
    }

    fn blocked(&mut self, vip: IpAddr, by: String) {
        // The series are shared handles; a copy leaves `self` to the entry.
        let m = self.metrics.clone();
        let table = self.table;
        let e = self.entry(vip);
        if e.blocked_by.as_ref() != Some(&by) {
            error!(vip = %vip, route = %by, "{vip} has a route in table {table} that vipd did not install; vipd leaves it alone and does not announce {vip}: remove it (`ip route del {vip} table {table}`) or give vipd a table of its own (announce.table)");
        }
        e.installed = false;
        e.blocked_by = Some(by);
        m.installed(vip, false);
    }

    fn unblocked(&mut self, vip: IpAddr) {
        if let Some(e) = self.vips.get_mut(&vip)
            && e.blocked_by.take().is_some()
        {
            info!(vip = %vip, "the foreign route for the VIP is gone");
        }
    }

    fn failed(&mut self, vip: IpAddr, e: &RouteError) {
        let msg = e.to_string();
        let entry = self.entry(vip);
        if entry.error.as_ref() != Some(&msg) {
            error!(vip = %vip, error = %msg, "changing the VIP's route failed; retrying every second");
        }
        entry.error = Some(msg);
    }

    fn snapshot(&self, configured: &[IpAddr]) -> Vec<RouteStatus> {
        configured
            .iter()
            .filter_map(|v| self.vips.get(v).cloned())
            .collect()
    }
}

/// Makes the table hold what `d` wants: vipd's routes added and removed,
/// foreign ones reported and never touched (`TableView::plan`).
async fn reconcile(a: &RouteAnnouncer, d: &Desired, book: &mut Book) -> Result<(), RouteError> {
    let view: TableView = a.list().await?;
    let wanted: Vec<IpAddr> = d
        .want
        .iter()
        .filter(|(_, w)| w.is_ok())
        .map(|(v, _)| *v)
        .collect();
    let plan = view.plan(&wanted);
    for vip in plan.withdraw {
        let why = match d.want.get(&vip) {
            Some(Err(why)) => why.clone(),
            _ => Why::Unconfigured,
        };
        match a.withdraw(vip).await {
            Ok(removed) => book.withdrawn(vip, &why, removed),
            Err(e) => book.failed(vip, &e),
        }
    }
    for vip in plan.announce {
        match a.announce(vip).await {
            Ok(_) => book.installed(vip),
            Err(RouteError::Occupied { route, .. }) => book.blocked(vip, route.to_string()),
            Err(e) => book.failed(vip, &e),
        }
    }
    for (&vip, w) in &d.want {
        match view.holder(vip) {
            Holder::Foreign(r) => book.blocked(vip, r.to_string()),
            Holder::Vipd if w.is_ok() => {
                book.unblocked(vip);
                book.installed(vip);
            }
            Holder::Nobody => {
                book.unblocked(vip);
                if let Err(why) = w {
                    book.withdrawn(vip, why, false);
                }
            }
            Holder::Vipd => book.unblocked(vip),
        }
    }
    Ok(())
}

/// The stop: every configured VIP's route withdrawn, without reading the
/// table first (a withdrawal of a route that is not there is answered
/// ESRCH, which `withdraw` counts as done).
async fn withdraw_all(a: &RouteAnnouncer, vips: &[IpAddr], book: &mut Book) {
    for &vip in vips {
        match a.withdraw(vip).await {
            Ok(removed) => book.withdrawn(vip, &Why::Stopping, removed),
            Err(e) => book.failed(vip, &e),
        }
    }
}

/// The task that owns the netlink socket.
async fn run(
    a: RouteAnnouncer,
    vips: Vec<IpAddr>,
    mut book: Book,
    mut rx: watch::Receiver<Desired>,
    shared: Arc<Mutex<Vec<RouteStatus>>>,
) {
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    let mut list_failed = false;
    loop {
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
        let d = rx.borrow_and_update().clone();
        if d.stopping {
            withdraw_all(&a, &vips, &mut book).await;
            publish(&shared, &book, &vips);
            return;
        }
        match reconcile(&a, &d, &mut book).await {
            Ok(()) => list_failed = false,
            Err(e) => {
                if !list_failed {
                    error!(error = %e, "reading the announce table failed; retrying every second");
                }
                list_failed = true;
            }
        }
        publish(&shared, &book, &vips);
    }
}

fn publish(shared: &Mutex<Vec<RouteStatus>>, book: &Book, vips: &[IpAddr]) {
    *shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = book.snapshot(vips);
}

/// Whether a process that announces routes (BIRD, FRR's zebra or bgpd,
/// GoBGP) runs in this network namespace: `/proc/PID/ns/net` names the
/// same namespace as ours. `None`: /proc could not be read. Read once at
/// start, to warn; vipd keeps its routes right whether anyone carries them.
fn routing_daemon_seen() -> Option<bool> {
    const DAEMONS: [&str; 5] = ["bird", "bird6", "zebra", "bgpd", "gobgpd"];
    let ours = std::fs::read_link("/proc/self/ns/net").ok()?;
    let procs = std::fs::read_dir("/proc").ok()?;
    Some(procs.flatten().any(|p| {
        let dir = p.path();
        std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| DAEMONS.contains(&c.trim()))
            && std::fs::read_link(dir.join("ns/net")).is_ok_and(|n| n == ours)
    }))
}

pub struct Announce {
    table: RouteTable,
    drain: Duration,
    decide: Announcing,
    tx: watch::Sender<Desired>,
    task: JoinHandle<()>,
    shared: Arc<Mutex<Vec<RouteStatus>>>,
}

/// At the very start, before anything slow (loading the program, the
/// first certificate round, state sync's wait): withdraws every route of
/// vipd's in `announce.table`, when no program of a previous run forwards
/// for it (`adopting` false: unpinned, or no pins to adopt). A vipd that was
/// killed or crashed left its routes, and the routing daemon announces them
/// as soon as it can, after a link comes back say, while this node's
/// kernel answers the VIP's flows with RSTs (the VIP is still on `lo`, no
/// program to translate). Seen in the fabric lab: a third of 200 watch
/// streams reset at an LB's rejoin, whenever BGP came up before vipd's own
/// first pass. With a pinned program still attached the routes stay: it
/// forwards, and a restart loses nothing. Nothing here is fatal: the
/// holder's start reports what fails.
pub async fn withdraw_leftovers(cfg: &Config, adopting: bool) {
    let Some(s) = &cfg.announce else { return };
    if adopting {
        return;
    }
    let Ok(table) = s.route_table() else { return };
    let Ok(a) = RouteAnnouncer::new(table) else {
        return;
    };
    let Ok(view) = a.list().await else { return };
    for vip in view.ours {
        match a.withdraw(vip).await {
            Ok(true) => warn!(
                vip = %vip,
                table = table.table,
                "announce: withdrew a route a previous vipd left (it was killed or crashed, and no program forwards for it now); announced again once this node can serve"
            ),
            Ok(false) => {}
            Err(e) => {
                warn!(vip = %vip, error = %e, "announce: withdrawing a previous vipd's route failed; the holder's start tries again")
            }
        }
    }
}

impl Announce {
    /// Opens the netlink socket, reads the table (a previous run's routes
    /// for VIPs no longer configured go, foreign ones are reported), checks
    /// that routes may be changed here, installs the routes `f` allows and
    /// hands the table to its task.
    pub async fn start(cfg: &Config, f: &Fitness, metrics: AnnounceMetrics) -> Result<Announce> {
        let Some(s) = &cfg.announce else {
            anyhow::bail!("no announce section");
        };
        let table = s.route_table().map_err(|e| e.under("announce"))?;
        let drain = s.drain;
        let vips = cfg.vips();
        let a = RouteAnnouncer::new(table).context("announce: opening the netlink socket")?;
        let view = a.list().await.context("announce: reading the routes")?;
        // Changing routes needs CAP_NET_ADMIN; reading them does not. Find
        // out now rather than at the first install, which may come much
        // later: deleting a route that is not there is answered EPERM
        // without the capability and ESRCH with it (a foreign route for the
        // VIP is not touched: the request names vipd's proto and type).
        if let Some(&probe) = vips.iter().find(|v| view.holder(**v) != Holder::Vipd) {
            a.withdraw(probe).await.with_context(|| {
                format!(
                    "announce: vipd cannot change the routes of table {}",
                    table.table
                )
            })?;
        }
        if routing_daemon_seen() == Some(false) {
            warn!(
                table = table.table,
                "no routing daemon (bird, zebra, bgpd, gobgpd) seen in this network namespace: the VIP routes are installed, but nobody announces them; start BIRD or FRR with deploy/bird-vipd.conf or deploy/frr-vipd.conf"
            );
        }
        let mut decide = Announcing::new(&vips);
        let mut book = Book::new(table.table, &vips, metrics);
        decide.fit(f);
        let desired = Desired {
            want: decide.wanted().clone(),
            stopping: false,
        };
        // The first pass before "ready": leftovers gone, the first routes in.
        reconcile(&a, &desired, &mut book)
            .await
            .context("announce: the first pass over the table")?;
        let shared = Arc::new(Mutex::new(book.snapshot(&vips)));
        let (tx, rx) = watch::channel(desired);
        let task = tokio::spawn(run(a, vips, book, rx, shared.clone()));
        info!(
            table = table.table,
            proto = table.proto,
            drain_ms = drain.as_millis() as u64,
            "announce: VIP routes follow this node's fitness"
        );
        Ok(Announce {
            table,
            drain,
            decide,
            tx,
            task,
            shared,
        })
    }

    fn send(&self) {
        let want = self.decide.wanted().clone();
        self.tx.send_modify(|d| d.want = want);
    }
}

impl VipHolder for Announce {
    fn label(&self) -> &'static str {
        "announce"
    }

    fn tracks(&self) -> bool {
        true
    }

    fn fit(&mut self, f: &Fitness) {
        if !self.decide.fit(f).is_empty() {
            self.send();
        }
    }

    /// Holding along with every other node that announces: while some
    /// VIP's route is wanted in the table (this node can serve it). The
    /// snapshot's turn then goes by address rank (`snapshot::duty`).
    fn holding(&self) -> Holding {
        if self.decide.wanted().values().any(Result::is_ok) {
            Holding::Shared
        } else {
            Holding::No
        }
    }

    /// A reload never changes the VIPs (`Fixed::refuses` refuses it:
    /// they are on `lo` since start).
    fn set_vips(&mut self, _: &[IpAddr]) {}

    fn routes(&self) -> Vec<RouteStatus> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Make-before-break: the routes go first, so the router stops sending
    /// new flows here, while the program (attached until this process
    /// exits, or pinned beyond) keeps forwarding what still arrives; then
    /// the drain wait, bounded by `announce.drain`.
    fn stop(mut self: Box<Self>) -> Stopping {
        self.decide.stop();
        self.tx.send_modify(|d| d.stopping = true);
        let (task, drain, table) = (self.task, self.drain, self.table.table);
        Box::pin(async move {
            let t = std::time::Instant::now();
            if tokio::time::timeout(WITHDRAW_TIMEOUT, task).await.is_err() {
                error!(
                    table,
                    "withdrawing the VIP routes took over {WITHDRAW_TIMEOUT:?}; check `ip route show table {table}`"
                );
            }
            info!(
                took_ms = t.elapsed().as_millis() as u64,
                drain_ms = drain.as_millis() as u64,
                "VIP routes withdrawn; draining: the program forwards what still arrives"
            );
            tokio::time::sleep(drain).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn fit() -> Fitness {
        Fitness {
            xdp_attached: true,
            local_ok: true,
            serving: true,
            gate_v4: None,
            gate_v6: None,
            sync_wait: None,
        }
    }

    /// Each failure of the node, and what it means for an IPv4 VIP.
    #[test]
    fn verdict_table() {
        struct Case {
            desc: &'static str,
            f: Fitness,
            want: Result<(), Why>,
        }
        let v4 = ip("10.78.100.1");
        let cases = [
            Case {
                desc: "everything fine",
                f: fit(),
                want: Ok(()),
            },
            Case {
                desc: "the local apiserver alone failing does not matter",
                f: Fitness {
                    local_ok: false,
                    ..fit()
                },
                want: Ok(()),
            },
            Case {
                desc: "no XDP program: first, whatever else fails",
                f: Fitness {
                    xdp_attached: false,
                    serving: false,
                    ..fit()
                },
                want: Err(Why::XdpDetached),
            },
            Case {
                desc: "no backend serving",
                f: Fitness {
                    serving: false,
                    ..fit()
                },
                want: Err(Why::NoBackend),
            },
            Case {
                desc: "the gate refuses IPv4",
                f: Fitness {
                    gate_v4: Some("no SAN".into()),
                    ..fit()
                },
                want: Err(Why::CertGate("no SAN".into())),
            },
            Case {
                desc: "the gate refuses IPv6 only",
                f: Fitness {
                    gate_v6: Some("no SAN".into()),
                    ..fit()
                },
                want: Ok(()),
            },
            Case {
                desc: "state sync's peers have not all sent their flows",
                f: Fitness {
                    sync_wait: Some("waiting".into()),
                    ..fit()
                },
                want: Err(Why::SyncWait("waiting".into())),
            },
            Case {
                desc: "the gate comes before the wait: it needs the operator",
                f: Fitness {
                    gate_v4: Some("no SAN".into()),
                    sync_wait: Some("waiting".into()),
                    ..fit()
                },
                want: Err(Why::CertGate("no SAN".into())),
            },
        ];
        for c in cases {
            assert_eq!(verdict(&c.f, v4), c.want, "{}", c.desc);
        }
    }

    #[test]
    fn only_changes_are_commanded_and_the_stop_is_final() {
        let (a, b) = (ip("10.78.100.1"), ip("fd78:100::1"));
        let mut d = Announcing::new(&[a, b]);
        let gate6 = Fitness {
            gate_v6: Some("no SAN".into()),
            ..fit()
        };
        assert_eq!(
            d.fit(&gate6),
            vec![
                Command::Install(a),
                Command::Withdraw(b, Why::CertGate("no SAN".into()))
            ],
            "the first fitness decides every VIP"
        );
        assert_eq!(d.fit(&gate6), vec![], "nothing changed");
        assert_eq!(d.fit(&fit()), vec![Command::Install(b)]);
        let down = Fitness {
            serving: false,
            ..fit()
        };
        assert_eq!(
            d.fit(&down),
            vec![
                Command::Withdraw(a, Why::NoBackend),
                Command::Withdraw(b, Why::NoBackend)
            ]
        );
        assert_eq!(
            d.fit(&fit()),
            vec![Command::Install(a), Command::Install(b)]
        );
        assert_eq!(
            d.stop(),
            vec![
                Command::Withdraw(a, Why::Stopping),
                Command::Withdraw(b, Why::Stopping)
            ]
        );
        assert_eq!(d.fit(&fit()), vec![], "stopping: never installed again");
        assert!(d.wanted().values().all(|w| *w == Err(Why::Stopping)));
    }

    #[test]
    fn the_book_counts_withdrawals_and_says_why() {
        let vip = ip("10.78.100.1");
        let mut b = Book::new(198, &[vip], AnnounceMetrics::default());
        b.withdrawn(vip, &Why::NoBackend, false);
        let s = &b.snapshot(&[vip])[0];
        assert!(!s.installed);
        assert_eq!(s.reason.as_deref(), Some("no_backend"));
        assert!(
            s.withdrawals.is_empty(),
            "never installed: nothing withdrawn"
        );
        b.installed(vip);
        assert!(b.snapshot(&[vip])[0].installed);
        assert_eq!(b.snapshot(&[vip])[0].reason, None);
        b.withdrawn(vip, &Why::XdpDetached, true);
        b.installed(vip);
        b.withdrawn(vip, &Why::XdpDetached, true);
        let s = &b.snapshot(&[vip])[0];
        assert_eq!(s.withdrawals.get("xdp_detached"), Some(&2));
        assert_eq!(s.reason.as_deref(), Some("xdp_detached"));
        b.blocked(vip, "blackhole 10.78.100.1/32 table 198 proto 4".into());
        assert!(b.snapshot(&[vip])[0].blocked_by.is_some());
        b.unblocked(vip);
        assert!(b.snapshot(&[vip])[0].blocked_by.is_none());
        // A leftover VIP is counted but not shown.
        b.withdrawn(ip("10.78.100.9"), &Why::Unconfigured, true);
        assert_eq!(b.snapshot(&[vip]).len(), 1);
    }
}
