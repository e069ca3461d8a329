//! Backend MACs from the kernel's neighbour table (mode dsr), and which
//! backends are this node's own apiserver.
//!
//! Mode dsr rewrites only the destination MAC, so the program needs each
//! remote backend's MAC on the segment. vipd does not resolve addresses
//! itself: the kernel already does (ARP, RFC 826; IPv6 ND, RFC 4861), and the
//! probes talk to every backend, which keeps each entry resolved. vipd reads
//! the table over rtnetlink and follows it (RTM_NEWNEIGH/RTM_DELNEIGH on
//! RTNLGRP_NEIGH, plus a re-read every [`RESYNC_EVERY`] because netlink
//! multicast may drop messages when the socket's buffer is full).
//!
//! The part that decides is [`Tracker`]: pure, driven with made-up instants.
//! The part that talks to the kernel is [`spawn`]: one task owns the
//! tracker and the socket, and sends the agent a [`NeighEvent`] whenever a
//! backend's MAC appears, moves or goes.
//!
//! A MAC that changed under a REACHABLE entry is not noticed by the kernel
//! until the entry ages out (base_reachable_time 30 s, then the DELAY and
//! PROBE states: up to about 50 s, net/core/neighbour.c), and the old MAC
//! gets every frame meanwhile. A failing probe is the sign: vipd then asks
//! the kernel to resolve the address afresh ([`Verify::Recheck`]: delete
//! the dynamic entry and create it again with NTF_USE, which sends a
//! broadcast solicitation at once, neigh_event_send), keeping the last MAC
//! until the answer comes or [`VERIFY_FOR`] passes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use futures_util::{StreamExt as _, TryStreamExt as _};
use rtnetlink::sys::AsyncSocket as _;
use rtnetlink::{
    Handle,
    packet_core::NetlinkPayload,
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
    },
};
use thiserror::Error;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::warn;

use crate::config::{Config, Mode};

/// How long a re-resolution may take before a backend whose entry is not
/// usable again counts as having no neighbour: the kernel's broadcast
/// solicitations (mcast_solicit 3, retrans_time 1 s) end in FAILED after
/// about 3 s.
pub const VERIFY_FOR: Duration = Duration::from_secs(5);
/// The least time between two re-resolutions of one address: a backend
/// that is simply down fails every probe, and one broadcast per probe
/// interval would be noise on the segment.
pub const VERIFY_GAP: Duration = Duration::from_secs(3);
/// The whole table is read again this often, and addresses still without a
/// usable entry are asked for again.
pub const RESYNC_EVERY: Duration = Duration::from_secs(10);

/// A neighbour entry's state (NUD_*, include/uapi/linux/neighbour.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nud {
    Incomplete,
    Reachable,
    Stale,
    Delay,
    Probe,
    Failed,
    Noarp,
    Permanent,
    None,
}

impl Nud {
    /// Set by an administrator (`ip neigh add ... nud permanent|noarp`):
    /// never deleted or re-resolved by vipd.
    fn admin(self) -> bool {
        matches!(self, Nud::Permanent | Nud::Noarp)
    }
}

impl From<NeighbourState> for Nud {
    fn from(s: NeighbourState) -> Nud {
        match s {
            NeighbourState::Incomplete => Nud::Incomplete,
            NeighbourState::Reachable => Nud::Reachable,
            NeighbourState::Stale => Nud::Stale,
            NeighbourState::Delay => Nud::Delay,
            NeighbourState::Probe => Nud::Probe,
            NeighbourState::Failed => Nud::Failed,
            NeighbourState::Noarp => Nud::Noarp,
            NeighbourState::Permanent => Nud::Permanent,
            _ => Nud::None,
        }
    }
}

/// What the kernel's table holds for one address on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub state: Nud,
    pub mac: Option<[u8; 6]>,
}

