//! The facts about a network interface that the agent, the dataplane and VRRP
//! all need: its index, its MAC, whether the link is up, its addresses and
//! whether an IPv6 address may send yet. One error type, one "no such
//! interface". Everything asks the kernel of the calling thread's network
//! namespace directly (ioctl, getifaddrs, /proc/thread-self), never `ip`.

use std::ffi::c_int;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LinkError {
    #[error(
        "interface {ifname:?} not found; check `interface:` in the config against `ip link show`"
    )]
    NoInterface { ifname: String },
    #[error(
        "{ifname:?} is not a valid interface name (1 to 15 bytes, no NUL); check `interface:` in the config"
    )]
    BadName { ifname: String },
    #[error("{ifname}: ioctl {request} failed; check `ip link show {ifname}`")]
    Ioctl {
        ifname: String,
        request: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{ifname}: link type {hw_type} is not Ethernet (ARPHRD_ETHER); VIP announcements need an Ethernet interface, pick one in `interface:`"
    )]
    NotEthernet { ifname: String, hw_type: u16 },
    #[error("listing the interfaces and their addresses (getifaddrs) failed")]
    List(#[source] network_interface::Error),
}

/// Whether an address can be a source right now (VRRP's adverts come from
/// the link-local address, which DAD may still hold back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    Usable,
    /// IPv6 duplicate address detection still runs (RFC 4862 section 5.4,
    /// up to `dad_transmits` x `retrans_time_ms` after the link comes up):
    /// the kernel refuses it as a source (EINVAL), so no advert leaves.
    Tentative,
    /// DAD found another node with this address (RFC 4862 section 5.4.5):
    /// unusable until it is fixed and the address re-added.
    DadFailed,
    /// Not on the interface (an admin-down link deletes IPv6 addresses).
    Missing,
}

impl SourceState {
    /// What the operator reads in the log.
    pub fn describe(self) -> &'static str {
        match self {
            SourceState::Usable => "usable",
            SourceState::Tentative => {
                "tentative: duplicate address detection (RFC 4862 5.4) still runs, and the kernel sends nothing from a tentative address"
            }
            SourceState::DadFailed => {
                "failed duplicate address detection (another node on the link has it); fix the duplicate MAC or address, then re-add it or bounce the link"
            }
            SourceState::Missing => "not on the interface",
        }
    }
}

/// Whether `source` can send from `ifname`. IPv4 has no DAD here and is
/// always usable; an IPv6 address is looked up in the calling thread's
/// namespace in `/proc/thread-self/net/if_inet6` (its flags are those of
/// `ip -6 addr`: tentative, dadfailed, optimistic).
pub fn source_state(ifname: &str, source: IpAddr) -> io::Result<SourceState> {
    let IpAddr::V6(addr) = source else {
        return Ok(SourceState::Usable);
    };
    let text = std::fs::read_to_string("/proc/thread-self/net/if_inet6")?;
    Ok(parse_if_inet6(&text, ifname, addr))
}

/// One line of `/proc/net/if_inet6` per address: 32 hex digits of address,
/// then ifindex, prefix length, scope and flags in hex, then the interface
/// name (net/ipv6/addrconf.c, if6_seq_show).
fn parse_if_inet6(text: &str, ifname: &str, addr: Ipv6Addr) -> SourceState {
    let want = addr
        .octets()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let flags = text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 6 && f[5] == ifname && f[0].eq_ignore_ascii_case(&want))
            .then(|| u32::from_str_radix(f[4], 16).ok())
            .flatten()
    });
    match flags {
        None => SourceState::Missing,
        Some(f) if f & libc::IFA_F_DADFAILED != 0 => SourceState::DadFailed,
        // An optimistic address (RFC 4429) may send while DAD runs.
        Some(f) if f & libc::IFA_F_TENTATIVE != 0 && f & libc::IFA_F_OPTIMISTIC == 0 => {
            SourceState::Tentative
        }
        Some(_) => SourceState::Usable,
    }
}

