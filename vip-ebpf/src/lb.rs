//! The load-balancing decision: is this ours (reverse NAT, then service
//! lookup), which backend (connection table, else Maglev), and how to send it
//! (by service mode).

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use vip_common::{
    BE_F_ALIVE, BE_F_ENCAP, BE_F_LOCAL, BackendValue, CT_F_CLOSING, CT_F_DSR, ConnKey, ConnValue,
    FibHop, Globals, MAGLEV_MAX_SIZE, MAX_NAT_OWNERS, MODE_DSR, MODE_NAT, NAT_F_DONE, NAT_F_SOLE,
    NAT_PORT_TRIES, NO_BACKEND, NatOwner, NatValue, PROTO_TCP, Reason, SVC_F_RST_UNSERVABLE,
    SVC_F_SYNC, SYNC_F_PENDING, ServiceKey, ServiceValue, TRACE_FLOW_ESTABLISHED, TRACE_FLOW_NEW,
    TRACE_FLOW_REPLY, flow_hash, maglev_index, nat_port_try,
};

use crate::{
    Verdict, confirm, decap, encap, fwd,
    maps::{
        BACKENDS, CONNTRACK, CT_UNCONFIRMED, GLOBALS, LOCAL_MAC, MAGLEV, NAT_LOCK, NAT_OWNERS,
        NAT_REV, NAT_REV_UNCONFIRMED, PORT_SCRATCH, PortScratch, SCRATCH, SERVICE_PORTS, SERVICES,
    },
    mem,
    nat::{self, Endpoints},
    parse::{EthHdr, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, fill, headers, ptr_at},
    stats, trace,
};

/// Refresh a connection's timestamp at most this often: a write per packet
/// would bounce the entry's cache line between CPUs for nothing.
const CT_TOUCH_NS: u64 = 1_000_000_000;

