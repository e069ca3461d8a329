//! The backend's side of mode dsr across subnets, for kernels without the
//! tunnel drivers (no `ipip` / `ip6_tunnel`, e.g. CONFIG_NET_IPIP unset):
//! strips the outer header of IPv4 in IPv4 (protocol 4) and IPv6 in IPv6
//! (next header 41) packets and passes the inner packet to the stack, which
//! finds the VIP on `lo` and answers the client directly. With the drivers,
//! `tunl0` / `ip6tnl0` do the same and this is not needed.
//!
//! It decapsulates every such packet that arrives on the interface it is
//! attached to, whatever the outer addresses: attach it only on a backend
//! that expects them.

use core::mem::size_of;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use vip_common::{FAMILY_V4, FAMILY_V6, MAX_NAT_OWNERS, PROTO_IPIP, PROTO_IPV6};

use crate::{
    maps::NAT_OWNERS,
    mem,
    parse::{ETH_P_IP, ETH_P_IPV6, EthHdr, Ipv4Hdr, Ipv6Hdr, ptr_at},
};

#[inline(always)]
pub fn decap(ctx: &XdpContext) -> u32 {
    match try_decap(ctx) {
        Ok(()) | Err(()) => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<(), ()> {
    let (proto, olen) = outer(ctx)?;
    strip(ctx, proto, olen)
}

/// Mode nat with port slices, the owner's side of `encap::handoff`: a
/// packet encapsulated by a peer LB listed in `NAT_OWNERS` (outer source
/// its address, outer destination ours towards it) is unwrapped here, and
/// the caller takes the inner packet as a handed reply (`lb::handed_reply`).
/// Any other tunnelled packet is left alone (false), for the kernel.
/// Reached only by packets that are neither TCP nor UDP.
#[inline(never)]
pub fn take_handoff(ctx: &XdpContext) -> bool {
    let Ok((proto, olen)) = outer(ctx) else {
        return false;
    };
    let off = size_of::<EthHdr>();
    let v4 = proto == ETH_P_IP;
    let mut i = 0;
    while i < MAX_NAT_OWNERS {
        let Some(o) = NAT_OWNERS.get(i) else {
            return false;
        };
        if o.family == 0 {
            return false;
        }
        let ours = if v4 {
            o.family == FAMILY_V4
                && match ptr_at::<Ipv4Hdr>(ctx, off) {
                    // SAFETY: bounds checked; header addresses are
                    // 2-aligned behind Ethernet, map values 8-aligned.
                    Ok(ip) => unsafe {
                        mem::eq_u16s::<2>((*ip).saddr.as_ptr(), o.addr.as_ptr())
                            && mem::eq_u16s::<2>((*ip).daddr.as_ptr(), o.saddr.as_ptr())
                    },
                    Err(()) => false,
                }
        } else {
            o.family == FAMILY_V6
                && match ptr_at::<Ipv6Hdr>(ctx, off) {
                    // SAFETY: as above.
                    Ok(ip) => unsafe {
                        mem::eq_u16s::<8>((*ip).saddr.as_ptr(), o.addr.as_ptr())
                            && mem::eq_u16s::<8>((*ip).daddr.as_ptr(), o.saddr.as_ptr())
                    },
                    Err(()) => false,
                }
        };
        if ours {
            return strip(ctx, proto, olen).is_ok();
        }
        i += 1;
    }
    false
}

/// The outer header of an IPIP / IPv6-in-IPv6 packet as vipd sends it:
/// the EtherType and the outer header's length.
#[inline(always)]
fn outer(ctx: &XdpContext) -> Result<(u16, usize), ()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked.
    let proto = unsafe { (*eth).proto };
    let off = size_of::<EthHdr>();
    let olen = if proto == ETH_P_IP {
        let ip: *const Ipv4Hdr = ptr_at(ctx, off)?;
        // SAFETY: bounds checked. Only what vipd sends: no options, not a
        // fragment (an IPIP fragment needs reassembly first: the kernel's).
        let ours = unsafe {
            (*ip).ver_ihl == 0x45
                && (*ip).proto == PROTO_IPIP
                && (*ip).frag_off & 0x3fffu16.to_be() == 0
        };
        if !ours {
            return Err(());
        }
        size_of::<Ipv4Hdr>()
    } else if proto == ETH_P_IPV6 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, off)?;
        // SAFETY: bounds checked.
        if unsafe { (*ip).nexthdr } != PROTO_IPV6 {
            return Err(());
        }
        size_of::<Ipv6Hdr>()
    } else {
        return Err(());
    };
    Ok((proto, olen))
}

/// Drops the outer header (`olen` bytes after Ethernet); the frame keeps
/// its Ethernet addresses and EtherType `proto`.
#[inline(always)]
fn strip(ctx: &XdpContext, proto: u16, olen: usize) -> Result<(), ()> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // The Ethernet addresses move forward over the outer header; the
    // EtherType stays (same family inside and out).
    let mut macs = [0u16; 6];
    // SAFETY: bounds checked above; 2-aligned.
    unsafe { mem::copy_u16s::<6>(macs.as_mut_ptr().cast(), eth.cast()) };
    // SAFETY: ctx is the program's context; a positive delta drops the
    // outer header's bytes from the front.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, olen as i32) } != 0 {
        return Err(());
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds checked after the adjustment.
    unsafe {
        mem::copy_u16s::<6>(eth.cast(), macs.as_ptr().cast());
        (*eth).proto = proto;
    }
    Ok(())
}
