//! tcpdump as an independent decoder: capture on a lab node's eth0 into a
//! pcap file, read it back with `tcpdump -nn -v -e -tt -xx` and parse the
//! text of the packets the VRRP tests look at (VRRP, ARP, IPv6 neighbour
//! advertisements), and answer what those tests ask of a capture: the
//! adverts from one source and their interval, the announcements of a VIP,
//! when (in epoch seconds, as tcpdump -tt prints) something happened.
//!
//! The formats are tcpdump 4.99.3's (Debian 12), taken from real captures of
//! keepalived 2.2.7; the unit tests hold those captures as fixtures. With
//! `-v` tcpdump verifies the VRRPv3 checksum over the IPv4 or IPv6
//! pseudo-header and the ICMPv6 checksum, and says so in the text.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::netns::{Lab, NODE_IF, Proc};
use crate::stats::median;

/// VRRP over IPv4 or IPv6 (IP protocol 112; no extension headers).
pub const VRRP_FILTER: &str = "(ip proto 112 or ip6 proto 112)";
/// ARP, gratuitous or not.
pub const ARP_FILTER: &str = "arp";
/// ICMPv6 neighbour advertisements (type 136; no extension headers).
pub const NA_FILTER: &str = "(icmp6 and ip6[40] == 136)";
/// ICMPv6 neighbour solicitations and advertisements.
pub const ND_FILTER: &str = "(icmp6 and (ip6[40] == 135 or ip6[40] == 136))";

/// `a or b or ...` for the filters above.
pub fn any_of(filters: &[&str]) -> String {
    filters.join(" or ")
}

static CAPTURE_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A tcpdump writing a pcap file in the lab dir.
pub struct Capture {
    proc: Proc,
    file: PathBuf,
    node: String,
}

