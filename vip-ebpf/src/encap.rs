//! Mode dsr across subnets: the client's packet, unchanged, inside an outer
//! IPv4 header (IP in IP, RFC 2003) or IPv6 header (IPv6 in IPv6, RFC 2473)
//! from this node to the backend's address, sent to the next hop the FIB
//! gives; and the ICMP "too big" answer to the client when the encapsulated
//! packet would not fit the path.
//!
//! The backend decapsulates with the kernel's fallback tunnel device (`tunl0`
//! / `ip6tnl0`), finds the VIP on its `lo` and answers the client directly.

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use vip_common::{
    AddrBytes, BackendValue, ENCAP_V4_OVERHEAD, ENCAP_V6_OVERHEAD, FAMILY_V4, NatOwner, PROTO_ICMP,
    PROTO_ICMPV6, PROTO_IPIP, PROTO_IPV6, Reason,
};

use crate::{
    Verdict, csum, lb,
    maps::ENCAP,
    mem, nat,
    parse::{ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, Parsed, ptr_at},
};

/// TTL / hop limit of the outer header and of our ICMP answers: a fresh
/// packet (RFC 1700's default TTL); the inner header keeps the client's.
const OUTER_TTL: u8 = 64;
/// IPv4 "don't fragment" (RFC 791), network order.
const IP_DF: u16 = 0x4000u16.to_be();
const ETH_LEN: usize = size_of::<EthHdr>();
/// ICMP "destination unreachable", code "fragmentation needed and DF set"
/// (RFC 792, RFC 1191 section 4); ICMPv6 "packet too big" (RFC 4443 3.2).
const ICMP_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMPV6_TOO_BIG: u8 = 2;
/// The ICMP header: type, code, checksum, and 4 bytes (unused + next-hop
/// MTU for ICMP, the MTU for ICMPv6).
const ICMP_LEN: usize = 8;
/// "Internetwork control" precedence, which Linux gives the ICMP errors it
/// sends (icmp_send).
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// Encapsulates the packet in `ctx` (parsed as `p`) for backend `id` and
/// sends it on. Returns a packed `Verdict` (a BPF subprogram returns one
/// register): a subprogram of its own, so its frame does not add to the
/// established plain-dsr path's.
#[inline(never)]
pub fn encap(ctx: &XdpContext, p: &Parsed, id: u32, be: &BackendValue) -> u64 {
    let Some(e) = ENCAP.get(id) else {
        return Verdict::drop(Reason::DropBadBackend).pack();
    };
    match encap_inner(ctx, p, &e.saddr, &be.addr, e.mtu) {
        Ok(Step::Sent(r)) => lb::forwarded(r, Reason::TxEncap, Some(id)).pack(),
        Ok(Step::TooBig(mtu)) => too_big(ctx, p, mtu).pack(),
        Err(()) => Verdict::drop(Reason::DropAdjustFailed).pack(),
    }
}

/// Mode nat with port slices: a backend's reply that this LB has no entry
/// for, to a port of `owner`'s slice, encapsulated as above (the packet
/// unchanged inside) to that LB, which holds the flow and translates it
/// (`decap::take_handoff`, then `lb::handed_reply`, there). A subprogram
/// of its own like `encap`.
///
/// One that would not fit is dropped, not answered with ICMP: the sender
/// is a backend, whose path MTU towards the VIP must not shrink for every
/// flow because of a race that lasts until the sync record arrives (a few
/// milliseconds); its retransmission finds the entry here.
#[inline(never)]
pub fn handoff(ctx: &XdpContext, p: &Parsed, owner: &NatOwner) -> u64 {
    match encap_inner(ctx, p, &owner.saddr, &owner.addr, owner.mtu) {
        Ok(Step::Sent(r)) => lb::forwarded(r, Reason::TxHandoff, None).pack(),
        Ok(Step::TooBig(_)) => Verdict::drop(Reason::DropHandoffTooBig).pack(),
        Err(()) => Verdict::drop(Reason::DropAdjustFailed).pack(),
    }
}

enum Step {
    /// Encapsulated and handed to `nat::forward`, with its result.
    Sent(u32),
    /// Would not fit: the largest inner packet the path carries.
    TooBig(u16),
}

