//! NAT connection-state sync between LB nodes (`state_sync:`).
//!
//! Mode nat keeps per-flow state on the LB: which backend, which source
//! port. When the VIP moves, the new holder has none of it, so its XDP
//! program must answer every mid-stream packet with an RST (mode nat cannot
//! pick up a connection whose handshake the backend saw from another
//! source). With `snat: vip` the backend knows each connection as
//! (VIP, NAT port), which the new holder can reproduce if it knows the port:
//! this module replicates each new flow to the peer LBs.
//!
//! - `wire`: the datagram format (versioned, 1212 bytes at most).
//! - `auth`: keys, tags and the replay window of the authenticated form.
//! - `resolve`: node-local ids to addresses and back ([`resolve::Directory`]).
//! - `tables`: writing a peer's flows into this node's maps without ever
//!   displacing a live local flow.
//! - here: the two shells. The sender reads the program's `SYNC_EVENTS` ring
//!   buffer (tokio `AsyncFd`), batches records and sends each datagram to
//!   every peer, at most [`FLUSH_DELAY`] after the first record waiting; the
//!   sweep's list of active flows is resent the same way (a refresh), so a
//!   replicated entry never idles out on the peer while the flow lives. A
//!   starting sender says hello (a datagram with no records, [`HELLO_AFTER`]),
//!   and each peer answers with every flow it holds, so a peer restarted
//!   with empty tables knows them before flows come back to it. Each
//!   answer ends with an end marker ([`wire::encode_end`]): the starting
//!   node holds the VIP back until every peer's has arrived, or
//!   [`WELCOME_WAIT`] has passed ([`SyncHandle::take_answers`]).
//!   The receiver is a blocking thread with its own socket and map handles.
//!
//! Guarantees and limits: a flow opened less than about [`FLUSH_DELAY`]
//! (plus one network trip) before the master dies is not on the peer and
//! gets an RST at its next packet, as without sync. Only datagrams from the
//! configured peers' addresses are accepted; with `key_file` each must also
//! carry a valid tag under a listed key and be new ([`auth`]): without it,
//! anyone on the segment who can spoof a peer's address can write flow
//! entries, so the channel then belongs on a trusted segment.

pub mod auth;
pub mod metrics;
pub mod resolve;
pub mod tables;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, RingBuf};
use thiserror::Error;
use tokio::{io::unix::AsyncFd, sync::mpsc, sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};
use vip_common::{ConnKey, ConnValue, SyncEvent};

use auth::{AuthError, KeySource, Replay};
pub use metrics::SyncStats;
use resolve::{Directory, Reject};
use tables::{Applied, SyncTables};
use wire::{MAX_RECORDS, Record, Seal};

use crate::dataplane::flows::monotonic_ns;

/// The longest a record waits for others to share its datagram. A failover
/// loses the flows of this window; a few ms costs nothing in datagram count
/// when flows are rare and fills datagrams when they are not.
pub const FLUSH_DELAY: Duration = Duration::from_millis(2);

/// Every this many sweeps (10 s each) the refresh sends every live synced
/// flow, not only those active since the last sweep: a peer that restarted
/// learns the idle ones within 5 minutes.
pub const FULL_REFRESH_EVERY: u32 = 30;

/// Receive buffer asked for the sync socket: a full refresh arrives as a
/// burst of datagrams.
const RCVBUF: libc::c_int = 4 << 20;

/// The `reason` labels of `vipd_state_sync_rejected_total`.
pub const REJECT_LABELS: [&str; 16] = [
    "unknown_service",
    "not_synced",
    "unknown_backend",
    "port_range",
    "conflict",
    "map_error",
    "malformed",
    "magic",
    "version",
    "unkeyed",
    "keyed",
    "unknown_key",
    "forged",
    "replayed",
    "stale",
    "stranger",
];

/// The `reason` labels of `vipd_state_sync_lost_total` (flows that were
/// not sent): the program's ring was full, the backend id was unknown by
/// the time the agent read it, the send failed.
pub const LOST_LABELS: [&str; 3] = ["ring_full", "unresolved", "send_failed"];