impl Capture {
    /// Starts `tcpdump -i eth0 -nn -U -w <file> <filter>` in `node` and
    /// returns once it is listening (no packet after this call is missed).
    pub fn start(lab: &Lab, node: &str, filter: &str) -> Capture {
        let n = CAPTURE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let file = lab.dir().join(format!("capture-{node}-{n}.pcap"));
        let path = file.to_string_lossy().into_owned();
        // -Z root: Debian's tcpdump otherwise drops to user tcpdump, which
        // may not write into the root-owned lab dir. --immediate-mode:
        // without it libpcap's TPACKET_V3 ring hands packets over in blocks,
        // up to a second late, and a SIGINT drops the unfinished block (the
        // last second of the test). -U: write each packet as it comes, so
        // `snapshot` sees it.
        let proc = lab.spawn(
            node,
            "tcpdump",
            &[
                "-Z",
                "root",
                "--immediate-mode",
                "-i",
                NODE_IF,
                "-nn",
                "-U",
                "-w",
                &path,
                filter,
            ],
            &[],
        );
        proc.wait_for_logs("listening on", Duration::from_secs(5));
        Capture {
            proc,
            file,
            node: node.to_string(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.file
    }

    /// tcpdump's own output (the "listening on" and packet count lines).
    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// The packets captured so far (tcpdump keeps running).
    pub fn snapshot(&self) -> Vec<Packet> {
        decode_file(&self.file)
    }

    /// Polls the capture until a packet matches `pred`; returns it. Panics
    /// naming `what` and listing the capture on timeout.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Packet) -> bool,
    ) -> Packet {
        let deadline = Instant::now() + timeout;
        loop {
            let packets = self.snapshot();
            if let Some(p) = packets.iter().find(|p| pred(p)) {
                return p.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "capture on {}: no {what} within {timeout:?}; captured:\n{}",
                    self.node,
                    dump(&packets)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops tcpdump (SIGINT, which flushes the file) and decodes the file.
    pub fn stop(self) -> Vec<Packet> {
        self.proc.signal(libc::SIGINT);
        if self.proc.wait_timeout(Duration::from_secs(5)).is_none() {
            panic!(
                "tcpdump on {} did not stop on SIGINT\n{}",
                self.node,
                self.proc.logs()
            );
        }
        decode_file(&self.file)
    }
}

/// `tcpdump -r <file> -nn -v -e -tt -xx`, parsed. A file still being
/// written may end in a partial record; tcpdump then prints what it read and
/// fails with "truncated dump file", which is fine here.
pub fn decode_file(file: &Path) -> Vec<Packet> {
    let out = Command::new("tcpdump")
        .arg("-r")
        .arg(file)
        .args(["-nn", "-v", "-e", "-tt", "-xx"])
        .output()
        .unwrap_or_else(|e| panic!("run tcpdump -r {}: {e}", file.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stderr.contains("truncated dump file") {
        panic!(
            "tcpdump -r {} failed ({}): {}",
            file.display(),
            out.status,
            stderr.trim()
        );
    }
    parse_dump(&String::from_utf8_lossy(&out.stdout))
}

/// One frame as tcpdump printed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Seconds since the epoch (`-tt`): comparable with `SystemTime::now()`.
    pub time: f64,
    pub src_mac: String,
    pub dst_mac: String,
    /// tcpdump's decode: the header line and its continuation lines, without
    /// the hex dump.
    pub lines: String,
    /// The frame from the `-xx` hex dump, Ethernet header included.
    pub bytes: Vec<u8>,
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lines)
    }
}

/// One packet per line group, for panic messages.
pub fn dump(packets: &[Packet]) -> String {
    packets.iter().map(|p| format!("{p}\n")).collect::<String>()
}

/// Seconds since the epoch, as `Packet::time` counts them, for placing
/// test events among captured packets.
pub fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// The VRRP group of `vip`'s family and its Ethernet address (RFC 9568
/// sections 5.1.1.2, 5.1.2.2 and 7.3), where multicast adverts go.
pub fn vrrp_group(vip: IpAddr) -> (IpAddr, &'static str) {
    if vip.is_ipv6() {
        (
            IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12)),
            "33:33:00:00:00:12",
        )
    } else {
        (IpAddr::from([224, 0, 0, 18]), "01:00:5e:00:00:12")
    }
}

/// (time, advert) for every VRRP packet from `src`.
pub fn adverts_from(packets: &[Packet], src: IpAddr) -> Vec<(f64, VrrpPkt)> {
    packets
        .iter()
        .filter_map(|p| Some((p.time, p.vrrp()?)))
        .filter(|(_, v)| v.src == src)
        .collect()
}

/// The median time between consecutive `adverts`, seconds; panics with
/// fewer than two.
pub fn median_gap(adverts: &[(f64, VrrpPkt)]) -> f64 {
    let gaps: Vec<f64> = adverts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    median(&gaps).expect("fewer than two adverts")
}

/// Times of the packets that announce `vip` for `mac`
/// (`Packet::is_announcement`).
pub fn announcements(packets: &[Packet], vip: IpAddr, mac: &str, na_srcs: &[IpAddr]) -> Vec<f64> {
    packets
        .iter()
        .filter(|p| p.is_announcement(vip, mac, na_srcs))
        .map(|p| p.time)
        .collect()
}

/// Splits tcpdump text into packets: a packet starts at a line with no
/// leading whitespace; indented lines continue it; `0x....:` lines are hex.
pub fn parse_dump(text: &str) -> Vec<Packet> {
    let mut packets: Vec<Packet> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            if let Some(p) = parse_header(line) {
                packets.push(p);
            }
            continue;
        }
        let Some(p) = packets.last_mut() else {
            continue;
        };
        let trimmed = line.trim_start();
        match trimmed
            .strip_prefix("0x")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((_offset, hex)) => p.bytes.extend(parse_hex(hex)),
            None => {
                p.lines.push('\n');
                p.lines.push_str(line);
            }
        }
    }
    packets
}

/// `1795480371.008882 02:77:00:00:00:11 > 01:00:5e:00:00:12, ethertype ...`
fn parse_header(line: &str) -> Option<Packet> {
    let mut words = line.split_whitespace();
    let time = words.next()?.parse().ok()?;
    let src_mac = words.next()?.to_string();
    if words.next()? != ">" {
        return None;
    }
    let dst_mac = words.next()?.trim_end_matches(',').to_string();
    Some(Packet {
        time,
        src_mac,
        dst_mac,
        lines: line.to_string(),
        bytes: Vec::new(),
    })
}

