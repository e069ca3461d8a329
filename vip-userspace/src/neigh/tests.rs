use std::path::Path;

use super::*;

const A: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
const B: [u8; 6] = [2, 0, 0, 0, 0, 0x99];

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

fn entry(state: Nud, mac: Option<[u8; 6]>) -> Option<Entry> {
    Some(Entry { state, mac })
}

fn tracker(addrs: &[&str]) -> Tracker {
    let mut t = Tracker::default();
    t.watch(&addrs.iter().map(|a| ip(a)).collect());
    t
}

#[test]
fn which_states_may_be_forwarded_to() {
    let table = [
        (Nud::Reachable, Some(A), true),
        (Nud::Stale, Some(A), true),
        (Nud::Delay, Some(A), true),
        (Nud::Probe, Some(A), true),
        (Nud::Permanent, Some(A), true),
        (Nud::Noarp, Some(A), true),
        (Nud::Incomplete, None, false),
        // FAILED may still carry the last address: the neighbour stopped
        // answering it.
        (Nud::Failed, Some(A), false),
        (Nud::Failed, None, false),
        (Nud::None, Some(A), false),
        (Nud::Reachable, None, false),
        (Nud::Reachable, Some([0; 6]), false),
        (Nud::Reachable, Some([1, 0, 0x5e, 0, 0, 1]), false),
    ];
    for (state, mac, ok) in table {
        let e = entry(state, mac);
        assert_eq!(usable(e.as_ref()).is_some(), ok, "{state:?} {mac:?}");
    }
    assert_eq!(usable(None), None, "no entry at all");
}

#[test]
fn learnt_moved_and_lost() {
    let t0 = Instant::now();
    let a = ip("10.0.0.12");
    let mut t = tracker(&["10.0.0.12"]);
    assert_eq!(t.observe(a, None, t0), None, "nothing known, nothing lost");
    assert_eq!(t.observe(a, entry(Nud::Incomplete, None), t0), None);
    assert_eq!(
        t.observe(a, entry(Nud::Reachable, Some(A)), t0),
        Some(Decision::Learnt(A))
    );
    // The same MAC in another usable state is no change.
    for s in [Nud::Stale, Nud::Delay, Nud::Probe, Nud::Reachable] {
        assert_eq!(t.observe(a, entry(s, Some(A)), t0), None, "{s:?}");
    }
    assert_eq!(
        t.observe(a, entry(Nud::Stale, Some(B)), t0),
        Some(Decision::Moved { from: A, to: B })
    );
    assert_eq!(t.mac(a), Some(B));
    assert_eq!(
        t.observe(a, entry(Nud::Failed, Some(B)), t0),
        Some(Decision::Lost(B))
    );
    assert_eq!(t.mac(a), None);
    assert_eq!(t.observe(a, None, t0), None, "lost once");
    assert_eq!(
        t.observe(a, None, t0).and_then(Decision::mac),
        None,
        "still nothing"
    );
}

#[test]
fn a_deleted_entry_loses_the_mac() {
    let t0 = Instant::now();
    let a = ip("fd00::12");
    let mut t = tracker(&["fd00::12"]);
    t.observe(a, entry(Nud::Reachable, Some(A)), t0);
    assert_eq!(t.observe(a, None, t0), Some(Decision::Lost(A)));
}

#[test]
fn other_addresses_are_ignored() {
    let mut t = tracker(&["10.0.0.12"]);
    assert_eq!(
        t.observe(
            ip("10.0.0.13"),
            entry(Nud::Reachable, Some(A)),
            Instant::now()
        ),
        None
    );
    assert_eq!(t.watched().collect::<Vec<_>>(), vec![ip("10.0.0.12")]);
}

/// A failing probe re-resolves a usable entry; the entry vipd deleted and
/// the INCOMPLETE one after it keep the last MAC, the answer re-points.
#[test]
fn a_recheck_keeps_the_mac_until_the_answer() {
    let t0 = Instant::now();
    let a = ip("10.0.0.12");
    let mut t = tracker(&["10.0.0.12"]);
    t.observe(a, entry(Nud::Reachable, Some(A)), t0);
    assert_eq!(t.verify(a, t0), Some(Verify::Recheck));
    assert_eq!(
        t.observe(a, entry(Nud::Failed, Some(A)), t0),
        None,
        "our own delete, which reports FAILED first"
    );
    assert_eq!(t.observe(a, None, t0), None, "and then the entry gone");
    assert_eq!(t.observe(a, entry(Nud::Incomplete, None), t0), None);
    assert_eq!(t.mac(a), Some(A), "still the last MAC while asking");
    assert_eq!(
        t.observe(
            a,
            entry(Nud::Reachable, Some(B)),
            t0 + Duration::from_millis(3)
        ),
        Some(Decision::Moved { from: A, to: B })
    );
    assert!(
        t.expire(t0 + VERIFY_FOR).is_empty(),
        "answered: nothing expires"
    );
}

#[test]
fn a_recheck_answered_by_the_same_mac_changes_nothing() {
    let t0 = Instant::now();
    let a = ip("10.0.0.12");
    let mut t = tracker(&["10.0.0.12"]);
    t.observe(a, entry(Nud::Reachable, Some(A)), t0);
    t.verify(a, t0);
    t.observe(a, None, t0);
    assert_eq!(t.observe(a, entry(Nud::Reachable, Some(A)), t0), None);
    assert!(t.expire(t0 + VERIFY_FOR).is_empty());
}

