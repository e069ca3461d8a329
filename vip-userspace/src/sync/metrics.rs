//! State sync's counters and their metric families
//! (`vipd_state_sync_*`): the shells count into [`SyncStats`] where each
//! record is sent, received, applied, refused or lost; the `ring_full`
//! losses live in the program's per-CPU `SYNC_LOST` counter and are read at
//! scrape time.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{MetricType, counter::Counter, family::Family},
};

use super::{LOST_LABELS, REJECT_LABELS};
use crate::metrics::{Described, ReasonLabel, Scope};

/// Counters shared by the shells, the metrics and the status. Its
/// `Default` counts into no family (a sync without an endpoint, tests).
#[derive(Clone, Debug, Default)]
pub struct SyncStats {
    /// Records sent, counted once per peer.
    pub sent: Counter,
    /// Records decoded from peers' datagrams.
    pub received: Counter,
    /// Records written to the maps (new or refreshed).
    pub applied: Counter,
    /// Indexed like [`REJECT_LABELS`].
    rejected: [Counter; REJECT_LABELS.len()],
    /// `unresolved`, `send_failed` (`ring_full` is the program's counter).
    pub(super) lost: [Counter; 2],
}

impl SyncStats {
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        REJECT_LABELS
            .iter()
            .zip(&self.rejected)
            .map(|(l, c)| (*l, c.get()))
            .collect()
    }

    /// Sender-side losses by label, `ring_full` given by the caller (it
    /// lives in the program's per-CPU counter).
    pub fn lost(&self, ring_full: u64) -> Vec<(&'static str, u64)> {
        vec![
            (LOST_LABELS[0], ring_full),
            (LOST_LABELS[1], self.lost[0].get()),
            (LOST_LABELS[2], self.lost[1].get()),
        ]
    }

    pub(super) fn reject(&self, label: &str) {
        let i = REJECT_LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(REJECT_LABELS.len() - 1);
        self.rejected[i].inc();
    }
}

/// Reads the program's ring-full count (summed over CPUs).
pub type RingFull = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// What the `state_sync_lost` collector reads once sync runs.
struct Lost {
    stats: SyncStats,
    ring_full: RingFull,
    /// The last ring-full count read: kept when a read fails, so the
    /// counter never goes back.
    last_ring_full: AtomicU64,
}

/// Every `vipd_state_sync_*` family.
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    sent: Counter,
    received: Counter,
    applied: Counter,
    rejected: Family<ReasonLabel, Counter>,
    lost: Arc<OnceLock<Lost>>,
}

const LOST: Described = Described {
    name: "lost",
    help: "New flows not replicated, by reason (ring_full, unresolved, send_failed): they reset after a failover",
    unit: None,
    kind: MetricType::Counter,
};

#[derive(Debug)]
struct LostCollector(Arc<OnceLock<Lost>>);

impl std::fmt::Debug for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lost").field("stats", &self.stats).finish()
    }
}

impl Collector for LostCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        // No series before sync runs, as for the other families.
        let Some(l) = self.0.get() else {
            return Ok(());
        };
        let ring_full = match (l.ring_full)() {
            Some(n) => {
                l.last_ring_full.fetch_max(n, Ordering::Relaxed);
                n.max(l.last_ring_full.load(Ordering::Relaxed))
            }
            None => l.last_ring_full.load(Ordering::Relaxed),
        };
        LOST.encode_counters(
            &mut enc,
            l.stats.lost(ring_full).into_iter().map(|(reason, n)| {
                (
                    ReasonLabel {
                        reason: reason.to_owned(),
                    },
                    n,
                )
            }),
        )
    }
}

impl SyncMetrics {
    /// Registers the families on `r`, which names them `vipd_state_sync_*`.
    pub fn register(r: &mut Scope) -> SyncMetrics {
        let m = SyncMetrics {
            sent: Counter::default(),
            received: Counter::default(),
            applied: Counter::default(),
            rejected: Family::default(),
            lost: Arc::new(OnceLock::new()),
        };
        r.register(
            "sent",
            "Mode nat flow records sent to state-sync peers (counted once per peer)",
            m.sent.clone(),
        );
        r.register(
            "received",
            "Flow records received from state-sync peers",
            m.received.clone(),
        );
        r.register(
            "applied",
            "Flow records from peers written to the flow tables (new or refreshed)",
            m.applied.clone(),
        );
        r.register(
            "rejected",
            "Flow records or datagrams from peers refused, by reason (stranger: not from a configured peer)",
            m.rejected.clone(),
        );
        r.register_collector(LostCollector(m.lost.clone()), &[LOST]);
        m
    }

    /// The counters of the sync that starts now, every reject and loss
    /// reason at 0 from here on (Prometheus' `increase()` needs a sample
    /// before the first event). They all start at 0 with each vipd: the
    /// program's ring-full count lives in a map that is not pinned.
    /// Called once; a second call counts into no family.
    pub fn stats(&self, ring_full: RingFull) -> SyncStats {
        let rejected = REJECT_LABELS.map(|reason| {
            self.rejected
                .get_or_create(&ReasonLabel {
                    reason: reason.to_owned(),
                })
                .clone()
        });
        let stats = SyncStats {
            sent: self.sent.clone(),
            received: self.received.clone(),
            applied: self.applied.clone(),
            rejected,
            lost: Default::default(),
        };
        // A second sync in one process does not happen (sync is fixed for
        // the life of the process); its losses would go uncounted.
        let _ = self.lost.set(Lost {
            stats: stats.clone(),
            ring_full,
            last_ring_full: AtomicU64::new(0),
        });
        stats
    }
}
