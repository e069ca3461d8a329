//! Mode nat (full NAT, one arm): address and port rewrites with incremental
//! checksum updates, and the next hop from the kernel's FIB, kept in the
//! flow's entry for about a second (`forward_cached`, `FibHop`).

use core::mem::{MaybeUninit, align_of, size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams,
        xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use vip_common::{AddrBytes, FAMILY_V4, FibHop, PROTO_TCP, PROTO_UDP, Reason};

use crate::{
    csum, mem,
    parse::{EthHdr, Ipv4Hdr, Ipv6Hdr, Parsed, TcpHdr, UdpHdr, ptr_at},
};

/// The new source and destination of a translated packet, by reference: one
/// argument instead of four (BPF calls pass at most five, in registers), and
/// no copies on the 512-byte stack.
pub struct Endpoints<'a> {
    pub saddr: &'a AddrBytes,
    pub daddr: &'a AddrBytes,
    pub sport_be: u16,
    pub dport_be: u16,
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Rewrites source and destination (address and port) of the packet in `ctx`
/// and fixes the IPv4 header and L4 checksums incrementally (RFC 1624): the L4
/// checksum covers the pseudo header, so address changes enter it too. Works
/// word by word in place: source and destination addresses are adjacent in both
/// IPv4 (bytes 12..20) and IPv6 (bytes 8..40) headers.
#[inline(never)]
pub fn rewrite(ctx: &XdpContext, p: &Parsed, to: &Endpoints) -> Result<(), ()> {
    let v4 = p.key.family == FAMILY_V4;
    let (first, words) = if v4 {
        (p.l3_off + 12, 4usize)
    } else {
        (p.l3_off + 8, 16usize)
    };
    let half = words / 2;
    // Sum of (new - old) over the changed words, as one's-complement terms.
    let mut delta = 0u32;
    for i in 0..16usize {
        if i >= words {
            break;
        }
        let w: *mut u16 = ptr_at(ctx, first + i * 2)?;
        let (src, j) = if i < half {
            (to.saddr, i * 2)
        } else {
            (to.daddr, (i - half) * 2)
        };
        let j = j & 14;
        let new = u16::from_ne_bytes([src[j], src[j + 1]]);
        // SAFETY: bounds checked; 2-byte aligned like every header field here.
        unsafe {
            delta += (!*w) as u32 + new as u32;
            *w = new;
        }
    }
    if v4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, p.l3_off)?;
        // SAFETY: bounds checked.
        unsafe { (*ip).check = csum::apply((*ip).check, delta) };
    }
    // The addresses' delta is at most 32 terms of 0x1fffe: fold it before the
    // ports add theirs, so nothing overflows.
    delta = csum::fold(delta) as u32;
    delta += (!p.key.sport_be) as u32 + to.sport_be as u32;
    delta += (!p.key.dport_be) as u32 + to.dport_be as u32;
    if p.key.proto == PROTO_TCP {
        let tcp: *mut TcpHdr = ptr_at(ctx, p.l4_off)?;
        // SAFETY: bounds checked.
        unsafe {
            (*tcp).source = to.sport_be;
            (*tcp).dest = to.dport_be;
            (*tcp).check = csum::apply((*tcp).check, delta);
        }
    } else if p.key.proto == PROTO_UDP {
        let udp: *mut UdpHdr = ptr_at(ctx, p.l4_off)?;
        // SAFETY: bounds checked.
        unsafe {
            (*udp).source = to.sport_be;
            (*udp).dest = to.dport_be;
            // IPv4 UDP may carry no checksum (0); it stays so. A computed 0
            // is sent as all ones (RFC 768).
            if (*udp).check != 0 || !v4 {
                let c = csum::apply((*udp).check, delta);
                (*udp).check = if c == 0 { 0xffff } else { c };
            }
        }
    }
    Ok(())
}

