//! The kernel/user ABI of vipd: every map key and value, capacity, flag bit and
//! pass/drop reason, defined once and used by both the XDP program and the agent.
//!
//! Rules (see shared/STYLE.md): `#[repr(C)]`, `Copy`, no `bool`/`Option`, no
//! implicit padding (explicit `_pad` fields and a size assertion per type), and
//! addresses and ports stored exactly as on the wire (`_be` in the field name), so
//! the datapath never swaps bytes.
#![no_std]

use core::mem::size_of;

/// Services the dataplane can hold at once (keyed by VIP, port, protocol).
pub const MAX_SERVICES: u32 = 16;
/// Backend slots shared by all services.
pub const MAX_BACKENDS: u32 = 1024;
/// Largest Maglev table (a prime). Each service owns two slots of this size in the
/// `MAGLEV` array: one live, one being written (see [`maglev_index`]).
pub const MAGLEV_MAX_SIZE: u32 = 65537;
/// Default Maglev table size (a prime; the Maglev paper's M = 65537 is for
/// hundreds of backends, a control plane has 3 to 7).
pub const MAGLEV_DEFAULT_SIZE: u32 = 16381;
/// Default connection-table capacity; the agent may change it at load time.
pub const CONNTRACK_DEFAULT_CAPACITY: u32 = 262_144;
/// Backend id meaning "no backend" in a Maglev slot.
pub const NO_BACKEND: u32 = u32::MAX;

/// Address family tags used in keys (values chosen to match nothing else).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers (RFC 790 / IANA).
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// How a service forwards (design card: the two deployment shapes).
pub const MODE_DSR: u8 = 1;
pub const MODE_NAT: u8 = 2;

/// Service flag: answer TCP that cannot be served with an RST instead of passing it.
pub const SVC_F_RST_UNSERVABLE: u8 = 1 << 0;
/// Service flag (mode nat): report every new flow on the `SYNC_EVENTS` ring
/// buffer so the agent replicates it to its peer LBs (`state_sync:`). Set only
/// with `snat: vip`: the backend's replies must follow the VIP to the peer.
pub const SVC_F_SYNC: u8 = 1 << 1;

/// Backend flag: the backend is healthy and may receive flows.
pub const BE_F_ALIVE: u8 = 1 << 0;
/// Backend flag: the backend is this node (DSR: hand the packet to the local stack).
pub const BE_F_LOCAL: u8 = 1 << 1;
/// Backend flag (mode dsr): the backend is in another subnet and is reached by
/// encapsulating the client's packet to its address, IPv4 in IPv4 (RFC 2003)
/// or IPv6 in IPv6 (RFC 2473); its `ENCAP` entry holds the outer source and
/// the path MTU. Its `mac` is unused: the next hop comes from the FIB.
pub const BE_F_ENCAP: u8 = 1 << 2;

/// IP protocol numbers of the outer header: IPv4 in IPv4 (RFC 2003) and
/// IPv6 in IPv6 (RFC 2473), and ICMP / ICMPv6 for "too big" answers.
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6: u8 = 41;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// Bytes the outer header adds (no options, no extension headers).
pub const ENCAP_V4_OVERHEAD: u16 = 20;
pub const ENCAP_V6_OVERHEAD: u16 = 40;
/// The path MTU towards encapsulated backends when the configuration says
/// none: the usual Ethernet MTU.
pub const ENCAP_DEFAULT_MTU: u16 = 1500;

/// Connection flag: the flow saw FIN or RST and may be reused.
pub const CT_F_CLOSING: u8 = 1 << 0;
/// Connection flag: the flow's service forwards in mode dsr, so the entry
/// alone says how to send its packets (the XDP program's fast path).
pub const CT_F_DSR: u8 = 1 << 1;
/// Reverse-NAT flag: the backend's end of this connection is closed and
/// keeps no TIME-WAIT, so its source port may be reused after
/// [`CLOSED_HOLD_NS`] rather than `closing_s`. Set when the backend sends an
/// RST (RFC 9293 3.10.7: it is CLOSED at once), or sends its FIN after the
/// client's (the passive close, CLOSE-WAIT -> LAST-ACK -> CLOSED, RFC 9293
/// 3.6: only the side that closes first waits in TIME-WAIT).
pub const NAT_F_DONE: u8 = 1 << 2;
/// Reverse-NAT flag: this LB took the entry's port itself, for a flow whose
/// SYN it saw, of a service without state sync: no other LB can have seen
/// the client confirm the flow. Only such an entry, while unconfirmed, has
/// a stray segment from its backend answered with an RST
/// (`lb::stale_backend_segment`). With state sync the client's ACK may
/// have gone through a peer (the router's ECMP hash changed as an LB came
/// back, or the VIP moved), which confirmed the flow from its synced copy;
/// until that peer's record arrives the backend's next segment looks
/// stale here and is not: resetting it broke a connection in the fabric
/// lab. A peer's copy never carries the flag either (sync strips it).
pub const NAT_F_SOLE: u8 = 1 << 3;
/// State-sync flag, on a `SyncEvent` and its wire record only, never in a
/// map: the flow is not confirmed yet (its SYN, `confirm`), so a peer keeps
/// it in its unconfirmed tables. Sent so that a reply reaching another LB
/// before the client's ACK finds its reverse entry: with `snat: vip` behind
/// ECMP the backend's SYN-ACK goes to whichever LB the router's hash picks.
/// A flood's SYNs then land in peers' unconfirmed tables, which only evict
/// each other, never in their confirmed ones.
pub const SYNC_F_PENDING: u8 = 1 << 7;

