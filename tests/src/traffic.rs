//! Client traffic through the VIP and what it saw: long-lived watch streams
//! (as client-go keeps them to the apiserver) and a poller opening a new
//! connection every few ms. Used by the lab's demo and by tests that must
//! say what clients lived through (outage in ms, streams kept or reset).
//!
//! Sockets are created in the client's namespace and then used from plain
//! threads: a socket stays in the namespace it was created in.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rustls::ClientConfig;

use crate::{
    netns::in_netns,
    scenario::LbLab,
    standin::{ClientError, HttpsConn},
};

/// The stand-in's watch endpoint: one event per `watch_interval` (200 ms in
/// the labs), each naming the serving backend.
pub const WATCH_PATH: &str = "/api/v1/namespaces/default/configmaps?watch=1";

/// How a watch stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Still streaming when asked.
    Open,
    /// Reset by a peer (the XDP program's RST, or the backend's).
    Reset,
    /// Closed cleanly (FIN, or the end of the chunked body).
    Closed,
    /// Another error.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct WatchReport {
    /// The backend that served it.
    pub server: String,
    pub end: End,
    /// When it ended (for `Open`: None).
    pub ended: Option<Instant>,
    /// The longest gap between two events while it was open.
    pub longest_gap: Duration,
    pub events: u64,
}

/// One stream's state, kept by its reader (the HTTP/1.1 watches here, the
/// HTTP/2 ones in `h2client`).
pub(crate) struct WatchState {
    pub(crate) server: String,
    pub(crate) end: End,
    pub(crate) ended: Option<Instant>,
    pub(crate) last: Instant,
    pub(crate) longest_gap: Duration,
    pub(crate) events: u64,
}

impl WatchState {
    /// What it looks like now; an open stream's current silence counts as a
    /// gap too.
    pub(crate) fn report(&self) -> WatchReport {
        let silent = if self.end == End::Open {
            self.last.elapsed()
        } else {
            Duration::ZERO
        };
        WatchReport {
            server: self.server.clone(),
            end: self.end.clone(),
            ended: self.ended,
            longest_gap: self.longest_gap.max(silent),
            events: self.events,
        }
    }
}

