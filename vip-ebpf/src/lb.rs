//! The load-balancing decision: is this ours (reverse NAT, then service
//! lookup), which backend (connection table, else Maglev), and how to send it
//! (by service mode).

use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    programs::XdpContext,
};
use vip_common::{
    BE_F_ALIVE, BE_F_ENCAP, BE_F_LOCAL, BackendValue, CT_F_CLOSING, CT_F_DSR, ConnKey, ConnValue,
    Globals, MAGLEV_MAX_SIZE, MODE_DSR, MODE_NAT, NAT_F_DONE, NAT_PORT_TRIES, NO_BACKEND, NatValue,
    PROTO_TCP, Reason, SVC_F_RST_UNSERVABLE, SVC_F_SYNC, ServiceKey, ServiceValue, SyncEvent,
    TRACE_FLOW_ESTABLISHED, TRACE_FLOW_NEW, TRACE_FLOW_REPLY, flow_hash, maglev_index,
    nat_port_try,
};

use crate::{
    Verdict, encap, fwd,
    maps::{
        BACKENDS, CONNTRACK, GLOBALS, LOCAL_MAC, MAGLEV, NAT_LOCK, NAT_REV, PORT_SCRATCH,
        PortScratch, SCRATCH, SERVICE_PORTS, SERVICES, SYNC_EVENTS,
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
    let h = match headers(ctx) {
        Ok(h) => h,
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
    if reply_port && let Some(v) = NAT_REV.get_ptr_mut(&p.key) {
        if traced {
            trace::flow(TRACE_FLOW_REPLY, 0);
        }
        return Verdict::unpack(reverse_nat(ctx, p, v, &g));
    }
    if !service_port {
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
                return forward(ctx, p, &svc, id, be, nat_port);
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
        return forward(ctx, p, &svc, id, be, 0);
    }
    let mut nat_port = 0u16;
    if svc.mode == MODE_NAT {
        let req = PortRequest {
            now,
            hash,
            lo: g.nat_alloc_lo,
            hi: g.nat_alloc_hi,
        };
        let mut got = allocate_port(p, &svc, be, &req);
        if got == 0 {
            got = reclaim_port(p, &svc, be, &req);
        }
        if got == 0 {
            return Verdict::drop(Reason::DropNatPortsExhausted);
        }
        nat_port = got as u16;
    }
    // Zeroed whole, then filled: a `_pad: [0; 5]` literal compiles to a
    // call of compiler-builtins' memset, a byte loop in BPF.
    // SAFETY: ConnValue is plain integers; all-zero is a valid value.
    let mut v: ConnValue = unsafe { core::mem::zeroed() };
    v.last_seen_ns = now;
    v.backend_id = id;
    v.service_id = svc.id;
    v.nat_port_be = nat_port;
    v.flags = if p.tcp_flags & TCP_FIN != 0 {
        CT_F_CLOSING
    } else {
        0
    } | if svc.mode == MODE_DSR { CT_F_DSR } else { 0 };
    if CONNTRACK.insert(&p.key, &v, 0).is_err() {
        return Verdict::drop(Reason::DropConntrackFull);
    }
    if svc.flags & SVC_F_SYNC != 0 {
        sync_event(p, &v);
    }
    stats::new_flow(id);
    forward(ctx, p, &svc, id, be, nat_port)
}

/// Reports a new flow to the agent for replication to the peer LBs. Written
/// field by field straight into the reserved ring slot, and inlined: as a
/// subprogram (or with the event built on the stack first) its frame on top
/// of the main one broke the verifier's 512-byte combined stack limit
/// (kernel/bpf/verifier.c, MAX_BPF_STACK: "combined stack size of 2 calls is
/// 544"). A full ring loses the event, counted; the flow itself goes on.
/// Only new flows of flagged services get here, never established ones.
#[inline(always)]
fn sync_event(p: &Parsed, v: &ConnValue) {
    let Some(mut e) = SYNC_EVENTS.reserve::<SyncEvent>(0) else {
        stats::sync_lost();
        return;
    };
    let ev = e.as_mut_ptr();
    // SAFETY: `ev` points at a reserved ring slot of size_of::<SyncEvent>()
    // bytes, ours until submit; every field is written before it.
    unsafe {
        core::ptr::copy_nonoverlapping(&p.key, core::ptr::addr_of_mut!((*ev).key), 1);
        (*ev).backend_id = v.backend_id;
        (*ev).service_id = v.service_id;
        (*ev).nat_port_be = v.nat_port_be;
        (*ev).flags = v.flags;
        // `= [0; 5]` would call memset (`mem`).
        mem::zero_bytes::<5>(core::ptr::addr_of_mut!((*ev)._pad).cast());
    }
    // Flags 0: the kernel wakes the reader only when it has caught up
    // (kernel/bpf/ringbuf.c, bpf_ringbuf_commit), so a busy agent is not
    // woken per event, an idle one at once.
    e.submit(0);
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
    sc.value = NatValue {
        last_seen_ns: now,
        client_addr: p.key.saddr,
        vip: p.key.daddr,
        client_port_be: p.key.sport_be,
        vip_port_be: p.key.dport_be,
        flags: 0,
        _pad: [0; 3],
    };
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
/// Returns the port (network order) in the low 16 bits with bit 16 set, or 0
/// if every try was taken: a plain integer, because a BPF call returns in one
/// register.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack the scratch map spares"
)]
#[inline(never)]
fn allocate_port(p: &Parsed, svc: &ServiceValue, be: &BackendValue, req: &PortRequest) -> u32 {
    let Some((sc, order)) = port_search(p, svc, be, req) else {
        return 0;
    };
    for i in 0..NAT_PORT_TRIES {
        let port = order.nth(i);
        sc.rev.dport_be = port.to_be();
        if NAT_REV
            .insert(&sc.rev, &sc.value, BPF_NOEXIST as u64)
            .is_ok()
        {
            return port.to_be() as u32 | 1 << 16;
        }
    }
    0
}

/// When every port `allocate_port` tried is taken: takes over one whose flow
/// is over (`reclaim_locked`), in the same order. Without this a closed
/// flow's port stays claimed until the agent's sweep deletes it (every
/// 10 s), and a backend with many short connections runs out of ports. Each
/// take-over holds `NAT_LOCK` for that entry, which the sweep takes too, so
/// a port is never handed to two flows. A separate call from
/// `allocate_port`'s, not part of it: the BPF stack of a call chain is 512
/// bytes. Same return as `allocate_port`.
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
        if NAT_LOCK.insert(&sc.rev, 1u8, BPF_NOEXIST as u64).is_err() {
            continue;
        }
        let done = reclaim_locked(sc, req.now);
        let _ = NAT_LOCK.remove(&sc.rev);
        if done {
            return port.to_be() as u32 | 1 << 16;
        }
    }
    0
}

