//! Whose turn it is: the scheduled snapshot as a pure state machine of
//! (wall-clock second, whether and how soon it is this node's turn) to "take
//! period N's snapshot now", fed by the agent once a second.
//!
//! One snapshot per period for the cluster, even across a failover:
//! - every node computes the same slot per period ([`Schedule::slot`]);
//! - from the slot on, a node that holds the VIP (the VRRP master, the
//!   `hold_vips` node) asks to take the period's snapshot, and keeps asking
//!   (after a back-off) until it is done for that period;
//! - in `announce` mode every serving node holds the VIP at once (ECMP), so
//!   the nodes take turns by address ([`head_start`]): the lowest goes at
//!   the slot, each next one a step later, and a node that announces no
//!   route does not ask at all;
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

use std::{net::IpAddr, time::Duration};

use super::plan::Schedule;

/// Whether this node is to take the periods' snapshots, and how soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Not this node's: a VRRP backup, an `announce` node with every route
    /// withdrawn, a node that does not know who holds the VIP.
    No,
    /// This node's, from each period's slot plus this head start (seconds):
    /// 0 for the one VIP holder, the address rank's delay in `announce`.
    After(u64),
}

/// The delay between two ranks in `announce` mode: a hundredth of the
/// interval, at least 1 s and at most 1 min (five nodes' turns fit in the
/// first 5 min after a daily slot). The lowest node's claim is one etcd
/// transaction, milliseconds; the step only has to outlast it.
pub fn rank_step(interval: Duration) -> Duration {
    (interval / 100).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// `announce` mode's head start for this node: every node that announces
/// the VIP's route holds it, so none is "the" holder, and which peers'
/// routes the router has installed is not visible from here. The nodes
/// instead take turns by address: this node's rank is how many of `nodes`
/// (other than its own addresses) have a lower address than its own, so
/// the lowest goes at the slot, the next one `step` later, and so on. Its
/// own address is the lowest of `own` that `nodes` lists, else `own`'s
/// first (the address the claim names): `state_sync.peers` leaves a node's
/// own address out (`config::node`), and counting only the lower ones
/// gives every node the same order all the same. The etcd claim keeps the
/// take unique whatever the timing; the rank makes the taker the lowest
/// *serving* node: a node that announces nothing does not ask
/// ([`Turn::No`]), so the next in rank finds the period unclaimed one
/// step later.
pub fn head_start(own: &[IpAddr], nodes: &[IpAddr], step: Duration) -> Duration {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    let mine = own
        .iter()
        .filter(|a| nodes.binary_search(a).is_ok())
        .min()
        .or(own.first());
    let rank = mine.map_or(nodes.len(), |mine| {
        nodes
            .iter()
            .filter(|n| *n < mine && !own.contains(n))
            .count()
    });
    step * u32::try_from(rank).unwrap_or(u32::MAX)
}

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
    pub fn tick(&mut self, unix: u64, turn: Turn) -> Option<u64> {
        let Turn::After(head_start) = turn else {
            return None;
        };
        if self.running.is_some() || unix < self.retry_at {
            return None;
        }
        let n = self.schedule.period(unix);
        // A head start never pushes the turn out of its period (the
        // period's last second at the latest): a late rank still gets a
        // go at a period the lower ones left.
        let last = self.schedule.period_start(n + 1).saturating_sub(1);
        let from = (self.schedule.slot(n) + head_start).min(last);
        if unix < from || self.settled == Some(n) {
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

    const NOW: Turn = Turn::After(0);

    fn duty() -> Duty {
        Duty::new(Schedule {
            interval: Duration::from_secs(100),
            jitter: Duration::ZERO,
        })
    }

    #[test]
    fn the_holder_takes_each_period_once() {
        let mut d = duty();
        assert_eq!(d.tick(1000, NOW), Some(10));
        // Running: nothing more, even at the next slot.
        assert_eq!(d.tick(1001, NOW), None);
        d.finished(10, Outcome::Taken, 1005);
        for t in 1006..1100 {
            assert_eq!(d.tick(t, NOW), None, "{t}");
        }
        assert_eq!(d.tick(1100, NOW), Some(11));
    }

    #[test]
    fn a_backup_never_takes_one() {
        let mut d = duty();
        assert!((1000..1300).all(|t| d.tick(t, Turn::No).is_none()));
    }

    #[test]
    fn a_new_master_mid_period_asks_and_the_claim_decides() {
        // Node B becomes master at 1050, after period 10's slot: it asks.
        let mut b = duty();
        assert_eq!(b.tick(1049, Turn::No), None);
        assert_eq!(b.tick(1050, NOW), Some(10));
        // The old master had taken it (the claim in etcd says so): settled,
        // no second snapshot in period 10, the next one is B's.
        b.finished(10, Outcome::Elsewhere, 1050);
        assert!((1051..1100).all(|t| b.tick(t, NOW).is_none()));
        assert_eq!(b.tick(1100, NOW), Some(11));
    }

    #[test]
    fn a_failure_is_retried_after_the_back_off_within_the_period() {
        let mut d = duty();
        assert_eq!(d.tick(1000, NOW), Some(10));
        // A tenth of the 100 s interval.
        d.finished(10, Outcome::Failed, 1001);
        assert!((1001..1011).all(|t| d.tick(t, NOW).is_none()));
        assert_eq!(d.tick(1011, NOW), Some(10));
        d.finished(10, Outcome::Taken, 1012);
        assert_eq!(d.tick(1013, NOW), None);
    }

    #[test]
    fn a_late_result_for_an_old_period_does_not_unsettle_a_newer_one() {
        let mut d = duty();
        assert_eq!(d.tick(1000, NOW), Some(10));
        d.finished(10, Outcome::Taken, 1000);
        assert_eq!(d.tick(1100, NOW), Some(11));
        d.finished(11, Outcome::Taken, 1100);
        d.finished(10, Outcome::Elsewhere, 1101);
        assert_eq!(d.tick(1150, NOW), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn announcing_nodes_take_turns_by_address() {
        let nodes = [ip("10.0.0.13"), ip("10.0.0.11"), ip("10.0.0.12")];
        let step = Duration::from_secs(5);
        let at = |own: &[&str]| {
            let own: Vec<IpAddr> = own.iter().map(|a| ip(a)).collect();
            head_start(&own, &nodes, step).as_secs()
        };
        assert_eq!(at(&["10.0.0.11"]), 0);
        assert_eq!(at(&["10.0.0.12"]), 5);
        assert_eq!(at(&["10.0.0.13"]), 10);
        // The node's lowest address among the nodes counts; its others
        // (a second address, an IPv6 one) do not.
        assert_eq!(at(&["10.0.0.9", "fd00::1", "10.0.0.12"]), 5);
        // Not among them: after the ones below its address.
        assert_eq!(at(&["10.0.0.50"]), 15);
        assert_eq!(at(&["10.0.0.1"]), 0);
        // Left out of its own list, as state_sync.peers leaves it out on
        // each node: the same order as the full list.
        let without = |me: &str| -> u64 {
            let others: Vec<IpAddr> = nodes.iter().copied().filter(|n| *n != ip(me)).collect();
            head_start(&[ip(me)], &others, step).as_secs()
        };
        assert_eq!(
            [
                without("10.0.0.11"),
                without("10.0.0.12"),
                without("10.0.0.13")
            ],
            [0, 5, 10]
        );
        // No address at all: last.
        assert_eq!(at(&[]), 15);
        // Listed twice (a backend of two services) is one node.
        let twice = [ip("10.0.0.11"), ip("10.0.0.11"), ip("10.0.0.12")];
        assert_eq!(head_start(&[ip("10.0.0.12")], &twice, step).as_secs(), 5);
        assert_eq!(rank_step(Duration::from_secs(86400)).as_secs(), 60);
        assert_eq!(rank_step(Duration::from_secs(12)).as_secs(), 1);
    }

    /// Three announcing nodes a..c by rank: the lowest serving one takes
    /// each period, the claim settles the others, and with the lowest
    /// withdrawn the next one takes it a step later.
    #[test]
    fn the_lowest_serving_node_takes_the_period() {
        let (mut a, mut b, mut c) = (duty(), duty(), duty());
        let (ta, tb, tc) = (Turn::After(0), Turn::After(5), Turn::After(10));
        // Period 10 (slot 1000): a asks at once; b and c wait their turn.
        assert_eq!(a.tick(1000, ta), Some(10));
        assert_eq!(b.tick(1000, tb), None);
        assert_eq!(c.tick(1004, tc), None);
        a.finished(10, Outcome::Taken, 1002);
        // b's and c's turns come; a's claim answers them: no second one.
        assert_eq!(b.tick(1005, tb), Some(10));
        b.finished(10, Outcome::Elsewhere, 1005);
        assert_eq!(c.tick(1010, tc), Some(10));
        c.finished(10, Outcome::Elsewhere, 1010);
        assert!((1011..1100).all(|t| b.tick(t, tb).is_none() && c.tick(t, tc).is_none()));
        // Period 11: a withdrew its routes (it cannot serve): it does not
        // ask, b goes one step after the slot and finds it unclaimed.
        assert!((1100..1200).all(|t| a.tick(t, Turn::No).is_none()));
        assert_eq!(b.tick(1104, tb), None);
        assert_eq!(b.tick(1105, tb), Some(11));
        b.finished(11, Outcome::Taken, 1107);
        assert_eq!(c.tick(1110, tc), Some(11));
        c.finished(11, Outcome::Elsewhere, 1110);
    }

    #[test]
    fn a_head_start_never_leaves_the_period() {
        // Slot at 1000 with a 150 s head start: the turn comes at the
        // period's last second, 1099, not in period 11.
        let mut d = duty();
        assert_eq!(d.tick(1098, Turn::After(150)), None);
        assert_eq!(d.tick(1099, Turn::After(150)), Some(10));
    }
}