/// The MAC frames may be sent to, if the entry gives one. REACHABLE,
/// STALE, DELAY and PROBE all hold the address the kernel itself sends to
/// (STALE is merely unconfirmed: the kernel keeps using it and re-checks on
/// use, RFC 4861 section 7.3.3); PERMANENT and NOARP are an administrator's.
/// INCOMPLETE has no address yet and FAILED's answers stopped. A zero or
/// multicast MAC is no backend's.
pub fn usable(e: Option<&Entry>) -> Option<[u8; 6]> {
    let e = e?;
    let mac = e.mac?;
    let ok = matches!(
        e.state,
        Nud::Reachable | Nud::Stale | Nud::Delay | Nud::Probe | Nud::Permanent | Nud::Noarp
    );
    (ok && mac != [0; 6] && mac[0] & 1 == 0).then_some(mac)
}

/// What a backend's entry in the program must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// First usable MAC: the backend may be served.
    Learnt([u8; 6]),
    /// The backend answers from another MAC now: its entry is re-pointed.
    Moved { from: [u8; 6], to: [u8; 6] },
    /// No usable entry any more: nothing may be sent to it.
    Lost([u8; 6]),
}

impl Decision {
    /// The MAC to use from now on.
    pub fn mac(self) -> Option<[u8; 6]> {
        match self {
            Decision::Learnt(m) | Decision::Moved { to: m, .. } => Some(m),
            Decision::Lost(_) => None,
        }
    }
}

/// What to ask the kernel for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// No usable entry: resolve (NTF_USE; the kernel broadcasts).
    Resolve,
    /// A usable dynamic entry that may be out of date: delete it and
    /// resolve afresh.
    Recheck,
}

#[derive(Debug, Default, Clone)]
struct Track {
    /// The MAC in use.
    mac: Option<[u8; 6]>,
    /// The entry as last seen.
    seen: Option<Entry>,
    /// A re-resolution runs until then: the entry vipd deleted, and the
    /// INCOMPLETE one that follows, do not take the MAC away.
    verifying_until: Option<Instant>,
    last_verify: Option<Instant>,
}

/// The MAC of every watched backend address, from what the kernel reports.
#[derive(Debug, Default)]
pub struct Tracker {
    tracks: BTreeMap<IpAddr, Track>,
}

impl Tracker {
    /// Follows exactly these addresses from now on (a reload); those
    /// already followed keep what is known of them.
    pub fn watch(&mut self, addrs: &BTreeSet<IpAddr>) {
        self.tracks.retain(|a, _| addrs.contains(a));
        for a in addrs {
            self.tracks.entry(*a).or_default();
        }
    }

    pub fn watched(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.tracks.keys().copied()
    }

    /// The MAC in use for `addr`.
    pub fn mac(&self, addr: IpAddr) -> Option<[u8; 6]> {
        self.tracks.get(&addr).and_then(|t| t.mac)
    }

    /// The kernel's entry for `addr` (`None`: it has none) at `now`.
    pub fn observe(
        &mut self,
        addr: IpAddr,
        entry: Option<Entry>,
        now: Instant,
    ) -> Option<Decision> {
        let t = self.tracks.get_mut(&addr)?;
        t.seen = entry;
        match (usable(entry.as_ref()), t.mac) {
            (Some(m), Some(old)) if m == old => {
                t.verifying_until = None;
                None
            }
            (Some(m), prev) => {
                t.verifying_until = None;
                t.mac = Some(m);
                Some(match prev {
                    Some(from) => Decision::Moved { from, to: m },
                    None => Decision::Learnt(m),
                })
            }
            (None, None) => None,
            // Our own re-resolution in flight: deleting the entry reports it
            // FAILED, then gone (neigh_delete runs __neigh_update to
            // NUD_FAILED before unlinking it), then INCOMPLETE while the
            // kernel asks. Only a usable entry or the deadline ends it
            // (`expire`).
            (None, Some(_)) if t.verifying_until.is_some_and(|u| now < u) => None,
            (None, Some(old)) => {
                t.verifying_until = None;
                t.mac = None;
                Some(Decision::Lost(old))
            }
        }
    }

