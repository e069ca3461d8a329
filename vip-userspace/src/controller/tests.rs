use std::{
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use vip_common::{BE_F_ALIVE, NO_BACKEND, maglev_index};

use super::*;
use crate::certcheck::{CertCheck, CertReport, SanName};
use crate::{dataplane::mem::MemMaps, probe::Failure};

#[test]
fn fail_open_hint_fits_the_probe_type() {
    let tcp = fail_open_hint(ProbeType::Tcp);
    assert!(
        !tcp.contains("probe.ca") && !tcp.contains("server_name"),
        "{tcp}"
    );
    assert!(tcp.contains("port"), "{tcp}");
    let https = fail_open_hint(ProbeType::Https);
    assert!(
        https.contains("probe.ca") && https.contains("probe.server_name"),
        "{https}"
    );
}

const NAT3: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: nat
    snat: vip
    maglev_size: 251
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 10.0.0.13
";

fn cfg(text: &str) -> Config {
    Config::parse(Path::new("t.yaml"), text).expect("valid config")
}

fn ctl(text: &str) -> Controller<MemMaps> {
    Controller::new(Programmer::new(MemMaps::default()), cfg(text), vec![])
        .expect("programmed")
        .0
}

fn be(last: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, last], 6443))
}

/// The live Maglev table of the first service, as backend addresses
/// (None: the slot says "no backend").
fn table(c: &Controller<MemMaps>) -> Vec<Option<IpAddr>> {
    let m = c.programmer().maps();
    let (_, v) = m.services.iter().next().expect("a service");
    (0..v.maglev_size)
        .map(|slot| {
            let id = m.maglev[maglev_index(v.id, v.maglev_half, slot) as usize];
            (id != NO_BACKEND).then(|| {
                let b = m.backends[id as usize];
                IpAddr::from([b.addr[0], b.addr[1], b.addr[2], b.addr[3]])
            })
        })
        .collect()
}

fn alive_flag(c: &Controller<MemMaps>, addr: SocketAddr) -> bool {
    let m = c.programmer().maps();
    let IpAddr::V4(v4) = addr.ip() else {
        panic!("IPv4 backends here")
    };
    let b = m
        .backends
        .iter()
        .find(|b| b.addr[..4] == v4.octets())
        .expect("backend written");
    b.flags & BE_F_ALIVE != 0
}

/// A fake clock: probes one second apart, each taking 3 ms.
struct Clock(Instant);
impl Clock {
    fn probe(&mut self) -> (Instant, Instant) {
        self.0 += Duration::from_secs(1);
        (self.0, self.0 + Duration::from_millis(3))
    }
}

fn feed(
    c: &mut Controller<MemMaps>,
    clock: &mut Clock,
    addr: SocketAddr,
    o: &Outcome,
) -> ProbeEffect {
    let (s, f) = clock.probe();
    c.probe(addr, s, f, o).expect("maps written")
}

fn count(t: &[Option<IpAddr>], a: SocketAddr) -> usize {
    t.iter().filter(|x| **x == Some(a.ip())).count()
}

const DSR3: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: dsr
    maglev_size: 251
    backends:
      - address: 10.0.0.11
        local: true
      - address: 10.0.0.12
      - address: 10.0.0.13
        mac: 02:00:00:00:00:13
";

fn state_of(c: &Controller<MemMaps>, a: SocketAddr) -> (BackendHealth, bool) {
    let b = c
        .status()
        .into_iter()
        .find(|b| b.addr == a)
        .expect("listed");
    (b.state, b.serving)
}

