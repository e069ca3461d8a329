use super::*;
use std::net::Ipv4Addr;

const US: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
const LOWER_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
const HIGHER_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));

fn params(priority: u8) -> Params {
    Params {
        vrid: Vrid(51),
        priority: Priority(priority),
        advert_interval_cs: 10,
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary_addr: US,
        announce_count: 3,
        announce_interval: Duration::from_millis(100),
        announce_refresh: Duration::from_secs(60),
    }
}

fn advert(src: IpAddr, priority: u8) -> Input {
    Input::Advert {
        src,
        priority: Priority(priority),
        max_adver_int_cs: 10,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A machine in Backup, started at `t0`.
fn backup(priority: u8, t0: Instant) -> Machine {
    let mut m = Machine::new(params(priority));
    m.handle(t0, Input::Startup);
    assert_eq!(m.state(), State::Backup);
    m
}

/// A machine that became Active after its Master_Down_Timer; returns the
/// instant it did.
fn master(priority: u8, t0: Instant) -> (Machine, Instant) {
    let mut m = backup(priority, t0);
    let t = m.next_deadline().expect("master down timer");
    m.handle(t, Input::Timer);
    assert_eq!(m.state(), State::Master);
    (m, t)
}

fn transitions(actions: &[Action]) -> Vec<(State, State)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transition { from, to, .. } => Some((*from, *to)),
            _ => None,
        })
        .collect()
}

// --- Timers as the RFC computes them (6.1) ---

#[test]
fn skew_and_master_down_interval_follow_rfc_9568_6_1() {
    let mut p = params(100);
    p.advert_interval_cs = 100;
    let m = Machine::new(p);
    // (256 - 100) * 1 s / 256 = 609.375 ms.
    assert_eq!(m.skew_time(), Duration::from_micros(609_375));
    assert_eq!(m.master_down_interval(), Duration::from_micros(3_609_375));
    let mut p = params(254);
    p.advert_interval_cs = 2; // 20 ms, the smallest interval we allow
    let m = Machine::new(p);
    assert_eq!(m.skew_time(), Duration::from_micros(156)); // 2 * 20 ms / 256
    assert_eq!(m.master_down_interval(), Duration::from_micros(60_156));
}

#[test]
fn higher_priority_backup_fires_first() {
    let t0 = Instant::now();
    let hi = backup(200, t0);
    let lo = backup(100, t0);
    assert!(hi.next_deadline() < lo.next_deadline());
}

// --- Initialize (6.4.1) ---

#[test]
fn initialize_startup_non_owner_goes_backup_with_master_down_timer() {
    let t0 = Instant::now();
    let mut m = Machine::new(params(100));
    let a = m.handle(t0, Input::Startup);
    assert_eq!(transitions(&a), [(State::Initialize, State::Backup)]);
    assert!(
        !a.contains(&Action::AddVips),
        "a Backup must not take the VIPs"
    );
    assert_eq!(m.next_deadline(), Some(t0 + m.master_down_interval()));
}

#[test]
fn initialize_startup_owner_goes_master_at_once() {
    let t0 = Instant::now();
    let mut m = Machine::new(params(Priority::OWNER.0));
    let a = m.handle(t0, Input::Startup);
    assert_eq!(
        a[..3],
        [
            Action::SendAdvert {
                priority: Priority(255)
            },
            Action::AddVips,
            Action::Transition {
                from: State::Initialize,
                to: State::Master,
                why: Why::Owner
            }
        ]
    );
    assert!(a.contains(&Action::Announce));
    assert_eq!(
        m.next_deadline(),
        Some(t0 + ms(100)),
        "first repeat announce"
    );
}

#[test]
fn initialize_ignores_everything_but_startup_and_priority() {
    let t0 = Instant::now();
    for input in [
        Input::Shutdown,
        advert(HIGHER_ADDR, 200),
        Input::Timer,
        Input::Conflict { mac: [2; 6] },
    ] {
        let mut m = Machine::new(params(100));
        assert!(m.handle(t0, input.clone()).is_empty(), "{input:?}");
        assert_eq!(m.state(), State::Initialize);
        assert_eq!(m.next_deadline(), None);
    }
    let mut m = Machine::new(params(100));
    assert!(m.handle(t0, Input::Priority(Priority(40))).is_empty());
    assert_eq!(m.priority(), Priority(40));
}

