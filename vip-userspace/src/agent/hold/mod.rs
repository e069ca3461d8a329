//! Who holds the VIP, and when this node may serve it: one interface the
//! agent drives, whatever the mode.
//!
//! The agent works out what this node can do now (a [`Fitness`]) and hands
//! it to its [`VipHolder`] whenever it changes; the holder decides what that
//! means for the VIP. VRRP ([`vrrp::Vrrp`]) turns it into an advertised
//! priority and a hold out of the election; `hold_vips` ([`StaticVips`])
//! keeps the VIPs on the interface whatever happens; with neither
//! ([`Unheld`]) something else holds them. `announce` ([`Announce`])
//! installs each VIP's route for a routing daemon to announce, only while
//! the node can serve: one more implementation, not new branches in the
//! agent loop.

use std::{future::Future, net::IpAddr, pin::Pin};

use anyhow::Result;

use crate::{
    config::Config,
    status::RouteStatus,
    vrrp::{Family, router::RouterHandle},
};

pub mod announce;
mod static_vips;
pub mod vrrp;

pub use announce::Announce;
pub use static_vips::StaticVips;

/// What this node can do now, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fitness {
    /// An XDP program is attached to the interface: this node forwards for
    /// the VIP. (Only watched while the holder [`VipHolder::tracks`].)
    pub xdp_attached: bool,
    /// This node's own apiservers (`local: true`) pass their probes (true
    /// without local backends, and during bootstrap).
    pub local_ok: bool,
    /// Some backend passes its probe and the gate: new flows have somewhere
    /// to go. False while every service fails open.
    pub serving: bool,
    /// Why the certificate gate keeps this node from holding the IPv4 VIPs,
    /// if it does.
    pub gate_v4: Option<String>,
    /// The same for the IPv6 VIPs.
    pub gate_v6: Option<String>,
    /// State sync started with empty tables and some peer's flows have not
    /// arrived yet (the welcome dumps, at most `sync::WELCOME_WAIT`): why
    /// this node does not hold the VIP yet. Flows a router or an election
    /// moved here now would meet no entry and be reset.
    pub sync_wait: Option<String>,
}

impl Fitness {
    /// The gate's reason to keep this node from holding this family's VIPs.
    pub fn gate(&self, family: Family) -> Option<&String> {
        match family {
            Family::V4 => self.gate_v4.as_ref(),
            Family::V6 => self.gate_v6.as_ref(),
        }
    }

    /// Why this node must stay out of holding this family's VIPs: the
    /// gate's reason, else the wait for state sync's peers.
    pub fn held(&self, family: Family) -> Option<String> {
        self.gate(family).or(self.sync_wait.as_ref()).cloned()
    }
}

/// Whether this node holds the VIP ([`VipHolder::holding`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    No,
    /// The one holder: the VRRP master, the `hold_vips` node.
    Alone,
    /// One of several at once: an `announce` node with a route installed.
    Shared,
}

/// A stop in progress: done when it resolves.
pub type Stopping = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How this node holds the VIP.
pub trait VipHolder: Send {
    /// What status calls this way of holding the VIP (`vip_holding`).
    fn label(&self) -> &'static str;

    /// Whether what this node can do moves the VIP: the agent then watches
    /// the XDP attachment and logs the changes that matter.
    fn tracks(&self) -> bool;

    /// What this node can do changed.
    fn fit(&mut self, f: &Fitness);

    /// A reload changed the services' VIPs (sorted, deduplicated).
    fn set_vips(&mut self, vips: &[IpAddr]);

    /// VRRP's virtual routers, for the status and the periodic log; other
    /// holders have none.
    fn routers(&self) -> &[RouterHandle] {
        &[]
    }

    /// `announce`'s routes, one per VIP, for the status and metrics; other
    /// holders have none.
    fn routes(&self) -> Vec<RouteStatus> {
        Vec::new()
    }

    /// Whether this node holds the VIP now, for the cluster's singular
    /// chores (the scheduled etcd snapshot): alone (the VRRP master, the
    /// `hold_vips` node), with its peers (`announce`: every fit node
    /// announces), or not (a backup; `none` does not know who holds it).
    fn holding(&self) -> Holding {
        Holding::No
    }

    /// Lets the VIP go for good (an orderly stop), handing it over where
    /// the mode can.
    fn stop(self: Box<Self>) -> Stopping;
}

/// Starts the holder the configuration asks for, fit as `f` says from the
/// start (a node the gate refuses never joins the election meanwhile, nor
/// announces a route).
/// Each holder counts into its own families of `t`.
pub async fn start(
    cfg: &Config,
    f: &Fitness,
    t: &super::telemetry::Telemetry,
) -> Result<Box<dyn VipHolder>> {
    Ok(if cfg.vrrp.is_some() {
        Box::new(vrrp::Vrrp::start(cfg, f, &t.vrrp)?)
    } else if cfg.announce.is_some() {
        Box::new(Announce::start(cfg, f, t.announce.clone()).await?)
    } else if cfg.hold_vips {
        Box::new(StaticVips::start(&cfg.interface, &cfg.vips())?)
    } else {
        Box::new(Unheld)
    })
}

/// No `vrrp`, no `announce`, no `hold_vips`: something else (keepalived, an operator)
/// puts the VIP on the interface; vipd serves it wherever it lands.
pub struct Unheld;

impl VipHolder for Unheld {
    fn label(&self) -> &'static str {
        "none"
    }

    fn tracks(&self) -> bool {
        false
    }

    fn fit(&mut self, _: &Fitness) {}

    fn set_vips(&mut self, _: &[IpAddr]) {}

    fn stop(self: Box<Self>) -> Stopping {
        Box::pin(async {})
    }
}
