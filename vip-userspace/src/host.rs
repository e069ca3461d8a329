//! What vipd changes on the host besides BPF maps: sysctls that mode nat needs
//! and the VIP addresses. Every change is undone on stop, in one place (a
//! [`HostGuard`]). (The backends' neighbour entries, which mode nat's FIB
//! lookups need, stay resolved by the health probes' connections.)

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HostError {
    #[error(
        "{path}: {source}; vipd needs root and a writable /proc/sys (not a read-only container mount)"
    )]
    Sysctl {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    #[error(
        "{path} is {have}, vipd needs {want} to hold the VIPs on lo (stacked mode dsr, announce mode), and it cannot be written here ({source}); set it on the host (/etc/sysctl.d/90-vipd-dsr.conf: net.ipv4.conf.{iface}.arp_ignore = 1, net.ipv4.conf.{iface}.arp_announce = 2; README, Deploying) or run vipd with a writable /proc/sys"
    )]
    StackedSysctl {
        path: PathBuf,
        iface: String,
        have: String,
        want: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dev} does not exist: this node is an encapsulated backend and decapsulates with it; load the {module} module (`modprobe {module}`, and list it in /etc/modules-load.d/), or run a kernel built with it (README, \"Backends in other subnets\")"
    )]
    NoTunnel {
        dev: &'static str,
        module: &'static str,
    },
    #[error("`ip link set {dev} {state}` failed: {stderr}")]
    LinkSet {
        dev: String,
        state: &'static str,
        stderr: String,
    },
    #[error("running `ip` (iproute2) failed; install iproute2")]
    Ip(#[source] std::io::Error),
    #[error("`ip addr {op} {cidr} dev {iface}` failed: {stderr}")]
    Addr {
        op: &'static str,
        cidr: String,
        iface: String,
        stderr: String,
    },
}

