//! What the agent shows of itself: the Prometheus metrics and the `vipd
//! status` snapshot, both rebuilt once a second from the controller, the
//! VRRP routers, the BPF counters and the last flow-table sweep.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use tracing::warn;
use vip_common::Reason;

use super::hold::VipHolder;
use crate::{
    config::{Config, Mode},
    controller::{BACKEND_STATES, CertState, Controller},
    dataplane::{Maps, flows::Sweep},
    metrics::{
        BackendLabel, BackendState, FamilyBy, FamilyLabel, FamilyReason, FamilyState, Metrics,
        ReasonLabel, ServiceLabel, VipLabel, VipReason, mirror,
    },
    status::{
        self, BackendChange, BackendStatus, ChangeStatus, FailoverStatus, FlowStatus, PeerStatus,
        ServiceStatus, Status, SyncStatus, VrrpStatus,
    },
    vrrp::{
        Family,
        machine::State,
        router::{self, RouterHandle},
    },
};

/// What the agent loop learns between refreshes and status shows.
pub struct Observed {
    pub node: String,
    pub started: SystemTime,
    /// How the program was attached (native, skb, adopted).
    pub attached: String,
    pub xdp_ok: bool,
    /// Per backend: the last probe's latency and outcome label.
    pub probe_last: HashMap<SocketAddr, (Duration, &'static str)>,
    /// Per backend: its last state change.
    pub changed: HashMap<SocketAddr, BackendChange>,
    pub sweep: Option<(Sweep, SystemTime)>,
    pub swept_total: u64,
    /// State sync's counters, and the program's count of events lost to a
    /// full ring (read by the agent loop).
    pub sync: Option<std::sync::Arc<crate::sync::SyncStats>>,
    pub sync_ring_lost: u64,
    /// `snapshot:` on: the folder as last read.
    pub etcd_snapshot: Option<status::EtcdSnapshotStatus>,
    /// Failovers already observed in the histogram, per family.
    failovers_seen: HashMap<Family, u64>,
    /// Per backend: its apiserver's gitVersion, last read.
    pub versions: std::collections::BTreeMap<SocketAddr, String>,
    /// The version-skew decision over `versions`.
    pub skew: crate::version::Skew,
}

impl Observed {
    pub fn new(attached: String) -> Observed {
        Observed {
            // The name the config's `nodes:` entry is picked by (NODE_NAME,
            // else the hostname): in a DaemonSet every pod's hostname may be
            // the same, and `vipd status --group` tells nodes apart by it.
            node: Some(crate::config::node::node_name())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            started: SystemTime::now(),
            attached,
            xdp_ok: true,
            probe_last: HashMap::new(),
            versions: Default::default(),
            skew: Default::default(),
            changed: HashMap::new(),
            sweep: None,
            swept_total: 0,
            sync: None,
            sync_ring_lost: 0,
            etcd_snapshot: None,
            failovers_seen: HashMap::new(),
        }
    }

