//! `vipd status --group`: every node's `/status` side by side, and what the
//! nodes disagree on.
//!
//! Stacked mode dsr keeps connections across a VIP move only because every
//! node computes the same Maglev table from the same inputs (DESIGN.md): a
//! node whose probes see a different set of serving backends builds a
//! different table, and a flow that moves to it (failover, an ECMP rehash)
//! may land on another apiserver and be reset. Nothing on one node shows
//! that; comparing the nodes' own views does. [`compare`] is that comparison,
//! a pure function over the parsed snapshots; [`fetch_all`] is the shell that
//! asks every node at once with a short timeout.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::Serialize;

use super::{ServiceStatus, Status, table};
use crate::{
    config::{Config, Mode},
    controller::NO_NEIGHBOUR,
};

/// One node asked: its snapshot, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    /// Where its `/status` was asked.
    pub address: SocketAddr,
    #[serde(flatten)]
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Status(Box<Status>),
    Unreachable(String),
}

/// One virtual router (family, VRID) as every answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Election {
    pub family: String,
    pub vrid: u8,
    /// Node label -> its state (initialize, backup, master).
    pub states: BTreeMap<String, String>,
    /// The nodes that say they are master: one is right, none or two is
    /// trouble.
    pub masters: Vec<String>,
}

/// One service on which the nodes' serving sets differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    /// `VIP:PORT protocol`.
    pub service: String,
    /// Each backend that is in some nodes' Maglev set and not in others':
    /// the nodes that put it there and those that do not.
    pub backends: Vec<BackendSplit>,
    /// Nodes that answered without this service at all (a different config).
    pub missing_on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendSplit {
    pub backend: SocketAddr,
    pub serving_on: Vec<String>,
    pub not_serving_on: Vec<String>,
    /// Those of `not_serving_on` whose backend list does not hold it at
    /// all: not a probe's verdict but another list (their discovered set,
    /// or their file), each with what its discovery says, if it has one.
    pub unlisted_on: Vec<(String, Option<String>)>,
}

/// The comparison of every node's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Every node's label, in the order asked (the same order as the views).
    pub labels: Vec<String>,
    pub elections: Vec<Election>,
    pub disagreements: Vec<Disagreement>,
    /// Label and reason of each node that did not answer.
    pub unreachable: Vec<(String, String)>,
}

/// One node's view of one service.
struct SetOf<'a> {
    label: &'a String,
    /// The backends its Maglev table holds ([`table_set`]).
    table: BTreeSet<SocketAddr>,
    /// Every backend it lists, serving or not.
    listed: BTreeSet<SocketAddr>,
    status: &'a Status,
}

/// The backends a node's Maglev table holds for a service: the serving ones
/// or, failing open, every backend with a neighbour (the controller's rule,
/// `Controller::desired`).
fn table_set(s: &ServiceStatus) -> BTreeSet<SocketAddr> {
    s.backends
        .iter()
        .filter(|b| {
            if s.fail_open {
                b.state != NO_NEIGHBOUR
            } else {
                b.serving
            }
        })
        .map(|b| b.address)
        .collect()
}

fn service_key(s: &ServiceStatus) -> String {
    format!("{} {}", SocketAddr::new(s.vip, s.port), s.protocol)
}

/// Drops a second answer from the same agent (the same node name and start
/// time): a node reached both on loopback and on its own address, or named
/// by two peers. The first answer is kept.
pub fn dedupe(views: Vec<NodeView>) -> Vec<NodeView> {
    let mut seen = BTreeSet::new();
    views
        .into_iter()
        .filter(|v| match &v.answer {
            Answer::Status(s) => seen.insert((s.node.clone(), s.started_unix_ms)),
            Answer::Unreachable(_) => true,
        })
        .collect()
}