#[inline(always)]
fn encap_inner(
    ctx: &XdpContext,
    p: &Parsed,
    saddr: &AddrBytes,
    daddr: &AddrBytes,
    mtu: u16,
) -> Result<Step, ()> {
    let v4 = p.key.family == FAMILY_V4;
    let l3_off = p.l3_off;
    // The inner packet's length as its header states it (Ethernet padding
    // after it travels along, harmless), and what the outer header copies
    // from it: RFC 2003 3.1 copies TOS and DF (a DF packet stays DF, so the
    // path's "too big" still reaches a sender doing path MTU discovery);
    // for IPv6 the traffic class and the flow label, which give routers on
    // the way the client flow's entropy for their multipath hash (RFC 6438).
    let (inner_len, olen, first_word, df) = if v4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off)?;
        // SAFETY: bounds checked (the parser checked the same header).
        unsafe {
            (
                u16::from_be((*ip).tot_len),
                ENCAP_V4_OVERHEAD,
                (*ip).tos as u32,
                (*ip).frag_off & IP_DF,
            )
        }
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off)?;
        // SAFETY: as above.
        unsafe {
            (
                u16::from_be((*ip).payload_len).saturating_add(size_of::<Ipv6Hdr>() as u16),
                ENCAP_V6_OVERHEAD,
                u32::from_ne_bytes((*ip).ver_tc_flow),
                0,
            )
        }
    };
    let room = mtu.saturating_sub(olen);
    if inner_len > room {
        return Ok(Step::TooBig(room));
    }
    // Room for Ethernet and the outer header in front of the inner IP
    // header: 20 (or 40) bytes, and 4 fewer if the frame had an 802.1Q tag,
    // which the encapsulated frame does not keep (it leaves by the FIB's
    // interface, not necessarily a tagged one).
    let grow = (ETH_LEN + olen as usize) as i32 - (l3_off & 0xff) as i32;
    // SAFETY: ctx is the program's context; a negative delta grows the head.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(());
    }
    // Every packet pointer is stale from here; `p`'s offsets too.
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    if v4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: bounds checked; header fields are 2-aligned behind the
        // 14-byte Ethernet header, map values 8-aligned (`mem`).
        unsafe {
            (*eth).proto = ETH_P_IP;
            (*ip).ver_ihl = 0x45; // version 4, no options
            (*ip).tos = first_word as u8;
            (*ip).tot_len = (inner_len + olen).to_be();
            // ID 0: atomic datagrams need none (RFC 6864 4.1); a non-DF one
            // is never fragmented by us, and a router that does takes an
            // ID of 0 as well as any other.
            (*ip).id = 0;
            (*ip).frag_off = df;
            (*ip).ttl = OUTER_TTL;
            (*ip).proto = PROTO_IPIP;
            (*ip).check = 0;
            mem::copy_u16s::<2>((*ip).saddr.as_mut_ptr(), saddr.as_ptr());
            mem::copy_u16s::<2>((*ip).daddr.as_mut_ptr(), daddr.as_ptr());
        }
        // SAFETY: bounds checked above (the whole header); the adjusted
        // packet did not change since.
        unsafe { (*ip).check = !csum::fold(header_sum(ip)) };
        Ok(Step::Sent(nat::forward(
            ctx, ETH_LEN, 0, FAMILY_V4, PROTO_IPIP,
        )))
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: as above.
        unsafe {
            (*eth).proto = ETH_P_IPV6;
            (*ip).ver_tc_flow = first_word.to_ne_bytes();
            // The payload of the outer header is the whole inner packet.
            (*ip).payload_len = inner_len.to_be();
            (*ip).nexthdr = PROTO_IPV6;
            (*ip).hop_limit = OUTER_TTL;
            mem::copy_u16s::<8>((*ip).saddr.as_mut_ptr(), saddr.as_ptr());
            mem::copy_u16s::<8>((*ip).daddr.as_mut_ptr(), daddr.as_ptr());
        }
        Ok(Step::Sent(nat::forward(
            ctx,
            ETH_LEN,
            0,
            vip_common::FAMILY_V6,
            PROTO_IPV6,
        )))
    }
}

