//! The one owner of the desired state. Probe outcomes, certificate checks
//! and configuration reloads come in as calls; out come BPF map writes
//! through the [`Programmer`] (only differences, each table switched
//! atomically), and the two answers VRRP needs: may this node hold the
//! VIP (the certificate gate), and does its own apiserver serve (priority
//! tracking). Pure: no sockets, no clock; tests drive it with the in-memory
//! maps and made-up instants.

mod gate;
pub mod metrics;

pub use gate::{CertKind, CertState, GateTarget};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Instant,
};

use tracing::{error, info};
use vip_common::{FAMILY_V4, PROTO_TCP, PROTO_UDP};

use crate::{
    config::{Config, Encap, GateAction, ProbeSettings, ProbeType, Protocol},
    dataplane::{
        Maps,
        programmer::{ApplyReport, DesiredBackend, DesiredService, Programmer},
    },
    health::{Change, Health},
    probe::Outcome,
};

/// What one probe outcome did.
#[derive(Debug, Default)]
pub struct ProbeEffect {
    pub changes: Vec<Change>,
    /// Set when the maps were written.
    pub report: Option<ApplyReport>,
}

/// What the dataplane does with a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// In the Maglev table.
    Serving,
    /// Out of the table, established flows kept.
    Draining,
    /// Out of the table, established flows get an RST.
    Dead,
}

/// What status, metrics and logs show of a backend's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendHealth {
    Up,
    Down,
    /// It answers its probe with 401 or 403: up, and the probe's
    /// credentials are what is wrong.
    AuthMisconfigured,
    /// Mode dsr and the neighbour table gives no MAC for it.
    NoNeighbour,
}

impl BackendHealth {
    /// Every state: the label values of the backend state metric, each
    /// exported at 0 or 1.
    pub const ALL: [BackendHealth; 4] = [
        BackendHealth::Up,
        BackendHealth::Down,
        BackendHealth::AuthMisconfigured,
        BackendHealth::NoNeighbour,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            BackendHealth::Up => "up",
            BackendHealth::Down => "down",
            BackendHealth::AuthMisconfigured => "auth_misconfigured",
            BackendHealth::NoNeighbour => "no_neighbour",
        }
    }

    /// What the probes say (a backend never probed yet counts as up: it
    /// starts in the table).
    fn of(h: Option<&Health>) -> BackendHealth {
        match h {
            None => BackendHealth::Up,
            Some(h) if !h.up() => BackendHealth::Down,
            Some(h) if h.auth_refused().is_some() => BackendHealth::AuthMisconfigured,
            Some(_) => BackendHealth::Up,
        }
    }
}

/// [`BackendHealth::NoNeighbour`] as `vipd status` writes it.
pub const NO_NEIGHBOUR: &str = BackendHealth::NoNeighbour.label();

/// A backend's state for logs and status.
#[derive(Debug, Clone)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub local: bool,
    /// `ipip` / `ip6ip6`: reached by encapsulation (mode dsr).
    pub encap: Option<&'static str>,
    pub state: BackendHealth,
    pub last: Option<Outcome>,
    pub cert: CertKind,
    /// Receives new flows.
    pub serving: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Config(crate::config::FieldError),
    #[error("writing the maps failed")]
    Dataplane(#[from] crate::dataplane::DataplaneError),
}

/// An address as the maps hold it (`family`, 16 bytes, IPv4 in the first
/// four), back as the configuration writes it.
fn ip_of(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([addr[0], addr[1], addr[2], addr[3]])
    } else {
        IpAddr::from(*addr)
    }
}

/// A desired service's VIP and port.
fn service_addr(ds: &DesiredService) -> SocketAddr {
    SocketAddr::new(
        ip_of(ds.key.family, &ds.key.addr),
        u16::from_be(ds.key.port_be),
    )
}

/// A desired backend's address and port.
fn backend_addr(db: &DesiredBackend) -> SocketAddr {
    SocketAddr::new(ip_of(db.family, &db.addr), u16::from_be(db.port_be))
}

/// The protocol number a service key carries.
fn proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

/// Service identity for logs: "10.0.0.100:6443".
fn service_name(cfg: &Config, i: usize) -> String {
    let s = &cfg.services[i];
    SocketAddr::new(s.vip, s.port).to_string()
}

