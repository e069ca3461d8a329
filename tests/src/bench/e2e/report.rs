//! The report: each case's medians, the tables of values and ratios, the
//! goals of issue 7 and the notes that say what the columns mean.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::cpu::{CpuSource, CpuUse};
use super::haproxy::haproxy_available;
use super::load::Sample;
use super::{Case, Options, PLAIN_PORT, TLS_PORT};
use crate::stats::{median, percentile};

/// One case's medians; `None` where nothing was measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub name: String,
    /// Short plain connections per second.
    pub conn_rate: Option<f64>,
    /// Short TLS connections per second.
    pub tls_rate: Option<f64>,
    /// Requests per second on kept-alive connections.
    pub req_rate: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub bulk_gbit: Option<f64>,
    /// LB CPU (process + XDP) per short plain connection.
    pub lb_us_per_conn: Option<f64>,
    /// The same per TLS connection.
    pub lb_us_per_tls: Option<f64>,
    /// The same per kept-alive request.
    pub lb_us_per_req: Option<f64>,
    /// Whole-machine busy CPU per short plain connection.
    pub machine_us_per_conn: Option<f64>,
    /// Whole-machine busy cores while the connection rate was measured:
    /// near the machine's core count means the rate hit the CPU limit.
    pub busy_cores_conn: Option<f64>,
    /// XDP ns per run and runs per short connection (vipd only).
    pub xdp_ns_per_run: Option<f64>,
    /// XDP ns per run on kept-alive connections (established flows).
    pub xdp_ns_per_run_kept: Option<f64>,
    /// XDP run time per short connection.
    pub xdp_us_per_conn: Option<f64>,
    pub xdp_runs_per_conn: Option<f64>,
    /// LB process CPU per short connection (the XDP part is the rest).
    pub proc_us_per_conn: Option<f64>,
    /// Failed operations over all samples, and all operations.
    pub errors: u64,
    pub ops: u64,
}

pub(super) fn summarize(c: &Case) -> Summary {
    let s = &c.samples;
    let rate = |v: &[Sample]| {
        median(
            &v.iter()
                .filter(|x| x.ok > 0)
                .map(|x| x.ok as f64 / x.elapsed.as_secs_f64())
                .collect::<Vec<_>>(),
        )
    };
    let per_op = |v: &[Sample], f: &dyn Fn(&CpuUse) -> f64| {
        median(
            &v.iter()
                .filter(|x| x.ok > 0)
                .filter_map(|x| x.cpu.map(|c| f(&c) * 1e6 / x.ok as f64))
                .collect::<Vec<_>>(),
        )
    };
    let lb = !matches!(
        c.target.as_ref().map(|t| t.cpu),
        Some(CpuSource::None) | None
    );
    let vipd = matches!(
        c.target.as_ref().map(|t| t.cpu),
        Some(CpuSource::Vipd { .. })
    );
    let pct = |p: f64| {
        median(
            &s.kept
                .iter()
                .filter(|x| !x.latencies_ns.is_empty())
                .map(|x| {
                    let mut v: Vec<f64> =
                        x.latencies_ns.iter().map(|&n| n as f64 / 1000.0).collect();
                    v.sort_by(f64::total_cmp);
                    percentile(&v, p)
                })
                .collect::<Vec<_>>(),
        )
    };
    let all = [&s.short, &s.tls, &s.kept, &s.bulk];
    Summary {
        name: c.kind.name().to_owned(),
        conn_rate: rate(&s.short),
        tls_rate: rate(&s.tls),
        req_rate: rate(&s.kept),
        p50_us: pct(50.0),
        p99_us: pct(99.0),
        bulk_gbit: median(
            &s.bulk
                .iter()
                .filter(|x| x.ok > 0)
                .map(|x| x.bytes as f64 * 8.0 / x.elapsed.as_secs_f64() / 1e9)
                .collect::<Vec<_>>(),
        ),
        lb_us_per_conn: lb.then(|| per_op(&s.short, &CpuUse::lb_s)).flatten(),
        lb_us_per_tls: lb.then(|| per_op(&s.tls, &CpuUse::lb_s)).flatten(),
        lb_us_per_req: lb.then(|| per_op(&s.kept, &CpuUse::lb_s)).flatten(),
        machine_us_per_conn: per_op(&s.short, &|c| c.machine_busy_s),
        busy_cores_conn: median(
            &s.short
                .iter()
                .filter(|x| x.ok > 0)
                .filter_map(|x| x.cpu.map(|c| c.machine_busy_s / x.elapsed.as_secs_f64()))
                .collect::<Vec<_>>(),
        ),
        xdp_ns_per_run: vipd.then(|| ns_per_run(&s.short)).flatten(),
        xdp_ns_per_run_kept: vipd.then(|| ns_per_run(&s.kept)).flatten(),
        xdp_us_per_conn: vipd.then(|| per_op(&s.short, &|c| c.xdp_s)).flatten(),
        xdp_runs_per_conn: vipd
            .then(|| {
                median(
                    &s.short
                        .iter()
                        .filter(|x| x.ok > 0)
                        .filter_map(|x| x.cpu.map(|c| c.xdp_runs as f64 / x.ok as f64))
                        .collect::<Vec<_>>(),
                )
            })
            .flatten(),
        proc_us_per_conn: lb.then(|| per_op(&s.short, &|c| c.proc_s)).flatten(),
        errors: all.iter().flat_map(|v| v.iter()).map(|x| x.errors).sum(),
        ops: all
            .iter()
            .flat_map(|v| v.iter())
            .map(|x| x.ok + x.errors)
            .sum(),
    }
}

