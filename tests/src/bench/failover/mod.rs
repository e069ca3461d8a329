//! `cargo xtask bench failover`: how long clients lose the apiservers behind
//! the VIP when an LB fails, vipd against the kubeadm HA recipe's
//! keepalived + HAProxy (`kubeadm_ha`), measured in the same run.
//!
//! Three labs, each client, lb, lb2 and three apiserver stand-ins (TLS,
//! `/whoami`, `/healthz`) behind the VIP 10.77.0.100:6443:
//! - `vipd`: the full agent on lb (priority 150) and lb2 (100), mode dsr,
//!   XDP in SKB mode, 100 ms adverts, its probes and pins as deployed
//!   (`scenario::LbLab`);
//! - `ka+hap default`: keepalived (lb MASTER 101, lb2 BACKUP 100, VRRPv2,
//!   `advert_int` left at its 1 s default, the recipe's check script) and
//!   HAProxy `mode tcp` on both LBs in front of the same stand-ins;
//! - `ka+hap tuned`: the same with `advert_int 0.1` (VRRPv3, vipd's
//!   interval).
//!
//! The client makes a real request every 10 ms: a new TCP connection to
//! the VIP, a TLS handshake verified against the lab CA and `GET /whoami`
//! (each on its own thread, every connect, read and write bounded by
//! 250 ms), so an answer means the whole
//! path works: ARP for the VIP, the holder's forwarder, a backend.
//!
//! Scenarios (`--scenario`, all by default), each a sequence of phases
//! whose outage is measured separately:
//! - `kill`: the master's daemon gets SIGKILL (keepalived: parent and VRRP
//!   child), its link stays up. Then the daemon is started again (not
//!   measured) and takes the VIP back.
//! - `link`: the master's switch port goes down; its daemon keeps running
//!   (phase `link down`); once lb2 serves, the port comes back up and the
//!   master preempts (phase `link up`).
//! - `partition`: VRRP between the LBs is dropped at the switch, all else
//!   flows, so lb2 becomes a second master (phase `split`); then VRRP flows
//!   again and lb2 yields (phase `heal`).
//!
//! The outage of a phase is the longest time the client went without a
//! successful answer, counted from the moment the failure was in place
//! (the command that caused it has returned; the kill is sent) until the
//! phase has settled: the expected node holds the VIP, the client's
//! requests succeed in a row, and a quiet tail shows no late hiccup. A phase
//! in which no request failed has outage 0. Repetitions go round the
//! implementations for each scenario in turn, so machine noise hits all
//! alike. Every wait has a deadline: a phase that fails is reported and the
//! lab reset, never a hang.

mod bed;
mod client;
pub mod quiet;
pub(crate) mod report;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use self::bed::Bed;
use self::report::report;
use crate::bench::Jitter;
use crate::netns::VIP_V4;
use crate::scenario::{Fwd, PORT};

const VRID: u8 = 51;
/// The LB nodes: the master (highest priority), then the backup. The names
/// `scenario::LbLab` gives them; the keepalived labs use the same.
const LBS: [&str; 2] = ["lb", "lb2"];
/// vipd's priorities in `LbLab`.
const VIPD_PRIOS: [u8; 2] = [150, 100];
/// The recipe's: "101 and 100 respectively will suffice".
const RECIPE_PRIOS: [u8; 2] = [101, 100];
/// vipd's advert interval by default (its own default) and the tuned
/// keepalived's; `--advert-ms` sets both.
pub const FAST_ADVERT_MS: u32 = 100;
/// keepalived's default `advert_int`, which the recipe keeps.
const DEFAULT_ADVERT_MS: u32 = 1000;
/// A request starts this often ...
const POLL_EVERY: Duration = Duration::from_millis(10);
/// ... and each of its steps (the connect, every read and write of the
/// handshake and the answer) fails after this long (no SYN is retransmitted
/// this early, so a lost SYN is a failed request, and the next one starts
/// 10 ms later). A request of several slow steps can take longer.
const POLL_TIMEOUT: Duration = Duration::from_millis(250);
/// The longest a phase may take to reach its expected VIP holder:
/// keepalived's default Master_Down_Interval is 3.6 s.
const SETTLE: Duration = Duration::from_secs(12);
/// The longest the client may need for successful requests in a row once
/// the holder is right (a stale ARP entry shows up here).
const STEADY: Duration = Duration::from_secs(12);
/// Deadline for starting a daemon and for the lab to become ready.
const STEP: Duration = Duration::from_secs(30);
/// Successful requests in a row that make a lab "serving".
const STEADY_POLLS: usize = 5;
/// Watched after a phase settled, so a late hiccup (the old holder dropping
/// the VIP a moment after the new one took it) is counted.
const TAIL: Duration = Duration::from_millis(300);

