//! One header walk with a bounds-checked cursor: Ethernet, one 802.1Q tag, IPv4
//! (IHL honoured, options allowed) or IPv6 (fixed header), then TCP or UDP,
//! each header inside the length the header before it states.
//! "Not ours" is a verdict (`Err(Reason::Pass*)`), never a fault.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use vip_common::{ConnKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, Reason};

use crate::mem;

pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_IPV6: u16 = 0x86ddu16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

// Header layouts. Fields are u8 arrays or u16 so the structs need only 2-byte
// alignment, which every header has behind a 14- or 18-byte Ethernet header.

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
pub struct VlanHdr {
    pub tci: u16,
    pub proto: u16,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}

#[repr(C)]
pub struct Ipv6Hdr {
    pub ver_tc_flow: [u8; 4],
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

#[repr(C)]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: [u8; 4],
    pub ack_seq: [u8; 4],
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

/// Every header offset we use is below this (18 bytes of Ethernet and VLAN, 60
/// of IPv4 header).
pub const MAX_OFF: usize = 0xff;

/// Returns a pointer to a `T` at `off` if it lies wholly inside the packet.
/// The offset is masked to `MAX_OFF`: offsets read back from the scratch map
/// are unknown scalars to the verifier, which refuses unbounded packet
/// arithmetic; the mask bounds them (and changes none we use).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    let off = off & MAX_OFF;
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *mut T)
}

/// What the walk found. Offsets are from the start of the frame. It lives in
/// the per-CPU `SCRATCH` map, not on the stack: the BPF stack is 512 bytes for
/// the whole call chain, and LLVM spreads a byte-array key over many stack
/// slots when it can see the whole value.
#[repr(C)]
pub struct Parsed {
    pub l3_off: usize,
    pub l4_off: usize,
    /// The flow as the client sent it (addresses and ports as on the wire).
    pub key: ConnKey,
    pub tcp_flags: u8,
}

// `fill` writes the key's addresses in u16 and u32 words: the key must sit
// at a multiple of 8 in `Parsed` (map values themselves are 8-aligned).
const _: () = assert!(core::mem::offset_of!(Parsed, key) % 8 == 0);

/// The first pass of the walk: offsets, protocol and ports only, all in
/// registers. Most traffic that is not ours is turned away on its ports alone,
/// before anything is copied (see `fill`).
pub struct Headers {
    pub l3_off: usize,
    pub l4_off: usize,
    pub family: u8,
    pub proto: u8,
    pub sport_be: u16,
    pub dport_be: u16,
    pub tcp_flags: u8,
}