    /// A probe of `addr` failed at `now`: whether to ask the kernel to
    /// resolve it afresh, and how. Administrators' entries are left alone,
    /// and one address is asked at most every [`VERIFY_GAP`].
    pub fn verify(&mut self, addr: IpAddr, now: Instant) -> Option<Verify> {
        let t = self.tracks.get_mut(&addr)?;
        if t.seen.is_some_and(|e| e.state.admin())
            || t.last_verify.is_some_and(|l| now < l + VERIFY_GAP)
        {
            return None;
        }
        t.last_verify = Some(now);
        if usable(t.seen.as_ref()).is_some() {
            t.verifying_until = Some(now + VERIFY_FOR);
            Some(Verify::Recheck)
        } else {
            Some(Verify::Resolve)
        }
    }

    /// Re-resolutions that ran out without a usable entry.
    pub fn expire(&mut self, now: Instant) -> Vec<(IpAddr, Decision)> {
        let mut out = vec![];
        for (a, t) in &mut self.tracks {
            if t.verifying_until.is_some_and(|u| now >= u) {
                t.verifying_until = None;
                if let (None, Some(old)) = (usable(t.seen.as_ref()), t.mac) {
                    t.mac = None;
                    out.push((*a, Decision::Lost(old)));
                }
            }
        }
        out
    }

    /// Watched addresses without a usable entry: the ones to resolve.
    pub fn unresolved(&self) -> Vec<IpAddr> {
        self.tracks
            .iter()
            .filter(|(_, t)| t.mac.is_none() && !t.seen.is_some_and(|e| e.state.admin()))
            .map(|(a, _)| *a)
            .collect()
    }
}

/// The backend addresses whose MAC comes from the neighbour table
/// ([`Service::needs_neighbour`](crate::config::Service::needs_neighbour)).
pub fn targets(cfg: &Config) -> BTreeSet<IpAddr> {
    cfg.services
        .iter()
        .flat_map(|s| s.backends.iter().filter(|b| s.needs_neighbour(b)))
        .map(|b| b.address)
        .collect()
}

/// Marks as `local` every backend of a mode dsr service whose address is
/// one of `node_addrs` (this node's addresses, the VIPs excepted): this
/// node's own apiserver, which the program hands to the local stack and
/// VRRP tracks. `local: true` in the file still counts. Mode nat backends
/// are left as written: the program does not treat them differently, and
/// a dedicated LB forwards to no apiserver of its own. Returns the
/// backends it marked.
pub fn derive_local(cfg: &mut Config, node_addrs: &[IpAddr]) -> Vec<SocketAddr> {
    let vips: BTreeSet<IpAddr> = cfg.services.iter().map(|s| s.vip).collect();
    let mut marked = vec![];
    for s in cfg.services.iter_mut().filter(|s| s.mode == Mode::Dsr) {
        for b in &mut s.backends {
            if !b.local && !vips.contains(&b.address) && node_addrs.contains(&b.address) {
                b.local = true;
                marked.push(SocketAddr::new(b.address, b.port.unwrap_or(s.port)));
            }
        }
    }
    marked
}

/// One change of a backend's MAC, for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighEvent {
    pub addr: IpAddr,
    pub decision: Decision,
    /// When the task saw the kernel's message.
    pub seen: Instant,
}

/// The agent's end of the task; the task ends when this goes.
pub struct Commands {
    tx: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    /// The netlink connection's reader.
    conn: JoinHandle<()>,
}

impl Commands {
    /// Follow exactly these addresses (start, reload).
    pub fn watch(&self, addrs: BTreeSet<IpAddr>) {
        // The task gone means the agent stops: nothing to do.
        let _ = self.tx.send(Command::Watch(addrs));
    }

    /// A probe of `addr` failed: perhaps it answers from another MAC.
    pub fn probe_failed(&self, addr: IpAddr) {
        let _ = self.tx.send(Command::ProbeFailed(addr));
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        self.task.abort();
        self.conn.abort();
    }
}

/// What the agent tells the task.
#[derive(Debug, Clone)]
enum Command {
    /// Follow these addresses (start, reload).
    Watch(BTreeSet<IpAddr>),
    /// A probe of this address failed.
    ProbeFailed(IpAddr),
}