#[test]
fn an_unanswered_recheck_loses_the_mac() {
    let t0 = Instant::now();
    let a = ip("10.0.0.12");
    let mut t = tracker(&["10.0.0.12"]);
    t.observe(a, entry(Nud::Reachable, Some(A)), t0);
    t.verify(a, t0);
    t.observe(a, entry(Nud::Incomplete, None), t0);
    assert!(
        t.expire(t0 + VERIFY_FOR - Duration::from_millis(1))
            .is_empty()
    );
    assert_eq!(
        t.expire(t0 + VERIFY_FOR),
        vec![(a, Decision::Lost(A))],
        "nobody answered in time"
    );
    // FAILED is what deleting the entry reports first: it does not end
    // the recheck; the deadline does.
    let mut t = tracker(&["10.0.0.12"]);
    t.observe(a, entry(Nud::Reachable, Some(A)), t0);
    t.verify(a, t0);
    assert_eq!(t.observe(a, entry(Nud::Failed, Some(A)), t0), None);
    assert_eq!(t.observe(a, None, t0), None);
    assert_eq!(t.expire(t0 + VERIFY_FOR), vec![(a, Decision::Lost(A))]);
    // An INCOMPLETE entry after the recheck ran out is a loss too.
    let mut t = tracker(&["10.0.0.12"]);
    t.observe(a, entry(Nud::Reachable, Some(A)), t0);
    t.verify(a, t0);
    assert_eq!(
        t.observe(a, entry(Nud::Incomplete, None), t0 + VERIFY_FOR),
        Some(Decision::Lost(A))
    );
}

#[test]
fn verification_is_rate_limited_and_spares_admin_entries() {
    let t0 = Instant::now();
    let a = ip("10.0.0.12");
    let mut t = tracker(&["10.0.0.12"]);
    assert_eq!(t.verify(a, t0), Some(Verify::Resolve), "nothing known yet");
    assert_eq!(t.verify(a, t0 + Duration::from_secs(1)), None);
    t.observe(a, entry(Nud::Stale, Some(A)), t0);
    assert_eq!(t.verify(a, t0 + VERIFY_GAP), Some(Verify::Recheck));
    assert_eq!(t.verify(ip("10.9.9.9"), t0), None, "not watched");
    let mut t = tracker(&["10.0.0.12"]);
    t.observe(a, entry(Nud::Permanent, Some(A)), t0);
    assert_eq!(t.verify(a, t0), None, "an administrator's entry stays");
    assert!(t.unresolved().is_empty());
}

#[test]
fn watch_keeps_what_is_known_and_forgets_the_rest() {
    let t0 = Instant::now();
    let a = ip("10.0.0.12");
    let mut t = tracker(&["10.0.0.12", "10.0.0.13"]);
    t.observe(a, entry(Nud::Reachable, Some(A)), t0);
    assert_eq!(t.unresolved(), vec![ip("10.0.0.13")]);
    t.watch(&[a, ip("10.0.0.14")].into_iter().collect());
    assert_eq!(t.mac(a), Some(A));
    assert_eq!(t.unresolved(), vec![ip("10.0.0.14")]);
}

const CFG: &str = "
interface: eth0
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 10.0.0.13
        mac: 02:00:00:00:00:13
  - vip: 10.0.0.101
    mode: nat
    backends:
      - address: 10.0.0.11
";

#[test]
fn the_node_address_is_the_local_backend_in_mode_dsr_only() {
    let mut cfg = Config::parse(Path::new("t.yaml"), CFG).expect("valid");
    let marked = derive_local(&mut cfg, &[ip("10.0.0.11"), ip("10.0.0.100")]);
    assert_eq!(marked, vec!["10.0.0.11:6443".parse().expect("addr")]);
    assert!(cfg.services[0].backends[0].local);
    assert!(!cfg.services[0].backends[1].local);
    assert!(!cfg.services[1].backends[0].local, "mode nat is left alone");
    assert_eq!(
        targets(&cfg),
        [ip("10.0.0.12")].into_iter().collect(),
        "neither the local backend nor an explicit mac is resolved"
    );
    // Idempotent, and `local: true` written in the file still counts.
    assert!(derive_local(&mut cfg, &[ip("10.0.0.11")]).is_empty());
    assert!(cfg.services[0].backends[0].local);
}

#[test]
fn messages_are_read_for_the_interface_only() {
    let mut m = entry_message(7, ip("10.0.0.12"));
    m.header.state = NeighbourState::Reachable;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(A.to_vec()));
    assert_eq!(
        parse(&m, 7, false),
        Some((ip("10.0.0.12"), entry(Nud::Reachable, Some(A))))
    );
    assert_eq!(parse(&m, 7, true), Some((ip("10.0.0.12"), None)));
    assert_eq!(parse(&m, 8, false), None, "another interface");
    // A link-layer address that is not Ethernet's is no MAC.
    let mut odd = entry_message(7, ip("fd00::12"));
    odd.header.state = NeighbourState::Reachable;
    odd.attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![1, 2, 3, 4]));
    let (_, e) = parse(&odd, 7, false).expect("read");
    assert_eq!(usable(e.as_ref()), None);
}
