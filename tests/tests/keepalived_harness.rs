//! The VRRP interop harness against keepalived 2.2.7, and what keepalived
//! does: two keepalived instances in a namespace lab, tcpdump on the client
//! as an independent decoder. These are the behaviours vipd's VRRP is held
//! to (tests/tests/vrrp_net.rs puts vipd in keepalived's place). Needs root;
//! run through `cargo xtask test`.
//!
//! Lab: client 10.77.0.10, lb1 10.77.0.11 (priority 150), lb2 10.77.0.12
//! (priority 100), VRID 51, 100 ms adverts. With those, RFC 9568 section 6.1
//! gives Skew_Time = (256 - 100) * 0.1 / 256 = 61 ms for lb2 and
//! Master_Down_Interval = 3 * 0.1 + 0.061 = 361 ms.

use std::net::IpAddr;
use std::time::Duration;

use vip_tests::capture::{
    self, ARP_FILTER, Capture, NA_FILTER, Packet, VRRP_FILTER, VrrpPkt, adverts_from, any_of, dump,
    epoch_now, median_gap, vrrp_group,
};
use vip_tests::keepalived::{Keepalived, KeepalivedConf, VrrpState};
use vip_tests::netns::{Lab, Node, VIP_V4, VIP_V6};
use vip_tests::vrrpd::{advert_src, link_local};

const STATE_TIMEOUT: Duration = Duration::from_secs(3);
const SHORT: Duration = Duration::from_secs(2);
/// keepalived's garp_master_repeat default: announcements per burst.
const BURST: usize = 5;

/// Times of the unsolicited announcements of `vip` by `node`: gratuitous ARP
/// requests (IPv4) or unsolicited NAs to all-nodes with the override flag
/// and the node's MAC as target link-layer address (IPv6), which keepalived
/// sends from the VIP itself.
fn announcements(packets: &[Packet], node: &Node, vip: IpAddr) -> Vec<f64> {
    capture::announcements(packets, vip, &node.mac_string(), &[vip])
}

/// Announcements within 100 ms of `from`.
fn burst(times: &[f64], from: f64) -> usize {
    times
        .iter()
        .filter(|&&t| t >= from - 0.01 && t < from + 0.1)
        .count()
}

