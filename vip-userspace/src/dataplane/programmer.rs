//! Desired state in, minimal map writes out.
//!
//! The programmer keeps a shadow of everything it wrote. `apply` computes each
//! service's Maglev table from its alive backends, writes only the slots of the
//! service's idle table half that differ from what that half holds, and then
//! publishes the half with one service-value update, so a packet sees either the
//! old table or the new one, never a mix (the "second table and a switch of one
//! index" of the design). Order of writes: backends, tables, services, ports on
//! the way in; services, ports, backends on the way out.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use vip_common::{
    AddrBytes, BE_F_ALIVE, BE_F_ENCAP, BE_F_LOCAL, BackendValue, EncapValue, FAMILY_V4, FAMILY_V6,
    MAGLEV_MAX_SIZE, MAX_BACKENDS, MAX_SERVICES, MODE_DSR, MODE_NAT, NO_BACKEND, ServiceKey,
    ServiceValue, maglev_index,
};

use super::{DataplaneError, Maps, Result};
use crate::maglev;

/// A backend as every node names it: its address, never a node-local id
/// (state sync puts these on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub family: u8,
    pub addr: AddrBytes,
    pub port_be: u16,
}

/// A backend as the controller wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBackend {
    pub family: u8,
    pub addr: AddrBytes,
    pub port_be: u16,
    /// Destination MAC for mode dsr.
    pub mac: [u8; 6],
    /// This node: mode dsr hands its packets to the local stack.
    pub local: bool,
    /// Mode dsr to another subnet: encapsulate towards the backend's address
    /// from this outer source, within this path MTU (`BE_F_ENCAP`).
    pub encap: Option<EncapValue>,
    /// Keeps its established flows; unset, they get an RST.
    pub alive: bool,
    /// Alive but out of the Maglev table: no new flows (an apiserver that
    /// answers but is not ready, e.g. draining for its shutdown delay,
    /// finishes and closes its own connections).
    pub draining: bool,
}

impl DesiredBackend {
    /// Takes new flows.
    pub fn in_table(&self) -> bool {
        self.alive && !self.draining
    }
}

impl DesiredBackend {
    /// Identity in the Maglev table: the same on every node (no MAC, no ids).
    fn maglev_identity(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(19);
        v.push(self.family);
        v.extend_from_slice(&self.addr);
        v.extend_from_slice(&self.port_be.to_ne_bytes());
        v
    }
}

/// A backend slot's identity: a change of any of these is a different backend
/// with a fresh id. The MAC is not part of it: a backend that answers from
/// another MAC (a replaced NIC, a re-created VM, as the neighbour table
/// reports it) is the same backend, and is re-pointed in its own value (the
/// new MAC in the idle slot, then the selector), so its slots in every
/// Maglev table and its established flows stay. While packets may read it, a
/// value changes only its flag byte, its idle MAC slot and its selector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct BackendIdent {
    family: u8,
    addr: AddrBytes,
    port_be: u16,
    local: bool,
    /// Outer source and path MTU (`EncapValue`), if encapsulated.
    encap: Option<(AddrBytes, u16)>,
}

/// What the wanted backends share across services: alive if any service
/// keeps it alive; the MAC of the first service that names it (one address
/// has one MAC on the segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Wanted {
    alive: bool,
    mac: [u8; 6],
}

/// A service as the controller wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub key: ServiceKey,
    pub mode: u8,
    pub flags: u8,
    pub snat_addr: AddrBytes,
    /// Maglev table size (prime, <= MAGLEV_MAX_SIZE).
    pub table_size: u32,
    pub backends: Vec<DesiredBackend>,
}

struct ProgrammedService {
    value: ServiceValue,
    /// What each half of the service's table holds, slot by slot.
    halves: [Vec<u32>; 2],
}

/// What an `apply` changed, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    pub maglev_writes: usize,
    pub services_published: usize,
    pub services_removed: usize,
    pub backend_writes: usize,
    /// Backends that lost their alive bit or were removed while alive: their
    /// established flows get an RST from this write on.
    pub backends_killed: usize,
}

