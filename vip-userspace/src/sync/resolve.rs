//! Node-local ids to wire records and back, as pure functions of a
//! [`Directory`]: a snapshot of what this node's programmer wrote (which id
//! is which backend, which service is which VIP).
//!
//! Backend ids are allocated per node in the order backends appear and are
//! reused late (see `Programmer::free_backend_ids`), so the same apiserver
//! has different ids on two LBs: only addresses cross the wire.

use std::collections::BTreeMap;

use vip_common::{
    AddrBytes, ConnKey, ConnValue, FibHop, Globals, MODE_NAT, NatValue, SVC_F_SYNC, ServiceKey,
    SyncEvent,
};

use super::wire::Record;

pub use crate::dataplane::programmer::BackendAddr;

/// One service as this node programmed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirService {
    pub id: u32,
    pub mode: u8,
    pub flags: u8,
    pub snat_addr: AddrBytes,
    /// The service's backends (alive or not) and their ids here.
    pub backends: BTreeMap<BackendAddr, u32>,
}

/// This node's ids, as last programmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    pub services: BTreeMap<ServiceKey, DirService>,
    pub backends: BTreeMap<u32, BackendAddr>,
    /// The program's settings (the NAT port range a record must fall in).
    pub globals: Option<Globals>,
}

impl Directory {
    /// What `p`'s ids mean now. The NAT settings are not the programmer's:
    /// `globals` stays `None` for the caller to fill.
    pub fn of<M: crate::dataplane::Maps>(
        p: &crate::dataplane::programmer::Programmer<M>,
    ) -> Directory {
        Directory {
            backends: p.backend_ids().collect(),
            services: p
                .services()
                .map(|(key, v, members)| {
                    (
                        *key,
                        DirService {
                            id: v.id,
                            mode: v.mode,
                            flags: v.flags,
                            snat_addr: v.snat_addr,
                            backends: members.cloned().unwrap_or_default(),
                        },
                    )
                })
                .collect(),
            globals: None,
        }
    }
}

/// Why a record was not applied (or an event not sent); the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reject {
    /// No such service (VIP, port, protocol) here.
    UnknownService,
    /// The service exists here but is not nat with `snat: vip` and
    /// `state_sync:` (the configs of the two LBs differ).
    NotSynced,
    /// The backend is not one of the service's backends here.
    UnknownBackend,
    /// The NAT port is outside this node's `nat.ports`.
    PortRange,
    /// A live local flow holds the tuple with another backend or client.
    Conflict,
    /// Writing the maps failed.
    MapError,
}

impl Reject {
    pub const ALL: [Reject; 6] = [
        Reject::UnknownService,
        Reject::NotSynced,
        Reject::UnknownBackend,
        Reject::PortRange,
        Reject::Conflict,
        Reject::MapError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::UnknownService => "unknown_service",
            Reject::NotSynced => "not_synced",
            Reject::UnknownBackend => "unknown_backend",
            Reject::PortRange => "port_range",
            Reject::Conflict => "conflict",
            Reject::MapError => "map_error",
        }
    }
}

/// A record turned into this node's two map entries (timestamps left for
/// the writer to fill with its own clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalFlow {
    pub key: ConnKey,
    pub value: ConnValue,
    pub rev_key: ConnKey,
    pub rev_value: NatValue,
}

impl Directory {
    /// The record for a ring-buffer event; `None` when the backend id is
    /// unknown (removed between the packet and this read: the flow will be
    /// answered with an RST anyway).
    pub fn to_wire(&self, e: &SyncEvent) -> Option<Record> {
        let be = self.backends.get(&e.backend_id)?;
        Some(flow_record(&e.key, be, e.nat_port_be, e.flags))
    }

    /// The record for a live connection-table entry (the periodic refresh).
    pub fn entry_to_wire(&self, k: &ConnKey, v: &ConnValue) -> Option<Record> {
        let be = self.backends.get(&v.backend_id)?;
        Some(flow_record(k, be, v.nat_port_be, v.flags))
    }

