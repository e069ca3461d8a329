use std::time::Duration;

use super::*;
use crate::config::format_mac;

const RECIPE_KA: &str = include_str!("../../tests/import/kubeadm/keepalived.conf");
const RECIPE_HA: &str = include_str!("../../tests/import/kubeadm/haproxy.cfg");
const ODD_KA: &str = include_str!("../../tests/import/unsupported/keepalived.conf");
const ODD_HA: &str = include_str!("../../tests/import/unsupported/haproxy.cfg");

fn src(name: &str, text: &str) -> Option<Source> {
    Some(Source {
        name: name.into(),
        text: text.into(),
    })
}

pub(super) fn a(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn host(addrs: &[&str]) -> Vec<HostAddr> {
    addrs
        .iter()
        .map(|s| HostAddr {
            interface: "eth0".into(),
            addr: a(s),
        })
        .collect()
}

/// The neighbour table of the test host: cp1 and cp2 resolved.
fn neighbours() -> BTreeMap<IpAddr, [u8; 6]> {
    [
        (a("10.0.0.11"), [0x52, 0x54, 0, 0, 0, 0x11]),
        (a("10.0.0.12"), [0x52, 0x54, 0, 0, 0, 0x12]),
        (a("10.1.0.12"), [0x52, 0x54, 0, 1, 0, 0x12]),
        (a("10.1.0.13"), [0x52, 0x54, 0, 1, 0, 0x13]),
        (a("fd00::11"), [0x52, 0x54, 0, 6, 0, 0x11]),
        (a("fd00::12"), [0x52, 0x54, 0, 6, 0, 0x12]),
    ]
    .into_iter()
    .collect()
}

fn opts(ka: Option<&str>, ha: Option<&str>) -> Options {
    Options {
        keepalived: ka.and_then(|t| src("keepalived.conf", t)),
        haproxy: ha.and_then(|t| src("haproxy.cfg", t)),
        mode: Mode::Dsr,
        node_address: None,
        interface: None,
        vips: vec![],
        backends: vec![],
        macs: BTreeMap::new(),
        host: host(&["127.0.0.1", "10.0.0.13"]),
        other_nodes: vec![],
        node_name: "cp3".into(),
    }
}

fn ok(o: &Options) -> Imported {
    convert(o, &neighbours()).unwrap_or_else(|e| panic!("import failed: {e}"))
}

fn err(o: &Options) -> String {
    match convert(o, &neighbours()) {
        Ok(i) => panic!("import must fail, wrote:\n{}", i.yaml),
        Err(e) => e.to_string(),
    }
}

#[test]
fn kubeadm_recipe_converts_field_by_field() {
    let i = ok(&opts(Some(RECIPE_KA), Some(RECIPE_HA)));
    let c = &i.config;
    assert_eq!(c.interface, "eth0", "interface from keepalived");
    let v = c.vrrp.as_ref().expect("vrrp section");
    let plan = v.plan();
    assert_eq!(plan.vrid.0, 51, "virtual_router_id");
    assert_eq!(plan.priority.0, 101, "priority");
    assert_eq!(
        plan.advert_interval_cs, 10,
        "vipd's 100ms for unset advert_int"
    );
    assert!(plan.preempt, "keepalived preempts by default");
    assert_eq!(plan.preempt_delay, std::time::Duration::ZERO);
    assert!(plan.unicast_peers.is_empty(), "multicast");
    assert_eq!(
        plan.local_apiserver_weight, 2,
        "|weight -2| of check_apiserver"
    );
    assert_eq!(plan.xdp_detached_weight, 100, "vipd default kept");
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(s.vip, a("10.0.0.100"));
    assert_eq!(
        s.port, 6443,
        "dsr: the apiservers' port, not HAProxy's 8443"
    );
    assert_eq!(s.mode, Mode::Dsr);
    assert_eq!(s.snat, None);
    let got: Vec<(IpAddr, Option<u16>, Option<String>, bool)> = s
        .backends
        .iter()
        .map(|b| (b.address, b.port, b.mac.as_ref().map(format_mac), b.local))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                a("10.0.0.11"),
                None,
                Some("52:54:00:00:00:11".into()),
                false
            ),
            (
                a("10.0.0.12"),
                None,
                Some("52:54:00:00:00:12".into()),
                false
            ),
            (a("10.0.0.13"), None, None, true),
        ],
        "backends, MACs from the neighbour table, cp3 local by this host's address"
    );
    let p = &s.probe;
    assert_eq!(p.path, "/readyz");
    assert_eq!(
        (p.interval, p.timeout, p.fall, p.rise),
        (Duration::from_secs(1), Duration::from_secs(1), 2, 2),
        "unset inter/fall/rise: vipd's defaults; timeout check 10s cut to the interval"
    );
    assert_eq!(p.ca, Path::new("/etc/kubernetes/pki/ca.crt"));
    assert_eq!(p.server_name.as_str(), "kubernetes");
    let y = &i.yaml;
    for want in [
        "# vipd configuration written by `vipd import`",
        "from keepalived.conf and haproxy.cfg.",
        "this node: an address of this host",
        "HAProxy checked /healthz (haproxy.cfg:36)",
        "`verify none`, haproxy.cfg:42",
        "HAProxy listened on port 8443 (haproxy.cfg:27)",
        "controlPlaneEndpoint: 10.0.0.100:6443",
        "vrrp_script check_apiserver (keepalived.conf:7, \"/etc/keepalived/check_apiserver.sh\") had weight -2",
        "keepalived spoke VRRPv2",
    ] {
        assert!(y.contains(want), "output lacks {want:?}:\n{y}");
    }
}

