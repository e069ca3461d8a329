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
//! (TCP: an RST per RFC 9293 3.10.7.1, `TxRst`; an RST: `AbsorbRst`,
//! untouched; UDP: `DropNoBackend`, untouched).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use vip_common::Reason;

use crate::packet::{MAC_LB, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::progtest::{XDP_DROP, XDP_PASS, XDP_TX};

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

pub(super) fn be16(b: &[u8], at: usize) -> u16 {
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
            // RFC 9293 3.10.7.1: never answer an RST (absorbed, not a
            // loss); UDP has no answer.
            if proto == 6 && f[l4 + 13] & TCP_RST != 0 {
                return Expected::untouched(XDP_DROP, Reason::AbsorbRst, f);
            }
            if proto != 6 {
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

#[cfg(test)]
mod tests {
    use super::super::frames::fixtures;
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
}