#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied onto the stack first (20 u16 moves for a ConnKey); by reference the lookup reads it in the scratch map"
)]
/// `traced`: `trace::wanted` chose this packet; each decision is then noted
/// for its trace record (`trace`), and nothing else changes.
#[inline(always)]
pub fn try_vip(ctx: &XdpContext, traced: bool) -> Verdict {
    // A peer LB's `encap::handoff`, unwrapped, takes a path of its own
    // (`handed_reply`): only non-TCP/UDP packets are looked at for it, and
    // nothing of it stays live on the paths below.
    let h = match headers(ctx) {
        Ok(h) => h,
        Err(Reason::PassNotL4) if decap::take_handoff(ctx) => {
            return Verdict::unpack(handed_reply(ctx));
        }
        Err(reason) => return Verdict::pass(reason),
    };
    let g = globals();
    let port = u16::from_be(h.dport_be);
    let reply_port = port >= g.nat_port_lo && port <= g.nat_port_hi;
    // Cheap pre-filter on the destination port alone: no service there and not
    // a NAT reply port means not ours, without a hash lookup or a key copy (an
    // array lookup is inlined by the verifier).
    let service_port = match SERVICE_PORTS.get(port as u32 >> 6) {
        Some(word) => *word & (1u64 << (port & 63)) != 0,
        None => false,
    };
    if !service_port && !reply_port {
        return Verdict::pass(Reason::PassNoService);
    }
    if !addressed_to_us(ctx) {
        return Verdict::pass(Reason::PassOtherHost);
    }
    let p = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; nothing else runs on it during this program.
        Some(p) => unsafe { &mut *p },
        None => return Verdict::drop(Reason::DropAdjustFailed),
    };
    if let Err(reason) = fill(ctx, &h, p) {
        return Verdict::pass(reason);
    }
    let p: &Parsed = p;

    // Replies from backends to a source port we allocated (mode nat).
    if reply_port && let Some((v, pending)) = reverse_entry(&p.key) {
        if traced {
            trace::flow(TRACE_FLOW_REPLY, 0);
        }
        // A copy of another LB's flow (port slices) that may be out of date:
        // its owner frees a closed flow's port 2 s after the backend's end
        // closes (`NAT_F_DONE`), while a copy here that saw the close stays
        // `closing_s`, and one that did not see it stays for hours. When the
        // owner gives the port to a new connection, the backend's SYN-ACK
        // reached this copy before the owner's record did and was
        // translated to the old client, whose TIME-WAIT answered with an
        // ACK the backend reset: the new connection was reset (fabric lab,
        // captured on the router). A SYN-ACK (a connection whose SYN went
        // through the owner a moment ago) and any reply to a closing copy
        // go to the owner, which holds the port's current flow.
        if (port < g.nat_alloc_lo || port > g.nat_alloc_hi)
            && copy_may_be_stale(p, v)
            && let Some(o) = owner_of(port, p.key.family)
        {
            return Verdict::unpack(encap::handoff(ctx, p, o));
        }
        if pending && stale_backend_segment(p, v, &g) {
            return reset_stale(ctx, p);
        }
        return Verdict::unpack(reverse_nat(ctx, p, v, &g));
    }
    if !service_port {
        // A reply with no entry here, to a port another LB gave out (port
        // slices): the router's ECMP hash of the reply chose us before that
        // LB's sync record arrived (a SYN-ACK beats it). Hand it to that LB.
        if reply_port
            && (port < g.nat_alloc_lo || port > g.nat_alloc_hi)
            && let Some(o) = owner_of(port, p.key.family)
        {
            return Verdict::unpack(encap::handoff(ctx, p, o));
        }
        return Verdict::pass(Reason::PassNoService);
    }

    let is_tcp = p.key.proto == PROTO_TCP;
    let syn = is_tcp && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // CLOCK_MONOTONIC_COARSE: the agent's clock (CLOCK_MONOTONIC) as of the
    // last tick, read without touching the clock source. Flow timestamps
    // need seconds (refreshed once a second, timeouts of 10 s and more),
    // and a timestamp the agent wrote a tick "in the future" reads as fresh
    // (`Globals::expired` saturates).
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };

    // The common packet first: an established mode dsr flow whose backend
    // lives. Its entry says everything needed to send it, so it costs one
    // hash lookup (the connection table) instead of two. Anything else
    // (nat, a dead backend, a new flow) takes the full path below, which
    // reuses this lookup.
    let ct = CONNTRACK.get_ptr_mut(&p.key);
    let confirmed = ct.is_some();
    if let Some(ct) = ct {
        // SAFETY: LRU value pointer, valid during this run.
        let (id, last, flags) = unsafe { ((*ct).backend_id, (*ct).last_seen_ns, (*ct).flags) };
        if flags & CT_F_DSR != 0
            && !(syn && flags & CT_F_CLOSING != 0)
            && !g.expired(now, last, flags, is_tcp)
            && let Some(be) = alive_backend(id)
        {
            if traced {
                // SAFETY: as above.
                trace::service(unsafe { (*ct).service_id }, MODE_DSR);
                trace::flow(TRACE_FLOW_ESTABLISHED, 0);
            }
            // SAFETY: as above.
            unsafe { touch(&mut (*ct).last_seen_ns, &mut (*ct).flags, now, p.tcp_flags) };
            return dsr(ctx, p, id, be);
        }
    }

    let skey = ServiceKey {
        addr: p.key.daddr,
        port_be: p.key.dport_be,
        proto: p.key.proto,
        family: p.key.family,
    };
    // SAFETY: the agent replaces service values whole; we copy it out at once.
    let svc = match unsafe { SERVICES.get(skey) } {
        Some(s) => *s,
        None => return Verdict::pass(Reason::PassNoService),
    };
    if traced {
        trace::service(svc.id, svc.mode);
    }

    // Not in the connection table: maybe a flow the client has not
    // confirmed yet, which this packet may confirm (`confirm`).
    let ct = match ct {
        Some(ct) => Some(ct),
        None => confirm::pending(p, &svc, syn, now, &g),
    };
    if let Some(ct) = ct {
        // SAFETY: LRU value pointer, valid during this run; racing writers
        // only ever store whole timestamps and flag bits.
        let (id, last, flags, nat_port) = unsafe {
            (
                (*ct).backend_id,
                (*ct).last_seen_ns,
                (*ct).flags,
                (*ct).nat_port_be,
            )
        };
        let live = !g.expired(now, last, flags, is_tcp);
        if let Some(be) = alive_backend(id) {
            // A SYN on a closing or expired entry is a new connection reusing
            // the tuple: choose again so it follows the current table.
            if live && !(syn && flags & CT_F_CLOSING != 0) {
                if traced {
                    trace::flow(TRACE_FLOW_ESTABLISHED, 0);
                }
                // SAFETY: as above.
                unsafe { touch(&mut (*ct).last_seen_ns, &mut (*ct).flags, now, p.tcp_flags) };
                // The flow's next hop, kept in its entry (`nat::forward_cached`).
                // SAFETY: as above.
                let hop = Some((unsafe { &raw mut (*ct).hop }, FibHop::epoch_of(now)));
                return forward(ctx, p, &svc, id, be, nat_port, hop);
            }
        } else if live && !syn {
            // The flow's backend died: tell the client now rather than let
            // it time out (client-go needs ~45 s to notice a silent peer).
            return unservable(ctx, p, &svc, Some(id));
        }
    }

    // Mode nat cannot pick up a connection in the middle: the backend never
    // saw its handshake. Refuse it at once (RFC 9293 section 3.10.7.1).
    if svc.mode == MODE_NAT && is_tcp && !syn {
        return unservable(ctx, p, &svc, None);
    }

    // A new flow (or one whose entry was evicted, or that follows a VIP move in
    // mode dsr: Maglev gives every node the same answer for the same flow).
    let size = svc.maglev_size;
    if size == 0 || size > MAGLEV_MAX_SIZE {
        return Verdict::drop(Reason::DropBadTable);
    }
    let hash = flow_hash(&p.key);
    let slot = hash % size;
    if traced {
        trace::flow(TRACE_FLOW_NEW, slot);
    }
    let id = match MAGLEV.get(maglev_index(svc.id, svc.maglev_half, slot)) {
        Some(id) if *id != NO_BACKEND => *id,
        _ => return unservable(ctx, p, &svc, None),
    };
    let be = match alive_backend(id) {
        Some(be) => be,
        None => return unservable(ctx, p, &svc, None),
    };
    if is_tcp && p.tcp_flags & TCP_RST != 0 {
        // Nothing to set up for an RST; dsr passes it on, nat has no port.
        if svc.mode == MODE_NAT {
            return Verdict::drop(Reason::DropNoBackend);
        }
        return forward(ctx, p, &svc, id, be, 0, None);
    }
    let mut nat_port = 0u16;
    if svc.mode == MODE_NAT {
        let req = PortRequest {
            now,
            hash,
            lo: g.nat_alloc_lo,
            hi: g.nat_alloc_hi,
        };
        // Without state sync no other LB holds this service's flows: a
        // taken port whose flow is over here is over everywhere, and is
        // taken over as soon as the search meets it. With sync a peer may
        // still hold the old flow (an LB back with empty tables holds its
        // peers' copies, which look over to it sooner than to them), so
        // free ports come first and a take-over only when none was free.
        let sole = svc.flags & SVC_F_SYNC == 0;
        let mut got = allocate_port(p, &svc, be, &req, sole);
        if got == 0 && !sole {
            got = reclaim_port(p, &svc, be, &req);
        }
        if got == 0 {
            return Verdict::drop(Reason::DropNatPortsExhausted);
        }
        nat_port = got as u16;
    }
    // Built in this CPU's scratch, not on the stack: with its kept hop
    // (`FibHop`) the value is 48 bytes, and on this frame it broke the
    // verifier's 512-byte limit for the deepest call chain (vip ->
    // encap::too_big -> nat::forward). Zeroed in words, then filled: a
    // literal's padding compiles to a call of compiler-builtins' memset, a
    // byte loop in BPF (`mem`).
    let Some(sc) = PORT_SCRATCH.get_ptr_mut(0) else {
        return Verdict::drop(Reason::DropAdjustFailed);
    };
    // SAFETY: this CPU's slot, 8-aligned; nothing else runs on it during
    // this program, and ConnValue is plain integers (all-zero is valid).
    let v = unsafe {
        let v = &raw mut (*sc).conn;
        mem::zero_u32s::<{ size_of::<ConnValue>() / 4 }>(v.cast());
        &mut *v
    };
    v.last_seen_ns = now;
    v.backend_id = id;
    v.service_id = svc.id;
    v.nat_port_be = nat_port;
    v.flags = if p.tcp_flags & TCP_FIN != 0 {
        CT_F_CLOSING
    } else {
        0
    } | if svc.mode == MODE_DSR { CT_F_DSR } else { 0 };
    // Unconfirmed until the client's next non-SYN packet (`confirm`): a
    // flood of flows that never get there cannot evict confirmed ones.
    if CT_UNCONFIRMED.insert(&p.key, &*v, 0).is_err() {
        return Verdict::drop(Reason::DropConntrackFull);
    }
    if confirmed {
        // A closed or expired flow's tuple reused by a new connection: its
        // old entry would otherwise win the next packet's lookup.
        let _ = CONNTRACK.remove(&p.key);
    }
    if svc.flags & SVC_F_SYNC != 0 {
        // Peers hold it unconfirmed (`SYNC_F_PENDING`); `confirm` reports
        // it again, confirmed, at the client's ACK.
        confirm::sync_event(p, v, SYNC_F_PENDING);
    }
    stats::new_flow(id);
    // No hop to keep yet: the entry just inserted is not at hand, and the
    // flow's next packet looks it up and keeps it.
    forward(ctx, p, &svc, id, be, nat_port, None)
}