// --- Backup (6.4.2) ---

#[test]
fn backup_master_down_timer_takes_over_and_announces() {
    let t0 = Instant::now();
    let mut m = backup(100, t0);
    let t = m.next_deadline().expect("timer");
    assert!(
        m.handle(t - ms(1), Input::Timer).is_empty(),
        "not yet expired"
    );
    let a = m.handle(t, Input::Timer);
    assert_eq!(
        a,
        [
            Action::SendAdvert {
                priority: Priority(100)
            },
            Action::AddVips,
            Action::Transition {
                from: State::Backup,
                to: State::Master,
                why: Why::MasterDown
            },
            Action::Announce,
        ]
    );
}

#[test]
fn backup_advert_resets_master_down_timer_and_learns_interval() {
    let t0 = Instant::now();
    let mut m = backup(100, t0);
    let t1 = t0 + ms(500);
    let a = m.handle(
        t1,
        Input::Advert {
            src: HIGHER_ADDR,
            priority: Priority(150),
            max_adver_int_cs: 10,
        },
    );
    assert!(a.is_empty());
    assert_eq!(m.master_adver_interval_cs(), 10);
    // 3 * 100 ms + (156 * 100 ms / 256) = 360.9375 ms.
    assert_eq!(m.next_deadline(), Some(t1 + Duration::from_micros(360_937)));
}

#[test]
fn backup_priority_zero_takes_over_after_skew_time() {
    let t0 = Instant::now();
    let mut m = backup(100, t0);
    m.handle(t0, advert(HIGHER_ADDR, 150));
    let t1 = t0 + ms(300);
    assert!(m.handle(t1, advert(HIGHER_ADDR, 0)).is_empty());
    assert_eq!(m.next_deadline(), Some(t1 + m.skew_time()));
    let a = m.handle(t1 + m.skew_time(), Input::Timer);
    assert!(a.contains(&Action::Transition {
        from: State::Backup,
        to: State::Master,
        why: Why::MasterLeft
    }));
}

#[test]
fn backup_with_preempt_ignores_lower_priority_and_takes_over() {
    let t0 = Instant::now();
    let mut m = backup(150, t0);
    let deadline = m.next_deadline();
    m.handle(t0 + ms(100), advert(HIGHER_ADDR, 100));
    assert_eq!(
        m.next_deadline(),
        deadline,
        "lower priority must not reset the timer"
    );
    let a = m.handle(deadline.expect("timer"), Input::Timer);
    assert_eq!(transitions(&a), [(State::Backup, State::Master)]);
}

#[test]
fn backup_without_preempt_follows_lower_priority_master() {
    let t0 = Instant::now();
    let mut p = params(150);
    p.preempt = false;
    let mut m = Machine::new(p);
    m.handle(t0, Input::Startup);
    let t1 = t0 + ms(100);
    m.handle(t1, advert(HIGHER_ADDR, 100));
    assert_eq!(m.next_deadline(), Some(t1 + m.master_down_interval()));
}

#[test]
fn backup_preempt_delay_holds_off_preemption_then_preempts() {
    let t0 = Instant::now();
    let mut p = params(150);
    p.preempt_delay = Duration::from_secs(10);
    let mut m = Machine::new(p);
    m.handle(t0, Input::Startup);
    // Within the delay: a lower-priority master is followed.
    let t1 = t0 + Duration::from_secs(5);
    m.handle(t1, advert(HIGHER_ADDR, 100));
    assert_eq!(m.next_deadline(), Some(t1 + m.master_down_interval()));
    // After it: its advertisements are discarded, and we take over.
    let t2 = t0 + Duration::from_secs(11);
    let before = m.next_deadline();
    m.handle(t2, advert(HIGHER_ADDR, 100));
    assert_eq!(m.next_deadline(), before);
}

#[test]
fn backup_equal_priority_is_followed() {
    // RFC 9568 6.4.2: "greater than or equal to the local Priority".
    let t0 = Instant::now();
    let mut m = backup(100, t0);
    let t1 = t0 + ms(200);
    m.handle(t1, advert(LOWER_ADDR, 100));
    assert_eq!(m.next_deadline(), Some(t1 + m.master_down_interval()));
}

