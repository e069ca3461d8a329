//! [`Maps`] against the real kernel: loads the embedded XDP object with aya,
//! attaches it (native first, generic as fallback or by choice), and reads and
//! writes its maps.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use vip_common::{
    BackendStats, BackendValue, Counter, EncapValue, Globals, LocalMac, MAX_NAT_OWNERS, NatOwner,
    NatValue, REASON_COUNT, ServiceKey, ServiceValue,
};

use super::{DataplaneError, EBPF_OBJECT, Maps, Result, flows::FlowTables};

/// How to attach the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic if the driver refuses.
    #[default]
    Auto,
    /// Native only: fail if the driver cannot run XDP.
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Skb,
}

/// The mode the program actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Native,
    Skb,
    /// Took over an earlier vipd's pinned link (in whatever mode it had).
    Adopted,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attached::Native => "native",
            Attached::Skb => "skb",
            Attached::Adopted => "adopted",
        })
    }
}

/// Whether `dir` holds a previous run's pinned maps, which a load with it
/// adopts (and whose pinned link still has that run's program forwarding).
pub fn pins_present(dir: &Path) -> bool {
    dir.join("SERVICES").exists()
}

/// Load-time options.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Connection-table capacity (LRU entries).
    pub conntrack_capacity: u32,
    /// Pin the state maps and the XDP link here (a bpffs folder, one per
    /// interface). A later load with the same folder adopts them: the maps keep
    /// every flow, and the link is switched to the new program in one step, so
    /// a restart never stops traffic. None: nothing pinned (tests, benchmarks).
    pub pin_dir: Option<PathBuf>,
}

/// The maps that hold state worth keeping across a restart (everything but
/// the per-packet scratch space).
pub const PINNED_MAPS: [&str; 13] = [
    "SERVICES",
    "SERVICE_PORTS",
    "BACKENDS",
    "ENCAP",
    "MAGLEV",
    "CONNTRACK",
    "NAT_REV",
    // Handshakes in progress: kept, so a restart does not reset them.
    "CT_UNCONFIRMED",
    "NAT_REV_UNCONFIRMED",
    // Shared by the old and the new program while the link switches.
    "NAT_LOCK",
    "GLOBALS",
    "REASONS",
    "BACKEND_STATS",
];

/// The maps that are deliberately not pinned, each new with every load.
/// A restarted vipd loads the program anew and switches the pinned link to
/// it (BPF_LINK_UPDATE), so the program it runs uses its own copies:
/// - SCRATCH, PORT_SCRATCH: per-packet scratch space, no state;
/// - SYNC_EVENTS: state sync's ring; the new agent reads the new program's
///   ring. Events of flows opened while no agent ran are lost, and the next
///   sweep's refresh sends those flows;
/// - SYNC_LOST: a counter of ring overflows, reset like any counter of a
///   restarted process;
/// - LOCAL_MAC: written by every agent before it attaches or switches the
///   link;
/// - NAT_OWNERS: the port-sliced group's other LBs, likewise written by
///   every agent before it attaches (from its configuration);
/// - BENCH_SEQ, BENCH_FRAME: the benchmark programs' flow number
///   (`PROG_BENCH_NEW_FLOW`) and saved headers (`PROG_BENCH_RESTORE`),
///   which production never runs;
/// - TRACE, TRACE_NOTE, AYA_LOGS: `vipd trace`'s filter, per-packet notes
///   and aya-log's record ring; a new program starts with tracing off, and
///   `vipd trace` finds them through the attached program (`trace`).
pub const UNPINNED_MAPS: [&str; 11] = [
    "SCRATCH",
    "PORT_SCRATCH",
    "SYNC_EVENTS",
    "SYNC_LOST",
    "LOCAL_MAC",
    "NAT_OWNERS",
    "BENCH_SEQ",
    "BENCH_FRAME",
    "TRACE",
    "TRACE_NOTE",
    "AYA_LOGS",
];

