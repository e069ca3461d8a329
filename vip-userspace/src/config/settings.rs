//! The sections beside the services and the holder: mode nat's source
//! ports and timeouts, state sync, the certificate gate.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use vip_common::Globals;

use super::{
    desired::node_address,
    error::FieldError,
    types::{self, PortRange, TlsName},
};

/// Mode nat settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatSettings {
    /// Source ports for translated connections, "LO-HI". vipd reserves them
    /// from the kernel (net.ipv4.ip_local_reserved_ports) while it runs.
    pub ports: PortRange,
    /// Idle seconds after which a TCP flow is forgotten.
    pub tcp_idle_s: u32,
    /// Idle seconds after which a UDP flow is forgotten.
    pub udp_idle_s: u32,
    /// Seconds a flow stays after FIN or RST.
    pub closing_s: u32,
}

impl Default for NatSettings {
    fn default() -> Self {
        let g = Globals::DEFAULT;
        NatSettings {
            ports: PortRange {
                lo: g.nat_port_lo,
                hi: g.nat_port_hi,
            },
            tcp_idle_s: g.tcp_idle_s,
            udp_idle_s: g.udp_idle_s,
            closing_s: g.closing_s,
        }
    }
}

impl NatSettings {
    /// The port range as (lo, hi).
    pub fn port_range(&self) -> (u16, u16) {
        (self.ports.lo, self.ports.hi)
    }

    /// The settings as the program reads them, this node handing out the
    /// ports of `alloc` (its [`NatSettings::slice`]), or of the whole range.
    pub fn globals(&self, alloc: Option<PortRange>) -> Globals {
        let alloc = alloc.unwrap_or(self.ports);
        Globals {
            nat_port_lo: self.ports.lo,
            nat_port_hi: self.ports.hi,
            tcp_idle_s: self.tcp_idle_s,
            udp_idle_s: self.udp_idle_s,
            closing_s: self.closing_s,
            nat_alloc_lo: alloc.lo,
            nat_alloc_hi: alloc.hi,
        }
    }

    /// The ports the node of rank `rank` among `nodes` LBs hands out when
    /// all of them translate to one SNAT address at the same time (the VIP
    /// with `announce:`, where the router's ECMP sends clients to every LB):
    /// the range cut into `nodes` equal slices, the last one taking the
    /// remainder. Disjoint slices mean two LBs never give one (SNAT address,
    /// port) towards one backend to two flows, with no coordination per
    /// flow; state sync then tells every LB about the others' flows. `None`
    /// if a slice would hold fewer than [`MIN_SLICE`] ports.
    pub fn slice(&self, rank: usize, nodes: usize) -> Option<PortRange> {
        let total = self.ports.hi as usize - self.ports.lo as usize + 1;
        let size = total / nodes.max(1);
        if size < MIN_SLICE || rank >= nodes {
            return None;
        }
        let lo = self.ports.lo as usize + rank * size;
        let hi = if rank + 1 == nodes {
            self.ports.hi as usize
        } else {
            lo + size - 1
        };
        Some(PortRange {
            lo: lo as u16,
            hi: hi as u16,
        })
    }
}

/// The fewest source ports one LB's slice may hold: the same floor as a
/// whole `nat.ports` range (fewer run out under a handful of clients).
pub const MIN_SLICE: usize = 256;

/// This node's rank among the LBs that share the NAT source ports: how many
/// of `peers` (the others, as `state_sync.peers` lists them once this
/// node's own addresses are left out) sort below `me` (its sync address,
/// which the others list). Every node computes the same order from the same
/// list, so the ranks are 0..=peers.len(), each once, with no election.
pub fn nat_rank(me: IpAddr, peers: &[IpAddr]) -> usize {
    peers.iter().filter(|p| **p < me).count()
}

/// The other LBs' slices, as each of them computes its own with
/// [`nat_rank`] and [`NatSettings::slice`] from the same list: (peer's sync
/// address, its slice) for every peer in `peers` (the others, without
/// `me`). A reply to a port of a peer's slice that reaches this LB before
/// the flow's sync record is handed to that peer (`NAT_OWNERS`).
pub fn nat_owners(nat: &NatSettings, me: IpAddr, peers: &[IpAddr]) -> Vec<(IpAddr, PortRange)> {
    let nodes = peers.len() + 1;
    peers
        .iter()
        .filter_map(|&p| {
            let others: Vec<IpAddr> = peers
                .iter()
                .copied()
                .filter(|&q| q != p)
                .chain(std::iter::once(me))
                .collect();
            nat.slice(nat_rank(p, &others), nodes).map(|r| (p, r))
        })
        .collect()
}

/// The default state-sync port (UDP). Next to the apiserver's 6443 so it is
/// easy to open in the same firewall rule set; outside the kernel's
/// ephemeral range (32768-60999), vipd's default NAT source ports
/// (40000-59999, which the XDP program claims as reply ports), the
/// Kubernetes NodePort range (30000-32767), and the ports kubeadm control
/// planes use (6443, 2379-2380, 10250, 10257, 10259).
pub const DEFAULT_SYNC_PORT: u16 = 6446;

fn default_sync_port() -> u16 {
    DEFAULT_SYNC_PORT
}

