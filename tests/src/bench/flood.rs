//! `cargo xtask bench flood`: the full-size connection flood of issue 17
//! item 4. The namespace test (`tests/tests/flood.rs`) floods a 1024-entry
//! table with 10,000 paced frames; this one sends as many frames as one
//! sender thread can push through an AF_PACKET socket, unpaced, at the
//! default `conntrack_capacity` (262,144), while 200 watch streams run
//! through the VIP, in mode dsr (native XDP) and nat (SKB XDP, as the
//! survival tests run it). It reports the send rate, what the program
//! counted (new flows, refused SYNs, RSTs), what never reached the program
//! (dropped by the veths' backlog: sent minus counted), and how many
//! streams broke. Then the same flood into a fresh lab while a real client
//! opens a new TLS connection to the VIP every 100 ms (3 s bound each),
//! from half a second before the flood to 4 s after it: how many answered,
//! and the longest time with no new connection answered (a separate run,
//! so that the client's own SYNs stay out of the first run's accounting).
//! It asserts nothing about speed.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use vip_common::Reason;
use vip_userspace::dataplane::kernel::AttachMode;

use crate::{
    flood::under_watches,
    scenario::{Fwd, LbLab},
    traffic::End,
};

/// A new connection this often, while the streams and the flood run.
const NEW_EVERY: Duration = Duration::from_millis(100);
/// Each new connection's bound (connect, handshake, answer): `ask_vip`'s.
const NEW_TIMEOUT: Duration = Duration::from_secs(3);

/// What the real client's new connections met until `stop`: (answered,
/// tried, the longest time from one answer to the next, or from the first
/// try to the first answer, or from the last answer to the end).
fn new_connections(l: &LbLab, stop: &AtomicBool) -> (usize, usize, Duration) {
    let (mut ok, mut tried) = (0, 0);
    let mut last_ok = Instant::now();
    let mut gap = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        tried += 1;
        // One new TLS connection and GET /whoami, 3 s bound (`ask_vip`).
        if matches!(l.ask_vip(1).first(), Some(Ok((200, _)))) {
            ok += 1;
            gap = gap.max(last_ok.elapsed());
            last_ok = Instant::now();
        }
        std::thread::sleep(NEW_EVERY.saturating_sub(t.elapsed()));
    }
    (ok, tried, gap.max(last_ok.elapsed()))
}

#[derive(Debug, Clone)]
pub struct Options {
    pub syns: u32,
    pub segments: u32,
}

pub fn run(o: &Options) -> Result<()> {
    println!(
        "bench flood: 200 watch streams, then {} SYNs + {} lone segments from distinct spoofed \
         sources, unpaced from one AF_PACKET sender in the client namespace; conntrack_capacity \
         262144, CT_UNCONFIRMED/NAT_REV_UNCONFIRMED {}",
        o.syns,
        o.segments,
        vip_common::UNCONFIRMED_CAPACITY
    );
    println!(
        "| mode | sent | send rate | new flows | refused (no port) | RSTs | not counted | streams kept | longest gap | stale resets | new connections answered | longest without one |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, mode, fwd) in [
        ("dsr", AttachMode::Native, Fwd::Dsr),
        ("nat", AttachMode::Skb, Fwd::Nat),
    ] {
        let l = LbLab::start(&format!("bf-{name}"), mode, fwd);
        let (f, report) = under_watches(&l, 200, o.syns, o.segments, usize::MAX);
        drop(l);
        let l = LbLab::start(&format!("bn-{name}"), mode, fwd);
        let stop = AtomicBool::new(false);
        let (f2, (ok, tried, no_new)) = std::thread::scope(|s| {
            let prober = s.spawn(|| new_connections(&l, &stop));
            std::thread::sleep(Duration::from_millis(500));
            let f2 = crate::flood::Flood::run(&l, o.syns, o.segments, usize::MAX);
            std::thread::sleep(Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
            (f2, prober.join().expect("the new-connection prober"))
        });
        let stale = f2.reason(Reason::TxRstStale);
        let sent = f64::from(o.syns + o.segments);
        let new = f.new_flows();
        let refused = f.reason(Reason::DropNatPortsExhausted);
        let rsts = f.reason(Reason::TxRst);
        let kept = report.iter().filter(|w| w.end == End::Open).count();
        let gap = report
            .iter()
            .map(|w| w.longest_gap)
            .max()
            .unwrap_or_default();
        println!(
            "| {name} | {sent} | {:.0} frames/s | {new} | {refused} | {rsts} | {} | {kept}/200 | {gap:.0?} | {stale} | {ok}/{tried} | {no_new:.0?} |",
            sent / f.took.as_secs_f64(),
            sent - new - refused - rsts,
        );
    }
    println!(
        "not counted: frames the veths or the bridge dropped before XDP (netdev_max_backlog); \
         every frame that reached the program is counted under new flows, refused or RSTs. \
         The last three columns are a second flood into a fresh lab: stale resets (mode nat), a \
         backend's ACK to a new flow's SYN on a port it still held from a flood handshake, reset \
         by the LB, until 1 s after the flood; new connections, a real client's, one every {} ms \
         with a {} s bound, from 0.5 s before the flood to 4 s after it",
        NEW_EVERY.as_millis(),
        NEW_TIMEOUT.as_secs()
    );
    Ok(())
}
