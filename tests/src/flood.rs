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
