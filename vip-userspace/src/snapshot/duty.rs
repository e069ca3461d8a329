//! Whose turn it is: the scheduled snapshot as a pure state machine of
//! (wall-clock second, whether this node holds the VIP) to "take period N's
//! snapshot now", fed by the agent once a second.
//!
//! One snapshot per period for the cluster, even across a failover:
//! - every node computes the same slot per period ([`Schedule::slot`]);
//! - from the slot on, a node that holds the VIP (the VRRP master, the
//!   `hold_vips` node) asks to take the period's snapshot, and keeps asking
//!   (after a back-off) until it is done for that period;
//! - the shell then claims the period in etcd itself before streaming: an
//!   atomic create of `vipd/etcd-snapshot/period-N` under a lease as long as
//!   the snapshot may take. A master that finds the period claimed or done
//!   (by a previous master) records it as done and takes nothing: no two. A
//!   master that dies mid-way leaves a claim that expires with its lease, and
//!   the new master, still asking, claims it then: not none.
//!
//! etcd is the one place every control-plane node already agrees on, and
//! the snapshot is of etcd: if etcd cannot take a one-key transaction, it
//! cannot give a snapshot either. The VIP itself never depends on it.

use std::time::Duration;

use super::plan::Schedule;

/// What the shell reports back about period `period`'s attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Taken and verified here.
    Taken,
    /// Another node claimed or took it.
    Elsewhere,
    /// Failed; ask again after the back-off.
    Failed,
}

/// The scheduler's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duty {
    schedule: Schedule,
    /// The last period settled (taken here or elsewhere).
    settled: Option<u64>,
    /// A snapshot is being taken.
    running: Option<u64>,
    /// After a failure: no new attempt before this second.
    retry_at: u64,
    retry_after: u64,
}

impl Duty {
    /// A failed attempt is retried after a tenth of the interval, at least
    /// 5 s and at most 5 min: soon enough to land in the same period.
    pub fn new(schedule: Schedule) -> Duty {
        let retry_after = (schedule.interval / 10)
            .clamp(Duration::from_secs(5), Duration::from_secs(300))
            .as_secs();
        Duty {
            schedule,
            settled: None,
            running: None,
            retry_at: 0,
            retry_after,
        }
    }

    /// Once a second: `Some(period)` when this node is to take that
    /// period's snapshot now.
    pub fn tick(&mut self, unix: u64, holds: bool) -> Option<u64> {
        if self.running.is_some() || !holds || unix < self.retry_at {
            return None;
        }
        let n = self.schedule.period(unix);
        if unix < self.schedule.slot(n) || self.settled == Some(n) {
            return None;
        }
        self.running = Some(n);
        Some(n)
    }

    /// The attempt for `period` ended at `unix`.
    pub fn finished(&mut self, period: u64, outcome: Outcome, unix: u64) {
        if self.running == Some(period) {
            self.running = None;
        }
        match outcome {
            Outcome::Taken | Outcome::Elsewhere => {
                self.settled = Some(self.settled.map_or(period, |s| s.max(period)));
            }
            Outcome::Failed => self.retry_at = unix + self.retry_after,
        }
    }

    /// The period being taken, if one is.
    pub fn running(&self) -> Option<u64> {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duty() -> Duty {
        Duty::new(Schedule {
            interval: Duration::from_secs(100),
            jitter: Duration::ZERO,
        })
    }

    #[test]
    fn the_holder_takes_each_period_once() {
        let mut d = duty();
        assert_eq!(d.tick(1000, true), Some(10));
        // Running: nothing more, even at the next slot.
        assert_eq!(d.tick(1001, true), None);
        d.finished(10, Outcome::Taken, 1005);
        for t in 1006..1100 {
            assert_eq!(d.tick(t, true), None, "{t}");
        }
        assert_eq!(d.tick(1100, true), Some(11));
    }

    #[test]
    fn a_backup_never_takes_one() {
        let mut d = duty();
        assert!((1000..1300).all(|t| d.tick(t, false).is_none()));
    }

    #[test]
    fn a_new_master_mid_period_asks_and_the_claim_decides() {
        // Node B becomes master at 1050, after period 10's slot: it asks.
        let mut b = duty();
        assert_eq!(b.tick(1049, false), None);
        assert_eq!(b.tick(1050, true), Some(10));
        // The old master had taken it (the claim in etcd says so): settled,
        // no second snapshot in period 10, the next one is B's.
        b.finished(10, Outcome::Elsewhere, 1050);
        assert!((1051..1100).all(|t| b.tick(t, true).is_none()));
        assert_eq!(b.tick(1100, true), Some(11));
    }

    #[test]
    fn a_failure_is_retried_after_the_back_off_within_the_period() {
        let mut d = duty();
        assert_eq!(d.tick(1000, true), Some(10));
        // A tenth of the 100 s interval.
        d.finished(10, Outcome::Failed, 1001);
        assert!((1001..1011).all(|t| d.tick(t, true).is_none()));
        assert_eq!(d.tick(1011, true), Some(10));
        d.finished(10, Outcome::Taken, 1012);
        assert_eq!(d.tick(1013, true), None);
    }

    #[test]
    fn a_late_result_for_an_old_period_does_not_unsettle_a_newer_one() {
        let mut d = duty();
        assert_eq!(d.tick(1000, true), Some(10));
        d.finished(10, Outcome::Taken, 1000);
        assert_eq!(d.tick(1100, true), Some(11));
        d.finished(11, Outcome::Taken, 1100);
        d.finished(10, Outcome::Elsewhere, 1101);
        assert_eq!(d.tick(1150, true), None);
    }
}
