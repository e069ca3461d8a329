//! The host side: this node's addresses and its neighbour table.

use std::net::IpAddr;

use super::{HostAddr, Neighbours};
use crate::{config::parse_mac, link::LinkError};

/// Every address of this host with its interface.
pub fn host_addresses() -> Result<Vec<HostAddr>, LinkError> {
    Ok(crate::link::all_addrs()?
        .into_iter()
        .flat_map(|(interface, addrs)| {
            addrs.into_iter().map(move |addr| HostAddr {
                interface: interface.clone(),
                addr,
            })
        })
        .collect())
}

/// The kernel's neighbour table: `/proc/net/arp` for IPv4, an rtnetlink
/// RTM_GETNEIGH dump for IPv6 (procfs has no IPv6 table).
pub struct KernelNeighbours;

impl Neighbours for KernelNeighbours {
    fn mac(&self, interface: &str, addr: IpAddr) -> Option<[u8; 6]> {
        match addr {
            IpAddr::V4(_) => std::fs::read_to_string("/proc/net/arp")
                .ok()
                .and_then(|t| arp_lookup(&t, interface, addr)),
            IpAddr::V6(_) => nd_lookup(interface, addr),
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

/// A usable IPv6 entry (the states `neigh::usable` accepts, which are
/// those `ip -6 neigh` prints with an `lladdr`) of the interface, from one
/// dump of the kernel's table.
fn nd_lookup(interface: &str, addr: IpAddr) -> Option<[u8; 6]> {
    use rtnetlink::packet_core::NLM_F_DUMP;
    use rtnetlink::packet_route::{
        AddressFamily, RouteNetlinkMessage, neighbour::NeighbourMessage,
    };
    let ifindex = crate::link::ifindex(interface).ok()?;
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Inet6;
    let answers =
        crate::netlink::request(RouteNetlinkMessage::GetNeighbour(msg), NLM_F_DUMP).ok()?;
    answers.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewNeighbour(n) => match crate::neigh::parse(n, ifindex, false)? {
            (a, entry) if a == addr => crate::neigh::usable(entry.as_ref()),
            _ => None,
        },
        _ => None,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::import::tests::a;

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
    }
}
