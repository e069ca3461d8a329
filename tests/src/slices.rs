//! The stand-in's `kubernetes` Service EndpointSlices: what the apiservers'
//! endpoint reconciler keeps (one slice per family listing every live
//! apiserver), served as `discovery.k8s.io/v1` list and watch, plus the
//! API discovery documents kubectl reads first, and the control a test uses
//! to add and remove apiservers (`POST /standin/slices?...`).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde_json::{Value, json};

/// Where the slices are listed and watched.
pub const PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

/// Watch events kept for watches that start from an older resourceVersion.
const HISTORY: usize = 1000;

#[derive(Debug, Default)]
pub struct SliceStore {
    slices: BTreeMap<String, Value>,
    /// (resourceVersion, event line).
    history: Vec<(u64, String)>,
    rv: u64,
}

fn slice_name(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "kubernetes"
    } else {
        "kubernetes-ipv6"
    }
}

fn new_slice(name: &str, address_type: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {
                "kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io",
            },
            "resourceVersion": "0",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "addressType": address_type,
        "endpoints": [],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    })
}

impl SliceStore {
    /// `add=IP` / `remove=IP` (the family's slice), `bad=NAME` (a slice
    /// whose IPv4 addressType holds an IPv6 address), `delete=NAME`. Each
    /// change gets resourceVersion `rv` (the server's counter) and returns
    /// its watch events.
    pub fn control(
        &mut self,
        query: &HashMap<String, String>,
        rv: u64,
    ) -> Result<Vec<(u64, String)>, String> {
        let usage =
            || "usage: POST /standin/slices?add=IP|remove=IP|bad=NAME|delete=NAME\n".to_owned();
        let ip = |v: &String| v.parse::<IpAddr>().map_err(|_| usage());
        let (name, kind) = if let Some(a) = query.get("add") {
            let a = ip(a)?;
            let name = slice_name(&a);
            let existed = self.slices.contains_key(name);
            let s = self
                .slices
                .entry(name.to_owned())
                .or_insert_with(|| new_slice(name, if a.is_ipv4() { "IPv4" } else { "IPv6" }));
            let eps = s["endpoints"].as_array_mut().ok_or_else(usage)?;
            if !eps.iter().any(|e| e["addresses"][0] == a.to_string()) {
                eps.push(json!({"addresses": [a.to_string()], "conditions": {"ready": true}}));
            }
            (name.to_owned(), if existed { "MODIFIED" } else { "ADDED" })
        } else if let Some(a) = query.get("remove") {
            let a = ip(a)?;
            let name = slice_name(&a);
            let s = self.slices.get_mut(name).ok_or_else(usage)?;
            let eps = s["endpoints"].as_array_mut().ok_or_else(usage)?;
            eps.retain(|e| e["addresses"][0] != a.to_string());
            (name.to_owned(), "MODIFIED")
        } else if let Some(n) = query.get("bad") {
            let mut s = new_slice(n, "IPv4");
            s["endpoints"] = json!([{"addresses": ["fd00::bad"], "conditions": {"ready": true}}]);
            self.slices.insert(n.clone(), s);
            (n.clone(), "ADDED")
        } else if let Some(n) = query.get("delete") {
            let mut s = self.slices.remove(n).ok_or_else(usage)?;
            self.rv = rv;
            s["metadata"]["resourceVersion"] = json!(rv.to_string());
            let line = format!("{}\n", json!({"type": "DELETED", "object": s}));
            return Ok(vec![self.record(rv, line)]);
        } else {
            return Err(usage());
        };
        self.rv = rv;
        let s = self.slices.get_mut(&name).ok_or_else(usage)?;
        s["metadata"]["resourceVersion"] = json!(rv.to_string());
        let line = format!("{}\n", json!({"type": kind, "object": s}));
        Ok(vec![self.record(rv, line)])
    }

    fn record(&mut self, rv: u64, line: String) -> (u64, String) {
        self.history.push((rv, line.clone()));
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
        (rv, line)
    }

    /// The `EndpointSliceList`.
    pub fn list(&self) -> String {
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSliceList",
            "metadata": {"resourceVersion": self.rv.to_string()},
            "items": self.slices.values().collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// The events after `rv`.
    pub fn since(&self, rv: u64) -> Vec<(u64, String)> {
        self.history
            .iter()
            .filter(|(n, _)| *n > rv)
            .cloned()
            .collect()
    }
}

/// The API discovery documents kubectl reads before `get endpointslices`
/// (its RESTMapper finds the group, version and scope there).
pub fn discovery_doc(path: &str) -> Option<String> {
    let group_version = json!({"groupVersion": "discovery.k8s.io/v1", "version": "v1"});
    let doc = match path {
        "/api" => json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
        }),
        "/api/v1" => json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": []}),
        "/apis" => json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [{
                "name": "discovery.k8s.io",
                "versions": [group_version],
                "preferredVersion": group_version,
            }],
        }),
        "/apis/discovery.k8s.io" => json!({
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": "discovery.k8s.io",
            "versions": [group_version],
            "preferredVersion": group_version,
        }),
        "/apis/discovery.k8s.io/v1" => json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "discovery.k8s.io/v1",
            "resources": [{
                "name": "endpointslices",
                "singularName": "",
                "namespaced": true,
                "kind": "EndpointSlice",
                "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            }],
        }),
        _ => return None,
    };
    Some(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(k: &str, v: &str) -> HashMap<String, String> {
        HashMap::from([(k.to_owned(), v.to_owned())])
    }

    #[test]
    fn adds_removes_and_the_events_a_watch_gets() {
        let mut s = SliceStore::default();
        let e = s.control(&q("add", "10.0.0.11"), 1).expect("add");
        assert!(e[0].1.contains("\"ADDED\""), "{e:?}");
        s.control(&q("add", "10.0.0.12"), 2).expect("add");
        s.control(&q("remove", "10.0.0.11"), 3).expect("remove");
        let list: Value = serde_json::from_str(&s.list()).expect("json");
        assert_eq!(list["metadata"]["resourceVersion"], "3");
        assert_eq!(
            list["items"][0]["endpoints"],
            json!([{"addresses": ["10.0.0.12"], "conditions": {"ready": true}}])
        );
        assert_eq!(s.since(1).len(), 2);
        assert!(s.control(&q("add", "nope"), 4).is_err());
        s.control(&q("bad", "broken"), 4).expect("bad");
        let d = s.control(&q("delete", "broken"), 5).expect("delete");
        assert!(d[0].1.contains("\"DELETED\""));
        assert!(discovery_doc("/apis/discovery.k8s.io/v1").is_some());
    }
}
