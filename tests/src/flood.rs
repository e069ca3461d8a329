//! Connection floods (issue 17 item 4): frames of many distinct flows that
//! no client confirms, SYNs from spoofed sources or lone non-SYN segments,
//! and the counters that must account for every one. Used by the program
//! tests (`datapath_flood.rs`, `datapath_nat.rs`) and the namespace test
//! (`tests/tests/flood.rs`).

use std::net::{IpAddr, Ipv4Addr};

use vip_common::Reason;
use vip_userspace::dataplane::Maps;

use crate::packet::{Pkt, TCP_ACK, TCP_PSH, TCP_SYN};

/// Flood sources: 10.200.0.0/14 with 64 source ports each, so `i` below
/// 2^22 names a distinct 5-tuple, none of them a test client's.
pub fn source(i: u32) -> (IpAddr, u16) {
    let addr = Ipv4Addr::from(0x0ac8_0000 + (i >> 6));
    (IpAddr::V4(addr), 20000 + (i & 63) as u16)
}

/// The `i`th flood frame to `vip`:`port`: a SYN, or (`syn` false) an
/// ACK+PSH segment of a flow nobody opened.
pub fn frame(i: u32, syn: bool, vip: IpAddr, port: u16) -> Pkt {
    let (src, sport) = source(i);
    let flags = if syn { TCP_SYN } else { TCP_ACK | TCP_PSH };
    Pkt::tcp(src, sport, vip, port, flags)
}

/// The counters a flood moves, summed over CPUs: per reason, and the
/// backends' new flows (ids `0..backends`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub reasons: Vec<u64>,
    pub new_flows: u64,
}

impl Counts {
    pub fn read(maps: &impl Maps, backends: u32) -> Counts {
        let reasons = maps
            .reason_counters()
            .expect("read the reason counters")
            .iter()
            .map(|c| c.packets)
            .collect();
        let new_flows = (0..backends)
            .map(|id| {
                maps.backend_counters(id)
                    .expect("read a backend's counters")
                    .new_flows
            })
            .sum();
        Counts { reasons, new_flows }
    }

    /// How far `reason` moved since `before`.
    pub fn moved(&self, before: &Counts, reason: Reason) -> u64 {
        self.reasons[reason as usize] - before.reasons[reason as usize]
    }

    /// Every reason that moved since `before`, for messages.
    pub fn diff(&self, before: &Counts) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.moved(before, *r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// What a flood through a lab's LB did: frames sent, how long sending took,
/// and the LB's metrics before and after.
pub struct Flood {
    pub syns: u32,
    pub segments: u32,
    pub took: std::time::Duration,
    pub before: std::collections::BTreeMap<String, f64>,
    pub after: std::collections::BTreeMap<String, f64>,
}

impl Flood {
    /// Floods the lab's VIP (IPv4, [`crate::scenario::PORT`]) from the
    /// client's interface: `syns` SYNs, then `segments` lone segments, from
    /// distinct spoofed sources ([`source`]), addressed to the LB's MAC,
    /// paced in bursts of `burst` (see `netns::send_frames`). Waits a
    /// second for the LB to finish, then reads its metrics again.
    pub fn run(l: &crate::scenario::LbLab, syns: u32, segments: u32, burst: usize) -> Flood {
        let client = l.lab.node("client").clone();
        let lb_mac = l.lab.node("lb").mac;
        let vip = IpAddr::V4(crate::netns::VIP_V4);
        let port = crate::scenario::PORT;
        let frames = (0..syns + segments).map(move |i| {
            Pkt {
                dst_mac: lb_mac,
                src_mac: client.mac,
                ..frame(i, i < syns, vip, port)
            }
            .build()
        });
        let before = l.metrics_of("lb");
        let started = std::time::Instant::now();
        let client = l.lab.node("client");
        let sent = crate::netns::send_frames(&client.ns, client.ifindex, frames, burst)
            .unwrap_or_else(|e| panic!("send the flood from {}: {e}", client.ns));
        let took = started.elapsed();
        assert_eq!(sent, (syns + segments) as usize, "every flood frame sent");
        std::thread::sleep(std::time::Duration::from_secs(1));
        Flood {
            syns,
            segments,
            took,
            before,
            after: l.metrics_of("lb"),
        }
    }

    /// How far the LB's series starting with `prefix` moved, summed (all
    /// backends of `vipd_backend_new_flows_total`, say).
    pub fn moved(&self, prefix: &str) -> f64 {
        let sum = |m: &std::collections::BTreeMap<String, f64>| -> f64 {
            m.iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v)
                .sum()
        };
        sum(&self.after) - sum(&self.before)
    }

    /// How far the packet counter of `reason` moved.
    pub fn reason(&self, reason: Reason) -> f64 {
        self.moved(&format!(
            "vipd_dataplane_packets_total{{reason=\"{}\"}}",
            reason.label()
        ))
    }

    /// New flows the LB counted for its backends during the flood.
    pub fn new_flows(&self) -> f64 {
        self.moved("vipd_backend_new_flows_total")
    }

    /// The packet and new-flow series that moved, for messages.
    pub fn summary(&self) -> String {
        self.after
            .keys()
            .filter(|k| {
                k.starts_with("vipd_dataplane_packets_total")
                    || k.starts_with("vipd_backend_new_flows_total")
            })
            .map(|k| (k, self.moved(k)))
            .filter(|(_, n)| *n != 0.0)
            .map(|(k, n)| format!("{k} +{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `streams` watch streams through the lab's VIP, then a [`Flood::run`],
/// then 2 s more of the streams' events and keepalives (an evicted flow's
/// next packet is reset in mode nat, or lost); returns the flood and what
/// each stream lived through. Shared by `tests/tests/flood.rs` and `bench
/// flood`.
pub fn under_watches(
    l: &crate::scenario::LbLab,
    streams: usize,
    syns: u32,
    segments: u32,
    burst: usize,
) -> (Flood, Vec<crate::traffic::WatchReport>) {
    let ns = l.lab.node("client").ns.clone();
    let cfg = crate::standin::client_config(&l.pki.ca_pem(), None);
    let watches = crate::traffic::Watches::open(&ns, &cfg, streams)
        .unwrap_or_else(|e| panic!("{streams} watch streams: {e}"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let flood = Flood::run(l, syns, segments, burst);
    std::thread::sleep(std::time::Duration::from_secs(2));
    (flood, watches.report())
}