#[test]
fn backup_shutdown_goes_initialize_without_timers() {
    let t0 = Instant::now();
    let mut m = backup(100, t0);
    let a = m.handle(t0, Input::Shutdown);
    assert_eq!(transitions(&a), [(State::Backup, State::Initialize)]);
    assert!(!a.iter().any(|a| matches!(a, Action::SendAdvert { .. })));
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn backup_ignores_startup_and_conflict() {
    let t0 = Instant::now();
    let mut m = backup(100, t0);
    let d = m.next_deadline();
    assert!(m.handle(t0, Input::Startup).is_empty());
    assert!(m.handle(t0, Input::Conflict { mac: [2; 6] }).is_empty());
    assert_eq!(m.next_deadline(), d);
}

#[test]
fn backup_priority_change_sets_skew_and_owner_takes_over() {
    let t0 = Instant::now();
    let mut m = backup(100, t0);
    assert!(m.handle(t0, Input::Priority(Priority(200))).is_empty());
    assert_eq!(m.skew_time(), Duration::from_micros(21_875)); // 56 * 100 ms / 256
    let a = m.handle(t0, Input::Priority(Priority::OWNER));
    assert_eq!(transitions(&a), [(State::Backup, State::Master)]);
}

// --- Unable to send (the shell's Input::CanSend) ---

#[test]
fn startup_unable_to_send_waits_as_backup_without_timer() {
    let t0 = Instant::now();
    let mut m = Machine::new(params(150));
    assert!(m.handle(t0, Input::CanSend(false)).is_empty());
    let a = m.handle(t0, Input::Startup);
    assert_eq!(transitions(&a), [(State::Initialize, State::Backup)]);
    assert_eq!(m.next_deadline(), None, "no Master_Down_Timer while mute");
    // Adverts of a lower-priority master are still discarded
    // (preemption) and nothing starts a timer either.
    assert!(m.handle(t0 + ms(500), advert(HIGHER_ADDR, 100)).is_empty());
    assert_eq!(m.next_deadline(), None);
    // Once adverts can leave, a whole Master_Down_Interval from then.
    let t1 = t0 + Duration::from_secs(2);
    assert!(m.handle(t1, Input::CanSend(true)).is_empty());
    assert_eq!(m.next_deadline(), Some(t1 + m.master_down_interval()));
    let a = m.handle(t1 + m.master_down_interval(), Input::Timer);
    assert_eq!(transitions(&a), [(State::Backup, State::Master)]);
    assert_eq!(
        a[0],
        Action::SendAdvert {
            priority: Priority(150)
        }
    );
}

#[test]
fn backup_losing_send_stops_its_timer_even_when_due() {
    let t0 = Instant::now();
    let mut m = backup(150, t0);
    let due = m.next_deadline().expect("timer");
    assert!(m.handle(t0 + ms(10), Input::CanSend(false)).is_empty());
    assert!(m.handle(due, Input::Timer).is_empty());
    assert_eq!(m.state(), State::Backup);
    // A priority-0 advert does not start it either.
    assert!(m.handle(due, advert(HIGHER_ADDR, 0)).is_empty());
    assert_eq!(m.next_deadline(), None);
    // CanSend(true) twice restarts the timer once.
    let t1 = due + ms(100);
    m.handle(t1, Input::CanSend(true));
    m.handle(t1 + ms(50), Input::CanSend(true));
    assert_eq!(m.next_deadline(), Some(t1 + m.master_down_interval()));
}

#[test]
fn owner_unable_to_send_becomes_master_once_it_can() {
    let t0 = Instant::now();
    let mut m = Machine::new(params(Priority::OWNER.0));
    m.handle(t0, Input::CanSend(false));
    let a = m.handle(t0, Input::Startup);
    assert_eq!(transitions(&a), [(State::Initialize, State::Backup)]);
    let a = m.handle(t0 + ms(300), Input::CanSend(true));
    assert_eq!(transitions(&a), [(State::Backup, State::Master)]);
}

#[test]
fn master_unable_to_send_steps_down_and_comes_back() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    let a = m.handle(t + ms(20), Input::CanSend(false));
    assert_eq!(
        a,
        [
            Action::RemoveVips,
            Action::Transition {
                from: State::Master,
                to: State::Backup,
                why: Why::CannotSend
            }
        ],
        "no advert: it could not leave"
    );
    assert_eq!(m.next_deadline(), None);
    let t1 = t + Duration::from_secs(1);
    m.handle(t1, Input::CanSend(true));
    let a = m.handle(t1 + m.master_down_interval(), Input::Timer);
    assert_eq!(transitions(&a), [(State::Backup, State::Master)]);
}