/// Whether the frame's destination MAC is the attached interface's (see
/// `LocalMac`); true while the agent has not written it.
#[inline(always)]
fn addressed_to_us(ctx: &XdpContext) -> bool {
    let Some(m) = LOCAL_MAC.get(0) else {
        return true;
    };
    if m.set == 0 {
        return true;
    }
    let Ok(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked; both 2-aligned (the frame's start, a map
    // value); `m` is valid during this run.
    unsafe { mem::eq_u16s::<3>((&raw const (*eth).dst).cast(), m.mac.as_ptr()) }
}

/// A packet a peer LB handed us (`encap::handoff`), unwrapped: a backend's
/// reply to a port the peer took for ours. Translated back to the client if
/// we hold its flow; else passed to the kernel, and never handed on (two
/// LBs whose lists disagree would bounce it between them, each time in a
/// fresh outer header). A subprogram: the common paths carry none of it.
#[inline(never)]
fn handed_reply(ctx: &XdpContext) -> u64 {
    let unknown = Verdict::pass(Reason::PassHandoffUnknown);
    let h = match headers(ctx) {
        Ok(h) => h,
        Err(reason) => return Verdict::pass(reason).pack(),
    };
    let g = globals();
    let port = u16::from_be(h.dport_be);
    if port < g.nat_port_lo || port > g.nat_port_hi || !addressed_to_us(ctx) {
        return unknown.pack();
    }
    let p = match SCRATCH.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; nothing else runs on it during this program.
        Some(p) => unsafe { &mut *p },
        None => return Verdict::drop(Reason::DropAdjustFailed).pack(),
    };
    if let Err(reason) = fill(ctx, &h, p) {
        return Verdict::pass(reason).pack();
    }
    let p: &Parsed = p;
    match reverse_entry(&p.key) {
        Some((v, pending)) if pending && stale_backend_segment(p, v, &g) => {
            reset_stale(ctx, p).pack()
        }
        Some((v, _)) => reverse_nat(ctx, p, v, &g),
        None => unknown.pack(),
    }
}

/// Whether a reply on another LB's port (`try_vip`) is better sent to that
/// LB than translated by this copy: a SYN-ACK, or a copy of a flow that is
/// closing.
#[inline(always)]
fn copy_may_be_stale(p: &Parsed, v: *mut NatValue) -> bool {
    if p.key.proto != PROTO_TCP {
        return false;
    }
    if p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
        return true;
    }
    // SAFETY: LRU value pointer, valid during this run.
    let flags = unsafe { (*v).flags };
    flags & (CT_F_CLOSING | NAT_F_DONE) != 0
}

