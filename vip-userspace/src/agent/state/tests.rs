use std::path::Path;

use super::*;
use crate::agent::hold::{
    announce::{Announcing, Command as AnnounceCommand, Why},
    vrrp::{Command, Tracking},
};
use crate::vrrp::Priority;

/// Stacked dual-stack VRRP: priority 200, the default weights (XDP
/// detached 100, local apiserver 50).
const VRRP: &str = "
interface: eth0
vrrp:
  vrid: 1
  priority: 200
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
        local: true
      - address: 10.0.0.12
        mac: 02:00:00:00:00:12
  - vip: fd00::100
    mode: dsr
    backends:
      - address: fd00::11
        local: true
";

/// VRRP's second IPv4 backend, which reloads remove.
const BE2: &str = "      - address: 10.0.0.12\n        mac: 02:00:00:00:00:12\n";

fn cfg(text: &str) -> Config {
    Config::parse(Path::new("t.yaml"), text).expect("valid config")
}

fn stamp(secs: u64) -> Option<Stamp> {
    Some((SystemTime::UNIX_EPOCH + Duration::from_secs(secs), 100))
}

fn settings(text: &str) -> Settings {
    let config = cfg(text);
    Settings {
        snapshot: config
            .snapshot
            .as_ref()
            .map(|s| s.plan().expect("a valid snapshot section").schedule),
        config,
        config_path: PathBuf::from("/etc/vipd/vipd.yaml"),
        stamp: stamp(1),
        pinned: false,
        sync: None,
        welcome: None,
    }
}

/// Every backend up, the gate passing.
fn fine() -> Verdicts {
    Verdicts {
        local_ok: true,
        serving: true,
        gate_v4: None,
        gate_v6: None,
        generation: 1,
    }
}

fn fit(v: &Verdicts, xdp: bool) -> Fitness {
    Fitness {
        xdp_attached: xdp,
        local_ok: v.local_ok,
        serving: v.serving,
        gate_v4: v.gate_v4.clone(),
        gate_v6: v.gate_v6.clone(),
        sync_wait: None,
    }
}

/// A state past start-up (VRRP holder tracking) at `t0`, and VRRP's
/// tracking as the holder would run it.
fn running(s: Settings, t0: Instant) -> (AgentState, Tracking) {
    let mut a = AgentState::new(s);
    let fx = a.on(t0, Event::Started(fine()));
    assert_eq!(fx, vec![Effect::StartHolder(fit(&fine(), true))]);
    let mut t = Tracking::new(
        Priority(200),
        Default::default(),
        &[Family::V4, Family::V6],
        &fit(&fine(), true),
    );
    assert_eq!(
        t.fit(&fit(&fine(), true)),
        vec![Command::Priority(Priority(200))]
    );
    assert_eq!(
        a.on(t0, Event::HolderStarted { tracks: true }),
        vec![Effect::Ready]
    );
    (a, t)
}

/// The fitness the holder is told in these effects, if any.
fn told(fx: &[Effect]) -> Option<Fitness> {
    fx.iter().find_map(|e| match e {
        Effect::Fit(f) => Some(f.clone()),
        _ => None,
    })
}

