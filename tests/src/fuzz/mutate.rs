//! The mutations: what a valid frame becomes (truncations around every header
//! boundary, bad lengths and IHL, tags, extension headers, flags, addresses),
//! and the generator that picks a fixture or random bytes and mutates it.

use super::Rng;
use super::frames::{insert_ext6, insert_tag};
use super::reference::{
    CLIENT4, CLIENT6, DNS, NODE4, NODE6, PORT, REPLY_PORT, VIP4, VIP4_DEAD, VIP4_LOCAL, VIP6,
    VIP6_DEAD, be16,
};
use crate::packet::{MAC_LB, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

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
    use super::super::frames::fixtures;
    use super::super::reference::{classify, services};
    use super::*;
    use vip_common::Reason;

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
            Reason::AbsorbRst,
        ] {
            assert!(seen.contains(&r), "{r:?} never generated: {seen:?}");
        }
    }
}