/// The folder for `iface` under a pin root, versioned by the map ABI so that
/// a vipd whose map layout differs never adopts incompatible maps.
pub fn pin_dir_for(root: &Path, iface: &str) -> PathBuf {
    root.join(iface)
        .join(format!("abi-{:08x}", vip_common::ABI_FINGERPRINT))
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            conntrack_capacity: vip_common::CONNTRACK_DEFAULT_CAPACITY,
            pin_dir: None,
        }
    }
}

/// The program names in the object.
pub const PROG_VIP: &str = "vip";
pub const PROG_PASS: &str = "vip_pass";
pub const PROG_BENCH_TX: &str = "vip_bench_tx";
/// Benchmark only, never attached: `vip` on a new 5-tuple every run, so a
/// repeated BPF_PROG_TEST_RUN measures the new-flow path (vip-ebpf's `bench`).
pub const PROG_BENCH_NEW_FLOW: &str = "vip_bench_new_flow";
/// Benchmark only, never attached: `vip` with the trace check compiled out,
/// the baseline for what the check costs while tracing is off.
pub const PROG_BENCH_UNTRACED: &str = "vip_bench_untraced";
/// Benchmark only, never attached: `vip` with the frame's headers put back
/// after each run, so a repeated BPF_PROG_TEST_RUN of a translating path
/// (mode nat) sees the same input every time (vip-ebpf's `bench`).
pub const PROG_BENCH_RESTORE: &str = "vip_bench_restore";
/// A backend's IPIP / IPv6-in-IPv6 decapsulation where the kernel has no
/// tunnel drivers (tests; README, "Backends in other subnets").
pub const PROG_DECAP: &str = "vip_decap";

pub struct KernelMaps {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    adopted: bool,
}