    /// Ids of the services whose flows are replicated.
    pub fn synced_service_ids(&self) -> Vec<u32> {
        self.services
            .values()
            .filter(|s| s.flags & SVC_F_SYNC != 0)
            .map(|s| s.id)
            .collect()
    }

    /// A peer's record as this node's entries, or why not.
    pub fn to_local(&self, r: &Record) -> Result<LocalFlow, Reject> {
        let skey = ServiceKey {
            addr: r.vip,
            port_be: r.vip_port.to_be(),
            proto: r.proto,
            family: r.family,
        };
        let svc = self.services.get(&skey).ok_or(Reject::UnknownService)?;
        // The SNAT address must be the VIP on this node too: the backend
        // knows the connection as (VIP, nat port), whoever holds the VIP.
        if svc.mode != MODE_NAT || svc.flags & SVC_F_SYNC == 0 || svc.snat_addr != r.vip {
            return Err(Reject::NotSynced);
        }
        let be = BackendAddr {
            family: r.family,
            addr: r.backend,
            port_be: r.backend_port.to_be(),
        };
        let backend_id = *svc.backends.get(&be).ok_or(Reject::UnknownBackend)?;
        if let Some(g) = &self.globals
            && !(g.nat_port_lo..=g.nat_port_hi).contains(&r.nat_port)
        {
            // The program would not even look up replies to it.
            return Err(Reject::PortRange);
        }
        let key = ConnKey {
            saddr: r.client,
            daddr: r.vip,
            sport_be: r.client_port.to_be(),
            dport_be: r.vip_port.to_be(),
            proto: r.proto,
            family: r.family,
            _pad: [0; 2],
        };
        let rev_key = ConnKey {
            saddr: be.addr,
            daddr: svc.snat_addr,
            sport_be: be.port_be,
            dport_be: r.nat_port.to_be(),
            proto: r.proto,
            family: r.family,
            _pad: [0; 2],
        };
        Ok(LocalFlow {
            key,
            value: ConnValue {
                last_seen_ns: 0,
                backend_id,
                service_id: svc.id,
                nat_port_be: r.nat_port.to_be(),
                flags: r.flags,
                _pad: [0; 5],
                hop: FibHop::NONE,
            },
            rev_key,
            rev_value: NatValue {
                last_seen_ns: 0,
                client_addr: r.client,
                vip: r.vip,
                client_port_be: r.client_port.to_be(),
                vip_port_be: r.vip_port.to_be(),
                // A peer's flow is never this LB's alone (`NAT_F_SOLE`),
                // whatever bits its record carries.
                flags: r.flags & !vip_common::NAT_F_SOLE,
                _pad: [0; 3],
                hop: FibHop::NONE,
            },
        })
    }
}