/// Every setting of the recipe that vipd does not take has its comment,
/// naming the file and line, and there are no others.
#[test]
fn recipe_settings_not_carried_over_are_each_named() {
    let i = ok(&opts(Some(RECIPE_KA), Some(RECIPE_HA)));
    let want = [
        "keepalived.conf:5: router_id LVS_DEVEL (names this node",
        "keepalived.conf:8: script /etc/keepalived/check_apiserver.sh (vipd probes this node's own apiserver",
        "keepalived.conf:9: interval 3 (the local apiserver is tracked with its probe's timing",
        "keepalived.conf:11: fall 10 (",
        "keepalived.conf:12: rise 2 (",
        "keepalived.conf:16: state MASTER (VRRPv3 (RFC 9568 6.4.1)",
        "keepalived.conf:20: authentication { ... } (VRRPv3 (RFC 9568) has no authentication",
        "haproxy.cfg:6: log stdout format raw local0 (vipd logs backend state changes",
        "haproxy.cfg:7: daemon (an HAProxy process setting",
        "haproxy.cfg:10: mode http (vipd balances TCP",
        "haproxy.cfg:11: log global (vipd logs backend state changes",
        "haproxy.cfg:12: option httplog (",
        "haproxy.cfg:13: option dontlognull (",
        "haproxy.cfg:14: option http-server-close (",
        "haproxy.cfg:15: option forwardfor except 127.0.0.0/8 (",
        "haproxy.cfg:16: option redispatch (no proxy retries",
        "haproxy.cfg:17: retries 1 (no proxy retries",
        "haproxy.cfg:18: timeout http-request 10s (vipd forwards packets and holds no proxied connections",
        "haproxy.cfg:19: timeout queue 20s (",
        "haproxy.cfg:20: timeout connect 5s (",
        "haproxy.cfg:21: timeout client 35s (",
        "haproxy.cfg:22: timeout server 35s (",
        "haproxy.cfg:23: timeout http-keep-alive 10s (",
        "haproxy.cfg:29: option tcplog (vipd logs backend state changes",
        "haproxy.cfg:40: balance roundrobin (vipd spreads new flows with a Maglev table",
    ];
    for w in want {
        assert!(
            i.yaml.contains(&format!("# not carried over: {w}")),
            "no comment {w:?} in:\n{}",
            i.yaml
        );
    }
    // The password is not copied.
    assert!(!i.yaml.contains("auth_pass"), "{}", i.yaml);
    // Each line of `want` is a different FILE:LINE, so with all of them
    // found this count leaves room for no other comment.
    assert_eq!(i.not_carried_over, 25, "{}", i.yaml);
    assert_eq!(want.len(), i.not_carried_over);
}

