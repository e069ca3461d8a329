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

use anyhow::{Result, bail};
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
        });
    }
    if a.what == "failover" && a.topology != "vrrp" {
        bail!("--topology {:?}: use vrrp or bgp", a.topology);
    }
    if a.what == "failover" {
        return failover::run(&failover::Options {
            runs: a.runs,
            scenarios: failover::Scenario::parse_list(&a.scenario)?,
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
        return e2e::run(&e2e::Options {
            rounds: a.rounds,
            duration: Duration::from_secs_f64(a.duration),
            concurrency: a.concurrency,
            bulk_bytes: a.bulk_mib << 20,
            xdp_mode,
            tls: !a.no_tls,
            out_dir: out,
        });
    }
    dataplane::run(&dataplane::Options {
        samples: a.samples,
        repeat: a.repeat,
        new_flows: a.new_flows,
        max_flows: a.max_flows,
    })
}
