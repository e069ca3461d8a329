//! One implementation's lab (vipd, or keepalived + HAProxy) and the phases
//! it goes through: failures caused, holders awaited, resets.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Result;
use vip_userspace::dataplane::kernel::AttachMode;

use super::client::{PhaseResult, Poller, holds_vip, outage};
use super::{
    FAST_ADVERT_MS, Holder, Impl, LBS, POLL_TIMEOUT, Phase, RECIPE_PRIOS, SETTLE, STEADY, STEP,
    Scenario, TAIL, VRID,
};
use crate::attempt;
use crate::certs::TestPki;
use crate::keepalived::Keepalived;
use crate::kubeadm_ha::{INSTANCE, RecipeKeepalived, haproxy_cfg, write_check_script};
use crate::netns::{Lab, NODE_IF, Proc, VIP_V4};
use crate::scenario::{BACKENDS, Fwd, LbLab, LbOptions, PORT, flood_off, start_standins};
use crate::standin::{StandinHandle, client_config};
use crate::vrrpd::{block_vrrp_to, set_link};

/// The keepalived + HAProxy pair of one lab.
pub(super) struct Pair {
    // Field order is drop order: processes before the lab.
    pub(super) keepalived: [Option<Keepalived>; 2],
    pub(super) haproxy: Vec<Proc>,
    pub(super) _standins: Vec<StandinHandle>,
    /// The CA of the stand-ins' certificates, for the client.
    pub(super) ca_pem: String,
    pub(super) advert_int_ms: Option<u32>,
    pub(super) check_script: String,
    pub(super) lab: Lab,
}

impl Pair {
    fn start(which: Impl) -> Pair {
        let pki = TestPki::new();
        let mut nodes = vec!["client", LBS[0]];
        nodes.extend(BACKENDS);
        nodes.push(LBS[1]);
        // The same nodes and addresses as `LbLab`.
        let lab = Lab::new(&format!("fo-{}", short(which)), &nodes);
        for lb in LBS {
            // As in `LbLab`, so the two labs' switches behave alike.
            flood_off(&lab, lb);
            // The lab turns forwarding on everywhere; an LB of the recipe is
            // a proxy, not a router (Debian's default is off). With it on, a
            // backup that lost the VIP would route a client's stale-ARP
            // traffic on to the master and hide the outage a real one has.
            lab.sh(lb, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        }
        let standins = start_standins(&lab, &pki);
        let backends: Vec<(String, SocketAddr)> = BACKENDS
            .iter()
            .map(|be| {
                (
                    (*be).to_string(),
                    SocketAddr::new(IpAddr::V4(lab.node(be).ipv4), PORT),
                )
            })
            .collect();
        let cfg = lab.dir().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_cfg(PORT, &backends))
            .unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
        let cfg = cfg.to_str().expect("utf-8 lab dir").to_string();
        let haproxy: Vec<Proc> = LBS
            .iter()
            .map(|lb| {
                // -db: foreground, so the lab owns the process.
                let p = lab.spawn(lb, "haproxy", &["-db", "-f", &cfg], &[]);
                lab.wait_tcp(
                    lb,
                    SocketAddr::new(IpAddr::V4(lab.node(lb).ipv4), PORT),
                    STEP,
                );
                p
            })
            .collect();
        let script = lab.dir().join("check_apiserver.sh");
        write_check_script(&script, PORT);
        Pair {
            keepalived: [None, None],
            haproxy,
            _standins: standins,
            ca_pem: pki.ca_pem(),
            advert_int_ms: match which {
                Impl::KaTuned(ms) => Some(ms),
                _ => None,
            },
            check_script: script.to_str().expect("utf-8 lab dir").to_string(),
            lab,
        }
    }

    fn start_keepalived(&mut self, i: usize) {
        let conf = RecipeKeepalived {
            master: i == 0,
            priority: RECIPE_PRIOS[i],
            advert_int_ms: self.advert_int_ms,
            interface: NODE_IF.to_string(),
            vrid: VRID,
            vip: VIP_V4,
            check_script: self.check_script.clone(),
        };
        // The old one, if any, is gone first (SIGTERM on drop).
        drop(self.keepalived[i].take());
        self.keepalived[i] = Some(Keepalived::start_text(
            &self.lab,
            LBS[i],
            INSTANCE,
            &conf.render(),
        ));
    }
}

fn short(which: Impl) -> &'static str {
    match which {
        Impl::Vipd(Fwd::Dsr, _) => "vipd",
        Impl::Vipd(Fwd::Nat, _) => "vnat",
        Impl::KaDefault => "kadef",
        Impl::KaTuned(_) => "katun",
    }
}

pub(super) enum Stack {
    Vipd(Box<LbLab>),
    Pair(Box<Pair>),
}

