//! The configuration file (YAML). Unknown fields are refused, and every error
//! names the file, the field path and the fix.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use thiserror::Error;
use vip_common::{
    AddrBytes, FAMILY_V4, FAMILY_V6, MAGLEV_DEFAULT_SIZE, MODE_DSR, PROTO_TCP, PROTO_UDP,
    SVC_F_RST_UNSERVABLE, ServiceKey,
};

use crate::{
    dataplane::{
        kernel::AttachMode,
        programmer::{DesiredBackend, DesiredService},
    },
    maglev,
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {field}: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The interface the XDP program attaches to and the VIPs live on.
    pub interface: String,
    /// How to attach XDP: auto (native, else generic), native, skb.
    #[serde(default)]
    pub xdp_mode: AttachMode,
    /// Connection-table capacity.
    #[serde(default = "default_conntrack")]
    pub conntrack_capacity: u32,
    /// Add the VIPs to the interface while vipd runs. Until VRRP election is in
    /// place this makes the node the static VIP holder.
    #[serde(default)]
    pub hold_vips: bool,
    pub services: Vec<Service>,
}

fn default_conntrack() -> u32 {
    vip_common::CONNTRACK_DEFAULT_CAPACITY
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Dsr,
    Nat,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub vip: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    pub mode: Mode,
    /// Answer TCP that cannot be served with an RST (default on).
    #[serde(default = "yes")]
    pub rst_unservable: bool,
    #[serde(default = "default_maglev")]
    pub maglev_size: u32,
    pub backends: Vec<Backend>,
}