pub struct Programmer<M: Maps> {
    maps: M,
    services: BTreeMap<ServiceKey, ProgrammedService>,
    backends: BTreeMap<BackendIdent, (u32, BackendValue)>,
    free_service_ids: BTreeSet<u32>,
    /// Freed backend ids are reused last-freed-last: connection-table entries may
    /// still name an old id, and a quick reuse would send those flows to a
    /// stranger instead of answering them with an RST.
    free_backend_ids: VecDeque<u32>,
    ports: BTreeMap<u32, u64>,
    /// Counts `apply` calls: what the maps mean may have changed since a
    /// reader last looked (state sync's directory).
    generation: u64,
    /// Each service's backends by address, with their ids, as last applied
    /// (for state sync, which names backends by address on the wire).
    members: BTreeMap<ServiceKey, BTreeMap<BackendAddr, u32>>,
}

/// What [`Programmer::adopt`] requires of a service read back from a pinned
/// map: what `apply` writes and what the rest of the programmer indexes with.
fn check_adopted_service(key: &ServiceKey, v: &ServiceValue) -> Result<()> {
    let bad = |what: String| Err(DataplaneError::Corrupt { what });
    if v.id >= MAX_SERVICES {
        return bad(format!(
            "a service with table id {} (at most {})",
            v.id,
            MAX_SERVICES - 1
        ));
    }
    if v.maglev_half > 1 {
        return bad(format!(
            "service {} with table half {} (0 or 1)",
            v.id, v.maglev_half
        ));
    }
    if !maglev::is_prime(v.maglev_size) || v.maglev_size > MAGLEV_MAX_SIZE {
        return bad(format!(
            "service {} with table size {}",
            v.id, v.maglev_size
        ));
    }
    if !matches!(v.mode, MODE_DSR | MODE_NAT) {
        return bad(format!("service {} with mode {}", v.id, v.mode));
    }
    if v.family != key.family || !matches!(v.family, FAMILY_V4 | FAMILY_V6) {
        return bad(format!(
            "service {} with address family {} under a key of family {}",
            v.id, v.family, key.family
        ));
    }
    Ok(())
}

impl<M: Maps> Programmer<M> {
    /// A programmer for freshly created (zeroed) maps.
    pub fn new(maps: M) -> Self {
        Programmer {
            maps,
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            free_service_ids: (0..MAX_SERVICES).collect(),
            free_backend_ids: (0..MAX_BACKENDS).collect(),
            ports: BTreeMap::new(),
            generation: 0,
            members: BTreeMap::new(),
        }
    }

    /// A programmer for maps an earlier agent wrote (pinned maps adopted after
    /// a restart): its shadow is read back from the maps, so ids stay what the
    /// connection table already refers to and `apply` writes only differences.
    ///
    /// Every value read back is checked before it is used (a table half
    /// indexes an array, an id a map): anything an earlier vipd could not
    /// have written refuses the adoption with [`DataplaneError::Corrupt`],
    /// before a single write.
    pub fn adopt(maps: M) -> Result<Self> {
        let mut p = Programmer::new(maps);
        for (key, value) in p.maps.read_services()? {
            check_adopted_service(&key, &value)?;
            if !p.free_service_ids.remove(&value.id) {
                return Err(DataplaneError::Corrupt {
                    what: format!("two services with table id {}", value.id),
                });
            }
            let mut halves = [vec![], vec![]];
            for (half, shadow) in halves.iter_mut().enumerate() {
                *shadow = p
                    .maps
                    .read_maglev(maglev_index(value.id, half as u32, 0), MAGLEV_MAX_SIZE)?;
            }
            p.services.insert(key, ProgrammedService { value, halves });
        }
        for (id, v) in p.maps.read_backends()? {
            if id >= MAX_BACKENDS || !matches!(v.family, FAMILY_V4 | FAMILY_V6) {
                return Err(DataplaneError::Corrupt {
                    what: format!("backend {id} with address family {}", v.family),
                });
            }
            let bi = BackendIdent {
                family: v.family,
                addr: v.addr,
                port_be: v.port_be,
                local: v.flags & BE_F_LOCAL != 0,
                encap: if v.flags & BE_F_ENCAP != 0 {
                    let e = p.maps.read_encap(id)?;
                    Some((e.saddr, e.mtu))
                } else {
                    None
                },
            };
            p.free_backend_ids.retain(|f| *f != id);
            p.backends.insert(bi, (id, v));
        }
        p.ports = p.maps.read_port_words()?.into_iter().collect();
        Ok(p)
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// The backend id the dataplane uses for a backend, if it has one.
    pub fn backend_id(&self, b: &DesiredBackend) -> Option<u32> {
        self.backends.get(&ident(b)).map(|(id, _)| *id)
    }

    /// Changes with every `apply` (a write, or an attempt at one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every backend with its id: what this node's ids mean.
    pub fn backend_ids(&self) -> impl Iterator<Item = (u32, BackendAddr)> + '_ {
        self.backends.iter().map(|(bi, (id, _))| {
            (
                *id,
                BackendAddr {
                    family: bi.family,
                    addr: bi.addr,
                    port_be: bi.port_be,
                },
            )
        })
    }

