//! `vip-bench`, run by `cargo xtask bench WHAT`: parses the command line and
//! starts one benchmark of `vip_tests::bench` (tests/src/bench/):
//! `dataplane` (ns per packet through BPF_PROG_TEST_RUN, `bench/dataplane.rs`),
//! `failover` (the outage clients see when an LB fails, vipd against the
//! kubeadm recipe's keepalived + HAProxy, `bench/failover.rs`), `reaction`
//! (how long a failing apiserver keeps new flows, `bench/reaction.rs`) and
//! `e2e` (connection rate, latency, bulk throughput and LB CPU per request for
//! vipd nat, vipd dsr, HAProxy and no load balancer, `bench/e2e/`) and
//! `flood` (200 watch streams through a connection flood, `bench/flood.rs`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use vip_tests::bench::{dataplane, e2e, failover, failover_bgp, flood, reaction, sync_lag};
use vip_userspace::dataplane::kernel::AttachMode;

#[derive(Parser)]
struct Args {
    /// Which benchmark: `dataplane`, `failover`, `reaction`, `e2e`, `sync-lag` or `flood`.
    what: String,
    /// Samples per case (each the kernel's mean over `repeat` runs).
    #[arg(long, default_value_t = 15)]
    samples: usize,
    /// Runs per sample for the repeat-safe cases.
    #[arg(long, default_value_t = 20_000)]
    repeat: u32,
    /// Packets per case for the mode nat and encapsulated dsr sections (one
    /// run each; the main table's new-flow case repeats, see `--repeat`).
    #[arg(long, default_value_t = 20_000)]
    new_flows: u32,
    /// Largest connection-table fill to measure.
    #[arg(long, default_value_t = 1_000_000)]
    max_flows: u32,
    /// dataplane: an XDP object of an older build (e.g. main's
    /// `target/release/build/vip-userspace-*/out/vip`), measured side by
    /// side with this build in the same rounds: the established and mode
    /// nat cases get an "old" column. It must have `vip_bench_restore`.
    #[arg(long)]
    old_object: Option<PathBuf>,
    /// failover: repetitions of each scenario per implementation; reaction:
    /// failures per kind; sync-lag: flows per case.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// e2e: rounds; each measures every case once per metric, and the
    /// table shows the medians.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// e2e: seconds per rate or latency sample.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// e2e: client connections in parallel (the same for every case).
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// e2e: size of the bulk response body, MiB.
    #[arg(long, default_value_t = 256)]
    bulk_mib: u64,
    /// e2e: how vipd attaches its XDP program: `native` or `skb`.
    #[arg(long, default_value = "native")]
    xdp: String,
    /// e2e: skip the TLS connection rate (the backends' crypto dominates it).
    #[arg(long)]
    no_tls: bool,
    /// e2e: folder for the report; default `$CARGO_TARGET_DIR/bench` or
    /// `target/bench`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// e2e: the cases to run (`direct`, `haproxy`, `nat`, `dsr`;
    /// comma-separated); all by default. One case alone, long, is what a
    /// profiler (`perf record -a`) needs.
    #[arg(long, value_delimiter = ',')]
    cases: Vec<String>,
    /// e2e: the metrics to measure (`conn`, `tls`, `kept`, `bulk`;
    /// comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// failover: which failures (`kill`, `link`, `partition`; comma-separated
    /// or repeated); all by default.
    #[arg(long)]
    scenario: Vec<String>,
    /// failover: `vrrp` (the default: two LBs on one segment, vipd against
    /// keepalived + HAProxy) or `bgp` (the L3 fabric: three LBs behind a
    /// router's ECMP, with BFD and with BGP timers only; scenarios `kill`,
    /// `link`, `restart`).
    #[arg(long, default_value = "vrrp")]
    topology: String,
    /// failover --topology bgp: leave out the VRRP lab's kill and link
    /// figures that are otherwise measured after the fabric's, in the same
    /// run, for comparison.
    #[arg(long)]
    no_vrrp: bool,
    /// failover (vrrp): which columns (`vipd`, `vipd-nat`, `ka-default`,
    /// `ka-tuned`; comma-separated or repeated); all by default.
    #[arg(long = "impl")]
    impls: Vec<String>,
    /// failover (vrrp): vipd's and the tuned keepalived's advert interval,
    /// ms (10..=40950: VRRPv3 counts centiseconds).
    #[arg(long, default_value_t = failover::FAST_ADVERT_MS)]
    advert_ms: u32,
    /// failover (vrrp): instead of failures, run two vipd LBs this many
    /// seconds with one core kept busy and count VRRP transitions (0
    /// expected) at `--advert-ms`.
    #[arg(long, default_value_t = 0)]
    quiet_secs: u64,
    /// flood: SYNs from distinct spoofed sources.
    #[arg(long, default_value_t = 1_000_000)]
    flood_syns: u32,
    /// flood: lone segments of flows nobody opened.
    #[arg(long, default_value_t = 200_000)]
    flood_segments: u32,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if ![
        "dataplane",
        "failover",
        "reaction",
        "e2e",
        "sync-lag",
        "flood",
    ]
    .contains(&a.what.as_str())
    {
        bail!(
            "unknown benchmark {:?}; available: dataplane, failover, reaction, e2e, sync-lag, flood",
            a.what
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load XDP programs and create namespaces: run them as root");
    }
    if a.what == "failover" && a.topology == "bgp" {
        return failover_bgp::run(&failover_bgp::Options {
            runs: a.runs,
            scenarios: failover_bgp::Scenario::parse_list(&a.scenario)?,
            vrrp: !a.no_vrrp,
        });
    }
    if a.what == "failover" && a.topology != "vrrp" {
        bail!("--topology {:?}: use vrrp or bgp", a.topology);
    }
    if a.what == "failover" {
        if !(10..=40_950).contains(&a.advert_ms) || a.advert_ms % 10 != 0 {
            bail!(
                "--advert-ms {}: VRRPv3 counts centiseconds (RFC 9568 5.2.7): use a multiple of 10 from 10 to 40950",
                a.advert_ms
            );
        }
        if a.quiet_secs > 0 {
            return failover::quiet::run(a.advert_ms, a.quiet_secs);
        }
        return failover::run(&failover::Options {
            runs: a.runs,
            scenarios: failover::Scenario::parse_list(&a.scenario)?,
            impls: failover::Impl::parse_list(&a.impls, a.advert_ms)?,
        });
    }
    if a.what == "reaction" {
        return reaction::run(&reaction::Options { runs: a.runs });
    }
    if a.what == "flood" {
        return flood::run(&flood::Options {
            syns: a.flood_syns,
            segments: a.flood_segments,
        });
    }
    if a.what == "sync-lag" {
        return sync_lag::run(&sync_lag::Options { runs: a.runs });
    }
    if a.what == "e2e" {
        let xdp_mode = match a.xdp.as_str() {
            "native" => AttachMode::Native,
            "skb" => AttachMode::Skb,
            other => bail!("--xdp {other:?}: use native or skb"),
        };
        if !(a.duration.is_finite() && a.duration > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
        let out = a.out.clone().unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| PathBuf::from("target"), PathBuf::from)
                .join("bench")
        });
        let cases = words(
            &a.cases,
            &e2e::CaseKind::ALL,
            e2e::CaseKind::parse,
            "--cases",
            "direct, haproxy, nat or dsr",
        )?;
        let mut metrics = words(
            &a.metrics,
            &e2e::Metric::ALL,
            e2e::Metric::parse,
            "--metrics",
            "conn, tls, kept or bulk",
        )?;
        if a.no_tls {
            metrics.retain(|m| *m != e2e::Metric::Tls);
        }
        return e2e::run(&e2e::Options {
            cases,
            metrics,
            rounds: a.rounds,
            duration: Duration::from_secs_f64(a.duration),
            concurrency: a.concurrency,
            bulk_bytes: a.bulk_mib << 20,
            xdp_mode,
            out_dir: out,
        });
    }
    dataplane::run(&dataplane::Options {
        samples: a.samples,
        repeat: a.repeat,
        new_flows: a.new_flows,
        max_flows: a.max_flows,
        old_object: match &a.old_object {
            Some(p) => Some(
                std::fs::read(p)
                    .with_context(|| format!("--old-object {}: cannot read it", p.display()))?,
            ),
            None => None,
        },
    })
}

/// A comma-separated option's words, parsed; all of `all` when none is given.
fn words<T: Copy>(
    given: &[String],
    all: &[T],
    parse: fn(&str) -> Option<T>,
    flag: &str,
    valid: &str,
) -> Result<Vec<T>> {
    if given.is_empty() {
        return Ok(all.to_vec());
    }
    given
        .iter()
        .map(|w| parse(w).with_context(|| format!("{flag} {w:?}: use {valid}")))
        .collect()
}