/// How long a `NAT_F_DONE` flow keeps its source port after the last packet
/// of either side. It covers the backend retransmitting its FIN when the
/// client's last ACK was lost (each retransmission refreshes the entry), so
/// a new flow's SYN never lands on a socket still in LAST-ACK.
pub const CLOSED_HOLD_NS: u64 = 2_000_000_000;

/// How long a source port stays with a mode nat handshake that has not
/// completed (its client has not confirmed it, `confirm`) once a new flow
/// finds no free port: then a handshake idle this long on both sides gives
/// its port up (`handshake_port_free`). A real client completes its
/// handshake within one round trip; one that has had no answer for a second
/// has lost a segment and retransmits its SYN at its initial RTO of 1 s
/// (RFC 6298 section 2.1), which then takes a port afresh. A spoofed SYN's
/// handshake never completes, so under a SYN flood the ports turn over
/// every second instead of being held for `closing_s` (10 s by default)
/// while every new client is refused.
pub const HANDSHAKE_HOLD_NS: u64 = 1_000_000_000;

/// Whether the port `port_be` held by an unconfirmed mode nat flow may go
/// to a new one when no port is free: its reverse entry idle past
/// [`HANDSHAKE_HOLD_NS`] (last seen at `rev_last`), and its forward entry
/// `fwd` (last seen, its port) too when that still holds this port (a
/// forward entry with another port is a newer connection on the same client
/// tuple). The second value says whether that forward entry must go with
/// the port: left in place, the old client's next packet would be sent on
/// under a port that is now another flow's.
#[inline(always)]
pub fn handshake_port_free(
    now: u64,
    port_be: u16,
    rev_last: u64,
    fwd: Option<(u64, u16)>,
) -> (bool, bool) {
    let over = |last: u64| now.saturating_sub(last) > HANDSHAKE_HOLD_NS;
    if !over(rev_last) {
        return (false, false);
    }
    match fwd {
        Some((last, port)) if port == port_be => (over(last), over(last)),
        _ => (true, false),
    }
}

macro_rules! reasons {
    ($($(#[$m:meta])* $name:ident = $val:expr, $label:expr;)*) => {
        /// Why the program returned what it did. One enum for passes, forwards and
        /// drops; the index of the per-CPU `REASONS` counters and, through
        /// [`Reason::label`], the metrics label. Add only at the end.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $($(#[$m])* $name = $val,)*
        }

        impl Reason {
            /// Every reason, in index order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The stable snake_case name used in metrics and logs.
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }

            pub const fn from_index(i: u32) -> Option<Reason> {
                match i { $($val => Some(Reason::$name),)* _ => None }
            }
        }
    };
}