/// A backend without `mac:` is served once the neighbour table gives
/// its MAC, re-pointed in place when the MAC changes, and out (its
/// flows reset) when the entry goes; the local backend and the
/// explicit MAC never wait for the table.
#[test]
fn a_backend_is_served_only_with_a_neighbour() {
    let mut c = ctl(DSR3);
    assert_eq!(
        c.neighbour_targets(),
        [be(12).ip()].into_iter().collect::<BTreeSet<_>>()
    );
    assert_eq!(state_of(&c, be(12)), (BackendHealth::NoNeighbour, false));
    assert_eq!(state_of(&c, be(11)), (BackendHealth::Up, true));
    assert_eq!(state_of(&c, be(13)), (BackendHealth::Up, true));
    let t = table(&c);
    assert_eq!(count(&t, be(12)), 0, "no slot for it");
    assert!(!alive_flag(&c, be(12)), "its flows get an RST");

    let mac = [2, 0, 0, 0, 0, 0x12];
    let r = c
        .neighbour(be(12).ip(), Some(mac), Instant::now())
        .expect("written");
    assert!(r.is_some_and(|r| r.maglev_writes > 0), "now in the table");
    assert_eq!(state_of(&c, be(12)), (BackendHealth::Up, true));
    assert!(alive_flag(&c, be(12)));
    let served = table(&c);
    assert!(count(&served, be(12)) > 60, "its share of the table");
    let m = c.programmer().maps();
    let id = c
        .backend_ids()
        .into_iter()
        .find(|(a, _)| *a == be(12))
        .expect("id")
        .1;
    assert_eq!(m.backends[id as usize].mac(), &mac);

    let moved = [2, 0, 0, 0, 0, 0x99];
    let r = c
        .neighbour(be(12).ip(), Some(moved), Instant::now())
        .expect("written")
        .expect("a write");
    // The new MAC in the idle slot, then the selector.
    assert_eq!(
        (r.backend_writes, r.maglev_writes, r.backends_killed),
        (2, 0, 0)
    );
    assert_eq!(table(&c), served, "same table: its flows stay");
    assert_eq!(c.programmer().maps().backends[id as usize].mac(), &moved);
    assert!(
        c.neighbour(be(12).ip(), Some(moved), Instant::now())
            .expect("ok")
            .is_none(),
        "the same MAC again writes nothing"
    );

    let r = c
        .neighbour(be(12).ip(), None, Instant::now())
        .expect("written")
        .expect("a write");
    assert_eq!(r.backends_killed, 1, "its clients are poked");
    assert_eq!(state_of(&c, be(12)), (BackendHealth::NoNeighbour, false));
    assert!(
        c.neighbour(be(13).ip(), None, Instant::now())
            .expect("ok")
            .is_none(),
        "an explicit mac is not the table's"
    );
}

/// be12's MAC changes under its probes (the default fall, 2): the failure
/// against the old MAC, and one still in flight when the kernel learns the
/// new MAC, do not take it out; its flows and slots stay.
#[test]
fn probe_failures_on_the_old_mac_do_not_take_a_moved_backend_out() {
    let mut c = ctl(DSR3);
    let mut clock = Clock(Instant::now());
    c.neighbour(be(12).ip(), Some([2, 0, 0, 0, 0, 0x12]), clock.0)
        .expect("written");
    feed(&mut c, &mut clock, be(12), &Outcome::Up);
    let served = table(&c);
    let timeout = Outcome::Fail(Failure::Timeout);
    let fall = c.config().services[0].probe.fall;
    assert!(fall >= 2, "the case needs a failure before the change");
    for _ in 1..fall {
        assert!(
            feed(&mut c, &mut clock, be(12), &timeout)
                .changes
                .is_empty()
        );
    }
    // The last probe on the old path starts, the kernel learns the new
    // MAC 500 ms later, and the probe times out after that.
    let (started, _) = clock.probe();
    c.neighbour(
        be(12).ip(),
        Some([2, 0, 0, 0, 0, 0x99]),
        started + Duration::from_millis(500),
    )
    .expect("written");
    let e = c
        .probe(be(12), started, started + Duration::from_secs(1), &timeout)
        .expect("ok");
    assert!(e.changes.is_empty(), "{:?}", e.changes);
    assert_eq!(state_of(&c, be(12)), (BackendHealth::Up, true));
    assert!(alive_flag(&c, be(12)), "its flows stay");
    assert_eq!(table(&c), served);
    // One more failure on the new path is one, not `fall`.
    assert!(
        feed(&mut c, &mut clock, be(12), &timeout)
            .changes
            .is_empty()
    );
    assert_eq!(state_of(&c, be(12)), (BackendHealth::Up, true));
}

