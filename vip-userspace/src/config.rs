//! The configuration file (YAML). Unknown fields are refused, and every error
//! names the file, the field path and the fix.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use thiserror::Error;
use vip_common::{
    AddrBytes, EncapValue, FAMILY_V4, FAMILY_V6, Globals, MAGLEV_DEFAULT_SIZE, MODE_DSR, MODE_NAT,
    PROTO_TCP, PROTO_UDP, SVC_F_RST_UNSERVABLE, SVC_F_SYNC, ServiceKey,
};

use crate::{
    dataplane::{
        kernel::AttachMode,
        programmer::{DesiredBackend, DesiredService},
    },
    maglev,
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// The file is valid, but this node's values cannot be resolved from it.
    #[error("{path}: {error}")]
    Node {
        path: PathBuf,
        error: node::NodeError,
    },
    #[error("{path}: reading this node's interfaces to resolve its values: {error}")]
    Facts {
        path: PathBuf,
        error: crate::link::LinkError,
    },
}

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
    pub services: Vec<Service>,
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
    /// The LB nodes' addresses; a node's own is left out ([`node`]), so
    /// one file may list them all. Datagrams from any other source are
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
    /// ([`crate::sync::auth`]). Read again when it changes.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
}

/// The node's first address of the family (`v4`) that is none of
/// `exclude` (the VIPs) and not IPv6 link-local: what it speaks to
/// backends and peers from.
fn node_address(addrs: &[IpAddr], v4: bool, exclude: &[IpAddr]) -> Option<IpAddr> {
    addrs.iter().copied().find(|a| {
        a.is_ipv4() == v4
            && !exclude.contains(a)
            && !matches!(a, IpAddr::V6(v) if v.is_unicast_link_local())
    })
}

/// The outer source towards an encapsulated backend: this node's address on
/// the interface, of the backend's family, no VIP (a VIP moves between
/// nodes, and the backend's replies to the tunnel's source, ICMP errors
/// included, must reach this one) and not link-local (not routable to
/// another subnet). The interface is the one the packets arrive on, and
/// XDP_TX sends them back out of it; a redirect to another interface still
/// carries an address of this node, which the route back to it reaches.
fn encap_source(addrs: &[IpAddr], backend: IpAddr, vips: &[IpAddr]) -> Option<IpAddr> {
    node_address(addrs, backend.is_ipv4(), vips)
}

impl StateSyncSettings {
    /// The listen address: `listen`, or the interface's first address of
    /// the peers' family that is no VIP and not link-local.
    pub fn listen_addr(&self, node_addrs: &[IpAddr], vips: &[IpAddr]) -> Result<IpAddr, String> {
        if let Some(a) = self.listen {
            return Ok(a);
        }
        let v4 = self.peers.first().is_none_or(|p| p.is_ipv4());
        node_address(node_addrs, v4, vips).ok_or_else(|| {
                format!(
                    "state_sync: the interface has no {} address to listen on; add one or set state_sync.listen",
                    if v4 { "IPv4" } else { "IPv6" }
                )
            })
    }
}

/// Loopback by default: the endpoint tells anyone who asks the backends'
/// addresses and states. Set `[::]:9590` (or the node's address) for a
/// Prometheus elsewhere.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9590";

fn default_metrics_listen() -> Option<MetricsListen> {
    DEFAULT_METRICS_LISTEN.parse().ok().map(MetricsListen::Addr)
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
    pub interval: String,
    /// DNS names clients use for the VIP, required in the SAN as well.
    pub names: Vec<String>,
    /// Warn when a certificate expires within this many days.
    pub expiry_warning_days: u32,
}

impl Default for CertGateSettings {
    fn default() -> Self {
        CertGateSettings {
            on_missing_san: GateAction::Refuse,
            interval: "10m".into(),
            names: vec![],
            expiry_warning_days: 30,
        }
    }
}

/// How a backend is probed.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ProbeType {
    /// HTTPS GET of `path`, the certificate verified against `ca`.
    #[default]
    Https,
    /// TCP connect.
    Tcp,
}

/// Health-probe settings of a service's backends. The defaults fit kubeadm:
/// `/readyz` over TLS verified with the cluster CA under the name
/// `kubernetes`, which every kubeadm apiserver certificate carries.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(deny_unknown_fields, default)]
pub struct ProbeSettings {
    #[serde(rename = "type")]
    pub kind: ProbeType,
    pub path: String,
    /// The cluster CA bundle (PEM).
    pub ca: PathBuf,
    /// The name the certificate is verified for (SNI as well).
    pub server_name: String,
    /// A client certificate and key to present, for apiservers that refuse
    /// anonymous requests to /readyz (`--anonymous-auth=false`).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub interval: String,
    pub timeout: String,
    /// Consecutive successes before a down backend is used again.
    pub rise: u32,
    /// Consecutive failures before a backend is taken out.
    pub fall: u32,
    /// Each wait between probes is the interval plus or minus up to this,
    /// so that nodes started together do not probe in lockstep.
    pub jitter: String,
    /// The apiservers' `--shutdown-delay-duration`: the time they keep
    /// serving after /readyz turns red. vipd warns at start when its probes
    /// cannot take a backend out within it.
    pub apiserver_shutdown_delay: String,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            kind: ProbeType::Https,
            path: "/readyz".into(),
            ca: PathBuf::from("/etc/kubernetes/pki/ca.crt"),
            server_name: "kubernetes".into(),
            client_cert: None,
            client_key: None,
            interval: "1s".into(),
            timeout: "1s".into(),
            rise: 2,
            fall: 2,
            jitter: "100ms".into(),
            apiserver_shutdown_delay: "5s".into(),
        }
    }
}