reasons! {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = 0, "pass_not_ip";
    /// IP but neither TCP nor UDP (ICMP, VRRP, ...).
    PassNotL4 = 1, "pass_not_l4";
    /// TCP/UDP to an address/port/protocol that is no service of ours.
    PassNoService = 2, "pass_no_service";
    /// An IPv4 fragment: ports are unknown, the kernel reassembles.
    PassFragment = 3, "pass_fragment";
    /// IPv6 with an extension header before L4.
    PassIpv6ExtHeader = 4, "pass_ipv6_ext_header";
    /// A header was cut short or inconsistent; the kernel decides.
    PassMalformed = 5, "pass_malformed";
    /// The chosen backend is this node: delivered to the local stack.
    PassLocalBackend = 6, "pass_local_backend";
    /// Forwarded by destination MAC rewrite (mode dsr).
    TxDsr = 7, "tx_dsr";
    /// Forwarded after address translation (mode nat).
    TxNat = 8, "tx_nat";
    /// A reply from a backend translated back to the client (mode nat).
    TxReverseNat = 9, "tx_reverse_nat";
    /// A flow that cannot be served was answered with a TCP RST.
    TxRst = 10, "tx_rst";
    /// No healthy backend and the packet could not be answered with an RST
    /// (UDP, or TCP to a service without RST answers). An RST is
    /// [`Reason::AbsorbRst`] instead.
    DropNoBackend = 11, "drop_no_backend";
    /// The Maglev slot pointed at a backend id with no backend entry.
    DropBadBackend = 12, "drop_bad_backend";
    /// A service has no or an invalid Maglev table size.
    DropBadTable = 13, "drop_bad_table";
    /// The connection table refused an insert.
    DropConntrackFull = 14, "drop_conntrack_full";
    /// The next hop was not resolved yet: the kernel resolves the neighbour.
    PassFibMiss = 15, "pass_fib_miss";
    /// A packet adjustment helper failed.
    DropAdjustFailed = 16, "drop_adjust_failed";
    /// The service's mode is not one the datapath implements.
    DropBadMode = 17, "drop_bad_mode";
    /// Mode nat: no free source port for this backend (range exhausted).
    DropNatPortsExhausted = 18, "drop_nat_ports_exhausted";
    /// Mode nat: no route to the backend or client (FIB lookup failed).
    DropNoRoute = 19, "drop_no_route";
    /// For a service (or a mode nat reply port) but addressed to another
    /// host's MAC: it reached this interface because the interface is
    /// promiscuous (a bridge port, a running packet capture) and the switch
    /// flooded it. Passed to the kernel, which drops it (PACKET_OTHERHOST):
    /// forwarding it would duplicate another node's packet, and answering it
    /// in mode nat would reset another node's connection.
    PassOtherHost = 20, "pass_other_host";
    /// A TCP RST for a flow no backend serves (its backend died, or mode
    /// nat never saw its handshake): discarded, as RFC 9293 3.10.7.1 says
    /// of an RST that reaches no connection. Nothing is lost: the sender is
    /// ending the flow itself. A dead backend's clients send these as a
    /// matter of course (the second poke reaches a client that the first
    /// one's RST already closed, see vip-userspace `dataplane::poke`), so
    /// they are not counted as a drop and do not raise the drops alert.
    AbsorbRst = 21, "absorb_rst";
    /// Mode dsr to a backend in another subnet: encapsulated (IPIP or IPv6
    /// in IPv6) towards the backend's address, next hop from the FIB.
    TxEncap = 22, "tx_encap";
    /// The encapsulated packet would exceed the path MTU and the client
    /// asked not to fragment (IPv4 DF, or any IPv6): answered with ICMP
    /// "fragmentation needed" (RFC 1191) / ICMPv6 "packet too big"
    /// (RFC 8201) so the client lowers its path MTU and resends smaller.
    TxTooBig = 23, "tx_icmp_too_big";
    /// The encapsulated packet would exceed the path MTU and may be
    /// fragmented (IPv4 without DF): XDP cannot fragment, and the VIP's
    /// owner must not take it locally. Dropped; the sender's transport
    /// retries. TCP from Linux always sets DF.
    DropEncapTooBig = 24, "drop_encap_too_big";
    /// Mode nat with port slices (`announce:` + `state_sync:`): a
    /// backend's reply to a port of another LB's slice, for which this LB
    /// has no entry yet (the router's ECMP hash of the reply picked it, and
    /// the slice owner's sync record is still on its way). Encapsulated
    /// (IPIP / IPv6 in IPv6) to that owner, which has the flow; passed to
    /// the kernel it would be answered with an RST and cost the client a
    /// one-second SYN retry.
    TxHandoff = 25, "tx_nat_handoff";
    /// Such a reply that would not fit the path once encapsulated: dropped
    /// (the backend retransmits, by when the sync record has arrived).
    DropHandoffTooBig = 26, "drop_nat_handoff_too_big";
    /// A packet a peer LB handed to us (`TxHandoff`) that we have no entry
    /// for either: passed to the kernel, never handed on again (no loop
    /// between two LBs). A handed packet we do have an entry for is counted
    /// under its own verdict (`TxReverseNat`).
    PassHandoffUnknown = 27, "pass_nat_handoff_unknown";
    /// Mode nat: the backend answered a new flow's SYN with a segment of an
    /// older connection it still holds on that source port (an ACK, not a
    /// SYN-ACK: the port was taken over from a stalled handshake, or from a
    /// flow the backend never closed). The LB answered it with the RST the
    /// client would have sent, so the backend drops the old connection and
    /// the client's retransmitted SYN opens the new one on the same port.
    TxRstStale = 28, "tx_rst_stale_backend";
}

/// The `LOCAL_MAC` entry: the MAC address of the interface the program is
/// attached to, which the agent writes before attaching and whenever it
/// changes. Frames for a service must be addressed to it. `set` 0 (never
/// written, as in program tests that do not care) turns the check off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalMac {
    pub mac: [u8; 6],
    pub set: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<LocalMac>() == 8);

/// Number of reason counters (the length of the `REASONS` per-CPU array).
pub const REASON_COUNT: u32 = Reason::ALL.len() as u32;

/// Packets and bytes, one per reason, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Counter>() == 16);

/// Per-backend traffic counters, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub rsts: u64,
}
const _: () = assert!(size_of::<BackendStats>() == 32);

/// An address as on the wire: IPv4 in the first 4 bytes and zeros after it,
/// IPv6 in all 16. The family is stored beside it wherever it matters.
pub type AddrBytes = [u8; 16];

/// Key of the `SERVICES` hash map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub addr: AddrBytes,
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// Value of the `SERVICES` hash map. The agent replaces the whole value in one
/// map update, so `maglev_size` and `maglev_half` always change together.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Index of the service's table slots in `MAGLEV` (0..MAX_SERVICES).
    pub id: u32,
    /// Size of the live Maglev table (prime, <= MAGLEV_MAX_SIZE).
    pub maglev_size: u32,
    /// Which of the service's two table slots is live (0 or 1).
    pub maglev_half: u32,
    pub mode: u8,
    pub flags: u8,
    pub family: u8,
    pub _pad: u8,
    /// Source address for mode nat (on the wire; family as above).
    pub snat_addr: AddrBytes,
}
const _: () = assert!(size_of::<ServiceValue>() == 32);

/// Value of the `BACKENDS` array, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendValue {
    pub addr: AddrBytes,
    pub port_be: u16,
    pub family: u8,
    pub flags: u8,
    /// Destination MACs for mode dsr (the backend node's interface): the
    /// one in use is `macs[mac_sel & 1]` ([`BackendValue::mac`]). A map
    /// update is a plain copy into the array value (`copy_map_value`), which
    /// a packet on another CPU may read halfway, so a backend that answers
    /// from another MAC is re-pointed in two updates: the new MAC into the
    /// idle slot (only bytes no packet reads change), then `mac_sel` (one
    /// byte changes). Every packet sees the old MAC or the new one whole.
    pub macs: [[u8; 6]; 2],
    pub mac_sel: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<BackendValue>() == 36);