impl KernelMaps {
    /// Loads the object and verifies the programs; attaches nothing.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        Self::load_object(opts, EBPF_OBJECT)
    }

    /// Loads `object`, an XDP object built from this or another commit of
    /// vip-ebpf, the same way: `vip-bench dataplane --old-object` measures
    /// an older build side by side with this one in one run. Its maps must
    /// have this build's layout where the caller writes them.
    pub fn load_object(opts: &LoadOptions, object: &[u8]) -> Result<Self> {
        if object.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries("CONNTRACK", opts.conntrack_capacity)
            // One reverse entry per translated connection.
            .map_max_entries("NAT_REV", opts.conntrack_capacity);
        let mut adopted = false;
        if let Some(dir) = &opts.pin_dir {
            std::fs::create_dir_all(dir).map_err(|e| DataplaneError::Pin {
                path: dir.clone(),
                source: e,
            })?;
            adopted = pins_present(dir);
            for m in PINNED_MAPS {
                // An existing pin is opened and reused; a missing one is
                // created and pinned (aya's create_pinned_by_name).
                loader.map_pin_path(m, dir.join(m));
            }
        }
        let ebpf = loader
            .load(object)
            .map_err(|e| super::with_capability_hint(DataplaneError::Load(Box::new(e))))?;
        let mut me = KernelMaps {
            ebpf,
            pin_dir: opts.pin_dir.clone(),
            adopted,
        };
        if !adopted {
            // Defaults until the agent writes its own: the program must never
            // run with a zero idle timeout or an empty port range.
            me.set_globals(&Globals::DEFAULT)?;
        }
        for name in [
            PROG_VIP,
            PROG_PASS,
            PROG_BENCH_TX,
            PROG_BENCH_NEW_FLOW,
            PROG_BENCH_UNTRACED,
            PROG_BENCH_RESTORE,
            PROG_DECAP,
        ] {
            me.xdp_mut(name)?.load().map_err(|e| {
                super::with_capability_hint(DataplaneError::Program {
                    name,
                    source: Box::new(e),
                })
            })?;
        }
        Ok(me)
    }

    /// The maps came from an earlier vipd's pins (their contents are live).
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// A loaded program, for attaching or for BPF_PROG_TEST_RUN.
    pub fn xdp(&self, name: &'static str) -> Result<&Xdp> {
        let p = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::NoProgram(name))?;
        p.try_into().map_err(|_| DataplaneError::NoProgram(name))
    }

    fn xdp_mut(&mut self, name: &'static str) -> Result<&mut Xdp> {
        let p = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::NoProgram(name))?;
        p.try_into().map_err(|_| DataplaneError::NoProgram(name))
    }

    /// Attaches program `name` to `iface`. In `Auto` mode native is tried first:
    /// native XDP runs in the driver before an skb exists, generic runs after.
    /// The link lives as long as `self`.
    pub fn attach(
        &mut self,
        name: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<Attached> {
        let link_path = self
            .pin_dir
            .as_ref()
            .map(|d| d.join(format!("link-{name}")));
        if let Some(path) = &link_path
            && path.exists()
        {
            // An earlier vipd's link: switch it to this program atomically
            // (BPF_LINK_UPDATE); packets never meet an interface without XDP.
            let adopt = |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Adopt {
                path: path.clone(),
                source: e,
            };
            let pinned = PinnedLink::from_pin(path).map_err(|e| adopt(Box::new(e)))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| adopt(Box::new(e)))?;
            self.xdp_mut(name)?
                .attach_to_link(link)
                .map_err(|e| adopt(Box::new(e)))?;
            return Ok(Attached::Adopted);
        }
        let (attached, id) = self.attach_new(name, iface, mode)?;
        if let Some(path) = link_path {
            // Pin the new link so that it, and the program, outlive us.
            let pin = |e: Box<dyn std::error::Error + Send + Sync>| DataplaneError::Adopt {
                path: path.clone(),
                source: e,
            };
            let link = self
                .xdp_mut(name)?
                .take_link(id)
                .map_err(|e| pin(Box::new(e)))?;
            let fd = FdLink::try_from(link).map_err(|e| pin(Box::new(e)))?;
            fd.pin(&path).map_err(|e| pin(Box::new(e)))?;
        }
        Ok(attached)
    }

    fn attach_new(
        &mut self,
        name: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(Attached, XdpLinkId)> {
        let ifindex = ifindex(iface)?;
        let prog = self.xdp_mut(name)?;
        let tries: &[(XdpMode, Attached, &str)] = match mode {
            AttachMode::Auto => &[
                (XdpMode::Driver, Attached::Native, "native"),
                (XdpMode::Skb, Attached::Skb, "skb"),
            ],
            AttachMode::Native => &[(XdpMode::Driver, Attached::Native, "native")],
            AttachMode::Skb => &[(XdpMode::Skb, Attached::Skb, "skb")],
        };
        let mut last = None;
        for (xmode, attached, label) in tries {
            match prog.attach_to_if_index(ifindex, *xmode) {
                Ok(id) => return Ok((*attached, id)),
                Err(e) => last = Some((label, e)),
            }
        }
        let (mode, source) = last.ok_or(DataplaneError::NoProgram(name))?;
        Err(DataplaneError::Attach {
            iface: iface.to_owned(),
            mode,
            source: Box::new(source),
        })
    }

    /// Removes a pin folder made by `load`/`attach`: the link (and with it the
    /// program, once no process holds it) and the maps go away.
    pub fn unpin(dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DataplaneError::Pin {
                path: dir.to_owned(),
                source: e,
            }),
        }
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.ebpf.map(name).ok_or(DataplaneError::NoMap(name))
    }

    /// A map by name, for tools that need more than the `Maps` trait offers
    /// (filling the connection table in benchmarks, dumping it for status).
    pub fn raw_map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.map_mut(name)
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or(DataplaneError::NoMap(name))
    }

    /// Lists the other LBs of a port-sliced mode nat group (`NatOwner`):
    /// every entry is written, the unused ones empty, so a shorter list
    /// than the last one's leaves no stale peer behind.
    pub fn set_nat_owners(&mut self, owners: &[NatOwner]) -> Result<()> {
        if owners.len() > MAX_NAT_OWNERS as usize {
            return Err(DataplaneError::Full {
                what: "NAT slice owners (state_sync.peers)",
                max: MAX_NAT_OWNERS,
            });
        }
        let mut m: Array<&mut MapData, NatOwner> =
            Array::try_from(self.map_mut("NAT_OWNERS")?).map_err(map_err("NAT_OWNERS", "open"))?;
        // Back to front: the list ends at the first empty entry, so a
        // program reading meanwhile sees a shorter list, never a gap.
        for i in (0..MAX_NAT_OWNERS).rev() {
            let v = owners.get(i as usize).copied().unwrap_or(NatOwner::EMPTY);
            m.set(i, v, 0).map_err(map_err("NAT_OWNERS", "update"))?;
        }
        Ok(())
    }

    /// Tells the program the attached interface's MAC: frames for a service
    /// addressed to another host are passed (`pass_other_host`), not served.
    pub fn set_local_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut m: Array<&mut MapData, LocalMac> =
            Array::try_from(self.map_mut("LOCAL_MAC")?).map_err(map_err("LOCAL_MAC", "open"))?;
        let v = LocalMac {
            mac,
            set: 1,
            _pad: 0,
        };
        m.set(0, v, 0).map_err(map_err("LOCAL_MAC", "update"))
    }

    /// The names of the object's maps (to check `PINNED_MAPS` against).
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(n, _)| n.to_owned()).collect()
    }

    /// Second handles on the flow tables for [`FlowTables::sweep`], which
    /// runs in a blocking thread.
    pub fn flow_tables(&self) -> Result<FlowTables> {
        FlowTables::open(
            self.map("CONNTRACK")?,
            self.map("NAT_REV")?,
            self.map("BACKENDS")?,
            self.map("NAT_LOCK")?,
        )
    }

    /// A map by name, for the layers above that open their own handles on
    /// it (state sync's flow tables).
    pub fn raw_map(&self, name: &'static str) -> Result<&aya::maps::Map> {
        self.map(name)
    }

    /// The `SYNC_EVENTS` ring buffer on a dup'd fd, for the state-sync sender
    /// (a ring buffer has one consumer position: take it once).
    pub fn sync_events(&self) -> Result<aya::maps::RingBuf<MapData>> {
        let aya::maps::Map::RingBuf(d) = self.map("SYNC_EVENTS")? else {
            return Err(DataplaneError::NoMap("SYNC_EVENTS as a ring buffer"));
        };
        let d = super::flows::dup_map(d, "SYNC_EVENTS")?;
        aya::maps::RingBuf::try_from(aya::maps::Map::RingBuf(d))
            .map_err(map_err("SYNC_EVENTS", "open"))
    }

    /// Sync events the program lost to a full ring, summed over CPUs.
    pub fn sync_lost(&self) -> Result<u64> {
        sum_sync_lost(self.map("SYNC_LOST")?)
    }

    /// The per-CPU counters on handles of their own (dup'd fds), for the
    /// metrics endpoint to read at scrape time from its own task.
    pub fn counters(&self) -> Result<KernelCounters> {
        let dup = |name: &'static str| -> Result<aya::maps::Map> {
            let aya::maps::Map::PerCpuArray(d) = self.map(name)? else {
                return Err(DataplaneError::NoMap(name));
            };
            Ok(aya::maps::Map::PerCpuArray(super::flows::dup_map(d, name)?))
        };
        Ok(KernelCounters {
            reasons: dup("REASONS")?,
            backends: dup("BACKEND_STATS")?,
            sync_lost: dup("SYNC_LOST")?,
        })
    }

    /// Every reverse-NAT entry, confirmed (`NAT_REV`) or not
    /// (`NAT_REV_UNCONFIRMED`), for tests and status.
    pub fn nat_entries(&self) -> Result<Vec<(vip_common::ConnKey, NatValue)>> {
        let mut out = self.dump::<NatValue>("NAT_REV")?;
        out.extend(self.dump::<NatValue>("NAT_REV_UNCONFIRMED")?);
        Ok(out)
    }

    /// Every connection entry, confirmed (`CONNTRACK`) or not
    /// (`CT_UNCONFIRMED`), for tests and status.
    pub fn conntrack(&self) -> Result<Vec<(vip_common::ConnKey, vip_common::ConnValue)>> {
        let mut out = self.confirmed_flows()?;
        out.extend(self.dump::<vip_common::ConnValue>("CT_UNCONFIRMED")?);
        Ok(out)
    }

    /// Only the confirmed connections (`CONNTRACK`): what a flood must
    /// leave alone.
    pub fn confirmed_flows(&self) -> Result<Vec<(vip_common::ConnKey, vip_common::ConnValue)>> {
        self.dump("CONNTRACK")
    }

    /// Every entry of the flow map `name`.
    fn dump<V: aya::Pod>(&self, name: &'static str) -> Result<Vec<(vip_common::ConnKey, V)>> {
        let m: HashMap<&MapData, vip_common::ConnKey, V> =
            HashMap::try_from(self.map(name)?).map_err(map_err(name, "open"))?;
        Ok(m.iter().filter_map(|r| r.ok()).collect())
    }
}