/// The LB whose slice of the NAT ports holds `port` (host order), if it
/// is listed in `NAT_OWNERS` for this family.
#[inline(always)]
fn owner_of(port: u16, family: u8) -> Option<&'static NatOwner> {
    let mut i = 0;
    while i < MAX_NAT_OWNERS {
        let o = NAT_OWNERS.get(i)?;
        if o.family == 0 {
            return None;
        }
        if o.family == family && port >= o.lo && port <= o.hi {
            return Some(o);
        }
        i += 1;
    }
    None
}

/// The agent's settings; an unwritten (all-zero) entry means the defaults, so
/// a program that runs before the agent wrote them never expires everything.
#[inline(always)]
fn globals() -> Globals {
    match GLOBALS.get(0) {
        Some(g) if g.tcp_idle_s != 0 => *g,
        _ => Globals::DEFAULT,
    }
}

/// Records a packet on a flow entry (connection or reverse NAT): the time, at
/// most once per CT_TOUCH_NS, and FIN/RST as "closing".
#[inline(always)]
fn touch(last_seen: &mut u64, flags: &mut u8, now: u64, tcp_flags: u8) {
    let closing = tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if now.wrapping_sub(*last_seen) > CT_TOUCH_NS || closing {
        *last_seen = now;
        if closing {
            *flags |= CT_F_CLOSING;
        }
    }
}

/// The backend's entry in place, not a copy: a `BackendValue` (alignment 2)
/// copies through compiler-builtins' memmove, a byte loop in BPF. The agent
/// replaces entries whole, and a flow reads only its address, port and MAC.
#[inline(always)]
fn alive_backend(id: u32) -> Option<&'static BackendValue> {
    match BACKENDS.get(id) {
        Some(be) if be.flags & BE_F_ALIVE != 0 => Some(be),
        _ => None,
    }
}

/// What `allocate_port` needs from the caller, which has it already: one
/// pointer, as BPF calls take at most five arguments.
#[derive(Clone, Copy)]
struct PortRequest {
    now: u64,
    /// The flow hash that also picked the Maglev slot.
    hash: u32,
    lo: u16,
    hi: u16,
}

