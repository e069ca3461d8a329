//! `vipd import`: turns an existing Keepalived + HAProxy pair (the shape of the
//! kubeadm HA recipe, kubeadm `docs/ha-considerations.md`) into a vipd
//! configuration.
//!
//! The converter is pure: the caller hands it the files' text, this host's
//! addresses and a neighbour-table lookup, so that tests are deterministic.
//! Every setting it does not carry over becomes a comment in the output,
//! `# not carried over: FILE:LINE: TEXT (WHY)`; a setting carried over with a
//! change gets a comment above it saying what changed and why. The output is
//! parsed with vipd's own [`Config`] before it is returned: `vipd import` never
//! hands out a file that `vipd run` would refuse.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Display,
    net::{IpAddr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use thiserror::Error;

use crate::{
    config::{Config, ConfigError, Mode, ProbeSettings, format_mac, parse_mac},
    host::{self, HostError},
    status::join,
};

/// One input file: the name used in comments and errors, and its text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// An address of this host and the interface it is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr {
    pub interface: String,
    pub addr: IpAddr,
}

/// The kernel's neighbour table (ARP for IPv4, NDP for IPv6), behind a trait so
/// that tests inject it.
pub trait Neighbours {
    /// The MAC of `addr` on `interface`, if the table has a complete entry.
    fn mac(&self, interface: &str, addr: IpAddr) -> Option<[u8; 6]>;
}

/// A fixed table, for tests and for callers that know the MACs already.
impl Neighbours for BTreeMap<IpAddr, [u8; 6]> {
    fn mac(&self, _interface: &str, addr: IpAddr) -> Option<[u8; 6]> {
        self.get(&addr).copied()
    }
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub keepalived: Option<Source>,
    pub haproxy: Option<Source>,
    /// `dsr` for the stacked shape (the recipe's: vipd on every control-plane
    /// node), `nat` for dedicated load-balancer nodes.
    pub mode: Mode,
    /// This node's address: the backend with it is `local: true`.
    pub node_address: Option<IpAddr>,
    /// Overrides keepalived's `interface`; needed without a keepalived file
    /// when no address of this host tells.
    pub interface: Option<String>,
    /// VIPs when there is no keepalived file.
    pub vips: Vec<IpAddr>,
    /// Backends (address, port) when there is no haproxy file.
    pub backends: Vec<(IpAddr, Option<u16>)>,
    /// MACs given on the command line; they win over the neighbour table.
    pub macs: BTreeMap<IpAddr, [u8; 6]>,
    /// This host's addresses: which backend is local (without
    /// `--node-address` or `unicast_src_ip`), which interface carries the
    /// VIP (without keepalived), and whether this node owns the VIP.
    pub host: Vec<HostAddr>,
}

/// The converted configuration.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The YAML text, comments included.
    pub yaml: String,
    /// The same, as vipd parsed it.
    pub config: Config,
    /// How many `# not carried over` comments it holds.
    pub not_carried_over: usize,
}

#[derive(Debug, Error)]
pub enum ImportError {
    /// The input is not valid in its own format.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    /// The input is valid but says something vipd cannot do.
    #[error("{file}:{line}: {message}")]
    Unsupported {
        file: String,
        line: usize,
        message: String,
    },
    /// Something vipd needs is in none of the inputs.
    #[error("{what}: not found in {place}; {fix}")]
    Missing {
        what: String,
        place: String,
        fix: String,
    },
    /// Command-line options that contradict each other or the inputs.
    #[error("{flag}: {message}")]
    Usage { flag: &'static str, message: String },
    #[error(
        "mode dsr forwards to the other apiserver nodes by MAC address, and the neighbour table of this node has none for {list} on {interface}. Fix it one of three ways: ping each once from this node ({pings}) and run `vipd import` again; pass `--mac ADDR=MAC` for each (read it with `ip neigh show ADDR` on a node that has talked to it, or `ip link show {interface}` on that node); or use `--mode nat`, which needs no MACs",
        list = join(.addrs),
        pings = .addrs.iter().map(|a| format!("`ping -c 1 {a}`")).collect::<Vec<_>>().join(", ")
    )]
    MacUnknown {
        interface: String,
        addrs: Vec<IpAddr>,
    },
    #[error(
        "the converted configuration would be refused by vipd ({source}); this is a bug in `vipd import` or an input it cannot express: please report it with the input files"
    )]
    Refused {
        #[source]
        source: ConfigError,
    },
}

fn syntax(file: &str, line: usize, message: impl Into<String>) -> ImportError {
    ImportError::Syntax {
        file: file.to_owned(),
        line,
        message: message.into(),
    }
}

fn unsupported(file: &str, line: usize, message: impl Into<String>) -> ImportError {
    ImportError::Unsupported {
        file: file.to_owned(),
        line,
        message: message.into(),
    }
}

/// `--mode dsr|nat`.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "dsr" => Ok(Mode::Dsr),
        "nat" => Ok(Mode::Nat),
        _ => Err(format!(
            "{s:?}: use dsr (stacked control plane) or nat (dedicated load balancers)"
        )),
    }
}

/// `--mac ADDR=MAC`.
pub fn parse_mac_arg(s: &str) -> Result<(IpAddr, [u8; 6]), String> {
    let (a, m) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: write it as ADDR=MAC, like 10.0.0.11=52:54:00:00:00:11"))?;
    let addr = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not an IP address"))?;
    Ok((addr, parse_mac(m.trim())?))
}

/// `--backend ADDR[:PORT]` (IPv6 as `[ADDR]:PORT` or a bare address).
pub fn parse_backend_arg(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok((a, None));
    }
    let sa: std::net::SocketAddr = s
        .parse()
        .map_err(|_| format!("{s:?}: write it as ADDR or ADDR:PORT ([ADDR]:PORT for IPv6)"))?;
    Ok((sa.ip(), Some(sa.port())))
}

// ---------------------------------------------------------------------------
// Why each setting is not carried over. One place, so that the comments and
// the README say the same.
mod why {
    pub const STATE: &str = "VRRPv3 (RFC 9568 6.4.1) starts every node but the address owner as Backup and lets the priority decide who becomes Master";
    pub const AUTH: &str = "VRRPv3 (RFC 9568) has no authentication: it was removed because it protected nothing; keep VRRP on a trusted segment, or use unicast_peers, whose sources alone vipd accepts";
    pub const ROUTER_ID: &str =
        "names this node in keepalived's logs and mails; vipd has no equivalent";
    pub const GLOBAL: &str = "a keepalived process setting; vipd has no equivalent";
    pub const NOTIFY: &str = "vipd runs no scripts on state changes; watch vipd_vrrp_state on /metrics or vipd's log instead";
    pub const TRACK_INTERFACE: &str = "vipd tracks the link of its own interface only (link down releases the VIP); other interfaces are not watched";
    pub const TRACK_OTHER: &str = "vipd tracks only its XDP program and this node's apiserver";
    pub const SCRIPT: &str = "vipd probes this node's own apiserver itself (the `local: true` backend) and lowers its priority by track.local_apiserver while the probe fails";
    pub const SCRIPT_TIMING: &str = "the local apiserver is tracked with its probe's timing (services[].probe interval, fall, rise)";
    pub const SRC_IP: &str = "vipd sends from the interface's own address; this address was used only to find which server is this node";
    pub const VIP_OPTIONS: &str = "vipd adds each VIP to `interface` as a /32 or /128 host address, without prefix, dev, label or scope";
    pub const VIP_LINK_LOCAL: &str = "a link-local VIP: vipd advertises from the interface's own link-local address and balances routable VIPs only";
    pub const VIP_NO_BACKEND: &str =
        "no backend of this address family; vipd holds only the VIPs it balances";
    pub const EXCLUDED: &str =
        "its addresses are imported as ordinary VIPs: vipd lists every VIP in its advertisements";
    pub const SECOND_INSTANCE: &str = "vipd runs one election for all VIPs, with the first vrrp_instance's settings; only this instance's VIPs are imported";
    pub const UNTRACKED_SCRIPT: &str = "no imported vrrp_instance tracks it";
    pub const NO_SCRIPT: &str = "there is no vrrp_script of that name";
    pub const SYNC_GROUP: &str = "vipd runs one virtual router per address family on one interface; there is nothing to group";
    pub const LVS: &str =
        "keepalived's IPVS virtual servers are not read; the backends come from haproxy.cfg";
    pub const INCLUDE: &str =
        "vipd import reads one file; import the included settings by concatenating the files";
    pub const GARP_OTHER: &str = "vipd announces `vrrp.announce.count` times, `announce.interval` apart, and refreshes every `announce.refresh`";
    pub const VMAC: &str =
        "vipd answers for the VIP with the interface's own MAC, not a VRRP virtual MAC";
    pub const VERSION2: &str = "vipd speaks VRRPv3 (RFC 9568) only; keepalived nodes left on this VRID during the move must run `vrrp_version 3`, or the two will not hear each other";
    pub const ADVERT_ROUNDED: &str = "VRRPv3 carries the interval in centiseconds, 20ms..40950ms";
    pub const PEER_FAMILY: &str = "no VIP of this address family to elect a holder for";
    pub const PEER_NOT_LINK_LOCAL: &str = "not link-local: vipd sends IPv6 adverts from the link-local address (RFC 9568 5.1.2.1) and accepts a unicast peer by its link-local source; list that node's fe80:: address in vrrp.unicast_peers";
    pub const PEER_OPTION: &str = "vipd checks TTL 255 on every advert (RFC 9568 7.1)";
    pub const GENERIC: &str = "vipd has no equivalent";

    pub const HA_PROCESS: &str = "an HAProxy process setting; vipd has no equivalent";
    pub const LOG: &str = "vipd logs backend state changes, not connections; per-backend packets, flows and RSTs are on /metrics";
    pub const STATS: &str = "vipd serves its counters on /metrics (`metrics_listen`)";
    pub const TIMEOUT: &str = "vipd forwards packets and holds no proxied connections, so nothing times out but idle flows in its connection table (mode nat: nat.tcp_idle_s)";
    pub const BALANCE: &str = "vipd spreads new flows with a Maglev table that is the same on every node, so flows keep their apiserver when the VIP moves";
    pub const RETRY: &str = "no proxy retries: a flow whose backend died gets a TCP RST at once and the client reconnects to a live apiserver";
    pub const MAXCONN: &str = "vipd forwards packets; it neither caps nor queues connections";
    pub const READYZ: &str = "vipd probes /readyz: it turns red as soon as the apiserver starts shutting down (--shutdown-delay-duration), so new flows stop while it still serves";
    pub const HTTP_MODE: &str =
        "vipd balances TCP without looking inside; HTTP-mode settings have nothing to act on";
    pub const MODE_HTTP_DEFAULTS: &str =
        "vipd balances TCP; the sections it imports run in mode tcp";
    pub const ACL: &str =
        "vipd balances TCP without looking inside; it has no ACLs or request rules";
    pub const USE_BACKEND: &str = "conditional routing; only default_backend is imported";
    pub const SECTION_HTTP: &str = "the whole section: it runs in mode http, and vipd balances TCP";
    pub const SECTION_UNUSED: &str = "the whole section: no imported frontend uses it";
    pub const SECTION_OTHER: &str = "the whole section: vipd has no equivalent";
    pub const BIND_OPTION: &str =
        "vipd serves the VIP on its interface, without TLS termination or socket options";
    pub const BIND_SKIPPED: &str =
        "not an IP address with one port; vipd serves one port per service";
    pub const BIND_NOT_VIP: &str = "not a VIP; vipd balances VIPs only";
    pub const WEIGHT: &str = "Maglev gives every backend an equal share of new flows";
    pub const SLOWSTART: &str = "a backend that comes up gets its full share of new flows at once";
    pub const BACKUP: &str = "vipd has no backup servers: this one is an ordinary backend here";
    pub const DISABLED: &str = "a disabled server is not imported";
    pub const CHECK_INTERVALS: &str = "vipd probes at one interval whatever the backend's state";
    pub const CHECK_PORT: &str = "vipd probes the port it forwards to";
    pub const PROXY_PROTOCOL: &str = "vipd forwards packets unchanged; there is no PROXY header";
    pub const RESOLVE: &str = "vipd's backends are fixed IP addresses";
    pub const CLIENT_CERT: &str = "vipd's probe presents probe.client_cert and probe.client_key (two files) where anonymous /readyz is off";
    pub const TRAFFIC_TLS: &str =
        "vipd forwards the client's own TLS untouched; it opens no TLS to the backends for traffic";
    pub const EXPECT: &str =
        "vipd expects 200; 401/403 count as \"auth misconfigured\", anything else as down";
    pub const CHECK_OTHER: &str = "vipd's probe is a GET of probe.path over TLS";
    pub const PROBE_ALIKE: &str =
        "vipd probes every backend of a service alike, as the first server says";
}

/// A setting not carried over: where it was and why it goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Skip {
    line: usize,
    text: String,
    why: &'static str,
}

impl Skip {
    fn new(line: usize, text: impl Into<String>, why: &'static str) -> Self {
        Skip {
            line,
            text: text.into(),
            why,
        }
    }
}

/// The comment for a setting not carried over (without the `# `), as
/// [`Imported::not_carried_over`] counts them.
fn not_carried(file: &str, line: usize, text: impl Display, why: impl Display) -> String {
    format!("not carried over: {file}:{line}: {text} ({why})")
}

// ---------------------------------------------------------------------------
// keepalived.conf: words per line, `{`/`}` blocks (on the same line or the
// next), `#` and `!` comments, "quoted strings".

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Open,
    Close,
}