/// Value of the `ENCAP` array, indexed by backend id like `BACKENDS`, read
/// only for `BE_F_ENCAP` backends: the plain dsr and nat paths never touch it.
/// Kept apart from `BackendValue` so that value (and the established flow's
/// cache footprint) stays as it is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncapValue {
    /// Source of the outer header: this node's address towards the backend
    /// (on the wire; the backend's family).
    pub saddr: AddrBytes,
    /// Largest outer packet (IP total length) the path carries, host order.
    pub mtu: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<EncapValue>() == 20);

/// One entry of `NAT_OWNERS`: another LB that shares the VIP as SNAT
/// address, the slice of `nat.ports` it hands out, and how to reach it. A
/// reply to a port of its slice that reaches this LB before the flow's
/// sync record is encapsulated to it (`Reason::TxHandoff`), and an
/// encapsulated packet from its `addr` to our `saddr` is unwrapped and
/// taken. Entries are filled from index 0; the first with `family` 0 ends
/// the list.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatOwner {
    /// The peer's state-sync address (the outer destination).
    pub addr: AddrBytes,
    /// This node's state-sync address (the outer source), same family.
    pub saddr: AddrBytes,
    /// The peer's slice, host order, inclusive.
    pub lo: u16,
    pub hi: u16,
    /// Largest outer packet (IP total length) the path carries, host order.
    pub mtu: u16,
    /// `FAMILY_V4` / `FAMILY_V6`; 0: unused entry, the end of the list.
    pub family: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<NatOwner>() == 40);

/// Entries in `NAT_OWNERS`: the other LBs of one port-sliced group.
pub const MAX_NAT_OWNERS: u32 = 16;

impl NatOwner {
    pub const EMPTY: NatOwner = NatOwner {
        addr: [0; 16],
        saddr: [0; 16],
        lo: 0,
        hi: 0,
        mtu: 0,
        family: 0,
        _pad: 0,
    };
}

impl EncapValue {
    pub const EMPTY: EncapValue = EncapValue {
        saddr: [0; 16],
        mtu: 0,
        _pad: [0; 2],
    };
}

impl BackendValue {
    pub const EMPTY: BackendValue = BackendValue {
        addr: [0; 16],
        port_be: 0,
        family: 0,
        flags: 0,
        macs: [[0; 6]; 2],
        mac_sel: 0,
        _pad: [0; 3],
    };

    /// The MAC in use (mode dsr).
    #[inline(always)]
    pub fn mac(&self) -> &[u8; 6] {
        &self.macs[(self.mac_sel & 1) as usize]
    }

    /// The first of the two updates that re-point the backend to `mac`:
    /// `mac` in the idle slot, the one in use untouched. The second is
    /// [`BackendValue::flipped`] of it.
    pub fn staged(&self, mac: [u8; 6]) -> BackendValue {
        let mut v = *self;
        v.macs[((self.mac_sel & 1) ^ 1) as usize] = mac;
        v
    }

    /// The idle slot selected.
    pub fn flipped(&self) -> BackendValue {
        let mut v = *self;
        v.mac_sel = (self.mac_sel & 1) ^ 1;
        v
    }
}

/// Key of the `CONNTRACK` LRU hash: the flow as the client sent it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub saddr: AddrBytes,
    pub daddr: AddrBytes,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<ConnKey>() == 40);

/// A flow's next hop as `bpf_fib_lookup` last gave it (mode nat): the
/// program sends the flow's packets with it instead of asking the FIB for
/// every packet (issue 17: the lookup was most of mode nat's cost). It is
/// used only in the epoch it was looked up in (`FibHop::epoch_of`, about a
/// second), so a route or neighbour change reaches every flow within that
/// long, and only for packets no longer than one the FIB checked
/// (`checked_len`), so the FIB's MTU check still sees every larger packet.
/// All zero (`NONE`) means "look it up". Only the program writes it; state
/// sync and the agent leave it zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FibHop {
    /// Egress interface; 0: no hop cached.
    pub ifindex: u32,
    /// `epoch_of` the lookup's time.
    pub epoch: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The IP length (`tot_len` as the FIB took it) of the packet that was
    /// looked up: a longer one is looked up again.
    pub checked_len: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<FibHop>() == 24);

impl FibHop {
    pub const NONE: FibHop = FibHop {
        ifindex: 0,
        epoch: 0,
        dmac: [0; 6],
        smac: [0; 6],
        checked_len: 0,
        _pad: 0,
    };

    /// Log2 of a cached hop's lifetime in ns: 2^30 ns, about 1.07 s.
    pub const EPOCH_SHIFT: u32 = 30;

    /// The epoch of monotonic time `now_ns`: a hop looked up in another
    /// epoch is looked up again, so one cached at any moment is used for at
    /// most 2^30 ns. Whole epochs rather than an age per entry: one
    /// comparison of two u32s on the packet path, and no time to store.
    #[inline(always)]
    pub const fn epoch_of(now_ns: u64) -> u32 {
        (now_ns >> Self::EPOCH_SHIFT) as u32
    }
}

