use super::*;
use crate::vrrp::{Priority, Vrid};

fn info(priority: u8, peers: &[(&str, u8, u16, Instant)]) -> RouterInfo {
    RouterInfo {
        vrid: Vrid(51),
        source: "10.0.0.2".parse().expect("addr"),
        priority: Priority(priority),
        hold: None,
        peers: peers
            .iter()
            .map(|(a, prio, cs, seen)| {
                (
                    a.parse().expect("addr"),
                    PeerSeen {
                        priority: Priority(*prio),
                        interval_cs: *cs,
                        at: SystemTime::now(),
                        seen: *seen,
                    },
                )
            })
            .collect(),
        last_change: None,
        last_failover: None,
    }
}

/// A master advertising every second, heard 900 ms ago by a node
/// configured for 100 ms: still the master (its Master_Down_Interval at
/// our priority 100 is 3.609 s), not "none heard" as 3 x our 100 ms
/// would have it. Gone after that interval.
#[test]
fn master_heard_within_its_own_master_down_interval() {
    let t0 = Instant::now();
    let i = info(100, &[("10.0.0.1", 150, 100, t0)]);
    let master = Some("10.0.0.1".parse().expect("addr"));
    assert_eq!(i.heard_master(t0 + Duration::from_millis(900)), master);
    assert_eq!(i.heard_master(t0 + Duration::from_millis(3_600)), master);
    assert_eq!(i.heard_master(t0 + Duration::from_millis(3_610)), None);
    // A 100 ms master is gone after its own 361 ms.
    let i = info(100, &[("10.0.0.1", 150, 10, t0)]);
    assert_eq!(i.heard_master(t0 + Duration::from_millis(300)), master);
    assert_eq!(i.heard_master(t0 + Duration::from_millis(400)), None);
}

#[test]
fn heard_master_is_the_last_non_zero_priority() {
    let t0 = Instant::now();
    let later = t0 + Duration::from_millis(50);
    let i = info(
        100,
        &[("10.0.0.1", 150, 10, t0), ("10.0.0.3", 0, 10, later)],
    );
    assert_eq!(
        i.heard_master(later),
        Some("10.0.0.1".parse().expect("addr")),
        "priority 0 is a master leaving"
    );
    let i = info(
        100,
        &[("10.0.0.1", 150, 10, t0), ("10.0.0.3", 120, 10, later)],
    );
    assert_eq!(
        i.heard_master(later),
        Some("10.0.0.3".parse().expect("addr"))
    );
}

#[test]
fn intervals_read_as_configured() {
    assert_eq!(interval(100), "1s");
    assert_eq!(interval(10), "100ms");
    assert_eq!(interval(150), "1500ms");
}