    /// Every programmed service: its key, the value the program reads, and
    /// its backends by address with their ids, as last applied.
    pub fn services(
        &self,
    ) -> impl Iterator<
        Item = (
            &ServiceKey,
            &ServiceValue,
            Option<&BTreeMap<BackendAddr, u32>>,
        ),
    > + '_ {
        self.services
            .iter()
            .map(|(key, p)| (key, &p.value, self.members.get(key)))
    }

    /// Makes the maps match `desired`. On error the maps may hold part of the
    /// change, but every service still publishes a complete table: a table half is
    /// only published after all its slots were written.
    pub fn apply(&mut self, desired: &[DesiredService]) -> Result<ApplyReport> {
        self.generation += 1;
        let mut report = ApplyReport::default();
        for s in desired {
            maglev::check_size(s.table_size)?;
        }
        let wanted: BTreeMap<ServiceKey, &DesiredService> =
            desired.iter().map(|s| (s.key, s)).collect();
        let new_services = wanted
            .keys()
            .filter(|k| !self.services.contains_key(k))
            .count();
        if new_services > self.free_service_ids.len() {
            return Err(DataplaneError::Full {
                what: "services",
                max: MAX_SERVICES,
            });
        }
        // 1. Backends: ids and values (a dying one waits for step 2b).
        let (wanted_backends, dying) = self.write_backends(desired, &mut report)?;
        // 2. Tables and services.
        self.remember_members(&wanted);
        for (key, s) in &wanted {
            self.publish_service(key, s, &mut report)?;
        }
        // 2b. Backends no table names any more lose their alive bit: their
        //     established flows get an RST from here on.
        for (bi, id, value) in dying {
            self.maps.set_backend(id, &value)?;
            self.backends.insert(bi, (id, value));
            report.backend_writes += 1;
            report.backends_killed += 1;
        }
        // 3. Ports, 4. services no longer wanted, then ports no longer used.
        let ports = self.write_ports(&wanted)?;
        self.remove_services(&wanted, &mut report)?;
        for w in self.ports.keys() {
            if !ports.contains_key(w) {
                self.maps.set_port_word(*w, 0)?;
            }
        }
        self.ports = ports;
        // 5. Backends no longer named by any service.
        self.clear_stale_backends(&wanted_backends, &mut report)?;
        Ok(report)
    }

    /// Step 1: allocates ids and writes values (new ids are referenced by no
    /// table yet; existing ones only flip their alive bit). A bit that goes
    /// from alive to dead is returned instead of written: it is written after
    /// the tables stop naming the backend (step 2b), or else the new SYNs its
    /// slots still get would be answered with an RST. Returns every wanted
    /// backend with whether it is alive, and the dying ones.
    #[expect(clippy::type_complexity, reason = "one step's two results, used once")]
    fn write_backends(
        &mut self,
        desired: &[DesiredService],
        report: &mut ApplyReport,
    ) -> Result<(
        BTreeMap<BackendIdent, bool>,
        Vec<(BackendIdent, u32, BackendValue)>,
    )> {
        let mut wanted_backends: BTreeMap<BackendIdent, Wanted> = BTreeMap::new();
        for s in desired {
            for b in &s.backends {
                let w = wanted_backends.entry(ident(b)).or_insert(Wanted {
                    alive: false,
                    mac: b.mac,
                });
                w.alive |= b.alive;
            }
        }
        let mut dying = vec![];
        for (bi, w) in &wanted_backends {
            let alive = &w.alive;
            let flags = if *alive { BE_F_ALIVE } else { 0 }
                | if bi.local { BE_F_LOCAL } else { 0 }
                | if bi.encap.is_some() { BE_F_ENCAP } else { 0 };
            let fresh = BackendValue {
                addr: bi.addr,
                port_be: bi.port_be,
                family: bi.family,
                flags,
                macs: [w.mac, [0; 6]],
                mac_sel: 0,
                _pad: [0; 3],
            };
            // An existing entry keeps its MAC slots; a new MAC goes through
            // the idle one (`BackendValue::staged`), written here first.
            let value = match self.backends.get(bi) {
                Some((id, old)) if *old.mac() != w.mac => {
                    let staged = old.staged(w.mac);
                    self.maps.set_backend(*id, &staged)?;
                    report.backend_writes += 1;
                    BackendValue {
                        flags,
                        ..staged.flipped()
                    }
                }
                Some((_, old)) => BackendValue { flags, ..*old },
                None => fresh,
            };
            match self.backends.get(bi) {
                Some((_, old)) if *old == value => {}
                Some((id, old)) if old.flags & BE_F_ALIVE != 0 && !*alive => {
                    dying.push((bi.clone(), *id, value));
                }
                Some((id, _)) => {
                    let id = *id;
                    self.maps.set_backend(id, &value)?;
                    self.backends.insert(bi.clone(), (id, value));
                    report.backend_writes += 1;
                }
                None => {
                    let id = self
                        .free_backend_ids
                        .pop_front()
                        .ok_or(DataplaneError::Full {
                            what: "backends",
                            max: MAX_BACKENDS,
                        })?;
                    // The encapsulation first: the flag that makes the
                    // program read it comes with the backend entry. An id
                    // keeps its encapsulation for life (it is part of the
                    // identity), so this is its only write.
                    if let Some((saddr, mtu)) = bi.encap {
                        let e = EncapValue {
                            saddr,
                            mtu,
                            _pad: [0; 2],
                        };
                        self.maps.set_encap(id, &e)?;
                    }
                    self.maps.set_backend(id, &value)?;
                    self.backends.insert(bi.clone(), (id, value));
                    report.backend_writes += 1;
                }
            }
        }
        let alive = wanted_backends
            .into_iter()
            .map(|(bi, w)| (bi, w.alive))
            .collect();
        Ok((alive, dying))
    }

    /// Each wanted service's backends by address with their ids (state
    /// sync names backends by address on the wire).
    fn remember_members(&mut self, wanted: &BTreeMap<ServiceKey, &DesiredService>) {
        self.members = wanted
            .iter()
            .map(|(key, s)| {
                let m = s
                    .backends
                    .iter()
                    .filter_map(|b| {
                        let (id, _) = self.backends.get(&ident(b))?;
                        let a = BackendAddr {
                            family: b.family,
                            addr: b.addr,
                            port_be: b.port_be,
                        };
                        Some((a, *id))
                    })
                    .collect();
                (*key, m)
            })
            .collect();
    }

    /// Step 2 for one service: computes its table, writes the slots of the
    /// idle half that differ, then publishes that half with one value write.
    fn publish_service(
        &mut self,
        key: &ServiceKey,
        s: &DesiredService,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let alive: Vec<(Vec<u8>, u32)> = s
            .backends
            .iter()
            .filter(|b| b.in_table())
            .filter_map(|b| {
                self.backends
                    .get(&ident(b))
                    .map(|(id, _)| (b.maglev_identity(), *id))
            })
            .collect();
        let mut table = maglev::build(s.table_size, &alive)?;
        if table.is_empty() {
            // No healthy backend: every slot says so, and the program answers
            // TCP with an RST rather than leaving clients to time out.
            table = vec![NO_BACKEND; s.table_size as usize];
        }
        let (id, half, prev) = match self.services.get(key) {
            Some(p) => (p.value.id, p.value.maglev_half ^ 1, Some(p.value)),
            None => (self.new_service(key)?, 0, None),
        };
        let value = ServiceValue {
            id,
            maglev_size: s.table_size,
            maglev_half: half,
            mode: s.mode,
            flags: s.flags,
            family: key.family,
            _pad: 0,
            snat_addr: s.snat_addr,
        };
        let prog = self.services.get_mut(key).ok_or(DataplaneError::Full {
            what: "services",
            max: MAX_SERVICES,
        })?;
        // Same table in the live half and nothing else changed: no write.
        let live = (half ^ 1) as usize;
        if let Some(prev) = prev
            && prev.maglev_size == s.table_size
            && prog.halves[live][..table.len()] == table[..]
            && (ServiceValue {
                maglev_half: prev.maglev_half,
                ..value
            }) == prev
        {
            return Ok(());
        }
        let shadow = &mut prog.halves[half as usize];
        for (slot, want) in table.iter().enumerate() {
            if shadow[slot] != *want {
                self.maps
                    .set_maglev(maglev_index(id, half, slot as u32), *want)?;
                shadow[slot] = *want;
                report.maglev_writes += 1;
            }
        }
        self.maps.set_service(key, &value)?;
        prog.value = value;
        report.services_published += 1;
        Ok(())
    }

    /// A table id and a zeroed shadow for a service seen the first time.
    fn new_service(&mut self, key: &ServiceKey) -> Result<u32> {
        let id = self
            .free_service_ids
            .pop_first()
            .ok_or(DataplaneError::Full {
                what: "services",
                max: MAX_SERVICES,
            })?;
        self.services.insert(
            *key,
            ProgrammedService {
                value: ServiceValue {
                    id,
                    maglev_size: 0,
                    maglev_half: 1,
                    mode: 0,
                    flags: 0,
                    family: 0,
                    _pad: 0,
                    snat_addr: [0; 16],
                },
                // Kernel arrays start zeroed.
                halves: [
                    vec![0; MAGLEV_MAX_SIZE as usize],
                    vec![0; MAGLEV_MAX_SIZE as usize],
                ],
            },
        );
        Ok(id)
    }

    /// Step 3: the union of the wanted services' ports, written where it
    /// changed; returned for the cleanup of step 4.
    fn write_ports(
        &mut self,
        wanted: &BTreeMap<ServiceKey, &DesiredService>,
    ) -> Result<BTreeMap<u32, u64>> {
        let mut ports: BTreeMap<u32, u64> = BTreeMap::new();
        for k in wanted.keys() {
            let p = u16::from_be(k.port_be) as u32;
            *ports.entry(p >> 6).or_default() |= 1 << (p & 63);
        }
        for (w, bits) in &ports {
            if self.ports.get(w) != Some(bits) {
                self.maps.set_port_word(*w, *bits)?;
            }
        }
        Ok(ports)
    }

    /// Step 4: services no longer wanted leave the map; their ids are free.
    fn remove_services(
        &mut self,
        wanted: &BTreeMap<ServiceKey, &DesiredService>,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.maps.remove_service(&k)?;
            if let Some(p) = self.services.remove(&k) {
                self.free_service_ids.insert(p.value.id);
            }
            report.services_removed += 1;
        }
        Ok(())
    }

    /// Step 5: backends no longer named by any service are cleared (flows
    /// still on them get an RST) and their ids queued for late reuse.
    fn clear_stale_backends(
        &mut self,
        wanted_backends: &BTreeMap<BackendIdent, bool>,
        report: &mut ApplyReport,
    ) -> Result<()> {
        let stale: Vec<BackendIdent> = self
            .backends
            .keys()
            .filter(|b| !wanted_backends.contains_key(b))
            .cloned()
            .collect();
        for bi in stale {
            if let Some((id, old)) = self.backends.remove(&bi) {
                self.maps.set_backend(id, &BackendValue::EMPTY)?;
                self.free_backend_ids.push_back(id);
                report.backend_writes += 1;
                if old.flags & BE_F_ALIVE != 0 {
                    report.backends_killed += 1;
                }
            }
        }
        Ok(())
    }
}