#[test]
fn unsupported_settings_each_get_their_comment() {
    let mut o = opts(Some(ODD_KA), Some(ODD_HA));
    o.host = host(&["10.1.0.99"]);
    let i = ok(&o);
    let c = &i.config;
    assert_eq!(c.interface, "ens3");
    let plan = c.vrrp.as_ref().expect("vrrp").plan();
    assert_eq!(plan.vrid.0, 7);
    assert_eq!(plan.priority.0, 150);
    assert_eq!(plan.advert_interval_cs, 50, "advert_int 0.5");
    assert!(!plan.preempt, "nopreempt");
    assert_eq!(plan.unicast_peers, vec![a("10.1.0.12"), a("10.1.0.13")]);
    assert_eq!(plan.local_apiserver_weight, 20);
    assert_eq!(plan.announce_count, 5, "garp_master_repeat");
    let s = &c.services[0];
    assert_eq!(s.vip, a("10.1.0.100"));
    assert_eq!(s.port, 6443);
    assert!(
        s.backends[0].local && s.backends[0].address == a("10.1.0.11"),
        "unicast_src_ip picks cp1 although this host's address is another"
    );
    assert_eq!(
        s.backends.len(),
        3,
        "the backup server is an ordinary backend"
    );
    assert_eq!(
        (
            s.probe.interval,
            s.probe.timeout,
            s.probe.fall,
            s.probe.rise
        ),
        (Duration::from_secs(2), Duration::from_millis(1500), 3, 2),
        "inter 2s fall 3 rise 2, timeout check 1500ms"
    );
    let want = [
        "keepalived.conf:4: router_id cp1 (",
        "keepalived.conf:5: script_user root (a keepalived process setting",
        "keepalived.conf:6: enable_script_security (",
        "keepalived.conf:13: timeout 3 (the local apiserver is tracked",
        "keepalived.conf:21: state BACKUP (",
        "keepalived.conf:27: unicast_src_ip 10.1.0.11 (vipd sends from the interface's own address",
        "keepalived.conf:32: authentication { ... } (VRRPv3",
        "keepalived.conf:37: 10.1.0.100/24 dev ens3 label ens3:vip (vipd adds each VIP",
        "keepalived.conf:39: track_interface { ... } (vipd tracks the link of its own interface only",
        "keepalived.conf:41: notify_master \"/etc/keepalived/notify.sh MASTER\" (vipd runs no scripts",
        "keepalived.conf:42: notify_backup \"/etc/keepalived/notify.sh BACKUP\" (",
        "keepalived.conf:43: notify /etc/keepalived/notify.sh (",
        "keepalived.conf:44: garp_master_delay 1 (vipd announces",
        "haproxy.cfg:5: log /dev/log local0 (",
        "haproxy.cfg:6: maxconn 4000 (vipd forwards packets; it neither caps nor queues",
        "haproxy.cfg:7: user haproxy (an HAProxy process setting",
        "haproxy.cfg:9: stats socket /run/haproxy/admin.sock mode 660 level admin (vipd serves its counters on /metrics",
        "haproxy.cfg:14: option tcplog (",
        "haproxy.cfg:15: option redispatch (no proxy retries",
        "haproxy.cfg:16: retries 3 (",
        "haproxy.cfg:17: maxconn 3000 (",
        "haproxy.cfg:19: timeout client 4h (vipd forwards packets and holds no proxied connections",
        "haproxy.cfg:22: slowstart 30s (a backend that comes up gets its full share",
        "haproxy.cfg:24: listen stats (the whole section: it runs in mode http",
        "haproxy.cfg:32: maxconn 2000 (",
        "haproxy.cfg:33: tcp-request inspect-delay 5s (vipd balances TCP without looking inside; it has no ACLs",
        "haproxy.cfg:39: balance leastconn (",
        "haproxy.cfg:41: weight 50 (Maglev gives every backend an equal share",
        "haproxy.cfg:42: backup (vipd has no backup servers",
    ];
    for w in want {
        assert!(
            i.yaml.contains(&format!("# not carried over: {w}")),
            "no comment {w:?} in:\n{}",
            i.yaml
        );
    }
    assert!(!i.yaml.contains("s3cret"), "the VRRP password leaked");
    assert!(i.yaml.contains("HAProxy checked /healthz (haproxy.cfg:37)"));
    assert!(
        i.yaml.contains("new flows for up to 6300ms"),
        "inter 2s x fall 3 is longer than the shutdown delay:\n{}",
        i.yaml
    );
    assert!(
        !i.yaml.contains("keepalived spoke VRRPv2"),
        "vrrp_version 3 given"
    );
}

