//! Mode dsr across subnets, end to end in network namespaces: a client and
//! an LB and a backend, each in a subnet of its own behind one router, MTU
//! 1500 on every link. The real vipd on the LB encapsulates the client's
//! packets (IPIP for IPv4, IPv6 in IPv6 for IPv6) to the backend, which
//! strips the outer header and answers the client directly from the VIP on
//! its `lo`. A 1 MiB request and a 1 MiB response must pass byte for byte:
//! the request's full-size segments do not fit once encapsulated, so this
//! also proves that the LB's ICMP "fragmentation needed" (ICMPv6 "packet
//! too big") reaches the client, which lowers its path MTU to the VIP (read
//! back from its route cache) and resends.
//!
//! The backend decapsulates with vipd's `vip_decap` XDP program: this test
//! kernel has no IPIP driver (CONFIG_NET_IPIP unset, so no `tunl0`); on a
//! kernel with it, `tunl0` does the same (README, "Backends in other
//! subnets").
//!
//! ```text
//!  client 10.81.1.2 --- 10.81.1.1 router 10.81.2.1 --- 10.81.2.2 LB (vipd, VIP held)
//!                                        10.81.3.1 --- 10.81.3.2 backend (VIP on lo)
//! ```
//! IPv6: the same with fd81:N::1/2 for 10.81.N.1/2 and the VIP fd81:100::1.
//!
//! Needs root; run by `cargo xtask test`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use vip_tests::netns::{
    NS_PREFIX, Proc, add_namespace, in_netns, ns_exec, poll_until, sweep_stale,
};
use vip_tests::progtest::{attach_in, require_root};
use vip_userspace::dataplane::kernel::{KernelMaps, PROG_DECAP, PROG_PASS};

const PORT: u16 = 7443;
const MIB: usize = 1 << 20;

/// One address family's plan of the topology.
#[derive(Clone, Copy)]
struct Family {
    v6: bool,
}

impl Family {
    /// Host `host` (1: the router, 2: the node) of subnet `subnet`.
    fn addr(self, subnet: u8, host: u8) -> IpAddr {
        if self.v6 {
            Ipv6Addr::new(0xfd81, subnet.into(), 0, 0, 0, 0, 0, host.into()).into()
        } else {
            Ipv4Addr::new(10, 81, subnet, host).into()
        }
    }

    fn prefix(self) -> u8 {
        if self.v6 { 64 } else { 24 }
    }

    fn host_prefix(self) -> u8 {
        if self.v6 { 128 } else { 32 }
    }

    fn vip(self) -> IpAddr {
        self.addr(100, 1)
    }

    fn backend(self) -> IpAddr {
        self.addr(3, 2)
    }

