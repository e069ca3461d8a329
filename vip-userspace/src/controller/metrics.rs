//! The controller's metric families: each backend's health and whether it
//! serves, its certificate as the gate sees it, and which services fail
//! open. They show the controller's state, so the agent shows them again
//! right after each event the controller handles ([`BackendMetrics::show`]).

use std::{net::SocketAddr, time::SystemTime};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
    registry::Unit,
};

use super::{BackendHealth, CertState, Controller};
use crate::{
    dataplane::Maps,
    metrics::{BackendLabel, Scope},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendState {
    pub backend: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug)]
pub struct BackendMetrics {
    pub state: Family<BackendState, Gauge>,
    pub serving: Family<BackendLabel, Gauge>,
    pub cert_san_ok: Family<BackendLabel, Gauge>,
    pub cert_expiry: Family<BackendLabel, Gauge>,
    pub fail_open: Family<ServiceLabel, Gauge>,
}

impl BackendMetrics {
    pub fn register(r: &mut Scope) -> BackendMetrics {
        let m = BackendMetrics {
            state: Family::default(),
            serving: Family::default(),
            cert_san_ok: Family::default(),
            cert_expiry: Family::default(),
            fail_open: Family::default(),
        };
        r.register(
            "backend_state",
            "Backend health: 1 for the current state (up, down, auth_misconfigured, no_neighbour: mode dsr and the neighbour table has no usable MAC for it)",
            m.state.clone(),
        );
        r.register(
            "backend_serving",
            "1 while the backend receives new flows",
            m.serving.clone(),
        );
        r.register(
            "cert_san_ok",
            "1 when the backend's certificate carries every VIP and configured name",
            m.cert_san_ok.clone(),
        );
        r.register_with_unit(
            "cert_expiry",
            "Time until the backend's certificate expires",
            Unit::Seconds,
            m.cert_expiry.clone(),
        );
        r.register(
            "fail_open",
            "1 while a service forwards to every backend because none is usable",
            m.fail_open.clone(),
        );
        m
    }

    /// The controller's state now: every backend's (each state at 0 or 1),
    /// every read certificate's, every service's fail open. A backend a
    /// reload removed keeps its series at their last values.
    pub fn show<M: Maps>(&self, ctl: &Controller<M>, now: SystemTime) {
        for b in ctl.status() {
            let backend = b.addr.to_string();
            for st in BackendHealth::ALL {
                self.state
                    .get_or_create(&BackendState {
                        backend: backend.clone(),
                        state: st.label().to_owned(),
                    })
                    .set(i64::from(b.state == st));
            }
            self.serving
                .get_or_create(&BackendLabel { backend })
                .set(i64::from(b.serving));
        }
        for (addr, c) in ctl.certs() {
            let bl = BackendLabel {
                backend: addr.to_string(),
            };
            if let CertState::Ok(r) | CertState::Missing(r) = c {
                self.cert_san_ok
                    .get_or_create(&bl)
                    .set(i64::from(matches!(c, CertState::Ok(_))));
                self.cert_expiry
                    .get_or_create(&bl)
                    .set(r.seconds_to_expiry(now));
            }
        }
        for s in &ctl.config().services {
            let service = SocketAddr::new(s.vip, s.port).to_string();
            let on = ctl.failing_open().contains_key(&service);
            self.fail_open
                .get_or_create(&ServiceLabel { service })
                .set(i64::from(on));
        }
    }
}
