//! The agent's metrics: every component's families on one registry, each
//! registered by the component itself (linkerd2-proxy's
//! `register(&mut Registry) -> Self`), and handed back to the agent, which
//! gives each component its own handles.

use std::time::SystemTime;

use crate::{
    controller::{Controller, metrics::BackendMetrics},
    dataplane::{
        Maps,
        metrics::{DataplaneMetrics, FlowMetrics},
    },
    discovery::metrics::DiscoveryMetrics,
    metrics::{Metrics, Registrar},
    probe::metrics::ProbeMetrics,
    snapshot::metrics::SnapshotMetrics,
    sync::metrics::SyncMetrics,
    version::VersionMetrics,
    vrrp::metrics::VrrpMetrics,
};

use super::hold::announce::metrics::AnnounceMetrics;

/// Every component's families.
#[derive(Clone, Debug)]
pub struct Telemetry {
    pub vrrp: VrrpMetrics,
    pub probes: ProbeMetrics,
    pub backends: BackendMetrics,
    pub versions: VersionMetrics,
    pub dataplane: DataplaneMetrics,
    pub flows: FlowMetrics,
    pub sync: SyncMetrics,
    pub announce: AnnounceMetrics,
    pub snapshot: SnapshotMetrics,
    pub discovery: DiscoveryMetrics,
}

impl Telemetry {
    /// Every component registers its families; the registry becomes what
    /// the endpoint serves.
    pub fn new() -> (Telemetry, Metrics) {
        let mut r = Registrar::default();
        let t = Telemetry {
            vrrp: VrrpMetrics::register(&mut r.scope("vrrp")),
            probes: ProbeMetrics::register(&mut r.scope("")),
            backends: BackendMetrics::register(&mut r.scope("")),
            versions: VersionMetrics::register(&mut r.scope("")),
            dataplane: DataplaneMetrics::register(&mut r.scope("")),
            flows: FlowMetrics::register(&mut r.scope("")),
            sync: SyncMetrics::register(&mut r.scope("state_sync")),
            announce: AnnounceMetrics::register(&mut r.scope("announce")),
            snapshot: SnapshotMetrics::register(&mut r.scope("etcd_snapshot")),
            discovery: DiscoveryMetrics::register(&mut r.scope("discovery")),
        };
        (t, Metrics::new(r))
    }

    /// The controller's state after an event it handled: backend health,
    /// certificates, fail open, and which backends' counters to read.
    pub fn show_controller<M: Maps>(&self, ctl: &Controller<M>) {
        self.backends.show(ctl, SystemTime::now());
        self.dataplane.set_backends(ctl.counted_backends());
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, sync::Arc, time::Duration};

    use vip_common::{BackendStats, Counter, REASON_COUNT, Reason};

    use super::*;
    use crate::{
        dataplane::{Result, metrics::CounterSource},
        probe::{Failure, Outcome},
        vrrp::Family,
    };

    /// The program's counters as a table.
    struct Table;

    impl CounterSource for Table {
        fn reasons(&self) -> Result<Vec<Counter>> {
            let mut c = vec![Counter::default(); REASON_COUNT as usize];
            c[Reason::TxDsr as usize] = Counter {
                packets: 1,
                bytes: 60,
            };
            Ok(c)
        }

        fn backend(&self, id: u32) -> Result<BackendStats> {
            Ok(BackendStats {
                packets: u64::from(id) * 10,
                bytes: 1500,
                new_flows: 1,
                rsts: 0,
            })
        }
    }

    #[test]
    fn names_follow_the_conventions_and_values_show() {
        let (t, m) = Telemetry::new();
        let be: SocketAddr = "10.0.0.11:6443".parse().expect("addr");
        t.probes.probe(be, &Outcome::Up, Duration::from_millis(3));
        t.probes
            .probe(be, &Outcome::AuthRefused(401), Duration::from_millis(4));
        t.probes.probe(
            be,
            &Outcome::Fail(Failure::Timeout),
            Duration::from_millis(1000),
        );
        // No counters before the program's maps are there.
        assert!(!m.encode().contains("vipd_dataplane_bytes_total"));
        t.dataplane.read_from(Arc::new(Table));
        let other: SocketAddr = "10.0.0.12:6443".parse().expect("addr");
        t.dataplane.set_backends(vec![(be, Some(1)), (other, None)]);
        // A known backend's probe failures exist at 0 before any failure.
        t.probes.known_backends([be, other]);
        let _stats = t.sync.stats(Box::new(|| Some(3)));
        let _router = t.vrrp.router(Family::V6, crate::vrrp::Priority(100));
        let text = m.encode();
        for want in [
            "vipd_state_sync_rejected_total{reason=\"forged\"} 0",
            "vipd_state_sync_lost_total{reason=\"ring_full\"} 3",
            "vipd_state_sync_lost_total{reason=\"unresolved\"} 0",
            "vipd_vrrp_split_brain_total{family=\"ipv6\"} 0",
            "vipd_vrrp_preemptions_total{family=\"ipv6\",by=\"peer\"} 0",
            "vipd_vrrp_adverts_rejected_total{family=\"ipv6\",reason=\"not_peer\"} 0",
            "vipd_vrrp_state{family=\"ipv6\",state=\"initialize\"} 1",
            "vipd_vrrp_priority{family=\"ipv6\"} 100",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
        for reason in Outcome::FAILURE_LABELS {
            let want = format!(
                "vipd_probe_failures_total{{backend=\"10.0.0.12:6443\",reason=\"{reason}\"}} 0"
            );
            assert!(text.contains(&want), "{want:?} missing in:\n{text}");
        }
        for want in [
            "vipd_probe_failures_total{backend=\"10.0.0.11:6443\",reason=\"tls\"} 0",
            "vipd_probe_failures_total{backend=\"10.0.0.11:6443\",reason=\"auth\"} 1",
            "vipd_probe_failures_total{backend=\"10.0.0.11:6443\",reason=\"timeout\"} 1",
            "vipd_probe_duration_seconds_count{backend=\"10.0.0.11:6443\"} 3",
            "# HELP vipd_backend_packets Packets the XDP program forwarded to the backend.",
            "# TYPE vipd_backend_packets counter",
            "vipd_backend_packets_total{backend=\"10.0.0.11:6443\"} 10",
            "vipd_backend_packets_total{backend=\"10.0.0.12:6443\"} 0",
            "# TYPE vipd_backend_bytes counter",
            "# UNIT vipd_backend_bytes bytes",
            "vipd_backend_bytes_total{backend=\"10.0.0.11:6443\"} 1500",
            "vipd_dataplane_bytes_total{reason=\"tx_dsr\"} 60",
            "vipd_dataplane_packets_total{reason=\"pass_no_service\"} 0",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
        // Each family is declared once, whoever writes it.
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), n, "a family declared twice:\n{text}");
        for (name, _) in m.families() {
            assert!(name.starts_with("vipd_") && !name.contains("__"), "{name}");
        }
    }
}