// --- Active (6.4.3) ---

#[test]
fn master_sends_advert_every_interval() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    // Announce repeats are due at the same instants as adverts here.
    let a = m.handle(t + ms(100), Input::Timer);
    assert_eq!(
        a[0],
        Action::SendAdvert {
            priority: Priority(100)
        }
    );
    let a = m.handle(t + ms(150), Input::Timer);
    assert!(a.is_empty(), "{a:?}");
    assert!(m.next_deadline() <= Some(t + ms(200)));
}

#[test]
fn master_announces_count_times_then_refreshes() {
    let t0 = Instant::now();
    let mut p = params(100);
    p.advert_interval_cs = 1000; // adverts out of the way
    p.announce_count = 3;
    p.announce_interval = ms(30);
    p.announce_refresh = Duration::from_secs(5);
    let mut m = Machine::new(p);
    m.handle(t0, Input::Startup);
    let t = m.next_deadline().expect("down timer");
    let a = m.handle(t, Input::Timer);
    assert_eq!(a.iter().filter(|a| **a == Action::Announce).count(), 1);
    let mut sent = vec![];
    let mut now = t;
    while let Some(d) = m.next_deadline() {
        if d > t + Duration::from_secs(6) {
            break;
        }
        now = d;
        if m.handle(now, Input::Timer).contains(&Action::Announce) {
            sent.push(now - t);
        }
    }
    assert_eq!(
        sent,
        [ms(30), ms(60), ms(5060)],
        "two repeats, then the refresh"
    );
    assert!(now >= t + ms(5060));
}

#[test]
fn master_zero_refresh_stops_after_repeats() {
    let t0 = Instant::now();
    let mut p = params(100);
    p.announce_count = 1;
    p.announce_refresh = Duration::ZERO;
    let mut m = Machine::new(p);
    m.handle(t0, Input::Startup);
    let t = m.next_deadline().expect("down timer");
    m.handle(t, Input::Timer);
    // Only the advert timer remains.
    assert_eq!(m.next_deadline(), Some(t + ms(100)));
}

#[test]
fn master_shutdown_sends_priority_zero_and_releases() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    let a = m.handle(t + ms(10), Input::Shutdown);
    assert_eq!(
        a,
        [
            Action::SendAdvert {
                priority: Priority(0)
            },
            Action::RemoveVips,
            Action::Transition {
                from: State::Master,
                to: State::Initialize,
                why: Why::Shutdown
            }
        ]
    );
    assert_eq!(m.next_deadline(), None);
}

/// A router that preempts us (it was a silent Backup, or just came up):
/// we yield, and it is no split brain (issue 18: every reboot of the
/// preferred node fired the split-brain alert).
#[test]
fn master_preempted_by_higher_priority_is_no_split_brain() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    let a = m.handle(t, advert(LOWER_ADDR, 101));
    // One last advert at our priority (the winner learns of us at
    // once), before the VIPs go.
    assert_eq!(
        a[0],
        Action::SendAdvert {
            priority: Priority(100)
        }
    );
    assert!(a.contains(&Action::RemoveVips));
    assert!(
        !a.iter().any(|a| matches!(a, Action::SplitBrain { .. })),
        "{a:?}"
    );
    assert!(a.contains(&Action::Transition {
        from: State::Master,
        to: State::Backup,
        why: Why::Preempted {
            by: LOWER_ADDR,
            priority: Priority(101)
        }
    }));
    assert_eq!(m.next_deadline(), Some(t + m.master_down_interval()));
}

