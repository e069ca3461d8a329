//! The VRRP transport and the VIP announcements between network namespaces:
//! advertisements cross the lab bridge with TTL 255 from the right source,
//! do not loop back to the sender, gratuitous ARP and unsolicited NAs move
//! neighbour entries, the claim watch sees other holders, link state follows
//! admin state and carrier. tcpdump decodes what went on the wire
//! independently of our code. Needs root (`cargo xtask test`).
//!
//! Sockets are opened inside a node's namespace (and stay there for life)
//! and registered with a runtime owned by the test thread, so one async
//! block can drive sockets of several nodes.

use std::future::Future;
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::runtime::Runtime;
use vip_tests::netns::{self, Lab, Proc, in_netns, mac_to_string, poll_until};
use vip_tests::packet;
use vip_userspace::link::{self, LinkError};
use vip_userspace::vrrp::announce::{Announcer, Claim, ClaimWatch};
use vip_userspace::vrrp::net::{self, GROUP_V4, GROUP_V6, NetError, Transport, VrrpSocket};
use vip_userspace::vrrp::{Family, Received};

const IF: &str = netns::NODE_IF;
/// How long something that should happen may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long we listen to conclude that something did not happen.
const QUIET: Duration = Duration::from_millis(300);
/// A MAC nobody in the lab has: the "previous holder" of the VIP.
const OLD_MAC: &str = "02:77:00:00:00:99";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// Runs `f` in `node`'s namespace with `rt` as the current runtime, so
/// sockets opened there register with it.
fn in_node<T: Send>(lab: &Lab, rt: &Runtime, node: &str, f: impl FnOnce() -> T + Send) -> T {
    let handle = rt.handle().clone();
    in_netns(&lab.node(node).ns, move || {
        let _guard = handle.enter();
        f()
    })
}

/// A VRRP socket on `node`'s eth0, sending from `source_address`.
fn open(lab: &Lab, rt: &Runtime, node: &str, family: Family, t: Transport) -> VrrpSocket {
    in_node(lab, rt, node, || {
        let src = net::source_address(IF, family, &[])
            .unwrap_or_else(|e| panic!("{node}: source address: {e}"));
        VrrpSocket::open(IF, family, src, &t)
            .unwrap_or_else(|e| panic!("{node}: open {family:?} {t:?} from {src}: {e}"))
    })
}

async fn recv(sock: &VrrpSocket, who: &str) -> Received {
    tokio::time::timeout(TIMEOUT, sock.recv())
        .await
        .unwrap_or_else(|_| panic!("{who}: no VRRP packet within {TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{who}: recv: {e}"))
}

async fn assert_quiet<T: std::fmt::Debug>(what: &str, f: impl Future<Output = T>) {
    if let Ok(got) = tokio::time::timeout(QUIET, f).await {
        panic!("{what}: expected nothing within {QUIET:?}, got {got:?}");
    }
}

/// The link-local address as `ip` shows it (independent of getifaddrs).
fn link_local(lab: &Lab, node: &str) -> Ipv6Addr {
    let out = lab.sh(
        node,
        &["ip", "-6", "-o", "addr", "show", "dev", IF, "scope", "link"],
    );
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{node}: no link-local address in:\n{out}"))
}

/// A VRRPv3 advertisement (RFC 9568 section 5.2), assembled by hand with its
/// checksum over the IPv4 or IPv6 pseudo-header (section 5.2.8) for `src`
/// and `dst` from the test packet builder, so it depends on nothing in
/// vip-userspace.
fn advert(src: IpAddr, dst: IpAddr, vrid: u8, prio: u8, vips: &[IpAddr]) -> Vec<u8> {
    let count = u8::try_from(vips.len()).expect("at most 255 VIPs");
    // Version 3, type 1; VRID; priority; count; reserved + interval 100 cs;
    // checksum (filled below).
    let mut msg = vec![0x31, vrid, prio, count, 0x00, 100, 0, 0];
    for v in vips {
        match v {
            IpAddr::V4(a) => msg.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => msg.extend_from_slice(&a.octets()),
        }
    }
    let checksum = packet::l4_checksum(src, dst, 112, &msg);
    msg[6..8].copy_from_slice(&checksum.to_be_bytes());
    msg
}

