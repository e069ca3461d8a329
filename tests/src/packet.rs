//! A packet builder for program tests, and an independent decoder and checksum
//! verifier for what the program emits. Nothing here shares code with the
//! datapath: checksums are computed from scratch over the whole header and
//! payload (RFC 1071), so an incremental-update bug in the program shows up.

use std::net::IpAddr;

pub const MAC_CLIENT: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x0a];
pub const MAC_LB: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x0b];

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp,
    /// Any other protocol number, with the payload as its body.
    Other(u8),
}

/// A frame description; `build` turns it into bytes with valid checksums.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options (padded to a multiple of 4 with zeros).
    pub ip_options: Vec<u8>,
    /// IPv4 flags+fragment offset field (host order), e.g. 0x2000 for MF.
    pub frag: u16,
    pub ttl: u8,
    /// TCP options (padded to a multiple of 4 with zeros).
    pub tcp_options: Vec<u8>,
}

impl Pkt {
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Pkt {
        Pkt {
            dst_mac: MAC_LB,
            src_mac: MAC_CLIENT,
            vlan: None,
            src,
            dst,
            sport,
            dport,
            l4: L4::Tcp {
                flags,
                seq: 1000,
                ack: if flags & TCP_ACK != 0 { 5000 } else { 0 },
            },
            payload: vec![],
            ip_options: vec![],
            frag: 0x4000, // DF
            ttl: 64,
            tcp_options: vec![],
        }
    }

    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Pkt {
        Pkt {
            l4: L4::Udp,
            ..Pkt::tcp(src, sport, dst, dport, 0)
        }
    }

    pub fn payload(mut self, p: &[u8]) -> Pkt {
        self.payload = p.to_vec();
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = match self.l4 {
            L4::Tcp { flags, seq, ack } => {
                let mut opts = self.tcp_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let doff = (20 + opts.len()) / 4;
                let mut t = Vec::new();
                t.extend_from_slice(&self.sport.to_be_bytes());
                t.extend_from_slice(&self.dport.to_be_bytes());
                t.extend_from_slice(&seq.to_be_bytes());
                t.extend_from_slice(&ack.to_be_bytes());
                t.push((doff as u8) << 4);
                t.push(flags);
                t.extend_from_slice(&64240u16.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(&opts);
                t.extend_from_slice(&self.payload);
                t
            }
            L4::Udp => {
                let mut t = Vec::new();
                t.extend_from_slice(&self.sport.to_be_bytes());
                t.extend_from_slice(&self.dport.to_be_bytes());
                t.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                t.extend_from_slice(&[0, 0]);
                t.extend_from_slice(&self.payload);
                t
            }
            L4::Other(_) => self.payload.clone(),
        };
        let proto = match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp => 17,
            L4::Other(p) => p,
        };
        if let Some(off) = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp => Some(6),
            L4::Other(_) => None,
        } {
            let c = l4_checksum(self.src, self.dst, proto, &l4);
            l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
        }

        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(tag) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&tag.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut opts = self.ip_options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let ihl = (20 + opts.len()) / 4;
                let mut h = Vec::new();
                h.push(0x40 | ihl as u8);
                h.push(0);
                h.extend_from_slice(&((ihl * 4 + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&0x1234u16.to_be_bytes());
                h.extend_from_slice(&self.frag.to_be_bytes());
                h.push(self.ttl);
                h.push(proto);
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&opts);
                let c = checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&h);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.push(proto);
                f.push(self.ttl);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("packet builder: source and destination families differ"),
        }
        f.extend_from_slice(&l4);
        f
    }
}

/// RFC 1071 checksum of `data`, computed from scratch.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP checksum with the pseudo header (RFC 9293 section 3.1, RFC 8200
/// section 8.1), from scratch.
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut buf = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            buf.extend_from_slice(&s.octets());
            buf.extend_from_slice(&d.octets());
            buf.extend_from_slice(&[0, proto]);
            buf.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            buf.extend_from_slice(&s.octets());
            buf.extend_from_slice(&d.octets());
            buf.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            buf.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("checksum: mixed families"),
    }
    buf.extend_from_slice(l4);
    let c = checksum(&buf);
    // UDP sends a computed 0 as 0xffff (RFC 768); TCP never yields 0 here.
    if c == 0 && proto == 17 { 0xffff } else { c }
}

/// A decoded frame, for checking each field the program rewrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub ttl: u8,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub payload: Vec<u8>,
    /// The IPv4 header checksum is valid (always true for IPv6).
    pub ip_csum_ok: bool,
    /// The L4 checksum is valid.
    pub l4_csum_ok: bool,
}

