//! `cargo xtask bench failover --topology bgp`: the outage clients see when
//! an LB of the L3 fabric (`fabric::DsrLab`: three LBs, each vipd in
//! announce mode and mode dsr with IPIP to backends in two other subnets,
//! BIRD with the shipped snippet, FRR on the router, ECMP over L4 hashes)
//! fails, with BFD (50 ms x 3) on the sessions and without it (BGP's
//! keepalive 1 s and hold 3 s alone), in the same run.
//!
//! Scenarios (`--scenario`, all by default), each on the LBs in turn:
//! - `kill`: the LB dies silently: nft drops everything on its link and
//!   vipd gets SIGKILL (unpinned, its program goes with it), the link stays
//!   up; only BFD or the hold timer can tell the router.
//! - `link`: the LB's link goes down (a power loss as a point-to-point
//!   link sees it: carrier loss, which the router's kernel acts on at once).
//! - `restart`: vipd gets SIGTERM (route withdrawn first, then its drain),
//!   exits, and is started again; make-before-break must make it 0.
//!
//! The client opens a new TLS connection and sends `GET /whoami` every
//! 10 ms (each step bounded by 250 ms); the outage of a run is the longest
//! time between two answers after the failure, 0 when nothing failed.
//! The fabric is one per process (seven daemons with 50 ms BFD timers are
//! as much as two cores carry), so the two configurations run one after the
//! other rather than interleaved. Then, in the same invocation, the VRRP
//! lab's vipd column (`bench failover`'s lab: two LBs on one segment, mode
//! dsr, 100 ms adverts, its client with the same 10 ms and 250 ms) runs its
//! kill and link scenarios as many times, and the report sets the two side
//! by side (`--no-vrrp` leaves it out).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::fabric::{CONVERGE, DsrLab, Fabric, LBS, VIP, vipd_dsr_config};
use crate::stats::summary;
use crate::traffic::{Poller, outage};