/// `n` watch streams through the VIP, each read by its own thread.
pub struct Watches {
    states: Vec<Arc<Mutex<WatchState>>>,
    /// Each stream's client address and port: with the router's L4 ECMP
    /// hash, what decides which LB of the fabric lab a stream crosses.
    locals: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Watches {
    /// Opens `n` streams from `client_ns` to the IPv4 VIP, with TCP
    /// keepalives every second; each has sent its first event before this
    /// returns.
    pub fn open(client_ns: &str, cfg: &Arc<ClientConfig>, n: usize) -> Result<Watches, String> {
        Watches::open_with(client_ns, cfg, n, Some(Duration::from_secs(1)))
    }

    /// As [`Watches::open`], with TCP keepalives every `keepalive` or none:
    /// a client that sends nothing at all while it listens.
    pub fn open_with(
        client_ns: &str,
        cfg: &Arc<ClientConfig>,
        n: usize,
        keepalive: Option<Duration>,
    ) -> Result<Watches, String> {
        Watches::open_at(client_ns, cfg, LbLab::vip_addr(false), n, keepalive)
    }

    /// As [`Watches::open_with`], to `vip` (the fabric lab's VIP is not the
    /// VRRP lab's).
    pub fn open_at(
        client_ns: &str,
        cfg: &Arc<ClientConfig>,
        vip: SocketAddr,
        n: usize,
        keepalive: Option<Duration>,
    ) -> Result<Watches, String> {
        Watches::open_concurrently(client_ns, cfg, vip, (n, 1), keepalive)
    }

    /// As [`Watches::open_at`], `n` streams opened `at_once` at a time
    /// (`(n, at_once)`): where a connection's set-up may wait a
    /// retransmission (about 1 s), one after the other would take minutes.
    pub fn open_concurrently(
        client_ns: &str,
        cfg: &Arc<ClientConfig>,
        vip: SocketAddr,
        (n, at_once): (usize, usize),
        keepalive: Option<Duration>,
    ) -> Result<Watches, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut states = vec![];
        let mut locals = vec![];
        let mut threads = vec![];
        let open = |i: usize| {
            let cfg = cfg.clone();
            in_netns(client_ns, || {
                let c = HttpsConn::connect(
                    vip,
                    "kubernetes",
                    cfg,
                    // Generous: opening hundreds of TLS streams on a busy
                    // 2-core machine (the first event is read under it too).
                    Duration::from_secs(10),
                )?;
                Ok::<_, ClientError>((c.local_addr()?, c.watch(WATCH_PATH)?))
            })
            .map_err(|e| format!("watch {i}: {e:?}"))
        };
        let mut opened = Vec::with_capacity(n);
        for first in (0..n).step_by(at_once.max(1)) {
            let last = (first + at_once.max(1)).min(n);
            let batch: Vec<_> = std::thread::scope(|s| {
                let hs: Vec<_> = (first..last).map(|i| s.spawn(move || open(i))).collect();
                hs.into_iter()
                    .map(|h| h.join().expect("opening a watch"))
                    .collect()
            });
            for r in batch {
                opened.push(r?);
            }
        }
        for (i, (local, mut w)) in opened.into_iter().enumerate() {
            locals.push(local);
            let first = w
                .next_event()
                .map_err(|e| format!("watch {i}: first event: {e:?}"))?;
            let server = first["object"]["data"]["server"]
                .as_str()
                .unwrap_or("?")
                .to_owned();
            // The client's own packets are what the XDP program answers
            // with an RST when the backend is dead; a watch client sends
            // nothing until its next write (client-go: an HTTP/2 ping every
            // 30 s). TCP keepalives every second stand in for that ping.
            if let Some(k) = keepalive {
                w.keepalive(k)
                    .map_err(|e| format!("watch {i}: keepalive: {e:?}"))?;
            }
            // Short reads so the thread sees `stop` and measures gaps.
            w.set_read_timeout(Duration::from_millis(100))
                .map_err(|e| format!("watch {i}: {e:?}"))?;
            let st = Arc::new(Mutex::new(WatchState {
                server,
                end: End::Open,
                ended: None,
                last: Instant::now(),
                longest_gap: Duration::ZERO,
                events: 1,
            }));
            let (st2, stop2) = (st.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    let r = w.next_event();
                    let now = Instant::now();
                    let mut s = lock(&st2);
                    match r {
                        Ok(_) => {
                            let gap = now - s.last;
                            s.longest_gap = s.longest_gap.max(gap);
                            s.last = now;
                            s.events += 1;
                        }
                        Err(ClientError::Io(e))
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            let gap = now - s.last;
                            s.longest_gap = s.longest_gap.max(gap);
                        }
                        Err(e) => {
                            s.end = match &e {
                                ClientError::Io(io)
                                    if io.kind() == std::io::ErrorKind::ConnectionReset =>
                                {
                                    End::Reset
                                }
                                ClientError::Closed => End::Closed,
                                other => End::Error(format!("{other:?}")),
                            };
                            s.ended = Some(now);
                            return;
                        }
                    }
                }
            }));
            states.push(st);
        }
        Ok(Watches {
            states,
            locals,
            threads,
            stop,
        })
    }

    /// A copy of every stream's state now.
    pub fn report(&self) -> Vec<WatchReport> {
        self.states.iter().map(|s| lock(s).report()).collect()
    }

    /// Each stream's client address, in the order of [`Watches::report`].
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.locals
    }

    /// Streams per backend: (open, reset, other ends).
    pub fn by_server(&self) -> BTreeMap<String, (usize, usize, usize)> {
        let mut m: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for r in self.report() {
            let e = m.entry(r.server).or_default();
            match r.end {
                End::Open => e.0 += 1,
                End::Reset => e.1 += 1,
                _ => e.2 += 1,
            }
        }
        m
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One attempt of the poller.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub at: Instant,
    /// When it answered or failed.
    pub done: Instant,
    /// The backend that answered, or the error.
    pub result: Result<String, String>,
}

/// A new TLS connection and `GET /whoami` through the VIP every `every`.
pub struct Poller {
    log: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Each step of an attempt (connect, each read and write) is bounded by
    /// `timeout`; attempts run one after another, every `every` while
    /// answers come back.
    pub fn start(
        client_ns: &str,
        cfg: &Arc<ClientConfig>,
        every: Duration,
        timeout: Duration,
    ) -> Poller {
        Poller::start_at(client_ns, cfg, LbLab::vip_addr(false), every, timeout)
    }

    /// As [`Poller::start`], to `vip`.
    pub fn start_at(
        client_ns: &str,
        cfg: &Arc<ClientConfig>,
        vip: SocketAddr,
        every: Duration,
        timeout: Duration,
    ) -> Poller {
        Poller::spawn(client_ns, cfg, vip, every, timeout, false)
    }

    /// An attempt starts every `every` on a thread of its own, whatever the
    /// ones before are doing: a client's outage is then the takeover itself,
    /// not rounded up to whole attempts (with attempts one after another, the
    /// one in flight when the VIP moves sent its SYN to the old holder and
    /// waits out its `timeout` before the next one starts).
    pub fn start_overlapping(
        client_ns: &str,
        cfg: &Arc<ClientConfig>,
        every: Duration,
        timeout: Duration,
    ) -> Poller {
        let vip = LbLab::vip_addr(false);
        Poller::spawn(client_ns, cfg, vip, every, timeout, true)
    }