/// The ports a new flow may take, in the order it tries them, and its
/// reverse value and key in this CPU's `PORT_SCRATCH` (not on the BPF stack,
/// which the call chain has nearly used up): `allocate_port`'s and
/// `reclaim_port`'s common start. `None` if the range is empty.
#[inline(always)]
fn port_search(
    p: &Parsed,
    svc: &ServiceValue,
    be: &BackendValue,
    req: &PortRequest,
) -> Option<(&'static mut PortScratch, PortOrder)> {
    let PortRequest { now, hash, lo, hi } = *req;
    if hi < lo {
        return None;
    }
    let range = hi as u32 - lo as u32 + 1;
    // Never zero (hi >= lo), but the compiler cannot see it and would keep a
    // division-by-zero panic path, which the verifier rejects.
    if range == 0 {
        return None;
    }
    // SAFETY: this CPU's slot; nothing else runs on it during this program.
    let sc = unsafe { &mut *PORT_SCRATCH.get_ptr_mut(0)? };
    // Zeroed in words, then filled: a literal's zero padding and `FibHop`
    // would compile to a memset call, a byte loop in BPF (`mem`). The hop
    // stays zero: the flow's first reply looks it up.
    // SAFETY: this CPU's slot, 8-aligned; NatValue is plain integers.
    unsafe {
        mem::zero_u32s::<{ size_of::<NatValue>() / 4 }>((&raw mut sc.value).cast());
    }
    sc.value.last_seen_ns = now;
    // See NAT_F_SOLE: with state sync a peer may confirm the flow.
    sc.value.flags = if svc.flags & SVC_F_SYNC == 0 {
        NAT_F_SOLE
    } else {
        0
    };
    sc.value.client_addr = p.key.saddr;
    sc.value.vip = p.key.daddr;
    sc.value.client_port_be = p.key.sport_be;
    sc.value.vip_port_be = p.key.dport_be;
    sc.rev = ConnKey {
        saddr: be.addr,
        daddr: svc.snat_addr,
        sport_be: be.port_be,
        dport_be: 0,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    Some((sc, PortOrder { lo, range, hash }))
}

/// The ports to try, from the flow hash (`nat_port_try`).
#[derive(Clone, Copy)]
struct PortOrder {
    lo: u16,
    range: u32,
    hash: u32,
}

impl PortOrder {
    /// The `i`th port to try, host order.
    #[inline(always)]
    fn nth(self, i: u32) -> u16 {
        nat_port_try(self.hash, i, self.lo, self.range)
    }
}

/// Finds a source port such that (backend, port, SNAT address, source port,
/// protocol) is used by no other flow: the reverse entry is inserted with
/// BPF_NOEXIST, so two CPUs can never take the same port for the same backend.
/// With `sole` (a service without state sync) a taken port whose flow is
/// over (`reclaim_one`) is taken over as soon as the search meets it: a
/// search that tried every port for a free one first cost a SYN up to
/// `NAT_PORT_TRIES` failed LRU inserts, each a pop and a push of a free
/// element (kernel/bpf/hashtab.c, htab_lru_map_update_elem), whenever the
/// range was busy with flows closed in the last seconds, as at a few
/// thousand new connections per second per backend; and under the client's
/// connect(), since the program runs in its softirq. Returns the port
/// (network order) in the low 16 bits with bit 16 set, or 0 if every try
/// was taken: a plain integer, because a BPF call returns in one register.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack the scratch map spares"
)]
#[inline(never)]
fn allocate_port(
    p: &Parsed,
    svc: &ServiceValue,
    be: &BackendValue,
    req: &PortRequest,
    sole: bool,
) -> u32 {
    let Some((sc, order)) = port_search(p, svc, be, req) else {
        return 0;
    };
    for i in 0..NAT_PORT_TRIES {
        let port = order.nth(i);
        sc.rev.dport_be = port.to_be();
        if confirm::take_port(&sc.rev, &sc.value) || (sole && reclaim_one(sc, req.now) == 1) {
            return port.to_be() as u32 | 1 << 16;
        }
    }
    0
}

/// A service with state sync, when every port `allocate_port` tried is
/// taken: takes over one whose flow is over (`reclaim_one`), in the same
/// order. A separate call from `allocate_port`'s, not part of it: the BPF
/// stack of a call chain is 512 bytes. Same return as `allocate_port`.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack the scratch map spares"
)]
#[inline(never)]
fn reclaim_port(p: &Parsed, svc: &ServiceValue, be: &BackendValue, req: &PortRequest) -> u32 {
    let Some((sc, order)) = port_search(p, svc, be, req) else {
        return 0;
    };
    for i in 0..NAT_PORT_TRIES {
        let port = order.nth(i);
        sc.rev.dport_be = port.to_be();
        if reclaim_one(sc, req.now) == 1 {
            return port.to_be() as u32 | 1 << 16;
        }
    }
    0
}