/// Takes over the reverse entry `sc.rev` for `sc.value` if the flow that held
/// it is over by the rule the agent's sweep uses too (`Globals::port_free`):
/// a flow the backend closed passively or reset frees its port 2 s after its
/// last packet, any other when both its entries expired. Called under
/// `NAT_LOCK`, and reads the entry again under it, so a port another CPU
/// reclaimed, or the sweep deleted and someone claimed afresh, is left
/// alone.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack the scratch map spares"
)]
#[inline(always)]
fn reclaim_locked(sc: &mut PortScratch, now: u64) -> bool {
    let Some(old) = NAT_REV.get_ptr(&sc.rev) else {
        return false;
    };
    let g = globals();
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
    // BPF_EXIST: replace the whole value (a reader sees the old flow's or
    // the new one's, never a mix).
    NAT_REV.insert(&sc.rev, &sc.value, BPF_EXIST as u64).is_ok()
}

#[inline(always)]
fn forward(
    ctx: &XdpContext,
    p: &Parsed,
    svc: &ServiceValue,
    id: u32,
    be: &BackendValue,
    nat_port_be: u16,
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
    send(ctx, p, Reason::TxNat, Some(id))
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
    match fwd::dsr(ctx, &be.mac) {
        Ok(()) => Verdict::tx(Reason::TxDsr, id),
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
    // SAFETY: LRU value pointer, valid during this run.
    let n = unsafe { *v };
    let is_tcp = p.key.proto == PROTO_TCP;
    // SAFETY: bpf_ktime_get_coarse_ns has no preconditions (see try_vip).
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if g.expired(now, n.last_seen_ns, n.flags, is_tcp) {
        return Verdict::pass(Reason::PassNoService);
    }
    if is_tcp && p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && n.flags & NAT_F_DONE == 0 {
        mark_done(p, v, &n);
    }
    // SAFETY: as above.
    unsafe { touch(&mut (*v).last_seen_ns, &mut (*v).flags, now, p.tcp_flags) };
    let to = Endpoints {
        saddr: &n.vip,
        sport_be: n.vip_port_be,
        daddr: &n.client_addr,
        dport_be: n.client_port_be,
    };
    if nat::rewrite(ctx, p, &to).is_err() {
        return Verdict::drop(Reason::DropAdjustFailed);
    }
    send(ctx, p, Reason::TxReverseNat, None)
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
fn mark_done(p: &Parsed, v: *mut NatValue, n: &NatValue) {
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
        sc.fwd = n.forward_key(&p.key);
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
fn send(ctx: &XdpContext, p: &Parsed, reason: Reason, backend: Option<u32>) -> Verdict {
    let r = nat::forward(ctx, p.l3_off, p.l4_off, p.key.family, p.key.proto);
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