/// What `--scenario` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Kill,
    Link,
    Partition,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Kill, Scenario::Link, Scenario::Partition];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Kill => "kill",
            Scenario::Link => "link",
            Scenario::Partition => "partition",
        }
    }

    pub fn phases(self) -> &'static [Phase] {
        match self {
            Scenario::Kill => &[Phase::Kill],
            Scenario::Link => &[Phase::LinkDown, Phase::LinkUp],
            Scenario::Partition => &[Phase::Split, Phase::Heal],
        }
    }

    /// `--scenario` values (comma-separated or repeated); none: all three.
    pub fn parse_list(names: &[String]) -> Result<Vec<Scenario>> {
        let mut out = Vec::new();
        for name in names.iter().flat_map(|n| n.split(',')).map(str::trim) {
            let Some(s) = Scenario::ALL.into_iter().find(|s| s.name() == name) else {
                bail!("--scenario {name:?}: use kill, link or partition");
            };
            if !out.contains(&s) {
                out.push(s);
            }
        }
        if out.is_empty() {
            out = Scenario::ALL.to_vec();
        }
        Ok(out)
    }
}

/// One measured moment of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Kill,
    LinkDown,
    LinkUp,
    Split,
    Heal,
}

impl Phase {
    const ALL: [Phase; 5] = [
        Phase::Kill,
        Phase::LinkDown,
        Phase::LinkUp,
        Phase::Split,
        Phase::Heal,
    ];

    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Kill => "kill",
            Phase::LinkDown => "link down",
            Phase::LinkUp => "link up",
            Phase::Split => "split",
            Phase::Heal => "heal",
        }
    }

    /// Who holds the VIP once the phase has settled.
    fn settled(self) -> Holder {
        match self {
            Phase::Kill | Phase::LinkDown | Phase::Split => Holder::Backup,
            Phase::LinkUp | Phase::Heal => Holder::MasterOnly,
        }
    }
}

/// The expected VIP holder at the end of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// lb2 has it (lb may still have it: a killed daemon leaves it, and a
    /// partitioned master keeps it).
    Backup,
    /// lb has it and lb2 does not.
    MasterOnly,
}

/// The columns: vipd in each forwarding mode, then the recipe's pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// vipd with this forwarding mode and advert interval (ms).
    Vipd(Fwd, u32),
    KaDefault,
    /// keepalived with this `advert_int` (ms): vipd's.
    KaTuned(u32),
}

/// `--impl` names, in column order.
const IMPL_NAMES: [&str; 4] = ["vipd", "vipd-nat", "ka-default", "ka-tuned"];

impl Impl {
    /// `--impl` values (comma-separated or repeated; none: all four), vipd
    /// and the tuned keepalived with `advert_ms` adverts.
    pub fn parse_list(names: &[String], advert_ms: u32) -> Result<Vec<Impl>> {
        let all = [
            Impl::Vipd(Fwd::Dsr, advert_ms),
            Impl::Vipd(Fwd::Nat, advert_ms),
            Impl::KaDefault,
            Impl::KaTuned(advert_ms),
        ];
        let mut pick = [false; 4];
        for name in names.iter().flat_map(|n| n.split(',')).map(str::trim) {
            let Some(k) = IMPL_NAMES.iter().position(|n| *n == name) else {
                bail!("--impl {name:?}: use {}", IMPL_NAMES.join(", "));
            };
            pick[k] = true;
        }
        if !pick.contains(&true) {
            pick = [true; 4];
        }
        Ok(all
            .into_iter()
            .zip(pick)
            .filter_map(|(i, p)| p.then_some(i))
            .collect())
    }

