//! `cargo xtask bench failover`: how long clients lose the VIP when the VRRP
//! master dies, vipd against keepalived 2.2.7 with the same settings (VRID
//! 51, 100 ms adverts, priorities 150/100, preemption), measured in the same
//! run.
//!
//! One lab per implementation: client, lb1, lb2. Each LB runs a TCP listener
//! on 0.0.0.0:8080, so whoever holds the VIP accepts; the client connects to
//! VIP:8080 every 10 ms (a fresh socket each, 50 ms timeout). A repetition:
//! lb1 is master and the client's connects succeed; lb1 crashes (its switch
//! port goes down and its daemon gets SIGKILL in the same moment); the
//! outage is the time from the crash to the first successful connect
//! started after it; lb1 comes back (link up, stale VIP removed, daemon
//! restarted) and preempts. Repetitions alternate between the two labs so
//! that machine noise hits both alike. Every wait has a deadline: a
//! repetition that fails is reported and the lab reset, never a hang.

use std::any::Any;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::keepalived::{Keepalived, KeepalivedConf, VrrpState};
use crate::netns::{Lab, VIP_V4, in_netns};
use crate::vrrpd::{VipdVrrp, VipdVrrpConf, set_link};

/// What the client polls; not a vipd service port, so the XDP program
/// passes it to the holder's own stack.
pub const PORT: u16 = 8080;
const VRID: u8 = 51;
const MASTER_PRIO: u8 = 150;
const BACKUP_PRIO: u8 = 100;
const ADVERT_MS: u32 = 100;
/// A connect attempt starts this often ...
const POLL_EVERY: Duration = Duration::from_millis(10);
/// ... and gives up after this long (no SYN retransmission happens this
/// early, so a lost SYN is a failed poll).
const POLL_TIMEOUT: Duration = Duration::from_millis(50);
/// The longest outage we wait for before calling the repetition failed.
const OUTAGE_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline for each step of bringing lb1 back or resetting a lab.
const STEP: Duration = Duration::from_secs(5);
/// Successful polls in a row that make a lab "serving".
const STEADY_POLLS: usize = 5;

#[derive(Debug, Clone)]
pub struct Options {
    /// Repetitions per implementation.
    pub runs: usize,
}

/// RFC 9568 section 6.1 for the backup: 3 * Advertisement_Interval +
/// Skew_Time, Skew_Time = (256 - priority) * interval / 256.
pub fn master_down_interval_ms(advert_ms: f64, priority: u8) -> f64 {
    3.0 * advert_ms + (256.0 - f64::from(priority)) * advert_ms / 256.0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Vipd,
    Keepalived,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Impl::Vipd => "vipd",
            Impl::Keepalived => "keepalived",
        }
    }
}

/// A VRRP daemon running on one LB.
enum Daemon {
    Vipd(VipdVrrp),
    Keepalived(Keepalived),
}

impl Daemon {
    fn start(which: Impl, lab: &Lab, node: &str, priority: u8) -> Daemon {
        let vip = [IpAddr::V4(VIP_V4)];
        match which {
            Impl::Vipd => Daemon::Vipd(VipdVrrp::start(
                lab,
                node,
                &VipdVrrpConf {
                    advert_interval_ms: ADVERT_MS,
                    ..VipdVrrpConf::new(VRID, priority, &vip)
                },
            )),
            Impl::Keepalived => Daemon::Keepalived(Keepalived::start(
                lab,
                node,
                &KeepalivedConf {
                    advert_int_ms: ADVERT_MS,
                    ..KeepalivedConf::new(VRID, priority, &vip)
                },
            )),
        }
    }

    /// Panics (with the logs) on timeout, like the wrapped `wait_state`s.
    fn wait_state(&self, want: VrrpState, timeout: Duration) {
        match self {
            Daemon::Vipd(v) => {
                v.wait_state(want, timeout);
            }
            Daemon::Keepalived(k) => {
                k.wait_state(want, timeout);
            }
        }
    }

    fn kill9(&self) {
        match self {
            Daemon::Vipd(v) => v.kill9(),
            Daemon::Keepalived(k) => k.kill9(),
        }
    }
}

/// One connect attempt.
#[derive(Debug, Clone, Copy)]
struct Poll {
    start: Instant,
    end: Instant,
    ok: bool,
}

