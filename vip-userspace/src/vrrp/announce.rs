//! Telling the L2 segment who holds a VIP (gratuitous ARP, unsolicited
//! Neighbor Advertisements), and noticing anyone else claiming it (the
//! split-brain check: another MAC answering for our VIP).
//!
//! The packet layouts are pure build/parse functions at the bottom of the
//! file; the sockets only move their bytes.

use std::ffi::{c_int, c_void};
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use super::net::{
    self, NetError, bind_to_device, option_error, register, sendmsg_v6, setsockopt, socket,
    socket_error, socklen_of,
};

/// ICMPv6 type of a Neighbor Advertisement (RFC 4861 section 4.4).
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// The all-nodes group unsolicited NAs go to (RFC 4861 section 7.2.6).
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const BROADCAST_MAC: [u8; 6] = [0xff; 6];
/// `ICMP6_FILTER` from linux/icmpv6.h (not in the libc crate); level
/// SOL_ICMPV6.
const ICMP6_FILTER: c_int = 1;
/// Hop limit of every ND message; receivers drop others (RFC 4861 section
/// 7.1.2), which proves the sender is on the link.
const ND_HOP_LIMIT: u8 = 255;

/// Announces that this node now holds a VIP.
#[derive(Debug)]
pub struct Announcer {
    ifname: String,
    ifindex: u32,
    mac: [u8; 6],
    /// AF_PACKET datagram socket: we write the ARP message, the kernel the
    /// Ethernet header (source MAC = the interface's).
    arp: OwnedFd,
    /// Raw ICMPv6 socket; `None` when the kernel has no IPv6 at all.
    icmp6: Option<OwnedFd>,
}

impl Announcer {
    pub fn open(ifname: &str) -> Result<Announcer, NetError> {
        let ifindex = crate::link::ifindex(ifname)?;
        let mac = crate::link::mac_address(ifname)?;
        // Protocol 0: the socket is never hooked into the receive path, so
        // it queues nothing we would have to drain; the protocol of each
        // frame is given per sendto.
        let arp = packet_socket(ifname, ifindex, 0)?;
        let icmp6 = icmp6_socket(ifname, ifindex, None)?;
        Ok(Announcer {
            ifname: ifname.to_owned(),
            ifindex,
            mac,
            arp,
            icmp6,
        })
    }

    /// Sends one announcement for `vip`:
    /// - IPv4: a gratuitous ARP request, broadcast, sender = target = `vip`,
    ///   sender MAC = ours, target MAC zero (RFC 5227 section 3, "ARP
    ///   Announcement"). Linux replaces the MAC of an existing entry for
    ///   `vip` (now STALE), even a REACHABLE one inside the lock time
    ///   (arp_is_garp in net/ipv4/arp.c); it creates none unless arp_accept
    ///   is set, and never touches a PERMANENT one.
    /// - IPv6: an unsolicited Neighbor Advertisement to ff02::1 (RFC 4861
    ///   section 7.2.6) from the link-local address, Override set, Solicited
    ///   and Router clear, with our MAC as Target Link-Layer Address. Linux
    ///   replaces the MAC of an existing entry only because of Override
    ///   (ndisc_recv_na; without it a STALE entry keeps the old MAC and a
    ///   REACHABLE one is merely demoted to STALE); it creates none
    ///   (accept_untracked_na applies to routers only).
    ///
    /// RFC 5227 section 2.3 sends two announcements, ANNOUNCE_INTERVAL (2 s)
    /// apart; the caller repeats, one call sends one.
    pub fn announce(&self, vip: IpAddr) -> Result<(), NetError> {
        let send_err = |source| NetError::Send {
            ifname: self.ifname.clone(),
            dst: vip,
            source,
        };
        match vip {
            IpAddr::V4(v4) => {
                let arp = build_arp_announcement(self.mac, v4);
                send_packet(self.arp.as_fd(), self.ifindex, BROADCAST_MAC, &arp).map_err(send_err)
            }
            IpAddr::V6(v6) => {
                let Some(fd) = &self.icmp6 else {
                    return Err(NetError::Ipv6Unavailable {
                        ifname: self.ifname.clone(),
                    });
                };
                // The checksum stays 0 here: the kernel fills it in on raw
                // ICMPv6 sockets (RFC 3542 section 3.1), pseudo-header and all.
                let na = build_unsolicited_na(v6, self.mac);
                // No source named: for ff02::1 (link scope) the kernel picks
                // the interface's link-local address (RFC 6724 rule 2,
                // ipv6_dev_get_saddr). Naming it would mean looking it up
                // with getifaddrs, which answers for the calling thread's
                // namespace, not necessarily the socket's; and it changes
                // with the link (addr_gen_mode random, link down/up).
                sendmsg_v6(fd.as_fd(), &na, ALL_NODES, self.ifindex, None).map_err(|source| {
                    NetError::Send {
                        ifname: self.ifname.clone(),
                        dst: IpAddr::V6(ALL_NODES),
                        source,
                    }
                })
            }
        }
    }
}