    pub fn name(self) -> &'static str {
        match self {
            Impl::Vipd(Fwd::Dsr, _) => "vipd dsr",
            Impl::Vipd(Fwd::Nat, _) => "vipd nat",
            Impl::KaDefault => "ka+hap default",
            Impl::KaTuned(_) => "ka+hap tuned",
        }
    }

    pub fn is_vipd(self) -> bool {
        matches!(self, Impl::Vipd(..))
    }

    fn advert_ms(self) -> u32 {
        match self {
            Impl::Vipd(_, ms) | Impl::KaTuned(ms) => ms,
            Impl::KaDefault => DEFAULT_ADVERT_MS,
        }
    }

    fn priorities(self) -> [u8; 2] {
        match self {
            Impl::Vipd(..) => VIPD_PRIOS,
            Impl::KaDefault | Impl::KaTuned(_) => RECIPE_PRIOS,
        }
    }

    /// The backup's Master_Down_Interval, in ms.
    fn mdi_ms(self) -> f64 {
        master_down_interval_ms(f64::from(self.advert_ms()), self.priorities()[1])
    }

    /// A rough wall time for one repetition of `s` (the start estimate):
    /// each takeover waits a Master_Down_Interval; a preemption back waits
    /// one more (but keepalived's `state MASTER` takes over at start); a
    /// vipd restart loads and attaches its program; each phase ends with
    /// the steady polls and the tail.
    fn estimate(self, s: Scenario) -> Duration {
        let mdi = self.mdi_ms() / 1000.0;
        let phase = 0.2 + TAIL.as_secs_f64() + POLL_TIMEOUT.as_secs_f64();
        let ready = 0.5;
        let secs = match (s, self) {
            (Scenario::Kill, Impl::Vipd(..)) => ready + mdi + phase + 3.0 + mdi,
            (Scenario::Kill, _) => ready + mdi + phase + 1.5,
            (Scenario::Link, _) => ready + 2.0 * (mdi + phase),
            (Scenario::Partition, _) => {
                ready + 2.0 * phase + mdi + f64::from(self.advert_ms()) / 1000.0
            }
        };
        Duration::from_secs_f64(secs)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions of each scenario per implementation.
    pub runs: usize,
    pub scenarios: Vec<Scenario>,
    /// The columns (`Impl::parse_list`).
    pub impls: Vec<Impl>,
}

/// RFC 9568 section 6.1 for the backup: 3 * Advertisement_Interval +
/// Skew_Time, Skew_Time = (256 - priority) * interval / 256. (VRRPv2, RFC
/// 3768 section 6.1, has Skew_Time = (256 - priority) / 256 s: the same at
/// 1 s adverts.)
pub fn master_down_interval_ms(advert_ms: f64, priority: u8) -> f64 {
    3.0 * advert_ms + (256.0 - f64::from(priority)) * advert_ms / 256.0
}

