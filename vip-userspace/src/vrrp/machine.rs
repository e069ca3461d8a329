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

use super::{Priority, Vrid};
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

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
    pub vrid: Vrid,
    /// Configured priority, 1..=255 (255: the address owner).
    pub priority: Priority,
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
        priority: Priority,
        max_adver_int_cs: u16,
    },
    /// The shell's clock reached [`Machine::next_deadline`].
    Timer,
    /// The effective priority changed (priority tracking): 1..=255.
    Priority(Priority),
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
        priority: Priority,
    },
    /// A higher priority (or equal priority, higher address) Active Router
    /// was heard (6.4.3) and no other master was met during this
    /// mastership: a preemption of this node.
    Preempted {
        by: IpAddr,
        priority: Priority,
    },
    /// As [`Why::Preempted`], but this mastership met another master (its
    /// adverts or its MAC claiming the VIP): a split brain ending.
    Outranked {
        by: IpAddr,
        priority: Priority,
    },
    /// Our effective priority fell and we do not preempt (so neither, we
    /// assume, does the group): hand over with priority 0.
    StepDown {
        priority: Priority,
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
        priority: Priority,
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
    Router { addr: IpAddr, priority: Priority },
    Mac([u8; 6]),
}

/// One virtual router.
#[derive(Debug, Clone)]
pub struct Machine {
    params: Params,
    /// The state, with the timers and memories only it has.
    phase: Phase,
    /// Effective priority (configured minus tracking weights).
    priority: Priority,
    /// Master_Adver_Interval (6.1): learned from the Active Router.
    master_adver_interval_cs: u16,
    /// No preemption before this instant (preempt delay after startup).
    preempt_after: Option<Instant>,
    /// Advertisements can leave ([`Input::CanSend`]).
    can_send: bool,
}

/// A [`State`] with its deadlines and what it remembers inside the
/// variant (as vrrp-rs's `router.rs` keeps them): a timer cannot outlive
/// the state that runs it, and a new state starts with fresh ones.
#[derive(Debug, Clone)]
enum Phase {
    Initialize,
    Backup(Backup),
    Master(Master),
}

impl Phase {
    fn state(&self) -> State {
        match self {
            Phase::Initialize => State::Initialize,
            Phase::Backup(_) => State::Backup,
            Phase::Master(_) => State::Master,
        }
    }
}

/// RFC 9568 6.4.2, Backup.
#[derive(Debug, Clone, Default)]
struct Backup {
    /// Master_Down_Timer; `None` while our advertisements cannot leave.
    master_down: Option<Instant>,
    /// The timer runs for a skew time after a priority-0 advertisement
    /// (for the reason given on takeover).
    master_left: bool,
    /// The last advert of a lower-priority master we discarded to preempt
    /// it.
    lower_master: Option<Heard>,
}

impl Backup {
    fn until(master_down: Option<Instant>) -> Backup {
        Backup {
            master_down,
            ..Backup::default()
        }
    }
}

/// RFC 9568 6.4.3, Active.
#[derive(Debug, Clone)]
struct Master {
    /// Adver_Timer.
    adver: Instant,
    /// The next announcement (none: no refresh configured).
    announce_at: Option<Instant>,
    announces_left: u32,
    /// The master we preempted, and until when its adverts are the
    /// handover rather than a split brain.
    preempted: Option<(IpAddr, Instant)>,
    /// Another master was met during this mastership.
    rival_seen: bool,
}

/// One advertisement, as remembered.
#[derive(Debug, Clone, Copy)]
struct Heard {
    src: IpAddr,
    priority: Priority,
    interval_cs: u16,
    at: Instant,
}

impl Machine {
    pub fn new(params: Params) -> Machine {
        Machine {
            priority: params.priority,
            master_adver_interval_cs: params.advert_interval_cs,
            params,
            phase: Phase::Initialize,
            preempt_after: None,
            can_send: true,
        }
    }