/// The sum of `N` 16-bit words at `w`, read through a pointer that was
/// bounds checked for all of them at once: a bounds check per packet word
/// compiled to arithmetic on `data_end`, which the verifier refuses
/// ("pointer arithmetic on pkt_end prohibited").
///
/// # Safety
/// `w` valid for `2 * N` bytes and 2-aligned (every header behind the
/// 14-byte Ethernet header is).
#[inline(always)]
unsafe fn sum_words<const N: usize>(w: *const u16) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < N {
        // SAFETY: the caller's promise.
        sum += unsafe { w.add(i).read() } as u32;
        i += 1;
    }
    sum
}

/// The sum of an IPv4 header's ten words (no options).
///
/// # Safety
/// `ip` points at a bounds-checked `Ipv4Hdr`.
#[inline(always)]
unsafe fn header_sum(ip: *const Ipv4Hdr) -> u32 {
    // SAFETY: the caller's promise.
    unsafe { sum_words::<{ size_of::<Ipv4Hdr>() / 2 }>(ip.cast()) }
}

/// The ICMP message we build: header and quote.
const ICMP4_MSG: usize = ICMP_LEN + size_of::<Ipv4Hdr>() + 8;
const ICMP6_MSG: usize = ICMP_LEN + size_of::<Ipv6Hdr>() + 8;

/// The encapsulated packet would exceed the path MTU (`room` is the largest
/// inner packet that fits). XDP cannot fragment, and passing the packet to
/// the kernel would deliver it to the VIP's local owner, so: when the client
/// said not to fragment (IPv4 DF; IPv6 never fragments on the way), turn the
/// packet into the ICMP error a router would send (RFC 1191 section 4: "Datagram
/// Too Big" with the next-hop MTU; RFC 8201 / RFC 4443 3.2 "Packet Too Big"),
/// from the VIP to the client, which lowers its path MTU for the VIP and
/// resends smaller (Linux: tcp_v4_mtu_reduced / tcp_v6_mtu_reduced). Else
/// drop it, counted. Katran answers the same way.
#[inline(never)]
fn too_big(ctx: &XdpContext, p: &Parsed, room: u16) -> Verdict {
    match too_big_inner(ctx, p, room) {
        Ok(true) => Verdict {
            action: xdp_action::XDP_TX,
            reason: Reason::TxTooBig,
            backend: None,
        },
        Ok(false) => Verdict::drop(Reason::DropEncapTooBig),
        Err(()) => Verdict::drop(Reason::DropAdjustFailed),
    }
}

