//! What the agent shows of itself in `vipd status`: the snapshot, rebuilt
//! once a second from the controller, the VRRP routers, the BPF counters
//! and the last flow-table sweep. (The metrics are the components' own,
//! see `telemetry`.)

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use tracing::warn;

use super::hold::VipHolder;
use crate::{
    config::{Config, Mode},
    controller::Controller,
    dataplane::{Maps, flows::Sweep},
    metrics::Metrics,
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
    /// `backends_from: kubernetes`: the discovery's state.
    pub discovery: Option<status::DiscoveryStatus>,
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
            discovery: None,
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

/// Publishes the status snapshot; once a second.
pub fn refresh<M: Maps>(m: &Metrics, ctl: &Controller<M>, holder: &dyn VipHolder, obs: &Observed) {
    let cfg = ctl.config();
    let now = SystemTime::now();
    let now_ms = status::unix_ms(now);
    let vrrp = holder
        .routers()
        .iter()
        .map(|r| router_status(cfg, r))
        .collect();
    let backends = backends(ctl, obs);
    let services = services(ctl, &backends);
    let flows = flows(cfg, obs);
    let sync = sync(obs);
    let announce = holder.routes();
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
        discovery: obs.discovery.clone(),
    };
    match serde_json::to_string(&snapshot) {
        Ok(j) => m.set_status(j),
        Err(e) => warn!(error = %e, "encoding the status failed"),
    }
}

/// One virtual router's status.
fn router_status(cfg: &Config, r: &RouterHandle) -> VrrpStatus {
    let family = router::label(r.family()).to_owned();
    let state = r.state();
    let info = r.info();
    let master = if state == State::Master {
        Some(info.source)
    } else {
        info.heard_master(std::time::Instant::now())
    };
    VrrpStatus {
        family,
        vrid: info.vrid.0,
        state: state.label().to_owned(),
        priority: info.priority.0,
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
                priority: p.priority.0,
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

/// Every backend's status.
fn backends<M: Maps>(ctl: &Controller<M>, obs: &Observed) -> HashMap<SocketAddr, BackendStatus> {
    let maps = ctl.programmer().maps();
    let ids: HashMap<SocketAddr, u32> = ctl.backend_ids().into_iter().collect();
    let mut backends: HashMap<SocketAddr, BackendStatus> = HashMap::new();
    for b in ctl.status() {
        let counters = ids
            .get(&b.addr)
            .and_then(|id| maps.backend_counters(*id).ok())
            .unwrap_or_default();
        let flows = obs.sweep.as_ref().map(|(s, _)| {
            ids.get(&b.addr)
                .and_then(|id| s.per_backend.get(id))
                .copied()
                .unwrap_or(0)
        });
        let last = obs.probe_last.get(&b.addr);
        backends.insert(
            b.addr,
            BackendStatus {
                address: b.addr,
                local: b.local,
                encap: b.encap.map(str::to_owned),
                state: b.state.label().to_owned(),
                serving: b.serving,
                cert: b.cert.label().to_owned(),
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

/// Every service's status, with its backends', and whether it fails open.
fn services<M: Maps>(
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
        let on = ctl.failing_open().contains_key(&name);
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

/// The flow tables as the last sweep found them.
fn flows(cfg: &Config, obs: &Observed) -> FlowStatus {
    match &obs.sweep {
        Some((s, at)) => FlowStatus {
            entries: Some(s.flows),
            capacity: s.capacity,
            nat_entries: cfg
                .services
                .iter()
                .any(|s| s.mode == Mode::Nat)
                .then_some(s.nat_flows),
            swept: obs.swept_total,
            last_sweep_unix_ms: Some(status::unix_ms(*at)),
        },
        None => FlowStatus {
            capacity: cfg.conntrack_capacity,
            ..FlowStatus::default()
        },
    }
}

/// State sync's counters.
fn sync(obs: &Observed) -> Option<SyncStatus> {
    obs.sync.as_ref().map(|st| {
        let nonzero = |v: Vec<(&str, u64)>| {
            v.into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(r, n)| (r.to_owned(), n))
                .collect()
        };
        SyncStatus {
            sent: st.sent.get(),
            received: st.received.get(),
            applied: st.applied.get(),
            rejected: nonzero(st.rejected()),
            lost: nonzero(st.lost(obs.sync_ring_lost)),
        }
    })
}
