//! Waking the clients of a dead backend, so they get their RST now.
//!
//! The XDP program answers a packet of a flow whose backend died with an RST
//! (`unservable` in vip-ebpf). But a watch client sends nothing until it has
//! something to say: client-go pings an idle HTTP/2 connection only every
//! 30 s, and a kubelet's TCP keepalive is far rarer. Until then the stream is
//! silent, which is exactly what operators cannot tell from a slow apiserver.
//!
//! So when a backend dies, the agent sends each of its clients a "poke": a
//! bare TCP ACK from the VIP and service port whose sequence number lies
//! outside the client's receive window. RFC 9293 section 3.10.7.4 says a
//! receiver answers an unacceptable segment with an ACK carrying its
//! RCV.NXT (Linux: `tcp_send_dupack`, limited to one per 500 ms per socket
//! by `tcp_invalid_ratelimit`). That ACK reaches the XDP program, which finds
//! the flow's backend dead and answers with an RST whose sequence number is
//! the ACK's acknowledgment number: exactly RCV.NXT, so the client accepts
//! it (RFC 5961 section 3.2 accepts only an exact match). The client's
//! stream ends within a round trip of the map write.
//!
//! Two pokes per flow, with sequence numbers 2^31 apart: a receive window is
//! at most 2^30 bytes (RFC 7323 section 2.3), so at least one of the two
//! lies outside it whatever the client's RCV.NXT. A poke that happens to fall
//! inside the window carries no data and an acknowledgment number the client
//! ignores or answers with a challenge ACK (RFC 5961 section 5.2), which the
//! XDP program answers the same way.
//!
//! The pokes are built whole (IP header included) and sent on a raw socket
//! (`IPPROTO_RAW`: the kernel adds nothing, Linux raw(7) and, for IPv6,
//! net/ipv6/raw.c since 4.5). vipd already holds CAP_NET_RAW for VRRP.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use vip_common::{ConnKey, FAMILY_V4, FAMILY_V6, PROTO_TCP};

use crate::csum::{internet_checksum, pseudo_header_checksum};

/// The client side of a flow as the connection table keys it: the client
/// (source) and the VIP and service port (destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub client: IpAddr,
    pub client_port: u16,
    pub vip: IpAddr,
    pub vip_port: u16,
}

impl Flow {
    /// The flow of a TCP connection-table key; `None` for UDP (nothing to
    /// reset) or an unknown family.
    pub fn of(k: &ConnKey) -> Option<Flow> {
        if k.proto != PROTO_TCP {
            return None;
        }
        let (client, vip) = match k.family {
            FAMILY_V4 => (
                IpAddr::V4(Ipv4Addr::new(
                    k.saddr[0], k.saddr[1], k.saddr[2], k.saddr[3],
                )),
                IpAddr::V4(Ipv4Addr::new(
                    k.daddr[0], k.daddr[1], k.daddr[2], k.daddr[3],
                )),
            ),
            FAMILY_V6 => (
                IpAddr::V6(Ipv6Addr::from(k.saddr)),
                IpAddr::V6(Ipv6Addr::from(k.daddr)),
            ),
            _ => return None,
        };
        Some(Flow {
            client,
            client_port: u16::from_be(k.sport_be),
            vip,
            vip_port: u16::from_be(k.dport_be),
        })
    }
}

const TCP_ACK: u8 = 0x10;
const TCP_HDR: usize = 20;

/// The two pokes for `flow`: IPv4 or IPv6 header plus a 20-byte TCP header
/// (ACK, no options, no data), from the VIP to the client. `seed` picks the
/// first sequence number; the second is 2^31 away.
pub fn packets(flow: &Flow, seed: u32) -> [Vec<u8>; 2] {
    [seed, seed ^ 0x8000_0000].map(|seq| packet(flow, seq))
}

fn packet(flow: &Flow, seq: u32) -> Vec<u8> {
    let mut tcp = [0u8; TCP_HDR];
    tcp[0..2].copy_from_slice(&flow.vip_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&flow.client_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    // Acknowledgment number 0: if this poke lands inside the window, an
    // ACK far from SND.UNA is ignored or challenged, never taken.
    tcp[12] = (TCP_HDR as u8 / 4) << 4;
    tcp[13] = TCP_ACK;
    // A small window: the client must not think it may send much to us.
    tcp[14..16].copy_from_slice(&1024u16.to_be_bytes());
    let mut out = Vec::with_capacity(60);
    match (flow.vip, flow.client) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + TCP_HDR) as u16).to_be_bytes());
            // Don't fragment; identification 0 is fine with DF (RFC 6864).
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = PROTO_TCP;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let c = internet_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(TCP_HDR as u16).to_be_bytes());
            ip[6] = PROTO_TCP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            out.extend_from_slice(&ip);
        }
        // A flow key never mixes families; nothing sensible to send.
        _ => return vec![],
    }
    let c = pseudo_header_checksum(flow.vip, flow.client, PROTO_TCP, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&tcp);
    out
}

/// Raw sockets for the pokes, one per family, opened when first needed.
#[derive(Default)]
pub struct Poker {
    v4: Option<OwnedFd>,
    v6: Option<OwnedFd>,
}

impl Poker {
    /// Sends both pokes for `flow`.
    pub fn poke(&mut self, flow: &Flow, seed: u32) -> io::Result<()> {
        for p in packets(flow, seed) {
            self.send(flow.client, &p)?;
        }
        Ok(())
    }

    fn socket(&mut self, v6: bool) -> io::Result<i32> {
        let slot = if v6 { &mut self.v6 } else { &mut self.v4 };
        if let Some(fd) = slot {
            return Ok(fd.as_raw_fd());
        }
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                domain,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = owned.as_raw_fd();
        *slot = Some(owned);
        Ok(raw)
    }

