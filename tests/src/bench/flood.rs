//! `cargo xtask bench flood`: the full-size connection flood of issue 17
//! item 4. The namespace test (`tests/tests/flood.rs`) floods a 1024-entry
//! table with 10,000 paced frames; this one sends as many frames as one
//! sender thread can push through an AF_PACKET socket, unpaced, at the
//! default `conntrack_capacity` (262,144), while 200 watch streams run
//! through the VIP, in mode dsr (native XDP) and nat (SKB XDP, as the
//! survival tests run it). It reports the send rate, what the program
//! counted (new flows, refused SYNs, RSTs), what never reached the program
//! (dropped by the veths' backlog: sent minus counted), and how many
//! streams broke. It asserts nothing about speed.

use anyhow::Result;
use vip_common::Reason;
use vip_userspace::dataplane::kernel::AttachMode;

use crate::{
    flood::under_watches,
    scenario::{Fwd, LbLab},
    traffic::End,
};

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
        "| mode | sent | send rate | new flows | refused (no port) | RSTs | not counted | streams kept | longest gap |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, mode, fwd) in [
        ("dsr", AttachMode::Native, Fwd::Dsr),
        ("nat", AttachMode::Skb, Fwd::Nat),
    ] {
        let l = LbLab::start(&format!("bf-{name}"), mode, fwd);
        let (f, report) = under_watches(&l, 200, o.syns, o.segments, usize::MAX);
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
            "| {name} | {sent} | {:.0} frames/s | {new} | {refused} | {rsts} | {} | {kept}/200 | {gap:.0?} |",
            sent / f.took.as_secs_f64(),
            sent - new - refused - rsts,
        );
    }
    println!(
        "not counted: frames the veths or the bridge dropped before XDP (netdev_max_backlog); \
         every frame that reached the program is counted under new flows, refused or RSTs"
    );
    Ok(())
}