#[test]
fn ipv6_vips_and_servers() {
    let ka = "vrrp_instance V6 {\n interface eth0\n virtual_router_id 9\n priority 120\n virtual_ipaddress {\n  fe80::1/64\n  fd00::100/64\n }\n unicast_peer {\n  fd00::11\n  fd00::12\n  10.0.0.12\n }\n}\n";
    let ha = "frontend api\n  bind :::6443 v4v6\n  default_backend api\nbackend api\n  server a [fd00::11]:6443 check\n  server b fd00::12:6443 check\n  server c ipv6@fd00::13 check\n";
    let mut o = opts(Some(ka), Some(ha));
    o.node_address = Some(a("fd00::13"));
    let i = ok(&o);
    let s = &i.config.services[0];
    assert_eq!(s.vip, a("fd00::100"), "the link-local VIP is skipped");
    assert_eq!(s.port, 6443);
    let got: Vec<(IpAddr, bool, bool)> = s
        .backends
        .iter()
        .map(|b| (b.address, b.mac.is_some(), b.local))
        .collect();
    assert_eq!(
        got,
        vec![
            (a("fd00::11"), true, false),
            (a("fd00::12"), true, false),
            (a("fd00::13"), false, true),
        ]
    );
    let plan = i.config.vrrp.as_ref().expect("vrrp").plan();
    // Global IPv6 peers cannot match vipd's link-local sources.
    assert!(plan.unicast_peers.is_empty(), "{:?}", plan.unicast_peers);
    for w in [
        "not carried over: keepalived.conf:10: fd00::11 (not link-local",
        "not carried over: keepalived.conf:11: fd00::12 (not link-local",
        "not carried over: keepalived.conf:6: fe80::1/64 (a link-local VIP",
        "not carried over: keepalived.conf:7: fd00::100/64 (vipd adds each VIP",
        "not carried over: keepalived.conf:12: 10.0.0.12 (no VIP of this address family",
        "not carried over: haproxy.cfg:2: v4v6 (",
        "controlPlaneEndpoint: [fd00::100]:6443",
    ] {
        assert!(i.yaml.contains(w), "lacks {w:?}:\n{}", i.yaml);
    }
}

#[test]
fn dual_stack_vips_get_a_service_each() {
    let ka = "vrrp_instance V4 {\n interface eth0\n virtual_router_id 9\n virtual_ipaddress { 10.0.0.100 }\n}\nvrrp_instance V6 {\n interface eth0\n virtual_router_id 9\n virtual_ipaddress { fd00::100 }\n}\n";
    let ha = "listen api\n  bind *:6443\n  server a 10.0.0.11:6443 check\n  server b [fd00::11]:6443 check\n  server c 10.0.0.13:6443 check\n  server d [fd00::13]:6443 check\n";
    let mut o = opts(Some(ka), Some(ha));
    o.host = host(&["10.0.0.13", "fd00::13"]);
    let i = ok(&o);
    let vips: Vec<(IpAddr, usize)> = i
        .config
        .services
        .iter()
        .map(|s| (s.vip, s.backends.len()))
        .collect();
    assert_eq!(vips, vec![(a("10.0.0.100"), 2), (a("fd00::100"), 2)]);
    assert!(
        i.yaml.contains(
            "not carried over: keepalived.conf:8: virtual_router_id 9 (vipd runs one election"
        ),
        "{}",
        i.yaml
    );
}

#[test]
fn unicast_src_ip_and_node_address_pick_the_local_backend() {
    let ka = RECIPE_KA.replace(
        "    priority 101\n",
        "    priority 101\n    unicast_src_ip 10.0.0.12\n    unicast_peer {\n        10.0.0.11\n        10.0.0.13\n    }\n",
    );
    let mut o = opts(Some(&ka), Some(RECIPE_HA));
    o.macs.insert(a("10.0.0.13"), [2, 0, 0, 0, 0, 0x13]);
    let i = ok(&o);
    let s = &i.config.services[0];
    let local: Vec<IpAddr> = s
        .backends
        .iter()
        .filter(|b| b.local)
        .map(|b| b.address)
        .collect();
    assert_eq!(
        local,
        vec![a("10.0.0.12")],
        "unicast_src_ip wins over this host's addresses"
    );
    assert_eq!(s.backends[2].mac, Some([0x02, 0, 0, 0, 0, 0x13]), "--mac");
    let plan = i.config.vrrp.as_ref().expect("vrrp").plan();
    assert_eq!(plan.unicast_peers, vec![a("10.0.0.11"), a("10.0.0.13")]);
    assert!(
        i.yaml
            .contains("this node: 10.0.0.12 (unicast_src_ip, keepalived.conf:20)")
    );
    o.node_address = Some(a("10.0.0.11"));
    o.macs.insert(a("10.0.0.12"), [2, 0, 0, 0, 0, 0x12]);
    let i = ok(&o);
    let local: Vec<IpAddr> = i.config.services[0]
        .backends
        .iter()
        .filter(|b| b.local)
        .map(|b| b.address)
        .collect();
    assert_eq!(
        local,
        vec![a("10.0.0.11")],
        "--node-address wins over unicast_src_ip"
    );
}