/// Takes over the taken port `sc.rev` if its flow is over
/// (`reclaim_locked`): 1 if it did, 0 if not (a subprogram returns one
/// register). Without this a closed flow's port stays claimed until the
/// agent's sweep deletes it (every 10 s), and a backend with many short
/// connections runs out of ports. Each take-over holds `NAT_LOCK` for that
/// entry, which the sweep takes too, so a port is never handed to two flows.
/// A subprogram of its own: the BPF stack of a call chain is 512 bytes.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack the scratch map spares"
)]
#[inline(never)]
fn reclaim_one(sc: &mut PortScratch, now: u64) -> u32 {
    if NAT_LOCK.insert(&sc.rev, 1u8, BPF_NOEXIST as u64).is_err() {
        return 0;
    }
    let done = reclaim_locked(sc, now);
    let _ = NAT_LOCK.remove(&sc.rev);
    u32::from(done)
}

/// Takes over the reverse entry `sc.rev` for `sc.value` if the flow that held
/// it is over by the rule the agent's sweep uses too (`Globals::port_free`):
/// a flow the backend closed passively or reset frees its port 2 s after its
/// last packet, any other when both its entries expired. Called under
/// `NAT_LOCK`, and reads the entry again under it, so a port another CPU
/// reclaimed, or the sweep deleted and someone claimed afresh, is left
/// alone. A port held by a flow that never got confirmed is taken over once
/// its handshake has stalled (`confirm::reclaim_unconfirmed`).
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack the scratch map spares"
)]
#[inline(always)]
fn reclaim_locked(sc: &mut PortScratch, now: u64) -> bool {
    let g = globals();
    let Some(old) = NAT_REV.get_ptr(&sc.rev) else {
        return confirm::reclaim_unconfirmed(sc, now);
    };
    let tcp = sc.rev.proto == PROTO_TCP;
    // SAFETY: LRU value pointer, valid during this run.
    let rev = unsafe {
        sc.fwd = (*old).forward_key(&sc.rev);
        ((*old).last_seen_ns, (*old).flags)
    };
    let fwd = || {
        CONNTRACK
            .get_ptr(&sc.fwd)
            // SAFETY: as above.
            .map(|f| unsafe { ((*f).last_seen_ns, (*f).flags, (*f).nat_port_be) })
    };
    if !g.port_free(now, sc.rev.dport_be, rev, fwd, tcp) {
        return false;
    }
    // The new flow is unconfirmed: its reverse entry goes to
    // `NAT_REV_UNCONFIRMED` (BPF_NOEXIST: a port some other new flow just
    // took stays its), and the old flow's confirmed one goes. Both under
    // the lock, which the sweep takes too.
    if NAT_REV_UNCONFIRMED
        .insert(&sc.rev, &sc.value, BPF_NOEXIST as u64)
        .is_err()
    {
        return false;
    }
    let _ = NAT_REV.remove(&sc.rev);
    true
}

/// The reverse entry of a reply to `key`: a confirmed flow's, else one
/// still waiting for its client's ACK (the backend's SYN-ACK comes before
/// it); true with the latter.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack"
)]
#[inline(always)]
fn reverse_entry(key: &ConnKey) -> Option<(*mut NatValue, bool)> {
    match NAT_REV.get_ptr_mut(key) {
        Some(v) => Some((v, false)),
        None => NAT_REV_UNCONFIRMED.get_ptr_mut(key).map(|v| (v, true)),
    }
}

/// Sends a flow's packet by its service's mode. `hop`: mode nat's next hop
/// kept in the flow's entry, and the epoch (`nat::forward_cached`); None
/// asks the FIB.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    svc: &ServiceValue,
    id: u32,
    be: &BackendValue,
    nat_port_be: u16,
    hop: Option<(*mut FibHop, u32)>,
) -> Verdict {
    if svc.mode == MODE_DSR {
        return dsr(ctx, p, id, be);
    }
    if svc.mode != MODE_NAT {
        return Verdict::drop(Reason::DropBadMode);
    }
    let to = Endpoints {
        saddr: &svc.snat_addr,
        sport_be: nat_port_be,
        daddr: &be.addr,
        dport_be: be.port_be,
    };
    if nat::rewrite(ctx, p, &to).is_err() {
        return Verdict::drop(Reason::DropAdjustFailed);
    }
    send(ctx, p, Reason::TxNat, Some(id), hop)
}

