//! The configuration file (YAML). Unknown fields are refused, and every error
//! names the file, the field path and the fix.
//!
//! - `types`: the values written as text (durations, MACs, `snat`, port
//!   ranges, TLS names), parsed once while the file is read;
//! - this file, `service`, `holder`, `settings`: the file's structure, every
//!   leaf typed; `node`: one file for every node, resolved per node;
//! - `validate`: the checks across values, run once at load;
//! - `reload`: what a running vipd may change ([`Live`]) and what takes a
//!   restart ([`Fixed`]), split by type;
//! - `desired`: the services as the dataplane programmer wants them;
//! - `error`: [`ConfigError`] (the file) and [`FieldError`] (path and fix).

use std::path::Path;

use serde::Deserialize;

use crate::dataplane::kernel::AttachMode;

mod desired;
mod error;
mod holder;
pub mod node;
mod reload;
mod service;
mod settings;
pub mod types;
mod validate;

/// A MAC address as [`parse_mac`] reads it: six lower-case hex pairs
/// joined by colons.
pub use crate::link::format_mac;
pub use desired::addr_bytes;
pub use error::{ConfigError, FieldError};
pub use holder::{
    AnnounceSettings, AuthHmacSettings, DEFAULT_PRIORITY, RouteAnnounceSettings, TrackSettings,
    VrrpPlan, VrrpSettings,
};
pub use node::{MetricsListen, NodeFacts, NodeSettings};
pub use reload::{Fixed, Live};
pub use service::{
    Backend, BackendsFrom, Encap, Mode, ProbeSettings, ProbeType, Protocol, Service,
};
pub use settings::{
    CertGateSettings, DEFAULT_DISCOVERY_CACHE, DEFAULT_SYNC_PORT, DiscoverySettings, GateAction,
    MIN_SLICE, NatSettings, StateSyncSettings, nat_owners, nat_rank,
};
pub use types::{PortRange, Snat, TlsName, format_duration, parse_duration, parse_mac};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The interface the XDP program attaches to and the VIPs live on.
    /// Omitted (empty in the file form): derived per node, see
    /// [`node`]; a config vipd runs always has it ([`Config::for_node`]).
    #[serde(default)]
    pub interface: String,
    /// How to attach XDP: auto (native, else generic), native, skb.
    #[serde(default)]
    pub xdp_mode: AttachMode,
    /// Connection-table capacity.
    #[serde(default = "default_conntrack")]
    pub conntrack_capacity: u32,
    /// Add the VIPs to the interface while vipd runs, with no election: this
    /// node is the static VIP holder. Excludes `vrrp`.
    #[serde(default)]
    pub hold_vips: bool,
    /// Elect the VIP holder with VRRPv3 (RFC 9568) among the vipd (or
    /// keepalived) nodes on the segment.
    #[serde(default)]
    pub vrrp: Option<VrrpSettings>,
    /// Across an L3 fabric: hold the VIPs by installing their host routes in
    /// a kernel table that the node's routing daemon announces, only while
    /// this node can serve. Excludes `vrrp` and `hold_vips`.
    #[serde(default)]
    pub announce: Option<RouteAnnounceSettings>,
    /// Mode nat settings shared by all nat services.
    #[serde(default)]
    pub nat: NatSettings,
    /// The certificate gate: the backends' certificates must carry the VIPs
    /// (and `names`) in their SAN before this node serves the VIP.
    #[serde(default)]
    pub cert_gate: CertGateSettings,
    /// First `kubeadm init`: until any apiserver passes its probe, forward to
    /// the `local: true` backends whatever their probes say, and neither the
    /// local-apiserver tracking nor the certificate gate keeps this node from
    /// holding the VIP. Ends for good at the first ready apiserver.
    #[serde(default)]
    pub bootstrap: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `null`:
    /// nowhere; `node:PORT`: this node's address on the backends' subnet.
    #[serde(default = "default_metrics_listen")]
    pub metrics_listen: Option<MetricsListen>,
    /// Per-node values (VRRP priority, interface) by node name: one file for
    /// every node, each picking its entry by `NODE_NAME` or hostname.
    #[serde(default)]
    pub nodes: std::collections::BTreeMap<String, NodeSettings>,
    /// Mode nat: replicate new flows to the peer LBs so that they continue
    /// when the VIP moves (needs `snat: vip` on every nat service).
    #[serde(default)]
    pub state_sync: Option<StateSyncSettings>,
    /// etcd snapshots taken by the VIP holder (issue 19); absent: none.
    #[serde(default)]
    pub snapshot: Option<crate::snapshot::SnapshotSettings>,
    /// How the services with `backends_from: kubernetes` read the
    /// cluster's list of apiservers; absent: the defaults (the pod's
    /// service account, the cache under /var/lib/vipd).
    #[serde(default)]
    pub discovery: Option<DiscoverySettings>,
    pub services: Vec<Service>,
}
/// Loopback by default: the endpoint tells anyone who asks the backends'
/// addresses and states. Set `[::]:9590` (or the node's address) for a
/// Prometheus elsewhere.
pub const DEFAULT_METRICS_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9590),
);

fn default_metrics_listen() -> Option<MetricsListen> {
    Some(MetricsListen::Addr(DEFAULT_METRICS_LISTEN))
}

fn default_conntrack() -> u32 {
    vip_common::CONNTRACK_DEFAULT_CAPACITY
}

fn yes() -> bool {
    true
}

impl Config {
    /// This node's own apiservers: the backends marked `local: true`, as
    /// (address, port).
    pub fn local_backends(&self) -> Vec<std::net::SocketAddr> {
        let mut v: Vec<std::net::SocketAddr> = self
            .services
            .iter()
            .flat_map(|s| {
                s.backends
                    .iter()
                    .filter(|b| b.local)
                    .map(|b| s.backend_addr(b))
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The discovery settings if some service reads its backends from the
    /// cluster (the defaults where `discovery:` is absent).
    pub fn discovery(&self) -> Option<DiscoverySettings> {
        self.services
            .iter()
            .any(|s| s.backends_from.is_some())
            .then(|| self.discovery.clone().unwrap_or_default())
    }

    /// The VIPs, sorted, each once (a VIP with two ports is one address).
    pub fn vips(&self) -> Vec<std::net::IpAddr> {
        let mut v: Vec<std::net::IpAddr> = self.services.iter().map(|s| s.vip).collect();
        v.sort();
        v.dedup();
        v
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and checks the file: every value gets its type here, once
    /// (a value written as text that does not parse is a [`ConfigError::Parse`]
    /// at its field), then the checks across values run.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let message = error::parse_message(&field, &e.into_inner().to_string());
            ConfigError::Parse {
                path: path.into(),
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message,
            }
        })?;
        cfg.validate().map_err(|error| ConfigError::Invalid {
            path: path.into(),
            error,
        })?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests;
