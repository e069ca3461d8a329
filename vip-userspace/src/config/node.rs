//! One file for every node: the values that differ per node (the interface,
//! the VRRP priority, the metrics address) resolved from the file and the
//! facts of the node it runs on. [`resolve`] is a pure function of the two;
//! gathering the facts (netlink, the environment) is [`gather`]'s job.
//!
//! Precedence, the same for every value: the node's own entry under
//! `nodes:` first, then the top-level setting, then what vipd derives:
//! - interface: the one that holds an address on a backend's subnet, else
//!   the one the kernel routes the backends through;
//! - VRRP priority: from the backend list's order, `200 - 10 * k` for the
//!   node whose address is the k-th backend (the first backend's node is the
//!   preferred master), so that a control-plane node that joins with its
//!   apiserver appended to the list needs no edit. The step of 10 keeps five
//!   nodes within 40 of each other: a node whose own apiserver fails drops by
//!   `track.local_apiserver` (50) below every healthy one;
//! - `metrics_listen: node:PORT`: this node's address on the backends'
//!   subnet (the address the kubelet's probes and Prometheus reach);
//! - `state_sync.peers` and `vrrp.unicast_peers` may list every LB node:
//!   this node's own address is left out.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use serde::Deserialize;
use thiserror::Error;

use super::{Config, ConfigError};

/// A node's own values under `nodes:`, each overriding the top-level one.
/// Deliberately small: only what must differ between nodes of one VIP.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// VRRP priority of this node (1..=254; 255 only for the VIP's owner).
    #[serde(default)]
    pub priority: Option<u8>,
    /// The interface, where the nodes' NIC names differ and vipd cannot
    /// tell it from the backends' subnet.
    #[serde(default)]
    pub interface: Option<String>,
}

/// `metrics_listen`: an address and port, or `node:PORT` for this node's
/// address on the backends' subnet (one file for every node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    Addr(SocketAddr),
    Node(u16),
}

impl MetricsListen {
    /// The address, once resolved for a node; `None` for `node:PORT`.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            MetricsListen::Addr(a) => Some(a),
            MetricsListen::Node(_) => None,
        }
    }

    pub fn parse(s: &str) -> Result<MetricsListen, String> {
        if let Some(port) = s.strip_prefix("node:") {
            return port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(MetricsListen::Node)
                .ok_or_else(|| {
                    format!("{s:?}: the port after `node:` must be 1..65535, like node:9590")
                });
        }
        s.parse().map(MetricsListen::Addr).map_err(|_| {
            format!("{s:?} is not ADDRESS:PORT or node:PORT; write 127.0.0.1:9590, [::]:9590 or node:9590 (this node's address)")
        })
    }
}

impl std::fmt::Display for MetricsListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsListen::Addr(a) => write!(f, "{a}"),
            MetricsListen::Node(p) => write!(f, "node:{p}"),
        }
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MetricsListen::parse(&s).map_err(serde::de::Error::custom)
    }
}

pub use crate::link::Interface;

/// What vipd knows about the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// `NODE_NAME` (the DaemonSet's downward API), else the hostname.
    pub name: String,
    pub interfaces: Vec<Interface>,
    /// For each backend address, the interface the kernel routes it
    /// through (`ip route get`); backends without a route are absent.
    pub routes: Vec<(IpAddr, String)>,
}

/// The per-node values, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The `nodes:` key this node matched, if any.
    pub entry: Option<String>,
    pub interface: String,
    /// Where the interface came from, for the log and check-config.
    pub interface_from: &'static str,
    /// This node's address on the backends' subnet (on `interface`).
    pub address: Option<IpAddr>,
    /// Position in the backend list of this node's own address.
    pub backend_index: Option<usize>,
    /// The VRRP priority, with `vrrp:`.
    pub priority: Option<u8>,
    pub priority_from: &'static str,
    pub metrics_listen: Option<SocketAddr>,
    /// `state_sync.peers` without this node's own addresses: one file can
    /// list every LB node.
    pub sync_peers: Option<Vec<IpAddr>>,
    /// `vrrp.unicast_peers` without this node's own addresses, for the same
    /// reason; `None` for multicast (an empty list) or without `vrrp:`.
    pub unicast_peers: Option<Vec<IpAddr>>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NodeError {
    #[error(
        "node {name:?} (addresses {addrs}) is not listed under `nodes:` and none of its addresses is a backend; add `nodes: {{ {name}: {{ priority: N }} }}` (NODE_NAME, else the hostname, picks the entry), or add this node's apiserver to the backends"
    )]
    Unknown { name: String, addrs: String },
    #[error(
        "interface: several interfaces hold addresses on the backends' subnets ({found}); set `interface:` (or `nodes.{name}.interface`) to the one that carries the VIP"
    )]
    AmbiguousInterface { name: String, found: String },
    #[error(
        "interface: no interface holds an address on the backends' subnets and no route to them was found; set `interface:` (or `nodes.{name}.interface`) to the one that carries the VIP"
    )]
    NoInterface { name: String },
    #[error(
        "metrics_listen: node:{port}: interface {interface} has no address of the backends' family to listen on; give an address (like 127.0.0.1:{port})"
    )]
    NoAddress { interface: String, port: u16 },
    #[error(
        "state_sync.peers: every peer is one of this node's own addresses ({addrs}); list the other LB nodes too"
    )]
    NoSyncPeer { addrs: String },
    /// An empty list would silently mean multicast (RFC 9568 5.1.1.2), a
    /// different group: refuse instead.
    #[error(
        "vrrp.unicast_peers: every peer is one of this node's own addresses ({addrs}); list the other nodes too, or remove unicast_peers for multicast"
    )]
    NoUnicastPeer { addrs: String },
}