/// Probe settings validated and in units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePlan {
    /// The name an HTTPS probe verifies the certificate for; `None` for TCP.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    pub interval: Duration,
    pub timeout: Duration,
    pub jitter: Duration,
    pub rise: u32,
    pub fall: u32,
    pub shutdown_delay: Duration,
}

impl ProbePlan {
    /// The longest a backend that stops answering can keep receiving new
    /// flows: the last good probe started just before it failed, then `fall`
    /// more probes each wait up to interval + jitter and run up to the
    /// timeout before they count (a hung apiserver), then one map write.
    pub fn worst_detection(&self) -> Duration {
        (self.interval + self.jitter) * self.fall + self.timeout
    }

    /// The same for an apiserver whose /readyz fails at once (the shutdown
    /// case: it answers 500 while draining), the one that must beat
    /// `--shutdown-delay-duration`.
    pub fn worst_fast_fail(&self) -> Duration {
        (self.interval + self.jitter) * self.fall
    }
}

impl ProbeSettings {
    pub fn plan(&self) -> Result<ProbePlan, (String, String)> {
        let field = |f: &str, m: String| (f.to_string(), m);
        let interval = parse_duration(&self.interval).map_err(|e| field("interval", e))?;
        let timeout = parse_duration(&self.timeout).map_err(|e| field("timeout", e))?;
        let jitter = parse_duration(&self.jitter).map_err(|e| field("jitter", e))?;
        let shutdown_delay = parse_duration(&self.apiserver_shutdown_delay)
            .map_err(|e| field("apiserver_shutdown_delay", e))?;
        if interval < Duration::from_millis(100) {
            return Err(field(
                "interval",
                format!("{:?} is too often; use at least 100ms", self.interval),
            ));
        }
        if timeout.is_zero() || timeout > interval {
            return Err(field(
                "timeout",
                format!(
                    "{:?}: use more than 0 and at most the interval ({}), or a hung apiserver would delay its own next probe",
                    self.timeout, self.interval
                ),
            ));
        }
        if jitter * 2 > interval {
            return Err(field(
                "jitter",
                format!("{:?}: use at most half the interval", self.jitter),
            ));
        }
        for (name, v) in [("rise", self.rise), ("fall", self.fall)] {
            if v == 0 || v > 100 {
                return Err(field(name, format!("{v}: use 1..=100 probes")));
            }
        }
        if self.kind == ProbeType::Https && !self.path.starts_with('/') {
            return Err(field(
                "path",
                format!("{:?} must start with /, like /readyz", self.path),
            ));
        }
        if self.path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(field(
                "path",
                format!("{:?} has spaces or control characters", self.path),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(field(
                "client_cert",
                "client_cert and client_key go together; set both or neither".into(),
            ));
        }
        let server_name = match self.kind {
            ProbeType::Tcp => None,
            ProbeType::Https => Some(
                rustls::pki_types::ServerName::try_from(self.server_name.clone()).map_err(
                    |_| {
                        field(
                            "server_name",
                            format!("{:?} is not a DNS name or IP address", self.server_name),
                        )
                    },
                )?,
            ),
        };
        Ok(ProbePlan {
            server_name,
            interval,
            timeout,
            jitter,
            rise: self.rise,
            fall: self.fall,
            shutdown_delay,
        })
    }
}

/// A DNS name or IP address as a TLS client accepts it.
fn rustls_name_ok(name: &str) -> bool {
    rustls::pki_types::ServerName::try_from(name).is_ok()
}

/// Mode nat settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatSettings {
    /// Source ports for translated connections, "LO-HI". vipd reserves them
    /// from the kernel (net.ipv4.ip_local_reserved_ports) while it runs.
    pub ports: String,
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
            ports: format!("{}-{}", g.nat_port_lo, g.nat_port_hi),
            tcp_idle_s: g.tcp_idle_s,
            udp_idle_s: g.udp_idle_s,
            closing_s: g.closing_s,
        }
    }
}

impl NatSettings {
    /// The port range, validated (1024 <= lo <= hi, at least 256 ports).
    pub fn port_range(&self) -> Result<(u16, u16), String> {
        let err = || {
            format!(
                "{:?} is not a port range; write it as 40000-59999 (at least 256 ports, above 1023)",
                self.ports
            )
        };
        let (lo, hi) = self.ports.split_once('-').ok_or_else(err)?;
        let lo: u16 = lo.trim().parse().map_err(|_| err())?;
        let hi: u16 = hi.trim().parse().map_err(|_| err())?;
        if lo < 1024 || hi < lo || hi - lo < 255 {
            return Err(err());
        }
        Ok((lo, hi))
    }

