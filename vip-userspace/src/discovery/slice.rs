//! The `kubernetes` Service's EndpointSlices as plain data: the few fields
//! vipd reads, typed with serde, and the pure step from slices to the
//! backend set of each address family.
//!
//! The apiservers maintain these slices themselves (the endpoint
//! reconciler, `--endpoint-reconciler-type=lease`, the default since 1.11):
//! each live apiserver keeps a lease and writes its `--advertise-address`
//! into the slice, so the union of the slices' ready addresses is the list
//! of apiservers. A slice is `discovery.k8s.io/v1` (Kubernetes 1.21+).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use serde::Deserialize;

/// The label the EndpointSlice controller (and the apiservers' reconciler)
/// puts on the slices of a Service.
pub const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// The Service whose slices list the apiservers.
pub const SERVICE: &str = "kubernetes";
/// Its namespace.
pub const NAMESPACE: &str = "default";

/// Which family a slice's addresses are (`addressType`); FQDN slices are
/// never written for the `kubernetes` Service and are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListMeta {
    #[serde(default, rename = "resourceVersion")]
    pub resource_version: String,
}

/// `EndpointSliceList`: the items stay raw JSON so that one malformed slice
/// is refused alone and never fails the whole list.
#[derive(Debug, Clone, Deserialize)]
pub struct SliceList {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default)]
    pub items: Vec<serde_json::Value>,
}

/// One line of a watch stream (`metav1.WatchEvent`).
#[derive(Debug, Clone, Deserialize)]
pub struct WatchEvent {
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
}

/// The fields of a `discovery.k8s.io/v1` EndpointSlice that vipd reads.
#[derive(Debug, Clone, Deserialize)]
struct RawSlice {
    metadata: ObjectMeta,
    #[serde(rename = "addressType")]
    address_type: String,
    // `endpoints` and `ports` may be null (an empty slice) in the API.
    #[serde(default)]
    endpoints: Option<Vec<RawEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<RawPort>>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawEndpoint {
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<RawConditions>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawConditions {
    #[serde(default)]
    ready: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawPort {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    port: Option<i64>,
}

/// A slice that passed the checks: its family and its ready addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    pub name: String,
    pub family: Family,
    /// The apiservers' address and secure port.
    pub backends: BTreeSet<SocketAddr>,
}

/// Why a slice is ignored. Its previous content (if any) stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    #[error("not an EndpointSlice: {0}")]
    Shape(String),
    #[error("slice {name}: addressType {kind:?} is not IPv4 or IPv6")]
    AddressType { name: String, kind: String },
    #[error("slice {name}: address {addr:?} is not an {family} address")]
    Address {
        name: String,
        addr: String,
        family: &'static str,
    },
    #[error("slice {name}: port {port} is not a TCP port")]
    Port { name: String, port: i64 },
}

/// Checks one slice. `default_port` is used when the slice names no port
/// `https` (the `kubernetes` Service's only port, 443 -> the apiservers'
/// `--secure-port`). An endpoint with `ready: false` is an apiserver shutting
/// down (its lease is gone or going): left out. A slice whose addresses are
/// not of its `addressType` is refused whole: it is malformed, and reading
/// half of it could drop apiservers that are there.
pub fn parse(value: &serde_json::Value, default_port: u16) -> Result<Slice, SliceError> {
    let raw: RawSlice =
        serde_json::from_value(value.clone()).map_err(|e| SliceError::Shape(e.to_string()))?;
    let name = raw.metadata.name;
    let family = match raw.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        _ => {
            return Err(SliceError::AddressType {
                name,
                kind: raw.address_type,
            });
        }
    };
    let ports = raw.ports.unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .or_else(|| ports.first())
        .and_then(|p| p.port);
    let port = match port {
        None => default_port,
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(SliceError::Port {
                name: name.clone(),
                port: p,
            })?,
    };
    let mut backends = BTreeSet::new();
    for e in raw.endpoints.unwrap_or_default() {
        let ready = e.conditions.and_then(|c| c.ready).unwrap_or(true);
        for a in e.addresses {
            let ip: IpAddr = a
                .parse()
                .ok()
                .filter(|ip| Family::of(ip) == family)
                .ok_or_else(|| SliceError::Address {
                    name: name.clone(),
                    addr: a.clone(),
                    family: family.label(),
                })?;
            if ready {
                backends.insert(SocketAddr::new(ip, port));
            }
        }
    }
    Ok(Slice {
        name,
        family,
        backends,
    })
}

