//! `vipd status`: what the running agent knows, as one snapshot.
//!
//! The agent rebuilds the snapshot once a second and serves it as JSON at
//! `/status` on `metrics_listen`; the CLI fetches it and prints a table or
//! the JSON itself. Times are Unix milliseconds of the agent's clock, and the
//! snapshot carries its own `at_unix_ms`, so ages ("12 s ago") are computed
//! against the agent's clock, not the caller's.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

pub mod group;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub node: String,
    pub interface: String,
    /// How the XDP program runs: native, skb, adopted (from a pinned link).
    pub xdp_mode: String,
    /// Whether the kernel reports the program attached right now.
    pub xdp_attached: bool,
    /// `vrrp`, `announce`, `static` (hold_vips) or `none`.
    pub vip_holding: String,
    pub started_unix_ms: u64,
    /// When this snapshot was taken.
    pub at_unix_ms: u64,
    pub vrrp: Vec<VrrpStatus>,
    /// `announce:`: each VIP's route; empty with any other holder.
    #[serde(default)]
    pub announce: Vec<RouteStatus>,
    pub services: Vec<ServiceStatus>,
    pub flows: FlowStatus,
    /// State sync's counters (mode nat with `state_sync:`); absent without it.
    #[serde(default)]
    pub sync: Option<SyncStatus>,
    /// The apiservers are further apart than Kubernetes' version-skew
    /// policy allows: the warning ([`crate::version`]).
    #[serde(default)]
    pub version_skew: Option<String>,
    /// `snapshot:`: this node's snapshot folder; absent without it.
    #[serde(default)]
    pub etcd_snapshot: Option<EtcdSnapshotStatus>,
    /// `backends_from: kubernetes`: where the backends come from; absent
    /// without it.
    #[serde(default)]
    pub discovery: Option<DiscoveryStatus>,
}

/// The backends discovered from the cluster (`discovery`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// `file` (nothing known yet), `cache` (the last known set; the
    /// apiserver has not answered since start) or `kubernetes`.
    pub source: String,
    /// When the EndpointSlices were last read.
    pub last_sync_unix_ms: Option<u64>,
    /// The last list or watch error, while it lasts.
    pub last_error: Option<String>,
    pub cache: String,
    /// Listed apiservers not admitted yet, with why.
    pub candidates: Vec<(String, String)>,
}

/// The etcd snapshots in this node's folder (the master takes them: a
/// backup's newest is older).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EtcdSnapshotStatus {
    pub dir: String,
    /// The newest snapshot file, when it was written, its size.
    pub newest: Option<String>,
    pub newest_unix_ms: Option<u64>,
    pub newest_bytes: Option<u64>,
    /// The last scheduled attempt's error on this node since its last
    /// success, with its reason label.
    pub last_error: Option<String>,
}

/// Connection-state sync since the agent started: the same counters as the
/// `vipd_state_sync_*` metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// Records sent, once per peer.
    pub sent: u64,
    pub received: u64,
    /// Records written to this node's maps.
    pub applied: u64,
    /// Records refused, by reason (only reasons seen).
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// New flows never sent, by reason (only reasons seen).
    pub lost: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub family: String,
    pub vrid: u8,
    /// initialize, backup, master.
    pub state: String,
    /// Advertised now, after tracking.
    pub priority: u8,
    pub configured_priority: u8,
    /// Why the certificate gate keeps this node out of the election.
    pub held: Option<String>,
    pub source: IpAddr,
    pub vips: Vec<IpAddr>,
    /// Who holds the VIP as far as this node knows: itself when master,
    /// else the router heard last with a non-zero priority.
    pub master: Option<IpAddr>,
    pub peers: Vec<PeerStatus>,
    pub last_change: Option<ChangeStatus>,
    pub last_failover: Option<FailoverStatus>,
}