/// A name per node: its node name, with the address when two answering
/// nodes share a name (every namespace of one host has the same hostname);
/// the address for a node that did not answer.
fn labels(views: &[NodeView]) -> Vec<String> {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for v in views {
        if let Answer::Status(s) = &v.answer {
            *count.entry(s.node.as_str()).or_default() += 1;
        }
    }
    views
        .iter()
        .map(|v| match &v.answer {
            Answer::Status(s) if count[s.node.as_str()] == 1 && !s.node.is_empty() => {
                s.node.clone()
            }
            Answer::Status(s) => format!("{}@{}", s.node, v.address),
            Answer::Unreachable(_) => v.address.to_string(),
        })
        .collect()
}

/// Compares the nodes' views: who is master of each virtual router, and
/// which services' Maglev sets differ between the nodes that answered.
pub fn compare(views: &[NodeView]) -> Comparison {
    let labels = labels(views);
    let answered: Vec<(&String, &Status)> = labels
        .iter()
        .zip(views)
        .filter_map(|(l, v)| match &v.answer {
            Answer::Status(s) => Some((l, s.as_ref())),
            Answer::Unreachable(_) => None,
        })
        .collect();

    let mut elections: BTreeMap<(String, u8), Election> = BTreeMap::new();
    for (label, s) in &answered {
        for v in &s.vrrp {
            let e = elections
                .entry((v.family.clone(), v.vrid))
                .or_insert_with(|| Election {
                    family: v.family.clone(),
                    vrid: v.vrid,
                    states: BTreeMap::new(),
                    masters: vec![],
                });
            e.states.insert((*label).clone(), v.state.clone());
            if v.state == "master" {
                e.masters.push((*label).clone());
            }
        }
    }

    // Service -> each node's view of it, in the order asked.
    let mut sets: BTreeMap<String, Vec<SetOf<'_>>> = BTreeMap::new();
    for (label, s) in &answered {
        for svc in &s.services {
            sets.entry(service_key(svc)).or_default().push(SetOf {
                label,
                table: table_set(svc),
                listed: svc.backends.iter().map(|b| b.address).collect(),
                status: s,
            });
        }
    }
    let mut disagreements = vec![];
    for (service, per_node) in sets {
        let missing_on: Vec<String> = answered
            .iter()
            .filter(|(l, _)| !per_node.iter().any(|n| n.label == *l))
            .map(|(l, _)| (*l).clone())
            .collect();
        let all: BTreeSet<SocketAddr> = per_node.iter().flat_map(|n| n.table.clone()).collect();
        let backends: Vec<BackendSplit> = all
            .into_iter()
            .filter_map(|b| {
                let (on, off): (Vec<_>, Vec<_>) =
                    per_node.iter().partition(|n| n.table.contains(&b));
                (!off.is_empty()).then(|| BackendSplit {
                    backend: b,
                    serving_on: on.iter().map(|n| n.label.clone()).collect(),
                    not_serving_on: off.iter().map(|n| n.label.clone()).collect(),
                    unlisted_on: off
                        .iter()
                        .filter(|n| !n.listed.contains(&b))
                        .map(|n| (n.label.clone(), n.status.discovery_summary()))
                        .collect(),
                })
            })
            .collect();
        if !backends.is_empty() || !missing_on.is_empty() {
            disagreements.push(Disagreement {
                service,
                backends,
                missing_on,
            });
        }
    }

    let unreachable = labels
        .iter()
        .zip(views)
        .filter_map(|(l, v)| match &v.answer {
            Answer::Unreachable(why) => Some((l.clone(), why.clone())),
            Answer::Status(_) => None,
        })
        .collect();
    Comparison {
        labels,
        elections: elections.into_values().collect(),
        disagreements,
        unreachable,
    }
}

