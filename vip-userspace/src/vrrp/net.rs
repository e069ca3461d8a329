//! The VRRP transport: raw IP protocol 112 sockets bound to one interface
//! (RFC 9568 section 5.1), and the source address VRRP sends from. The
//! interface's own facts (index, MAC, link state, addresses) are
//! [`crate::link`]'s.
//!
//! The wire layouts (the IPv4 header we send, the IPv4 header we strip, the
//! control messages `recvmsg` hands back) are small pure functions in
//! `wire`, tested without sockets; the system calls shared with `announce`
//! are in `sys`.

use std::ffi::{c_int, c_void};
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use thiserror::Error;
use tokio::io::unix::AsyncFd;

mod sys;
mod wire;

pub(super) use sys::*;
use wire::*;
pub(crate) use wire::{ipv4_header, parse_cmsgs_v6, parse_ipv4};

use crate::csum::internet_checksum;
pub use crate::link::LinkError;
use crate::link::ifindex;

pub use super::packet::{GROUP_V4, GROUP_V6, group};
use super::{
    Family, Received,
    packet::{HOP_LIMIT, PROTO_VRRP},
};

/// IANA protocol number of VRRP (RFC 9568 sections 5.1.1.4 and 5.1.2.4).
pub const IPPROTO_VRRP: c_int = PROTO_VRRP as c_int;
/// TTL / hop limit of every advertisement, multicast or unicast (RFC 9568
/// sections 5.1.1.3 and 5.1.2.3); receivers drop anything else (section 7.1),
/// which proves the sender is on the link.
pub const TTL: u8 = HOP_LIMIT;
/// DSCP CS6 ("network control", RFC 4594), the class keepalived and routers
/// give VRRP so it survives congested links ahead of data traffic.
pub const TOS_NETWORK_CONTROL: u8 = 0xc0;
/// Receive buffer: a VRRPv3 message is at most 8 + 255 * 16 bytes (section
/// 5.2.5 count, IPv6 addresses) plus an IPv4 header with options; a jumbo
/// frame's worth leaves room for anything a link delivers.
const RECV_BUF: usize = 9216;
/// IPv4 header without options (RFC 791).
const IPV4_HEADER_LEN: usize = 20;

/// How advertisements reach the other routers of the virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// To the VRRP group on the link (RFC 9568 section 5.1.1.2 / 5.1.2.2).
    Multicast,
    /// To each listed peer, for links that drop multicast (clouds). Not in
    /// RFC 9568; the packets are otherwise identical (TTL 255 included).
    Unicast(Vec<IpAddr>),
}

#[derive(Debug, Error)]
pub enum NetError {
    /// The interface itself: missing, badly named, not Ethernet.
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(
        "{ifname}: opening a {kind} socket failed; vipd needs CAP_NET_RAW (run it as root or grant the capability)"
    )]
    Socket {
        ifname: String,
        kind: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{ifname}: setting socket option {option} failed; check that the interface still exists (`ip link show {ifname}`) and that the kernel has IPv4/IPv6 enabled"
    )]
    SocketOption {
        ifname: String,
        option: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{ifname}: binding the {kind} socket to the interface failed; check `ip link show {ifname}`"
    )]
    Bind {
        ifname: String,
        kind: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "{ifname}: joining multicast group {group} failed; enable multicast on the link (`ip link set {ifname} multicast on`) or use unicast peers"
    )]
    JoinGroup {
        ifname: String,
        group: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "{ifname}: no IPv4 address besides the VIPs {excluded:?} to send VRRP from; give the interface the node's own address (`ip addr add <address>/<prefix> dev {ifname}`)"
    )]
    NoIpv4Source {
        ifname: String,
        excluded: Vec<IpAddr>,
    },
    #[error(
        "{ifname}: no IPv6 link-local address (RFC 9568 section 5.1.2.1 requires one as the VRRP source); bring the link up (`ip link set {ifname} up`) and enable IPv6 on it (`sysctl net.ipv6.conf.{ifname}.disable_ipv6=0`, addr_gen_mode not `none`)"
    )]
    NoLinkLocal { ifname: String },
    #[error(
        "{ifname}: IPv6 source {source_addr} is not link-local; RFC 9568 section 5.1.2.1 requires the link-local address (see `ip -6 addr show dev {ifname} scope link`)"
    )]
    NotLinkLocal {
        ifname: String,
        source_addr: Ipv6Addr,
    },
    #[error(
        "{ifname}: {addr} is not an {family:?} address; one virtual router uses one address family for its source, peers and VIPs"
    )]
    FamilyMismatch {
        ifname: String,
        family: Family,
        addr: IpAddr,
    },
    #[error(
        "{ifname}: a {len}-byte VRRP message does not fit one IPv4 packet (at most {max}); use fewer VIPs per virtual router"
    )]
    TooLarge {
        ifname: String,
        len: usize,
        max: usize,
    },
    #[error(
        "{ifname}: sending to {dst} failed; check that the link is up, that {dst} is reachable through it (`ip route get {dst} oif {ifname}`) and, for IPv6, that the link-local source is not `tentative` or `dadfailed` (`ip -6 addr show dev {ifname} scope link`)"
    )]
    Send {
        ifname: String,
        dst: IpAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "{ifname}: receiving VRRP failed; check that the interface still exists (`ip link show {ifname}`)"
    )]
    Recv {
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{ifname}: IPv6 is not available in this kernel (booted with ipv6.disable=1?); remove the IPv6 VIPs or enable IPv6"
    )]
    Ipv6Unavailable { ifname: String },
    #[error(
        "{ifname}: socket opened outside a tokio runtime; this is a bug in vipd, please report it"
    )]
    NoRuntime { ifname: String },
}

