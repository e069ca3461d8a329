//! Writing a peer's flows into this node's `CONNTRACK` and `NAT_REV`, on
//! second handles (dup'd fds, like the sweep's) owned by the receiver's
//! blocking thread: a burst of records never stalls the agent's runtime,
//! which also sends VRRP adverts.
//!
//! The rule: a replicated flow never displaces a live local one. Both
//! entries are inserted with `BPF_NOEXIST` (kernel/bpf/hashtab.c refuses
//! with EEXIST if the key is present); on EEXIST the present entry is read
//! and only overwritten if it is the same flow (a refresh) or expired by the
//! program's own rule ([`Globals::expired`]). Otherwise the record is refused
//! as a conflict: this node's flow keeps its backend and its source port.

use aya::maps::{HashMap, MapData, MapError};
use vip_common::{ConnKey, ConnValue, Globals, NatValue, PROTO_TCP};

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

pub struct SyncTables {
    conntrack: HashMap<MapData, ConnKey, ConnValue>,
    nat_rev: HashMap<MapData, ConnKey, NatValue>,
}

fn exists(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::EEXIST))
}

impl SyncTables {
    /// Second handles on `maps`' flow tables for the state-sync receiver.
    pub fn of(maps: &crate::dataplane::kernel::KernelMaps) -> Result<SyncTables> {
        SyncTables::open(maps.raw_map("CONNTRACK")?, maps.raw_map("NAT_REV")?)
    }

    fn open(conntrack: &aya::maps::Map, nat_rev: &aya::maps::Map) -> Result<SyncTables> {
        let (aya::maps::Map::LruHashMap(ct), aya::maps::Map::LruHashMap(nr)) = (conntrack, nat_rev)
        else {
            return Err(DataplaneError::NoMap("CONNTRACK/NAT_REV as LRU hashes"));
        };
        Ok(SyncTables {
            conntrack: HashMap::try_from(clone_lru(ct, "CONNTRACK")?)
                .map_err(map_err("CONNTRACK", "open"))?,
            nat_rev: HashMap::try_from(clone_lru(nr, "NAT_REV")?)
                .map_err(map_err("NAT_REV", "open"))?,
        })
    }

    /// Writes one flow with `last_seen_ns` = `now`, this node's
    /// CLOCK_MONOTONIC (the peer's clock means nothing here: monotonic
    /// clocks start at each node's boot).
    pub fn apply(&mut self, f: &LocalFlow, g: &Globals, now: u64) -> Result<Applied, Reject> {
        let tcp = f.key.proto == PROTO_TCP;
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
                if !same && !g.expired(now, old.last_seen_ns, old.flags, tcp) {
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
        let undo = |me: &mut SyncTables| {
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
                if !same && !g.expired(now, old.last_seen_ns, old.flags, tcp) {
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