/// One VIP's host route in the announce table (`announce:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStatus {
    pub vip: IpAddr,
    pub table: u32,
    /// vipd's route is in the table: the routing daemon announces it.
    pub installed: bool,
    /// When it was last installed or withdrawn (None: neither yet).
    pub since_unix_ms: Option<u64>,
    /// While not installed: why, as the `reason` label of
    /// `vipd_announce_withdrawals_total` (xdp_detached, no_backend,
    /// cert_gate, stopping) ...
    pub reason: Option<String>,
    /// ... and in words.
    pub why: Option<String>,
    /// Someone else's route for the VIP in the table, which vipd leaves
    /// alone (and so does not announce the VIP).
    pub blocked_by: Option<String>,
    /// The last install or withdraw the kernel refused.
    pub error: Option<String>,
    /// Withdrawals since start, by reason.
    pub withdrawals: std::collections::BTreeMap<String, u64>,
}

impl RouteStatus {
    /// Not installed, nothing known yet.
    pub fn new(vip: IpAddr, table: u32) -> RouteStatus {
        RouteStatus {
            vip,
            table,
            installed: false,
            since_unix_ms: None,
            reason: None,
            why: None,
            blocked_by: None,
            error: None,
            withdrawals: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub priority: u8,
    pub last_heard_unix_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeStatus {
    pub at_unix_ms: u64,
    pub from: String,
    pub to: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverStatus {
    pub at_unix_ms: u64,
    /// From the previous master's last advertisement to this node's takeover.
    pub took_ms: u64,
    pub from: IpAddr,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    /// The VIP is on this node's interface.
    pub vip_here: bool,
    /// No backend is usable: vipd forwards to all of them.
    pub fail_open: bool,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: SocketAddr,
    pub local: bool,
    /// Mode dsr to another subnet: `ipip` or `ip6ip6` (absent from an
    /// older vipd's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<String>,
    /// up, down, auth_misconfigured.
    pub state: String,
    /// Receives new flows.
    pub serving: bool,
    /// ok, san_missing, unknown, ...
    pub cert: String,
    /// The last probe's outcome label (up, timeout, tls, ...).
    pub last_probe: Option<String>,
    pub probe_latency_ms: Option<f64>,
    /// Live flows in the connection table (counted every 10 s).
    pub flows: Option<u64>,
    pub new_flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub rsts: u64,
    pub last_change: Option<BackendChange>,
    /// The apiserver's gitVersion (`GET /version`), once read.
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendChange {
    pub at_unix_ms: u64,
    pub to: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FlowStatus {
    /// Live connection-table entries at the last sweep (None before it).
    pub entries: Option<u64>,
    pub capacity: u32,
    pub nat_entries: Option<u64>,
    /// Expired entries the sweeps have deleted.
    pub swept: u64,
    pub last_sweep_unix_ms: Option<u64>,
}

pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "850 ms", "12 s", "5 m", "3 h", "2 d".
fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{:.0} s", ms as f64 / 1000.0),
        120_000..7_200_000 => format!("{} m", ms / 60_000),
        7_200_000..172_800_000 => format!("{} h", ms / 3_600_000),
        _ => format!("{} d", ms / 86_400_000),
    }
}

fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Left-aligned columns, two spaces apart.
fn table(out: &mut String, indent: &str, rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = indent.to_owned();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = width[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
}

impl Status {
    /// One virtual router: state, master, peers, last change and failover.
    fn render_vrrp(&self, o: &mut String, v: &VrrpStatus) {
        let _ = writeln!(
            o,
            "\nVRRP {} vrid {}: {}, priority {}{}, source {}, VIPs {}",
            v.family,
            v.vrid,
            v.state.to_uppercase(),
            v.priority,
            if v.priority == v.configured_priority {
                String::new()
            } else {
                format!(" (configured {})", v.configured_priority)
            },
            v.source,
            join(&v.vips),
        );
        if let Some(h) = &v.held {
            let _ = writeln!(o, "  HELD OUT of the election: {h}");
        }
        match v.master {
            Some(m) if m == v.source => o.push_str("  master: this node\n"),
            Some(m) => {
                let _ = writeln!(o, "  master: {m}");
            }
            None => o.push_str("  master: none heard\n"),
        }
        let mut rows = vec![vec!["PEER".into(), "PRIORITY".into(), "LAST HEARD".into()]];
        for p in &v.peers {
            rows.push(vec![
                p.address.to_string(),
                p.priority.to_string(),
                self.ago(p.last_heard_unix_ms),
            ]);
        }
        if rows.len() > 1 {
            table(o, "  ", &rows);
        } else {
            o.push_str("  peers: none heard\n");
        }
        if let Some(c) = &v.last_change {
            let _ = writeln!(
                o,
                "  last change {}: {} -> {} ({})",
                self.ago(c.at_unix_ms),
                c.from,
                c.to,
                c.why
            );
        }
        match &v.last_failover {
            Some(f) => {
                let _ = writeln!(
                    o,
                    "  last failover {}: took {} ms, from {} ({})",
                    self.ago(f.at_unix_ms),
                    f.took_ms,
                    f.from,
                    f.why
                );
            }
            None => o.push_str("  last failover: none by this node\n"),
        }
    }

    /// One service and its backends' table.
    fn render_service(&self, o: &mut String, s: &ServiceStatus) {
        let serving = s.backends.iter().filter(|b| b.serving).count();
        let _ = writeln!(
            o,
            "\nservice {} {} mode {}: VIP {}on this node, {}/{} backends serving{}",
            SocketAddr::new(s.vip, s.port),
            s.protocol,
            s.mode,
            if s.vip_here { "" } else { "not " },
            serving,
            s.backends.len(),
            if s.fail_open {
                ", FAIL OPEN (no backend usable: forwarding to all)"
            } else {
                ""
            }
        );
        let mut rows = vec![
            [
                "BACKEND",
                "STATE",
                "SERVING",
                "CERT",
                "PROBE",
                "LATENCY",
                "FLOWS",
                "NEW FLOWS",
                "BYTES",
                "RSTS",
                "VERSION",
                "LAST CHANGE",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for b in &s.backends {
            rows.push(vec![
                format!(
                    "{}{}{}",
                    b.address,
                    if b.local { " (local)" } else { "" },
                    b.encap
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
                b.state.clone(),
                if b.serving { "yes" } else { "no" }.into(),
                b.cert.clone(),
                b.last_probe.clone().unwrap_or_else(|| "-".into()),
                b.probe_latency_ms
                    .map_or("-".into(), |l| format!("{l:.1} ms")),
                b.flows.map_or("-".into(), |f| f.to_string()),
                b.new_flows.to_string(),
                bytes(b.bytes),
                b.rsts.to_string(),
                b.version.clone().unwrap_or_else(|| "-".into()),
                b.last_change.as_ref().map_or("-".into(), |c| {
                    format!("{} ({}: {})", self.ago(c.at_unix_ms), c.to, c.reason)
                }),
            ]);
        }
        table(o, "  ", &rows);
    }

    /// The connection table's fullness and the last sweep.
    fn render_flows(&self, o: &mut String) {
        let f = &self.flows;
        match f.entries {
            Some(n) => {
                let _ = writeln!(
                    o,
                    "\nflows: {n} of {} ({:.1}% full){}, {} expired entries swept{}",
                    f.capacity,
                    n as f64 * 100.0 / f64::from(f.capacity.max(1)),
                    f.nat_entries
                        .map_or(String::new(), |n| format!(", {n} reverse-NAT")),
                    f.swept,
                    f.last_sweep_unix_ms
                        .map_or(String::new(), |t| format!(", counted {}", self.ago(t))),
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "\nflows: not counted yet (every 10 s), capacity {}",
                    f.capacity
                );
            }
        }
    }

    /// State sync's counters, with sync on.
    fn render_sync(&self, o: &mut String) {
        if let Some(y) = &self.sync {
            let by_reason = |m: &std::collections::BTreeMap<String, u64>| {
                if m.is_empty() {
                    return "none".to_owned();
                }
                m.iter()
                    .map(|(r, n)| format!("{n} {r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                o,
                "state sync: {} records sent, {} received, {} applied; refused: {}; lost: {}",
                y.sent,
                y.received,
                y.applied,
                by_reason(&y.rejected),
                by_reason(&y.lost)
            );
        }
    }

    /// `announce:`: one row per VIP, with why a route is not installed.
    fn render_routes(&self, o: &mut String) {
        let Some(first) = self.announce.first() else {
            return;
        };
        let _ = writeln!(
            o,
            "\nVIPs held by announcing their routes (table {}):",
            first.table
        );
        let mut rows = vec![["VIP", "ROUTE", "SINCE", "WHY"].map(String::from).to_vec()];
        for r in &self.announce {
            let state = match (&r.blocked_by, r.installed) {
                (Some(_), _) => "BLOCKED",
                (None, true) => "installed",
                (None, false) => "WITHDRAWN",
            };
            let mut why = match (&r.blocked_by, &r.why) {
                (Some(b), _) => format!("someone else's route holds it: {b}"),
                (None, Some(w)) => w.clone(),
                (None, None) => "-".into(),
            };
            if let Some(e) = &r.error {
                why = format!("{why}; ERROR: {e}");
            }
            rows.push(vec![
                r.vip.to_string(),
                state.into(),
                r.since_unix_ms.map_or_else(|| "-".into(), |t| self.ago(t)),
                why,
            ]);
        }
        table(o, "  ", &rows);
    }

    fn render_etcd_snapshot(&self, o: &mut String) {
        let Some(e) = &self.etcd_snapshot else {
            return;
        };
        match (&e.newest, e.newest_unix_ms) {
            (Some(n), Some(t)) => {
                let _ = writeln!(
                    o,
                    "etcd snapshot: newest {}/{n} ({} bytes), written {}",
                    e.dir,
                    e.newest_bytes.unwrap_or(0),
                    self.ago(t)
                );
            }
            _ => {
                let _ = writeln!(o, "etcd snapshot: none in {} yet", e.dir);
            }
        }
        if let Some(err) = &e.last_error {
            let _ = writeln!(o, "  last attempt failed: {err}");
        }
    }

    fn render_discovery(&self, o: &mut String) {
        let Some(d) = &self.discovery else {
            return;
        };
        let sync = d.last_sync_unix_ms.map_or_else(
            || "never since start".into(),
            |t| format!("last read {}", self.ago(t)),
        );
        let _ = writeln!(
            o,
            "discovery: backends from {} (kubernetes EndpointSlices {sync}; cache {})",
            d.source, d.cache
        );
        if let Some(e) = &d.last_error {
            let _ = writeln!(
                o,
                "  the apiserver cannot be read, the last known set stays: {e}"
            );
        }
        for (addr, why) in &d.candidates {
            let _ = writeln!(o, "  listed, not admitted: {addr}: {why}");
        }
    }

    /// One line of what this node's discovery says (`vipd status --group`
    /// names it beside a backend the node does not list).
    pub fn discovery_summary(&self) -> Option<String> {
        let d = self.discovery.as_ref()?;
        let mut said = format!("discovery source {}", d.source);
        if let Some(e) = &d.last_error {
            let _ = write!(said, ", failing: {e}");
        }
        if let Some(t) = d.last_sync_unix_ms {
            let _ = write!(said, ", last read {}", self.ago(t));
        }
        Some(said)
    }

    fn ago(&self, t: u64) -> String {
        format!("{} ago", span(self.at_unix_ms.saturating_sub(t)))
    }

    /// The readable table `vipd status` prints.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "vipd {} on {}: interface {}, XDP {}{}, up {}",
            self.version,
            self.node,
            self.interface,
            self.xdp_mode,
            if self.xdp_attached {
                ""
            } else {
                " (NOT ATTACHED: this node cannot forward)"
            },
            span(self.at_unix_ms.saturating_sub(self.started_unix_ms)),
        );
        match self.vip_holding.as_str() {
            "static" => o.push_str("VIPs held statically (hold_vips: true)\n"),
            "none" => o.push_str("VIPs held by something else (no vrrp, no hold_vips)\n"),
            _ => {}
        }
        if let Some(w) = &self.version_skew {
            let _ = writeln!(o, "WARNING: {w}");
        }
        self.render_routes(&mut o);
        for v in &self.vrrp {
            self.render_vrrp(&mut o, v);
        }
        for s in &self.services {
            self.render_service(&mut o, s);
        }
        self.render_flows(&mut o);
        self.render_sync(&mut o);
        self.render_etcd_snapshot(&mut o);
        self.render_discovery(&mut o);
        o
    }
}

pub(crate) fn join(a: &[IpAddr]) -> String {
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where to reach the agent for a `metrics_listen` address: a wildcard
/// listen address is reached on loopback.
pub fn reach(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(a) if a.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(a) if a.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "no vipd answers on {0}: is it running? `vipd status` reads `metrics_listen` from --config (default /etc/vipd/vipd.yaml) or takes --address"
    )]
    Refused(SocketAddr),
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: {msg}")]
    Bad { addr: SocketAddr, msg: String },
}

/// One GET against vipd's HTTP endpoint (`metrics_listen`): the status
/// code and the body. Blocking, bounded by `timeout`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), FetchError> {
    let io = |source| FetchError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            FetchError::Refused(addr)
        } else {
            io(e)
        }
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(crate::http::get(path, "vipd", &[]).as_bytes())
        .map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io)?;
    let bad = |e: crate::http::HttpError| FetchError::Bad {
        addr,
        msg: format!("not an HTTP answer ({e}); is this vipd's metrics_listen?"),
    };
    let r = crate::http::response(&buf).map_err(bad)?;
    let body = r.body().map_err(bad)?;
    Ok((r.status, String::from_utf8_lossy(&body).into_owned()))
}

/// GET /status from a running agent: the snapshot and its JSON text.
pub fn fetch(addr: SocketAddr, timeout: Duration) -> Result<(Status, String), FetchError> {
    let (code, body) = get(addr, "/status", timeout)?;
    if code != 200 {
        return Err(FetchError::Bad {
            addr,
            msg: format!("HTTP {code}: {}", body.trim()),
        });
    }
    let st: Status = serde_json::from_str(&body).map_err(|e| FetchError::Bad {
        addr,
        msg: format!("unreadable status ({e}); is `vipd` the same version as the agent?"),
    })?;
    Ok((st, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        let at = 1_800_000_000_000;
        Status {
            version: "0.1.0".into(),
            node: "cp1".into(),
            interface: "eth0".into(),
            xdp_mode: "native".into(),
            xdp_attached: true,
            vip_holding: "vrrp".into(),
            started_unix_ms: at - 3_600_000,
            at_unix_ms: at,
            vrrp: vec![VrrpStatus {
                family: "ipv4".into(),
                vrid: 51,
                state: "master".into(),
                priority: 100,
                configured_priority: 150,
                held: None,
                source: "10.0.0.11".parse().expect("ip"),
                vips: vec!["10.0.0.100".parse().expect("ip")],
                master: Some("10.0.0.11".parse().expect("ip")),
                peers: vec![PeerStatus {
                    address: "10.0.0.12".parse().expect("ip"),
                    priority: 120,
                    last_heard_unix_ms: at - 100,
                }],
                last_change: Some(ChangeStatus {
                    at_unix_ms: at - 12_000,
                    from: "backup".into(),
                    to: "master".into(),
                    why: "no master heard for the master-down interval".into(),
                }),
                last_failover: Some(FailoverStatus {
                    at_unix_ms: at - 12_000,
                    took_ms: 342,
                    from: "10.0.0.12".parse().expect("ip"),
                    why: "no master heard for the master-down interval".into(),
                }),
            }],
            announce: vec![],
            services: vec![ServiceStatus {
                vip: "10.0.0.100".parse().expect("ip"),
                port: 6443,
                protocol: "tcp".into(),
                mode: "dsr".into(),
                vip_here: true,
                fail_open: false,
                backends: vec![
                    BackendStatus {
                        address: "10.0.0.11:6443".parse().expect("addr"),
                        local: true,
                        encap: None,
                        state: "up".into(),
                        serving: true,
                        cert: "ok".into(),
                        last_probe: Some("up".into()),
                        probe_latency_ms: Some(2.25),
                        flows: Some(12),
                        new_flows: 340,
                        packets: 9000,
                        bytes: 3 << 20,
                        rsts: 0,
                        last_change: None,
                        version: Some("v1.31.2".into()),
                    },
                    BackendStatus {
                        address: "10.0.0.12:6443".parse().expect("addr"),
                        local: false,
                        encap: Some("ipip".into()),
                        state: "down".into(),
                        serving: false,
                        cert: "ok".into(),
                        last_probe: Some("timeout".into()),
                        probe_latency_ms: Some(1000.0),
                        flows: Some(0),
                        new_flows: 17,
                        packets: 40,
                        bytes: 900,
                        rsts: 3,
                        last_change: Some(BackendChange {
                            at_unix_ms: at - 300_000,
                            to: "down".into(),
                            reason: "timeout".into(),
                        }),
                        version: None,
                    },
                ],
            }],
            flows: FlowStatus {
                entries: Some(12),
                capacity: 262_144,
                nat_entries: None,
                swept: 4,
                last_sweep_unix_ms: Some(at - 4_000),
            },
            sync: Some(SyncStatus {
                sent: 120,
                received: 7,
                applied: 6,
                rejected: [("conflict".to_owned(), 1)].into(),
                lost: Default::default(),
            }),
            version_skew: None,
            etcd_snapshot: Some(EtcdSnapshotStatus {
                dir: "/var/lib/vipd/etcd-snapshots".into(),
                newest: Some("etcd-snapshot-20270115T080000Z.db".into()),
                newest_unix_ms: Some(at - 7_200_000),
                newest_bytes: Some(4_202_528),
                last_error: None,
            }),
            discovery: Some(DiscoveryStatus {
                source: "cache".into(),
                last_sync_unix_ms: Some(at - 60_000),
                last_error: Some("https://10.0.0.11:6443: connection refused".into()),
                cache: "/var/lib/vipd/backends.json".into(),
                candidates: vec![(
                    "10.0.0.14:6443".into(),
                    "its certificate lacks IP:10.0.0.100".into(),
                )],
            }),
        }
    }

    #[test]
    fn json_round_trips() {
        let s = sample();
        let j = serde_json::to_string(&s).expect("json");
        let back: Status = serde_json::from_str(&j).expect("parse");
        assert_eq!(back, s);
        // Field names are part of the interface scripts use.
        for key in [
            "\"state\":\"master\"",
            "\"took_ms\":342",
            "\"probe_latency_ms\":2.25",
            "\"flows\":12",
        ] {
            assert!(j.contains(key), "{key} missing in {j}");
        }
    }

    #[test]
    fn the_table_says_what_an_operator_looks_for() {
        let t = sample().render();
        for want in [
            "vipd 0.1.0 on cp1: interface eth0, XDP native, up 60 m",
            "VRRP ipv4 vrid 51: MASTER, priority 100 (configured 150), source 10.0.0.11, VIPs 10.0.0.100",
            "master: this node",
            "last change 12 s ago: backup -> master",
            "last failover 12 s ago: took 342 ms, from 10.0.0.12",
            "service 10.0.0.100:6443 tcp mode dsr: VIP on this node, 1/2 backends serving",
            "flows: 12 of 262144 (0.0% full), 4 expired entries swept, counted 4 s ago",
            "state sync: 120 records sent, 7 received, 6 applied; refused: 1 conflict; lost: none",
            "etcd snapshot: newest /var/lib/vipd/etcd-snapshots/etcd-snapshot-20270115T080000Z.db (4202528 bytes), written 2 h ago",
            "discovery: backends from cache (kubernetes EndpointSlices last read 60 s ago; cache /var/lib/vipd/backends.json)",
            "  the apiserver cannot be read, the last known set stays: https://10.0.0.11:6443: connection refused",
            "  listed, not admitted: 10.0.0.14:6443: its certificate lacks IP:10.0.0.100",
        ] {
            assert!(t.contains(want), "{want:?} missing in:\n{t}");
        }
        // Columns line up: every backend row starts its STATE column where
        // the header's does.
        let header = t.lines().find(|l| l.contains("BACKEND")).expect("header");
        let col = header.find("STATE").expect("STATE");
        for row in t
            .lines()
            .filter(|l| l.contains(":6443 ") && !l.contains("service"))
        {
            let state = &row[col..];
            assert!(
                state.starts_with("up") || state.starts_with("down"),
                "misaligned row {row:?}"
            );
        }
        assert!(t.contains("5 m ago (down: timeout)"), "{t}");
        assert!(t.contains("3.0 MiB"), "{t}");
        assert!(t.contains("10.0.0.11:6443 (local)"), "{t}");
        assert!(t.contains("v1.31.2"), "each apiserver's version: {t}");
        assert!(!t.contains("WARNING"), "{t}");
        let mut skewed = sample();
        skewed.version_skew =
            Some("apiserver version skew: A runs v1.31.2 and B runs v1.33.0".into());
        let t = skewed.render();
        assert!(
            t.contains("WARNING: apiserver version skew: A runs v1.31.2 and B runs v1.33.0"),
            "{t}"
        );
        assert!(
            t.contains(" (ipip)"),
            "an encapsulated backend says so: {t}"
        );
    }

    #[test]
    fn announced_routes_say_why_they_are_withdrawn() {
        let mut s = sample();
        s.vip_holding = "announce".into();
        s.vrrp.clear();
        let at = s.at_unix_ms;
        s.announce = vec![
            RouteStatus {
                installed: true,
                since_unix_ms: Some(at - 12_000),
                ..RouteStatus::new("10.0.0.100".parse().expect("ip"), 198)
            },
            RouteStatus {
                since_unix_ms: Some(at - 3_000),
                reason: Some("no_backend".into()),
                why: Some("no backend passes its probe".into()),
                withdrawals: [("no_backend".to_owned(), 2)].into(),
                ..RouteStatus::new("10.0.0.101".parse().expect("ip"), 198)
            },
            RouteStatus {
                blocked_by: Some("blackhole fd00::100/128 table 198 proto 4".into()),
                ..RouteStatus::new("fd00::100".parse().expect("ip"), 198)
            },
        ];
        let t = s.render();
        for want in [
            "VIPs held by announcing their routes (table 198):",
            "10.0.0.100  installed  12 s ago",
            "10.0.0.101  WITHDRAWN  3 s ago   no backend passes its probe",
            "fd00::100   BLOCKED    -         someone else's route holds it: blackhole",
        ] {
            assert!(t.contains(want), "{want:?} missing in:\n{t}");
        }
        let j = serde_json::to_string(&s).expect("json");
        let back: Status = serde_json::from_str(&j).expect("parse");
        assert_eq!(back, s);
        // A snapshot of an older vipd (no `announce`) still reads.
        let mut v: serde_json::Value = serde_json::from_str(&j).expect("value");
        v.as_object_mut().expect("object").remove("announce");
        let old: Status = serde_json::from_value(v).expect("older snapshot");
        assert!(old.announce.is_empty());
    }

    #[test]
    fn trouble_is_shouted() {
        let mut s = sample();
        s.xdp_attached = false;
        s.vrrp[0].held = Some("the certificate lacks 10.0.0.100".into());
        s.vrrp[0].master = None;
        s.vrrp[0].peers.clear();
        s.vrrp[0].last_failover = None;
        s.services[0].fail_open = true;
        s.flows.entries = None;
        let t = s.render();
        for want in [
            "NOT ATTACHED",
            "HELD OUT of the election: the certificate lacks 10.0.0.100",
            "master: none heard",
            "peers: none heard",
            "last failover: none by this node",
            "FAIL OPEN",
            "flows: not counted yet",
        ] {
            assert!(t.contains(want), "{want:?} missing in:\n{t}");
        }
    }

    #[test]
    fn wildcard_listens_are_reached_on_loopback() {
        assert_eq!(
            reach("0.0.0.0:9590".parse().expect("a")),
            "127.0.0.1:9590".parse::<SocketAddr>().expect("a")
        );
        assert_eq!(
            reach("[::]:9590".parse().expect("a")),
            "[::1]:9590".parse::<SocketAddr>().expect("a")
        );
        assert_eq!(
            reach("10.0.0.1:9590".parse().expect("a")),
            "10.0.0.1:9590".parse::<SocketAddr>().expect("a")
        );
    }

    #[test]
    fn fetch_names_the_fix_when_nothing_listens() {
        // Bind and drop: the port is free, so the connect is refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = fetch(addr, Duration::from_secs(1)).expect_err("nothing listens");
        assert!(matches!(e, FetchError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("--address"), "{e}");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(850), "850 ms");
        assert_eq!(span(12_000), "12 s");
        assert_eq!(span(300_000), "5 m");
        assert_eq!(span(3 * 3_600_000), "3 h");
        assert_eq!(span(3 * 86_400_000), "3 d");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
