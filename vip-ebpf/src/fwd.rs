//! Packet rewrites that send a packet on: the dsr MAC rewrite and the TCP RST
//! answer built in place from the offending segment.

use core::mem::size_of;

use aya_ebpf::{helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use vip_common::{FAMILY_V4, PROTO_TCP};

use crate::{
    csum,
    parse::{EthHdr, Ipv4Hdr, Ipv6Hdr, Parsed, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, ptr_at},
};

/// Hop limit of the RSTs we originate (a fresh packet, RFC 1700's default TTL).
const RST_TTL: u8 = 64;

#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> Result<(), ()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked.
    unsafe { core::mem::swap(&mut (*eth).dst, &mut (*eth).src) };
    Ok(())
}

/// Mode dsr: send the unchanged IP packet to the backend's MAC. The new source
/// MAC is the one the client sent to, i.e. ours on this interface.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, backend_mac: &[u8; 6]) -> Result<(), ()> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked.
    unsafe {
        (*eth).src = (*eth).dst;
        (*eth).dst = *backend_mac;
    }
    Ok(())
}

/// Turns the TCP segment in `ctx` into the RST that RFC 9293 section 3.10.7.1
/// prescribes for a segment that reaches no connection, addressed back to its
/// sender: if the segment had ACK, <SEQ=SEG.ACK><CTL=RST>, otherwise
/// <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>. Payload and TCP options are cut
/// off; IPv4 options are kept (echoing them is harmless, moving them is not).
// A BPF subprogram of its own (not inlined): the verifier counts the stack of
// nested frames only, so rarely used paths keep the hot path's frame small.
#[inline(never)]
pub fn rst(ctx: &XdpContext, p: &Parsed) -> Result<(), ()> {
    let l4_off = p.l4_off;
    let tcp: *mut TcpHdr = ptr_at(ctx, l4_off)?;
    // SAFETY: bounds checked (the parser checked the same range).
    let (seq, ack, flags, doff) = unsafe {
        (
            u32::from_be_bytes((*tcp).seq),
            u32::from_be_bytes((*tcp).ack_seq),
            (*tcp).flags,
            ((*tcp).doff_res >> 4) as u32 * 4,
        )
    };
    if flags & TCP_RST != 0 {
        // Never answer an RST with an RST (RFC 9293 section 3.10.7.1).
        return Err(());
    }
    // SEG.LEN: payload plus one for SYN and one for FIN.
    let ip_payload = if p.key.family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, p.l3_off)?;
        // SAFETY: bounds checked.
        let (tot, ihl) = unsafe {
            (
                u16::from_be((*ip).tot_len) as u32,
                ((*ip).ver_ihl & 0x0f) as u32 * 4,
            )
        };
        tot.saturating_sub(ihl)
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, p.l3_off)?;
        // SAFETY: bounds checked.
        unsafe { u16::from_be((*ip).payload_len) as u32 }
    };
    let mut seg_len = ip_payload.saturating_sub(doff);
    if flags & TCP_SYN != 0 {
        seg_len += 1;
    }
    if flags & TCP_FIN != 0 {
        seg_len += 1;
    }
    let (out_seq, out_ack, out_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        (0, seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };

    // Cut everything after a 20-byte TCP header.
    let new_len = (l4_off + size_of::<TcpHdr>()) as i64;
    let cur_len = (ctx.data_end() - ctx.data()) as i64;
    if cur_len > new_len {
        // SAFETY: ctx is the program's context; a negative delta shrinks the tail.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, (new_len - cur_len) as i32) } != 0 {
            return Err(());
        }
    }
    swap_macs(ctx)?;

    let tcp: *mut TcpHdr = ptr_at(ctx, l4_off)?;
    let mut pseudo = 0u32;
    if p.key.family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = ptr_at(ctx, p.l3_off)?;
        // SAFETY: bounds checked after the tail adjustment.
        unsafe {
            let ihl = ((*ip).ver_ihl & 0x0f) as u16 * 4;
            let old_len = (*ip).tot_len;
            let new_len = (ihl + size_of::<TcpHdr>() as u16).to_be();
            let old_ttl_proto = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
            let new_ttl_proto = u16::from_ne_bytes([RST_TTL, PROTO_TCP]);
            let mut check = csum::update16((*ip).check, old_len, new_len);
            check = csum::update16(check, old_ttl_proto, new_ttl_proto);
            // Swapping source and destination leaves the checksum unchanged.
            core::mem::swap(&mut (*ip).saddr, &mut (*ip).daddr);
            (*ip).tot_len = new_len;
            (*ip).ttl = RST_TTL;
            (*ip).check = check;
        }
        // Source and destination addresses: 4 words from byte 12.
        pseudo += sum_packet_words::<16>(ctx, p.l3_off + 12, 4)?;
    } else {
        let ip: *mut Ipv6Hdr = ptr_at(ctx, p.l3_off)?;
        // SAFETY: bounds checked after the tail adjustment.
        unsafe {
            core::mem::swap(&mut (*ip).saddr, &mut (*ip).daddr);
            (*ip).payload_len = (size_of::<TcpHdr>() as u16).to_be();
            (*ip).hop_limit = RST_TTL;
        }
        // Source and destination addresses: 16 words from byte 8.
        pseudo += sum_packet_words::<16>(ctx, p.l3_off + 8, 16)?;
    }
    // Pseudo-header protocol and TCP length (RFC 9293 section 3.1; RFC 8200
    // section 8.1 for IPv6), as big-endian 16-bit words.
    pseudo += (PROTO_TCP as u16).to_be() as u32 + (size_of::<TcpHdr>() as u16).to_be() as u32;

    // SAFETY: bounds checked after the tail adjustment.
    unsafe {
        core::mem::swap(&mut (*tcp).source, &mut (*tcp).dest);
        (*tcp).seq = out_seq.to_be_bytes();
        (*tcp).ack_seq = out_ack.to_be_bytes();
        (*tcp).doff_res = 5 << 4;
        (*tcp).flags = out_flags;
        (*tcp).window = 0;
        (*tcp).check = 0;
        (*tcp).urg_ptr = 0;
    }
    let hdr = sum_packet_words::<16>(ctx, l4_off, size_of::<TcpHdr>() / 2)?;
    // SAFETY: bounds checked after the tail adjustment.
    unsafe {
        (*tcp).check = !csum::fold(pseudo + hdr);
    }
    Ok(())
}

/// Sum of `n` (at most `MAX`) 16-bit words of the packet from `off`, read in
/// place: copying headers into arrays first costs stack the verifier counts.
/// `MAX` bounds the loop for the verifier.
#[inline(always)]
pub fn sum_packet_words<const MAX: usize>(
    ctx: &XdpContext,
    off: usize,
    n: usize,
) -> Result<u32, ()> {
    let mut sum = 0u32;
    for i in 0..MAX {
        if i >= n {
            break;
        }
        let w: *const u16 = ptr_at(ctx, off + i * 2)?;
        // SAFETY: bounds checked.
        sum += unsafe { *w } as u32;
    }
    Ok(sum)
}
