//! On-demand decision tracing (`vipd trace`): one aya-log record per packet
//! that `TRACE` selects, with what the program decided for it (service,
//! new or established flow, backend, verdict and reason), and nothing for
//! any other packet.
//!
//! Cost while off: `wanted` reads `TRACE` (an array lookup the verifier
//! inlines) and branches on `until_ns == 0`; every other line here runs only
//! for a selected packet. The decisions inside `try_vip` are noted in this
//! CPU's `TRACE_NOTE` as they are taken, and `emit` writes the record once
//! the verdict is known, so a packet costs one ring reservation, and
//! `try_vip` keeps its single exit.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, programs::XdpContext};
use aya_log_ebpf::info;
use vip_common::{AddrBytes, FAMILY_V4, TRACE_F_ADDR, TRACE_F_PORT, TRACE_FLOW_NONE, TraceFilter};

use crate::{
    maps::{BACKENDS, TRACE, TRACE_NOTE},
    mem,
    parse::{Ipv4Hdr, Ipv6Hdr, headers, ptr_at},
};

/// `Note::service` before (or without) a service lookup.
const NO_SERVICE: u32 = u32::MAX;

/// What a traced packet has shown so far: its header as it arrived (the
/// program may rewrite it before `emit`), then each decision. Per CPU: one
/// packet runs on a CPU at a time. The addresses sit at offsets 0 and 16 of
/// an 8-aligned map value, so they are copied word by word (`mem`).
#[repr(C)]
pub struct Note {
    saddr: AddrBytes,
    daddr: AddrBytes,
    service: u32,
    slot: u32,
    sport_be: u16,
    dport_be: u16,
    family: u8,
    proto: u8,
    tcp_flags: u8,
    flow: u8,
    mode: u8,
    _pad: [u8; 7],
}

/// Whether to trace this packet. Off (`until_ns == 0`): one load and one
/// branch. On: `matches` looks at the packet.
#[inline(always)]
pub fn wanted(ctx: &XdpContext) -> bool {
    match TRACE.get(0) {
        Some(f) if f.until_ns != 0 => matches(ctx, f),
        _ => false,
    }
}

/// The lease is still running and the packet has the filter's address and
/// port (either side); if so its header is noted in `TRACE_NOTE`. A BPF
/// subprogram: the header walk is not inlined a second time into `vip`.
/// Packets that are not TCP/UDP over IP are never traced (nothing to match).
#[inline(never)]
fn matches(ctx: &XdpContext, f: &TraceFilter) -> bool {
    // SAFETY: no preconditions. The coarse clock, as the flow timestamps:
    // the lease is 3 s, a tick of error is nothing.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now >= f.until_ns {
        // A tracer that died without switching off: the lease ran out.
        return false;
    }
    let Ok(h) = headers(ctx) else {
        return false;
    };
    if f.flags & TRACE_F_PORT != 0 && h.sport_be != f.port_be && h.dport_be != f.port_be {
        return false;
    }
    let Some(n) = TRACE_NOTE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, 8-aligned; nothing else runs on it now.
    let n = unsafe { &mut *n };
    let (s, d) = (n.saddr.as_mut_ptr(), n.daddr.as_mut_ptr());
    if h.family == FAMILY_V4 {
        let Ok(ip) = ptr_at::<Ipv4Hdr>(ctx, h.l3_off) else {
            return false;
        };
        // SAFETY: bounds checked; header fields are 2-aligned, the note 8.
        unsafe {
            mem::copy_u16s::<2>(s, (*ip).saddr.as_ptr());
            mem::copy_u16s::<2>(d, (*ip).daddr.as_ptr());
            mem::zero_u32s::<3>(s.add(4));
            mem::zero_u32s::<3>(d.add(4));
        }
    } else {
        let Ok(ip) = ptr_at::<Ipv6Hdr>(ctx, h.l3_off) else {
            return false;
        };
        // SAFETY: as above.
        unsafe {
            mem::copy_u16s::<8>(s, (*ip).saddr.as_ptr());
            mem::copy_u16s::<8>(d, (*ip).daddr.as_ptr());
        }
    }
    if f.flags & TRACE_F_ADDR != 0 {
        let a = f.addr.as_ptr();
        // SAFETY: 16 bytes each, 2-aligned (map values).
        let hit =
            f.family == h.family && unsafe { mem::eq_u16s::<8>(s, a) || mem::eq_u16s::<8>(d, a) };
        if !hit {
            return false;
        }
    }
    n.sport_be = h.sport_be;
    n.dport_be = h.dport_be;
    n.family = h.family;
    n.proto = h.proto;
    n.tcp_flags = h.tcp_flags;
    n.service = NO_SERVICE;
    n.mode = 0;
    n.flow = TRACE_FLOW_NONE;
    n.slot = 0;
    true
}

/// Notes the service the packet matched (called only for a traced packet).
#[inline(always)]
pub fn service(id: u32, mode: u8) {
    if let Some(n) = TRACE_NOTE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            (*n).service = id;
            (*n).mode = mode;
        }
    }
}

/// Notes how the backend was found: `TRACE_FLOW_*`, and for a new flow the
/// Maglev slot (called only for a traced packet).
#[inline(always)]
pub fn flow(kind: u8, slot: u32) {
    if let Some(n) = TRACE_NOTE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe {
            (*n).flow = kind;
            (*n).slot = slot;
        }
    }
}

/// `emit`'s backend id when the verdict names none.
pub const NO_BACKEND: u32 = u32::MAX;

/// Writes the packet's record: the note and the verdict (action, reason,
/// backend id or `NO_BACKEND`), with the chosen backend's address. Numbers, not names: the reason and
/// mode labels live in vip-common and `vipd trace` renders them, so the
/// program copies no strings. IPv4 addresses go out in their 16-byte form
/// (zeros after the first 4), rendered by family in userspace.
#[inline(never)]
pub fn emit(ctx: &XdpContext, action: u32, reason: u32, backend: u32) {
    let Some(n) = TRACE_NOTE.get_ptr(0) else {
        return;
    };
    // SAFETY: this CPU's slot, filled by `matches` for this packet.
    let n = unsafe { &*n };
    let (baddr, bport) = match BACKENDS.get(backend) {
        Some(b) if backend != NO_BACKEND => (b.addr, u16::from_be(b.port_be)),
        _ => ([0; 16], 0),
    };
    info!(
        ctx,
        "family={} proto={} src={:i} sport={} dst={:i} dport={} tcp_flags={:x} service={} mode={} flow={} slot={} backend={} backend_addr={:i} backend_port={} action={} reason={}",
        n.family,
        n.proto,
        n.saddr,
        u16::from_be(n.sport_be),
        n.daddr,
        u16::from_be(n.dport_be),
        n.tcp_flags,
        n.service,
        n.mode,
        n.flow,
        n.slot,
        backend,
        baddr,
        bport,
        action,
        reason
    );
}
