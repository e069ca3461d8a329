//! Unconfirmed flows: where a new flow's entries wait until the client
//! confirms the flow, and the move into the confirmed tables when it does.
//!
//! Why: `CONNTRACK` and `NAT_REV` are LRU hashes. If every SYN inserted
//! there, a flood of SYNs from many sources (or, in mode dsr, of segments
//! with no flow, which the program picks up in the middle) would fill them,
//! and the LRU would evict the least recently used entries to make room:
//! idle but live connections, typically apiserver watch streams. In mode
//! nat that breaks them (their replies can no longer be translated back);
//! in mode dsr Maglev sends an evicted flow's next packet to the same
//! backend unless the backend set changed since. So a new flow goes to
//! `CT_UNCONFIRMED` (and, mode nat, its reverse entry to
//! `NAT_REV_UNCONFIRMED`), which a flood churns without touching the
//! confirmed tables, and moves to `CONNTRACK`/`NAT_REV` at the client's
//! first packet that is neither a SYN nor an RST: the handshake's ACK (RFC
//! 9293 3.5), or a picked-up flow's second segment. A spoofed source never
//! sends it: it never saw the SYN-ACK. (A blind SYN-then-ACK per spoofed
//! tuple does confirm its flows: the ACK's number is not checked against
//! the SYN-ACK, which mode dsr never sees.)

use aya_ebpf::bindings::{BPF_EXIST, BPF_NOEXIST};
use vip_common::{
    CT_F_CLOSING, ConnKey, ConnValue, Globals, MODE_NAT, PROTO_TCP, SVC_F_SYNC, ServiceValue,
    SyncEvent,
};

use crate::{
    maps::{
        BACKENDS, CONNTRACK, CT_UNCONFIRMED, NAT_REV, NAT_REV_UNCONFIRMED, PORT_SCRATCH,
        PortScratch, SYNC_EVENTS,
    },
    mem,
    parse::{Parsed, TCP_RST},
    stats,
};

/// The flow's unconfirmed entry, if it has one that still counts, after
/// `CONNTRACK` had none. A SYN (a retransmission) or an RST keeps it where
/// it is, with its backend and port. Any other packet confirms it: the entry
/// moves to `CONNTRACK` and the pointer returned is the one there. If the
/// move fails (mode nat: the reverse entry was evicted by a flood of
/// unconfirmed flows), the flow is forgotten and `None` returned: a non-SYN
/// with no flow, which the caller refuses in mode nat and picks up again in
/// mode dsr.
///
/// An unconfirmed entry lives `closing_s` after its last packet, not the
/// idle timeout: a client retransmits its SYN within seconds (RFC 6298
/// 5.5), and a handshake that never completes must not hold a nat port for
/// hours.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack"
)]
#[inline(always)]
pub fn pending(
    p: &Parsed,
    svc: &ServiceValue,
    syn: bool,
    now: u64,
    g: &Globals,
) -> Option<*mut ConnValue> {
    let u = CT_UNCONFIRMED.get_ptr_mut(&p.key)?;
    // SAFETY: LRU value pointer, valid during this run.
    let last = unsafe { (*u).last_seen_ns };
    if g.expired(now, last, CT_F_CLOSING, p.key.proto == PROTO_TCP) {
        return None;
    }
    // An RST does not confirm: it ends the flow. It is what a real host
    // answers to the backend's SYN-ACK for a SYN it never sent (a flood
    // spoofing its address), and it goes on to the backend on the
    // unconfirmed entry, which then expires as a closing flow.
    if syn || p.tcp_flags & TCP_RST != 0 {
        return Some(u);
    }
    if promote(p, svc, u, now) == 0 {
        let _ = CT_UNCONFIRMED.remove(&p.key);
        return None;
    }
    CONNTRACK.get_ptr_mut(&p.key)
}

/// Moves the unconfirmed flow `u` (key `p.key`) into the confirmed tables;
/// returns 1 if it did, 0 if not (a subprogram returns one register). The
/// forward entry is written first and the unconfirmed one removed last, so
/// another CPU's packet of the same flow finds one or the other. Reported
/// to state sync again here, confirmed: peers keep what the SYN's report
/// (`SYNC_F_PENDING`) gave them in their unconfirmed tables, so a flood
/// reaches only those, and move it to their confirmed ones now.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack"
)]
#[inline(never)]
fn promote(p: &Parsed, svc: &ServiceValue, u: *mut ConnValue, now: u64) -> u32 {
    // SAFETY: LRU value pointer, valid during this run.
    let mut v = unsafe { *u };
    v.last_seen_ns = now;
    if svc.mode == MODE_NAT && promote_reverse(p, svc, &v) == 0 {
        return 0;
    }
    if CONNTRACK.insert(&p.key, &v, 0).is_err() {
        return 0;
    }
    let _ = CT_UNCONFIRMED.remove(&p.key);
    if svc.flags & SVC_F_SYNC != 0 {
        sync_event(p, &v, 0);
    }
    1
}