/// Decodes a frame built like `Pkt` (Ethernet, optional 802.1Q, IPv4/IPv6,
/// TCP/UDP), checking lengths and both checksums from scratch.
pub fn decode(f: &[u8]) -> Result<Decoded, String> {
    let need = |n: usize, what: &str| {
        if f.len() < n {
            Err(format!("frame of {} bytes too short for {what}", f.len()))
        } else {
            Ok(())
        }
    };
    need(14, "Ethernet")?;
    let mut dst_mac = [0; 6];
    let mut src_mac = [0; 6];
    dst_mac.copy_from_slice(&f[0..6]);
    src_mac.copy_from_slice(&f[6..12]);
    let mut et = u16::from_be_bytes([f[12], f[13]]);
    let mut off = 14;
    let mut vlan = None;
    if et == 0x8100 {
        need(18, "VLAN")?;
        vlan = Some(u16::from_be_bytes([f[14], f[15]]));
        et = u16::from_be_bytes([f[16], f[17]]);
        off = 18;
    }
    let (src, dst, ttl, proto, l4, ip_csum_ok) = match et {
        0x0800 => {
            need(off + 20, "IPv4")?;
            let ihl = (f[off] & 0x0f) as usize * 4;
            let tot = u16::from_be_bytes([f[off + 2], f[off + 3]]) as usize;
            need(off + tot, "IPv4 total length")?;
            if tot < ihl {
                return Err("IPv4 total length below header length".into());
            }
            let h = &f[off..off + ihl];
            let s: [u8; 4] = h[12..16].try_into().map_err(|_| "addr")?;
            let d: [u8; 4] = h[16..20].try_into().map_err(|_| "addr")?;
            (
                IpAddr::from(s),
                IpAddr::from(d),
                h[8],
                h[9],
                &f[off + ihl..off + tot],
                checksum(h) == 0,
            )
        }
        0x86dd => {
            need(off + 40, "IPv6")?;
            let plen = u16::from_be_bytes([f[off + 4], f[off + 5]]) as usize;
            need(off + 40 + plen, "IPv6 payload length")?;
            let s: [u8; 16] = f[off + 8..off + 24].try_into().map_err(|_| "addr")?;
            let d: [u8; 16] = f[off + 24..off + 40].try_into().map_err(|_| "addr")?;
            (
                IpAddr::from(s),
                IpAddr::from(d),
                f[off + 7],
                f[off + 6],
                &f[off + 40..off + 40 + plen],
                true,
            )
        }
        other => return Err(format!("ethertype {other:#06x} is not IP")),
    };
    let (sport, dport, tcp_flags, seq, ack, payload, l4_csum_ok) = match proto {
        6 => {
            if l4.len() < 20 {
                return Err("TCP header cut".into());
            }
            let doff = (l4[12] >> 4) as usize * 4;
            if doff < 20 || doff > l4.len() {
                return Err(format!("TCP data offset {doff} invalid"));
            }
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
                l4[13],
                u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]),
                u32::from_be_bytes([l4[8], l4[9], l4[10], l4[11]]),
                l4[doff..].to_vec(),
                l4_checksum_ok(src, dst, 6, l4),
            )
        }
        17 => {
            if l4.len() < 8 {
                return Err("UDP header cut".into());
            }
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
                0,
                0,
                0,
                l4[8..].to_vec(),
                l4_checksum_ok(src, dst, 17, l4),
            )
        }
        _ => (0, 0, 0, 0, 0, l4.to_vec(), true),
    };
    Ok(Decoded {
        dst_mac,
        src_mac,
        vlan,
        src,
        dst,
        ttl,
        proto,
        sport,
        dport,
        tcp_flags,
        seq,
        ack,
        payload,
        ip_csum_ok,
        l4_csum_ok,
    })
}

/// A received segment's checksum is valid when summing it with the pseudo header
/// gives all ones (checksum over everything == 0).
fn l4_checksum_ok(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> bool {
    let mut zeroed = l4.to_vec();
    let off = if proto == 6 { 16 } else { 6 };
    let sent = u16::from_be_bytes([zeroed[off], zeroed[off + 1]]);
    zeroed[off] = 0;
    zeroed[off + 1] = 0;
    l4_checksum(src, dst, proto, &zeroed) == sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_packets_decode_with_valid_checksums() {
        let v4 = Pkt::tcp(
            "10.0.0.1".parse().expect("ip"),
            40000,
            "10.0.0.100".parse().expect("ip"),
            6443,
            TCP_SYN,
        )
        .payload(b"hello");
        let d = decode(&v4.build()).expect("decode");
        assert!(d.ip_csum_ok && d.l4_csum_ok);
        assert_eq!(d.payload, b"hello");
        let mut v6 = Pkt::udp(
            "fd77::1".parse().expect("ip"),
            5000,
            "fd77::100".parse().expect("ip"),
            53,
        );
        v6.vlan = Some(42);
        let d = decode(&v6.build()).expect("decode");
        assert!(d.l4_csum_ok);
        assert_eq!(d.vlan, Some(42));
        let mut opt = v4.clone();
        opt.ip_options = vec![1, 1, 1, 1, 1, 1, 1, 0]; // NOPs and EOL
        let d = decode(&opt.build()).expect("decode");
        assert!(d.ip_csum_ok && d.l4_csum_ok);
        assert_eq!(d.dport, 6443);
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let p = Pkt::tcp(
            "10.0.0.1".parse().expect("ip"),
            1,
            "10.0.0.2".parse().expect("ip"),
            2,
            TCP_ACK,
        )
        .build();
        let mut bad = p.clone();
        let n = bad.len();
        bad[n - 1] ^= 1; // window/urgent/checksum area of the TCP header
        assert!(!decode(&bad).expect("decode").l4_csum_ok);
        let mut bad = p;
        bad[14 + 8] ^= 1; // TTL
        assert!(!decode(&bad).expect("decode").ip_csum_ok);
    }
}
