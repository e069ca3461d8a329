//! The failover check of two LB nodes with VRRP, shared by the bare binary
//! (tests/tests/survival.rs) and the image run by podman
//! (tests/tests/image.rs), so both pass the very same assertions.

use std::time::{Duration, Instant};

use vip_userspace::status::Status;

use crate::{
    netns::poll_until,
    scenario::{LbLab, LbOptions},
    standin::client_config,
    traffic::{End, WatchReport, Watches},
};

/// Polls `node`'s `vipd status` every 10 ms until `ok`; the time it held.
pub fn wait_status(
    l: &LbLab,
    node: &str,
    timeout: Duration,
    ok: impl Fn(&Status) -> bool,
) -> Instant {
    poll_until(
        timeout,
        || {
            let last = l
                .try_status_of(node)
                .map(|s| s.render())
                .unwrap_or_else(|e| e);
            format!("{node}'s status did not get there:\n{last}")
        },
        || l.try_status_of(node).is_ok_and(|s| ok(&s)),
    );
    Instant::now()
}

pub fn is_master(s: &Status) -> bool {
    !s.vrrp.is_empty() && s.vrrp.iter().all(|v| v.state == "master")
}

/// lb (priority 150) and lb2 (100) with `opts` (`second_lb` set here);
/// returns once lb is master and lb2 backup for both families.
pub fn two_lbs(hint: &str, opts: LbOptions) -> LbLab {
    let l = LbLab::start_with(
        hint,
        &LbOptions {
            second_lb: true,
            ..opts
        },
    );
    wait_status(&l, "lb", Duration::from_secs(5), is_master);
    wait_status(&l, "lb2", Duration::from_secs(5), |s| {
        !s.vrrp.is_empty() && s.vrrp.iter().all(|v| v.state == "backup")
    });
    l
}

/// The master dies as a node does: no priority-0 advert, no VIP removal,
/// its link gone. Returns the crash and lb2's IPv4 takeover, from lb2's own
/// failover record (its status snapshot is rebuilt once a second, so the
/// moment the snapshot shows it is up to a second late).
pub fn master_dies(l: &LbLab) -> (Instant, Instant) {
    let t = Instant::now();
    l.kill_vipd("lb");
    l.lab.sh("lb", &["ip", "link", "set", "eth0", "down"]);
    wait_status(l, "lb2", Duration::from_secs(5), |s| {
        is_master(s) && s.vrrp.iter().all(|v| v.last_failover.is_some())
    });
    let s = l.status_of("lb2");
    let v4 = s
        .vrrp
        .iter()
        .find(|v| v.family == "ipv4")
        .expect("lb2's IPv4 router");
    let at = v4
        .last_failover
        .as_ref()
        .expect("lb2's failover record")
        .at_unix_ms;
    let (now_i, now_ms) = (
        Instant::now(),
        vip_userspace::status::unix_ms(std::time::SystemTime::now()),
    );
    let master = now_i - Duration::from_millis(now_ms.saturating_sub(at));
    (t, master)
}

pub fn summary(r: &[WatchReport]) -> String {
    let open = r.iter().filter(|w| w.end == End::Open).count();
    let reset = r.iter().filter(|w| w.end == End::Reset).count();
    let gap = r.iter().map(|w| w.longest_gap).max().unwrap_or_default();
    format!(
        "{open} open, {reset} reset, {} other; longest gap {gap:?}",
        r.len() - open - reset
    )
}

/// Mode dsr (a lab from [`two_lbs`]): 200 watch streams through the VIP;
/// the master dies; at least 99% go on through lb2 with no reset (Maglev
/// gives lb2 the same backend for every flow, and the backends hold the
/// connections), and none is silent: every one either streams or was
/// reset. `what` names the run in the printed line.
pub fn dsr_vip_move_keeps_watches(l: &LbLab, what: &str) {
    let ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let watches = Watches::open(&ns, &cfg, 200).expect("200 watch streams");
    std::thread::sleep(Duration::from_millis(500));
    let (t_crash, t_master) = master_dies(l);
    std::thread::sleep(Duration::from_secs(3));
    let report = watches.report();
    let line = summary(&report);
    eprintln!(
        "{what}: lb2 master {:?} after the crash; streams: {line}",
        t_master - t_crash
    );
    let open: Vec<&WatchReport> = report.iter().filter(|w| w.end == End::Open).collect();
    assert!(
        open.len() >= 198,
        "{what}: fewer than 99% of 200 streams survived the VIP move: {line}"
    );
    for w in &report {
        match &w.end {
            // Events every 200 ms: a stream that went on has no gap much
            // longer than the takeover (~0.4 s) plus the backend's
            // retransmission backoff (its ACKs were lost meanwhile: RTO
            // 200 ms, then 400, then 800).
            End::Open => assert!(
                w.longest_gap < Duration::from_secs(2),
                "{what}: a stream on {} stayed open but went silent for {:?}: {line}",
                w.server,
                w.longest_gap
            ),
            End::Reset => {}
            other => panic!(
                "{what}: a stream on {} ended with {other:?}: {line}",
                w.server
            ),
        }
    }
}
