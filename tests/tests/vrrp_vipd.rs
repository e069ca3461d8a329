//! vipd against vipd in namespaces: what VRRP does beyond the protocol
//! exchange with keepalived (tests/tests/vrrp_interop.rs): priority tracking
//! of the XDP attachment, the link going down, another MAC claiming the VIP,
//! and forged advertisements that must not move the VIP.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use vip_tests::{
    capture::{ARP_FILTER, ArpOp, Capture},
    keepalived::VrrpState,
    netns::{Lab, VIP_V4, in_netns},
    vrrpd::{VipdVrrp, VipdVrrpConf},
};
use vip_userspace::vrrp::{
    Family,
    announce::Announcer,
    net::{Transport, VrrpSocket, group, source_address},
    packet::Advert,
};

const VIP: IpAddr = IpAddr::V4(VIP_V4);

/// vipd on `node` with VIP 10.77.0.100, 100 ms adverts and a short
/// announcement burst; `local`: the node's own address is a `local: true`
/// backend, as in a stacked control plane.
fn start_with(lab: &Lab, node: &str, priority: u8, preempt: bool, local: bool) -> VipdVrrp {
    let conf = VipdVrrpConf {
        preempt,
        announce_count: 2,
        announce_interval_ms: 50,
        local_backend: local.then(|| IpAddr::V4(lab.node(node).ipv4)),
        ..VipdVrrpConf::new(51, priority, &[VIP])
    };
    VipdVrrp::start(lab, node, &conf)
}

fn start(lab: &Lab, node: &str, priority: u8, preempt: bool) -> VipdVrrp {
    start_with(lab, node, priority, preempt, false)
}

fn wait_master(lab: &Lab, v: &VipdVrrp, node: &str) {
    v.wait_state(VrrpState::Master, Duration::from_secs(5));
    lab.wait_addr(node, VIP, true, Duration::from_secs(2));
}

/// The id of the XDP link `pid` holds, from its fdinfo (each bpf_link fd
/// shows `link_type` and `link_id`): exact even with other tests' programs
/// attached to interfaces with the same index in other namespaces.
fn xdp_link_id(pid: u32) -> u32 {
    let dir = format!("/proc/{pid}/fdinfo");
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir}: {e}")) {
        let Ok(text) = std::fs::read_to_string(e.expect("fdinfo entry").path()) else {
            continue;
        };
        let is_xdp = text
            .lines()
            .any(|l| l.strip_prefix("link_type:").map(str::trim) == Some("xdp"));
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("link_id:"))
            .and_then(|v| v.trim().parse().ok());
        if let (true, Some(id)) = (is_xdp, id) {
            return id;
        }
    }
    panic!(
        "vipd (pid {pid}) holds no XDP link fd:\n{}",
        std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A node whose XDP program is gone cannot forward for the VIP: its
/// priority drops and, as master, it hands over with priority 0, so the
/// healthy peer takes the VIP even though neither preempts.
#[test]
fn xdp_detached_hands_the_vip_to_a_healthy_peer() {
    let lab = Lab::new("vrrp-track", &["client", "lb1", "lb2"]);
    let lb1 = start(&lab, "lb1", 150, false);
    wait_master(&lab, &lb1, "lb1");
    let lb2 = start(&lab, "lb2", 100, false);
    lb2.wait_state(VrrpState::Backup, Duration::from_secs(5));
    assert!(
        !lab.has_addr("lb2", VIP),
        "lb2 took the VIP from a healthy master"
    );

    let id = xdp_link_id(lb1.pid()).to_string();
    let out = lab.sh("lb1", &["bpftool", "link", "detach", "id", &id]);
    let detached = Instant::now();
    lb1.wait_log("XDP program not attached", Duration::from_secs(3));
    let took = lab.wait_addr("lb2", VIP, true, Duration::from_secs(3));
    lab.wait_addr("lb1", VIP, false, Duration::from_secs(1));
    let logs = lb1.logs();
    assert!(
        logs.contains("why=our priority fell to 50"),
        "lb1 must step down because its priority fell (bpftool: {out}):\n{logs}"
    );
    assert!(
        lb2.logs().contains("why=the master left (priority 0)"),
        "lb2 must take over on lb1's priority-0 advertisement:\n{}",
        lb2.logs()
    );
    // The tracking check runs once a second, the handover then takes a skew
    // time: far below the 3.6 s master-down interval of keepalived defaults.
    assert!(
        detached.elapsed() < Duration::from_secs(3),
        "handover took {took:?} after the detach"
    );
    // lb1 (priority 50 now) stays backup behind lb2 (100).
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !lab.has_addr("lb1", VIP),
        "lb1 took the VIP back while it cannot forward"
    );
    assert!(lab.has_addr("lb2", VIP));
}