#[test]
fn nopreempt_and_preempt_delay() {
    let with = |extra: &str| {
        let ka = RECIPE_KA.replace("    priority 101\n", &format!("    priority 101\n{extra}"));
        ok(&opts(Some(&ka), Some(RECIPE_HA)))
            .config
            .vrrp
            .expect("vrrp")
            .plan()
    };
    let p = with("    nopreempt\n");
    assert!(!p.preempt);
    let p = with("    preempt_delay 2.5\n");
    assert!(p.preempt);
    assert_eq!(p.preempt_delay, std::time::Duration::from_millis(2500));
    let p = with("    advert_int 1\n");
    assert_eq!(p.advert_interval_cs, 100);
    let p = with("    advert_int 0.005\n");
    assert_eq!(p.advert_interval_cs, 2, "rounded up to VRRPv3's 20ms floor");
}

#[test]
fn track_script_weights() {
    let with = |w: &str| {
        let ka = RECIPE_KA.replace("weight -2", w);
        ok(&opts(Some(&ka), Some(RECIPE_HA)))
            .config
            .vrrp
            .expect("vrrp")
    };
    let v = with("weight -30");
    assert_eq!((v.priority(), v.track.local_apiserver), (101, 30));
    let v = with("weight 0");
    assert_eq!(
        (v.priority(), v.track.local_apiserver),
        (101, 254),
        "FAULT: drop to 1"
    );
    let v = with("weight 20");
    assert_eq!(
        (v.priority(), v.track.local_apiserver),
        (121, 20),
        "+20 while passing = 121 minus 20 while failing"
    );
    // A weight on the track_script line wins over the script's.
    let ka = RECIPE_KA.replace(
        "        check_apiserver\n",
        "        check_apiserver weight -7\n",
    );
    let v = ok(&opts(Some(&ka), Some(RECIPE_HA)))
        .config
        .vrrp
        .expect("vrrp");
    assert_eq!(v.track.local_apiserver, 7);
}

#[test]
fn ca_file_check_sni_excluded_vips_and_announce_are_carried() {
    let ka = RECIPE_KA
        .replace(
            "    priority 101\n",
            "    priority 101\n    garp_master_repeat 2\n    garp_master_refresh 30\n",
        )
        .replace(
            "    track_script {",
            "    virtual_ipaddress_excluded {\n        fd00::100\n    }\n    track_script {",
        );
    let ha = RECIPE_HA
        .replace(
            "check verify none",
            "check verify required ca-file /etc/pki/k8s-ca.pem check-sni api.example",
        )
        .replace(
            "    server cp3 10.0.0.13:6443",
            "    server cp4 [fd00::13]:6443 check\n    server cp3 10.0.0.13:6443",
        );
    let mut o = opts(Some(&ka), Some(&ha));
    o.host = host(&["10.0.0.13", "fd00::13"]);
    let i = ok(&o);
    let v = i.config.vrrp.as_ref().expect("vrrp");
    assert_eq!(
        (v.announce.count, v.announce.refresh),
        (2, Duration::from_secs(30))
    );
    let s = &i.config.services[0];
    assert_eq!(s.probe.ca, Path::new("/etc/pki/k8s-ca.pem"));
    assert_eq!(s.probe.server_name.as_str(), "api.example");
    assert!(!i.yaml.contains("`verify none`"), "{}", i.yaml);
    let six = &i.config.services[1];
    assert_eq!(six.vip, a("fd00::100"), "an excluded address is a VIP too");
    assert!(six.backends[0].local);
    assert!(
        i.yaml.contains(
            "not carried over: keepalived.conf:29: virtual_ipaddress_excluded { ... } (its addresses are imported as ordinary VIPs"
        ),
        "{}",
        i.yaml
    );
}

#[test]
fn priority_255_only_for_the_address_owner() {
    let ka = RECIPE_KA.replace("priority 101", "priority 255");
    let i = ok(&opts(Some(&ka), Some(RECIPE_HA)));
    assert_eq!(i.config.vrrp.as_ref().expect("vrrp").priority(), 254);
    assert!(i.yaml.contains("priority 255 lowered to 254"));
    let mut o = opts(Some(&ka), Some(RECIPE_HA));
    o.host = host(&["10.0.0.13", "10.0.0.100"]);
    let i = ok(&o);
    assert_eq!(
        i.config.vrrp.as_ref().expect("vrrp").priority(),
        255,
        "owner"
    );
}