#[derive(Debug, Error)]
pub enum SyncError {
    #[error(
        "state_sync: cannot listen on {addr}; is the address on this node and the port free? (state_sync.listen, state_sync.port)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("state_sync: setting up the sync socket failed")]
    Socket(#[source] std::io::Error),
}

/// A ring-buffer item as the program wrote it; `None` if it is not one
/// (a shorter item would be a build mismatch: refuse, never read past it).
pub fn parse_event(item: &[u8]) -> Option<SyncEvent> {
    if item.len() < std::mem::size_of::<SyncEvent>() {
        return None;
    }
    // SAFETY: the length is checked above; SyncEvent is plain old data
    // (repr(C), every bit pattern valid); read_unaligned needs no alignment.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<SyncEvent>()) })
}

/// Why a datagram was not read: its header, or its authentication.
#[derive(Debug, Error)]
enum Refusal {
    #[error(transparent)]
    Decode(wire::DecodeError),
    #[error(transparent)]
    Auth(AuthError),
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Decode(e) => e.label(),
            Refusal::Auth(e) => e.label(),
        }
    }
}

/// The receiver's authentication state: the keys (`None` without
/// `key_file`) and the peers' replay windows.
#[derive(Debug, Default)]
pub struct Admission {
    keys: Option<Arc<KeySource>>,
    replay: Replay,
    /// The last refusal logged: at most one line per 10 s, the counters
    /// carry the totals.
    last_log: Option<Instant>,
}

impl Admission {
    pub fn new(keys: Option<Arc<KeySource>>) -> Admission {
        Admission {
            keys,
            replay: Replay::default(),
            last_log: None,
        }
    }

    /// Logs a refusal an operator must act on (a peer without the key, a
    /// forged or replayed datagram), with its fix, at most once per 10 s.
    fn complain(&mut self, from: IpAddr, refusal: &Refusal) {
        if self
            .last_log
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        self.last_log = Some(Instant::now());
        warn!(peer = %from, reason = refusal.label(), error = %refusal, "state sync: datagram refused; vipd_state_sync_rejected_total counts them");
    }

    /// Whether a datagram from `from` may be read: a tag is required exactly
    /// when this node has keys; a tagged one must verify (before any record
    /// is read) and be new. A decode error of the header is returned as the
    /// caller's `malformed`/`magic`/`version` refusal.
    fn admit(&mut self, buf: &[u8], from: IpAddr, now: SystemTime) -> Result<(), Refusal> {
        let tagged = wire::tagged(buf).map_err(Refusal::Decode)?;
        match (&self.keys, tagged) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(Refusal::Auth(AuthError::Keyed)),
            (Some(_), None) => Err(Refusal::Auth(AuthError::Unkeyed)),
            (Some(src), Some(t)) => {
                auth::verify(&src.keys(), t.sealed.key_id, t.signed, t.tag)
                    .map_err(Refusal::Auth)?;
                self.replay
                    .check(from, t.sealed.epoch, t.seq, t.sealed.sent_ms, now)
                    .map_err(Refusal::Auth)
            }
        }
    }
}

/// What one datagram did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Received {
    /// Records written to the tables.
    pub applied: usize,
    /// An admitted datagram with no records: the peer's hello, sent when
    /// its sync starts ([`HELLO_AFTER`]). Its tables may be empty (a reboot,
    /// or a start without pinned maps), so it is sent every flow this node
    /// holds at once, its own slice's included ([`SyncHandle::take_welcomes`]).
    pub hello: bool,
    /// An admitted end of a welcome dump: every flow the peer held has been
    /// sent before it.
    pub end: bool,
}

/// One batch of flows for the sender: the sweep's refresh, or a welcome
/// dump (every flow held, for a peer that said hello), which the sender
/// follows with the end marker once its last record is out.
#[derive(Debug, Default)]
pub struct Batch {
    pub flows: Vec<(ConnKey, ConnValue)>,
    pub welcome: bool,
}

/// How long a starting node waits for every peer's welcome dump before it
/// holds the VIP without the missing ones: past the last hello
/// ([`HELLO_AFTER`], 3 s) by 2 s for the answer. A peer that is down
/// costs this much once at start; one that is up answers within a few
/// milliseconds.
pub const WELCOME_WAIT: Duration = Duration::from_secs(5);

/// When a starting sender says hello to every peer, from its start: more
/// than once, since a datagram can be lost and a peer that was down at the
/// first one needs a later one.
pub const HELLO_AFTER: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(3),
];