    /// The settings as the program reads them.
    pub fn globals(&self) -> Result<Globals, String> {
        let (lo, hi) = self.port_range()?;
        Ok(Globals {
            nat_port_lo: lo,
            nat_port_hi: hi,
            tcp_idle_s: self.tcp_idle_s,
            udp_idle_s: self.udp_idle_s,
            closing_s: self.closing_s,
        })
    }
}

/// VRRPv3 settings. IPv4 and IPv6 VIPs run as two virtual routers with the
/// same VRID (RFC 9568 section 1: the families are independent).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VrrpSettings {
    /// Virtual router id, 1..=255, the same on every node of this VIP.
    pub vrid: u8,
    /// 1..=254; 255 only on a node that owns the VIP as a real address.
    /// Omitted: per node, from `nodes:` or the backend list's order
    /// ([`node`]); a config vipd runs always has it.
    #[serde(default)]
    pub priority: Option<u8>,
    /// Advertisement interval: 20ms..40950ms in steps of 10ms ("100ms", "1s").
    #[serde(default = "default_advert_interval")]
    pub advert_interval: String,
    /// A higher-priority node takes the VIP back from a lower one.
    #[serde(default = "yes")]
    pub preempt: bool,
    /// After start, wait this long before preempting ("0s").
    #[serde(default = "zero_duration")]
    pub preempt_delay: String,
    /// Unicast advertisements to these peers instead of multicast (for
    /// networks that drop multicast). Only these sources are accepted.
    #[serde(default)]
    pub unicast_peers: Vec<IpAddr>,
    /// Gratuitous ARP / unsolicited NA on taking the VIP: how many, how far
    /// apart, and how often to refresh them while holding it ("0s": never).
    #[serde(default)]
    pub announce: AnnounceSettings,
    /// How much the advertised priority drops while this node cannot serve.
    #[serde(default)]
    pub track: TrackSettings,
    /// Sign every advert and refuse unsigned, forged and replayed ones
    /// (draft-cassen-vrrp-auth-hmac, keepalived 2.4's `auth_hmac`). Off by
    /// default: keepalived 2.2/2.3 discard signed adverts.
    #[serde(default)]
    pub auth_hmac: Option<AuthHmacSettings>,
}

/// `vrrp.auth_hmac`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthHmacSettings {
    /// The same key file format as `state_sync.key_file` (`ID HEX` lines,
    /// the first signs, all verify; read again when it changes).
    pub key_file: std::path::PathBuf,
    /// How far an advert's time may be from this node's clock ("5s",
    /// 1s..300s); default max(3 x advert_interval, 5s) as the draft's.
    #[serde(default)]
    pub time_window: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnnounceSettings {
    pub count: u32,
    pub interval: String,
    pub refresh: String,
}

impl Default for AnnounceSettings {
    fn default() -> Self {
        AnnounceSettings {
            count: 3,
            interval: "100ms".into(),
            refresh: "60s".into(),
        }
    }
}

/// `announce:`, the route holder (`agent::hold::announce`). Every field has
/// a default: `announce: {}` announces into table 198 with proto 249.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteAnnounceSettings {
    /// The kernel table the routing daemon imports (`kernel table 198` in
    /// BIRD, `ip import-table 198` in FRR): 1..=252 or above 255.
    pub table: u32,
    /// The route protocol number that marks vipd's routes (`proto 249`).
    pub proto: u8,
    /// On an orderly stop, how long vipd waits after withdrawing the routes
    /// before it exits (and, unpinned, its program detaches): the time the
    /// routing daemon and the upstream router need to stop sending here.
    pub drain: String,
}

impl Default for RouteAnnounceSettings {
    fn default() -> Self {
        RouteAnnounceSettings {
            table: crate::route::DEFAULT_TABLE,
            proto: crate::route::DEFAULT_PROTO,
            drain: "1s".into(),
        }
    }
}

/// The longest `announce.drain`: a stop that waits longer only delays
/// systemd and the next start; BGP with BFD needs well under a second.
const MAX_DRAIN: Duration = Duration::from_secs(30);

impl RouteAnnounceSettings {
    /// The table and protocol, validated as the route module does.
    pub fn route_table(&self) -> Result<crate::route::RouteTable, (String, String)> {
        use crate::route::{RouteError, RouteTable};
        RouteTable::new(self.table, self.proto).map_err(|e| {
            let field = match e {
                RouteError::Proto { .. } => "announce.proto",
                _ => "announce.table",
            };
            (field.to_owned(), e.to_string())
        })
    }

