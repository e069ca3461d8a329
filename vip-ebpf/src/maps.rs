//! Every map of the program, with its role. Sizes come from vip-common; the
//! agent may resize `CONNTRACK` at load time.

use crate::{parse::Parsed, trace::Note};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use vip_common::{
    BackendStats, BackendValue, CONNTRACK_DEFAULT_CAPACITY, ConnKey, ConnValue, Counter,
    EncapValue, Globals, LocalMac, MAGLEV_ENTRIES, MAX_BACKENDS, MAX_NAT_OWNERS, MAX_SERVICES,
    NAT_DEFAULT_CAPACITY, NAT_LOCK_CAPACITY, NatOwner, NatValue, REASON_COUNT, SYNC_RING_BYTES,
    ServiceKey, ServiceValue, TraceFilter, UNCONFIRMED_CAPACITY,
};

/// (VIP, port, protocol) -> service: which traffic is ours and how to forward it.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// One bit per destination port that some service listens on: lets traffic that
/// cannot be ours (SSH, kubelet, ...) pass after an inlined array read instead of
/// a hash lookup. Index = port / 64, bit = port % 64 (host order port).
#[map]
pub static SERVICE_PORTS: Array<u64> = Array::with_max_entries(1024, 0);

/// The attached interface's MAC (one entry, see `LocalMac`): frames for a
/// service addressed elsewhere are not ours.
#[map]
pub static LOCAL_MAC: Array<LocalMac> = Array::with_max_entries(1, 0);

/// Backend id -> address, port, MAC, flags (alive, local).
#[map]
pub static BACKENDS: Array<BackendValue> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Backend id -> outer source address and path MTU, for `BE_F_ENCAP`
/// backends only (mode dsr across subnets, see `encap`).
#[map]
pub static ENCAP: Array<EncapValue> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The other LBs of a port-sliced mode nat group and their slices (see
/// `NatOwner`): where a reply this LB has no entry for is handed, and whose
/// handed packets are taken (`handoff`). Empty unless slices are in use.
#[map]
pub static NAT_OWNERS: Array<NatOwner> = Array::with_max_entries(MAX_NAT_OWNERS, 0);

/// Maglev lookup tables of backend ids: two halves per service, one live.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(MAGLEV_ENTRIES, 0);

/// Client 5-tuple -> backend: keeps established flows on their backend.
/// Confirmed flows only (see `CT_UNCONFIRMED`), so what its LRU evicts when
/// full is the least recently used real connection, never to make room for
/// a flood.
#[map]
pub static CONNTRACK: LruHashMap<ConnKey, ConnValue> =
    LruHashMap::with_max_entries(CONNTRACK_DEFAULT_CAPACITY, 0);

/// Client 5-tuple -> backend for flows the client has not confirmed yet: a
/// SYN's, until the handshake's ACK, or a lone mid-flow segment's (mode
/// dsr), until the next one. That next non-SYN packet moves the entry to
/// `CONNTRACK` (`confirm`). A flood of SYNs or of segments with no flow
/// lands here and evicts only itself.
#[map]
pub static CT_UNCONFIRMED: LruHashMap<ConnKey, ConnValue> =
    LruHashMap::with_max_entries(UNCONFIRMED_CAPACITY, 0);

/// Per-CPU packets and bytes per `Reason`.
#[map]
pub static REASONS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(REASON_COUNT, 0);

/// Per-CPU traffic per backend id.
#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Mode nat: the flow as a backend sends it (backend -> SNAT address:port) ->
/// the client side, to translate replies back.
#[map]
pub static NAT_REV: LruHashMap<ConnKey, NatValue> =
    LruHashMap::with_max_entries(NAT_DEFAULT_CAPACITY, 0);

/// Mode nat: the reverse entries of `CT_UNCONFIRMED`'s flows, moved to
/// `NAT_REV` with their forward entry. A source port is taken by a flow
/// when its key is in either map (`lb::allocate_port`).
#[map]
pub static NAT_REV_UNCONFIRMED: LruHashMap<ConnKey, NatValue> =
    LruHashMap::with_max_entries(UNCONFIRMED_CAPACITY, 0);

/// Mode nat: reverse entries being reclaimed or swept right now, one key each.
/// Whoever inserts a key here first (BPF_NOEXIST: atomic) may replace or
/// delete that `NAT_REV` entry; everyone else leaves it alone. The program
/// and the agent's sweep both take it, so a port is never handed to two
/// flows. Entries live for one reclaim; a full map only means "busy".
#[map]
pub static NAT_LOCK: HashMap<ConnKey, u8> = HashMap::with_max_entries(NAT_LOCK_CAPACITY, 0);

/// Per-CPU scratch space for a new flow: its connection value, and for
/// `allocate_port` its reverse value and the keys it looks up, live here,
/// not on the BPF stack, which the call chain has nearly used up.
#[map]
pub static PORT_SCRATCH: PerCpuArray<PortScratch> = PerCpuArray::with_max_entries(1, 0);

/// See `PORT_SCRATCH`.
#[repr(C)]
pub struct PortScratch {
    /// The new flow's `CONNTRACK` value.
    pub conn: ConnValue,
    pub value: NatValue,
    pub rev: ConnKey,
    pub fwd: ConnKey,
}

/// Program-wide settings (one entry): NAT port range, idle timeouts.
#[map]
pub static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space for the parsed packet (see `parse::Parsed`): keeps
/// the 512-byte BPF stack for the call chain.
#[map]
pub static SCRATCH: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(1, 0);

/// Mode nat with `state_sync:`: one `SyncEvent` per new flow of a
/// `SVC_F_SYNC` service, read by the agent, which replicates it to its peers.
/// Not pinned: events are only worth something to the agent that reads them.
#[map]
pub static SYNC_EVENTS: RingBuf = RingBuf::with_byte_size(SYNC_RING_BYTES, 0);

/// Per-CPU count of sync events lost because `SYNC_EVENTS` was full (the
/// agent fell behind): those flows reset at their next packet after a
/// failover. One slot.
#[map]
pub static SYNC_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Benchmark only: the next flow number of `vip_bench_new_flow` (one slot).
/// The production program `vip` never reads or writes it.
#[map]
pub static BENCH_SEQ: Array<u32> = Array::with_max_entries(1, 0);

/// Benchmark only: the frame's headers as `vip_bench_restore` received them
/// (`bench::save`), per CPU. The production program `vip` never touches it.
#[map]
pub static BENCH_FRAME: PerCpuArray<[u16; 32]> = PerCpuArray::with_max_entries(1, 0);

/// `vipd trace`'s filter (one entry): which packets get a decision record
/// on aya-log's `AYA_LOGS` ring, until when. Not pinned: a newly loaded
/// program starts with tracing off.
#[map]
pub static TRACE: Array<TraceFilter> = Array::with_max_entries(1, 0);

/// Per-CPU notes on the packet being traced (`trace::Note`), kept between
/// the decisions in `try_vip` and the record written after the verdict.
#[map]
pub static TRACE_NOTE: PerCpuArray<Note> = PerCpuArray::with_max_entries(1, 0);