/// Whether a hello from `from`, `since_start` after this node's sync
/// started, is answered with a hello of this node's own at once (besides
/// the welcome dump): while this node may still be waiting for that peer's
/// flows ([`WELCOME_WAIT`]), once per peer. A node that starts before its
/// peers otherwise waits for its next scheduled hello ([`HELLO_AFTER`]:
/// up to 3 s) to get their dumps; once per peer, so that two starting
/// nodes never answer each other's hellos forever.
pub fn hello_back(since_start: Duration, answered: &mut BTreeSet<IpAddr>, from: IpAddr) -> bool {
    since_start < WELCOME_WAIT && answered.insert(from)
}

/// What the receiver does with one datagram from `from`: check the source,
/// the tag and replay window when keyed, decode, resolve and write each
/// record. Every refusal is counted under its reason; nothing here panics,
/// and a refused datagram changes no table.
pub fn receive_datagram(
    buf: &[u8],
    from: IpAddr,
    peers: &[IpAddr],
    admission: &mut Admission,
    dir: &Directory,
    tables: &mut SyncTables,
    stats: &SyncStats,
) -> Received {
    let none = Received::default();
    if !peers.contains(&from) {
        stats.reject("stranger");
        return none;
    }
    if let Err(refusal) = admission.admit(buf, from, SystemTime::now()) {
        stats.reject(refusal.label());
        admission.complain(from, &refusal);
        return none;
    }
    let d = match wire::decode(buf) {
        Ok(d) => d,
        Err(e) => {
            stats.reject(e.label());
            debug!(peer = %from, error = %e, "state sync: datagram refused");
            return none;
        }
    };
    if d.end {
        return Received { end: true, ..none };
    }
    if d.records.is_empty() {
        return Received {
            hello: true,
            ..none
        };
    }
    stats.received.inc_by(d.records.len() as u64);
    let Some(g) = dir.globals else {
        // Not programmed yet: nothing can be resolved.
        for _ in &d.records {
            stats.reject(Reject::UnknownService.label());
        }
        return none;
    };
    let now = monotonic_ns();
    let mut applied = 0;
    for r in &d.records {
        match dir.to_local(r).and_then(|l| tables.apply(&l, &g, now)) {
            Ok(Applied::New | Applied::Refreshed) => applied += 1,
            Err(reason) => stats.reject(reason.label()),
        }
    }
    stats.applied.inc_by(applied as u64);
    Received { applied, ..none }
}

