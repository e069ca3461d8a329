//! `--quiet-secs N`: the cost of a short advert interval, measured. lb
//! (priority 150) and lb2 (100) run vipd for N seconds with nothing failing
//! while a busy loop the benchmark starts (one process, its own pid, ended
//! by that pid) keeps one of the machine's cores saturated, and the VRRP
//! transitions are counted: a backup that misses three adverts in a row
//! (RFC 9568 6.4.2: Master_Down_Interval without one) takes the VIP from
//! a live master, and each such takeover is a spurious failover.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vip_userspace::dataplane::kernel::AttachMode;

use super::{LBS, master_down_interval_ms};
use crate::failover::two_lbs;
use crate::scenario::{Fwd, LbLab, LbOptions};

/// The counters read at the start and the end, per LB and family.
const COUNTERS: [&str; 4] = [
    "became_master",
    "left_master",
    "adverts_sent",
    "adverts_received",
];
const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

/// A busy loop in a shell of its own: ends (SIGKILL to its pid) on drop.
struct Burner(Child);

impl Burner {
    fn start() -> Result<Burner> {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the busy loop (sh)")?;
        Ok(Burner(child))
    }

    /// CPU seconds it used (utime + stime from /proc/PID/stat).
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.0.id())).unwrap_or_default();
        // Fields after the command's closing parenthesis; utime and stime
        // are the 14th and 15th of the line (proc(5)).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz.max(1.0)
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn counters(l: &LbLab) -> Vec<f64> {
    let mut out = Vec::new();
    for lb in LBS {
        let m = l.metrics_of(lb);
        for c in COUNTERS {
            for f in FAMILIES {
                let key = format!("vipd_vrrp_{c}_total{{family=\"{f}\"}}");
                out.push(m.get(&key).copied().unwrap_or(0.0));
            }
        }
    }
    out
}

/// Runs the quiet check for `secs` with `advert_ms` adverts; fails if any
/// transition happened.
pub fn run(advert_ms: u32, secs: u64) -> Result<()> {
    let mdi = master_down_interval_ms(f64::from(advert_ms), super::VIPD_PRIOS[1]);
    println!(
        "vipd quiet run: lb (150) and lb2 (100), {advert_ms} ms adverts (lb2's Master_Down_Interval {mdi:.1} ms), {secs} s, nothing failing, one core kept busy by a loop this benchmark starts"
    );
    let l = two_lbs(
        "fo-quiet",
        LbOptions {
            advert_ms: Some(advert_ms),
            ..LbOptions::new(AttachMode::Skb, Fwd::Dsr)
        },
    );
    // Metrics are refreshed once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let before = counters(&l);
    let burner = Burner::start()?;
    let started = Instant::now();
    let mut next = Duration::from_secs(60);
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        if started.elapsed() >= next {
            let now = counters(&l);
            let moved: f64 = (0..now.len())
                .filter(|i| COUNTERS[(i / 2) % 4].ends_with("master"))
                .map(|i| now[i] - before[i])
                .sum();
            println!(
                "  {:>4} s: {moved} transitions so far",
                started.elapsed().as_secs()
            );
            next += Duration::from_secs(60);
        }
    }
    let busy = burner.cpu_secs();
    let took = started.elapsed().as_secs_f64();
    drop(burner);
    std::thread::sleep(Duration::from_millis(1500));
    let after = counters(&l);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "busy loop: {busy:.0} CPU s in {took:.0} s ({:.0}% of one core); load average at the end: {}",
        100.0 * busy / took,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<5} {:<5} {:>13} {:>11} {:>13} {:>17}",
        "node", "fam", "became master", "left master", "adverts/s out", "adverts/s heard"
    );
    let mut transitions = 0.0;
    for (n, lb) in LBS.iter().enumerate() {
        for (k, f) in FAMILIES.iter().enumerate() {
            let d = |c: usize| {
                let i = n * COUNTERS.len() * FAMILIES.len() + c * FAMILIES.len() + k;
                after[i] - before[i]
            };
            transitions += d(0) + d(1);
            println!(
                "{lb:<5} {f:<5} {:>13} {:>11} {:>13.1} {:>17.1}",
                d(0),
                d(1),
                d(2) / took,
                d(3) / took
            );
        }
    }
    let master = crate::failover::is_master(&l.status_of(LBS[0]));
    println!("transitions during the run: {transitions} (0 expected); lb still master: {master}");
    if transitions > 0.0 || !master {
        bail!("spurious failover at {advert_ms} ms adverts under load: {transitions} transitions");
    }
    Ok(())
}
