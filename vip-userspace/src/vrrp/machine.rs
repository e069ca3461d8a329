//! The VRRPv3 state machine of RFC 9568 section 6, as a pure function of
//! (state, input, now) to actions.
//!
//! No sockets, no clock, no tokio: the shell feeds inputs (a checked
//! advertisement, a fired timer, a priority change) with the current time and
//! carries out the returned actions. Timers are deadlines stored here; the
//! shell sleeps until [`Machine::next_deadline`] and then feeds
//! [`Input::Timer`].
//!
//! Beyond the RFC, for a VIP that fronts apiservers:
//! - an Active Router whose effective priority falls (it can no longer serve)
//!   steps down with a priority-0 advertisement, so that a healthy Backup takes
//!   over after its skew time even when it runs with preemption off;
//! - announcements (gratuitous ARP / unsolicited NA) are repeated a configured
//!   number of times after a takeover and refreshed periodically while Active;
//! - another Active Router, or another MAC claiming the VIP, is reported as a
//!   split brain, and the winner re-announces; preemption is told apart from
//!   it (see "Preemption or split brain" below);
//! - a router that cannot send its advertisements (the shell feeds
//!   [`Input::CanSend`], e.g. while its IPv6 link-local address is still
//!   tentative) never becomes Active: its Master_Down_Timer only runs while
//!   it can send, and an Active Router that loses the ability steps down.
//!
//! Preemption or split brain. RFC 9568 defines preemption (6.4.2: a Backup
//! with Preempt_Mode discards the adverts of a lower-priority Active Router
//! and takes over when its Master_Down_Timer fires; 6.4.3: the Active
//! Router that hears a higher priority yields) and nothing called split
//! brain. Here a split brain is two Active Routers at once that preemption
//! does not explain, and a takeover is a failover only when the master was
//! silent:
//! - a Backup whose timer fires while the lower-priority master it discarded
//!   is still heard (within that master's Master_Down_Interval) preempts it
//!   ([`Why::Preempt`]), no failover;
//! - the adverts that master sends while it learns of us (one in flight,
//!   the last one at its own priority as it yields) arrive within its
//!   Master_Down_Interval of our takeover: expected, no split brain;
//! - any other advert of a lower (or equal, lower-address) priority while
//!   Active is another Active Router that does not hear us: a split brain
//!   won; so is another MAC claiming the VIP;
//! - a higher priority heard while Active is a preemption of us
//!   ([`Why::Preempted`]) unless this mastership already met another master
//!   (the split brain above): then it is that split brain ending
//!   ([`Why::Outranked`], counted). From the side that yields, a partition
//!   that heals with no sign of the other master during it looks exactly
//!   like a preemption (one higher-priority advert); the side that stays
//!   Active hears our adverts although it did not preempt us, and counts
//!   the split brain there, once per healing rather than twice.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

/// The priority of the router that owns the addresses (RFC 9568 5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// "Stop participating" (RFC 9568 5.2.4): the Active Router is leaving.
pub const PRIORITY_LEAVING: u8 = 0;

/// The three states of RFC 9568 section 6.4. The RFC calls the VIP holder the
/// Active Router; logs and metrics say "master", the word operators search for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Initialize,
    Backup,
    Master,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Initialize => "initialize",
            State::Backup => "backup",
            State::Master => "master",
        }
    }
}

/// Configuration of one virtual router (RFC 9568 section 6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub vrid: u8,
    /// Configured priority, 1..=255 (255: the address owner).
    pub priority: u8,
    /// Advertisement_Interval in centiseconds (1..=4095).
    pub advert_interval_cs: u16,
    /// Preempt_Mode.
    pub preempt: bool,
    /// After startup, a higher-priority Backup waits this long before it
    /// preempts a lower-priority Active Router (lets the node settle first).
    pub preempt_delay: Duration,
    /// Our primary address, the tie-breaker of RFC 9568 6.4.3 (equal priority:
    /// the higher primary address wins).
    pub primary_addr: IpAddr,
    /// Announcements sent on becoming Active (the first at once).
    pub announce_count: u32,
    /// Gap between those announcements.
    pub announce_interval: Duration,
    /// While Active, announce again this often (zero: never).
    pub announce_refresh: Duration,
}