/// Value of the `CONNTRACK` LRU hash.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnValue {
    /// `bpf_ktime_get_ns` of the last packet, for idle expiry.
    pub last_seen_ns: u64,
    pub backend_id: u32,
    pub service_id: u32,
    /// Mode nat: the source port allocated towards the backend.
    pub nat_port_be: u16,
    pub flags: u8,
    pub _pad: [u8; 5],
    /// Mode nat: the next hop towards the backend (zero in mode dsr, which
    /// sends to the backend's MAC). The value grew from 24 to 48 bytes for
    /// it (issue 17): 24 MB more at a million flows, for a FIB lookup
    /// saved on nearly every mode nat packet.
    pub hop: FibHop,
}
const _: () = assert!(size_of::<ConnValue>() == 48);

/// Value of the `NAT_REV` LRU hash, keyed by the flow as the backend sends it
/// (backend -> SNAT address:port): the client side to translate replies back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatValue {
    pub last_seen_ns: u64,
    pub client_addr: AddrBytes,
    pub vip: AddrBytes,
    pub client_port_be: u16,
    pub vip_port_be: u16,
    pub flags: u8,
    pub _pad: [u8; 3],
    /// The next hop towards the client, for replies (issue 17: the value
    /// grew from 48 to 72 bytes for it).
    pub hop: FibHop,
}
const _: () = assert!(size_of::<NatValue>() == 72);

impl NatValue {
    /// The forward flow (client -> VIP, the `CONNTRACK` key) of the reverse
    /// entry `rev` holding this value: whether a reverse entry's port is
    /// still in use depends on it (the program's port reclaim, the agent's
    /// sweep).
    #[inline(always)]
    pub fn forward_key(&self, rev: &ConnKey) -> ConnKey {
        ConnKey {
            saddr: self.client_addr,
            daddr: self.vip,
            sport_be: self.client_port_be,
            dport_be: self.vip_port_be,
            proto: rev.proto,
            family: rev.family,
            _pad: [0; 2],
        }
    }
}

/// Program-wide settings, the single entry of the `GLOBALS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Globals {
    /// Mode nat source ports: [nat_port_lo, nat_port_hi], host order. vipd
    /// reserves them from the kernel (ip_local_reserved_ports) so local sockets
    /// never take one.
    pub nat_port_lo: u16,
    pub nat_port_hi: u16,
    /// Idle time after which a TCP flow's entries no longer count. The default
    /// (7500 s) outlasts Linux's default keepalive time (7200 s), so an idle
    /// connection that its endpoints keep alive is never cut.
    pub tcp_idle_s: u32,
    /// Idle time for UDP flows.
    pub udp_idle_s: u32,
    /// How long a flow that saw FIN or RST stays after its last packet.
    pub closing_s: u32,
    /// The part of [nat_port_lo, nat_port_hi] this node hands to new flows,
    /// host order. The whole range unless several LBs share one SNAT
    /// address at once (`announce:` with `state_sync:`): each then takes a
    /// slice of its own, so two LBs never give one (SNAT address, port) to
    /// two flows. Replies are still taken on the whole range: a peer's
    /// synced flow arrives on a port of the peer's slice.
    pub nat_alloc_lo: u16,
    pub nat_alloc_hi: u16,
}
const _: () = assert!(size_of::<Globals>() == 20);

/// The single entry of the `TRACE` array: which packets the program logs its
/// decisions for (`vipd trace`). Not pinned: every loaded program starts with
/// it off. While `until_ns` is 0 the packet path pays one load and one branch.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceFilter {
    /// CLOCK_MONOTONIC (`bpf_ktime_get_coarse_ns`) time until which tracing
    /// is on; 0 = off. A lease, not a switch: `vipd trace` renews it every
    /// second, so a tracer killed with SIGKILL leaves it on for at most
    /// `TRACE_LEASE_NS`, never for good.
    pub until_ns: u64,
    /// The address to match as source or destination (with
    /// `TRACE_F_ADDR`): a client, a VIP or a backend.
    pub addr: AddrBytes,
    /// The L4 port to match as source or destination, network order (with
    /// `TRACE_F_PORT`).
    pub port_be: u16,
    /// `FAMILY_V4` / `FAMILY_V6` of `addr`.
    pub family: u8,
    /// `TRACE_F_*`: which of the fields above must match (none: every packet).
    pub flags: u8,
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<TraceFilter>() == 32);

/// `TraceFilter::flags`: the packet's source or destination address must be `addr`.
pub const TRACE_F_ADDR: u8 = 1 << 0;
/// `TraceFilter::flags`: the packet's source or destination port must be `port_be`.
pub const TRACE_F_PORT: u8 = 1 << 1;
/// How long one renewal of `TraceFilter::until_ns` keeps tracing on.
pub const TRACE_LEASE_NS: u64 = 3_000_000_000;

/// The flow a traced packet belongs to, as the program found it (the `flow=`
/// field of a trace record).
pub const TRACE_FLOW_NONE: u8 = 0;
/// An established flow: its connection-table entry chose the backend.
pub const TRACE_FLOW_ESTABLISHED: u8 = 1;
/// A new flow: the service's Maglev table chose the backend.
pub const TRACE_FLOW_NEW: u8 = 2;
/// A reply of a backend to a mode nat flow (reverse translation).
pub const TRACE_FLOW_REPLY: u8 = 3;

