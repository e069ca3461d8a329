//! Writing a peer's flows into this node's `CONNTRACK` and `NAT_REV`, on
//! second handles (dup'd fds, like the sweep's) owned by the receiver's
//! blocking thread: a burst of records never stalls the agent's runtime,
//! which also sends VRRP adverts.
//!
//! The rule: a replicated flow never displaces a live local one. Both
//! entries are inserted with `BPF_NOEXIST` (kernel/bpf/hashtab.c refuses
//! with EEXIST if the key is present); on EEXIST the present entry is read
//! and only overwritten if it is the same flow (a refresh) or expired by the
//! program's own rule ([`Globals::expired`]), or on a port of the sender's
//! slice of `nat.ports` (see `Pair::apply`). Otherwise the record is refused
//! as a conflict: this node's flow keeps its backend and its source port.

use aya::maps::{HashMap, MapData, MapError};
use vip_common::{ConnKey, ConnValue, Globals, NatValue, PROTO_TCP, SYNC_F_PENDING};

use super::resolve::{LocalFlow, Reject};
use crate::dataplane::{
    DataplaneError, Result,
    flows::{BPF_NOEXIST, clone_lru, map_err},
};

/// What applying a record did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// New entries.
    New,
    /// The same flow was there: its timestamps (and closing flag) refreshed.
    Refreshed,
}

/// One pair of flow tables: the confirmed ones (`CONNTRACK`, `NAT_REV`) or
/// the unconfirmed ones (`CT_UNCONFIRMED`, `NAT_REV_UNCONFIRMED`).
struct Pair {
    conntrack: HashMap<MapData, ConnKey, ConnValue>,
    nat_rev: HashMap<MapData, ConnKey, NatValue>,
}

pub struct SyncTables {
    confirmed: Pair,
    /// Where records flagged `SYNC_F_PENDING` (a peer's flow at its SYN) go:
    /// a flood replicated from a peer churns only these.
    pending: Pair,
}

fn exists(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
}

impl SyncTables {
    /// Second handles on `maps`' flow tables for the state-sync receiver.
    pub fn of(maps: &crate::dataplane::kernel::KernelMaps) -> Result<SyncTables> {
        Ok(SyncTables {
            confirmed: Pair::open(
                maps.raw_map("CONNTRACK")?,
                maps.raw_map("NAT_REV")?,
                ("CONNTRACK", "NAT_REV"),
            )?,
            pending: Pair::open(
                maps.raw_map("CT_UNCONFIRMED")?,
                maps.raw_map("NAT_REV_UNCONFIRMED")?,
                ("CT_UNCONFIRMED", "NAT_REV_UNCONFIRMED"),
            )?,
        })
    }

    /// Writes one flow into the confirmed tables, or the unconfirmed ones
    /// for a record flagged `SYNC_F_PENDING` (the flag itself is never
    /// stored). A confirmed record also drops the flow's unconfirmed copy,
    /// written at its SYN.
    pub fn apply(&mut self, f: &LocalFlow, g: &Globals, now: u64) -> Result<Applied, Reject> {
        if f.value.flags & SYNC_F_PENDING != 0 {
            let f = LocalFlow {
                value: ConnValue {
                    flags: f.value.flags & !SYNC_F_PENDING,
                    ..f.value
                },
                rev_value: NatValue {
                    flags: f.rev_value.flags & !SYNC_F_PENDING,
                    ..f.rev_value
                },
                ..*f
            };
            return self.pending.apply(&f, g, now);
        }
        let applied = self.confirmed.apply(f, g, now)?;
        let _ = self.pending.conntrack.remove(&f.key);
        let _ = self.pending.nat_rev.remove(&f.rev_key);
        Ok(applied)
    }
}

