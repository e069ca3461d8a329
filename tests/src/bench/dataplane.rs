//! `cargo xtask bench dataplane`: ns per packet through BPF_PROG_TEST_RUN for the
//! real program against trivial baselines measured in the same run.
//!
//! Re-processing: with `repeat > 1` the kernel runs the program again on the
//! buffer it already rewrote. The mode dsr rewrite only changes the Ethernet
//! addresses, and the benchmark's backends all have the LB's own MAC, so the
//! rewritten frame is again addressed to the LB (which the program checks)
//! and every repeat takes the same path (same flow, same connection entry):
//! established-flow and non-VIP cases use `repeat`. The reason counters are
//! checked after each such case: every run must have ended as that case's
//! reason (`tx_dsr`, `pass_no_service`), or the benchmark stops. A new flow must miss the connection table every time, so that case
//! runs `repeat = 1` per packet with a fresh source port each, and is compared
//! with the baselines measured the same way.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap, MapData};
use aya::programs::{TestRun, TestRunOptions};
use vip_common::{
    ConnKey, ConnValue, ENCAP_DEFAULT_MTU, EncapValue, FAMILY_V4, MAGLEV_DEFAULT_SIZE, MODE_DSR,
    MODE_NAT, PROTO_TCP, Reason, SVC_F_RST_UNSERVABLE, ServiceKey,
};
use vip_userspace::config::addr_bytes;
use vip_userspace::dataplane::Maps;
use vip_userspace::dataplane::kernel::{
    KernelMaps, LoadOptions, PROG_BENCH_TX, PROG_PASS, PROG_VIP,
};
use vip_userspace::dataplane::programmer::{DesiredBackend, DesiredService, Programmer};

use crate::netns::{Lab, in_netns};
use crate::packet::{MAC_LB, Pkt, TCP_ACK, TCP_SYN};
use crate::stats::median;

/// How much to measure (`vip-bench dataplane --samples --repeat --new-flows --max-flows`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Samples per case (each the kernel's mean over `repeat` runs).
    pub samples: usize,
    /// Runs per sample for the repeat-safe cases.
    pub repeat: u32,
    /// Packets for the new-flow case (one run each).
    pub new_flows: u32,
    /// Largest connection-table fill to measure.
    pub max_flows: u32,
}

const VIP: &str = "10.77.0.100";
const PORT: u16 = 6443;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn service(n: u8) -> DesiredService {
    let (family, addr) = addr_bytes(ip(VIP));
    DesiredService {
        key: ServiceKey {
            addr,
            port_be: PORT.to_be(),
            proto: PROTO_TCP,
            family,
        },
        mode: MODE_DSR,
        flags: SVC_F_RST_UNSERVABLE,
        snat_addr: [0; 16],
        table_size: MAGLEV_DEFAULT_SIZE,
        backends: (0..n)
            .map(|i| {
                let (family, addr) = addr_bytes(ip(&format!("10.78.{}.{}", i / 200, i % 200 + 1)));
                DesiredBackend {
                    family,
                    addr,
                    port_be: PORT.to_be(),
                    // The LB's own MAC: see "Re-processing" above.
                    mac: MAC_LB,
                    local: false,
                    encap: None,
                    alive: true,
                    draining: false,
                }
            })
            .collect(),
    }
}

/// Runs `case` and checks that the program counted exactly `runs` more
/// packets as `reason`: a repeated case whose rewritten buffer took another
/// path would measure that path instead.
fn counted(
    maps: &KernelMaps,
    reason: Reason,
    runs: u64,
    case: impl FnOnce() -> Result<f64>,
) -> Result<f64> {
    let before = maps.reason_counters()?[reason as usize].packets;
    let ns = case()?;
    let after = maps.reason_counters()?[reason as usize].packets;
    if after - before != runs {
        bail!(
            "{} runs, but {} counted as {}: the case did not take its path every time",
            runs,
            after - before,
            reason.label()
        );
    }
    Ok(ns)
}