/// Whether an XDP program is attached to the interface, as the kernel reports
/// it (IFLA_XDP through `ip -d -j link`): the one fact that says this node can
/// forward for the VIP, whoever attached it.
pub fn xdp_attached(iface: &str) -> Result<bool, HostError> {
    let out = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", iface])
        .output()
        .map_err(HostError::Ip)?;
    if !out.status.success() {
        return Err(crate::link::LinkError::NoInterface {
            ifname: iface.to_owned(),
        }
        .into());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| HostError::Ip(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    // iproute2 prints an "xdp" object only while a program is attached;
    // mode 0 (XDP_ATTACHED_NONE) would mean none.
    Ok(v.get(0)
        .and_then(|l| l.get("xdp"))
        .and_then(|x| x.get("mode"))
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|m| m != 0))
}

/// Adds or removes a VIP as a host address (/32 or /128) on the interface.
/// Adding an address that is there already, or removing one that is gone,
/// succeeds: both are the state asked for.
pub fn set_vip(iface: &str, vip: IpAddr, add: bool) -> Result<(), HostError> {
    let prefix = if vip.is_ipv4() { 32 } else { 128 };
    let cidr = format!("{vip}/{prefix}");
    let op = if add { "add" } else { "del" };
    let mut c = std::process::Command::new("ip");
    c.args(["addr", op, &cidr, "dev", iface]);
    if vip.is_ipv6() && add {
        // No duplicate address detection: the VIP must answer at once, and
        // VRRP (not DAD) decides who holds it.
        c.arg("nodad");
        // Deprecated (preferred lifetime 0): it still receives, but is never
        // picked as a source address while the node's own one exists (RFC
        // 6724 rule 3). Otherwise rule 8 (longest matching prefix, which
        // Linux caps at the address's prefix length) prefers the /128 VIP
        // over the node's /64 address for every neighbour on the subnet,
        // and the node's own connections (probes, etcd, kubelet) leave from
        // the VIP: their answers go to whichever node holds it next.
        c.args(["preferred_lft", "0"]);
    }
    let out = c.output().map_err(HostError::Ip)?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if already_so(add, &stderr) {
        return Ok(());
    }
    Err(HostError::Addr {
        op,
        cidr,
        iface: iface.to_owned(),
        stderr,
    })
}

/// Whether `ip addr add/del`'s error says the address is already as asked:
/// iproute2's wording for EEXIST and EADDRNOTAVAIL, and the kernel's
/// extended ack for an IPv4 address that is there (iproute2 prints it
/// instead of strerror since Linux 5.x: "Error: ipv4: Address already
/// assigned."). A restart after a crash (SIGKILL, OOM) finds the VIP its
/// predecessor left on `lo` and must carry on.
fn already_so(add: bool, stderr: &str) -> bool {
    if add {
        stderr.contains("File exists") || stderr.contains("Address already assigned")
    } else {
        stderr.contains("Cannot assign requested address")
    }
}

/// `changed` if `res` is Ok; otherwise `changed` undone and the error: a
/// preparation that fails half way leaves the host as it found it.
fn all_or_nothing(
    changed: Vec<Changed>,
    res: Result<(), HostError>,
) -> Result<Vec<Changed>, HostError> {
    match res {
        Ok(()) => Ok(changed),
        Err(e) => {
            restore_all(changed);
            Err(e)
        }
    }
}

/// Restores a set of changes, last first.
pub fn restore_all(changed: Vec<Changed>) {
    changed.into_iter().rev().for_each(Changed::restore);
}

/// Every change this run made to the host (sysctls, VIPs on `lo`, the
/// reserved ports), undone in one place: [`HostGuard::restore`] on an
/// orderly stop, [`HostGuard::keep`] when the pinned program keeps
/// forwarding and needs them (`vipd detach` restores them from the record),
/// and a drop without either (an error during start, a panic) restores
/// them too, so no path out of the agent leaves them behind by accident.
#[derive(Debug, Default)]
pub struct HostGuard {
    changed: Vec<Changed>,
}

impl HostGuard {
    pub fn new() -> HostGuard {
        HostGuard::default()
    }

    /// Takes over changes just made; restored after the earlier ones.
    pub fn extend(&mut self, changed: Vec<Changed>) {
        self.changed.extend(changed);
    }

    pub fn changed(&self) -> &[Changed] {
        &self.changed
    }

    /// Undoes every change, last first.
    pub fn restore(mut self) {
        restore_all(std::mem::take(&mut self.changed));
    }

    /// Leaves the changes in place (for the pinned program).
    pub fn keep(mut self) {
        self.changed.clear();
    }
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        restore_all(std::mem::take(&mut self.changed));
    }
}

