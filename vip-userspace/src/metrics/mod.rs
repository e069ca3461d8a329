//! Prometheus metrics: the registry every component registers its own
//! families on, and what the HTTP endpoint serves ([`http`]). Names follow
//! the Prometheus conventions: the `vipd_` prefix, `_total` on counters,
//! base units (seconds, bytes).
//!
//! The pattern is linkerd2-proxy's (`linkerd/http/prom`): each component
//! owns its families, registers them through `register(&mut Scope) -> Self`
//! and updates them where its events happen (the VRRP router when it sends
//! an advert, the sync receiver when it applies a record, ...). Counters
//! that live in the kernel (the program's per-CPU counters) are not copied
//! at all: a [`Collector`] reads them when Prometheus scrapes. This module
//! knows no component; the agent assembles them (`agent::telemetry`).

pub mod http;

use std::{
    fmt,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{MetricType, counter::ConstCounter},
    registry::{Metric, Registry, Unit},
};
use tracing::warn;

pub use http::serve;

/// Every family's name starts with this.
pub const PREFIX: &str = "vipd";

/// The label of anything per backend (`address:port`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: String,
}

/// A reason label (drop reasons, sync rejects and losses, snapshot failures).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// The registry being built: the components register on it through
/// [`Registrar::scope`], and it notes each family's exposed name and type
/// for [`Metrics::families`].
pub struct Registrar {
    registry: Registry,
    families: Vec<(String, MetricType)>,
}

impl Default for Registrar {
    fn default() -> Self {
        Registrar {
            registry: Registry::with_prefix(PREFIX),
            families: Vec::new(),
        }
    }
}

impl Registrar {
    /// Families named `vipd_{prefix}_{name}` (`vipd_{name}` for an empty
    /// prefix), registered in a sub-registry of their own.
    pub fn scope(&mut self, prefix: &str) -> Scope<'_> {
        let (registry, full) = if prefix.is_empty() {
            (&mut self.registry, PREFIX.to_owned())
        } else {
            (
                self.registry.sub_registry_with_prefix(prefix),
                format!("{PREFIX}_{prefix}"),
            )
        };
        Scope {
            registry,
            prefix: full,
            families: &mut self.families,
        }
    }
}

/// One component's part of the registry.
pub struct Scope<'a> {
    registry: &'a mut Registry,
    prefix: String,
    families: &'a mut Vec<(String, MetricType)>,
}

impl Scope<'_> {
    pub fn register(&mut self, name: &str, help: &str, m: impl Metric) {
        self.families
            .push((format!("{}_{name}", self.prefix), m.metric_type()));
        self.registry.register(name, help, m);
    }

    pub fn register_with_unit(&mut self, name: &str, help: &str, unit: Unit, m: impl Metric) {
        self.families.push((
            format!("{}_{name}_{}", self.prefix, unit.as_str()),
            m.metric_type(),
        ));
        self.registry.register_with_unit(name, help, unit, m);
    }

    /// A collector, read at each scrape, that writes `families`.
    pub fn register_collector(&mut self, c: impl Collector, families: &[Described]) {
        for d in families {
            let name = match &d.unit {
                Some(u) => format!("{}_{}_{}", self.prefix, d.name, u.as_str()),
                None => format!("{}_{}", self.prefix, d.name),
            };
            self.families.push((name, d.kind));
        }
        self.registry.register_collector(Box::new(c));
    }
}

/// A family a [`Collector`] writes: its name (without prefix and unit),
/// help, unit and type, said once for the registry and the scrape.
#[derive(Debug)]
pub struct Described {
    pub name: &'static str,
    pub help: &'static str,
    pub unit: Option<Unit>,
    pub kind: MetricType,
}

impl Described {
    /// Writes this counter family with `series`; nothing at all without
    /// series, as the registry leaves out an empty [`Family`].
    ///
    /// [`Family`]: prometheus_client::metrics::family::Family
    pub fn encode_counters<L: EncodeLabelSet>(
        &self,
        enc: &mut DescriptorEncoder,
        series: impl IntoIterator<Item = (L, u64)>,
    ) -> fmt::Result {
        let mut series = series.into_iter().peekable();
        if series.peek().is_none() {
            return Ok(());
        }
        // The registry appends the full stop to a registered family's help
        // (prometheus-client's `Descriptor::new`); the same text here.
        let help = format!("{}.", self.help);
        let mut fam = enc.encode_descriptor(self.name, &help, self.unit.as_ref(), self.kind)?;
        for (labels, v) in series {
            ConstCounter::new(v).encode(fam.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The registry as the endpoint serves it, and the agent's own health.
pub struct Metrics {
    registry: Registry,
    /// Every family as registered, see [`Metrics::families`].
    families: Vec<(String, MetricType)>,
    /// The last `vipd status` snapshot (JSON), served at /status.
    status: Mutex<String>,
    /// Set once the program is attached and the services are written.
    ready: AtomicBool,
    /// Milliseconds from `started` to the agent loop's last turn, for /healthz.
    heartbeat_ms: AtomicU64,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Registrar::default())
    }
}

/// /healthz fails when the agent loop has not turned for this long (it
/// turns at least once a second).
const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

impl Metrics {
    /// The registry the components filled.
    pub fn new(r: Registrar) -> Metrics {
        Metrics {
            registry: r.registry,
            families: r.families,
            status: Mutex::new(String::new()),
            ready: AtomicBool::new(false),
            heartbeat_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Every family's exposed name (prefix and unit included, before the
    /// `_total`/`_bucket` sample suffixes) and type, with or without
    /// series: the text encoding leaves out families without series, and
    /// the checks of deploy/'s dashboard and alert rules need them all.
    pub fn families(&self) -> &[(String, MetricType)] {
        &self.families
    }

    /// Replaces the snapshot `/status` serves.
    pub fn set_status(&self, json: String) {
        *self.status.lock().unwrap_or_else(PoisonError::into_inner) = json;
    }

    fn status(&self) -> String {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Marks the agent ready (or not) for /readyz.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
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