/// Someone on the segment claiming an address: for the split-brain check
/// (another MAC answering for our VIP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub addr: IpAddr,
    pub mac: [u8; 6],
}

/// Watches the segment for claims: every ARP message's sender, every
/// Neighbor Advertisement's target.
///
/// It sees what reaches this node: broadcast ARP (gratuitous ARP, requests),
/// ARP replies to us, NAs to ff02::1 or to us. Replies and solicited NAs
/// that other nodes exchange unicast stay invisible; announcements, which
/// is what a second holder sends, are not.
#[derive(Debug)]
pub struct ClaimWatch {
    ifname: String,
    /// AF_PACKET datagram socket for ETH_P_ARP on the interface.
    arp: AsyncFd<OwnedFd>,
    /// Raw ICMPv6 socket passing only NAs; `None` without kernel IPv6.
    na: Option<AsyncFd<OwnedFd>>,
}

impl ClaimWatch {
    /// Must be called within a tokio runtime.
    pub fn open(ifname: &str) -> Result<ClaimWatch, NetError> {
        let ifindex = crate::link::ifindex(ifname)?;
        // Created with protocol 0 and hooked in by bind with ETH_P_ARP and
        // the ifindex together: a socket created with ETH_P_ARP would queue
        // ARP from every interface until bind narrowed it down.
        let arp = register(
            packet_socket(ifname, ifindex, ETH_P_ARP_BE)?,
            ifname,
            "AF_PACKET",
        )?;
        let na = match icmp6_socket(ifname, ifindex, Some(ND_NEIGHBOR_ADVERT))? {
            Some(fd) => {
                // RFC 4861 section 7.1.2: an NA with a hop limit below 255
                // was forwarded, so it is no claim from this link.
                setsockopt(
                    fd.as_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_RECVHOPLIMIT,
                    &1 as &c_int,
                )
                .map_err(|e| option_error(ifname, "IPV6_RECVHOPLIMIT", e))?;
                Some(register(fd, ifname, "raw ICMPv6")?)
            }
            None => None,
        };
        Ok(ClaimWatch {
            ifname: ifname.to_owned(),
            arp,
            na,
        })
    }

    /// The next claim. Our own frames (PACKET_OUTGOING), malformed frames,
    /// ARP probes (sender 0.0.0.0) and NAs without a Target Link-Layer
    /// Address option are skipped, never a panic.
    pub async fn next(&self) -> Result<Claim, NetError> {
        let mut buf = [0u8; 2048];
        loop {
            let got = match &self.na {
                Some(na) => tokio::select! {
                    ready = self.arp.readable() => self.read(ready, &mut buf, recv_arp),
                    ready = na.readable() => self.read(ready, &mut buf, recv_na),
                },
                None => {
                    let ready = self.arp.readable().await;
                    self.read(ready, &mut buf, recv_arp)
                }
            };
            if let Some(claim) = got? {
                return Ok(claim);
            }
        }
    }

    fn read(
        &self,
        ready: io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>>,
        buf: &mut [u8],
        recv: fn(BorrowedFd<'_>, &mut [u8]) -> io::Result<Option<Claim>>,
    ) -> Result<Option<Claim>, NetError> {
        let err = |source| NetError::Recv {
            ifname: self.ifname.clone(),
            source,
        };
        let mut guard = ready.map_err(err)?;
        match guard.try_io(|fd| recv(fd.as_fd(), buf)) {
            Ok(Ok(claim)) => Ok(claim),
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Ok(Err(e)) => Err(err(e)),
            Err(_would_block) => Ok(None),
        }
    }
}

/// ETH_P_ARP in network byte order, as sockaddr_ll and socket(2) want it.
const ETH_P_ARP_BE: u16 = (libc::ETH_P_ARP as u16).to_be();

fn sockaddr_ll(ifindex: u32, protocol_be: u16, dst: [u8; 6]) -> Option<libc::sockaddr_ll> {
    // SAFETY: sockaddr_ll is plain C data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = protocol_be;
    sa.sll_ifindex = c_int::try_from(ifindex).ok()?;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&dst);
    Some(sa)
}

