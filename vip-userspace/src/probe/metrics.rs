//! The probes' metric families: how long each probe took and why it failed,
//! per backend, counted as each outcome arrives.

use std::{net::SocketAddr, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Unit,
};

use super::Outcome;
use crate::metrics::{BackendLabel, Scope};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendReason {
    pub backend: String,
    pub reason: String,
}

fn probe_histogram() -> Histogram {
    // 1 ms .. 8 s: a LAN TLS handshake to a timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

type ProbeHistograms = Family<BackendLabel, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug)]
pub struct ProbeMetrics {
    pub duration: ProbeHistograms,
    pub failures: Family<BackendReason, Counter>,
}

impl ProbeMetrics {
    pub fn register(r: &mut Scope) -> ProbeMetrics {
        let m = ProbeMetrics {
            duration: Family::new_with_constructor(probe_histogram),
            failures: Family::default(),
        };
        r.register_with_unit(
            "probe_duration",
            "Health probe duration",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register(
            "probe_failures",
            "Failed probes by reason (timeout, refused, connect, tls, http_status, protocol, auth)",
            m.failures.clone(),
        );
        m
    }

    /// Exports the failure counters of `backends`, every reason, at 0
    /// before their first failure: Prometheus' `increase()` and `rate()`
    /// need a sample before the first event (a series born at 1 hides it).
    /// Called with every configured backend at start and after each reload
    /// (a removed backend's series stay, at their last value).
    pub fn known_backends(&self, backends: impl IntoIterator<Item = SocketAddr>) {
        for b in backends {
            let backend = b.to_string();
            for reason in Outcome::FAILURE_LABELS {
                // Creating the series is the point; the guard is not needed.
                drop(self.failures.get_or_create(&BackendReason {
                    backend: backend.clone(),
                    reason: reason.to_owned(),
                }));
            }
        }
    }

    /// One probe outcome.
    pub fn probe(&self, backend: SocketAddr, outcome: &Outcome, took: Duration) {
        let b = backend.to_string();
        self.duration
            .get_or_create(&BackendLabel { backend: b.clone() })
            .observe(took.as_secs_f64());
        if *outcome != Outcome::Up {
            self.failures
                .get_or_create(&BackendReason {
                    backend: b,
                    reason: outcome.label().to_owned(),
                })
                .inc();
        }
    }
}