    /// The wait between withdrawing and exiting.
    pub fn drain(&self) -> Result<Duration, (String, String)> {
        let d = parse_duration(&self.drain).map_err(|e| ("announce.drain".to_owned(), e))?;
        if d > MAX_DRAIN {
            return Err((
                "announce.drain".into(),
                format!(
                    "{:?}: vipd waits at most {}s; BGP with BFD needs well under a second, use 1s",
                    self.drain,
                    MAX_DRAIN.as_secs()
                ),
            ));
        }
        Ok(d)
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrackSettings {
    /// Subtracted while the XDP program is not attached to the interface.
    pub xdp_detached: u8,
    /// Stacked mode: subtracted while this node's own apiserver (the
    /// backends with `local: true`) fails its probe.
    pub local_apiserver: u8,
}

impl Default for TrackSettings {
    fn default() -> Self {
        TrackSettings {
            xdp_detached: 100,
            local_apiserver: 50,
        }
    }
}

pub use crate::vrrp::VrrpPlan;

const PRIORITY_ZERO: &str = "0 means \"leaving\" on the wire (RFC 9568 5.2.4); use 1..=254";

/// The priority of a VRRP router whose config names none and was never
/// resolved for a node (RFC 9568 section 5.2.4's default for backups).
pub const DEFAULT_PRIORITY: u8 = 100;

impl VrrpSettings {
    /// The priority this node advertises before tracking.
    pub fn priority(&self) -> u8 {
        self.priority.unwrap_or(DEFAULT_PRIORITY)
    }
}
fn default_advert_interval() -> String {
    "100ms".into()
}
fn zero_duration() -> String {
    "0s".into()
}

/// "100ms", "1s", "1.5s", "0s", "10m", "1h" (at most a day).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration; write it like 100ms or 1s (or 10m, 1h)");
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return Err(err());
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(err());
    }
    Ok(Duration::from_secs_f64(v * scale))
}

impl VrrpSettings {
    /// Validates and converts; errors name the field under `vrrp.` and the fix.
    pub fn plan(&self) -> Result<VrrpPlan, (String, String)> {
        let field = |f: &str, m: String| (format!("vrrp.{f}"), m);
        if self.vrid == 0 {
            return Err(field(
                "vrid",
                "0 is not a VRID; use 1..=255, the same on every node".into(),
            ));
        }
        if self.priority == Some(0) {
            return Err(field("priority", PRIORITY_ZERO.into()));
        }
        let iv = parse_duration(&self.advert_interval).map_err(|e| field("advert_interval", e))?;
        let ms = iv.as_millis();
        if !(20..=40_950).contains(&ms) || iv.subsec_nanos() % 10_000_000 != 0 {
            return Err(field(
                "advert_interval",
                format!(
                    "{:?}: VRRPv3 carries centiseconds; use 20ms..40950ms in steps of 10ms",
                    self.advert_interval
                ),
            ));
        }
        let preempt_delay =
            parse_duration(&self.preempt_delay).map_err(|e| field("preempt_delay", e))?;
        let announce_interval =
            parse_duration(&self.announce.interval).map_err(|e| field("announce.interval", e))?;
        let announce_refresh =
            parse_duration(&self.announce.refresh).map_err(|e| field("announce.refresh", e))?;
        if self.announce.count == 0 {
            return Err(field(
                "announce.count",
                "0: clients would keep the old holder's MAC; use at least 1".into(),
            ));
        }
        for (i, p) in self.unicast_peers.iter().enumerate() {
            if p.is_unspecified() || p.is_multicast() || p.is_loopback() {
                return Err(field(
                    &format!("unicast_peers[{i}]"),
                    format!("{p} is not a peer's unicast address"),
                ));
            }
            // RFC 9568 5.1.2.1: IPv6 adverts leave from the sender's
            // link-local address, and unicast peers are matched on the
            // source (anything else is discarded as not_peer); a global
            // address would never match.
            if let IpAddr::V6(v6) = p
                && !v6.is_unicast_link_local()
            {
                return Err(field(
                    &format!("unicast_peers[{i}]"),
                    format!(
                        "{p} is not link-local; VRRPv3 over IPv6 sends from the link-local address (RFC 9568 section 5.1.2.1), so name each IPv6 peer by its fe80:: address (`ip -6 addr show dev IFACE scope link` on that node)"
                    ),
                ));
            }
        }
        let auth_hmac = match &self.auth_hmac {
            None => None,
            Some(a) => Some(crate::vrrp::AuthPlan {
                key_file: a.key_file.clone(),
                time_window: match &a.time_window {
                    None => crate::vrrp::auth::default_window(iv),
                    Some(w) => {
                        let d = parse_duration(w).map_err(|e| field("auth_hmac.time_window", e))?;
                        if !(1..=300).contains(&d.as_secs()) || d.subsec_nanos() != 0 {
                            return Err(field(
                                "auth_hmac.time_window",
                                format!(
                                    "{w:?}: the trailer carries whole seconds; use 1s..300s (the draft's range)"
                                ),
                            ));
                        }
                        d
                    }
                },
            }),
        };
        Ok(VrrpPlan {
            auth_hmac,
            vrid: self.vrid,
            priority: self.priority(),
            advert_interval_cs: u16::try_from(ms / 10).unwrap_or(4095),
            preempt: self.preempt,
            preempt_delay,
            unicast_peers: self.unicast_peers.clone(),
            announce_count: self.announce.count,
            announce_interval,
            announce_refresh,
            xdp_detached_weight: self.track.xdp_detached,
            local_apiserver_weight: self.track.local_apiserver,
        })
    }
}

fn default_conntrack() -> u32 {
    vip_common::CONNTRACK_DEFAULT_CAPACITY
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Dsr,
    Nat,
}

