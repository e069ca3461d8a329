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