/// The running sync: publish directory changes and refresh batches to it;
/// dropping it stops both shells.
pub struct SyncHandle {
    pub stats: Arc<SyncStats>,
    dir: watch::Sender<Arc<Directory>>,
    refresh: mpsc::Sender<Batch>,
    welcomes: std::sync::Mutex<Option<mpsc::Receiver<IpAddr>>>,
    answers: std::sync::Mutex<Option<mpsc::Receiver<IpAddr>>>,
    sender: JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl SyncHandle {
    /// Makes `d` the directory both shells resolve with, if it changed.
    pub fn publish(&self, d: Directory) {
        self.dir.send_if_modified(|cur| {
            if **cur == d {
                false
            } else {
                *cur = Arc::new(d);
                true
            }
        });
    }

    /// Where the sweep sends live flows for the refresh.
    pub fn refresh_sender(&self) -> mpsc::Sender<Batch> {
        self.refresh.clone()
    }

    /// The peers that said hello ([`Received::hello`]), for the sweep,
    /// which sends each of them every flow held: once, to its one taker.
    pub fn take_welcomes(&self) -> Option<mpsc::Receiver<IpAddr>> {
        self.welcomes.lock().ok().and_then(|mut w| w.take())
    }

    /// The peers whose welcome dump ended ([`Received::end`]), for the
    /// agent, which holds the VIP back until each has (at most
    /// [`WELCOME_WAIT`]): once, to its one taker.
    pub fn take_answers(&self) -> Option<mpsc::Receiver<IpAddr>> {
        self.answers.lock().ok().and_then(|mut w| w.take())
    }

    /// The directory as last published (the sweep reads the synced ids).
    pub fn directory(&self) -> watch::Receiver<Arc<Directory>> {
        self.dir.subscribe()
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.sender.abort();
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Opens the socket and starts the sender task and the receiver thread.
/// Must run inside the tokio runtime.
pub fn start(
    listen: SocketAddr,
    peers: Vec<IpAddr>,
    keys: Option<Arc<KeySource>>,
    events: RingBuf<MapData>,
    tables: SyncTables,
    dir: Directory,
    stats: SyncStats,
) -> Result<SyncHandle, SyncError> {
    let sock = UdpSocket::bind(listen).map_err(|source| SyncError::Bind {
        addr: listen,
        source,
    })?;
    set_rcvbuf(&sock);
    let rx_sock = sock.try_clone().map_err(SyncError::Socket)?;
    sock.set_nonblocking(true).map_err(SyncError::Socket)?;
    let tx_sock = tokio::net::UdpSocket::from_std(sock).map_err(SyncError::Socket)?;
    // SAFETY: the RingBuf owns its (dup'd) map fd, which stays open and
    // the same for as long as the RingBuf lives inside the AsyncFd, and
    // `as_raw_fd` always returns it.
    let ring = unsafe { AsyncFd::register(events) }.map_err(|e| SyncError::Socket(e.into()))?;
    let stats = Arc::new(stats);
    let (dir_tx, dir_rx) = watch::channel(Arc::new(dir));
    let (refresh_tx, refresh_rx) = mpsc::channel(4);
    let (welcome_tx, welcome_rx) = mpsc::channel(8);
    // One answer per peer and dump: a few peers, a few dumps each.
    let (answer_tx, answer_rx) = mpsc::channel(64);
    let (hello_tx, hello_rx) = mpsc::channel(8);
    let stop = Arc::new(AtomicBool::new(false));
    let targets: Vec<SocketAddr> = peers
        .iter()
        .map(|p| SocketAddr::new(*p, listen.port()))
        .collect();
    let sender = tokio::spawn(send_loop(
        ring,
        tx_sock,
        targets.clone(),
        dir_rx.clone(),
        (refresh_rx, hello_rx),
        stats.clone(),
        keys.clone(),
    ));
    let authenticated = keys.is_some();
    {
        let (stats, stop) = (stats.clone(), stop.clone());
        let admission = Admission::new(keys);
        std::thread::Builder::new()
            .name("vipd-sync-rx".into())
            .spawn(move || {
                receive_loop(
                    rx_sock,
                    peers,
                    admission,
                    dir_rx,
                    tables,
                    stats,
                    (stop, welcome_tx, answer_tx, hello_tx),
                )
            })
            .map_err(SyncError::Socket)?;
    }
    info!(listen = %listen, peers = ?targets, authenticated, "state sync running");
    Ok(SyncHandle {
        stats,
        dir: dir_tx,
        refresh: refresh_tx,
        welcomes: std::sync::Mutex::new(Some(welcome_rx)),
        answers: std::sync::Mutex::new(Some(answer_rx)),
        sender,
        stop,
    })
}

fn set_rcvbuf(sock: &UdpSocket) {
    use std::os::fd::AsRawFd as _;
    let v = RCVBUF;
    // SAFETY: setsockopt reads one c_int we own for the given length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        // The default (net.core.rmem_default) still works; bursts may drop.
        warn!("state sync: SO_RCVBUF refused; a full refresh may lose datagrams");
    }
}

/// The sender: ring-buffer events and refresh batches in, datagrams out.
async fn send_loop(
    mut ring: AsyncFd<RingBuf<MapData>>,
    sock: tokio::net::UdpSocket,
    targets: Vec<SocketAddr>,
    dir: watch::Receiver<Arc<Directory>>,
    (mut refresh, mut hello_back): (mpsc::Receiver<Batch>, mpsc::Receiver<()>),
    stats: Arc<SyncStats>,
    keys: Option<Arc<KeySource>>,
) {
    let mut pending: Vec<Record> = Vec::with_capacity(MAX_RECORDS * 4);
    let mut deadline: Option<Instant> = None;
    let mut seq: u32 = 0;
    let mut buf = Vec::with_capacity(wire::MAX_DATAGRAM);
    // The boot epoch: this process's start, so that a restarted sender's
    // sequence numbers (from 0 again) are new to its peers' windows.
    let epoch = unix_ms(SystemTime::now());
    let max = wire::max_records(keys.is_some());
    let started = Instant::now();
    let hello_times: Vec<Instant> = HELLO_AFTER.iter().map(|d| started + *d).collect();
    let mut hellos = hello_times.into_iter().peekable();
    loop {
        let flush_at = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let hello_at = hellos.peek().copied();
        let mut flush_now = false;
        let mut hello = false;
        let mut end = false;
        tokio::select! {
            _ = tokio::time::sleep_until(hello_at.unwrap_or(flush_at).into()), if hello_at.is_some() => {
                hellos.next();
                hello = true;
            }
            g = ring.readable_mut() => {
                let mut g = match g {
                    Ok(g) => g,
                    Err(e) => {
                        warn!(error = %e, "state sync: polling the ring buffer failed; sync stops");
                        return;
                    }
                };
                let d = dir.borrow().clone();
                drain(g.get_inner_mut(), &d, &mut pending, &stats);
                g.clear_ready();
                drop(g);
                // An event committed between the last read and clear_ready
                // woke nobody (the kernel wakes a reader once it has caught
                // up): read again after clearing.
                drain(ring.get_mut(), &d, &mut pending, &stats);
            }
            b = refresh.recv() => {
                let Some(b) = b else { return };
                let d = dir.borrow().clone();
                for (k, v) in &b.flows {
                    match d.entry_to_wire(k, v) {
                        Some(r) => pending.push(r),
                        None => { stats.lost[0].inc(); }
                    }
                }
                // A welcome dump goes out now, whole, and then its end.
                end = b.welcome;
                flush_now |= b.welcome;
                debug!(flows = b.flows.len(), welcome = b.welcome, "state sync: refresh queued");
            }
            Some(()) = hello_back.recv() => hello = true,
            _ = tokio::time::sleep_until(flush_at.into()), if deadline.is_some() => flush_now = true,
        }
        // A hello is a datagram with no records, sealed like any other,
        // sent before whatever is waiting.
        let mut first = if hello { Some(0) } else { None };
        while let Some(n) = first.take().or_else(|| {
            (pending.len() >= max || (flush_now && !pending.is_empty()))
                .then(|| pending.len().min(max))
        }) {
            let k = keys.as_ref().map(|k| k.keys());
            let seal = seal_now(k.as_deref(), epoch);
            wire::encode(seq, &pending[..n], seal.as_ref(), &mut buf);
            seq = seq.wrapping_add(1);
            send_all(&sock, &targets, &buf, n, &stats).await;
            pending.drain(..n);
        }
        if end {
            let k = keys.as_ref().map(|k| k.keys());
            let seal = seal_now(k.as_deref(), epoch);
            wire::encode_end(seq, seal.as_ref(), &mut buf);
            seq = seq.wrapping_add(1);
            send_all(&sock, &targets, &buf, 0, &stats).await;
        }
        deadline = match (pending.is_empty(), deadline) {
            (true, _) => None,
            (false, Some(d)) => Some(d),
            (false, None) => Some(Instant::now() + FLUSH_DELAY),
        };
    }
}

/// Sends one datagram of `records` records to every peer, counting them as
/// sent or lost per peer.
async fn send_all(
    sock: &tokio::net::UdpSocket,
    targets: &[SocketAddr],
    buf: &[u8],
    records: usize,
    stats: &SyncStats,
) {
    for t in targets {
        match sock.send_to(buf, t).await {
            Ok(_) => {
                stats.sent.inc_by(records as u64);
            }
            Err(e) => {
                stats.lost[1].inc_by(records as u64);
                debug!(peer = %t, error = %e, "state sync: send failed");
            }
        }
    }
}

/// Moves every waiting ring-buffer event into `pending` as records.
pub fn drain(
    ring: &mut RingBuf<MapData>,
    dir: &Directory,
    pending: &mut Vec<Record>,
    stats: &SyncStats,
) {
    while let Some(item) = ring.next() {
        match parse_event(&item).and_then(|e| dir.to_wire(&e)) {
            Some(r) => pending.push(r),
            None => {
                stats.lost[0].inc();
            }
        }
    }
}

/// The seal of a datagram sent now, under this node's signing key (none
/// without `key_file`).
fn seal_now(keys: Option<&auth::Keys>, epoch: u64) -> Option<Seal<'_>> {
    keys.map(|k| Seal {
        key: k.signing(),
        epoch,
        sent_ms: unix_ms(SystemTime::now()),
    })
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The receiver thread: one datagram at a time, until `stop`.
/// How long the receiver waits for a datagram before it looks at `stop`.
const RECV_WAIT: Duration = Duration::from_millis(500);

/// Waits up to `timeout` for `sock` to have a datagram (poll(2)). The
/// receiver's socket is a `try_clone` (a dup) of the sender's, and the
/// sender's `set_nonblocking` sets O_NONBLOCK on the open file description
/// both descriptors share (fcntl(2)): `recv_from` never blocks there, and
/// its read timeout never applies. Without this wait the receive loop spun
/// a core at 100% between datagrams, which in the fabric lab starved the
/// routing daemons' BFD (50 ms x 3) into flapping.
fn readable(sock: &UdpSocket, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut fds = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as libc::c_int) };
    // An error (EINTR) reads as "maybe": recv_from then says WouldBlock.
    r != 0
}