/// Master on lb1, backup on lb2; lb1 dies (SIGKILL of keepalived and its
/// VRRP child), lb2 takes over; lb1 comes back and preempts.
fn failover_and_preemption(hint: &str, vip: IpAddr) {
    let lab = Lab::new(hint, &["client", "lb1", "lb2"]);
    let (lb1, lb2) = (lab.node("lb1").clone(), lab.node("lb2").clone());
    let announce = if vip.is_ipv6() { NA_FILTER } else { ARP_FILTER };
    let cap = Capture::start(&lab, "client", &any_of(&[VRRP_FILTER, announce]));
    let conf1 = KeepalivedConf::new(51, 150, &[vip]);
    let conf2 = KeepalivedConf::new(51, 100, &[vip]);

    // lb1 first, so lb2 starts under a master and never holds the VIP.
    let k1 = Keepalived::start(&lab, "lb1", &conf1);
    k1.wait_state(VrrpState::Master, STATE_TIMEOUT);
    let k2 = Keepalived::start(&lab, "lb2", &conf2);
    k2.wait_state(VrrpState::Backup, STATE_TIMEOUT);
    lab.wait_addr("lb1", vip, true, SHORT);
    assert!(!lab.has_addr("lb2", vip), "backup lb2 holds {vip}");
    lab.ping("client", vip);
    assert_eq!(
        lab.neighbour("client", vip),
        Some(lb1.mac_string()),
        "client resolves {vip} to lb1"
    );
    // A steady second of adverts for the interval check.
    std::thread::sleep(Duration::from_millis(1000));

    let t_kill = epoch_now();
    k1.kill9();
    assert!(!k1.is_running(), "lb1 keepalived survived kill9");
    let took = k2.wait_state(VrrpState::Master, STATE_TIMEOUT);
    lab.wait_addr("lb2", vip, true, SHORT);
    // Nobody removes a dead keepalived's VIPs: lb1 still has the address,
    // but the client follows lb2's announcements.
    assert!(
        lab.has_addr("lb1", vip),
        "keepalived killed with SIGKILL left {vip} on lb1? it does not clean up"
    );
    cap.wait_for("an announcement from lb2", SHORT, |p| {
        p.is_announcement(vip, &lb2.mac_string(), &[vip])
    });
    lab.wait_neighbour("client", vip, &lb2.mac_string(), SHORT);
    lab.ping("client", vip);
    assert_eq!(k2.transitions(), [VrrpState::Backup, VrrpState::Master]);

    // lb1 comes back: keepalived clears the stale VIP at startup, listens
    // as backup, discards lb2's lower-priority adverts and preempts once its
    // Master_Down_Interval (3 * 0.1 + 0.041 s) runs out.
    let t_restart = epoch_now();
    let k1b = Keepalived::start(&lab, "lb1", &conf1);
    k1b.wait_state(VrrpState::Master, STATE_TIMEOUT);
    k2.wait_state(VrrpState::Backup, STATE_TIMEOUT);
    lab.wait_addr("lb2", vip, false, SHORT);
    assert!(lab.has_addr("lb1", vip), "lb1 master without {vip}");
    assert_eq!(k1b.transitions(), [VrrpState::Backup, VrrpState::Master]);
    let logs = k1b.logs();
    let removing = logs.find(") removing VIPs.").expect("startup clears VIPs");
    let backup = logs.find(") Entering BACKUP STATE (init)").expect("init");
    assert!(
        removing < backup,
        "VIPs cleared before BACKUP (init):\n{logs}"
    );
    assert!(
        logs.contains("received lower priority (100) advert from"),
        "lb1 logs lb2's adverts while preempting:\n{logs}"
    );
    assert!(
        k2.logs().contains("Master received advert from ")
            && k2.logs().contains("with higher priority 150, ours 100"),
        "lb2 says why it steps down:\n{}",
        k2.logs()
    );
    lab.wait_neighbour("client", vip, &lb1.mac_string(), SHORT);
    std::thread::sleep(Duration::from_millis(300));
    let packets = cap.stop();
    let all = || dump(&packets);

    // The adverts, as tcpdump decodes them.
    let (dst, dst_mac) = vrrp_group(vip);
    let from1 = adverts_from(&packets, advert_src(&lb1, vip));
    let from2 = adverts_from(&packets, advert_src(&lb2, vip));
    assert!(from1.len() > 10, "few adverts from lb1:\n{}", all());
    let vrrp_frames = packets.iter().filter(|p| p.vrrp().is_some());
    for p in vrrp_frames {
        assert_eq!(p.dst_mac, dst_mac, "VRRP frame to the group MAC: {p}");
    }
    for (prio, list) in [(150, &from1), (100, &from2)] {
        for (_, v) in list.iter() {
            let want = VrrpPkt {
                dst,
                hop_limit: 255,
                tos: 0xc0,
                version: 3,
                vrid: 51,
                prio,
                intvl_cs: 10,
                addrs: vec![vip],
                checksum_ok: true,
                ..v.clone()
            };
            assert_eq!(v, &want, "advert fields");
        }
    }
    let before_kill: Vec<_> = from1.iter().filter(|(t, _)| *t < t_kill).cloned().collect();
    let gap = median_gap(&before_kill);
    assert!(
        (0.09..0.12).contains(&gap),
        "lb1 advert interval {gap:.3} s, configured 0.1 s"
    );

    // lb1's burst of announcements when it first became master.
    let first1 = from1[0].0;
    let ann1 = announcements(&packets, &lb1, vip);
    assert_eq!(
        burst(&ann1, first1),
        BURST,
        "lb1's announcements at {first1}: {ann1:?}\n{}",
        all()
    );

    // Takeover: lb1 falls silent (no priority 0 from a dead node), lb2's
    // first advert follows lb1's last by Master_Down_Interval.
    let last1 = before_kill.last().expect("lb1 adverts before the kill").0;
    let silent: Vec<_> = from1
        .iter()
        .filter(|(t, _)| *t > last1 && *t < t_restart)
        .collect();
    assert!(silent.is_empty(), "dead lb1 still sent {silent:?}");
    let first2 = from2.first().expect("adverts from lb2").0;
    let down = first2 - last1;
    assert!(
        (0.3..0.6).contains(&down),
        "lb2 took over {down:.3} s after lb1's last advert; Master_Down_Interval is 0.361 s"
    );
    assert!(
        first2 - t_kill < 1.0,
        "takeover {:.3} s after the kill",
        first2 - t_kill
    );
    let ann2 = announcements(&packets, &lb2, vip);
    assert_eq!(burst(&ann2, first2), BURST, "lb2's announcements: {ann2:?}");

    // Preemption: lb1's adverts resume, lb2 stops without a priority 0.
    let back1 = from1
        .iter()
        .find(|(t, _)| *t > t_restart)
        .unwrap_or_else(|| {
            panic!(
                "no adverts from restarted lb1 (started {t_restart}):\n{}",
                all()
            )
        })
        .0;
    let last2 = from2.last().expect("lb2 adverts").0;
    assert!(
        last2 < back1 + 0.05,
        "lb2 still advertised at {last2} after lb1 came back at {back1}"
    );
    assert!(from2.iter().all(|(_, v)| v.prio == 100));
    assert_eq!(
        burst(&ann1, back1),
        BURST,
        "restarted lb1's announcements: {ann1:?}"
    );
    eprintln!(
        "{hint}: lb2 MASTER logged {took:?} after the kill; first lb2 advert {:.3} s after the \
         kill, {down:.3} s after lb1's last; restarted lb1 advertised {:.3} s after start \
         (MASTER); advert interval {gap:.3} s; {} + {} announcements",
        first2 - t_kill,
        back1 - t_restart,
        ann1.len(),
        ann2.len()
    );
}