/// Fail open never revives a backend without a neighbour: its frames
/// would go nowhere, where an RST at least tells the client.
#[test]
fn fail_open_skips_backends_without_a_neighbour() {
    let mut c = ctl(DSR3);
    let mut clock = Clock(Instant::now());
    let down = Outcome::Fail(Failure::Refused);
    for _ in 0..5 {
        for a in [be(11), be(13)] {
            feed(&mut c, &mut clock, a, &down);
        }
    }
    assert!(!c.failing_open().is_empty(), "every probe fails");
    assert!(alive_flag(&c, be(11)) && alive_flag(&c, be(13)));
    assert!(!alive_flag(&c, be(12)));
    assert_eq!(count(&table(&c), be(12)), 0);
}

#[test]
fn fall_failures_take_a_backend_out_and_move_only_its_slots() {
    let mut c = ctl(NAT3);
    let mut clock = Clock(Instant::now());
    let before = table(&c);
    assert_eq!(before.len(), 251);
    for a in [be(11), be(12), be(13)] {
        assert!(count(&before, a) >= 83, "even split: {}", count(&before, a));
    }
    let down = Outcome::Fail(Failure::Refused);
    let e = feed(&mut c, &mut clock, be(12), &down);
    assert!(
        e.changes.is_empty() && e.report.is_none(),
        "one failure: no write"
    );
    assert_eq!(table(&c), before);
    let first = clock.0;
    let e = feed(&mut c, &mut clock, be(12), &down);
    let Some(Change::Down {
        first_failure,
        fall_reached,
        ..
    }) = e.changes.first().cloned()
    else {
        panic!("fall 2 reached: {:?}", e.changes)
    };
    assert_eq!(
        first_failure, first,
        "the chain starts at the first failed probe"
    );
    assert_eq!(fall_reached - first_failure, Duration::from_millis(1003));
    let report = e.report.expect("maps written at fall");
    assert!(report.maglev_writes > 0 && report.services_published == 1);
    let after = table(&c);
    assert_eq!(
        count(&after, be(12)),
        0,
        "no new flow goes to the dead backend"
    );
    assert!(!alive_flag(&c, be(12)), "its established flows get an RST");
    assert!(alive_flag(&c, be(11)) && alive_flag(&c, be(13)));
    // Slots of the survivors stay where they were (Maglev's minimal
    // disruption): flows to them are not moved.
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != Some(be(12).ip()) && b != a)
        .count();
    assert!(
        moved * 100 <= before.len() * 2,
        "{moved} survivor slots moved"
    );
    // Two passes bring it back (rise 2), to the very same table.
    assert!(
        feed(&mut c, &mut clock, be(12), &Outcome::Up)
            .report
            .is_none()
    );
    let e = feed(&mut c, &mut clock, be(12), &Outcome::Up);
    assert_eq!(e.changes, [Change::Up]);
    assert_eq!(table(&c), before);
    assert!(alive_flag(&c, be(12)));
}

#[test]
fn not_ready_drains_and_unreachable_resets() {
    let mut c = ctl(NAT3);
    let mut clock = Clock(Instant::now());
    for _ in 0..2 {
        feed(
            &mut c,
            &mut clock,
            be(11),
            &Outcome::Fail(Failure::Status(503)),
        );
        feed(
            &mut c,
            &mut clock,
            be(12),
            &Outcome::Fail(Failure::Tls("unknown CA".into())),
        );
    }
    let t = table(&c);
    assert_eq!(count(&t, be(11)) + count(&t, be(12)), 0, "no new flows");
    assert!(
        alive_flag(&c, be(11)) && alive_flag(&c, be(12)),
        "a draining apiserver keeps its connections"
    );
    // The same backend then stops answering: now its flows get an RST.
    let e = feed(&mut c, &mut clock, be(11), &Outcome::Fail(Failure::Timeout));
    assert!(e.changes.is_empty(), "already down");
    assert!(e.report.is_some(), "the alive bit is written");
    assert!(!alive_flag(&c, be(11)));
    assert_eq!(table(&c), t, "the table did not change");
}

#[test]
fn a_dead_backend_loses_its_alive_bit_only_after_the_table_switch() {
    // A failure injected into the table write leaves the bit alone: no
    // packet may meet a table that names a backend marked dead.
    let mut c = ctl(NAT3);
    let mut clock = Clock(Instant::now());
    c.programmer_mut().maps_mut().fail_maglev = true;
    feed(&mut c, &mut clock, be(13), &Outcome::Fail(Failure::Refused));
    let (s, f) = clock.probe();
    assert!(
        c.probe(be(13), s, f, &Outcome::Fail(Failure::Refused))
            .is_err()
    );
    assert!(
        alive_flag(&c, be(13)),
        "still in the live table, still alive"
    );
    c.programmer_mut().maps_mut().fail_maglev = false;
    c.tick().expect("written");
    assert!(!alive_flag(&c, be(13)));
}