/// Mode dsr: to the backend's MAC, encapsulated to its address when it is in
/// another subnet, or to the local stack for this node's own. Established
/// flows get here too (the connection table's fast path), so an encapsulated
/// backend's flow stays encapsulated for its whole life.
#[inline(always)]
fn dsr(ctx: &XdpContext, p: &Parsed, id: u32, be: &BackendValue) -> Verdict {
    if be.flags & BE_F_LOCAL != 0 {
        return Verdict {
            backend: Some(id),
            ..Verdict::pass(Reason::PassLocalBackend)
        };
    }
    if be.flags & BE_F_ENCAP != 0 {
        return Verdict::unpack(encap::encap(ctx, p, id, be));
    }
    match fwd::dsr(ctx, be.mac()) {
        Ok(()) => Verdict::tx(Reason::TxDsr, id),
        Err(()) => Verdict::drop(Reason::DropAdjustFailed),
    }
}

/// Whether `p`, from a backend to an unconfirmed reverse entry `v`, is a
/// segment of an older connection: no SYN (nor RST) on a live flow this LB
/// opened. The backend took the client's SYN for a segment of a connection
/// it still holds on this tuple (the port was taken over from a stalled
/// handshake, `HANDSHAKE_HOLD_NS`, or from a flow whose end the backend
/// never saw), and answered with an ACK, not a SYN-ACK (RFC 9293 3.10.7.4
/// in SYN-RECEIVED, RFC 5961 section 4 when established); before the
/// client's ACK nothing else from the backend lacks a SYN, provided no other
/// LB can have seen that ACK: only entries marked `NAT_F_SOLE` (services
/// without state sync) qualify.
#[inline(always)]
fn stale_backend_segment(p: &Parsed, v: *mut NatValue, g: &Globals) -> bool {
    if p.key.proto != PROTO_TCP || p.tcp_flags & (TCP_SYN | TCP_RST) != 0 {
        return false;
    }
    // SAFETY: LRU value pointer, valid during this run.
    let (last, flags) = unsafe { ((*v).last_seen_ns, (*v).flags) };
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions (see try_vip).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    flags & NAT_F_SOLE != 0 && !g.expired(now, last, flags, true)
}

/// Answers a stale segment (`stale_backend_segment`) with the RST the
/// client would send (RFC 9293 3.10.7.3), <SEQ=SEG.ACK><CTL=RST>, which the
/// backend takes (the exact match of RFC 5961 3.2): its old connection
/// goes, and the client's retransmitted SYN opens the new one under the
/// same port. Left to the client, that RST would also close the flow here,
/// and its next SYN would take another port, perhaps into the same trap.
/// Called from the top level, not from `reverse_nat`: one subprogram more
/// under it broke the verifier's 512-byte stack for the call chain.
#[inline(always)]
fn reset_stale(ctx: &XdpContext, p: &Parsed) -> Verdict {
    match fwd::rst(ctx, p) {
        Ok(()) => Verdict {
            backend: None,
            ..Verdict::tx(Reason::TxRstStale, 0)
        },
        Err(()) => Verdict::drop(Reason::DropAdjustFailed),
    }
}

/// A reply from a backend: translate it back to the client and send it.
/// Returns a packed `Verdict` (a subprogram returns one register).
#[inline(never)]
fn reverse_nat(ctx: &XdpContext, p: &Parsed, v: *mut NatValue, g: &Globals) -> u64 {
    reverse_nat_inner(ctx, p, v, g).pack()
}

#[inline(always)]
fn reverse_nat_inner(ctx: &XdpContext, p: &Parsed, v: *mut NatValue, g: &Globals) -> Verdict {
    // SAFETY: LRU value pointer, valid during this run. Read in place, not
    // copied: with its kept hop the value is 72 bytes, and a copy on this
    // subprogram's stack broke the verifier's 512-byte limit for the call
    // chain (vip -> reverse_nat -> nat::forward_cached). A copy was no
    // snapshot either (word by word, like these reads); racing writers
    // store whole timestamps and flag bits, and a reclaim replaces the
    // value only once the flow is over. No reference to the whole value is
    // held across the writes below (`mark_done`, `touch`).
    let (last, flags) = unsafe { ((*v).last_seen_ns, (*v).flags) };
    let is_tcp = p.key.proto == PROTO_TCP;
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions (see try_vip).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if g.expired(now, last, flags, is_tcp) {
        return Verdict::pass(Reason::PassNoService);
    }
    if is_tcp && p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && flags & NAT_F_DONE == 0 {
        mark_done(p, v);
    }
    // SAFETY: as above.
    unsafe { touch(&mut (*v).last_seen_ns, &mut (*v).flags, now, p.tcp_flags) };
    // SAFETY: as above; the client side, which only a reclaim of a flow
    // that is over rewrites.
    let to = unsafe {
        Endpoints {
            saddr: &(*v).vip,
            sport_be: (*v).vip_port_be,
            daddr: &(*v).client_addr,
            dport_be: (*v).client_port_be,
        }
    };
    if nat::rewrite(ctx, p, &to).is_err() {
        return Verdict::drop(Reason::DropAdjustFailed);
    }
    // The way back to the client, kept in the reverse entry.
    // SAFETY: as above.
    let hop = unsafe { &raw mut (*v).hop };
    send(
        ctx,
        p,
        Reason::TxReverseNat,
        None,
        Some((hop, FibHop::epoch_of(now))),
    )
}