    pub fn state(&self) -> State {
        self.phase.state()
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The effective priority advertised while Active.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// Master_Adver_Interval as last learned (centiseconds).
    pub fn master_adver_interval_cs(&self) -> u16 {
        self.master_adver_interval_cs
    }

    /// The earliest pending timer; the shell feeds [`Input::Timer`] then.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Initialize => None,
            Phase::Backup(b) => b.master_down,
            Phase::Master(m) => Some(m.announce_at.map_or(m.adver, |a| a.min(m.adver))),
        }
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
        self.phase = match std::mem::replace(&mut self.phase, Phase::Initialize) {
            Phase::Initialize => self.initialize(now, input, &mut out),
            Phase::Backup(b) => self.backup(b, now, input, &mut out),
            Phase::Master(m) => self.master(m, now, input, &mut out),
        };
        out
    }

    fn initialize(&mut self, now: Instant, input: Input, out: &mut Vec<Action>) -> Phase {
        match input {
            // RFC 9568 6.4.1: Initialize waits for Startup only.
            Input::Startup => {
                self.preempt_after = Some(now + self.params.preempt_delay);
                if self.priority == Priority::OWNER && self.can_send {
                    return self.become_master(State::Initialize, now, Why::Owner, out);
                }
                // A router that cannot send waits as a Backup with its
                // Master_Down_Timer stopped: it listens, and its timer
                // starts once its adverts can leave.
                self.master_adver_interval_cs = self.params.advert_interval_cs;
                let b = Backup::until(self.master_down_at(now, self.master_down_interval()));
                transition(State::Initialize, Phase::Backup(b), Why::Startup, out)
            }
            Input::Priority(p) => {
                self.priority = p;
                Phase::Initialize
            }
            Input::CanSend(c) => {
                self.can_send = c;
                Phase::Initialize
            }
            Input::Shutdown | Input::Advert { .. } | Input::Timer | Input::Conflict { .. } => {
                Phase::Initialize
            }
        }
    }

    fn backup(
        &mut self,
        mut b: Backup,
        now: Instant,
        input: Input,
        out: &mut Vec<Action>,
    ) -> Phase {
        match input {
            // RFC 9568 6.4.2, Backup.
            Input::Shutdown => {
                return transition(State::Backup, Phase::Initialize, Why::Shutdown, out);
            }
            Input::Timer => {
                if expired(b.master_down, now) {
                    let live_lower = b.lower_master.take().filter(|h| {
                        now.saturating_duration_since(h.at)
                            < master_down_interval(h.interval_cs, self.priority)
                    });
                    let why = if let Some(h) = live_lower {
                        Why::Preempt {
                            master: h.src,
                            priority: h.priority,
                        }
                    } else if b.master_left {
                        Why::MasterLeft
                    } else {
                        Why::MasterDown
                    };
                    let mut phase = self.become_master(State::Backup, now, why, out);
                    if let (Some(h), Phase::Master(m)) = (live_lower, &mut phase) {
                        m.preempted = Some((
                            h.src,
                            now + master_down_interval(h.interval_cs, self.priority),
                        ));
                    }
                    return phase;
                }
            }
            Input::Advert {
                src,
                priority,
                max_adver_int_cs,
            } => {
                if priority == Priority::LEAVING {
                    // The Active Router is leaving: take over after our
                    // skew time only, the highest priority first.
                    b.master_down = self.master_down_at(now, self.skew_time());
                    b.master_left = true;
                } else if !self.preempting(now) || priority >= self.priority {
                    self.master_adver_interval_cs = max_adver_int_cs;
                    b.master_down = self.master_down_at(now, self.master_down_interval());
                    b.master_left = false;
                } else {
                    // Preemption: discard, and let Master_Down_Timer fire
                    // so that we take over; remember it was alive.
                    b.lower_master = Some(Heard {
                        src,
                        priority,
                        interval_cs: max_adver_int_cs,
                        at: now,
                    });
                }
            }
            Input::Priority(p) => {
                // The skew follows the new priority from the next
                // advertisement on (6.1 defines it from Priority).
                self.priority = p;
                if p == Priority::OWNER && self.can_send {
                    return self.become_master(State::Backup, now, Why::Owner, out);
                }
            }
            Input::CanSend(c) => {
                if c != self.can_send {
                    self.can_send = c;
                    if !c {
                        b.master_down = None;
                    } else if self.priority == Priority::OWNER {
                        return self.become_master(State::Backup, now, Why::Owner, out);
                    } else {
                        // RFC 9568 6.4.2 measures Master_Down_Interval
                        // without hearing the Active Router; it counts
                        // only once our own advertisements can answer, so
                        // a full interval from now.
                        b.master_left = false;
                        b.master_down = self.master_down_at(now, self.master_down_interval());
                    }
                }
            }
            Input::Startup | Input::Conflict { .. } => {}
        }
        Phase::Backup(b)
    }

    fn master(
        &mut self,
        mut m: Master,
        now: Instant,
        input: Input,
        out: &mut Vec<Action>,
    ) -> Phase {
        match input {
            // RFC 9568 6.4.3, Active.
            Input::Timer => {
                if now >= m.adver {
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    m.adver = now + self.advertisement_interval();
                }
                if expired(m.announce_at, now) {
                    out.push(Action::Announce);
                    m.announces_left = m.announces_left.saturating_sub(1);
                    m.announce_at = self.next_announce(m.announces_left, now);
                }
            }
            Input::Shutdown => {
                out.push(Action::SendAdvert {
                    priority: Priority::LEAVING,
                });
                return leave_master(Phase::Initialize, Why::Shutdown, out);
            }
            Input::Advert {
                src,
                priority,
                max_adver_int_cs,
            } => {
                if priority == Priority::LEAVING {
                    // A router leaving while we are Active: assert the role so
                    // the Backups do not take over after their skew time.
                    out.push(Action::SendAdvert {
                        priority: self.priority,
                    });
                    m.adver = now + self.advertisement_interval();
                } else if priority > self.priority
                    || (priority == self.priority && src > self.params.primary_addr)
                {
                    let why = if m.rival_seen {
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
                    self.master_adver_interval_cs = max_adver_int_cs;
                    let b = Backup::until(Some(now + self.master_down_interval()));
                    return leave_master(Phase::Backup(b), why, out);
                } else {
                    // RFC 9568 6.4.3: a lower-priority advertisement is
                    // answered at once, so the other router learns of us
                    // without waiting an interval. From the master we just
                    // preempted it is the handover; from anyone else a
                    // split brain, and the winner re-announces.
                    let handover = m
                        .preempted
                        .is_some_and(|(addr, until)| addr == src && now < until);
                    if !handover {
                        m.rival_seen = true;
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
                    m.adver = now + self.advertisement_interval();
                    if !handover {
                        self.restart_announces(&mut m, now, out);
                    }
                }
            }
            Input::Priority(p) => {
                let fell = p < self.priority;
                self.priority = p;
                if fell && self.params.preempt {
                    // We can serve less well than when we won, but we may
                    // still outrank every Backup, and only they know their
                    // priorities. Tell them at once, and stay: a Backup that
                    // now outranks us preempts (RFC 9568 6.4.2), as it would
                    // under keepalived. Leaving with priority 0 here made a
                    // lower Backup take the VIP and lose it again one
                    // Master_Down_Interval later to our preemption: two
                    // moves, and new connections refused twice, for nothing.
                    out.push(Action::SendAdvert { priority: p });
                    m.adver = now + self.advertisement_interval();
                } else if fell {
                    // Without preemption nobody would ever take over from a
                    // master that cannot serve: hand over with priority 0 so
                    // a Backup takes over after its skew time. If nobody
                    // does, our Master_Down_Timer brings the VIP back to us.
                    out.push(Action::SendAdvert {
                        priority: Priority::LEAVING,
                    });
                    self.master_adver_interval_cs = self.params.advert_interval_cs;
                    let b = Backup::until(Some(now + self.master_down_interval()));
                    return leave_master(Phase::Backup(b), Why::StepDown { priority: p }, out);
                }
            }
            Input::Conflict { mac } => {
                m.rival_seen = true;
                out.push(Action::SplitBrain {
                    peer: Peer::Mac(mac),
                    won: true,
                });
                // The other holder's gratuitous ARPs come in bursts: answer
                // the first, and let a burst already running answer the rest.
                if m.announces_left == 0 {
                    self.restart_announces(&mut m, now, out);
                }
            }
            Input::CanSend(c) => {
                self.can_send = c;
                if !c {
                    // RFC 9568 6.4.3 has the Active Router advertise every
                    // interval; one that cannot is replaced by a Backup
                    // after its Master_Down_Interval while still holding
                    // the VIP. Step down (no priority 0: it could not leave
                    // either); our own timer waits until we can send again.
                    self.master_adver_interval_cs = self.params.advert_interval_cs;
                    return leave_master(Phase::Backup(Backup::until(None)), Why::CannotSend, out);
                }
            }
            Input::Startup => {}
        }
        Phase::Master(m)
    }

    /// When a Master_Down_Timer started now for `after` fires: never while
    /// our advertisements cannot leave ([`Input::CanSend`]).
    fn master_down_at(&self, now: Instant, after: Duration) -> Option<Instant> {
        self.can_send.then(|| now + after)
    }

    /// Preempt_Mode, once the preempt delay after startup has passed.
    fn preempting(&self, now: Instant) -> bool {
        self.params.preempt && self.preempt_after.is_none_or(|t| now >= t)
    }

    fn become_master(
        &mut self,
        from: State,
        now: Instant,
        why: Why,
        out: &mut Vec<Action>,
    ) -> Phase {
        out.push(Action::SendAdvert {
            priority: self.priority,
        });
        out.push(Action::AddVips);
        let mut m = Master {
            adver: now + self.advertisement_interval(),
            announce_at: None,
            announces_left: 0,
            preempted: None,
            rival_seen: false,
        };
        out.push(Action::Transition {
            from,
            to: State::Master,
            why,
        });
        self.restart_announces(&mut m, now, out);
        Phase::Master(m)
    }

    /// One announcement now, `announce_count - 1` more at the interval, then
    /// the periodic refresh.
    fn restart_announces(&self, m: &mut Master, now: Instant, out: &mut Vec<Action>) {
        out.push(Action::Announce);
        m.announces_left = self.params.announce_count.saturating_sub(1);
        m.announce_at = self.next_announce(m.announces_left, now);
    }

    fn next_announce(&self, left: u32, now: Instant) -> Option<Instant> {
        if left > 0 {
            Some(now + self.params.announce_interval)
        } else if !self.params.announce_refresh.is_zero() {
            Some(now + self.params.announce_refresh)
        } else {
            None
        }
    }
}

/// Out of Active into `to`: the VIPs go first.
fn leave_master(to: Phase, why: Why, out: &mut Vec<Action>) -> Phase {
    out.push(Action::RemoveVips);
    transition(State::Master, to, why, out)
}

fn transition(from: State, to: Phase, why: Why, out: &mut Vec<Action>) -> Phase {
    out.push(Action::Transition {
        from,
        to: to.state(),
        why,
    });
    to
}

/// Skew_Time (RFC 9568 6.1) of a Backup with `priority` behind a master
/// advertising every `master_adver_interval_cs`.
pub fn skew_time(master_adver_interval_cs: u16, priority: Priority) -> Duration {
    let us = (256 - u64::from(priority.0)) * cs_to_us(master_adver_interval_cs) / 256;
    Duration::from_micros(us)
}

/// Master_Down_Interval (RFC 9568 6.1): how long a Backup with `priority`
/// waits without hearing a master that advertises every
/// `master_adver_interval_cs` before it declares that master down.
pub fn master_down_interval(master_adver_interval_cs: u16, priority: Priority) -> Duration {
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
mod tests;