#[inline(always)]
fn too_big_inner(ctx: &XdpContext, p: &Parsed, room: u16) -> Result<bool, ()> {
    let v4 = p.key.family == FAMILY_V4;
    let l3_off = p.l3_off & 0xff;
    // The quote: the offending packet's IP header and the first 8 bytes of
    // its payload (RFC 792; RFC 1191 and the Linux receivers, icmp_unreach
    // and icmpv6_notify, need no more: the 8 bytes hold the ports and the
    // TCP sequence number the receiver checks). RFC 4443 asks for "as much
    // as possible" within 1280 bytes; 48 is within it and is what Linux
    // reads.
    let (ip_len, quote) = if v4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off)?;
        // SAFETY: bounds checked.
        let (ver_ihl, frag_off) = unsafe { ((*ip).ver_ihl, (*ip).frag_off) };
        // IPv4 options in the client's header (rare on TCP) would make the
        // quote's length variable, which the checksum's read cannot be:
        // such packets are dropped like non-DF ones.
        if frag_off & IP_DF == 0 || ver_ihl != 0x45 {
            return Ok(false);
        }
        (size_of::<Ipv4Hdr>(), size_of::<Ipv4Hdr>() + 8)
    } else {
        (size_of::<Ipv6Hdr>(), size_of::<Ipv6Hdr>() + 8)
    };
    // The MACs, to send the answer back where the packet came from.
    let mut macs = [0u16; 6];
    {
        let eth: *const EthHdr = ptr_at(ctx, 0)?;
        // SAFETY: bounds checked; 2-aligned (frame start, stack array).
        unsafe { mem::copy_u16s::<6>(macs.as_mut_ptr().cast(), eth.cast()) };
    }
    // Cut the packet after the quote (the parser saw at least an 8-byte
    // L4 header past the IP header), then make room in front of it for
    // Ethernet, the new IP header and the ICMP header.
    let cur = (ctx.data_end() - ctx.data()) as i32;
    let keep = (l3_off + quote) as i32;
    if cur > keep {
        // SAFETY: ctx is the program's context; a negative delta shrinks.
        if unsafe { aya_ebpf::helpers::bpf_xdp_adjust_tail(ctx.ctx, keep - cur) } != 0 {
            return Err(());
        }
    }
    let grow = (ETH_LEN + ip_len + ICMP_LEN) as i32 - l3_off as i32;
    // SAFETY: as for `encap_inner`.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(());
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked; `macs` holds destination then source.
    unsafe {
        mem::copy_mac(&raw mut (*eth).dst, macs[3..].as_ptr().cast());
        mem::copy_mac(&raw mut (*eth).src, macs.as_ptr().cast());
    }
    let icmp_off = ETH_LEN + ip_len;
    let icmp_len = (ICMP_LEN + quote) as u16;
    let icmp: *mut [u16; 4] = ptr_at(ctx, icmp_off)?;
    let sum;
    if v4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: bounds checked; the addresses come from the flow key
        // (scratch map, 8-aligned): from the VIP back to the client.
        unsafe {
            (*eth).proto = ETH_P_IP;
            (*ip).ver_ihl = 0x45;
            (*ip).tos = TOS_INTERNETWORK_CONTROL;
            (*ip).tot_len = (ip_len as u16 + icmp_len).to_be();
            (*ip).id = 0;
            (*ip).frag_off = 0;
            (*ip).ttl = OUTER_TTL;
            (*ip).proto = PROTO_ICMP;
            (*ip).check = 0;
            mem::copy_u16s::<2>((*ip).saddr.as_mut_ptr(), p.key.daddr.as_ptr());
            mem::copy_u16s::<2>((*ip).daddr.as_mut_ptr(), p.key.saddr.as_ptr());
            (*ip).check = !csum::fold(header_sum(ip));
            (*icmp)[0] = u16::from_ne_bytes([ICMP_UNREACH, ICMP_FRAG_NEEDED]);
            (*icmp)[1] = 0;
            (*icmp)[2] = 0;
            (*icmp)[3] = room.to_be();
            let msg: *const [u16; ICMP4_MSG / 2] = ptr_at(ctx, icmp_off)?;
            sum = sum_words::<{ ICMP4_MSG / 2 }>(msg.cast());
        }
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: as above.
        unsafe {
            (*eth).proto = ETH_P_IPV6;
            (*ip).ver_tc_flow = [0x60, 0, 0, 0];
            (*ip).payload_len = icmp_len.to_be();
            (*ip).nexthdr = PROTO_ICMPV6;
            (*ip).hop_limit = OUTER_TTL;
            mem::copy_u16s::<8>((*ip).saddr.as_mut_ptr(), p.key.daddr.as_ptr());
            mem::copy_u16s::<8>((*ip).daddr.as_mut_ptr(), p.key.saddr.as_ptr());
            (*icmp)[0] = u16::from_ne_bytes([ICMPV6_TOO_BIG, 0]);
            (*icmp)[1] = 0;
            // The MTU field is 32 bits; `room` fits the low half.
            (*icmp)[2] = 0;
            (*icmp)[3] = room.to_be();
            // ICMPv6's checksum also covers the pseudo-header (RFC 8200
            // section 8.1): both addresses (from the flow key, not the
            // packet), the upper-layer length and the next header.
            let msg: *const [u16; ICMP6_MSG / 2] = ptr_at(ctx, icmp_off)?;
            sum = sum_words::<{ ICMP6_MSG / 2 }>(msg.cast())
                + sum_words::<8>(p.key.saddr.as_ptr().cast())
                + sum_words::<8>(p.key.daddr.as_ptr().cast())
                + icmp_len.to_be() as u32
                + (PROTO_ICMPV6 as u16).to_be() as u32;
        }
    }
    // ICMP's checksum covers the ICMP message (RFC 792).
    let icmp: *mut [u16; 4] = ptr_at(ctx, icmp_off)?;
    // SAFETY: bounds checked.
    unsafe { (*icmp)[1] = !csum::fold(sum) };
    Ok(true)
}