/// This mastership met another master (its lower-priority adverts, or
/// its MAC claiming the VIP); a higher priority heard afterwards is
/// that split brain ending, and counted.
#[test]
fn master_that_met_another_master_counts_the_split_brain_when_outranked() {
    let t0 = Instant::now();
    for rival in [advert(HIGHER_ADDR, 90), Input::Conflict { mac: [2; 6] }] {
        let (mut m, t) = master(100, t0);
        let a = m.handle(t + ms(500), rival.clone());
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::SplitBrain { won: true, .. })),
            "{rival:?}: {a:?}"
        );
        let a = m.handle(t + ms(600), advert(LOWER_ADDR, 150));
        assert!(a.contains(&Action::SplitBrain {
            peer: Peer::Router {
                addr: LOWER_ADDR,
                priority: Priority(150)
            },
            won: false
        }));
        assert!(a.contains(&Action::Transition {
            from: State::Master,
            to: State::Backup,
            why: Why::Outranked {
                by: LOWER_ADDR,
                priority: Priority(150)
            }
        }));
    }
}

/// RFC 9568 6.4.2 Preempt_Mode: the lower-priority master's adverts are
/// discarded and the timer fires while it is alive: a preemption, not
/// "no master heard" (issue 18: it was logged and measured as a
/// failover).
#[test]
fn backup_preempting_a_live_lower_master_says_so() {
    let t0 = Instant::now();
    let mut m = backup(150, t0);
    let due = m.next_deadline().expect("timer");
    let mut t = t0;
    while t + ms(100) < due {
        t += ms(100);
        m.handle(t, advert(HIGHER_ADDR, 100));
    }
    let a = m.handle(due, Input::Timer);
    assert!(
        a.contains(&Action::Transition {
            from: State::Backup,
            to: State::Master,
            why: Why::Preempt {
                master: HIGHER_ADDR,
                priority: Priority(100)
            }
        }),
        "{a:?}"
    );
    // Its advert in flight and its last one as it yields: the handover,
    // answered but neither a split brain nor a new announcement burst.
    let a = m.handle(due + ms(5), advert(HIGHER_ADDR, 100));
    assert_eq!(
        a,
        [Action::SendAdvert {
            priority: Priority(150)
        }]
    );
    // Still advertising after its Master_Down_Interval: it does not hear
    // us, a split brain.
    let late = due + master_down_interval(10, Priority(150)) + ms(1);
    let a = m.handle(late, advert(HIGHER_ADDR, 100));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::SplitBrain { won: true, .. })),
        "{a:?}"
    );
    assert!(a.contains(&Action::Announce));
}

/// The lower master went silent before our timer fired: a failover.
#[test]
fn backup_taking_over_from_a_silent_lower_master_is_master_down() {
    let t0 = Instant::now();
    // Its Master_Down_Interval at 100 ms adverts is 340 ms; our own
    // timer, at 1 s adverts, fires after 3.4 s.
    let mut p = params(150);
    p.advert_interval_cs = 100;
    let mut slow = Machine::new(p);
    slow.handle(t0, Input::Startup);
    slow.handle(t0 + ms(1), advert(HIGHER_ADDR, 100));
    let due = slow.next_deadline().expect("timer");
    let a = slow.handle(due, Input::Timer);
    assert!(
        a.contains(&Action::Transition {
            from: State::Backup,
            to: State::Master,
            why: Why::MasterDown
        }),
        "{a:?}"
    );
    // And a lower-priority advert from someone else later is a split
    // brain, not a handover.
    let a = slow.handle(due + ms(10), advert(HIGHER_ADDR, 100));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::SplitBrain { won: true, .. }))
    );
}

#[test]
fn master_equal_priority_higher_address_wins() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    let a = m.handle(t, advert(HIGHER_ADDR, 100));
    assert_eq!(transitions(&a), [(State::Master, State::Backup)]);
}

#[test]
fn master_equal_priority_lower_address_loses_and_we_reassert() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    let a = m.handle(t + ms(40), advert(LOWER_ADDR, 100));
    assert_eq!(m.state(), State::Master);
    assert!(a.contains(&Action::SendAdvert {
        priority: Priority(100)
    }));
    assert!(a.contains(&Action::Announce), "the winner re-announces");
    assert!(a.contains(&Action::SplitBrain {
        peer: Peer::Router {
            addr: LOWER_ADDR,
            priority: Priority(100)
        },
        won: true
    }));
}