/// The whole run's estimated wall time, setup included.
pub fn estimate(opts: &Options) -> Duration {
    let per_run: Duration = opts
        .scenarios
        .iter()
        .flat_map(|s| opts.impls.iter().map(|i| i.estimate(*s)))
        .sum();
    // Building the three labs and their first election.
    Duration::from_secs(20) + per_run * u32::try_from(opts.runs).unwrap_or(u32::MAX)
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let names: Vec<&str> = opts.scenarios.iter().map(|s| s.name()).collect();
    println!(
        "vipd failover benchmark: scenarios {}; {} runs each per implementation, interleaved",
        names.join(", "),
        opts.runs
    );
    println!(
        "labs: client, lb, lb2, be1..be3 (apiserver stand-ins) each; VIP {VIP_V4}:{PORT}, VRID {VRID}"
    );
    if opts.impls.is_empty() {
        bail!("no implementation to measure (--impl)");
    }
    for &which in &opts.impls {
        let [m, b] = which.priorities();
        let what = match which {
            Impl::Vipd(Fwd::Dsr, _) => "vipd agent, mode dsr, XDP skb".to_string(),
            Impl::Vipd(Fwd::Nat, _) => {
                "vipd agent, mode nat with state sync (snat: vip), XDP skb".to_string()
            }
            Impl::KaDefault => "keepalived (kubeadm recipe, VRRPv2) + HAProxy mode tcp".to_string(),
            Impl::KaTuned(ms) => {
                format!("the same, advert_int {} (VRRPv3)", f64::from(ms) / 1000.0)
            }
        };
        println!(
            "  {:<15} {what}; {} ms adverts, priorities {m}/{b}: Master_Down_Interval (RFC 9568 6.1) {:.1} ms",
            which.name(),
            which.advert_ms(),
            which.mdi_ms()
        );
    }
    println!(
        "client: a new TLS connection + GET /whoami to the VIP every {} ms ({} ms per connect, read or write); outage = \
         longest time without a successful answer after the failure is in place (0: no request failed)",
        POLL_EVERY.as_millis(),
        POLL_TIMEOUT.as_millis()
    );
    let est = estimate(opts);
    println!(
        "estimated run time: about {} min {} s (keepalived's 1 s adverts dominate: 3.6 s per takeover)",
        est.as_secs() / 60,
        est.as_secs() % 60
    );
    println!();

    // A failed step panics with the daemon's logs; `attempt` reports the
    // first lines, so the default hook's copy on stderr is only noise.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let result = measure(opts);
    std::panic::set_hook(hook);
    println!("took {:.0} s", started.elapsed().as_secs_f64());
    result
}

fn measure(opts: &Options) -> Result<()> {
    let mut beds = Vec::new();
    for &which in &opts.impls {
        match Bed::new(which) {
            Ok(mut b) => {
                if let Err(e) = b.reset() {
                    println!("{}: setup failed: {e}", which.name());
                    b.failures.push(format!("setup: {e}"));
                    b.broken = true;
                }
                beds.push(b);
            }
            Err(e) => bail!("{}: building the lab failed: {e}", which.name()),
        }
    }
    let head: String = opts
        .impls
        .iter()
        .map(|i| format!(" {:>15}", i.name()))
        .collect();
    println!("{:>4} {:<10}{head}", "run", "phase");
    let mut jitter = Jitter::from_clock();
    for run in 1..=opts.runs {
        for &s in &opts.scenarios {
            let mut cells: Vec<Vec<String>> = vec![Vec::new(); s.phases().len()];
            for b in &mut beds {
                let mut got = vec!["-".to_string(); s.phases().len()];
                if !b.broken {
                    let j = jitter.next(Duration::from_millis(u64::from(b.which.advert_ms())));
                    let results = b.recorded(run, s, j);
                    for (k, phase) in s.phases().iter().enumerate() {
                        match results.iter().find(|(p, _)| p == phase) {
                            Some((_, Ok(ms))) => got[k] = format!("{ms:.1}"),
                            Some((_, Err(e))) => {
                                got[k] = "failed".into();
                                eprintln!("run {run} {} {}: {e}", b.which.name(), phase.name());
                            }
                            None => got[k] = "skipped".into(),
                        }
                    }
                }
                for (k, g) in got.into_iter().enumerate() {
                    cells[k].push(g);
                }
            }
            for (k, phase) in s.phases().iter().enumerate() {
                let row: String = cells[k].iter().map(|c| format!(" {c:>15}")).collect();
                println!("{run:>4} {:<10}{row}", phase.name());
            }
        }
    }
    report(opts, &beds)
}