/// A raw IP protocol 112 socket on one interface, for one address family.
#[derive(Debug)]
pub struct VrrpSocket {
    fd: AsyncFd<OwnedFd>,
    ifname: String,
    ifindex: u32,
    family: Family,
    source: IpAddr,
    /// Unicast transport: group traffic is not for this socket.
    unicast: bool,
}

impl VrrpSocket {
    /// Opens a raw socket for protocol 112 on `ifname` (SO_BINDTODEVICE) that
    /// sends from `source` (see [`source_address`]). Multicast joins the
    /// group on that interface only; unicast receives what peers send to any
    /// of the interface's addresses. Must be called within a tokio runtime.
    pub fn open(
        ifname: &str,
        family: Family,
        source: IpAddr,
        transport: &Transport,
    ) -> Result<VrrpSocket, NetError> {
        check_family(ifname, family, &source)?;
        if let Transport::Unicast(peers) = transport {
            for peer in peers {
                check_family(ifname, family, peer)?;
            }
        }
        if let IpAddr::V6(s) = source
            && !s.is_unicast_link_local()
        {
            return Err(NetError::NotLinkLocal {
                ifname: ifname.to_owned(),
                source_addr: s,
            });
        }
        // Before any socket exists: without a runtime there is nothing to
        // register it with (AsyncFd would panic).
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetError::NoRuntime {
                ifname: ifname.to_owned(),
            });
        }
        let index = ifindex(ifname)?;
        let domain = match family {
            Family::V4 => libc::AF_INET,
            Family::V6 => libc::AF_INET6,
        };
        let fd = socket(domain, libc::SOCK_RAW | libc::SOCK_NONBLOCK, IPPROTO_VRRP)
            .map_err(|e| socket_error(ifname, "raw IP protocol 112", e))?;
        bind_to_device(fd.as_fd(), ifname)?;
        let multicast = matches!(transport, Transport::Multicast);
        match family {
            Family::V4 => setup_v4(fd.as_fd(), ifname, index, multicast)?,
            Family::V6 => setup_v6(fd.as_fd(), ifname, index, multicast)?,
        }
        let fd = register(fd, ifname, "raw IP protocol 112")?;
        Ok(VrrpSocket {
            fd,
            ifname: ifname.to_owned(),
            ifindex: index,
            family,
            source,
            unicast: !multicast,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// The address advertisements leave from (and the VRRP checksum's
    /// pseudo-header must use).
    pub fn source(&self) -> IpAddr {
        self.source
    }

    /// The next VRRP packet. Packets the kernel hands over incomplete (a
    /// truncated IPv4 header, a datagram larger than the buffer, missing
    /// control messages) are skipped, never a panic; everything else is
    /// returned for the receive checks of RFC 9568 section 7.1.
    pub async fn recv(&self) -> Result<Received, NetError> {
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let mut guard = self.fd.readable().await.map_err(|e| self.recv_error(e))?;
            let got = guard.try_io(|fd| match self.family {
                Family::V4 => recv_v4(fd.as_fd(), &mut buf),
                Family::V6 => recv_v6(fd.as_fd(), &mut buf),
            });
            match got {
                // IPv6 raw sockets that are not bound to an address get every
                // multicast packet of their protocol the host accepts, joined
                // or not: raw_v6_match never consults IPV6_MULTICAST_ALL for
                // them. Dropped here so both families behave alike.
                Ok(Ok(Some(received))) if self.unicast && received.dst.is_multicast() => {
                    tracing::debug!(src = %received.src, dst = %received.dst,
                        "multicast VRRP on a unicast socket, skipped");
                    continue;
                }
                Ok(Ok(Some(received))) => return Ok(received),
                // Skipped (logged where the reason is known) or spurious wake-up.
                Ok(Ok(None)) | Err(_) => continue,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(self.recv_error(e)),
            }
        }
    }

    /// Sends one VRRP message (encoded by the codec, checksum included) to
    /// `dst`: the group or a unicast peer.
    ///
    /// IPv4 builds its own header (IP_HDRINCL) so the source is exactly the
    /// one the checksum's pseudo-header used, whatever the routing table
    /// would pick; IPv6 names the link-local source per packet (IPV6_PKTINFO).
    pub async fn send(&self, payload: &[u8], dst: IpAddr) -> Result<(), NetError> {
        check_family(&self.ifname, self.family, &dst)?;
        let packet = match (self.source, dst) {
            (IpAddr::V4(src), IpAddr::V4(d)) => {
                let max = usize::from(u16::MAX) - IPV4_HEADER_LEN;
                let total = u16::try_from(IPV4_HEADER_LEN + payload.len())
                    .ok()
                    .filter(|_| payload.len() <= max)
                    .ok_or_else(|| NetError::TooLarge {
                        ifname: self.ifname.clone(),
                        len: payload.len(),
                        max,
                    })?;
                let mut p = Vec::with_capacity(usize::from(total));
                p.extend_from_slice(&ipv4_header(src, d, total));
                p.extend_from_slice(payload);
                p
            }
            // IPv6 raw sockets never take the IP header from us.
            _ => payload.to_vec(),
        };
        loop {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|e| self.send_error(dst, e))?;
            let sent = guard.try_io(|fd| match (dst, self.source) {
                (IpAddr::V4(d), _) => sendto_v4(fd.as_fd(), &packet, d),
                (IpAddr::V6(d), IpAddr::V6(src)) => {
                    sendmsg_v6(fd.as_fd(), &packet, d, self.ifindex, Some(src))
                }
                // check_family above and in open keep source and dst alike.
                (IpAddr::V6(_), IpAddr::V4(_)) => Err(io::Error::from(io::ErrorKind::InvalidInput)),
            });
            match sent {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Err(self.send_error(dst, e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn recv_error(&self, source: io::Error) -> NetError {
        NetError::Recv {
            ifname: self.ifname.clone(),
            source,
        }
    }

    fn send_error(&self, dst: IpAddr, source: io::Error) -> NetError {
        NetError::Send {
            ifname: self.ifname.clone(),
            dst,
            source,
        }
    }
}

fn check_family(ifname: &str, family: Family, addr: &IpAddr) -> Result<(), NetError> {
    if Family::of(addr) == family {
        Ok(())
    } else {
        Err(NetError::FamilyMismatch {
            ifname: ifname.to_owned(),
            family,
            addr: *addr,
        })
    }
}

fn setup_v4(fd: BorrowedFd<'_>, ifname: &str, index: u32, multicast: bool) -> Result<(), NetError> {
    let opt = |option| move |source| option_error(ifname, option, source);
    let ifindex = c_int::try_from(index).map_err(|_| LinkError::NoInterface {
        ifname: ifname.to_owned(),
    })?;
    // We write the whole IPv4 header on send (`send`). Receiving is
    // unaffected: IPv4 raw sockets always deliver the header.
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_HDRINCL, &1 as &c_int).map_err(opt("IP_HDRINCL"))?;
    // The TTL and TOS the kernel would use if it built the header; with
    // IP_HDRINCL ours wins, these only make the intent visible in `ss -e`.
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_TTL, &c_int::from(TTL)).map_err(opt("IP_TTL"))?;
    setsockopt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MULTICAST_TTL,
        &c_int::from(TTL),
    )
    .map_err(opt("IP_MULTICAST_TTL"))?;
    setsockopt(
        fd,
        libc::IPPROTO_IP,
        libc::IP_TOS,
        &c_int::from(TOS_NETWORK_CONTROL),
    )
    .map_err(opt("IP_TOS"))?;
    // Our own advertisements must not come back to us (ip_mc_output loops a
    // copy to local listeners while mc_loop is set, header-included or not).
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, &0 as &c_int)
        .map_err(opt("IP_MULTICAST_LOOP"))?;
    // Without this, a raw socket receives every group's traffic that any
    // socket on the host joined (ip_mc_sf_allow answers MC_ALL for groups
    // the socket is not a member of).
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, &0 as &c_int)
        .map_err(opt("IP_MULTICAST_ALL"))?;
    let on_link = libc::ip_mreqn {
        imr_multiaddr: in_addr(Ipv4Addr::UNSPECIFIED),
        imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
        imr_ifindex: ifindex,
    };
    setsockopt(fd, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &on_link)
        .map_err(opt("IP_MULTICAST_IF"))?;
    if multicast {
        let join = libc::ip_mreqn {
            imr_multiaddr: in_addr(GROUP_V4),
            ..on_link
        };
        setsockopt(fd, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &join).map_err(|source| {
            NetError::JoinGroup {
                ifname: ifname.to_owned(),
                group: IpAddr::V4(GROUP_V4),
                source,
            }
        })?;
    }
    Ok(())
}