/// The client: a connect to `addr` every POLL_EVERY from inside the client
/// namespace, each on its own short-lived thread (they inherit the
/// namespace) so a hanging attempt never delays the next one.
struct Poller {
    polls: Arc<Mutex<Vec<Poll>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    fn start(ns: String, addr: SocketAddr) -> Poller {
        let polls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (polls, stop) = (polls.clone(), stop.clone());
            std::thread::spawn(move || in_netns(&ns, || poll_loop(addr, &polls, &stop)))
        };
        Poller {
            polls,
            stop,
            thread: Some(thread),
        }
    }

    fn snapshot(&self) -> Vec<Poll> {
        self.polls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first successful poll started at or after `t`: the outage ends
    /// when it succeeds.
    fn wait_first_ok(&self, t: Instant, deadline: Duration) -> Result<Poll, String> {
        loop {
            let first = self
                .snapshot()
                .into_iter()
                .filter(|p| p.ok && p.start >= t)
                .min_by_key(|p| p.start);
            if let Some(p) = first {
                return Ok(p);
            }
            if t.elapsed() > deadline {
                return Err(format!("no successful connect within {deadline:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the last STEADY_POLLS polls started after `since` all
    /// succeeded.
    fn wait_steady(&self, since: Instant, deadline: Duration) -> Result<(), String> {
        loop {
            let mut recent: Vec<Poll> = self
                .snapshot()
                .into_iter()
                .filter(|p| p.start >= since)
                .collect();
            recent.sort_by_key(|p| p.start);
            let tail = &recent[recent.len().saturating_sub(STEADY_POLLS)..];
            if tail.len() == STEADY_POLLS && tail.iter().all(|p| p.ok) {
                return Ok(());
            }
            if since.elapsed() > deadline {
                let failed = recent.iter().filter(|p| !p.ok).count();
                return Err(format!(
                    "connects not steady within {deadline:?}: {failed} of {} failed",
                    recent.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Let the last attempts time out before the namespace goes.
        std::thread::sleep(POLL_TIMEOUT + Duration::from_millis(10));
    }
}

fn poll_loop(addr: SocketAddr, polls: &Arc<Mutex<Vec<Poll>>>, stop: &AtomicBool) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let polls = polls.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let ok = match TcpStream::connect_timeout(&addr, POLL_TIMEOUT) {
                Ok(s) => {
                    reset_on_close(&s);
                    true
                }
                Err(_) => false,
            };
            let end = Instant::now();
            polls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Poll { start, end, ok });
        });
        next += POLL_EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// SO_LINGER 0: the close sends an RST and leaves no TIME_WAIT behind, so
/// thousands of polls never exhaust or reuse ports in a way that matters.
fn reset_on_close(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>())
        .expect("linger fits socklen_t");
    // SAFETY: a valid socket fd and a pointer to a linger of `len` bytes.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    };
    if rc != 0 {
        eprintln!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
}

/// A listener on 0.0.0.0:PORT in an LB namespace that accepts and drops.
/// The socket is created in the namespace (and stays there); the accepting
/// thread can live anywhere.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str) -> Server {
        let listener = in_netns(ns, || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT))
                .unwrap_or_else(|e| panic!("bind 0.0.0.0:{PORT} in {ns}: {e}"))
        });
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => drop(conn),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        // ECONNABORTED and the like: the client reset first.
                        Err(_) => {}
                    }
                }
            })
        };
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One implementation's lab and what it measured.
struct Case {
    which: Impl,
    // Field order is drop order: daemons and threads before the lab.
    lb1: Option<Daemon>,
    lb2: Option<Daemon>,
    poller: Poller,
    _servers: Vec<Server>,
    lab: Lab,
    outages_ms: Vec<f64>,
    failures: Vec<String>,
    broken: bool,
}

impl Case {
    fn new(which: Impl) -> Case {
        let lab = Lab::new(&format!("fo-{}", which.name()), &["client", "lb1", "lb2"]);
        let servers = ["lb1", "lb2"]
            .iter()
            .map(|n| Server::start(&lab.node(n).ns))
            .collect();
        let poller = Poller::start(
            lab.node("client").ns.clone(),
            SocketAddr::new(IpAddr::V4(VIP_V4), PORT),
        );
        Case {
            which,
            lb1: None,
            lb2: None,
            poller,
            _servers: servers,
            lab,
            outages_ms: Vec::new(),
            failures: Vec::new(),
            broken: false,
        }
    }