fn ka_tokens(file: &str, line: usize, text: &str) -> Result<Vec<Tok>, ImportError> {
    let mut out = vec![];
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            // A comment starts with a word that starts with # or !, so that a
            // `#` inside a password or a script argument stays.
            '#' | '!' => break,
            '{' => {
                chars.next();
                out.push(Tok::Open);
            }
            '}' => {
                chars.next();
                out.push(Tok::Close);
            }
            '"' => {
                chars.next();
                let mut w = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(ch) => w.push(ch),
                        None => {
                            return Err(syntax(
                                file,
                                line,
                                "a quoted string is not closed (a `\"` is missing)",
                            ));
                        }
                    }
                }
                out.push(Tok::Word(w));
            }
            _ => {
                // A word ends at a brace, except the braces of a `${NAME}`
                // placeholder (keepalived's own, and the recipe's template).
                let mut w = String::new();
                let mut placeholder = 0u32;
                while let Some(&ch) = chars.peek() {
                    match ch {
                        '{' if w.ends_with('$') => placeholder += 1,
                        '}' if placeholder > 0 => placeholder -= 1,
                        c if c.is_whitespace() || c == '{' || c == '}' => break,
                        _ => {}
                    }
                    w.push(ch);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

/// One statement: the words of one line, and the block that follows it.
#[derive(Debug)]
struct Stmt {
    line: usize,
    words: Vec<String>,
    block: Option<Vec<Stmt>>,
}

impl Stmt {
    fn kw(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    /// The statement as a comment shows it (a block's body is not repeated).
    fn show(&self) -> String {
        let mut s = show_words(&self.words);
        if self.block.is_some() {
            s.push_str(" { ... }");
        }
        s
    }

    fn block(&self) -> &[Stmt] {
        self.block.as_deref().unwrap_or_default()
    }
}

fn show_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if w.is_empty() || w.contains(char::is_whitespace) {
                format!("\"{w}\"")
            } else {
                w.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn ka_tree(file: &str, text: &str) -> Result<Vec<Stmt>, ImportError> {
    let mut root: Vec<Stmt> = vec![];
    // Open blocks: the statement that owns each, and the statements in it.
    let mut open: Vec<(Stmt, Vec<Stmt>)> = vec![];
    // The statement being read; it takes words until the line ends.
    let mut cur: Option<Stmt> = None;
    fn flush(cur: &mut Option<Stmt>, root: &mut Vec<Stmt>, open: &mut [(Stmt, Vec<Stmt>)]) {
        if let Some(s) = cur.take() {
            match open.last_mut() {
                Some((_, body)) => body.push(s),
                None => root.push(s),
            }
        }
    }
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        for tok in ka_tokens(file, line, raw)? {
            match tok {
                Tok::Word(w) => match &mut cur {
                    Some(s) if s.line == line => s.words.push(w),
                    _ => {
                        flush(&mut cur, &mut root, &mut open);
                        cur = Some(Stmt {
                            line,
                            words: vec![w],
                            block: None,
                        });
                    }
                },
                // The block belongs to the statement before it, on this line
                // or the one before.
                Tok::Open => match cur.take() {
                    Some(owner) => open.push((owner, vec![])),
                    None => {
                        return Err(syntax(
                            file,
                            line,
                            "`{` with no keyword before it (a block opens after a keyword like `vrrp_instance VI_1`)",
                        ));
                    }
                },
                Tok::Close => {
                    flush(&mut cur, &mut root, &mut open);
                    let Some((mut owner, body)) = open.pop() else {
                        return Err(syntax(
                            file,
                            line,
                            "`}` closes no block (one `}` too many, or a `{` is missing above)",
                        ));
                    };
                    owner.block = Some(body);
                    match open.last_mut() {
                        Some((_, parent)) => parent.push(owner),
                        None => root.push(owner),
                    }
                }
            }
        }
    }
    flush(&mut cur, &mut root, &mut open);
    if let Some((owner, _)) = open.last() {
        return Err(syntax(
            file,
            owner.line,
            format!(
                "the block of `{}` is never closed (a `}}` is missing)",
                show_words(&owner.words)
            ),
        ));
    }
    Ok(root)
}

fn ka_word<'a>(file: &str, s: &'a Stmt, i: usize) -> Result<&'a str, ImportError> {
    s.words
        .get(i)
        .map(String::as_str)
        .ok_or_else(|| syntax(file, s.line, format!("`{}` needs a value", s.kw())))
}

fn ka_int<T: TryFrom<i64>>(
    file: &str,
    s: &Stmt,
    i: usize,
    lo: i64,
    hi: i64,
) -> Result<T, ImportError> {
    let w = ka_word(file, s, i)?;
    let bad = || {
        let hint = if w.contains("${") {
            "; fill in the template's placeholders first"
        } else {
            ""
        };
        syntax(
            file,
            s.line,
            format!(
                "`{}`: {w:?} is not a whole number in {lo}..={hi}{hint}",
                s.kw()
            ),
        )
    };
    let v: i64 = w.parse().map_err(|_| bad())?;
    if v < lo || v > hi {
        return Err(bad());
    }
    T::try_from(v).map_err(|_| bad())
}

/// keepalived's seconds, which may be fractional ("1", "0.5"), in ms.
fn ka_seconds(file: &str, s: &Stmt, max_s: f64) -> Result<u64, ImportError> {
    let w = ka_word(file, s, 1)?;
    let v: f64 = w
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && (0.0..=max_s).contains(v))
        .ok_or_else(|| {
            syntax(
                file,
                s.line,
                format!(
                    "`{}`: {w:?} is not a number of seconds in 0..={max_s}",
                    s.kw()
                ),
            )
        })?;
    Ok((v * 1000.0).round() as u64)
}

/// A vrrp_script weight: what its failure (negative) or success (positive)
/// does to the priority.
fn ka_weight(file: &str, line: usize, w: &str) -> Result<i32, ImportError> {
    w.parse::<i32>()
        .ok()
        .filter(|w| (-254..=254).contains(w))
        .ok_or_else(|| {
            syntax(
                file,
                line,
                format!("`weight`: {w:?} is not a whole number in -254..=254"),
            )
        })
}

fn ka_addr(file: &str, s: &Stmt, w: &str) -> Result<IpAddr, ImportError> {
    w.parse().map_err(|_| {
        syntax(
            file,
            s.line,
            format!("`{}`: {w:?} is not an IP address", s.kw()),
        )
    })
}

/// A vrrp_script the instance tracks.
#[derive(Debug, Clone)]
struct Tracked {
    name: String,
    line: usize,
    script: Option<String>,
    weight: i32,
}

#[derive(Debug, Default)]
struct Keepalived {
    instance: Option<(String, usize)>,
    interface: Option<(String, usize)>,
    vrid: Option<(u8, usize)>,
    priority: Option<(u8, usize)>,
    advert_ms: Option<(u64, usize)>,
    nopreempt: Option<usize>,
    preempt_delay_ms: Option<u64>,
    peers: Vec<(IpAddr, usize)>,
    src_ip: Option<(IpAddr, usize)>,
    vips: Vec<(IpAddr, usize)>,
    tracked: Vec<Tracked>,
    version: Option<(u8, usize)>,
    garp_repeat: Option<u32>,
    garp_refresh_ms: Option<u64>,
    skipped: BTreeSet<Skip>,
}

impl Keepalived {
    fn skip(&mut self, s: &Stmt, why: &'static str) {
        self.skipped.insert(Skip::new(s.line, s.show(), why));
    }
}

fn parse_keepalived(src: &Source) -> Result<Keepalived, ImportError> {
    let file = src.name.as_str();
    let tree = ka_tree(file, &src.text)?;
    let mut k = Keepalived::default();
    let mut scripts: BTreeMap<&str, &Stmt> = BTreeMap::new();
    let mut instances: Vec<&Stmt> = vec![];
    for s in &tree {
        match (s.kw(), s.block.is_some()) {
            ("global_defs", true) => {
                for g in s.block() {
                    match g.kw() {
                        "vrrp_version" => k.version = Some((ka_int(file, g, 1, 2, 3)?, g.line)),
                        "vrrp_garp_master_repeat" => {
                            k.garp_repeat = Some(ka_int(file, g, 1, 1, 10_000)?);
                        }
                        "vrrp_garp_master_refresh" => {
                            k.garp_refresh_ms = Some(ka_seconds(file, g, 86_400.0)?);
                        }
                        "router_id" => k.skip(g, why::ROUTER_ID),
                        _ => k.skip(g, why::GLOBAL),
                    }
                }
            }
            ("vrrp_script", true) => {
                scripts.insert(ka_word(file, s, 1)?, s);
            }
            ("vrrp_instance", true) => instances.push(s),
            ("vrrp_sync_group", _) => k.skip(s, why::SYNC_GROUP),
            ("virtual_server" | "virtual_server_group", _) => k.skip(s, why::LVS),
            ("include", _) => k.skip(s, why::INCLUDE),
            _ => k.skip(s, why::GENERIC),
        }
    }
    let mut track_refs: Vec<(&str, Option<i32>, usize)> = vec![];
    for (n, inst) in instances.iter().enumerate() {
        let primary = n == 0;
        if primary {
            k.instance = Some((ka_word(file, inst, 1)?.to_owned(), inst.line));
        }
        for s in inst.block() {
            let kw = s.kw();
            // Every instance's VIPs are served; of the other settings, only
            // the first instance's are used (vipd has one election).
            match kw {
                "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                    if kw == "virtual_ipaddress_excluded" {
                        k.skip(s, why::EXCLUDED);
                    }
                    ka_vips(file, s, &mut k)?;
                    continue;
                }
                "interface" => {
                    let name = ka_word(file, s, 1)?;
                    match &k.interface {
                        None => k.interface = Some((name.to_owned(), s.line)),
                        Some((first, line)) if first != name => {
                            return Err(unsupported(
                                file,
                                s.line,
                                format!(
                                    "this vrrp_instance runs on {name}, the first one on {first} (line {line}); vipd serves its VIPs on one interface: import each interface's instances into their own vipd configuration"
                                ),
                            ));
                        }
                        Some(_) => {}
                    }
                    continue;
                }
                _ if !primary => {
                    k.skip(s, why::SECOND_INSTANCE);
                    continue;
                }
                _ => {}
            }
            match kw {
                "state" => k.skip(s, why::STATE),
                "virtual_router_id" => k.vrid = Some((ka_int(file, s, 1, 1, 255)?, s.line)),
                "priority" => k.priority = Some((ka_int(file, s, 1, 1, 255)?, s.line)),
                "advert_int" => {
                    let ms = ka_seconds(file, s, 255.0)?;
                    if ms == 0 {
                        return Err(syntax(file, s.line, "`advert_int` must be more than 0"));
                    }
                    k.advert_ms = Some((ms, s.line));
                }
                "nopreempt" => k.nopreempt = Some(s.line),
                "preempt" => {}
                "preempt_delay" => k.preempt_delay_ms = Some(ka_seconds(file, s, 1000.0)?),
                "unicast_src_ip" | "mcast_src_ip" => {
                    k.src_ip = Some((ka_addr(file, s, ka_word(file, s, 1)?)?, s.line));
                    k.skip(s, why::SRC_IP);
                }
                "unicast_peer" => {
                    for p in s.block() {
                        // A peer line is an address and its options; an
                        // inline block may hold several addresses.
                        let w = ka_word(file, p, 0)?;
                        let a = w.parse().map_err(|_| {
                            syntax(
                                file,
                                p.line,
                                format!("`unicast_peer`: {w:?} is not an IP address"),
                            )
                        })?;
                        k.peers.push((a, p.line));
                        let mut options = false;
                        for w in &p.words[1..] {
                            match w.parse::<IpAddr>() {
                                Ok(a) if !options => k.peers.push((a, p.line)),
                                _ => options = true,
                            }
                        }
                        if options {
                            k.skip(p, why::PEER_OPTION);
                        }
                    }
                }
                "version" => k.version = Some((ka_int(file, s, 1, 2, 3)?, s.line)),
                "authentication" => k.skip(s, why::AUTH),
                "track_script" => {
                    for t in s.block() {
                        // `name` or `name weight W`; an inline block may list
                        // several names.
                        let mut words = t.words.iter().peekable();
                        while let Some(name) = words.next() {
                            let mut weight = None;
                            if words.peek().is_some_and(|w| *w == "weight") {
                                words.next();
                                let w = words.next().ok_or_else(|| {
                                    syntax(file, t.line, "`weight` needs a value")
                                })?;
                                weight = Some(ka_weight(file, t.line, w)?);
                                if words.peek().is_some_and(|w| *w == "reverse") {
                                    words.next();
                                }
                            }
                            track_refs.push((name.as_str(), weight, t.line));
                        }
                    }
                }
                "track_interface" => k.skip(s, why::TRACK_INTERFACE),
                "track_process" | "track_file" | "track_bfd" | "track_src_ip" => {
                    k.skip(s, why::TRACK_OTHER);
                }
                kw if kw.starts_with("notify") || kw == "smtp_alert" => k.skip(s, why::NOTIFY),
                "garp_master_repeat" => k.garp_repeat = Some(ka_int(file, s, 1, 1, 10_000)?),
                "garp_master_refresh" => {
                    k.garp_refresh_ms = Some(ka_seconds(file, s, 86_400.0)?);
                }
                kw if kw.starts_with("garp_") || kw.starts_with("gna_") => {
                    k.skip(s, why::GARP_OTHER);
                }
                "use_vmac" | "vmac_xmit_base" => k.skip(s, why::VMAC),
                _ => k.skip(s, why::GENERIC),
            }
        }
    }
    // The scripts the first instance tracks; the rest are noted whole.
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for (name, weight, line) in track_refs {
        let Some(script) = scripts.get(name) else {
            k.skipped.insert(Skip::new(line, name, why::NO_SCRIPT));
            continue;
        };
        used.insert(name);
        let mut t = Tracked {
            name: name.to_owned(),
            line: script.line,
            script: None,
            weight: 0,
        };
        for s in script.block() {
            match s.kw() {
                "script" => {
                    t.script = Some(ka_word(file, s, 1)?.to_owned());
                    k.skip(s, why::SCRIPT);
                }
                "weight" => t.weight = ka_weight(file, s.line, ka_word(file, s, 1)?)?,
                "interval" | "fall" | "rise" | "timeout" => k.skip(s, why::SCRIPT_TIMING),
                _ => k.skip(s, why::GENERIC),
            }
        }
        if let Some(w) = weight {
            t.weight = w;
        }
        k.tracked.push(t);
    }
    for (name, s) in scripts {
        if !used.contains(name) {
            k.skip(s, why::UNTRACKED_SCRIPT);
        }
    }
    Ok(k)
}

