//! The report: outages and takeover times per phase and implementation,
//! with ratios to vipd.

use anyhow::{Result, bail};

use super::bed::{Bed, Stack};
use super::{Options, Phase};
use crate::stats::summary;

/// `a / b` for the table: "-" when `b` is too small to divide by (a phase
/// the client did not notice has outage 0).
pub fn ratio(a: f64, b: f64) -> String {
    if b < 1.0 {
        "-".into()
    } else {
        format!("{:.2}", a / b)
    }
}

pub(super) fn report(opts: &Options, beds: &[Bed]) -> Result<()> {
    println!();
    println!(
        "{:<10} {:<15} {:>4} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "phase", "implementation", "ok", "failed", "min ms", "p50 ms", "p99 ms", "max ms"
    );
    let phases: Vec<Phase> = Phase::ALL
        .into_iter()
        .filter(|p| opts.scenarios.iter().any(|s| s.phases().contains(p)))
        .collect();
    for &phase in &phases {
        for b in beds {
            let v = &b.samples[phase.index()];
            let failed = b.phase_failures(phase);
            match summary(v) {
                Some([min, p50, p99, max]) => println!(
                    "{:<10} {:<15} {:>4} {:>7} {min:>9.1} {p50:>9.1} {p99:>9.1} {max:>9.1}",
                    phase.name(),
                    b.which.name(),
                    v.len(),
                    failed
                ),
                None => println!(
                    "{:<10} {:<15} {:>4} {:>7} {:>9} {:>9} {:>9} {:>9}",
                    phase.name(),
                    b.which.name(),
                    0,
                    failed,
                    "-",
                    "-",
                    "-",
                    "-"
                ),
            }
        }
    }
    println!("(nearest-rank percentiles: below 100 runs p99 is the largest outage)");
    println!();
    println!(
        "VIP takeover, failure -> expected holder (ms, p50 / p99; the interfaces' addresses (getifaddrs) polled every 10 ms):"
    );
    for &phase in &phases {
        let cells: Vec<String> = beds
            .iter()
            .map(|b| {
                summary(&b.takeovers[phase.index()]).map_or("-".into(), |[_, p50, p99, _]| {
                    format!("{p50:.0} / {p99:.0}")
                })
            })
            .collect();
        println!(
            "{:<10} {:>15} {:>15} {:>15}",
            phase.name(),
            cells[0],
            cells[1],
            cells[2]
        );
    }
    for b in beds {
        if let Stack::Pair(p) = &b.stack {
            let down: usize = p
                .haproxy
                .iter()
                .map(|h| h.logs().matches(" is DOWN").count())
                .sum();
            println!(
                "{}: HAProxy marked a backend DOWN {down} times (0 expected: the apiservers stay up)",
                b.which.name()
            );
        }
    }
    for b in beds {
        for f in &b.failures {
            println!("{} failure: {f}", b.which.name());
        }
    }

    println!();
    println!(
        "{:<10} {:>13} {:>13} {:>13} {:>13}  vipd p99 < 500 ms",
        "phase", "p50/default", "p99/default", "p50/tuned", "p99/tuned"
    );
    let mut all_met = true;
    let mut any = false;
    for &phase in &phases {
        let s: Vec<Option<[f64; 4]>> = beds
            .iter()
            .map(|b| summary(&b.samples[phase.index()]))
            .collect();
        let Some(v) = s[0] else {
            all_met = false;
            println!("{:<10} vipd has no successful run: MISSED", phase.name());
            continue;
        };
        any = true;
        let cell = |k: Option<[f64; 4]>, i: usize| k.map_or("-".into(), |k| ratio(v[i], k[i]));
        let met = v[2] < 500.0 && beds[0].phase_failures(phase) == 0;
        all_met &= met;
        println!(
            "{:<10} {:>13} {:>13} {:>13} {:>13}  {} ({:.1} ms)",
            phase.name(),
            cell(s[1], 1),
            cell(s[1], 2),
            cell(s[2], 1),
            cell(s[2], 2),
            if met { "met" } else { "MISSED" },
            v[2]
        );
    }
    println!("(ratios vipd / keepalived+HAProxy; \"-\": that column's outage was 0)");
    if !any {
        bail!("vipd has no successful run: nothing to compare");
    }
    println!(
        "target: vipd failover p99 under 500 ms in every phase: {}",
        if all_met { "met" } else { "MISSED" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_skip_zero_outages() {
        assert_eq!(ratio(100.0, 400.0), "0.25");
        assert_eq!(ratio(5.0, 0.0), "-");
    }
}