/// The program's per-CPU counters, read without the agent's [`KernelMaps`].
pub struct KernelCounters {
    reasons: aya::maps::Map,
    backends: aya::maps::Map,
    sync_lost: aya::maps::Map,
}

impl KernelCounters {
    /// Sync events the program lost to a full ring, summed over CPUs.
    pub fn sync_lost(&self) -> Result<u64> {
        sum_sync_lost(&self.sync_lost)
    }
}

impl super::metrics::CounterSource for KernelCounters {
    fn reasons(&self) -> Result<Vec<Counter>> {
        sum_reasons(&self.reasons)
    }

    fn backend(&self, id: u32) -> Result<BackendStats> {
        sum_backend(&self.backends, id)
    }
}

fn sum_sync_lost(map: &aya::maps::Map) -> Result<u64> {
    let m: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(map_err("SYNC_LOST", "open"))?;
    let per_cpu = m.get(&0, 0).map_err(map_err("SYNC_LOST", "lookup"))?;
    Ok(per_cpu.iter().sum())
}

fn sum_reasons(map: &aya::maps::Map) -> Result<Vec<Counter>> {
    let m: PerCpuArray<&MapData, Counter> =
        PerCpuArray::try_from(map).map_err(map_err("REASONS", "open"))?;
    (0..REASON_COUNT)
        .map(|i| {
            let per_cpu = m.get(&i, 0).map_err(map_err("REASONS", "lookup"))?;
            Ok(per_cpu.iter().fold(Counter::default(), |a, c| Counter {
                packets: a.packets + c.packets,
                bytes: a.bytes + c.bytes,
            }))
        })
        .collect()
}