/// Every interface of this host by name with its addresses, in the order
/// [`addresses`] describes; an interface without addresses is listed with
/// none.
pub fn all_addrs() -> Result<Vec<(String, Vec<IpAddr>)>, LinkError> {
    use network_interface::{NetworkInterface, NetworkInterfaceConfig};
    Ok(NetworkInterface::show()
        .map_err(LinkError::List)?
        .into_iter()
        .map(|i| (i.name, i.addr.iter().map(|a| a.ip()).collect()))
        .collect())
}

/// An interface of the node and its addresses with their prefix lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addrs: Vec<(IpAddr, u8)>,
}

/// Every interface of this host with its addresses and their prefix
/// lengths (from the netmask getifaddrs reports; an address without one
/// counts as a host address).
pub fn all_prefixes() -> Result<Vec<Interface>, LinkError> {
    use network_interface::{NetworkInterface, NetworkInterfaceConfig};
    Ok(NetworkInterface::show()
        .map_err(LinkError::List)?
        .into_iter()
        .map(|i| {
            let addrs = i
                .addr
                .iter()
                .map(|a| {
                    let len = match a.netmask() {
                        Some(IpAddr::V4(m)) => u32::from(m).count_ones(),
                        Some(IpAddr::V6(m)) => u128::from(m).count_ones(),
                        None if a.ip().is_ipv4() => 32,
                        None => 128,
                    };
                    (a.ip(), u8::try_from(len).unwrap_or(128))
                })
                .collect();
            Interface {
                name: i.name,
                addrs,
            }
        })
        .collect())
}

/// The interface's addresses in the order the kernel lists them (getifaddrs,
/// an RTM_GETADDR dump of the calling thread's network namespace): for IPv4,
/// primaries before secondaries, each in the order they were added. The
/// crate groups the entries by name, appending in order.
pub fn addresses(ifname: &str) -> Result<Vec<IpAddr>, LinkError> {
    let mine: Vec<Vec<IpAddr>> = all_addrs()?
        .into_iter()
        .filter(|(name, _)| name == ifname)
        .map(|(_, addrs)| addrs)
        .collect();
    if mine.is_empty() {
        return Err(LinkError::NoInterface {
            ifname: ifname.to_owned(),
        });
    }
    Ok(mine.into_iter().flatten().collect())
}

/// Whether the link can carry traffic: administratively up (IFF_UP) and with
/// carrier (IFF_RUNNING, RFC 2863 operstate up). Asks the kernel directly
/// (SIOCGIFFLAGS) rather than /sys, which shows whichever namespace it was
/// mounted in.
pub fn link_up(ifname: &str) -> Result<bool, LinkError> {
    // The request constants are c_ulong in libc for every Linux target, but
    // ioctl(2) takes an int on musl (the static build): libc::Ioctl is the
    // target's own type.
    let req = ioctl_ifreq(ifname, libc::SIOCGIFFLAGS as libc::Ioctl, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled ifru_flags.
    let flags = c_int::from(unsafe { req.ifr_ifru.ifru_flags });
    let want = libc::IFF_UP | libc::IFF_RUNNING;
    Ok(flags & want == want)
}

/// The interface index in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, LinkError> {
    let name = ifname_raw(ifname)?;
    // SAFETY: name is NUL-terminated (ifname_raw leaves at least one NUL).
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(LinkError::NoInterface {
            ifname: ifname.to_owned(),
        });
    }
    Ok(index)
}

/// The interface's Ethernet address (SIOCGIFHWADDR); an error for links
/// that are not Ethernet, since ARP/ND announcements assume 6-byte MACs.
pub fn mac_address(ifname: &str) -> Result<[u8; 6], LinkError> {
    let req = ioctl_ifreq(ifname, libc::SIOCGIFHWADDR as libc::Ioctl, "SIOCGIFHWADDR")?;
    // SAFETY: SIOCGIFHWADDR filled ifru_hwaddr.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(LinkError::NotEthernet {
            ifname: ifname.to_owned(),
            hw_type: hw.sa_family,
        });
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data) {
        // c_char is i8 or u8 depending on the target; the byte is the same.
        *m = b as u8;
    }
    Ok(mac)
}