#[test]
fn keepalived_syntax_variants() {
    // Braces on the next line and inline, `!` and `#` comments, quotes
    // with spaces and braces inside.
    let ka = "! a comment\nvrrp_script chk { script \"/bin/check { x }\"\n weight -5 }\nvrrp_instance VI\n{\n  interface \"eth0\"   # trailing\n  virtual_router_id 3 ! also a comment\n  virtual_ipaddress\n  {\n    10.0.0.100\n  }\n  track_script { chk }\n}\n";
    let i = ok(&opts(Some(ka), Some(RECIPE_HA)));
    let v = i.config.vrrp.as_ref().expect("vrrp");
    assert_eq!((v.vrid, v.track.local_apiserver), (3, 5));
    assert_eq!(i.config.interface, "eth0");
    assert!(i.yaml.contains("\"/bin/check { x }\""), "{}", i.yaml);
}

#[test]
fn malformed_inputs_fail_with_file_and_line() {
    let cases: Vec<(Option<String>, Option<String>, &[&str])> = vec![
        (
            Some(RECIPE_KA.replacen("    }\n    virtual_ipaddress", "    virtual_ipaddress", 1)),
            None,
            &["keepalived.conf:15:", "never closed"],
        ),
        (
            Some(format!("{RECIPE_KA}}}\n")),
            None,
            &["keepalived.conf:31:", "closes no block"],
        ),
        (
            Some("{\n".into()),
            None,
            &["keepalived.conf:1:", "no keyword"],
        ),
        (
            Some(RECIPE_KA.replace("virtual_router_id 51", "virtual_router_id fifty")),
            None,
            &[
                "keepalived.conf:18:",
                "virtual_router_id",
                "\"fifty\"",
                "1..=255",
            ],
        ),
        (
            Some(RECIPE_KA.replace("virtual_router_id 51", "virtual_router_id 300")),
            None,
            &["keepalived.conf:18:", "1..=255"],
        ),
        (
            Some(RECIPE_KA.replace("priority 101", "priority ${PRIORITY}")),
            None,
            &["keepalived.conf:19:", "${PRIORITY}"],
        ),
        (
            Some(RECIPE_KA.replace(
                "    priority 101\n",
                "    priority 101\n    advert_int fast\n",
            )),
            None,
            &["keepalived.conf:20:", "advert_int", "seconds"],
        ),
        (
            Some(RECIPE_KA.replace("10.0.0.100\n", "10.0.0.300\n")),
            None,
            &["keepalived.conf:25:", "not an IP address"],
        ),
        (
            Some(RECIPE_KA.replace(
                "\"/etc/keepalived/check_apiserver.sh\"",
                "\"/etc/keepalived/check",
            )),
            None,
            &["keepalived.conf:8:", "quoted string"],
        ),
        (
            None,
            Some(RECIPE_HA.replace("server cp2 10.0.0.12:6443 check verify none", "server cp2")),
            &["haproxy.cfg:43:", "has no address"],
        ),
        (
            None,
            Some(RECIPE_HA.replace("10.0.0.12:6443", "cp2.example:6443")),
            &["haproxy.cfg:43:", "resolves no names"],
        ),
        (
            None,
            Some(RECIPE_HA.replace("10.0.0.12:6443", "10.0.0.12:65536")),
            &["haproxy.cfg:43:", "not one port"],
        ),
        (
            None,
            Some(RECIPE_HA.replace(
                "check verify none\n    server cp2",
                "check inter fast\n    server cp2",
            )),
            &["haproxy.cfg:42:", "`inter`", "\"fast\""],
        ),
        (
            None,
            Some(format!("  maxconn 10\n{RECIPE_HA}")),
            &["haproxy.cfg:1:", "outside a section"],
        ),
        (
            None,
            Some(RECIPE_HA.replace(
                "default_backend apiserverbackend",
                "default_backend nowhere",
            )),
            &["haproxy.cfg:30:", "no `backend nowhere`"],
        ),
        (
            None,
            Some(RECIPE_HA.replace("10.0.0.12:6443", "127.0.0.1:6443")),
            &["haproxy.cfg:43:", "write the node's address"],
        ),
        (
            None,
            Some(RECIPE_HA.replace("10.0.0.12:6443", "10.0.0.12:6444")),
            &[
                "haproxy.cfg:43:",
                "mode dsr does not rewrite ports",
                "--mode nat",
            ],
        ),
        (
            None,
            Some(RECIPE_HA.replace("timeout check           10s", "timeout check 'ten")),
            &["haproxy.cfg:24:", "quoted string"],
        ),
    ];
    for (ka, ha, want) in cases {
        let o = opts(
            Some(ka.as_deref().unwrap_or(RECIPE_KA)),
            Some(ha.as_deref().unwrap_or(RECIPE_HA)),
        );
        let e = err(&o);
        for w in want {
            assert!(e.contains(w), "error {e:?} lacks {w:?}");
        }
    }
}

