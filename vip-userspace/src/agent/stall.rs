//! Tells when something held the agent's thread. The agent runs on a
//! single-threaded runtime: a synchronous call that blocks (an fsync on a
//! busy disk, a large map rewrite, a CPU-starved debug build) holds every
//! task on it (probes, the API, state sync), so the log says so, with how
//! long; what was logged just before names the culprit. VRRP runs on a
//! thread of its own (`vrrp::router::spawn`) and keeps advertising.

use std::time::{Duration, Instant};

/// How often the watch wakes.
pub const EVERY: Duration = Duration::from_millis(100);
/// A wake this much later than due is reported: well above timer slack and
/// an ordinary busy turn, below the 361 ms a VRRP backup waits at 100 ms
/// adverts (RFC 9568 6.4.3), which the agent's own work must stay short of.
pub const REPORT_OVER: Duration = Duration::from_millis(150);

/// Runs forever on the current runtime, calling `report(late)` for each wake
/// that came `REPORT_OVER` or more after it was due.
pub async fn watch(report: impl Fn(Duration)) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        if let Some(late) = late_by(now.duration_since(last)) {
            report(late);
        }
        last = now;
    }
}

/// How late a wake `gap` after the previous one is, if worth reporting.
fn late_by(gap: Duration) -> Option<Duration> {
    let late = gap.saturating_sub(EVERY);
    (late >= REPORT_OVER).then_some(late)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn lateness_below_the_threshold_is_not_reported() {
        assert_eq!(late_by(EVERY), None);
        assert_eq!(late_by(EVERY + Duration::from_millis(149)), None);
        assert_eq!(
            late_by(EVERY + Duration::from_millis(400)),
            Some(Duration::from_millis(400))
        );
    }

    /// A task that blocks the runtime's one thread for 400 ms is reported:
    /// the watch's wake after it comes at least 400 ms after the one before
    /// (at most 250 ms in), so at least 300 ms late. A loaded machine can
    /// only add lateness, and reports of its own.
    #[test]
    fn a_blocked_thread_is_reported() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        rt.block_on(async move {
            let w = tokio::spawn(watch(move |late| s.lock().expect("lock").push(late)));
            tokio::time::sleep(Duration::from_millis(250)).await;
            // What a synchronous call in a task does to every other task.
            std::thread::sleep(Duration::from_millis(400));
            tokio::time::sleep(Duration::from_millis(250)).await;
            w.abort();
        });
        let seen = seen.lock().expect("lock").clone();
        assert!(
            seen.iter().any(|&l| l >= Duration::from_millis(300)),
            "{seen:?}"
        );
    }
}