/// Writes `path=old` lines for the changed values, unless a record exists
/// already (a restarted vipd sees its own values as the "old" ones; the first
/// run's record holds the real originals).
pub fn record(changed: &[Changed], file: &Path) -> Result<(), HostError> {
    if file.exists() {
        return Ok(());
    }
    let err = |source| HostError::Sysctl {
        path: file.to_owned(),
        source,
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let text: String = changed.iter().map(|c| format!("{}\n", c.line())).collect();
    std::fs::write(file, text).map_err(err)
}

/// Restores what `record` wrote, then removes the record.
pub fn restore_recorded(file: &Path) -> Result<(), HostError> {
    let err = |source| HostError::Sysctl {
        path: file.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(file).map_err(err)?;
    for line in text.lines().rev() {
        match Changed::parse(line) {
            Some(c) => c.restore(),
            None => tracing::warn!(line, "not a line vipd writes in its record; ignored"),
        }
    }
    std::fs::remove_file(file).map_err(err)
}

/// A change vipd made to the host, undone by `restore`.
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    /// A sysctl and the value it had.
    Sysctl { path: PathBuf, old: String },
    /// A VIP added to `lo` (stacked mode dsr).
    LoVip(IpAddr),
    /// A link vipd set up (the tunnel fallback device of an encap backend).
    LinkUp(String),
}

/// The record's key for [`Changed::LoVip`]: no sysctl path is this.
const LO_VIP: &str = "lo-vip";
/// The record's key for [`Changed::LinkUp`].
const LINK_UP: &str = "link-up";

impl Changed {
    /// The record's line: `path=old`, or `lo-vip=ADDR`.
    fn line(&self) -> String {
        match self {
            Changed::Sysctl { path, old } => format!("{}={old}", path.display()),
            Changed::LoVip(vip) => format!("{LO_VIP}={vip}"),
            Changed::LinkUp(dev) => format!("{LINK_UP}={dev}"),
        }
    }

    /// The change a record line describes.
    fn parse(line: &str) -> Option<Changed> {
        let (key, value) = line.split_once('=')?;
        Some(if key == LO_VIP {
            Changed::LoVip(value.parse().ok()?)
        } else if key == LINK_UP {
            Changed::LinkUp(value.to_owned())
        } else {
            Changed::Sysctl {
                path: PathBuf::from(key),
                old: value.to_owned(),
            }
        })
    }

    pub fn restore(self) {
        match self {
            Changed::LinkUp(dev) => {
                if let Err(e) = set_link(&dev, false) {
                    tracing::warn!(dev = %dev, error = %e, "setting the tunnel device down failed; `ip link set {dev} down`");
                }
            }
            Changed::LoVip(vip) => {
                if let Err(e) = set_vip("lo", vip, false) {
                    tracing::warn!(vip = %vip, error = %e, "removing the VIP from lo failed; remove it with `ip addr del`");
                }
            }
            // With a newline: a write of zero bytes is ignored by the kernel,
            // so an empty value (ip_local_reserved_ports had none) would
            // leave ours.
            Changed::Sysctl { path, old } => {
                if let Err(e) = std::fs::write(&path, format!("{old}\n")) {
                    tracing::warn!(path = %path.display(), error = %e, "restoring a sysctl failed");
                }
            }
        }
    }
}

fn sysctl(path: &str, value: &str) -> Result<Changed, HostError> {
    let path = PathBuf::from(path);
    let err = |source| HostError::Sysctl {
        path: path.clone(),
        source,
    };
    let old = std::fs::read_to_string(&path).map_err(err)?;
    std::fs::write(&path, value).map_err(err)?;
    Ok(Changed::Sysctl {
        path,
        old: old.trim().to_owned(),
    })
}

/// Mode nat on `iface`:
/// - forwarding on the interface (IPv4 and IPv6), which the FIB lookup in XDP
///   requires; with IPv6 forwarding the interface stops accepting router
///   advertisements unless accept_ra is 2, as for any router.
/// - accept_local: a translated packet whose next hop is not resolved yet is
///   handed to the kernel with our own address as source; without accept_local
///   the kernel drops it as a martian (fib_validate_source).
/// - send_redirects off: that packet leaves by the interface it came in on,
///   which would otherwise earn the client an ICMP redirect.
/// - ip_local_reserved_ports: the NAT source ports are never handed to local
///   sockets (which share the node's address when snat is `node`).
pub fn prepare_nat(iface: &str, lo: u16, hi: u16) -> Result<Vec<Changed>, HostError> {
    let mut changed = vec![];
    let res = (|| {
        routed(iface, &mut changed)?;
        let reserved = "/proc/sys/net/ipv4/ip_local_reserved_ports";
        let old = std::fs::read_to_string(reserved).map_err(|source| HostError::Sysctl {
            path: reserved.into(),
            source,
        })?;
        let old = old.trim();
        let range = format!("{lo}-{hi}");
        let new = if old.split(',').any(|r| r == range) {
            // A restarted vipd finds its own reservation still in place.
            old.to_owned()
        } else if old.is_empty() {
            format!("{lo}-{hi}")
        } else {
            format!("{old},{lo}-{hi}")
        };
        changed.push(sysctl(reserved, &new)?);
        Ok(())
    })();
    all_or_nothing(changed, res)
}

/// What the program's FIB lookups need (mode nat, and mode dsr to
/// encapsulated backends): forwarding, accept_local and no redirects on
/// `iface` (see `prepare_nat`).
fn routed(iface: &str, changed: &mut Vec<Changed>) -> Result<(), HostError> {
    changed.push(sysctl(
        &format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"),
        "1",
    )?);
    // bpf_fib_lookup answers "forwarding disabled" unless the ingress
    // device forwards (IN_DEV_FORWARD for IPv4, cnf.forwarding for IPv6).
    changed.push(sysctl(
        &format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"),
        "1",
    )?);
    changed.push(sysctl(
        &format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"),
        "1",
    )?);
    changed.push(sysctl("/proc/sys/net/ipv4/conf/all/send_redirects", "0")?);
    changed.push(sysctl(
        &format!("/proc/sys/net/ipv4/conf/{iface}/send_redirects"),
        "0",
    )?);
    Ok(())
}

/// Mode dsr with encapsulated backends, on the LB: the FIB lookup for the
/// outer header needs what mode nat's does (`routed`); the first packet to
/// a next hop without a neighbour entry is handed to the kernel, encapsulated
/// with our own address as source (accept_local).
pub fn prepare_encap(iface: &str) -> Result<Vec<Changed>, HostError> {
    let mut changed = vec![];
    let res = routed(iface, &mut changed);
    all_or_nothing(changed, res)
}

/// This node is the encapsulated backend of another LB (a stacked node whose
/// service encapsulates to the others): the kernel's fallback tunnel device
/// takes the packets to decapsulate (`tunl0` for IPIP, protocol 4, from the
/// `ipip` module; `ip6tnl0` for IPv6 in IPv6 from `ip6_tunnel`), and must be
/// up. The decapsulated packet arrives on that device with the client's
/// source, whose route leaves by another interface: reverse-path filtering
/// set to 2 (loose) on the device lets it in whatever `all` says (the kernel
/// uses the larger of the two; strict mode, 1, would drop it). The VIP on
/// `lo` is `prepare_stacked`'s.
pub fn prepare_decap(v4: bool, v6: bool) -> Result<Vec<Changed>, HostError> {
    let mut changed = vec![];
    let res = (|| {
        for (want, dev, module) in [(v4, "tunl0", "ipip"), (v6, "ip6tnl0", "ip6_tunnel")] {
            if !want {
                continue;
            }
            if !Path::new("/sys/class/net").join(dev).exists() {
                return Err(HostError::NoTunnel { dev, module });
            }
            if !crate::link::link_up(dev)? {
                set_link(dev, true)?;
                changed.push(Changed::LinkUp(dev.to_owned()));
            }
            if v4 && dev == "tunl0" {
                changed.push(sysctl("/proc/sys/net/ipv4/conf/tunl0/rp_filter", "2")?);
            }
        }
        Ok(())
    })();
    all_or_nothing(changed, res)
}

/// `ip link set DEV up|down`.
fn set_link(dev: &str, up: bool) -> Result<(), HostError> {
    let state = if up { "up" } else { "down" };
    let out = std::process::Command::new("ip")
        .args(["link", "set", dev, state])
        .output()
        .map_err(HostError::Ip)?;
    if out.status.success() {
        return Ok(());
    }
    Err(HostError::LinkSet {
        dev: dev.to_owned(),
        state,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// A stacked control plane (mode dsr with this node's own apiserver as a
/// `local: true` backend): the VRRP master rewrites a flow's destination MAC
/// to this node's, so this node's kernel must take packets for the VIP as
/// local even when it does not hold the VIP, and must never answer ARP for
/// it (only the master may, or clients would follow the wrong node):
/// - each VIP as a host address on `lo` (IPv6: deprecated, never a source,
///   see `set_vip`), so the kernel delivers packets for it locally;
/// - arp_ignore=1 on the interface: ARP is answered only for addresses
///   configured on the interface it arrived on, so not for the VIP on `lo`;
///   the master, which also holds the VIP on the interface, still answers.
///   Neighbour solicitations are already answered only for addresses on
///   the receiving interface (ndisc_recv_ns);
/// - arp_announce=2: ARP requests never carry the VIP as their source.
///
/// (Documentation/networking/ip-sysctl.rst; the kernel uses the larger of
/// the `all` and the interface value, so the interface's is enough.)
pub fn prepare_stacked(iface: &str, vips: &[IpAddr]) -> Result<Vec<Changed>, HostError> {
    let mut changed = vec![];
    let res = (|| {
        for (key, want) in [("arp_ignore", "1"), ("arp_announce", "2")] {
            let path = format!("/proc/sys/net/ipv4/conf/{iface}/{key}");
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .map(|v| v.trim().to_owned())
                    .map_err(|source| HostError::Sysctl {
                        path: p.into(),
                        source,
                    })
            };
            let have = read(&path)?;
            let all = read(&format!("/proc/sys/net/ipv4/conf/all/{key}"))?;
            // The kernel applies the larger of `all` and the interface's
            // (IN_DEV_ARP_IGNORE, IN_DEV_ARP_ANNOUNCE). Already so (the
            // operator's sysctl.d, or a pod whose /proc/sys is read-only):
            // nothing to change or restore.
            let effective = have
                .parse::<u32>()
                .unwrap_or(0)
                .max(all.parse().unwrap_or(0));
            if effective.to_string() == want {
                continue;
            }
            match sysctl(&path, want) {
                Ok(c) => changed.push(c),
                Err(HostError::Sysctl { source, .. }) => {
                    return Err(HostError::StackedSysctl {
                        path: path.into(),
                        iface: iface.to_owned(),
                        have,
                        want,
                        source,
                    });
                }
                Err(e) => return Err(e),
            }
        }
        for vip in vips {
            set_vip("lo", *vip, true)?;
            changed.push(Changed::LoVip(*vip));
        }
        Ok(())
    })();
    all_or_nothing(changed, res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_already_as_asked_is_not_an_error() {
        assert!(already_so(true, "RTNETLINK answers: File exists"));
        assert!(already_so(true, "Error: ipv4: Address already assigned."));
        assert!(already_so(
            false,
            "RTNETLINK answers: Cannot assign requested address"
        ));
        assert!(!already_so(true, "Cannot find device \"lo0\""));
        assert!(!already_so(false, "Error: ipv4: Address already assigned."));
    }

    /// `vipd detach` reads back what the first run wrote: every kind of
    /// change survives the record, and the empty old value of a sysctl too.
    #[test]
    fn record_lines_round_trip() {
        for c in [
            Changed::Sysctl {
                path: PathBuf::from("/proc/sys/net/ipv4/ip_local_reserved_ports"),
                old: String::new(),
            },
            Changed::Sysctl {
                path: PathBuf::from("/proc/sys/net/ipv4/conf/eth0/arp_ignore"),
                old: "0".into(),
            },
            Changed::LoVip("10.0.0.100".parse().expect("address")),
            Changed::LoVip("fd00::100".parse().expect("address")),
        ] {
            assert_eq!(Changed::parse(&c.line()), Some(c));
        }
        assert_eq!(Changed::parse("lo-vip=nonsense"), None);
        assert_eq!(Changed::parse("no equals sign"), None);
    }

    /// A sysctl "file" in a temporary directory, holding `value`.
    fn fake_sysctl(dir: &Path, name: &str, value: &str) -> Changed {
        let path = dir.join(name);
        std::fs::write(&path, value).expect("write");
        Changed::Sysctl {
            path,
            old: "0".into(),
        }
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).expect("read")
    }

    /// The guard undoes every change on restore and on drop (an error
    /// during start), and none when kept for the pinned program.
    #[test]
    fn the_guard_restores_unless_kept() {
        let dir = std::env::temp_dir().join(format!("vipd-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut g = HostGuard::new();
        g.extend(vec![fake_sysctl(&dir, "a", "1\n")]);
        g.extend(vec![fake_sysctl(&dir, "b", "1\n")]);
        assert_eq!(g.changed().len(), 2);
        g.restore();
        assert_eq!(
            (read(&dir, "a"), read(&dir, "b")),
            ("0\n".into(), "0\n".into())
        );

        let mut g = HostGuard::new();
        g.extend(vec![fake_sysctl(&dir, "a", "1\n")]);
        g.keep();
        assert_eq!(read(&dir, "a"), "1\n", "kept for the pinned program");

        let mut g = HostGuard::new();
        g.extend(vec![fake_sysctl(&dir, "a", "1\n")]);
        drop(g);
        assert_eq!(read(&dir, "a"), "0\n", "restored on drop");
        std::fs::remove_dir_all(&dir).expect("rm");
    }
}