/// Every truncation of the samples (a file cut anywhere, as an editor
/// crash or a partial copy leaves it) converts or fails with an error;
/// none panics.
#[test]
fn truncated_inputs_never_panic() {
    let mut errors = 0;
    for (ka, ha) in [(RECIPE_KA, RECIPE_HA), (ODD_KA, ODD_HA)] {
        for cut in (0..=ka.len()).filter(|i| ka.is_char_boundary(*i)) {
            errors +=
                usize::from(convert(&opts(Some(&ka[..cut]), Some(ha)), &neighbours()).is_err());
        }
        for cut in (0..=ha.len()).filter(|i| ha.is_char_boundary(*i)) {
            errors +=
                usize::from(convert(&opts(Some(ka), Some(&ha[..cut])), &neighbours()).is_err());
        }
    }
    assert!(errors > 100, "most cuts must be refused, {errors} were");
}

#[test]
fn missing_mac_names_the_fixes() {
    let ha = RECIPE_HA.replace("10.0.0.12:6443", "10.0.0.22:6443");
    let e = err(&opts(Some(RECIPE_KA), Some(&ha)));
    for w in [
        "10.0.0.22 on eth0",
        "`ping -c 1 10.0.0.22`",
        "--mac ADDR=MAC",
        "--mode nat",
    ] {
        assert!(e.contains(w), "error {e:?} lacks {w:?}");
    }
    assert!(!e.contains("10.0.0.11"), "cp1's MAC is known: {e}");
    // --mac fills the gap; mode nat needs none.
    let mut o = opts(Some(RECIPE_KA), Some(&ha));
    o.macs.insert(a("10.0.0.22"), [2, 0, 0, 0, 0, 0x22]);
    ok(&o);
    let mut o = opts(Some(RECIPE_KA), Some(&ha));
    o.mode = Mode::Nat;
    ok(&o);
}

#[test]
fn nat_keeps_the_frontend_port_and_needs_no_macs() {
    let mut o = opts(Some(RECIPE_KA), Some(RECIPE_HA));
    o.mode = Mode::Nat;
    let i = convert(&o, &BTreeMap::new()).expect("nat needs no neighbour table");
    let s = &i.config.services[0];
    assert_eq!((s.mode, s.port), (Mode::Nat, 8443), "HAProxy's port kept");
    assert!(
        s.backends
            .iter()
            .all(|b| b.port == Some(6443) && b.mac.is_none())
    );
    assert_eq!(s.snat(), crate::config::Snat::Node);
    assert!(
        !i.yaml.contains("HAProxy listened on port"),
        "no port change to explain"
    );
    assert!(i.yaml.contains("controlPlaneEndpoint: 10.0.0.100:8443"));
}

#[test]
fn missing_inputs_name_what_and_where() {
    let cases: Vec<(Options, &[&str])> = vec![
        (opts(None, None), &["--keepalived FILE", "--haproxy FILE"]),
        (
            opts(Some(RECIPE_KA), None),
            &[
                "backends",
                "keepalived.conf",
                "--haproxy FILE",
                "--backend ADDR",
            ],
        ),
        (
            opts(
                Some(&RECIPE_KA.replace("        10.0.0.100\n", "")),
                Some(RECIPE_HA),
            ),
            &["VIP", "keepalived.conf", "virtual_ipaddress"],
        ),
        (
            opts(None, Some(RECIPE_HA)),
            &["VIP", "haproxy.cfg", "--vip ADDR"],
        ),
        (
            opts(
                Some(&RECIPE_KA.replace("    virtual_router_id 51\n", "")),
                Some(RECIPE_HA),
            ),
            &["virtual_router_id", "keepalived.conf:15"],
        ),
        (
            opts(Some("global_defs { router_id x }\n"), Some(RECIPE_HA)),
            &["vrrp_instance", "keepalived.conf"],
        ),
        (
            opts(
                Some(RECIPE_KA),
                Some(&RECIPE_HA.replace("    default_backend apiserverbackend\n", "")),
            ),
            &["default_backend of frontend apiserver", "haproxy.cfg:26"],
        ),
        (
            opts(
                Some(RECIPE_KA),
                Some(&RECIPE_HA.replace("    server", "    #server")),
            ),
            &["servers of backend apiserverbackend", "haproxy.cfg:32"],
        ),
        (
            opts(
                Some(RECIPE_KA),
                Some(&RECIPE_HA.replace("10.0.0.1", "fd00::1")),
            ),
            &["service", "no mode tcp frontend", "10.0.0.100"],
        ),
    ];
    for (o, want) in cases {
        let e = err(&o);
        for w in want {
            assert!(e.contains(w), "error {e:?} lacks {w:?}");
        }
    }
    // Without VIP or interface, --vip and --interface supply them.
    let mut o = opts(None, Some(RECIPE_HA));
    o.vips = vec![a("10.0.0.100")];
    o.host = host(&[]);
    let e = err(&o);
    assert!(e.contains("--interface IF"), "{e}");
    o.interface = Some("eth1".into());
    o.node_address = Some(a("10.0.0.13"));
    let i = ok(&o);
    assert_eq!(i.config.interface, "eth1");
    assert!(i.config.vrrp.is_none() && !i.config.hold_vips);
    assert!(i.yaml.contains("No keepalived.conf: no VRRP election"));
}