#[test]
fn the_table_is_the_same_whatever_the_order_of_the_backends() {
    let shuffled = NAT3
        .replace("10.0.0.11", "X")
        .replace("10.0.0.13", "10.0.0.11")
        .replace("X", "10.0.0.13");
    let mut a = ctl(NAT3);
    let mut b = ctl(&shuffled);
    assert_eq!(table(&a), table(&b));
    let mut clock = Clock(Instant::now());
    for c in [&mut a, &mut b] {
        for _ in 0..2 {
            feed(c, &mut clock, be(11), &Outcome::Fail(Failure::Refused));
        }
    }
    assert_eq!(table(&a), table(&b), "the same healthy set, the same table");
}

#[test]
fn auth_refused_keeps_the_backend_and_all_down_fails_open() {
    let mut c = ctl(NAT3);
    let mut clock = Clock(Instant::now());
    let before = table(&c);
    for _ in 0..3 {
        feed(&mut c, &mut clock, be(11), &Outcome::AuthRefused(401));
    }
    assert_eq!(
        table(&c),
        before,
        "401 is a probe problem, not a dead apiserver"
    );
    assert_eq!(c.status()[0].state, BackendHealth::AuthMisconfigured);
    let t = Outcome::Fail(Failure::Timeout);
    for a in [be(11), be(12)] {
        for _ in 0..2 {
            feed(&mut c, &mut clock, a, &t);
        }
    }
    assert_eq!(count(&table(&c), be(13)), 251, "only be13 left");
    for _ in 0..2 {
        feed(&mut c, &mut clock, be(13), &t);
    }
    assert_eq!(table(&c), before, "none passes: forward to all");
    assert!(alive_flag(&c, be(11)));
    for _ in 0..2 {
        feed(&mut c, &mut clock, be(12), &Outcome::Up);
    }
    assert_eq!(count(&table(&c), be(12)), 251, "fail open ends with one up");
}

fn report(missing: Vec<SanName>) -> CertReport {
    CertReport {
        subject: "kube-apiserver".into(),
        sans: vec!["DNS:kubernetes".into()],
        not_after: SystemTime::now() + Duration::from_secs(90 * 86_400),
        missing,
    }
}

fn vip() -> SanName {
    SanName::Ip("10.0.0.100".parse().expect("ip"))
}