/// The link going down releases the VIP at once (a node that cannot be
/// reached must not keep answering for it once it comes back); when it
/// comes back the election starts again and the higher priority preempts.
#[test]
fn link_down_releases_the_vip_and_link_up_rejoins() {
    let lab = Lab::new("vrrp-link", &["client", "lb1", "lb2"]);
    let lb1 = start(&lab, "lb1", 150, true);
    wait_master(&lab, &lb1, "lb1");
    let lb2 = start(&lab, "lb2", 100, true);
    lb2.wait_state(VrrpState::Backup, Duration::from_secs(5));

    lab.sh("lb1", &["ip", "link", "set", "eth0", "down"]);
    let released = lab.wait_addr("lb1", VIP, false, Duration::from_secs(2));
    assert!(
        released < Duration::from_millis(1000),
        "released after {released:?}"
    );
    lab.wait_addr("lb2", VIP, true, Duration::from_secs(2));

    lab.sh("lb1", &["ip", "link", "set", "eth0", "up"]);
    lab.wait_addr("lb1", VIP, true, Duration::from_secs(3));
    lab.wait_addr("lb2", VIP, false, Duration::from_secs(2));
    let logs = lb1.logs();
    assert!(
        logs.contains("up=false") && logs.contains("up=true"),
        "{logs}"
    );
}