/// Binds a packet socket to the interface (and, with a non-zero protocol,
/// starts receiving that EtherType on it).
fn bind_packet(
    fd: BorrowedFd<'_>,
    ifname: &str,
    ifindex: u32,
    protocol_be: u16,
) -> Result<(), NetError> {
    let err = |source| NetError::Bind {
        ifname: ifname.to_owned(),
        kind: "AF_PACKET",
        source,
    };
    let sa = sockaddr_ll(ifindex, protocol_be, [0; 6])
        .ok_or_else(|| err(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: sa is valid for reads of its size for the duration of the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast::<libc::sockaddr>(),
            socklen_of::<libc::sockaddr_ll>(),
        )
    };
    if rc < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

fn send_packet(fd: BorrowedFd<'_>, ifindex: u32, dst: [u8; 6], arp: &[u8]) -> io::Result<()> {
    let sa = sockaddr_ll(ifindex, ETH_P_ARP_BE, dst)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: arp and sa are valid for reads of the given lengths for the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            arp.as_ptr().cast::<c_void>(),
            arp.len(),
            0,
            (&raw const sa).cast::<libc::sockaddr>(),
            socklen_of::<libc::sockaddr_ll>(),
        )
    };
    match usize::try_from(n) {
        Ok(sent) if sent == arp.len() => Ok(()),
        Ok(_) => Err(io::Error::from(io::ErrorKind::WriteZero)),
        Err(_) => Err(io::Error::last_os_error()),
    }
}

/// An AF_PACKET datagram socket bound to the interface; `protocol_be` 0
/// receives nothing (send only).
fn packet_socket(ifname: &str, ifindex: u32, protocol_be: u16) -> Result<OwnedFd, NetError> {
    let fd = socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0)
        .map_err(|e| socket_error(ifname, "AF_PACKET", e))?;
    bind_packet(fd.as_fd(), ifname, ifindex, protocol_be)?;
    Ok(fd)
}

/// A raw ICMPv6 socket set up by [`setup_icmp6`]; `None` when the kernel
/// has no IPv6 at all (the IPv4 side still works).
fn icmp6_socket(ifname: &str, ifindex: u32, pass: Option<u8>) -> Result<Option<OwnedFd>, NetError> {
    match socket(
        libc::AF_INET6,
        libc::SOCK_RAW | libc::SOCK_NONBLOCK,
        libc::IPPROTO_ICMPV6,
    ) {
        Ok(fd) => {
            setup_icmp6(fd.as_fd(), ifname, ifindex, pass)?;
            Ok(Some(fd))
        }
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(None),
        Err(e) => Err(socket_error(ifname, "raw ICMPv6", e)),
    }
}

/// A raw ICMPv6 socket on the interface with hop limit 255 and an ICMPv6
/// type filter: `pass` only that type, or nothing at all (a send-only
/// socket would otherwise queue every ICMPv6 message the node receives).
fn setup_icmp6(
    fd: BorrowedFd<'_>,
    ifname: &str,
    ifindex: u32,
    pass: Option<u8>,
) -> Result<(), NetError> {
    let opt = |option| move |source| option_error(ifname, option, source);
    bind_to_device(fd, ifname)?;
    setsockopt(fd, libc::SOL_ICMPV6, ICMP6_FILTER, &icmp6_filter(pass))
        .map_err(opt("ICMP6_FILTER"))?;
    // ND's hop limit is VRRP's (RFC 4861 7.1.2); our own NA must not come
    // back as a "claim" to a watch on this node.
    net::on_link_sender_v6(fd, ifname, ifindex)
}

/// struct icmp6_filter (linux/icmpv6.h): 256 bits, one per ICMPv6 type; a
/// set bit blocks the type (the kernel's sense, ICMP6_FILTER_WILLBLOCK).
fn icmp6_filter(pass: Option<u8>) -> [u32; 8] {
    let mut bits = [u32::MAX; 8];
    if let Some(t) = pass {
        bits[usize::from(t >> 5)] &= !(1u32 << (t & 31));
    }
    bits
}