#[test]
fn the_holder_takes_the_scheduled_snapshot_once_per_period() {
    use crate::snapshot::duty::{Outcome, Turn};
    let text = format!("{VRRP}snapshot:\n  interval: 100s\n  jitter: 0s\n");
    let t0 = Instant::now();
    let (mut a, _) = running(settings(&text), t0);
    let tick = |a: &mut AgentState, unix, holds: bool| {
        let turn = if holds { Turn::After(0) } else { Turn::No };
        a.on(t0, Event::SnapshotTick { unix, turn })
    };
    // A backup never takes one.
    assert_eq!(tick(&mut a, 1000, false), vec![]);
    // The master at the slot does, once.
    assert_eq!(tick(&mut a, 1001, true), vec![Effect::TakeSnapshot(10)]);
    assert_eq!(tick(&mut a, 1002, true), vec![], "one at a time");
    let done = |period, outcome, unix| Event::SnapshotDone {
        period,
        outcome,
        unix,
    };
    assert_eq!(a.on(t0, done(10, Outcome::Taken, 1003)), vec![]);
    assert_eq!(tick(&mut a, 1050, true), vec![], "period 10 is done");
    // Period 11: this node lost the election; the new master's claim
    // found the period taken by this one: no second snapshot.
    assert_eq!(tick(&mut a, 1100, true), vec![Effect::TakeSnapshot(11)]);
    assert_eq!(a.on(t0, done(11, Outcome::Elsewhere, 1100)), vec![]);
    assert_eq!(tick(&mut a, 1150, true), vec![]);
    // Without `snapshot:` the ticks do nothing.
    let (mut b, _) = running(settings(VRRP), t0);
    assert_eq!(tick(&mut b, 1001, true), vec![]);
}

#[test]
fn start_up_waits_for_the_first_certificate_round_then_the_holder() {
    let t0 = Instant::now();
    let mut a = AgentState::new(settings(VRRP));
    // Before start-up is done, ticks and verdicts do nothing: nothing
    // runs that they could move.
    assert_eq!(a.on(t0, Event::Second), vec![]);
    assert_eq!(a.on(t0, Event::Settled(fine())), vec![]);
    let mut v = fine();
    v.gate_v6 = Some("this node's apiserver lacks fd00::100".into());
    assert_eq!(
        a.on(t0, Event::Started(v.clone())),
        vec![Effect::StartHolder(fit(&v, true))],
        "the holder starts with the first round's verdicts"
    );
    assert_eq!(a.on(t0, Event::Second), vec![], "no holder yet");
    assert_eq!(
        a.on(t0, Event::HolderStarted { tracks: true }),
        vec![Effect::Ready]
    );
    assert_eq!(
        a.on(t0, Event::Second),
        vec![Effect::Upkeep, Effect::CheckXdp]
    );
    assert_eq!(
        a.on(t0, Event::Settled(v)),
        vec![],
        "nothing changed since the holder started"
    );
    assert_eq!(
        a.on(t0 + REFRESH_EVERY, Event::Settled(fine()))
            .into_iter()
            .filter(|e| *e == Effect::Refresh)
            .count(),
        1,
        "the status is rebuilt a second after ready"
    );
}

#[test]
fn without_tracking_xdp_is_not_read() {
    let t0 = Instant::now();
    let mut a = AgentState::new(settings(VRRP));
    a.on(t0, Event::Started(fine()));
    a.on(t0, Event::HolderStarted { tracks: false });
    assert_eq!(a.on(t0, Event::Second), vec![Effect::Upkeep]);
    let mut v = fine();
    v.local_ok = false;
    let fx = a.on(t0, Event::Settled(v));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Log(_))),
        "the VRRP priority lines are not logged without VRRP: {fx:?}"
    );
    assert!(told(&fx).is_some(), "the holder still hears of it: {fx:?}");
}

/// The first master: a node the gate refuses starts out of the
/// election for that family only, and joins once the gate passes.
#[test]
fn the_gate_holds_a_family_out_until_it_passes() {
    let t0 = Instant::now();
    let mut a = AgentState::new(settings(VRRP));
    let mut v = fine();
    v.gate_v4 = Some("no backend of 10.0.0.100:6443 has a certificate for it".into());
    let fx = a.on(t0, Event::Started(v.clone()));
    let Some(Effect::StartHolder(f0)) = fx.first() else {
        panic!("{fx:?}")
    };
    let mut t = Tracking::new(
        Priority(200),
        Default::default(),
        &[Family::V4, Family::V6],
        f0,
    );
    assert_eq!(
        t.fit(f0),
        vec![Command::Priority(Priority(200))],
        "started held: only the priority is sent"
    );
    a.on(t0, Event::HolderStarted { tracks: true });
    let fx = a.on(t0, Event::Settled(fine()));
    let f = told(&fx).expect("the holder hears the gate passes");
    assert_eq!(t.fit(&f), vec![Command::Hold(Family::V4, None)]);
    assert_eq!(a.on(t0, Event::Settled(fine())), vec![], "said once");
}

