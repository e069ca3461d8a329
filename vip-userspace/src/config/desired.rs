//! The services as the dataplane programmer wants them: addresses as the
//! ABI stores them, the mode and flag bits, the NAT source and the tunnel
//! source chosen from this node's addresses.

use std::net::IpAddr;

use vip_common::{
    AddrBytes, EncapValue, FAMILY_V4, FAMILY_V6, MODE_DSR, MODE_NAT, PROTO_TCP, PROTO_UDP,
    SVC_F_RST_UNSERVABLE, SVC_F_SYNC, ServiceKey,
};

use super::{Config, Encap, FieldError, Mode, Protocol, Service, Snat};
use crate::dataplane::programmer::{DesiredBackend, DesiredService};

/// The node's first address of the family (`v4`) that is none of
/// `exclude` (the VIPs) and not IPv6 link-local: what it speaks to
/// backends and peers from.
pub(super) fn node_address(addrs: &[IpAddr], v4: bool, exclude: &[IpAddr]) -> Option<IpAddr> {
    addrs.iter().copied().find(|a| {
        a.is_ipv4() == v4
            && !exclude.contains(a)
            && !matches!(a, IpAddr::V6(v) if v.is_unicast_link_local())
    })
}

/// The outer source towards an encapsulated backend: this node's address on
/// the interface, of the backend's family, no VIP (a VIP moves between
/// nodes, and the backend's replies to the tunnel's source, ICMP errors
/// included, must reach this one) and not link-local (not routable to
/// another subnet). The interface is the one the packets arrive on, and
/// XDP_TX sends them back out of it; a redirect to another interface still
/// carries an address of this node, which the route back to it reaches.
fn encap_source(addrs: &[IpAddr], backend: IpAddr, vips: &[IpAddr]) -> Option<IpAddr> {
    node_address(addrs, backend.is_ipv4(), vips)
}

pub fn addr_bytes(a: IpAddr) -> (u8, AddrBytes) {
    let mut b = [0; 16];
    match a {
        IpAddr::V4(v) => {
            b[..4].copy_from_slice(&v.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(v) => (FAMILY_V6, v.octets()),
    }
}

fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

impl Config {
    /// The services as the dataplane programmer wants them, every backend
    /// alive (health probes come later and will clear `alive`). `node_addrs`
    /// are the interface's addresses, for `snat: node` and tunnel sources.
    pub fn desired(&self, node_addrs: &[IpAddr]) -> Result<Vec<DesiredService>, FieldError> {
        let vips: Vec<IpAddr> = self.services.iter().map(|s| s.vip).collect();
        self.services
            .iter()
            .enumerate()
            .map(|(i, s)| {
                self.desired_service(s, node_addrs, &vips)
                    .map_err(|e| e.under(&format!("services[{i}]")))
            })
            .collect()
    }

    fn desired_service(
        &self,
        s: &Service,
        node_addrs: &[IpAddr],
        vips: &[IpAddr],
    ) -> Result<DesiredService, FieldError> {
        let (family, addr) = addr_bytes(s.vip);
        let snat_addr = match (s.mode, s.snat()) {
            (Mode::Dsr, _) => [0; 16],
            (Mode::Nat, Snat::Vip) => addr,
            (Mode::Nat, Snat::Addr(a)) => addr_bytes(a).1,
            (Mode::Nat, Snat::Node) => {
                let a = node_address(node_addrs, s.vip.is_ipv4(), &[s.vip]).ok_or_else(|| {
                    FieldError::new(
                        "snat",
                        format!(
                            "node: interface {} has no {} address; add one or set snat to an address",
                            self.interface,
                            family_name(s.vip)
                        ),
                    )
                })?;
                addr_bytes(a).1
            }
        };
        let rst = if s.rst_unservable {
            SVC_F_RST_UNSERVABLE
        } else {
            0
        };
        let sync = if s.mode == Mode::Nat && self.state_sync.is_some() {
            SVC_F_SYNC
        } else {
            0
        };
        let backends = s
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| {
                let (family, addr) = addr_bytes(b.address);
                let encap = match s.encap_of(b) {
                    Encap::None => None,
                    Encap::Ipip | Encap::Ip6ip6 => {
                        let src = encap_source(node_addrs, b.address, vips).ok_or_else(|| {
                            FieldError::new(
                                format!("backends[{j}].encap"),
                                format!(
                                    "interface {} has no {} address to send the tunnel from; add one",
                                    self.interface,
                                    family_name(b.address)
                                ),
                            )
                        })?;
                        Some(EncapValue {
                            saddr: addr_bytes(src).1,
                            mtu: s.encap_mtu,
                            _pad: [0; 2],
                        })
                    }
                };
                Ok(DesiredBackend {
                    family,
                    addr,
                    port_be: b.port.unwrap_or(s.port).to_be(),
                    // No `mac:`: the neighbour table fills it in (`neigh`),
                    // or the backend is this node's own or encapsulated.
                    mac: b.mac.unwrap_or_default(),
                    local: b.local,
                    encap,
                    alive: true,
                    draining: false,
                })
            })
            .collect::<Result<_, FieldError>>()?;
        Ok(DesiredService {
            key: ServiceKey {
                addr,
                port_be: s.port.to_be(),
                proto: match s.protocol {
                    Protocol::Tcp => PROTO_TCP,
                    Protocol::Udp => PROTO_UDP,
                },
                family,
            },
            mode: match s.mode {
                Mode::Dsr => MODE_DSR,
                Mode::Nat => MODE_NAT,
            },
            flags: rst | sync,
            snat_addr,
            table_size: s.maglev_size,
            backends,
        })
    }
}