/// How mode dsr reaches a backend in another subnet.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encap {
    /// On the shared segment, by MAC (the default).
    None,
    /// IPv4 in IPv4 (RFC 2003): the backend decapsulates with `tunl0`.
    Ipip,
    /// IPv6 in IPv6 (RFC 2473): the backend decapsulates with `ip6tnl0`.
    Ip6ip6,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub vip: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    pub mode: Mode,
    /// Answer TCP that cannot be served with an RST (default on).
    #[serde(default = "yes")]
    pub rst_unservable: bool,
    #[serde(default = "default_maglev")]
    pub maglev_size: u32,
    /// How the backends are probed.
    #[serde(default)]
    pub probe: ProbeSettings,
    /// Mode nat: the source address towards the backends: `node` (this node's
    /// address on the interface, of the VIP's family), `vip` (the VIP itself,
    /// so that connection state can move with it), or an address.
    #[serde(default)]
    pub snat: Option<String>,
    /// Mode dsr: the default `encap` of the backends that set none.
    #[serde(default)]
    pub encap: Option<Encap>,
    /// Mode dsr with `encap`: the largest packet (IP total length) the path
    /// to the backends carries, outer header included. Larger ones are
    /// answered with ICMP "too big" so the client sends smaller.
    #[serde(default = "default_encap_mtu")]
    pub encap_mtu: u16,
    pub backends: Vec<Backend>,
}

impl Service {
    /// A backend's encapsulation: its own `encap`, else the service's; this
    /// node's own backend (`local: true`) takes no service default, since its
    /// packets are delivered locally (a stacked node lists itself beside the
    /// others it encapsulates to).
    pub fn encap_of(&self, b: &Backend) -> Encap {
        let default = if b.local { None } else { self.encap };
        b.encap.or(default).unwrap_or(Encap::None)
    }

    /// Whether `b`'s MAC must come from the neighbour table: mode dsr, not
    /// this node's own, no `mac:` override, and on the segment (an
    /// encapsulated backend is reached through the FIB's next hop, whose
    /// MAC the program's `bpf_fib_lookup` finds).
    pub fn needs_neighbour(&self, b: &Backend) -> bool {
        self.mode == Mode::Dsr && !b.local && b.mac.is_none() && self.encap_of(b) == Encap::None
    }
}

/// Where mode nat takes its source address from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snat {
    Node,
    Vip,
    Addr(IpAddr),
}

impl Service {
    pub fn snat(&self) -> Result<Snat, String> {
        match self.snat.as_deref().unwrap_or("node") {
            "node" => Ok(Snat::Node),
            "vip" => Ok(Snat::Vip),
            other => other
                .parse()
                .map(Snat::Addr)
                .map_err(|_| format!("{other:?} is not `node`, `vip` or an IP address")),
        }
    }
}

