//! `services:`: a VIP, its backends and how they are probed, with the
//! checks of one service's own fields.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;
use vip_common::MAGLEV_DEFAULT_SIZE;

use super::{
    error::FieldError,
    types::{self, Snat, TlsName, format_duration},
};
use crate::maglev;

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

/// Where a service's backend list comes from besides `backends:`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackendsFrom {
    /// The `kubernetes` Service's EndpointSlices (`discovery:`): the
    /// apiservers the cluster lists. `backends:` is then the seed used until
    /// the first list (or the cache) and holds per-address overrides.
    Kubernetes,
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
    #[serde(default = "super::yes")]
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
    pub snat: Option<Snat>,
    /// Mode dsr: the default `encap` of the backends that set none.
    #[serde(default)]
    pub encap: Option<Encap>,
    /// Mode dsr with `encap`: the largest packet (IP total length) the path
    /// to the backends carries, outer header included. Larger ones are
    /// answered with ICMP "too big" so the client sends smaller.
    #[serde(default = "default_encap_mtu")]
    pub encap_mtu: u16,
    /// `kubernetes`: the backends are the apiservers the cluster lists,
    /// vetted by the probe and the certificate gate before they get flows.
    #[serde(default)]
    pub backends_from: Option<BackendsFrom>,
    /// With `backends_from`: the seed and the per-address overrides
    /// (`mac`, `encap`); may be `[]` then.
    pub backends: Vec<Backend>,
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
    #[serde(default, deserialize_with = "types::opt_mac")]
    pub mac: Option<[u8; 6]>,
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

fn default_port() -> u16 {
    6443
}
fn default_encap_mtu() -> u16 {
    vip_common::ENCAP_DEFAULT_MTU
}
fn default_maglev() -> u32 {
    MAGLEV_DEFAULT_SIZE
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

    /// Where mode nat takes its source address from (`node` unless set).
    pub fn snat(&self) -> Snat {
        self.snat.unwrap_or(Snat::Node)
    }

    /// A backend's address and port (the service's unless it has its own).
    pub fn backend_addr(&self, b: &Backend) -> SocketAddr {
        SocketAddr::new(b.address, b.port.unwrap_or(self.port))
    }

    /// One service's own fields (a service configured twice is the caller's
    /// to find): snat, the table size, the probe, each backend's address
    /// and encapsulation. Paths are relative to the service.
    pub(super) fn check(&self) -> Result<(), FieldError> {
        match (self.mode, self.snat) {
            (Mode::Dsr, Some(_)) => {
                return Err(FieldError::new(
                    "snat",
                    "only mode nat translates source addresses; remove it or use mode nat",
                ));
            }
            (_, Some(Snat::Addr(a))) if a.is_ipv4() != self.vip.is_ipv4() => {
                return Err(FieldError::new(
                    "snat",
                    format!("{a} is not of the VIP's address family"),
                ));
            }
            _ => {}
        }
        let min_mtu = if self.vip.is_ipv4() { 576 } else { 1280 };
        if self.encap_mtu < min_mtu {
            return Err(FieldError::new(
                "encap_mtu",
                format!(
                    "{} is below the minimum MTU of the VIP's family ({min_mtu}, RFC 791 / RFC 8200); set the path MTU towards the backends (1500 on usual Ethernet, 9000 with jumbo frames)",
                    self.encap_mtu
                ),
            ));
        }
        maglev::check_size(self.maglev_size)
            .map_err(|e| FieldError::new("maglev_size", e.to_string()))?;
        self.probe.check().map_err(|e| e.under("probe"))?;
        for (j, b) in self.backends.iter().enumerate() {
            let at = format!("backends[{j}]");
            if b.address.is_ipv4() != self.vip.is_ipv4() {
                return Err(FieldError::new(
                    format!("{at}.address"),
                    format!("{} is not of the VIP's address family", b.address),
                ));
            }
            if b.address.is_unspecified() || b.address.is_multicast() {
                return Err(FieldError::new(
                    format!("{at}.address"),
                    format!("{} is not a unicast address", b.address),
                ));
            }
            self.check_encap(b)
                .map_err(|m| FieldError::new(format!("{at}.encap"), m))?;
        }
        Ok(())
    }

    /// A backend's `encap` (its own or the service's): mode dsr only, not
    /// for this node's own backend, and of the backend's address family.
    fn check_encap(&self, b: &Backend) -> Result<(), String> {
        let e = self.encap_of(b);
        if e == Encap::None {
            return Ok(());
        }
        if self.mode != Mode::Dsr {
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
    pub server_name: TlsName,
    /// A client certificate and key to present, for apiservers that refuse
    /// anonymous requests to /readyz (`--anonymous-auth=false`).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    #[serde(deserialize_with = "types::duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "types::duration")]
    pub timeout: Duration,
    /// Consecutive successes before a down backend is used again.
    pub rise: u32,
    /// Consecutive failures before a backend is taken out.
    pub fall: u32,
    /// Each wait between probes is the interval plus or minus up to this,
    /// so that nodes started together do not probe in lockstep.
    #[serde(deserialize_with = "types::duration")]
    pub jitter: Duration,
    /// The apiservers' `--shutdown-delay-duration`: the time they keep
    /// serving after /readyz turns red. vipd warns at start when its probes
    /// cannot take a backend out within it.
    #[serde(deserialize_with = "types::duration")]
    pub apiserver_shutdown_delay: Duration,
}

/// The name every kubeadm apiserver certificate carries.
const KUBERNETES: &str = "kubernetes";

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            kind: ProbeType::Https,
            path: "/readyz".into(),
            ca: PathBuf::from("/etc/kubernetes/pki/ca.crt"),
            server_name: TlsName::parse(KUBERNETES)
                .unwrap_or_else(|e| unreachable!("{KUBERNETES:?} is a DNS name: {e}")),
            client_cert: None,
            client_key: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            jitter: Duration::from_millis(100),
            apiserver_shutdown_delay: Duration::from_secs(5),
        }
    }
}

