//! The etcd snapshots' metric families (`vipd_etcd_snapshot_*`), set by
//! the agent's snapshot shell as each attempt ends.

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use super::{SnapshotError, Taken};
use crate::metrics::{ReasonLabel, Scope};

#[derive(Clone, Debug, Default)]
pub struct SnapshotMetrics {
    pub last_success: Gauge,
    pub newest: Gauge,
    pub size: Gauge,
    pub duration: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub revision: Gauge,
    pub taken: Counter,
    pub failures: Family<ReasonLabel, Counter>,
}

impl SnapshotMetrics {
    /// Registers the families on `r`, which names them `vipd_etcd_snapshot_*`.
    pub fn register(r: &mut Scope) -> SnapshotMetrics {
        let m = SnapshotMetrics::default();
        r.register(
            "last_success_timestamp_seconds",
            "etcd snapshots: when this node last took and verified one (unix seconds; 0: not since start)",
            m.last_success.clone(),
        );
        r.register(
            "newest_timestamp_seconds",
            "etcd snapshots: when the newest verified snapshot in this node's snapshot folder was written (unix seconds; 0: none). The cluster's newest is the max over nodes",
            m.newest.clone(),
        );
        r.register(
            "size_bytes",
            "etcd snapshots: size of the last one this node took",
            m.size.clone(),
        );
        r.register(
            "duration_seconds",
            "etcd snapshots: how long the last one took, connection to rename",
            m.duration.clone(),
        );
        r.register(
            "revision",
            "etcd snapshots: the etcd revision of the last one this node took",
            m.revision.clone(),
        );
        r.register(
            "taken",
            "etcd snapshots taken and verified by this node",
            m.taken.clone(),
        );
        r.register(
            "failures",
            "etcd snapshots that failed, by reason (credentials, tls, unreachable, etcd, disk_space, disk_full, io, corrupt, timeout)",
            m.failures.clone(),
        );
        m
    }

    /// Every failure reason at 0 from the start (with `snapshot:` on):
    /// Prometheus' `increase()` needs a sample before the first failure.
    pub fn known(&self) {
        for reason in SnapshotError::REASONS {
            drop(self.failures.get_or_create(&ReasonLabel {
                reason: (*reason).to_owned(),
            }));
        }
    }

    pub fn failed(&self, reason: &str) {
        self.failures
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A snapshot taken and verified at `unix` (seconds).
    pub fn taken(&self, t: &Taken, unix: u64) {
        self.last_success.set(unix as i64);
        self.size.set(t.size as i64);
        self.duration.set(t.duration.as_secs_f64());
        self.revision.set(t.revision as i64);
        self.taken.inc();
    }
}