#[derive(Debug, Error)]
pub enum NeighError {
    #[error(
        "opening the rtnetlink socket for the neighbour table failed (vipd needs CAP_NET_ADMIN in the node's network namespace)"
    )]
    Socket(#[source] std::io::Error),
    #[error("subscribing to neighbour table changes (RTNLGRP_NEIGH) failed")]
    Subscribe(#[source] std::io::Error),
    #[error("reading the neighbour table failed")]
    Dump {
        #[source]
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
}

/// The address and entry a neighbour message reports, if it is one of
/// `ifindex`'s (an entry on another interface is not where the program
/// sends). `DelNeighbour` reports no entry.
pub(crate) fn parse(
    msg: &NeighbourMessage,
    ifindex: u32,
    deleted: bool,
) -> Option<(IpAddr, Option<Entry>)> {
    if msg.header.ifindex != ifindex {
        return None;
    }
    let mut addr = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                addr = Some((*v4).into())
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                addr = Some((*v6).into());
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
            _ => {}
        }
    }
    let entry = (!deleted).then_some(Entry {
        state: msg.header.state.into(),
        mac,
    });
    Some((addr?, entry))
}

/// The interface's entries (both families) by address.
async fn dump(handle: &Handle, ifindex: u32) -> Result<BTreeMap<IpAddr, Entry>, rtnetlink::Error> {
    let mut dump = handle.neighbours().get().execute();
    let mut found = BTreeMap::new();
    while let Some(msg) = dump.try_next().await? {
        if let Some((a, Some(e))) = parse(&msg, ifindex, false) {
            found.insert(a, e);
        }
    }
    Ok(found)
}

/// The usable MAC of each of `addrs` now: read once before the first map
/// write, so that a restarting vipd adopting pinned maps keeps serving
/// (and does not reset) the flows of backends the table already knows.
pub async fn snapshot(
    ifname: &str,
    addrs: &BTreeSet<IpAddr>,
) -> Result<BTreeMap<IpAddr, [u8; 6]>, NeighError> {
    let ifindex = crate::link::ifindex(ifname)?;
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NeighError::Socket)?;
    let conn = tokio::spawn(conn);
    let found = dump(&handle, ifindex).await;
    conn.abort();
    let found = found.map_err(|source| NeighError::Dump { source })?;
    Ok(addrs
        .iter()
        .filter_map(|a| Some((*a, usable(found.get(a))?)))
        .collect())
}

/// The task's side: the socket, the tracker and the way back.
struct Watcher {
    handle: Handle,
    ifname: String,
    ifindex: u32,
    tracker: Tracker,
    tx: mpsc::Sender<NeighEvent>,
}

impl Watcher {
    async fn send(&self, addr: IpAddr, decision: Decision, seen: Instant) {
        // The agent gone means vipd stops: nothing to do.
        let _ = self
            .tx
            .send(NeighEvent {
                addr,
                decision,
                seen,
            })
            .await;
    }

    async fn observe(&mut self, addr: IpAddr, entry: Option<Entry>) {
        let now = Instant::now();
        if let Some(d) = self.tracker.observe(addr, entry, now) {
            self.send(addr, d, now).await;
        }
    }

    /// Reads the whole table and feeds every watched address (absent ones
    /// as "no entry").
    async fn resync(&mut self) {
        let found = match dump(&self.handle, self.ifindex).await {
            Ok(f) => f,
            Err(e) => {
                warn!(interface = %self.ifname, error = %e, "reading the neighbour table failed; retrying in {}s", RESYNC_EVERY.as_secs());
                return;
            }
        };
        let watched: Vec<IpAddr> = self.tracker.watched().collect();
        for a in watched {
            self.observe(a, found.get(&a).copied()).await;
        }
    }