/// Another host announcing the VIP (a stale holder, a misconfigured box):
/// the master counts a split brain and re-announces, so the client's ARP
/// entry comes back to it.
#[test]
fn another_mac_claiming_the_vip_is_answered() {
    let lab = Lab::new("vrrp-claim", &["client", "lb1", "rogue"]);
    let lb1 = start(&lab, "lb1", 150, true);
    wait_master(&lab, &lb1, "lb1");
    let lb1_mac = lab.node("lb1").mac_string();
    let rogue_mac = lab.node("rogue").mac_string();
    lab.sh("client", &["ping", "-c1", "-W1", &VIP.to_string()]);
    assert_eq!(
        lab.neighbour("client", VIP).as_deref(),
        Some(lb1_mac.as_str())
    );

    let cap = Capture::start(&lab, "client", ARP_FILTER);
    let rogue_ns = lab.node("rogue").ns.clone();
    in_netns(&rogue_ns, || {
        Announcer::open("eth0")
            .expect("announcer on rogue")
            .announce(VIP)
            .expect("rogue announce");
    });
    lb1.wait_log("split brain", Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(3);
    while lab.neighbour("client", VIP).as_deref() != Some(lb1_mac.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the client's ARP entry stayed {:?} (rogue {rogue_mac})",
            lab.neighbour("client", VIP)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pkts = cap.stop();
    let garps: Vec<_> = pkts
        .iter()
        .filter_map(|p| p.arp().map(|a| (p.time, a)))
        .filter(|(_, a)| a.is_gratuitous() && a.sender_ip == VIP)
        .collect();
    let rogue_at = garps
        .iter()
        .find(|(_, a)| a.sender_mac == rogue_mac)
        .map(|(t, _)| *t)
        .expect("the rogue's gratuitous ARP in the capture");
    assert!(
        garps
            .iter()
            .any(|(t, a)| *t > rogue_at && a.sender_mac == lb1_mac),
        "no re-announcement from lb1 after the rogue's: {garps:?}"
    );
    assert!(
        lb1.logs()
            .contains(&format!("MAC {rogue_mac} claims a VIP"))
    );
}

/// A forged advertisement with a higher priority but a bad checksum is
/// discarded and counted by reason; the master keeps the VIP. A valid one
/// with that priority moves it (so the forgery was judged on its checksum).
#[test]
fn forged_advertisement_does_not_move_the_vip() {
    let lab = Lab::new("vrrp-forge", &["client", "lb1", "forger"]);
    let lb1 = start(&lab, "lb1", 150, true);
    wait_master(&lab, &lb1, "lb1");
    let ns = lab.node("forger").ns.clone();
    let send = |corrupt: bool| {
        in_netns(&ns, || {
            rt().block_on(async {
                let src = source_address("eth0", Family::V4, &[]).expect("source");
                let sock = VrrpSocket::open("eth0", Family::V4, src, &Transport::Multicast)
                    .expect("socket");
                let dst = group(Family::V4);
                let mut bytes = Advert {
                    vrid: 51,
                    priority: 254,
                    max_adver_int: 10,
                    addrs: vec![VIP],
                }
                .encode(src, dst)
                .expect("encode");
                if corrupt {
                    bytes[6] ^= 0x01;
                }
                for _ in 0..5 {
                    sock.send(&bytes, dst).await.expect("send");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        })
    };
    send(true);
    lb1.wait_log("kind=checksum", Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        lab.has_addr("lb1", VIP),
        "a bad-checksum advert moved the VIP"
    );
    assert!(!lb1.logs().contains("from=master"), "{}", lb1.logs());

    send(false);
    lab.wait_addr("lb1", VIP, false, Duration::from_secs(2));
    assert!(
        lb1.logs().contains("10.77.0.12 advertises priority 254"),
        "{}",
        lb1.logs()
    );
}

/// Stacked mode: a node whose own apiserver stops answering loses
/// `track.local_apiserver` (50) of its priority and hands the VIP to a peer
/// whose apiserver answers; two failed probes in a row are needed, so this
/// takes about two seconds plus a skew time.
#[test]
fn dead_local_apiserver_hands_the_vip_over() {
    let lab = Lab::new("vrrp-local", &["client", "lb1", "lb2"]);
    let listen = |node: &str| {
        let addr = std::net::SocketAddr::new(IpAddr::V4(lab.node(node).ipv4), 6443);
        in_netns(&lab.node(node).ns.clone(), move || {
            // The kernel completes handshakes into the backlog: a listener
            // that never accepts answers TCP connect probes.
            std::net::TcpListener::bind(addr).expect("bind the apiserver port")
        })
    };
    let apiserver1 = listen("lb1");
    let _apiserver2 = listen("lb2");
    let lb1 = start_with(&lab, "lb1", 150, false, true);
    wait_master(&lab, &lb1, "lb1");
    let lb2 = start_with(&lab, "lb2", 100, false, true);
    lb2.wait_state(VrrpState::Backup, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        lab.has_addr("lb1", VIP),
        "lb1 lost the VIP with its apiserver up:\n{}",
        lb1.logs()
    );

    drop(apiserver1);
    let down = Instant::now();
    lb1.wait_log("local apiserver does not answer", Duration::from_secs(5));
    lab.wait_addr("lb2", VIP, true, Duration::from_secs(3));
    lab.wait_addr("lb1", VIP, false, Duration::from_secs(1));
    let took = down.elapsed();
    assert!(
        lb1.logs().contains("why=our priority fell to 100"),
        "{}",
        lb1.logs()
    );
    assert!(took < Duration::from_secs(5), "handover took {took:?}");
}

/// Stacked control plane: the backup's vipd (its own apiserver a `local:
/// true` backend) makes its kernel take the VIP locally without ever
/// answering ARP for it: the VIP on `lo`, arp_ignore=1 and arp_announce=2
/// on eth0. A frame the master would send it (the client's, addressed to
/// the backup's MAC) reaches a socket bound to the VIP there; the client's
/// ARP for the VIP is answered by the master alone. vipd's stop puts it all
/// back.
#[test]
fn stacked_backup_takes_the_vip_locally_and_never_answers_arp_for_it() {
    let lab = Lab::new("vrrp-stack", &["client", "lb1", "lb2"]);
    let sysctl = |node: &str, key: &str| {
        lab.sh(
            node,
            &["cat", &format!("/proc/sys/net/ipv4/conf/eth0/{key}")],
        )
        .trim()
        .to_owned()
    };
    let on_lo = |node: &str| {
        lab.sh(node, &["ip", "-4", "addr", "show", "dev", "lo"])
            .contains(&format!("{VIP_V4}/32"))
    };
    assert_eq!(
        (sysctl("lb2", "arp_ignore"), sysctl("lb2", "arp_announce")),
        ("0".into(), "0".into()),
        "a fresh namespace's defaults"
    );
    let lb1 = start_with(&lab, "lb1", 150, true, true);
    wait_master(&lab, &lb1, "lb1");
    let lb2 = start_with(&lab, "lb2", 100, true, true);
    lb2.wait_state(VrrpState::Backup, Duration::from_secs(3));
    assert!(on_lo("lb2"), "the VIP is not on lb2's lo");
    assert!(
        !lab.has_addr("lb2", VIP),
        "the backup holds the VIP on eth0"
    );
    assert_eq!(
        (sysctl("lb2", "arp_ignore"), sysctl("lb2", "arp_announce")),
        ("1".into(), "2".into())
    );

    // Only the master answers ARP for the VIP.
    let cap = Capture::start(&lab, "client", ARP_FILTER);
    for _ in 0..3 {
        lab.sh("client", &["ip", "neigh", "flush", "dev", "eth0"]);
        lab.sh("client", &["ping", "-c1", "-W1", &VIP.to_string()]);
    }
    let lb1_mac = lab.node("lb1").mac_string();
    let lb2_mac = lab.node("lb2").mac_string();
    let replies: Vec<String> = cap
        .stop()
        .iter()
        .filter_map(|p| p.arp())
        .filter(|a| a.op == ArpOp::Reply && a.sender_ip == VIP)
        .map(|a| a.sender_mac)
        .collect();
    assert!(
        !replies.is_empty() && replies.iter().all(|m| *m == lb1_mac),
        "ARP replies for the VIP from {replies:?}; only lb1 ({lb1_mac}) may answer, not lb2 ({lb2_mac})"
    );

    // What the master's dsr rewrite does: the client's frame for the VIP
    // goes to lb2's MAC, and lb2's kernel takes it.
    let lb2_ns = lab.node("lb2").ns.clone();
    let listener = in_netns(&lb2_ns, || std::net::TcpListener::bind((VIP_V4, 7443)))
        .expect("bind the VIP on the backup: it is local there");
    lab.sh(
        "client",
        &[
            "ip",
            "neigh",
            "replace",
            &VIP.to_string(),
            "lladdr",
            &lb2_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ],
    );
    let client_ns = lab.node("client").ns.clone();
    let conn = in_netns(&client_ns, || {
        std::net::TcpStream::connect_timeout(&(VIP, 7443).into(), Duration::from_secs(2))
    });
    assert!(
        conn.is_ok(),
        "the backup did not take the VIP's frame: {conn:?}"
    );
    let (_, peer) = listener.accept().expect("accept on lb2");
    assert_eq!(peer.ip(), IpAddr::V4(lab.node("client").ipv4));

    // A stop without pins puts everything back.
    drop(lb2);
    assert!(
        !on_lo("lb2"),
        "the VIP stayed on lb2's lo after vipd stopped"
    );
    assert_eq!(
        (sysctl("lb2", "arp_ignore"), sysctl("lb2", "arp_announce")),
        ("0".into(), "0".into()),
        "lb2's ARP settings were not restored"
    );
    drop(lb1);
}
