//! Writing the vipd YAML: the probe a pool's checks become, the services,
//! the `vrrp:` section, and the comments that explain each.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use super::{
    Options,
    explain::{Skip, not_carried, why},
    haproxy::{Pool, Server},
    keepalived::Keepalived,
};
use crate::config::{Mode, ProbeSettings, TlsName, format_duration, format_mac};

/// The probe as written, and the comments that explain it.
pub(super) struct ProbeOut {
    pub(super) settings: ProbeSettings,
    pub(super) remarks: Vec<String>,
}

fn fmt_ms(ms: u64) -> String {
    format_duration(Duration::from_millis(ms))
}

fn no_check_remark(file: &str, s: &Server) -> String {
    format!(
        "server {} ({file}:{}) had no `check`: HAProxy never took it out; vipd probes every backend",
        s.name, s.line
    )
}

pub(super) fn probe_for(file: &str, pool: &Pool, skipped: &mut BTreeSet<Skip>) -> ProbeOut {
    let mut remarks = vec![];
    let mut p = ProbeSettings::default();
    // vipd's defaults, for what HAProxy left unset.
    let defaults = p.clone();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let Some(first) = pool.servers.first() else {
        return ProbeOut {
            settings: p,
            remarks,
        };
    };
    let pool_at = format!("{file}:{}", pool.line);
    // One probe per service: the first server's settings; a server that
    // differs is noted where it differs.
    for s in pool.servers.iter().skip(1) {
        if (s.inter_ms, s.fall, s.rise) != (first.inter_ms, first.fall, first.rise) {
            skipped.insert(Skip::new(
                s.line,
                format!("server {} check timing", s.name),
                why::PROBE_ALIKE,
            ));
        }
        if !s.checked {
            remarks.push(no_check_remark(file, s));
        }
    }
    if !first.checked {
        remarks.push(no_check_remark(file, first));
    }
    let https = pool.httpchk.is_some() && (pool.connect_ssl || first.tls_check);
    match (&pool.uri, pool.httpchk) {
        (Some((uri, line)), _) if uri != "/readyz" => remarks.push(format!(
            "HAProxy checked {uri} ({file}:{line}). {}; /healthz stays green until the end and is deprecated",
            why::READYZ
        )),
        (_, Some(line)) if !https => remarks.push(format!(
            "HAProxy's check ({file}:{line}) spoke plain HTTP; vipd probes GET /readyz over TLS, as the apiserver serves it"
        )),
        (None, Some(line)) => remarks.push(format!(
            "HAProxy checked / ({file}:{line}). {}",
            why::READYZ
        )),
        (_, None) => remarks.push(format!(
            "HAProxy only checked that the port accepts TCP ({pool_at}); vipd probes GET /readyz over TLS, which also sees an apiserver that is up but not ready (set `type: tcp` to keep the old check)"
        )),
        _ => {}
    }
    p.path = "/readyz".into();
    match &first.ca {
        Some(ca) => {
            p.ca = ca.into();
            remarks.push(format!(
                "the CA is HAProxy's ca-file ({file}:{}); the name checked is `kubernetes`, in every kubeadm apiserver certificate",
                first.line
            ));
        }
        None if first.verify_none || pool.connect_ssl || first.tls_check => remarks.push(format!(
            "HAProxy did not verify the apiservers' certificates (`verify none`, {file}:{}); vipd verifies them against the cluster CA /etc/kubernetes/pki/ca.crt for the name `kubernetes` (the defaults; every kubeadm apiserver certificate has it): set probe.ca if your CA is elsewhere",
            first.line
        )),
        None => {}
    }
    if let Some(sni) = &first.sni {
        match TlsName::parse(sni) {
            Ok(n) => p.server_name = n,
            Err(e) => remarks.push(format!(
                "HAProxy's check-sni ({file}:{}): {e}; the name checked is `kubernetes`, in every kubeadm apiserver certificate",
                first.line
            )),
        }
    }
    let mut interval = first.inter_ms.unwrap_or(ms(defaults.interval));
    if interval < 100 {
        remarks.push(format!(
            "HAProxy's inter {} is below vipd's floor: the probe runs every 100ms",
            fmt_ms(interval)
        ));
        interval = 100;
    }
    if first.inter_ms.is_none() {
        remarks.push(
            "HAProxy's check timing was its default (inter 2s, fall 3, rise 2); vipd's defaults are written instead (1s, 2, 2): they take a draining apiserver out within 2.2s, inside its default --shutdown-delay-duration".into(),
        );
    }
    let mut timeout = pool.timeout_check_ms.unwrap_or(ms(defaults.timeout));
    if timeout > interval || timeout == 0 {
        if pool.timeout_check_ms.is_some() {
            remarks.push(format!(
                "HAProxy's `timeout check {}` is cut to the probe interval: a probe never outlives its interval, so a hung apiserver does not delay its own next probe",
                fmt_ms(timeout)
            ));
        }
        timeout = interval;
    }
    let (mut fall, mut rise) = (
        first.fall.unwrap_or(defaults.fall),
        first.rise.unwrap_or(defaults.rise),
    );
    if fall > 100 || rise > 100 {
        remarks.push("fall and rise are capped at 100 probes".into());
        fall = fall.min(100);
        rise = rise.min(100);
    }
    p.interval = Duration::from_millis(interval);
    p.timeout = Duration::from_millis(timeout);
    p.jitter = Duration::from_millis(100.min(interval / 2));
    p.fall = fall;
    p.rise = rise;
    if p.check().is_ok() && p.worst_fast_fail() > p.apiserver_shutdown_delay {
        remarks.push(format!(
            "with this timing a draining apiserver can get new flows for up to {}ms, longer than the {} --shutdown-delay-duration assumed in apiserver_shutdown_delay; vipd warns at start. interval 1s, fall 2 take it out within 2.2s",
            p.worst_fast_fail().as_millis(),
            format_duration(p.apiserver_shutdown_delay)
        ));
    }
    ProbeOut {
        settings: p,
        remarks,
    }
}