/// One implementation's lab and what it measured.
pub(super) struct Bed {
    pub(super) which: Impl,
    // Field order is drop order: the poller before the lab.
    pub(super) poller: Poller,
    pub(super) stack: Stack,
    /// Outages in ms, by `Phase::index`.
    pub(super) samples: [Vec<f64>; 5],
    /// From the failure to the expected VIP holder, in ms, by
    /// `Phase::index`: the protocol's part, which a client may not notice.
    pub(super) takeovers: [Vec<f64>; 5],
    pub(super) failures: Vec<String>,
    pub(super) broken: bool,
}

impl Bed {
    pub(super) fn new(which: Impl) -> Result<Bed, String> {
        let mut stack = None;
        attempt(|| {
            stack = Some(match which {
                Impl::Vipd(fwd, ms) => Stack::Vipd(Box::new(LbLab::start_with(
                    &format!("fo-{}", short(which)),
                    &LbOptions {
                        second_lb: true,
                        // Mode nat as deployed with two LBs: SNAT to the
                        // VIP and the flows replicated, so the backup
                        // can answer for them.
                        sync: fwd == Fwd::Nat,
                        advert_ms: (ms != FAST_ADVERT_MS).then_some(ms),
                        ..LbOptions::new(AttachMode::Skb, fwd)
                    },
                ))),
                Impl::KaDefault | Impl::KaTuned(_) => Stack::Pair(Box::new(Pair::start(which))),
            });
        })?;
        let stack = stack.expect("set when attempt succeeded");
        let (client_ns, ca) = match &stack {
            Stack::Vipd(l) => (l.lab.node("client").ns.clone(), l.pki.ca_pem()),
            Stack::Pair(p) => (p.lab.node("client").ns.clone(), p.ca_pem.clone()),
        };
        Ok(Bed {
            which,
            poller: Poller::start(client_ns, client_config(&ca, None)),
            stack,
            samples: Default::default(),
            takeovers: Default::default(),
            failures: Vec::new(),
            broken: false,
        })
    }

    /// Failed repetitions of `phase` (as recorded by `measure`).
    pub(super) fn phase_failures(&self, phase: Phase) -> usize {
        let tag = format!(" {}: ", phase.name());
        self.failures.iter().filter(|f| f.contains(&tag)).count()
    }

    fn lab(&self) -> &Lab {
        match &self.stack {
            Stack::Vipd(l) => &l.lab,
            Stack::Pair(p) => &p.lab,
        }
    }

    fn start_daemon(&mut self, i: usize) {
        match &mut self.stack {
            Stack::Vipd(l) => l.respawn_vipd(LBS[i]),
            Stack::Pair(p) => p.start_keepalived(i),
        }
    }

    /// A crashed daemon: no priority 0, the VIP left on the interface, and
    /// (vipd) the pinned XDP program left forwarding, as after a real crash.
    fn kill_daemon(&self, i: usize) {
        match &self.stack {
            Stack::Vipd(l) => {
                let p = l.vipd_on(LBS[i]).expect("a vipd on each LB");
                p.signal(libc::SIGKILL);
                assert!(
                    p.wait_timeout(STEP).is_some(),
                    "vipd on {} survived SIGKILL",
                    LBS[i]
                );
            }
            Stack::Pair(p) => {
                if let Some(k) = &p.keepalived[i] {
                    k.kill9();
                }
            }
        }
    }

    /// Stops a daemon cleanly (SIGTERM, then SIGKILL after 2 s).
    fn stop_daemon(&mut self, i: usize) {
        match &mut self.stack {
            Stack::Vipd(l) => {
                if let Some(p) = l.vipd_on(LBS[i]) {
                    p.kill();
                }
            }
            Stack::Pair(p) => drop(p.keepalived[i].take()),
        }
    }

    fn holds(&self, i: usize) -> bool {
        holds_vip(&self.lab().node(LBS[i]).ns)
    }

    fn holder_is(&self, want: Holder) -> bool {
        match want {
            Holder::Backup => self.holds(1),
            Holder::MasterOnly => self.holds(0) && !self.holds(1),
        }
    }

