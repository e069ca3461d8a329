//! The certificate gate: which backends' certificates are read, what a
//! read changes (logged once per change), and whether this node may hold
//! the VIPs while a certificate lacks them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use tracing::{error, info, warn};

use super::{ControlError, Controller, service_name};
use crate::{
    certcheck::{CertCheck, CertReport, SanName, fix_hint},
    config::{GateAction, ProbeType},
    dataplane::{Maps, programmer::ApplyReport},
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

/// [`CertState`] without its report, for status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    Unknown,
    Ok,
    SanMissing,
    Untrusted,
}

impl CertKind {
    pub fn label(self) -> &'static str {
        match self {
            CertKind::Unknown => "unknown",
            CertKind::Ok => "ok",
            CertKind::SanMissing => "san_missing",
            CertKind::Untrusted => "untrusted",
        }
    }
}

impl CertState {
    pub fn kind(&self) -> CertKind {
        match self {
            CertState::Unknown => CertKind::Unknown,
            CertState::Ok(_) => CertKind::Ok,
            CertState::Missing(_) => CertKind::SanMissing,
            CertState::Untrusted(_) => CertKind::Untrusted,
        }
    }
}

/// One backend to dial for its certificate, and the names it must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateTarget {
    pub addr: SocketAddr,
    pub want: Vec<SanName>,
}

impl<M: Maps> Controller<M> {
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

    /// What the gate knows of each backend's certificate.
    pub fn certs(&self) -> &BTreeMap<SocketAddr, CertState> {
        &self.certs
    }
}
