//! The one owner of the desired state. Probe outcomes, certificate checks
//! and configuration reloads come in as calls; out come BPF map writes
//! through the [`Programmer`] (only differences, each table switched
//! atomically), and the two answers VRRP needs: may this node hold the
//! VIP (the certificate gate), and does its own apiserver serve (priority
//! tracking). Pure: no sockets, no clock; tests drive it with the in-memory
//! maps and made-up instants.

pub mod metrics;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use tracing::{error, info, warn};

use crate::{
    certcheck::{CertCheck, CertReport, SanName, fix_hint},
    config::{Config, Encap, GateAction, ProbeSettings, ProbeType},
    dataplane::{
        Maps,
        programmer::{ApplyReport, DesiredService, Programmer},
    },
    health::{Change, Health},
    probe::Outcome,
};

/// What the certificate gate knows of one backend.
#[derive(Debug, Clone)]
pub enum CertState {
    /// Not dialled yet, or never reachable.
    Unknown,
    /// The chain verifies and every wanted name is in the SAN.
    Ok(CertReport),
    /// The chain verifies but names are missing.
    Missing(CertReport),
    /// The chain does not verify against the CA (the probe fails too).
    Untrusted(String),
}

impl CertState {
    pub fn label(&self) -> &'static str {
        match self {
            CertState::Unknown => "unknown",
            CertState::Ok(_) => "ok",
            CertState::Missing(_) => "san_missing",
            CertState::Untrusted(_) => "untrusted",
        }
    }
}

/// One backend to dial for its certificate, and the names it must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateTarget {
    pub addr: SocketAddr,
    pub want: Vec<SanName>,
}

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

/// The state of a mode dsr backend whose MAC the neighbour table does not
/// give (status, metrics, logs).
pub const NO_NEIGHBOUR: &str = "no_neighbour";

/// Every state a backend is shown in ([`BackendStatus::state`]): the label
/// values of the backend state metric, each exported at 0 or 1.
pub const BACKEND_STATES: [&str; 4] = ["up", "down", "auth_misconfigured", NO_NEIGHBOUR];