    fn any(self) -> IpAddr {
        if self.v6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        }
    }

    /// `ip -4` / `ip -6`.
    fn flag(self) -> &'static str {
        if self.v6 { "-6" } else { "-4" }
    }

    fn encap(self) -> &'static str {
        if self.v6 { "ip6ip6" } else { "ipip" }
    }

    /// The MTU the LB announces: 1500 less the outer header (RFC 2003: 20
    /// bytes; RFC 2473: 40).
    fn path_mtu(self) -> u32 {
        if self.v6 { 1460 } else { 1480 }
    }

    /// `ip addr add` options: IPv6 addresses skip duplicate address
    /// detection (RFC 4862 5.4), which would leave them tentative, unusable
    /// as a source, for a second or more in a lab where no one else has them.
    fn addr_opts(self) -> &'static [&'static str] {
        if self.v6 { &["nodad"] } else { &[] }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The four namespaces, removed on drop (after the processes in them).
struct Topo {
    names: Vec<String>,
    dir: PathBuf,
    procs: Vec<Proc>,
    keep: Vec<KernelMaps>,
}

impl Topo {
    fn ns(&self, role: &str) -> &str {
        let i = ["cli", "rtr", "lb", "be"]
            .iter()
            .position(|r| *r == role)
            .expect("role");
        &self.names[i]
    }

    fn sh(&self, role: &str, args: &[&str]) -> String {
        let out = ns_exec(self.ns(role), args);
        assert!(
            out.status.success(),
            "`{}` in {role} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn new(f: Family) -> Topo {
        require_root();
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("{NS_PREFIX}{}-{n}-l3", std::process::id());
        let names: Vec<String> = ["cli", "rtr", "lb", "be"]
            .iter()
            .map(|r| format!("{base}{r}"))
            .collect();
        let dir = std::env::temp_dir().join(&base);
        std::fs::create_dir_all(&dir).expect("lab dir");
        for ns in &names {
            add_namespace(ns);
        }
        let t = Topo {
            names,
            dir,
            procs: vec![],
            keep: vec![],
        };
        // One /24 (/64) per link, the router .1 (::1) on each.
        let plen = f.prefix();
        for (role, rif, subnet) in [("cli", "c0", 1), ("lb", "l0", 2), ("be", "b0", 3)] {
            let out = Command::new("ip")
                .args(["link", "add", "eth0", "netns", t.ns(role)])
                .args(["type", "veth", "peer", "name", rif, "netns", t.ns("rtr")])
                .output()
                .expect("ip");
            assert!(out.status.success(), "veth for {role}: {out:?}");
            for (r, i, host) in [(role, "eth0", 2), ("rtr", rif, 1)] {
                let a = format!("{}/{plen}", f.addr(subnet, host));
                let mut args = vec!["ip", "addr", "add", &a, "dev", i];
                args.extend(f.addr_opts());
                t.sh(r, &args);
            }
            // Checksums complete on the wire (native XDP loses a partial
            // checksum, TOOLCHAIN.md) and no segmentation offload: every
            // segment is a real 1500-byte-or-less frame.
            t.sh(
                role,
                &[
                    "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
                ],
            );
            t.sh(
                "rtr",
                &[
                    "ethtool", "-K", rif, "tx", "off", "tso", "off", "gso", "off",
                ],
            );
            for (r, i) in [(role, "eth0"), ("rtr", rif)] {
                t.sh(r, &["ip", "link", "set", i, "mtu", "1500", "up"]);
            }
            t.sh(role, &["ip", "link", "set", "lo", "up"]);
            let gw = f.addr(subnet, 1).to_string();
            t.sh(
                role,
                &["ip", f.flag(), "route", "add", "default", "via", &gw],
            );
        }
        t.sh("rtr", &["ip", "link", "set", "lo", "up"]);
        t.sh("rtr", &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        t.sh("rtr", &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        // The VIP is the LB's (a static route here; BGP in the fabric lab).
        let vip = format!("{}/{}", f.vip(), f.host_prefix());
        let lb = f.addr(2, 2).to_string();
        t.sh("rtr", &["ip", f.flag(), "route", "add", &vip, "via", &lb]);
        t.sh("be", &["ip", "addr", "add", &vip, "dev", "lo"]);
        t
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("--- {} ---\n{}", p.pid(), p.logs());
            }
        }
        self.procs.clear();
        self.keep.clear();
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The request: 1 MiB no compressor or pattern-matching bug could pass by
/// luck (an LCG's high bytes).
fn request() -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..MIB)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

/// The backend's answer to a request: every byte complemented, in reverse
/// order, so the response is 1 MiB of its own that depends on every byte
/// received.
fn response_to(req: &[u8]) -> Vec<u8> {
    req.iter().rev().map(|b| !b).collect()
}

#[test]
fn a_backend_in_another_subnet_serves_1_mib_each_way_through_ipip() {
    one_mib_each_way(Family { v6: false });
}

#[test]
fn a_backend_in_another_subnet_serves_1_mib_each_way_through_ip6ip6() {
    one_mib_each_way(Family { v6: true });
}

fn one_mib_each_way(f: Family) {
    let mut t = Topo::new(f);
    let (vip, backend) = (f.vip(), f.backend());

    // The backend: strips the outer header in XDP, serves on every address
    // (the LB's TCP probe reaches its own address, clients the VIP on lo).
    let be_ns = t.ns("be").to_owned();
    t.keep.push(attach_in(&be_ns, PROG_DECAP, "eth0"));
    // Native XDP_TX out of the LB's eth0 reaches the router only if the
    // router's end of the pair runs XDP too (TOOLCHAIN.md).
    t.keep.push(attach_in(t.ns("rtr"), PROG_PASS, "l0"));
    let listener = in_netns(&be_ns, || TcpListener::bind(SocketAddr::new(f.any(), PORT)))
        .expect("bind the backend's server");
    let server = std::thread::spawn(move || {
        // Probes connect and close; the client's connection sends 1 MiB.
        loop {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_secs(30))).ok();
            let mut req = vec![];
            if s.read_to_end(&mut req).is_err() || req.is_empty() {
                continue;
            }
            let got = req.len();
            s.write_all(&response_to(&req)).expect("send the response");
            s.shutdown(Shutdown::Write).ok();
            if got == MIB {
                return got;
            }
        }
    });

    // vipd on the LB: one dsr service, its backend encapsulated.
    let cfg = format!(
        "interface: eth0\nxdp_mode: native\nhold_vips: true\nservices:\n  - vip: \"{vip}\"\n    port: {PORT}\n    mode: dsr\n    encap: {}\n    probe: {{ type: tcp }}\n    backends:\n      - address: \"{backend}\"\n",
        f.encap()
    );
    let path = t.dir.join("vipd.yaml");
    std::fs::write(&path, cfg).expect("write vipd.yaml");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", t.ns("lb")])
        .arg(vip_tests::vipd_bin())
        .args(["run", "--config"])
        .arg(&path)
        .args(["--stats-interval", "1", "--no-pin"])
        .env("RUST_LOG", "info");
    let vipd = Proc::spawn_logged(c, &t.dir, "vipd-lb");
    vipd.wait_for_stdout("vipd ready", Duration::from_secs(30));
    t.procs.push(vipd);

    let req = request();
    let cli_ns = t.ns("cli").to_owned();
    let mut conn = None;
    poll_until(
        Duration::from_secs(15),
        || "connecting to the VIP through the LB".into(),
        || {
            conn = in_netns(&cli_ns, || {
                TcpStream::connect_timeout(&SocketAddr::new(vip, PORT), Duration::from_secs(1))
            })
            .ok();
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(200));
            }
            conn.is_some()
        },
    );
    let mut s = conn.expect("connected");
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    s.set_write_timeout(Some(Duration::from_secs(30))).ok();
    s.write_all(&req).expect("send 1 MiB");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut resp = vec![];
    s.read_to_end(&mut resp).expect("read the response");
    assert_eq!(
        server.join().expect("server thread"),
        MIB,
        "the backend received the whole request"
    );
    assert_eq!(resp.len(), MIB, "1 MiB response length");
    assert!(
        resp == response_to(&req),
        "the response differs from what the backend sent"
    );

    // The LB's ICMP reached the client: its route to the VIP carries the
    // path MTU the LB announced (1500 less the outer header).
    let route = t.sh("cli", &["ip", f.flag(), "route", "get", &vip.to_string()]);
    assert!(
        route.contains(&format!("mtu {}", f.path_mtu())),
        "the client's route cache should hold the learned path MTU: {route}"
    );
    // And the LB counted both: its once-a-second statistics line names
    // every reason that moved.
    for reason in ["tx_encap=", "tx_icmp_too_big="] {
        poll_until(
            Duration::from_secs(5),
            || {
                format!(
                    "vipd's statistics never named {reason}:\n{}",
                    t.procs[0].logs()
                )
            },
            || t.procs[0].logs().contains(reason),
        );
    }
}