/// What happens to a virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// RFC 9568 6.4.1: the router starts (or its interface came up).
    Startup,
    /// RFC 9568 6.4.2/6.4.3: the router stops (or its interface went down).
    Shutdown,
    /// An advertisement for our VRID that passed the checks of section 7.1.
    Advert {
        src: IpAddr,
        priority: u8,
        max_adver_int_cs: u16,
    },
    /// The shell's clock reached [`Machine::next_deadline`].
    Timer,
    /// The effective priority changed (priority tracking): 1..=255.
    Priority(u8),
    /// Another MAC claimed one of our VIPs (gratuitous ARP / NA from a
    /// different host).
    Conflict { mac: [u8; 6] },
    /// Whether advertisements can leave (the source address is usable:
    /// for IPv6 the link-local one, not tentative nor failed DAD). The
    /// machine starts assuming they can.
    CanSend(bool),
}

/// Why the state changed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Startup as the address owner (6.4.1).
    Owner,
    /// Startup as a non-owner (6.4.1).
    Startup,
    /// Master_Down_Timer fired: no Active Router heard (6.4.2).
    MasterDown,
    /// Master_Down_Timer fired after the Active Router sent priority 0.
    MasterLeft,
    /// This node preempted a live lower-priority Active Router (6.4.2
    /// Preempt_Mode: its adverts were discarded, the timer fired while it
    /// was still heard). Not a failover: the VIP had a working holder.
    Preempt {
        master: IpAddr,
        priority: u8,
    },
    /// A higher priority (or equal priority, higher address) Active Router
    /// was heard (6.4.3) and no other master was met during this
    /// mastership: a preemption of this node.
    Preempted {
        by: IpAddr,
        priority: u8,
    },
    /// As [`Why::Preempted`], but this mastership met another master (its
    /// adverts or its MAC claiming the VIP): a split brain ending.
    Outranked {
        by: IpAddr,
        priority: u8,
    },
    /// Our effective priority fell: we can no longer serve.
    StepDown {
        priority: u8,
    },
    /// Our advertisements can no longer leave: an Active Router that nobody
    /// hears is replaced by a Backup after its Master_Down_Interval, and
    /// both would hold the VIP.
    CannotSend,
    Shutdown,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send an advertisement with this priority to the group or the peers.
    SendAdvert {
        priority: u8,
    },
    /// Add the VIPs to the interface (then announce them: an
    /// [`Action::Announce`] follows).
    AddVips,
    /// Remove the VIPs from the interface.
    RemoveVips,
    /// Gratuitous ARP / unsolicited NA for every VIP.
    Announce,
    Transition {
        from: State,
        to: State,
        why: Why,
    },
    /// Another Active Router or another MAC for our VIP while we are Active.
    SplitBrain {
        peer: Peer,
        won: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Router { addr: IpAddr, priority: u8 },
    Mac([u8; 6]),
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Machine {
    params: Params,
    state: State,
    /// Effective priority (configured minus tracking weights).
    priority: u8,
    /// Master_Adver_Interval (6.1): learned from the Active Router.
    master_adver_interval_cs: u16,
    adver_timer: Option<Instant>,
    master_down_timer: Option<Instant>,
    announce_at: Option<Instant>,
    announces_left: u32,
    /// No preemption before this instant (preempt delay after startup).
    preempt_after: Option<Instant>,
    /// The Master_Down_Timer runs for a skew time after a priority-0
    /// advertisement (for the reason given on takeover).
    master_left: bool,
    /// Advertisements can leave ([`Input::CanSend`]).
    can_send: bool,
    /// Backup: the last advert of a lower-priority master we discarded to
    /// preempt it.
    lower_master: Option<Heard>,
    /// Active: the master we preempted, and until when its adverts are
    /// the handover rather than a split brain.
    preempted: Option<(IpAddr, Instant)>,
    /// Active: another master was met during this mastership.
    rival_seen: bool,
}

/// One advertisement, as remembered.
#[derive(Debug, Clone, Copy)]
struct Heard {
    src: IpAddr,
    priority: u8,
    interval_cs: u16,
    at: Instant,
}

impl Machine {
    pub fn new(params: Params) -> Machine {
        Machine {
            priority: params.priority,
            master_adver_interval_cs: params.advert_interval_cs,
            params,
            state: State::Initialize,
            adver_timer: None,
            master_down_timer: None,
            announce_at: None,
            announces_left: 0,
            preempt_after: None,
            master_left: false,
            can_send: true,
            lower_master: None,
            preempted: None,
            rival_seen: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The effective priority advertised while Active.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Master_Adver_Interval as last learned (centiseconds).
    pub fn master_adver_interval_cs(&self) -> u16 {
        self.master_adver_interval_cs
    }

    /// The earliest pending timer; the shell feeds [`Input::Timer`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.adver_timer, self.master_down_timer, self.announce_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Skew_Time (RFC 9568 6.1): ((256 - Priority) * Master_Adver_Interval) /
    /// 256, so that the highest-priority Backup fires first.
    pub fn skew_time(&self) -> Duration {
        skew_time(self.master_adver_interval_cs, self.priority)
    }

    /// Master_Down_Interval (RFC 9568 6.1): 3 * Master_Adver_Interval +
    /// Skew_Time.
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.master_adver_interval_cs, self.priority)
    }

    fn advertisement_interval(&self) -> Duration {
        Duration::from_micros(cs_to_us(self.params.advert_interval_cs))
    }

    /// Handles one input at `now` and returns what the shell must do.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state, input) {
            // RFC 9568 6.4.1: Initialize waits for Startup only.
            (State::Initialize, Input::Startup) => {
                self.preempt_after = Some(now + self.params.preempt_delay);
                if self.priority == PRIORITY_OWNER && self.can_send {
                    self.become_master(now, Why::Owner, &mut out);
                } else {
                    // A router that cannot send waits as a Backup with its
                    // Master_Down_Timer stopped: it listens, and its
                    // timer starts once its adverts can leave.
                    self.master_adver_interval_cs = self.params.advert_interval_cs;
                    self.arm_master_down(now, self.master_down_interval());
                    self.transition(State::Backup, Why::Startup, &mut out);
                }
            }
            (State::Initialize, Input::Priority(p)) => self.priority = p,
            (State::Initialize, Input::CanSend(c)) => self.can_send = c,
            (
                State::Initialize,
                Input::Shutdown | Input::Advert { .. } | Input::Timer | Input::Conflict { .. },
            ) => {}

            // RFC 9568 6.4.2, Backup.
            (State::Backup, Input::Shutdown) => {
                self.master_down_timer = None;
                self.transition(State::Initialize, Why::Shutdown, &mut out);
            }
            (State::Backup, Input::Timer) => {
                if expired(self.master_down_timer, now) {
                    let live_lower = self.lower_master.take().filter(|h| {
                        now.saturating_duration_since(h.at)
                            < master_down_interval(h.interval_cs, self.priority)
                    });
                    let why = if let Some(h) = live_lower {
                        Why::Preempt {
                            master: h.src,
                            priority: h.priority,
                        }
                    } else if self.master_left {
                        Why::MasterLeft
                    } else {
                        Why::MasterDown
                    };
                    self.become_master(now, why, &mut out);
                    if let Some(h) = live_lower {
                        self.preempted = Some((
                            h.src,
                            now + master_down_interval(h.interval_cs, self.priority),
                        ));
                    }
                }
            }
            (
                State::Backup,
                Input::Advert {
                    src,
                    priority,
                    max_adver_int_cs,
                },
            ) => {
                if priority == PRIORITY_LEAVING {
                    // The Active Router is leaving: take over after our
                    // skew time only, the highest priority first.
                    self.arm_master_down(now, self.skew_time());
                    self.master_left = true;
                } else if !self.preempting(now) || priority >= self.priority {
                    self.master_adver_interval_cs = max_adver_int_cs;
                    self.arm_master_down(now, self.master_down_interval());
                    self.master_left = false;
                } else {
                    // Preemption: discard, and let Master_Down_Timer fire
                    // so that we take over; remember it was alive.
                    self.lower_master = Some(Heard {
                        src,
                        priority,
                        interval_cs: max_adver_int_cs,
                        at: now,
                    });
                }
            }
            (State::Backup, Input::Priority(p)) => {
                // The skew follows the new priority from the next
                // advertisement on (6.1 defines it from Priority).
                self.priority = p;
                if p == PRIORITY_OWNER && self.can_send {
                    self.become_master(now, Why::Owner, &mut out);
                }
            }
            (State::Backup, Input::CanSend(c)) => {
                if c != self.can_send {
                    self.can_send = c;
                    if !c {
                        self.master_down_timer = None;
                    } else if self.priority == PRIORITY_OWNER {
                        self.become_master(now, Why::Owner, &mut out);
                    } else {
                        // RFC 9568 6.4.2 measures Master_Down_Interval
                        // without hearing the Active Router; it counts
                        // only once our own advertisements can answer, so
                        // a full interval from now.
                        self.master_left = false;
                        self.arm_master_down(now, self.master_down_interval());
                    }
                }
            }
            (State::Backup, Input::Startup | Input::Conflict { .. }) => {}

            // RFC 9568 6.4.3, Active.
            (State::Master, Input::Timer) => {
                if expired(self.adver_timer, now) {
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.adver_timer = Some(now + self.advertisement_interval());
                }
                if expired(self.announce_at, now) {
                    out.push(Action::Announce);
                    self.announces_left = self.announces_left.saturating_sub(1);
                    self.schedule_announce(now);
                }
            }
            (State::Master, Input::Shutdown) => {
                self.adver_timer = None;
                self.announce_at = None;
                out.push(Action::SendAdvert {
                    priority: PRIORITY_LEAVING,
                });
                self.leave_master(State::Initialize, Why::Shutdown, &mut out);
            }
            (
                State::Master,
                Input::Advert {
                    src,
                    priority,
                    max_adver_int_cs,
                },
            ) => {
                if priority == PRIORITY_LEAVING {
                    // A router leaving while we are Active: assert the role so
                    // the Backups do not take over after their skew time.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.adver_timer = Some(now + self.advertisement_interval());
                } else if priority > self.priority
                    || (priority == self.priority && src > self.params.primary_addr)
                {
                    let why = if self.rival_seen {
                        out.push(Action::SplitBrain {
                            peer: Peer::Router {
                                addr: src,
                                priority,
                            },
                            won: false,
                        });
                        Why::Outranked { by: src, priority }
                    } else {
                        Why::Preempted { by: src, priority }
                    };
                    // Beyond the RFC (keepalived's
                    // vrrp_higher_prio_send_advert): one advertisement at our
                    // lower priority before stepping down, so that after a
                    // partition the winner learns there were two masters and
                    // re-announces. Otherwise, when its advertisement reaches
                    // us first, the clients' last gratuitous ARP is ours and
                    // they keep sending to a node without the VIP. After a
                    // preemption it reaches the winner within its handover
                    // window and counts nothing there.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.adver_timer = None;
                    self.announce_at = None;
                    self.master_adver_interval_cs = max_adver_int_cs;
                    self.master_down_timer = Some(now + self.master_down_interval());
                    self.leave_master(State::Backup, why, &mut out);
                } else {
                    // RFC 9568 6.4.3: a lower-priority advertisement is
                    // answered at once, so the other router learns of us
                    // without waiting an interval. From the master we just
                    // preempted it is the handover; from anyone else a
                    // split brain, and the winner re-announces.
                    let handover = self
                        .preempted
                        .is_some_and(|(addr, until)| addr == src && now < until);
                    if !handover {
                        self.rival_seen = true;
                        out.push(Action::SplitBrain {
                            peer: Peer::Router {
                                addr: src,
                                priority,
                            },
                            won: true,
                        });
                    }
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    self.adver_timer = Some(now + self.advertisement_interval());
                    if !handover {
                        self.restart_announces(now, &mut out);
                    }
                }
            }
            (State::Master, Input::Priority(p)) => {
                let fell = p < self.priority;
                self.priority = p;
                if fell {
                    // We can serve less well than when we won: hand over with
                    // priority 0 so a Backup takes over after its skew time,
                    // preemption or not. If nobody does, our Master_Down_Timer
                    // brings the VIP back to us.
                    self.adver_timer = None;
                    self.announce_at = None;
                    out.push(Action::SendAdvert {
                        priority: PRIORITY_LEAVING,
                    });
                    self.master_adver_interval_cs = self.params.advert_interval_cs;
                    self.master_down_timer = Some(now + self.master_down_interval());
                    self.leave_master(State::Backup, Why::StepDown { priority: p }, &mut out);
                }
            }
            (State::Master, Input::Conflict { mac }) => {
                self.rival_seen = true;
                out.push(Action::SplitBrain {
                    peer: Peer::Mac(mac),
                    won: true,
                });
                // The other holder's gratuitous ARPs come in bursts: answer
                // the first, and let a burst already running answer the rest.
                if self.announces_left == 0 {
                    self.restart_announces(now, &mut out);
                }
            }
            (State::Master, Input::CanSend(c)) => {
                self.can_send = c;
                if !c {
                    // RFC 9568 6.4.3 has the Active Router advertise every
                    // interval; one that cannot is replaced by a Backup
                    // after its Master_Down_Interval while still holding
                    // the VIP. Step down (no priority 0: it could not leave
                    // either); our own timer waits until we can send again.
                    self.adver_timer = None;
                    self.announce_at = None;
                    self.master_adver_interval_cs = self.params.advert_interval_cs;
                    self.master_down_timer = None;
                    self.leave_master(State::Backup, Why::CannotSend, &mut out);
                }
            }
            (State::Master, Input::Startup) => {}
        }
        out
    }

    /// Starts the Master_Down_Timer for `after`, only while our
    /// advertisements can leave ([`Input::CanSend`]).
    fn arm_master_down(&mut self, now: Instant, after: Duration) {
        self.master_down_timer = self.can_send.then(|| now + after);
    }

    /// Preempt_Mode, once the preempt delay after startup has passed.
    fn preempting(&self, now: Instant) -> bool {
        self.params.preempt && self.preempt_after.is_none_or(|t| now >= t)
    }

    fn become_master(&mut self, now: Instant, why: Why, out: &mut Vec<Action>) {
        self.master_down_timer = None;
        self.master_left = false;
        self.lower_master = None;
        self.preempted = None;
        self.rival_seen = false;
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::AddVips);
        self.adver_timer = Some(now + self.advertisement_interval());
        self.transition(State::Master, why, out);
        self.restart_announces(now, out);
    }

    fn leave_master(&mut self, to: State, why: Why, out: &mut Vec<Action>) {
        out.push(Action::RemoveVips);
        self.transition(to, why, out);
    }

    /// One announcement now, `announce_count - 1` more at the interval, then
    /// the periodic refresh.
    fn restart_announces(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Announce);
        self.announces_left = self.params.announce_count.saturating_sub(1);
        self.schedule_announce(now);
    }

    fn schedule_announce(&mut self, now: Instant) {
        self.announce_at = if self.announces_left > 0 {
            Some(now + self.params.announce_interval)
        } else if !self.params.announce_refresh.is_zero() {
            Some(now + self.params.announce_refresh)
        } else {
            None
        };
    }

    fn transition(&mut self, to: State, why: Why, out: &mut Vec<Action>) {
        out.push(Action::Transition {
            from: self.state,
            to,
            why,
        });
        self.state = to;
    }
}

