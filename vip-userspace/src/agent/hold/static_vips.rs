//! `hold_vips: true`: this node is the VIPs' static holder. They go on the
//! interface at start, follow the services across reloads, and come off at
//! stop; nothing the node can or cannot do moves them (there is no one to
//! move them to).

use std::net::IpAddr;

use tracing::{error, info, warn};

use super::{Fitness, Holding, Stopping, VipHolder};
use crate::host::{self, HostError};

pub struct StaticVips {
    iface: String,
    /// The VIPs this run added (and so removes).
    added: Vec<IpAddr>,
}

impl StaticVips {
    /// Adds every VIP; if one fails, those already added come off again.
    pub fn start(iface: &str, vips: &[IpAddr]) -> Result<StaticVips, HostError> {
        let mut s = StaticVips {
            iface: iface.to_owned(),
            added: vec![],
        };
        for vip in vips {
            if let Err(e) = host::set_vip(iface, *vip, true) {
                s.remove_all();
                return Err(e);
            }
            info!(vip = %vip, interface = %iface, "VIP added");
            s.added.push(*vip);
        }
        Ok(s)
    }

    fn remove_all(&mut self) {
        remove_vips(&self.iface, &std::mem::take(&mut self.added));
    }
}

impl VipHolder for StaticVips {
    fn label(&self) -> &'static str {
        "static"
    }

    fn tracks(&self) -> bool {
        false
    }

    /// `hold_vips` is the one-node setup: this node holds the VIP.
    fn holding(&self) -> Holding {
        Holding::Alone
    }

    fn fit(&mut self, _: &Fitness) {}

    fn set_vips(&mut self, want: &[IpAddr]) {
        for vip in want {
            if !self.added.contains(vip) {
                match host::set_vip(&self.iface, *vip, true) {
                    Ok(()) => self.added.push(*vip),
                    Err(e) => {
                        error!(vip = %vip, error = %format!("{e:#}"), "adding a VIP failed")
                    }
                }
            }
        }
        let gone: Vec<IpAddr> = self
            .added
            .iter()
            .filter(|v| !want.contains(v))
            .copied()
            .collect();
        remove_vips(&self.iface, &gone);
        self.added.retain(|v| want.contains(v));
    }

    fn stop(mut self: Box<Self>) -> Stopping {
        self.remove_all();
        Box::pin(async {})
    }
}

fn remove_vips(iface: &str, vips: &[IpAddr]) {
    for vip in vips {
        match host::set_vip(iface, *vip, false) {
            Ok(()) => info!(vip = %vip, "VIP removed"),
            Err(e) => {
                warn!(vip = %vip, error = %e, "removing the VIP failed; remove it by hand with `ip addr del`")
            }
        }
    }
}
