//! One backend's health from its probe outcomes: rise and fall counting,
//! the "auth misconfigured" flag, and the timing of the reaction chain
//! (first failed probe -> fall reached). Pure: time comes in with each
//! outcome.

use std::time::{Duration, Instant};

use crate::probe::{Failure, Outcome};

/// What a probe outcome changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `fall` failures in a row. `first_failure` is when the first of them
    /// started: the reaction chain runs from there.
    Down {
        outcome: Outcome,
        first_failure: Instant,
        fall_reached: Instant,
    },
    /// `rise` passes in a row.
    Up,
    /// 401/403: the apiserver serves but refuses our probe's credentials.
    AuthRefused(u16),
    /// The probe is accepted again.
    AuthAccepted,
}

#[derive(Debug, Clone)]
pub struct Health {
    rise: u32,
    fall: u32,
    up: bool,
    /// Outcomes in a row that disagree with `up`.
    streak: u32,
    /// Start of the first probe of the current run of failures while up.
    failing_since: Option<Instant>,
    auth: Option<u16>,
    ever_passed: bool,
    last: Option<Outcome>,
    last_failure: Option<Failure>,
    last_latency: Option<Duration>,
    last_change: Option<Instant>,
    /// When the path to the backend last changed under its probes (its
    /// neighbour entry moved to another MAC, or resolved at last).
    path_changed: Option<Instant>,
}

impl Health {
    /// A backend starts up (as HAProxy's servers do): a restarted agent must
    /// not take working apiservers out before their first probe, and a dead
    /// one is out after `fall` probes.
    pub fn new(rise: u32, fall: u32) -> Health {
        Health {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            streak: 0,
            failing_since: None,
            auth: None,
            ever_passed: false,
            last: None,
            last_failure: None,
            last_latency: None,
            last_change: None,
            path_changed: None,
        }
    }

    /// The path to the backend changed at `at`: the kernel now sends to
    /// the MAC it answers from. Probes that failed before, and those still
    /// in flight that started before, went to the old MAC (or waited on a
    /// neighbour solicitation, RFC 4861 7.3.3: an IPv6 entry that went
    /// stale keeps being tried at its old address through DELAY and PROBE
    /// for seconds). They say nothing about the apiserver, so the run of
    /// failures starts again. A backend that really died meanwhile is
    /// taken out `fall` probes later.
    pub fn path_changed(&mut self, at: Instant) {
        self.path_changed = Some(at);
        if self.up {
            self.streak = 0;
            self.failing_since = None;
        }
    }

    /// New rise/fall settings (a reload); the state and the count so far stay.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Feeds one probe that started at `started` and ended at `finished`.
    pub fn feed(&mut self, started: Instant, finished: Instant, outcome: &Outcome) -> Vec<Change> {
        let mut changes = vec![];
        // A 401/403 proves TLS and HTTP are served: the apiserver is there,
        // our credentials are wrong. It counts as a pass for forwarding
        // (taking every apiserver out over a probe setting would be an
        // outage of our own making) and is reported on its own.
        let pass = matches!(outcome, Outcome::Up | Outcome::AuthRefused(_));
        let auth = match outcome {
            Outcome::AuthRefused(code) => Some(*code),
            _ => None,
        };
        if auth != self.auth {
            match (self.auth, auth) {
                (_, Some(code)) => changes.push(Change::AuthRefused(code)),
                (Some(_), None) if pass => changes.push(Change::AuthAccepted),
                _ => {}
            }
            // A failure after a 401 keeps the auth flag until a probe is
            // accepted or refused again: "down" says enough meanwhile.
            if pass {
                self.auth = auth;
            }
        }
        self.last = Some(outcome.clone());
        if let Outcome::Fail(f) = outcome {
            self.last_failure = Some(f.clone());
        }
        self.last_latency = Some(finished.saturating_duration_since(started));
        if !pass && self.path_changed.is_some_and(|t| started < t) {
            // Sent along the old path (see `path_changed`).
            return changes;
        }
        if pass {
            self.ever_passed = true;
        }
        if pass == self.up {
            self.streak = 0;
            self.failing_since = None;
            return changes;
        }
        if self.up && self.failing_since.is_none() {
            self.failing_since = Some(started);
        }
        self.streak += 1;
        let need = if self.up { self.fall } else { self.rise };
        if self.streak >= need {
            self.streak = 0;
            self.up = pass;
            self.last_change = Some(finished);
            if pass {
                changes.push(Change::Up);
            } else {
                changes.push(Change::Down {
                    outcome: outcome.clone(),
                    first_failure: self.failing_since.take().unwrap_or(started),
                    fall_reached: finished,
                });
            }
        }
        changes
    }

    pub fn up(&self) -> bool {
        self.up
    }

    /// Failed probes that take an up backend out.
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// A probe has passed since the agent started (bootstrap ends then).
    pub fn ever_passed(&self) -> bool {
        self.ever_passed
    }

    /// The 401/403 the apiserver answers, while it does.
    pub fn auth_refused(&self) -> Option<u16> {
        self.auth
    }

    pub fn last(&self) -> Option<&Outcome> {
        self.last.as_ref()
    }

    /// The most recent failed probe's failure: while down, what kind of
    /// down it is (a single pass before `rise` does not change that).
    pub fn last_failure(&self) -> Option<&Failure> {
        self.last_failure.as_ref()
    }

    pub fn last_latency(&self) -> Option<Duration> {
        self.last_latency
    }