#[test]
fn ipv4_failover_and_preemption() {
    failover_and_preemption("ka-v4", IpAddr::V4(VIP_V4));
}

#[test]
fn ipv6_failover_and_preemption() {
    failover_and_preemption("ka-v6", IpAddr::V6(VIP_V6));
}

/// With unicast peers the adverts go to the peer's address, not the group,
/// for both families; the client sees no VRRP at all. IPv6 peers are given
/// by link-local address (keepalived binds its unicast socket to its own
/// link-local source). keepalived sends IPv6 unicast adverts with hop limit
/// 64 unless `unicast_ttl` is set (lb2 sets it, lb1 does not) and accepts
/// them. Also: two keepalived processes (one per family) run side by side
/// in one namespace, and a second burst of gratuitous ARPs follows the
/// first after garp_master_delay.
#[test]
fn unicast_peers() {
    let lab = Lab::new("ka-unicast", &["client", "lb1", "lb2"]);
    let (lb1, lb2) = (lab.node("lb1").clone(), lab.node("lb2").clone());
    let cap_client = Capture::start(&lab, "client", &any_of(&[VRRP_FILTER, ARP_FILTER]));
    let cap_lb2 = Capture::start(&lab, "lb2", VRRP_FILTER);
    let v4 = |n: &Node| IpAddr::V4(n.ipv4);
    let ll = |n: &Node| IpAddr::V6(link_local(n));
    let (vip4, vip6) = (IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6));
    let conf = |prio: u8, vip: IpAddr, peer: IpAddr, ttl: Option<u8>| KeepalivedConf {
        unicast_peers: vec![peer],
        unicast_ttl: ttl,
        garp_master_delay_s: Some(1),
        ..KeepalivedConf::new(52, prio, &[vip])
    };
    let k1 = Keepalived::start(&lab, "lb1", &conf(150, vip4, v4(&lb2), None));
    let k1_6 = Keepalived::start(&lab, "lb1", &conf(150, vip6, ll(&lb2), None));
    k1.wait_state(VrrpState::Master, STATE_TIMEOUT);
    k1_6.wait_state(VrrpState::Master, STATE_TIMEOUT);
    let k2 = Keepalived::start(&lab, "lb2", &conf(100, vip4, v4(&lb1), None));
    let k2_6 = Keepalived::start(&lab, "lb2", &conf(100, vip6, ll(&lb1), Some(255)));
    k2.wait_state(VrrpState::Backup, STATE_TIMEOUT);
    k2_6.wait_state(VrrpState::Backup, STATE_TIMEOUT);
    for vip in [vip4, vip6] {
        lab.wait_addr("lb1", vip, true, SHORT);
        assert!(!lab.has_addr("lb2", vip), "backup lb2 holds {vip}");
    }
    // Past garp_master_delay (1 s) for the second burst.
    std::thread::sleep(Duration::from_millis(1300));
    // lb2 stayed backup: it accepts lb1's IPv6 adverts with hop limit 64.
    assert_eq!(k2.transitions(), [VrrpState::Backup], "{}", k2.logs());
    assert_eq!(k2_6.transitions(), [VrrpState::Backup], "{}", k2_6.logs());

    // lb1 dies; lb2 takes over and advertises to lb1's addresses.
    k1.kill9();
    k1_6.kill9();
    k2.wait_state(VrrpState::Master, STATE_TIMEOUT);
    k2_6.wait_state(VrrpState::Master, STATE_TIMEOUT);
    std::thread::sleep(Duration::from_millis(300));

    let at_lb2 = cap_lb2.stop();
    let at_client = cap_client.stop();
    let adverts: Vec<(&Packet, VrrpPkt)> =
        at_lb2.iter().filter_map(|p| Some((p, p.vrrp()?))).collect();
    // (from, to, source, destination, priority, hop limit)
    let flows = [
        (&lb1, &lb2, v4(&lb1), v4(&lb2), 150, 255),
        (&lb1, &lb2, ll(&lb1), ll(&lb2), 150, 64),
        (&lb2, &lb1, v4(&lb2), v4(&lb1), 100, 255),
        (&lb2, &lb1, ll(&lb2), ll(&lb1), 100, 255),
    ];
    for (from, to, src, dst, prio, hops) in flows {
        let flow: Vec<&(&Packet, VrrpPkt)> = adverts
            .iter()
            .filter(|(_, v)| v.src == src && v.dst == dst)
            .collect();
        assert!(
            flow.len() >= 3,
            "few unicast adverts {} {src} -> {} {dst}:\n{}",
            from.name,
            to.name,
            dump(&at_lb2)
        );
        for (p, v) in flow {
            assert_eq!(p.dst_mac, to.mac_string(), "unicast frame: {p}");
            assert_eq!(
                (v.prio, v.hop_limit, v.vrid, v.checksum_ok),
                (prio, hops, 52, true),
                "{p}"
            );
        }
    }
    // Nothing else: every advert on lb2's link is one of those flows.
    for (p, v) in &adverts {
        assert!(
            flows.iter().any(|f| (f.2, f.3) == (v.src, v.dst)),
            "unexpected advert {p}"
        );
    }
    let multicast: Vec<&Packet> = at_client
        .iter()
        .filter(|p| p.vrrp().is_some_and(|v| v.dst.is_multicast()))
        .collect();
    assert!(
        multicast.is_empty(),
        "multicast VRRP with unicast peers:\n{}",
        dump(&at_client)
    );

    // Gratuitous ARPs still go out (broadcast), in two bursts.
    let ann = announcements(&at_client, &lb1, vip4);
    let first = *ann.first().expect("gratuitous ARPs from lb1");
    assert_eq!(burst(&ann, first), BURST, "{ann:?}");
    let second = ann
        .iter()
        .copied()
        .find(|&t| t > first + 0.5)
        .expect("a second burst after garp_master_delay");
    assert!(
        (0.9..1.3).contains(&(second - first)),
        "second burst {:.3} s after the first, garp_master_delay 1 s",
        second - first
    );
    assert_eq!(burst(&ann, second), BURST, "{ann:?}");
    eprintln!("unicast: ARP bursts {:.3} s apart", second - first);
}