/// The VRRP lab's vipd column (mode dsr, the default 100 ms adverts) for
/// the phases where an LB fails: what `bench failover --topology bgp`
/// prints beside the fabric's figures, from the same invocation.
pub struct VrrpReference {
    /// Per phase (kill, link down, link up): its name, the outages and the
    /// takeovers, in ms.
    pub phases: Vec<(&'static str, Vec<f64>, Vec<f64>)>,
    pub failures: Vec<String>,
}

/// `runs` repetitions of the kill and link scenarios on the VRRP lab, as
/// `measure` runs them for the `vipd` column.
pub fn vrrp_reference(runs: usize) -> Result<VrrpReference> {
    let which = Impl::Vipd(Fwd::Dsr, FAST_ADVERT_MS);
    let mut b = Bed::new(which).map_err(|e| anyhow::anyhow!("building the VRRP lab: {e}"))?;
    if let Err(e) = b.reset() {
        bail!("the VRRP lab: setup failed: {e}");
    }
    let scenarios = [Scenario::Kill, Scenario::Link];
    let mut jitter = Jitter::from_clock();
    'runs: for run in 1..=runs {
        for s in scenarios {
            if b.broken {
                break 'runs;
            }
            let j = jitter.next(Duration::from_millis(u64::from(FAST_ADVERT_MS)));
            b.recorded(run, s, j);
        }
    }
    let phases = scenarios
        .iter()
        .flat_map(|s| s.phases())
        .map(|p| {
            (
                p.name(),
                b.samples[p.index()].clone(),
                b.takeovers[p.index()].clone(),
            )
        })
        .collect();
    Ok(VrrpReference {
        phases,
        failures: b
            .failures
            .iter()
            .map(|f| format!("VRRP lab, {f}"))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_down_interval_of_the_issue() {
        let mdi = master_down_interval_ms(100.0, 100);
        assert!((mdi - 360.9375).abs() < 1e-9, "{mdi}");
        assert!((master_down_interval_ms(100.0, 150) - 341.40625).abs() < 1e-9);
        // keepalived's defaults with the recipe's backup priority: the 3.6 s
        // operators complain about.
        assert!((Impl::KaDefault.mdi_ms() - 3609.375).abs() < 1e-9);
        assert!((Impl::KaTuned(100).mdi_ms() - Impl::Vipd(Fwd::Nat, 100).mdi_ms()).abs() < 1e-9);
        // 50 ms adverts at the backup's priority 100: 3 * 50 + 30.5.
        assert!((Impl::Vipd(Fwd::Dsr, 50).mdi_ms() - 180.46875).abs() < 1e-9);
    }

    #[test]
    fn scenarios_from_the_command_line() {
        let s = |v: &[&str]| {
            Scenario::parse_list(&v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>())
        };
        assert_eq!(s(&[]).expect("none"), Scenario::ALL);
        assert_eq!(
            s(&["partition,kill", "kill"]).expect("list"),
            [Scenario::Partition, Scenario::Kill]
        );
        assert!(s(&["crash"]).is_err());
        let phases: Vec<&str> = Scenario::ALL
            .iter()
            .flat_map(|s| s.phases())
            .map(|p| p.name())
            .collect();
        assert_eq!(phases, ["kill", "link down", "link up", "split", "heal"]);
    }

    #[test]
    fn implementations_from_the_command_line() {
        let i = |v: &[&str]| {
            Impl::parse_list(&v.iter().map(|s| (*s).to_string()).collect::<Vec<_>>(), 50)
        };
        assert_eq!(i(&[]).expect("none").len(), 4);
        assert_eq!(
            i(&["ka-tuned,vipd-nat", "vipd"]).expect("list"),
            [
                Impl::Vipd(Fwd::Dsr, 50),
                Impl::Vipd(Fwd::Nat, 50),
                Impl::KaTuned(50)
            ]
        );
        let e = i(&["haproxy"]).expect_err("unknown").to_string();
        assert!(e.contains("vipd-nat"), "{e}");
    }

    #[test]
    fn estimate_is_dominated_by_keepalived_defaults() {
        let all = Options {
            runs: 30,
            scenarios: Scenario::ALL.to_vec(),
            impls: Impl::parse_list(&[], 100).expect("all"),
        };
        let est = estimate(&all);
        // Five takeovers of 3.6 s per run in the default column alone.
        assert!(est > Duration::from_secs(30 * 18), "{est:?}");
        assert!(est < Duration::from_secs(3600), "{est:?}");
        let one = Options { runs: 1, ..all };
        assert!(estimate(&one) < est);
    }
}