    fn send(&mut self, to: IpAddr, pkt: &[u8]) -> io::Result<()> {
        let fd = self.socket(to.is_ipv6())?;
        // The destination only routes the packet (the header is ours); the
        // port must be 0 for raw sockets.
        let rc = match to {
            IpAddr::V4(a) => sendto(
                fd,
                pkt,
                &libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.octets()),
                    },
                    sin_zero: [0; 8],
                },
            ),
            IpAddr::V6(a) => sendto(
                fd,
                pkt,
                &libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: 0,
                    sin6_flowinfo: 0,
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    sin6_scope_id: 0,
                },
            ),
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// sendto(2) of `pkt` to the socket address `sa` (a sockaddr_in or _in6).
fn sendto<A>(fd: i32, pkt: &[u8], sa: &A) -> isize {
    // SAFETY: buffer and address are valid for the call, and the length
    // given is the address's own.
    unsafe {
        libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (sa as *const A).cast(),
            size_of::<A>() as libc::socklen_t,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(v6: bool) -> Flow {
        if v6 {
            Flow {
                client: "fd77::11".parse().expect("address"),
                client_port: 51000,
                vip: "fd77::100".parse().expect("address"),
                vip_port: 6443,
            }
        } else {
            Flow {
                client: "10.77.0.11".parse().expect("address"),
                client_port: 51000,
                vip: "10.77.0.100".parse().expect("address"),
                vip_port: 6443,
            }
        }
    }

    /// Sums a whole header with its checksum in place: 0 when right.
    fn verify(parts: &[&[u8]]) -> u16 {
        internet_checksum(&parts.concat())
    }

    #[test]
    fn ipv4_pokes_are_well_formed() {
        let [a, b] = packets(&flow(false), 0x1234_5678);
        for (p, seq) in [(&a, 0x1234_5678u32), (&b, 0x9234_5678)] {
            assert_eq!(p.len(), 40);
            assert_eq!(p[0], 0x45, "version and IHL");
            assert_eq!(u16::from_be_bytes([p[2], p[3]]), 40, "total length");
            assert_eq!(p[9], PROTO_TCP);
            assert_eq!(&p[12..16], &[10, 77, 0, 100], "from the VIP");
            assert_eq!(&p[16..20], &[10, 77, 0, 11], "to the client");
            assert_eq!(verify(&[&p[..20]]), 0, "IPv4 header checksum");
            let tcp = &p[20..];
            assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), 6443, "source port");
            assert_eq!(
                u16::from_be_bytes([tcp[2], tcp[3]]),
                51000,
                "destination port"
            );
            assert_eq!(
                u32::from_be_bytes(tcp[4..8].try_into().expect("4 bytes")),
                seq
            );
            assert_eq!(tcp[13], TCP_ACK, "a bare ACK");
            let mut pseudo = vec![10, 77, 0, 100, 10, 77, 0, 11, 0, 6, 0, 20];
            pseudo.extend_from_slice(tcp);
            assert_eq!(verify(&[&pseudo]), 0, "TCP checksum with the pseudo header");
        }
    }

    #[test]
    fn ipv6_pokes_are_well_formed() {
        let [a, b] = packets(&flow(true), 7);
        for (p, seq) in [(&a, 7u32), (&b, 0x8000_0007)] {
            assert_eq!(p.len(), 60);
            assert_eq!(p[0] >> 4, 6);
            assert_eq!(u16::from_be_bytes([p[4], p[5]]), 20, "payload length");
            assert_eq!((p[6], p[7]), (PROTO_TCP, 64), "next header, hop limit");
            let vip: Ipv6Addr = "fd77::100".parse().expect("address");
            let client: Ipv6Addr = "fd77::11".parse().expect("address");
            assert_eq!(&p[8..24], &vip.octets());
            assert_eq!(&p[24..40], &client.octets());
            let tcp = &p[40..];
            assert_eq!(
                u32::from_be_bytes(tcp[4..8].try_into().expect("4 bytes")),
                seq
            );
            let mut pseudo = vec![];
            pseudo.extend_from_slice(&vip.octets());
            pseudo.extend_from_slice(&client.octets());
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, PROTO_TCP]);
            pseudo.extend_from_slice(tcp);
            assert_eq!(verify(&[&pseudo]), 0, "TCP checksum with the pseudo header");
        }
    }

    /// Whatever the client's RCV.NXT and a window as large as TCP allows,
    /// one of the two sequence numbers is outside it.
    #[test]
    fn one_poke_is_always_outside_the_window() {
        let wnd = 1u32 << 30;
        for rcv_nxt in [0u32, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0x1234_5678] {
            for seed in [0u32, 5, 0x8000_0000, 0xdead_beef, rcv_nxt] {
                let inside = |s: u32| s.wrapping_sub(rcv_nxt) < wnd;
                assert!(
                    !inside(seed) || !inside(seed ^ 0x8000_0000),
                    "rcv_nxt {rcv_nxt:#x} seed {seed:#x}"
                );
            }
        }
    }

    #[test]
    fn flows_come_from_tcp_keys_only() {
        let mut k = ConnKey {
            saddr: [0; 16],
            daddr: [0; 16],
            sport_be: 51000u16.to_be(),
            dport_be: 6443u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        k.saddr[..4].copy_from_slice(&[10, 77, 0, 11]);
        k.daddr[..4].copy_from_slice(&[10, 77, 0, 100]);
        assert_eq!(Flow::of(&k), Some(flow(false)));
        k.proto = vip_common::PROTO_UDP;
        assert_eq!(Flow::of(&k), None, "UDP has nothing to reset");
        k.proto = PROTO_TCP;
        k.family = 9;
        assert_eq!(Flow::of(&k), None);
    }
}