impl Comparison {
    /// The loud lines, one per problem; empty when the group agrees.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = vec![];
        if self.labels.len() == 1 {
            // A group of one compares nothing: saying "agree" would be a lie.
            w.push(format!(
                "only one node was asked ({}): nothing to compare. Name every node with --peers, or list them in the config (state_sync.peers, vrrp.unicast_peers; stacked dsr finds its backends). A VRRP master hears no backup, so run it on a backup to find the master",
                self.labels[0]
            ));
        }
        for e in &self.elections {
            let router = format!("VRRP {} vrid {}", e.family, e.vrid);
            match e.masters.len() {
                1 => {}
                0 => w.push(format!(
                    "NO MASTER for {router} among the nodes that answered ({}): nobody that answered holds the VIP",
                    e.states
                        .iter()
                        .map(|(n, s)| format!("{n} {s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                _ => w.push(format!(
                    "SPLIT BRAIN: {} masters for {router}: {}. Each holds the VIP and answers ARP for it, so clients flap between them; the nodes do not hear each other's advertisements (IP protocol 112 to 224.0.0.18 / ff02::12, or the unicast peers, blocked between them?)",
                    e.masters.len(),
                    e.masters.join(", ")
                )),
            }
        }
        for d in &self.disagreements {
            let mut line = format!(
                "the nodes disagree on the backends of {}, so they compute DIFFERENT MAGLEV TABLES: a flow that moves to another node (failover, ECMP rehash) may reach another apiserver and be reset; connections do not survive until they agree.",
                d.service
            );
            for b in &d.backends {
                let _ = write!(
                    line,
                    " {} serves on {} but NOT on {};",
                    b.backend,
                    or_none(&b.serving_on),
                    b.not_serving_on.join(", ")
                );
                for (node, discovery) in &b.unlisted_on {
                    let _ = match discovery {
                        Some(said) => write!(
                            line,
                            " {node} does not list it ({said}): the nodes' discovered sets differ;"
                        ),
                        None => write!(
                            line,
                            " {node} does not list it: its backends differ from the others' (a different file?);"
                        ),
                    };
                }
            }
            if !d.missing_on.is_empty() {
                let _ = write!(
                    line,
                    " {} has no such service (a different config);",
                    d.missing_on.join(", ")
                );
            }
            line.pop();
            let unlisted = d.backends.iter().any(|b| !b.unlisted_on.is_empty());
            let probed = d
                .backends
                .iter()
                .any(|b| b.unlisted_on.len() < b.not_serving_on.len());
            if probed {
                line.push_str(
                    ". Check the probe path from the nodes that differ to those backends (firewall, route, certificate), and their probe settings",
                );
            }
            if unlisted {
                line.push_str(
                    ". Where a node does not list a backend, compare its backend list: with discovery, the `discovery:` line of its `vipd status` (a node that cannot read the EndpointSlices keeps its last set); without, its file",
                );
            }
            w.push(line);
        }
        if !self.unreachable.is_empty() {
            w.push(format!(
                "{} of {} nodes did not answer ({}): their view is unknown, so agreement is not confirmed",
                self.unreachable.len(),
                self.labels.len(),
                self.unreachable
                    .iter()
                    .map(|(l, why)| format!("{l}: {why}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        w
    }
}

fn or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// One backend as one node sees it, in a cell: `up`, `down (timeout)`,
/// `up, not serving`...
fn cell(s: &ServiceStatus, b: &super::BackendStatus) -> String {
    let mut c = b.state.clone();
    if b.state != "up"
        && let Some(p) = b.last_probe.as_deref().filter(|p| *p != b.state)
    {
        let _ = write!(c, " ({p})");
    }
    if b.state == "up" && !b.serving {
        c.push_str(", not serving");
    }
    if s.fail_open {
        c.push_str(", fail open");
    }
    c
}

/// The whole report as `vipd status --group` prints it.
pub fn render(views: &[NodeView], cmp: &Comparison) -> String {
    let mut o = String::new();
    let answered = views
        .iter()
        .filter(|v| matches!(v.answer, Answer::Status(_)))
        .count();
    let _ = writeln!(
        o,
        "vipd group: {} node{} asked, {answered} answered\n",
        views.len(),
        if views.len() == 1 { "" } else { "s" }
    );
    let mut rows = vec![
        ["NODE", "ADDRESS", "VRRP", "XDP", "VERSION", "UP"]
            .map(String::from)
            .to_vec(),
    ];
    for (label, v) in cmp.labels.iter().zip(views) {
        match &v.answer {
            Answer::Status(s) => rows.push(vec![
                label.clone(),
                v.address.to_string(),
                match s.vrrp.as_slice() {
                    [] => format!("- ({})", s.vip_holding),
                    vr => vr
                        .iter()
                        .map(|r| format!("{}/{} {}", r.family, r.vrid, r.state.to_uppercase()))
                        .collect::<Vec<_>>()
                        .join(", "),
                },
                if s.xdp_attached {
                    s.xdp_mode.clone()
                } else {
                    "NOT ATTACHED".into()
                },
                s.version.clone(),
                super::span(s.at_unix_ms.saturating_sub(s.started_unix_ms)),
            ]),
            Answer::Unreachable(why) => rows.push(vec![
                label.clone(),
                v.address.to_string(),
                format!("UNREACHABLE: {why}"),
            ]),
        }
    }
    table(&mut o, "", &rows);

    // Each service: one row per backend, one column per answering node.
    let mut services: BTreeMap<String, BTreeMap<SocketAddr, BTreeMap<&str, String>>> =
        BTreeMap::new();
    let mut modes: BTreeMap<String, &str> = BTreeMap::new();
    let cols: Vec<&str> = cmp
        .labels
        .iter()
        .zip(views)
        .filter(|(_, v)| matches!(v.answer, Answer::Status(_)))
        .map(|(l, _)| l.as_str())
        .collect();
    for (label, v) in cmp.labels.iter().zip(views) {
        let Answer::Status(s) = &v.answer else {
            continue;
        };
        for svc in &s.services {
            let key = service_key(svc);
            modes.insert(key.clone(), &svc.mode);
            let rows = services.entry(key).or_default();
            for b in &svc.backends {
                rows.entry(b.address)
                    .or_default()
                    .insert(label.as_str(), cell(svc, b));
            }
        }
    }
    for (key, backends) in &services {
        let _ = writeln!(o, "\nservice {key} mode {}", modes[key]);
        let mut rows = vec![
            std::iter::once("BACKEND".to_owned())
                .chain(cols.iter().map(|c| (*c).to_owned()))
                .collect::<Vec<_>>(),
        ];
        for (addr, per_node) in backends {
            rows.push(
                std::iter::once(addr.to_string())
                    .chain(
                        cols.iter()
                            .map(|c| per_node.get(c).cloned().unwrap_or_else(|| "-".into())),
                    )
                    .collect(),
            );
        }
        table(&mut o, "  ", &rows);
    }

    o.push('\n');
    let warnings = cmp.warnings();
    for w in &warnings {
        let _ = writeln!(o, "WARNING: {w}");
    }
    if warnings.is_empty() {
        let masters = cmp
            .elections
            .iter()
            .map(|e| format!("{} for {} vrid {}", e.masters.join(""), e.family, e.vrid))
            .collect::<Vec<_>>();
        let _ = writeln!(
            o,
            "ok: all {} nodes answered and agree: the same serving backends for every service (the same Maglev tables){}",
            views.len(),
            if masters.is_empty() {
                String::new()
            } else {
                format!("; one master: {}", masters.join(", "))
            }
        );
    }
    o
}

/// The JSON form (`--json`): every node's snapshot or error, and the
/// comparison with its warnings.
pub fn to_json(views: &[NodeView], cmp: &Comparison) -> serde_json::Value {
    serde_json::json!({
        "nodes": views
            .iter()
            .zip(&cmp.labels)
            .map(|(v, l)| {
                let mut j = serde_json::to_value(v).unwrap_or_default();
                if let Some(o) = j.as_object_mut() {
                    o.insert("label".into(), l.clone().into());
                }
                j
            })
            .collect::<Vec<_>>(),
        "elections": cmp.elections,
        "disagreements": cmp.disagreements,
        "unreachable": cmp.unreachable,
        "warnings": cmp.warnings(),
    })
}

/// Asks every address's `/status` at once, each bounded by `timeout` (to
/// connect, and for each read and write): a node that does not answer is
/// [`Answer::Unreachable`] with the reason, never a hang. Views come back
/// in the order of `addrs`.
pub fn fetch_all(addrs: &[SocketAddr], timeout: Duration) -> Vec<NodeView> {
    std::thread::scope(|sc| {
        let handles: Vec<_> = addrs
            .iter()
            .map(|&a| sc.spawn(move || (a, super::fetch(a, timeout))))
            .collect();
        handles
            .into_iter()
            .zip(addrs)
            .map(|(h, &address)| {
                let answer = match h.join() {
                    Ok((_, Ok((s, _)))) => Answer::Status(Box::new(s)),
                    Ok((_, Err(e))) => Answer::Unreachable(short_error(&e)),
                    Err(_) => Answer::Unreachable("the fetching thread panicked".into()),
                };
                NodeView { address, answer }
            })
            .collect()
    })
}

/// The fetch error without the address (the table shows it) and without
/// the single-node hint about --config.
fn short_error(e: &super::FetchError) -> String {
    match e {
        super::FetchError::Refused(_) => "connection refused (no vipd listens there)".into(),
        super::FetchError::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
            _ => source.to_string(),
        },
        super::FetchError::Bad { msg, .. } => msg.clone(),
    }
}

/// The nodes' addresses the config names, other than this node's own
/// (`here`): the state-sync peers, the VRRP unicast peers and, when this
/// node is one of its own dsr backends (stacked: vipd runs on every
/// control-plane node), every dsr backend. Dedicated LB nodes' backends
/// are not vipd nodes, so they are left out.
pub fn config_peers(cfg: &Config, here: &[IpAddr]) -> BTreeSet<IpAddr> {
    let mut out: BTreeSet<IpAddr> = BTreeSet::new();
    if let Some(s) = &cfg.state_sync {
        out.extend(&s.peers);
    }
    if let Some(v) = &cfg.vrrp {
        out.extend(&v.unicast_peers);
    }
    let dsr = || cfg.services.iter().filter(|s| s.mode == Mode::Dsr);
    let stacked = dsr().any(|s| {
        s.backends
            .iter()
            .any(|b| b.local || here.contains(&b.address))
    });
    if stacked {
        out.extend(dsr().flat_map(|s| s.backends.iter().map(|b| b.address)));
    }
    out.retain(|a| !here.contains(a));
    out
}

/// The VRRP routers the answering nodes have heard (peers and masters),
/// other than the addresses in `known`: candidates for a second round of
/// asking, so that a multicast VRRP group with no peer list is still found.
pub fn heard_peers(views: &[NodeView], known: &BTreeSet<IpAddr>) -> BTreeSet<IpAddr> {
    views
        .iter()
        .filter_map(|v| match &v.answer {
            Answer::Status(s) => Some(s),
            Answer::Unreachable(_) => None,
        })
        .flat_map(|s| {
            s.vrrp.iter().flat_map(|r| {
                r.peers
                    .iter()
                    .map(|p| p.address)
                    .chain(r.master)
                    .chain([r.source])
            })
        })
        // A VRRPv3 IPv6 router advertises from its link-local address
        // (RFC 9568 5.1.2.1), which cannot be asked without its interface's
        // scope; the node's IPv4 instance, its peer lists or --peers find it.
        .filter(|a| !known.contains(a) && !is_link_local(a))
        .collect()
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v) => v.is_link_local(),
        IpAddr::V6(v) => v.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests;
