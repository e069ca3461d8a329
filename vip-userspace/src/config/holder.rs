//! Who holds the VIP: `vrrp:` (an election, RFC 9568) or `announce:` (a
//! route for the node's routing daemon), with their checks.

use std::{net::IpAddr, time::Duration};

use serde::Deserialize;

use super::{
    error::FieldError,
    types::{self, format_duration},
};
pub use crate::vrrp::VrrpPlan;

/// VRRPv3 settings. IPv4 and IPv6 VIPs run as two virtual routers with the
/// same VRID (RFC 9568 section 1: the families are independent).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VrrpSettings {
    /// Virtual router id, 1..=255, the same on every node of this VIP.
    pub vrid: u8,
    /// 1..=254; 255 only on a node that owns the VIP as a real address.
    /// Omitted: per node, from `nodes:` or the backend list's order
    /// ([`super::node`]); a config vipd runs always has it.
    #[serde(default)]
    pub priority: Option<u8>,
    /// Advertisement interval: 20ms..40950ms in steps of 10ms ("100ms", "1s").
    #[serde(
        default = "default_advert_interval",
        deserialize_with = "types::duration"
    )]
    pub advert_interval: Duration,
    /// A higher-priority node takes the VIP back from a lower one.
    #[serde(default = "super::yes")]
    pub preempt: bool,
    /// After start, wait this long before preempting ("0s").
    #[serde(default, deserialize_with = "types::duration")]
    pub preempt_delay: Duration,
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

fn default_advert_interval() -> Duration {
    Duration::from_millis(100)
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
    #[serde(default, deserialize_with = "types::opt_duration")]
    pub time_window: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnnounceSettings {
    pub count: u32,
    #[serde(deserialize_with = "types::duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "types::duration")]
    pub refresh: Duration,
}

impl Default for AnnounceSettings {
    fn default() -> Self {
        AnnounceSettings {
            count: 3,
            interval: Duration::from_millis(100),
            refresh: Duration::from_secs(60),
        }
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

pub(super) const PRIORITY_ZERO: &str =
    "0 means \"leaving\" on the wire (RFC 9568 5.2.4); use 1..=254";

/// The priority of a VRRP router whose config names none and was never
/// resolved for a node (RFC 9568 section 5.2.4's default for backups).
pub const DEFAULT_PRIORITY: u8 = 100;

impl VrrpSettings {
    /// The priority this node advertises before tracking.
    pub fn priority(&self) -> u8 {
        self.priority.unwrap_or(DEFAULT_PRIORITY)
    }

    /// The advertisement interval in the centiseconds VRRPv3 carries
    /// (checked to fit at load).
    pub fn advert_interval_cs(&self) -> u16 {
        u16::try_from(self.advert_interval.as_millis() / 10).unwrap_or(4095)
    }

    /// The routers' settings. Every value was checked at load ([`Self::check`]).
    pub fn plan(&self) -> VrrpPlan {
        VrrpPlan {
            auth_hmac: self.auth_hmac.as_ref().map(|a| crate::vrrp::AuthPlan {
                key_file: a.key_file.clone(),
                time_window: a
                    .time_window
                    .unwrap_or_else(|| crate::vrrp::auth::default_window(self.advert_interval)),
            }),
            vrid: crate::vrrp::Vrid(self.vrid),
            priority: crate::vrrp::Priority(self.priority()),
            advert_interval_cs: self.advert_interval_cs(),
            preempt: self.preempt,
            preempt_delay: self.preempt_delay,
            unicast_peers: self.unicast_peers.clone(),
            announce_count: self.announce.count,
            announce_interval: self.announce.interval,
            announce_refresh: self.announce.refresh,
            xdp_detached_weight: self.track.xdp_detached,
            local_apiserver_weight: self.track.local_apiserver,
        }
    }

    /// The values' ranges; paths are relative to `vrrp`.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.vrid == 0 {
            return Err(FieldError::new(
                "vrid",
                "0 is not a VRID; use 1..=255, the same on every node",
            ));
        }
        if self.priority == Some(0) {
            return Err(FieldError::new("priority", PRIORITY_ZERO));
        }
        let iv = self.advert_interval;
        if !(20..=40_950).contains(&iv.as_millis()) || !iv.subsec_nanos().is_multiple_of(10_000_000)
        {
            return Err(FieldError::new(
                "advert_interval",
                format!(
                    "{:?}: VRRPv3 carries centiseconds; use 20ms..40950ms in steps of 10ms",
                    format_duration(iv)
                ),
            ));
        }
        if self.announce.count == 0 {
            return Err(FieldError::new(
                "announce.count",
                "0: clients would keep the old holder's MAC; use at least 1",
            ));
        }
        for (i, p) in self.unicast_peers.iter().enumerate() {
            if p.is_unspecified() || p.is_multicast() || p.is_loopback() {
                return Err(FieldError::new(
                    format!("unicast_peers[{i}]"),
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
                return Err(FieldError::new(
                    format!("unicast_peers[{i}]"),
                    format!(
                        "{p} is not link-local; VRRPv3 over IPv6 sends from the link-local address (RFC 9568 section 5.1.2.1), so name each IPv6 peer by its fe80:: address (`ip -6 addr show dev IFACE scope link` on that node)"
                    ),
                ));
            }
        }
        if let Some(w) = self.auth_hmac.as_ref().and_then(|a| a.time_window)
            && (!(1..=300).contains(&w.as_secs()) || w.subsec_nanos() != 0)
        {
            return Err(FieldError::new(
                "auth_hmac.time_window",
                format!(
                    "{:?}: the trailer carries whole seconds; use 1s..300s (the draft's range)",
                    format_duration(w)
                ),
            ));
        }
        Ok(())
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
    #[serde(deserialize_with = "types::duration")]
    pub drain: Duration,
}

impl Default for RouteAnnounceSettings {
    fn default() -> Self {
        RouteAnnounceSettings {
            table: crate::route::DEFAULT_TABLE,
            proto: crate::route::DEFAULT_PROTO,
            drain: Duration::from_secs(1),
        }
    }
}

/// The longest `announce.drain`: a stop that waits longer only delays
/// systemd and the next start; BGP with BFD needs well under a second.
const MAX_DRAIN: Duration = Duration::from_secs(30);

impl RouteAnnounceSettings {
    /// The table and protocol, validated as the route module does; paths
    /// are relative to `announce`.
    pub fn route_table(&self) -> Result<crate::route::RouteTable, FieldError> {
        use crate::route::{RouteError, RouteTable};
        RouteTable::new(self.table, self.proto).map_err(|e| {
            let field = match e {
                RouteError::Proto { .. } => "proto",
                _ => "table",
            };
            FieldError::new(field, e.to_string())
        })
    }

    /// The table, the protocol and the drain; paths relative to `announce`.
    pub fn check(&self) -> Result<(), FieldError> {
        self.route_table()?;
        if self.drain > MAX_DRAIN {
            return Err(FieldError::new(
                "drain",
                format!(
                    "{:?}: vipd waits at most {}s; BGP with BFD needs well under a second, use 1s",
                    format_duration(self.drain),
                    MAX_DRAIN.as_secs()
                ),
            ));
        }
        Ok(())
    }
}