impl ProbeSettings {
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

    /// The name an HTTPS probe verifies the certificate for; `None` for TCP.
    pub fn tls_name(&self) -> Option<&TlsName> {
        match self.kind {
            ProbeType::Https => Some(&self.server_name),
            ProbeType::Tcp => None,
        }
    }

    /// The timing and the path; paths are relative to `probe`.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.interval < Duration::from_millis(100) {
            return Err(FieldError::new(
                "interval",
                format!(
                    "{:?} is too often; use at least 100ms",
                    format_duration(self.interval)
                ),
            ));
        }
        if self.timeout.is_zero() || self.timeout > self.interval {
            return Err(FieldError::new(
                "timeout",
                format!(
                    "{:?}: use more than 0 and at most the interval ({}), or a hung apiserver would delay its own next probe",
                    format_duration(self.timeout),
                    format_duration(self.interval)
                ),
            ));
        }
        if self.jitter * 2 > self.interval {
            return Err(FieldError::new(
                "jitter",
                format!(
                    "{:?}: use at most half the interval",
                    format_duration(self.jitter)
                ),
            ));
        }
        for (name, v) in [("rise", self.rise), ("fall", self.fall)] {
            if v == 0 || v > 100 {
                return Err(FieldError::new(name, format!("{v}: use 1..=100 probes")));
            }
        }
        if self.kind == ProbeType::Https && !self.path.starts_with('/') {
            return Err(FieldError::new(
                "path",
                format!("{:?} must start with /, like /readyz", self.path),
            ));
        }
        if self.path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(FieldError::new(
                "path",
                format!("{:?} has spaces or control characters", self.path),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(FieldError::new(
                "client_cert",
                "client_cert and client_key go together; set both or neither",
            ));
        }
        Ok(())
    }
}