fn recv_arp(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Claim>> {
    // SAFETY: sockaddr_ll is plain C data; all-zero is a valid value.
    let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
    let mut from_len = socklen_of::<libc::sockaddr_ll>();
    // SAFETY: buf, from and from_len are valid for writes of the stated
    // lengths for the duration of the call.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast::<c_void>(),
            buf.len(),
            0,
            (&raw mut from).cast::<libc::sockaddr>(),
            &raw mut from_len,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    // Frames this node sends (our announcements, the kernel's replies) are
    // looped to packet sockets with this type; they claim nothing new.
    if from.sll_pkttype == libc::PACKET_OUTGOING {
        return Ok(None);
    }
    Ok(buf.get(..n).and_then(|frame| parse_arp_claim(frame).ok()))
}

fn recv_na(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Claim>> {
    let Some(d) = net::recvmsg_v6(fd, buf)? else {
        return Ok(None);
    };
    if d.hop_limit != Some(ND_HOP_LIMIT) {
        tracing::debug!(src = %d.src, hop_limit = ?d.hop_limit, "NA not from this link, skipped");
        return Ok(None);
    }
    Ok(buf.get(..d.len).and_then(|msg| parse_na_claim(msg).ok()))
}

// ---- wire layouts ----

/// Why a received frame is not a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAClaim {
    /// Shorter than its fixed part or than an option says.
    Truncated,
    /// ARP for something other than Ethernet/IPv4.
    NotEthernetIpv4,
    /// ARP probe (RFC 5227 section 2.1.1): sender address 0.0.0.0.
    Probe,
    /// Not an ICMPv6 Neighbor Advertisement (type 136, code 0).
    NotNa,
    /// An ND option with length 0 (RFC 4861 section 4.6: discard).
    ZeroLengthOption,
    /// Multicast or unspecified target (RFC 4861 section 7.1.2).
    BadTarget,
    /// No Target Link-Layer Address option: nothing to compare.
    NoTargetLinkLayer,
}

pub const ARP_LEN: usize = 28;
const ARPHRD_ETHER: u16 = 1;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ARPOP_REQUEST: u16 = 1;

/// ARP for Ethernet and IPv4 (RFC 826), as an AF_PACKET datagram socket
/// carries it (the Ethernet header is the kernel's):
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |     Hardware type = 1         |    Protocol type = 0x0800     |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  HW len = 6   | Proto len = 4 |  Operation (1 req, 2 reply)   |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |              Sender hardware address (bytes 8..14)            |
/// +                               +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                               | Sender protocol address       |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+ (bytes 14..18)                +
/// |                               |                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
/// |              Target hardware address (bytes 18..24)           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |              Target protocol address (bytes 24..28)           |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// An announcement (RFC 5227 section 3) is a request with sender and target
/// protocol address both `addr`, target hardware address zero.
pub fn build_arp_announcement(mac: [u8; 6], addr: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    p[2..4].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&addr.octets());
    // 18..24 target hardware address: zero.
    p[24..28].copy_from_slice(&addr.octets());
    p
}

/// The claim an ARP message makes, whatever its operation: "sender protocol
/// address is at sender hardware address".
pub fn parse_arp_claim(msg: &[u8]) -> Result<Claim, NotAClaim> {
    let p: &[u8; ARP_LEN] = msg
        .get(..ARP_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(NotAClaim::Truncated)?;
    let be16 = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
    if be16(0) != ARPHRD_ETHER || be16(2) != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
        return Err(NotAClaim::NotEthernetIpv4);
    }
    let addr = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
    if addr.is_unspecified() {
        return Err(NotAClaim::Probe);
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&p[8..14]);
    Ok(Claim {
        addr: IpAddr::V4(addr),
        mac,
    })
}

pub const NA_LEN: usize = 32;
const NA_FIXED_LEN: usize = 24;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// O flag; R (0x80) and S (0x40) stay clear in what we send.
const NA_FLAG_OVERRIDE: u8 = 0x20;

