//! What a running vipd may change and what takes a restart, by type: every
//! field of [`Config`] is in [`Fixed`] or [`Live`] ([`Config::split`]
//! destructures the file whole, so a new field does not compile until it is
//! put on one side), and a reload is refused when the `Fixed` parts differ,
//! naming the field.

use std::net::IpAddr;

use super::{
    CertGateSettings, Config, DiscoverySettings, MetricsListen, Mode, NatSettings, NodeSettings,
    RouteAnnounceSettings, Service, StateSyncSettings, VrrpSettings,
};
use crate::{dataplane::kernel::AttachMode, snapshot::SnapshotSettings};

/// Declares [`Fixed`] and its comparison from one list of fields, so the
/// name a refusal gives is the field's own.
macro_rules! fixed {
    ($($(#[$doc:meta])* $field:ident: $ty:ty,)*) => {
        /// What is set up once at start and kept for the life of the process
        /// (the XDP attachment and map sizes, the host changes, the holder,
        /// the sockets): a file that changes any of it is refused whole.
        #[derive(Debug, PartialEq)]
        pub struct Fixed<'a> {
            $($(#[$doc])* pub $field: &'a $ty,)*
            /// The VIPs, while a holder elects or announces them: VRRP's
            /// routers and the addresses on `lo` for `announce:` are made
            /// for them at start.
            pub held_vips: Option<HeldVips>,
            /// Whether any service is mode nat: the NAT source ports are
            /// reserved from the kernel at start, only then.
            pub nat_used: bool,
            /// Whether any service reads its backends from the cluster: the
            /// discovery client (its credentials) is made at start, only
            /// then. Which families it watches may change on reload.
            pub discovery_used: bool,
        }

        impl Fixed<'_> {
            /// The first plain field that differs, by its name in the file.
            fn first_difference(&self, new: &Fixed<'_>) -> Option<&'static str> {
                $(if self.$field != new.$field {
                    return Some(stringify!($field));
                })*
                None
            }
        }
    };
}

fixed! {
    interface: String,
    xdp_mode: AttachMode,
    conntrack_capacity: u32,
    hold_vips: bool,
    vrrp: Option<VrrpSettings>,
    announce: Option<RouteAnnounceSettings>,
    nat: NatSettings,
    metrics_listen: Option<MetricsListen>,
    state_sync: Option<StateSyncSettings>,
    /// The schedule and the take's settings are read by the task started
    /// with the agent.
    snapshot: Option<SnapshotSettings>,
    /// The credentials and servers of the discovery task started with the
    /// agent.
    discovery: Option<DiscoverySettings>,
}

/// The VIPs a holder was set up for, and which holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldVips {
    pub vips: Vec<IpAddr>,
    /// What the refusal says the VIPs are.
    pub why: &'static str,
}

/// What a reload may change: the controller applies the difference.
#[derive(Debug, PartialEq)]
pub struct Live<'a> {
    pub services: &'a [Service],
    /// The gate's action, names and interval (the agent sets its timer
    /// again when the interval changes).
    pub cert_gate: &'a CertGateSettings,
    /// Read at start only: it ends for good at the first ready apiserver,
    /// so removing it afterwards (the usual edit after `kubeadm init`)
    /// needs no restart.
    pub bootstrap: bool,
    /// Compared through what it resolves to for this node (`interface`,
    /// `vrrp.priority` in [`Fixed`]): another node's entry may change.
    pub nodes: &'a std::collections::BTreeMap<String, NodeSettings>,
}

impl Config {
    /// The file as what a reload may not change and what it may.
    pub fn split(&self) -> (Fixed<'_>, Live<'_>) {
        // Whole, without `..`: a new field must be placed on one side.
        let Config {
            interface,
            xdp_mode,
            conntrack_capacity,
            hold_vips,
            vrrp,
            announce,
            nat,
            cert_gate,
            bootstrap,
            metrics_listen,
            nodes,
            state_sync,
            snapshot,
            discovery,
            services,
        } = self;
        let held_vips = match (vrrp, announce) {
            (Some(_), _) => Some("the VIPs VRRP elects a holder for"),
            // The VIPs go on `lo` at start (`prepare_host`), with the host
            // changes a restart undoes and redoes.
            (None, Some(_)) => Some("the VIPs announce routes to"),
            (None, None) => None,
        }
        .map(|why| HeldVips {
            vips: self.vips(),
            why,
        });
        let fixed = Fixed {
            interface,
            xdp_mode,
            conntrack_capacity,
            hold_vips,
            vrrp,
            announce,
            nat,
            metrics_listen,
            state_sync,
            snapshot,
            discovery,
            held_vips,
            nat_used: services.iter().any(|s| s.mode == Mode::Nat),
            discovery_used: services.iter().any(|s| s.backends_from.is_some()),
        };
        let live = Live {
            services,
            cert_gate,
            bootstrap: *bootstrap,
            nodes,
        };
        (fixed, live)
    }
}

impl Fixed<'_> {
    /// Why `new` cannot replace `self` in a running vipd: the field that
    /// changed, if one did.
    pub fn refuses(&self, new: &Fixed<'_>) -> Option<String> {
        if let Some(field) = self.first_difference(new) {
            return Some(field.to_owned());
        }
        if let (Some(old), Some(new)) = (&self.held_vips, &new.held_vips)
            && old.vips != new.vips
        {
            return Some(format!("services[].vip: {}", old.why));
        }
        // Dropping the last nat service is fine (the ports stay reserved
        // until the stop); the first one needs the reservation.
        if !self.nat_used && new.nat_used {
            return Some("services[].mode: the first nat service".into());
        }
        if self.discovery_used != new.discovery_used {
            return Some(if new.discovery_used {
                "services[].backends_from: the first service reading its backends from the cluster (the discovery client and its credentials are set up at start)".into()
            } else {
                "services[].backends_from: the last service reading its backends from the cluster (its discovery client would go on watching for no one)".into()
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BASE: &str = "
interface: eth0
vrrp:
  vrid: 1
  priority: 200
nodes:
  cp1: { priority: 200 }
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
        local: true
      - address: 10.0.0.12
";

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("t.yaml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// BASE with another holder (or none) in place of VRRP.
    fn held_by(holder: &str) -> String {
        BASE.replace(
            "vrrp:\n  vrid: 1\n  priority: 200\nnodes:\n  cp1: { priority: 200 }\n",
            holder,
        )
    }

    fn refusal(old: &str, new: &str) -> Option<String> {
        cfg(old).split().0.refuses(&cfg(new).split().0)
    }

    /// Each part of `Fixed` refused by its own name, from one edit each.
    #[test]
    fn every_fixed_field_is_refused_by_name() {
        let nat = BASE.replace("mode: dsr", "mode: nat");
        let cases: [(&str, String, String); 10] = [
            ("interface", BASE.into(), BASE.replace("eth0", "eth1")),
            ("xdp_mode", BASE.into(), format!("xdp_mode: skb\n{BASE}")),
            (
                "conntrack_capacity",
                BASE.into(),
                format!("conntrack_capacity: 4096\n{BASE}"),
            ),
            ("hold_vips", held_by(""), held_by("hold_vips: true\n")),
            (
                "vrrp",
                BASE.into(),
                BASE.replace("priority: 200\nnodes", "priority: 150\nnodes"),
            ),
            (
                "announce",
                held_by("announce: {}\n"),
                held_by("announce: { table: 199 }\n"),
            ),
            (
                "nat",
                nat.clone(),
                format!("nat: {{ tcp_idle_s: 60 }}\n{nat}"),
            ),
            (
                "metrics_listen",
                BASE.into(),
                format!("metrics_listen: 127.0.0.1:9591\n{BASE}"),
            ),
            (
                "state_sync",
                format!(
                    "state_sync: {{ peers: [10.0.0.3] }}\n{}",
                    nat.replace("mode: nat", "mode: nat\n    snat: vip")
                ),
                format!(
                    "state_sync: {{ peers: [10.0.0.4] }}\n{}",
                    nat.replace("mode: nat", "mode: nat\n    snat: vip")
                ),
            ),
            ("snapshot", BASE.into(), format!("snapshot: {{}}\n{BASE}")),
        ];
        for (field, old, new) in cases {
            assert_eq!(refusal(&old, &old), None, "{field}: the same file");
            assert_eq!(
                refusal(&old, &new).as_deref(),
                Some(field),
                "{old}\n->\n{new}"
            );
        }
    }

    /// The VIPs a holder was made for, and the first nat service: rules
    /// across `Fixed` and the services.
    #[test]
    fn held_vips_and_the_first_nat_service_are_refused() {
        let moved = BASE.replace("10.0.0.100", "10.0.0.101");
        assert_eq!(
            refusal(BASE, &moved).as_deref(),
            Some("services[].vip: the VIPs VRRP elects a holder for")
        );
        let announce = held_by("announce: {}\n");
        assert_eq!(
            refusal(&announce, &announce.replace("10.0.0.100", "10.0.0.101")).as_deref(),
            Some("services[].vip: the VIPs announce routes to")
        );
        let static_vips = held_by("hold_vips: true\n");
        assert_eq!(
            refusal(
                &static_vips,
                &static_vips.replace("10.0.0.100", "10.0.0.101")
            ),
            None,
            "hold_vips takes new VIPs on reload"
        );
        let second = format!(
            "{BASE}  - vip: 10.0.0.100\n    port: 8443\n    mode: nat\n    backends:\n      - address: 10.0.0.12\n"
        );
        assert_eq!(
            refusal(BASE, &second).as_deref(),
            Some("services[].mode: the first nat service")
        );
        assert_eq!(refusal(&second, BASE), None, "the last nat service may go");
    }

    /// The discovery client exists from start or not at all; the families
    /// it watches follow the services.
    #[test]
    fn the_first_and_last_discovered_service_are_refused_a_new_family_is_not() {
        let v4 = BASE.replace(
            "    mode: dsr\n",
            "    mode: dsr\n    backends_from: kubernetes\n",
        );
        let first = refusal(BASE, &v4).expect("refused");
        assert!(
            first.starts_with("services[].backends_from: the first"),
            "{first}"
        );
        let last = refusal(&v4, BASE).expect("refused");
        assert!(
            last.starts_with("services[].backends_from: the last"),
            "{last}"
        );
        // Dual stack, the IPv6 service with its static list, then read
        // from the cluster too: the running client watches both families.
        let v6 =
            "  - vip: \"fd00::100\"\n    mode: dsr\n    backends:\n      - address: \"fd00::12\"\n";
        let static_v6 = format!("{v4}{v6}");
        let found_v6 = format!(
            "{v4}{}",
            v6.replace(
                "    mode: dsr\n",
                "    mode: dsr\n    backends_from: kubernetes\n"
            )
        );
        assert_eq!(
            refusal(&static_v6, &found_v6),
            None,
            "an IPv6 service joins the watch on reload"
        );
        assert_eq!(refusal(&found_v6, &static_v6), None, "and leaves it");
    }

    /// What `Live` holds changes without a restart.
    #[test]
    fn services_probes_gate_and_other_nodes_reload() {
        let edits = [
            BASE.replace("      - address: 10.0.0.12\n", ""),
            BASE.replace(
                "    mode: dsr",
                "    mode: dsr\n    probe: { interval: 2s, timeout: 1s }",
            ),
            format!("cert_gate: {{ on_missing_san: warn, names: [api.example] }}\n{BASE}"),
            format!("bootstrap: true\n{BASE}"),
            BASE.replace(
                "  cp1: { priority: 200 }",
                "  cp1: { priority: 200 }\n  cp2: { priority: 190 }",
            ),
        ];
        for new in edits {
            assert_eq!(refusal(BASE, &new), None, "{new}");
            let (old_live, new_live) = (cfg(BASE), cfg(&new));
            assert_ne!(
                old_live.split().1,
                new_live.split().1,
                "{new}: a Live change"
            );
        }
    }
}
