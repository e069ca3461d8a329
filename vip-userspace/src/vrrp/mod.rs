//! VRRP version 3 (RFC 9568): which node holds the VIPs.
//!
//! Split the way the protocol is: `packet` is the wire codec and the receive
//! checks of RFC 9568 section 7.1, `machine` the pure state machine of section
//! 6.4 (state, input, now -> actions), `net` the sockets that move
//! advertisements, `announce` gratuitous ARP / unsolicited neighbour
//! advertisements and the watch for other holders of the VIP. The shell that
//! wires them to time and the interface lives with the agent.

pub mod announce;
pub mod auth;
pub mod machine;
pub mod metrics;
pub mod net;
pub mod packet;
pub mod router;

#[cfg(test)]
mod proptests;

use std::{net::IpAddr, time::Duration};

/// One VRRP packet as it came off the wire: the IP header fields the receive
/// checks need (RFC 9568 section 7.1) and the VRRP message itself (the IPv4
/// header already stripped; IPv6 raw sockets never deliver it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    pub payload: Vec<u8>,
}

/// The address family of one virtual router: RFC 9568 runs IPv4 and IPv6
/// virtual routers as separate instances even with the same VRID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// A router's priority (RFC 9568 5.2.4): 255 only for the router that owns
/// the virtual addresses, 1..=254 for the others; 0 in an advertisement
/// says the master is leaving. Ordered as the election compares it (6.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority(pub u8);

impl Priority {
    /// The address owner's (5.2.4): it takes over without skew (6.4.2).
    pub const OWNER: Priority = Priority(255);
    /// "Stop being master now" (5.2.4, 6.4.3).
    pub const LEAVING: Priority = Priority(0);

    /// `self` lowered by a tracking weight, never below 1: a tracked fault
    /// must lower the priority, never turn it into "leaving" (0).
    pub fn lowered_by(self, weight: u8) -> Priority {
        Priority(self.0.saturating_sub(weight).max(1))
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A Virtual Router Identifier (RFC 9568 5.2.3), 1..=255: one group on a
/// segment, and the last byte of the virtual MAC (7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vrid(pub u8);

impl std::fmt::Display for Vrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One virtual router's settings, validated and in the units the state
/// machine uses: what `config` hands VRRP (VRRP imports nothing of the
/// config file's shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpPlan {
    pub vrid: Vrid,
    pub priority: Priority,
    pub advert_interval_cs: u16,
    pub preempt: bool,
    pub preempt_delay: Duration,
    pub unicast_peers: Vec<IpAddr>,
    pub announce_count: u32,
    pub announce_interval: Duration,
    pub announce_refresh: Duration,
    pub xdp_detached_weight: u8,
    pub local_apiserver_weight: u8,
    /// `vrrp.auth_hmac`: sign and require the HMAC trailer ([`auth`]).
    pub auth_hmac: Option<AuthPlan>,
}

/// The HMAC option of draft-cassen-vrrp-auth-hmac, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPlan {
    /// State sync's key file format: `ID HEX` lines, the first signs.
    pub key_file: std::path::PathBuf,
    /// How far a trailer's time may be from ours (whole seconds, 1..=300).
    pub time_window: Duration,
}
