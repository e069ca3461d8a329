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

mod emit;
mod explain;
mod haproxy;
mod keepalived;
mod node;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use thiserror::Error;

pub use self::node::{KernelNeighbours, host_addresses};
use self::{
    emit::{BackendOut, Plan, ProbeOut, ServiceOut, ha_show, probe_for, write_config},
    explain::{Skip, why},
    haproxy::{Bind, Entry, Haproxy, Pool, Server, parse_haproxy},
    keepalived::{Keepalived, parse_keepalived},
};
use crate::{
    config::{Config, ConfigError, Mode, ProbeSettings, parse_mac},
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
    /// The other nodes' keepalived.conf, by node name: with them the output
    /// is one file for every node, each node's priority (and interface,
    /// where it differs) under `nodes:`.
    pub other_nodes: Vec<(String, Source)>,
    /// This node's name under `nodes:` (NODE_NAME, else the hostname).
    pub node_name: String,
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

impl Options {
    /// keepalived.conf's name in comments and errors; empty without one.
    pub(super) fn ka_file(&self) -> &str {
        self.keepalived.as_ref().map_or("", |s| s.name.as_str())
    }

    /// haproxy.cfg's name in comments and errors; empty without one.
    pub(super) fn ha_file(&self) -> &str {
        self.haproxy.as_ref().map_or("", |s| s.name.as_str())
    }
}

/// Converts the inputs; see the module comment.
pub fn convert(opts: &Options, neigh: &dyn Neighbours) -> Result<Imported, ImportError> {
    let (mut ka, ha) = read_inputs(opts)?;
    let others = read_other_nodes(opts, ka.as_ref())?;
    let vips = pick_vips(opts, ka.as_ref(), &ha)?;
    let (locals, local_from) = this_node(opts, ka.as_ref());
    let mut top_remarks: Vec<String> = vec![];
    let interface = pick_interface(opts, ka.as_ref(), &ha, &vips, &locals, &mut top_remarks)?;
    let Haproxy {
        entries,
        skipped: mut ha_skipped,
    } = ha;
    let (mut services, served) = plan_services(opts, &entries, &vips, &locals, &mut ha_skipped)?;
    note_unused(
        &entries,
        &vips,
        &served,
        &mut ka,
        &mut ha_skipped,
        &mut top_remarks,
    );
    if services.is_empty() {
        return Err(ImportError::Missing {
            what: "service".into(),
            place: if opts.haproxy.is_some() {
                format!("{} (no mode tcp frontend or listen section serves the VIPs {} with servers of their address family)", opts.ha_file(), join(&vips.iter().map(|v| v.0).collect::<Vec<_>>()))
            } else {
                "--backend (no backend of the VIPs' address family)".into()
            },
            fix: "the apiservers must be servers of a mode tcp frontend's default_backend that binds the VIP or all addresses".into(),
        });
    }
    if opts.mode == Mode::Dsr {
        resolve_macs(opts, neigh, &interface, &mut services)?;
    }
    let any_local = services.iter().any(|s| s.backends.iter().any(|b| b.local));
    let yaml = write_config(
        opts,
        ka.as_ref(),
        &Plan {
            vips,
            local_from,
            interface,
            top_remarks,
            services,
            ha_skipped,
            any_local,
            others,
        },
    );
    let config = Config::parse(Path::new("vipd-import.yaml"), &yaml)
        .map_err(|source| ImportError::Refused { source })?;
    let not_carried_over = yaml.matches("# not carried over: ").count();
    Ok(Imported {
        yaml,
        config,
        not_carried_over,
    })
}

/// Checks the flags against each other, parses the files, and lets the
/// `--backend` flags stand in for haproxy.cfg.
fn read_inputs(opts: &Options) -> Result<(Option<Keepalived>, Haproxy), ImportError> {
    check_flags(opts)?;
    let ka = opts.keepalived.as_ref().map(parse_keepalived).transpose()?;
    let ha = match &opts.haproxy {
        Some(src) => parse_haproxy(src)?,
        None if opts.backends.is_empty() => {
            return Err(ImportError::Missing {
                what: "backends".into(),
                place: format!("{} (keepalived moves the VIP; HAProxy knew the apiservers)", opts.ka_file()),
                fix: "add --haproxy FILE, or name each apiserver with --backend ADDR[:PORT] (port 6443 by default)".into(),
            });
        }
        None => backends_as_haproxy(&opts.backends),
    };
    if let Some(k) = &ka {
        check_instance(k, opts.ka_file())?;
    }
    Ok((ka, ha))
}

/// The other nodes' keepalived.conf files, parsed: one VRRP group, so the
/// same VRID as this node's, and one name each.
fn read_other_nodes(
    opts: &Options,
    ka: Option<&Keepalived>,
) -> Result<Vec<(String, String, Keepalived)>, ImportError> {
    if opts.other_nodes.is_empty() {
        return Ok(vec![]);
    }
    let Some(mine) = ka else {
        return Err(ImportError::Usage {
            flag: "--other-node",
            message: "the other nodes' keepalived.conf needs this node's (--keepalived FILE)"
                .into(),
        });
    };
    let vrid = mine.vrid.map(|v| v.0);
    let mut names = BTreeSet::from([opts.node_name.clone()]);
    let mut out = vec![];
    for (name, src) in &opts.other_nodes {
        if name.is_empty() || !names.insert(name.clone()) {
            return Err(ImportError::Usage {
                flag: "--other-node",
                message: format!(
                    "{name:?} is empty or named twice (this node is {:?}; set --node-name if that is wrong); give each node's name as `kubectl get nodes` shows it",
                    opts.node_name
                ),
            });
        }
        let k = parse_keepalived(src)?;
        check_instance(&k, &src.name)?;
        if k.vrid.map(|v| v.0) != vrid {
            let line = k.vrid.map_or(0, |v| v.1);
            return Err(unsupported(
                &src.name,
                line,
                format!(
                    "virtual_router_id differs from {}'s ({}): one file serves one VRRP group; import each group on its own",
                    opts.ka_file(),
                    vrid.unwrap_or(0)
                ),
            ));
        }
        out.push((name.clone(), src.name.clone(), k));
    }
    Ok(out)
}

/// Each input comes from one place: a file or its flags, not both.
fn check_flags(opts: &Options) -> Result<(), ImportError> {
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
    Ok(())
}

/// `--backend` as one entry on all addresses, every server checked over TLS.
fn backends_as_haproxy(backends: &[(IpAddr, Option<u16>)]) -> Haproxy {
    Haproxy {
        entries: vec![Entry {
            binds: vec![Bind {
                addr: None,
                port: None,
                line: 0,
            }],
            pool: Pool {
                servers: backends
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
    }
}

/// keepalived.conf must have the instance that holds the VIP, with its VRID.
fn check_instance(k: &Keepalived, ka_file: &str) -> Result<(), ImportError> {
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
    Ok(())
}

/// The VIPs, IPv4 first: keepalived's, else --vip, else the addresses
/// HAProxy bound. Each with its keepalived.conf line.
fn pick_vips(
    opts: &Options,
    ka: Option<&Keepalived>,
    ha: &Haproxy,
) -> Result<Vec<(IpAddr, Option<usize>)>, ImportError> {
    let mut vips: Vec<(IpAddr, Option<usize>)> = match ka {
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
                format!(
                    "{} (no virtual_ipaddress in its vrrp_instance)",
                    opts.ka_file()
                )
            } else {
                format!("{} (every bind is on all addresses)", opts.ha_file())
            },
            fix: if ka.is_some() {
                "add the VIP to the vrrp_instance's virtual_ipaddress block".into()
            } else {
                "add --keepalived FILE, or give the VIP with --vip ADDR".into()
            },
        });
    }
    vips.sort_by_key(|(a, _)| (a.is_ipv6(), *a));
    Ok(vips)
}

/// Which backend is this node: its addresses, and where that came from.
fn this_node(opts: &Options, ka: Option<&Keepalived>) -> (Vec<IpAddr>, String) {
    match (opts.node_address, ka) {
        (Some(a), _) => (vec![a], format!("{a} (--node-address)")),
        (
            None,
            Some(Keepalived {
                src_ip: Some((a, line)),
                ..
            }),
        ) => (
            vec![*a],
            format!("{a} (unicast_src_ip, {}:{line})", opts.ka_file()),
        ),
        _ => (
            opts.host.iter().map(|h| h.addr).collect(),
            "an address of this host".into(),
        ),
    }
}

/// The interface: --interface, keepalived's, or the one of this host that
/// carries a VIP or a backend's address. A choice worth a word goes into
/// `remarks`.
fn pick_interface(
    opts: &Options,
    ka: Option<&Keepalived>,
    ha: &Haproxy,
    vips: &[(IpAddr, Option<usize>)],
    locals: &[IpAddr],
    remarks: &mut Vec<String>,
) -> Result<String, ImportError> {
    let ka_file = opts.ka_file();
    Ok(
        match (&opts.interface, ka.and_then(|k| k.interface.clone())) {
            (Some(i), Some((k, line))) => {
                if *i != k {
                    remarks.push(format!(
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
                        remarks.push(format!(
                            "interface {}: the one that carries {} on this host",
                            h.interface, h.addr
                        ));
                        h.interface.clone()
                    }
                    None => {
                        return Err(ImportError::Missing {
                            what: "interface".into(),
                            place: format!(
                                "{} (only keepalived.conf names it, and no address of this host is a VIP or a server)",
                                opts.ha_file()
                            ),
                            fix: "pass --interface IF, the interface that carries the VIP".into(),
                        });
                    }
                }
            }
        },
    )
}

/// Each entry's probe, worked out once, and its comments written once.
fn entry_probes(
    opts: &Options,
    entries: &[Entry],
    ha_skipped: &mut BTreeSet<Skip>,
) -> Vec<ProbeOut> {
    entries
        .iter()
        .map(|e| {
            if opts.haproxy.is_some() {
                probe_for(opts.ha_file(), &e.pool, ha_skipped)
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
        .collect()
}

/// The port a server listens on: its own, else the one the client used.
fn port_of(s: &Server, b: &Bind) -> u16 {
    s.port.or(b.port).unwrap_or(6443)
}

/// The service port of a bind served by `servers`, `first` among them.
/// Mode dsr does not rewrite ports: every server must listen on it.
fn service_port(
    opts: &Options,
    b: &Bind,
    first: &Server,
    servers: &[&Server],
) -> Result<u16, ImportError> {
    Ok(match opts.mode {
        Mode::Dsr => {
            let p = port_of(first, b);
            if let Some(other) = servers.iter().find(|s| port_of(s, b) != p) {
                let message = format!(
                    "server {} listens on port {}, server {} on {p}; mode dsr does not rewrite ports, so every apiserver must listen on the service port: use --mode nat",
                    other.name,
                    port_of(other, b),
                    first.name
                );
                return Err(match opts.haproxy {
                    Some(_) => unsupported(opts.ha_file(), other.line, message),
                    None => ImportError::Usage {
                        flag: "--backend",
                        message,
                    },
                });
            }
            p
        }
        Mode::Nat => b.port.unwrap_or_else(|| port_of(first, b)),
    })
}

/// Services: every VIP with every entry point that serves it, and the set of
/// VIPs that got one.
fn plan_services(
    opts: &Options,
    entries: &[Entry],
    vips: &[(IpAddr, Option<usize>)],
    locals: &[IpAddr],
    ha_skipped: &mut BTreeSet<Skip>,
) -> Result<(Vec<ServiceOut>, BTreeSet<IpAddr>), ImportError> {
    let mut probes = entry_probes(opts, entries, ha_skipped);
    let mut services: Vec<ServiceOut> = vec![];
    let mut served: BTreeSet<IpAddr> = BTreeSet::new();
    for (vip, _) in vips {
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
                let port = service_port(opts, b, first, &servers)?;
                if services.iter().any(|s| s.vip == *vip && s.port == port) {
                    continue;
                }
                served.insert(*vip);
                let mut remarks = vec![];
                if let Some(bp) = b.port
                    && bp != port
                {
                    remarks.push(format!(
                        "HAProxy listened on port {bp} ({}:{}). Mode dsr does not rewrite ports, so the service is the apiservers' own port {port} and vipd needs no frontend port: point clients that use :{bp} (controlPlaneEndpoint, kubeconfigs, kubelet.conf, the cluster-info ConfigMap) at :{port}, or import with --mode nat to keep :{bp}",
                        opts.ha_file(),
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
                        let p = port_of(s, b);
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
    Ok((services, served))
}

/// Binds on other addresses than the VIPs, and VIPs no service serves,
/// become comments: where they were written, else at the top.
fn note_unused(
    entries: &[Entry],
    vips: &[(IpAddr, Option<usize>)],
    served: &BTreeSet<IpAddr>,
    ka: &mut Option<Keepalived>,
    ha_skipped: &mut BTreeSet<Skip>,
    top_remarks: &mut Vec<String>,
) {
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
    for (vip, line) in vips {
        if !served.contains(vip) {
            match (line, ka.as_mut()) {
                (Some(line), Some(k)) => {
                    k.skipped
                        .insert(Skip::new(*line, vip.to_string(), why::VIP_NO_BACKEND));
                }
                _ => top_remarks.push(format!("VIP {vip}: {}", why::VIP_NO_BACKEND)),
            }
        }
    }
}

/// MACs: mode dsr sends to each other node by MAC. The command line's win
/// over the neighbour table; every one must be known. One file for every
/// node (`--other-node`) carries only the command line's: each node's vipd
/// reads the others' MACs from its own neighbour table at run time, and a
/// MAC read here would name this node's view of a NIC that may be replaced.
fn resolve_macs(
    opts: &Options,
    neigh: &dyn Neighbours,
    interface: &str,
    services: &mut [ServiceOut],
) -> Result<(), ImportError> {
    let mut unknown = vec![];
    for b in services.iter_mut().flat_map(|s| s.backends.iter_mut()) {
        if !opts.other_nodes.is_empty() {
            b.mac = opts.macs.get(&b.addr).copied();
            continue;
        }
        if b.local {
            continue;
        }
        b.mac = opts
            .macs
            .get(&b.addr)
            .copied()
            .or_else(|| neigh.mac(interface, b.addr));
        if b.mac.is_none() && !unknown.contains(&b.addr) {
            unknown.push(b.addr);
        }
    }
    if !unknown.is_empty() {
        return Err(ImportError::MacUnknown {
            interface: interface.to_owned(),
            addrs: unknown,
        });
    }
    Ok(())
}
