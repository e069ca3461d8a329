//! The flow-table sweeper: expired entries deleted and live ones counted
//! every [`SWEEP_EVERY`], state sync's refresh handed the active flows, and
//! the clients of dead backends poked; all in blocking threads, off the
//! agent loop.

use std::{sync::Arc, time::Duration};

use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{info, warn};
use vip_common::Globals;

use crate::dataplane::flows::{FlowTables, Pokes, Refresh, Sweep, monotonic_ns};

/// How often the flow tables are swept (expired entries deleted, live ones
/// counted for status and metrics).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// What the flow-table thread reports.
pub enum FlowReport {
    Swept(Sweep),
    Poked(Pokes),
}

/// State sync's side of the sweep: the directory (which services are
/// synced), where to send the active flows, and the interface whose
/// addresses say which VIPs this node holds.
pub struct SweepSync {
    pub dir: tokio::sync::watch::Receiver<Arc<crate::sync::resolve::Directory>>,
    pub tx: mpsc::Sender<crate::sync::Batch>,
    pub iface: String,
    /// This node's slice of the NAT ports, if it has one ([`Refresh::own_ports`]).
    pub own_ports: Option<(u16, u16)>,
    /// Peers that just started ([`crate::sync::Received::hello`]): each is
    /// sent every flow held, at once.
    pub welcomes: Option<mpsc::Receiver<std::net::IpAddr>>,
}

/// The least time between two welcome dumps: a starting peer says hello up
/// to three times (`sync::HELLO_AFTER`), and several peers may start at
/// once; one dump serves them all.
const WELCOME_EVERY: Duration = Duration::from_secs(2);

/// What wakes the sweeper.
enum Wake {
    Tick,
    Poke,
    Welcome(std::net::IpAddr),
}

async fn next_welcome(
    w: &mut Option<mpsc::Receiver<std::net::IpAddr>>,
) -> Option<std::net::IpAddr> {
    match w {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sweeps the flow tables every [`SWEEP_EVERY`] (and hands state sync the
/// flows active since the last sweep), and pokes the clients of dead
/// backends whenever `poke` says a backend was just taken out; both in a
/// blocking thread. Ends when the receiver goes.
pub fn spawn_sweeper(
    mut tables: FlowTables,
    g: Globals,
    tx: mpsc::Sender<FlowReport>,
    mut poke: mpsc::Receiver<()>,
    mut sync: Option<SweepSync>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prev: Option<u64> = None;
        let mut n: u32 = 0;
        let mut welcomes = sync.as_mut().and_then(|s| s.welcomes.take());
        let mut last_welcome: Option<tokio::time::Instant> = None;
        loop {
            let wake = tokio::select! {
                _ = tick.tick() => Wake::Tick,
                Some(()) = poke.recv() => Wake::Poke,
                Some(peer) = next_welcome(&mut welcomes) => Wake::Welcome(peer),
            };
            // A peer that just started may hold nothing (a reboot, or no
            // pinned maps): every flow held goes to it now, its own
            // slice's included, which the periodic refresh leaves to their
            // owner. Otherwise the flows the router moves back to it after
            // it announces again would meet empty tables and be reset.
            let welcome = match wake {
                Wake::Welcome(peer) => {
                    if last_welcome.is_some_and(|t| t.elapsed() < WELCOME_EVERY) {
                        continue;
                    }
                    last_welcome = Some(tokio::time::Instant::now());
                    info!(%peer, "state sync: sending every flow held to the peers (a peer started)");
                    true
                }
                _ => false,
            };
            if matches!(wake, Wake::Poke) {
                let res = tokio::task::spawn_blocking(move || {
                    let r = tables.poke_dead(&g, monotonic_ns());
                    (tables, r)
                })
                .await;
                let Ok((t, r)) = res else { return };
                tables = t;
                match r {
                    Ok(p) => {
                        if tx.send(FlowReport::Poked(p)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(error = %format!("{e:#}"), "walking the flow tables failed"),
                }
                continue;
            }
            let refresh = match &sync {
                Some(s) if welcome => Refresh {
                    services: s.dir.borrow().synced_service_ids(),
                    vips: held_vips(&s.iface),
                    own_ports: None,
                    since: None,
                },
                Some(s) => Refresh {
                    services: s.dir.borrow().synced_service_ids(),
                    vips: held_vips(&s.iface),
                    own_ports: s.own_ports,
                    since: if n.is_multiple_of(crate::sync::FULL_REFRESH_EVERY) {
                        None
                    } else {
                        prev
                    },
                },
                None => Refresh::default(),
            };
            if !welcome {
                n = n.wrapping_add(1);
            }
            let res = tokio::task::spawn_blocking(move || {
                let now = monotonic_ns();
                let r = tables.sweep_with(&g, now, &refresh);
                (tables, r, now)
            })
            .await;
            let Ok((t, r, now)) = res else { return };
            tables = t;
            prev = Some(now);
            match r {
                Ok(mut s) => {
                    let flows = std::mem::take(&mut s.active);
                    // A welcome dump goes even empty: its end tells the
                    // starting peer there is nothing more to wait for.
                    if let Some(sy) = &sync
                        && (welcome || !flows.is_empty())
                        && sy
                            .tx
                            .try_send(crate::sync::Batch { flows, welcome })
                            .is_err()
                    {
                        warn!("state sync is behind; this refresh is skipped");
                    }
                    if tx.send(FlowReport::Swept(s)).await.is_err() {
                        return;
                    }
                }
                Err(e) => warn!(error = %format!("{e:#}"), "walking the flow tables failed"),
            }
        }
    })
}

/// The VIPs this node holds, whose flows the refresh sends: the addresses
/// on `iface` (where VRRP and `hold_vips` put them) and on `lo` (where
/// `announce:` puts them: every announcing LB holds the VIP at once, so
/// each refreshes the flows it carries, and a flow the router moves keeps
/// its entry fresh on every LB).
fn held_vips(iface: &str) -> Vec<vip_common::AddrBytes> {
    [iface, "lo"]
        .into_iter()
        .filter_map(|i| crate::link::addresses(i).ok())
        .flatten()
        .map(|ip| crate::config::addr_bytes(ip).1)
        .collect()
}