#[test]
fn priority_follows_the_xdp_attachment_and_the_local_apiserver() {
    let t0 = Instant::now();
    let (mut a, mut t) = running(settings(VRRP), t0);
    assert_eq!(
        a.on(t0, Event::Xdp(false)),
        vec![Effect::Log(Note::Xdp(false))]
    );
    assert_eq!(a.on(t0, Event::Xdp(false)), vec![], "logged once");
    let f = told(&a.on(t0, Event::Settled(fine()))).expect("told");
    assert!(!f.xdp_attached);
    assert_eq!(
        t.fit(&f),
        vec![Command::Priority(Priority(100))],
        "200 - 100"
    );

    let mut down = fine();
    down.local_ok = false;
    let fx = a.on(t0, Event::Settled(down.clone()));
    assert_eq!(fx[0], Effect::Log(Note::LocalApiserver(false)));
    let f = told(&fx).expect("told");
    assert_eq!(
        t.fit(&f),
        vec![Command::Priority(Priority(50))],
        "- 50 more"
    );

    assert_eq!(
        a.on(t0, Event::Xdp(true)),
        vec![Effect::Log(Note::Xdp(true))]
    );
    let f = told(&a.on(t0, Event::Settled(down))).expect("told");
    assert_eq!(t.fit(&f), vec![Command::Priority(Priority(150))]);
    let fx = a.on(t0, Event::Settled(fine()));
    assert_eq!(fx[0], Effect::Log(Note::LocalApiserver(true)));
    assert_eq!(
        t.fit(&told(&fx).expect("told")),
        vec![Command::Priority(Priority(200))]
    );
}

/// Fail open: no backend passes, vipd forwards to all of them. The
/// holder hears that nothing serves, but VRRP keeps its priority:
/// every node fails open alike, and moving the VIP would not help.
#[test]
fn fail_open_is_told_but_does_not_move_the_vrrp_vip() {
    let t0 = Instant::now();
    let (mut a, mut t) = running(settings(VRRP), t0);
    let mut v = fine();
    v.serving = false;
    v.generation = 2;
    let f = told(&a.on(t0, Event::Settled(v))).expect("told");
    assert!(!f.serving);
    assert_eq!(t.fit(&f), vec![]);
}

#[test]
fn a_changed_file_is_reloaded_once_it_stops_changing() {
    let t0 = Instant::now();
    let (mut a, _) = running(settings(VRRP), t0);
    assert_eq!(a.on(t0, Event::FileStamp(stamp(1))), vec![], "unchanged");
    assert_eq!(a.on(t0, Event::FileStamp(None)), vec![], "unreadable");
    assert_eq!(a.on(t0, Event::FileStamp(stamp(2))), vec![], "changing");
    assert_eq!(a.on(t0, Event::FileStamp(stamp(3))), vec![], "changing");
    assert_eq!(
        a.on(t0, Event::FileStamp(stamp(3))),
        vec![Effect::ReadConfig],
        "still for a tick"
    );
    let new = cfg(&VRRP.replace(BE2, ""));
    assert_eq!(
        a.on(
            t0,
            Event::ConfigRead {
                stamp: stamp(3),
                config: Ok(Box::new(new.clone()))
            }
        ),
        vec![Effect::Apply(Box::new(new.clone()))]
    );
    assert_eq!(a.on(t0, Event::Applied(Ok(()))), vec![]);
    assert_eq!(a.on(t0, Event::FileStamp(stamp(3))), vec![], "loaded");
    assert_eq!(a.on(t0, Event::Hangup), vec![Effect::ReadConfig]);
    // The new file is what runs now: reading it again is no change.
    assert_eq!(
        a.on(
            t0,
            Event::ConfigRead {
                stamp: stamp(3),
                config: Ok(Box::new(new.clone()))
            }
        ),
        vec![Effect::Apply(Box::new(new))]
    );
}

