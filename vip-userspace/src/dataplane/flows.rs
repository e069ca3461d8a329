//! The agent's sweep of the flow tables: it counts the live flows (per
//! backend, for status and metrics) and deletes the entries the XDP program
//! already treats as absent.
//!
//! Why delete what the program ignores: `CONNTRACK` and `NAT_REV` are LRU
//! hashes, and an LRU evicts only when full. A closed flow's reverse entry
//! keeps its source port (the program claims ports with `BPF_NOEXIST`, see
//! `allocate_port` in vip-ebpf), so without a sweep a backend's 20 000 ports
//! fill with dead flows and new ones are dropped
//! (`drop_nat_ports_exhausted`); and a full connection table evicts live
//! flows (the least recently used ones: the idle watch streams) while dead
//! ones sit in it.
//!
//! The walk runs on its own map handles in a blocking thread: a full table
//! (262 144 entries) takes a few hundred ms of syscalls, and the agent's
//! runtime, which also sends VRRP adverts, must not stall that long.

use std::{collections::BTreeMap, os::fd::AsFd as _, time::Instant};

use aya::maps::{Array, HashMap, Map, MapData};
use vip_common::{
    BE_F_ALIVE, BackendValue, CT_F_CLOSING, ConnKey, ConnValue, Globals, NatValue, PROTO_TCP,
};

use super::{
    DataplaneError, Result,
    poke::{Flow, Poker},
};

/// `bpf_map_update_elem` flags (include/uapi/linux/bpf.h): update only an
/// existing entry ...
pub(crate) const BPF_EXIST: u64 = 2;
/// ... create only a new one.
pub(crate) const BPF_NOEXIST: u64 = 1;

/// Second handles on the two flow tables (the same kernel maps), and on the
/// backends, to tell which flows lost theirs.
pub struct FlowTables {
    conntrack: HashMap<MapData, ConnKey, ConnValue>,
    nat_rev: HashMap<MapData, ConnKey, NatValue>,
    backends: Array<MapData, BackendValue>,
    /// The program's reclaim lock (`NAT_LOCK` in vip-ebpf): a reverse entry
    /// is deleted only under it, so the sweep never deletes a port the
    /// program has just handed to a new flow.
    nat_lock: HashMap<MapData, ConnKey, u8>,
    capacity: u32,
    poker: Poker,
}

/// What one round of pokes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pokes {
    /// Flows whose clients were poked.
    pub flows: u64,
    /// Pokes the kernel refused to send (the first error is kept).
    pub failed: u64,
    pub first_error: Option<String>,
}

/// What one sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Live connection-table entries after the sweep.
    pub flows: u64,
    /// Live reverse-NAT entries after the sweep.
    pub nat_flows: u64,
    /// The connection table's capacity (`conntrack_capacity`).
    pub capacity: u32,
    /// Expired entries deleted (both tables).
    pub removed: u64,
    /// Live flows by backend id.
    pub per_backend: BTreeMap<u32, u64>,
    /// How long the walk took, in microseconds.
    pub took_us: u64,
    /// Live flows the [`Refresh`] asked for, for state sync to resend.
    pub active: Vec<(ConnKey, ConnValue)>,
}

/// Which live flows a sweep collects for the state-sync refresh.
#[derive(Debug, Clone, Default)]
pub struct Refresh {
    /// Services whose flows are replicated (`SVC_F_SYNC`).
    pub services: Vec<u32>,
    /// Only flows to these VIPs: the ones this node holds. A backup's
    /// entries were written by the receiver, and sending them back would
    /// keep both copies alive forever by echo, whatever the client does.
    pub vips: Vec<vip_common::AddrBytes>,
    /// Only flows touched at or after this time (the previous sweep's);
    /// `None`: every live flow (a full refresh).
    pub since: Option<u64>,
    /// Only flows whose NAT source port is in this range (host order): the
    /// node's own slice when every LB holds the VIP at once (`announce:`).
    /// There each LB has every other's flows too, refreshed by the
    /// receiver's clock; sending those on would echo them between LBs
    /// forever, so each LB refreshes the flows it allocated. `None`: all.
    pub own_ports: Option<(u16, u16)>,
}

impl Refresh {
    /// Whether a live connection-table entry goes into the refresh: a
    /// synced service, a VIP this node holds, touched since `since`, and
    /// (with port slices) a port of this node's own slice.
    pub fn wants(&self, k: &ConnKey, v: &ConnValue) -> bool {
        self.services.contains(&v.service_id)
            && self.vips.contains(&k.daddr)
            && self.since.is_none_or(|s| v.last_seen_ns >= s)
            && self
                .own_ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&u16::from_be(v.nat_port_be)))
    }
}

/// A second handle on an LRU hash map: a dup of its fd, so a blocking thread
/// can own it while the agent keeps its own.
pub(crate) fn clone_lru(d: &MapData, name: &'static str) -> Result<Map> {
    Ok(Map::LruHashMap(dup_map(d, name)?))
}

