//! The client: a request to the VIP every 10 ms, each on its own thread, and
//! the outage computed from what it saw.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use rustls::ClientConfig;

use super::{POLL_EVERY, POLL_TIMEOUT, STEADY_POLLS};
use crate::netns::{VIP_V4, in_netns};
use crate::scenario::PORT;
use crate::standin::HttpsConn;

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    pub start: Instant,
    pub end: Instant,
    pub ok: bool,
}

/// What the client lived through in one phase.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outage {
    /// The longest time without a successful answer, from `t0` on; 0 when
    /// no request started in the window failed.
    pub ms: f64,
    /// Failed requests started in the window.
    pub failed: usize,
}

/// The outage of the window [t0, until] (by request start). The gaps are
/// between the ends of successful requests, the first one counted from
/// `t0`; requests overlap (one thread each), so they are taken in order of
/// their ends. Still failing at `until`: the gap runs to `until`.
pub fn outage(polls: &[Poll], t0: Instant, until: Instant) -> Outage {
    let in_window = |p: &Poll| p.start >= t0 && p.start <= until;
    let failed: Vec<&Poll> = polls.iter().filter(|p| in_window(p) && !p.ok).collect();
    if failed.is_empty() {
        return Outage { ms: 0.0, failed: 0 };
    }
    let mut ends: Vec<Instant> = polls
        .iter()
        .filter(|p| p.ok && p.start <= until && p.end > t0)
        .map(|p| p.end)
        .collect();
    ends.sort();
    let mut prev = t0;
    let mut worst = Duration::ZERO;
    for end in ends {
        worst = worst.max(end - prev);
        prev = end;
    }
    if failed.iter().any(|p| p.start >= prev) {
        worst = worst.max(until.saturating_duration_since(prev));
    }
    Outage {
        ms: worst.as_secs_f64() * 1000.0,
        failed: failed.len(),
    }
}

/// A phase's client outage and takeover time (ms), or why it failed.
pub(super) type PhaseResult = Result<(Outage, f64), String>;

/// The client: a request to the VIP every POLL_EVERY from inside the client
/// namespace while active, each on its own short-lived thread (they inherit
/// the namespace) so a hanging attempt never delays the next one.
pub(super) struct Poller {
    pub(super) polls: Arc<Mutex<Vec<Poll>>>,
    pub(super) active: Arc<AtomicBool>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl Poller {
    pub(super) fn start(ns: String, tls: Arc<ClientConfig>) -> Poller {
        let polls = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicBool::new(false));
        let thread = {
            let (polls, stop, active) = (polls.clone(), stop.clone(), active.clone());
            std::thread::spawn(move || in_netns(&ns, || poll_loop(&tls, &polls, &active, &stop)))
        };
        Poller {
            polls,
            active,
            stop,
            thread: Some(thread),
        }
    }

    /// Starts polling with an empty record (only the lab being measured
    /// polls: TLS handshakes cost CPU the others would feel).
    pub(super) fn resume(&self) {
        self.lock().clear();
        self.active.store(true, Ordering::Relaxed);
    }