pub struct Controller<M: Maps> {
    prog: Programmer<M>,
    cfg: Config,
    node_addrs: Vec<IpAddr>,
    health: BTreeMap<SocketAddr, Health>,
    certs: BTreeMap<SocketAddr, CertState>,
    bootstrapping: bool,
    /// Services forwarding to every backend because none passes its probe,
    /// with the down verdict that left none serving (the probes' clock).
    failing_open: BTreeMap<String, Option<Instant>>,
    /// Backends spared the reset when a fail open ended (see `desired`),
    /// with the probes each has failed since: they take no new flows, and
    /// their established flows go on until they pass (up) or fail `fall`
    /// more (dead, reset as any other).
    spared: BTreeMap<SocketAddr, u32>,
    /// What the maps hold; `None` after a failed write (retried on `tick`).
    written: Option<Vec<DesiredService>>,
    /// Mode dsr: the MAC the neighbour table gives each backend address
    /// without `mac:` (see `neigh`). A backend missing here is not served.
    neigh: BTreeMap<IpAddr, [u8; 6]>,
}

impl<M: Maps> Controller<M> {
    /// Takes over the programmer (fresh or adopted maps) and writes the
    /// configuration with every backend up: health is learnt from here on.
    pub fn new(
        prog: Programmer<M>,
        cfg: Config,
        node_addrs: Vec<IpAddr>,
    ) -> Result<(Self, ApplyReport), ControlError> {
        Self::with_neighbours(prog, cfg, node_addrs, BTreeMap::new())
    }