/// The slices seen so far, by name, and what they add up to.
#[derive(Debug, Clone, Default)]
pub struct Slices {
    by_name: BTreeMap<String, Slice>,
    pub resource_version: String,
}

/// What a change to the slices means for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The union of the family's slices.
    Set(BTreeSet<SocketAddr>),
    /// The slices list no apiserver of this family (none yet, all gone, or
    /// only malformed ones): never taken as "no backends", the last known
    /// set stays.
    Nothing,
}

impl Slices {
    /// A whole list replaces what was known (a list after a broken watch is
    /// the truth at its resourceVersion). Malformed items are returned and
    /// keep their previous content, if they had one.
    pub fn replace(&mut self, list: &SliceList, default_port: u16) -> Vec<SliceError> {
        let mut errors = vec![];
        let mut next = BTreeMap::new();
        for item in &list.items {
            match parse(item, default_port) {
                Ok(s) => {
                    next.insert(s.name.clone(), s);
                }
                Err(e) => {
                    if let Some(old) = name_of(item).and_then(|n| self.by_name.get(&n)) {
                        next.insert(old.name.clone(), old.clone());
                    }
                    errors.push(e);
                }
            }
        }
        self.by_name = next;
        self.resource_version = list.metadata.resource_version.clone();
        errors
    }

    /// One watch event. `Ok(true)`: the slices changed. `ERROR` events
    /// (e.g. 410 Gone: the resourceVersion is too old) are the caller's:
    /// it lists again.
    pub fn event(&mut self, ev: &WatchEvent, default_port: u16) -> Result<bool, SliceError> {
        if let Some(rv) = ev
            .object
            .pointer("/metadata/resourceVersion")
            .and_then(|v| v.as_str())
        {
            self.resource_version = rv.to_owned();
        }
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                let s = parse(&ev.object, default_port)?;
                let changed = self.by_name.get(&s.name) != Some(&s);
                self.by_name.insert(s.name.clone(), s);
                Ok(changed)
            }
            "DELETED" => {
                let name = name_of(&ev.object).ok_or_else(|| {
                    SliceError::Shape("a DELETED event without metadata.name".into())
                })?;
                Ok(self.by_name.remove(&name).is_some())
            }
            // BOOKMARK: only the resourceVersion moves.
            _ => Ok(false),
        }
    }

    /// The family's apiservers, or [`Found::Nothing`].
    pub fn found(&self, family: Family) -> Found {
        let set: BTreeSet<SocketAddr> = self
            .by_name
            .values()
            .filter(|s| s.family == family)
            .flat_map(|s| s.backends.iter().copied())
            .collect();
        if set.is_empty() {
            Found::Nothing
        } else {
            Found::Set(set)
        }
    }

    /// The families some slice holds.
    pub fn families(&self) -> BTreeSet<Family> {
        self.by_name.values().map(|s| s.family).collect()
    }
}