/// Skew_Time (RFC 9568 6.1) of a Backup with `priority` behind a master
/// advertising every `master_adver_interval_cs`.
pub fn skew_time(master_adver_interval_cs: u16, priority: u8) -> Duration {
    let us = (256 - u64::from(priority)) * cs_to_us(master_adver_interval_cs) / 256;
    Duration::from_micros(us)
}

/// Master_Down_Interval (RFC 9568 6.1): how long a Backup with `priority`
/// waits without hearing a master that advertises every
/// `master_adver_interval_cs` before it declares that master down.
pub fn master_down_interval(master_adver_interval_cs: u16, priority: u8) -> Duration {
    Duration::from_micros(3 * cs_to_us(master_adver_interval_cs))
        + skew_time(master_adver_interval_cs, priority)
}

fn expired(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|t| now >= t)
}

fn cs_to_us(cs: u16) -> u64 {
    u64::from(cs) * 10_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const US: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    const LOWER_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const HIGHER_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));

    fn params(priority: u8) -> Params {
        Params {
            vrid: 51,
            priority,
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
            priority,
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
        let mut m = Machine::new(params(PRIORITY_OWNER));
        let a = m.handle(t0, Input::Startup);
        assert_eq!(
            a[..3],
            [
                Action::SendAdvert { priority: 255 },
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
        assert!(m.handle(t0, Input::Priority(40)).is_empty());
        assert_eq!(m.priority(), 40);
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
                Action::SendAdvert { priority: 100 },
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
                priority: 150,
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
        assert!(m.handle(t0, Input::Priority(200)).is_empty());
        assert_eq!(m.skew_time(), Duration::from_micros(21_875)); // 56 * 100 ms / 256
        let a = m.handle(t0, Input::Priority(PRIORITY_OWNER));
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
        assert_eq!(a[0], Action::SendAdvert { priority: 150 });
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
        let mut m = Machine::new(params(PRIORITY_OWNER));
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
        assert_eq!(a[0], Action::SendAdvert { priority: 100 });
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
                Action::SendAdvert { priority: 0 },
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
        assert_eq!(a[0], Action::SendAdvert { priority: 100 });
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
                priority: 101
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
                    priority: 150
                },
                won: false
            }));
            assert!(a.contains(&Action::Transition {
                from: State::Master,
                to: State::Backup,
                why: Why::Outranked {
                    by: LOWER_ADDR,
                    priority: 150
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
                    priority: 100
                }
            }),
            "{a:?}"
        );
        // Its advert in flight and its last one as it yields: the handover,
        // answered but neither a split brain nor a new announcement burst.
        let a = m.handle(due + ms(5), advert(HIGHER_ADDR, 100));
        assert_eq!(a, [Action::SendAdvert { priority: 150 }]);
        // Still advertising after its Master_Down_Interval: it does not hear
        // us, a split brain.
        let late = due + master_down_interval(10, 150) + ms(1);
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
        assert!(a.contains(&Action::SendAdvert { priority: 100 }));
        assert!(a.contains(&Action::Announce), "the winner re-announces");
        assert!(a.contains(&Action::SplitBrain {
            peer: Peer::Router {
                addr: LOWER_ADDR,
                priority: 100
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
        assert!(a.contains(&Action::SendAdvert { priority: 150 }));
        // The advert timer restarts from the answer.
        let a = m.handle(t + ms(100), Input::Timer);
        assert!(
            !a.iter().any(|a| matches!(a, Action::SendAdvert { .. })),
            "{a:?}"
        );
        let a = m.handle(now + ms(100), Input::Timer);
        assert!(a.contains(&Action::SendAdvert { priority: 150 }));
    }

    #[test]
    fn master_answers_priority_zero_and_stays() {
        let t0 = Instant::now();
        let (mut m, t) = master(100, t0);
        let a = m.handle(t, advert(HIGHER_ADDR, 0));
        assert_eq!(a, [Action::SendAdvert { priority: 100 }]);
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn master_priority_fall_steps_down_with_priority_zero() {
        let t0 = Instant::now();
        let (mut m, t) = master(150, t0);
        let a = m.handle(t, Input::Priority(90));
        assert_eq!(
            a,
            [
                Action::SendAdvert { priority: 0 },
                Action::RemoveVips,
                Action::Transition {
                    from: State::Master,
                    to: State::Backup,
                    why: Why::StepDown { priority: 90 }
                }
            ]
        );
        // Nobody else: our own Master_Down_Timer brings the VIP back.
        let d = m.next_deadline().expect("down timer");
        assert_eq!(d, t + m.master_down_interval());
        let a = m.handle(d, Input::Timer);
        assert!(a.contains(&Action::SendAdvert { priority: 90 }));
        assert_eq!(m.state(), State::Master);
    }

    #[test]
    fn master_priority_rise_just_advertises_higher() {
        let t0 = Instant::now();
        let (mut m, t) = master(100, t0);
        assert!(m.handle(t, Input::Priority(120)).is_empty());
        let a = m.handle(t + ms(100), Input::Timer);
        assert!(a.contains(&Action::SendAdvert { priority: 120 }));
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
                        queue.push((other, advert(src, priority)));
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
}