/// An IPv6 socket that speaks only to its link: hop limit 255 unicast and
/// multicast (RFC 9568 5.1.2.3, RFC 4861 7.1.2: receivers drop anything
/// else, which proves the sender is on-link), multicast out of `index`, and
/// no copy of our own multicast back to us (our adverts or NAs would come
/// back as another router's, another holder's).
pub(super) fn on_link_sender_v6(
    fd: BorrowedFd<'_>,
    ifname: &str,
    index: u32,
) -> Result<(), NetError> {
    let opt = |option| move |source| option_error(ifname, option, source);
    let hops = c_int::from(TTL);
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)
        .map_err(opt("IPV6_UNICAST_HOPS"))?;
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)
        .map_err(opt("IPV6_MULTICAST_HOPS"))?;
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &index)
        .map_err(opt("IPV6_MULTICAST_IF"))?;
    setsockopt(
        fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_MULTICAST_LOOP,
        &0 as &c_int,
    )
    .map_err(opt("IPV6_MULTICAST_LOOP"))
}

fn setup_v6(fd: BorrowedFd<'_>, ifname: &str, index: u32, multicast: bool) -> Result<(), NetError> {
    let opt = |option| move |source| option_error(ifname, option, source);
    // IPv6 raw sockets never deliver the IP header: hop limit and
    // destination come as control messages (RFC 3542 sections 6.1, 6.3).
    setsockopt(
        fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_RECVHOPLIMIT,
        &1 as &c_int,
    )
    .map_err(opt("IPV6_RECVHOPLIMIT"))?;
    setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, &1 as &c_int)
        .map_err(opt("IPV6_RECVPKTINFO"))?;
    on_link_sender_v6(fd, ifname, index)?;
    setsockopt(
        fd,
        libc::IPPROTO_IPV6,
        libc::IPV6_TCLASS,
        &c_int::from(TOS_NETWORK_CONTROL),
    )
    .map_err(opt("IPV6_TCLASS"))?;
    // No IPV6_MULTICAST_ALL: raw_v6_match accepts any destination for a
    // socket not bound to an address before it would look at it; `recv`
    // filters group traffic out of unicast sockets instead.
    // No IPV6_CHECKSUM: the kernel then neither fills nor verifies the VRRP
    // checksum (raw6 sockets only do for ICMPv6 or when asked), so the codec
    // computes it on send and counts bad ones on receive (RFC 9568 7.1).
    if multicast {
        let join = libc::ipv6_mreq {
            ipv6mr_multiaddr: in6_addr(GROUP_V6),
            ipv6mr_interface: index,
        };
        setsockopt(fd, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &join).map_err(|source| {
            NetError::JoinGroup {
                ifname: ifname.to_owned(),
                group: IpAddr::V6(GROUP_V6),
                source,
            }
        })?;
    }
    Ok(())
}