#[test]
fn keepalived_alone_with_backend_flags() {
    let mut o = opts(Some(RECIPE_KA), None);
    o.backends = vec![
        (a("10.0.0.11"), None),
        (a("10.0.0.12"), None),
        (a("10.0.0.13"), Some(6443)),
    ];
    let i = ok(&o);
    let s = &i.config.services[0];
    assert_eq!(
        (s.vip, s.port, s.backends.len()),
        (a("10.0.0.100"), 6443, 3)
    );
    assert!(s.backends[2].local);
    assert_eq!(s.probe, ProbeSettings::default(), "vipd's own probe");
    assert!(
        i.yaml.contains("from keepalived.conf.") && !i.yaml.contains("HAProxy"),
        "nothing to say about an HAProxy that was not given:\n{}",
        i.yaml
    );
    o.backends[2].1 = Some(6444);
    let e = err(&o);
    assert!(
        e.starts_with("--backend: server 10.0.0.13 listens on port 6444")
            && e.contains("mode dsr does not rewrite ports"),
        "{e}"
    );
    let mut o = opts(Some(RECIPE_KA), Some(RECIPE_HA));
    o.backends = vec![(a("10.0.0.11"), None)];
    assert!(err(&o).contains("--backend"));
}

#[test]
fn haproxy_alone_takes_the_vip_from_its_bind() {
    let mut o = opts(None, Some(ODD_HA));
    o.host = host(&["10.1.0.11"]);
    let i = ok(&o);
    assert_eq!(i.config.services[0].vip, a("10.1.0.100"));
    assert_eq!(
        i.config.interface, "eth0",
        "the interface holding a server of this host"
    );
    assert!(i.config.services[0].backends[0].local);
}

/// (That the output loads needs no test here: `convert` refuses output
/// that `Config::parse` does not take.)
#[test]
fn output_is_deterministic() {
    for o in [
        opts(Some(ODD_KA), Some(ODD_HA)),
        opts(Some(RECIPE_KA), Some(RECIPE_HA)),
    ] {
        assert_eq!(ok(&o).yaml, ok(&o).yaml);
    }
}

#[test]
fn command_line_values() {
    assert_eq!(
        parse_mac_arg("10.0.0.11=52:54:00:00:00:11"),
        Ok((a("10.0.0.11"), [0x52, 0x54, 0, 0, 0, 0x11]))
    );
    assert!(parse_mac_arg("10.0.0.11").is_err());
    assert!(parse_mac_arg("10.0.0.11=52:54").is_err());
    assert_eq!(parse_backend_arg("10.0.0.11"), Ok((a("10.0.0.11"), None)));
    assert_eq!(
        parse_backend_arg("10.0.0.11:6444"),
        Ok((a("10.0.0.11"), Some(6444)))
    );
    assert_eq!(
        parse_backend_arg("[fd00::1]:6443"),
        Ok((a("fd00::1"), Some(6443)))
    );
    assert_eq!(parse_backend_arg("fd00::1"), Ok((a("fd00::1"), None)));
    assert!(parse_backend_arg("cp1:6443").is_err());
    assert_eq!(parse_mode("nat"), Ok(Mode::Nat));
    assert!(parse_mode("tunnel").is_err());
}