impl Globals {
    pub const DEFAULT: Globals = Globals {
        nat_port_lo: 40000,
        nat_port_hi: 59999,
        tcp_idle_s: 7500,
        udp_idle_s: 300,
        closing_s: 10,
        nat_alloc_lo: 40000,
        nat_alloc_hi: 59999,
    };
}

impl Globals {
    /// Whether a flow entry last seen at `last` (`bpf_ktime_get_ns`,
    /// CLOCK_MONOTONIC) no longer counts at `now`. The one rule for the XDP
    /// program (an expired entry is treated as absent) and for the agent's
    /// sweep (which deletes such entries so the LRU never evicts a live
    /// flow to make room while dead ones sit in the table).
    #[inline(always)]
    pub fn expired(&self, now: u64, last: u64, flags: u8, tcp: bool) -> bool {
        // Saturating: an entry touched after `now` was read (by another CPU
        // between our clock read and our lookup, or during the agent's walk,
        // which reads the clock once) is fresh, not 2^64 ns old.
        let idle = now.saturating_sub(last);
        let limit = if flags & CT_F_CLOSING != 0 {
            self.closing_s
        } else if tcp {
            self.tcp_idle_s
        } else {
            self.udp_idle_s
        };
        idle > limit as u64 * 1_000_000_000
    }

    /// Whether the source port of the reverse entry `rev` (keyed by `port_be`,
    /// last seen at `rev_last` with `rev_flags`) may go to a new flow: the
    /// one rule for the XDP program's reclaim and the agent's sweep. `fwd`
    /// looks up the forward entry of the flow that holds it, if any: (last
    /// seen, flags, its allocated port). It is called only when the reverse
    /// side is over, so a live flow costs no second lookup. A forward entry
    /// with another port is a newer connection on the same client tuple and
    /// holds nothing here.
    ///
    /// The port is free once both sides are idle past the hold:
    /// [`CLOSED_HOLD_NS`] for a `NAT_F_DONE` flow, else [`Globals::expired`]
    /// (a UDP flow whose backend never answers has a stale reverse entry and
    /// a live forward one, and keeps its port).
    #[inline(always)]
    pub fn port_free(
        &self,
        now: u64,
        port_be: u16,
        (rev_last, rev_flags): (u64, u8),
        fwd: impl FnOnce() -> Option<(u64, u8, u16)>,
        tcp: bool,
    ) -> bool {
        let done = tcp && rev_flags & NAT_F_DONE != 0;
        let over = |last: u64, flags: u8| {
            if done {
                now.saturating_sub(last) > CLOSED_HOLD_NS
            } else {
                self.expired(now, last, flags, tcp)
            }
        };
        if !over(rev_last, rev_flags) {
            return false;
        }
        match fwd() {
            Some((last, flags, port)) if port == port_be => over(last, flags),
            _ => true,
        }
    }
}

/// A new nat flow of a `SVC_F_SYNC` service, as the XDP program reports it on
/// the `SYNC_EVENTS` ring buffer. Ids are this node's: the agent turns them into
/// addresses before anything leaves the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncEvent {
    /// The flow as the client sent it (the `CONNTRACK` key).
    pub key: ConnKey,
    pub backend_id: u32,
    pub service_id: u32,
    /// The source port allocated towards the backend (network order).
    pub nat_port_be: u16,
    /// `CT_F_*` of the new entry.
    pub flags: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<SyncEvent>() == 56);

/// Size of the `SYNC_EVENTS` ring buffer (a power-of-two multiple of the page
/// size, kernel/bpf/ringbuf.c). Each event takes 64 bytes with the ring's
/// 8-byte header: 8192 new flows between two reads of the agent, which drains it
/// within milliseconds; a burst beyond that loses sync for the excess (counted).
pub const SYNC_RING_BYTES: u32 = 512 * 1024;

/// Capacity of `NAT_REV`: one reverse entry per translated connection, so the
/// agent sizes it like `CONNTRACK`.
pub const NAT_DEFAULT_CAPACITY: u32 = CONNTRACK_DEFAULT_CAPACITY;

/// Capacity of `CT_UNCONFIRMED` and `NAT_REV_UNCONFIRMED`: flows whose
/// client has not yet confirmed them (mode nat and dsr's SYN seen, the
/// handshake's ACK not yet; or one lone segment of a flow picked up in the
/// middle). A flood of SYNs or of segments with no flow churns only these,
/// never the confirmed tables, so it cannot evict an established flow
/// (README, "Connection floods"). 65536 pending handshakes is four times
/// Linux's default `tcp_max_syn_backlog` across 16 listeners.
pub const UNCONFIRMED_CAPACITY: u32 = 65_536;

/// Capacity of `NAT_LOCK`: reclaims and sweep deletes in flight at once.
pub const NAT_LOCK_CAPACITY: u32 = 1024;

/// Source ports tried per new nat flow before giving up.
pub const NAT_PORT_TRIES: u32 = 16;

/// The `i`th source port (host order) a new nat flow tries, in
/// `[lo, lo + range)`; `range` must not be 0. The first is the flow hash's
/// slot; the others are scattered by a hash of the try number rather than
/// taken in a row: with linear probing, taken ports form runs that every
/// new flow starting inside them walks again (primary clustering), so a
/// busy range refused flows well before it was full.
#[inline(always)]
pub fn nat_port_try(hash: u32, i: u32, lo: u16, range: u32) -> u16 {
    let h = if i == 0 {
        hash
    } else {
        fmix(hash ^ i.wrapping_mul(0x9e37_79b9))
    };
    (lo as u32 + h % range) as u16
}

