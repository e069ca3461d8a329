//! VRRP holds the VIP: one virtual router per address family with VIPs
//! (RFC 9568: the families are separate instances, here with the same
//! VRID). What the node can do becomes the advertised priority (priority
//! tracking) and, per family, a hold out of the election (the certificate
//! gate); [`Tracking`] decides which, the routers carry it out.

use std::{collections::HashMap, net::IpAddr};

use anyhow::Result;

use super::{Fitness, Holding, Stopping, VipHolder};
use crate::{
    config::{Config, TrackSettings},
    vrrp::{
        Family, Priority,
        metrics::VrrpMetrics,
        router::{self, RouterHandle, RouterSpec},
    },
};

/// Priority tracking: the advertised priority drops by the configured weight
/// while this node cannot forward for the VIP, or cannot serve it from its
/// own apiserver.
pub fn effective_priority(cfg: &Config, xdp_attached: bool, local_ok: bool) -> u8 {
    let Some(v) = &cfg.vrrp else { return 0 };
    priority(Priority(v.priority()), &v.track, xdp_attached, local_ok).0
}

/// Never 0: that means leaving (RFC 9568 5.2.4).
fn priority(
    configured: Priority,
    track: &TrackSettings,
    xdp_attached: bool,
    local_ok: bool,
) -> Priority {
    let mut p = configured;
    if !xdp_attached {
        p = p.lowered_by(track.xdp_detached);
    }
    if !local_ok {
        p = p.lowered_by(track.local_apiserver);
    }
    p
}

/// What one router must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Every router: advertise this priority.
    Priority(Priority),
    /// This family's router: keep out of the election for this reason, or
    /// join again with `None`.
    Hold(Family, Option<String>),
}

/// What the routers were last told, and so what a new [`Fitness`] changes.
/// Pure: the agent's unit tests drive it.
#[derive(Debug, Clone)]
pub struct Tracking {
    configured: Priority,
    track: TrackSettings,
    families: Vec<Family>,
    /// `None` until the first fitness: the first one always sets it.
    priority: Option<Priority>,
    holds: HashMap<Family, Option<String>>,
}

impl Tracking {
    /// For routers of `families` that start held as `f` says.
    pub fn new(
        cfg_priority: Priority,
        track: TrackSettings,
        families: &[Family],
        f: &Fitness,
    ) -> Self {
        Tracking {
            configured: cfg_priority,
            track,
            families: families.to_vec(),
            priority: None,
            holds: families.iter().map(|&fam| (fam, f.held(fam))).collect(),
        }
    }

    /// The commands `f` calls for: only what changed.
    pub fn fit(&mut self, f: &Fitness) -> Vec<Command> {
        let mut out = vec![];
        for &fam in &self.families {
            let want = f.held(fam);
            if self.holds.get(&fam) != Some(&want) {
                self.holds.insert(fam, want.clone());
                out.push(Command::Hold(fam, want));
            }
        }
        let p = priority(self.configured, &self.track, f.xdp_attached, f.local_ok);
        if self.priority != Some(p) {
            self.priority = Some(p);
            out.push(Command::Priority(p));
        }
        out
    }
}

pub struct Vrrp {
    routers: Vec<RouterHandle>,
    tracking: Tracking,
}

impl Vrrp {
    /// Opens every router's sockets (a missing interface or address fails
    /// the start) and runs them, held out of the election where `f`'s gate
    /// says so.
    pub fn start(cfg: &Config, f: &Fitness, metrics: &VrrpMetrics) -> Result<Vrrp> {
        let Some(v) = &cfg.vrrp else {
            anyhow::bail!("no vrrp section");
        };
        let plan = v.plan();
        let mut routers = vec![];
        for family in [Family::V4, Family::V6] {
            let vips: Vec<IpAddr> = cfg
                .vips()
                .into_iter()
                .filter(|a| Family::of(a) == family)
                .collect();
            if vips.is_empty() {
                continue;
            }
            let spec = RouterSpec {
                ifname: cfg.interface.clone(),
                family,
                plan: plan.clone(),
                vips,
            };
            let stats = metrics.router(family, plan.priority);
            match router::spawn(spec, f.held(family), stats) {
                Ok(r) => routers.push(r),
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("starting {} VRRP", router::label(family))));
                }
            }
        }
        let families: Vec<Family> = routers.iter().map(RouterHandle::family).collect();
        let mut vrrp = Vrrp {
            routers,
            tracking: Tracking::new(Priority(v.priority()), v.track.clone(), &families, f),
        };
        // The first fitness sets the priority (a router ignores its own).
        vrrp.fit(f);
        Ok(vrrp)
    }
}

impl VipHolder for Vrrp {
    fn label(&self) -> &'static str {
        "vrrp"
    }

    fn tracks(&self) -> bool {
        !self.routers.is_empty()
    }

    fn fit(&mut self, f: &Fitness) {
        for c in self.tracking.fit(f) {
            match c {
                Command::Priority(p) => self.routers.iter().for_each(|r| r.set_priority(p)),
                Command::Hold(fam, why) => self
                    .routers
                    .iter()
                    .filter(|r| r.family() == fam)
                    .for_each(|r| r.set_hold(why.clone())),
            }
        }
    }

    /// A reload never changes the VIPs VRRP elects a holder for
    /// (`Fixed::refuses` refuses it).
    fn set_vips(&mut self, _: &[IpAddr]) {}

    fn routers(&self) -> &[RouterHandle] {
        &self.routers
    }

    /// Master of the first virtual router (IPv4 when both run): one node,
    /// whatever the other family's election says.
    fn holding(&self) -> Holding {
        let master = self
            .routers
            .first()
            .is_some_and(|r| r.state() == crate::vrrp::machine::State::Master);
        if master { Holding::Alone } else { Holding::No }
    }

    /// VRRP first: the priority-0 advertisement lets a Backup take over
    /// after its skew time; the router keeps the VIP until it hears the new
    /// master, and the pinned program keeps forwarding meanwhile.
    fn stop(self: Box<Self>) -> Stopping {
        let routers = self.routers;
        routers.iter().for_each(RouterHandle::stop);
        Box::pin(async move {
            for r in routers {
                r.stopped().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn effective_priority_subtracts_the_weights_of_what_fails() {
        let text = "
interface: eth0
vrrp:
  vrid: 1
  priority: 150
  track:
    xdp_detached: 100
    local_apiserver: 60
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
        local: true
";
        let cfg = Config::parse(Path::new("t.yaml"), text).expect("valid");
        assert_eq!(effective_priority(&cfg, true, true), 150);
        assert_eq!(effective_priority(&cfg, false, true), 50);
        assert_eq!(effective_priority(&cfg, true, false), 90);
        assert_eq!(
            effective_priority(&cfg, false, false),
            1,
            "never 0: that means leaving"
        );
    }
}