/// The backend sent FIN or RST: marks the flow `NAT_F_DONE` if the backend's
/// end closes without TIME-WAIT, so its port is free 2 s later rather than
/// `closing_s` (`Globals::port_free`). An RST closes it at once. A FIN does
/// if the client's FIN came first (its forward entry is closing): the backend
/// then goes CLOSE-WAIT -> LAST-ACK -> CLOSED (RFC 9293 3.6). Only FIN and RST
/// segments get here, so the extra lookup costs nothing on data. If the two
/// FINs crossed (a simultaneous close, both sides in TIME-WAIT), a reused
/// port's first SYN may meet that TIME-WAIT; Linux accepts it if its sequence
/// number or timestamp is newer, and otherwise the client retransmits the
/// SYN after its RST ends the TIME-WAIT (tcp_timewait_state_process).
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack the scratch map spares"
)]
#[inline(always)]
fn mark_done(p: &Parsed, v: *mut NatValue) {
    let done = if p.tcp_flags & TCP_RST != 0 {
        true
    } else {
        // The forward key goes in this CPU's port scratch (unused on the
        // reverse path), not on the stack.
        let Some(sc) = PORT_SCRATCH.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's slot; nothing else runs on it during this program.
        let sc = unsafe { &mut *sc };
        // SAFETY: LRU value pointer, valid during this run.
        sc.fwd = unsafe { (*v).forward_key(&p.key) };
        match CONNTRACK.get_ptr(&sc.fwd) {
            // SAFETY: LRU value pointer, valid during this run.
            Some(f) => unsafe {
                (*f).flags & CT_F_CLOSING != 0 && (*f).nat_port_be == p.key.dport_be
            },
            None => false,
        }
    };
    if done {
        // SAFETY: LRU value pointer, valid during this run; flag bits are
        // only ever set.
        unsafe { (*v).flags |= NAT_F_DONE };
    }
}

#[inline(always)]
fn send(
    ctx: &XdpContext,
    p: &Parsed,
    reason: Reason,
    backend: Option<u32>,
    hop: Option<(*mut FibHop, u32)>,
) -> Verdict {
    let r = match hop {
        Some((hop, epoch)) => nat::forward_cached(ctx, p, hop, epoch),
        None => nat::forward(ctx, p.l3_off, p.l4_off, p.key.family, p.key.proto),
    };
    forwarded(r, reason, backend)
}

/// The verdict for `nat::forward`'s result `r`: sent (counted as `reason`),
/// passed to the kernel to resolve the neighbour, or dropped.
#[inline(always)]
pub fn forwarded(r: u32, reason: Reason, backend: Option<u32>) -> Verdict {
    if r & nat::FORWARD_FAILED != 0 {
        return Verdict::drop(Reason::from_index(r & 0xff).unwrap_or(Reason::DropNoRoute));
    }
    if r == aya_ebpf::bindings::xdp_action::XDP_PASS {
        return Verdict {
            backend,
            ..Verdict::pass(Reason::PassFibMiss)
        };
    }
    Verdict {
        action: r,
        reason,
        backend,
    }
}

/// A flow we cannot serve: an RST is absorbed (the sender is closing), other
/// TCP gets an RST if the service asks for it; all else is dropped (and
/// counted), never passed to a kernel that does not own the VIP.
#[inline(always)]
fn unservable(ctx: &XdpContext, p: &Parsed, svc: &ServiceValue, backend: Option<u32>) -> Verdict {
    if p.key.proto == PROTO_TCP && p.tcp_flags & TCP_RST != 0 {
        // The sender ends the flow itself; never answer an RST (RFC 9293
        // 3.10.7.1). Counted apart from the drops: nothing was lost.
        return Verdict::drop(Reason::AbsorbRst);
    }
    if p.key.proto == PROTO_TCP && svc.flags & SVC_F_RST_UNSERVABLE != 0 && fwd::rst(ctx, p).is_ok()
    {
        return Verdict {
            backend,
            ..Verdict::tx(Reason::TxRst, 0)
        };
    }
    Verdict::drop(Reason::DropNoBackend)
}