    /// From any state: both daemons stopped, links up, no VIP anywhere,
    /// then lb1 (150) started and master, lb2 (100) backup.
    fn reset(&mut self) -> Result<(), String> {
        attempt(|| {
            // Stopped (SIGTERM, or already dead) before anything restarts.
            drop(self.lb1.take());
            drop(self.lb2.take());
            for n in ["lb1", "lb2"] {
                set_link(&self.lab, n, true);
                del_vip(&self.lab, n);
            }
            let lb1 = Daemon::start(self.which, &self.lab, "lb1", MASTER_PRIO);
            lb1.wait_state(VrrpState::Master, STEP);
            self.lb1 = Some(lb1);
            let lb2 = Daemon::start(self.which, &self.lab, "lb2", BACKUP_PRIO);
            lb2.wait_state(VrrpState::Backup, STEP);
            self.lb2 = Some(lb2);
        })
    }

    /// lb1 master with the VIP, lb2 backup without, the client resolving
    /// the VIP to lb1 and connecting.
    fn wait_ready(&self) -> Result<(), String> {
        let since = Instant::now();
        attempt(|| {
            let (Some(lb1), Some(lb2)) = (&self.lb1, &self.lb2) else {
                panic!("a daemon is not running");
            };
            lb1.wait_state(VrrpState::Master, STEP);
            lb2.wait_state(VrrpState::Backup, STEP);
            let vip = IpAddr::V4(VIP_V4);
            self.lab.wait_addr("lb1", vip, true, STEP);
            self.lab.wait_addr("lb2", vip, false, STEP);
            let mac = self.lab.node("lb1").mac_string();
            self.lab.wait_neighbour("client", vip, &mac, STEP);
        })?;
        self.poller.wait_steady(since, STEP * 2)
    }

    /// One crash of lb1; returns the outage in milliseconds.
    fn crash_lb1(&mut self, jitter: Duration) -> Result<f64, String> {
        self.wait_ready()?;
        // A uniformly random point of lb1's advert interval.
        std::thread::sleep(jitter);
        // The crash is the moment lb1 is off the segment (`ip link set`
        // has returned; it takes milliseconds to run, and polls before
        // that still reach lb1); its daemon dies right after.
        attempt(|| set_link(&self.lab, "lb1", false))?;
        let t0 = Instant::now();
        attempt(|| {
            if let Some(d) = &self.lb1 {
                d.kill9();
            }
        })?;
        let p = self.poller.wait_first_ok(t0, OUTAGE_DEADLINE)?;
        Ok((p.end - t0).as_secs_f64() * 1000.0)
    }

    /// lb1 back: link up, the VIP its dead daemon may have left removed, a
    /// new daemon started (it preempts; `wait_ready` checks that).
    fn restore_lb1(&mut self) -> Result<(), String> {
        attempt(|| {
            drop(self.lb1.take());
            set_link(&self.lab, "lb1", true);
            del_vip(&self.lab, "lb1");
            self.lb1 = Some(Daemon::start(self.which, &self.lab, "lb1", MASTER_PRIO));
        })
    }

    fn repetition(&mut self, jitter: Duration) -> Result<f64, String> {
        let outage = self.crash_lb1(jitter);
        let restored = self.restore_lb1();
        let outage = outage?;
        restored?;
        Ok(outage)
    }
}

fn del_vip(lab: &Lab, node: &str) {
    let vip = IpAddr::V4(VIP_V4);
    if lab.has_addr(node, vip) {
        lab.del_addr(node, &format!("{VIP_V4}/32"));
    }
}

/// Runs `f`, turning a panic (the lab helpers panic with the logs on a
/// deadline) into an error: the first lines of its message.
fn attempt(f: impl FnOnce()) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| first_lines(&panic_text(&*p), 12))
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "panic".into()
    }
}