    /// Waits until `want` holds; returns when it was first seen.
    fn wait_holder(&self, want: Holder, deadline: Duration) -> Result<Instant, String> {
        let start = Instant::now();
        loop {
            if self.holder_is(want) {
                return Ok(Instant::now());
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "VIP holder not {want:?} within {deadline:?} (lb: {}, lb2: {})",
                    self.holds(0),
                    self.holds(1)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// From any state: both daemons stopped, links up, VRRP flowing, no
    /// VIP anywhere, then lb's daemon started and holding the VIP, then
    /// lb2's.
    pub(super) fn reset(&mut self) -> Result<(), String> {
        self.poller.pause();
        attempt(|| {
            self.stop_daemon(1);
            self.stop_daemon(0);
            for n in LBS {
                set_link(self.lab(), n, true);
                // Fails harmlessly when no filter is there.
                let port = self.lab().node(n).switch_port.clone();
                let _ = self
                    .lab()
                    .try_switch_sh(&["tc", "qdisc", "del", "dev", &port, "clsact"]);
                if self.lab().has_addr(n, IpAddr::V4(VIP_V4)) {
                    self.lab().del_addr(n, &format!("{VIP_V4}/32"));
                }
            }
            self.start_daemon(0);
            self.lab().wait_addr(LBS[0], IpAddr::V4(VIP_V4), true, STEP);
            self.start_daemon(1);
        })
    }

    /// lb holds the VIP, lb2 does not, the client resolves the VIP to lb
    /// and its requests succeed. Starts the poller.
    fn wait_ready(&self) -> Result<(), String> {
        self.poller.resume();
        let since = Instant::now();
        self.wait_holder(Holder::MasterOnly, STEP)?;
        attempt(|| {
            let mac = self.lab().node(LBS[0]).mac_string();
            self.lab()
                .wait_neighbour("client", IpAddr::V4(VIP_V4), &mac, STEP);
        })?;
        // lb2 must be a running backup, not merely without the VIP: give
        // its daemon time to have heard lb (a fresh one starts in backup).
        self.poller.wait_steady(since, STEP)
    }

    /// Causes `phase`'s failure with `event`, waits for it to settle and
    /// returns the client's outage and the takeover time (ms).
    fn phase(&mut self, phase: Phase, event: impl FnOnce(&mut Bed)) -> PhaseResult {
        attempt(|| event(self))?;
        let t0 = Instant::now();
        let settled = self.wait_holder(phase.settled(), SETTLE)?;
        self.poller.wait_steady(settled, STEADY)?;
        let tail = Instant::now();
        std::thread::sleep(TAIL);
        self.poller.wait_steady(tail, STEADY)?;
        let until = Instant::now();
        // Requests still in flight at `until` mostly end (fail) within this:
        // one step's bound.
        std::thread::sleep(POLL_TIMEOUT + Duration::from_millis(20));
        let takeover = (settled - t0).as_secs_f64() * 1000.0;
        Ok((outage(&self.poller.snapshot(), t0, until), takeover))
    }

    /// One repetition of `s`: its phases' outages, or the error of the
    /// first phase that failed (the later ones are not measured).
    pub(super) fn repetition(
        &mut self,
        s: Scenario,
        jitter: Duration,
    ) -> Vec<(Phase, PhaseResult)> {
        let mut out = Vec::new();
        if let Err(e) = self.wait_ready() {
            out.push((s.phases()[0], Err(format!("not ready: {e}"))));
            return out;
        }
        // A uniformly random point of lb's advert interval.
        std::thread::sleep(jitter);
        match s {
            Scenario::Kill => {
                out.push((Phase::Kill, self.phase(Phase::Kill, |b| b.kill_daemon(0))));
                if out[0].1.is_ok()
                    && let Err(e) = attempt(|| self.start_daemon(0))
                {
                    out[0].1 = Err(format!("restarting lb's daemon: {e}"));
                }
            }
            Scenario::Link => {
                let down = self.phase(Phase::LinkDown, |b| set_link(b.lab(), LBS[0], false));
                let ok = down.is_ok();
                out.push((Phase::LinkDown, down));
                if ok {
                    let up = self.phase(Phase::LinkUp, |b| set_link(b.lab(), LBS[0], true));
                    out.push((Phase::LinkUp, up));
                }
            }
            Scenario::Partition => {
                let split = self.phase(Phase::Split, |b| block_vrrp_to(b.lab(), &LBS));
                let ok = split.is_ok();
                out.push((Phase::Split, split));
                if ok {
                    let heal = self.phase(Phase::Heal, |b| {
                        crate::vrrpd::unblock_vrrp_to(b.lab(), &LBS);
                    });
                    out.push((Phase::Heal, heal));
                }
            }
        }
        self.poller.pause();
        out
    }

    /// [`Bed::repetition`] with its results kept: each phase's outage and
    /// takeover in `samples` and `takeovers`, each failure in `failures`
    /// (`run N phase: why`); after a failure the lab is reset, and marked
    /// broken if that fails too. Returns each phase's outage in ms or why
    /// it failed.
    pub(super) fn recorded(
        &mut self,
        run: usize,
        s: Scenario,
        jitter: Duration,
    ) -> Vec<(Phase, Result<f64, String>)> {
        let results: Vec<(Phase, Result<f64, String>)> = self
            .repetition(s, jitter)
            .into_iter()
            .map(|(phase, r)| {
                let r = r.map(|(o, takeover)| {
                    self.samples[phase.index()].push(o.ms);
                    self.takeovers[phase.index()].push(takeover);
                    o.ms
                });
                if let Err(e) = &r {
                    self.failures
                        .push(format!("run {run} {}: {e}", phase.name()));
                }
                (phase, r)
            })
            .collect();
        if results.iter().any(|(_, r)| r.is_err())
            && let Err(e) = self.reset()
        {
            eprintln!("{}: reset failed, no further runs: {e}", self.which.name());
            self.failures.push(format!("reset after run {run}: {e}"));
            self.broken = true;
        }
        results
    }
}
