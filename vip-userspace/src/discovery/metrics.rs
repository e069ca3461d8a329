//! `vipd_discovery_*`: where the backend list comes from, when the
//! apiserver last answered, and why it did not.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use super::{Discovery, Source};
use crate::metrics::{ReasonLabel, Scope};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Default)]
pub struct DiscoveryMetrics {
    pub source: Family<SourceLabel, Gauge>,
    pub last_sync: Gauge,
    pub errors: Family<ReasonLabel, Counter>,
    pub backends: Gauge,
    pub candidates: Gauge,
}

/// The error labels (`ClientError::label`), at 0 from the start.
const REASONS: &[&str] = &["credentials", "unreachable", "forbidden", "status", "watch"];

impl DiscoveryMetrics {
    /// Registers the families on `r`, which names them `vipd_discovery_*`.
    pub fn register(r: &mut Scope) -> DiscoveryMetrics {
        let m = DiscoveryMetrics::default();
        r.register(
            "source",
            "Where the backends of the backends_from services come from: 1 for the current source (file: nothing known yet; cache: the last known set, the apiserver has not answered since start; kubernetes: the EndpointSlices)",
            m.source.clone(),
        );
        r.register(
            "last_sync_timestamp_seconds",
            "When the apiserver's EndpointSlices were last read (unix seconds; 0: not since start)",
            m.last_sync.clone(),
        );
        r.register(
            "errors",
            "Failed lists and watches of the EndpointSlices, by reason (credentials, unreachable, forbidden, status, watch); the backend set stays meanwhile",
            m.errors.clone(),
        );
        r.register(
            "backends",
            "Backends admitted from the EndpointSlices (or the cache), both families",
            m.backends.clone(),
        );
        r.register(
            "candidates",
            "Apiservers listed but not admitted yet (probe rise or certificate pending)",
            m.candidates.clone(),
        );
        for reason in REASONS {
            drop(m.errors.get_or_create(&ReasonLabel {
                reason: (*reason).to_owned(),
            }));
        }
        m
    }

    pub fn failed(&self, reason: &str) {
        self.errors
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The state after each change.
    pub fn show(&self, d: &Discovery) {
        for s in [Source::File, Source::Cache, Source::Kubernetes] {
            self.source
                .get_or_create(&SourceLabel {
                    source: s.label().to_owned(),
                })
                .set(i64::from(s == d.source));
        }
        let unix = d
            .last_sync
            .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |t| t.as_secs());
        self.last_sync.set(unix as i64);
        self.backends.set(d.admission.all().len() as i64);
        self.candidates.set(d.admission.candidates().len() as i64);
    }
}