fn recv_v4(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Received>> {
    // MSG_TRUNC: the return value is the datagram's real length, so a
    // datagram larger than the buffer is recognised and skipped.
    // SAFETY: buf is valid for writes of buf.len() bytes for the call.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast::<c_void>(),
            buf.len(),
            libc::MSG_TRUNC,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let Some(packet) = buf.get(..n) else {
        tracing::debug!(
            len = n,
            "VRRP datagram larger than the receive buffer, skipped"
        );
        return Ok(None);
    };
    let Some(h) = parse_ipv4(packet) else {
        tracing::debug!(len = n, "truncated or malformed IPv4 header, skipped");
        return Ok(None);
    };
    Ok(Some(Received {
        src: IpAddr::V4(h.src),
        dst: IpAddr::V4(h.dst),
        hop_limit: h.ttl,
        payload: packet.get(h.payload).unwrap_or_default().to_vec(),
    }))
}

fn recv_v6(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Received>> {
    let Some(d) = recvmsg_v6(fd, buf)? else {
        return Ok(None);
    };
    let (Some(dst), Some(hop_limit)) = (d.dst, d.hop_limit) else {
        tracing::debug!(src = %d.src, "IPv6 VRRP packet without hop limit or pktinfo, skipped");
        return Ok(None);
    };
    Ok(Some(Received {
        src: IpAddr::V6(d.src),
        dst: IpAddr::V6(dst),
        hop_limit,
        payload: buf.get(..d.len).unwrap_or_default().to_vec(),
    }))
}

/// One IPv6 datagram as `recvmsg` reported it; the payload is `buf[..len]`.
pub(super) struct Datagram6 {
    pub src: Ipv6Addr,
    pub dst: Option<Ipv6Addr>,
    pub hop_limit: Option<u8>,
    pub len: usize,
}

/// `recvmsg` on an IPv6 raw socket with IPV6_RECVPKTINFO/IPV6_RECVHOPLIMIT
/// set. `Ok(None)` for a datagram cut short (payload or control messages).
pub(super) fn recvmsg_v6(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Datagram6>> {
    // SAFETY: sockaddr_in6 is plain C data; all-zero is a valid value.
    let mut name: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    let mut control = CmsgBuf([0; CMSG_BUF]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<c_void>(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain C data (pointers may be null); all-zero is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw mut name).cast::<c_void>();
    msg.msg_namelen = socklen_of::<libc::sockaddr_in6>();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast::<c_void>();
    // size_t in glibc's msghdr, socklen_t in musl's (the static build):
    // `as _` is whichever this target has; the buffer is CMSG_BUF bytes.
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in msg (name, iov -> buf, control) is valid for
    // writes of the length stated next to it, for the duration of the call.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, 0) };
    let len = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        tracing::debug!(len, "IPv6 datagram or its control data truncated, skipped");
        return Ok(None);
    }
    let controllen: usize = msg.msg_controllen as _;
    let control = control.0.get(..controllen).unwrap_or_default();
    let info = parse_cmsgs_v6(control);
    Ok(Some(Datagram6 {
        src: Ipv6Addr::from(name.sin6_addr.s6_addr),
        dst: info.dst,
        hop_limit: info.hop_limit,
        len,
    }))
}

fn sendto_v4(fd: BorrowedFd<'_>, packet: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    let addr = sockaddr_in(dst);
    // SAFETY: packet and addr are valid for reads of the given lengths for
    // the duration of the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            packet.as_ptr().cast::<c_void>(),
            packet.len(),
            0,
            (&raw const addr).cast::<libc::sockaddr>(),
            socklen_of::<libc::sockaddr_in>(),
        )
    };
    sent_all(n, packet.len())
}

/// Sends `payload` to `dst` on an IPv6 raw socket. With `source`, the packet
/// leaves from exactly that address on `ifindex` (IPV6_PKTINFO, RFC 3542
/// section 6.1) instead of what source selection would pick; the kernel
/// refuses an address that is not ours there (EINVAL/EADDRNOTAVAIL).
///
/// Per packet rather than bind(2): a raw IPv6 socket bound to an address
/// only receives packets addressed to it (raw_v6_match), which would drop
/// unicast advertisements that peers send to one of our global addresses.
pub(super) fn sendmsg_v6(
    fd: BorrowedFd<'_>,
    payload: &[u8],
    dst: Ipv6Addr,
    ifindex: u32,
    source: Option<Ipv6Addr>,
) -> io::Result<()> {
    let scope = if needs_scope(&dst) { ifindex } else { 0 };
    let name = sockaddr_in6(dst, scope);
    let mut iov = libc::iovec {
        // sendmsg never writes through iov_base; the type is shared with recvmsg.
        iov_base: payload.as_ptr().cast_mut().cast::<c_void>(),
        iov_len: payload.len(),
    };
    let mut control = CmsgBuf([0; CMSG_BUF]);
    let control_len = match source {
        Some(src) => write_pktinfo_cmsg(&mut control.0, src, ifindex),
        None => 0,
    };
    // SAFETY: msghdr is plain C data (pointers may be null); all-zero is valid.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&raw const name).cast_mut().cast::<c_void>();
    msg.msg_namelen = socklen_of::<libc::sockaddr_in6>();
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if control_len > 0 {
        msg.msg_control = control.0.as_mut_ptr().cast::<c_void>();
        msg.msg_controllen = control_len as _;
    }
    // SAFETY: name, iov -> payload and control are valid for reads of the
    // lengths stated in msg for the duration of the call; sendmsg does not
    // write through them.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &raw const msg, 0) };
    sent_all(n, payload.len())
}

fn sent_all(n: isize, expected: usize) -> io::Result<()> {
    match usize::try_from(n) {
        Err(_) => Err(io::Error::last_os_error()),
        Ok(sent) if sent == expected => Ok(()),
        // Raw and packet sockets send whole datagrams or fail; this would be
        // a kernel surprise, reported rather than ignored.
        Ok(sent) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {expected} bytes"),
        )),
    }
}