fn default_port() -> u16 {
    6443
}
fn yes() -> bool {
    true
}
fn default_encap_mtu() -> u16 {
    vip_common::ENCAP_DEFAULT_MTU
}
fn default_maglev() -> u32 {
    MAGLEV_DEFAULT_SIZE
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: IpAddr,
    /// Defaults to the service port.
    pub port: Option<u16>,
    /// Mode dsr: the backend node's MAC on the shared segment, as an
    /// override. Without it vipd takes the MAC from the kernel's neighbour
    /// table and follows it (`neigh`).
    pub mac: Option<String>,
    /// This node's own apiserver (mode dsr delivers locally). Not needed:
    /// in mode dsr a backend whose address is one of this node's is its
    /// own (`neigh::derive_local`); still accepted.
    #[serde(default)]
    pub local: bool,
    /// Mode dsr: `ipip` / `ip6ip6` for a backend in another subnet
    /// (overrides the service's `encap`; `none` opts out of it).
    #[serde(default)]
    pub encap: Option<Encap>,
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
                    .map(|b| std::net::SocketAddr::new(b.address, b.port.unwrap_or(s.port)))
            })
            .collect();
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

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let message = parse_message(&field, &e.into_inner().to_string());
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
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: String, message: String| ConfigError::Invalid {
            path: path.into(),
            field,
            message,
        };
        self.validate_nodes().map_err(|(f, m)| bad(f, m))?;
        if self.services.is_empty() {
            return Err(bad(
                "services".into(),
                "no service; add one (vip, port, mode, backends)".into(),
            ));
        }
        if self.conntrack_capacity < 1024 {
            return Err(bad(
                "conntrack_capacity".into(),
                format!(
                    "{} is too small; use at least 1024",
                    self.conntrack_capacity
                ),
            ));
        }
        self.nat
            .port_range()
            .map_err(|e| bad("nat.ports".into(), e))?;
        self.validate_holders().map_err(|(f, m)| bad(f, m))?;
        if self.nat.tcp_idle_s == 0 || self.nat.udp_idle_s == 0 {
            return Err(bad(
                "nat".into(),
                "idle timeouts must be at least 1 second".into(),
            ));
        }
        self.validate_cert_gate().map_err(|(f, m)| bad(f, m))?;
        self.validate_shared_probes().map_err(|(f, m)| bad(f, m))?;
        if let Some(sync) = &self.state_sync {
            self.validate_sync(sync).map_err(|(f, m)| bad(f, m))?;
        }
        if let Some(snap) = &self.snapshot {
            snap.plan().map_err(|(f, m)| bad(f, m))?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if !seen.insert((s.vip, s.port, s.protocol as u8)) {
                return Err(bad(
                    format!("services[{i}]"),
                    format!("{}:{} {:?} is configured twice", s.vip, s.port, s.protocol),
                ));
            }
            validate_service(i, s).map_err(|(f, m)| bad(f, m))?;
        }
        Ok(())
    }

    /// `nodes:` entries: a name, and only values that apply here.
    fn validate_nodes(&self) -> Result<(), (String, String)> {
        for (name, n) in &self.nodes {
            let at = format!("nodes.{name}");
            if name.is_empty() {
                return Err((
                    "nodes".into(),
                    "an empty node name; use the name `kubectl get nodes` shows (or the hostname)"
                        .into(),
                ));
            }
            match (n.priority, &self.vrrp) {
                (Some(_), None) => {
                    return Err((
                        format!("{at}.priority"),
                        "a priority without `vrrp:`; remove it, or add vrrp".into(),
                    ));
                }
                (Some(0), _) => return Err((format!("{at}.priority"), PRIORITY_ZERO.into())),
                _ => {}
            }
            if n.interface.as_deref() == Some("") {
                return Err((
                    format!("{at}.interface"),
                    "empty; name the interface that carries the VIP (ip link show), or remove it"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// One holder per node, and the holder's own settings.
    fn validate_holders(&self) -> Result<(), (String, String)> {
        if let Some(v) = &self.vrrp {
            if self.hold_vips {
                return Err((
                    "hold_vips".into(),
                    "a static holder and VRRP election exclude each other; remove hold_vips".into(),
                ));
            }
            let plan = v.plan()?;
            let families: Vec<bool> = self.services.iter().map(|s| s.vip.is_ipv4()).collect();
            for (i, p) in plan.unicast_peers.iter().enumerate() {
                if !families.contains(&p.is_ipv4()) {
                    return Err((
                        format!("vrrp.unicast_peers[{i}]"),
                        format!("{p}: no VIP of this address family to elect a holder for"),
                    ));
                }
            }
        }
        if let Some(a) = &self.announce {
            // One holder per node: VRRP moves the VIP address between nodes
            // of one segment, announce spreads it over every node by
            // routing; both at once would fight over who serves it.
            if self.vrrp.is_some() {
                return Err((
                    "announce".into(),
                    "announcing the VIP's route and electing a VRRP holder are two ways to hold the VIP; keep one: remove `vrrp:` across an L3 fabric (no shared segment), or `announce:` on one L2 segment".into(),
                ));
            }
            if self.hold_vips {
                return Err((
                    "hold_vips".into(),
                    "announce: holds the VIPs by their route, only while this node can serve; hold_vips would claim them always; remove hold_vips".into(),
                ));
            }
            a.route_table()?;
            a.drain()?;
        }
        Ok(())
    }

    /// The certificate gate's interval and names.
    fn validate_cert_gate(&self) -> Result<(), (String, String)> {
        parse_duration(&self.cert_gate.interval)
            .ok()
            .filter(|d| *d >= Duration::from_secs(10))
            .ok_or_else(|| {
                (
                    "cert_gate.interval".into(),
                    format!(
                        "{:?}: use a duration of at least 10s, like 10m",
                        self.cert_gate.interval
                    ),
                )
            })?;
        for (i, n) in self.cert_gate.names.iter().enumerate() {
            if !rustls_name_ok(n) || n.parse::<IpAddr>().is_ok() {
                return Err((
                    format!("cert_gate.names[{i}]"),
                    format!("{n:?} is not a DNS name (the VIPs are checked anyway)"),
                ));
            }
        }
        Ok(())
    }

    /// One backend, one probe: its health is shared by every service that
    /// lists it, so they must probe it alike.
    fn validate_shared_probes(&self) -> Result<(), (String, String)> {
        let mut probes: std::collections::BTreeMap<std::net::SocketAddr, (usize, &ProbeSettings)> =
            std::collections::BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            for (j, b) in s.backends.iter().enumerate() {
                let addr = std::net::SocketAddr::new(b.address, b.port.unwrap_or(s.port));
                match probes.get(&addr) {
                    Some((first, p)) if *p != &s.probe => {
                        return Err((
                            format!("services[{i}].backends[{j}]"),
                            format!(
                                "{addr} is probed with other settings in services[{first}]; give both services the same probe"
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        probes.insert(addr, (i, &s.probe));
                    }
                }
            }
        }
        Ok(())
    }

    /// `state_sync:` must name peers of one family, a port clear of the NAT
    /// source ports, and only nat services with `snat: vip`. Why refuse
    /// `snat: node` rather than warn: the backend knows a connection by its
    /// source address; with the node's own address there, the replicated entry
    /// on the peer would send from another address and the backend would
    /// answer it with an RST (or the replies go to the dead node): sync would
    /// look configured and keep nothing.
    fn validate_sync(&self, sync: &StateSyncSettings) -> Result<(), (String, String)> {
        let f = |field: &str, m: String| (format!("state_sync.{field}"), m);
        if sync.peers.is_empty() {
            return Err(f(
                "peers",
                "empty; list the other LB nodes' addresses, or remove state_sync".into(),
            ));
        }
        let v4 = sync.peers[0].is_ipv4();
        let vips: Vec<IpAddr> = self.services.iter().map(|s| s.vip).collect();
        for (i, p) in sync.peers.iter().enumerate() {
            if p.is_ipv4() != v4 {
                return Err(f(
                    &format!("peers[{i}]"),
                    format!("{p}: all peers must be of one address family (one socket)"),
                ));
            }
            if p.is_unspecified() || p.is_multicast() || p.is_loopback() {
                return Err(f(
                    &format!("peers[{i}]"),
                    format!("{p} is not a peer's unicast address; give the node address"),
                ));
            }
            if vips.contains(p) {
                return Err(f(
                    &format!("peers[{i}]"),
                    format!("{p} is a VIP; give the peer node's own address"),
                ));
            }
        }
        if let Some(l) = sync.listen
            && l.is_ipv4() != v4
        {
            return Err(f(
                "listen",
                format!("{l} is not of the peers' address family"),
            ));
        }
        let (lo, hi) = self.nat.port_range().map_err(|e| ("nat.ports".into(), e))?;
        if sync.port == 0 || (lo..=hi).contains(&sync.port) {
            return Err(f(
                "port",
                format!(
                    "{} is not usable (0, or inside nat.ports {lo}-{hi}, whose replies the XDP program takes); use the default {DEFAULT_SYNC_PORT}",
                    sync.port
                ),
            ));
        }
        let mut nat = 0;
        for (i, s) in self.services.iter().enumerate() {
            if s.mode != Mode::Nat {
                continue;
            }
            nat += 1;
            if !matches!(s.snat(), Ok(Snat::Vip)) {
                return Err((
                    format!("services[{i}].snat"),
                    "state_sync needs `snat: vip` on every nat service: the backends must see the VIP as the source, so that their replies follow it to the new holder; set snat: vip, or remove state_sync".into(),
                ));
            }
        }
        if nat == 0 {
            return Err(f(
                "peers",
                "state_sync replicates mode nat flows, and no service is mode nat; remove state_sync".into(),
            ));
        }
        Ok(())
    }

    /// The services as the dataplane programmer wants them, every backend alive
    /// (health probes come later and will clear `alive`). `node_addrs` are the
    /// interface's addresses, for `snat: node`.
    pub fn desired(&self, node_addrs: &[IpAddr]) -> Result<Vec<DesiredService>, String> {
        let vips: Vec<IpAddr> = self.services.iter().map(|s| s.vip).collect();
        self.services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (family, addr) = addr_bytes(s.vip);
                let snat_addr = match (s.mode, s.snat()?) {
                    (Mode::Dsr, _) => [0; 16],
                    (Mode::Nat, Snat::Vip) => addr,
                    (Mode::Nat, Snat::Addr(a)) => addr_bytes(a).1,
                    (Mode::Nat, Snat::Node) => {
                        let a = node_address(node_addrs, s.vip.is_ipv4(), &[s.vip])
                            .ok_or_else(|| {
                                format!(
                                    "services[{i}].snat: node: interface {} has no {} address; add one or set snat to an address",
                                    self.interface,
                                    if s.vip.is_ipv4() { "IPv4" } else { "IPv6" }
                                )
                            })?;
                        addr_bytes(a).1
                    }
                };
                Ok(DesiredService {
                    key: ServiceKey {
                        addr,
                        port_be: s.port.to_be(),
                        proto: match s.protocol {
                            Protocol::Tcp => PROTO_TCP,
                            Protocol::Udp => PROTO_UDP,
                        },
                        family,
                    },
                    mode: match s.mode {
                        Mode::Dsr => MODE_DSR,
                        Mode::Nat => MODE_NAT,
                    },
                    flags: if s.rst_unservable {
                        SVC_F_RST_UNSERVABLE
                    } else {
                        0
                    } | if s.mode == Mode::Nat && self.state_sync.is_some() {
                        SVC_F_SYNC
                    } else {
                        0
                    },
                    snat_addr,
                    table_size: s.maglev_size,
                    backends: s
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(j, b)| {
                            let (family, addr) = addr_bytes(b.address);
                            let encap = match s.encap_of(b) {
                                Encap::None => None,
                                Encap::Ipip | Encap::Ip6ip6 => {
                                    let src = encap_source(node_addrs, b.address, &vips)
                                        .ok_or_else(|| {
                                            format!(
                                                "services[{i}].backends[{j}].encap: interface {} has no {} address to send the tunnel from; add one",
                                                self.interface,
                                                if b.address.is_ipv4() { "IPv4" } else { "IPv6" }
                                            )
                                        })?;
                                    Some(EncapValue {
                                        saddr: addr_bytes(src).1,
                                        mtu: s.encap_mtu,
                                        _pad: [0; 2],
                                    })
                                }
                            };
                            Ok(DesiredBackend {
                                family,
                                addr,
                                port_be: b.port.unwrap_or(s.port).to_be(),
                                mac: b
                                    .mac
                                    .as_deref()
                                    .and_then(|m| parse_mac(m).ok())
                                    .unwrap_or_default(),
                                local: b.local,
                                encap,
                                alive: true,
                                draining: false,
                            })
                        })
                        .collect::<Result<_, String>>()?,
                })
            })
            .collect()
    }
}

pub fn addr_bytes(a: IpAddr) -> (u8, AddrBytes) {
    let mut b = [0; 16];
    match a {
        IpAddr::V4(v) => {
            b[..4].copy_from_slice(&v.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(v) => (FAMILY_V6, v.octets()),
    }
}

/// The parser's message as the operator reads it after the field path:
/// serde_yaml_ng starts it with its own copy of that path, said once here;
/// a bare type ("expected u16") becomes the range to use, and a missing
/// field says to add it.
fn parse_message(field: &str, message: &str) -> String {
    let m = message
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(message);
    let name = field.rsplit('.').next().unwrap_or(field);
    let range = |ty: &str| match (ty, name) {
        ("u16", "port") => Some("use a port number in 1..65535"),
        ("u8", "vrid" | "priority") => Some("use 1..255"),
        ("u8", _) => Some("use a whole number in 0..255"),
        ("u16", _) => Some("use a whole number in 0..65535"),
        ("u32", _) => Some("use a whole number in 0..4294967295"),
        _ => None,
    };
    let hint = if let Some(ty) = m
        .split("expected ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        && let Some(r) = range(ty)
    {
        Some(r.to_owned())
    } else {
        m.split("missing field `")
            .nth(1)
            .and_then(|t| t.split('`').next())
            .map(|missing| format!("add `{missing}:` here (see the configuration table in README)"))
    };
    match hint {
        Some(h) => format!("{m}; {h}"),
        None => m.to_owned(),
    }
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let err = || format!("{s:?} is not a MAC address; write it as 02:42:ac:11:00:02");
    if parts.len() != 6 {
        return Err(err());
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(err());
        }
        m[i] = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    Ok(m)
}

/// A MAC address as [`parse_mac`] reads it: six lower-case hex pairs
/// joined by colons.
pub use crate::link::format_mac;

/// One service's own fields (a service configured twice is the caller's to
/// find): snat, the table size, the probe, each backend's address and MAC.
fn validate_service(i: usize, s: &Service) -> Result<(), (String, String)> {
    let at = format!("services[{i}]");
    match (s.mode, s.snat()) {
        (Mode::Dsr, _) if s.snat.is_some() => {
            return Err((
                format!("{at}.snat"),
                "only mode nat translates source addresses; remove it or use mode nat".into(),
            ));
        }
        (_, Err(e)) => return Err((format!("{at}.snat"), e)),
        (_, Ok(Snat::Addr(a))) if a.is_ipv4() != s.vip.is_ipv4() => {
            return Err((
                format!("{at}.snat"),
                format!("{a} is not of the VIP's address family"),
            ));
        }
        _ => {}
    }
    let min_mtu = if s.vip.is_ipv4() { 576 } else { 1280 };
    if s.encap_mtu < min_mtu {
        return Err((
            format!("{at}.encap_mtu"),
            format!(
                "{} is below the minimum MTU of the VIP's family ({min_mtu}, RFC 791 / RFC 8200); set the path MTU towards the backends (1500 on usual Ethernet, 9000 with jumbo frames)",
                s.encap_mtu
            ),
        ));
    }
    maglev::check_size(s.maglev_size).map_err(|e| (format!("{at}.maglev_size"), e.to_string()))?;
    s.probe
        .plan()
        .map_err(|(f, m)| (format!("{at}.probe.{f}"), m))?;
    for (j, b) in s.backends.iter().enumerate() {
        let bat = format!("{at}.backends[{j}]");
        if b.address.is_ipv4() != s.vip.is_ipv4() {
            return Err((
                format!("{bat}.address"),
                format!("{} is not of the VIP's address family", b.address),
            ));
        }
        if b.address.is_unspecified() || b.address.is_multicast() {
            return Err((
                format!("{bat}.address"),
                format!("{} is not a unicast address", b.address),
            ));
        }
        validate_encap(s, b).map_err(|m| (format!("{bat}.encap"), m))?;
        if let Some(m) = &b.mac {
            parse_mac(m).map_err(|e| (format!("{bat}.mac"), e))?;
        }
    }
    Ok(())
}

pub mod node;
pub use node::{MetricsListen, NodeFacts, NodeSettings};

/// A backend's `encap` (its own or the service's): mode dsr only, not for
/// this node's own backend, and of the backend's address family.
fn validate_encap(s: &Service, b: &Backend) -> Result<(), String> {
    let e = s.encap_of(b);
    if e == Encap::None {
        return Ok(());
    }
    if s.mode != Mode::Dsr {
        return Err(
            "only mode dsr encapsulates (mode nat already routes to any subnet); remove encap"
                .into(),
        );
    }
    if b.local {
        return Err(
            "this node's own backend is delivered locally, not encapsulated; remove its encap"
                .into(),
        );
    }
    match (e, b.address.is_ipv4()) {
        (Encap::Ipip, false) => Err(format!(
            "{} is IPv6: use `encap: ip6ip6` (IPv6 in IPv6)",
            b.address
        )),
        (Encap::Ip6ip6, true) => Err(format!(
            "{} is IPv4: use `encap: ipip` (IPv4 in IPv4)",
            b.address
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
