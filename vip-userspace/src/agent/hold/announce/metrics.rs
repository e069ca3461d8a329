//! `announce:`'s metric families: each VIP's route, and why it was
//! withdrawn; set by the task's book as each route changes.

use std::net::IpAddr;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};

use crate::metrics::Scope;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipLabel {
    pub vip: String,
}

/// `reason`: why the route was withdrawn ([`super::Why`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VipReason {
    pub vip: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default)]
pub struct AnnounceMetrics {
    pub route_installed: Family<VipLabel, Gauge>,
    pub withdrawals: Family<VipReason, Counter>,
}

impl AnnounceMetrics {
    /// Registers the families on `r`, which names them `vipd_announce_*`.
    pub fn register(r: &mut Scope) -> AnnounceMetrics {
        let m = AnnounceMetrics::default();
        r.register(
            "route_installed",
            "announce: 1 while this node's route for the VIP is in the announce table (the routing daemon announces it)",
            m.route_installed.clone(),
        );
        r.register(
            "withdrawals",
            "announce: routes withdrawn, by reason (xdp_detached, no_backend, cert_gate, sync_wait, stopping, unconfigured)",
            m.withdrawals.clone(),
        );
        m
    }

    pub fn installed(&self, vip: IpAddr, installed: bool) {
        self.route_installed
            .get_or_create(&VipLabel {
                vip: vip.to_string(),
            })
            .set(i64::from(installed));
    }

    pub fn withdrawn(&self, vip: IpAddr, reason: &str) {
        self.withdrawals
            .get_or_create(&VipReason {
                vip: vip.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}