fn flow_record(k: &ConnKey, be: &BackendAddr, nat_port_be: u16, flags: u8) -> Record {
    Record {
        family: k.family,
        proto: k.proto,
        flags,
        client: k.saddr,
        vip: k.daddr,
        client_port: u16::from_be(k.sport_be),
        vip_port: u16::from_be(k.dport_be),
        backend: be.addr,
        backend_port: u16::from_be(be.port_be),
        nat_port: u16::from_be(nat_port_be),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vip_common::{FAMILY_V4, PROTO_TCP, SVC_F_RST_UNSERVABLE};

    fn v4(a: [u8; 4]) -> AddrBytes {
        let mut x = [0; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    const VIP: [u8; 4] = [10, 77, 0, 100];

    fn be(last: u8) -> BackendAddr {
        BackendAddr {
            family: FAMILY_V4,
            addr: v4([10, 77, 0, last]),
            port_be: 6443u16.to_be(),
        }
    }

    fn skey() -> ServiceKey {
        ServiceKey {
            addr: v4(VIP),
            port_be: 6443u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        }
    }

    /// A node whose backends 12, 13, 14 got the ids in `ids`.
    fn node(ids: [u32; 3], service_id: u32) -> Directory {
        let mut d = Directory {
            globals: Some(Globals::DEFAULT),
            ..Directory::default()
        };
        let mut members = BTreeMap::new();
        for (i, id) in ids.into_iter().enumerate() {
            let b = be(12 + i as u8);
            d.backends.insert(id, b);
            members.insert(b, id);
        }
        d.services.insert(
            skey(),
            DirService {
                id: service_id,
                mode: MODE_NAT,
                flags: SVC_F_RST_UNSERVABLE | SVC_F_SYNC,
                snat_addr: v4(VIP),
                backends: members,
            },
        );
        d
    }

    fn event(backend_id: u32) -> SyncEvent {
        SyncEvent {
            key: ConnKey {
                saddr: v4([10, 77, 0, 50]),
                daddr: v4(VIP),
                sport_be: 41000u16.to_be(),
                dport_be: 6443u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            },
            backend_id,
            service_id: 0,
            nat_port_be: 50123u16.to_be(),
            flags: 0,
            _pad: [0; 5],
        }
    }

    /// The same apiserver has other ids on the two LBs: the record carries
    /// its address, and the receiver maps it to its own id.
    #[test]
    fn ids_never_cross_nodes() {
        let a = node([0, 1, 2], 0);
        let b = node([7, 5, 9], 3);
        let r = a.to_wire(&event(1)).expect("backend 1 known on a");
        assert_eq!(r.backend, be(13).addr, "the record names the address");
        assert_eq!((r.client_port, r.nat_port), (41000, 50123));
        let l = b.to_local(&r).expect("b knows the service and backend");
        assert_eq!(l.value.backend_id, 5, "b's id for 10.77.0.13");
        assert_eq!(l.value.service_id, 3, "b's service id");
        assert_eq!(l.key, event(1).key, "the client's flow as it was");
        assert_eq!(l.rev_key.saddr, be(13).addr, "replies from the backend");
        assert_eq!(l.rev_key.daddr, v4(VIP), "to the VIP as SNAT address");
        assert_eq!(u16::from_be(l.rev_key.dport_be), 50123, "at the NAT port");
        assert_eq!(l.rev_value.client_addr, event(1).key.saddr);
        assert_eq!(u16::from_be(l.rev_value.client_port_be), 41000);
        assert_eq!(u16::from_be(l.rev_value.vip_port_be), 6443);
    }

    #[test]
    fn unknown_ids_are_not_sent() {
        assert_eq!(node([0, 1, 2], 0).to_wire(&event(44)), None);
    }

    #[test]
    fn records_for_what_this_node_lacks_are_refused_with_a_reason() {
        let a = node([0, 1, 2], 0);
        let r = a.to_wire(&event(0)).expect("known");
        let b = node([0, 1, 2], 0);

        let mut other_vip = r;
        other_vip.vip = v4([10, 77, 0, 101]);
        assert_eq!(b.to_local(&other_vip), Err(Reject::UnknownService));

        let mut stranger = r;
        stranger.backend = v4([10, 77, 0, 99]);
        assert_eq!(b.to_local(&stranger), Err(Reject::UnknownBackend));

        let mut low = r;
        low.nat_port = 1024;
        assert_eq!(b.to_local(&low), Err(Reject::PortRange));

        let mut unsynced = node([0, 1, 2], 0);
        for s in unsynced.services.values_mut() {
            s.flags &= !SVC_F_SYNC;
        }
        assert_eq!(unsynced.to_local(&r), Err(Reject::NotSynced));

        let mut snat_node = node([0, 1, 2], 0);
        for s in snat_node.services.values_mut() {
            s.snat_addr = v4([10, 77, 0, 10]);
        }
        assert_eq!(snat_node.to_local(&r), Err(Reject::NotSynced));

        let labels: std::collections::BTreeSet<&str> =
            Reject::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Reject::ALL.len(), "labels are distinct");
    }
}
