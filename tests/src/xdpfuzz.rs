//! The differential parser fuzz of the XDP program (issue 7, "Bad input"):
//! a seeded generator of random and mutated frames, and a host-side
//! reference that says what must happen to each.
//!
//! The reference is written from the parsing rules of issue 3, not from the
//! program: it shares no code with vip-ebpf (only the `Reason` names from
//! vip-common, which are the counters' definition). Its rules:
//!
//! - Ethernet, then at most one VLAN tag (802.1Q 0x8100, or the 802.1ad
//!   S-tag 0x88a8 that IEEE 802.1Q-2011 folded into the same standard). A
//!   second tag (QinQ) is beyond the parser: the inner ethertype is a tag,
//!   not IP, so the frame is `PassNotIp`.
//! - IPv4 (RFC 791): version 4, IHL >= 5, Total Length >= IHL * 4 and within
//!   the frame (Ethernet padding may add bytes, never remove them); else
//!   `PassMalformed`. Then MF set or a non-zero offset is `PassFragment` (the
//!   kernel reassembles; ports are not, or not all, in this frame). DF and
//!   the reserved bit mean nothing to us. Options are allowed: L4 is at
//!   IHL * 4.
//! - IPv6 (RFC 8200): version 6, 40 + Payload Length within the frame; else
//!   `PassMalformed`. A next header that is an extension header (IANA's
//!   "IPv6 Extension Header Types": 0, 43, 44, 50, 51, 60, 135, 139, 140,
//!   253, 254) is `PassIpv6ExtHeader`.
//! - Neither TCP nor UDP: `PassNotL4` (ICMP, VRRP, No Next Header, ...).
//! - The L4 header must lie inside the IP payload (IPv4 Total Length minus
//!   IHL * 4, IPv6 Payload Length), not merely inside the frame: bytes past
//!   the IP length are Ethernet padding, not a header. TCP: Data Offset >= 5
//!   and Data Offset * 4 within the IP payload (RFC 9293 3.1; Linux drops
//!   anything else in tcp_v4_rcv/tcp_v6_rcv). UDP: Length >= 8 and within
//!   the IP payload (RFC 768; Linux: __udp4_lib_rcv "short packet").
//!   Anything else is `PassMalformed`.
//! - No service on (destination, port, protocol): `PassNoService`.
//! - Checksums are not the parser's business: a forwarded packet with a bad
//!   one is dropped by the backend's kernel (ip_rcv_core, tcp_v4_rcv), just
//!   as ours would have.
//!
//! Every pass leaves the frame byte for byte as it came. Packets for a
//! service are set up so that the outcome does not depend on Maglev or the
//! connection table: one alive backend (mode dsr: `TxDsr`, destination MAC
//! rewritten to the backend's, source MAC to the frame's old destination),
//! the local backend (`PassLocalBackend`, untouched), or no alive backend
//! (TCP: an RST per RFC 9293 3.10.7.1, `TxRst`; an RST or UDP:
//! `DropNoBackend`, untouched).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vip_common::Reason;

use crate::packet::{L4, MAC_CLIENT, MAC_LB, Pkt, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};
use crate::progtest::{XDP_DROP, XDP_PASS, XDP_TX};

/// The default seed: fixed, so CI runs the same packets every time and a
/// failure reproduces. `VIPD_FUZZ_SEED` picks another.
pub const DEFAULT_SEED: u64 = 0x7669_7064_6675_7a7a;
/// The default number of packets (issue 7: at least 100 000).
pub const DEFAULT_COUNT: u64 = 100_000;

/// splitmix64 (Steele, Lea, Flood 2014): tiny, seedable, good enough to pick
/// mutations; no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
    /// True with probability `num`/`den`.
    pub fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

// ---------------------------------------------------------------- services

pub const PORT: u16 = 6443;
pub const DNS: u16 = 53;
/// A destination port in the default nat reply range (40000..=59999): such
/// packets take the program's reverse-NAT lookup before the service lookup.
pub const REPLY_PORT: u16 = 40001;

pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
pub const VIP4_DEAD: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 101);
pub const VIP4_LOCAL: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 102);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100);
pub const VIP6_DEAD: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x101);
pub const NODE4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
pub const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x11);
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x10);

/// What a service does with a packet that reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Mode dsr, one alive remote backend with this MAC.
    Dsr([u8; 6]),
    /// The only backend is this node.
    Local,
    /// No alive backend (either mode).
    Dead,
}

/// One service as the reference sees it.
#[derive(Clone, Copy, Debug)]
pub struct RefService {
    pub vip: IpAddr,
    pub port: u16,
    /// 6 or 17.
    pub proto: u8,
    /// Mode dsr or nat (what the program must be told; the outcome above is
    /// what the reference expects of it).
    pub nat: bool,
    pub outcome: Outcome,
}

