//! The typed leaves of the file: every value written as text (durations,
//! MACs, `snat`, the NAT port range, a TLS name) is parsed here once, while
//! the file is read. serde_path_to_error then puts the field path in front
//! of the message, and no consumer ever parses the string again.

use std::{fmt, net::IpAddr, time::Duration};

use rustls::pki_types::ServerName;
use serde::{Deserialize, Deserializer, de::Error as _};

/// "100ms", "1s", "1.5s", "0s", "10m", "1h" (at most a day).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration; write it like 100ms or 1s (or 10m, 1h)");
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return Err(err());
    };
    let v: f64 = num.trim().parse().map_err(|_| err())?;
    if !v.is_finite() || v < 0.0 || v * scale > 86_400.0 {
        return Err(err());
    }
    // Rounded to the microsecond: "0.1s" is 100ms, not 100ms minus the
    // float's last bit, so that a value prints back as it was written.
    Ok(Duration::from_micros((v * scale * 1e6).round() as u64))
}

/// A duration as the file writes it and [`parse_duration`] reads it back:
/// whole seconds as `Ns`, whole milliseconds as `Nms`, else seconds with a
/// fraction.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos() == ms * 1_000_000 {
        format!("{ms}ms")
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// serde's `deserialize_with` for a duration field.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(D::Error::custom)
}

/// serde's `deserialize_with` for an optional duration field.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_duration(&s).map_err(D::Error::custom))
        .transpose()
}

/// [`parse_duration`], plus whole days (`7d`): the etcd snapshot's
/// intervals and ages run past the day that stops at.
pub fn parse_span(s: &str) -> Result<Duration, String> {
    match s.trim().strip_suffix('d') {
        Some(n) => n
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|d| (1..=3650).contains(d))
            .map(|d| Duration::from_secs(d * 86_400))
            .ok_or_else(|| format!("{s:?}: write whole days from 1d to 3650d, or 12h, 30m")),
        None => parse_duration(s).map_err(|_| {
            format!("{s:?} is not a span; write it like 30m, 12h or 7d (whole days up to 3650d)")
        }),
    }
}

/// A span as the file writes it: whole days as `Nd`, else
/// [`format_duration`].
pub fn format_span(d: Duration) -> String {
    if d.as_secs() >= 86_400 && d.as_secs().is_multiple_of(86_400) && d.subsec_nanos() == 0 {
        format!("{}d", d.as_secs() / 86_400)
    } else {
        format_duration(d)
    }
}

/// serde's `deserialize_with` for a span field ([`parse_span`]).
pub fn span<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_span(&s).map_err(D::Error::custom)
}

/// serde's `deserialize_with` for an optional span field.
pub fn opt_span<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_span(&s).map_err(D::Error::custom))
        .transpose()
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    let err = || format!("{s:?} is not a MAC address; write it as 02:42:ac:11:00:02");
    if parts.len() != 6 {
        return Err(err());
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(err());
        }
        m[i] = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    Ok(m)
}

/// serde's `deserialize_with` for an optional MAC (`mac:`).
pub fn opt_mac<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 6]>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| parse_mac(&s).map_err(D::Error::custom))
        .transpose()
}

/// Where mode nat takes its source address from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snat {
    /// This node's address on the interface, of the VIP's family.
    Node,
    /// The VIP itself, so that connection state can move with it.
    Vip,
    Addr(IpAddr),
}

impl Snat {
    pub fn parse(s: &str) -> Result<Snat, String> {
        match s {
            "node" => Ok(Snat::Node),
            "vip" => Ok(Snat::Vip),
            other => other
                .parse()
                .map(Snat::Addr)
                .map_err(|_| format!("{other:?} is not `node`, `vip` or an IP address")),
        }
    }
}

impl fmt::Display for Snat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Snat::Node => f.write_str("node"),
            Snat::Vip => f.write_str("vip"),
            Snat::Addr(a) => a.fmt(f),
        }
    }
}

