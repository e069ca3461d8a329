//! The shell of the scheduled etcd snapshot: the pure [`Duty`] in
//! [`super::state`] says when; this spawns the claim-and-take
//! ([`crate::snapshot::take_scheduled`]) off the agent loop, and turns its
//! result into metrics, log lines and the [`Outcome`] the state is told.
//!
//! [`Duty`]: crate::snapshot::duty::Duty

use std::{net::IpAddr, time::Duration};

use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::hold::Holding;
use crate::{
    config::Config,
    snapshot::{
        self, Scheduled, SnapshotError, SnapshotPlan,
        duty::{self, Outcome, Turn},
        metrics::SnapshotMetrics,
    },
    status::EtcdSnapshotStatus,
};

pub type Done = (u64, Result<Scheduled, SnapshotError>);

pub struct Snapshots {
    plan: SnapshotPlan,
    /// This node in the period's claim (its first address on the interface).
    node: String,
    /// In `announce` mode, how long after each slot this node's turn
    /// comes ([`head_start`]).
    head_start: Duration,
    tx: mpsc::UnboundedSender<Done>,
    /// The last scheduled attempt's error since the last success.
    last_error: Option<String>,
    metrics: SnapshotMetrics,
}

/// This node's head start in `announce` mode ([`duty::head_start`]): its
/// rank by address among `snapshot.nodes`, else among the configuration's
/// backends and state-sync peers (in the stacked shape, the control-plane
/// nodes: the etcd members). Read once at start; a reload that changes
/// them changes the order only from the next start, and the claim keeps
/// the take unique meanwhile.
pub fn head_start(cfg: &Config, own: &[IpAddr], plan: &SnapshotPlan) -> Duration {
    let mut nodes = plan.nodes.clone();
    if nodes.is_empty() {
        nodes.extend(
            cfg.services
                .iter()
                .flat_map(|s| s.backends.iter().map(|b| b.address)),
        );
        if let Some(sync) = &cfg.state_sync {
            nodes.extend(&sync.peers);
        }
    }
    duty::head_start(own, &nodes, duty::rank_step(plan.schedule.interval))
}

impl Snapshots {
    pub fn new(
        plan: SnapshotPlan,
        node: String,
        head_start: Duration,
        metrics: SnapshotMetrics,
    ) -> (Snapshots, mpsc::UnboundedReceiver<Done>) {
        metrics.known();
        newest_on_disk(&plan, &metrics);
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Snapshots {
                plan,
                node,
                head_start,
                tx,
                last_error: None,
                metrics,
            },
            rx,
        )
    }

    /// Whether the snapshot is this node's to take, as the holder says
    /// (`None`: no holder yet, or stopping).
    pub fn turn(&self, holding: Option<Holding>) -> Turn {
        match holding {
            Some(Holding::Alone) => Turn::After(0),
            Some(Holding::Shared) => Turn::After(self.head_start.as_secs()),
            Some(Holding::No) | None => Turn::No,
        }
    }

    /// Takes period `period`'s snapshot on a blocking-pool thread.
    ///
    /// Not a task on the agent's runtime, which is one thread: a take reads
    /// and hashes the new file and every snapshot it keeps (synchronous
    /// reads, the size of etcd's database each) and fsyncs the folder, and
    /// all that time the runtime's other tasks (probes and their timeouts,
    /// the API, state sync) would wait.
    pub fn spawn(&self, period: u64) {
        let (plan, node, tx) = (self.plan.clone(), self.node.clone(), self.tx.clone());
        info!(period, slot = %snapshot::plan::stamp(plan.schedule.slot(period)), "etcd snapshot: this node holds the VIP, claiming the period");
        // A blocking-pool thread with a runtime of its own for the take's
        // network part; spawn_blocking cannot fail, so every attempt ends
        // with a Done.
        tokio::task::spawn_blocking(move || {
            let r = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(snapshot::take_scheduled(&plan, period, &node)),
                Err(source) => Err(SnapshotError::Io {
                    what: "start a runtime for the snapshot into",
                    path: plan.dir.clone(),
                    source,
                }),
            };
            let _ = tx.send((period, r));
        });
    }

    /// Metrics and logs for a finished attempt; what the state is told.
    pub fn done(&mut self, (period, r): Done) -> Outcome {
        match r {
            Ok(Scheduled::Taken(t)) => {
                info!(
                    period,
                    file = %t.path.display(),
                    size = t.size,
                    revision = t.revision,
                    keys = t.total_keys,
                    seconds = t.duration.as_secs_f64(),
                    pruned = t.pruned.len(),
                    "etcd snapshot taken and verified"
                );
                for c in &t.corrupt {
                    error!(file = %c, "a snapshot on disk is corrupt: kept out of retention and left in place; look at it and move it away");
                    self.metrics.failed("corrupt");
                }
                self.metrics.taken(&t, snapshot::unix_now());
                newest_on_disk(&self.plan, &self.metrics);
                self.last_error = None;
                Outcome::Taken
            }
            Ok(Scheduled::Elsewhere(by)) => {
                info!(period, by = %by, "etcd snapshot: this period's snapshot is another node's");
                Outcome::Elsewhere
            }
            Err(e) => {
                warn!(period, reason = e.reason(), error = %e, "etcd snapshot failed; retrying");
                self.metrics.failed(e.reason());
                self.last_error = Some(format!("[{}] {e}", e.reason()));
                Outcome::Failed
            }
        }
    }
}

impl Snapshots {
    /// The folder for `vipd status`, and the newest-snapshot metric (the
    /// folder also gets `vipd etcd-snapshot`'s one-off snapshots).
    pub fn status(&self) -> EtcdSnapshotStatus {
        let (newest, written) = newest_on_disk(&self.plan, &self.metrics);
        EtcdSnapshotStatus {
            dir: self.plan.dir.display().to_string(),
            newest_unix_ms: written.map(|t| t * 1000),
            newest_bytes: newest.as_ref().map(|n| n.size),
            newest: newest.map(|n| n.name),
            last_error: self.last_error.clone(),
        }
    }
}

/// The newest snapshot in the folder and when it was written (its
/// modification time, not the period its name carries), into the metric.
fn newest_on_disk(
    plan: &SnapshotPlan,
    metrics: &SnapshotMetrics,
) -> (Option<snapshot::Newest>, Option<u64>) {
    let newest = snapshot::list(&plan.dir)
        .ok()
        .and_then(|l| l.into_iter().next());
    let written = newest
        .as_ref()
        .and_then(|n| std::fs::metadata(plan.dir.join(&n.name)).ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    metrics
        .newest
        .set(written.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)));
    (newest, written)
}