/// The services of the fuzz run; the test writes the same into the maps.
pub fn services() -> Vec<RefService> {
    let s = |vip: IpAddr, port, proto, nat, outcome| RefService {
        vip,
        port,
        proto,
        nat,
        outcome,
    };
    vec![
        s(VIP4.into(), PORT, 6, false, Outcome::Dsr(backend_mac(1))),
        s(VIP4.into(), DNS, 17, false, Outcome::Dsr(backend_mac(2))),
        s(VIP4_DEAD.into(), PORT, 6, true, Outcome::Dead),
        s(VIP4_LOCAL.into(), PORT, 6, false, Outcome::Local),
        s(VIP6.into(), PORT, 6, false, Outcome::Dsr(backend_mac(3))),
        s(VIP6_DEAD.into(), PORT, 6, false, Outcome::Dead),
        s(VIP6_DEAD.into(), DNS, 17, false, Outcome::Dead),
    ]
}

pub fn backend_mac(i: u8) -> [u8; 6] {
    [0x02, 0x77, 0, 0, 0, 0x20 + i]
}

// ---------------------------------------------------------------- reference

/// What must happen to one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub action: u32,
    pub reason: Reason,
    /// The frame that must come out.
    pub out: Vec<u8>,
    /// Offset of an IPv4 header checksum in `out` that the program updates
    /// incrementally (RFC 1624): compared as one's-complement values, where
    /// 0x0000 and 0xffff are the same number.
    pub ip_csum_at: Option<usize>,
}

impl Expected {
    fn untouched(action: u32, reason: Reason, f: &[u8]) -> Expected {
        Expected {
            action,
            reason,
            out: f.to_vec(),
            ip_csum_at: None,
        }
    }