/// Sends the (already rewritten) packet towards its destination: the kernel's
/// FIB gives the next hop's MAC and the interface. Same interface: XDP_TX;
/// another: bpf_redirect. No neighbour entry yet: pass it to the kernel, which
/// resolves the neighbour and forwards this packet itself (vipd sets
/// accept_local so the kernel accepts our own source address on input).
/// Returns the XDP action (`XDP_PASS` meaning "no neighbour yet"), or
/// `FORWARD_FAILED | reason`. A plain integer: a BPF subprogram returns in one
/// register, and a larger return value would go through a stack pointer, which
/// the verifier refuses to hand back to the caller.
///
/// The packet's IP header is at `l3_off`; its ports (for the FIB's
/// multipath hash) at `l4_off`, or none if `l4_off` is 0 (an encapsulated
/// packet: the outer header carries no ports). Plain integers rather than a
/// `Parsed`: the encapsulation's outer header is not where the parser found
/// the client's.
#[inline(never)]
pub fn forward(ctx: &XdpContext, l3_off: usize, l4_off: usize, family: u8, proto: u8) -> u32 {
    let hop = Hop {
        l3_off,
        l4_off,
        family,
        proto,
    };
    match forward_inner(ctx, &hop, None) {
        Ok(action) => action,
        Err(reason) => FORWARD_FAILED | reason as u32,
    }
}

/// `forward` for a flow of mode nat, with its next hop kept in the flow's
/// entry (`hop`, a map value). A hop looked up in this `epoch`
/// (`FibHop::epoch_of`) for a packet at least as long as this one is used
/// as it is: the MAC rewrite and the verdict, no FIB lookup. Anything else
/// asks the FIB, as `forward` does, and keeps a successful answer. Why an
/// epoch rather than a generation the agent bumps on netlink route and
/// neighbour events: it needs nothing outside the program, and the FIB
/// itself is the only judge of a route (policy rules, multipath, a
/// neighbour entry going away), at the price of using an old answer for at
/// most 2^30 ns after a change. Replaced neighbour MACs, routes and
/// interfaces are all seen within that time; a neighbour that is gone is
/// sent to for that long, as it would be by a kernel whose entry is stale.
/// Same return as `forward`.
#[inline(never)]
pub fn forward_cached(ctx: &XdpContext, p: &Parsed, hop: *mut FibHop, epoch: u32) -> u32 {
    let at = Hop {
        l3_off: p.l3_off,
        l4_off: p.l4_off,
        family: p.key.family,
        proto: p.key.proto,
    };
    // SAFETY: `hop` points into the flow's map value, valid during this
    // run. Another CPU may write it at the same time (the same flow's
    // packets on two queues): each writes a whole answer of the same
    // lookup, and a reader that sees a mix of two gets one packet with the
    // old or the new MAC, as during any route change.
    let cached = unsafe { &mut *hop };
    let r = match ip_len(ctx, &at) {
        Ok(len) if cached.ifindex != 0 && cached.epoch == epoch && len <= cached.checked_len => {
            send_to(ctx, &cached.dmac, &cached.smac, cached.ifindex)
        }
        Ok(len) => forward_inner(ctx, &at, Some((cached, epoch, len))),
        Err(reason) => Err(reason),
    };
    match r {
        Ok(action) => action,
        Err(reason) => FORWARD_FAILED | reason as u32,
    }
}

/// Marks a failed `forward`; the low bits carry the `Reason`.
pub const FORWARD_FAILED: u32 = 1 << 31;

// Zeroed in u32 words (`forward_inner`).
const _: () = assert!(size_of::<FibParams>().is_multiple_of(4) && align_of::<FibParams>() >= 4);

/// Where `forward` finds the packet's headers.
struct Hop {
    l3_off: usize,
    l4_off: usize,
    family: u8,
    proto: u8,
}

/// The packet's length as the FIB takes it (`tot_len`: the whole IP packet).
#[inline(always)]
fn ip_len(ctx: &XdpContext, p: &Hop) -> Result<u16, Reason> {
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        if p.family == FAMILY_V4 {
            let ip: *const Ipv4Hdr =
                ptr_at(ctx, p.l3_off).map_err(|()| Reason::DropAdjustFailed)?;
            Ok(u16::from_be((*ip).tot_len))
        } else {
            let ip: *const Ipv6Hdr =
                ptr_at(ctx, p.l3_off).map_err(|()| Reason::DropAdjustFailed)?;
            Ok(u16::from_be((*ip).payload_len).wrapping_add(size_of::<Ipv6Hdr>() as u16))
        }
    }
}