/// `  ffff ffff ffff 0277 ...` (groups of four hex digits, the last maybe two).
fn parse_hex(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .flat_map(|group| {
            (0..group.len() / 2).filter_map(move |i| {
                group
                    .get(2 * i..2 * i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
        })
        .collect()
}

/// A VRRP advertisement as tcpdump decoded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VrrpPkt {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 TTL or IPv6 hop limit (RFC 9568 section 7.1: must be 255).
    pub hop_limit: u8,
    /// IPv4 TOS or IPv6 traffic class (keepalived sends 0xc0, CS6).
    pub tos: u8,
    pub version: u8,
    pub vrid: u8,
    pub prio: u8,
    /// Max Advert Interval in centiseconds (VRRPv2's seconds converted).
    pub intvl_cs: u16,
    pub addrs: Vec<IpAddr>,
    /// tcpdump found no "(bad vrrp cksum ...)"; it checks VRRPv3 over the
    /// IPv4 or IPv6 pseudo-header.
    pub checksum_ok: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

/// An ARP packet: operation and addresses from tcpdump's text, hardware
/// addresses from the frame bytes (tcpdump prints the sender's only in
/// replies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPkt {
    pub op: ArpOp,
    pub sender_ip: IpAddr,
    pub sender_mac: String,
    pub target_ip: IpAddr,
    pub target_mac: String,
}

impl ArpPkt {
    /// An announcement (RFC 5227 section 3): sender and target IP equal.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }
}

/// An ICMPv6 neighbour advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NaPkt {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub hop_limit: u8,
    pub target: IpAddr,
    /// The target link-layer address option (tcpdump: "destination
    /// link-address option (2)").
    pub tlla: Option<String>,
    pub flags_router: bool,
    pub flags_solicited: bool,
    pub flags_override: bool,
    /// tcpdump printed "[icmp6 sum ok]".
    pub checksum_ok: bool,
}

impl Packet {
    /// Whether this frame, sent by `mac`, is an unsolicited announcement
    /// that `vip` is at `mac`: a gratuitous ARP request (`Request who-has
    /// VIP tell VIP`, broadcast, `mac` as sender) or an unsolicited NA to
    /// all-nodes from one of `na_srcs`, with the override flag, neither
    /// solicited nor router, hop limit 255, a good checksum and `mac` as
    /// target link-layer address (RFC 5227 section 3, RFC 4861 section
    /// 7.2.6).
    pub fn is_announcement(&self, vip: IpAddr, mac: &str, na_srcs: &[IpAddr]) -> bool {
        if self.src_mac != mac {
            return false;
        }
        if let Some(a) = self.arp() {
            a.op == ArpOp::Request
                && a.is_gratuitous()
                && a.sender_ip == vip
                && a.sender_mac == mac
                && self.dst_mac == "ff:ff:ff:ff:ff:ff"
        } else if let Some(na) = self.na() {
            na.target == vip
                && na_srcs.contains(&na.src)
                && na.dst == IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1))
                && na.tlla.as_deref() == Some(mac)
                && na.flags_override
                && !na.flags_solicited
                && !na.flags_router
                && na.hop_limit == 255
                && na.checksum_ok
        } else {
            false
        }
    }

    /// IPv4:
    /// ```text
    /// T 02:77:00:00:00:11 > 01:00:5e:00:00:12, ethertype IPv4 (0x0800), length 46: (tos 0xc0, ttl 255, id 1, offset 0, flags [none], proto VRRP (112), length 32)
    ///     10.77.0.11 > 224.0.0.18: VRRPv3, Advertisement, vrid 51, prio 150, intvl 10cs, length 12, addrs: 10.77.0.100
    /// ```
    /// IPv6 (one line): `(class 0xc0, flowlabel 0xb4f03, hlim 255, next-header
    /// VRRP (112) payload length: 24) fe80::77:ff:fe00:11 > ff02::12: VRRPv3, ...`.
    /// tcpdump adds `(ttl N)` after the type when the TTL is not 255,
    /// `(bad vrrp cksum dead)` before the addresses, and counts them as
    /// `addrs(2): a,b` when there are several.
    pub fn vrrp(&self) -> Option<VrrpPkt> {
        let at = self.lines.find(": VRRPv")?;
        let (src, dst) = endpoints(&self.lines[..at])?;
        let body = self.lines[at + 2..].lines().next()?;
        let mut fields = body.split(", ");
        let version = fields.next()?.strip_prefix("VRRPv")?.parse().ok()?;
        if fields.next()? != "Advertisement" {
            return None;
        }
        let (mut vrid, mut prio, mut intvl_cs, mut addrs) = (None, None, None, None);
        let mut checksum_ok = true;
        for field in fields {
            if let Some(v) = field.strip_prefix("vrid ") {
                vrid = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("prio ") {
                prio = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("intvl ") {
                intvl_cs = match v.strip_suffix("cs") {
                    Some(cs) => cs.parse().ok(),
                    None => v
                        .strip_suffix('s')
                        .and_then(|s| s.parse::<u16>().ok())
                        .and_then(|s| s.checked_mul(100)),
                };
            } else if field.starts_with("(bad vrrp cksum") {
                checksum_ok = false;
            } else if let Some(rest) = field.strip_prefix("addrs") {
                let (count, list) = rest.split_once(": ")?;
                let list: Vec<IpAddr> = list
                    .split(',')
                    .map(|a| a.trim().parse().ok())
                    .collect::<Option<_>>()?;
                let count = match count.strip_prefix('(') {
                    Some(n) => n.strip_suffix(')')?.parse().ok()?,
                    None => 1,
                };
                if list.len() != count {
                    return None;
                }
                addrs = Some(list);
            }
        }
        let v6 = src.is_ipv6();
        Some(VrrpPkt {
            src,
            dst,
            hop_limit: number_after(&self.lines, if v6 { "hlim " } else { "ttl " })?,
            tos: if v6 {
                hex_after(&self.lines, "class ").unwrap_or(0)
            } else {
                hex_after(&self.lines, "tos ")?
            },
            version,
            vrid: vrid?,
            prio: prio?,
            intvl_cs: intvl_cs?,
            addrs: addrs.unwrap_or_default(),
            checksum_ok,
        })
    }

    /// `... ethertype ARP (0x0806), length 42: Ethernet (len 6), IPv4 (len 4),
    /// Request who-has 10.77.0.100 (ff:ff:ff:ff:ff:ff) tell 10.77.0.100, length 28`
    /// or `... Reply 10.77.0.10 is-at 02:77:00:00:00:10, length 28`.
    pub fn arp(&self) -> Option<ArpPkt> {
        if !self.lines.contains("ethertype ARP") {
            return None;
        }
        let words: Vec<&str> = self
            .lines
            .split_whitespace()
            .map(|w| w.trim_end_matches(','))
            .collect();
        let pos = |w: &str| words.iter().position(|x| *x == w);
        let ip = |i: usize| words.get(i).and_then(|w| w.parse::<IpAddr>().ok());
        let (op, sender_ip, target_ip) = if let Some(i) = pos("who-has") {
            let tell = pos("tell")?;
            (ArpOp::Request, ip(tell + 1)?, ip(i + 1)?)
        } else if let Some(i) = pos("is-at") {
            // A reply's target IP is not printed; it is in the bytes.
            (
                ArpOp::Reply,
                ip(i.checked_sub(1)?)?,
                arp_ip(&self.bytes, 38)?,
            )
        } else {
            return None;
        };
        // Ethernet (14) + htype, ptype, hlen, plen, op (8): sha, spa, tha, tpa.
        let mac = |at: usize| -> Option<String> {
            let m: [u8; 6] = self.bytes.get(at..at + 6)?.try_into().ok()?;
            Some(crate::netns::mac_to_string(&m))
        };
        Some(ArpPkt {
            op,
            sender_ip,
            sender_mac: mac(22)?,
            target_ip,
            target_mac: mac(32)?,
        })
    }

    /// `... (hlim 255, next-header ICMPv6 (58) payload length: 32) fd77::100 > ff02::1:
    /// [icmp6 sum ok] ICMP6, neighbor advertisement, length 32, tgt is fd77::100, Flags [override]`
    /// and, on the next line, `destination link-address option (2), length 8 (1): 02:77:00:00:00:11`.
    pub fn na(&self) -> Option<NaPkt> {
        let at = self.lines.find("ICMP6, neighbor advertisement")?;
        let before = &self.lines[..at];
        let (src, dst) = endpoints(before.trim_end().rsplit_once(": ")?.0)?;
        let after = &self.lines[at..];
        let target = after
            .split_once("tgt is ")?
            .1
            .split([',', ' ', '\n'])
            .next()?
            .parse()
            .ok()?;
        let flags = after.split_once("Flags [")?.1.split_once(']')?.0;
        let flag = |name: &str| flags.split(", ").any(|f| f == name);
        let tlla = self
            .lines
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with("destination link-address option")
            })
            .and_then(|l| l.rsplit_once(": "))
            .map(|(_, mac)| mac.trim().to_string());
        Some(NaPkt {
            src,
            dst,
            hop_limit: number_after(before, "hlim ")?,
            target,
            tlla,
            flags_router: flag("router"),
            flags_solicited: flag("solicited"),
            flags_override: flag("override"),
            checksum_ok: before.contains("[icmp6 sum ok]"),
        })
    }
}