/// Mode nat: moves the flow's reverse entry to `NAT_REV`. Its key is built
/// from the backend and the allocated port in `PORT_SCRATCH` (the stack is
/// nearly used up). The entry must still be this flow's: if a flood of
/// unconfirmed flows evicted it, the port may be another flow's by now.
/// Returns 1 if moved, 0 if not.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack"
)]
#[inline(always)]
fn promote_reverse(p: &Parsed, svc: &ServiceValue, v: &ConnValue) -> u32 {
    let Some(be) = BACKENDS.get(v.backend_id) else {
        return 0;
    };
    let Some(sc) = PORT_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; nothing else runs on it during this program.
    let sc = unsafe { &mut *sc };
    sc.rev = ConnKey {
        saddr: be.addr,
        daddr: svc.snat_addr,
        sport_be: be.port_be,
        dport_be: v.nat_port_be,
        proto: p.key.proto,
        family: p.key.family,
        _pad: [0; 2],
    };
    let Some(n) = NAT_REV_UNCONFIRMED.get_ptr(&sc.rev) else {
        return 0;
    };
    // SAFETY: LRU value pointer, valid during this run; copied at once.
    sc.value = unsafe { *n };
    // SAFETY: both 16 bytes and 2-aligned (scratch map, packet key).
    let ours = sc.value.client_port_be == p.key.sport_be
        && unsafe { mem::eq_u16s::<8>(sc.value.client_addr.as_ptr(), p.key.saddr.as_ptr()) };
    if !ours {
        return 0;
    }
    // BPF_ANY: a peer's state sync may have written the same flow already.
    if NAT_REV.insert(&sc.rev, &sc.value, 0).is_err() {
        return 0;
    }
    let _ = NAT_REV_UNCONFIRMED.remove(&sc.rev);
    1
}

/// Mode nat: takes source port `sc_rev` (a reverse key with its port set)
/// for a new flow, as its unconfirmed reverse entry `value`. Taken means its
/// key is in neither reverse table. The insert comes first, with
/// BPF_NOEXIST, so two CPUs never both take it as unconfirmed; then
/// `NAT_REV` is checked and the claim withdrawn if a confirmed flow holds
/// the port. A confirmed entry only ever comes from an unconfirmed one
/// (`promote_reverse` inserts before it removes), so a port being confirmed
/// right now is still unconfirmed when our insert runs, and that fails.
/// (State sync writes `NAT_REV` from userspace for flows a peer confirmed,
/// with its own ports; a clash there is the sync's to resolve.)
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack"
)]
#[inline(always)]
pub fn take_port(rev: &ConnKey, value: &vip_common::NatValue) -> bool {
    if NAT_REV_UNCONFIRMED
        .insert(rev, value, BPF_NOEXIST as u64)
        .is_err()
    {
        return false;
    }
    if NAT_REV.get_ptr(rev).is_some() {
        let _ = NAT_REV_UNCONFIRMED.remove(rev);
        return false;
    }
    true
}

/// Takes over the port `sc.rev` for `sc.value` from an unconfirmed flow
/// whose handshake has stalled: both its entries idle past
/// `HANDSHAKE_HOLD_NS` (`vip_common::handshake_port_free`). Reached for a
/// taken port `allocate_port` tries (with state sync, only once none of its
/// tries was free), so under a SYN flood from spoofed sources the flood's
/// ports turn over every second and real clients get through, where
/// waiting out `closing_s` refused every new flow for ten seconds after the
/// flood. The old flow's forward entry goes too: left, its client's next
/// packet would leave under a port that is now another flow's. Nothing else
/// frees such a port before the LRU evicts it, as the agent's sweep walks
/// the confirmed tables only. Called under `NAT_LOCK` (`lb::reclaim_one`);
/// BPF_EXIST replaces the value whole.
#[allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys passed by value would be copied onto the stack"
)]
#[inline(always)]
pub fn reclaim_unconfirmed(sc: &mut PortScratch, now: u64) -> bool {
    let Some(old) = NAT_REV_UNCONFIRMED.get_ptr(&sc.rev) else {
        return false;
    };
    // SAFETY: LRU value pointer, valid during this run.
    let rev_last = unsafe {
        sc.fwd = (*old).forward_key(&sc.rev);
        (*old).last_seen_ns
    };
    let fwd = CT_UNCONFIRMED
        .get_ptr(&sc.fwd)
        // SAFETY: as above.
        .map(|f| unsafe { ((*f).last_seen_ns, (*f).nat_port_be) });
    let (free, drop_fwd) = vip_common::handshake_port_free(now, sc.rev.dport_be, rev_last, fwd);
    if !free {
        return false;
    }
    if NAT_REV_UNCONFIRMED
        .insert(&sc.rev, &sc.value, BPF_EXIST as u64)
        .is_err()
    {
        return false;
    }
    if drop_fwd {
        let _ = CT_UNCONFIRMED.remove(&sc.fwd);
    }
    true
}

/// Reports a confirmed flow to the agent for replication to the peer LBs.
/// Written field by field straight into the reserved ring slot, and
/// inlined: built on the stack first, its frame broke the verifier's
/// 512-byte combined stack limit (kernel/bpf/verifier.c, MAX_BPF_STACK). A
/// full ring loses the event, counted; the flow itself goes on.
#[inline(always)]
pub fn sync_event(p: &Parsed, v: &ConnValue, extra_flags: u8) {
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
        (*ev).flags = v.flags | extra_flags;
        // `= [0; 5]` would call memset (`mem`).
        mem::zero_bytes::<5>(core::ptr::addr_of_mut!((*ev)._pad).cast());
    }
    // Flags 0: the kernel wakes the reader only when it has caught up
    // (kernel/bpf/ringbuf.c, bpf_ringbuf_commit), so a busy agent is not
    // woken per event, an idle one at once.
    e.submit(0);
}
