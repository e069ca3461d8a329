//! The load-balancing decision: is this ours (service lookup), which backend
//! (connection table, else Maglev), and how to send it (by service mode).

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::XdpContext};
use vip_common::{
    BE_F_ALIVE, BE_F_LOCAL, BackendValue, CT_F_CLOSING, ConnValue, MAGLEV_MAX_SIZE, MODE_DSR,
    NO_BACKEND, PROTO_TCP, Reason, SVC_F_RST_UNSERVABLE, ServiceKey, ServiceValue, flow_hash,
    maglev_index,
};

use crate::{
    Verdict, fwd,
    maps::{BACKENDS, CONNTRACK, MAGLEV, SERVICE_PORTS, SERVICES},
    parse::{Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, parse},
    stats,
};

/// Refresh a connection's timestamp at most this often: a write per packet
/// would bounce the entry's cache line between CPUs for nothing.
const CT_TOUCH_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn try_vip(ctx: &XdpContext) -> Verdict {
    let p = match parse(ctx) {
        Ok(p) => p,
        Err(reason) => return Verdict::pass(reason),
    };

    // Cheap pre-filter: no service on this port means not ours, without a hash
    // lookup (an array lookup is inlined by the verifier).
    let port = u16::from_be(p.key.dport_be) as u32;
    match SERVICE_PORTS.get(port >> 6) {
        Some(word) if *word & (1u64 << (port & 63)) != 0 => {}
        _ => return Verdict::pass(Reason::PassNoService),
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

    let is_tcp = p.key.proto == PROTO_TCP;
    let syn = is_tcp && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };

    if let Some(ct) = CONNTRACK.get_ptr_mut(p.key) {
        // SAFETY: LRU value pointer, valid during this run; racing writers
        // only ever store whole timestamps and flag bits.
        let (id, last, flags) = unsafe { ((*ct).backend_id, (*ct).last_seen_ns, (*ct).flags) };
        if let Some(be) = alive_backend(id) {
            // A SYN on a closing entry is a new connection reusing the tuple:
            // choose again so it follows the current table.
            if !(syn && flags & CT_F_CLOSING != 0) {
                if now.wrapping_sub(last) > CT_TOUCH_NS || p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                    // SAFETY: as above.
                    unsafe {
                        (*ct).last_seen_ns = now;
                        if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                            (*ct).flags |= CT_F_CLOSING;
                        }
                    }
                }
                return forward(ctx, &p, &svc, id, &be);
            }
        } else if !syn {
            // The flow's backend died: tell the client now rather than let
            // it time out (client-go needs ~45 s to notice a silent peer).
            return unservable(ctx, &p, &svc, Some(id));
        }
    }

    // A new flow (or one whose entry was evicted, or that follows a VIP move in
    // mode dsr: Maglev gives every node the same answer for the same flow).
    let size = svc.maglev_size;
    if size == 0 || size > MAGLEV_MAX_SIZE {
        return Verdict::drop(Reason::DropBadTable);
    }
    let slot = flow_hash(&p.key) % size;
    let id = match MAGLEV.get(maglev_index(svc.id, svc.maglev_half, slot)) {
        Some(id) if *id != NO_BACKEND => *id,
        _ => return unservable(ctx, &p, &svc, None),
    };
    let be = match alive_backend(id) {
        Some(be) => be,
        None => return unservable(ctx, &p, &svc, None),
    };
    if !(is_tcp && p.tcp_flags & TCP_RST != 0) {
        let v = ConnValue {
            last_seen_ns: now,
            backend_id: id,
            service_id: svc.id,
            flags: if p.tcp_flags & TCP_FIN != 0 {
                CT_F_CLOSING
            } else {
                0
            },
            _pad: [0; 7],
        };
        if CONNTRACK.insert(p.key, v, 0).is_err() {
            return Verdict::drop(Reason::DropConntrackFull);
        }
        stats::new_flow(id);
    }
    forward(ctx, &p, &svc, id, &be)
}

#[inline(always)]
fn alive_backend(id: u32) -> Option<BackendValue> {
    match BACKENDS.get(id) {
        Some(be) if be.flags & BE_F_ALIVE != 0 => Some(*be),
        _ => None,
    }
}

#[inline(always)]
fn forward(
    ctx: &XdpContext,
    _p: &Parsed,
    svc: &ServiceValue,
    id: u32,
    be: &BackendValue,
) -> Verdict {
    if svc.mode != MODE_DSR {
        // Only dsr is implemented in the datapath so far; the agent refuses
        // other modes, so reaching this means the maps were written by hand.
        return Verdict::drop(Reason::DropBadMode);
    }
    if be.flags & BE_F_LOCAL != 0 {
        return Verdict {
            backend: Some(id),
            ..Verdict::pass(Reason::PassLocalBackend)
        };
    }
    match fwd::dsr(ctx, &be.mac) {
        Ok(()) => Verdict::tx(Reason::TxDsr, id),
        Err(()) => Verdict::drop(Reason::DropAdjustFailed),
    }
}

/// A flow we cannot serve: TCP gets an RST if the service asks for it; all else
/// is dropped (and counted), never passed to a kernel that does not own the VIP.
#[inline(always)]
fn unservable(ctx: &XdpContext, p: &Parsed, svc: &ServiceValue, backend: Option<u32>) -> Verdict {
    if p.key.proto == PROTO_TCP && svc.flags & SVC_F_RST_UNSERVABLE != 0 && fwd::rst(ctx, p).is_ok()
    {
        return Verdict {
            action: aya_ebpf::bindings::xdp_action::XDP_TX,
            reason: Reason::TxRst,
            backend,
        };
    }
    Verdict::drop(Reason::DropNoBackend)
}