/// A YAML scalar: plain where it cannot be misread, else a JSON string
/// (valid YAML).
pub(super) fn q(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'_' | b'-'))
        && s.bytes().any(|b| b.is_ascii_alphabetic() || b == b'/')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "yes" | "no" | "true" | "false" | "on" | "off" | "null" | "y" | "n" | "~"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
    }
}

pub(super) fn ha_show(a: IpAddr, port: Option<u16>) -> String {
    match (a, port) {
        (IpAddr::V4(_), Some(p)) => format!("{a}:{p}"),
        (IpAddr::V6(_), Some(p)) => format!("[{a}]:{p}"),
        (_, None) => a.to_string(),
    }
}

pub(super) fn ip(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => a.to_string(),
        IpAddr::V6(_) => format!("\"{a}\""),
    }
}

/// The YAML being written.
#[derive(Default)]
pub(super) struct Out(pub(super) String);

impl Out {
    pub(super) fn line(&mut self, indent: usize, text: impl AsRef<str>) {
        self.0.push_str(&" ".repeat(indent));
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
    pub(super) fn comment(&mut self, indent: usize, text: impl AsRef<str>) {
        self.line(indent, format!("# {}", text.as_ref()));
    }
    pub(super) fn skipped(&mut self, indent: usize, file: &str, skips: &BTreeSet<Skip>) {
        for s in skips {
            self.comment(indent, not_carried(file, s.line, &s.text, s.why));
        }
    }
}

/// One service as it will be written.
pub(super) struct ServiceOut {
    pub(super) vip: IpAddr,
    pub(super) port: u16,
    pub(super) remarks: Vec<String>,
    pub(super) probe: ProbeOut,
    pub(super) backends: Vec<BackendOut>,
}

pub(super) struct BackendOut {
    pub(super) addr: IpAddr,
    pub(super) port: Option<u16>,
    pub(super) mac: Option<[u8; 6]>,
    pub(super) local: bool,
}

/// What convert decided, ready to be written.
pub(super) struct Plan {
    /// The VIPs, each with its keepalived.conf line.
    pub(super) vips: Vec<(IpAddr, Option<usize>)>,
    /// How this node was recognised among the backends.
    pub(super) local_from: String,
    pub(super) interface: String,
    /// Comments for the top of the file.
    pub(super) top_remarks: Vec<String>,
    pub(super) services: Vec<ServiceOut>,
    /// haproxy.cfg's settings not carried over.
    pub(super) ha_skipped: BTreeSet<Skip>,
    /// Whether a backend is this node.
    pub(super) any_local: bool,
    /// The other nodes (name, keepalived.conf's name, its content): the
    /// priorities go under `nodes:`.
    pub(super) others: Vec<(String, String, Keepalived)>,
}

/// The YAML of `plan`, comments included.
pub(super) fn write_config(opts: &Options, ka: Option<&Keepalived>, plan: &Plan) -> String {
    let mut out = Out::default();
    write_header(&mut out, opts, plan);
    out.line(0, format!("interface: {}", q(&plan.interface)));
    if let Some(k) = ka {
        out.skipped(0, opts.ka_file(), &k.skipped);
        write_vrrp(&mut out, k, opts.ka_file(), plan, opts);
        if !plan.others.is_empty() {
            write_nodes(&mut out, k, plan, opts);
        }
    } else {
        out.comment(
            0,
            "No keepalived.conf: no VRRP election. vipd serves the VIP where the interface already has it; set `hold_vips: true` to have vipd add it, or add a `vrrp:` section to elect a holder.",
        );
    }
    if opts.mode == Mode::Nat {
        out.comment(
            0,
            "Mode nat: the apiservers see connections from this node's address (snat: node, the default), as they did from HAProxy.",
        );
    }
    out.line(0, "services:");
    if opts.haproxy.is_some() {
        out.skipped(2, opts.ha_file(), &plan.ha_skipped);
    }
    for s in &plan.services {
        write_service(&mut out, opts, s);
    }
    out.0
}

/// Where the file came from, what to read in it, and the remarks that
/// concern it as a whole.
fn write_header(out: &mut Out, opts: &Options, plan: &Plan) {
    let local_from = &plan.local_from;
    let from: Vec<String> = [&opts.keepalived, &opts.haproxy]
        .into_iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    out.comment(
        0,
        format!(
            "vipd configuration written by `vipd import` (vipd {}) from {}.",
            env!("CARGO_PKG_VERSION"),
            from.join(" and ")
        ),
    );
    let mode = match opts.mode {
        Mode::Dsr => "dsr (stacked: vipd on every control-plane node)",
        Mode::Nat => "nat (dedicated load-balancer nodes)",
    };
    if plan.others.is_empty() {
        out.comment(0, format!("Mode {mode}; this node: {local_from}."));
    } else {
        out.comment(
            0,
            format!(
                "Mode {mode}; one file for every node, nothing in it is one node's: each node's own apiserver is the backend with its address{}.",
                if opts.mode == Mode::Dsr {
                    ", and vipd reads the other nodes' MACs from its neighbour table"
                } else {
                    ""
                }
            ),
        );
    }
    out.comment(
        0,
        "Each setting that was not carried over is a `not carried over: FILE:LINE` comment with the reason; read them, then check the file with `vipd check-config FILE`.",
    );
    if opts.mode == Mode::Dsr && !plan.any_local {
        out.comment(
            0,
            format!(
                "No server is this node ({local_from}). Mode dsr needs vipd on every apiserver node; on dedicated load-balancer nodes import with --mode nat."
            ),
        );
    }
    for r in &plan.top_remarks {
        out.comment(0, r);
    }
}

/// One entry of `services:`.
fn write_service(out: &mut Out, opts: &Options, s: &ServiceOut) {
    for r in &s.remarks {
        out.comment(2, r);
    }
    let endpoint = match s.vip {
        IpAddr::V4(_) => format!("{}:{}", s.vip, s.port),
        IpAddr::V6(_) => format!("[{}]:{}", s.vip, s.port),
    };
    out.line(
        2,
        format!("- vip: {}    # controlPlaneEndpoint: {endpoint}", ip(s.vip)),
    );
    out.line(4, format!("port: {}", s.port));
    out.line(
        4,
        match opts.mode {
            Mode::Dsr => "mode: dsr",
            Mode::Nat => "mode: nat",
        },
    );
    out.line(4, "probe:");
    for r in &s.probe.remarks {
        out.comment(6, r);
    }
    let p = &s.probe.settings;
    let d = ProbeSettings::default();
    out.line(6, format!("path: {}", q(&p.path)));
    if p.ca != d.ca {
        out.line(6, format!("ca: {}", q(&p.ca.to_string_lossy())));
    }
    if p.server_name != d.server_name {
        out.line(6, format!("server_name: {}", q(p.server_name.as_str())));
    }
    out.line(6, format!("interval: {}", format_duration(p.interval)));
    out.line(6, format!("timeout: {}", format_duration(p.timeout)));
    if p.jitter != d.jitter {
        out.line(6, format!("jitter: {}", format_duration(p.jitter)));
    }
    out.line(6, format!("fall: {}", p.fall));
    out.line(6, format!("rise: {}", p.rise));
    out.line(4, "backends:");
    for b in &s.backends {
        let mut fields = vec![format!("address: {}", ip(b.addr))];
        if let Some(p) = b.port {
            fields.push(format!("port: {p}"));
        }
        if let Some(m) = b.mac {
            fields.push(format!("mac: \"{}\"", format_mac(&m)));
        }
        // One file for every node leaves it out: each node's own backend
        // is the one with its address.
        if b.local && opts.other_nodes.is_empty() {
            fields.push("local: true".into());
        }
        out.line(6, format!("- {{ {} }}", fields.join(", ")));
    }
}

/// The `vrrp:` section from keepalived's first vrrp_instance.
fn write_vrrp(out: &mut Out, k: &Keepalived, file: &str, plan: &Plan, opts: &Options) {
    let (vips, any_local) = (plan.vips.as_slice(), plan.any_local);
    out.line(0, "vrrp:");
    let (vrid, _) = k
        .vrid
        .expect("convert refuses a vrrp_instance without virtual_router_id");
    out.line(2, format!("vrid: {vrid}"));
    if plan.others.is_empty() {
        let (priority, remark) = priority_of(k, owner(vips, opts));
        if let Some(r) = remark {
            out.comment(2, r);
        }
        out.line(2, format!("priority: {priority}"));
    } else {
        out.comment(2, "priority: per node, under nodes: below");
    }
    write_advert_interval(out, k, file);
    match k.nopreempt {
        Some(line) => {
            out.comment(2, format!("nopreempt ({file}:{line})"));
            out.line(2, "preempt: false");
        }
        None => out.line(2, "preempt: true"),
    }
    if let Some(ms) = k.preempt_delay_ms {
        out.line(2, format!("preempt_delay: {}", fmt_ms(ms)));
    }
    write_peers(out, k, file, &plan.others, vips);
    match k.version {
        Some((3, _)) => {}
        Some((v, line)) => out.comment(
            2,
            not_carried(file, line, format!("vrrp_version {v}"), why::VERSION2),
        ),
        None => out.comment(
            2,
            format!(
                "keepalived spoke VRRPv2 (its default: no vrrp_version 3 in {file}); {}",
                why::VERSION2
            ),
        ),
    }
    if k.garp_repeat.is_some() || k.garp_refresh_ms.is_some() {
        out.line(2, "announce:");
        if let Some(n) = k.garp_repeat {
            out.line(4, format!("count: {n}"));
        }
        if let Some(ms) = k.garp_refresh_ms {
            out.line(4, format!("refresh: {}", fmt_ms(ms)));
        }
    }
    write_track(out, k, file, any_local);
}

/// Whether every VIP is a real address of this host.
fn owner(vips: &[(IpAddr, Option<usize>)], opts: &Options) -> bool {
    vips.iter()
        .all(|(v, _)| opts.host.iter().any(|h| h.addr == *v))
}

/// `nodes:`, one entry per keepalived.conf: this node's and the others',
/// each with its priority, and its interface where it differs from the
/// top-level one. One file then serves every node; NODE_NAME (else the
/// hostname) picks the entry.
fn write_nodes(out: &mut Out, mine: &Keepalived, plan: &Plan, opts: &Options) {
    out.comment(
        0,
        "One file for every node: each node finds its entry by NODE_NAME (the DaemonSet sets it), else its hostname; the other settings are this node's keepalived.conf's.",
    );
    out.line(0, "nodes:");
    let this = (
        opts.node_name.as_str(),
        opts.ka_file(),
        mine,
        owner(&plan.vips, opts),
    );
    let others = plan
        .others
        .iter()
        .map(|(n, f, k)| (n.as_str(), f.as_str(), k, false));
    for (name, file, k, owns) in std::iter::once(this).chain(others) {
        let (priority, remark) = priority_of(k, owns);
        if let Some(r) = remark {
            out.comment(2, format!("{name}: {r}"));
        }
        let mut fields = vec![format!("priority: {priority}")];
        if let Some((i, _)) = &k.interface
            && *i != plan.interface
        {
            fields.push(format!("interface: {}", q(i)));
        }
        out.line(
            2,
            format!("{}: {{ {} }}    # {file}", q(name), fields.join(", ")),
        );
    }
}

/// Priority: keepalived's (default 100), plus the bonus of a positive
/// track_script weight (see [`write_track`]), with a remark when it had to
/// change. `owner`: the VIPs are real addresses of that node.
fn priority_of(k: &Keepalived, owner: bool) -> (u16, Option<String>) {
    let base = k.priority.map_or(100, |p| p.0);
    let bonus: u16 = k
        .tracked
        .iter()
        .filter(|t| t.weight > 0)
        .map(|t| u16::try_from(t.weight).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let priority = u16::from(base) + bonus;
    // 255 makes vipd the address owner (RFC 9568): Master at once, the VIP
    // never removed. Only right when the VIP is a real address of this node.
    if priority >= 255 && !(base == 255 && bonus == 0 && owner) {
        return (
            254,
            Some(format!(
                "priority {priority} lowered to 254: 255 means the address owner (RFC 9568), which vipd takes to mean the VIP is a real address of this node, never removed"
            )),
        );
    }
    (priority, None)
}

/// `advert_int`, in VRRPv3's centiseconds, or vipd's default when unset.
fn write_advert_interval(out: &mut Out, k: &Keepalived, file: &str) {
    match k.advert_ms {
        Some((ms, line)) => {
            let cs = ms.div_ceil(10).clamp(2, 4095);
            if cs * 10 != ms {
                out.comment(
                    2,
                    not_carried(
                        file,
                        line,
                        format!("advert_int {}", fmt_ms(ms)),
                        format!("{}; {} is used", why::ADVERT_ROUNDED, fmt_ms(cs * 10)),
                    ),
                );
            }
            if cs * 10 > 100 {
                out.comment(
                    2,
                    "vipd's default is 100ms (failover in about 0.36s; keepalived's usual 1s takes about 3.6s); lower it on every node once keepalived is gone",
                );
            }
            out.line(2, format!("advert_interval: {}", fmt_ms(cs * 10)));
        }
        None => {
            out.comment(
                2,
                "keepalived's advert_int was unset (1s: failover in about 3.6s); vipd's default 100ms is written (about 0.36s). VRRPv3 backups follow the master's interval, so nodes may differ while you move",
            );
            out.line(2, "advert_interval: 100ms");
        }
    }
}

/// `unicast_peer`s of an address family that has a VIP. One file for every
/// node (`--other-node`) lists the union of every node's peers: each file
/// names the others, so the union is the whole group, and each node's vipd
/// leaves its own address out when it resolves the file (config/node.rs).
/// This node's list alone would name this node on the others and miss it
/// on itself.
fn write_peers(
    out: &mut Out,
    k: &Keepalived,
    file: &str,
    others: &[(String, String, Keepalived)],
    vips: &[(IpAddr, Option<usize>)],
) {
    let families: BTreeSet<bool> = vips.iter().map(|(v, _)| v.is_ipv4()).collect();
    let all = std::iter::once((file, k)).chain(others.iter().map(|(_, f, k)| (f.as_str(), k)));
    let (mut peers, mut seen) = (Vec::<IpAddr>::new(), BTreeSet::new());
    for (file, k) in all {
        for (p, line) in &k.peers {
            if !seen.insert(*p) {
                continue;
            }
            if !families.contains(&p.is_ipv4()) {
                out.comment(2, not_carried(file, *line, p, why::PEER_FAMILY));
                continue;
            }
            if matches!(p, IpAddr::V6(v6) if !v6.is_unicast_link_local()) {
                out.comment(2, not_carried(file, *line, p, why::PEER_NOT_LINK_LOCAL));
                continue;
            }
            peers.push(*p);
        }
    }
    if !peers.is_empty() {
        out.line(
            2,
            format!(
                "unicast_peers: [{}]",
                peers.iter().map(|p| ip(*p)).collect::<Vec<_>>().join(", ")
            ),
        );
    }
}

/// track_script: vipd probes the local apiserver itself; the script's
/// weight says how much the priority drops.
fn write_track(out: &mut Out, k: &Keepalived, file: &str, any_local: bool) {
    let mut fall_by: u16 = 0;
    for t in &k.tracked {
        let what = format!(
            "vrrp_script {} ({file}:{}{})",
            t.name,
            t.line,
            t.script
                .as_ref()
                .map_or(String::new(), |s| format!(", \"{s}\""))
        );
        let w = t.weight.unsigned_abs().min(254);
        let w = u16::try_from(w).unwrap_or(254);
        let (d, text) = match t.weight {
            0 => (
                254,
                format!(
                    "{what} had weight 0: a failure put keepalived in FAULT, giving up the VIP; vipd drops to priority 1, the lowest, while this node's apiserver fails its probe"
                ),
            ),
            n if n < 0 => (
                w,
                format!(
                    "{what} had weight {n}; vipd probes this node's apiserver itself and subtracts {w} while it fails"
                ),
            ),
            n => (
                w,
                format!(
                    "{what} had weight +{n} (added while it passed); vipd only subtracts, so the priority above includes the {n} and {n} is subtracted while this node's apiserver fails its probe"
                ),
            ),
        };
        fall_by = fall_by.max(d);
        out.comment(2, text);
    }
    if k.tracked.is_empty() && any_local {
        out.comment(
            2,
            "keepalived tracked no script; vipd lowers the priority by track.local_apiserver (default 50) while this node's apiserver fails its probe",
        );
    }
    if !k.tracked.is_empty() {
        if !any_local {
            out.comment(
                2,
                "no backend is this node, so track.local_apiserver has nothing to track",
            );
        }
        out.line(2, "track:");
        out.line(4, format!("local_apiserver: {}", fall_by.min(254)));
    }
}