/// Derived priorities: 200 for the first backend's node, 10 less for each
/// next; none from the 21st on, which would get 0 ("leaving" on the wire,
/// RFC 9568 5.2.4). 200 leaves room above for `nodes:` overrides (and 255
/// for an owner), 10 apart keeps five nodes within the default
/// `track.local_apiserver` (50).
const DERIVED_TOP: u8 = 200;
const DERIVED_STEP: u8 = 10;

/// The priority derived for the node whose address is backend `k`.
pub fn derived_priority(k: usize) -> Option<u8> {
    let k = u8::try_from(k).ok()?;
    DERIVED_TOP
        .checked_sub(k.checked_mul(DERIVED_STEP)?)
        .filter(|p| *p > 0)
}

fn in_prefix(addr: IpAddr, net: IpAddr, len: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl Config {
    /// Every backend address in the file's order (services in order, each
    /// address once): the order the derived priorities follow.
    pub fn backend_addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for b in self.services.iter().flat_map(|s| &s.backends) {
            if !out.contains(&b.address) {
                out.push(b.address);
            }
        }
        out
    }

    /// The `nodes:` entry for `name`: the exact key, else the hostname's
    /// first label (`cp1` for a host named `cp1.example.com`).
    fn node_entry(&self, name: &str) -> Option<(&String, &NodeSettings)> {
        self.nodes.get_key_value(name).or_else(|| {
            name.split_once('.')
                .and_then(|(short, _)| self.nodes.get_key_value(short))
        })
    }

    /// This file's per-node values for the node `facts` describe.
    pub fn resolve(&self, facts: &NodeFacts) -> Result<Resolved, NodeError> {
        let entry = self.node_entry(&facts.name);
        let backends = self.backend_addresses();
        let name = facts.name.clone();
        let usable = |a: &IpAddr| !a.is_loopback();
        let (interface, interface_from) =
            if let Some(i) = entry.and_then(|(_, e)| e.interface.clone()) {
                (i, "nodes")
            } else if !self.interface.is_empty() {
                (self.interface.clone(), "interface")
            } else {
                derive_interface(facts, &backends, &name)?
            };
        let here = facts.interfaces.iter().filter(|i| i.name == interface);
        let on_iface: Vec<(IpAddr, u8)> = here.flat_map(|i| i.addrs.iter().copied()).collect();
        // The address on a backend's subnet, the node's own backend first.
        let address = on_iface
            .iter()
            .find(|(a, _)| backends.contains(a))
            .or_else(|| {
                on_iface
                    .iter()
                    .find(|(a, len)| usable(a) && backends.iter().any(|b| in_prefix(*b, *a, *len)))
            })
            .map(|(a, _)| *a)
            .or_else(|| {
                let v4 = backends.first().is_none_or(|b| b.is_ipv4());
                let vips: Vec<IpAddr> = self.services.iter().map(|s| s.vip).collect();
                let plain: Vec<IpAddr> = on_iface.iter().map(|(a, _)| *a).collect();
                super::desired::node_address(&plain, v4, &vips)
            });
        let mine: Vec<IpAddr> = facts
            .interfaces
            .iter()
            .flat_map(|i| i.addrs.iter().map(|(a, _)| *a))
            .collect();
        let backend_index = backends.iter().position(|b| mine.contains(b));
        let unknown = || NodeError::Unknown {
            name: name.clone(),
            addrs: if mine.is_empty() {
                "none".into()
            } else {
                let shown: Vec<IpAddr> = mine.iter().copied().filter(usable).collect();
                crate::status::join(&shown)
            },
        };
        // A file that lists nodes is a file for several nodes: one that is
        // neither listed nor a backend is most likely a wrong NODE_NAME.
        if !self.nodes.is_empty() && entry.is_none() && backend_index.is_none() {
            return Err(unknown());
        }
        let (priority, priority_from) = match &self.vrrp {
            None => (None, "none"),
            Some(v) => {
                if let Some(p) = entry.and_then(|(_, e)| e.priority) {
                    (Some(p), "nodes")
                } else if let Some(p) = v.priority {
                    (Some(p), "vrrp.priority")
                } else {
                    let p = backend_index
                        .and_then(derived_priority)
                        .ok_or_else(unknown)?;
                    (Some(p), "backend order")
                }
            }
        };
        let metrics_listen = match self.metrics_listen {
            None => None,
            Some(MetricsListen::Addr(a)) => Some(a),
            Some(MetricsListen::Node(port)) => Some(SocketAddr::new(
                address.ok_or_else(|| NodeError::NoAddress {
                    interface: interface.clone(),
                    port,
                })?,
                port,
            )),
        };
        let sync_peers = match &self.state_sync {
            None => None,
            Some(sync) => {
                Some(
                    others(&sync.peers, &mine).ok_or_else(|| NodeError::NoSyncPeer {
                        addrs: crate::status::join(&sync.peers),
                    })?,
                )
            }
        };
        let unicast_peers = match self.vrrp.as_ref().map(|v| &v.unicast_peers) {
            None => None,
            Some(peers) if peers.is_empty() => None,
            Some(peers) => Some(
                others(peers, &mine).ok_or_else(|| NodeError::NoUnicastPeer {
                    addrs: crate::status::join(peers),
                })?,
            ),
        };
        Ok(Resolved {
            sync_peers,
            unicast_peers,
            entry: entry.map(|(k, _)| k.clone()),
            interface,
            interface_from,
            address,
            backend_index,
            priority,
            priority_from,
            metrics_listen,
        })
    }

    /// The file as this node runs it: the per-node values resolved and
    /// written in, so that the rest of vipd reads one concrete config.
    pub fn for_node(mut self, r: &Resolved) -> Config {
        self.interface = r.interface.clone();
        if let Some(v) = &mut self.vrrp {
            v.priority = r.priority;
            if let Some(peers) = &r.unicast_peers {
                v.unicast_peers.clone_from(peers);
            }
        }
        self.metrics_listen = r.metrics_listen.map(MetricsListen::Addr);
        if let (Some(sync), Some(peers)) = (&mut self.state_sync, &r.sync_peers) {
            sync.peers.clone_from(peers);
        }
        self
    }
}