fn ident(b: &DesiredBackend) -> BackendIdent {
    BackendIdent {
        family: b.family,
        addr: b.addr,
        port_be: b.port_be,
        local: b.local,
        encap: b.encap.map(|e| (e.saddr, e.mtu)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::mem::{MemMaps, Writes};
    use vip_common::{MAGLEV_DEFAULT_SIZE, PROTO_TCP, SVC_F_RST_UNSERVABLE};

    fn v4(a: [u8; 4]) -> AddrBytes {
        let mut x = [0; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    fn backend(last: u8, alive: bool) -> DesiredBackend {
        DesiredBackend {
            family: FAMILY_V4,
            addr: v4([10, 0, 0, last]),
            port_be: 6443u16.to_be(),
            mac: [2, 0, 0, 0, 0, last],
            local: false,
            encap: None,
            alive,
            draining: false,
        }
    }

    fn service(backends: Vec<DesiredBackend>) -> DesiredService {
        DesiredService {
            key: ServiceKey {
                addr: v4([10, 0, 0, 100]),
                port_be: 6443u16.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
            },
            mode: MODE_DSR,
            flags: SVC_F_RST_UNSERVABLE,
            snat_addr: [0; 16],
            table_size: MAGLEV_DEFAULT_SIZE,
            backends,
        }
    }

    /// The service with backends 1, 2 and 3, all alive.
    fn three() -> DesiredService {
        service((1..=3).map(|i| backend(i, true)).collect())
    }

    /// The live table of the only service, as backend ids.
    fn live_table(p: &Programmer<MemMaps>) -> Vec<u32> {
        let m = p.maps();
        let (_, v) = m.services.iter().next().expect("a service");
        (0..v.maglev_size)
            .map(|s| m.maglev[maglev_index(v.id, v.maglev_half, s) as usize])
            .collect()
    }

    #[test]
    fn first_apply_publishes_a_full_table_and_the_port() {
        let mut p = Programmer::new(MemMaps::default());
        let r = p.apply(&[three()]).expect("apply");
        assert_eq!(r.services_published, 1);
        let t = live_table(&p);
        assert_eq!(t.len(), MAGLEV_DEFAULT_SIZE as usize);
        let ids: BTreeSet<u32> = t.iter().copied().collect();
        assert_eq!(ids.len(), 3, "all three backends appear");
        assert_eq!(
            p.maps().ports.get(&(6443 >> 6)),
            Some(&(1u64 << (6443 & 63)))
        );
        for id in ids {
            assert_ne!(p.maps().backends[id as usize].flags & BE_F_ALIVE, 0);
        }
    }

    /// A backend answering from another MAC is re-pointed by two writes of
    /// its own value and nothing else: same id, no table slot written,
    /// nothing killed, so its established flows follow it. The first write
    /// puts the new MAC in the idle slot and leaves the one in use as it
    /// was; the second changes `mac_sel` alone: a packet between the two
    /// (or during either) reads the old MAC or the new one, never a mix.
    #[test]
    fn a_new_mac_is_staged_then_selected_and_keeps_the_table() {
        let mut p = Programmer::new(MemMaps::default());
        p.apply(&[three()]).expect("apply");
        let table = live_table(&p);
        let id = p.backend_id(&backend(2, true)).expect("id");
        let before = p.maps().backends[id as usize];
        let mut moved = three();
        let new = [2, 0, 0, 0, 0, 0x99];
        moved.backends[1].mac = new;
        let writes = p.maps().writes.clone();
        let logged = p.maps().backend_log.len();
        let r = p.apply(&[moved.clone()]).expect("apply");
        assert_eq!(
            r,
            ApplyReport {
                backend_writes: 2,
                ..ApplyReport::default()
            }
        );
        assert_eq!(
            p.maps().writes,
            Writes {
                backends: writes.backends + 2,
                ..writes
            },
            "two map updates, of the backend"
        );
        let log = &p.maps().backend_log[logged..];
        let [(id1, staged), (id2, selected)] = log else {
            panic!("two writes: {log:?}")
        };
        assert_eq!((*id1, *id2), (id, id));
        assert_eq!(staged.mac(), before.mac(), "the first keeps the MAC in use");
        assert_eq!(
            BackendValue {
                macs: before.macs,
                ..*staged
            },
            before,
            "and changes only the idle slot"
        );
        assert_eq!(selected.mac(), &new);
        assert_eq!(
            BackendValue {
                mac_sel: staged.mac_sel,
                ..*selected
            },
            *staged,
            "the second changes only the selector"
        );
        // And back: the slots take turns.
        p.apply(&[three()]).expect("apply");
        let back = p.maps().backends[id as usize];
        assert_eq!(back.mac(), before.mac());
        assert_eq!(back.mac_sel, before.mac_sel);
        assert_eq!(p.backend_id(&moved.backends[1]), Some(id), "same id");
        p.apply(&[moved.clone()]).expect("apply");
        assert_eq!(p.maps().backends[id as usize].mac(), &new);
        assert_ne!(p.maps().backends[id as usize].flags & BE_F_ALIVE, 0);
        assert_eq!(live_table(&p), table, "the Maglev table is untouched");
    }

    #[test]
    fn unchanged_state_writes_nothing() {
        let mut p = Programmer::new(MemMaps::default());
        let s = [service(vec![backend(1, true), backend(2, true)])];
        p.apply(&s).expect("apply");
        let before = p.maps().writes.clone();
        let r = p.apply(&s).expect("apply");
        assert_eq!(r, ApplyReport::default());
        assert_eq!(p.maps().writes, before);
    }

    #[test]
    fn a_dead_backend_leaves_the_table_and_only_its_slots_move_mostly() {
        let mut p = Programmer::new(MemMaps::default());
        p.apply(&[three()]).expect("apply");
        let before = live_table(&p);
        let dead_id = p.backend_id(&backend(2, true)).expect("id");
        let dead = [service(vec![
            backend(1, true),
            backend(2, false),
            backend(3, true),
        ])];
        let r = p.apply(&dead).expect("apply");
        assert_eq!(r.backends_killed, 1, "the agent pokes its clients on this");
        let again = p.apply(&dead).expect("apply");
        assert_eq!(again.backends_killed, 0, "already dead: nothing to poke");
        let after = live_table(&p);
        assert!(
            after.iter().all(|id| *id != dead_id),
            "dead backend still in the live table"
        );
        assert_eq!(
            p.maps().backends[dead_id as usize].flags & BE_F_ALIVE,
            0,
            "dead backend still marked alive"
        );
        let moved_others = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b != dead_id && b != a)
            .count();
        assert!(
            moved_others * 100 < before.len(),
            "{moved_others} foreign slots moved"
        );
        // Removed while alive: killed too; removed when dead already: not.
        let r = p.apply(&[service(vec![backend(3, true)])]).expect("apply");
        assert_eq!(
            r.backends_killed, 1,
            "backend 1 removed while alive, 2 dead already"
        );
    }

    #[test]
    fn publishing_flips_the_half_and_writes_only_differences() {
        let mut p = Programmer::new(MemMaps::default());
        let three = [three()];
        let two = [service(vec![
            backend(1, true),
            backend(2, false),
            backend(3, true),
        ])];
        p.apply(&three).expect("apply");
        let half0 = p.maps().services.values().next().expect("svc").maglev_half;
        p.apply(&two).expect("apply");
        let half1 = p.maps().services.values().next().expect("svc").maglev_half;
        assert_ne!(half0, half1, "a new table must go to the idle half");
        // Back to three: the idle half still holds the first table, so nothing
        // but the service value needs writing.
        let r = p.apply(&three).expect("apply");
        assert_eq!(r.maglev_writes, 0, "the idle half already held this table");
        assert_eq!(r.services_published, 1);
    }

    #[test]
    fn no_alive_backend_publishes_an_all_empty_table() {
        let mut p = Programmer::new(MemMaps::default());
        p.apply(&[service(vec![backend(1, false)])]).expect("apply");
        assert!(live_table(&p).iter().all(|id| *id == NO_BACKEND));
    }

    #[test]
    fn removed_service_clears_port_and_backends() {
        let mut p = Programmer::new(MemMaps::default());
        p.apply(&[service(vec![backend(1, true)])]).expect("apply");
        let id = p.backend_id(&backend(1, true)).expect("id");
        p.apply(&[]).expect("apply");
        assert!(p.maps().services.is_empty());
        assert_eq!(p.maps().ports.get(&(6443 >> 6)), Some(&0));
        assert_eq!(p.maps().backends[id as usize], BackendValue::EMPTY);
        // The freed id is not handed out again at once.
        p.apply(&[service(vec![backend(9, true)])]).expect("apply");
        assert_ne!(p.backend_id(&backend(9, true)), Some(id));
    }

    /// A restarted agent adopts the maps: same desired state, no write; the
    /// ids the connection table refers to are kept; changes are diffs.
    #[test]
    fn adopting_maps_with_impossible_values_is_refused_without_a_write() {
        let mut first = Programmer::new(MemMaps::default());
        first.apply(&[three()]).expect("apply");
        let good = first.maps().clone();
        type Corrupt = fn(&mut MemMaps);
        let cases: [(&str, Corrupt); 6] = [
            ("table half 7", |m| {
                m.services.values_mut().for_each(|v| v.maglev_half = 7)
            }),
            ("table id 16", |m| {
                m.services.values_mut().for_each(|v| v.id = 16)
            }),
            ("table size 16", |m| {
                m.services.values_mut().for_each(|v| v.maglev_size = 16)
            }),
            ("mode 9", |m| {
                m.services.values_mut().for_each(|v| v.mode = 9)
            }),
            ("address family 5", |m| {
                m.services.values_mut().for_each(|v| v.family = 5)
            }),
            ("backend 0 with address family 0", |m| {
                m.backends[0].family = 0;
                m.backends[0].port_be = 1;
            }),
        ];
        for (what, corrupt) in cases {
            let mut maps = good.clone();
            corrupt(&mut maps);
            maps.writes = Default::default();
            let e = match Programmer::adopt(maps) {
                Ok(_) => panic!("{what}: adopted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(what), "{what}: {e}");
            assert!(e.contains("vipd detach"), "names the fix: {e}");
        }
        // Two services sharing a table id.
        let mut maps = good.clone();
        let (k, v) = maps
            .services
            .iter()
            .next()
            .map(|(k, v)| (*k, *v))
            .expect("one");
        let mut k2 = k;
        k2.port_be = 1;
        maps.services.insert(k2, v);
        assert!(
            Programmer::adopt(maps)
                .err()
                .is_some_and(|e| e.to_string().contains("two services with table id")),
        );
    }

    #[test]
    /// An encapsulated backend: its `ENCAP` entry is written before the
    /// backend entry that flags it, and an adopting programmer reads it back
    /// as part of the backend's identity (no rewrite, same id).
    fn encap_backend_is_written_flagged_and_adopted() {
        let mut b = backend(1, true);
        b.encap = Some(EncapValue {
            saddr: v4([10, 0, 0, 2]),
            mtu: 1500,
            _pad: [0; 2],
        });
        let svc = [service(vec![b.clone(), backend(2, true)])];
        let mut first = Programmer::new(MemMaps::default());
        first.apply(&svc).expect("apply");
        let id = first.backend_id(&b).expect("id");
        assert_eq!(first.maps().encap[id as usize], b.encap.expect("encap"));
        assert_ne!(first.maps().backends[id as usize].flags & BE_F_ENCAP, 0);
        let plain = first.backend_id(&backend(2, true)).expect("id");
        assert_eq!(first.maps().backends[plain as usize].flags & BE_F_ENCAP, 0);

        let mut maps = first.maps().clone();
        maps.writes = Default::default();
        let mut second = Programmer::adopt(maps).expect("adopt");
        assert_eq!(second.apply(&svc).expect("apply"), ApplyReport::default());
        assert_eq!(second.backend_id(&b), Some(id), "same id after adoption");
        // Another outer source is another backend identity: a fresh id, so
        // no packet ever reads a half-changed pair of entries.
        let mut moved = b.clone();
        moved.encap = Some(EncapValue {
            saddr: v4([10, 0, 0, 3]),
            mtu: 1500,
            _pad: [0; 2],
        });
        second
            .apply(&[service(vec![moved.clone(), backend(2, true)])])
            .expect("apply");
        assert_ne!(second.backend_id(&moved), Some(id));
    }

    #[test]
    fn adopting_written_maps_keeps_ids_and_writes_only_differences() {
        let three = [three()];
        let mut first = Programmer::new(MemMaps::default());
        first.apply(&three).expect("apply");
        let ids: Vec<Option<u32>> = (1..=3)
            .map(|i| first.backend_id(&backend(i, true)))
            .collect();
        let mut maps = first.maps().clone();
        maps.writes = Default::default();

        let mut second = Programmer::adopt(maps).expect("adopt");
        let r = second.apply(&three).expect("apply");
        assert_eq!(
            r,
            ApplyReport::default(),
            "re-applying the same state after adoption wrote something"
        );
        let again: Vec<Option<u32>> = (1..=3)
            .map(|i| second.backend_id(&backend(i, true)))
            .collect();
        assert_eq!(ids, again, "backend ids changed across adoption");

        let before = live_table(&second);
        let r = second
            .apply(&[service(vec![
                backend(1, true),
                backend(2, false),
                backend(3, true),
            ])])
            .expect("apply");
        assert!(
            r.maglev_writes > 0 && r.maglev_writes < MAGLEV_DEFAULT_SIZE as usize,
            "{r:?}"
        );
        assert_ne!(before, live_table(&second), "the table did not change");
        // A new backend takes an id no adopted backend holds.
        second
            .apply(&[service(vec![backend(1, true), backend(4, true)])])
            .expect("apply");
        let id4 = second.backend_id(&backend(4, true));
        assert!(id4.is_some() && !ids.contains(&id4), "id {id4:?} reused");
    }

    #[test]
    fn bad_table_size_is_refused_before_any_write() {
        let mut p = Programmer::new(MemMaps::default());
        let mut s = service(vec![backend(1, true)]);
        s.table_size = 1000;
        assert!(matches!(p.apply(&[s]), Err(DataplaneError::Maglev(_))));
        assert_eq!(p.maps().writes, crate::dataplane::mem::Writes::default());
    }
}