    fn spawn(
        client_ns: &str,
        cfg: &Arc<ClientConfig>,
        vip: SocketAddr,
        every: Duration,
        timeout: Duration,
        overlap: bool,
    ) -> Poller {
        let log = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, cfg, log2, stop2) = (client_ns.to_owned(), cfg.clone(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            in_netns(&ns, || {
                let mut next = Instant::now();
                let mut running = Vec::new();
                while !stop2.load(Ordering::Relaxed) {
                    let (cfg, log) = (cfg.clone(), log2.clone());
                    // A short timeout: a SYN lost to a dead node is retried
                    // by the next attempt, not by the kernel's 1 s RTO.
                    let attempt = move || {
                        let at = Instant::now();
                        let result = HttpsConn::connect(vip, "kubernetes", cfg, timeout)
                            .and_then(|mut c| c.get("/whoami"))
                            .map(|r| r.text().trim().to_owned())
                            .map_err(|e| format!("{e:?}"));
                        let done = Instant::now();
                        let mut l = lock(&log);
                        // In order of start, which overlapping attempts do
                        // not end in.
                        let i = l.partition_point(|a: &Attempt| a.at <= at);
                        l.insert(i, Attempt { at, done, result });
                    };
                    if overlap {
                        // Threads inherit the namespace of this one.
                        running.push(std::thread::spawn(attempt));
                    } else {
                        attempt();
                    }
                    next += every;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                for t in running {
                    let _ = t.join();
                }
            });
        });
        Poller {
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.log).clone()
    }

    /// Stops and returns every attempt.
    pub fn finish(mut self) -> Vec<Attempt> {
        self.halt();
        self.attempts()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What the poller saw after `from`: the longest time between two
/// successful answers (a connection stuck in SYN retransmission counts as
/// much as failed ones), the failed attempts, and the attempts.
pub fn outage(attempts: &[Attempt], from: Instant) -> (Duration, usize, usize) {
    let mut last_ok: Option<Instant> = None;
    let mut worst = Duration::ZERO;
    let mut failed = 0;
    let mut total = 0;
    // In order of their ends: overlapping attempts
    // ([`Poller::start_overlapping`]) end out of order.
    let mut by_end: Vec<&Attempt> = attempts.iter().collect();
    by_end.sort_by_key(|a| a.done);
    for a in by_end {
        let after = a.at >= from;
        if after {
            total += 1;
        }
        match &a.result {
            Ok(_) => {
                if after && let Some(l) = last_ok {
                    worst = worst.max(a.done.saturating_duration_since(l));
                }
                last_ok = Some(a.done);
            }
            Err(_) if after => failed += 1,
            Err(_) => {}
        }
    }
    // Still failing at the end: the outage lasts at least until then.
    if let (Some(l), Some(last)) = (last_ok, attempts.last())
        && last.result.is_err()
    {
        worst = worst.max(last.done.saturating_duration_since(l));
    }
    (worst, failed, total)
}

/// The first and last failed attempt after `from`.
pub fn failure_window(attempts: &[Attempt], from: Instant) -> Option<(Instant, Instant)> {
    let mut fails = attempts
        .iter()
        .filter(|a| a.at >= from && a.result.is_err())
        .map(|a| a.at);
    let first = fails.next()?;
    Some((first, fails.next_back().unwrap_or(first)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64, took: u64, ok: bool) -> Attempt {
        Attempt {
            at: t0 + Duration::from_millis(ms),
            done: t0 + Duration::from_millis(ms + took),
            result: if ok {
                Ok("be1".into())
            } else {
                Err("x".into())
            },
        }
    }

    #[test]
    fn outage_is_the_gap_between_answers() {
        let t0 = Instant::now();
        let log = vec![
            at(t0, 0, 2, true),
            at(t0, 10, 2, true),
            at(t0, 20, 300, false),
            at(t0, 330, 300, false),
            at(t0, 640, 2, true),
            at(t0, 650, 2, true),
            // Stuck in SYN retransmission, then answered.
            at(t0, 660, 1000, true),
            at(t0, 1670, 2, true),
        ];
        let (worst, failed, total) = outage(&log, t0 + Duration::from_millis(5));
        assert_eq!(worst, Duration::from_millis(1008), "652 -> 1660");
        assert_eq!((failed, total), (2, 7));
        let (worst, _, _) = outage(&log[..6], t0 + Duration::from_millis(5));
        assert_eq!(worst, Duration::from_millis(630), "12 -> 642");
        // No failure and quick answers: gaps are the polling period.
        let (worst, failed, _) = outage(&log[..2], t0);
        assert_eq!((worst, failed), (Duration::from_millis(10), 0));
        // Failing to the end: counted up to the last attempt's end.
        let (worst, _, _) = outage(&log[..4], t0 + Duration::from_millis(5));
        assert_eq!(
            worst,
            Duration::from_millis(618),
            "12 -> 630, still failing"
        );
        assert_eq!(
            failure_window(&log, t0),
            Some((
                t0 + Duration::from_millis(20),
                t0 + Duration::from_millis(330)
            ))
        );
    }
}