/// A peer list without this node's own addresses; `None` when nothing is
/// left, which each caller refuses with its own error.
fn others(peers: &[IpAddr], mine: &[IpAddr]) -> Option<Vec<IpAddr>> {
    let rest: Vec<IpAddr> = peers
        .iter()
        .copied()
        .filter(|p| !mine.contains(p))
        .collect();
    (!rest.is_empty()).then_some(rest)
}

/// The interface on a backend's subnet, else the route's.
fn derive_interface(
    facts: &NodeFacts,
    backends: &[IpAddr],
    name: &str,
) -> Result<(String, &'static str), NodeError> {
    let mut on_subnet: Vec<&str> = facts
        .interfaces
        .iter()
        .filter(|i| {
            i.addrs.iter().any(|(a, len)| {
                !a.is_loopback()
                    && !matches!(a, IpAddr::V6(v) if v.is_unicast_link_local())
                    && backends.iter().any(|b| in_prefix(*b, *a, *len))
            })
        })
        .map(|i| i.name.as_str())
        .collect();
    on_subnet.sort_unstable();
    on_subnet.dedup();
    let mut routed: Vec<&str> = facts
        .routes
        .iter()
        .filter(|(b, _)| backends.contains(b))
        .map(|(_, i)| i.as_str())
        .filter(|i| *i != "lo")
        .collect();
    routed.sort_unstable();
    routed.dedup();
    let (found, from) = if on_subnet.is_empty() {
        (routed, "route to the backends")
    } else {
        (on_subnet, "backends' subnet")
    };
    match found.as_slice() {
        [one] => Ok(((*one).to_owned(), from)),
        [] => Err(NodeError::NoInterface {
            name: name.to_owned(),
        }),
        many => Err(NodeError::AmbiguousInterface {
            name: name.to_owned(),
            found: many.join(", "),
        }),
    }
}