    pub fn last_change(&self) -> Option<Instant> {
        self.last_change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn fall_failures_in_a_row_take_it_down_and_time_the_chain() {
        let t0 = Instant::now();
        let mut h = Health::new(2, 3);
        let fail = Outcome::Fail(Failure::Status(503));
        assert!(h.feed(at(t0, 0), at(t0, 5), &Outcome::Up).is_empty());
        assert!(h.feed(at(t0, 1000), at(t0, 1004), &fail).is_empty());
        assert!(
            h.feed(at(t0, 2000), at(t0, 2003), &Outcome::Up).is_empty(),
            "a pass resets the count"
        );
        assert!(h.feed(at(t0, 3000), at(t0, 3004), &fail).is_empty());
        assert!(h.feed(at(t0, 4000), at(t0, 4004), &fail).is_empty());
        assert!(h.up());
        assert_eq!(
            h.feed(at(t0, 5000), at(t0, 5006), &fail),
            [Change::Down {
                outcome: fail.clone(),
                first_failure: at(t0, 3000),
                fall_reached: at(t0, 5006),
            }]
        );
        assert!(!h.up());
        assert_eq!(h.last_change(), Some(at(t0, 5006)));
        assert!(h.feed(at(t0, 6000), at(t0, 6001), &fail).is_empty());
        assert!(h.feed(at(t0, 7000), at(t0, 7001), &Outcome::Up).is_empty());
        assert!(h.feed(at(t0, 8000), at(t0, 8001), &fail).is_empty());
        assert!(h.feed(at(t0, 9000), at(t0, 9001), &Outcome::Up).is_empty());
        assert_eq!(
            h.feed(at(t0, 10000), at(t0, 10001), &Outcome::Up),
            [Change::Up]
        );
        assert!(h.up());
        assert_eq!(h.last_latency(), Some(Duration::from_millis(1)));
    }

    /// be2's MAC changes under fall 3: two probes fail against the old MAC,
    /// the kernel learns the new one at 2500 ms, and a probe started at
    /// 2000 ms times out at 3000 ms. Counted, it would be the third failure
    /// and take a working backend out; it is the old path's, so it is not.
    /// A backend that really died is still taken out, `fall` probes after
    /// the change.
    #[test]
    fn failures_on_the_old_path_do_not_count_after_it_changed() {
        let t0 = Instant::now();
        let mut h = Health::new(2, 3);
        let timeout = Outcome::Fail(Failure::Timeout);
        assert!(h.feed(at(t0, 0), at(t0, 1000), &timeout).is_empty());
        assert!(h.feed(at(t0, 1000), at(t0, 2000), &timeout).is_empty());
        h.path_changed(at(t0, 2500));
        assert!(
            h.feed(at(t0, 2000), at(t0, 3000), &timeout).is_empty(),
            "a probe started on the old path"
        );
        assert!(h.up());
        assert_eq!(h.last(), Some(&timeout), "still shown as the last probe");
        assert!(h.feed(at(t0, 3000), at(t0, 3004), &Outcome::Up).is_empty());
        assert!(h.up());
        // Dead after the change: three failures started after it count.
        assert!(h.feed(at(t0, 4000), at(t0, 5000), &timeout).is_empty());
        assert!(h.feed(at(t0, 5000), at(t0, 6000), &timeout).is_empty());
        assert_eq!(
            h.feed(at(t0, 6000), at(t0, 7000), &timeout),
            [Change::Down {
                outcome: timeout.clone(),
                first_failure: at(t0, 4000),
                fall_reached: at(t0, 7000),
            }]
        );
        // A pass started before a change counts as ever: it proves the
        // apiserver served on whichever path.
        h.path_changed(at(t0, 7500));
        assert!(h.feed(at(t0, 7000), at(t0, 7600), &Outcome::Up).is_empty());
        assert_eq!(
            h.feed(at(t0, 8000), at(t0, 8001), &Outcome::Up),
            [Change::Up]
        );
    }

    #[test]
    fn auth_refused_is_its_own_state_and_not_down() {
        let t0 = Instant::now();
        let mut h = Health::new(2, 2);
        assert!(!h.ever_passed());
        assert_eq!(
            h.feed(t0, t0, &Outcome::AuthRefused(401)),
            [Change::AuthRefused(401)]
        );
        assert!(h.feed(t0, t0, &Outcome::AuthRefused(401)).is_empty());
        assert!(h.feed(t0, t0, &Outcome::AuthRefused(401)).is_empty());
        assert!(h.up(), "401 means the apiserver serves");
        assert!(h.ever_passed());
        assert!(h.up() && h.auth_refused().is_some(), "auth_misconfigured");
        assert_eq!(
            h.feed(t0, t0, &Outcome::AuthRefused(403)),
            [Change::AuthRefused(403)]
        );
        assert_eq!(h.feed(t0, t0, &Outcome::Up), [Change::AuthAccepted]);
        assert!(h.up() && h.auth_refused().is_none(), "up");
    }

    #[test]
    fn a_timeout_after_a_401_is_a_failure_and_keeps_the_auth_flag() {
        let t0 = Instant::now();
        let mut h = Health::new(1, 1);
        h.feed(t0, t0, &Outcome::AuthRefused(401));
        let ch = h.feed(t0, at(t0, 1000), &Outcome::Fail(Failure::Timeout));
        assert!(matches!(ch.as_slice(), [Change::Down { .. }]), "{ch:?}");
        assert_eq!(h.auth_refused(), Some(401));
        assert!(!h.up(), "down");
    }
}