/// Asks the FIB for the packet's next hop and sends it there; with `cache`
/// (the flow's hop, the epoch, the packet's `ip_len`), a successful answer
/// is also kept in the flow's hop.
#[inline(always)]
fn forward_inner(
    ctx: &XdpContext,
    p: &Hop,
    cache: Option<(&mut FibHop, u32, u16)>,
) -> Result<u32, Reason> {
    let mut fib = MaybeUninit::<FibParams>::uninit();
    // SAFETY: zero is a valid bpf_fib_lookup (plain integers and arrays),
    // written whole before the reference is made.
    let fib = unsafe {
        mem::zero_u32s::<{ size_of::<FibParams>() / 4 }>(fib.as_mut_ptr().cast());
        &mut *fib.as_mut_ptr()
    };
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.l4_protocol = p.proto;
    if p.family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, p.l3_off).map_err(|()| Reason::DropAdjustFailed)?;
        fib.family = AF_INET;
        // SAFETY: bounds checked; union fields of plain integers.
        unsafe {
            fib.__bindgen_anon_1.tot_len = u16::from_be((*ip).tot_len);
            fib.__bindgen_anon_2.tos = (*ip).tos;
            fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes((*ip).saddr);
            fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes((*ip).daddr);
        }
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, p.l3_off).map_err(|()| Reason::DropAdjustFailed)?;
        fib.family = AF_INET6;
        // SAFETY: bounds checked.
        unsafe {
            fib.__bindgen_anon_1.tot_len =
                u16::from_be((*ip).payload_len) + size_of::<Ipv6Hdr>() as u16;
            fib.__bindgen_anon_3.ipv6_src = words(&(*ip).saddr);
            fib.__bindgen_anon_4.ipv6_dst = words(&(*ip).daddr);
        }
    }
    if p.l4_off != 0 {
        // SAFETY: reading the rewritten ports (bounds checked by the parser;
        // the rewrite did not change the length).
        unsafe {
            let ports: *const [u16; 2] =
                ptr_at(ctx, p.l4_off).map_err(|()| Reason::DropAdjustFailed)?;
            fib.sport = (*ports)[0];
            fib.dport = (*ports)[1];
        }
    }
    // SAFETY: ctx is the program context, fib a valid parameter block.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            fib as *mut FibParams,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Ok(xdp_action::XDP_PASS);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(Reason::DropNoRoute);
    }
    if let Some((c, epoch, len)) = cache {
        // Invalid while it is written, valid again last.
        c.ifindex = 0;
        // SAFETY: map value and stack fields, 2-aligned (`mem::copy_mac`).
        unsafe {
            mem::copy_mac(&raw mut c.dmac, &raw const fib.dmac);
            mem::copy_mac(&raw mut c.smac, &raw const fib.smac);
        }
        c.checked_len = len;
        c.epoch = epoch;
        c.ifindex = fib.ifindex;
    }
    send_to(ctx, &fib.dmac, &fib.smac, fib.ifindex)
}

/// Writes the next hop's MACs into the frame and sends it out of `ifindex`:
/// XDP_TX if that is where it came in, else bpf_redirect.
#[inline(always)]
fn send_to(ctx: &XdpContext, dmac: &[u8; 6], smac: &[u8; 6], ifindex: u32) -> Result<u32, Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).map_err(|()| Reason::DropAdjustFailed)?;
    // SAFETY: bounds checked; both 2-aligned (`mem::copy_mac`).
    unsafe {
        mem::copy_mac(&raw mut (*eth).dst, dmac);
        mem::copy_mac(&raw mut (*eth).src, smac);
    }
    if ifindex == ctx.ingress_ifindex() as u32 {
        return Ok(xdp_action::XDP_TX);
    }
    // SAFETY: bpf_redirect takes any ifindex; the kernel checks it.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as u32)
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