/// tcpdump writing `count` packets matching `filter` on `node`'s eth0.
struct Capture {
    proc: Proc,
    file: PathBuf,
    count: usize,
}

impl Capture {
    /// Returns once tcpdump is listening: no packet sent after this is missed.
    fn start(lab: &Lab, node: &str, name: &str, count: usize, filter: &str) -> Capture {
        if Command::new("tcpdump").arg("--version").output().is_err() {
            panic!("tcpdump not found in PATH: install it (cargo xtask bootstrap)");
        }
        let file = lab.dir().join(format!("{name}.pcap"));
        let path = file.to_string_lossy().into_owned();
        let count_arg = count.to_string();
        // -Z root: Debian's tcpdump drops to user tcpdump, which may not
        // write into the root-owned lab dir.
        let proc = lab.spawn(
            node,
            "tcpdump",
            &[
                "-Z", "root", "-i", IF, "-nn", "-U", "-c", &count_arg, "-w", &path, filter,
            ],
            &[],
        );
        proc.wait_for_logs("listening on", Duration::from_secs(5));
        Capture { proc, file, count }
    }

    /// Waits for tcpdump to have its packets, then `tcpdump -r -nn -e -v`.
    fn decode(self) -> String {
        if self.proc.wait_timeout(TIMEOUT).is_none() {
            panic!(
                "tcpdump did not capture {} packet(s) within {TIMEOUT:?}\n{}",
                self.count,
                self.proc.logs()
            );
        }
        let out = Command::new("tcpdump")
            .arg("-r")
            .arg(&self.file)
            .args(["-nn", "-e", "-v"])
            .output()
            .unwrap_or_else(|e| panic!("tcpdump -r {}: {e}", self.file.display()));
        assert!(
            out.status.success(),
            "tcpdump -r {}: {}",
            self.file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// tcpdump's text split into packets (a packet starts at an unindented line).
fn packets(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        match out.last_mut() {
            Some(p) if line.starts_with(char::is_whitespace) => {
                p.push('\n');
                p.push_str(line);
            }
            _ => out.push(line.to_string()),
        }
    }
    out
}

fn assert_contains(text: &str, wants: &[&str]) {
    for want in wants {
        assert!(text.contains(want), "expected {want:?} in:\n{text}");
    }
}

/// `a` sends an advert for the lab VIP of `src`'s family to the VRRP group,
/// then a copy with a broken checksum. `b` receives both as sent: IP header
/// stripped, source, destination and hop limit from the control messages,
/// the bad checksum too (no IPV6_CHECKSUM; checking, and counting, is the
/// codec's job). `a` hears neither (multicast loop off). Returns tcpdump's
/// decode of the two on `b`: tcpdump -v verifies the VRRPv3 checksum over
/// the pseudo-header (so the source in our header must be the one we
/// summed) and the IPv4 header checksum, and the broken copy proves it
/// looks.
fn good_and_bad_to_the_group(lab: &Lab, src: IpAddr, vrid: u8) -> Vec<String> {
    let family = Family::of(&src);
    let rt = runtime();
    let sa = open(lab, &rt, "a", family, Transport::Multicast);
    let sb = open(lab, &rt, "b", family, Transport::Multicast);
    assert_eq!(sa.source(), src, "a's VRRP source address");
    let (group, vip, proto) = match family {
        Family::V4 => (IpAddr::V4(GROUP_V4), IpAddr::V4(netns::VIP_V4), "ip"),
        Family::V6 => (IpAddr::V6(GROUP_V6), IpAddr::V6(netns::VIP_V6), "ip6"),
    };
    let good = advert(src, group, vrid, 100, &[vip]);
    let mut bad = good.clone();
    bad[6] ^= 0xff;
    let cap = Capture::start(lab, "b", "group", 2, &format!("{proto} proto 112"));

    rt.block_on(async {
        for payload in [&good, &bad] {
            sa.send(payload, group)
                .await
                .unwrap_or_else(|e| panic!("a sends to {group}: {e}"));
            let got = recv(&sb, "b").await;
            assert_eq!(
                got,
                Received {
                    src,
                    dst: group,
                    hop_limit: 255,
                    payload: payload.clone(),
                },
                "b receives the advert as sent"
            );
        }
        assert_quiet("a's own socket", sa.recv()).await;
    });

    let text = cap.decode();
    let p = packets(&text);
    assert_eq!(p.len(), 2, "{text}");
    assert!(!p[0].contains("bad"), "good advert flagged:\n{}", p[0]);
    assert_contains(&p[1], &["(bad vrrp cksum"]);
    p
}

#[test]
fn ipv4_multicast_advert_reaches_the_peer_with_ttl_255_and_not_the_sender() {
    let lab = Lab::new("vrrp-mc4", &["a", "b"]);
    let a = lab.node("a");
    // From a's primary address.
    let p = good_and_bad_to_the_group(&lab, IpAddr::V4(a.ipv4), 51);
    assert_contains(
        &p[0],
        &[
            &format!("{} > 01:00:5e:00:00:12", a.mac_string()),
            "tos 0xc0",
            "ttl 255",
            "flags [none]",
            "proto VRRP (112)",
            "length 32)",
            &format!(
                "{} > 224.0.0.18: VRRPv3, Advertisement, vrid 51, prio 100, intvl 100cs, length 12, addrs: {}",
                a.ipv4,
                netns::VIP_V4
            ),
        ],
    );
}

#[test]
fn ipv6_multicast_advert_comes_from_the_link_local_address() {
    let lab = Lab::new("vrrp-mc6", &["a", "b"]);
    let ll_a = link_local(&lab, "a");
    let p = good_and_bad_to_the_group(&lab, IpAddr::V6(ll_a), 52);
    assert_contains(
        &p[0],
        &[
            "33:33:00:00:00:12",
            "class 0xc0",
            "hlim 255",
            "next-header VRRP (112)",
            &format!("{ll_a} > ff02::12: VRRPv3, Advertisement, vrid 52, prio 100"),
            "addrs: fd77::100",
        ],
    );
}

#[test]
fn unicast_adverts_reach_the_peer_address_and_unicast_sockets_ignore_the_group() {
    let lab = Lab::new("vrrp-uc", &["a", "b"]);
    let (a, b) = (lab.node("a"), lab.node("b"));
    let rt = runtime();
    let ll_a = link_local(&lab, "a");
    for (family, a_addr, b_addr, src, vip) in [
        (
            Family::V4,
            IpAddr::V4(a.ipv4),
            IpAddr::V4(b.ipv4),
            IpAddr::V4(a.ipv4),
            IpAddr::V4(netns::VIP_V4),
        ),
        (
            Family::V6,
            IpAddr::V6(a.ipv6),
            IpAddr::V6(b.ipv6),
            IpAddr::V6(ll_a),
            IpAddr::V6(netns::VIP_V6),
        ),
    ] {
        let sa = open(&lab, &rt, "a", family, Transport::Unicast(vec![b_addr]));
        let sb = open(&lab, &rt, "b", family, Transport::Unicast(vec![a_addr]));
        let group = net::group(family);
        rt.block_on(async {
            let payload = advert(src, b_addr, 53, 200, &[vip]);
            sa.send(&payload, b_addr).await.expect("a sends unicast");
            let got = recv(&sb, "b unicast").await;
            assert_eq!(
                got,
                Received {
                    src,
                    dst: b_addr,
                    hop_limit: 255,
                    payload,
                },
                "{family:?} unicast"
            );

            // A multicast socket on b joins the group, so group traffic
            // reaches b's IP layer; b's unicast socket must still not see it
            // (IP(V6)_MULTICAST_ALL off). Opened only now: a socket that is
            // not bound to an address also receives unicast adverts.
            let sb_group = open(&lab, &rt, "b", family, Transport::Multicast);
            let sa_group = open(&lab, &rt, "a", family, Transport::Multicast);
            let payload = advert(src, group, 53, 200, &[vip]);
            sa_group
                .send(&payload, group)
                .await
                .expect("a sends to the group");
            assert_eq!(recv(&sb_group, "b multicast").await.dst, group);
            assert_quiet(&format!("{family:?} unicast socket on b"), sb.recv()).await;
        });
    }
}

#[test]
fn source_address_skips_vips_and_finds_the_link_local() {
    let lab = Lab::new("vrrp-src", &["a"]);
    let a = lab.node("a");
    let own = format!("{}/{}", a.ipv4, netns::PREFIX_V4);
    let vip = IpAddr::V4(netns::VIP_V4);
    // Re-add the node address after the VIP: the VIP (its own /32 primary)
    // now comes first in the kernel's list.
    lab.del_addr("a", &own);
    lab.add_addr("a", &format!("{vip}/32"));
    lab.add_addr("a", &own);
    let ll = link_local(&lab, "a");

    in_netns(&a.ns, || {
        let first = net::source_address(IF, Family::V4, &[]).expect("some IPv4 address");
        assert_eq!(
            first, vip,
            "without exclusions the first address is the VIP"
        );
        assert_eq!(
            net::source_address(IF, Family::V4, &[vip]).expect("IPv4 source"),
            IpAddr::V4(a.ipv4),
            "the VIP must never be the VRRP source"
        );
        let e = net::source_address(IF, Family::V4, &[vip, IpAddr::V4(a.ipv4)])
            .expect_err("nothing left");
        assert!(
            matches!(e, NetError::NoIpv4Source { .. }) && e.to_string().contains("ip addr add"),
            "{e}"
        );
        assert_eq!(
            net::source_address(IF, Family::V6, &[]).expect("link-local"),
            IpAddr::V6(ll)
        );
        let e = net::source_address("nosuch0", Family::V4, &[]).expect_err("no interface");
        assert!(
            matches!(e, NetError::Link(LinkError::NoInterface { .. })),
            "{e}"
        );
    });

    lab.sh(
        "a",
        &[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{IF}.disable_ipv6=1"),
        ],
    );
    in_netns(&a.ns, || {
        let e = net::source_address(IF, Family::V6, &[]).expect_err("IPv6 disabled");
        assert!(matches!(e, NetError::NoLinkLocal { .. }), "{e}");
        assert!(
            e.to_string().contains("net.ipv6.conf.eth0.disable_ipv6=0"),
            "the error names the fix: {e}"
        );
    });
}

#[test]
fn gratuitous_arp_and_unsolicited_na_move_existing_neighbour_entries() {
    let lab = Lab::new("vrrp-garp", &["b", "c"]);
    let b = lab.node("b");
    let (v4, v6) = (IpAddr::V4(netns::VIP_V4), IpAddr::V6(netns::VIP_V6));
    for addr in [v4, v6] {
        let addr = addr.to_string();
        lab.sh(
            "c",
            &[
                "ip", "neigh", "replace", &addr, "lladdr", OLD_MAC, "dev", IF, "nud", "stale",
            ],
        );
        let before = lab.sh("c", &["ip", "neigh", "show", &addr, "dev", IF]);
        assert!(before.contains(OLD_MAC), "{before}");
    }
    let announcer = in_netns(&b.ns, || Announcer::open(IF).expect("announcer on b"));

    let cap = Capture::start(&lab, "c", "garp", 1, "arp");
    announcer.announce(v4).expect("gratuitous ARP");
    lab.wait_neighbour("c", v4, &b.mac_string(), TIMEOUT);
    let text = cap.decode();
    assert_contains(
        &text,
        &[
            &format!("{} > ff:ff:ff:ff:ff:ff", b.mac_string()),
            "ethertype ARP (0x0806)",
            "Request who-has 10.77.0.100 tell 10.77.0.100, length 28",
        ],
    );
    // Target MAC zero (RFC 5227 section 3): tcpdump then prints none.
    assert!(!text.contains("who-has 10.77.0.100 ("), "{text}");

    let cap = Capture::start(&lab, "c", "na", 1, "icmp6 and ip6[40] == 136");
    announcer.announce(v6).expect("unsolicited NA");
    lab.wait_neighbour("c", v6, &b.mac_string(), TIMEOUT);
    let text = cap.decode();
    let ll_b = link_local(&lab, "b");
    assert_contains(
        &text,
        &[
            &format!("{} > 33:33:00:00:00:01", b.mac_string()),
            "hlim 255",
            &format!(
                "{ll_b} > ff02::1: [icmp6 sum ok] ICMP6, neighbor advertisement, length 32, tgt is fd77::100, Flags [override]"
            ),
            &format!(
                "destination link-address option (2), length 8 (1): {}",
                b.mac_string()
            ),
        ],
    );
}

/// The next claim for `addr` on `watch`, skipping claims for other addresses.
async fn claim_for(watch: &ClaimWatch, addr: IpAddr) -> Claim {
    let mut others = Vec::new();
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            let c = watch.next().await.expect("claim watch");
            if c.addr == addr {
                return c;
            }
            others.push(c);
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no claim for {addr} within {TIMEOUT:?}; others: {others:?}"))
}

#[test]
fn claim_watch_sees_another_holder_but_not_itself() {
    let lab = Lab::new("vrrp-claim", &["b", "c"]);
    let b = lab.node("b");
    let rt = runtime();
    let watch_c = in_node(&lab, &rt, "c", || ClaimWatch::open(IF).expect("watch on c"));
    let watch_b = in_node(&lab, &rt, "b", || ClaimWatch::open(IF).expect("watch on b"));
    let announcer = in_netns(&b.ns, || Announcer::open(IF).expect("announcer on b"));
    for vip in [IpAddr::V4(netns::VIP_V4), IpAddr::V6(netns::VIP_V6)] {
        announcer.announce(vip).expect("announce");
        rt.block_on(async {
            let claim = claim_for(&watch_c, vip).await;
            assert_eq!(
                claim,
                Claim {
                    addr: vip,
                    mac: b.mac
                },
                "c sees b claim {vip}"
            );
            // b's own announcement: PACKET_OUTGOING for ARP, multicast loop
            // off for the NA.
            let own = async {
                loop {
                    match watch_b.next().await {
                        Ok(c) if c.addr == vip => return c,
                        Ok(_) => continue,
                        Err(e) => panic!("watch on b: {e}"),
                    }
                }
            };
            assert_quiet(&format!("b's watch for its own {vip}"), own).await;
        });
    }
}

#[test]
fn link_up_follows_admin_state_and_carrier() {
    let lab = Lab::new("vrrp-link", &["a"]);
    let a = lab.node("a");
    let up = || in_netns(&a.ns, || link::link_up(IF).expect("link_up"));
    let wait = |want: bool, why: &str| {
        poll_until(
            TIMEOUT,
            || format!("link_up never became {want} ({why})"),
            || up() == want,
        );
    };
    assert!(up(), "lab links start up");
    in_netns(&a.ns, || {
        assert_eq!(link::ifindex(IF).expect("ifindex"), a.ifindex);
        assert_eq!(link::mac_address(IF).expect("mac"), a.mac);
        assert_eq!(mac_to_string(&a.mac), a.mac_string());
        let e = link::mac_address("lo").expect_err("loopback is not Ethernet");
        assert!(
            matches!(e, LinkError::NotEthernet { hw_type: 772, .. }),
            "{e}"
        );
        let e = link::link_up("nosuch0").expect_err("no interface");
        assert!(matches!(e, LinkError::NoInterface { .. }), "{e}");
    });

    lab.sh("a", &["ip", "link", "set", IF, "down"]);
    assert!(!up(), "IFF_UP is cleared synchronously");
    lab.sh("a", &["ip", "link", "set", IF, "up"]);
    wait(true, "admin up again");

    // Carrier: the veth peer (the switch port) going down takes IFF_RUNNING
    // away while eth0 stays administratively up.
    lab.switch_sh(&["ip", "link", "set", &a.switch_port, "down"]);
    wait(false, "peer down");
    let flags = lab.sh("a", &["ip", "link", "show", IF]);
    assert!(
        flags.contains("NO-CARRIER") && flags.contains(",UP"),
        "{flags}"
    );
    lab.switch_sh(&["ip", "link", "set", &a.switch_port, "up"]);
    wait(true, "peer up again");
}

#[test]
fn open_checks_families_and_sources() {
    let lab = Lab::new("vrrp-open", &["a"]);
    let a = lab.node("a");
    let rt = runtime();
    in_node(&lab, &rt, "a", || {
        let v4 = IpAddr::V4(a.ipv4);
        let e = VrrpSocket::open(IF, Family::V6, v4, &Transport::Multicast)
            .expect_err("IPv4 source for IPv6");
        assert!(matches!(e, NetError::FamilyMismatch { .. }), "{e}");
        let e = VrrpSocket::open(
            IF,
            Family::V4,
            v4,
            &Transport::Unicast(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]),
        )
        .expect_err("IPv6 peer for IPv4");
        assert!(matches!(e, NetError::FamilyMismatch { .. }), "{e}");
        let e = VrrpSocket::open(IF, Family::V6, IpAddr::V6(a.ipv6), &Transport::Multicast)
            .expect_err("global IPv6 source");
        assert!(matches!(e, NetError::NotLinkLocal { .. }), "{e}");
        let e = VrrpSocket::open("nosuch0", Family::V4, v4, &Transport::Multicast)
            .expect_err("no interface");
        assert!(
            matches!(e, NetError::Link(LinkError::NoInterface { .. })),
            "{e}"
        );
    });
    // Outside any runtime: an error, not tokio's panic.
    let e = in_netns(&a.ns, || {
        VrrpSocket::open(IF, Family::V4, IpAddr::V4(a.ipv4), &Transport::Multicast)
            .expect_err("no runtime")
    });
    assert!(matches!(e, NetError::NoRuntime { .. }), "{e}");
}

/// The router runs on a thread of its own: a master keeps advertising on
/// time while the thread that started it (the agent's one thread, in vipd)
/// is held. It ran on the caller's runtime before; a master's agent held
/// for about 400 ms missed its adverts, and its backup took the VIP after
/// Master_Down_Interval (361 ms at 100 ms, priority 100; RFC 9568 6.4.2)
/// while the master still held it (seen in CI, discovery suite).
#[test]
fn a_master_advertises_while_the_thread_that_started_it_is_held() {
    use vip_userspace::vrrp::machine::State;
    use vip_userspace::vrrp::metrics::RouterStats;
    use vip_userspace::vrrp::router::{self, RouterSpec};
    use vip_userspace::vrrp::{Priority, Vrid, VrrpPlan};

    let lab = Lab::new("vrrp-held", &["a", "b"]);
    let rt = runtime();
    let spec = RouterSpec {
        ifname: IF.to_owned(),
        family: Family::V4,
        plan: VrrpPlan {
            vrid: Vrid(61),
            priority: Priority(100),
            advert_interval_cs: 10,
            preempt: true,
            preempt_delay: Duration::ZERO,
            unicast_peers: vec![],
            announce_count: 1,
            announce_interval: Duration::from_millis(100),
            announce_refresh: Duration::ZERO,
            xdp_detached_weight: 0,
            local_apiserver_weight: 0,
            auth_hmac: None,
        },
        vips: vec![IpAddr::V4(netns::VIP_V4)],
    };
    let stats = RouterStats::unregistered(Family::V4, Priority(100));
    // Started from a thread whose runtime (`rt`) this test never drives:
    // as held as a thread can be.
    let r = in_node(&lab, &rt, "a", || {
        router::spawn(spec, None, stats).expect("start the router on a")
    });
    poll_until(
        Duration::from_secs(3),
        || format!("a is not master: {:?}", r.state()),
        || r.state() == State::Master,
    );
    let cap = Capture::start(&lab, "b", "held", 10, "ip proto 112");
    let file = cap.file.clone();
    drop(cap.decode());
    let out = Command::new("tcpdump")
        .arg("-r")
        .arg(&file)
        .args(["-nn", "-tt"])
        .output()
        .expect("tcpdump -r");
    let text = String::from_utf8_lossy(&out.stdout);
    let times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(times.len(), 10, "{text}");
    let gaps: Vec<f64> = times.windows(2).map(|w| (w[1] - w[0]) * 1e3).collect();
    // A backup takes over at a gap of Master_Down_Interval.
    assert!(
        gaps.iter().all(|&g| g < 361.0),
        "gaps between a's adverts (ms): {gaps:?}\n{text}"
    );
    r.stop();
    rt.block_on(r.stopped());
}