/// Link-local unicast, and multicast of interface- or link-local scope
/// (RFC 4291 section 2.7), only mean something together with an interface.
fn needs_scope(addr: &Ipv6Addr) -> bool {
    addr.is_unicast_link_local()
        || (addr.is_multicast() && matches!(addr.octets()[1] & 0x0f, 1 | 2))
}

/// The address VRRP speaks from on `ifname`.
///
/// IPv4: the interface's primary address (RFC 9568 section 5.1.1.1), taken
/// as the first IPv4 address in the kernel's order that is not in `exclude`.
/// `exclude` holds the VIPs: a VIP added as /32 is a primary address of its
/// own and may come first (e.g. after the node address was re-added), but
/// it moves between nodes and must never become the VRRP source.
///
/// IPv6: the link-local address (RFC 9568 section 5.1.2.1).
pub fn source_address(
    ifname: &str,
    family: Family,
    exclude: &[IpAddr],
) -> Result<IpAddr, NetError> {
    ifindex(ifname)?;
    let addrs = crate::link::addresses(ifname)?;
    let candidate = |a: &&IpAddr| !exclude.contains(a);
    match family {
        Family::V4 => addrs
            .iter()
            .filter(|a| a.is_ipv4())
            .find(candidate)
            .copied()
            .ok_or_else(|| NetError::NoIpv4Source {
                ifname: ifname.to_owned(),
                excluded: exclude.to_vec(),
            }),
        Family::V6 => addrs
            .iter()
            .filter(|a| matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .find(candidate)
            .copied()
            .ok_or_else(|| NetError::NoLinkLocal {
                ifname: ifname.to_owned(),
            }),
    }
}

#[cfg(test)]
mod tests;