/// The node's name: `NODE_NAME` (set by the DaemonSet from `spec.nodeName`),
/// else the kernel's hostname.
pub fn node_name() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The facts [`resolve`](Config::resolve) needs, read from this host: its
/// name, its interfaces' addresses (getifaddrs) and the kernel's route to
/// each backend (rtnetlink, `ip route get`).
pub async fn gather(cfg: &Config) -> Result<NodeFacts, crate::link::LinkError> {
    let interfaces = crate::link::all_prefixes()?;
    let routes = crate::route::route_interfaces(&cfg.backend_addresses()).await;
    Ok(NodeFacts {
        name: node_name(),
        interfaces,
        routes,
    })
}

impl Config {
    /// Loads the file and resolves it for this node (NODE_NAME or the
    /// hostname, its interfaces and routes): the config `vipd run` runs.
    pub async fn load_for_node(path: &Path) -> Result<(Config, Resolved), ConfigError> {
        let cfg = Config::load(path)?;
        let facts = gather(&cfg).await.map_err(|error| ConfigError::Facts {
            path: path.into(),
            error,
        })?;
        let r = cfg.resolve(&facts).map_err(|error| ConfigError::Node {
            path: path.into(),
            error,
        })?;
        Ok((cfg.for_node(&r), r))
    }
}

impl Config {
    /// What only the node can check, for `vipd check-config --offline`:
    /// the files the config names (they live on the node, not in the CI
    /// checkout), the interface, and which per-node values this node gets.
    pub fn offline_unchecked(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut files: Vec<(String, &Path)> = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}].probe");
            if s.probe.kind == super::ProbeType::Https {
                files.push((format!("{at}.ca (the cluster CA)"), &s.probe.ca));
            }
            for (f, p) in [
                ("client_cert", &s.probe.client_cert),
                ("client_key", &s.probe.client_key),
            ] {
                if let Some(p) = p {
                    files.push((format!("{at}.{f}"), p));
                }
            }
        }
        if let Some(k) = self.state_sync.as_ref().and_then(|s| s.key_file.as_deref()) {
            files.push(("state_sync.key_file".into(), k));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (what, path) in files {
            if seen.insert(path) {
                out.push(format!("{what}: {} exists and parses", path.display()));
            }
        }
        out.push(if self.interface.is_empty() {
            "interface: derived on each node (the interface on the backends' subnet, else the route to them) and unique there".to_owned()
        } else {
            format!("interface: {} exists on the node", self.interface)
        });
        let backends = self.backend_addresses();
        let nodes = if self.nodes.is_empty() {
            String::new()
        } else {
            format!(
                "one of nodes: {}, or ",
                self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        out.push(format!(
            "node match: NODE_NAME (else the hostname) is {nodes}a node holding a backend address ({})",
            crate::status::join(&backends)
        ));
        if let Some(v) = &self.vrrp
            && v.priority.is_none()
        {
            let order: Vec<String> = backends
                .iter()
                .enumerate()
                .filter_map(|(k, b)| derived_priority(k).map(|p| format!("{b} {p}")))
                .collect();
            out.push(format!(
                "VRRP priority: from nodes: where listed, else by the backend order ({})",
                order.join(", ")
            ));
        }
        if let Some(MetricsListen::Node(port)) = self.metrics_listen {
            out.push(format!(
                "metrics_listen: node:{port} becomes the node's address on the backends' subnet"
            ));
        }
        out.push(
            "the backends' certificates (the certificate gate) and probes: read at run time".into(),
        );
        if let Some(d) = self.discovery() {
            out.push(match &d.kubeconfig {
                Some(k) => format!(
                    "discovery.kubeconfig: {} exists and holds a usable context",
                    k.display()
                ),
                None => "discovery: the pod's service account (token and CA) is mounted".into(),
            });
        }
        out
    }
}

impl Resolved {
    /// One line for the log and check-config: what this node runs with and
    /// where each value came from.
    pub fn describe(&self, node: &str) -> String {
        let mut s = format!(
            "node {node:?}{}: interface {} (from {})",
            self.entry
                .as_ref()
                .map(|e| format!(" (entry nodes.{e})"))
                .unwrap_or_default(),
            self.interface,
            self.interface_from
        );
        if let Some(p) = self.priority {
            s.push_str(&format!(
                ", VRRP priority {p} (from {})",
                self.priority_from
            ));
        }
        if let Some(m) = self.metrics_listen {
            s.push_str(&format!(", metrics on {m}"));
        }
        s
    }
}

/// The node's entries, as check-config lists them.
pub fn describe(nodes: &BTreeMap<String, NodeSettings>) -> Vec<String> {
    nodes
        .iter()
        .map(|(n, s)| {
            let mut parts = vec![];
            if let Some(p) = s.priority {
                parts.push(format!("priority {p}"));
            }
            if let Some(i) = &s.interface {
                parts.push(format!("interface {i}"));
            }
            format!("{n}: {}", parts.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests;
