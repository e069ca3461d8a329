//! The wire layouts the transport reads and writes around the VRRP message:
//! the IPv4 header we send, the IPv4 header we strip, and the control
//! messages `recvmsg` and `sendmsg` carry. Pure functions, tested without
//! sockets (`tests.rs`, `proptests`).

use super::*;

/// The IPv4 header of an outgoing advertisement (RFC 791 section 3.1), with
/// the values RFC 9568 section 5.1.1 asks for:
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |Version|  IHL  |Type of Service|          Total Length         |
/// |   4   |   5   |     0xc0      |                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |         Identification        |Flags|      Fragment Offset    |
/// |               0               |  0  |            0            |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Time to Live |    Protocol   |         Header Checksum       |
/// |      255      |      112      |                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                       Source Address                          |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                    Destination Address                        |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// DF is clear (an advertisement is far below any MTU). With IP_HDRINCL the
/// kernel rewrites Total Length and the checksum and picks an Identification
/// when it is 0 (raw_send_hdrinc); we fill them anyway so the header is
/// correct as written.
pub(crate) fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, total_len: u16) -> [u8; IPV4_HEADER_LEN] {
    let mut h = [0u8; IPV4_HEADER_LEN];
    h[0] = 0x45;
    h[1] = TOS_NETWORK_CONTROL;
    h[2..4].copy_from_slice(&total_len.to_be_bytes());
    h[8] = TTL;
    h[9] = IPPROTO_VRRP as u8;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let sum = internet_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

/// What the receive checks need from the IPv4 header of a received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ipv4Fields {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// Where the VRRP message is in the packet.
    pub payload: Range<usize>,
}

/// Reads the header an IPv4 raw socket delivers in front of the payload.
/// The payload starts after IHL * 4 bytes (options included) and ends at
/// Total Length; `None` for anything shorter than it claims.
pub(crate) fn parse_ipv4(packet: &[u8]) -> Option<Ipv4Fields> {
    let fixed: &[u8; IPV4_HEADER_LEN] = packet.get(..IPV4_HEADER_LEN)?.try_into().ok()?;
    if fixed[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(fixed[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
    if header_len < IPV4_HEADER_LEN || total_len < header_len || total_len > packet.len() {
        return None;
    }
    Some(Ipv4Fields {
        src: Ipv4Addr::new(fixed[12], fixed[13], fixed[14], fixed[15]),
        dst: Ipv4Addr::new(fixed[16], fixed[17], fixed[18], fixed[19]),
        ttl: fixed[8],
        payload: header_len..total_len,
    })
}

/// Room for IPV6_PKTINFO and IPV6_HOPLIMIT with their headers, twice over.
pub(crate) const CMSG_BUF: usize = 128;

/// Control-message buffer, aligned like `struct cmsghdr`.
#[repr(C, align(8))]
pub(crate) struct CmsgBuf(pub(crate) [u8; CMSG_BUF]);

/// Control messages as the kernel lays them out (include/linux/socket.h):
///
/// ```text
/// +----------------------+-----------+----------+---------+-----+
/// | cmsg_len (size_t)    | level int | type int | data... | pad |
/// +----------------------+-----------+----------+---------+-----+
///  <------- CMSG_HDR, aligned to sizeof(long) ------->
///  <-------------- cmsg_len ------------------------->
///  <-------------- CMSG_ALIGN(cmsg_len) ------------------------>
/// ```
pub(crate) const CMSG_ALIGN_TO: usize = mem::size_of::<usize>();
pub(crate) const fn cmsg_align(len: usize) -> usize {
    (len + CMSG_ALIGN_TO - 1) & !(CMSG_ALIGN_TO - 1)
}
pub(crate) const CMSG_HDR: usize = cmsg_align(mem::size_of::<libc::cmsghdr>());
pub(crate) const LEVEL_AT: usize = mem::size_of::<usize>();
pub(crate) const TYPE_AT: usize = LEVEL_AT + mem::size_of::<c_int>();
/// struct in6_pktinfo: 16-byte address, then the interface index.
pub(crate) const PKTINFO_LEN: usize = mem::size_of::<libc::in6_pktinfo>();

/// The control messages of one received IPv6 datagram we care about.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct V6Info {
    pub dst: Option<Ipv6Addr>,
    pub hop_limit: Option<u8>,
}

/// Walks the control messages `recvmsg` filled in; a message that does not
/// fit ends the walk, unknown ones are passed over.
pub(crate) fn parse_cmsgs_v6(control: &[u8]) -> V6Info {
    let mut info = V6Info::default();
    let mut at = 0;
    while let Some(header) = control.get(at..at + CMSG_HDR) {
        let word = |i: usize| -> Option<[u8; 4]> { header.get(i..i + 4)?.try_into().ok() };
        let (Some(len), Some(level), Some(ty)) = (
            header
                .get(..LEVEL_AT)
                .and_then(|b| b.try_into().ok())
                .map(usize::from_ne_bytes),
            word(LEVEL_AT).map(c_int::from_ne_bytes),
            word(TYPE_AT).map(c_int::from_ne_bytes),
        ) else {
            break;
        };
        // checked_add: `len` is a word from the buffer; near usize::MAX it
        // would overflow the offset (a panic in debug builds, found by
        // proptests::cmsg_lengths_edited) rather than end the walk.
        let Some(data) = (len >= CMSG_HDR)
            .then(|| control.get(at + CMSG_HDR..at.checked_add(len)?))
            .flatten()
        else {
            break;
        };
        if level == libc::IPPROTO_IPV6 {
            match ty {
                // RFC 3542 section 6.3: an int.
                libc::IPV6_HOPLIMIT => {
                    info.hop_limit = data
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map(c_int::from_ne_bytes)
                        .and_then(|h| u8::try_from(h).ok());
                }
                libc::IPV6_PKTINFO => {
                    info.dst = data
                        .get(..16)
                        .and_then(|b| <[u8; 16]>::try_from(b).ok())
                        .map(Ipv6Addr::from);
                }
                _ => {}
            }
        }
        at += cmsg_align(len);
    }
    info
}

/// Writes an IPV6_PKTINFO control message (source address and outgoing
/// interface, RFC 3542 section 6.1) at the start of `control`; returns the
/// length to put in msg_controllen (CMSG_SPACE), 0 if it does not fit.
pub(crate) fn write_pktinfo_cmsg(control: &mut [u8], source: Ipv6Addr, ifindex: u32) -> usize {
    let len = CMSG_HDR + PKTINFO_LEN;
    let space = cmsg_align(len);
    let Some(out) = control.get_mut(..space) else {
        return 0;
    };
    out.fill(0);
    out[..LEVEL_AT].copy_from_slice(&len.to_ne_bytes());
    out[LEVEL_AT..TYPE_AT].copy_from_slice(&libc::IPPROTO_IPV6.to_ne_bytes());
    out[TYPE_AT..TYPE_AT + 4].copy_from_slice(&libc::IPV6_PKTINFO.to_ne_bytes());
    out[CMSG_HDR..CMSG_HDR + 16].copy_from_slice(&source.octets());
    out[CMSG_HDR + 16..CMSG_HDR + 20].copy_from_slice(&ifindex.to_ne_bytes());
    space
}
