//! VRRP's metric families (`vipd_vrrp_*`), per address family, and one
//! router's handles on them ([`RouterStats`]), which its task updates where
//! each event happens.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Unit,
};

use super::{Family as IpFamily, Priority, machine::State, packet::DISCARD_LABELS, router::label};
use crate::metrics::Scope;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub family: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyState {
    pub family: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyReason {
    pub family: String,
    pub reason: String,
}

/// `by`: `this_node` (it took the VIP from a live lower-priority master)
/// or `peer` (a higher-priority router took it from this node).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyBy {
    pub family: String,
    pub by: String,
}

/// The values of [`FamilyBy::by`].
pub const PREEMPTION_BY: [&str; 2] = ["this_node", "peer"];

/// The states `vipd_vrrp_state` has a series for.
const STATES: [State; 3] = [State::Initialize, State::Backup, State::Master];

fn failover_histogram() -> Histogram {
    // 10 ms .. 41 s: a 20 ms advert interval's skew time to a 10 s one's
    // master-down interval.
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

type FailoverHistograms = Family<FamilyLabel, Histogram, fn() -> Histogram>;

/// Every `vipd_vrrp_*` family.
#[derive(Clone, Debug)]
pub struct VrrpMetrics {
    pub state: Family<FamilyState, Gauge>,
    pub priority: Family<FamilyLabel, Gauge>,
    pub held: Family<FamilyLabel, Gauge>,
    pub became_master: Family<FamilyLabel, Counter>,
    pub left_master: Family<FamilyLabel, Counter>,
    pub adverts_sent: Family<FamilyLabel, Counter>,
    pub adverts_received: Family<FamilyLabel, Counter>,
    pub adverts_rejected: Family<FamilyReason, Counter>,
    pub split_brain: Family<FamilyLabel, Counter>,
    pub preemptions: Family<FamilyBy, Counter>,
    pub failover_duration: FailoverHistograms,
}

impl VrrpMetrics {
    /// Registers the families on `r`, which names them `vipd_vrrp_*`.
    pub fn register(r: &mut Scope) -> VrrpMetrics {
        let m = VrrpMetrics {
            state: Family::default(),
            priority: Family::default(),
            held: Family::default(),
            became_master: Family::default(),
            left_master: Family::default(),
            adverts_sent: Family::default(),
            adverts_received: Family::default(),
            adverts_rejected: Family::default(),
            split_brain: Family::default(),
            preemptions: Family::default(),
            failover_duration: Family::new_with_constructor(failover_histogram),
        };
        r.register(
            "state",
            "VRRP state per address family: 1 for the current state (initialize, backup, master)",
            m.state.clone(),
        );
        r.register(
            "priority",
            "Advertised VRRP priority after tracking",
            m.priority.clone(),
        );
        r.register(
            "held",
            "1 while the certificate gate keeps this node out of the election",
            m.held.clone(),
        );
        r.register(
            "became_master",
            "Transitions to master",
            m.became_master.clone(),
        );
        r.register(
            "left_master",
            "Transitions out of master",
            m.left_master.clone(),
        );
        r.register(
            "adverts_sent",
            "VRRP advertisements sent",
            m.adverts_sent.clone(),
        );
        r.register(
            "adverts_received",
            "VRRP advertisements accepted",
            m.adverts_received.clone(),
        );
        r.register(
            "adverts_rejected",
            "VRRP packets discarded, by RFC 9568 7.1 check",
            m.adverts_rejected.clone(),
        );
        r.register(
            "split_brain",
            "Another master or another MAC claiming the VIP seen while master, preemption excluded",
            m.split_brain.clone(),
        );
        r.register(
            "preemptions",
            "The VIP taken from a live master with a lower priority (RFC 9568 6.4.2): by this node, or from it by a peer",
            m.preemptions.clone(),
        );
        r.register_with_unit(
            "failover_duration",
            "Takeovers by this node: from the previous master's last advertisement to becoming master",
            Unit::Seconds,
            m.failover_duration.clone(),
        );
        m
    }

    /// The handles of the router for `family`. Its event counters
    /// (transitions, split brains, preemptions, every discard reason) and
    /// its state exist from here on, at 0: they count from 0 with the
    /// router, and Prometheus' `increase()` needs a sample before the first
    /// event (a series born at 1 hides it).
    pub fn router(&self, family: IpFamily, priority: Priority) -> RouterStats {
        let family = label(family).to_owned();
        let fl = FamilyLabel {
            family: family.clone(),
        };
        let counter = |f: &Family<FamilyLabel, Counter>| f.get_or_create(&fl).clone();
        let by = |by: &str| {
            self.preemptions
                .get_or_create(&FamilyBy {
                    family: family.clone(),
                    by: by.to_owned(),
                })
                .clone()
        };
        let s = RouterStats {
            adverts_sent: counter(&self.adverts_sent),
            adverts_received: counter(&self.adverts_received),
            became_master: counter(&self.became_master),
            left_master: counter(&self.left_master),
            split_brain: counter(&self.split_brain),
            preempted_by_us: by(PREEMPTION_BY[0]),
            preempted_by_peer: by(PREEMPTION_BY[1]),
            discards: DISCARD_LABELS
                .iter()
                .map(|reason| {
                    self.adverts_rejected
                        .get_or_create(&FamilyReason {
                            family: family.clone(),
                            reason: (*reason).to_owned(),
                        })
                        .clone()
                })
                .collect(),
            state: STATES.map(|st| {
                self.state
                    .get_or_create(&FamilyState {
                        family: family.clone(),
                        state: st.label().to_owned(),
                    })
                    .clone()
            }),
            priority: self.priority.get_or_create(&fl).clone(),
            held: self.held.get_or_create(&fl).clone(),
            // No series before the first takeover: a histogram at 0 would
            // read as "no failover measured", which is what no series says.
            failovers: self.failover_duration.clone(),
            family: fl.clone(),
            send_errors: AtomicU64::new(0),
            vip_errors: AtomicU64::new(0),
            announce_errors: AtomicU64::new(0),
        };
        s.set_state(State::Initialize);
        s.priority.set(i64::from(priority.0));
        s
    }
}

/// One virtual router's counters: its series of the `vipd_vrrp_*`
/// families, and the errors only the periodic log line shows.
#[derive(Debug)]
pub struct RouterStats {
    pub adverts_sent: Counter,
    pub adverts_received: Counter,
    pub became_master: Counter,
    pub left_master: Counter,
    pub split_brain: Counter,
    /// This node took the VIP from a live lower-priority master (RFC 9568
    /// 6.4.2 Preempt_Mode).
    pub preempted_by_us: Counter,
    /// A higher-priority router took the VIP from this node (6.4.3).
    pub preempted_by_peer: Counter,
    /// Indexed like [`DISCARD_LABELS`].
    pub discards: Vec<Counter>,
    /// Indexed like [`STATES`]: 1 for the current state.
    state: [Gauge; 3],
    pub priority: Gauge,
    pub held: Gauge,
    failovers: FailoverHistograms,
    family: FamilyLabel,
    pub send_errors: AtomicU64,
    pub vip_errors: AtomicU64,
    pub announce_errors: AtomicU64,
}

impl RouterStats {
    /// Handles registered nowhere, for a router without an endpoint.
    pub fn unregistered(family: IpFamily, priority: Priority) -> RouterStats {
        VrrpMetrics::register(&mut crate::metrics::Registrar::default().scope("vrrp"))
            .router(family, priority)
    }

    /// A takeover by this node that took `secs` (see
    /// [`super::router::Failover`]).
    pub fn failover(&self, secs: f64) {
        self.failovers.get_or_create(&self.family).observe(secs);
    }

    /// `vipd_vrrp_state`: 1 for `now`, 0 for the others.
    pub fn set_state(&self, now: State) {
        for (st, g) in STATES.iter().zip(&self.state) {
            g.set(i64::from(*st == now));
        }
    }
}