fn default_port() -> u16 {
    6443
}
fn yes() -> bool {
    true
}
fn default_maglev() -> u32 {
    MAGLEV_DEFAULT_SIZE
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub address: IpAddr,
    /// Defaults to the service port.
    pub port: Option<u16>,
    /// Mode dsr: the backend node's MAC on the shared segment.
    pub mac: Option<String>,
    /// This node's own apiserver (mode dsr delivers locally).
    #[serde(default)]
    pub local: bool,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::Parse {
                path: path.into(),
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message: e.into_inner().to_string(),
            }
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |field: String, message: String| ConfigError::Invalid {
            path: path.into(),
            field,
            message,
        };
        if self.interface.is_empty() {
            return Err(bad(
                "interface".into(),
                "empty; name the interface that carries the VIP (ip link show)".into(),
            ));
        }
        if self.services.is_empty() {
            return Err(bad(
                "services".into(),
                "no service; add one (vip, port, mode, backends)".into(),
            ));
        }
        if self.conntrack_capacity < 1024 {
            return Err(bad(
                "conntrack_capacity".into(),
                format!(
                    "{} is too small; use at least 1024",
                    self.conntrack_capacity
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if !seen.insert((s.vip, s.port, s.protocol as u8)) {
                return Err(bad(
                    at,
                    format!("{}:{} {:?} is configured twice", s.vip, s.port, s.protocol),
                ));
            }
            if s.mode == Mode::Nat {
                return Err(bad(
                    format!("{at}.mode"),
                    "mode nat is not available in this version of the datapath; use dsr".into(),
                ));
            }
            maglev::check_size(s.maglev_size)
                .map_err(|e| bad(format!("{at}.maglev_size"), e.to_string()))?;
            for (j, b) in s.backends.iter().enumerate() {
                let bat = format!("{at}.backends[{j}]");
                if b.address.is_ipv4() != s.vip.is_ipv4() {
                    return Err(bad(
                        format!("{bat}.address"),
                        format!("{} is not of the VIP's address family", b.address),
                    ));
                }
                if b.address.is_unspecified() || b.address.is_multicast() {
                    return Err(bad(
                        format!("{bat}.address"),
                        format!("{} is not a unicast address", b.address),
                    ));
                }
                match (&b.mac, b.local) {
                    (Some(m), _) => {
                        parse_mac(m).map_err(|e| bad(format!("{bat}.mac"), e))?;
                    }
                    (None, false) if s.mode == Mode::Dsr => {
                        return Err(bad(
                            format!("{bat}.mac"),
                            format!(
                                "mode dsr needs the backend's MAC; read it with `ip neigh show {}`",
                                b.address
                            ),
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The services as the dataplane programmer wants them, every backend alive
    /// (health probes come later and will clear `alive`).
    pub fn desired(&self) -> Vec<DesiredService> {
        self.services
            .iter()
            .map(|s| {
                let (family, addr) = addr_bytes(s.vip);
                DesiredService {
                    key: ServiceKey {
                        addr,
                        port_be: s.port.to_be(),
                        proto: match s.protocol {
                            Protocol::Tcp => PROTO_TCP,
                            Protocol::Udp => PROTO_UDP,
                        },
                        family,
                    },
                    mode: MODE_DSR,
                    flags: if s.rst_unservable {
                        SVC_F_RST_UNSERVABLE
                    } else {
                        0
                    },
                    snat_addr: [0; 16],
                    table_size: s.maglev_size,
                    backends: s
                        .backends
                        .iter()
                        .map(|b| {
                            let (family, addr) = addr_bytes(b.address);
                            DesiredBackend {
                                family,
                                addr,
                                port_be: b.port.unwrap_or(s.port).to_be(),
                                mac: b
                                    .mac
                                    .as_deref()
                                    .and_then(|m| parse_mac(m).ok())
                                    .unwrap_or_default(),
                                local: b.local,
                                alive: true,
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

pub fn addr_bytes(a: IpAddr) -> (u8, AddrBytes) {
    let mut b = [0; 16];
    match a {
        IpAddr::V4(v) => {
            b[..4].copy_from_slice(&v.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(v) => (FAMILY_V6, v.octets()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
        mac: 02:00:00:00:00:0b
      - address: 10.0.0.12
        local: true
";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("vipd.yaml"), text)
    }

    #[test]
    fn kubeadm_shape_parses_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.services[0].port, 6443);
        assert_eq!(c.services[0].maglev_size, MAGLEV_DEFAULT_SIZE);
        assert!(c.services[0].rst_unservable);
        assert_eq!(c.xdp_mode, AttachMode::Auto);
        let d = c.desired();
        assert_eq!(d[0].backends.len(), 2);
        assert_eq!(d[0].backends[0].mac, [2, 0, 0, 0, 0, 0x0b]);
        assert!(d[0].backends[1].local);
    }

    fn err(text: &str) -> String {
        parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn errors_name_file_field_and_fix() {
        let e = err(&GOOD.replace(
            "address: 10.0.0.12",
            "address: 10.0.0.12\n        colour: red",
        ));
        assert!(e.starts_with("vipd.yaml: services[0].backends[1]"), "{e}");
        assert!(e.contains("colour"), "{e}");
        let e = err(&GOOD.replace("mac: 02:00:00:00:00:0b", "mac: 02:00:00:00:0b"));
        assert!(
            e.contains("services[0].backends[0].mac") && e.contains("02:42:ac:11:00:02"),
            "{e}"
        );
        let e = err(&GOOD.replace("        mac: 02:00:00:00:00:0b\n", ""));
        assert!(
            e.contains("services[0].backends[0].mac") && e.contains("ip neigh show 10.0.0.11"),
            "{e}"
        );
        let e = err(&GOOD.replace("mode: dsr", "mode: dsr\n    maglev_size: 1000"));
        assert!(
            e.contains("services[0].maglev_size") && e.contains("prime"),
            "{e}"
        );
        let e = err(&GOOD.replace("address: 10.0.0.11", "address: fd00::11"));
        assert!(e.contains("address family"), "{e}");
        let e = err(&GOOD.replace("vip: 10.0.0.100", "vip: 10.0.0.300"));
        assert!(e.contains("services[0].vip"), "{e}");
        let e = err(&GOOD.replace("mode: dsr", "mode: nat"));
        assert!(e.contains("services[0].mode"), "{e}");
        let e = err("interface: eth0\nservices: []\n");
        assert!(e.contains("services: no service"), "{e}");
    }
}