const POLL_EVERY: Duration = Duration::from_millis(10);
const POLL_TIMEOUT: Duration = Duration::from_millis(250);
/// Watched after the router settled, so a late hiccup is counted.
const TAIL: Duration = Duration::from_secs(1);
/// The longest the router may take to drop a failed LB: the hold time
/// (3 s) plus bgpd's and zebra's work.
const DETECT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Kill,
    Link,
    Restart,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Kill, Scenario::Link, Scenario::Restart];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Link => "link",
            Scenario::Restart => "restart",
        }
    }

    /// `--scenario` values (comma-separated or repeated); all when empty.
    pub fn parse_list(names: &[String]) -> Result<Vec<Scenario>> {
        let mut out = Vec::new();
        for n in names.iter().flat_map(|n| n.split(',')) {
            match Scenario::ALL.iter().find(|s| s.name() == n.trim()) {
                Some(s) if !out.contains(s) => out.push(*s),
                Some(_) => {}
                None => bail!("--scenario {n:?} with --topology bgp: use kill, link or restart"),
            }
        }
        Ok(if out.is_empty() {
            Scenario::ALL.to_vec()
        } else {
            out
        })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub runs: usize,
    pub scenarios: Vec<Scenario>,
    /// Also the VRRP lab's figures, after the fabric's.
    pub vrrp: bool,
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Sample {
    outage_ms: f64,
    /// Failure in place -> the router's kernel no longer uses the LB (for
    /// `restart`: SIGTERM -> route withdrawn).
    detect_ms: f64,
}

/// Per configuration and scenario: the samples and the failed runs.
struct Results {
    label: &'static str,
    samples: Vec<Vec<Sample>>,
    failures: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let names: Vec<&str> = opts.scenarios.iter().map(|s| s.name()).collect();
    println!(
        "vipd failover benchmark, fabric (BGP ECMP): scenarios {}; {} runs each, with BFD 50 ms x 3 and with BGP timers only (keepalive 1 s, hold 3 s)",
        names.join(", "),
        opts.runs
    );
    println!(
        "lab: router (FRR, ECMP L4 hash), 3 LBs (vipd announce + mode dsr/IPIP, BIRD), 2 backends in other subnets, VIP {VIP}"
    );
    println!(
        "client: a new TLS connection + GET /whoami every {} ms ({} ms per step); outage = longest time without an answer after the failure (0: nothing failed)",
        POLL_EVERY.as_millis(),
        POLL_TIMEOUT.as_millis()
    );
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut all = Vec::new();
    for (label, bfd) in [("bgp+bfd", true), ("bgp only", false)] {
        all.push(measure(opts, label, bfd));
    }
    let vrrp = opts.vrrp.then(|| {
        println!();
        println!(
            "VRRP lab (bench failover's vipd column: lb and lb2 on one segment, mode dsr, 100 ms adverts): kill and link, {} runs",
            opts.runs
        );
        crate::bench::failover::vrrp_reference(opts.runs)
    });
    std::panic::set_hook(hook);
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    let vrrp_failures = match vrrp {
        None => Vec::new(),
        Some(Err(e)) => vec![format!("{e:#}")],
        Some(Ok(v)) => {
            report_vrrp(opts, &all, &v);
            v.failures
        }
    };
    report(opts, &all, &vrrp_failures)
}

/// The VRRP lab's rows and the comparison that means something: a silent
/// LB on the fabric (BFD) and the master's link down on the segment are
/// both an LB gone without a word.
fn report_vrrp(opts: &Options, all: &[Results], v: &crate::bench::failover::VrrpReference) {
    println!();
    println!(
        "{:<22} {:>4} {:>9} {:>9} {:>9} {:>14}",
        "VRRP lab phase", "ok", "p50 ms", "p99 ms", "max ms", "takeover p50"
    );
    for (name, outages, takeovers) in &v.phases {
        match (summary(outages), summary(takeovers)) {
            (Some([_, p50, p99, max]), Some([_, t50, _, _])) => println!(
                "{name:<22} {:>4} {p50:>9.1} {p99:>9.1} {max:>9.1} {t50:>14.1}",
                outages.len()
            ),
            _ => println!("{name:<22} {:>4} (no sample)", 0),
        }
    }
    let kill = opts.scenarios.iter().position(|s| *s == Scenario::Kill);
    let fabric_kill = kill
        .zip(all.first())
        .map(|(k, r)| r.samples[k].iter().map(|x| x.outage_ms).collect::<Vec<_>>());
    let vrrp_down = v
        .phases
        .iter()
        .find(|(n, _, _)| *n == crate::bench::failover::Phase::LinkDown.name())
        .map(|(_, o, _)| o.clone());
    if let (Some(f), Some(d)) = (fabric_kill, vrrp_down)
        && let (Some([_, f50, f99, _]), Some([_, d50, d99, _])) = (summary(&f), summary(&d))
    {
        println!(
            "an LB gone without a word, fabric kill with BFD / VRRP link down: p50 {}, p99 {}",
            crate::bench::failover::report::ratio(f50, d50),
            crate::bench::failover::report::ratio(f99, d99)
        );
    }
}

fn measure(opts: &Options, label: &'static str, bfd: bool) -> Results {
    let mut r = Results {
        label,
        samples: vec![Vec::new(); opts.scenarios.len()],
        failures: Vec::new(),
    };
    let lab = crate::attempt(|| {
        let f = if bfd {
            Fabric::new("bench-bfd")
        } else {
            Fabric::without_bfd("bench-nobfd")
        };
        DsrLab::on(f, label)
    });
    let mut lab = match lab {
        Ok(l) => l,
        Err(e) => {
            println!("{label}: building the fabric failed: {e}");
            r.failures.push(format!("setup: {e}"));
            return r;
        }
    };
    println!();
    println!(
        "{:>4} {:<10} {:<8} {:>10} {:>10}",
        "run", "config", "scenario", "outage ms", "detect ms"
    );
    for run in 0..opts.runs {
        for (k, &s) in opts.scenarios.iter().enumerate() {
            // Each LB in turn: BIRD's error wait grows with the failures of
            // one session (`error wait time 1, 10`).
            let lb = (run * opts.scenarios.len() + k) % LBS;
            match crate::attempt(|| one(&mut lab, s, lb)) {
                Ok(x) => {
                    println!(
                        "{:>4} {label:<10} {:<8} {:>10.1} {:>10.1}",
                        run + 1,
                        s.name(),
                        x.outage_ms,
                        x.detect_ms
                    );
                    r.samples[k].push(x);
                }
                Err(e) => {
                    println!("{:>4} {label:<10} {:<8} failed: {e}", run + 1, s.name());
                    r.failures
                        .push(format!("run {} {}: {e}", run + 1, s.name()));
                    // The lab is in an unknown state: stop this
                    // configuration rather than report noise.
                    return r;
                }
            }
        }
    }
    r
}

/// One failure of LB `lb` under the client, then the LB restored.
fn one(lab: &mut DsrLab, s: Scenario, lb: usize) -> Sample {
    let poller = Poller::start_at(
        &lab.f.client,
        &lab.client_cfg,
        DsrLab::vip_addr(),
        POLL_EVERY,
        POLL_TIMEOUT,
    );
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let detect;
    match s {
        Scenario::Kill => {
            let p = lab.vipds[lb].take().expect("the LB's vipd runs");
            lab.f.silence_lb(lb);
            p.signal(libc::SIGKILL);
            detect = lab.f.wait_for_paths(VIP, LBS - 1, DETECT);
            assert!(
                p.wait_timeout(Duration::from_secs(5)).is_some(),
                "vipd survived SIGKILL"
            );
        }
        Scenario::Link => {
            lab.f.lb_link_down(lb);
            detect = lab.f.wait_for_paths(VIP, LBS - 1, DETECT);
        }
        Scenario::Restart => {
            let p = lab.vipds[lb].take().expect("the LB's vipd runs");
            p.signal(libc::SIGTERM);
            detect = lab.f.wait_for_paths(VIP, LBS - 1, DETECT);
            let st = p
                .wait_timeout(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("vipd did not exit after its drain"));
            assert!(st.success(), "vipd exit: {st}\n{}", p.logs());
            lab.vipds[lb] = Some(lab.f.spawn_vipd(lb, &vipd_dsr_config()));
            lab.f.wait_for_paths(VIP, LBS, CONVERGE);
        }
    }
    std::thread::sleep(TAIL);
    let attempts = poller.finish();
    let (worst, failed, _) = outage(&attempts, t0);
    match s {
        Scenario::Kill => {
            lab.f.unsilence_lb(lb);
            lab.restore(lb);
        }
        Scenario::Link => lab.restore(lb),
        Scenario::Restart => lab.wait_spread(),
    }
    Sample {
        outage_ms: if failed == 0 {
            0.0
        } else {
            worst.as_secs_f64() * 1e3
        },
        detect_ms: detect.as_secs_f64() * 1e3,
    }
}

fn report(opts: &Options, all: &[Results], vrrp_failures: &[String]) -> Result<()> {
    println!();
    println!(
        "{:<8} {:<10} {:>4} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "scenario", "config", "ok", "min ms", "p50 ms", "p99 ms", "max ms", "detect p50"
    );
    let mut p99s = vec![vec![None; all.len()]; opts.scenarios.len()];
    for (k, s) in opts.scenarios.iter().enumerate() {
        for (c, r) in all.iter().enumerate() {
            let o: Vec<f64> = r.samples[k].iter().map(|x| x.outage_ms).collect();
            let d: Vec<f64> = r.samples[k].iter().map(|x| x.detect_ms).collect();
            match (summary(&o), summary(&d)) {
                (Some([min, p50, p99, max]), Some([_, d50, _, _])) => {
                    p99s[k][c] = Some((p50, p99));
                    println!(
                        "{:<8} {:<10} {:>4} {min:>9.1} {p50:>9.1} {p99:>9.1} {max:>11.1} {d50:>11.1}",
                        s.name(),
                        r.label,
                        o.len()
                    );
                }
                _ => println!("{:<8} {:<10} {:>4} (no sample)", s.name(), r.label, 0),
            }
        }
        if let [Some((b50, b99)), Some((t50, t99))] = p99s[k][..] {
            println!(
                "{:<8} BGP timers / BFD: p50 {}, p99 {}",
                s.name(),
                crate::bench::failover::report::ratio(t50, b50),
                crate::bench::failover::report::ratio(t99, b99)
            );
        }
    }
    let failures: Vec<&String> = all
        .iter()
        .flat_map(|r| &r.failures)
        .chain(vrrp_failures)
        .collect();
    if !failures.is_empty() {
        for f in &failures {
            println!("failed: {f}");
        }
        bail!("{} run(s) failed", failures.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_from_the_command_line() {
        assert_eq!(
            Scenario::parse_list(&[]).expect("all"),
            Scenario::ALL.to_vec()
        );
        assert_eq!(
            Scenario::parse_list(&["restart,kill".into(), "kill".into()]).expect("two"),
            vec![Scenario::Restart, Scenario::Kill]
        );
        let e = Scenario::parse_list(&["partition".into()]).expect_err("not in the fabric");
        assert!(e.to_string().contains("kill, link or restart"), "{e}");
    }
}
