//! haproxy.cfg: sections of lines of words; `#` comments, quotes, `\` escapes;
//! the frontends, backends and servers vipd imports.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
};

use super::{
    ImportError, Source,
    explain::{Skip, why},
    keepalived::show_words,
    syntax, unsupported,
};

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
    pub(super) fn kw(&self) -> &str {
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
    pub(super) fn show(&self) -> String {
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
pub(super) struct Server {
    pub(super) name: String,
    pub(super) line: usize,
    pub(super) addr: IpAddr,
    pub(super) port: Option<u16>,
    pub(super) checked: bool,
    pub(super) tls_check: bool,
    pub(super) verify_none: bool,
    pub(super) inter_ms: Option<u64>,
    pub(super) fall: Option<u32>,
    pub(super) rise: Option<u32>,
    pub(super) ca: Option<String>,
    pub(super) sni: Option<String>,
}

impl Server {
    /// A server line's address with no options: unchecked, HAProxy's
    /// defaults.
    pub(super) fn new(name: String, line: usize, addr: IpAddr, port: Option<u16>) -> Self {
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
pub(super) struct Pool {
    pub(super) line: usize,
    pub(super) servers: Vec<Server>,
    pub(super) httpchk: Option<usize>,
    pub(super) uri: Option<(String, usize)>,
    pub(super) connect_ssl: bool,
    pub(super) timeout_check_ms: Option<u64>,
}

#[derive(Debug, Clone)]
pub(super) struct Bind {
    pub(super) addr: Option<IpAddr>,
    pub(super) port: Option<u16>,
    pub(super) line: usize,
}

/// Where clients come in (a frontend or listen section, or `--backend`) and
/// the pool it sends them to.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) binds: Vec<Bind>,
    pub(super) pool: Pool,
}

#[derive(Debug, Default)]
pub(super) struct Haproxy {
    pub(super) entries: Vec<Entry>,
    pub(super) skipped: BTreeSet<Skip>,
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

pub(super) fn parse_haproxy(src: &Source) -> Result<Haproxy, ImportError> {
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::import::tests::a;

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
}