#[test]
fn master_answers_lower_priority_at_once() {
    let t0 = Instant::now();
    let (mut m, t) = master(150, t0);
    let now = t + ms(30);
    let a = m.handle(now, advert(HIGHER_ADDR, 100));
    assert_eq!(m.state(), State::Master);
    assert!(a.contains(&Action::SendAdvert {
        priority: Priority(150)
    }));
    // The advert timer restarts from the answer.
    let a = m.handle(t + ms(100), Input::Timer);
    assert!(
        !a.iter().any(|a| matches!(a, Action::SendAdvert { .. })),
        "{a:?}"
    );
    let a = m.handle(now + ms(100), Input::Timer);
    assert!(a.contains(&Action::SendAdvert {
        priority: Priority(150)
    }));
}

#[test]
fn master_answers_priority_zero_and_stays() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    let a = m.handle(t, advert(HIGHER_ADDR, 0));
    assert_eq!(
        a,
        [Action::SendAdvert {
            priority: Priority(100)
        }]
    );
    assert_eq!(m.state(), State::Master);
}

/// Without preemption nobody would take the VIP from a master that can
/// serve less well: it leaves with priority 0.
#[test]
fn master_priority_fall_steps_down_with_priority_zero() {
    let t0 = Instant::now();
    let mut p = params(150);
    p.preempt = false;
    let mut m = Machine::new(p);
    m.handle(t0, Input::Startup);
    let t = m.next_deadline().expect("master down timer");
    m.handle(t, Input::Timer);
    assert_eq!(m.state(), State::Master);
    let a = m.handle(t, Input::Priority(Priority(90)));
    assert_eq!(
        a,
        [
            Action::SendAdvert {
                priority: Priority(0)
            },
            Action::RemoveVips,
            Action::Transition {
                from: State::Master,
                to: State::Backup,
                why: Why::StepDown {
                    priority: Priority(90)
                }
            }
        ]
    );
    // Nobody else: our own Master_Down_Timer brings the VIP back.
    let d = m.next_deadline().expect("down timer");
    assert_eq!(d, t + m.master_down_interval());
    let a = m.handle(d, Input::Timer);
    assert!(a.contains(&Action::SendAdvert {
        priority: Priority(90)
    }));
    assert_eq!(m.state(), State::Master);
}

#[test]
fn master_priority_rise_just_advertises_higher() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    assert!(m.handle(t, Input::Priority(Priority(120))).is_empty());
    let a = m.handle(t + ms(100), Input::Timer);
    assert!(a.contains(&Action::SendAdvert {
        priority: Priority(120)
    }));
}

#[test]
fn master_conflicting_mac_is_split_brain_and_reannounces() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    let a = m.handle(
        t,
        Input::Conflict {
            mac: [2, 0, 0, 0, 0, 9],
        },
    );
    // Still within our own takeover burst: counted, the burst answers.
    assert_eq!(
        a,
        [Action::SplitBrain {
            peer: Peer::Mac([2, 0, 0, 0, 0, 9]),
            won: true
        }]
    );
    // After the burst: answered at once, and a new burst starts.
    while let Some(d) = m.next_deadline()
        && d <= t + ms(500)
    {
        m.handle(d, Input::Timer);
    }
    let t2 = t + ms(500);
    let a = m.handle(
        t2,
        Input::Conflict {
            mac: [2, 0, 0, 0, 0, 9],
        },
    );
    assert_eq!(
        a,
        [
            Action::SplitBrain {
                peer: Peer::Mac([2, 0, 0, 0, 0, 9]),
                won: true
            },
            Action::Announce
        ]
    );
    assert!(
        m.next_deadline() <= Some(t2 + ms(100)),
        "the burst's next announce"
    );
}

#[test]
fn master_ignores_startup() {
    let t0 = Instant::now();
    let (mut m, t) = master(100, t0);
    assert!(m.handle(t, Input::Startup).is_empty());
    assert_eq!(m.state(), State::Master);
}