/// The median over samples of the XDP program's mean run time.
fn ns_per_run(v: &[Sample]) -> Option<f64> {
    median(
        &v.iter()
            .filter_map(|x| x.cpu)
            .filter(|c| c.xdp_runs > 0)
            .map(|c| c.xdp_s * 1e9 / c.xdp_runs as f64)
            .collect::<Vec<_>>(),
    )
}

/// One column of the table: header, how to print it, which value.
struct Col {
    head: &'static str,
    decimals: usize,
    get: fn(&Summary) -> Option<f64>,
}

const COLS: [Col; 10] = [
    Col {
        head: "conn/s",
        decimals: 0,
        get: |s| s.conn_rate,
    },
    Col {
        head: "TLS conn/s",
        decimals: 0,
        get: |s| s.tls_rate,
    },
    Col {
        head: "kept-alive req/s",
        decimals: 0,
        get: |s| s.req_rate,
    },
    Col {
        head: "p50 µs",
        decimals: 1,
        get: |s| s.p50_us,
    },
    Col {
        head: "p99 µs",
        decimals: 1,
        get: |s| s.p99_us,
    },
    Col {
        head: "bulk Gbit/s",
        decimals: 2,
        get: |s| s.bulk_gbit,
    },
    Col {
        head: "LB CPU µs/conn",
        decimals: 2,
        get: |s| s.lb_us_per_conn,
    },
    Col {
        head: "LB CPU µs/TLS conn",
        decimals: 2,
        get: |s| s.lb_us_per_tls,
    },
    Col {
        head: "LB CPU µs/req",
        decimals: 2,
        get: |s| s.lb_us_per_req,
    },
    Col {
        head: "machine CPU µs/conn",
        decimals: 1,
        get: |s| s.machine_us_per_conn,
    },
];

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// `case / reference`, or `None` when either is missing or the reference
/// is zero.
pub fn ratio(case: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (case, reference) {
        (Some(c), Some(r)) if r != 0.0 => Some(c / r),
        _ => None,
    }
}

fn table_row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

fn table_head(out: &mut String, first: &str) {
    let mut cells = vec![first.to_owned()];
    cells.extend(COLS.iter().map(|c| c.head.to_owned()));
    table_row(out, &cells);
    let mut sep = vec!["---".to_owned()];
    sep.extend(COLS.iter().map(|_| "---:".to_owned()));
    table_row(out, &sep);
}

/// The results as Markdown tables: medians, then ratios to `haproxy` and to
/// `direct` (`case / reference`; for latency and CPU lower is better).
pub fn render_tables(rows: &[Summary]) -> String {
    let mut out = String::new();
    table_head(&mut out, "case");
    for r in rows {
        let mut cells = vec![r.name.clone()];
        cells.extend(COLS.iter().map(|c| fmt_opt((c.get)(r), c.decimals)));
        table_row(&mut out, &cells);
    }
    for reference in ["haproxy", "direct"] {
        let Some(base) = rows
            .iter()
            .find(|r| r.name == reference && COLS.iter().any(|c| (c.get)(r).is_some()))
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "\nRatio to {reference} (case / {reference}; higher is better for rates, lower for latency and CPU):\n"
        );
        table_head(&mut out, "case");
        for r in rows.iter().filter(|r| r.name != reference) {
            let mut cells = vec![r.name.clone()];
            cells.extend(
                COLS.iter()
                    .map(|c| fmt_opt(ratio((c.get)(r), (c.get)(base)), 2)),
            );
            table_row(&mut out, &cells);
        }
    }
    out
}