fn refused(fx: &[Effect]) -> String {
    match fx {
        [Effect::Log(Note::ReloadRefused(why))] => why.clone(),
        _ => panic!("not refused: {fx:?}"),
    }
}

#[test]
fn a_reload_changing_what_takes_a_restart_is_refused_whole() {
    let t0 = Instant::now();
    let (mut a, _) = running(settings(VRRP), t0);
    let read = |c: Result<Config, String>| Event::ConfigRead {
        stamp: stamp(2),
        config: c.map(Box::new),
    };
    let why = refused(&a.on(t0, read(Ok(cfg(&VRRP.replace("eth0", "eth1"))))));
    assert_eq!(
        why,
        "/etc/vipd/vipd.yaml: interface changed; that takes a restart of vipd (systemctl restart vipd)"
    );
    let why = refused(&a.on(t0, read(Ok(cfg(&VRRP.replace("10.0.0.100", "10.0.0.101"))))));
    assert!(
        why.contains("services[].vip: the VIPs VRRP elects a holder for"),
        "{why}"
    );
    let why = refused(&a.on(
        t0,
        read(Ok(cfg(&VRRP.replace("priority: 200", "priority: 100")))),
    ));
    assert!(why.contains(": vrrp changed"), "{why}");
    let why = refused(&a.on(
        t0,
        read(Err("/etc/vipd/vipd.yaml: xdp_mdoe: unknown field".into())),
    ));
    assert!(why.contains("xdp_mdoe"), "{why}");
}

/// A reload is compared with what runs: the configuration the
/// controller applied, not one it refused.
#[test]
fn a_reload_is_compared_with_the_configuration_that_runs() {
    const TWO: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: nat
    backends:
      - address: 10.0.0.11
  - vip: 10.0.0.101
    mode: dsr
    backends:
      - address: 10.0.0.12
        mac: 02:00:00:00:00:12
";
    let dsr_only = cfg(&TWO.replace(
        "  - vip: 10.0.0.100\n    mode: nat\n    backends:\n      - address: 10.0.0.11\n",
        "",
    ));
    assert_eq!(dsr_only.services.len(), 1);
    let t0 = Instant::now();
    let read = |c: &Config| Event::ConfigRead {
        stamp: stamp(2),
        config: Ok(Box::new(c.clone())),
    };
    let (mut a, _) = running(settings(TWO), t0);
    assert_eq!(
        a.on(t0, read(&dsr_only)),
        vec![Effect::Apply(Box::new(dsr_only.clone()))]
    );
    let why = refused(&a.on(
        t0,
        Event::Applied(Err(
            "/etc/vipd/vipd.yaml: programming the new services: no route".into(),
        )),
    ));
    assert!(why.ends_with("no route"), "{why}");
    assert!(
        matches!(a.on(t0, read(&cfg(TWO)))[..], [Effect::Apply(_)]),
        "mode nat still runs: the refused file never did"
    );
    assert_eq!(a.on(t0, Event::Applied(Ok(()))), vec![]);
    assert!(matches!(a.on(t0, read(&dsr_only))[..], [Effect::Apply(_)]));
    assert_eq!(a.on(t0, Event::Applied(Ok(()))), vec![]);
    let why = refused(&a.on(t0, read(&cfg(TWO))));
    assert!(
        why.contains("services[].mode: the first nat service changed"),
        "what runs now has no nat service: {why}"
    );
}