/// `... <src> > <dst>` at the end of `text` (IPv6 addresses have colons, so
/// split on words, not on ':').
fn endpoints(text: &str) -> Option<(IpAddr, IpAddr)> {
    let mut words = text.split_whitespace().rev();
    let dst = words.next()?.trim_end_matches(':').parse().ok()?;
    if words.next()? != ">" {
        return None;
    }
    let src = words.next()?.parse().ok()?;
    Some((src, dst))
}

/// The number after the first `key` that starts a word or follows '(':
/// `number_after("(tos 0xc0, ttl 255, id 1", "ttl ") == Some(255)`.
fn number_after<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    word_after(text, key)?.parse().ok()
}

fn hex_after(text: &str, key: &str) -> Option<u8> {
    u8::from_str_radix(word_after(text, key)?.strip_prefix("0x")?, 16).ok()
}

fn word_after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = text[from..].find(key) {
        let at = from + i;
        let boundary = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c == '(' || c.is_whitespace());
        if boundary {
            let rest = &text[at + key.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_alphanumeric())
                .unwrap_or(rest.len());
            return Some(&rest[..end]);
        }
        from = at + key.len();
    }
    None
}

/// The IPv4 address at `at` in an ARP frame.
fn arp_ip(bytes: &[u8], at: usize) -> Option<IpAddr> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(IpAddr::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn one(text: &str) -> Packet {
        let mut p = parse_dump(text);
        assert_eq!(p.len(), 1, "{p:?}");
        p.remove(0)
    }

    /// keepalived 2.2.7, VRID 51, priority 150, advert_int 0.1, multicast.
    const VRRP4: &str = "\
1795480371.008882 02:77:00:00:00:11 > 01:00:5e:00:00:12, ethertype IPv4 (0x0800), length 46: (tos 0xc0, ttl 255, id 1, offset 0, flags [none], proto VRRP (112), length 32)
    10.77.0.11 > 224.0.0.18: VRRPv3, Advertisement, vrid 51, prio 150, intvl 10cs, length 12, addrs: 10.77.0.100
";

    /// keepalived 2.2.7 over IPv6: from the link-local address, one line.
    const VRRP6: &str = "\
1795480474.497716 02:77:00:00:00:11 > 33:33:00:00:00:12, ethertype IPv6 (0x86dd), length 78: (class 0xc0, flowlabel 0xb4f03, hlim 255, next-header VRRP (112) payload length: 24) fe80::77:ff:fe00:11 > ff02::12: VRRPv3, Advertisement, vrid 52, prio 150, intvl 10cs, length 24, addrs: fd77::100
\t0x0000:  3333 0000 0012 0277 0000 0011 86dd 6c0b
\t0x0010:  4f03 0018 70ff fe80 0000 0000 0000 0077
\t0x0020:  00ff fe00 0011 ff02 0000 0000 0000 0000
\t0x0030:  0000 0000 0012 3134 9601 000a 3ca2 fd77
\t0x0040:  0000 0000 0000 0000 0000 0000 0100
";

    /// Hand-made with a raw socket: bad checksums, TTL 1, two addresses.
    const VRRP_ODD: &str = "\
1795480521.521797 02:77:00:00:00:11 > 01:00:5e:00:00:12, ethertype IPv4 (0x0800), length 46: (tos 0x0, ttl 255, id 17839, offset 0, flags [DF], proto VRRP (112), length 32)
    10.77.0.11 > 224.0.0.18: VRRPv3, Advertisement, vrid 51, prio 77, intvl 100cs, length 12, (bad vrrp cksum dead), addrs: 10.77.0.100
1795480521.521834 02:77:00:00:00:11 > 01:00:5e:00:00:12, ethertype IPv4 (0x0800), length 46: (tos 0x0, ttl 1, id 17840, offset 0, flags [DF], proto VRRP (112), length 32)
    10.77.0.11 > 224.0.0.18: VRRPv3, Advertisement, (ttl 1), vrid 51, prio 78, intvl 100cs, length 12, addrs: 10.77.0.100
1795480521.521907 02:77:00:00:00:11 > 33:33:00:00:00:12, ethertype IPv6 (0x86dd), length 78: (flowlabel 0xb4f03, hlim 255, next-header VRRP (112) payload length: 24) fe80::77:ff:fe00:11 > ff02::12: VRRPv3, Advertisement, vrid 52, prio 77, intvl 100cs, length 24, (bad vrrp cksum beef), addrs: fd77::100
1795480521.521927 02:77:00:00:00:11 > 33:33:00:00:00:12, ethertype IPv6 (0x86dd), length 94: (flowlabel 0xb4f03, hlim 254, next-header VRRP (112) payload length: 40) fe80::77:ff:fe00:11 > ff02::12: VRRPv3, Advertisement, (ttl 254), vrid 52, prio 79, intvl 100cs, length 40, addrs(2): fe80::100,fd77::100
";

    /// keepalived's gratuitous ARP (a request, target MAC broadcast), then
    /// an ordinary request and reply between two nodes.
    const ARP: &str = "\
1795480371.009235 02:77:00:00:00:11 > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Ethernet (len 6), IPv4 (len 4), Request who-has 10.77.0.100 (ff:ff:ff:ff:ff:ff) tell 10.77.0.100, length 28
\t0x0000:  ffff ffff ffff 0277 0000 0011 0806 0001
\t0x0010:  0800 0604 0001 0277 0000 0011 0a4d 0064
\t0x0020:  ffff ffff ffff 0a4d 0064
1795480669.739575 02:77:00:00:00:12 > 02:77:00:00:00:10, ethertype ARP (0x0806), length 42: Ethernet (len 6), IPv4 (len 4), Request who-has 10.77.0.10 tell 10.77.0.12, length 28
\t0x0000:  0277 0000 0010 0277 0000 0012 0806 0001
\t0x0010:  0800 0604 0001 0277 0000 0012 0a4d 000c
\t0x0020:  0000 0000 0000 0a4d 000a
1795480669.739585 02:77:00:00:00:10 > 02:77:00:00:00:12, ethertype ARP (0x0806), length 42: Ethernet (len 6), IPv4 (len 4), Reply 10.77.0.10 is-at 02:77:00:00:00:10, length 28
\t0x0000:  0277 0000 0012 0277 0000 0010 0806 0001
\t0x0010:  0800 0604 0001 0277 0000 0010 0a4d 000a
\t0x0020:  0277 0000 0012 0a4d 000c
";

    /// keepalived's unsolicited NA, then a solicited one without TLLA and
    /// the solicitation before it.
    const ND: &str = "\
1795480474.498654 02:77:00:00:00:11 > 33:33:00:00:00:01, ethertype IPv6 (0x86dd), length 86: (hlim 255, next-header ICMPv6 (58) payload length: 32) fd77::100 > ff02::1: [icmp6 sum ok] ICMP6, neighbor advertisement, length 32, tgt is fd77::100, Flags [override]
\t  destination link-address option (2), length 8 (1): 02:77:00:00:00:11
\t0x0000:  3333 0000 0001 0277 0000 0011 86dd 6000
\t0x0010:  0000 0020 3aff fd77 0000 0000 0000 0000
\t0x0020:  0000 0000 0100 ff02 0000 0000 0000 0000
\t0x0030:  0000 0000 0001 8800 5728 2000 0000 fd77
\t0x0040:  0000 0000 0000 0000 0000 0000 0100 0201
\t0x0050:  0277 0000 0011
1795480669.739587 02:77:00:00:00:12 > 02:77:00:00:00:10, ethertype IPv6 (0x86dd), length 86: (hlim 255, next-header ICMPv6 (58) payload length: 32) fe80::77:ff:fe00:12 > fd77::10: [icmp6 sum ok] ICMP6, neighbor solicitation, length 32, who has fd77::10
\t  source link-address option (1), length 8 (1): 02:77:00:00:00:12
1795480669.739606 02:77:00:00:00:10 > 02:77:00:00:00:12, ethertype IPv6 (0x86dd), length 78: (hlim 255, next-header ICMPv6 (58) payload length: 24) fd77::10 > fe80::77:ff:fe00:12: [icmp6 sum ok] ICMP6, neighbor advertisement, length 24, tgt is fd77::10, Flags [solicited]
";

    #[test]
    fn vrrp_v4() {
        let p = one(VRRP4);
        assert_eq!(p.time, 1_795_480_371.008_882);
        assert_eq!(p.src_mac, "02:77:00:00:00:11");
        assert_eq!(p.dst_mac, "01:00:5e:00:00:12");
        assert!(p.bytes.is_empty(), "no hex in this fixture");
        let v = p.vrrp().expect("VRRP");
        assert_eq!(
            v,
            VrrpPkt {
                src: ip("10.77.0.11"),
                dst: ip("224.0.0.18"),
                hop_limit: 255,
                tos: 0xc0,
                version: 3,
                vrid: 51,
                prio: 150,
                intvl_cs: 10,
                addrs: vec![ip("10.77.0.100")],
                checksum_ok: true,
            }
        );
        assert_eq!(p.arp(), None);
        assert_eq!(p.na(), None);
    }

    #[test]
    fn vrrp_v6_and_hex() {
        let p = one(VRRP6);
        let v = p.vrrp().expect("VRRP");
        assert_eq!(
            v,
            VrrpPkt {
                src: ip("fe80::77:ff:fe00:11"),
                dst: ip("ff02::12"),
                hop_limit: 255,
                tos: 0xc0,
                version: 3,
                vrid: 52,
                prio: 150,
                intvl_cs: 10,
                addrs: vec![ip("fd77::100")],
                checksum_ok: true,
            }
        );
        // 14 Ethernet + 40 IPv6 + 8 VRRP + 16 address.
        assert_eq!(p.bytes.len(), 78);
        assert_eq!(&p.bytes[12..14], [0x86, 0xdd]);
        // The text and the bytes agree: hop limit, VRID, priority.
        assert_eq!((p.bytes[21], p.bytes[55], p.bytes[56]), (255, 52, 150));
    }

    #[test]
    fn vrrp_bad_checksum_ttl_and_address_lists() {
        let got: Vec<VrrpPkt> = parse_dump(VRRP_ODD)
            .iter()
            .map(|p| p.vrrp().expect("VRRP"))
            .collect();
        let summary: Vec<(u8, u8, u8, bool, usize)> = got
            .iter()
            .map(|v| (v.prio, v.hop_limit, v.tos, v.checksum_ok, v.addrs.len()))
            .collect();
        assert_eq!(
            summary,
            [
                (77, 255, 0, false, 1),
                (78, 1, 0, true, 1),
                (77, 255, 0, false, 1),
                (79, 254, 0, true, 2),
            ]
        );
        assert_eq!(got[0].intvl_cs, 100);
        assert_eq!(got[3].addrs, [ip("fe80::100"), ip("fd77::100")]);
    }

    #[test]
    fn vrrp_v2_interval_in_seconds() {
        // keepalived 2.2.7 with vrrp_version 2, advert_int 1.
        let text = "\
1795480930.191015 02:77:00:00:00:11 > 01:00:5e:00:00:12, ethertype IPv4 (0x0800), length 54: (tos 0xc0, ttl 255, id 1, offset 0, flags [none], proto VRRP (112), length 40)
    10.77.0.11 > 224.0.0.18: VRRPv2, Advertisement, vrid 51, prio 150, authtype none, intvl 1s, length 20, addrs: 10.77.0.100
";
        let v = one(text).vrrp().expect("VRRP");
        assert_eq!((v.version, v.intvl_cs), (2, 100));
    }

    #[test]
    fn arp_announcement_request_and_reply() {
        let got: Vec<ArpPkt> = parse_dump(ARP)
            .iter()
            .map(|p| p.arp().expect("ARP"))
            .collect();
        assert_eq!(
            got[0],
            ArpPkt {
                op: ArpOp::Request,
                sender_ip: ip("10.77.0.100"),
                sender_mac: "02:77:00:00:00:11".into(),
                target_ip: ip("10.77.0.100"),
                target_mac: "ff:ff:ff:ff:ff:ff".into(),
            }
        );
        assert!(got[0].is_gratuitous());
        assert_eq!(
            (got[1].op, got[1].sender_ip, got[1].target_ip),
            (ArpOp::Request, ip("10.77.0.12"), ip("10.77.0.10"))
        );
        assert_eq!(got[1].target_mac, "00:00:00:00:00:00");
        assert!(!got[1].is_gratuitous());
        assert_eq!(
            got[2],
            ArpPkt {
                op: ArpOp::Reply,
                sender_ip: ip("10.77.0.10"),
                sender_mac: "02:77:00:00:00:10".into(),
                target_ip: ip("10.77.0.12"),
                target_mac: "02:77:00:00:00:12".into(),
            }
        );
        assert_eq!(parse_dump(ARP)[0].vrrp(), None);
    }

    #[test]
    fn neighbour_advertisements() {
        let packets = parse_dump(ND);
        assert_eq!(packets.len(), 3);
        assert_eq!(
            packets[0].na().expect("unsolicited NA"),
            NaPkt {
                src: ip("fd77::100"),
                dst: ip("ff02::1"),
                hop_limit: 255,
                target: ip("fd77::100"),
                tlla: Some("02:77:00:00:00:11".into()),
                flags_router: false,
                flags_solicited: false,
                flags_override: true,
                checksum_ok: true,
            }
        );
        assert_eq!(packets[0].bytes.len(), 86);
        assert_eq!(packets[1].na(), None, "a solicitation is not an NA");
        let solicited = packets[2].na().expect("solicited NA");
        assert_eq!(
            (
                solicited.dst,
                solicited.tlla,
                solicited.flags_solicited,
                solicited.flags_override
            ),
            (ip("fe80::77:ff:fe00:12"), None, true, false)
        );
    }

    #[test]
    fn announcements_of_a_vip() {
        let (vip4, vip6) = (ip("10.77.0.100"), ip("fd77::100"));
        let mac = "02:77:00:00:00:11";
        let arp = parse_dump(ARP);
        assert_eq!(announcements(&arp, vip4, mac, &[]), [arp[0].time]);
        // An ordinary request or reply announces nothing.
        assert!(announcements(&arp, ip("10.77.0.10"), "02:77:00:00:00:10", &[]).is_empty());
        assert!(announcements(&arp, ip("10.77.0.12"), "02:77:00:00:00:12", &[]).is_empty());
        let nd = parse_dump(ND);
        assert_eq!(announcements(&nd, vip6, mac, &[vip6]), [nd[0].time]);
        // The NA counts only from a source the caller allows, for its MAC.
        assert!(!nd[0].is_announcement(vip6, mac, &[ip("fe80::77:ff:fe00:11")]));
        assert!(!nd[0].is_announcement(vip6, "02:77:00:00:00:12", &[vip6]));
        // A solicited NA is an answer, not an announcement.
        let fd77_10 = ip("fd77::10");
        assert!(!nd[2].is_announcement(fd77_10, "02:77:00:00:00:10", &[fd77_10]));
    }

    #[test]
    fn adverts_of_a_source_and_their_interval() {
        let packets = parse_dump(VRRP_ODD);
        let from = adverts_from(&packets, ip("fe80::77:ff:fe00:11"));
        assert_eq!(
            from.iter().map(|(_, v)| v.prio).collect::<Vec<_>>(),
            [77, 79]
        );
        let v4 = adverts_from(&packets, ip("10.77.0.11"));
        let gap = median_gap(&v4);
        assert!((gap - 0.000_037).abs() < 1e-6, "{gap}");
        assert_eq!(
            vrrp_group(ip("10.77.0.100")),
            (ip("224.0.0.18"), "01:00:5e:00:00:12")
        );
        assert_eq!(
            vrrp_group(ip("fd77::100")),
            (ip("ff02::12"), "33:33:00:00:00:12")
        );
    }

    #[test]
    fn words_after_keys() {
        let h = "(tos 0xc0, ttl 255, id 1, offset 0, flags [none], proto VRRP (112), length 32)";
        assert_eq!(number_after::<u8>(h, "ttl "), Some(255));
        assert_eq!(hex_after(h, "tos "), Some(0xc0));
        assert_eq!(number_after::<u8>("(hlim 64, next", "hlim "), Some(64));
        // "(ttl 1)" is tcpdump's note in the VRRP line, not a header field;
        // the header comes first.
        assert_eq!(
            number_after::<u8>("(tos 0x0, ttl 1, id 2) x (ttl 1)", "ttl "),
            Some(1)
        );
        assert_eq!(number_after::<u8>("subttl 3", "ttl "), None);
    }
}