// Pod lets aya copy these types in and out of maps. Sound: every type above is
// repr(C), Copy, and has no padding (asserted by size).
#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for BackendStats {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for ConnValue {}
    unsafe impl aya::Pod for NatValue {}
    unsafe impl aya::Pod for Globals {}
    unsafe impl aya::Pod for SyncEvent {}
    unsafe impl aya::Pod for LocalMac {}
    unsafe impl aya::Pod for EncapValue {}
    unsafe impl aya::Pod for NatOwner {}
    unsafe impl aya::Pod for TraceFilter {}
}

/// Index into `MAGLEV` of slot `slot` of the given half of service `id`'s table.
/// Every service owns two slots of `MAGLEV_MAX_SIZE` entries, so a new table is
/// written into the idle half and published by one service-value update: no
/// packet ever reads a half-written table.
#[inline(always)]
pub const fn maglev_index(service_id: u32, half: u32, slot: u32) -> u32 {
    (service_id * 2 + (half & 1)) * MAGLEV_MAX_SIZE + slot
}

/// A fingerprint of the map layout: every key and value size, capacity and
/// the reason count. Pinned maps live in a folder named after it, so a vipd
/// with a different layout never adopts maps it cannot read.
pub const ABI_FINGERPRINT: u32 = {
    let parts = [
        size_of::<ServiceKey>() as u32,
        size_of::<ServiceValue>() as u32,
        size_of::<BackendValue>() as u32,
        size_of::<ConnKey>() as u32,
        size_of::<ConnValue>() as u32,
        size_of::<NatValue>() as u32,
        size_of::<Globals>() as u32,
        size_of::<Counter>() as u32,
        size_of::<BackendStats>() as u32,
        size_of::<EncapValue>() as u32,
        size_of::<NatOwner>() as u32,
        MAX_NAT_OWNERS,
        MAX_SERVICES,
        MAX_BACKENDS,
        MAGLEV_MAX_SIZE,
        REASON_COUNT,
    ];
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < parts.len() {
        h = (h ^ parts[i]).wrapping_mul(0x0100_0193);
        i += 1;
    }
    h
};

/// Entries in the `MAGLEV` array.
pub const MAGLEV_ENTRIES: u32 = MAX_SERVICES * 2 * MAGLEV_MAX_SIZE;