/// A backend's state for logs and status.
#[derive(Debug, Clone)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub local: bool,
    /// `ipip` / `ip6ip6`: reached by encapsulation (mode dsr).
    pub encap: Option<&'static str>,
    pub state: &'static str,
    pub last: Option<Outcome>,
    pub cert: &'static str,
    /// Receives new flows.
    pub serving: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Config(String),
    #[error("writing the maps failed")]
    Dataplane(#[from] crate::dataplane::DataplaneError),
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
    /// Services forwarding to every backend because none passes its probe.
    failing_open: BTreeSet<String>,
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
            failing_open: BTreeSet::new(),
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

    /// The backends whose certificates the gate reads: those of services
    /// probed over HTTPS (a TCP probe has no CA to verify with), unless the
    /// gate is off.
    pub fn gate_targets(&self) -> Vec<GateTarget> {
        if self.cfg.cert_gate.on_missing_san == GateAction::Off {
            return vec![];
        }
        let mut t: BTreeMap<SocketAddr, GateTarget> = BTreeMap::new();
        for s in &self.cfg.services {
            if s.probe.kind != ProbeType::Https {
                continue;
            }
            for b in &s.backends {
                let addr = SocketAddr::new(b.address, b.port.unwrap_or(s.port));
                let e = t.entry(addr).or_insert_with(|| GateTarget {
                    addr,
                    want: self
                        .cfg
                        .cert_gate
                        .names
                        .iter()
                        .map(|n| SanName::Dns(n.clone()))
                        .collect(),
                });
                if !e.want.contains(&SanName::Ip(s.vip)) {
                    e.want.insert(0, SanName::Ip(s.vip));
                }
            }
        }
        t.into_values().collect()
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
                Some(f) if f.unreachable() => Use::Dead,
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

    /// The neighbour table's MAC for `addr` (`None`: no usable entry). A
    /// new MAC re-points the backend with one write of its map entry (its
    /// id, its Maglev slots and its flows stay); none takes it out of
    /// service as a dead backend.
    pub fn neighbour(
        &mut self,
        addr: IpAddr,
        mac: Option<[u8; 6]>,
    ) -> Result<Option<ApplyReport>, ControlError> {
        if !self.neighbour_targets().contains(&addr) {
            return Ok(None);
        }
        match mac {
            Some(m) => self.neigh.insert(addr, m),
            None => self.neigh.remove(&addr),
        };
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
        for (i, ds) in d.iter_mut().enumerate() {
            let svc = &self.cfg.services[i];
            let mut any = false;
            let mut reachable = vec![];
            for (b, db) in svc.backends.iter().zip(ds.backends.iter_mut()) {
                let addr = SocketAddr::new(b.address, b.port.unwrap_or(svc.port));
                if self.no_neighbour(svc, b) {
                    db.alive = false;
                    db.draining = false;
                    reachable.push(false);
                    continue;
                }
                if let Some(m) = self.neigh.get(&b.address).filter(|_| b.mac.is_none()) {
                    db.mac = *m;
                }
                let u = self.use_of(&addr, b.local);
                db.alive = u != Use::Dead;
                db.draining = u == Use::Draining;
                any |= u == Use::Serving;
                reachable.push(true);
            }
            let name = service_name(&self.cfg, i);
            if !any && reachable.contains(&true) {
                // Never to a backend without a neighbour: its frames would
                // go nowhere.
                ds.backends
                    .iter_mut()
                    .zip(&reachable)
                    .filter(|(_, r)| **r)
                    .for_each(|(b, _)| {
                        b.alive = true;
                        b.draining = false;
                    });
                if self.failing_open.insert(name.clone()) {
                    error!(
                        service = %name,
                        "no usable backend (probes failing, or certificates without the VIP): forwarding to all of them (fail open) until one is; {}",
                        fail_open_hint(svc.probe.kind)
                    );
                }
            } else if any && self.failing_open.remove(&name) {
                info!(service = %name, "a backend is usable again: fail open is over");
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
        started: std::time::Instant,
        finished: std::time::Instant,
        outcome: &Outcome,
    ) -> Result<ProbeEffect, ControlError> {
        let Some(h) = self.health.get_mut(&addr) else {
            // A probe of a backend a reload removed: too late to matter.
            return Ok(ProbeEffect::default());
        };
        let changes = h.feed(started, finished, outcome);
        if self.bootstrapping && h.ever_passed() {
            self.bootstrapping = false;
            info!(backend = %addr, "bootstrap over: an apiserver passes its probe; health, tracking and the certificate gate apply from now on");
        }
        // Cheap when nothing changed: the desired state is compared with
        // what was written and only differences reach the maps.
        let report = self.sync()?;
        Ok(ProbeEffect { changes, report })
    }

    /// The result of dialling `addr` for its certificate.
    pub fn cert(
        &mut self,
        addr: SocketAddr,
        check: CertCheck,
        now: SystemTime,
    ) -> Result<Option<ApplyReport>, ControlError> {
        let warn_days = i64::from(self.cfg.cert_gate.expiry_warning_days);
        let Some(prev) = self.certs.get(&addr).cloned().or_else(|| {
            self.health
                .contains_key(&addr)
                .then_some(CertState::Unknown)
        }) else {
            return Ok(None);
        };
        let next = match check {
            // Nothing learnt: the last known certificate still stands.
            CertCheck::Unreachable(_) => return Ok(None),
            CertCheck::Untrusted(why) => CertState::Untrusted(why),
            CertCheck::Checked(r) if r.missing.is_empty() => CertState::Ok(r),
            CertCheck::Checked(r) => CertState::Missing(r),
        };
        match (&prev, &next) {
            (CertState::Missing(a), CertState::Missing(b)) if a.missing == b.missing => {}
            (_, CertState::Missing(r)) => {
                let missing: Vec<String> = r.missing.iter().map(ToString::to_string).collect();
                error!(
                    backend = %addr,
                    subject = %r.subject,
                    sans = %r.sans.join(", "),
                    missing = %missing.join(", "),
                    action = ?self.cfg.cert_gate.on_missing_san,
                    fix = %fix_hint(&r.missing),
                    "certificate lacks names clients use for the VIP"
                );
            }
            (CertState::Untrusted(a), CertState::Untrusted(b)) if a == b => {}
            (_, CertState::Untrusted(why)) => {
                warn!(backend = %addr, error = %why, "certificate does not verify against the CA")
            }
            (CertState::Missing(_) | CertState::Untrusted(_), CertState::Ok(r)) => {
                info!(backend = %addr, subject = %r.subject, "certificate carries every name again")
            }
            _ => {}
        }
        if let CertState::Ok(r) | CertState::Missing(r) = &next {
            let days = r.days_to_expiry(now);
            let was = match &prev {
                CertState::Ok(p) | CertState::Missing(p) => Some(p.not_after),
                _ => None,
            };
            if days < warn_days && was != Some(r.not_after) {
                warn!(backend = %addr, subject = %r.subject, days, "certificate expires soon; renew it (kubeadm certs renew apiserver)");
            }
        }
        self.certs.insert(addr, next);
        self.sync()
    }

    /// Why this node must not hold the VIPs `mine` selects (one VRRP
    /// router's, i.e. one address family), if it must not: the gate
    /// refuses, and this node's own apiserver lacks a name, or every
    /// backend of a service whose certificate is known lacks one.
    pub fn gate_hold(&self, mine: impl Fn(IpAddr) -> bool) -> Option<String> {
        if self.cfg.cert_gate.on_missing_san != GateAction::Refuse || self.bootstrapping {
            return None;
        }
        for (i, s) in self.cfg.services.iter().enumerate() {
            if s.probe.kind != ProbeType::Https || !mine(s.vip) {
                continue;
            }
            let mut known = 0;
            let mut missing = vec![];
            for b in &s.backends {
                let addr = SocketAddr::new(b.address, b.port.unwrap_or(s.port));
                match self.certs.get(&addr) {
                    Some(CertState::Ok(_)) => known += 1,
                    Some(CertState::Missing(r)) => {
                        let names: Vec<String> =
                            r.missing.iter().map(ToString::to_string).collect();
                        if b.local {
                            return Some(format!(
                                "this node's apiserver {addr} presents a certificate ({}) without {}; {}",
                                r.subject,
                                names.join(", "),
                                fix_hint(&r.missing)
                            ));
                        }
                        known += 1;
                        missing.push(format!("{addr} lacks {}", names.join(", ")));
                    }
                    _ => {}
                }
            }
            if known > 0 && missing.len() == known {
                return Some(format!(
                    "no backend of {} has a certificate for it ({}); {}",
                    service_name(&self.cfg, i),
                    missing.join("; "),
                    fix_hint(&[SanName::Ip(s.vip)])
                ));
            }
        }
        None
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

    /// What the gate knows of each backend's certificate.
    pub fn certs(&self) -> &BTreeMap<SocketAddr, CertState> {
        &self.certs
    }

    /// The services failing open now ("vip:port").
    pub fn failing_open(&self) -> &BTreeSet<String> {
        &self.failing_open
    }

    /// The dataplane id of every backend written, for its counters.
    pub fn backend_ids(&self) -> Vec<(SocketAddr, u32)> {
        let Some(written) = &self.written else {
            return vec![];
        };
        let mut out = vec![];
        for (s, ds) in self.cfg.services.iter().zip(written) {
            for (b, db) in s.backends.iter().zip(&ds.backends) {
                if let Some(id) = self.prog.backend_id(db) {
                    out.push((SocketAddr::new(b.address, b.port.unwrap_or(s.port)), id));
                }
            }
        }
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
                        NO_NEIGHBOUR
                    } else {
                        h.map_or("up", Health::label)
                    },
                    last: h.and_then(|h| h.last().cloned()),
                    cert: self.certs.get(&addr).map_or("unknown", CertState::label),
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
mod tests {
    use std::{
        path::Path,
        time::{Duration, Instant},
    };

    use vip_common::{BE_F_ALIVE, NO_BACKEND, maglev_index};

    use super::*;
    use crate::{dataplane::mem::MemMaps, probe::Failure};

    #[test]
    fn fail_open_hint_fits_the_probe_type() {
        let tcp = fail_open_hint(ProbeType::Tcp);
        assert!(
            !tcp.contains("probe.ca") && !tcp.contains("server_name"),
            "{tcp}"
        );
        assert!(tcp.contains("port"), "{tcp}");
        let https = fail_open_hint(ProbeType::Https);
        assert!(
            https.contains("probe.ca") && https.contains("probe.server_name"),
            "{https}"
        );
    }

    const NAT3: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: nat
    snat: vip
    maglev_size: 251
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 10.0.0.13
";

    fn cfg(text: &str) -> Config {
        Config::parse(Path::new("t.yaml"), text).expect("valid config")
    }

    fn ctl(text: &str) -> Controller<MemMaps> {
        Controller::new(Programmer::new(MemMaps::default()), cfg(text), vec![])
            .expect("programmed")
            .0
    }

    fn be(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 6443))
    }

    /// The live Maglev table of the first service, as backend addresses
    /// (None: the slot says "no backend").
    fn table(c: &Controller<MemMaps>) -> Vec<Option<IpAddr>> {
        let m = c.programmer().maps();
        let (_, v) = m.services.iter().next().expect("a service");
        (0..v.maglev_size)
            .map(|slot| {
                let id = m.maglev[maglev_index(v.id, v.maglev_half, slot) as usize];
                (id != NO_BACKEND).then(|| {
                    let b = m.backends[id as usize];
                    IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]])
                })
            })
            .collect()
    }

    fn alive_flag(c: &Controller<MemMaps>, addr: SocketAddr) -> bool {
        let m = c.programmer().maps();
        let IpAddr::V4(v4) = addr.ip() else {
            panic!("IPv4 backends here")
        };
        let b = m
            .backends
            .iter()
            .find(|b| b.addr[..4] == v4.octets())
            .expect("backend written");
        b.flags & BE_F_ALIVE != 0
    }

    /// A fake clock: probes one second apart, each taking 3 ms.
    struct Clock(Instant);
    impl Clock {
        fn probe(&mut self) -> (Instant, Instant) {
            self.0 += Duration::from_secs(1);
            (self.0, self.0 + Duration::from_millis(3))
        }
    }

    fn feed(
        c: &mut Controller<MemMaps>,
        clock: &mut Clock,
        addr: SocketAddr,
        o: &Outcome,
    ) -> ProbeEffect {
        let (s, f) = clock.probe();
        c.probe(addr, s, f, o).expect("maps written")
    }

    fn count(t: &[Option<IpAddr>], a: SocketAddr) -> usize {
        t.iter().filter(|x| **x == Some(a.ip())).count()
    }

    const DSR3: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: dsr
    maglev_size: 251
    backends:
      - address: 10.0.0.11
        local: true
      - address: 10.0.0.12
      - address: 10.0.0.13
        mac: 02:00:00:00:00:13
";

    fn state_of(c: &Controller<MemMaps>, a: SocketAddr) -> (&'static str, bool) {
        let b = c
            .status()
            .into_iter()
            .find(|b| b.addr == a)
            .expect("listed");
        (b.state, b.serving)
    }

    /// A backend without `mac:` is served once the neighbour table gives
    /// its MAC, re-pointed in place when the MAC changes, and out (its
    /// flows reset) when the entry goes; the local backend and the
    /// explicit MAC never wait for the table.
    #[test]
    fn a_backend_is_served_only_with_a_neighbour() {
        let mut c = ctl(DSR3);
        assert_eq!(
            c.neighbour_targets(),
            [be(12).ip()].into_iter().collect::<BTreeSet<_>>()
        );
        assert_eq!(state_of(&c, be(12)), (NO_NEIGHBOUR, false));
        assert_eq!(state_of(&c, be(11)), ("up", true));
        assert_eq!(state_of(&c, be(13)), ("up", true));
        let t = table(&c);
        assert_eq!(count(&t, be(12)), 0, "no slot for it");
        assert!(!alive_flag(&c, be(12)), "its flows get an RST");

        let mac = [2, 0, 0, 0, 0, 0x12];
        let r = c.neighbour(be(12).ip(), Some(mac)).expect("written");
        assert!(r.is_some_and(|r| r.maglev_writes > 0), "now in the table");
        assert_eq!(state_of(&c, be(12)), ("up", true));
        assert!(alive_flag(&c, be(12)));
        let served = table(&c);
        assert!(count(&served, be(12)) > 60, "its share of the table");
        let m = c.programmer().maps();
        let id = c
            .backend_ids()
            .into_iter()
            .find(|(a, _)| *a == be(12))
            .expect("id")
            .1;
        assert_eq!(m.backends[id as usize].mac, mac);

        let moved = [2, 0, 0, 0, 0, 0x99];
        let r = c
            .neighbour(be(12).ip(), Some(moved))
            .expect("written")
            .expect("a write");
        assert_eq!(
            (r.backend_writes, r.maglev_writes, r.backends_killed),
            (1, 0, 0)
        );
        assert_eq!(table(&c), served, "same table: its flows stay");
        assert_eq!(c.programmer().maps().backends[id as usize].mac, moved);
        assert!(
            c.neighbour(be(12).ip(), Some(moved)).expect("ok").is_none(),
            "the same MAC again writes nothing"
        );

        let r = c
            .neighbour(be(12).ip(), None)
            .expect("written")
            .expect("a write");
        assert_eq!(r.backends_killed, 1, "its clients are poked");
        assert_eq!(state_of(&c, be(12)), (NO_NEIGHBOUR, false));
        assert!(
            c.neighbour(be(13).ip(), None).expect("ok").is_none(),
            "an explicit mac is not the table's"
        );
    }

    /// Fail open never revives a backend without a neighbour: its frames
    /// would go nowhere, where an RST at least tells the client.
    #[test]
    fn fail_open_skips_backends_without_a_neighbour() {
        let mut c = ctl(DSR3);
        let mut clock = Clock(Instant::now());
        let down = Outcome::Fail(Failure::Refused);
        for _ in 0..5 {
            for a in [be(11), be(13)] {
                feed(&mut c, &mut clock, a, &down);
            }
        }
        assert!(!c.failing_open().is_empty(), "every probe fails");
        assert!(alive_flag(&c, be(11)) && alive_flag(&c, be(13)));
        assert!(!alive_flag(&c, be(12)));
        assert_eq!(count(&table(&c), be(12)), 0);
    }

    #[test]
    fn fall_failures_take_a_backend_out_and_move_only_its_slots() {
        let mut c = ctl(NAT3);
        let mut clock = Clock(Instant::now());
        let before = table(&c);
        assert_eq!(before.len(), 251);
        for a in [be(11), be(12), be(13)] {
            assert!(count(&before, a) >= 83, "even split: {}", count(&before, a));
        }
        let down = Outcome::Fail(Failure::Refused);
        let e = feed(&mut c, &mut clock, be(12), &down);
        assert!(
            e.changes.is_empty() && e.report.is_none(),
            "one failure: no write"
        );
        assert_eq!(table(&c), before);
        let first = clock.0;
        let e = feed(&mut c, &mut clock, be(12), &down);
        let Some(Change::Down {
            first_failure,
            fall_reached,
            ..
        }) = e.changes.first().cloned()
        else {
            panic!("fall 2 reached: {:?}", e.changes)
        };
        assert_eq!(
            first_failure, first,
            "the chain starts at the first failed probe"
        );
        assert_eq!(fall_reached - first_failure, Duration::from_millis(1003));
        let report = e.report.expect("maps written at fall");
        assert!(report.maglev_writes > 0 && report.services_published == 1);
        let after = table(&c);
        assert_eq!(
            count(&after, be(12)),
            0,
            "no new flow goes to the dead backend"
        );
        assert!(!alive_flag(&c, be(12)), "its established flows get an RST");
        assert!(alive_flag(&c, be(11)) && alive_flag(&c, be(13)));
        // Slots of the survivors stay where they were (Maglev's minimal
        // disruption): flows to them are not moved.
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != Some(be(12).ip()) && b != a)
            .count();
        assert!(
            moved * 100 <= before.len() * 2,
            "{moved} survivor slots moved"
        );
        // Two passes bring it back (rise 2), to the very same table.
        assert!(
            feed(&mut c, &mut clock, be(12), &Outcome::Up)
                .report
                .is_none()
        );
        let e = feed(&mut c, &mut clock, be(12), &Outcome::Up);
        assert_eq!(e.changes, [Change::Up]);
        assert_eq!(table(&c), before);
        assert!(alive_flag(&c, be(12)));
    }

    #[test]
    fn not_ready_drains_and_unreachable_resets() {
        let mut c = ctl(NAT3);
        let mut clock = Clock(Instant::now());
        for _ in 0..2 {
            feed(
                &mut c,
                &mut clock,
                be(11),
                &Outcome::Fail(Failure::Status(503)),
            );
            feed(
                &mut c,
                &mut clock,
                be(12),
                &Outcome::Fail(Failure::Tls("unknown CA".into())),
            );
        }
        let t = table(&c);
        assert_eq!(count(&t, be(11)) + count(&t, be(12)), 0, "no new flows");
        assert!(
            alive_flag(&c, be(11)) && alive_flag(&c, be(12)),
            "a draining apiserver keeps its connections"
        );
        // The same backend then stops answering: now its flows get an RST.
        let e = feed(&mut c, &mut clock, be(11), &Outcome::Fail(Failure::Timeout));
        assert!(e.changes.is_empty(), "already down");
        assert!(e.report.is_some(), "the alive bit is written");
        assert!(!alive_flag(&c, be(11)));
        assert_eq!(table(&c), t, "the table did not change");
    }

    #[test]
    fn a_dead_backend_loses_its_alive_bit_only_after_the_table_switch() {
        // A failure injected into the table write leaves the bit alone: no
        // packet may meet a table that names a backend marked dead.
        let mut c = ctl(NAT3);
        let mut clock = Clock(Instant::now());
        c.programmer_mut().maps_mut().fail_maglev = true;
        feed(&mut c, &mut clock, be(13), &Outcome::Fail(Failure::Refused));
        let (s, f) = clock.probe();
        assert!(
            c.probe(be(13), s, f, &Outcome::Fail(Failure::Refused))
                .is_err()
        );
        assert!(
            alive_flag(&c, be(13)),
            "still in the live table, still alive"
        );
        c.programmer_mut().maps_mut().fail_maglev = false;
        c.tick().expect("written");
        assert!(!alive_flag(&c, be(13)));
    }

    #[test]
    fn the_table_is_the_same_whatever_the_order_of_the_backends() {
        let shuffled = NAT3
            .replace("10.0.0.11", "X")
            .replace("10.0.0.13", "10.0.0.11")
            .replace("X", "10.0.0.13");
        let mut a = ctl(NAT3);
        let mut b = ctl(&shuffled);
        assert_eq!(table(&a), table(&b));
        let mut clock = Clock(Instant::now());
        for c in [&mut a, &mut b] {
            for _ in 0..2 {
                feed(c, &mut clock, be(11), &Outcome::Fail(Failure::Refused));
            }
        }
        assert_eq!(table(&a), table(&b), "the same healthy set, the same table");
    }

    #[test]
    fn auth_refused_keeps_the_backend_and_all_down_fails_open() {
        let mut c = ctl(NAT3);
        let mut clock = Clock(Instant::now());
        let before = table(&c);
        for _ in 0..3 {
            feed(&mut c, &mut clock, be(11), &Outcome::AuthRefused(401));
        }
        assert_eq!(
            table(&c),
            before,
            "401 is a probe problem, not a dead apiserver"
        );
        assert_eq!(c.status()[0].state, "auth_misconfigured");
        let t = Outcome::Fail(Failure::Timeout);
        for a in [be(11), be(12)] {
            for _ in 0..2 {
                feed(&mut c, &mut clock, a, &t);
            }
        }
        assert_eq!(count(&table(&c), be(13)), 251, "only be13 left");
        for _ in 0..2 {
            feed(&mut c, &mut clock, be(13), &t);
        }
        assert_eq!(table(&c), before, "none passes: forward to all");
        assert!(alive_flag(&c, be(11)));
        for _ in 0..2 {
            feed(&mut c, &mut clock, be(12), &Outcome::Up);
        }
        assert_eq!(count(&table(&c), be(12)), 251, "fail open ends with one up");
    }

    fn report(missing: Vec<SanName>) -> CertReport {
        CertReport {
            subject: "kube-apiserver".into(),
            sans: vec!["DNS:kubernetes".into()],
            not_after: SystemTime::now() + Duration::from_secs(90 * 86_400),
            missing,
        }
    }

    fn vip() -> SanName {
        SanName::Ip("10.0.0.100".parse().expect("ip"))
    }

    #[test]
    fn a_certificate_without_the_vip_gets_no_flows_and_a_local_one_blocks_master() {
        let stacked = NAT3.replace(
            "      - address: 10.0.0.13\n",
            "      - address: 10.0.0.13\n        local: true\n",
        );
        let mut c = ctl(&stacked);
        assert_eq!(c.gate_targets().len(), 3);
        assert_eq!(c.gate_targets()[0].want, [vip()]);
        let now = SystemTime::now();
        c.cert(be(11), CertCheck::Checked(report(vec![])), now)
            .expect("ok");
        c.cert(be(12), CertCheck::Checked(report(vec![vip()])), now)
            .expect("ok");
        assert_eq!(count(&table(&c), be(12)), 0);
        assert_eq!(
            c.gate_hold(|_| true),
            None,
            "another backend serves the VIP"
        );
        c.cert(be(13), CertCheck::Checked(report(vec![vip()])), now)
            .expect("ok");
        let why = c.gate_hold(|_| true).expect("own apiserver lacks the VIP");
        assert!(
            why.contains("10.0.0.13:6443") && why.contains("certSANs"),
            "{why}"
        );
        // Unreachable teaches nothing: the last known state stays.
        c.cert(be(13), CertCheck::Unreachable("refused".into()), now)
            .expect("ok");
        assert!(c.gate_hold(|_| true).is_some());
        c.cert(be(13), CertCheck::Checked(report(vec![])), now)
            .expect("ok");
        assert_eq!(c.gate_hold(|_| true), None);
        c.cert(be(11), CertCheck::Checked(report(vec![vip()])), now)
            .expect("ok");
        c.cert(be(13), CertCheck::Checked(report(vec![vip()])), now)
            .expect("ok");
        let why = c.gate_hold(|_| true).expect("no backend has the VIP");
        assert!(
            why.starts_with("this node's apiserver 10.0.0.13:6443"),
            "the own apiserver is named first: {why}"
        );
        let mut none = ctl(NAT3);
        for b in [11, 12, 13] {
            none.cert(be(b), CertCheck::Checked(report(vec![vip()])), now)
                .expect("ok");
        }
        let why = none.gate_hold(|_| true).expect("no backend has the VIP");
        assert!(
            why.starts_with("no backend of 10.0.0.100:6443 has a certificate for it"),
            "{why}"
        );
        assert_eq!(
            none.gate_hold(|ip| ip.is_ipv6()),
            None,
            "an IPv6 router is not held for an IPv4 service"
        );
        assert_eq!(
            table(&c).iter().flatten().count(),
            251,
            "fail open over the SAN gate"
        );

        let mut w = ctl(&format!("cert_gate:\n  on_missing_san: warn\n{stacked}"));
        w.cert(be(13), CertCheck::Checked(report(vec![vip()])), now)
            .expect("ok");
        assert_eq!(w.gate_hold(|_| true), None, "warn only warns");
        assert!(count(&table(&w), be(13)) > 0);
        let off = ctl(&format!("cert_gate:\n  on_missing_san: off\n{NAT3}"));
        assert!(off.gate_targets().is_empty());
        let tcp = ctl(&NAT3.replace("    backends:", "    probe: { type: tcp }\n    backends:"));
        assert!(
            tcp.gate_targets().is_empty(),
            "no TLS, no certificate to read"
        );
    }

    #[test]
    fn bootstrap_uses_the_local_apiserver_until_one_is_ready() {
        let text = format!(
            "bootstrap: true\n{}",
            NAT3.replace(
                "      - address: 10.0.0.13\n",
                "      - address: 10.0.0.13\n        local: true\n"
            )
        );
        let mut c = ctl(&text);
        let mut clock = Clock(Instant::now());
        assert!(c.bootstrapping() && c.local_ok());
        let refused = Outcome::Fail(Failure::Refused);
        for _ in 0..3 {
            for a in [be(11), be(12), be(13)] {
                feed(&mut c, &mut clock, a, &refused);
            }
        }
        assert_eq!(
            count(&table(&c), be(13)),
            251,
            "kubeadm init reaches its own apiserver"
        );
        assert!(c.local_ok(), "no priority penalty while bootstrapping");
        c.cert(
            be(13),
            CertCheck::Checked(report(vec![vip()])),
            SystemTime::now(),
        )
        .expect("ok");
        assert_eq!(c.gate_hold(|_| true), None, "nor a gate");
        feed(&mut c, &mut clock, be(13), &Outcome::Up);
        assert!(!c.bootstrapping(), "the first ready apiserver ends it");
        assert!(!c.local_ok(), "be13 is still down by its count (rise 2)");
        assert!(c.gate_hold(|_| true).is_some());
    }

    #[test]
    fn reload_keeps_health_adds_and_removes_backends_or_refuses_whole() {
        let mut c = ctl(NAT3);
        let mut clock = Clock(Instant::now());
        for _ in 0..2 {
            feed(&mut c, &mut clock, be(11), &Outcome::Fail(Failure::Refused));
        }
        let text = NAT3.replace(
            "      - address: 10.0.0.13\n",
            "      - address: 10.0.0.14\n",
        );
        c.reload(cfg(&text), vec![]).expect("valid");
        let t = table(&c);
        assert_eq!(count(&t, be(11)), 0, "be11 stays down across the reload");
        assert_eq!(count(&t, be(13)), 0);
        assert!(count(&t, be(14)) > 100, "a new backend starts up");
        assert_eq!(c.probe_targets().len(), 3);
        let bad = NAT3.replace("snat: vip", "snat: node");
        let e = c.reload(cfg(&bad), vec![]).expect_err("no node address");
        assert!(e.to_string().contains("services[0].snat"), "{e}");
        assert_eq!(table(&c), t, "the running state stays");
        assert!(c.probe_targets().contains_key(&be(14)));
    }

    #[test]
    fn a_failed_map_write_is_retried() {
        let mut c = ctl(NAT3);
        let mut clock = Clock(Instant::now());
        let before = table(&c);
        c.programmer_mut().maps_mut().fail_maglev = true;
        feed(&mut c, &mut clock, be(11), &Outcome::Fail(Failure::Refused));
        let (s, f) = clock.probe();
        assert!(
            c.probe(be(11), s, f, &Outcome::Fail(Failure::Refused))
                .is_err()
        );
        assert_eq!(table(&c), before, "a failed write publishes nothing");
        c.programmer_mut().maps_mut().fail_maglev = false;
        assert!(c.tick().expect("written").is_some());
        assert_eq!(count(&table(&c), be(11)), 0);
        assert!(c.tick().expect("nothing to do").is_none());
    }
}