fn ioctl_ifreq(
    ifname: &str,
    request: libc::Ioctl,
    request_name: &'static str,
) -> Result<libc::ifreq, LinkError> {
    let name = ifname_raw(ifname)?;
    // Any socket reaches the device ioctls (dev_ioctl); a datagram socket
    // needs no privilege.
    // SAFETY: socket(2) takes no pointers.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(LinkError::Ioctl {
            ifname: ifname.to_owned(),
            request: "socket(AF_INET, SOCK_DGRAM)",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: raw is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain C data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    req.ifr_name = name;
    // SAFETY: fd is open and req is a valid ifreq the kernel reads the name
    // from and writes the answer into, for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, &raw mut req) };
    if rc < 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENODEV) {
            return Err(LinkError::NoInterface {
                ifname: ifname.to_owned(),
            });
        }
        return Err(LinkError::Ioctl {
            ifname: ifname.to_owned(),
            request: request_name,
            source,
        });
    }
    Ok(req)
}

/// `ifname` as the kernel's `char[IFNAMSIZ]`, NUL-terminated.
pub(crate) fn ifname_raw(ifname: &str) -> Result<[libc::c_char; libc::IFNAMSIZ], LinkError> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(LinkError::BadName {
            ifname: ifname.to_owned(),
        });
    }
    let mut raw = [0 as libc::c_char; libc::IFNAMSIZ];
    for (r, b) in raw.iter_mut().zip(bytes) {
        // c_char is i8 or u8 depending on the target; the byte is the same.
        *r = *b as libc::c_char;
    }
    Ok(raw)
}

/// A MAC as `ip link` writes it: `52:54:00:00:00:12`.
pub fn format_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(ifname_raw("eth0").is_ok());
        assert!(ifname_raw("fifteen-chars-x").is_ok());
        for bad in ["", "sixteen-chars-xx", "a\0b"] {
            assert!(
                matches!(ifname_raw(bad), Err(LinkError::BadName { .. })),
                "{bad:?}"
            );
        }
        let e = ifindex("no-such-if-0").expect_err("missing interface");
        assert!(e.to_string().contains("ip link show"), "{e}");
    }

    #[test]
    fn if_inet6_flags_give_the_source_state() {
        let text = "fe80000000000000007700fffe000011 02 40 20 c0     eth0\n\
                    fe80000000000000007700fffe000012 03 40 20 80     eth1\n\
                    fe80000000000000007700fffe000013 02 40 20 c8     eth0\n\
                    fe80000000000000007700fffe000014 02 40 20 c4     eth0\n\
                    fd770000000000000000000000000011 02 40 00 80     eth0\n";
        let at =
            |a: &str, ifname| parse_if_inet6(text, ifname, a.parse::<Ipv6Addr>().expect("addr"));
        assert_eq!(at("fe80::77:ff:fe00:11", "eth0"), SourceState::Tentative);
        assert_eq!(at("fe80::77:ff:fe00:12", "eth1"), SourceState::Usable);
        assert_eq!(at("fe80::77:ff:fe00:12", "eth0"), SourceState::Missing);
        assert_eq!(at("fe80::77:ff:fe00:13", "eth0"), SourceState::DadFailed);
        assert_eq!(at("fe80::77:ff:fe00:14", "eth0"), SourceState::Usable);
        assert_eq!(at("fd77::11", "eth0"), SourceState::Usable);
        assert_eq!(at("fe80::1", "eth0"), SourceState::Missing);
        assert!(
            SourceState::Tentative
                .describe()
                .contains("duplicate address detection")
        );
    }

    /// getifaddrs' netmask becomes a prefix length: loopback is 127.0.0.1/8
    /// in every namespace.
    #[test]
    fn prefixes_come_from_the_netmask() {
        let lo = all_prefixes()
            .expect("getifaddrs")
            .into_iter()
            .find(|i| i.name == "lo")
            .expect("lo");
        assert!(
            lo.addrs.contains(&(IpAddr::from([127, 0, 0, 1]), 8)),
            "{lo:?}"
        );
    }
}
