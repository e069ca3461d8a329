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
    emit::{BackendOut, Out, ProbeOut, ServiceOut, ha_show, ip, probe_for, q, write_vrrp},
    explain::{Skip, why},
    haproxy::{Bind, Entry, Haproxy, Pool, Server, parse_haproxy},
    keepalived::{Keepalived, parse_keepalived},
};
use crate::{
    config::{Config, ConfigError, Mode, ProbeSettings, format_mac, parse_mac},
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