/// The periodic log says what changed, once: a split brain shows in
/// the router's counters the first time it happens.
#[test]
fn a_split_brain_is_logged_when_the_counters_change() {
    let t0 = Instant::now();
    let (mut a, _) = running(settings(VRRP), t0);
    assert_eq!(a.on(t0, Event::StatsDue), vec![Effect::ReadStats]);
    let lines = |vrrp: &str| StatsLines {
        counters: Some(vec!["pass_not_ours=3".into()]),
        vrrp: vec![(Family::V4, vrrp.into())],
        backends: "10.0.0.11:6443=up".into(),
    };
    assert_eq!(
        a.on(t0, Event::Stats(lines("state=master"))),
        vec![
            Effect::Log(Note::Traffic("pass_not_ours=3".into())),
            Effect::Log(Note::Vrrp(Family::V4, "state=master".into())),
            Effect::Log(Note::Health("10.0.0.11:6443=up".into())),
        ]
    );
    assert_eq!(a.on(t0, Event::Stats(lines("state=master"))), vec![]);
    assert_eq!(
        a.on(t0, Event::Stats(lines("state=master split_brain=1"))),
        vec![Effect::Log(Note::Vrrp(
            Family::V4,
            "state=master split_brain=1".into()
        ))]
    );
    let mut unreadable = lines("state=master split_brain=1");
    unreadable.counters = None;
    assert_eq!(a.on(t0, Event::Stats(unreadable)), vec![]);
}

#[test]
fn state_sync_is_republished_when_the_maps_change() {
    let t0 = Instant::now();
    let mut s = settings(VRRP);
    s.sync = Some(1);
    let (mut a, _) = running(s, t0);
    assert_eq!(a.on(t0, Event::Settled(fine())), vec![]);
    let mut v = fine();
    v.generation = 2;
    assert_eq!(a.on(t0, Event::Settled(v.clone())), vec![Effect::Publish]);
    assert_eq!(a.on(t0, Event::Settled(v)), vec![]);
}

#[test]
fn the_status_is_rebuilt_once_a_second() {
    let t0 = Instant::now();
    let (mut a, _) = running(settings(VRRP), t0);
    let at = |ms| t0 + Duration::from_millis(ms);
    let refreshes = |fx: Vec<Effect>| fx.iter().filter(|e| **e == Effect::Refresh).count();
    assert_eq!(refreshes(a.on(at(500), Event::Settled(fine()))), 0);
    assert_eq!(refreshes(a.on(at(1000), Event::Settled(fine()))), 1);
    assert_eq!(refreshes(a.on(at(1500), Event::Settled(fine()))), 0);
    assert_eq!(refreshes(a.on(at(2100), Event::Settled(fine()))), 1);
}

/// announce across an L3 fabric: mode nat, `snat: node`, two backends
/// in other subnets.
const ANNOUNCE: &str = "
interface: eth0
announce:
  table: 198
services:
  - vip: 10.78.100.1
    mode: nat
    snat: node
    backends:
      - address: 10.79.1.2
      - address: 10.79.2.2
";

/// The route holder's decisions as the holder would make them.
fn announcing() -> Announcing {
    Announcing::new(&["10.78.100.1".parse().expect("vip")])
}

fn vip() -> std::net::IpAddr {
    "10.78.100.1".parse().expect("vip")
}

/// An announcing agent past start-up, its holder told the first fitness.
fn announcing_started(t0: Instant) -> (AgentState, Announcing) {
    let mut a = AgentState::new(settings(ANNOUNCE));
    let mut d = announcing();
    let fx = a.on(t0, Event::Started(fine()));
    let Some(Effect::StartHolder(f0)) = fx.first() else {
        panic!("{fx:?}")
    };
    d.fit(f0);
    a.on(t0, Event::HolderStarted { tracks: true });
    (a, d)
}