    /// [`Controller::new`], with the neighbour table's MACs as read before
    /// the first write (see `neigh::snapshot`).
    pub fn with_neighbours(
        prog: Programmer<M>,
        cfg: Config,
        node_addrs: Vec<IpAddr>,
        neigh: BTreeMap<IpAddr, [u8; 6]>,
    ) -> Result<(Self, ApplyReport), ControlError> {
        let mut c = Controller {
            prog,
            bootstrapping: cfg.bootstrap,
            cfg,
            node_addrs,
            health: BTreeMap::new(),
            certs: BTreeMap::new(),
            failing_open: BTreeMap::new(),
            spared: BTreeMap::new(),
            written: None,
            neigh,
        };
        c.sync_targets();
        if c.bootstrapping {
            info!(
                "bootstrap: forwarding to this node's own apiserver until an apiserver passes its probe"
            );
        }
        let report = c.sync()?.unwrap_or_default();
        Ok((c, report))
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn programmer(&self) -> &Programmer<M> {
        &self.prog
    }

    pub fn programmer_mut(&mut self) -> &mut Programmer<M> {
        &mut self.prog
    }

    pub fn bootstrapping(&self) -> bool {
        self.bootstrapping
    }

    /// Every backend to probe, with its service's probe settings (the
    /// configuration guarantees one setting per backend address).
    pub fn probe_targets(&self) -> BTreeMap<SocketAddr, ProbeSettings> {
        let mut t = BTreeMap::new();
        for s in &self.cfg.services {
            for b in &s.backends {
                t.entry(SocketAddr::new(b.address, b.port.unwrap_or(s.port)))
                    .or_insert_with(|| s.probe.clone());
            }
        }
        t
    }

    /// Health entries follow the configuration: new backends start up,
    /// removed ones are forgotten, changed thresholds apply from now.
    fn sync_targets(&mut self) {
        let targets = self.probe_targets();
        self.health.retain(|a, _| targets.contains_key(a));
        self.certs.retain(|a, _| targets.contains_key(a));
        for (addr, p) in targets {
            self.health
                .entry(addr)
                .and_modify(|h| h.set_thresholds(p.rise, p.fall))
                .or_insert_with(|| Health::new(p.rise, p.fall));
        }
    }

    /// What a backend gets. New flows when it is up and, with the gate
    /// refusing, its certificate is not known to lack the VIP (every TLS
    /// client of the VIP would fail on it). Its established flows stay while
    /// it still answers (a 503 from /readyz is an apiserver draining for
    /// its --shutdown-delay-duration: it finishes and closes them itself; a
    /// TLS failure or a certificate without the VIP is no reason to cut
    /// working connections); they get an RST once it stops answering
    /// (timeout, refused, unreachable), instead of hanging. In bootstrap the
    /// local apiserver is used whatever its probe says.
    fn use_of(&self, addr: &SocketAddr, local: bool) -> Use {
        if self.bootstrapping && local {
            return Use::Serving;
        }
        let h = self.health.get(addr);
        let san_ok = self.cfg.cert_gate.on_missing_san != GateAction::Refuse
            || !matches!(self.certs.get(addr), Some(CertState::Missing(_)));
        match h {
            Some(h) if !h.up() => match h.last_failure() {
                Some(f) if f.unreachable() && !self.spared.contains_key(addr) => Use::Dead,
                _ => Use::Draining,
            },
            _ if !san_ok => Use::Draining,
            _ => Use::Serving,
        }
    }

    fn serving(&self, addr: &SocketAddr, local: bool) -> bool {
        self.use_of(addr, local) == Use::Serving
    }

    /// A backend whose MAC must come from the neighbour table and does not
    /// (yet): nothing may be sent to it, whatever its probe says, and its
    /// established flows get an RST rather than frames to nowhere.
    fn no_neighbour(&self, s: &crate::config::Service, b: &crate::config::Backend) -> bool {
        s.needs_neighbour(b) && !self.neigh.contains_key(&b.address)
    }

    /// The backend addresses whose MAC comes from the neighbour table.
    pub fn neighbour_targets(&self) -> BTreeSet<IpAddr> {
        crate::neigh::targets(&self.cfg)
    }

    /// The neighbour table's MAC for `addr` (`None`: no usable entry), as
    /// the kernel had it at `at`. A new MAC re-points the backend in its own
    /// map entry (`BackendValue::staged`, then `flipped`: its id, its Maglev
    /// slots and its flows stay); none takes it out of service as a dead
    /// backend. A MAC that
    /// appears or changes is a new path to the backend: the probe failures
    /// of the old one no longer count ([`Health::path_changed`]).
    pub fn neighbour(
        &mut self,
        addr: IpAddr,
        mac: Option<[u8; 6]>,
        at: Instant,
    ) -> Result<Option<ApplyReport>, ControlError> {
        if !self.neighbour_targets().contains(&addr) {
            return Ok(None);
        }
        let before = match mac {
            Some(m) => self.neigh.insert(addr, m),
            None => self.neigh.remove(&addr),
        };
        if mac.is_some() && before != mac {
            self.health
                .iter_mut()
                .filter(|(a, _)| a.ip() == addr)
                .for_each(|(_, h)| h.path_changed(at));
        }
        self.sync()
    }

    /// The services as the maps should hold them. A service with no serving
    /// backend fails open to all of them: if the apiservers are all really
    /// gone this changes nothing, and if our probe is what is broken (a
    /// wrong CA, a firewall) it keeps the cluster reachable.
    fn desired(&mut self) -> Result<Vec<DesiredService>, ControlError> {
        let mut d = self
            .cfg
            .desired(&self.node_addrs)
            .map_err(ControlError::Config)?;
        // A backend a reload removed is spared no more.
        let health = &self.health;
        self.spared.retain(|a, _| health.contains_key(a));
        // Each service and backend of the configuration finds its desired
        // entry by what it is (VIP, port, protocol; address and port),
        // never by its place in a list.
        for (i, svc) in self.cfg.services.iter().enumerate() {
            let name = SocketAddr::new(svc.vip, svc.port);
            let ds = d
                .iter_mut()
                .find(|ds| service_addr(ds) == name && ds.key.proto == proto(svc.protocol))
                .ok_or_else(|| {
                    ControlError::Config(crate::config::FieldError::new(
                        format!("services[{i}]"),
                        format!("service {name}: no desired state written"),
                    ))
                })?;
            let mut any = false;
            let mut reachable = BTreeSet::new();
            for b in &svc.backends {
                let addr = SocketAddr::new(b.address, b.port.unwrap_or(svc.port));
                let Some(db) = ds.backends.iter_mut().find(|db| backend_addr(db) == addr) else {
                    continue;
                };
                if self.no_neighbour(svc, b) {
                    db.alive = false;
                    db.draining = false;
                    continue;
                }
                if let Some(m) = self.neigh.get(&b.address).filter(|_| b.mac.is_none()) {
                    db.mac = *m;
                }
                let u = self.use_of(&addr, b.local);
                db.alive = u != Use::Dead;
                db.draining = u == Use::Draining;
                any |= u == Use::Serving;
                reachable.insert(addr);
            }
            let name = name.to_string();
            if !any && !reachable.is_empty() {
                // Never to a backend without a neighbour: its frames would
                // go nowhere.
                ds.backends
                    .iter_mut()
                    .filter(|b| reachable.contains(&backend_addr(b)))
                    .for_each(|b| {
                        b.alive = true;
                        b.draining = false;
                    });
                if !self.failing_open.contains_key(&name) {
                    let since = reachable
                        .iter()
                        .filter_map(|a| self.health.get(a)?.last_change())
                        .max();
                    self.failing_open.insert(name.clone(), since);
                    error!(
                        service = %name,
                        "no usable backend (probes failing, or certificates without the VIP): forwarding to all of them (fail open) until one is; {}",
                        fail_open_hint(svc.probe.kind)
                    );
                }
            } else if any && let Some(since) = self.failing_open.remove(&name) {
                info!(service = %name, "a backend is usable again: fail open is over");
                // A backend that went down with the others, when this node
                // reached none of them (its link, its route), was judged by
                // this node's outage as much as by its own. Taken out now,
                // its established flows would be reset (and its clients
                // poked) for nothing: seen in the fabric lab, where an LB
                // whose link came back reset the streams of the backend
                // whose probe passed 20 ms after the other's. It is spared:
                // no new flows, its flows go on, until it passes or fails
                // `fall` more probes. A backend down well before the last
                // (more than a fall period) is not.
                let grace = svc.probe.interval * svc.probe.fall + svc.probe.timeout;
                for db in ds.backends.iter_mut() {
                    let addr = backend_addr(db);
                    let with_them = self.health.get(&addr).is_some_and(|h| {
                        !h.up()
                            && matches!((h.last_change(), since), (Some(c), Some(s)) if c + grace >= s)
                    });
                    if with_them && self.spared.insert(addr, 0).is_none() {
                        db.alive = true;
                        db.draining = true;
                        info!(service = %name, backend = %addr, "backend spared: it went down with every other backend, when this node reached none of them; no new flows, its connections stay until it passes or fails its probes again");
                    }
                }
            }
        }
        Ok(d)
    }

    /// Writes what changed. `Ok(None)`: nothing to write.
    fn sync(&mut self) -> Result<Option<ApplyReport>, ControlError> {
        let d = self.desired()?;
        if self.written.as_ref() == Some(&d) {
            return Ok(None);
        }
        self.written = None;
        let report = self.prog.apply(&d)?;
        self.written = Some(d);
        Ok(Some(report))
    }

    /// Retries a failed map write.
    pub fn tick(&mut self) -> Result<Option<ApplyReport>, ControlError> {
        if self.written.is_none() {
            return self.sync();
        }
        Ok(None)
    }

    /// One probe of `addr`, started at `started` and ended at `finished`.
    pub fn probe(
        &mut self,
        addr: SocketAddr,
        started: Instant,
        finished: Instant,
        outcome: &Outcome,
    ) -> Result<ProbeEffect, ControlError> {
        let Some(h) = self.health.get_mut(&addr) else {
            // A probe of a backend a reload removed: too late to matter.
            return Ok(ProbeEffect::default());
        };
        let changes = h.feed(started, finished, outcome);
        if let Some(n) = self.spared.get_mut(&addr) {
            *n += u32::from(!matches!(outcome, Outcome::Up | Outcome::AuthRefused(_)));
            if h.up() || *n >= h.fall() {
                if !h.up() {
                    info!(backend = %addr, "spared backend failed its probes again: dead, its connections get an RST");
                }
                self.spared.remove(&addr);
            }
        }
        if self.bootstrapping && h.ever_passed() {
            self.bootstrapping = false;
            info!(backend = %addr, "bootstrap over: an apiserver passes its probe; health, tracking and the certificate gate apply from now on");
        }
        // Cheap when nothing changed: the desired state is compared with
        // what was written and only differences reach the maps.
        let report = self.sync()?;
        Ok(ProbeEffect { changes, report })
    }

    /// Stacked mode: this node's own apiservers (`local: true`) pass their
    /// probes (or bootstrap is on). Without local backends: true.
    pub fn local_ok(&self) -> bool {
        if self.bootstrapping {
            return true;
        }
        self.cfg.services.iter().all(|s| {
            s.backends.iter().filter(|b| b.local).all(|b| {
                let addr = SocketAddr::new(b.address, b.port.unwrap_or(s.port));
                self.health.get(&addr).is_none_or(Health::up)
            })
        })
    }

    /// Applies a new configuration: validated already, and refused whole if
    /// its services cannot be written (the running one then stays).
    pub fn reload(
        &mut self,
        cfg: Config,
        node_addrs: Vec<IpAddr>,
    ) -> Result<ApplyReport, ControlError> {
        // Refuse before touching anything if the services cannot be built
        // (health does not enter into that: only the configuration and the
        // node's addresses do).
        cfg.desired(&node_addrs).map_err(ControlError::Config)?;
        self.cfg = cfg;
        self.node_addrs = node_addrs;
        let targets = self.neighbour_targets();
        self.neigh.retain(|a, _| targets.contains(a));
        self.sync_targets();
        Ok(self.sync()?.unwrap_or_default())
    }

    /// The services failing open now ("vip:port").
    pub fn failing_open(&self) -> &BTreeMap<String, Option<Instant>> {
        &self.failing_open
    }

    /// The dataplane id of every backend written, for its counters.
    pub fn backend_ids(&self) -> Vec<(SocketAddr, u32)> {
        let Some(written) = &self.written else {
            return vec![];
        };
        let mut out: Vec<(SocketAddr, u32)> = written
            .iter()
            .flat_map(|ds| &ds.backends)
            .filter_map(|db| Some((backend_addr(db), self.prog.backend_id(db)?)))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every backend with its dataplane id if written: whose counters
    /// the metrics read.
    pub fn counted_backends(&self) -> Vec<(SocketAddr, Option<u32>)> {
        let ids: BTreeMap<SocketAddr, u32> = self.backend_ids().into_iter().collect();
        self.status()
            .iter()
            .map(|b| (b.addr, ids.get(&b.addr).copied()))
            .collect()
    }

    /// Every backend's state, in configuration order.
    pub fn status(&self) -> Vec<BackendStatus> {
        let mut out = vec![];
        let mut seen = BTreeSet::new();
        for s in &self.cfg.services {
            for b in &s.backends {
                let addr = SocketAddr::new(b.address, b.port.unwrap_or(s.port));
                if !seen.insert(addr) {
                    continue;
                }
                let h = self.health.get(&addr);
                let no_neighbour = self.no_neighbour(s, b);
                out.push(BackendStatus {
                    addr,
                    local: b.local,
                    encap: match s.encap_of(b) {
                        Encap::None => None,
                        Encap::Ipip => Some("ipip"),
                        Encap::Ip6ip6 => Some("ip6ip6"),
                    },
                    state: if no_neighbour {
                        BackendHealth::NoNeighbour
                    } else {
                        BackendHealth::of(h)
                    },
                    last: h.and_then(|h| h.last().cloned()),
                    cert: self
                        .certs
                        .get(&addr)
                        .map_or(CertKind::Unknown, CertState::kind),
                    serving: !no_neighbour && self.serving(&addr, b.local),
                });
            }
        }
        out
    }
}

/// What to check when every backend of a service fails its probe although
/// the apiservers may be up: what the probe type can get wrong.
fn fail_open_hint(kind: ProbeType) -> &'static str {
    match kind {
        ProbeType::Https => {
            "if the apiservers are in fact up, check probe.ca (the cluster CA) and probe.server_name (a name in their certificates)"
        }
        // A TCP connect has no CA or name to get wrong: only reachability.
        ProbeType::Tcp => {
            "if the apiservers are in fact up, check that this node reaches their address and port (a firewall, services[].backends[].port, `nc -z ADDRESS PORT`)"
        }
    }
}

#[cfg(test)]
mod tests;
