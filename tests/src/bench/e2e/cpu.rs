//! CPU accounting for one sample: the whole machine from /proc/stat, the LB
//! process from /proc/PID/stat, and vipd's XDP program from the kernel's BPF
//! statistics.

/// Cumulative CPU counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuSnap {
    /// Whole machine, /proc/stat `cpu` line, busy ticks.
    machine_busy: u64,
    /// The LB process (vipd or haproxy): utime + stime in ticks.
    proc_ticks: u64,
    /// vipd's XDP program: run time (ns) and runs, from the kernel's BPF
    /// statistics.
    xdp_ns: u64,
    xdp_runs: u64,
}

/// CPU used during one sample, in seconds (and runs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    pub machine_busy_s: f64,
    pub proc_s: f64,
    pub xdp_s: f64,
    pub xdp_runs: u64,
}

impl CpuUse {
    /// What the table calls the LB's CPU: its process plus its XDP program.
    pub fn lb_s(&self) -> f64 {
        self.proc_s + self.xdp_s
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Busy ticks from the first line of /proc/stat: everything but idle and
/// iowait (guest time is already inside user).
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some(total - v[3] - v[4])
}

/// utime + stime (ticks) from /proc/PID/stat; the fields after the command
/// name, which may itself hold spaces and parentheses.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of stat(5), utime 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Where the LB's CPU is read.
#[derive(Debug, Clone, Copy)]
pub(super) enum CpuSource {
    None,
    Process { pid: u32 },
    Vipd { pid: u32, prog_id: u32 },
}

fn xdp_stats(prog_id: u32) -> Option<(u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == prog_id)
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
}

pub(super) fn snap(src: CpuSource) -> CpuSnap {
    let machine_busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
        .unwrap_or_default();
    let proc_ticks = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_pid_stat(&t))
            .unwrap_or_default()
    };
    let mut s = CpuSnap {
        machine_busy,
        ..CpuSnap::default()
    };
    match src {
        CpuSource::None => {}
        CpuSource::Process { pid } => s.proc_ticks = proc_ticks(pid),
        CpuSource::Vipd { pid, prog_id } => {
            s.proc_ticks = proc_ticks(pid);
            (s.xdp_ns, s.xdp_runs) = xdp_stats(prog_id).unwrap_or_default();
        }
    }
    s
}

pub(super) fn cpu_delta(a: CpuSnap, b: CpuSnap) -> CpuUse {
    let hz = clock_ticks();
    let ticks = |x: u64, y: u64| y.saturating_sub(x) as f64 / hz;
    CpuUse {
        machine_busy_s: ticks(a.machine_busy, b.machine_busy),
        proc_s: ticks(a.proc_ticks, b.proc_ticks),
        xdp_s: b.xdp_ns.saturating_sub(a.xdp_ns) as f64 / 1e9,
        xdp_runs: b.xdp_runs.saturating_sub(a.xdp_runs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_lines() {
        let stat = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\n";
        // busy = user + nice + system + irq + softirq + steal.
        assert_eq!(parse_proc_stat(stat), Some(165));
        assert_eq!(parse_proc_stat("intr 1 2 3"), None);
        // The command name may hold spaces and parentheses.
        let pid = "42 (tokio (worker) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_pid_stat(pid), Some(325));
        assert_eq!(parse_pid_stat("42 (x) S 1"), None);
    }
}