#[inline(always)]
pub fn headers(ctx: &XdpContext) -> Result<Headers, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0).map_err(|()| Reason::PassMalformed)?;
    // SAFETY: bounds checked by ptr_at.
    let mut proto = unsafe { (*eth).proto };
    let mut l3_off = size_of::<EthHdr>();
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(ctx, l3_off).map_err(|()| Reason::PassMalformed)?;
        // SAFETY: bounds checked.
        proto = unsafe { (*vlan).proto };
        l3_off += size_of::<VlanHdr>();
    }

    // l4_len: the IP payload as the IP header states it (IPv4 Total Length
    // minus the header, IPv6 Payload Length). Bytes past it are Ethernet
    // padding, never part of a header.
    let (family, l4proto, l4_off, l4_len);
    if proto == ETH_P_IP {
        let ip: *const Ipv4Hdr = ptr_at(ctx, l3_off).map_err(|()| Reason::PassMalformed)?;
        // SAFETY: bounds checked for the fixed 20 bytes.
        let (ver_ihl, frag_off, p, tot_len) = unsafe {
            (
                (*ip).ver_ihl,
                (*ip).frag_off,
                (*ip).proto,
                u16::from_be((*ip).tot_len),
            )
        };
        let ihl = (ver_ihl & 0x0f) as usize * 4;
        // The frame must hold what the header claims (Ethernet padding may add
        // more, never less).
        let frame = ctx.data_end() - ctx.data();
        if ver_ihl >> 4 != 4
            || ihl < 20
            || (tot_len as usize) < ihl
            || l3_off + tot_len as usize > frame
        {
            return Err(Reason::PassMalformed);
        }
        // More-fragments set or a non-zero offset: L4 ports are not (all) here.
        if frag_off & 0x3fffu16.to_be() != 0 {
            return Err(Reason::PassFragment);
        }
        if p != PROTO_TCP && p != PROTO_UDP {
            return Err(Reason::PassNotL4);
        }
        family = FAMILY_V4;
        l4proto = p;
        l4_off = l3_off + ihl;
        l4_len = tot_len as usize - ihl;
    } else if proto == ETH_P_IPV6 {
        let ip: *const Ipv6Hdr = ptr_at(ctx, l3_off).map_err(|()| Reason::PassMalformed)?;
        // SAFETY: bounds checked.
        let (ver, nexthdr, plen) = unsafe {
            (
                (*ip).ver_tc_flow[0] >> 4,
                (*ip).nexthdr,
                u16::from_be((*ip).payload_len) as usize,
            )
        };
        let frame = ctx.data_end() - ctx.data();
        if ver != 6 || l3_off + size_of::<Ipv6Hdr>() + plen > frame {
            return Err(Reason::PassMalformed);
        }
        if nexthdr != PROTO_TCP && nexthdr != PROTO_UDP {
            // Hop-by-hop, routing, fragment, destination options, ESP, ... are
            // left to the kernel; ICMPv6 and others are simply not ours.
            return Err(if is_ipv6_ext(nexthdr) {
                Reason::PassIpv6ExtHeader
            } else {
                Reason::PassNotL4
            });
        }
        family = FAMILY_V6;
        l4proto = nexthdr;
        l4_off = l3_off + size_of::<Ipv6Hdr>();
        l4_len = plen;
    } else {
        return Err(Reason::PassNotIp);
    }

    // The L4 header must lie inside the IP payload, not merely inside the
    // frame: a segment cut by the IP length with padding behind it, a TCP
    // Data Offset past the segment (RFC 9293 3.1) or a UDP Length past the
    // payload (RFC 768) is malformed, and Linux drops it (tcp_v4_rcv,
    // __udp4_lib_rcv "short packet"). Forwarding it, or answering it with an
    // RST, would act on bytes that are no header. Found by the differential
    // fuzz (tests/tests/datapath.rs fuzz_differential_parser).
    let (sport_be, dport_be, tcp_flags);
    if l4proto == PROTO_TCP {
        if l4_len < size_of::<TcpHdr>() {
            return Err(Reason::PassMalformed);
        }
        let tcp: *const TcpHdr = ptr_at(ctx, l4_off).map_err(|()| Reason::PassMalformed)?;
        // SAFETY: bounds checked.
        unsafe {
            let doff = ((*tcp).doff_res >> 4) as usize * 4;
            if doff < size_of::<TcpHdr>() || doff > l4_len {
                return Err(Reason::PassMalformed);
            }
            sport_be = (*tcp).source;
            dport_be = (*tcp).dest;
            tcp_flags = (*tcp).flags;
        }
    } else {
        if l4_len < size_of::<UdpHdr>() {
            return Err(Reason::PassMalformed);
        }
        let udp: *const UdpHdr = ptr_at(ctx, l4_off).map_err(|()| Reason::PassMalformed)?;
        // SAFETY: bounds checked.
        unsafe {
            // Shorter than the payload is allowed (the kernel trims); zero
            // means a jumbogram only behind a hop-by-hop header (RFC 2675),
            // which never reaches here.
            let len = u16::from_be((*udp).len) as usize;
            if len < size_of::<UdpHdr>() || len > l4_len {
                return Err(Reason::PassMalformed);
            }
            sport_be = (*udp).source;
            dport_be = (*udp).dest;
        }
        tcp_flags = 0;
    }
    Ok(Headers {
        l3_off,
        l4_off,
        family,
        proto: l4proto,
        sport_be,
        dport_be,
        tcp_flags,
    })
}

/// The second pass, for traffic that may be ours: the full flow key.
#[inline(always)]
pub fn fill(ctx: &XdpContext, h: &Headers, out: &mut Parsed) -> Result<(), Reason> {
    let key = &mut out.key;
    key.family = h.family;
    key.proto = h.proto;
    key.sport_be = h.sport_be;
    key.dport_be = h.dport_be;
    key._pad = [0; 2];
    // Word by word (`mem`): array assignments would call byte-loop
    // subprograms. The key lies in the per-CPU scratch map at an offset of
    // 16 (asserted below `Parsed`), whose values the kernel aligns to 8
    // bytes; the header's address fields are u16-aligned (see the layouts).
    let (ks, kd) = (key.saddr.as_mut_ptr(), key.daddr.as_mut_ptr());
    if h.family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = ptr_at(ctx, h.l3_off).map_err(|()| Reason::PassMalformed)?;
        // SAFETY: bounds checked; alignment as above.
        unsafe {
            mem::copy_u16s::<2>(ks, (*ip).saddr.as_ptr());
            mem::copy_u16s::<2>(kd, (*ip).daddr.as_ptr());
            mem::zero_u32s::<3>(ks.add(4));
            mem::zero_u32s::<3>(kd.add(4));
        }
    } else {
        let ip: *const Ipv6Hdr = ptr_at(ctx, h.l3_off).map_err(|()| Reason::PassMalformed)?;
        // SAFETY: as above.
        unsafe {
            mem::copy_u16s::<8>(ks, (*ip).saddr.as_ptr());
            mem::copy_u16s::<8>(kd, (*ip).daddr.as_ptr());
        }
    }
    out.l3_off = h.l3_off;
    out.l4_off = h.l4_off;
    out.tcp_flags = h.tcp_flags;
    Ok(())
}

/// IPv6 extension headers (RFC 8200 section 4, and IANA's list).
#[inline(always)]
fn is_ipv6_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}
