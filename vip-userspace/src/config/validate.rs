//! The checks that need more than one value: run once, when the file is
//! read ([`Config::parse`]), after every value has its type.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use super::{
    Config, FieldError, Mode, ProbeSettings, Snat, StateSyncSettings,
    holder::PRIORITY_ZERO,
    settings::{DEFAULT_SYNC_PORT, MIN_SLICE},
};

impl Config {
    pub(super) fn validate(&self) -> Result<(), FieldError> {
        self.validate_nodes()?;
        if self.services.is_empty() {
            return Err(FieldError::new(
                "services",
                "no service; add one (vip, port, mode, backends)",
            ));
        }
        if self.conntrack_capacity < 1024 {
            return Err(FieldError::new(
                "conntrack_capacity",
                format!(
                    "{} is too small; use at least 1024",
                    self.conntrack_capacity
                ),
            ));
        }
        self.validate_holders()?;
        if self.nat.tcp_idle_s == 0 || self.nat.udp_idle_s == 0 {
            return Err(FieldError::new(
                "nat",
                "idle timeouts must be at least 1 second",
            ));
        }
        self.cert_gate.check().map_err(|e| e.under("cert_gate"))?;
        self.validate_shared_probes()?;
        if let Some(sync) = &self.state_sync {
            self.validate_sync(sync)?;
        }
        if let Some(snap) = &self.snapshot {
            snap.plan().map_err(FieldError::from)?;
        }
        if let Some(d) = &self.discovery {
            d.check().map_err(|e| e.under("discovery"))?;
            if self.services.iter().all(|s| s.backends_from.is_none()) {
                return Err(FieldError::new(
                    "discovery",
                    "no service reads its backends from the cluster; add `backends_from: kubernetes` to the apiserver service, or remove discovery",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if !seen.insert((s.vip, s.port, s.protocol as u8)) {
                return Err(FieldError::new(
                    at,
                    format!("{}:{} {:?} is configured twice", s.vip, s.port, s.protocol),
                ));
            }
            s.check().map_err(|e| e.under(&at))?;
        }
        Ok(())
    }

    /// `nodes:` entries: a name, and only values that apply here.
    fn validate_nodes(&self) -> Result<(), FieldError> {
        for (name, n) in &self.nodes {
            let at = format!("nodes.{name}");
            if name.is_empty() {
                return Err(FieldError::new(
                    "nodes",
                    "an empty node name; use the name `kubectl get nodes` shows (or the hostname)",
                ));
            }
            match (n.priority, &self.vrrp) {
                (Some(_), None) => {
                    return Err(FieldError::new(
                        format!("{at}.priority"),
                        "a priority without `vrrp:`; remove it, or add vrrp",
                    ));
                }
                (Some(0), _) => {
                    return Err(FieldError::new(format!("{at}.priority"), PRIORITY_ZERO));
                }
                _ => {}
            }
            if n.interface.as_deref() == Some("") {
                return Err(FieldError::new(
                    format!("{at}.interface"),
                    "empty; name the interface that carries the VIP (ip link show), or remove it",
                ));
            }
        }
        Ok(())
    }

    /// One holder per node, and the holder's own settings.
    fn validate_holders(&self) -> Result<(), FieldError> {
        if let Some(v) = &self.vrrp {
            if self.hold_vips {
                return Err(FieldError::new(
                    "hold_vips",
                    "a static holder and VRRP election exclude each other; remove hold_vips",
                ));
            }
            v.check().map_err(|e| e.under("vrrp"))?;
            let families: Vec<bool> = self.services.iter().map(|s| s.vip.is_ipv4()).collect();
            for (i, p) in v.unicast_peers.iter().enumerate() {
                if !families.contains(&p.is_ipv4()) {
                    return Err(FieldError::new(
                        format!("vrrp.unicast_peers[{i}]"),
                        format!("{p}: no VIP of this address family to elect a holder for"),
                    ));
                }
            }
        }
        if let Some(a) = &self.announce {
            // One holder per node: VRRP moves the VIP address between nodes
            // of one segment, announce spreads it over every node by
            // routing; both at once would fight over who serves it.
            if self.vrrp.is_some() {
                return Err(FieldError::new(
                    "announce",
                    "announcing the VIP's route and electing a VRRP holder are two ways to hold the VIP; keep one: remove `vrrp:` across an L3 fabric (no shared segment), or `announce:` on one L2 segment",
                ));
            }
            if self.hold_vips {
                return Err(FieldError::new(
                    "hold_vips",
                    "announce: holds the VIPs by their route, only while this node can serve; hold_vips would claim them always; remove hold_vips",
                ));
            }
            a.check().map_err(|e| e.under("announce"))?;
            // Every announcing LB holds the VIP, and the router spreads the
            // backends' replies to it over all of them by its own hash of
            // the reply's ports: a reply reaches an LB that knows its flow
            // only if every LB knows every flow.
            if self.state_sync.is_none()
                && let Some(i) = self
                    .services
                    .iter()
                    .position(|s| s.mode == Mode::Nat && s.snat() == Snat::Vip)
            {
                return Err(FieldError::new(
                    format!("services[{i}].snat"),
                    "with announce: every LB holds the VIP, so the backends' replies to it reach whichever LB the router picks; add state_sync listing every LB (each then knows every flow), or set snat: node (each LB's own address; a flow is reset when its LB dies)",
                ));
            }
        }
        Ok(())
    }

    /// One backend, one probe: its health is shared by every service that
    /// lists it, so they must probe it alike.
    fn validate_shared_probes(&self) -> Result<(), FieldError> {
        let mut probes: BTreeMap<SocketAddr, (usize, &ProbeSettings)> = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            for (j, b) in s.backends.iter().enumerate() {
                let addr = s.backend_addr(b);
                match probes.get(&addr) {
                    Some((first, p)) if *p != &s.probe => {
                        return Err(FieldError::new(
                            format!("services[{i}].backends[{j}]"),
                            format!(
                                "{addr} is probed with other settings in services[{first}]; give both services the same probe"
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        probes.insert(addr, (i, &s.probe));
                    }
                }
            }
        }
        Ok(())
    }

    /// `state_sync:` must name peers of one family, a port clear of the NAT
    /// source ports, and only nat services with `snat: vip`. Why refuse
    /// `snat: node` rather than warn: the backend knows a connection by its
    /// source address; with the node's own address there, the replicated entry
    /// on the peer would send from another address and the backend would
    /// answer it with an RST (or the replies go to the dead node): sync would
    /// look configured and keep nothing.
    fn validate_sync(&self, sync: &StateSyncSettings) -> Result<(), FieldError> {
        let f = |field: &str, m: String| FieldError::new(format!("state_sync.{field}"), m);
        if sync.peers.is_empty() {
            return Err(f(
                "peers",
                "empty; list the other LB nodes' addresses, or remove state_sync".into(),
            ));
        }
        let v4 = sync.peers[0].is_ipv4();
        let vips: Vec<IpAddr> = self.services.iter().map(|s| s.vip).collect();
        for (i, p) in sync.peers.iter().enumerate() {
            if p.is_ipv4() != v4 {
                return Err(f(
                    &format!("peers[{i}]"),
                    format!("{p}: all peers must be of one address family (one socket)"),
                ));
            }
            if p.is_unspecified() || p.is_multicast() || p.is_loopback() {
                return Err(f(
                    &format!("peers[{i}]"),
                    format!("{p} is not a peer's unicast address; give the node address"),
                ));
            }
            if vips.contains(p) {
                return Err(f(
                    &format!("peers[{i}]"),
                    format!("{p} is a VIP; give the peer node's own address"),
                ));
            }
        }
        if let Some(l) = sync.listen
            && l.is_ipv4() != v4
        {
            return Err(f(
                "listen",
                format!("{l} is not of the peers' address family"),
            ));
        }
        let ports = self.nat.ports;
        if sync.port == 0 || ports.contains(sync.port) {
            return Err(f(
                "port",
                format!(
                    "{} is not usable (0, or inside nat.ports {ports}, whose replies the XDP program takes); use the default {DEFAULT_SYNC_PORT}",
                    sync.port
                ),
            ));
        }
        // Active-active: each LB hands out its own slice of the ports
        // (`NatSettings::slice`), one per LB; this file may or may not list
        // this node among the peers, so count it in to be safe.
        let nodes = sync.peers.len() + 1;
        if self.announce.is_some() && self.nat.slice(nodes - 1, nodes).is_none() {
            return Err(FieldError::new(
                "nat.ports",
                format!(
                    "{ports} split over {nodes} LBs (state_sync.peers and this node, each handing out its own slice with announce:) leaves fewer than {MIN_SLICE} ports each; widen nat.ports to at least {} ports",
                    MIN_SLICE * nodes
                ),
            ));
        }
        let mut nat = 0;
        for (i, s) in self.services.iter().enumerate() {
            if s.mode != Mode::Nat {
                continue;
            }
            nat += 1;
            if s.snat() != Snat::Vip {
                return Err(FieldError::new(
                    format!("services[{i}].snat"),
                    "state_sync needs `snat: vip` on every nat service: the backends must see the VIP as the source, so that their replies follow it to the new holder; set snat: vip, or remove state_sync",
                ));
            }
        }
        if nat == 0 {
            return Err(f(
                "peers",
                "state_sync replicates mode nat flows, and no service is mode nat; remove state_sync".into(),
            ));
        }
        Ok(())
    }
}