#[test]
fn a_certificate_without_the_vip_gets_no_flows_and_a_local_one_blocks_master() {
    let stacked = NAT3.replace(
        "      - address: 10.0.0.13\n",
        "      - address: 10.0.0.13\n        local: true\n",
    );
    let mut c = ctl(&stacked);
    assert_eq!(c.gate_targets().len(), 3);
    assert_eq!(c.gate_targets()[0].want, [vip()]);
    let now = SystemTime::now();
    c.cert(be(11), CertCheck::Checked(report(vec![])), now)
        .expect("ok");
    c.cert(be(12), CertCheck::Checked(report(vec![vip()])), now)
        .expect("ok");
    assert_eq!(count(&table(&c), be(12)), 0);
    assert_eq!(
        c.gate_hold(|_| true),
        None,
        "another backend serves the VIP"
    );
    c.cert(be(13), CertCheck::Checked(report(vec![vip()])), now)
        .expect("ok");
    let why = c.gate_hold(|_| true).expect("own apiserver lacks the VIP");
    assert!(
        why.contains("10.0.0.13:6443") && why.contains("certSANs"),
        "{why}"
    );
    // Unreachable teaches nothing: the last known state stays.
    c.cert(be(13), CertCheck::Unreachable("refused".into()), now)
        .expect("ok");
    assert!(c.gate_hold(|_| true).is_some());
    c.cert(be(13), CertCheck::Checked(report(vec![])), now)
        .expect("ok");
    assert_eq!(c.gate_hold(|_| true), None);
    c.cert(be(11), CertCheck::Checked(report(vec![vip()])), now)
        .expect("ok");
    c.cert(be(13), CertCheck::Checked(report(vec![vip()])), now)
        .expect("ok");
    let why = c.gate_hold(|_| true).expect("no backend has the VIP");
    assert!(
        why.starts_with("this node's apiserver 10.0.0.13:6443"),
        "the own apiserver is named first: {why}"
    );
    let mut none = ctl(NAT3);
    for b in [11, 12, 13] {
        none.cert(be(b), CertCheck::Checked(report(vec![vip()])), now)
            .expect("ok");
    }
    let why = none.gate_hold(|_| true).expect("no backend has the VIP");
    assert!(
        why.starts_with("no backend of 10.0.0.100:6443 has a certificate for it"),
        "{why}"
    );
    assert_eq!(
        none.gate_hold(|ip| ip.is_ipv6()),
        None,
        "an IPv6 router is not held for an IPv4 service"
    );
    assert_eq!(
        table(&c).iter().flatten().count(),
        251,
        "fail open over the SAN gate"
    );

    let mut w = ctl(&format!("cert_gate:\n  on_missing_san: warn\n{stacked}"));
    w.cert(be(13), CertCheck::Checked(report(vec![vip()])), now)
        .expect("ok");
    assert_eq!(w.gate_hold(|_| true), None, "warn only warns");
    assert!(count(&table(&w), be(13)) > 0);
    let off = ctl(&format!("cert_gate:\n  on_missing_san: off\n{NAT3}"));
    assert!(off.gate_targets().is_empty());
    let tcp = ctl(&NAT3.replace("    backends:", "    probe: { type: tcp }\n    backends:"));
    assert!(
        tcp.gate_targets().is_empty(),
        "no TLS, no certificate to read"
    );
}

#[test]
fn bootstrap_uses_the_local_apiserver_until_one_is_ready() {
    let text = format!(
        "bootstrap: true\n{}",
        NAT3.replace(
            "      - address: 10.0.0.13\n",
            "      - address: 10.0.0.13\n        local: true\n"
        )
    );
    let mut c = ctl(&text);
    let mut clock = Clock(Instant::now());
    assert!(c.bootstrapping() && c.local_ok());
    let refused = Outcome::Fail(Failure::Refused);
    for _ in 0..3 {
        for a in [be(11), be(12), be(13)] {
            feed(&mut c, &mut clock, a, &refused);
        }
    }
    assert_eq!(
        count(&table(&c), be(13)),
        251,
        "kubeadm init reaches its own apiserver"
    );
    assert!(c.local_ok(), "no priority penalty while bootstrapping");
    c.cert(
        be(13),
        CertCheck::Checked(report(vec![vip()])),
        SystemTime::now(),
    )
    .expect("ok");
    assert_eq!(c.gate_hold(|_| true), None, "nor a gate");
    feed(&mut c, &mut clock, be(13), &Outcome::Up);
    assert!(!c.bootstrapping(), "the first ready apiserver ends it");
    assert!(!c.local_ok(), "be13 is still down by its count (rise 2)");
    assert!(c.gate_hold(|_| true).is_some());
}

#[test]
fn reload_keeps_health_adds_and_removes_backends_or_refuses_whole() {
    let mut c = ctl(NAT3);
    let mut clock = Clock(Instant::now());
    for _ in 0..2 {
        feed(&mut c, &mut clock, be(11), &Outcome::Fail(Failure::Refused));
    }
    let text = NAT3.replace(
        "      - address: 10.0.0.13\n",
        "      - address: 10.0.0.14\n",
    );
    c.reload(cfg(&text), vec![]).expect("valid");
    let t = table(&c);
    assert_eq!(count(&t, be(11)), 0, "be11 stays down across the reload");
    assert_eq!(count(&t, be(13)), 0);
    assert!(count(&t, be(14)) > 100, "a new backend starts up");
    assert_eq!(c.probe_targets().len(), 3);
    let bad = NAT3.replace("snat: vip", "snat: node");
    let e = c.reload(cfg(&bad), vec![]).expect_err("no node address");
    assert!(e.to_string().contains("services[0].snat"), "{e}");
    assert_eq!(table(&c), t, "the running state stays");
    assert!(c.probe_targets().contains_key(&be(14)));
}

