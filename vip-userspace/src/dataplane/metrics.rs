//! The program's own counters as metric families, read from its per-CPU
//! maps when Prometheus scrapes (a [`Collector`]), never copied: what the
//! XDP program did with every packet (`vipd_dataplane_*`, by [`Reason`])
//! and for each backend (`vipd_backend_packets_total`, ...).
//!
//! The maps outlive a vipd restart in their pins, so the values are the
//! program's whole history: a counter that reads them is monotonic without
//! any bookkeeping here.

use std::{
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
};

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{MetricType, family::Family, gauge::Gauge},
    registry::Unit,
};
use vip_common::{BackendStats, Counter, Reason};

use super::{Result, flows::Sweep};
use crate::metrics::{BackendLabel, Described, ReasonLabel, Scope};

/// Where the counters are read: the kernel's maps
/// ([`super::kernel::KernelCounters`]), or a table in tests.
pub trait CounterSource: Send + Sync + 'static {
    /// Reason counters summed over CPUs, indexed by `Reason as usize`.
    fn reasons(&self) -> Result<Vec<Counter>>;
    /// A backend's counters summed over CPUs.
    fn backend(&self, id: u32) -> Result<BackendStats>;
}

#[derive(Default)]
struct Shared {
    source: RwLock<Option<Arc<dyn CounterSource>>>,
    /// Every backend of the services, with its id in the maps if it has
    /// one: each gets its series (zeros without an id).
    backends: RwLock<Vec<(SocketAddr, Option<u32>)>>,
}

/// The agent's handle: where to read, and which backends there are.
#[derive(Clone, Default)]
pub struct DataplaneMetrics(Arc<Shared>);

const PACKETS: Described = Described {
    name: "dataplane_packets",
    help: "Packets by what the XDP program did with them",
    unit: None,
    kind: MetricType::Counter,
};
const BYTES: Described = Described {
    name: "dataplane",
    help: "Bytes by what the XDP program did with them",
    unit: Some(Unit::Bytes),
    kind: MetricType::Counter,
};
const BACKEND_PACKETS: Described = Described {
    name: "backend_packets",
    help: "Packets the XDP program forwarded to the backend",
    unit: None,
    kind: MetricType::Counter,
};
const BACKEND_BYTES: Described = Described {
    name: "backend",
    help: "Bytes the XDP program forwarded to the backend",
    unit: Some(Unit::Bytes),
    kind: MetricType::Counter,
};
const BACKEND_NEW_FLOWS: Described = Described {
    name: "backend_new_flows",
    help: "New flows the XDP program gave the backend",
    unit: None,
    kind: MetricType::Counter,
};
const BACKEND_RSTS: Described = Described {
    name: "backend_rsts",
    help: "RSTs the XDP program sent for the backend's flows",
    unit: None,
    kind: MetricType::Counter,
};

impl DataplaneMetrics {
    /// Registers the collector on `r` (the families carry their full names).
    pub fn register(r: &mut Scope) -> DataplaneMetrics {
        let m = DataplaneMetrics::default();
        r.register_collector(
            Collect(m.0.clone()),
            &[
                PACKETS,
                BYTES,
                BACKEND_PACKETS,
                BACKEND_BYTES,
                BACKEND_NEW_FLOWS,
                BACKEND_RSTS,
            ],
        );
        m
    }

    /// Reads from `source` from now on.
    pub fn read_from(&self, source: Arc<dyn CounterSource>) {
        *self
            .0
            .source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(source);
    }

    /// The backends of the services now, with their ids (after the start
    /// and each write of the maps).
    pub fn set_backends(&self, backends: Vec<(SocketAddr, Option<u32>)>) {
        *self
            .0
            .backends
            .write()
            .unwrap_or_else(PoisonError::into_inner) = backends;
    }
}

impl std::fmt::Debug for DataplaneMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataplaneMetrics")
    }
}

struct Collect(Arc<Shared>);

impl std::fmt::Debug for Collect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dataplane counters")
    }
}

impl Collector for Collect {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let Some(src) = self
            .0
            .source
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            return Ok(());
        };
        // A map that cannot be read gives no series this scrape (a gap in
        // the graph, never a false 0 that would read as a counter reset).
        if let Ok(c) = src.reasons() {
            let by_reason = |f: fn(&Counter) -> u64| {
                Reason::ALL
                    .iter()
                    .map(|r| {
                        (
                            ReasonLabel {
                                reason: r.label().to_owned(),
                            },
                            c.get(*r as usize).map_or(0, f),
                        )
                    })
                    .collect::<Vec<_>>()
            };
            PACKETS.encode_counters(&mut enc, by_reason(|c| c.packets))?;
            BYTES.encode_counters(&mut enc, by_reason(|c| c.bytes))?;
        }
        let backends = self
            .0
            .backends
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let stats: Vec<(BackendLabel, BackendStats)> = backends
            .into_iter()
            .map(|(addr, id)| {
                (
                    BackendLabel {
                        backend: addr.to_string(),
                    },
                    id.and_then(|id| src.backend(id).ok()).unwrap_or_default(),
                )
            })
            .collect();
        for (d, f) in [
            (
                &BACKEND_PACKETS,
                (|s| s.packets) as fn(&BackendStats) -> u64,
            ),
            (&BACKEND_BYTES, |s| s.bytes),
            (&BACKEND_NEW_FLOWS, |s| s.new_flows),
            (&BACKEND_RSTS, |s| s.rsts),
        ] {
            d.encode_counters(&mut enc, stats.iter().map(|(l, s)| (l.clone(), f(s))))?;
        }
        Ok(())
    }
}

/// The flow tables as the agent's sweep finds them, and what it did:
/// set at each sweep and each poke.
#[derive(Clone, Debug, Default)]
pub struct FlowMetrics {
    pub entries: Gauge,
    pub capacity: Gauge,
    pub swept: prometheus_client::metrics::counter::Counter,
    pub poked: prometheus_client::metrics::counter::Counter,
    pub backend_flows: Family<BackendLabel, Gauge>,
}

impl FlowMetrics {
    pub fn register(r: &mut Scope) -> FlowMetrics {
        let m = FlowMetrics::default();
        r.register(
            "conntrack_entries",
            "Live connection-table entries (counted every 10 s)",
            m.entries.clone(),
        );
        r.register(
            "conntrack_capacity",
            "Connection-table capacity (conntrack_capacity); entries over capacity is its fullness",
            m.capacity.clone(),
        );
        r.register(
            "conntrack_swept",
            "Expired flow entries (connection table and reverse NAT) deleted by the agent's sweep",
            m.swept.clone(),
        );
        r.register(
            "conntrack_poked",
            "Clients of a dead backend's flows poked so that their next packet gets the RST at once",
            m.poked.clone(),
        );
        r.register(
            "backend_flows",
            "Live flows in the connection table for the backend (counted every 10 s)",
            m.backend_flows.clone(),
        );
        m
    }

    /// A sweep's counts; `backends`: every backend with its id, as
    /// [`DataplaneMetrics::set_backends`] takes them.
    pub fn swept(&self, sw: &Sweep, backends: &[(SocketAddr, Option<u32>)]) {
        self.entries.set(sw.flows as i64);
        self.capacity.set(i64::from(sw.capacity));
        self.swept.inc_by(sw.removed);
        for (addr, id) in backends {
            let n = id.and_then(|id| sw.per_backend.get(&id).copied());
            self.backend_flows
                .get_or_create(&BackendLabel {
                    backend: addr.to_string(),
                })
                .set(n.unwrap_or(0) as i64);
        }
    }
}