impl<'de> Deserialize<'de> for Snat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Snat::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// `nat.ports`: the source ports of translated connections, `LO-HI`,
/// 1024 <= LO, at least 256 ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let err = || {
            format!(
                "{s:?} is not a port range; write it as 40000-59999 (at least 256 ports, above 1023)"
            )
        };
        let (lo, hi) = s.split_once('-').ok_or_else(err)?;
        let lo: u16 = lo.trim().parse().map_err(|_| err())?;
        let hi: u16 = hi.trim().parse().map_err(|_| err())?;
        // Below 1024 are the ports the kernel keeps for privileged
        // services; fewer than 256 ports run out under a handful of
        // clients.
        if lo < 1024 || hi < lo || hi - lo < 255 {
            return Err(err());
        }
        Ok(PortRange { lo, hi })
    }

    pub fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        PortRange::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// A name a TLS client verifies a certificate for (and sends as SNI): a
/// DNS name or an IP address, checked as rustls checks it.
#[derive(Debug, Clone)]
pub struct TlsName {
    text: String,
    name: ServerName<'static>,
}

impl TlsName {
    pub fn parse(s: &str) -> Result<TlsName, String> {
        ServerName::try_from(s.to_owned())
            .map(|name| TlsName {
                text: s.to_owned(),
                name,
            })
            .map_err(|_| format!("{s:?} is not a DNS name or IP address"))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn server_name(&self) -> &ServerName<'static> {
        &self.name
    }
}

// Compared, ordered and hashed by the text: a probe's settings are a map
// key (one probe per backend), and `ServerName` has no order.
impl PartialEq for TlsName {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for TlsName {}
impl PartialOrd for TlsName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TlsName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}
impl std::hash::Hash for TlsName {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text.hash(h);
    }
}

impl fmt::Display for TlsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for TlsName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        TlsName::parse(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_back_as_written() {
        for s in ["0s", "100ms", "1s", "2s", "1500ms", "600s", "20ms"] {
            let d = parse_duration(s).expect(s);
            assert_eq!(format_duration(d), s, "{s}");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s}");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "600s");
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(format_duration(Duration::from_micros(1500)), "0.0015s");
    }

    #[test]
    fn macs_snat_ports_and_names_round_trip() {
        let m = parse_mac("02:42:ac:11:00:02").expect("mac");
        assert_eq!(crate::link::format_mac(&m), "02:42:ac:11:00:02");
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:0g",
            "2:42:ac:11:00:02",
            "",
        ] {
            let e = parse_mac(bad).expect_err(bad);
            assert!(e.contains("02:42:ac:11:00:02"), "{e}");
        }
        for snat in [
            Snat::Node,
            Snat::Vip,
            Snat::Addr("10.0.0.5".parse().expect("ip")),
            Snat::Addr("fd00::5".parse().expect("ip")),
        ] {
            assert_eq!(Snat::parse(&snat.to_string()), Ok(snat));
        }
        assert_eq!(Snat::parse("node"), Ok(Snat::Node));
        let e = Snat::parse("somewhere").expect_err("not an address");
        assert!(e.contains("`node`, `vip` or an IP address"), "{e}");
        let r = PortRange::parse("40000-59999").expect("range");
        assert_eq!(
            (r.lo, r.hi, r.to_string()),
            (40000, 59999, "40000-59999".into())
        );
        assert!(r.contains(40000) && r.contains(59999) && !r.contains(6446));
        for bad in ["1000-5000", "40000-40100", "5-4", "40000", "a-b"] {
            let e = PortRange::parse(bad).expect_err(bad);
            assert!(e.contains("write it as 40000-59999"), "{e}");
        }
        let n = TlsName::parse("kubernetes").expect("name");
        assert_eq!(
            (n.as_str(), n.to_string()),
            ("kubernetes", "kubernetes".into())
        );
        assert!(TlsName::parse("10.0.0.1").is_ok());
        let e = TlsName::parse("not a name").expect_err("spaces");
        assert!(e.contains("not a DNS name or IP address"), "{e}");
    }
}
