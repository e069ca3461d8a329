//! Prometheus metrics and the agent's own `/healthz` and `/readyz`, over a
//! small HTTP/1.1 server. Names follow the Prometheus conventions: the
//! `vipd_` prefix, `_total` on counters, base units (seconds, bytes).
//!
//! Values that live elsewhere (BPF per-CPU counters, VRRP counters) are
//! mirrored into counters once a second by the agent (`agent::observe`): the
//! counter moves by the difference, so it stays monotonic even when its
//! source was read between two scrapes.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{debug, warn};

use crate::probe::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyState {
    pub family: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyReason {
    pub family: String,
    pub reason: String,
}

/// `by`: `this_node` (it took the VIP from a live lower-priority master)
/// or `peer` (a higher-priority router took it from this node).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyBy {
    pub family: String,
    pub by: String,
}

/// The values of [`FamilyBy::by`].
pub const PREEMPTION_BY: [&str; 2] = ["this_node", "peer"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendVersion {
    pub backend: String,
    pub git_version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendState {
    pub backend: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendReason {
    pub backend: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipLabel {
    pub vip: String,
}

/// `reason`: why the route was withdrawn (`agent::hold::announce::Why`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipReason {
    pub vip: String,
    pub reason: String,
}

fn probe_histogram() -> Histogram {
    // 1 ms .. 8 s: a LAN TLS handshake to a timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

type ProbeHistograms = Family<BackendLabel, Histogram, fn() -> Histogram>;

fn failover_histogram() -> Histogram {
    // 10 ms .. 41 s: a 20 ms advert interval's skew time to a 10 s one's
    // master-down interval.
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

type FailoverHistograms = Family<FamilyLabel, Histogram, fn() -> Histogram>;

const PREFIX: &str = "vipd";

/// The registry being built, noting each family's exposed name and type
/// for [`Metrics::families`]; registers like [`Registry`].
struct Registrar {
    registry: Registry,
    families: Vec<(String, MetricType)>,
}

impl Registrar {
    fn register<N: Into<String>, H: Into<String>>(&mut self, name: N, help: H, m: impl Metric) {
        let name = name.into();
        self.families
            .push((format!("{PREFIX}_{name}"), m.metric_type()));
        self.registry.register(name, help, m);
    }

    fn register_with_unit<N: Into<String>, H: Into<String>>(
        &mut self,
        name: N,
        help: H,
        unit: Unit,
        m: impl Metric,
    ) {
        let name = name.into();
        self.families.push((
            format!("{PREFIX}_{name}_{}", unit.as_str()),
            m.metric_type(),
        ));
        self.registry.register_with_unit(name, help, unit, m);
    }
}

/// VRRP's families, per address family.
fn register_vrrp(r: &mut Registrar, m: &Metrics) {
    r.register(
        "vrrp_state",
        "VRRP state per address family: 1 for the current state (initialize, backup, master)",
        m.vrrp_state.clone(),
    );
    r.register(
        "vrrp_priority",
        "Advertised VRRP priority after tracking",
        m.vrrp_priority.clone(),
    );
    r.register(
        "vrrp_held",
        "1 while the certificate gate keeps this node out of the election",
        m.vrrp_held.clone(),
    );
    r.register(
        "vrrp_became_master",
        "Transitions to master",
        m.vrrp_became_master.clone(),
    );
    r.register(
        "vrrp_left_master",
        "Transitions out of master",
        m.vrrp_left_master.clone(),
    );
    r.register(
        "vrrp_adverts_sent",
        "VRRP advertisements sent",
        m.vrrp_adverts_sent.clone(),
    );
    r.register(
        "vrrp_adverts_received",
        "VRRP advertisements accepted",
        m.vrrp_adverts_received.clone(),
    );
    r.register(
        "vrrp_adverts_rejected",
        "VRRP packets discarded, by RFC 9568 7.1 check",
        m.vrrp_adverts_rejected.clone(),
    );
    r.register(
        "vrrp_split_brain",
        "Another master or another MAC claiming the VIP seen while master, preemption excluded",
        m.vrrp_split_brain.clone(),
    );
    r.register(
        "vrrp_preemptions",
        "The VIP taken from a live master with a lower priority (RFC 9568 6.4.2): by this node, or from it by a peer",
        m.vrrp_preemptions.clone(),
    );
    r.register_with_unit(
        "vrrp_failover_duration",
        "Takeovers by this node: from the previous master's last advertisement to becoming master",
        Unit::Seconds,
        m.vrrp_failover_duration.clone(),
    );
}

/// Per backend: health, probes, what XDP did for it, its certificate; per service: fail open.
fn register_backends(r: &mut Registrar, m: &Metrics) {
    r.register(
        "backend_state",
        "Backend health: 1 for the current state (up, down, auth_misconfigured, no_neighbour: mode dsr and the neighbour table has no usable MAC for it)",
        m.backend_state.clone(),
    );
    r.register(
        "backend_serving",
        "1 while the backend receives new flows",
        m.backend_serving.clone(),
    );
    r.register(
        "backend_version_info",
        "1 for the gitVersion the backend's apiserver reports at GET /version (read every 30 s)",
        m.backend_version_info.clone(),
    );
    r.register(
        "apiserver_version_skew",
        "1 while the apiservers are more than one minor version apart (Kubernetes version-skew policy)",
        m.apiserver_version_skew.clone(),
    );
    r.register_with_unit(
        "probe_duration",
        "Health probe duration",
        Unit::Seconds,
        m.probe_duration.clone(),
    );
    r.register(
        "probe_failures",
        "Failed probes by reason (timeout, refused, connect, tls, http_status, protocol, auth)",
        m.probe_failures.clone(),
    );
    r.register(
        "backend_packets",
        "Packets the XDP program forwarded to the backend",
        m.backend_packets.clone(),
    );
    r.register_with_unit(
        "backend",
        "Bytes the XDP program forwarded to the backend",
        Unit::Bytes,
        m.backend_bytes.clone(),
    );
    r.register(
        "backend_new_flows",
        "New flows the XDP program gave the backend",
        m.backend_new_flows.clone(),
    );
    r.register(
        "backend_rsts",
        "RSTs the XDP program sent for the backend's flows",
        m.backend_rsts.clone(),
    );
    r.register(
        "cert_san_ok",
        "1 when the backend's certificate carries every VIP and configured name",
        m.cert_san_ok.clone(),
    );
    r.register_with_unit(
        "cert_expiry",
        "Time until the backend's certificate expires",
        Unit::Seconds,
        m.cert_expiry.clone(),
    );
    r.register(
        "fail_open",
        "1 while a service forwards to every backend because none is usable",
        m.fail_open.clone(),
    );
    r.register(
        "backend_flows",
        "Live flows in the connection table for the backend (counted every 10 s)",
        m.backend_flows.clone(),
    );
}

/// What the XDP program did with every packet, by reason.
fn register_dataplane(r: &mut Registrar, m: &Metrics) {
    r.register(
        "dataplane_packets",
        "Packets by what the XDP program did with them",
        m.dataplane_packets.clone(),
    );
    r.register_with_unit(
        "dataplane",
        "Bytes by what the XDP program did with them",
        Unit::Bytes,
        m.dataplane_bytes.clone(),
    );
}

/// The connection table.
fn register_flows(r: &mut Registrar, m: &Metrics) {
    r.register(
        "conntrack_entries",
        "Live connection-table entries (counted every 10 s)",
        m.conntrack_entries.clone(),
    );
    r.register(
        "conntrack_capacity",
        "Connection-table capacity (conntrack_capacity); entries over capacity is its fullness",
        m.conntrack_capacity.clone(),
    );
    r.register(
        "conntrack_swept",
        "Expired flow entries (connection table and reverse NAT) deleted by the agent's sweep",
        m.conntrack_swept.clone(),
    );
    r.register(
        "conntrack_poked",
        "Clients of a dead backend's flows poked so that their next packet gets the RST at once",
        m.conntrack_poked.clone(),
    );
}

/// Mode nat state sync.
fn register_sync(r: &mut Registrar, m: &Metrics) {
    r.register(
        "state_sync_sent",
        "Mode nat flow records sent to state-sync peers (counted once per peer)",
        m.state_sync_sent.clone(),
    );
    r.register(
        "state_sync_received",
        "Flow records received from state-sync peers",
        m.state_sync_received.clone(),
    );
    r.register(
        "state_sync_applied",
        "Flow records from peers written to the flow tables (new or refreshed)",
        m.state_sync_applied.clone(),
    );
    r.register(
        "state_sync_rejected",
        "Flow records or datagrams from peers refused, by reason (stranger: not from a configured peer)",
        m.state_sync_rejected.clone(),
    );
    r.register(
        "state_sync_lost",
        "New flows not replicated, by reason (ring_full, unresolved, send_failed): they reset after a failover",
        m.state_sync_lost.clone(),
    );
}

/// `announce:`: each VIP's route.
fn register_announce(r: &mut Registrar, m: &Metrics) {
    r.register(
        "announce_route_installed",
        "announce: 1 while this node's route for the VIP is in the announce table (the routing daemon announces it)",
        m.announce_route_installed.clone(),
    );
    r.register(
        "announce_withdrawals",
        "announce: routes withdrawn, by reason (xdp_detached, no_backend, cert_gate, stopping, unconfigured)",
        m.announce_withdrawals.clone(),
    );
}

/// `snapshot:`: the etcd snapshots this node took (issue 19).
fn register_snapshot(r: &mut Registrar, m: &Metrics) {
    r.register(
        "etcd_snapshot_last_success_timestamp_seconds",
        "etcd snapshots: when this node last took and verified one (unix seconds; 0: not since start)",
        m.snapshot_last_success.clone(),
    );
    r.register(
        "etcd_snapshot_newest_timestamp_seconds",
        "etcd snapshots: when the newest verified snapshot in this node's snapshot folder was written (unix seconds; 0: none). The cluster's newest is the max over nodes",
        m.snapshot_newest.clone(),
    );
    r.register(
        "etcd_snapshot_size_bytes",
        "etcd snapshots: size of the last one this node took",
        m.snapshot_size.clone(),
    );
    r.register(
        "etcd_snapshot_duration_seconds",
        "etcd snapshots: how long the last one took, connection to rename",
        m.snapshot_duration.clone(),
    );
    r.register(
        "etcd_snapshot_revision",
        "etcd snapshots: the etcd revision of the last one this node took",
        m.snapshot_revision.clone(),
    );
    r.register(
        "etcd_snapshot_taken",
        "etcd snapshots taken and verified by this node",
        m.snapshot_taken.clone(),
    );
    r.register(
        "etcd_snapshot_failures",
        "etcd snapshots that failed, by reason (credentials, tls, unreachable, etcd, disk_space, disk_full, io, corrupt, timeout)",
        m.snapshot_failures.clone(),
    );
}

/// Every metric vipd exports.
pub struct Metrics {
    registry: Registry,
    pub vrrp_state: Family<FamilyState, Gauge>,
    pub vrrp_priority: Family<FamilyLabel, Gauge>,
    pub vrrp_held: Family<FamilyLabel, Gauge>,
    pub vrrp_became_master: Family<FamilyLabel, Counter>,
    pub vrrp_left_master: Family<FamilyLabel, Counter>,
    pub vrrp_adverts_sent: Family<FamilyLabel, Counter>,
    pub vrrp_adverts_received: Family<FamilyLabel, Counter>,
    pub vrrp_adverts_rejected: Family<FamilyReason, Counter>,
    pub vrrp_split_brain: Family<FamilyLabel, Counter>,
    pub vrrp_preemptions: Family<FamilyBy, Counter>,
    pub vrrp_failover_duration: FailoverHistograms,
    pub backend_state: Family<BackendState, Gauge>,
    /// 1 for each backend's apiserver gitVersion (`GET /version`).
    pub backend_version_info: Family<BackendVersion, Gauge>,
    /// 1 while the apiservers are more than one minor version apart.
    pub apiserver_version_skew: Gauge,
    pub backend_serving: Family<BackendLabel, Gauge>,
    pub probe_duration: ProbeHistograms,
    pub probe_failures: Family<BackendReason, Counter>,
    pub backend_packets: Family<BackendLabel, Counter>,
    pub backend_bytes: Family<BackendLabel, Counter>,
    pub backend_new_flows: Family<BackendLabel, Counter>,
    pub backend_rsts: Family<BackendLabel, Counter>,
    pub dataplane_packets: Family<ReasonLabel, Counter>,
    pub dataplane_bytes: Family<ReasonLabel, Counter>,
    pub cert_san_ok: Family<BackendLabel, Gauge>,
    pub cert_expiry: Family<BackendLabel, Gauge>,
    pub fail_open: Family<ServiceLabel, Gauge>,
    pub backend_flows: Family<BackendLabel, Gauge>,
    pub conntrack_entries: Gauge,
    pub conntrack_capacity: Gauge,
    pub conntrack_swept: Counter,
    pub conntrack_poked: Counter,
    pub state_sync_sent: Counter,
    pub state_sync_received: Counter,
    pub state_sync_applied: Counter,
    pub state_sync_rejected: Family<ReasonLabel, Counter>,
    pub state_sync_lost: Family<ReasonLabel, Counter>,
    pub announce_route_installed: Family<VipLabel, Gauge>,
    pub announce_withdrawals: Family<VipReason, Counter>,
    pub snapshot_last_success: Gauge,
    pub snapshot_newest: Gauge,
    pub snapshot_size: Gauge,
    pub snapshot_duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub snapshot_revision: Gauge,
    pub snapshot_taken: Counter,
    pub snapshot_failures: Family<ReasonLabel, Counter>,
    /// The last `vipd status` snapshot (JSON), served at /status.
    status: std::sync::Mutex<String>,
    /// Every family as registered, see [`Metrics::families`].
    families: Vec<(String, MetricType)>,
    /// Set once the program is attached and the services are written.
    ready: AtomicBool,
    /// Milliseconds from `started` to the agent loop's last turn, for /healthz.
    heartbeat_ms: AtomicU64,
    started: Instant,
}

/// Adds to `c` what `total` has over it: a counter that mirrors a
/// monotonic value kept elsewhere.
pub fn mirror(c: &Counter, total: u64) {
    let cur = c.get();
    if total > cur {
        c.inc_by(total - cur);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registrar {
            registry: Registry::with_prefix(PREFIX),
            families: Vec::new(),
        };
        let m = Metrics {
            registry: Registry::default(),
            families: Vec::new(),
            vrrp_state: Family::default(),
            vrrp_priority: Family::default(),
            vrrp_held: Family::default(),
            vrrp_became_master: Family::default(),
            vrrp_left_master: Family::default(),
            vrrp_adverts_sent: Family::default(),
            vrrp_adverts_received: Family::default(),
            vrrp_adverts_rejected: Family::default(),
            vrrp_split_brain: Family::default(),
            vrrp_preemptions: Family::default(),
            vrrp_failover_duration: Family::new_with_constructor(failover_histogram),
            backend_state: Family::default(),
            backend_version_info: Family::default(),
            apiserver_version_skew: Gauge::default(),
            backend_serving: Family::default(),
            probe_duration: Family::new_with_constructor(probe_histogram),
            probe_failures: Family::default(),
            backend_packets: Family::default(),
            backend_bytes: Family::default(),
            backend_new_flows: Family::default(),
            backend_rsts: Family::default(),
            dataplane_packets: Family::default(),
            dataplane_bytes: Family::default(),
            cert_san_ok: Family::default(),
            cert_expiry: Family::default(),
            fail_open: Family::default(),
            backend_flows: Family::default(),
            conntrack_entries: Gauge::default(),
            conntrack_capacity: Gauge::default(),
            conntrack_swept: Counter::default(),
            conntrack_poked: Counter::default(),
            state_sync_sent: Counter::default(),
            state_sync_received: Counter::default(),
            state_sync_applied: Counter::default(),
            state_sync_rejected: Family::default(),
            state_sync_lost: Family::default(),
            announce_route_installed: Family::default(),
            announce_withdrawals: Family::default(),
            snapshot_last_success: Gauge::default(),
            snapshot_newest: Gauge::default(),
            snapshot_size: Gauge::default(),
            snapshot_duration: Gauge::default(),
            snapshot_revision: Gauge::default(),
            snapshot_taken: Counter::default(),
            snapshot_failures: Family::default(),
            status: std::sync::Mutex::new(String::new()),
            ready: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            started: Instant::now(),
        };
        register_vrrp(&mut r, &m);
        register_backends(&mut r, &m);
        register_dataplane(&mut r, &m);
        register_flows(&mut r, &m);
        register_sync(&mut r, &m);
        register_announce(&mut r, &m);
        register_snapshot(&mut r, &m);
        Metrics {
            registry: r.registry,
            families: r.families,
            ..m
        }
    }

    /// Every family's exposed name (prefix and unit included, before the
    /// `_total`/`_bucket` sample suffixes) and type, with or without
    /// series: the text encoding leaves out families without series, and
    /// the checks of deploy/'s dashboard and alert rules need them all.
    pub fn families(&self) -> &[(String, MetricType)] {
        &self.families
    }

    /// Exports the counters of `backends` that vipd itself counts from 0
    /// (probe failures, every reason) at 0 before their first event.
    /// Prometheus' `increase()` and `rate()` need a sample before the first
    /// event: a series born at 1 hides that event. Called with every
    /// configured backend at start and after each reload (a removed
    /// backend's series stay, at their last value). Counters mirrored from
    /// elsewhere (the BPF counters, which outlive a vipd restart in their
    /// pins) are not: a 0 before their first mirror would read as their
    /// whole history happening again; the agent's refresh creates them with
    /// every label value at once.
    pub fn known_backends(&self, backends: impl IntoIterator<Item = SocketAddr>) {
        for b in backends {
            let backend = b.to_string();
            for reason in Outcome::FAILURE_LABELS {
                // Creating the series is the point; the guard is not needed.
                drop(self.probe_failures.get_or_create(&BackendReason {
                    backend: backend.clone(),
                    reason: reason.to_owned(),
                }));
            }
        }
    }

    /// Exports state sync's counters, every reject and loss reason, at 0
    /// before their first event (see [`Metrics::known_backends`]); called
    /// when sync starts. All of them start at 0 with each vipd: the
    /// program's ring-full count lives in a map that is not pinned.
    /// The snapshot failure counters, every reason at 0 from the start.
    pub fn known_snapshot(&self) {
        for reason in crate::snapshot::SnapshotError::REASONS {
            drop(self.snapshot_failures.get_or_create(&ReasonLabel {
                reason: (*reason).to_owned(),
            }));
        }
    }

    pub fn known_sync(&self) {
        for reason in crate::sync::REJECT_LABELS {
            drop(self.state_sync_rejected.get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            }));
        }
        for reason in crate::sync::LOST_LABELS {
            drop(self.state_sync_lost.get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            }));
        }
    }

    /// Exports a VRRP router's event counters (transitions, split brains,
    /// preemptions, every discard reason) for `family` at 0 when it starts:
    /// they count from 0 with the router, and an election, a split brain or
    /// a rejected advert can come before the agent's first refresh.
    pub fn known_vrrp(&self, family: &str) {
        let fl = FamilyLabel {
            family: family.to_owned(),
        };
        for c in [
            &self.vrrp_became_master,
            &self.vrrp_left_master,
            &self.vrrp_split_brain,
        ] {
            drop(c.get_or_create(&fl));
        }
        for by in PREEMPTION_BY {
            drop(self.vrrp_preemptions.get_or_create(&FamilyBy {
                family: family.to_owned(),
                by: by.to_owned(),
            }));
        }
        for reason in crate::vrrp::packet::DISCARD_LABELS {
            drop(self.vrrp_adverts_rejected.get_or_create(&FamilyReason {
                family: family.to_owned(),
                reason: (*reason).to_owned(),
            }));
        }
    }

    /// One probe outcome.
    pub fn probe(&self, backend: SocketAddr, outcome: &Outcome, took: Duration) {
        let b = backend.to_string();
        self.probe_duration
            .get_or_create(&BackendLabel { backend: b.clone() })
            .observe(took.as_secs_f64());
        if *outcome != Outcome::Up {
            self.probe_failures
                .get_or_create(&BackendReason {
                    backend: b,
                    reason: outcome.label().to_owned(),
                })
                .inc();
        }
    }

    /// Replaces the snapshot `/status` serves.
    pub fn set_status(&self, json: String) {
        *self
            .status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = json;
    }

    fn status(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Marks the agent ready (or not) for /readyz.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The agent loop is alive; /healthz fails when this stops.
    pub fn beat(&self) {
        self.heartbeat_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        let last = Duration::from_millis(self.heartbeat_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last) < HEARTBEAT_STALE
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        if let Err(e) = encode(&mut s, &self.registry) {
            warn!(error = %e, "encoding the metrics failed");
        }
        s
    }
}

/// /healthz fails when the agent loop has not turned for this long (it
/// turns at least once a second).
const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

/// The most connections the endpoint serves at once, and from one source
/// address: a client that opens connections and sends nothing holds at most
/// [`MAX_PER_PEER`] of them for [`EXCHANGE_TIMEOUT`], so it cannot keep
/// Prometheus (or `vipd status`) from another address out. Connections over
/// either cap are closed at once.
pub const MAX_CONNS: usize = 256;
pub const MAX_PER_PEER: usize = 8;
/// The whole exchange, request in and reply out: a client that sends slowly,
/// or never reads a large `/metrics` reply, is dropped after it.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head larger than this gets 431 (we read only the request line).
pub const MAX_HEAD: usize = 4096;

/// Connections in flight, in total and by source address.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    by_peer: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// A connection's place under the caps; released on drop, however the
/// connection's task ends.
struct Slot {
    slots: Arc<std::sync::Mutex<Slots>>,
    peer: std::net::IpAddr,
}

impl Slot {
    fn take(slots: &Arc<std::sync::Mutex<Slots>>, peer: std::net::IpAddr) -> Option<Slot> {
        let mut g = slots.lock().unwrap_or_else(|p| p.into_inner());
        let mine = g.by_peer.get(&peer).copied().unwrap_or(0);
        if g.total >= MAX_CONNS || mine >= MAX_PER_PEER {
            return None;
        }
        g.total += 1;
        g.by_peer.insert(peer, mine + 1);
        Some(Slot {
            slots: slots.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        g.total = g.total.saturating_sub(1);
        if let Some(n) = g.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                g.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/status` on `listener` until
/// dropped, within the caps above.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(std::sync::Mutex::new(Slots::default()));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&slots, peer.ip()) else {
            debug!(peer = %peer, "metrics: over the connection cap; closed");
            drop(sock);
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(sock, &m))
                .await
                .is_err()
            {
                debug!(peer = %peer, "metrics: exchange timed out; closed");
            }
        });
    }
}

/// One request, one reply, then close.
async fn exchange(mut sock: tokio::net::TcpStream, m: &Metrics) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        if n == buf.len() {
            let _ = sock
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = respond(m, method, path);
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(reply.as_bytes()).await;
    let _ = sock.shutdown().await;
}

fn respond(m: &Metrics, method: &str, path: &str) -> (&'static str, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            m.encode(),
        ),
        "/healthz" | "/livez" if m.healthy() => ("200 OK", TEXT, "ok\n".into()),
        "/healthz" | "/livez" => (
            "503 Service Unavailable",
            TEXT,
            "the agent loop is stuck\n".into(),
        ),
        "/readyz" if m.ready.load(Ordering::Relaxed) && m.healthy() => {
            ("200 OK", TEXT, "ok\n".into())
        }
        "/status" => match m.status() {
            s if s.is_empty() => (
                "503 Service Unavailable",
                TEXT,
                "vipd is starting; no status yet\n".into(),
            ),
            s => ("200 OK", "application/json", s),
        },
        "/readyz" => (
            "503 Service Unavailable",
            TEXT,
            "not ready: the XDP program is not attached or the services are not written yet\n"
                .into(),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /status, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::Failure;

    /// Slow, silent, malformed and oversized clients: none of it keeps
    /// `/metrics` from a client at another address, and the server answers
    /// after all of it. (A client that never reads its reply is bounded by
    /// the same [`EXCHANGE_TIMEOUT`], which covers the whole exchange.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_clients_never_stall_metrics_for_others() {
        use tokio::net::TcpSocket;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let m = Arc::new(Metrics::new());
        m.beat();
        let server = tokio::spawn(serve(l, m));
        let from = |ip: &str| {
            let s = TcpSocket::new_v4().expect("socket");
            s.bind(SocketAddr::new(ip.parse().expect("ip"), 0))
                .expect("bind");
            s
        };
        let get = |ip: &'static str, path: &'static str| async move {
            // Over a cap the server closes at once: an empty answer.
            let mut c = from(ip).connect(addr).await.expect("connect");
            let _ = c
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await;
            let mut out = String::new();
            let _ = c.read_to_string(&mut out).await;
            out
        };
        // 40 connections from 127.0.0.2 that send half a request and wait.
        let mut slow = vec![];
        for _ in 0..40 {
            let mut c = from("127.0.0.2").connect(addr).await.expect("connect");
            let _ = c.write_all(b"GET /metr").await;
            slow.push(c);
        }
        // The ones over the per-address cap are closed at once.
        let mut closed = 0;
        for c in &mut slow {
            let mut b = [0u8; 1];
            // Closed with our bytes unread: FIN (0) or RST (an error).
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await
            {
                closed += 1;
            }
        }
        assert_eq!(closed, 40 - MAX_PER_PEER, "over the per-address cap");
        // Meanwhile another address is served at once.
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), get("127.0.0.1", "/metrics"))
            .await
            .expect("/metrics answered while 127.0.0.2 holds its slots");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // Malformed and oversized requests get an answer or a close, never a
        // panic of the server.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200 {
            let mut c = from("127.0.0.3").connect(addr).await.expect("connect");
            let len = if i % 10 == 0 {
                MAX_HEAD + 10
            } else {
                (x % 600) as usize
            };
            let mut junk = Vec::with_capacity(len + 4);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                junk.push(x as u8);
            }
            junk.extend_from_slice(b"\r\n\r\n");
            let _ = c.write_all(&junk).await;
            let mut out = vec![];
            let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut out)).await;
            if len > MAX_HEAD {
                assert!(
                    out.starts_with(b"HTTP/1.1 431"),
                    "oversized head: {:?}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        // The slow clients go: their slots come back (within the time the
        // server takes to see them close).
        drop(slow);
        let t = Instant::now();
        loop {
            let r = get("127.0.0.2", "/healthz").await;
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "127.0.0.2's slots were not released: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!server.is_finished(), "the server is still running");
        server.abort();
    }

    #[test]
    fn names_follow_the_conventions_and_values_show() {
        let m = Metrics::new();
        let be: SocketAddr = "10.0.0.11:6443".parse().expect("addr");
        m.probe(be, &Outcome::Up, Duration::from_millis(3));
        m.probe(be, &Outcome::AuthRefused(401), Duration::from_millis(4));
        m.probe(
            be,
            &Outcome::Fail(Failure::Timeout),
            Duration::from_millis(1000),
        );
        mirror(
            &m.backend_packets.get_or_create(&BackendLabel {
                backend: be.to_string(),
            }),
            10,
        );
        mirror(
            &m.backend_packets.get_or_create(&BackendLabel {
                backend: be.to_string(),
            }),
            7,
        );
        let bl = BackendLabel {
            backend: be.to_string(),
        };
        mirror(&m.backend_bytes.get_or_create(&bl), 1500);
        m.cert_expiry.get_or_create(&bl).set(86_400);
        mirror(
            &m.dataplane_bytes.get_or_create(&ReasonLabel {
                reason: "tx_dsr".into(),
            }),
            60,
        );
        // A known backend's probe failures exist at 0 before any failure.
        let other: SocketAddr = "10.0.0.12:6443".parse().expect("addr");
        m.known_backends([be, other]);
        m.known_sync();
        m.known_vrrp("ipv6");
        let text = m.encode();
        for want in [
            "vipd_state_sync_rejected_total{reason=\"forged\"} 0",
            "vipd_state_sync_lost_total{reason=\"ring_full\"} 0",
            "vipd_vrrp_split_brain_total{family=\"ipv6\"} 0",
            "vipd_vrrp_preemptions_total{family=\"ipv6\",by=\"peer\"} 0",
            "vipd_vrrp_adverts_rejected_total{family=\"ipv6\",reason=\"not_peer\"} 0",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
        for reason in Outcome::FAILURE_LABELS {
            let want = format!(
                "vipd_probe_failures_total{{backend=\"10.0.0.12:6443\",reason=\"{reason}\"}} 0"
            );
            assert!(text.contains(&want), "{want:?} missing in:\n{text}");
        }
        for want in [
            "vipd_probe_failures_total{backend=\"10.0.0.11:6443\",reason=\"tls\"} 0",
            "vipd_probe_failures_total{backend=\"10.0.0.11:6443\",reason=\"auth\"} 1",
            "vipd_probe_failures_total{backend=\"10.0.0.11:6443\",reason=\"timeout\"} 1",
            "vipd_probe_duration_seconds_count{backend=\"10.0.0.11:6443\"} 3",
            "vipd_backend_packets_total{backend=\"10.0.0.11:6443\"} 10",
            "vipd_backend_bytes_total{backend=\"10.0.0.11:6443\"} 1500",
            "vipd_cert_expiry_seconds{backend=\"10.0.0.11:6443\"} 86400",
            "vipd_dataplane_bytes_total{reason=\"tx_dsr\"} 60",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
    }

    #[test]
    fn health_endpoints_follow_the_agent() {
        let m = Metrics::new();
        assert_eq!(respond(&m, "GET", "/readyz").0, "503 Service Unavailable");
        m.beat();
        m.set_ready(true);
        assert_eq!(respond(&m, "GET", "/readyz").0, "200 OK");
        assert_eq!(respond(&m, "GET", "/healthz").0, "200 OK");
        assert_eq!(respond(&m, "POST", "/metrics").0, "405 Method Not Allowed");
        assert_eq!(respond(&m, "GET", "/nope").0, "404 Not Found");
        assert!(respond(&m, "GET", "/metrics?x=1").2.contains("# EOF"));
    }
}