fn first_lines(s: &str, n: usize) -> String {
    let mut out: Vec<&str> = s.lines().take(n).collect();
    if s.lines().count() > n {
        out.push("...");
    }
    out.join("\n    ")
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A small xorshift for the jitter: the kill must fall at a random point
/// of the advert interval, or a fixed phase would bias both cases.
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock.
    pub fn from_clock() -> Jitter {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Jitter(seed | 1)
    }

    /// Uniform in [0, max).
    pub fn next(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        max.mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mdi = master_down_interval_ms(f64::from(ADVERT_MS), BACKUP_PRIO);
    println!(
        "vipd failover benchmark: client + lb1 + lb2, VRID {VRID}, {ADVERT_MS} ms adverts, \
         priorities {MASTER_PRIO}/{BACKUP_PRIO}, preempt; {} runs per implementation, interleaved",
        opts.runs
    );
    println!(
        "lb1 crashes (switch port down + SIGKILL of its daemon); outage = crash -> first \
         successful TCP connect to {VIP_V4}:{PORT} (a connect every {} ms, {} ms timeout)",
        POLL_EVERY.as_millis(),
        POLL_TIMEOUT.as_millis()
    );
    println!(
        "expected: Master_Down_Interval (RFC 9568 6.1) for lb2 = 3 x {ADVERT_MS} ms + skew \
         (256-{BACKUP_PRIO})/256 x {ADVERT_MS} ms = {mdi:.1} ms after lb1's last advert; the crash \
         falls at a random point of lb1's interval, so {:.1}..{mdi:.1} ms after the crash, plus \
         the announcement and up to one poll",
        mdi - f64::from(ADVERT_MS)
    );
    println!();

    // A failed step panics with the daemon's logs; `attempt` reports the
    // first lines, so the default hook's copy on stderr is only noise.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = measure(opts);
    std::panic::set_hook(hook);
    result
}

fn measure(opts: &Options) -> Result<()> {
    let mut cases = vec![Case::new(Impl::Vipd), Case::new(Impl::Keepalived)];
    for c in &mut cases {
        if let Err(e) = c.reset() {
            println!("{}: setup failed: {e}", c.which.name());
            c.failures.push(format!("setup: {e}"));
            c.broken = true;
        }
    }
    println!("{:>4} {:>12} {:>12}", "run", "vipd ms", "keepalived ms");
    let mut jitter = Jitter::from_clock();
    for run in 1..=opts.runs {
        let mut row = Vec::new();
        for c in &mut cases {
            if c.broken {
                row.push("-".to_string());
                continue;
            }
            match c.repetition(jitter.next(Duration::from_millis(u64::from(ADVERT_MS)))) {
                Ok(ms) => {
                    c.outages_ms.push(ms);
                    row.push(format!("{ms:.1}"));
                }
                Err(e) => {
                    row.push("failed".into());
                    eprintln!("run {run} {}: {e}", c.which.name());
                    c.failures.push(format!("run {run}: {e}"));
                    if let Err(e) = c.reset() {
                        eprintln!("{}: reset failed, no further runs: {e}", c.which.name());
                        c.broken = true;
                    }
                }
            }
        }
        println!("{run:>4} {:>12} {:>12}", row[0], row[1]);
    }

    println!();
    println!(
        "{:<11} {:>4} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "case", "ok", "failed", "min ms", "p50 ms", "p99 ms", "max ms"
    );
    let mut stats = Vec::new();
    for c in &cases {
        let mut v = c.outages_ms.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            println!(
                "{:<11} {:>4} {:>7} {:>9} {:>9} {:>9} {:>9}",
                c.which.name(),
                0,
                c.failures.len(),
                "-",
                "-",
                "-",
                "-"
            );
            stats.push(None);
            continue;
        }
        let (p50, p99) = (percentile(&v, 50.0), percentile(&v, 99.0));
        println!(
            "{:<11} {:>4} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            c.which.name(),
            v.len(),
            c.failures.len(),
            v[0],
            p50,
            p99,
            v[v.len() - 1]
        );
        stats.push(Some((p50, p99)));
    }
    println!("(percentiles are nearest-rank: below 100 runs p99 is the largest outage)");
    for c in &cases {
        for f in &c.failures {
            println!("{} failure: {f}", c.which.name());
        }
    }
    let (Some((v50, v99)), Some((k50, k99))) = (stats[0], stats[1]) else {
        bail!("an implementation has no successful run: nothing to compare");
    };
    println!();
    println!(
        "vipd/keepalived: p50 {:.2}, p99 {:.2}",
        v50 / k50,
        v99 / k99
    );
    println!(
        "target: vipd p99 < 500 ms: {} ({v99:.1} ms); no slower than keepalived (p99 ratio <= 1.05, \
         5% for noise): {}",
        if v99 < 500.0 { "met" } else { "MISSED" },
        if v99 / k99 <= 1.05 { "met" } else { "MISSED" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_down_interval_of_the_issue() {
        let mdi = master_down_interval_ms(100.0, 100);
        assert!((mdi - 360.9375).abs() < 1e-9, "{mdi}");
        assert!((master_down_interval_ms(100.0, 150) - 341.40625).abs() < 1e-9);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=30).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 15.0);
        assert_eq!(percentile(&v, 99.0), 30.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        let h: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&h, 99.0), 198.0);
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter(42);
        for _ in 0..1000 {
            assert!(j.next(Duration::from_millis(100)) < Duration::from_millis(100));
        }
    }

    #[test]
    fn panic_messages_are_cut() {
        assert_eq!(first_lines("a\nb\nc", 2), "a\n    b\n    ...");
        assert_eq!(first_lines("a", 2), "a");
        let p: Box<dyn Any + Send> = Box::new(String::from("boom"));
        assert_eq!(panic_text(&*p), "boom");
    }
}
