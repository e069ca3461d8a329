//! keepalived.conf: words per line, `{`/`}` blocks (on the same line or the
//! next), `#` and `!` comments, "quoted strings"; what an instance holds.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{
    ImportError, Source,
    explain::{Skip, why},
    syntax, unsupported,
};

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
    pub(super) fn kw(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    /// The statement as a comment shows it (a block's body is not repeated).
    pub(super) fn show(&self) -> String {
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

pub(super) fn show_words(words: &[String]) -> String {
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
pub(super) struct Tracked {
    pub(super) name: String,
    pub(super) line: usize,
    pub(super) script: Option<String>,
    pub(super) weight: i32,
}

#[derive(Debug, Default)]
pub(super) struct Keepalived {
    pub(super) instance: Option<(String, usize)>,
    pub(super) interface: Option<(String, usize)>,
    pub(super) vrid: Option<(u8, usize)>,
    pub(super) priority: Option<(u8, usize)>,
    pub(super) advert_ms: Option<(u64, usize)>,
    pub(super) nopreempt: Option<usize>,
    pub(super) preempt_delay_ms: Option<u64>,
    pub(super) peers: Vec<(IpAddr, usize)>,
    pub(super) src_ip: Option<(IpAddr, usize)>,
    pub(super) vips: Vec<(IpAddr, usize)>,
    pub(super) tracked: Vec<Tracked>,
    pub(super) version: Option<(u8, usize)>,
    pub(super) garp_repeat: Option<u32>,
    pub(super) garp_refresh_ms: Option<u64>,
    pub(super) skipped: BTreeSet<Skip>,
}

impl Keepalived {
    fn skip(&mut self, s: &Stmt, why: &'static str) {
        self.skipped.insert(Skip::new(s.line, s.show(), why));
    }
}

pub(super) fn parse_keepalived(src: &Source) -> Result<Keepalived, ImportError> {
    let file = src.name.as_str();
    let tree = ka_tree(file, &src.text)?;
    let mut k = Keepalived::default();
    let mut scripts: BTreeMap<&str, &Stmt> = BTreeMap::new();
    let mut instances: Vec<&Stmt> = vec![];
    for s in &tree {
        match (s.kw(), s.block.is_some()) {
            ("global_defs", true) => ka_global_defs(file, s, &mut k)?,
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
    let mut track_refs: Vec<TrackRef> = vec![];
    for (n, inst) in instances.iter().enumerate() {
        ka_instance(file, inst, n == 0, &mut k, &mut track_refs)?;
    }
    ka_track_scripts(file, track_refs, scripts, &mut k)?;
    Ok(k)
}

/// A `track_script` entry: the script's name, the weight given there, and
/// its line.
type TrackRef<'a> = (&'a str, Option<i32>, usize);

/// `global_defs`: the VRRP version and the gratuitous ARP settings.
fn ka_global_defs(file: &str, s: &Stmt, k: &mut Keepalived) -> Result<(), ImportError> {
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
    Ok(())
}

/// One `vrrp_instance`. Every instance's VIPs are served; of the other
/// settings, only the first (`primary`) instance's are used (vipd has one
/// election).
fn ka_instance<'a>(
    file: &str,
    inst: &'a Stmt,
    primary: bool,
    k: &mut Keepalived,
    track_refs: &mut Vec<TrackRef<'a>>,
) -> Result<(), ImportError> {
    if primary {
        k.instance = Some((ka_word(file, inst, 1)?.to_owned(), inst.line));
    }
    for s in inst.block() {
        let kw = s.kw();
        match kw {
            "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                if kw == "virtual_ipaddress_excluded" {
                    k.skip(s, why::EXCLUDED);
                }
                ka_vips(file, s, k)?;
            }
            "interface" => ka_interface(file, s, k)?,
            _ if !primary => k.skip(s, why::SECOND_INSTANCE),
            _ => ka_setting(file, s, k, track_refs)?,
        }
    }
    Ok(())
}

/// An instance's `interface`: all of them must be the same.
fn ka_interface(file: &str, s: &Stmt, k: &mut Keepalived) -> Result<(), ImportError> {
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
    Ok(())
}

/// One setting of the first instance.
fn ka_setting<'a>(
    file: &str,
    s: &'a Stmt,
    k: &mut Keepalived,
    track_refs: &mut Vec<TrackRef<'a>>,
) -> Result<(), ImportError> {
    match s.kw() {
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
        "unicast_peer" => ka_unicast_peers(file, s, k)?,
        "version" => k.version = Some((ka_int(file, s, 1, 2, 3)?, s.line)),
        "authentication" => k.skip(s, why::AUTH),
        "track_script" => ka_track_refs(file, s, track_refs)?,
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
    Ok(())
}

/// `unicast_peer { ADDR [options] ... }`.
fn ka_unicast_peers(file: &str, s: &Stmt, k: &mut Keepalived) -> Result<(), ImportError> {
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
    Ok(())
}

/// `track_script { NAME [weight W [reverse]] ... }`: the scripts tracked.
fn ka_track_refs<'a>(
    file: &str,
    s: &'a Stmt,
    track_refs: &mut Vec<TrackRef<'a>>,
) -> Result<(), ImportError> {
    for t in s.block() {
        // `name` or `name weight W`; an inline block may list
        // several names.
        let mut words = t.words.iter().peekable();
        while let Some(name) = words.next() {
            let mut weight = None;
            if words.peek().is_some_and(|w| *w == "weight") {
                words.next();
                let w = words
                    .next()
                    .ok_or_else(|| syntax(file, t.line, "`weight` needs a value"))?;
                weight = Some(ka_weight(file, t.line, w)?);
                if words.peek().is_some_and(|w| *w == "reverse") {
                    words.next();
                }
            }
            track_refs.push((name.as_str(), weight, t.line));
        }
    }
    Ok(())
}

/// The scripts the first instance tracks; the rest are noted whole.
fn ka_track_scripts(
    file: &str,
    track_refs: Vec<TrackRef>,
    scripts: BTreeMap<&str, &Stmt>,
    k: &mut Keepalived,
) -> Result<(), ImportError> {
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
    Ok(())
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