fn sum_backend(map: &aya::maps::Map, id: u32) -> Result<BackendStats> {
    let m: PerCpuArray<&MapData, BackendStats> =
        PerCpuArray::try_from(map).map_err(map_err("BACKEND_STATS", "open"))?;
    let per_cpu = m.get(&id, 0).map_err(map_err("BACKEND_STATS", "lookup"))?;
    Ok(per_cpu
        .iter()
        .fold(BackendStats::default(), |a, c| BackendStats {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            new_flows: a.new_flows + c.new_flows,
            rsts: a.rsts + c.rsts,
        }))
}

fn map_err(map: &'static str, op: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        map,
        op,
        source: Box::new(e),
    }
}

fn ifindex(iface: &str) -> Result<u32> {
    Ok(crate::link::ifindex(iface)?)
}

impl Maps for KernelMaps {
    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        let mut m: HashMap<&mut MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(self.map_mut("SERVICES")?).map_err(map_err("SERVICES", "open"))?;
        m.insert(key, value, 0)
            .map_err(map_err("SERVICES", "update"))
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        let mut m: HashMap<&mut MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(self.map_mut("SERVICES")?).map_err(map_err("SERVICES", "open"))?;
        match m.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("SERVICES", "delete")(e)),
        }
    }

    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<()> {
        let mut m: Array<&mut MapData, BackendValue> =
            Array::try_from(self.map_mut("BACKENDS")?).map_err(map_err("BACKENDS", "open"))?;
        m.set(id, value, 0).map_err(map_err("BACKENDS", "update"))
    }

    fn set_encap(&mut self, id: u32, value: &EncapValue) -> Result<()> {
        let mut m: Array<&mut MapData, EncapValue> =
            Array::try_from(self.map_mut("ENCAP")?).map_err(map_err("ENCAP", "open"))?;
        m.set(id, value, 0).map_err(map_err("ENCAP", "update"))
    }

    fn read_encap(&self, id: u32) -> Result<EncapValue> {
        let m: Array<&MapData, EncapValue> =
            Array::try_from(self.map("ENCAP")?).map_err(map_err("ENCAP", "open"))?;
        m.get(&id, 0).map_err(map_err("ENCAP", "lookup"))
    }

    fn set_maglev(&mut self, index: u32, backend_id: u32) -> Result<()> {
        let mut m: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut("MAGLEV")?).map_err(map_err("MAGLEV", "open"))?;
        m.set(index, backend_id, 0)
            .map_err(map_err("MAGLEV", "update"))
    }

    fn set_globals(&mut self, g: &Globals) -> Result<()> {
        let mut m: Array<&mut MapData, Globals> =
            Array::try_from(self.map_mut("GLOBALS")?).map_err(map_err("GLOBALS", "open"))?;
        m.set(0, g, 0).map_err(map_err("GLOBALS", "update"))
    }

    fn set_port_word(&mut self, word: u32, bits: u64) -> Result<()> {
        let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut("SERVICE_PORTS")?)
            .map_err(map_err("SERVICE_PORTS", "open"))?;
        m.set(word, bits, 0)
            .map_err(map_err("SERVICE_PORTS", "update"))
    }

    fn read_services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        let m: HashMap<&MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(self.map("SERVICES")?).map_err(map_err("SERVICES", "open"))?;
        m.iter()
            .map(|r| r.map_err(map_err("SERVICES", "iterate")))
            .collect()
    }

    fn read_backends(&self) -> Result<Vec<(u32, BackendValue)>> {
        let m: Array<&MapData, BackendValue> =
            Array::try_from(self.map("BACKENDS")?).map_err(map_err("BACKENDS", "open"))?;
        let mut out = vec![];
        for i in 0..m.len() {
            let v = m.get(&i, 0).map_err(map_err("BACKENDS", "lookup"))?;
            if v != BackendValue::EMPTY {
                out.push((i, v));
            }
        }
        Ok(out)
    }

    fn read_maglev(&self, start: u32, len: u32) -> Result<Vec<u32>> {
        let m: Array<&MapData, u32> =
            Array::try_from(self.map("MAGLEV")?).map_err(map_err("MAGLEV", "open"))?;
        (start..start + len)
            .map(|i| m.get(&i, 0).map_err(map_err("MAGLEV", "lookup")))
            .collect()
    }

    fn read_port_words(&self) -> Result<Vec<(u32, u64)>> {
        let m: Array<&MapData, u64> = Array::try_from(self.map("SERVICE_PORTS")?)
            .map_err(map_err("SERVICE_PORTS", "open"))?;
        let mut out = vec![];
        for i in 0..m.len() {
            let v = m.get(&i, 0).map_err(map_err("SERVICE_PORTS", "lookup"))?;
            if v != 0 {
                out.push((i, v));
            }
        }
        Ok(out)
    }

    fn reason_counters(&self) -> Result<Vec<Counter>> {
        sum_reasons(self.map("REASONS")?)
    }

    fn backend_counters(&self, id: u32) -> Result<BackendStats> {
        sum_backend(self.map("BACKEND_STATS")?, id)
    }
}