    pub(super) fn pause(&self) {
        self.active.store(false, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Poll>> {
        self.polls.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn snapshot(&self) -> Vec<Poll> {
        self.lock().clone()
    }

    /// Waits until the last STEADY_POLLS requests started after `since`
    /// all succeeded.
    pub(super) fn wait_steady(&self, since: Instant, deadline: Duration) -> Result<(), String> {
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
                    "requests not steady within {deadline:?}: {failed} of {} failed",
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

fn poll_loop(
    tls: &Arc<ClientConfig>,
    polls: &Arc<Mutex<Vec<Poll>>>,
    active: &AtomicBool,
    stop: &AtomicBool,
) {
    let addr = SocketAddr::new(IpAddr::V4(VIP_V4), PORT);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if active.load(Ordering::Relaxed) {
            let (polls, tls) = (polls.clone(), tls.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let ok = HttpsConn::connect(addr, "kubernetes", tls, POLL_TIMEOUT)
                    .and_then(|mut c| c.get("/whoami"))
                    .is_ok_and(|r| r.status == 200);
                let end = Instant::now();
                polls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Poll { start, end, ok });
            });
        }
        next += POLL_EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// Whether the node's namespace has the VIP on an interface: getifaddrs(3)
/// from a thread in the namespace (cheaper than running `ip` every 10 ms).
pub(super) fn holds_vip(ns: &str) -> bool {
    in_netns(ns, || {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `list`, freed below.
        if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
            panic!("getifaddrs in {ns}: {}", std::io::Error::last_os_error());
        }
        let mut found = false;
        let mut cur = list;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list getifaddrs returned.
            let ifa = unsafe { &*cur };
            let addr = ifa.ifa_addr;
            // SAFETY: a non-null ifa_addr points to a sockaddr whose family
            // says its type; AF_INET is a sockaddr_in.
            if !addr.is_null() && i32::from(unsafe { (*addr).sa_family }) == libc::AF_INET {
                let sin = unsafe { &*addr.cast::<libc::sockaddr_in>() };
                found |= u32::from_be(sin.sin_addr.s_addr) == u32::from(VIP_V4);
            }
            cur = ifa.ifa_next;
        }
        // SAFETY: the list getifaddrs returned, freed once.
        unsafe { libc::freeifaddrs(list) };
        found
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(t0: Instant, start_ms: u64, took_ms: u64, ok: bool) -> Poll {
        Poll {
            start: t0 + Duration::from_millis(start_ms),
            end: t0 + Duration::from_millis(start_ms + took_ms),
            ok,
        }
    }

    /// The window's longest time without an answer, from the failure on.
    #[test]
    fn outage_from_the_failure_to_the_next_answer() {
        let t0 = Instant::now();
        let ms = |d: u64| t0 + Duration::from_millis(d);
        // Answers every 10 ms before the failure at 100 ms; requests
        // started 100..=450 ms hang for 250 ms; from 460 ms they answer in
        // 3 ms. One request started before the failure answers after it.
        let mut polls: Vec<Poll> = (0..10).map(|i| poll(t0, i * 10, 3, true)).collect();
        polls.push(poll(t0, 98, 4, true));
        polls.extend((10..=45).map(|i| poll(t0, i * 10, 250, false)));
        polls.extend((46..60).map(|i| poll(t0, i * 10, 3, true)));
        // Overlapping threads record out of order.
        polls.reverse();
        let o = outage(&polls, ms(100), ms(590));
        assert_eq!(o.failed, 36);
        // 102 (the straggler's answer) -> 463.
        assert!((o.ms - 361.0).abs() < 1e-6, "{o:?}");
        // Nothing failed: the client saw nothing, whatever the gaps.
        let quiet: Vec<Poll> = (0..10).map(|i| poll(t0, i * 30, 3, true)).collect();
        assert_eq!(outage(&quiet, t0, ms(300)), Outage { ms: 0.0, failed: 0 });
        // One lost request among answers: a blip of about two periods.
        let mut blip: Vec<Poll> = (0..20).map(|i| poll(t0, i * 10, 3, i != 5)).collect();
        blip[5].end = ms(300);
        let o = outage(&blip, t0, ms(200));
        assert_eq!(o.failed, 1);
        assert!((o.ms - 20.0).abs() < 1e-6, "{o:?}");
    }

    #[test]
    fn outage_still_failing_runs_to_the_end() {
        let t0 = Instant::now();
        let polls = vec![poll(t0, 0, 3, true), poll(t0, 20, 250, false)];
        let o = outage(
            &polls,
            t0 + Duration::from_millis(10),
            t0 + Duration::from_millis(500),
        );
        assert_eq!(o.failed, 1);
        assert!((o.ms - 490.0).abs() < 1e-6, "{o:?}");
    }
}