/// The flow hash that picks a Maglev slot. Every node must compute the same value
/// for the same flow (mode dsr relies on it to keep flows across a VIP move), so
/// it is defined here, once, and uses only the 5-tuple. It is the murmur3 32-bit
/// finaliser applied over the tuple's words: cheap in BPF, good avalanche.
#[inline(always)]
pub fn flow_hash(k: &ConnKey) -> u32 {
    let mut h: u32 = 0x9747_b28c;
    let mut i = 0;
    while i < 16 {
        h = mix(
            h,
            u32::from_ne_bytes([k.saddr[i], k.saddr[i + 1], k.saddr[i + 2], k.saddr[i + 3]]),
        );
        h = mix(
            h,
            u32::from_ne_bytes([k.daddr[i], k.daddr[i + 1], k.daddr[i + 2], k.daddr[i + 3]]),
        );
        i += 4;
    }
    h = mix(h, (k.sport_be as u32) << 16 | k.dport_be as u32);
    h = mix(h, k.proto as u32);
    fmix(h)
}

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_dense_and_labelled_once() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32, "reason {r:?} out of order");
            assert_eq!(Reason::from_index(i as u32), Some(*r));
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(r.label(), other.label(), "duplicate label");
            }
        }
        assert_eq!(Reason::from_index(REASON_COUNT), None);
    }

    #[test]
    fn maglev_halves_never_overlap() {
        let last_of_half0 = maglev_index(3, 0, MAGLEV_MAX_SIZE - 1);
        let first_of_half1 = maglev_index(3, 1, 0);
        assert_eq!(last_of_half0 + 1, first_of_half1);
        assert_eq!(
            maglev_index(MAX_SERVICES - 1, 1, MAGLEV_MAX_SIZE - 1),
            MAGLEV_ENTRIES - 1
        );
    }

    #[test]
    fn a_stalled_handshake_gives_its_port_up_after_the_hold() {
        let s = 1_000_000_000u64;
        let now = 100 * s;
        let port = 50000u16.to_be();
        let other = 50001u16.to_be();
        let (young, old) = (now - s / 2, now - 3 * s / 2);
        // The reverse side decides first: a young one keeps the port
        // whatever the forward entry says.
        assert_eq!(handshake_port_free(now, port, young, None), (false, false));
        assert_eq!(
            handshake_port_free(now, port, young, Some((old, port))),
            (false, false)
        );
        // Both idle past the hold: the port goes, and the old forward
        // entry with it.
        assert_eq!(
            handshake_port_free(now, port, old, Some((old, port))),
            (true, true)
        );
        // A client still retransmitting its SYN (forward entry touched)
        // keeps it.
        assert_eq!(
            handshake_port_free(now, port, old, Some((young, port))),
            (false, false)
        );
        // No forward entry, or a newer connection on the client's tuple
        // under another port: the port is free and that entry stays.
        assert_eq!(handshake_port_free(now, port, old, None), (true, false));
        assert_eq!(
            handshake_port_free(now, port, old, Some((old, other))),
            (true, false)
        );
        // Exactly the hold is not past it; a timestamp after `now` (another
        // CPU touched it) is fresh.
        assert_eq!(
            handshake_port_free(now, port, now - HANDSHAKE_HOLD_NS, None),
            (false, false)
        );
        assert_eq!(
            handshake_port_free(now, port, now + s, None),
            (false, false)
        );
    }

    const PINNED_HASH: u32 = 0x0686_44de;

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = ConnKey {
            saddr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport_be: 40000u16.to_be(),
            dport_be: 6443u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        let h = flow_hash(&base);
        let mut k = base;
        k.saddr[3] = 2;
        assert_ne!(flow_hash(&k), h, "saddr");
        let mut k = base;
        k.daddr[15] = 1;
        assert_ne!(flow_hash(&k), h, "daddr");
        let mut k = base;
        k.sport_be = 40001u16.to_be();
        assert_ne!(flow_hash(&k), h, "sport");
        let mut k = base;
        k.dport_be = 443u16.to_be();
        assert_ne!(flow_hash(&k), h, "dport");
        let mut k = base;
        k.proto = PROTO_UDP;
        assert_ne!(flow_hash(&k), h, "proto");
        // Pinned value: changing the hash silently would break flow stickiness
        // between nodes running different versions during a rolling upgrade.
        assert_eq!(h, PINNED_HASH, "flow_hash changed: {h:#010x}");
    }

    #[test]
    fn expiry_follows_protocol_and_closing() {
        let g = Globals::DEFAULT;
        let s = 1_000_000_000u64;
        let now = 100_000 * s;
        // TCP: 7500 s idle; UDP: 300 s; closing: 10 s, whatever the protocol.
        assert!(!g.expired(now, now - 7500 * s, 0, true));
        assert!(g.expired(now, now - 7500 * s - 1, 0, true));
        assert!(!g.expired(now, now - 300 * s, 0, false));
        assert!(g.expired(now, now - 301 * s, 0, false));
        assert!(!g.expired(now, now - 10 * s, CT_F_CLOSING, true));
        assert!(g.expired(now, now - 11 * s, CT_F_CLOSING, false));
        // Touched after `now` was read: fresh.
        assert!(!g.expired(now, now + 1, 0, true));
        assert!(!g.expired(now, u64::MAX, CT_F_CLOSING, false));
    }

    #[test]
    fn a_port_is_free_when_both_sides_are_over() {
        let g = Globals::DEFAULT;
        let s = 1_000_000_000u64;
        let now = 100_000 * s;
        let port = 40_123u16.to_be();
        let closing = (now - 3 * s, CT_F_CLOSING);
        let done = (now - 3 * s, CT_F_CLOSING | NAT_F_DONE);
        // Closed by the backend first (it waits in TIME-WAIT): closing_s.
        assert!(!g.port_free(now, port, closing, || None, true));
        assert!(g.port_free(now, port, (now - 11 * s, CT_F_CLOSING), || None, true));
        // Passively closed or reset by the backend: the short hold.
        assert!(g.port_free(now, port, done, || None, true));
        assert!(!g.port_free(now, port, (now - s, NAT_F_DONE), || None, true));
        // The forward entry is not looked up while the reverse side lives.
        assert!(!g.port_free(now, port, closing, || panic!("looked up"), true));
        // ... and counts when it is: the hold runs from the client's last
        // packet too.
        let fwd = |ago: u64, p: u16| Some((now - ago, CT_F_CLOSING, p));
        assert!(!g.port_free(now, port, done, || fwd(s, port), true));
        assert!(g.port_free(now, port, done, || fwd(3 * s, port), true));
        // A forward entry with another port is another connection.
        assert!(g.port_free(now, port, done, || fwd(0, port ^ 1), true));
        // UDP has no FIN: the flag means nothing there, and a live forward
        // flow keeps its port though the backend never answered.
        assert!(!g.port_free(now, port, (now - 3 * s, NAT_F_DONE), || None, false));
        let stale = (now - 301 * s, 0);
        assert!(g.port_free(now, port, stale, || None, false));
        assert!(!g.port_free(now, port, stale, || Some((now, 0, port)), false));
    }

    #[test]
    fn port_tries_start_at_the_hash_and_scatter() {
        let (lo, range) = (40_000u16, 20_000u32);
        for hash in [0u32, 7, 0xdead_beef, u32::MAX] {
            assert_eq!(nat_port_try(hash, 0, lo, range), lo + (hash % range) as u16);
            let mut tries = [0u16; NAT_PORT_TRIES as usize];
            for (i, t) in tries.iter_mut().enumerate() {
                *t = nat_port_try(hash, i as u32, lo, range);
            }
            assert!(tries.iter().all(|p| (lo..lo + range as u16).contains(p)));
            // Not a run: at most two of the 16 tries are neighbours.
            let mut sorted = tries;
            sorted.sort_unstable();
            let adjacent = sorted.windows(2).filter(|w| w[1] - w[0] <= 1).count();
            assert!(adjacent <= 2, "{tries:?}");
        }
        // A range of one port: every try is that port.
        assert!((0..NAT_PORT_TRIES).all(|i| nat_port_try(99, i, 5, 1) == 5));
    }
}