fn ka_vips(file: &str, block: &Stmt, k: &mut Keepalived) -> Result<(), ImportError> {
    for v in block.block() {
        let w = ka_word(file, v, 0)?;
        let (a, prefix) = match w.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (w, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| syntax(file, v.line, format!("{w:?} is not an IP address")))?;
        let host_prefix = if addr.is_ipv4() { "32" } else { "128" };
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
            return Err(syntax(
                file,
                v.line,
                format!("{addr} is not a unicast address for a VIP"),
            ));
        }
        if matches!(addr, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80) {
            k.skip(v, why::VIP_LINK_LOCAL);
            continue;
        }
        if v.words.len() > 1 || prefix.is_some_and(|p| p != host_prefix) {
            k.skip(v, why::VIP_OPTIONS);
        }
        if !k.vips.iter().any(|(x, _)| *x == addr) {
            k.vips.push((addr, v.line));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// haproxy.cfg: sections of lines of words; `#` comments, quotes, `\` escapes.

fn ha_words(file: &str, line: usize, text: &str) -> Result<Vec<String>, ImportError> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            match c {
                c if c == q => quote = None,
                '\\' if q == '"' => cur.extend(chars.next()),
                c => cur.push(c),
            }
            continue;
        }
        match c {
            '#' if !in_word => break,
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            '"' | '\'' => {
                in_word = true;
                quote = Some(c);
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if quote.is_some() {
        return Err(syntax(
            file,
            line,
            "a quoted string is not closed (a quote is missing)",
        ));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

const HA_SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "peers",
    "resolvers",
    "userlist",
    "program",
    "http-errors",
    "ring",
    "mailers",
    "cache",
    "log-forward",
    "crt-store",
    "traces",
];

#[derive(Debug)]
struct HaLine {
    line: usize,
    words: Vec<String>,
}

impl HaLine {
    fn kw(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }
    fn word(&self, i: usize) -> &str {
        self.words.get(i).map_or("", String::as_str)
    }
}

#[derive(Debug)]
struct HaSection {
    kind: String,
    name: String,
    line: usize,
    header: String,
    body: Vec<HaLine>,
    /// The `defaults` section in force (the last one above), by index.
    defaults: Option<usize>,
}

fn ha_sections(file: &str, text: &str) -> Result<Vec<HaSection>, ImportError> {
    let mut out: Vec<HaSection> = vec![];
    let mut last_defaults = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let words = ha_words(file, line, raw)?;
        let Some(kw) = words.first() else { continue };
        if HA_SECTIONS.contains(&kw.as_str()) {
            if kw == "defaults" {
                last_defaults = Some(out.len());
            }
            out.push(HaSection {
                kind: kw.clone(),
                name: words.get(1).cloned().unwrap_or_default(),
                line,
                header: show_words(&words),
                body: vec![],
                defaults: if kw == "defaults" {
                    None
                } else {
                    last_defaults
                },
            });
            continue;
        }
        match out.last_mut() {
            Some(sec) => sec.body.push(HaLine { line, words }),
            None => {
                return Err(syntax(
                    file,
                    line,
                    format!(
                        "`{kw}` outside a section; a haproxy.cfg starts with `global`, `defaults`, `frontend`, `backend` or `listen`"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// HAProxy time: a number with an optional unit (us, ms, s, m, h, d); bare
/// numbers are milliseconds. In ms, at least 1 for a non-zero value.
fn ha_time(w: &str) -> Option<u64> {
    let split = w.find(|c: char| !c.is_ascii_digit()).unwrap_or(w.len());
    let (n, unit) = w.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "us" => n.div_ceil(1000),
        "" | "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(ms)
}

/// An HAProxy endpoint: `ADDR:PORT`, `[ADDR]:PORT`, `*:PORT`, `:PORT`,
/// `ADDR`, with an optional `ipv4@`/`ipv6@` prefix. As in HAProxy the last
/// colon separates the port; an IPv6 address alone is read whole. `None`
/// address: any.
fn ha_endpoint(s: &str) -> Result<(Option<IpAddr>, Option<u16>), String> {
    let s = ["ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"]
        .iter()
        .find_map(|p| s.strip_prefix(p))
        .unwrap_or(s);
    if s.starts_with('/') || s.contains('@') {
        return Err(format!("{s:?} is not an IP address and port"));
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: `[` without `]`"))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{s:?}: write it as [ADDR]:PORT"))?,
                ),
            ),
        }
    } else if let Some((h, p)) = s.rsplit_once(':') {
        // `fd00::11` alone: the part before the last colon is no address,
        // but the whole is.
        let bare_v6 =
            h.parse::<IpAddr>().is_err() && !matches!(h, "" | "*") && s.parse::<Ipv6Addr>().is_ok();
        if bare_v6 { (s, None) } else { (h, Some(p)) }
    } else {
        (s, None)
    };
    let addr = match host {
        "" | "*" | "0.0.0.0" | "::" => None,
        h => Some(h.parse::<IpAddr>().map_err(|_| {
            format!("{h:?} is not an IP address (vipd needs addresses; it resolves no names)")
        })?),
    };
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not one port (1..65535)"))
        })
        .transpose()?;
    Ok((addr, port))
}

/// Server options that take an argument, so that it is not read as the next
/// option.
const SERVER_OPTS_WITH_ARG: &[&str] = &[
    "addr",
    "agent-addr",
    "agent-inter",
    "agent-port",
    "agent-send",
    "alpn",
    "ca-file",
    "check-alpn",
    "check-proto",
    "check-sni",
    "ciphers",
    "ciphersuites",
    "client-sigalgs",
    "cookie",
    "crl-file",
    "crt",
    "curves",
    "downinter",
    "error-limit",
    "fall",
    "fastinter",
    "guid",
    "hash-key",
    "id",
    "init-addr",
    "inter",
    "log-proto",
    "max-reuse",
    "maxconn",
    "maxqueue",
    "minconn",
    "namespace",
    "npn",
    "observe",
    "on-error",
    "on-marked-down",
    "on-marked-up",
    "pool-conn-name",
    "pool-low-conn",
    "pool-max-conn",
    "pool-purge-delay",
    "port",
    "proto",
    "proxy-v2-options",
    "redir",
    "resolve-net",
    "resolve-opts",
    "resolve-prefer",
    "resolvers",
    "rise",
    "shard",
    "sigalgs",
    "slowstart",
    "sni",
    "socks4",
    "source",
    "ssl-max-ver",
    "ssl-min-ver",
    "tcp-ut",
    "track",
    "usesrc",
    "verify",
    "verifyhost",
    "weight",
    "ws",
];

/// One server option where it was written (a `server` or `default-server`).
#[derive(Debug, Clone)]
struct Opt {
    name: String,
    arg: Option<String>,
    line: usize,
}

impl Opt {
    fn show(&self) -> String {
        match &self.arg {
            Some(a) => format!("{} {a}", self.name),
            None => self.name.clone(),
        }
    }
}

fn server_opts(words: &[String], line: usize) -> Vec<Opt> {
    let mut out = vec![];
    let mut it = words.iter();
    while let Some(name) = it.next() {
        let arg = if SERVER_OPTS_WITH_ARG.contains(&name.as_str()) {
            it.next().cloned()
        } else {
            None
        };
        out.push(Opt {
            name: name.clone(),
            arg,
            line,
        });
    }
    out
}

#[derive(Debug, Clone)]
struct Server {
    name: String,
    line: usize,
    addr: IpAddr,
    port: Option<u16>,
    checked: bool,
    tls_check: bool,
    verify_none: bool,
    inter_ms: Option<u64>,
    fall: Option<u32>,
    rise: Option<u32>,
    ca: Option<String>,
    sni: Option<String>,
}

impl Server {
    /// A server line's address with no options: unchecked, HAProxy's
    /// defaults.
    fn new(name: String, line: usize, addr: IpAddr, port: Option<u16>) -> Self {
        Server {
            name,
            line,
            addr,
            port,
            checked: false,
            tls_check: false,
            verify_none: false,
            inter_ms: None,
            fall: None,
            rise: None,
            ca: None,
            sni: None,
        }
    }
}

/// A backend (or a listen section's servers) and how HAProxy checked them.
#[derive(Debug, Clone, Default)]
struct Pool {
    line: usize,
    servers: Vec<Server>,
    httpchk: Option<usize>,
    uri: Option<(String, usize)>,
    connect_ssl: bool,
    timeout_check_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Bind {
    addr: Option<IpAddr>,
    port: Option<u16>,
    line: usize,
}

/// Where clients come in (a frontend or listen section, or `--backend`) and
/// the pool it sends them to.
#[derive(Debug, Clone)]
struct Entry {
    binds: Vec<Bind>,
    pool: Pool,
}

#[derive(Debug, Default)]
struct Haproxy {
    entries: Vec<Entry>,
    skipped: BTreeSet<Skip>,
}

impl Haproxy {
    fn skip(&mut self, l: &HaLine, why: &'static str) {
        self.skipped
            .insert(Skip::new(l.line, show_words(&l.words), why));
    }
    fn skip_opt(&mut self, o: &Opt, why: &'static str) {
        self.skipped.insert(Skip::new(o.line, o.show(), why));
    }
    fn skip_section(&mut self, s: &HaSection, why: &'static str) {
        self.skipped
            .insert(Skip::new(s.line, s.header.as_str(), why));
    }
}

/// Why a proxy-section line that vipd does not use is dropped.
fn ha_why(l: &HaLine) -> &'static str {
    match (l.kw(), l.word(1)) {
        ("log", _) | ("option", "tcplog" | "httplog" | "dontlognull" | "log-health-checks") => {
            why::LOG
        }
        ("timeout", _) => why::TIMEOUT,
        ("balance" | "hash-type", _) => why::BALANCE,
        ("retries" | "retry-on", _) | ("option", "redispatch") => why::RETRY,
        ("maxconn" | "fullconn" | "backlog", _) => why::MAXCONN,
        ("stats", _) => why::STATS,
        (
            "option",
            "http-server-close"
            | "forwardfor"
            | "httpclose"
            | "http-keep-alive"
            | "http-buffer-request"
            | "originalto",
        ) => why::HTTP_MODE,
        ("use_backend", _) => why::USE_BACKEND,
        (
            "acl"
            | "tcp-request"
            | "tcp-response"
            | "http-request"
            | "http-response"
            | "http-after-response",
            _,
        ) => why::ACL,
        ("option", "ssl-hello-chk" | "tcp-check" | "mysql-check" | "pgsql-check")
        | ("tcp-check", _) => why::CHECK_OTHER,
        _ => why::GENERIC,
    }
}

fn parse_haproxy(src: &Source) -> Result<Haproxy, ImportError> {
    let file = src.name.as_str();
    let sections = ha_sections(file, &src.text)?;
    let mut h = Haproxy::default();
    let inherited = |l: &HaLine| {
        matches!(
            (l.kw(), l.word(1)),
            ("mode", _)
                | ("default-server", _)
                | ("timeout", "check")
                | ("option", "httpchk")
                | ("http-check", _)
        )
    };
    for sec in &sections {
        match sec.kind.as_str() {
            "defaults" => {
                for l in &sec.body {
                    if l.kw() == "mode" && l.word(1) != "tcp" {
                        h.skip(l, why::MODE_HTTP_DEFAULTS);
                    } else if !inherited(l) {
                        h.skip(l, ha_why(l));
                    }
                }
            }
            "global" => {
                for l in &sec.body {
                    let w = match l.kw() {
                        "log" => why::LOG,
                        "maxconn" => why::MAXCONN,
                        "stats" => why::STATS,
                        _ => why::HA_PROCESS,
                    };
                    h.skip(l, w);
                }
            }
            "frontend" | "listen" | "backend" => {}
            _ => h.skip_section(sec, why::SECTION_OTHER),
        }
    }
    let mode_of = |sec: &HaSection| -> String {
        let own = sec.body.iter().rev().find(|l| l.kw() == "mode");
        let dflt = sec
            .defaults
            .and_then(|d| sections.get(d))
            .and_then(|d| d.body.iter().rev().find(|l| l.kw() == "mode"));
        own.or(dflt)
            .map_or_else(|| "tcp".to_owned(), |l| l.word(1).to_owned())
    };
    let mut used_backends = BTreeSet::new();
    for sec in &sections {
        if !matches!(sec.kind.as_str(), "frontend" | "listen") {
            continue;
        }
        if mode_of(sec) != "tcp" {
            h.skip_section(sec, why::SECTION_HTTP);
            continue;
        }
        let listen = sec.kind == "listen";
        let mut binds = vec![];
        let mut default_backend = None;
        for l in &sec.body {
            match l.kw() {
                "bind" => ha_bind(file, l, &mut binds, &mut h)?,
                "mode" => {}
                "default_backend" if !listen => default_backend = Some(l),
                kw if listen && is_pool_keyword(l, kw) => {}
                _ => h.skip(l, ha_why(l)),
            }
        }
        if binds.is_empty() {
            h.skip_section(sec, why::BIND_SKIPPED);
            continue;
        }
        let pool = if listen {
            ha_pool(file, sec, &sections, &mut h)?
        } else {
            let Some(l) = default_backend else {
                return Err(ImportError::Missing {
                    what: format!("default_backend of frontend {}", sec.name),
                    place: format!("{file}:{}", sec.line),
                    fix: "add `default_backend NAME` naming the backend of the apiservers".into(),
                });
            };
            let name = l.word(1);
            let Some(b) = sections
                .iter()
                .find(|s| s.kind == "backend" && s.name == name)
            else {
                return Err(syntax(
                    file,
                    l.line,
                    format!("`default_backend {name}`: there is no `backend {name}`"),
                ));
            };
            used_backends.insert(name.to_owned());
            ha_pool(file, b, &sections, &mut h)?
        };
        h.entries.push(Entry { binds, pool });
    }
    for sec in &sections {
        if sec.kind == "backend" && !used_backends.contains(&sec.name) {
            h.skip_section(sec, why::SECTION_UNUSED);
        }
    }
    Ok(h)
}

fn is_pool_keyword(l: &HaLine, kw: &str) -> bool {
    matches!(
        (kw, l.word(1)),
        ("server" | "default-server" | "http-check", _)
            | ("option", "httpchk")
            | ("timeout", "check")
    )
}

fn ha_bind(
    file: &str,
    l: &HaLine,
    binds: &mut Vec<Bind>,
    h: &mut Haproxy,
) -> Result<(), ImportError> {
    let spec = l.word(1);
    if spec.is_empty() {
        return Err(syntax(file, l.line, "`bind` needs an address and port"));
    }
    for one in spec.split(',') {
        match ha_endpoint(one) {
            Ok((addr, Some(port))) => binds.push(Bind {
                addr,
                port: Some(port),
                line: l.line,
            }),
            _ => h.skip(l, why::BIND_SKIPPED),
        }
    }
    for o in server_opts(&l.words[2..], l.line) {
        h.skip_opt(&o, why::BIND_OPTION);
    }
    Ok(())
}

/// The servers of a backend or listen section and its check settings, the
/// `defaults` in force first.
fn ha_pool(
    file: &str,
    sec: &HaSection,
    sections: &[HaSection],
    h: &mut Haproxy,
) -> Result<Pool, ImportError> {
    let mut pool = Pool {
        line: sec.line,
        ..Pool::default()
    };
    let defaults = sec
        .defaults
        .and_then(|d| sections.get(d))
        .map(|d| d.body.as_slice())
        .unwrap_or_default();
    let mut default_opts: Vec<Opt> = vec![];
    for (from_defaults, l) in defaults
        .iter()
        .map(|l| (true, l))
        .chain(sec.body.iter().map(|l| (false, l)))
    {
        match (l.kw(), l.word(1)) {
            ("default-server", _) => default_opts.extend(server_opts(&l.words[1..], l.line)),
            ("option", "httpchk") => {
                pool.httpchk = Some(l.line);
                // `option httpchk URI` or `option httpchk METH URI [VER]`.
                let uri = match l.words.len() {
                    3 => l.word(2),
                    n if n >= 4 => l.word(3),
                    _ => "",
                };
                if !uri.is_empty() {
                    pool.uri = Some((uri.to_owned(), l.line));
                }
            }
            ("http-check", "connect") => {
                for o in server_opts(&l.words[2..], l.line) {
                    if o.name == "ssl" {
                        pool.connect_ssl = true;
                    } else {
                        h.skip_opt(&o, why::CHECK_OTHER);
                    }
                }
            }
            ("http-check", "send") => {
                let mut it = l.words[2..].iter();
                while let Some(k) = it.next() {
                    match (k.as_str(), it.next()) {
                        ("uri", Some(u)) => pool.uri = Some((u.clone(), l.line)),
                        ("meth", Some(m)) if m == "GET" => {}
                        (k, v) => {
                            h.skipped.insert(Skip::new(
                                l.line,
                                format!("{k} {}", v.map_or("", String::as_str)),
                                why::CHECK_OTHER,
                            ));
                        }
                    }
                }
            }
            ("http-check", "expect") => {
                if !(l.word(2) == "status" && l.word(3) == "200" && l.words.len() == 4) {
                    h.skip(l, why::EXPECT);
                }
            }
            ("http-check", _) => h.skip(l, why::CHECK_OTHER),
            ("timeout", "check") => {
                pool.timeout_check_ms = Some(ha_time(l.word(2)).ok_or_else(|| {
                    syntax(
                        file,
                        l.line,
                        format!(
                            "`timeout check`: {:?} is not a time like 2s or 500ms",
                            l.word(2)
                        ),
                    )
                })?);
            }
            ("server", _) => {
                if let Some(s) = ha_server(file, l, &default_opts, h)? {
                    pool.servers.push(s);
                }
            }
            ("mode" | "bind" | "default_backend", _) => {}
            // The defaults' other lines were noted once, above.
            _ if from_defaults => {}
            _ => h.skip(l, ha_why(l)),
        }
    }
    if pool.servers.is_empty() {
        return Err(ImportError::Missing {
            what: format!("servers of {} {}", sec.kind, sec.name),
            place: format!("{file}:{}", sec.line),
            fix: "list each apiserver as `server NAME ADDR:6443 check`".into(),
        });
    }
    Ok(pool)
}

fn ha_server(
    file: &str,
    l: &HaLine,
    defaults: &[Opt],
    h: &mut Haproxy,
) -> Result<Option<Server>, ImportError> {
    let name = l.word(1);
    let spec = l.word(2);
    if name.is_empty() || spec.is_empty() {
        return Err(syntax(
            file,
            l.line,
            format!("`server {name}` has no address; write it as `server NAME ADDR:PORT check`"),
        ));
    }
    let (addr, port) = ha_endpoint(spec).map_err(|e| syntax(file, l.line, e))?;
    let Some(addr) = addr else {
        return Err(syntax(
            file,
            l.line,
            format!("server {name}: {spec:?} names no address"),
        ));
    };
    if addr.is_loopback() || addr.is_multicast() {
        return Err(unsupported(
            file,
            l.line,
            format!(
                "server {name} is at {addr}; vipd forwards to every apiserver by the address of its node, the same list on every node: write the node's address"
            ),
        ));
    }
    let mut s = Server::new(name.to_owned(), l.line, addr, port);
    let mut disabled = false;
    let own = server_opts(&l.words[3..], l.line);
    for o in defaults.iter().chain(own.iter()) {
        let arg = o.arg.as_deref().unwrap_or("");
        let count = |what: &str| {
            arg.parse::<u32>().ok().filter(|v| *v > 0).ok_or_else(|| {
                syntax(
                    file,
                    o.line,
                    format!("`{what}`: {arg:?} is not a count above 0"),
                )
            })
        };
        match o.name.as_str() {
            "check" => s.checked = true,
            "no-check" => s.checked = false,
            "check-ssl" => s.tls_check = true,
            "no-check-ssl" => s.tls_check = false,
            "ssl" => {
                s.tls_check = true;
                h.skip_opt(o, why::TRAFFIC_TLS);
            }
            "verify" => s.verify_none = arg == "none",
            "inter" => {
                s.inter_ms = Some(ha_time(arg).filter(|v| *v > 0).ok_or_else(|| {
                    syntax(
                        file,
                        o.line,
                        format!("`inter`: {arg:?} is not a time like 2s or 500ms"),
                    )
                })?);
            }
            "fall" => s.fall = Some(count("fall")?),
            "rise" => s.rise = Some(count("rise")?),
            "ca-file" => s.ca = Some(arg.to_owned()),
            "check-sni" => s.sni = Some(arg.to_owned()),
            "enabled" => {}
            "disabled" => {
                disabled = true;
                h.skip_opt(o, why::DISABLED);
            }
            "weight" => h.skip_opt(o, why::WEIGHT),
            "maxconn" | "maxqueue" | "minconn" => h.skip_opt(o, why::MAXCONN),
            "slowstart" => h.skip_opt(o, why::SLOWSTART),
            "backup" => h.skip_opt(o, why::BACKUP),
            "downinter" | "fastinter" => h.skip_opt(o, why::CHECK_INTERVALS),
            "port" | "addr" => h.skip_opt(o, why::CHECK_PORT),
            n if n.starts_with("send-proxy") => h.skip_opt(o, why::PROXY_PROTOCOL),
            "resolvers" | "init-addr" | "resolve-prefer" | "resolve-net" | "resolve-opts" => {
                h.skip_opt(o, why::RESOLVE);
            }
            "crt" => h.skip_opt(o, why::CLIENT_CERT),
            "sni" | "alpn" | "ciphers" | "ciphersuites" | "ssl-min-ver" | "ssl-max-ver" => {
                h.skip_opt(o, why::TRAFFIC_TLS);
            }
            _ => h.skip_opt(o, why::GENERIC),
        }
    }
    Ok((!disabled).then_some(s))
}

// ---------------------------------------------------------------------------
// Putting it together.

/// The probe as written, and the comments that explain it.
struct ProbeOut {
    settings: ProbeSettings,
    remarks: Vec<String>,
}

fn fmt_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn no_check_remark(file: &str, s: &Server) -> String {
    format!(
        "server {} ({file}:{}) had no `check`: HAProxy never took it out; vipd probes every backend",
        s.name, s.line
    )
}

fn probe_for(file: &str, pool: &Pool, skipped: &mut BTreeSet<Skip>) -> ProbeOut {
    let mut remarks = vec![];
    let mut p = ProbeSettings::default();
    // vipd's defaults, for what HAProxy left unset.
    let defaults = p.plan().expect("vipd's default probe settings are valid");
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
        p.server_name = sni.clone();
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
    p.interval = fmt_ms(interval);
    p.timeout = fmt_ms(timeout);
    p.jitter = fmt_ms(100.min(interval / 2));
    p.fall = fall;
    p.rise = rise;
    if let Ok(plan) = p.plan()
        && plan.worst_fast_fail() > plan.shutdown_delay
    {
        remarks.push(format!(
            "with this timing a draining apiserver can get new flows for up to {}ms, longer than the {} --shutdown-delay-duration assumed in apiserver_shutdown_delay; vipd warns at start. interval 1s, fall 2 take it out within 2.2s",
            plan.worst_fast_fail().as_millis(),
            p.apiserver_shutdown_delay
        ));
    }
    ProbeOut {
        settings: p,
        remarks,
    }
}

/// A YAML scalar: plain where it cannot be misread, else a JSON string
/// (valid YAML).
fn q(s: &str) -> String {
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

fn ha_show(a: IpAddr, port: Option<u16>) -> String {
    match (a, port) {
        (IpAddr::V4(_), Some(p)) => format!("{a}:{p}"),
        (IpAddr::V6(_), Some(p)) => format!("[{a}]:{p}"),
        (_, None) => a.to_string(),
    }
}

fn ip(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => a.to_string(),
        IpAddr::V6(_) => format!("\"{a}\""),
    }
}

/// The YAML being written.
#[derive(Default)]
struct Out(String);

impl Out {
    fn line(&mut self, indent: usize, text: impl AsRef<str>) {
        self.0.push_str(&" ".repeat(indent));
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
    fn comment(&mut self, indent: usize, text: impl AsRef<str>) {
        self.line(indent, format!("# {}", text.as_ref()));
    }
    fn skipped(&mut self, indent: usize, file: &str, skips: &BTreeSet<Skip>) {
        for s in skips {
            self.comment(indent, not_carried(file, s.line, &s.text, s.why));
        }
    }
}

/// One service as it will be written.
struct ServiceOut {
    vip: IpAddr,
    port: u16,
    remarks: Vec<String>,
    probe: ProbeOut,
    backends: Vec<BackendOut>,
}

struct BackendOut {
    addr: IpAddr,
    port: Option<u16>,
    mac: Option<[u8; 6]>,
    local: bool,
}

/// Converts the inputs; see the module comment.
pub fn convert(opts: &Options, neigh: &dyn Neighbours) -> Result<Imported, ImportError> {
    if opts.keepalived.is_none() && opts.haproxy.is_none() {
        return Err(ImportError::Usage {
            flag: "--keepalived/--haproxy",
            message:
                "give keepalived.conf (--keepalived FILE), haproxy.cfg (--haproxy FILE) or both"
                    .into(),
        });
    }
    if opts.haproxy.is_some() && !opts.backends.is_empty() {
        return Err(ImportError::Usage {
            flag: "--backend",
            message: "the backends come from haproxy.cfg's server lines; give --haproxy or --backend, not both".into(),
        });
    }
    if opts.keepalived.is_some() && !opts.vips.is_empty() {
        return Err(ImportError::Usage {
            flag: "--vip",
            message: "the VIPs come from keepalived.conf's virtual_ipaddress; give --keepalived or --vip, not both".into(),
        });
    }
    let ka_file = opts.keepalived.as_ref().map_or("", |s| s.name.as_str());
    let ha_file = opts.haproxy.as_ref().map_or("", |s| s.name.as_str());
    let mut ka = opts.keepalived.as_ref().map(parse_keepalived).transpose()?;
    let ha = match &opts.haproxy {
        Some(src) => parse_haproxy(src)?,
        None if opts.backends.is_empty() => {
            return Err(ImportError::Missing {
                what: "backends".into(),
                place: format!("{ka_file} (keepalived moves the VIP; HAProxy knew the apiservers)"),
                fix: "add --haproxy FILE, or name each apiserver with --backend ADDR[:PORT] (port 6443 by default)".into(),
            });
        }
        None => Haproxy {
            entries: vec![Entry {
                binds: vec![Bind {
                    addr: None,
                    port: None,
                    line: 0,
                }],
                pool: Pool {
                    servers: opts
                        .backends
                        .iter()
                        .map(|(addr, port)| Server {
                            checked: true,
                            tls_check: true,
                            ..Server::new(addr.to_string(), 0, *addr, *port)
                        })
                        .collect(),
                    ..Pool::default()
                },
            }],
            skipped: BTreeSet::new(),
        },
    };
    if let Some(k) = &ka {
        if k.instance.is_none() {
            return Err(ImportError::Missing {
                what: "vrrp_instance".into(),
                place: ka_file.into(),
                fix: "import needs the vrrp_instance that holds the API VIP".into(),
            });
        }
        if k.vrid.is_none() {
            let line = k.instance.as_ref().map_or(0, |i| i.1);
            return Err(ImportError::Missing {
                what: "virtual_router_id".into(),
                place: format!("{ka_file}:{line} (vrrp_instance)"),
                fix: "add `virtual_router_id N` (1..255, the same on every node)".into(),
            });
        }
    }

    // The VIPs: keepalived's, else --vip, else the addresses HAProxy bound.
    let mut vips: Vec<(IpAddr, Option<usize>)> = match &ka {
        Some(k) => k.vips.iter().map(|(a, l)| (*a, Some(*l))).collect(),
        None if !opts.vips.is_empty() => opts.vips.iter().map(|a| (*a, None)).collect(),
        None => {
            let mut v: Vec<(IpAddr, Option<usize>)> = vec![];
            for b in ha.entries.iter().flat_map(|e| &e.binds) {
                if let Some(a) = b.addr
                    && !v.iter().any(|(x, _)| *x == a)
                {
                    v.push((a, None));
                }
            }
            v
        }
    };
    if vips.is_empty() {
        return Err(ImportError::Missing {
            what: "VIP".into(),
            place: if ka.is_some() {
                format!("{ka_file} (no virtual_ipaddress in its vrrp_instance)")
            } else {
                format!("{ha_file} (every bind is on all addresses)")
            },
            fix: if ka.is_some() {
                "add the VIP to the vrrp_instance's virtual_ipaddress block".into()
            } else {
                "add --keepalived FILE, or give the VIP with --vip ADDR".into()
            },
        });
    }
    vips.sort_by_key(|(a, _)| (a.is_ipv6(), *a));

    // Which backend is this node.
    let (locals, local_from): (Vec<IpAddr>, String) = match (opts.node_address, &ka) {
        (Some(a), _) => (vec![a], format!("{a} (--node-address)")),
        (
            None,
            Some(Keepalived {
                src_ip: Some((a, line)),
                ..
            }),
        ) => (vec![*a], format!("{a} (unicast_src_ip, {ka_file}:{line})")),
        _ => (
            opts.host.iter().map(|h| h.addr).collect(),
            "an address of this host".into(),
        ),
    };

    // The interface: --interface, keepalived's, or the one of this host
    // that carries a VIP or a backend's address.
    let mut top_remarks: Vec<String> = vec![];
    let interface = match (
        &opts.interface,
        ka.as_ref().and_then(|k| k.interface.clone()),
    ) {
        (Some(i), Some((k, line))) => {
            if *i != k {
                top_remarks.push(format!(
                    "interface {i} from --interface; keepalived used {k} ({ka_file}:{line})"
                ));
            }
            i.clone()
        }
        (Some(i), None) => i.clone(),
        (None, Some((k, _))) => k,
        (None, None) => {
            let servers: Vec<IpAddr> = ha
                .entries
                .iter()
                .flat_map(|e| e.pool.servers.iter().map(|s| s.addr))
                .collect();
            let found = opts.host.iter().find(|h| {
                vips.iter().any(|(v, _)| *v == h.addr)
                    || (locals.contains(&h.addr) && servers.contains(&h.addr))
            });
            match found {
                Some(h) => {
                    top_remarks.push(format!(
                        "interface {}: the one that carries {} on this host",
                        h.interface, h.addr
                    ));
                    h.interface.clone()
                }
                None => {
                    return Err(ImportError::Missing {
                        what: "interface".into(),
                        place: format!(
                            "{ha_file} (only keepalived.conf names it, and no address of this host is a VIP or a server)"
                        ),
                        fix: "pass --interface IF, the interface that carries the VIP".into(),
                    });
                }
            }
        }
    };

    // Services: every VIP with every entry point that serves it. Each
    // entry's probe is worked out once, and its comments written once.
    let Haproxy {
        entries,
        skipped: mut ha_skipped,
    } = ha;
    let mut probes: Vec<ProbeOut> = entries
        .iter()
        .map(|e| {
            if opts.haproxy.is_some() {
                probe_for(ha_file, &e.pool, &mut ha_skipped)
            } else {
                // --backend (its one entry): nothing to carry over, vipd's
                // own probe as it is.
                ProbeOut {
                    settings: ProbeSettings::default(),
                    remarks: vec![
                        "vipd's default probe: GET /readyz over TLS, verified against /etc/kubernetes/pki/ca.crt for the name `kubernetes`".into(),
                    ],
                }
            }
        })
        .collect();
    let mut services: Vec<ServiceOut> = vec![];
    let mut served: BTreeSet<IpAddr> = BTreeSet::new();
    for (vip, _) in &vips {
        for (e, entry_probe) in entries.iter().zip(&mut probes) {
            for b in &e.binds {
                if b.addr.is_some_and(|a| a != *vip) {
                    continue;
                }
                let servers: Vec<&Server> = e
                    .pool
                    .servers
                    .iter()
                    .filter(|s| s.addr.is_ipv4() == vip.is_ipv4())
                    .collect();
                let Some(first) = servers.first() else {
                    continue;
                };
                // A server without a port gets the port the client used.
                let port_of = |s: &Server| s.port.or(b.port).unwrap_or(6443);
                let port = match opts.mode {
                    Mode::Dsr => {
                        let p = port_of(first);
                        if let Some(other) = servers.iter().find(|s| port_of(s) != p) {
                            let message = format!(
                                "server {} listens on port {}, server {} on {p}; mode dsr does not rewrite ports, so every apiserver must listen on the service port: use --mode nat",
                                other.name,
                                port_of(other),
                                first.name
                            );
                            return Err(match opts.haproxy {
                                Some(_) => unsupported(ha_file, other.line, message),
                                None => ImportError::Usage {
                                    flag: "--backend",
                                    message,
                                },
                            });
                        }
                        p
                    }
                    Mode::Nat => b.port.unwrap_or_else(|| port_of(first)),
                };
                if services.iter().any(|s| s.vip == *vip && s.port == port) {
                    continue;
                }
                served.insert(*vip);
                let mut remarks = vec![];
                if let Some(bp) = b.port
                    && bp != port
                {
                    remarks.push(format!(
                        "HAProxy listened on port {bp} ({ha_file}:{}). Mode dsr does not rewrite ports, so the service is the apiservers' own port {port} and vipd needs no frontend port: point clients that use :{bp} (controlPlaneEndpoint, kubeconfigs, kubelet.conf, the cluster-info ConfigMap) at :{port}, or import with --mode nat to keep :{bp}",
                        b.line
                    ));
                }
                // The remarks go with the entry's first service only.
                let probe = ProbeOut {
                    settings: entry_probe.settings.clone(),
                    remarks: std::mem::take(&mut entry_probe.remarks),
                };
                let backends = servers
                    .iter()
                    .map(|s| {
                        let p = port_of(s);
                        BackendOut {
                            addr: s.addr,
                            port: (p != port).then_some(p),
                            mac: None,
                            local: locals.contains(&s.addr),
                        }
                    })
                    .collect();
                services.push(ServiceOut {
                    vip: *vip,
                    port,
                    remarks,
                    probe,
                    backends,
                });
            }
        }
    }
    for b in entries.iter().flat_map(|e| &e.binds) {
        if let Some(a) = b.addr
            && !vips.iter().any(|(v, _)| *v == a)
        {
            ha_skipped.insert(Skip::new(
                b.line,
                format!("bind {}", ha_show(a, b.port)),
                why::BIND_NOT_VIP,
            ));
        }
    }
    for (vip, line) in &vips {
        if !served.contains(vip) {
            match (line, &mut ka) {
                (Some(line), Some(k)) => {
                    k.skipped
                        .insert(Skip::new(*line, vip.to_string(), why::VIP_NO_BACKEND));
                }
                _ => top_remarks.push(format!("VIP {vip}: {}", why::VIP_NO_BACKEND)),
            }
        }
    }
    if services.is_empty() {
        return Err(ImportError::Missing {
            what: "service".into(),
            place: if opts.haproxy.is_some() {
                format!("{ha_file} (no mode tcp frontend or listen section serves the VIPs {} with servers of their address family)", join(&vips.iter().map(|v| v.0).collect::<Vec<_>>()))
            } else {
                "--backend (no backend of the VIPs' address family)".into()
            },
            fix: "the apiservers must be servers of a mode tcp frontend's default_backend that binds the VIP or all addresses".into(),
        });
    }

    // MACs: mode dsr sends to each other node by MAC.
    if opts.mode == Mode::Dsr {
        let mut unknown = vec![];
        for b in services.iter_mut().flat_map(|s| s.backends.iter_mut()) {
            if b.local {
                continue;
            }
            b.mac = opts
                .macs
                .get(&b.addr)
                .copied()
                .or_else(|| neigh.mac(&interface, b.addr));
            if b.mac.is_none() && !unknown.contains(&b.addr) {
                unknown.push(b.addr);
            }
        }
        if !unknown.is_empty() {
            return Err(ImportError::MacUnknown {
                interface,
                addrs: unknown,
            });
        }
    }
    let any_local = services.iter().any(|s| s.backends.iter().any(|b| b.local));

    // And the YAML.
    let mut out = Out::default();
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
    out.comment(
        0,
        format!(
            "Mode {}; this node: {local_from}.",
            match opts.mode {
                Mode::Dsr => "dsr (stacked: vipd on every control-plane node)",
                Mode::Nat => "nat (dedicated load-balancer nodes)",
            }
        ),
    );
    out.comment(
        0,
        "Each setting that was not carried over is a `not carried over: FILE:LINE` comment with the reason; read them, then check the file with `vipd check-config FILE`.",
    );
    if opts.mode == Mode::Dsr && !any_local {
        out.comment(
            0,
            format!(
                "No server is this node ({local_from}). Mode dsr needs vipd on every apiserver node; on dedicated load-balancer nodes import with --mode nat."
            ),
        );
    }
    for r in &top_remarks {
        out.comment(0, r);
    }
    out.line(0, format!("interface: {}", q(&interface)));
    if let Some(k) = &ka {
        out.skipped(0, ka_file, &k.skipped);
        write_vrrp(&mut out, k, ka_file, &vips, opts, any_local);
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
        out.skipped(2, ha_file, &ha_skipped);
    }
    for s in &services {
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
            out.line(6, format!("server_name: {}", q(&p.server_name)));
        }
        out.line(6, format!("interval: {}", p.interval));
        out.line(6, format!("timeout: {}", p.timeout));
        if p.jitter != d.jitter {
            out.line(6, format!("jitter: {}", p.jitter));
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
            if b.local {
                fields.push("local: true".into());
            }
            out.line(6, format!("- {{ {} }}", fields.join(", ")));
        }
    }
    let yaml = out.0;
    let config = Config::parse(Path::new("vipd-import.yaml"), &yaml)
        .map_err(|source| ImportError::Refused { source })?;
    let not_carried_over = yaml.matches("# not carried over: ").count();
    Ok(Imported {
        yaml,
        config,
        not_carried_over,
    })
}

fn write_vrrp(
    out: &mut Out,
    k: &Keepalived,
    file: &str,
    vips: &[(IpAddr, Option<usize>)],
    opts: &Options,
    any_local: bool,
) {
    out.line(0, "vrrp:");
    let (vrid, _) = k
        .vrid
        .expect("convert refuses a vrrp_instance without virtual_router_id");
    out.line(2, format!("vrid: {vrid}"));
    // Priority: keepalived's (default 100), plus the bonus of a positive
    // track_script weight (see below).
    let base = k.priority.map_or(100, |p| p.0);
    let bonus: u16 = k
        .tracked
        .iter()
        .filter(|t| t.weight > 0)
        .map(|t| u16::try_from(t.weight).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let mut priority = u16::from(base) + bonus;
    // 255 makes vipd the address owner (RFC 9568): Master at once, the VIP
    // never removed. Only right when the VIP is a real address of this node.
    let owner = vips
        .iter()
        .all(|(v, _)| opts.host.iter().any(|h| h.addr == *v));
    if priority >= 255 && !(base == 255 && bonus == 0 && owner) {
        out.comment(
            2,
            format!(
                "priority {priority} lowered to 254: 255 means the address owner (RFC 9568), which vipd takes to mean the VIP is a real address of this node, never removed"
            ),
        );
        priority = 254;
    }
    out.line(2, format!("priority: {priority}"));
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
    let families: BTreeSet<bool> = vips.iter().map(|(v, _)| v.is_ipv4()).collect();
    let peers: Vec<IpAddr> = k
        .peers
        .iter()
        .filter(|(p, line)| {
            if !families.contains(&p.is_ipv4()) {
                out.comment(2, not_carried(file, *line, p, why::PEER_FAMILY));
                return false;
            }
            if matches!(p, IpAddr::V6(v6) if !v6.is_unicast_link_local()) {
                out.comment(2, not_carried(file, *line, p, why::PEER_NOT_LINK_LOCAL));
                return false;
            }
            true
        })
        .map(|(p, _)| *p)
        .collect();
    if !peers.is_empty() {
        out.line(
            2,
            format!(
                "unicast_peers: [{}]",
                peers.iter().map(|p| ip(*p)).collect::<Vec<_>>().join(", ")
            ),
        );
    }
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
    // track_script: vipd probes the local apiserver itself; the script's
    // weight says how much the priority drops.
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

// ---------------------------------------------------------------------------
// The host side: this node's addresses and neighbour table.

/// Every address of this host with its interface.
pub fn host_addresses() -> Result<Vec<HostAddr>, HostError> {
    Ok(host::all_addrs()?
        .into_iter()
        .flat_map(|(interface, addrs)| {
            addrs.into_iter().map(move |addr| HostAddr {
                interface: interface.clone(),
                addr,
            })
        })
        .collect())
}

/// The kernel's neighbour table: `/proc/net/arp` for IPv4, `ip -6 neigh`
/// for IPv6 (procfs has no IPv6 table).
pub struct KernelNeighbours;

impl Neighbours for KernelNeighbours {
    fn mac(&self, interface: &str, addr: IpAddr) -> Option<[u8; 6]> {
        match addr {
            IpAddr::V4(_) => std::fs::read_to_string("/proc/net/arp")
                .ok()
                .and_then(|t| arp_lookup(&t, interface, addr)),
            IpAddr::V6(_) => std::process::Command::new("ip")
                .args(["-6", "neigh", "show"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| neigh_lookup(&String::from_utf8_lossy(&o.stdout), interface, addr)),
        }
    }
}

/// A complete entry (flag ATF_COM, 0x2) of `/proc/net/arp`:
/// `IP address  HW type  Flags  HW address  Mask  Device`.
fn arp_lookup(text: &str, interface: &str, addr: IpAddr) -> Option<[u8; 6]> {
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let [a, _, flags, mac, _, dev] = f.as_slice() else {
            return None;
        };
        let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
        let m = parse_mac(mac).ok()?;
        (a.parse::<IpAddr>().ok()? == addr && *dev == interface && flags & 0x2 != 0 && m != [0; 6])
            .then_some(m)
    })
}

/// An entry of `ip neigh show` with a link-layer address:
/// `ADDR dev IF lladdr MAC [router] STATE`; FAILED and INCOMPLETE ones have
/// no `lladdr`.
fn neigh_lookup(text: &str, interface: &str, addr: IpAddr) -> Option<[u8; 6]> {
    text.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        let after = |k: &str| w.iter().position(|x| *x == k).and_then(|i| w.get(i + 1));
        if w.first()?.parse::<IpAddr>().ok()? != addr || after("dev") != Some(&interface) {
            return None;
        }
        parse_mac(after("lladdr")?).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECIPE_KA: &str = include_str!("../tests/import/kubeadm/keepalived.conf");
    const RECIPE_HA: &str = include_str!("../tests/import/kubeadm/haproxy.cfg");
    const ODD_KA: &str = include_str!("../tests/import/unsupported/keepalived.conf");
    const ODD_HA: &str = include_str!("../tests/import/unsupported/haproxy.cfg");

    fn src(name: &str, text: &str) -> Option<Source> {
        Some(Source {
            name: name.into(),
            text: text.into(),
        })
    }

    fn a(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn host(addrs: &[&str]) -> Vec<HostAddr> {
        addrs
            .iter()
            .map(|s| HostAddr {
                interface: "eth0".into(),
                addr: a(s),
            })
            .collect()
    }

    /// The neighbour table of the test host: cp1 and cp2 resolved.
    fn neighbours() -> BTreeMap<IpAddr, [u8; 6]> {
        [
            (a("10.0.0.11"), [0x52, 0x54, 0, 0, 0, 0x11]),
            (a("10.0.0.12"), [0x52, 0x54, 0, 0, 0, 0x12]),
            (a("10.1.0.12"), [0x52, 0x54, 0, 1, 0, 0x12]),
            (a("10.1.0.13"), [0x52, 0x54, 0, 1, 0, 0x13]),
            (a("fd00::11"), [0x52, 0x54, 0, 6, 0, 0x11]),
            (a("fd00::12"), [0x52, 0x54, 0, 6, 0, 0x12]),
        ]
        .into_iter()
        .collect()
    }

    fn opts(ka: Option<&str>, ha: Option<&str>) -> Options {
        Options {
            keepalived: ka.and_then(|t| src("keepalived.conf", t)),
            haproxy: ha.and_then(|t| src("haproxy.cfg", t)),
            mode: Mode::Dsr,
            node_address: None,
            interface: None,
            vips: vec![],
            backends: vec![],
            macs: BTreeMap::new(),
            host: host(&["127.0.0.1", "10.0.0.13"]),
        }
    }

    fn ok(o: &Options) -> Imported {
        convert(o, &neighbours()).unwrap_or_else(|e| panic!("import failed: {e}"))
    }

    fn err(o: &Options) -> String {
        match convert(o, &neighbours()) {
            Ok(i) => panic!("import must fail, wrote:\n{}", i.yaml),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn kubeadm_recipe_converts_field_by_field() {
        let i = ok(&opts(Some(RECIPE_KA), Some(RECIPE_HA)));
        let c = &i.config;
        assert_eq!(c.interface, "eth0", "interface from keepalived");
        let v = c.vrrp.as_ref().expect("vrrp section");
        let plan = v.plan().expect("vrrp plan");
        assert_eq!(plan.vrid, 51, "virtual_router_id");
        assert_eq!(plan.priority, 101, "priority");
        assert_eq!(
            plan.advert_interval_cs, 10,
            "vipd's 100ms for unset advert_int"
        );
        assert!(plan.preempt, "keepalived preempts by default");
        assert_eq!(plan.preempt_delay, std::time::Duration::ZERO);
        assert!(plan.unicast_peers.is_empty(), "multicast");
        assert_eq!(
            plan.local_apiserver_weight, 2,
            "|weight -2| of check_apiserver"
        );
        assert_eq!(plan.xdp_detached_weight, 100, "vipd default kept");
        assert_eq!(c.services.len(), 1);
        let s = &c.services[0];
        assert_eq!(s.vip, a("10.0.0.100"));
        assert_eq!(
            s.port, 6443,
            "dsr: the apiservers' port, not HAProxy's 8443"
        );
        assert_eq!(s.mode, Mode::Dsr);
        assert_eq!(s.snat, None);
        let got: Vec<(IpAddr, Option<u16>, Option<&str>, bool)> = s
            .backends
            .iter()
            .map(|b| (b.address, b.port, b.mac.as_deref(), b.local))
            .collect();
        assert_eq!(
            got,
            vec![
                (a("10.0.0.11"), None, Some("52:54:00:00:00:11"), false),
                (a("10.0.0.12"), None, Some("52:54:00:00:00:12"), false),
                (a("10.0.0.13"), None, None, true),
            ],
            "backends, MACs from the neighbour table, cp3 local by this host's address"
        );
        let p = &s.probe;
        assert_eq!(p.path, "/readyz");
        assert_eq!(
            (p.interval.as_str(), p.timeout.as_str(), p.fall, p.rise),
            ("1s", "1s", 2, 2),
            "unset inter/fall/rise: vipd's defaults; timeout check 10s cut to the interval"
        );
        assert_eq!(p.ca, Path::new("/etc/kubernetes/pki/ca.crt"));
        assert_eq!(p.server_name, "kubernetes");
        let y = &i.yaml;
        for want in [
            "# vipd configuration written by `vipd import`",
            "from keepalived.conf and haproxy.cfg.",
            "this node: an address of this host",
            "HAProxy checked /healthz (haproxy.cfg:36)",
            "`verify none`, haproxy.cfg:42",
            "HAProxy listened on port 8443 (haproxy.cfg:27)",
            "controlPlaneEndpoint: 10.0.0.100:6443",
            "vrrp_script check_apiserver (keepalived.conf:7, \"/etc/keepalived/check_apiserver.sh\") had weight -2",
            "keepalived spoke VRRPv2",
        ] {
            assert!(y.contains(want), "output lacks {want:?}:\n{y}");
        }
    }

    /// Every setting of the recipe that vipd does not take has its comment,
    /// naming the file and line, and there are no others.
    #[test]
    fn recipe_settings_not_carried_over_are_each_named() {
        let i = ok(&opts(Some(RECIPE_KA), Some(RECIPE_HA)));
        let want = [
            "keepalived.conf:5: router_id LVS_DEVEL (names this node",
            "keepalived.conf:8: script /etc/keepalived/check_apiserver.sh (vipd probes this node's own apiserver",
            "keepalived.conf:9: interval 3 (the local apiserver is tracked with its probe's timing",
            "keepalived.conf:11: fall 10 (",
            "keepalived.conf:12: rise 2 (",
            "keepalived.conf:16: state MASTER (VRRPv3 (RFC 9568 6.4.1)",
            "keepalived.conf:20: authentication { ... } (VRRPv3 (RFC 9568) has no authentication",
            "haproxy.cfg:6: log stdout format raw local0 (vipd logs backend state changes",
            "haproxy.cfg:7: daemon (an HAProxy process setting",
            "haproxy.cfg:10: mode http (vipd balances TCP",
            "haproxy.cfg:11: log global (vipd logs backend state changes",
            "haproxy.cfg:12: option httplog (",
            "haproxy.cfg:13: option dontlognull (",
            "haproxy.cfg:14: option http-server-close (",
            "haproxy.cfg:15: option forwardfor except 127.0.0.0/8 (",
            "haproxy.cfg:16: option redispatch (no proxy retries",
            "haproxy.cfg:17: retries 1 (no proxy retries",
            "haproxy.cfg:18: timeout http-request 10s (vipd forwards packets and holds no proxied connections",
            "haproxy.cfg:19: timeout queue 20s (",
            "haproxy.cfg:20: timeout connect 5s (",
            "haproxy.cfg:21: timeout client 35s (",
            "haproxy.cfg:22: timeout server 35s (",
            "haproxy.cfg:23: timeout http-keep-alive 10s (",
            "haproxy.cfg:29: option tcplog (vipd logs backend state changes",
            "haproxy.cfg:40: balance roundrobin (vipd spreads new flows with a Maglev table",
        ];
        for w in want {
            assert!(
                i.yaml.contains(&format!("# not carried over: {w}")),
                "no comment {w:?} in:\n{}",
                i.yaml
            );
        }
        // The password is not copied.
        assert!(!i.yaml.contains("auth_pass"), "{}", i.yaml);
        // Each line of `want` is a different FILE:LINE, so with all of them
        // found this count leaves room for no other comment.
        assert_eq!(i.not_carried_over, 25, "{}", i.yaml);
        assert_eq!(want.len(), i.not_carried_over);
    }

    #[test]
    fn unsupported_settings_each_get_their_comment() {
        let mut o = opts(Some(ODD_KA), Some(ODD_HA));
        o.host = host(&["10.1.0.99"]);
        let i = ok(&o);
        let c = &i.config;
        assert_eq!(c.interface, "ens3");
        let plan = c.vrrp.as_ref().expect("vrrp").plan().expect("plan");
        assert_eq!(plan.vrid, 7);
        assert_eq!(plan.priority, 150);
        assert_eq!(plan.advert_interval_cs, 50, "advert_int 0.5");
        assert!(!plan.preempt, "nopreempt");
        assert_eq!(plan.unicast_peers, vec![a("10.1.0.12"), a("10.1.0.13")]);
        assert_eq!(plan.local_apiserver_weight, 20);
        assert_eq!(plan.announce_count, 5, "garp_master_repeat");
        let s = &c.services[0];
        assert_eq!(s.vip, a("10.1.0.100"));
        assert_eq!(s.port, 6443);
        assert!(
            s.backends[0].local && s.backends[0].address == a("10.1.0.11"),
            "unicast_src_ip picks cp1 although this host's address is another"
        );
        assert_eq!(
            s.backends.len(),
            3,
            "the backup server is an ordinary backend"
        );
        assert_eq!(
            (
                s.probe.interval.as_str(),
                s.probe.timeout.as_str(),
                s.probe.fall,
                s.probe.rise
            ),
            ("2s", "1500ms", 3, 2),
            "inter 2s fall 3 rise 2, timeout check 1500ms"
        );
        let want = [
            "keepalived.conf:4: router_id cp1 (",
            "keepalived.conf:5: script_user root (a keepalived process setting",
            "keepalived.conf:6: enable_script_security (",
            "keepalived.conf:13: timeout 3 (the local apiserver is tracked",
            "keepalived.conf:21: state BACKUP (",
            "keepalived.conf:27: unicast_src_ip 10.1.0.11 (vipd sends from the interface's own address",
            "keepalived.conf:32: authentication { ... } (VRRPv3",
            "keepalived.conf:37: 10.1.0.100/24 dev ens3 label ens3:vip (vipd adds each VIP",
            "keepalived.conf:39: track_interface { ... } (vipd tracks the link of its own interface only",
            "keepalived.conf:41: notify_master \"/etc/keepalived/notify.sh MASTER\" (vipd runs no scripts",
            "keepalived.conf:42: notify_backup \"/etc/keepalived/notify.sh BACKUP\" (",
            "keepalived.conf:43: notify /etc/keepalived/notify.sh (",
            "keepalived.conf:44: garp_master_delay 1 (vipd announces",
            "haproxy.cfg:5: log /dev/log local0 (",
            "haproxy.cfg:6: maxconn 4000 (vipd forwards packets; it neither caps nor queues",
            "haproxy.cfg:7: user haproxy (an HAProxy process setting",
            "haproxy.cfg:9: stats socket /run/haproxy/admin.sock mode 660 level admin (vipd serves its counters on /metrics",
            "haproxy.cfg:14: option tcplog (",
            "haproxy.cfg:15: option redispatch (no proxy retries",
            "haproxy.cfg:16: retries 3 (",
            "haproxy.cfg:17: maxconn 3000 (",
            "haproxy.cfg:19: timeout client 4h (vipd forwards packets and holds no proxied connections",
            "haproxy.cfg:22: slowstart 30s (a backend that comes up gets its full share",
            "haproxy.cfg:24: listen stats (the whole section: it runs in mode http",
            "haproxy.cfg:32: maxconn 2000 (",
            "haproxy.cfg:33: tcp-request inspect-delay 5s (vipd balances TCP without looking inside; it has no ACLs",
            "haproxy.cfg:39: balance leastconn (",
            "haproxy.cfg:41: weight 50 (Maglev gives every backend an equal share",
            "haproxy.cfg:42: backup (vipd has no backup servers",
        ];
        for w in want {
            assert!(
                i.yaml.contains(&format!("# not carried over: {w}")),
                "no comment {w:?} in:\n{}",
                i.yaml
            );
        }
        assert!(!i.yaml.contains("s3cret"), "the VRRP password leaked");
        assert!(i.yaml.contains("HAProxy checked /healthz (haproxy.cfg:37)"));
        assert!(
            i.yaml.contains("new flows for up to 6300ms"),
            "inter 2s x fall 3 is longer than the shutdown delay:\n{}",
            i.yaml
        );
        assert!(
            !i.yaml.contains("keepalived spoke VRRPv2"),
            "vrrp_version 3 given"
        );
    }

    #[test]
    fn ipv6_vips_and_servers() {
        let ka = "vrrp_instance V6 {\n interface eth0\n virtual_router_id 9\n priority 120\n virtual_ipaddress {\n  fe80::1/64\n  fd00::100/64\n }\n unicast_peer {\n  fd00::11\n  fd00::12\n  10.0.0.12\n }\n}\n";
        let ha = "frontend api\n  bind :::6443 v4v6\n  default_backend api\nbackend api\n  server a [fd00::11]:6443 check\n  server b fd00::12:6443 check\n  server c ipv6@fd00::13 check\n";
        let mut o = opts(Some(ka), Some(ha));
        o.node_address = Some(a("fd00::13"));
        let i = ok(&o);
        let s = &i.config.services[0];
        assert_eq!(s.vip, a("fd00::100"), "the link-local VIP is skipped");
        assert_eq!(s.port, 6443);
        let got: Vec<(IpAddr, bool, bool)> = s
            .backends
            .iter()
            .map(|b| (b.address, b.mac.is_some(), b.local))
            .collect();
        assert_eq!(
            got,
            vec![
                (a("fd00::11"), true, false),
                (a("fd00::12"), true, false),
                (a("fd00::13"), false, true),
            ]
        );
        let plan = i.config.vrrp.as_ref().expect("vrrp").plan().expect("plan");
        // Global IPv6 peers cannot match vipd's link-local sources.
        assert!(plan.unicast_peers.is_empty(), "{:?}", plan.unicast_peers);
        for w in [
            "not carried over: keepalived.conf:10: fd00::11 (not link-local",
            "not carried over: keepalived.conf:11: fd00::12 (not link-local",
            "not carried over: keepalived.conf:6: fe80::1/64 (a link-local VIP",
            "not carried over: keepalived.conf:7: fd00::100/64 (vipd adds each VIP",
            "not carried over: keepalived.conf:12: 10.0.0.12 (no VIP of this address family",
            "not carried over: haproxy.cfg:2: v4v6 (",
            "controlPlaneEndpoint: [fd00::100]:6443",
        ] {
            assert!(i.yaml.contains(w), "lacks {w:?}:\n{}", i.yaml);
        }
    }

    #[test]
    fn dual_stack_vips_get_a_service_each() {
        let ka = "vrrp_instance V4 {\n interface eth0\n virtual_router_id 9\n virtual_ipaddress { 10.0.0.100 }\n}\nvrrp_instance V6 {\n interface eth0\n virtual_router_id 9\n virtual_ipaddress { fd00::100 }\n}\n";
        let ha = "listen api\n  bind *:6443\n  server a 10.0.0.11:6443 check\n  server b [fd00::11]:6443 check\n  server c 10.0.0.13:6443 check\n  server d [fd00::13]:6443 check\n";
        let mut o = opts(Some(ka), Some(ha));
        o.host = host(&["10.0.0.13", "fd00::13"]);
        let i = ok(&o);
        let vips: Vec<(IpAddr, usize)> = i
            .config
            .services
            .iter()
            .map(|s| (s.vip, s.backends.len()))
            .collect();
        assert_eq!(vips, vec![(a("10.0.0.100"), 2), (a("fd00::100"), 2)]);
        assert!(
            i.yaml.contains(
                "not carried over: keepalived.conf:8: virtual_router_id 9 (vipd runs one election"
            ),
            "{}",
            i.yaml
        );
    }

    #[test]
    fn unicast_src_ip_and_node_address_pick_the_local_backend() {
        let ka = RECIPE_KA.replace(
            "    priority 101\n",
            "    priority 101\n    unicast_src_ip 10.0.0.12\n    unicast_peer {\n        10.0.0.11\n        10.0.0.13\n    }\n",
        );
        let mut o = opts(Some(&ka), Some(RECIPE_HA));
        o.macs.insert(a("10.0.0.13"), [2, 0, 0, 0, 0, 0x13]);
        let i = ok(&o);
        let s = &i.config.services[0];
        let local: Vec<IpAddr> = s
            .backends
            .iter()
            .filter(|b| b.local)
            .map(|b| b.address)
            .collect();
        assert_eq!(
            local,
            vec![a("10.0.0.12")],
            "unicast_src_ip wins over this host's addresses"
        );
        assert_eq!(
            s.backends[2].mac.as_deref(),
            Some("02:00:00:00:00:13"),
            "--mac"
        );
        let plan = i.config.vrrp.as_ref().expect("vrrp").plan().expect("plan");
        assert_eq!(plan.unicast_peers, vec![a("10.0.0.11"), a("10.0.0.13")]);
        assert!(
            i.yaml
                .contains("this node: 10.0.0.12 (unicast_src_ip, keepalived.conf:20)")
        );
        o.node_address = Some(a("10.0.0.11"));
        o.macs.insert(a("10.0.0.12"), [2, 0, 0, 0, 0, 0x12]);
        let i = ok(&o);
        let local: Vec<IpAddr> = i.config.services[0]
            .backends
            .iter()
            .filter(|b| b.local)
            .map(|b| b.address)
            .collect();
        assert_eq!(
            local,
            vec![a("10.0.0.11")],
            "--node-address wins over unicast_src_ip"
        );
    }

    #[test]
    fn nopreempt_and_preempt_delay() {
        let with = |extra: &str| {
            let ka = RECIPE_KA.replace("    priority 101\n", &format!("    priority 101\n{extra}"));
            ok(&opts(Some(&ka), Some(RECIPE_HA)))
                .config
                .vrrp
                .expect("vrrp")
                .plan()
                .expect("plan")
        };
        let p = with("    nopreempt\n");
        assert!(!p.preempt);
        let p = with("    preempt_delay 2.5\n");
        assert!(p.preempt);
        assert_eq!(p.preempt_delay, std::time::Duration::from_millis(2500));
        let p = with("    advert_int 1\n");
        assert_eq!(p.advert_interval_cs, 100);
        let p = with("    advert_int 0.005\n");
        assert_eq!(p.advert_interval_cs, 2, "rounded up to VRRPv3's 20ms floor");
    }

    #[test]
    fn track_script_weights() {
        let with = |w: &str| {
            let ka = RECIPE_KA.replace("weight -2", w);
            ok(&opts(Some(&ka), Some(RECIPE_HA)))
                .config
                .vrrp
                .expect("vrrp")
        };
        let v = with("weight -30");
        assert_eq!((v.priority, v.track.local_apiserver), (101, 30));
        let v = with("weight 0");
        assert_eq!(
            (v.priority, v.track.local_apiserver),
            (101, 254),
            "FAULT: drop to 1"
        );
        let v = with("weight 20");
        assert_eq!(
            (v.priority, v.track.local_apiserver),
            (121, 20),
            "+20 while passing = 121 minus 20 while failing"
        );
        // A weight on the track_script line wins over the script's.
        let ka = RECIPE_KA.replace(
            "        check_apiserver\n",
            "        check_apiserver weight -7\n",
        );
        let v = ok(&opts(Some(&ka), Some(RECIPE_HA)))
            .config
            .vrrp
            .expect("vrrp");
        assert_eq!(v.track.local_apiserver, 7);
    }

    #[test]
    fn ca_file_check_sni_excluded_vips_and_announce_are_carried() {
        let ka = RECIPE_KA
            .replace(
                "    priority 101\n",
                "    priority 101\n    garp_master_repeat 2\n    garp_master_refresh 30\n",
            )
            .replace(
                "    track_script {",
                "    virtual_ipaddress_excluded {\n        fd00::100\n    }\n    track_script {",
            );
        let ha = RECIPE_HA
            .replace(
                "check verify none",
                "check verify required ca-file /etc/pki/k8s-ca.pem check-sni api.example",
            )
            .replace(
                "    server cp3 10.0.0.13:6443",
                "    server cp4 [fd00::13]:6443 check\n    server cp3 10.0.0.13:6443",
            );
        let mut o = opts(Some(&ka), Some(&ha));
        o.host = host(&["10.0.0.13", "fd00::13"]);
        let i = ok(&o);
        let v = i.config.vrrp.as_ref().expect("vrrp");
        assert_eq!((v.announce.count, v.announce.refresh.as_str()), (2, "30s"));
        let s = &i.config.services[0];
        assert_eq!(s.probe.ca, Path::new("/etc/pki/k8s-ca.pem"));
        assert_eq!(s.probe.server_name, "api.example");
        assert!(!i.yaml.contains("`verify none`"), "{}", i.yaml);
        let six = &i.config.services[1];
        assert_eq!(six.vip, a("fd00::100"), "an excluded address is a VIP too");
        assert!(six.backends[0].local);
        assert!(
            i.yaml.contains(
                "not carried over: keepalived.conf:29: virtual_ipaddress_excluded { ... } (its addresses are imported as ordinary VIPs"
            ),
            "{}",
            i.yaml
        );
    }

    #[test]
    fn priority_255_only_for_the_address_owner() {
        let ka = RECIPE_KA.replace("priority 101", "priority 255");
        let i = ok(&opts(Some(&ka), Some(RECIPE_HA)));
        assert_eq!(i.config.vrrp.as_ref().expect("vrrp").priority, 254);
        assert!(i.yaml.contains("priority 255 lowered to 254"));
        let mut o = opts(Some(&ka), Some(RECIPE_HA));
        o.host = host(&["10.0.0.13", "10.0.0.100"]);
        let i = ok(&o);
        assert_eq!(i.config.vrrp.as_ref().expect("vrrp").priority, 255, "owner");
    }

    #[test]
    fn keepalived_syntax_variants() {
        // Braces on the next line and inline, `!` and `#` comments, quotes
        // with spaces and braces inside.
        let ka = "! a comment\nvrrp_script chk { script \"/bin/check { x }\"\n weight -5 }\nvrrp_instance VI\n{\n  interface \"eth0\"   # trailing\n  virtual_router_id 3 ! also a comment\n  virtual_ipaddress\n  {\n    10.0.0.100\n  }\n  track_script { chk }\n}\n";
        let i = ok(&opts(Some(ka), Some(RECIPE_HA)));
        let v = i.config.vrrp.as_ref().expect("vrrp");
        assert_eq!((v.vrid, v.track.local_apiserver), (3, 5));
        assert_eq!(i.config.interface, "eth0");
        assert!(i.yaml.contains("\"/bin/check { x }\""), "{}", i.yaml);
    }

    #[test]
    fn malformed_inputs_fail_with_file_and_line() {
        let cases: Vec<(Option<String>, Option<String>, &[&str])> = vec![
            (
                Some(RECIPE_KA.replacen(
                    "    }\n    virtual_ipaddress",
                    "    virtual_ipaddress",
                    1,
                )),
                None,
                &["keepalived.conf:15:", "never closed"],
            ),
            (
                Some(format!("{RECIPE_KA}}}\n")),
                None,
                &["keepalived.conf:31:", "closes no block"],
            ),
            (
                Some("{\n".into()),
                None,
                &["keepalived.conf:1:", "no keyword"],
            ),
            (
                Some(RECIPE_KA.replace("virtual_router_id 51", "virtual_router_id fifty")),
                None,
                &[
                    "keepalived.conf:18:",
                    "virtual_router_id",
                    "\"fifty\"",
                    "1..=255",
                ],
            ),
            (
                Some(RECIPE_KA.replace("virtual_router_id 51", "virtual_router_id 300")),
                None,
                &["keepalived.conf:18:", "1..=255"],
            ),
            (
                Some(RECIPE_KA.replace("priority 101", "priority ${PRIORITY}")),
                None,
                &["keepalived.conf:19:", "${PRIORITY}"],
            ),
            (
                Some(RECIPE_KA.replace(
                    "    priority 101\n",
                    "    priority 101\n    advert_int fast\n",
                )),
                None,
                &["keepalived.conf:20:", "advert_int", "seconds"],
            ),
            (
                Some(RECIPE_KA.replace("10.0.0.100\n", "10.0.0.300\n")),
                None,
                &["keepalived.conf:25:", "not an IP address"],
            ),
            (
                Some(RECIPE_KA.replace(
                    "\"/etc/keepalived/check_apiserver.sh\"",
                    "\"/etc/keepalived/check",
                )),
                None,
                &["keepalived.conf:8:", "quoted string"],
            ),
            (
                None,
                Some(
                    RECIPE_HA.replace("server cp2 10.0.0.12:6443 check verify none", "server cp2"),
                ),
                &["haproxy.cfg:43:", "has no address"],
            ),
            (
                None,
                Some(RECIPE_HA.replace("10.0.0.12:6443", "cp2.example:6443")),
                &["haproxy.cfg:43:", "resolves no names"],
            ),
            (
                None,
                Some(RECIPE_HA.replace("10.0.0.12:6443", "10.0.0.12:65536")),
                &["haproxy.cfg:43:", "not one port"],
            ),
            (
                None,
                Some(RECIPE_HA.replace(
                    "check verify none\n    server cp2",
                    "check inter fast\n    server cp2",
                )),
                &["haproxy.cfg:42:", "`inter`", "\"fast\""],
            ),
            (
                None,
                Some(format!("  maxconn 10\n{RECIPE_HA}")),
                &["haproxy.cfg:1:", "outside a section"],
            ),
            (
                None,
                Some(RECIPE_HA.replace(
                    "default_backend apiserverbackend",
                    "default_backend nowhere",
                )),
                &["haproxy.cfg:30:", "no `backend nowhere`"],
            ),
            (
                None,
                Some(RECIPE_HA.replace("10.0.0.12:6443", "127.0.0.1:6443")),
                &["haproxy.cfg:43:", "write the node's address"],
            ),
            (
                None,
                Some(RECIPE_HA.replace("10.0.0.12:6443", "10.0.0.12:6444")),
                &[
                    "haproxy.cfg:43:",
                    "mode dsr does not rewrite ports",
                    "--mode nat",
                ],
            ),
            (
                None,
                Some(RECIPE_HA.replace("timeout check           10s", "timeout check 'ten")),
                &["haproxy.cfg:24:", "quoted string"],
            ),
        ];
        for (ka, ha, want) in cases {
            let o = opts(
                Some(ka.as_deref().unwrap_or(RECIPE_KA)),
                Some(ha.as_deref().unwrap_or(RECIPE_HA)),
            );
            let e = err(&o);
            for w in want {
                assert!(e.contains(w), "error {e:?} lacks {w:?}");
            }
        }
    }

    /// Every truncation of the samples (a file cut anywhere, as an editor
    /// crash or a partial copy leaves it) converts or fails with an error;
    /// none panics.
    #[test]
    fn truncated_inputs_never_panic() {
        let mut errors = 0;
        for (ka, ha) in [(RECIPE_KA, RECIPE_HA), (ODD_KA, ODD_HA)] {
            for cut in (0..=ka.len()).filter(|i| ka.is_char_boundary(*i)) {
                errors +=
                    usize::from(convert(&opts(Some(&ka[..cut]), Some(ha)), &neighbours()).is_err());
            }
            for cut in (0..=ha.len()).filter(|i| ha.is_char_boundary(*i)) {
                errors +=
                    usize::from(convert(&opts(Some(ka), Some(&ha[..cut])), &neighbours()).is_err());
            }
        }
        assert!(errors > 100, "most cuts must be refused, {errors} were");
    }

    #[test]
    fn missing_mac_names_the_fixes() {
        let ha = RECIPE_HA.replace("10.0.0.12:6443", "10.0.0.22:6443");
        let e = err(&opts(Some(RECIPE_KA), Some(&ha)));
        for w in [
            "10.0.0.22 on eth0",
            "`ping -c 1 10.0.0.22`",
            "--mac ADDR=MAC",
            "--mode nat",
        ] {
            assert!(e.contains(w), "error {e:?} lacks {w:?}");
        }
        assert!(!e.contains("10.0.0.11"), "cp1's MAC is known: {e}");
        // --mac fills the gap; mode nat needs none.
        let mut o = opts(Some(RECIPE_KA), Some(&ha));
        o.macs.insert(a("10.0.0.22"), [2, 0, 0, 0, 0, 0x22]);
        ok(&o);
        let mut o = opts(Some(RECIPE_KA), Some(&ha));
        o.mode = Mode::Nat;
        ok(&o);
    }

    #[test]
    fn nat_keeps_the_frontend_port_and_needs_no_macs() {
        let mut o = opts(Some(RECIPE_KA), Some(RECIPE_HA));
        o.mode = Mode::Nat;
        let i = convert(&o, &BTreeMap::new()).expect("nat needs no neighbour table");
        let s = &i.config.services[0];
        assert_eq!((s.mode, s.port), (Mode::Nat, 8443), "HAProxy's port kept");
        assert!(
            s.backends
                .iter()
                .all(|b| b.port == Some(6443) && b.mac.is_none())
        );
        assert_eq!(s.snat(), Ok(crate::config::Snat::Node));
        assert!(
            !i.yaml.contains("HAProxy listened on port"),
            "no port change to explain"
        );
        assert!(i.yaml.contains("controlPlaneEndpoint: 10.0.0.100:8443"));
    }

    #[test]
    fn missing_inputs_name_what_and_where() {
        let cases: Vec<(Options, &[&str])> = vec![
            (opts(None, None), &["--keepalived FILE", "--haproxy FILE"]),
            (
                opts(Some(RECIPE_KA), None),
                &[
                    "backends",
                    "keepalived.conf",
                    "--haproxy FILE",
                    "--backend ADDR",
                ],
            ),
            (
                opts(
                    Some(&RECIPE_KA.replace("        10.0.0.100\n", "")),
                    Some(RECIPE_HA),
                ),
                &["VIP", "keepalived.conf", "virtual_ipaddress"],
            ),
            (
                opts(None, Some(RECIPE_HA)),
                &["VIP", "haproxy.cfg", "--vip ADDR"],
            ),
            (
                opts(
                    Some(&RECIPE_KA.replace("    virtual_router_id 51\n", "")),
                    Some(RECIPE_HA),
                ),
                &["virtual_router_id", "keepalived.conf:15"],
            ),
            (
                opts(Some("global_defs { router_id x }\n"), Some(RECIPE_HA)),
                &["vrrp_instance", "keepalived.conf"],
            ),
            (
                opts(
                    Some(RECIPE_KA),
                    Some(&RECIPE_HA.replace("    default_backend apiserverbackend\n", "")),
                ),
                &["default_backend of frontend apiserver", "haproxy.cfg:26"],
            ),
            (
                opts(
                    Some(RECIPE_KA),
                    Some(&RECIPE_HA.replace("    server", "    #server")),
                ),
                &["servers of backend apiserverbackend", "haproxy.cfg:32"],
            ),
            (
                opts(
                    Some(RECIPE_KA),
                    Some(&RECIPE_HA.replace("10.0.0.1", "fd00::1")),
                ),
                &["service", "no mode tcp frontend", "10.0.0.100"],
            ),
        ];
        for (o, want) in cases {
            let e = err(&o);
            for w in want {
                assert!(e.contains(w), "error {e:?} lacks {w:?}");
            }
        }
        // Without VIP or interface, --vip and --interface supply them.
        let mut o = opts(None, Some(RECIPE_HA));
        o.vips = vec![a("10.0.0.100")];
        o.host = host(&[]);
        let e = err(&o);
        assert!(e.contains("--interface IF"), "{e}");
        o.interface = Some("eth1".into());
        o.node_address = Some(a("10.0.0.13"));
        let i = ok(&o);
        assert_eq!(i.config.interface, "eth1");
        assert!(i.config.vrrp.is_none() && !i.config.hold_vips);
        assert!(i.yaml.contains("No keepalived.conf: no VRRP election"));
    }

    #[test]
    fn keepalived_alone_with_backend_flags() {
        let mut o = opts(Some(RECIPE_KA), None);
        o.backends = vec![
            (a("10.0.0.11"), None),
            (a("10.0.0.12"), None),
            (a("10.0.0.13"), Some(6443)),
        ];
        let i = ok(&o);
        let s = &i.config.services[0];
        assert_eq!(
            (s.vip, s.port, s.backends.len()),
            (a("10.0.0.100"), 6443, 3)
        );
        assert!(s.backends[2].local);
        assert_eq!(s.probe, ProbeSettings::default(), "vipd's own probe");
        assert!(
            i.yaml.contains("from keepalived.conf.") && !i.yaml.contains("HAProxy"),
            "nothing to say about an HAProxy that was not given:\n{}",
            i.yaml
        );
        o.backends[2].1 = Some(6444);
        let e = err(&o);
        assert!(
            e.starts_with("--backend: server 10.0.0.13 listens on port 6444")
                && e.contains("mode dsr does not rewrite ports"),
            "{e}"
        );
        let mut o = opts(Some(RECIPE_KA), Some(RECIPE_HA));
        o.backends = vec![(a("10.0.0.11"), None)];
        assert!(err(&o).contains("--backend"));
    }

    #[test]
    fn haproxy_alone_takes_the_vip_from_its_bind() {
        let mut o = opts(None, Some(ODD_HA));
        o.host = host(&["10.1.0.11"]);
        let i = ok(&o);
        assert_eq!(i.config.services[0].vip, a("10.1.0.100"));
        assert_eq!(
            i.config.interface, "eth0",
            "the interface holding a server of this host"
        );
        assert!(i.config.services[0].backends[0].local);
    }

    /// (That the output loads needs no test here: `convert` refuses output
    /// that `Config::parse` does not take.)
    #[test]
    fn output_is_deterministic() {
        for o in [
            opts(Some(ODD_KA), Some(ODD_HA)),
            opts(Some(RECIPE_KA), Some(RECIPE_HA)),
        ] {
            assert_eq!(ok(&o).yaml, ok(&o).yaml);
        }
    }

    #[test]
    fn command_line_values() {
        assert_eq!(
            parse_mac_arg("10.0.0.11=52:54:00:00:00:11"),
            Ok((a("10.0.0.11"), [0x52, 0x54, 0, 0, 0, 0x11]))
        );
        assert!(parse_mac_arg("10.0.0.11").is_err());
        assert!(parse_mac_arg("10.0.0.11=52:54").is_err());
        assert_eq!(parse_backend_arg("10.0.0.11"), Ok((a("10.0.0.11"), None)));
        assert_eq!(
            parse_backend_arg("10.0.0.11:6444"),
            Ok((a("10.0.0.11"), Some(6444)))
        );
        assert_eq!(
            parse_backend_arg("[fd00::1]:6443"),
            Ok((a("fd00::1"), Some(6443)))
        );
        assert_eq!(parse_backend_arg("fd00::1"), Ok((a("fd00::1"), None)));
        assert!(parse_backend_arg("cp1:6443").is_err());
        assert_eq!(parse_mode("nat"), Ok(Mode::Nat));
        assert!(parse_mode("tunnel").is_err());
    }

    #[test]
    fn haproxy_values() {
        assert_eq!(ha_time("2s"), Some(2000));
        assert_eq!(ha_time("1500"), Some(1500));
        assert_eq!(ha_time("500us"), Some(1));
        assert_eq!(ha_time("1m"), Some(60_000));
        assert_eq!(ha_time("2x"), None);
        assert_eq!(ha_time("s"), None);
        assert_eq!(ha_endpoint("*:8443"), Ok((None, Some(8443))));
        assert_eq!(ha_endpoint(":8443"), Ok((None, Some(8443))));
        assert_eq!(ha_endpoint(":::8443"), Ok((None, Some(8443))));
        assert_eq!(
            ha_endpoint("10.0.0.1:6443"),
            Ok((Some(a("10.0.0.1")), Some(6443)))
        );
        assert_eq!(ha_endpoint("10.0.0.1"), Ok((Some(a("10.0.0.1")), None)));
        assert_eq!(
            ha_endpoint("fd00::1:6443"),
            Ok((Some(a("fd00::1")), Some(6443)))
        );
        assert_eq!(
            ha_endpoint("[fd00::1]:6443"),
            Ok((Some(a("fd00::1")), Some(6443)))
        );
        assert_eq!(
            ha_endpoint("ipv4@10.0.0.1:1"),
            Ok((Some(a("10.0.0.1")), Some(1)))
        );
        assert!(ha_endpoint("/run/sock").is_err());
        assert!(ha_endpoint("10.0.0.1:8000-8010").is_err());
        assert!(ha_endpoint("[fd00::1").is_err());
    }

    #[test]
    fn neighbour_tables_parse() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device\n\
                   10.0.0.11        0x1         0x2         52:54:00:00:00:11     *        eth0\n\
                   10.0.0.12        0x1         0x0         00:00:00:00:00:00     *        eth0\n\
                   10.0.0.13        0x1         0x2         52:54:00:00:00:13     *        eth1\n\
                   10.0.0.14        0x1         0x0         52:54:00:00:00:14     *        eth0\n";
        assert_eq!(
            arp_lookup(arp, "eth0", a("10.0.0.11")),
            Some([0x52, 0x54, 0, 0, 0, 0x11])
        );
        assert_eq!(arp_lookup(arp, "eth0", a("10.0.0.12")), None, "incomplete");
        assert_eq!(
            arp_lookup(arp, "eth0", a("10.0.0.13")),
            None,
            "other interface"
        );
        assert_eq!(
            arp_lookup(arp, "eth0", a("10.0.0.14")),
            None,
            "a failed entry keeps its old MAC but not ATF_COM"
        );
        let nd = "fd00::11 dev eth0 lladdr 52:54:00:06:00:11 REACHABLE\n\
                  fd00::12 dev eth0 FAILED\n\
                  fe80::1 dev eth0 lladdr 52:54:00:00:00:01 router STALE\n";
        assert_eq!(
            neigh_lookup(nd, "eth0", a("fd00::11")),
            Some([0x52, 0x54, 0, 6, 0, 0x11])
        );
        assert_eq!(neigh_lookup(nd, "eth0", a("fd00::12")), None);
        assert_eq!(neigh_lookup(nd, "eth1", a("fd00::11")), None);
        assert_eq!(
            neigh_lookup(nd, "eth0", a("fe80::1")),
            Some([0x52, 0x54, 0, 0, 0, 1])
        );
    }
}