fn name_of(v: &serde_json::Value) -> Option<String> {
    v.pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(name: &str, kind: &str, addrs: &[&str], ready: Option<bool>) -> serde_json::Value {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": name, "resourceVersion": "7",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": kind,
            "endpoints": [{"addresses": addrs, "conditions": {"ready": ready}}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        })
    }

    fn set(a: &[&str]) -> Found {
        Found::Set(a.iter().map(|s| s.parse().expect("addr")).collect())
    }

    #[test]
    fn a_slice_becomes_its_ready_addresses_on_the_https_port() {
        let s = parse(
            &slice("kubernetes", "IPv4", &["10.0.0.11", "10.0.0.12"], None),
            443,
        )
        .expect("valid");
        assert_eq!(s.family, Family::V4);
        assert_eq!(
            s.backends.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["10.0.0.11:6443", "10.0.0.12:6443"]
        );
        // ready: false (an apiserver shutting down) is left out.
        let s = parse(&slice("k", "IPv4", &["10.0.0.11"], Some(false)), 443).expect("valid");
        assert!(s.backends.is_empty());
        // No ports: the service's port.
        let mut v = slice("k", "IPv6", &["fd00::11"], Some(true));
        v["ports"] = serde_json::Value::Null;
        v["endpoints"][0]["conditions"] = serde_json::Value::Null;
        let s = parse(&v, 6443).expect("valid");
        assert_eq!(s.backends.iter().next().map(|a| a.port()), Some(6443));
        // endpoints: null is an empty slice, not a malformed one.
        v["endpoints"] = serde_json::Value::Null;
        assert!(parse(&v, 6443).expect("valid").backends.is_empty());
    }

    #[test]
    fn malformed_and_other_family_slices_are_refused_with_a_reason() {
        let e = parse(&slice("k", "IPv4", &["fd00::1"], None), 443).expect_err("v6 in v4");
        assert!(
            e.to_string().contains("\"fd00::1\" is not an IPv4 address"),
            "{e}"
        );
        let e = parse(&slice("k", "FQDN", &["api.example"], None), 443).expect_err("fqdn");
        assert!(matches!(e, SliceError::AddressType { .. }), "{e}");
        let e = parse(&slice("k", "IPv4", &["10.0.0.300"], None), 443).expect_err("bad");
        assert!(matches!(e, SliceError::Address { .. }), "{e}");
        let e = parse(&json!({"metadata": {"name": "k"}}), 443).expect_err("shape");
        assert!(matches!(e, SliceError::Shape(_)), "{e}");
        let mut v = slice("k", "IPv4", &["10.0.0.1"], None);
        v["ports"][0]["port"] = json!(70000);
        assert!(matches!(parse(&v, 443), Err(SliceError::Port { .. })));
    }

    #[test]
    fn lists_and_events_merge_and_a_malformed_slice_never_empties_the_set() {
        let mut s = Slices::default();
        let list: SliceList = serde_json::from_value(json!({
            "metadata": {"resourceVersion": "10"},
            "items": [slice("a", "IPv4", &["10.0.0.11", "10.0.0.12"], None),
                      slice("b", "IPv6", &["fd00::11"], None)],
        }))
        .expect("list");
        assert!(s.replace(&list, 443).is_empty());
        assert_eq!(s.resource_version, "10");
        assert_eq!(
            s.found(Family::V4),
            set(&["10.0.0.11:6443", "10.0.0.12:6443"])
        );
        assert_eq!(s.found(Family::V6), set(&["[fd00::11]:6443"]));

        let ev = |kind: &str, obj| WatchEvent {
            kind: kind.into(),
            object: obj,
        };
        // A malformed MODIFIED keeps the slice as it was.
        let bad = ev("MODIFIED", slice("a", "IPv4", &["fd00::99"], None));
        assert!(s.event(&bad, 443).is_err());
        assert_eq!(
            s.found(Family::V4),
            set(&["10.0.0.11:6443", "10.0.0.12:6443"])
        );
        // An added address.
        let add = ev(
            "MODIFIED",
            slice("a", "IPv4", &["10.0.0.11", "10.0.0.12", "10.0.0.14"], None),
        );
        assert_eq!(s.event(&add, 443), Ok(true));
        assert_eq!(s.event(&add, 443), Ok(false), "the same slice again");
        assert_eq!(s.resource_version, "7");
        // The slice deleted: nothing of the family, which is not "no backends".
        assert_eq!(
            s.event(&ev("DELETED", json!({"metadata": {"name": "a"}})), 443),
            Ok(true)
        );
        assert_eq!(s.found(Family::V4), Found::Nothing);
        assert_eq!(s.families(), BTreeSet::from([Family::V6]));
        assert_eq!(
            s.event(
                &ev("BOOKMARK", json!({"metadata": {"resourceVersion": "99"}})),
                443
            ),
            Ok(false)
        );
        assert_eq!(s.resource_version, "99");

        // A relist with a malformed slice keeps that slice's last content.
        let list: SliceList = serde_json::from_value(json!({
            "metadata": {"resourceVersion": "12"},
            "items": [{"metadata": {"name": "b"}, "addressType": "IPv6", "endpoints": [{"addresses": ["nope"]}]}],
        }))
        .expect("list");
        assert_eq!(s.replace(&list, 443).len(), 1);
        assert_eq!(s.found(Family::V6), set(&["[fd00::11]:6443"]));
    }
}