/// Mean ns per run over `repeat` runs, `samples` times; returns the median.
fn repeated(
    maps: &KernelMaps,
    prog: &'static str,
    pkt: &[u8],
    repeat: u32,
    samples: usize,
) -> Result<f64> {
    let p = maps.xdp(prog)?;
    let mut out = vec![0u8; pkt.len() + 256];
    let mut v = vec![];
    for _ in 0..samples {
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        v.push(r.duration.as_nanos() as f64);
    }
    median(&v).context("no samples: --samples must be at least 1")
}

/// One run per packet; median of the kernel-reported durations. `ifindex`
/// (0 for none) is the ingress interface in the test context, which the FIB
/// lookups of mode nat need (the calling thread must be in its namespace).
fn single(maps: &KernelMaps, prog: &'static str, pkts: &[Vec<u8>], ifindex: u32) -> Result<f64> {
    let p = maps.xdp(prog)?;
    let mut out = vec![0u8; 512];
    let mut v = Vec::with_capacity(pkts.len());
    for pkt in pkts {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let ctx: Vec<u8> = [0u32, pkt.len() as u32, 0, ifindex, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ctx_in: (ifindex != 0).then_some(&ctx[..]),
                repeat: 1,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        v.push(r.duration.as_nanos() as f64);
    }
    median(&v).context("no packets to run")
}

/// Mode nat: an established flow and a reply from its backend, one run per
/// packet (the translation rewrites addresses, so a repeat would see another
/// flow), inside a namespace whose neighbours make the FIB lookup succeed.
fn nat_section(a: &Options) -> Result<()> {
    let lab = Lab::new("bench", &["lb"]);
    let lb = lab.node("lb").clone();
    let client = ip("10.77.0.200");
    let mac = |i: u8| format!("02:77:00:00:01:{i:02x}");
    lab.add_neighbour("lb", "10.77.0.200", &mac(0xff));
    for i in 0..64u8 {
        let a = format!("10.77.0.{}", 21 + i as u32);
        lab.add_neighbour("lb", &a, &mac(i));
    }
    println!();
    println!(
        "mode nat ({} packets per case, one run each; tx1 = the MAC-swap baseline run the same way)",
        a.new_flows
    );
    println!(
        "{:<9} {:>11} {:>11} {:>11} {:>10} {:>10}",
        "backends", "tx1", "nat est", "reverse", "est/tx1", "rev/tx1"
    );
    for backends in [3u8, 16, 64] {
        let lb = lb.clone();
        let n = a.new_flows as usize;
        let row = in_netns(&lb.ns.clone(), move || -> Result<String> {
            let maps = KernelMaps::load(&LoadOptions {
                conntrack_capacity: 4096,
                pin_dir: None,
            })?;
            let mut prog = Programmer::new(maps);
            let mut svc = service(backends);
            svc.mode = MODE_NAT;
            svc.snat_addr = addr_bytes(lb.ipv4.into()).1;
            for (i, b) in svc.backends.iter_mut().enumerate() {
                b.addr = addr_bytes(ip(&format!("10.77.0.{}", 21 + i))).1;
            }
            prog.apply(&[svc])?;
            prog.maps_mut().set_local_mac(MAC_LB)?;
            let syn = Pkt::tcp(client, 40000, ip(VIP), PORT, TCP_SYN).build();
            let est = Pkt::tcp(client, 40000, ip(VIP), PORT, TCP_ACK)
                .payload(&[0; 10])
                .build();
            single(
                prog.maps(),
                PROG_VIP,
                std::slice::from_ref(&syn),
                lb.ifindex,
            )?;
            let nat = prog.maps().nat_entries()?;
            let (k, _) = nat.first().context("the SYN allocated no NAT entry")?;
            let backend = IpAddr::from(<[u8; 4]>::try_from(&k.saddr[..4])?);
            let reply = Pkt::tcp(
                backend,
                PORT,
                lb.ipv4.into(),
                u16::from_be(k.dport_be),
                TCP_ACK,
            )
            .payload(&[0; 10])
            .build();
            let ests = vec![est; n];
            let replies = vec![reply; n];
            let tx1 = single(prog.maps(), PROG_BENCH_TX, &ests, lb.ifindex)?;
            let ne = single(prog.maps(), PROG_VIP, &ests, lb.ifindex)?;
            let rv = single(prog.maps(), PROG_VIP, &replies, lb.ifindex)?;
            let r = prog.maps().reason_counters()?;
            if r[Reason::TxReverseNat as usize].packets < n as u64
                || r[Reason::TxNat as usize].packets < n as u64
            {
                bail!("the nat cases did not take the nat paths: {r:?}");
            }
            Ok(format!(
                "{:<9} {:>11.1} {:>11.1} {:>11.1} {:>10.2} {:>10.2}",
                backends,
                tx1,
                ne,
                rv,
                ne / tx1,
                rv / tx1
            ))
        })?;
        println!("{row}");
    }
    Ok(())
}

/// Mode dsr to backends in another subnet (`encap: ipip`): an established
/// flow, one run per packet (the encapsulated output would not be ours on a
/// repeat), inside a namespace whose route to the backends' subnet goes
/// through a resolved router, so the FIB lookup for the outer header succeeds.
fn encap_section(a: &Options) -> Result<()> {
    let lab = Lab::new("benchencap", &["lb"]);
    let lb = lab.node("lb").clone();
    lab.add_neighbour("lb", "10.77.0.1", "02:77:00:00:01:01");
    lab.sh(
        "lb",
        &["ip", "route", "add", "10.78.0.0/16", "via", "10.77.0.1"],
    );
    lab.sh("lb", &["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
    println!();
    println!(
        "mode dsr, encapsulated (IPIP; {} packets per case, one run each; tx1 as above)",
        a.new_flows
    );
    println!(
        "{:<9} {:>11} {:>11} {:>10}",
        "backends", "tx1", "encap est", "encap/tx1"
    );
    for backends in [3u8, 16, 64] {
        let lb = lb.clone();
        let n = a.new_flows as usize;
        let row = in_netns(&lb.ns.clone(), move || -> Result<String> {
            let maps = KernelMaps::load(&LoadOptions {
                conntrack_capacity: 4096,
                pin_dir: None,
            })?;
            let mut prog = Programmer::new(maps);
            let mut svc = service(backends);
            for b in &mut svc.backends {
                b.encap = Some(EncapValue {
                    saddr: addr_bytes(lb.ipv4.into()).1,
                    mtu: ENCAP_DEFAULT_MTU,
                    _pad: [0; 2],
                });
            }
            prog.apply(&[svc])?;
            prog.maps_mut().set_local_mac(MAC_LB)?;
            let client = ip("10.77.0.200");
            let syn = Pkt::tcp(client, 40000, ip(VIP), PORT, TCP_SYN).build();
            single(prog.maps(), PROG_VIP, &[syn], lb.ifindex)?;
            let est = Pkt::tcp(client, 40000, ip(VIP), PORT, TCP_ACK)
                .payload(&[0; 10])
                .build();
            let ests = vec![est; n];
            let tx1 = single(prog.maps(), PROG_BENCH_TX, &ests, lb.ifindex)?;
            let en = counted(prog.maps(), Reason::TxEncap, n as u64, || {
                single(prog.maps(), PROG_VIP, &ests, lb.ifindex)
            })?;
            Ok(format!(
                "{:<9} {:>11.1} {:>11.1} {:>10.2}",
                backends,
                tx1,
                en,
                en / tx1
            ))
        })?;
        println!("{row}");
    }
    Ok(())
}

/// Fills the connection table with `n` entries for other clients.
fn fill_conntrack(maps: &mut KernelMaps, n: u32) -> Result<()> {
    let m = maps.raw_map_mut("CONNTRACK")?;
    let mut ct: HashMap<&mut MapData, ConnKey, ConnValue> = HashMap::try_from(m)?;
    let (_, vip) = addr_bytes(ip(VIP));
    for i in 0..n {
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[172, 30, (i >> 16) as u8, (i >> 8) as u8]);
        let key = ConnKey {
            saddr,
            daddr: vip,
            sport_be: ((i & 0xff) as u16 + 1024).to_be(),
            dport_be: PORT.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        let v = ConnValue {
            last_seen_ns: 0,
            backend_id: 0,
            service_id: 0,
            nat_port_be: 0,
            flags: 0,
            _pad: [0; 5],
        };
        ct.insert(key, v, 0)?;
    }
    Ok(())
}

/// Runs the benchmark and prints its tables.
pub fn run(a: &Options) -> Result<()> {
    let est = Pkt::tcp(ip("10.77.0.10"), 40000, ip(VIP), PORT, TCP_ACK)
        .payload(&[0; 10])
        .build();
    let syn = Pkt::tcp(ip("10.77.0.10"), 40000, ip(VIP), PORT, TCP_SYN).build();
    let non_vip = Pkt::tcp(ip("10.77.0.10"), 40000, ip("10.77.0.11"), 22, TCP_ACK)
        .payload(&[0; 10])
        .build();
    let new_flows: Vec<Vec<u8>> = (0..a.new_flows)
        .map(|i| {
            let src = ip(&format!("10.79.{}.{}", (i >> 8) & 0xff, i & 0xff));
            Pkt::tcp(src, 1024 + (i >> 16) as u16, ip(VIP), PORT, TCP_SYN).build()
        })
        .collect();

    println!(
        "vipd dataplane benchmark: ns per packet (BPF_PROG_TEST_RUN), medians of {} samples",
        a.samples
    );
    println!(
        "repeat-safe cases: mean of {} runs per sample; new flows: one run per packet, {} packets",
        a.repeat, a.new_flows
    );
    println!();
    println!(
        "{:<9} {:>9} {:>11} {:>11} {:>11} {:>11} {:>11} {:>10} {:>10} {:>10}",
        "backends",
        "flows",
        "pass",
        "tx(swap)",
        "non-vip",
        "established",
        "new flow",
        "nonvip-pass",
        "est/tx",
        "new/tx1"
    );
    for backends in [3u8, 16, 64] {
        for flows in [1u32, 10_000, a.max_flows] {
            let mut maps = KernelMaps::load(&LoadOptions {
                conntrack_capacity: (flows + a.new_flows + 1024).max(4096),
                pin_dir: None,
            })?;
            fill_conntrack(&mut maps, flows.saturating_sub(1))?;
            let mut prog = Programmer::new(maps);
            prog.apply(&[service(backends)])?;
            // As a running agent has it: the frames' destination is ours.
            prog.maps_mut().set_local_mac(MAC_LB)?;
            // Establish the measured flow.
            repeated(prog.maps(), PROG_VIP, &syn, 1, 1)?;
            let m = prog.maps();
            let pass = repeated(m, PROG_PASS, &est, a.repeat, a.samples)?;
            let tx = repeated(m, PROG_BENCH_TX, &est, a.repeat, a.samples)?;
            let runs = u64::from(a.repeat) * a.samples as u64;
            let nv = counted(m, Reason::PassNoService, runs, || {
                repeated(m, PROG_VIP, &non_vip, a.repeat, a.samples)
            })?;
            let es = counted(m, Reason::TxDsr, runs, || {
                repeated(m, PROG_VIP, &est, a.repeat, a.samples)
            })?;
            let tx1 = single(m, PROG_BENCH_TX, &new_flows, 0)?;
            let nf = single(m, PROG_VIP, &new_flows, 0)?;
            println!(
                "{:<9} {:>9} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>11.1} {:>+10.1} {:>10.2} {:>10.2}",
                backends,
                flows,
                pass,
                tx,
                nv,
                es,
                nf,
                nv - pass,
                es / tx,
                nf / tx1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    nat_section(a)?;
    encap_section(a)?;
    println!();
    println!(
        "targets: established <= 1.5x tx(swap); non-vip within 10 ns of pass; flat (within 20%) from 3 to 64 backends"
    );
    Ok(())
}