    /// Asks the kernel to resolve `addr` (after deleting its entry for a
    /// recheck). NTF_USE on RTM_NEWNEIGH runs neigh_event_send on the entry
    /// (created if missing): INCOMPLETE or FAILED starts a broadcast
    /// solicitation right away, as the first packet to the address would.
    async fn ask(&self, addr: IpAddr, how: Verify) {
        let n = self.handle.neighbours();
        if how == Verify::Recheck
            && let Err(e) = n.del(entry_message(self.ifindex, addr)).execute().await
        {
            warn!(backend = %addr, error = %e, "deleting the neighbour entry to resolve it afresh failed");
        }
        let req = n
            .add(self.ifindex, addr)
            .state(NeighbourState::None)
            .flags(NeighbourFlags::Use)
            .replace();
        if let Err(e) = req.execute().await {
            warn!(backend = %addr, error = %e, "asking the kernel to resolve the backend's address failed");
        }
    }

    async fn resolve_missing(&self) {
        for a in self.tracker.unresolved() {
            self.ask(a, Verify::Resolve).await;
        }
    }

    async fn command(&mut self, c: Command) {
        match c {
            Command::Watch(addrs) => {
                self.tracker.watch(&addrs);
                self.resync().await;
                self.resolve_missing().await;
            }
            Command::ProbeFailed(a) => {
                if let Some(how) = self.tracker.verify(a, Instant::now()) {
                    self.ask(a, how).await;
                }
            }
        }
    }

    async fn kernel(&mut self, payload: NetlinkPayload<RouteNetlinkMessage>) {
        let (msg, deleted) = match payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(m)) => (m, false),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(m)) => (m, true),
            _ => return,
        };
        if let Some((a, e)) = parse(&msg, self.ifindex, deleted) {
            self.observe(a, e).await;
        }
    }

    async fn expire(&mut self) {
        let now = Instant::now();
        for (a, d) in self.tracker.expire(now) {
            self.send(a, d, now).await;
        }
    }
}

/// Starts following the neighbour table of `ifname` (in the calling
/// thread's network namespace; call from inside the tokio runtime). Send
/// [`Commands::watch`] first.
pub fn spawn(ifname: &str, tx: mpsc::Sender<NeighEvent>) -> Result<Commands, NeighError> {
    let ifindex = crate::link::ifindex(ifname)?;
    let (mut conn, handle, mut messages) =
        rtnetlink::new_connection().map_err(NeighError::Socket)?;
    conn.socket_mut()
        .socket_mut()
        .bind(&netlink_sys_addr(rtnetlink::constants::RTMGRP_NEIGH))
        .map_err(NeighError::Subscribe)?;
    let conn = tokio::spawn(conn);
    let (cmd_tx, mut cmds) = mpsc::unbounded_channel::<Command>();
    let mut w = Watcher {
        handle,
        ifname: ifname.to_owned(),
        ifindex,
        tracker: Tracker::default(),
        tx,
    };
    let task = tokio::spawn(async move {
        let mut second = tokio::time::interval(Duration::from_secs(1));
        let mut resync =
            tokio::time::interval_at((Instant::now() + RESYNC_EVERY).into(), RESYNC_EVERY);
        loop {
            tokio::select! {
                c = cmds.recv() => match c {
                    Some(c) => w.command(c).await,
                    None => break,
                },
                m = messages.next() => match m {
                    Some((m, _)) => w.kernel(m.payload).await,
                    None => break,
                },
                _ = second.tick() => w.expire().await,
                _ = resync.tick() => {
                    w.resync().await;
                    w.resolve_missing().await;
                }
            }
        }
    });
    Ok(Commands {
        tx: cmd_tx,
        task,
        conn,
    })
}

/// The message naming one entry: family, interface and address are what
/// RTM_DELNEIGH matches on (neigh_delete).
fn entry_message(ifindex: u32, addr: IpAddr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.ifindex = ifindex;
    let (family, dst) = match addr {
        IpAddr::V4(v4) => (AddressFamily::Inet, NeighbourAddress::Inet(v4)),
        IpAddr::V6(v6) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v6)),
    };
    m.header.family = family;
    m.attributes.push(NeighbourAttribute::Destination(dst));
    m
}

/// A netlink socket address subscribing to `groups` (the RTMGRP_* bits).
fn netlink_sys_addr(groups: u32) -> rtnetlink::sys::SocketAddr {
    rtnetlink::sys::SocketAddr::new(0, groups)
}

#[cfg(test)]
mod tests;