#[test]
fn announce_installs_the_route_once_started_fit() {
    let t0 = Instant::now();
    let mut a = AgentState::new(settings(ANNOUNCE));
    let mut d = announcing();
    // Nothing is announced before start-up is done.
    assert_eq!(a.on(t0, Event::Settled(fine())), vec![]);
    let fx = a.on(t0, Event::Started(fine()));
    let Some(Effect::StartHolder(f0)) = fx.first() else {
        panic!("{fx:?}")
    };
    assert_eq!(d.fit(f0), vec![AnnounceCommand::Install(vip())]);
    assert_eq!(
        a.on(t0, Event::HolderStarted { tracks: true }),
        vec![Effect::Ready]
    );
    assert_eq!(
        a.on(t0, Event::Second),
        vec![Effect::Upkeep, Effect::CheckXdp],
        "the XDP attachment is watched: losing it withdraws the route"
    );

    // A node that starts with no backend serving announces nothing.
    let mut a = AgentState::new(settings(ANNOUNCE));
    let mut d = announcing();
    let mut v = fine();
    v.serving = false;
    let fx = a.on(t0, Event::Started(v));
    let Some(Effect::StartHolder(f0)) = fx.first() else {
        panic!("{fx:?}")
    };
    assert_eq!(
        d.fit(f0),
        vec![AnnounceCommand::Withdraw(vip(), Why::NoBackend)]
    );
    a.on(t0, Event::HolderStarted { tracks: true });
    let f = told(&a.on(t0, Event::Settled(fine()))).expect("told");
    assert_eq!(d.fit(&f), vec![AnnounceCommand::Install(vip())]);
}

#[test]
fn announce_withdraws_the_moment_fitness_is_lost() {
    let t0 = Instant::now();
    let (mut a, mut d) = announcing_started(t0);

    // Every backend fails its probe: the next settle tells the holder.
    let mut down = fine();
    down.serving = false;
    let f = told(&a.on(t0, Event::Settled(down))).expect("told");
    assert_eq!(
        d.fit(&f),
        vec![AnnounceCommand::Withdraw(vip(), Why::NoBackend)]
    );
    let f = told(&a.on(t0, Event::Settled(fine()))).expect("told");
    assert_eq!(d.fit(&f), vec![AnnounceCommand::Install(vip())]);

    // The program is detached: read within a second, logged, told.
    assert_eq!(
        a.on(t0, Event::Xdp(false)),
        vec![Effect::Log(Note::Xdp(false))]
    );
    let f = told(&a.on(t0, Event::Settled(fine()))).expect("told");
    assert_eq!(
        d.fit(&f),
        vec![AnnounceCommand::Withdraw(vip(), Why::XdpDetached)]
    );

    // The gate refusing the family withdraws too.
    a.on(t0, Event::Xdp(true));
    let f = told(&a.on(t0, Event::Settled(fine()))).expect("told");
    assert_eq!(d.fit(&f), vec![AnnounceCommand::Install(vip())]);
    let mut gated = fine();
    gated.gate_v4 = Some("no backend of 10.78.100.1:6443 has a certificate for it".into());
    let f = told(&a.on(t0, Event::Settled(gated))).expect("told");
    assert!(matches!(
        d.fit(&f)[..],
        [AnnounceCommand::Withdraw(_, Why::CertGate(_))]
    ));
}

/// SIGTERM: the holder withdraws the routes (and drains) before the
/// host changes are undone and the process exits, which unpinned
/// detaches the program.
#[test]
fn announce_withdraws_on_sigterm_before_the_stop() {
    let t0 = Instant::now();
    let (mut a, mut d) = announcing_started(t0);
    let fx = a.on(t0, Event::Signal(Signal::Term));
    let at = |e: &Effect| fx.iter().position(|x| x == e).expect("effect");
    assert!(at(&Effect::StopHolder) < at(&Effect::RestoreHost));
    assert!(at(&Effect::StopHolder) < at(&Effect::Exit));
    assert_eq!(
        d.stop(),
        vec![AnnounceCommand::Withdraw(vip(), Why::Stopping)]
    );
    assert_eq!(a.on(t0, Event::Settled(fine())), vec![], "stopping");
}