/// Neighbor Advertisement (RFC 4861 section 4.4) with one Target
/// Link-Layer Address option (section 4.6.1):
///
/// ```text
///  0                   1                   2                   3
///  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |  Type = 136   |   Code = 0    |          Checksum             |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |R|S|O|                     Reserved                            |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |                                                               |
/// +                                                               +
/// |                   Target Address (bytes 8..24)                |
/// +                                                               +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// |   Type = 2    |  Length = 1   |  Link-Layer Address (6 bytes) |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               +
/// |                                                               |
/// +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
/// ```
///
/// Option length counts units of 8 bytes. Unsolicited (section 7.2.6): R
/// and S clear, O set so receivers replace the cached MAC. The checksum is
/// left 0 for the kernel to fill.
///
/// RFC 9568 sections 6.4.1/6.4.2 have an IPv6 Active Router set R, because
/// its virtual addresses are default routers. A VIP in front of apiservers
/// is no router: R set would make hosts that cache it treat the VIP as one
/// (RFC 4861 section 7.2.5), so vipd, like keepalived, leaves it clear.
pub fn build_unsolicited_na(target: Ipv6Addr, mac: [u8; 6]) -> [u8; NA_LEN] {
    let mut p = [0u8; NA_LEN];
    p[0] = ND_NEIGHBOR_ADVERT;
    p[4] = NA_FLAG_OVERRIDE;
    p[8..24].copy_from_slice(&target.octets());
    p[24] = ND_OPT_TARGET_LL_ADDR;
    p[25] = 1;
    p[26..32].copy_from_slice(&mac);
    p
}