/// A dup of a map's fd as a new `MapData`.
pub(crate) fn dup_map(d: &MapData, name: &'static str) -> Result<MapData> {
    let fd = d
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| DataplaneError::Map {
            map: name,
            op: "dup",
            source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            })),
        })?;
    MapData::from_fd(fd).map_err(map_err(name, "open"))
}

pub(crate) fn map_err(
    map: &'static str,
    op: &'static str,
) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        map,
        op,
        source: Box::new(e),
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl FlowTables {
    pub(super) fn open(
        conntrack: &Map,
        nat_rev: &Map,
        backends: &Map,
        nat_lock: &Map,
    ) -> Result<FlowTables> {
        let (Map::LruHashMap(ct), Map::LruHashMap(nr), Map::Array(be), Map::HashMap(lk)) =
            (conntrack, nat_rev, backends, nat_lock)
        else {
            return Err(DataplaneError::NoMap(
                "CONNTRACK/NAT_REV as LRU hashes, BACKENDS as an array, NAT_LOCK as a hash",
            ));
        };
        let capacity = ct
            .info()
            .map_err(map_err("CONNTRACK", "info"))?
            .max_entries();
        Ok(FlowTables {
            conntrack: HashMap::try_from(clone_lru(ct, "CONNTRACK")?)
                .map_err(map_err("CONNTRACK", "open"))?,
            nat_rev: HashMap::try_from(clone_lru(nr, "NAT_REV")?)
                .map_err(map_err("NAT_REV", "open"))?,
            backends: Array::try_from(Map::Array(dup_map(be, "BACKENDS")?))
                .map_err(map_err("BACKENDS", "open"))?,
            nat_lock: HashMap::try_from(Map::HashMap(dup_map(lk, "NAT_LOCK")?))
                .map_err(map_err("NAT_LOCK", "open"))?,
            capacity,
            poker: Poker::default(),
        })
    }

    /// Pokes the client of every live TCP flow whose backend is dead or
    /// gone (see [`super::poke`]): its next packet, the answer to the poke,
    /// gets the XDP program's RST. Each poked flow is marked closing, so it
    /// is poked once and leaves the table `closing_s` later, while the
    /// program still answers it (an expired entry would be treated as new).
    ///
    /// Run right after a backend is marked dead or removed, never on a
    /// schedule: a backend id that is not alive at that moment is one the
    /// agent just took out.
    pub fn poke_dead(&mut self, g: &Globals, now: u64) -> Result<Pokes> {
        let mut alive = vec![false; self.backends.len() as usize];
        for (i, a) in alive.iter_mut().enumerate() {
            *a = self
                .backends
                .get(&(i as u32), 0)
                .is_ok_and(|b| b.flags & BE_F_ALIVE != 0);
        }
        let mut doomed = vec![];
        for r in self.conntrack.iter() {
            let Ok((k, v)) = r else { continue };
            let tcp = k.proto == PROTO_TCP;
            if !tcp
                || v.flags & CT_F_CLOSING != 0
                || g.expired(now, v.last_seen_ns, v.flags, tcp)
                || alive.get(v.backend_id as usize).copied().unwrap_or(false)
            {
                continue;
            }
            doomed.push((k, v));
        }
        let mut out = Pokes::default();
        for (k, mut v) in doomed {
            let Some(flow) = Flow::of(&k) else { continue };
            v.flags |= CT_F_CLOSING;
            v.last_seen_ns = now;
            // Marked before the poke, so the answer finds it closing (still
            // answered with an RST, see `unservable`); a flow that vanished
            // meanwhile is left alone.
            if self.conntrack.insert(k, v, BPF_EXIST).is_err() {
                continue;
            }
            match self.poker.poke(&flow, (now as u32) ^ u32::from(k.sport_be)) {
                Ok(()) => out.flows += 1,
                Err(e) => {
                    out.failed += 1;
                    out.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Counts the live flows and deletes the expired ones, judged by the
    /// program's own rule ([`Globals::expired`]) at `now` (CLOCK_MONOTONIC
    /// ns, see [`monotonic_ns`]).
    ///
    /// A reverse entry goes when its port is free by the program's rule
    /// ([`Globals::port_free`]): its forward flow must be gone or over too
    /// (a UDP flow whose backend never answers has a stale reverse entry and
    /// a live forward one, and its port must stay claimed), and a flow the
    /// backend closed without TIME-WAIT goes after `CLOSED_HOLD_NS`.
    ///
    /// Keys are collected first and deleted after the walk: deleting the
    /// key the walk stands on makes `BPF_MAP_GET_NEXT_KEY` start over.
    /// An entry touched between the read and the delete (a packet on a flow
    /// idle past its timeout, in that very millisecond) loses its entry and
    /// is treated as the program treats an expired one: chosen again.
    pub fn sweep(&mut self, g: &Globals, now: u64) -> Result<Sweep> {
        self.sweep_with(g, now, &Refresh::default())
    }

    /// Whether the reverse entry `k` -> `v` no longer holds its port, by the
    /// program's rule ([`Globals::port_free`]).
    fn port_free(&self, g: &Globals, now: u64, k: &ConnKey, v: &NatValue) -> bool {
        let fwd = || {
            self.conntrack
                .get(&v.forward_key(k), 0)
                .ok()
                .map(|c| (c.last_seen_ns, c.flags, c.nat_port_be))
        };
        g.port_free(
            now,
            k.dport_be,
            (v.last_seen_ns, v.flags),
            fwd,
            k.proto == PROTO_TCP,
        )
    }

    /// [`FlowTables::sweep`], also collecting into [`Sweep::active`] the
    /// live flows `refresh` asks for. The XDP program refreshes an entry's
    /// timestamp at most once a second while packets flow, so a flow active
    /// since the previous sweep has `last_seen_ns` after it.
    pub fn sweep_with(&mut self, g: &Globals, now: u64, refresh: &Refresh) -> Result<Sweep> {
        let t = Instant::now();
        let mut out = Sweep {
            capacity: self.capacity,
            ..Sweep::default()
        };
        let mut dead_rev = vec![];
        for r in self.nat_rev.iter() {
            let Ok((k, v)) = r else { continue };
            if self.port_free(g, now, &k, &v) {
                dead_rev.push(k);
            } else {
                out.nat_flows += 1;
            }
        }
        let mut dead_fwd = vec![];
        for r in self.conntrack.iter() {
            let Ok((k, v)) = r else { continue };
            if g.expired(now, v.last_seen_ns, v.flags, k.proto == PROTO_TCP) {
                dead_fwd.push(k);
            } else {
                out.flows += 1;
                *out.per_backend.entry(v.backend_id).or_default() += 1;
                if refresh.wants(&k, &v) {
                    out.active.push((k, v));
                }
            }
        }
        for k in &dead_rev {
            // Under the program's lock, and only if still expired: the
            // program may have reclaimed the port for a new flow since the
            // walk read it. A held lock means it is doing so now.
            if self.nat_lock.insert(k, 1, BPF_NOEXIST).is_err() {
                continue;
            }
            let still = self
                .nat_rev
                .get(k, 0)
                .is_ok_and(|v| self.port_free(g, now, k, &v));
            // Already gone (evicted): fine.
            if still && self.nat_rev.remove(k).is_ok() {
                out.removed += 1;
            }
            let _ = self.nat_lock.remove(k);
        }
        for k in &dead_fwd {
            if self.conntrack.remove(k).is_ok() {
                out.removed += 1;
            }
        }
        out.took_us = t.elapsed().as_micros() as u64;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(vip: u8, service: u32, last_seen_ns: u64, port: u16) -> (ConnKey, ConnValue) {
        let mut daddr = [0u8; 16];
        daddr[0] = vip;
        let k = ConnKey {
            saddr: [0; 16],
            daddr,
            sport_be: 0,
            dport_be: 0,
            proto: PROTO_TCP,
            family: vip_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let v = ConnValue {
            last_seen_ns,
            backend_id: 0,
            service_id: service,
            nat_port_be: port.to_be(),
            flags: 0,
            _pad: [0; 5],
            hop: vip_common::FibHop::NONE,
        };
        (k, v)
    }

    /// The refresh sends what this node is the source of truth for: its
    /// synced services' flows to the VIPs it holds, touched since the last
    /// sweep, and with port slices only its own slice's, whose owner it is
    /// (a peer's flow refreshed here by this node's clock would echo back
    /// and forth forever). A welcome dump (`own_ports: None`, `since:
    /// None`) sends every live one.
    #[test]
    fn the_refresh_takes_only_this_nodes_flows_and_a_welcome_takes_all() {
        let r = Refresh {
            services: vec![1],
            vips: vec![{
                let mut a = [0u8; 16];
                a[0] = 10;
                a
            }],
            since: Some(1_000),
            own_ports: Some((40000, 46665)),
        };
        let (k, v) = entry(10, 1, 2_000, 40000);
        assert!(r.wants(&k, &v), "own slice, first port");
        let (k, v) = entry(10, 1, 2_000, 46665);
        assert!(r.wants(&k, &v), "own slice, last port");
        let (k, v) = entry(10, 1, 2_000, 46666);
        assert!(!r.wants(&k, &v), "a peer's slice");
        let (k, v) = entry(10, 1, 999, 40001);
        assert!(!r.wants(&k, &v), "idle since the last sweep");
        let (k, v) = entry(11, 1, 2_000, 40001);
        assert!(!r.wants(&k, &v), "a VIP this node does not hold");
        let (k, v) = entry(10, 2, 2_000, 40001);
        assert!(!r.wants(&k, &v), "a service that is not synced");

        let welcome = Refresh {
            since: None,
            own_ports: None,
            ..r
        };
        for (vip_ok, service, seen, port) in [(10, 1, 999, 46666), (10, 1, 0, 59999)] {
            let (k, v) = entry(vip_ok, service, seen, port);
            assert!(
                welcome.wants(&k, &v),
                "the welcome dump: {port} seen at {seen}"
            );
        }
        let (k, v) = entry(11, 1, 2_000, 40001);
        assert!(!welcome.wants(&k, &v), "still only the VIPs held");
    }
}