#[test]
fn announce_and_its_vips_take_a_restart() {
    let t0 = Instant::now();
    let mut a = AgentState::new(settings(ANNOUNCE));
    a.on(t0, Event::Started(fine()));
    a.on(t0, Event::HolderStarted { tracks: true });
    let read = |c: Config| Event::ConfigRead {
        stamp: stamp(2),
        config: Ok(Box::new(c)),
    };
    let why = refused(&a.on(t0, read(cfg(&ANNOUNCE.replace("table: 198", "table: 199")))));
    assert!(why.contains(": announce changed"), "{why}");
    let why = refused(&a.on(
        t0,
        read(cfg(&ANNOUNCE.replace("10.78.100.1", "10.78.100.2"))),
    ));
    assert!(why.contains("the VIPs announce routes to"), "{why}");
    let fewer = cfg(&ANNOUNCE.replace("      - address: 10.79.2.2\n", ""));
    assert!(
        matches!(a.on(t0, read(fewer))[..], [Effect::Apply(_)]),
        "backends reload"
    );
}

/// SIGTERM: VRRP hands the VIP over while the program still forwards,
/// and only then are the host changes undone, or kept for the pinned
/// program.
#[test]
fn sigterm_hands_over_before_the_host_is_restored() {
    let t0 = Instant::now();
    let (mut a, _) = running(settings(VRRP), t0);
    assert_eq!(
        a.on(t0, Event::Signal(Signal::Term)),
        vec![
            Effect::Log(Note::Stopping(Signal::Term)),
            Effect::Quiesce,
            Effect::StopHolder,
            Effect::RestoreHost,
            Effect::Exit,
        ]
    );
    assert_eq!(
        a.on(t0, Event::Signal(Signal::Int)),
        vec![],
        "stopping already"
    );
    assert_eq!(a.on(t0, Event::Settled(fine())), vec![]);

    let mut s = settings(VRRP);
    s.pinned = true;
    let (mut a, _) = running(s, t0);
    assert_eq!(
        a.on(t0, Event::Signal(Signal::Int)),
        vec![
            Effect::Log(Note::Stopping(Signal::Int)),
            Effect::Quiesce,
            Effect::StopHolder,
            Effect::KeepHost,
            Effect::Exit,
        ]
    );
}