/// SIGTERM: the master sends one priority 0 advert, drops the VIP, and the
/// backup takes over after Skew_Time (61 ms) instead of Master_Down_Interval.
#[test]
fn sigterm_sends_priority_zero() {
    let lab = Lab::new("ka-term", &["client", "lb1", "lb2"]);
    let (lb1, lb2) = (lab.node("lb1").clone(), lab.node("lb2").clone());
    let vip = IpAddr::V4(VIP_V4);
    let cap = Capture::start(&lab, "client", VRRP_FILTER);
    let k1 = Keepalived::start(&lab, "lb1", &KeepalivedConf::new(51, 150, &[vip]));
    k1.wait_state(VrrpState::Master, STATE_TIMEOUT);
    let k2 = Keepalived::start(&lab, "lb2", &KeepalivedConf::new(51, 100, &[vip]));
    k2.wait_state(VrrpState::Backup, STATE_TIMEOUT);
    std::thread::sleep(Duration::from_millis(300));

    let t_term = epoch_now();
    let status = k1.term();
    let exit_took = epoch_now() - t_term;
    assert!(status.success(), "keepalived exit status {status}");
    k2.wait_state(VrrpState::Master, STATE_TIMEOUT);
    lab.wait_addr("lb2", vip, true, SHORT);
    assert!(!lab.has_addr("lb1", vip), "lb1 kept {vip} after SIGTERM");
    let l1 = k1.logs();
    assert!(
        l1.contains("Stopping")
            && l1.contains(") sent 0 priority")
            && l1.contains(") removing VIPs."),
        "{l1}"
    );
    k2.wait_log(") Backup received priority 0 advertisement", SHORT);
    std::thread::sleep(Duration::from_millis(200));

    let packets = cap.stop();
    let from1 = adverts_from(&packets, IpAddr::V4(lb1.ipv4));
    let zeros: Vec<f64> = from1
        .iter()
        .filter(|(_, v)| v.prio == 0)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(zeros.len(), 1, "priority 0 adverts:\n{}", dump(&packets));
    let zero = zeros[0];
    let (_, z) = from1.iter().find(|(t, _)| *t == zero).expect("the advert");
    assert_eq!(
        (z.hop_limit, z.vrid, z.addrs.clone(), z.checksum_ok),
        (255, 51, vec![vip], true)
    );
    assert!(
        from1.iter().all(|(t, _)| *t <= zero),
        "lb1 advertised after its priority 0"
    );
    let first2 = adverts_from(&packets, IpAddr::V4(lb2.ipv4))
        .first()
        .expect("adverts from lb2")
        .0;
    let skew = first2 - zero;
    assert!(
        (0.04..0.2).contains(&skew),
        "lb2's first advert {skew:.3} s after the priority 0; Skew_Time is 0.061 s"
    );
    eprintln!(
        "sigterm: priority 0 sent {:.3} s after SIGTERM, lb2 advertised {skew:.3} s later, \
         keepalived exited {exit_took:.3} s after SIGTERM",
        zero - t_term
    );
}