/// The claim an NA makes: "target is at the Target Link-Layer Address". The
/// ICMPv6 checksum was verified by the kernel (raw ICMPv6 sockets drop bad
/// ones); the hop limit is checked by the caller.
pub fn parse_na_claim(msg: &[u8]) -> Result<Claim, NotAClaim> {
    let fixed: &[u8; NA_FIXED_LEN] = msg
        .get(..NA_FIXED_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(NotAClaim::Truncated)?;
    if fixed[0] != ND_NEIGHBOR_ADVERT || fixed[1] != 0 {
        return Err(NotAClaim::NotNa);
    }
    let mut target = [0u8; 16];
    target.copy_from_slice(&fixed[8..24]);
    let target = Ipv6Addr::from(target);
    if target.is_multicast() || target.is_unspecified() {
        return Err(NotAClaim::BadTarget);
    }
    let mut options = msg.get(NA_FIXED_LEN..).unwrap_or_default();
    let mut mac = None;
    while let [ty, len, ..] = *options {
        let len = usize::from(len) * 8;
        if len == 0 {
            return Err(NotAClaim::ZeroLengthOption);
        }
        let option = options.get(..len).ok_or(NotAClaim::Truncated)?;
        if ty == ND_OPT_TARGET_LL_ADDR
            && mac.is_none()
            && let Some(lla) = option.get(2..8)
        {
            let mut m = [0u8; 6];
            m.copy_from_slice(lla);
            mac = Some(m);
        }
        options = options.get(len..).unwrap_or_default();
    }
    let mac = mac.ok_or(NotAClaim::NoTargetLinkLayer)?;
    Ok(Claim {
        addr: IpAddr::V6(target),
        mac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x77, 0x00, 0x00, 0x00, 0x11];

    #[test]
    fn arp_announcement_fixture() {
        let p = build_arp_announcement(MAC, Ipv4Addr::new(10, 77, 0, 100));
        #[rustfmt::skip]
        let want: [u8; ARP_LEN] = [
            0x00, 0x01, 0x08, 0x00,             // Ethernet, IPv4
            0x06, 0x04, 0x00, 0x01,             // 6, 4, request
            0x02, 0x77, 0x00, 0x00, 0x00, 0x11, // sender MAC
            10, 77, 0, 100,                     // sender IP
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // target MAC zero
            10, 77, 0, 100,                     // target IP = sender IP
        ];
        assert_eq!(p, want);
        assert_eq!(
            parse_arp_claim(&p),
            Ok(Claim {
                addr: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100)),
                mac: MAC
            })
        );
    }

    #[test]
    fn arp_claims_from_any_operation_and_padding() {
        // A reply from another node, padded to the Ethernet minimum (46
        // payload bytes), as packet sockets deliver it.
        #[rustfmt::skip]
        let mut reply = vec![
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
            0x02, 0x77, 0x00, 0x00, 0x00, 0x12, 10, 77, 0, 100,
            0x02, 0x77, 0x00, 0x00, 0x00, 0x10, 10, 77, 0, 10,
        ];
        reply.resize(46, 0);
        assert_eq!(
            parse_arp_claim(&reply),
            Ok(Claim {
                addr: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 100)),
                mac: [0x02, 0x77, 0, 0, 0, 0x12]
            })
        );
    }

    #[test]
    fn arp_not_claims() {
        let good = build_arp_announcement(MAC, Ipv4Addr::new(10, 77, 0, 100));
        for n in 0..ARP_LEN {
            assert_eq!(
                parse_arp_claim(&good[..n]),
                Err(NotAClaim::Truncated),
                "{n} bytes"
            );
        }
        let mut probe = good;
        probe[14..18].fill(0);
        assert_eq!(parse_arp_claim(&probe), Err(NotAClaim::Probe));
        for (i, v) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut q = good;
            q[i] = v;
            assert_eq!(
                parse_arp_claim(&q),
                Err(NotAClaim::NotEthernetIpv4),
                "byte {i}"
            );
        }
    }

    #[test]
    fn na_fixture() {
        let target: Ipv6Addr = "fd77::100".parse().expect("addr");
        let p = build_unsolicited_na(target, MAC);
        #[rustfmt::skip]
        let want: [u8; NA_LEN] = [
            136, 0, 0x00, 0x00,                    // NA, code 0, checksum by the kernel
            0x20, 0x00, 0x00, 0x00,                // R=0 S=0 O=1
            0xfd, 0x77, 0, 0, 0, 0, 0, 0,          // target fd77::100
            0, 0, 0, 0, 0, 0, 0x01, 0x00,
            2, 1, 0x02, 0x77, 0x00, 0x00, 0x00, 0x11, // TLLA, 1 x 8 bytes, MAC
        ];
        assert_eq!(p, want);
        assert_eq!(p[4] & 0xc0, 0, "Router and Solicited clear");
        assert_eq!(
            parse_na_claim(&p),
            Ok(Claim {
                addr: IpAddr::V6(target),
                mac: MAC
            })
        );
    }

    #[test]
    fn na_options_walk() {
        let target: Ipv6Addr = "fd77::100".parse().expect("addr");
        let na = build_unsolicited_na(target, MAC);
        // A nonce option (type 14, 8 bytes) before the TLLA is passed over.
        let mut with_other = na[..NA_FIXED_LEN].to_vec();
        with_other.extend_from_slice(&[14, 1, 1, 2, 3, 4, 5, 6]);
        with_other.extend_from_slice(&na[NA_FIXED_LEN..]);
        assert_eq!(parse_na_claim(&with_other).map(|c| c.mac), Ok(MAC));
        // Solicited NA without options (the kernel's answers to our own
        // probes often omit it): nothing to compare.
        assert_eq!(
            parse_na_claim(&na[..NA_FIXED_LEN]),
            Err(NotAClaim::NoTargetLinkLayer)
        );
        let mut zero = na;
        zero[25] = 0;
        assert_eq!(parse_na_claim(&zero), Err(NotAClaim::ZeroLengthOption));
        let mut long = na;
        long[25] = 2;
        assert_eq!(parse_na_claim(&long), Err(NotAClaim::Truncated));
        let mut mcast = na;
        mcast[8] = 0xff;
        assert_eq!(parse_na_claim(&mcast), Err(NotAClaim::BadTarget));
        let mut ns = na;
        ns[0] = 135;
        assert_eq!(parse_na_claim(&ns), Err(NotAClaim::NotNa));
        // Every truncation and every option byte value: no panic.
        for n in 0..NA_LEN {
            let _ = parse_na_claim(&na[..n]);
        }
        for ty in 0..=255u8 {
            for len in 0..=255u8 {
                let mut q = na;
                q[24] = ty;
                q[25] = len;
                let _ = parse_na_claim(&q);
            }
        }
    }

    #[test]
    fn icmp6_filter_passes_only_na() {
        let f = icmp6_filter(Some(ND_NEIGHBOR_ADVERT));
        // Type 136 = word 4, bit 8 (136 = 4 * 32 + 8).
        assert_eq!(f[4], !(1 << 8));
        assert!(f.iter().enumerate().all(|(i, w)| i == 4 || *w == u32::MAX));
        assert_eq!(icmp6_filter(None), [u32::MAX; 8]);
    }
}