fn peer(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Settings of a node whose state sync started with empty tables at `t0`,
/// with two peers.
fn starting_empty(text: &str, t0: Instant) -> Settings {
    Settings {
        sync: Some(1),
        welcome: Some(Welcome {
            waiting: [peer("10.0.0.2"), peer("10.0.0.3")].into(),
            until: t0 + crate::sync::WELCOME_WAIT,
        }),
        ..settings(text)
    }
}

/// A node that starts with empty tables holds the VIP (VRRP: joins the
/// election; announce: installs its route) only once every peer's welcome
/// dump has ended; answers that come before the holder starts count.
#[test]
fn a_node_that_starts_empty_holds_the_vip_once_every_peer_sent_its_flows() {
    let t0 = Instant::now();
    let mut a = AgentState::new(starting_empty(VRRP, t0));
    assert_eq!(a.on(t0, Event::SyncAnswered(peer("10.0.0.2"))), vec![]);
    let fx = a.on(t0, Event::Started(fine()));
    let Some(Effect::StartHolder(f)) = fx.first() else {
        panic!("{fx:?}")
    };
    let why = f.sync_wait.clone().expect("10.0.0.3 has not answered");
    assert!(why.contains("waiting for the peers' flows"), "{why}");
    // VRRP keeps both families out of the election; announce withdraws.
    let mut t = Tracking::new(
        Priority(200),
        Default::default(),
        &[Family::V4, Family::V6],
        f,
    );
    assert_eq!(t.fit(f), vec![Command::Priority(Priority(200))]);
    let mut d = Announcing::new(&[peer("10.0.0.100")]);
    assert_eq!(
        d.fit(f),
        vec![AnnounceCommand::Withdraw(
            peer("10.0.0.100"),
            Why::SyncWait(why.clone())
        )]
    );
    assert_eq!(
        a.on(t0, Event::HolderStarted { tracks: true }),
        vec![Effect::Ready]
    );
    let t1 = t0 + Duration::from_millis(300);
    assert_eq!(
        told(&a.on(t1, Event::Settled(fine()))),
        None,
        "still waiting"
    );
    assert_eq!(
        a.on(t1, Event::SyncAnswered(peer("10.0.0.9"))),
        vec![],
        "a peer not waited for changes nothing"
    );
    assert_eq!(
        a.on(t1, Event::SyncAnswered(peer("10.0.0.3"))),
        vec![Effect::Log(Note::SyncWelcomed(vec![]))]
    );
    let f = told(&a.on(t1, Event::Settled(fine()))).expect("the wait is over");
    assert_eq!(f, fit(&fine(), true));
    assert_eq!(
        t.fit(&f),
        vec![
            Command::Hold(Family::V4, None),
            Command::Hold(Family::V6, None)
        ]
    );
    assert_eq!(
        d.fit(&f),
        vec![AnnounceCommand::Install(peer("10.0.0.100"))]
    );
    // Later answers (a peer's next dump) change nothing.
    assert_eq!(a.on(t1, Event::SyncAnswered(peer("10.0.0.3"))), vec![]);
    assert_eq!(told(&a.on(t1, Event::Settled(fine()))), None);
}

/// A peer that never answers (down, or a vipd without welcome dumps) holds
/// the node back until the deadline, not longer; the log names it. The
/// gate still holds the VIP back after the wait.
#[test]
fn the_wait_for_peers_ends_at_its_deadline_naming_who_never_answered() {
    let t0 = Instant::now();
    let mut a = AgentState::new(starting_empty(VRRP, t0));
    let mut gated = fine();
    gated.gate_v6 = Some("no SAN".into());
    let fx = a.on(t0, Event::Started(gated.clone()));
    assert!(
        matches!(&fx[..], [Effect::StartHolder(f)] if f.sync_wait.is_some()),
        "{fx:?}"
    );
    a.on(t0, Event::HolderStarted { tracks: true });
    a.on(t0, Event::SyncAnswered(peer("10.0.0.3")));
    let before = t0 + crate::sync::WELCOME_WAIT - Duration::from_millis(1);
    assert_eq!(told(&a.on(before, Event::Settled(gated.clone()))), None);
    let at = t0 + crate::sync::WELCOME_WAIT;
    let fx = a.on(at, Event::Settled(gated.clone()));
    assert_eq!(
        fx.first(),
        Some(&Effect::Log(Note::SyncWelcomed(vec![peer("10.0.0.2")])))
    );
    let f = told(&fx).expect("the wait is over");
    assert_eq!(f.sync_wait, None);
    assert_eq!(f.held(Family::V4), None);
    assert_eq!(f.held(Family::V6).as_deref(), Some("no SAN"));
    assert_eq!(
        a.on(at, Event::SyncAnswered(peer("10.0.0.2"))),
        vec![],
        "too late: nothing"
    );
}

/// Without state sync, or with adopted maps (`welcome: None`), or without
/// peers, nothing is waited for.
#[test]
fn nothing_is_waited_for_without_empty_tables_or_peers() {
    let t0 = Instant::now();
    for s in [
        settings(VRRP),
        Settings {
            welcome: Some(Welcome {
                waiting: Default::default(),
                until: t0 + crate::sync::WELCOME_WAIT,
            }),
            ..settings(VRRP)
        },
    ] {
        let mut a = AgentState::new(s);
        assert_eq!(
            a.on(t0, Event::Started(fine())),
            vec![Effect::StartHolder(fit(&fine(), true))]
        );
    }
}