    /// Whether `out` is what was expected.
    pub fn matches_output(&self, out: &[u8]) -> bool {
        let Some(at) = self.ip_csum_at else {
            return out == self.out;
        };
        if out.len() != self.out.len() {
            return false;
        }
        let norm = |c: u16| if c == 0xffff { 0 } else { c };
        let got = u16::from_be_bytes([out[at], out[at + 1]]);
        let want = u16::from_be_bytes([self.out[at], self.out[at + 1]]);
        out[..at] == self.out[..at]
            && out[at + 2..] == self.out[at + 2..]
            && norm(got) == norm(want)
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

const IPV6_EXT_HEADERS: [u8; 11] = [0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254];

/// The reference classification of frame `f` (at least 14 bytes: the
/// kernel refuses shorter XDP test input).
pub fn classify(f: &[u8], services: &[RefService]) -> Expected {
    let pass = |r| Expected::untouched(XDP_PASS, r, f);
    if f.len() < 14 {
        return pass(Reason::PassMalformed);
    }
    let mut ethertype = be16(f, 12);
    let mut l3 = 14;
    if ethertype == 0x8100 || ethertype == 0x88a8 {
        if f.len() < 18 {
            return pass(Reason::PassMalformed);
        }
        ethertype = be16(f, 16);
        l3 = 18;
    }
    let (dst, proto, l4, l4_len) = match ethertype {
        0x0800 => {
            if f.len() < l3 + 20 {
                return pass(Reason::PassMalformed);
            }
            let version = f[l3] >> 4;
            let ihl = usize::from(f[l3] & 0x0f) * 4;
            let total = usize::from(be16(f, l3 + 2));
            if version != 4 || ihl < 20 || total < ihl || l3 + total > f.len() {
                return pass(Reason::PassMalformed);
            }
            let frag = be16(f, l3 + 6);
            let more_fragments = frag & 0x2000 != 0;
            let offset = frag & 0x1fff;
            if more_fragments || offset != 0 {
                return pass(Reason::PassFragment);
            }
            let proto = f[l3 + 9];
            if proto != 6 && proto != 17 {
                return pass(Reason::PassNotL4);
            }
            let d: [u8; 4] = f[l3 + 16..l3 + 20].try_into().expect("4 bytes");
            (IpAddr::from(d), proto, l3 + ihl, total - ihl)
        }
        0x86dd => {
            if f.len() < l3 + 40 {
                return pass(Reason::PassMalformed);
            }
            let version = f[l3] >> 4;
            let payload = usize::from(be16(f, l3 + 4));
            if version != 6 || l3 + 40 + payload > f.len() {
                return pass(Reason::PassMalformed);
            }
            let next = f[l3 + 6];
            if IPV6_EXT_HEADERS.contains(&next) {
                return pass(Reason::PassIpv6ExtHeader);
            }
            if next != 6 && next != 17 {
                return pass(Reason::PassNotL4);
            }
            let d: [u8; 16] = f[l3 + 24..l3 + 40].try_into().expect("16 bytes");
            (IpAddr::from(d), next, l3 + 40, payload)
        }
        _ => return pass(Reason::PassNotIp),
    };
    let dport = if proto == 6 {
        if l4_len < 20 {
            return pass(Reason::PassMalformed);
        }
        let data_offset = usize::from(f[l4 + 12] >> 4) * 4;
        if data_offset < 20 || data_offset > l4_len {
            return pass(Reason::PassMalformed);
        }
        be16(f, l4 + 2)
    } else {
        if l4_len < 8 {
            return pass(Reason::PassMalformed);
        }
        let udp_len = usize::from(be16(f, l4 + 4));
        if udp_len < 8 || udp_len > l4_len {
            return pass(Reason::PassMalformed);
        }
        be16(f, l4 + 2)
    };
    // Any service's port, or the mode nat reply range (whatever the address
    // and protocol): it may be ours, so it must be addressed to us.
    let g = vip_common::Globals::DEFAULT;
    let may_be_ours = services.iter().any(|s| s.port == dport)
        || (g.nat_port_lo..=g.nat_port_hi).contains(&dport);
    if may_be_ours && f[..6] != MAC_LB {
        return pass(Reason::PassOtherHost);
    }
    let Some(svc) = services
        .iter()
        .find(|s| s.vip == dst && s.port == dport && s.proto == proto)
    else {
        return pass(Reason::PassNoService);
    };
    match svc.outcome {
        Outcome::Local => pass(Reason::PassLocalBackend),
        Outcome::Dsr(mac) => {
            let mut out = f.to_vec();
            out[..6].copy_from_slice(&mac);
            out[6..12].copy_from_slice(&f[..6]);
            Expected {
                action: XDP_TX,
                reason: Reason::TxDsr,
                out,
                ip_csum_at: None,
            }
        }
        Outcome::Dead => {
            // RFC 9293 3.10.7.1: never answer an RST; UDP has no answer.
            if proto != 6 || f[l4 + 13] & TCP_RST != 0 {
                return Expected::untouched(XDP_DROP, Reason::DropNoBackend, f);
            }
            rst_for(f, l3, l4, l4_len, ethertype == 0x0800)
        }
    }
}

/// The RST that RFC 9293 3.10.7.1 prescribes for TCP segment `f`, built as
/// the program's design says (vip-ebpf fwd.rs): back to the sender's MAC
/// from ours, VLAN tag and IPv4 options kept, TTL/hop limit 64, a bare
/// 20-byte TCP header, padding and payload cut.
fn rst_for(f: &[u8], l3: usize, l4: usize, l4_len: usize, v4: bool) -> Expected {
    let seq = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().expect("4 bytes"));
    let ack = u32::from_be_bytes(f[l4 + 8..l4 + 12].try_into().expect("4 bytes"));
    let flags = f[l4 + 13];
    let data_offset = usize::from(f[l4 + 12] >> 4) * 4;
    // SEG.LEN counts the payload plus one for SYN and one for FIN.
    let seg_len = (l4_len - data_offset) as u32
        + u32::from(flags & TCP_SYN != 0)
        + u32::from(flags & TCP_FIN != 0);
    let (out_seq, out_ack, out_flags) = if flags & TCP_ACK != 0 {
        (ack, 0, TCP_RST)
    } else {
        (0, seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    let mut out = f[..l4 + 20].to_vec();
    out[..6].copy_from_slice(&f[6..12]);
    out[6..12].copy_from_slice(&f[..6]);
    let (src, dst, ip_csum_at) = if v4 {
        let ihl = l4 - l3;
        let old_sum = sum_words(&f[l3..l4], Some(10));
        out[l3 + 2..l3 + 4].copy_from_slice(&((ihl + 20) as u16).to_be_bytes());
        out[l3 + 8] = 64;
        out[l3 + 12..l3 + 16].copy_from_slice(&f[l3 + 16..l3 + 20]);
        out[l3 + 16..l3 + 20].copy_from_slice(&f[l3 + 12..l3 + 16]);
        let new_sum = sum_words(&out[l3..l4], Some(10));
        // RFC 1624 eqn. 3 over the whole header: HC' = ~(~HC + ~m + m'),
        // so a wrong checksum stays exactly as wrong as it came.
        let hc = u32::from(be16(f, l3 + 10));
        let c = !fold(u32::from(!(hc as u16)) + u32::from(!fold(old_sum)) + fold(new_sum) as u32);
        out[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        let s: [u8; 4] = out[l3 + 12..l3 + 16].try_into().expect("4 bytes");
        let d: [u8; 4] = out[l3 + 16..l3 + 20].try_into().expect("4 bytes");
        (IpAddr::from(s), IpAddr::from(d), Some(l3 + 10))
    } else {
        out[l3 + 4..l3 + 6].copy_from_slice(&20u16.to_be_bytes());
        out[l3 + 7] = 64;
        out[l3 + 8..l3 + 24].copy_from_slice(&f[l3 + 24..l3 + 40]);
        out[l3 + 24..l3 + 40].copy_from_slice(&f[l3 + 8..l3 + 24]);
        let s: [u8; 16] = out[l3 + 8..l3 + 24].try_into().expect("16 bytes");
        let d: [u8; 16] = out[l3 + 24..l3 + 40].try_into().expect("16 bytes");
        (IpAddr::from(s), IpAddr::from(d), None)
    };
    let t = &mut out[l4..l4 + 20];
    t[0..2].copy_from_slice(&f[l4 + 2..l4 + 4]);
    t[2..4].copy_from_slice(&f[l4..l4 + 2]);
    t[4..8].copy_from_slice(&out_seq.to_be_bytes());
    t[8..12].copy_from_slice(&out_ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = out_flags;
    t[14..20].fill(0); // window, checksum, urgent pointer
    let c = crate::packet::l4_checksum(src, dst, 6, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Expected {
        action: XDP_TX,
        reason: Reason::TxRst,
        out,
        ip_csum_at,
    }
}

/// Sum of big-endian 16-bit words, skipping the word at byte `skip`.
fn sum_words(b: &[u8], skip: Option<usize>) -> u32 {
    b.chunks(2)
        .enumerate()
        .filter(|(i, _)| Some(i * 2) != skip)
        .map(|(_, w)| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

// ---------------------------------------------------------------- fixtures

fn tcp(src: IpAddr, dst: IpAddr, dport: u16, flags: u8) -> Pkt {
    Pkt::tcp(src, 40000, dst, dport, flags)
}

/// Valid frames the mutations start from: every kind the issue names.
pub fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    let (c4, c6): (IpAddr, IpAddr) = (CLIENT4.into(), CLIENT6.into());
    let (v4, v6): (IpAddr, IpAddr) = (VIP4.into(), VIP6.into());
    let data = |p: Pkt| p.payload(b"GET /readyz HTTP/1.1\r\n\r\n");
    let mut f: Vec<(&'static str, Vec<u8>)> = vec![
        ("v4 SYN to the VIP", tcp(c4, v4, PORT, TCP_SYN).build()),
        (
            "v4 data to the VIP",
            data(tcp(c4, v4, PORT, TCP_ACK | TCP_PSH)).build(),
        ),
        (
            "v4 FIN to the VIP",
            tcp(c4, v4, PORT, TCP_FIN | TCP_ACK).build(),
        ),
        ("v4 RST to the VIP", tcp(c4, v4, PORT, TCP_RST).build()),
        (
            "v4 SYN with TCP options",
            Pkt {
                // MSS 1460, SACK permitted, timestamps, window scale 7.
                tcp_options: vec![
                    2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
                ],
                ..tcp(c4, v4, PORT, TCP_SYN)
            }
            .build(),
        ),
        (
            "v4 SYN with IP options",
            Pkt {
                // Router alert, then a record-route with room for 2 hops.
                ip_options: vec![0x94, 4, 0, 0, 7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..tcp(c4, v4, PORT, TCP_SYN)
            }
            .build(),
        ),
        (
            "v4 SYN with an 802.1Q tag",
            Pkt {
                vlan: Some(100),
                ..tcp(c4, v4, PORT, TCP_SYN)
            }
            .build(),
        ),
        (
            "v4 SYN to the dead service",
            tcp(c4, VIP4_DEAD.into(), PORT, TCP_SYN).build(),
        ),
        (
            "v4 data to the dead service",
            data(tcp(c4, VIP4_DEAD.into(), PORT, TCP_ACK | TCP_PSH)).build(),
        ),
        (
            "v4 SYN to the local backend",
            tcp(c4, VIP4_LOCAL.into(), PORT, TCP_SYN).build(),
        ),
        (
            "v4 SSH to the node",
            tcp(c4, NODE4.into(), 22, TCP_SYN).build(),
        ),
        ("v4 the VIP on port 22", tcp(c4, v4, 22, TCP_SYN).build()),
        (
            "v4 a reply-range port on the nat VIP",
            tcp(c4, VIP4_DEAD.into(), REPLY_PORT, TCP_ACK).build(),
        ),
        (
            "v4 UDP to the UDP service",
            Pkt::udp(c4, 5353, v4, DNS).payload(b"query").build(),
        ),
        ("v4 UDP to a TCP port", Pkt::udp(c4, 5353, v4, PORT).build()),
        ("v6 SYN to the VIP", tcp(c6, v6, PORT, TCP_SYN).build()),
        (
            "v6 data to the VIP",
            data(tcp(c6, v6, PORT, TCP_ACK | TCP_PSH)).build(),
        ),
        (
            "v6 SYN with an 802.1Q tag",
            Pkt {
                vlan: Some(7),
                ..tcp(c6, v6, PORT, TCP_SYN)
            }
            .build(),
        ),
        (
            "v6 SYN to the dead service",
            tcp(c6, VIP6_DEAD.into(), PORT, TCP_SYN).build(),
        ),
        (
            "v6 FIN without ACK to the dead service",
            tcp(c6, VIP6_DEAD.into(), PORT, TCP_FIN)
                .payload(b"xyz")
                .build(),
        ),
        (
            "v6 UDP to the dead UDP service",
            Pkt::udp(c6, 5353, VIP6_DEAD.into(), DNS).build(),
        ),
        ("v6 to the node", tcp(c6, NODE6.into(), 22, TCP_SYN).build()),
        ("ARP request for the VIP", arp()),
        ("VRRPv3 advert (IPv4)", vrrp4()),
        ("VRRPv3 advert (IPv6)", vrrp6()),
        ("ICMP echo to the VIP", icmp4()),
        ("ICMPv6 neighbour solicitation", icmp6()),
        (
            "v4 first fragment to the VIP",
            Pkt {
                frag: 0x2000,
                ..data(tcp(c4, v4, PORT, TCP_ACK))
            }
            .build(),
        ),
        (
            "v4 later fragment to the VIP",
            Pkt {
                frag: 0x0003,
                ..data(tcp(c4, v4, PORT, TCP_ACK))
            }
            .build(),
        ),
        ("LLDP", lldp()),
    ];
    // Extension-header and double-tag variants of valid packets.
    let syn6 = tcp(c6, v6, PORT, TCP_SYN).build();
    f.push((
        "v6 SYN behind hop-by-hop options",
        insert_ext6(&syn6, 14, 0),
    ));
    f.push((
        "v6 SYN behind a fragment header",
        insert_ext6(&syn6, 14, 44),
    ));
    f.push((
        "v6 SYN behind destination options",
        insert_ext6(&syn6, 14, 60),
    ));
    let syn4 = tcp(c4, v4, PORT, TCP_SYN).build();
    f.push((
        "v4 SYN double-tagged (QinQ)",
        insert_tag(&insert_tag(&syn4, 0x8100), 0x88a8),
    ));
    f.push(("v4 SYN with an 802.1ad tag", insert_tag(&syn4, 0x88a8)));
    // Ethernet padding after a short packet (minimum frame 60 bytes).
    let mut padded = tcp(c4, v4, PORT, TCP_ACK).build();
    padded.resize(padded.len() + 6, 0);
    f.push(("v4 ACK with Ethernet padding", padded));
    f
}

/// An ARP request from the client for the VIP.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC_CLIENT);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_CLIENT);
    f.extend_from_slice(&CLIENT4.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&VIP4.octets());
    f
}

/// A VRRPv3 advert from the node: version 3, type 1, VRID 51, priority
/// 100, one address (the VIP).
pub fn vrrp4() -> Vec<u8> {
    let mut p = Pkt::tcp(NODE4.into(), 0, Ipv4Addr::new(224, 0, 0, 18).into(), 0, 0);
    p.l4 = L4::Other(112);
    p.ttl = 255;
    p.dst_mac = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12];
    p.payload = vec![0x31, 51, 100, 1, 0, 100, 0, 0, 10, 77, 0, 100];
    p.build()
}

fn vrrp6() -> Vec<u8> {
    let src: IpAddr = "fe80::77:ff:fe00:11".parse().expect("ip");
    let mut p = Pkt::tcp(src, 0, "ff02::12".parse().expect("ip"), 0, 0);
    p.l4 = L4::Other(112);
    p.ttl = 255;
    p.dst_mac = [0x33, 0x33, 0, 0, 0, 0x12];
    let mut body = vec![0x31, 51, 100, 1, 0, 100, 0, 0];
    body.extend_from_slice(&VIP6.octets());
    p.payload = body;
    p.build()
}

fn icmp4() -> Vec<u8> {
    let mut p = Pkt::tcp(CLIENT4.into(), 0, VIP4.into(), 0, 0);
    p.l4 = L4::Other(1);
    p.payload = vec![8, 0, 0xf7, 0xfe, 0, 1, 0, 0];
    p.build()
}

fn icmp6() -> Vec<u8> {
    let mut p = Pkt::tcp(
        CLIENT6.into(),
        0,
        "ff02::1:ff00:100".parse().expect("ip"),
        0,
        0,
    );
    p.l4 = L4::Other(58);
    p.ttl = 255;
    let mut body = vec![135, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&VIP6.octets());
    p.payload = body;
    p.build()
}

fn lldp() -> Vec<u8> {
    let mut f = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
    f.extend_from_slice(&MAC_CLIENT);
    f.extend_from_slice(&0x88ccu16.to_be_bytes());
    f.extend_from_slice(&[0x02, 0x07, 0x04, 2, 0x77, 0, 0, 0, 0x0a, 0, 0]);
    f.resize(60, 0);
    f
}

/// Inserts an 802.1Q/802.1ad tag right after the MAC addresses.
pub fn insert_tag(f: &[u8], tpid: u16) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    out.extend_from_slice(&tpid.to_be_bytes());
    out.extend_from_slice(&0x0064u16.to_be_bytes());
    out.extend_from_slice(&f[12..]);
    out
}

/// Inserts an 8-byte IPv6 extension header `kind` (hop-by-hop or
/// destination options: a PadN; fragment: offset 0, M clear, an atomic
/// fragment of RFC 6946) after the fixed header at `l3`, fixing the chain
/// and the payload length.
pub fn insert_ext6(f: &[u8], l3: usize, kind: u8) -> Vec<u8> {
    let next = f[l3 + 6];
    let ext: [u8; 8] = match kind {
        44 => [next, 0, 0, 0, 0x12, 0x34, 0x56, 0x78],
        _ => [next, 0, 1, 4, 0, 0, 0, 0],
    };
    let mut out = f[..l3 + 40].to_vec();
    out[l3 + 6] = kind;
    let plen = be16(f, l3 + 4).wrapping_add(8);
    out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&f[l3 + 40..]);
    out
}

// ---------------------------------------------------------------- mutations

/// Where the headers of a frame sit, as far as they can be found: the
/// mutations aim at these boundaries and fields.
#[derive(Clone, Copy, Debug, Default)]
struct Layout {
    l3: usize,
    v4: bool,
    v6: bool,
    l4: Option<usize>,
    proto: u8,
}

fn layout(f: &[u8]) -> Layout {
    let mut lay = Layout {
        l3: 14,
        ..Layout::default()
    };
    if f.len() < 14 {
        return lay;
    }
    let mut et = be16(f, 12);
    while (et == 0x8100 || et == 0x88a8) && f.len() >= lay.l3 + 4 {
        et = be16(f, lay.l3 + 2);
        lay.l3 += 4;
    }
    let l3 = lay.l3;
    if et == 0x0800 && f.len() >= l3 + 20 {
        lay.v4 = true;
        lay.proto = f[l3 + 9];
        lay.l4 = Some(l3 + usize::from(f[l3] & 0x0f) * 4);
    } else if et == 0x86dd && f.len() >= l3 + 40 {
        lay.v6 = true;
        lay.proto = f[l3 + 6];
        lay.l4 = Some(l3 + 40);
    }
    lay
}

fn set16(f: &mut [u8], at: usize, v: u16) {
    if at + 2 <= f.len() {
        f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }
}

/// Applies one random mutation to `f`; returns its name for the report.
pub fn mutate(rng: &mut Rng, f: &mut Vec<u8>) -> String {
    let lay = layout(f);
    let l3 = lay.l3;
    let len = f.len();
    match rng.below(20) {
        0 | 1 => {
            // Cut at or around a header boundary.
            let mut bounds = vec![12, 14, 16, 18, l3 + 1, l3 + 9, l3 + 20, l3 + 40];
            if let Some(l4) = lay.l4 {
                bounds.extend([l4, l4 + 4, l4 + 8, l4 + 13, l4 + 20]);
                if l4 + 13 <= len {
                    bounds.push(l4 + usize::from(f[l4 + 12] >> 4) * 4);
                }
            }
            let at = rng.pick(&bounds) as i64 + rng.below(5) as i64 - 2;
            let at = at.clamp(14, len as i64) as usize;
            f.truncate(at);
            format!("cut at {at}")
        }
        2 => {
            let at = 14 + rng.below(len.saturating_sub(13).max(1));
            f.truncate(at.min(len));
            format!("cut at {}", f.len())
        }
        3 => {
            let n = 1 + rng.below(48);
            let zero = rng.chance(1, 2);
            for _ in 0..n {
                f.push(if zero { 0 } else { rng.byte() });
            }
            format!("{n} bytes of padding")
        }
        4 if lay.v4 => {
            let ihl = rng.below(16) as u8;
            f[l3] = (f[l3] & 0xf0) | ihl;
            format!("IHL {ihl}")
        }
        5 if lay.v4 => {
            let ihl = usize::from(f[l3] & 0x0f) * 4;
            let cur = usize::from(be16(f, l3 + 2));
            let frame = len - l3;
            let choices = [
                0,
                ihl.saturating_sub(1),
                ihl,
                ihl + 1,
                ihl + 7,
                ihl + 8,
                ihl + 19,
                ihl + 20,
                ihl + 21,
                cur.saturating_sub(1),
                cur + 1,
                frame,
                frame + 1,
                0xffff,
                rng.below(0x10000),
            ];
            let v = rng.pick(&choices) as u16;
            set16(f, l3 + 2, v);
            format!("IPv4 total length {v}")
        }
        6 if lay.v4 || lay.v6 => {
            let v = rng.below(16) as u8;
            f[l3] = (f[l3] & 0x0f) | (v << 4);
            format!("IP version {v}")
        }
        7 if lay.v4 => {
            let v = rng.pick(&[
                0x2000u16, 0x0001, 0x2001, 0x4000, 0x8000, 0x0000, 0x1fff, 0x6000,
            ]) | if rng.chance(1, 4) {
                rng.below(0x2000) as u16
            } else {
                0
            };
            set16(f, l3 + 6, v);
            format!("IPv4 flags/offset {v:#06x}")
        }
        8 if lay.v4 || lay.v6 => {
            let p = if rng.chance(1, 5) {
                rng.byte()
            } else {
                rng.pick(&[6u8, 17, 1, 58, 112, 0, 43, 44, 59, 60, 50, 51, 135, 253])
            };
            f[l3 + if lay.v4 { 9 } else { 6 }] = p;
            format!("protocol {p}")
        }
        9 if lay.v6 => {
            let kind = rng.pick(&[0u8, 44, 60, 43]);
            *f = insert_ext6(f, l3, kind);
            format!("IPv6 extension header {kind}")
        }
        10 if lay.v6 => {
            let cur = usize::from(be16(f, l3 + 4));
            let frame = len - l3 - 40;
            let choices = [
                0,
                7,
                8,
                19,
                20,
                21,
                cur.saturating_sub(1),
                cur + 1,
                frame,
                frame + 1,
                0xffff,
            ];
            let v = rng.pick(&choices) as u16;
            set16(f, l3 + 4, v);
            format!("IPv6 payload length {v}")
        }
        11 if lay.l4.is_some_and(|l4| l4 + 13 <= len) && lay.proto == 6 => {
            let l4 = lay.l4.unwrap_or_default();
            let d = rng.below(16) as u8;
            f[l4 + 12] = (f[l4 + 12] & 0x0f) | (d << 4);
            format!("TCP data offset {d}")
        }
        12 if lay.l4.is_some_and(|l4| l4 + 14 <= len) && lay.proto == 6 => {
            let l4 = lay.l4.unwrap_or_default();
            let flags = if rng.chance(1, 2) {
                rng.byte()
            } else {
                rng.pick(&[
                    TCP_SYN,
                    TCP_SYN | TCP_ACK,
                    TCP_ACK,
                    TCP_RST,
                    TCP_RST | TCP_ACK,
                    TCP_FIN,
                    TCP_FIN | TCP_ACK,
                    TCP_SYN | TCP_FIN,
                    TCP_SYN | TCP_RST,
                    0,
                    0xff,
                ])
            };
            f[l4 + 13] = flags;
            format!("TCP flags {flags:#04x}")
        }
        13 if lay.l4.is_some_and(|l4| l4 + 6 <= len) && lay.proto == 17 => {
            let l4 = lay.l4.unwrap_or_default();
            let cur = usize::from(be16(f, l4 + 4));
            let choices = [
                0,
                1,
                7,
                8,
                9,
                cur.saturating_sub(1),
                cur + 1,
                len - l4,
                0xffff,
            ];
            let v = rng.pick(&choices) as u16;
            set16(f, l4 + 4, v);
            format!("UDP length {v}")
        }
        14 => {
            let et = rng.pick(&[
                0x0800u16, 0x86dd, 0x0806, 0x8100, 0x88a8, 0x88cc, 0x9100, 0x0000,
            ]);
            let et = if rng.chance(1, 5) {
                rng.below(0x10000) as u16
            } else {
                et
            };
            let at = if rng.chance(1, 2) { 12 } else { l3 - 2 };
            set16(f, at, et);
            format!("ethertype at {at} {et:#06x}")
        }
        15 => {
            let tpid = rng.pick(&[0x8100u16, 0x88a8, 0x9100]);
            *f = insert_tag(f, tpid);
            format!("tag {tpid:#06x} inserted")
        }
        16 if l3 > 14 && len >= l3 => {
            f.drain(12..16);
            "outer tag removed".to_string()
        }
        17 if lay.v4 || lay.v6 => {
            // Retarget: another destination address, another port.
            if lay.v4 {
                let d = rng.pick(&[VIP4, VIP4_DEAD, VIP4_LOCAL, NODE4, CLIENT4]);
                f[l3 + 16..l3 + 20].copy_from_slice(&d.octets());
            } else {
                let d = rng.pick(&[VIP6, VIP6_DEAD, NODE6, CLIENT6]);
                f[l3 + 24..l3 + 40].copy_from_slice(&d.octets());
            }
            if let Some(l4) = lay.l4.filter(|l4| l4 + 4 <= len) {
                let any = rng.below(0x10000) as u16;
                let p = rng.pick(&[PORT, DNS, 22, REPLY_PORT, 59999, 60000, any]);
                set16(f, l4 + 2, p);
            }
            if rng.chance(1, 4) {
                // Flooded to us for another host, or broadcast.
                let other = [0x02, 0x77, 0, 0, 0, 0x0c];
                f[..6].copy_from_slice(&rng.pick(&[other, [0xff; 6], [0x01, 0, 0x5e, 0, 0, 1]]));
                return "retargeted to another MAC".to_string();
            }
            "retargeted".to_string()
        }
        18 => {
            let n = 1 + rng.below(3);
            for _ in 0..n {
                let at = rng.below(len.max(1));
                if at < f.len() {
                    f[at] ^= 1 << rng.below(8);
                }
            }
            format!("{n} bit flips")
        }
        _ => {
            let at = 12 + rng.below(len.saturating_sub(12).max(1));
            if at < f.len() {
                let any = rng.byte();
                f[at] = rng.pick(&[0u8, 0xff, 0x7f, 0x80, 5, 6, 17, 0x45, 0x60, any]);
            }
            format!("byte {at} set")
        }
    }
}

/// A frame of random bytes with an Ethernet header that usually says IP.
pub fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let len = 14 + rng.below(120);
    let mut f: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    f[..6].copy_from_slice(&MAC_LB);
    let any = rng.below(0x10000) as u16;
    let et = rng.pick(&[0x0800u16, 0x86dd, 0x8100, 0x0806, any]);
    f[12..14].copy_from_slice(&et.to_be_bytes());
    if et == 0x0800 && len > 15 && rng.chance(1, 2) {
        f[14] = 0x45;
    }
    f
}

/// Packet `i` of the run: fixtures unchanged, mutated once to thrice, or
/// random frames. Returns the frame (at least 14 bytes) and how it was made.
pub fn generate(rng: &mut Rng, fixtures: &[(&'static str, Vec<u8>)]) -> (Vec<u8>, String) {
    let roll = rng.below(100);
    if roll < 8 {
        return (random_frame(rng), "random bytes".to_string());
    }
    let (name, base) = &fixtures[rng.below(fixtures.len())];
    let mut f = base.clone();
    let mut how = vec![name.to_string()];
    if roll >= 12 {
        for _ in 0..1 + rng.below(3) {
            how.push(mutate(rng, &mut f));
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
    (f, how.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(f: &[u8]) -> Reason {
        classify(f, &services()).reason
    }

    /// The reference itself, on hand-made cases whose answer the spec
    /// states outright: a reference that said "pass" to everything would
    /// agree with a program that passes everything.
    #[test]
    fn reference_knows_the_rules() {
        let fx = fixtures();
        let get = |n: &str| {
            fx.iter()
                .find(|(name, _)| *name == n)
                .map(|(_, f)| f.clone())
                .unwrap_or_else(|| panic!("no fixture {n}"))
        };
        assert_eq!(reason(&get("v4 SYN to the VIP")), Reason::TxDsr);
        assert_eq!(reason(&get("v4 SYN with IP options")), Reason::TxDsr);
        assert_eq!(reason(&get("v4 SYN with an 802.1Q tag")), Reason::TxDsr);
        assert_eq!(
            reason(&get("v4 SYN double-tagged (QinQ)")),
            Reason::PassNotIp
        );
        assert_eq!(reason(&get("v4 SYN to the dead service")), Reason::TxRst);
        assert_eq!(
            reason(&get("v4 SYN to the local backend")),
            Reason::PassLocalBackend
        );
        assert_eq!(
            reason(&get("v6 UDP to the dead UDP service")),
            Reason::DropNoBackend
        );
        assert_eq!(reason(&get("ARP request for the VIP")), Reason::PassNotIp);
        assert_eq!(reason(&get("VRRPv3 advert (IPv4)")), Reason::PassNotL4);
        assert_eq!(reason(&get("VRRPv3 advert (IPv6)")), Reason::PassNotL4);
        assert_eq!(
            reason(&get("v4 first fragment to the VIP")),
            Reason::PassFragment
        );
        assert_eq!(
            reason(&get("v4 later fragment to the VIP")),
            Reason::PassFragment
        );
        assert_eq!(
            reason(&get("v6 SYN behind a fragment header")),
            Reason::PassIpv6ExtHeader
        );
        assert_eq!(reason(&get("v4 UDP to a TCP port")), Reason::PassNoService);
        assert_eq!(reason(&get("v4 ACK with Ethernet padding")), Reason::TxDsr);

        // Flooded to us for another host: not ours, whatever it carries; a
        // port no service uses stays "no service".
        let mut other = get("v4 SYN to the VIP");
        other[5] ^= 1;
        assert_eq!(reason(&other), Reason::PassOtherHost);
        let mut ssh = get("v4 SSH to the node");
        ssh[..6].copy_from_slice(&[0xff; 6]);
        assert_eq!(reason(&ssh), Reason::PassNoService);

        // The TCP header must be inside the IP total length, even when the
        // frame's padding would hold it.
        let mut short = get("v4 SYN to the VIP");
        let l3 = 14;
        short[l3 + 2..l3 + 4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(reason(&short), Reason::PassMalformed);
        // A data offset past the segment.
        let mut doff = get("v4 SYN to the VIP");
        doff[14 + 20 + 12] = 6 << 4;
        assert_eq!(reason(&doff), Reason::PassMalformed);
        // A UDP length beyond the IP payload.
        let mut ulen = get("v4 UDP to the UDP service");
        ulen[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(reason(&ulen), Reason::PassMalformed);
    }

    /// The RST the reference expects is a valid segment (checksums computed
    /// from scratch by the independent decoder) with the RFC 9293 numbers.
    #[test]
    fn reference_rst_is_a_valid_rst() {
        for (name, f) in fixtures()
            .into_iter()
            .filter(|(n, _)| n.contains("dead service") && !n.contains("UDP"))
        {
            let e = classify(&f, &services());
            assert_eq!(e.reason, Reason::TxRst, "{name}");
            let i = crate::packet::decode(&f).expect("input decodes");
            let o = crate::packet::decode(&e.out).expect("RST decodes");
            assert!(o.ip_csum_ok && o.l4_csum_ok, "{name}: checksums {o:?}");
            assert_eq!((o.src, o.dst), (i.dst, i.src), "{name}: addresses");
            assert_eq!((o.sport, o.dport), (i.dport, i.sport), "{name}: ports");
            assert_eq!(o.tcp_flags & TCP_RST, TCP_RST, "{name}: flags");
            assert!(o.payload.is_empty(), "{name}: payload");
            assert_eq!(o.ttl, 64, "{name}: TTL");
        }
        let fin = fixtures()
            .into_iter()
            .find(|(n, _)| n.starts_with("v6 FIN without ACK"))
            .expect("fixture")
            .1;
        let o = crate::packet::decode(&classify(&fin, &services()).out).expect("decode");
        // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>: 3 bytes and the FIN.
        assert_eq!(
            (o.seq, o.ack, o.tcp_flags),
            (0, 1000 + 3 + 1, TCP_RST | TCP_ACK)
        );
    }

    #[test]
    fn generator_is_deterministic_and_never_short() {
        let fx = fixtures();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..2000)
                .map(|_| generate(&mut rng, &fx).0)
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        assert!(a.iter().all(|f| f.len() >= 14));
        // Every reason a parser can give shows up in a modest sample.
        let seen: std::collections::BTreeSet<Reason> =
            a.iter().map(|f| classify(f, &services()).reason).collect();
        for r in [
            Reason::PassNotIp,
            Reason::PassNotL4,
            Reason::PassNoService,
            Reason::PassFragment,
            Reason::PassIpv6ExtHeader,
            Reason::PassMalformed,
            Reason::PassLocalBackend,
            Reason::TxDsr,
            Reason::TxRst,
            Reason::DropNoBackend,
        ] {
            assert!(seen.contains(&r), "{r:?} never generated: {seen:?}");
        }
    }
}