fn receive_loop(
    sock: UdpSocket,
    peers: Vec<IpAddr>,
    mut admission: Admission,
    dir: watch::Receiver<Arc<Directory>>,
    mut tables: SyncTables,
    stats: Arc<SyncStats>,
    (stop, welcomes, answers, hellos): (
        Arc<AtomicBool>,
        mpsc::Sender<IpAddr>,
        mpsc::Sender<IpAddr>,
        mpsc::Sender<()>,
    ),
) {
    let mut buf = vec![0u8; 2048];
    let mut strangers: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut last_log = Instant::now() - Duration::from_secs(60);
    let started = Instant::now();
    let mut hellos_answered = BTreeSet::new();
    while !stop.load(Ordering::Relaxed) {
        if !readable(&sock, RECV_WAIT) {
            continue;
        }
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => {
                warn!(error = %e, "state sync: receiving failed; retrying");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let from_ip = match from.ip() {
            IpAddr::V6(v) => v.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v)),
            a => a,
        };
        if !peers.contains(&from_ip) {
            *strangers.entry(from_ip).or_default() += 1;
            // Rate-limited: a flood from a stranger must not flood the log.
            if last_log.elapsed() >= Duration::from_secs(10) {
                last_log = Instant::now();
                warn!(
                    strangers = ?strangers,
                    "state sync: datagrams from addresses not in state_sync.peers dropped (counts since start)"
                );
            }
        }
        let d = dir.borrow().clone();
        let r = receive_datagram(
            &buf[..n],
            from_ip,
            &peers,
            &mut admission,
            &d,
            &mut tables,
            &stats,
        );
        if r.hello {
            info!(peer = %from_ip, "state sync: a peer started; sending it every flow this node holds");
            // Full: a dump is already queued, and the one it sends covers
            // this hello too.
            let _ = welcomes.try_send(from_ip);
            if hello_back(started.elapsed(), &mut hellos_answered, from_ip) {
                let _ = hellos.try_send(());
            }
        }
        if r.end {
            debug!(peer = %from_ip, "state sync: a peer's welcome dump ended");
            // Full: the agent has not read the earlier answers yet, which
            // already name this peer, or it no longer waits.
            let _ = answers.try_send(from_ip);
        }
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    /// A starting node answers a peer's hello with its own, so the peer's
    /// dump comes now rather than at its next scheduled hello; once per
    /// peer (two starting nodes must not answer each other forever), and
    /// only while it may still wait for flows.
    #[test]
    fn a_hello_is_answered_with_a_hello_once_per_peer_while_starting() {
        let (a, b): (IpAddr, IpAddr) = (
            "10.0.0.2".parse().expect("ip"),
            "10.0.0.3".parse().expect("ip"),
        );
        let mut answered = BTreeSet::new();
        let t = Duration::from_millis(1500);
        assert!(hello_back(t, &mut answered, a));
        assert!(!hello_back(t, &mut answered, a), "once per peer");
        assert!(hello_back(t, &mut answered, b));
        let mut answered = BTreeSet::new();
        assert!(
            !hello_back(WELCOME_WAIT, &mut answered, a),
            "the wait is over"
        );
    }

    /// The receiver's socket shares O_NONBLOCK with the sender's (a dup):
    /// `readable` must still wait, and wake for a datagram.
    #[test]
    fn the_receiver_waits_on_a_socket_the_sender_made_nonblocking() {
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = a.try_clone().expect("dup");
        a.set_nonblocking(true).expect("nonblocking");
        let mut buf = [0u8; 8];
        assert_eq!(
            b.recv_from(&mut buf).expect_err("shared O_NONBLOCK").kind(),
            std::io::ErrorKind::WouldBlock,
            "the dup is non-blocking too: a plain recv loop would spin"
        );
        let t = Instant::now();
        assert!(!readable(&b, Duration::from_millis(100)));
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "{:?}",
            t.elapsed()
        );
        let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
        c.send_to(b"x", a.local_addr().expect("addr"))
            .expect("send");
        assert!(readable(&b, Duration::from_secs(2)));
        assert_eq!(b.recv_from(&mut buf).expect("datagram").0, 1);
    }
}