/// The LB CPU split and the error counts.
pub fn render_details(rows: &[Summary]) -> String {
    let mut out = String::new();
    table_row(
        &mut out,
        &[
            "case".into(),
            "LB process µs/conn".into(),
            "XDP µs/conn".into(),
            "XDP ns/run".into(),
            "XDP runs/conn".into(),
            "XDP ns/run kept-alive".into(),
            "busy cores (conn/s)".into(),
            "failed ops".into(),
        ],
    );
    table_row(
        &mut out,
        &[
            "---".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
        ],
    );
    for r in rows {
        table_row(
            &mut out,
            &[
                r.name.clone(),
                fmt_opt(r.proc_us_per_conn, 2),
                fmt_opt(r.xdp_us_per_conn, 2),
                fmt_opt(r.xdp_ns_per_run, 1),
                fmt_opt(r.xdp_runs_per_conn, 1),
                fmt_opt(r.xdp_ns_per_run_kept, 1),
                fmt_opt(r.busy_cores_conn, 2),
                format!("{} of {}", r.errors, r.ops),
            ],
        );
    }
    out
}

/// The goals of issue 7, each vipd mode against HAProxy: met, MISSED, or
/// not measurable.
pub fn render_goals(rows: &[Summary]) -> String {
    let mut out = String::new();
    let measured = |r: &&Summary| COLS.iter().any(|c| (c.get)(r).is_some());
    let Some(h) = rows.iter().filter(measured).find(|r| r.name == "haproxy") else {
        let _ = writeln!(
            out,
            "- goals: not evaluated, the haproxy case has no results"
        );
        return out;
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for v in rows.iter().filter(|r| r.name.starts_with("vipd")) {
        // "At equal CPU": connections per second of LB CPU.
        let eff = |r: &Summary| r.lb_us_per_conn.filter(|&u| u > 0.0).map(|u| 1e6 / u);
        match ratio(eff(v), eff(h)) {
            Some(x) => {
                let _ = writeln!(
                    out,
                    "- {}: connection rate at equal CPU >= 2x HAProxy, by LB CPU: {} ({:.1}x: {:.0} vs {:.0} \
                     connections per LB CPU-second; raw rate {}x on this machine)",
                    v.name,
                    verdict(x >= 2.0),
                    x,
                    eff(v).unwrap_or_default(),
                    eff(h).unwrap_or_default(),
                    fmt_opt(ratio(v.conn_rate, h.conn_rate), 2)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "- {}: connection rate at equal CPU: not measured (no LB CPU figure)",
                    v.name
                );
            }
        }
        // The same question asked of the whole machine: what the LB path
        // adds over `direct`, softirqs and veth hops included.
        let direct = rows.iter().find(|r| r.name == "direct");
        let extra = |r: &Summary| {
            let d = direct?.machine_us_per_conn?;
            r.machine_us_per_conn.map(|m| m - d)
        };
        if let (Some(ev), Some(eh)) = (extra(v), extra(h)) {
            let _ = writeln!(
                out,
                "  - the same on the whole machine: {} (the LB path adds {ev:.1} µs of busy CPU per connection \
                 over direct with {}, {eh:.1} µs with HAProxy: {}x; noisy on a shared machine)",
                verdict(ev <= 0.0 || eh / ev >= 2.0),
                v.name,
                fmt_opt(ratio(Some(eh), Some(ev)).filter(|_| ev > 0.0), 2)
            );
        }
        match (v.p99_us, h.p99_us) {
            (Some(a), Some(b)) => {
                let _ = writeln!(
                    out,
                    "- {}: p99 latency below HAProxy's: {} ({a:.1} µs vs {b:.1} µs)",
                    v.name,
                    verdict(a < b)
                );
            }
            _ => {
                let _ = writeln!(out, "- {}: p99 latency: not measured", v.name);
            }
        }
    }
    out
}

/// Issue 17 item 5: each vipd mode near the no-LB limit (`direct`): its
/// connection rate, kept-alive requests and bulk at least `floor` of
/// direct's (dsr 0.9, nat 0.85), its p99 within 1.1x direct's, and the
/// whole machine's CPU per connection over direct at most a quarter of
/// HAProxy's.
pub fn render_direct_goals(rows: &[Summary]) -> String {
    let mut out = String::new();
    let measured = |r: &&Summary| r.conn_rate.is_some() || r.req_rate.is_some();
    let Some(d) = rows.iter().filter(measured).find(|r| r.name == "direct") else {
        let _ = writeln!(out, "- not evaluated: the direct case has no results");
        return out;
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let h = rows.iter().filter(measured).find(|r| r.name == "haproxy");
    for v in rows
        .iter()
        .filter(measured)
        .filter(|r| r.name.starts_with("vipd"))
    {
        let floor = if v.name.ends_with("dsr") { 0.9 } else { 0.85 };
        let mut parts = vec![];
        for (what, a, b) in [
            ("conn/s", v.conn_rate, d.conn_rate),
            ("kept-alive req/s", v.req_rate, d.req_rate),
            ("bulk", v.bulk_gbit, d.bulk_gbit),
        ] {
            if let Some(x) = ratio(a, b) {
                parts.push(format!("{what} {x:.2} ({})", verdict(x >= floor)));
            }
        }
        let _ = writeln!(
            out,
            "- {}: >= {floor} of direct: {}",
            v.name,
            if parts.is_empty() {
                "not measured".to_owned()
            } else {
                parts.join(", ")
            }
        );
        if let Some(x) = ratio(v.p99_us, d.p99_us) {
            let _ = writeln!(
                out,
                "- {}: p99 within 1.1x direct's: {} ({x:.2}x)",
                v.name,
                verdict(x <= 1.1)
            );
        }
        let extra = |r: &Summary| Some(r.machine_us_per_conn? - d.machine_us_per_conn?);
        if let (Some(ev), Some(eh)) = (extra(v), h.and_then(extra)) {
            let _ = writeln!(
                out,
                "- {}: machine CPU per connection over direct <= 1/4 of HAProxy's: {} ({ev:.1} µs vs \
                 {eh:.1} µs, {})",
                v.name,
                verdict(eh > 0.0 && ev <= eh / 4.0),
                fmt_opt(ratio(Some(ev), Some(eh)), 2)
            );
        }
    }
    out
}

/// What the columns mean; part of every report.
pub const NOTES: &str = "\
- conn/s: new TCP connection, `GET /` (3-byte body), close by the client, per second, all client threads together.
- TLS conn/s: the same against the apiserver stand-in with a full TLS 1.3 handshake each (no resumption, as client-go).
- kept-alive req/s, p50/p99 µs: one connection per client thread, requests back to back (closed loop); latency from writing the request to the last byte of the response; percentiles per sample, then the median over samples.
- bulk Gbit/s: one connection, one response body of the given size, timed from the request to its last byte.
- LB CPU: what the LB node spends that can be attributed to it. HAProxy: its process's user+system time (/proc/PID/stat), which includes the socket work done in its system calls, but not the TCP receive processing done in softirq context outside it. vipd: its process's time (probes, stats; nearly idle) plus its XDP program's run time from the kernel's BPF statistics (BPF_ENABLE_STATS, enabled for the run only), which covers the program itself but not the veth driver's receive and transmit work around it, nor packets vipd passes to the kernel. So neither column is the whole cost; the machine column is.
- machine CPU µs/conn: busy CPU of the whole machine (/proc/stat, all but idle and iowait) per connection: client, backends, the LB, softirqs, and anything else running. The client and backends are the same in every case, so the difference to `direct` is the cost of the LB path; on a shared machine this column also carries other people's work (compare it within one run only).
- Without CONFIG_IRQ_TIME_ACCOUNTING (the usual case; /proc/stat's softirq column then stays near zero) softirq work is charged to whichever task it interrupted: part of the network receive work of every case then lands in the process column of whoever was running, HAProxy's included, and in the machine column in any case.
- Enabling BPF statistics costs vipd's XDP program two clock reads per run; HAProxy and direct pay nothing for it.
- XDP ns/run is measured live, with caches shared with everything else on the machine; `cargo xtask bench dataplane` measures the same program in a hot loop (BPF_PROG_TEST_RUN), which is why its figures are lower.
- busy cores (conn/s): the whole machine's busy CPU while the connection rate was measured, in cores. Near the machine's core count, the rate hit the CPU limit and every case's rate is then in inverse proportion to its machine CPU per connection: the LB path's own cost is that column's difference to direct.
- With native XDP on veth, the lab also runs an XDP_PASS program on the switch side of lb's link (veth delivers XDP_TX frames only then); it is not counted as vipd's.
";

/// `e2e-YYYYMMDDTHHMMSSZ` for a time (UTC).
pub fn report_name(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days_from_civil inverse (civil_from_days).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "e2e-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The whole report: the run's settings, the tables, the drops, the goals,
/// the notes and what failed.
pub(super) fn render_report(o: &Options, mode: &str, cases: &[Case], drops: &[String]) -> String {
    let rows: Vec<Summary> = cases.iter().map(summarize).collect();
    let mut report = String::new();
    let _ = writeln!(report, "# vipd end-to-end benchmark\n");
    let _ = writeln!(
        report,
        "{} rounds, interleaved (case order rotates each round); {:.1} s per rate/latency sample; \
         {} client connections in parallel (equal for every case); bulk body {} MiB; vipd XDP {mode}; \
         {} CPUs; {}; kernel {}. Medians over the rounds. Cases run: {}.\n",
        o.rounds,
        o.duration.as_secs_f64(),
        o.concurrency,
        o.bulk_bytes >> 20,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        haproxy_available().unwrap_or_else(|e| e),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        o.cases
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        report,
        "Backends: three, each with a plain HTTP/1.1 server (tokio, port {PLAIN_PORT}: conn/s, latency, bulk) \
         and the TLS apiserver stand-in (rustls, port {TLS_PORT}: TLS conn/s). direct: the client walks the \
         three backends in turn; the load balancers spread over the same three.\n"
    );
    report.push_str(&render_tables(&rows));
    let _ = writeln!(report, "\nLB CPU split and failures:\n");
    report.push_str(&render_details(&rows));
    let _ = writeln!(
        report,
        "\nPackets vipd's XDP program dropped over the whole run, by reason:\n"
    );
    for d in drops {
        let _ = writeln!(report, "{d}");
    }
    let _ = writeln!(report, "\nGoals (issue 7):\n");
    report.push_str(&render_goals(&rows));
    let _ = writeln!(
        report,
        "\nGoals (issue 17 item 5, against no load balancer):\n"
    );
    report.push_str(&render_direct_goals(&rows));
    let _ = writeln!(report, "\nWhat the columns mean:\n");
    report.push_str(NOTES);
    let failures: Vec<String> = cases
        .iter()
        .flat_map(|c| {
            c.failures
                .iter()
                .map(move |f| format!("- {}: {f}", c.kind.name()))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(report, "\nFailures:\n");
        for f in &failures {
            let _ = writeln!(report, "{f}");
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ratios() {
        assert_eq!(ratio(Some(6.0), Some(3.0)), Some(2.0));
        assert_eq!(ratio(Some(6.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(3.0)), None);
    }

    fn row(name: &str, conn: f64, p99: f64, lb: Option<f64>) -> Summary {
        Summary {
            name: name.into(),
            conn_rate: Some(conn),
            p99_us: Some(p99),
            lb_us_per_conn: lb,
            ..Summary::default()
        }
    }

    #[test]
    fn tables_with_ratios() {
        let rows = [
            row("direct", 1000.0, 100.0, None),
            row("haproxy", 500.0, 200.0, Some(40.0)),
            row("vipd nat", 800.0, 150.0, Some(2.0)),
        ];
        let t = render_tables(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("| case | conn/s | TLS conn/s |"),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "| direct | 1000 | - | - | - | 100.0 | - | - | - | - | - |"
        );
        assert!(t.contains("Ratio to haproxy"), "{t}");
        // vipd nat against haproxy: rate 1.6, p99 0.75, LB CPU 0.05.
        assert!(
            t.contains("| vipd nat | 1.60 | - | - | - | 0.75 | - | 0.05 | - | - | - |"),
            "{t}"
        );
        // Against direct: no LB CPU for direct, so no ratio.
        assert!(
            t.contains("| vipd nat | 0.80 | - | - | - | 1.50 | - | - | - | - | - |"),
            "{t}"
        );
        // Without a haproxy row only the direct ratios are shown.
        let t = render_tables(&rows[..1]);
        assert!(!t.contains("Ratio to haproxy"), "{t}");
    }

    #[test]
    fn goals_met_and_missed() {
        let rows = [
            row("haproxy", 500.0, 200.0, Some(40.0)),
            row("vipd nat", 800.0, 150.0, Some(10.0)),
            row("vipd dsr", 900.0, 250.0, Some(30.0)),
        ];
        let g = render_goals(&rows);
        assert!(
            g.contains(
                "- vipd nat: connection rate at equal CPU >= 2x HAProxy, by LB CPU: met (4.0x"
            ),
            "{g}"
        );
        assert!(
            g.contains("- vipd nat: p99 latency below HAProxy's: met"),
            "{g}"
        );
        assert!(
            g.contains(
                "- vipd dsr: connection rate at equal CPU >= 2x HAProxy, by LB CPU: MISSED (1.3x"
            ),
            "{g}"
        );
        assert!(
            g.contains("- vipd dsr: p99 latency below HAProxy's: MISSED"),
            "{g}"
        );
        assert!(render_goals(&rows[1..]).contains("not evaluated"));
        let unmeasured = Summary {
            name: "haproxy".into(),
            ..Summary::default()
        };
        assert!(render_goals(&[unmeasured, rows[1].clone()]).contains("not evaluated"));
        // With direct's machine figure, the machine-wide view is added.
        let m = |mut r: Summary, us: f64| {
            r.machine_us_per_conn = Some(us);
            r
        };
        let rows = [
            m(row("direct", 1000.0, 100.0, None), 100.0),
            m(row("haproxy", 500.0, 200.0, Some(40.0)), 300.0),
            m(row("vipd nat", 800.0, 150.0, Some(10.0)), 150.0),
        ];
        let g = render_goals(&rows);
        assert!(
            g.contains(
                "  - the same on the whole machine: met (the LB path adds 50.0 µs of busy CPU per \
                 connection over direct with vipd nat, 200.0 µs with HAProxy: 4.00x;"
            ),
            "{g}"
        );
    }

    #[test]
    fn report_names_are_utc_timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_202_645);
        assert_eq!(report_name(t), "e2e-20251115T103045Z");
        assert_eq!(report_name(SystemTime::UNIX_EPOCH), "e2e-19700101T000000Z");
        // A leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(report_name(t), "e2e-20000229T000000Z");
    }

    #[test]
    fn direct_goals_per_mode() {
        let with = |name: &str, conn: f64, req: f64, p99: f64, machine: f64| Summary {
            req_rate: Some(req),
            machine_us_per_conn: Some(machine),
            ..row(name, conn, p99, None)
        };
        let rows = [
            with("direct", 1000.0, 100.0, 100.0, 100.0),
            with("haproxy", 500.0, 50.0, 200.0, 300.0),
            // 0.88 of direct: below dsr's 0.9, above nat's 0.85.
            with("vipd nat", 880.0, 95.0, 109.0, 160.0),
            with("vipd dsr", 880.0, 95.0, 120.0, 140.0),
        ];
        let g = render_direct_goals(&rows);
        assert!(
            g.contains(
                "- vipd nat: >= 0.85 of direct: conn/s 0.88 (met), kept-alive req/s 0.95 (met)"
            ),
            "{g}"
        );
        assert!(
            g.contains(
                "- vipd dsr: >= 0.9 of direct: conn/s 0.88 (MISSED), kept-alive req/s 0.95 (met)"
            ),
            "{g}"
        );
        assert!(
            g.contains("- vipd nat: p99 within 1.1x direct's: met (1.09x)"),
            "{g}"
        );
        assert!(
            g.contains("- vipd dsr: p99 within 1.1x direct's: MISSED (1.20x)"),
            "{g}"
        );
        // HAProxy adds 200 µs over direct: a quarter is 50.
        assert!(
            g.contains("- vipd nat: machine CPU per connection over direct <= 1/4 of HAProxy's: MISSED (60.0 µs"),
            "{g}"
        );
        assert!(
            g.contains("- vipd dsr: machine CPU per connection over direct <= 1/4 of HAProxy's: met (40.0 µs"),
            "{g}"
        );
        let no_direct = render_direct_goals(&rows[1..]);
        assert!(no_direct.contains("not evaluated"), "{no_direct}");
    }
}