// --- Whole exchanges ---

/// Two routers wired back to back through their actions: the lower one
/// never holds the VIP once the higher one is up, and after the higher
/// one's shutdown the lower one holds it within its skew time.
#[test]
fn two_routers_elect_and_hand_over() {
    let t0 = Instant::now();
    let mut a = Machine::new(Params {
        primary_addr: LOWER_ADDR,
        ..params(200)
    });
    let mut b = Machine::new(Params {
        primary_addr: HIGHER_ADDR,
        ..params(100)
    });
    let mut queue: Vec<(usize, Input)> = vec![(0, Input::Startup), (1, Input::Startup)];
    let mut now = t0;
    let end = t0 + Duration::from_secs(30);
    let mut shut = false;
    let mut shut_at = t0;
    while now < end {
        while let Some((who, input)) = queue.pop() {
            let (m, other, src) = if who == 0 {
                (&mut a, 1, LOWER_ADDR)
            } else {
                (&mut b, 0, HIGHER_ADDR)
            };
            for act in m.handle(now, input) {
                if let Action::SendAdvert { priority } = act {
                    queue.push((other, advert(src, priority.0)));
                }
            }
        }
        if shut && b.state() == State::Master {
            break;
        }
        assert!(
            shut || b.state() != State::Master,
            "the lower priority took the VIP while the higher one was up"
        );
        if !shut && now >= t0 + Duration::from_secs(10) {
            assert_eq!(a.state(), State::Master);
            assert_eq!(b.state(), State::Backup);
            queue.push((0, Input::Shutdown));
            shut = true;
            shut_at = now;
            continue;
        }
        let next = [a.next_deadline(), b.next_deadline()]
            .into_iter()
            .flatten()
            .min()
            .expect("a timer is always pending");
        now = next;
        if a.next_deadline() == Some(next) {
            queue.push((0, Input::Timer));
        }
        if b.next_deadline() == Some(next) {
            queue.push((1, Input::Timer));
        }
    }
    assert_eq!(b.state(), State::Master);
    let took = now - shut_at;
    // The priority-0 advert hands over after the Backup's skew time only.
    assert_eq!(took, b.skew_time(), "took {took:?}");
}

/// With preemption a master whose priority falls stays, and says its new
/// priority at once: it may still outrank every Backup, and one that it no
/// longer outranks preempts (RFC 9568 6.4.2). Leaving with priority 0 would
/// hand the VIP to a lower Backup and take it back one Master_Down_Interval
/// later (the flap a stacked pair showed when the master's apiserver fell
/// first).
#[test]
fn master_priority_fall_with_preemption_stays_and_advertises_it() {
    let t0 = Instant::now();
    let (mut m, t) = master(150, t0);
    let a = m.handle(t + ms(30), Input::Priority(Priority(100)));
    assert_eq!(
        a,
        [Action::SendAdvert {
            priority: Priority(100)
        }]
    );
    assert_eq!(m.state(), State::Master);
    // The next advert is an interval after that one, at the new priority.
    // (Deadlines in between are the gratuitous ARP announcements.)
    let next = loop {
        let d = m.next_deadline().expect("a timer");
        let a = m.handle(d, Input::Timer);
        if let Some(Action::SendAdvert { priority }) =
            a.iter().find(|a| matches!(a, Action::SendAdvert { .. }))
        {
            assert_eq!(*priority, Priority(100));
            break d;
        }
    };
    assert_eq!(next, t + ms(30) + ms(100));

    // A Backup that now outranks it preempts after its own
    // Master_Down_Interval; one below it keeps following.
    let mut higher = backup(120, t0);
    let mut lower = backup(90, t0);
    for b in [&mut higher, &mut lower] {
        b.handle(next, advert(HIGHER_ADDR, 150));
        b.handle(next + ms(10), advert(HIGHER_ADDR, 100));
    }
    let d = lower.next_deadline().expect("down timer");
    assert_eq!(d, next + ms(10) + lower.master_down_interval());
    let h = higher.next_deadline().expect("down timer");
    let a = higher.handle(h, Input::Timer);
    assert_eq!(transitions(&a), [(State::Backup, State::Master)]);
}