    /// A backend changed state.
    pub fn record_change(&mut self, addr: SocketAddr, to: &str, reason: String) {
        self.changed.insert(
            addr,
            BackendChange {
                at_unix_ms: status::unix_ms(SystemTime::now()),
                to: to.to_owned(),
                reason,
            },
        );
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// Copies what lives elsewhere (controller, VIP holder, BPF counters)
/// into the metrics and publishes the status snapshot; once a second.
pub fn refresh<M: Maps>(
    m: &Metrics,
    ctl: &Controller<M>,
    holder: &dyn VipHolder,
    obs: &mut Observed,
) {
    let cfg = ctl.config();
    let now = SystemTime::now();
    let now_ms = status::unix_ms(now);
    let vrrp = holder
        .routers()
        .iter()
        .map(|r| {
            let seen = obs.failovers_seen.entry(r.family()).or_default();
            router_status(m, cfg, r, seen)
        })
        .collect();
    let backends = backends(m, ctl, obs);
    certs(m, ctl, now);
    let services = services(m, ctl, &backends);
    dataplane(m, ctl.programmer().maps());
    let flows = flows(m, cfg, obs);
    let sync = sync(m, obs);
    let announce = holder.routes();
    routes(m, &announce);
    let snapshot = Status {
        version: env!("CARGO_PKG_VERSION").into(),
        node: obs.node.clone(),
        interface: cfg.interface.clone(),
        xdp_mode: obs.attached.clone(),
        xdp_attached: obs.xdp_ok,
        vip_holding: holder.label().into(),
        started_unix_ms: status::unix_ms(obs.started),
        at_unix_ms: now_ms,
        vrrp,
        announce,
        services,
        flows,
        sync,
        version_skew: obs.skew.warning(),
        etcd_snapshot: obs.etcd_snapshot.clone(),
    };
    match serde_json::to_string(&snapshot) {
        Ok(j) => m.set_status(j),
        Err(e) => warn!(error = %e, "encoding the status failed"),
    }
}

/// `announce`: each VIP's route and its withdrawals.
fn routes(m: &Metrics, routes: &[status::RouteStatus]) {
    for r in routes {
        let vip = r.vip.to_string();
        m.announce_route_installed
            .get_or_create(&VipLabel { vip: vip.clone() })
            .set(i64::from(r.installed));
        for (reason, n) in &r.withdrawals {
            mirror(
                &m.announce_withdrawals.get_or_create(&VipReason {
                    vip: vip.clone(),
                    reason: reason.clone(),
                }),
                *n,
            );
        }
    }
}

/// One virtual router's metrics and status; `seen`: the failovers already
/// in the histogram.
fn router_status(m: &Metrics, cfg: &Config, r: &RouterHandle, seen: &mut u64) -> VrrpStatus {
    let family = router::label(r.family()).to_owned();
    let fl = FamilyLabel {
        family: family.clone(),
    };
    let state = r.state();
    for st in [State::Initialize, State::Backup, State::Master] {
        m.vrrp_state
            .get_or_create(&FamilyState {
                family: family.clone(),
                state: st.label().to_owned(),
            })
            .set(i64::from(state == st));
    }
    let info = r.info();
    m.vrrp_priority
        .get_or_create(&fl)
        .set(i64::from(info.priority));
    m.vrrp_held
        .get_or_create(&fl)
        .set(i64::from(info.hold.is_some()));
    let s = r.stats();
    mirror(
        &m.vrrp_became_master.get_or_create(&fl),
        load(&s.became_master),
    );
    mirror(&m.vrrp_left_master.get_or_create(&fl), load(&s.left_master));
    mirror(
        &m.vrrp_adverts_sent.get_or_create(&fl),
        load(&s.adverts_sent),
    );
    mirror(
        &m.vrrp_adverts_received.get_or_create(&fl),
        load(&s.adverts_received),
    );
    mirror(&m.vrrp_split_brain.get_or_create(&fl), load(&s.split_brain));
    for (by, c) in [
        ("this_node", &s.preempted_by_us),
        ("peer", &s.preempted_by_peer),
    ] {
        mirror(
            &m.vrrp_preemptions.get_or_create(&FamilyBy {
                family: family.clone(),
                by: by.to_owned(),
            }),
            load(c),
        );
    }
    for (label, c) in crate::vrrp::packet::DISCARD_LABELS.iter().zip(&s.discards) {
        mirror(
            &m.vrrp_adverts_rejected.get_or_create(&FamilyReason {
                family: family.clone(),
                reason: (*label).to_owned(),
            }),
            load(c),
        );
    }
    // Each takeover once in the histogram; between two refreshes (1 s)
    // there is at most one, the router keeps the last.
    if info.failovers > *seen {
        if let Some(f) = &info.last_failover {
            m.vrrp_failover_duration
                .get_or_create(&fl)
                .observe(f.took.as_secs_f64());
        }
        *seen = info.failovers;
    }
    let master = if state == State::Master {
        Some(info.source)
    } else {
        info.heard_master(std::time::Instant::now())
    };
    VrrpStatus {
        family,
        vrid: info.vrid,
        state: state.label().to_owned(),
        priority: info.priority,
        configured_priority: cfg.vrrp.as_ref().map_or(0, |v| v.priority()),
        held: info.hold.clone(),
        source: info.source,
        vips: cfg
            .vips()
            .into_iter()
            .filter(|v| Family::of(v) == r.family())
            .collect(),
        master,
        peers: info
            .peers
            .iter()
            .map(|(a, p)| PeerStatus {
                address: *a,
                priority: p.priority,
                last_heard_unix_ms: status::unix_ms(p.at),
            })
            .collect(),
        last_change: info.last_change.as_ref().map(|c| ChangeStatus {
            at_unix_ms: status::unix_ms(c.at),
            from: c.from.label().to_owned(),
            to: c.to.label().to_owned(),
            why: c.why.clone(),
        }),
        last_failover: info.last_failover.as_ref().map(|f| FailoverStatus {
            at_unix_ms: status::unix_ms(f.at),
            took_ms: f.took.as_millis() as u64,
            from: f.from,
            why: f.why.clone(),
        }),
    }
}

/// Every backend's metrics and status.
fn backends<M: Maps>(
    m: &Metrics,
    ctl: &Controller<M>,
    obs: &Observed,
) -> HashMap<SocketAddr, BackendStatus> {
    let maps = ctl.programmer().maps();
    let ids: HashMap<SocketAddr, u32> = ctl.backend_ids().into_iter().collect();
    let mut backends: HashMap<SocketAddr, BackendStatus> = HashMap::new();
    for b in ctl.status() {
        let backend = b.addr.to_string();
        for st in BACKEND_STATES {
            m.backend_state
                .get_or_create(&BackendState {
                    backend: backend.clone(),
                    state: st.to_owned(),
                })
                .set(i64::from(b.state == st));
        }
        let bl = BackendLabel {
            backend: backend.clone(),
        };
        m.backend_serving
            .get_or_create(&bl)
            .set(i64::from(b.serving));
        let counters = ids
            .get(&b.addr)
            .and_then(|id| maps.backend_counters(*id).ok())
            .unwrap_or_default();
        mirror(&m.backend_packets.get_or_create(&bl), counters.packets);
        mirror(&m.backend_bytes.get_or_create(&bl), counters.bytes);
        mirror(&m.backend_new_flows.get_or_create(&bl), counters.new_flows);
        mirror(&m.backend_rsts.get_or_create(&bl), counters.rsts);
        let flows = obs.sweep.as_ref().map(|(s, _)| {
            ids.get(&b.addr)
                .and_then(|id| s.per_backend.get(id))
                .copied()
                .unwrap_or(0)
        });
        if let Some(f) = flows {
            m.backend_flows.get_or_create(&bl).set(f as i64);
        }
        let last = obs.probe_last.get(&b.addr);
        backends.insert(
            b.addr,
            BackendStatus {
                address: b.addr,
                local: b.local,
                encap: b.encap.map(str::to_owned),
                state: b.state.to_owned(),
                serving: b.serving,
                cert: b.cert.to_owned(),
                last_probe: last.map(|(_, l)| (*l).to_owned()),
                probe_latency_ms: last.map(|(d, _)| d.as_secs_f64() * 1e3),
                flows,
                new_flows: counters.new_flows,
                packets: counters.packets,
                bytes: counters.bytes,
                rsts: counters.rsts,
                last_change: obs.changed.get(&b.addr).cloned(),
                version: obs.versions.get(&b.addr).cloned(),
            },
        );
    }
    backends
}

/// The certificate gate's view of each backend's certificate.
fn certs<M: Maps>(m: &Metrics, ctl: &Controller<M>, now: SystemTime) {
    for (addr, c) in ctl.certs() {
        let bl = BackendLabel {
            backend: addr.to_string(),
        };
        if let CertState::Ok(r) | CertState::Missing(r) = c {
            m.cert_san_ok
                .get_or_create(&bl)
                .set(i64::from(matches!(c, CertState::Ok(_))));
            m.cert_expiry
                .get_or_create(&bl)
                .set(r.seconds_to_expiry(now));
        }
    }
}

/// Every service's status, with its backends', and whether it fails open.
fn services<M: Maps>(
    m: &Metrics,
    ctl: &Controller<M>,
    backends: &HashMap<SocketAddr, BackendStatus>,
) -> Vec<ServiceStatus> {
    let cfg = ctl.config();
    let here: Vec<IpAddr> = match crate::link::addresses(&cfg.interface) {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "reading the interface addresses for status failed");
            vec![]
        }
    };
    let mut services = vec![];
    for s in &cfg.services {
        let name = SocketAddr::new(s.vip, s.port).to_string();
        let on = ctl.failing_open().contains(&name);
        m.fail_open
            .get_or_create(&ServiceLabel { service: name })
            .set(i64::from(on));
        let mut bs = vec![];
        for b in &s.backends {
            let addr = SocketAddr::new(b.address, b.port.unwrap_or(s.port));
            if let Some(st) = backends.get(&addr) {
                bs.push(st.clone());
            }
        }
        services.push(ServiceStatus {
            vip: s.vip,
            port: s.port,
            protocol: format!("{:?}", s.protocol).to_lowercase(),
            mode: match s.mode {
                Mode::Dsr => "dsr",
                Mode::Nat => "nat",
            }
            .into(),
            vip_here: here.contains(&s.vip),
            fail_open: on,
            backends: bs,
        });
    }
    services
}

/// The program's verdict and drop counters.
fn dataplane<M: Maps>(m: &Metrics, maps: &M) {
    if let Ok(c) = maps.reason_counters() {
        for r in Reason::ALL {
            let rl = ReasonLabel {
                reason: r.label().to_owned(),
            };
            mirror(
                &m.dataplane_packets.get_or_create(&rl),
                c[*r as usize].packets,
            );
            mirror(&m.dataplane_bytes.get_or_create(&rl), c[*r as usize].bytes);
        }
    }
}

/// The flow tables as the last sweep found them.
fn flows(m: &Metrics, cfg: &Config, obs: &Observed) -> FlowStatus {
    let flows = match &obs.sweep {
        Some((s, at)) => {
            m.conntrack_entries.set(s.flows as i64);
            m.conntrack_capacity.set(i64::from(s.capacity));
            FlowStatus {
                entries: Some(s.flows),
                capacity: s.capacity,
                nat_entries: cfg
                    .services
                    .iter()
                    .any(|s| s.mode == Mode::Nat)
                    .then_some(s.nat_flows),
                swept: obs.swept_total,
                last_sweep_unix_ms: Some(status::unix_ms(*at)),
            }
        }
        None => FlowStatus {
            capacity: cfg.conntrack_capacity,
            ..FlowStatus::default()
        },
    };
    mirror(&m.conntrack_swept, obs.swept_total);
    flows
}

/// State sync's counters.
fn sync(m: &Metrics, obs: &Observed) -> Option<SyncStatus> {
    obs.sync.as_ref().map(|st| {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut y = SyncStatus {
            sent: load(&st.sent),
            received: load(&st.received),
            applied: load(&st.applied),
            ..SyncStatus::default()
        };
        mirror(&m.state_sync_sent, y.sent);
        mirror(&m.state_sync_received, y.received);
        mirror(&m.state_sync_applied, y.applied);
        for (reason, n) in st.rejected() {
            let l = ReasonLabel {
                reason: reason.to_owned(),
            };
            mirror(&m.state_sync_rejected.get_or_create(&l), n);
            if n > 0 {
                y.rejected.insert(reason.to_owned(), n);
            }
        }
        for (reason, n) in st.lost(obs.sync_ring_lost) {
            let l = ReasonLabel {
                reason: reason.to_owned(),
            };
            mirror(&m.state_sync_lost.get_or_create(&l), n);
            if n > 0 {
                y.lost.insert(reason.to_owned(), n);
            }
        }
        y
    })
}