/// `state_sync:` settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateSyncSettings {
    /// The LB nodes' addresses; a node's own is left out ([`super::node`]),
    /// so one file may list them all. Datagrams from any other source are
    /// dropped (and counted).
    pub peers: Vec<IpAddr>,
    /// UDP port to listen on and send to (the same on every node).
    #[serde(default = "default_sync_port")]
    pub port: u16,
    /// Address to listen on and send from; default: the interface's first
    /// address of the peers' family that is no VIP.
    #[serde(default)]
    pub listen: Option<IpAddr>,
    /// Shared keys (`ID HEX` lines, the first signs): every datagram is
    /// then tagged with HMAC-SHA256 and checked for replay
    /// ([`crate::keys`]). Read again when it changes.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl StateSyncSettings {
    /// The listen address: `listen`, or the interface's first address of
    /// the peers' family that is no VIP and not link-local.
    pub fn listen_addr(
        &self,
        node_addrs: &[IpAddr],
        vips: &[IpAddr],
    ) -> Result<IpAddr, FieldError> {
        if let Some(a) = self.listen {
            return Ok(a);
        }
        let v4 = self.peers.first().is_none_or(|p| p.is_ipv4());
        node_address(node_addrs, v4, vips).ok_or_else(|| {
            FieldError::new(
                "state_sync",
                format!(
                    "the interface has no {} address to listen on; add one or set state_sync.listen",
                    if v4 { "IPv4" } else { "IPv6" }
                ),
            )
        })
    }
}

/// What the certificate gate does about a certificate without the VIP.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum GateAction {
    /// Such a backend gets no new flows, and a node whose own apiserver (or
    /// every backend) lacks the names does not become VRRP master.
    #[default]
    Refuse,
    /// Log and carry on.
    Warn,
    /// Do not dial the backends for their certificates.
    Off,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CertGateSettings {
    pub on_missing_san: GateAction,
    /// How often the certificates are read again (they rotate: kubeadm
    /// renews them on upgrade, cert-manager whenever it likes).
    #[serde(deserialize_with = "types::duration")]
    pub interval: Duration,
    /// DNS names clients use for the VIP, required in the SAN as well.
    pub names: Vec<String>,
    /// Warn when a certificate expires within this many days.
    pub expiry_warning_days: u32,
}

impl Default for CertGateSettings {
    fn default() -> Self {
        CertGateSettings {
            on_missing_san: GateAction::Refuse,
            interval: Duration::from_secs(600),
            names: vec![],
            expiry_warning_days: 30,
        }
    }
}

impl CertGateSettings {
    /// The interval and names; paths relative to `cert_gate`.
    pub(super) fn check(&self) -> Result<(), FieldError> {
        if self.interval < Duration::from_secs(10) {
            return Err(FieldError::new(
                "interval",
                format!(
                    "{:?}: use a duration of at least 10s, like 10m",
                    types::format_duration(self.interval)
                ),
            ));
        }
        for (i, n) in self.names.iter().enumerate() {
            if types::TlsName::parse(n).is_err() || n.parse::<IpAddr>().is_ok() {
                return Err(FieldError::new(
                    format!("names[{i}]"),
                    format!("{n:?} is not a DNS name (the VIPs are checked anyway)"),
                ));
            }
        }
        Ok(())
    }
}

/// Where the backend set of `backends_from: kubernetes` services is kept
/// between runs (see `discovery::cache`).
pub const DEFAULT_DISCOVERY_CACHE: &str = "/var/lib/vipd/backends.json";

fn default_discovery_cache() -> PathBuf {
    PathBuf::from(DEFAULT_DISCOVERY_CACHE)
}

/// `discovery:`: how vipd reads the `kubernetes` Service's EndpointSlices
/// for the services with `backends_from: kubernetes`. Every field may be
/// left out: the pod's service account and `KUBERNETES_SERVICE_HOST`, as
/// a DaemonSet runs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiscoverySettings {
    /// A kubeconfig to authenticate with (kubeadm's
    /// `/etc/kubernetes/admin.conf`, or one with a token for a service
    /// account allowed to list and watch endpointslices); absent: the pod's
    /// service account.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The apiserver URLs to ask, in order (e.g. this node's own apiserver
    /// first, then the VIP); absent: the kubeconfig's server, or
    /// `KUBERNETES_SERVICE_HOST`.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The name the apiserver's certificate is verified for when the URL's
    /// host is not in it (`https://127.0.0.1:6443` with `tls_name:
    /// kubernetes`).
    #[serde(default)]
    pub tls_name: Option<TlsName>,
    /// The last known backend set, read at start when no apiserver answers.
    #[serde(default = "default_discovery_cache")]
    pub cache: PathBuf,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        DiscoverySettings {
            kubeconfig: None,
            servers: Vec::new(),
            tls_name: None,
            cache: default_discovery_cache(),
        }
    }
}

impl DiscoverySettings {
    pub(super) fn check(&self) -> Result<(), FieldError> {
        for (i, s) in self.servers.iter().enumerate() {
            crate::discovery::client::Server::parse(s).map_err(|_| {
                FieldError::new(
                    format!("servers[{i}]"),
                    format!("{s:?} is not an apiserver URL; write it like https://10.0.0.11:6443"),
                )
            })?;
        }
        if !self.cache.is_absolute() || self.cache.file_name().is_none() {
            return Err(FieldError::new(
                "cache",
                format!(
                    "{} is not an absolute file path; use e.g. {DEFAULT_DISCOVERY_CACHE} (a hostPath the DaemonSet mounts)",
                    self.cache.display()
                ),
            ));
        }
        Ok(())
    }
}