impl Pair {
    fn open(
        conntrack: &aya::maps::Map,
        nat_rev: &aya::maps::Map,
        (ct_name, nr_name): (&'static str, &'static str),
    ) -> Result<Pair> {
        let (aya::maps::Map::LruHashMap(ct), aya::maps::Map::LruHashMap(nr)) = (conntrack, nat_rev)
        else {
            return Err(DataplaneError::NoMap("flow tables as LRU hashes"));
        };
        Ok(Pair {
            conntrack: HashMap::try_from(clone_lru(ct, ct_name)?)
                .map_err(map_err(ct_name, "open"))?,
            nat_rev: HashMap::try_from(clone_lru(nr, nr_name)?)
                .map_err(map_err(nr_name, "open"))?,
        })
    }

    /// Writes one flow with `last_seen_ns` = `now`, this node's
    /// CLOCK_MONOTONIC (the peer's clock means nothing here: monotonic
    /// clocks start at each node's boot).
    fn apply(&mut self, f: &LocalFlow, g: &Globals, now: u64) -> Result<Applied, Reject> {
        let tcp = f.key.proto == PROTO_TCP;
        // With port slices (`snat: vip` across the fabric) a port outside
        // this node's own slice is only ever handed out by the peer whose
        // slice holds it, so that peer's record is the newest word on it: an
        // entry here on such a port is a copy of the sender's earlier flow
        // (its close never reached us) and gives way. Without slices the
        // slice is the whole range and the rule below stands as it was.
        let theirs =
            !(g.nat_alloc_lo..=g.nat_alloc_hi).contains(&u16::from_be(f.value.nat_port_be));
        let rev = NatValue {
            last_seen_ns: now,
            ..f.rev_value
        };
        let fwd = ConnValue {
            last_seen_ns: now,
            ..f.value
        };
        // Reverse entry first: it is the claim on the (backend, VIP, port)
        // tuple, the one a local flow could hold with another client.
        let rev_new = match self.nat_rev.insert(f.rev_key, rev, BPF_NOEXIST) {
            Ok(()) => true,
            Err(e) if exists(&e) => {
                let old = self
                    .nat_rev
                    .get(&f.rev_key, 0)
                    .map_err(|_| Reject::MapError)?;
                let same = old.client_addr == rev.client_addr
                    && old.client_port_be == rev.client_port_be
                    && old.vip == rev.vip
                    && old.vip_port_be == rev.vip_port_be;
                if !same && !theirs && !g.expired(now, old.last_seen_ns, old.flags, tcp) {
                    return Err(Reject::Conflict);
                }
                let v = NatValue {
                    flags: if same {
                        old.flags | rev.flags
                    } else {
                        rev.flags
                    },
                    ..rev
                };
                self.nat_rev
                    .insert(f.rev_key, v, 0)
                    .map_err(|_| Reject::MapError)?;
                false
            }
            Err(_) => return Err(Reject::MapError),
        };
        let undo = |me: &mut Pair| {
            if rev_new {
                let _ = me.nat_rev.remove(&f.rev_key);
            }
        };
        match self.conntrack.insert(f.key, fwd, BPF_NOEXIST) {
            Ok(()) => Ok(Applied::New),
            Err(e) if exists(&e) => {
                let Ok(old) = self.conntrack.get(&f.key, 0) else {
                    undo(self);
                    return Err(Reject::MapError);
                };
                let same = old.backend_id == fwd.backend_id && old.nat_port_be == fwd.nat_port_be;
                if !same && !theirs && !g.expired(now, old.last_seen_ns, old.flags, tcp) {
                    undo(self);
                    return Err(Reject::Conflict);
                }
                let v = ConnValue {
                    flags: if same {
                        old.flags | fwd.flags
                    } else {
                        fwd.flags
                    },
                    ..fwd
                };
                if self.conntrack.insert(f.key, v, 0).is_err() {
                    undo(self);
                    return Err(Reject::MapError);
                }
                Ok(if same {
                    Applied::Refreshed
                } else {
                    Applied::New
                })
            }
            Err(_) => {
                undo(self);
                Err(Reject::MapError)
            }
        }
    }
}
