//! A connection flood breaks nothing (issue 17 item 4): 200 watch streams
//! through the VIP, then a flood of SYNs from spoofed sources and of
//! segments of flows nobody opened, several times the connection table's
//! size (`conntrack_capacity: 1024`), through the real XDP program of a
//! real vipd. Every stream must go on with no gap, and the LB's metrics
//! must account for every flood frame, in both modes. The flood is sized to
//! run in seconds here; `cargo xtask bench flood` runs the full size.
//! Needs root (`cargo xtask test`).

use std::time::Duration;

use vip_common::Reason;
use vip_tests::{
    failover::summary,
    flood::{Flood, under_watches},
    scenario::{Fwd, LbLab, LbOptions},
    traffic::End,
};
use vip_userspace::dataplane::kernel::AttachMode;

const STREAMS: usize = 200;
const SYNS: u32 = 8_000;
const SEGMENTS: u32 = 2_000;

/// Opens the watches, floods, and checks that none broke; returns the
/// lab and the flood for the mode's own checks. `extra`: more top-level
/// config.
fn flood_keeps_watches(hint: &str, xdp_mode: AttachMode, fwd: Fwd, extra: &str) -> (LbLab, Flood) {
    let l = LbLab::start_with(
        hint,
        &LbOptions {
            // Far smaller than the flood: without the unconfirmed tables
            // the flood's entries would push the streams' out.
            extra: format!("conntrack_capacity: 1024\n{extra}"),
            ..LbOptions::new(xdp_mode, fwd)
        },
    );
    let (flood, report) = under_watches(&l, STREAMS, SYNS, SEGMENTS, 32);
    let line = summary(&report);
    eprintln!(
        "{hint}: {SYNS} SYNs + {SEGMENTS} segments in {:?}; streams: {line}",
        flood.took
    );
    for w in &report {
        assert_eq!(w.end, End::Open, "a stream on {} broke: {line}", w.server);
        assert!(
            w.longest_gap < Duration::from_secs(1),
            "a stream on {} went silent for {:?}: {line}",
            w.server,
            w.longest_gap
        );
    }
    (l, flood)
}

/// Mode dsr: every flood frame is forwarded to a backend as a new,
/// unconfirmed flow (Maglev picks it; a lone segment too, as for a flow
/// picked up after a VIP move), so the backends' new flows grew by exactly
/// the flood. Exactly: a stream whose entry the flood evicted would count
/// once more at its next packet. (With every new flow inserted straight
/// into `CONNTRACK`, as before, 113 were: their streams went on only
/// because Maglev picked the same backend again, which a backend-set change
/// in between would not; `datapath_flood.rs` shows that case. In mode nat
/// the same flood reset 108 of the 200 streams.)
#[test]
fn dsr_flood_breaks_none_of_200_watches() {
    let (_l, f) = flood_keeps_watches("fl-dsr", AttachMode::Native, Fwd::Dsr, "");
    assert_eq!(
        f.new_flows(),
        f64::from(SYNS + SEGMENTS),
        "new flows counted for the flood: {}",
        f.summary()
    );
}

/// Mode nat: every SYN is a new flow sent on (or refused for want of a
/// source port, counted), every segment with no flow is answered with an
/// RST: the counters account for every frame. The source ports are cut to
/// 300 per backend, so the flood takes every one; seconds later (its
/// handshakes stalled, `HANDSHAKE_HOLD_NS`) real clients' new connections
/// go through at once, where waiting out `closing_s` (10 s) refused them
/// all. A backend that still holds a flood handshake on a port a new
/// connection takes answers its SYN with an ACK, which the LB resets
/// (`tx_rst_stale_backend`); the client's retransmitted SYN then connects.
#[test]
fn nat_flood_breaks_none_of_200_watches() {
    let (l, f) = flood_keeps_watches(
        "fl-nat",
        AttachMode::Skb,
        Fwd::Nat,
        "nat:\n  ports: 40000-40299\n",
    );
    let refused = f.reason(Reason::DropNatPortsExhausted);
    assert_eq!(
        f.new_flows() + refused,
        f64::from(SYNS),
        "SYNs sent on or refused: {}",
        f.summary()
    );
    assert!(
        refused > 0.0,
        "the flood took every port (300 per backend): {}",
        f.summary()
    );
    assert_eq!(
        f.reason(Reason::TxRst),
        f64::from(SEGMENTS),
        "segments with no flow answered with an RST: {}",
        f.summary()
    );
    let before = l.metrics_of("lb");
    let answers = l.ask_vip(10);
    let after = l.metrics_of("lb");
    let moved = |k: &str| after.get(k).unwrap_or(&0.0) - before.get(k).unwrap_or(&0.0);
    let label = |r: Reason| format!("vipd_dataplane_packets_total{{reason=\"{}\"}}", r.label());
    eprintln!(
        "fl-nat: after the flood, 10 new connections: {} stale backend connections reset, {} SYNs refused",
        moved(&label(Reason::TxRstStale)),
        moved(&label(Reason::DropNatPortsExhausted))
    );
    for a in &answers {
        assert!(
            matches!(a, Ok((200, _))),
            "a new connection after the flood, while its handshakes hold every port: {a:?} \
             (all: {answers:?})"
        );
    }
}