#[test]
fn a_failed_map_write_is_retried() {
    let mut c = ctl(NAT3);
    let mut clock = Clock(Instant::now());
    let before = table(&c);
    c.programmer_mut().maps_mut().fail_maglev = true;
    feed(&mut c, &mut clock, be(11), &Outcome::Fail(Failure::Refused));
    let (s, f) = clock.probe();
    assert!(
        c.probe(be(11), s, f, &Outcome::Fail(Failure::Refused))
            .is_err()
    );
    assert_eq!(table(&c), before, "a failed write publishes nothing");
    c.programmer_mut().maps_mut().fail_maglev = false;
    assert!(c.tick().expect("written").is_some());
    assert_eq!(count(&table(&c), be(11)), 0);
    assert!(c.tick().expect("nothing to do").is_none());
}

/// An LB that loses its own path to the backends (its link, its route)
/// sees every backend fail at once and fails open. When it comes back, the
/// backends pass again one by one: the first ends the fail open, and a
/// backend that went down with it is spared (its flows go on, no new ones,
/// no RST) until it passes or fails `fall` more probes. Killing it at once
/// reset streams it served fine (the fabric lab, through the poke). A
/// backend that was down well before stays down.
#[test]
fn backends_that_went_down_together_are_spared_the_reset_when_fail_open_ends() {
    let mut c = ctl(NAT3);
    let t0 = Instant::now();
    let at = |c: &mut Controller<MemMaps>, ms: u64, a: SocketAddr, o: &Outcome| {
        let s = t0 + Duration::from_millis(ms);
        c.probe(a, s, s + Duration::from_millis(3), o)
            .expect("maps written")
    };
    let unreach = Outcome::Fail(Failure::Connect("Network is unreachable".into()));
    // be11 dies long before.
    at(&mut c, 0, be(11), &unreach);
    at(&mut c, 100, be(11), &unreach);
    assert!(!alive_flag(&c, be(11)));
    // This node's link goes down: be12 and be13 fail within 20 ms.
    at(&mut c, 10_000, be(12), &unreach);
    at(&mut c, 10_010, be(13), &unreach);
    at(&mut c, 10_100, be(12), &unreach);
    at(&mut c, 10_110, be(13), &unreach);
    assert!(!c.failing_open().is_empty(), "nothing serves: fail open");
    // The link is back: be12 passes first, 20 ms before be13 would.
    at(&mut c, 13_000, be(12), &Outcome::Up);
    let e = at(&mut c, 13_100, be(12), &Outcome::Up);
    assert!(c.failing_open().is_empty(), "be12 serves: fail open over");
    assert_eq!(
        e.report.map(|r| r.backends_killed),
        Some(1),
        "at the exit only be11, dead before, is taken out again (fail open had it in)"
    );
    assert!(alive_flag(&c, be(13)), "be13 spared: its flows go on");
    assert!(!alive_flag(&c, be(11)), "be11 was down long before");
    assert_eq!(count(&table(&c), be(12)), 251, "new flows to be12 alone");
    // be13 comes back: up as usual.
    at(&mut c, 13_120, be(13), &Outcome::Up);
    at(&mut c, 13_220, be(13), &Outcome::Up);
    assert!(alive_flag(&c, be(13)));
    assert!(count(&table(&c), be(13)) > 0, "be13 takes new flows again");
    // The same outage, but be13 is really gone: `fall` more failures after
    // the exit and it is dead like any other.
    let mut c = ctl(NAT3);
    for (ms, a) in [
        (0, 12),
        (10, 13),
        (100, 12),
        (110, 13),
        (120, 11),
        (220, 11),
    ] {
        at(&mut c, ms, be(a), &unreach);
    }
    at(&mut c, 3_000, be(12), &Outcome::Up);
    at(&mut c, 3_100, be(12), &Outcome::Up);
    assert!(
        alive_flag(&c, be(13)) && alive_flag(&c, be(11)),
        "both spared"
    );
    at(&mut c, 3_110, be(13), &unreach);
    assert!(alive_flag(&c, be(13)), "one failure: still spared");
    let e = at(&mut c, 3_210, be(13), &unreach);
    assert!(!alive_flag(&c, be(13)), "fall failures: dead");
    assert_eq!(e.report.map(|r| r.backends_killed), Some(1));
    assert!(alive_flag(&c, be(11)), "be11 is still spared");
}
