//! An L3 fabric in network namespaces with real routing daemons (DESIGN.md,
//! "Third shape"): an upstream router running FRR (zebra, bgpd, bfdd), three
//! LB nodes each running BIRD 2 with the shipped `deploy/bird-vipd.conf` (or
//! FRR with the shipped `deploy/frr-vipd.conf`), each
//! LB on a point-to-point /30 of its own to the router (no shared L2 between
//! LBs), a client behind the router and two backends in subnets of their own.
//! Every LB peers with the router over eBGP with BFD; whatever vipd puts in
//! the LB's kernel table 198 reaches the router's kernel as an ECMP nexthop.
//!
//! Namespaces are named `vt-<pid>-<n>-<role>` like `netns::Lab`'s (so its
//! `sweep_stale` removes what a SIGKILLed run left); daemons are started and
//! stopped by pid; everything is removed on drop, also on unwind, after the
//! daemons' logs are printed if the test failed. One fabric at a time per
//! process: seven daemons with 50 ms BFD timers are as much as two shared
//! cores carry without false BFD failures.
//!
//! The daemon settings are the ones verified in shared/TOOLCHAIN.md ("BGP +
//! BFD with real routing daemons in namespaces").

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vip_userspace::route::{Announced, RouteAnnouncer, RouteError, RouteTable, TableView};

use crate::netns::{NS_PREFIX, Proc, add_namespace, in_netns, ns_exec, sweep_stale};

/// How many LB nodes a fabric has.
pub const LBS: usize = 3;
/// The VIP the tests announce: outside every link subnet.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 78, 100, 1);
/// An IPv6 VIP, outside the LB links' fd78:<i>::/64.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd78, 0x100, 0, 0, 0, 0, 0, 1);
/// The router's AS, and the one AS all LBs share: FRR spreads over eBGP
/// paths from several neighbours only when their AS paths are equal (or
/// with `bgp bestpath as-path multipath-relax`).
pub const ROUTER_AS: u32 = 65000;
pub const LB_AS: u32 = 65100;
/// LB-side interface name in every LB, client and backend namespace.
pub const NODE_IF: &str = "eth0";

const FRR_DIR: &str = "/usr/lib/frr";
const FRR_DAEMONS: [&str; 3] = ["zebra", "bfdd", "bgpd"];

static FABRIC_COUNTER: AtomicU32 = AtomicU32::new(0);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The routing daemon an LB runs, with its shipped snippet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbDaemon {
    Bird,
    Frr,
}

/// One LB node: its namespace and its point-to-point link to the router.
#[derive(Debug, Clone)]
pub struct Lb {
    pub ns: String,
    pub daemon: LbDaemon,
    /// 10.78.<i>.2/30 on the LB's eth0.
    pub addr: Ipv4Addr,
    /// 10.78.<i>.1/30, the router's end.
    pub peer: Ipv4Addr,
    /// The router's interface towards this LB (`lb<i>`).
    pub router_if: String,
    pub asn: u32,
    dir: PathBuf,
}

/// A nexthop of the router's kernel route for a prefix (`ip -j route`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nexthop {
    pub gateway: IpAddr,
    pub dev: String,
    /// `linkdown`, `dead`, ...: such a nexthop carries no traffic here
    /// (`ignore_routes_with_linkdown=1`).
    pub flags: Vec<String>,
}

impl Nexthop {
    pub fn usable(&self) -> bool {
        !self.flags.iter().any(|f| f == "linkdown" || f == "dead")
    }
}

pub struct Fabric {
    id: String,
    dir: PathBuf,
    pub router: String,
    pub client: String,
    pub backends: Vec<String>,
    pub lbs: Vec<Lb>,
    created: Vec<String>,
    frr: Vec<Proc>,
    /// FRR daemons of the LBs that run FRR.
    lb_frr: Vec<Proc>,
    /// BIRD of each LB (`None` for an FRR LB, or while killed).
    birds: Mutex<Vec<Option<Proc>>>,
    bird_starts: AtomicU32,
    vipd_starts: AtomicU32,
    /// BFD on the sessions (the lab's default); without it only BGP's
    /// timers (keepalive 1 s, hold 3 s) notice a silent LB.
    bfd: bool,
    _serial: MutexGuard<'static, ()>,
}

impl Fabric {
    /// Builds the namespaces and links, starts FRR on the router and BIRD on
    /// every LB. Does not wait for the sessions: `wait_for_paths` does.
    /// Panics with the fix if not root or a daemon is missing.
    pub fn new(hint: &str) -> Fabric {
        Fabric::with_daemons(hint, [LbDaemon::Bird; LBS])
    }

    /// Like `new`, with the routing daemon of each LB chosen.
    pub fn with_daemons(hint: &str, daemons: [LbDaemon; LBS]) -> Fabric {
        Fabric::with_options(hint, daemons, true)
    }

    /// BIRD on every LB and no BFD on any session (both ends): what the
    /// router's BGP timers alone detect, for `vip-bench failover
    /// --topology bgp` to set beside the BFD figures.
    pub fn without_bfd(hint: &str) -> Fabric {
        Fabric::with_options(hint, [LbDaemon::Bird; LBS], false)
    }

    fn with_options(hint: &str, daemons: [LbDaemon; LBS], bfd: bool) -> Fabric {
        preflight();
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        sweep_stale();
        let id = format!(
            "{NS_PREFIX}{}-f{}",
            std::process::id(),
            FABRIC_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("{id}-{}", sanitize(hint)));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create fabric dir {}: {e}", dir.display()));
        let mut f = Fabric {
            router: format!("{id}-rt"),
            client: format!("{id}-cl"),
            backends: Vec::new(),
            lbs: Vec::new(),
            created: Vec::new(),
            frr: Vec::new(),
            lb_frr: Vec::new(),
            birds: Mutex::new(Vec::new()),
            bird_starts: AtomicU32::new(0),
            vipd_starts: AtomicU32::new(0),
            bfd,
            dir,
            id,
            _serial: serial,
        };
        // From here a panic drops `f`, which removes what was built.
        f.build(daemons);
        let router = f.router.clone();
        let conf = f.frr_conf();
        f.frr = f.start_frr(&router, &f.dir.join("frr"), &conf, "");
        for (i, daemon) in daemons.into_iter().enumerate() {
            let bird = match daemon {
                LbDaemon::Bird => Some(f.spawn_bird(i)),
                LbDaemon::Frr => {
                    let lb = &f.lbs[i];
                    let (ns, run, conf) = (lb.ns.clone(), lb.dir.join("frr"), lb_frr_conf(lb));
                    let procs = f.start_frr(&ns, &run, &conf, &format!("lb{i}-"));
                    f.lb_frr.extend(procs);
                    None
                }
            };
            f.birds_lock().push(bird);
        }
        f
    }

    fn build(&mut self, daemons: [LbDaemon; LBS]) {
        let rt = self.router.clone();
        self.add_ns(&rt);
        sh(&rt, &["ip", "link", "set", "lo", "up"]);
        // ECMP across the LBs per flow (L4 hash; with 0 every flow of one
        // client takes one LB), forwarding on, and a nexthop whose link is
        // down is skipped at once rather than when zebra rewrites the route.
        sh(
            &rt,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv4.conf.all.ignore_routes_with_linkdown=1",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv6.fib_multipath_hash_policy=1",
                "net.ipv6.conf.all.ignore_routes_with_linkdown=1",
            ],
        );
        for (i, daemon) in daemons.into_iter().enumerate() {
            let ns = format!("{}-lb{i}", self.id);
            let octet = u8::try_from(i).expect("few LBs");
            let lb = Lb {
                addr: Ipv4Addr::new(10, 78, octet, 2),
                peer: Ipv4Addr::new(10, 78, octet, 1),
                router_if: format!("lb{i}"),
                asn: LB_AS,
                daemon,
                dir: self.dir.join(format!("lb{i}")),
                ns,
            };
            std::fs::create_dir_all(&lb.dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", lb.dir.display()));
            self.link(&lb.ns, &lb.router_if, lb.peer, lb.addr);
            // IPv6 on the LB links: BGP over the IPv4 session carries IPv6
            // routes too (RFC 4760), with the LB's IPv6 address as next hop.
            let n = u16::from(octet);
            let (r6, a6) = (
                Ipv6Addr::new(0xfd78, n, 0, 0, 0, 0, 0, 1),
                Ipv6Addr::new(0xfd78, n, 0, 0, 0, 0, 0, 2),
            );
            let rt = self.router.clone();
            sh(
                &rt,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{r6}/64"),
                    "dev",
                    &lb.router_if,
                    "nodad",
                ],
            );
            sh(
                &lb.ns,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{a6}/64"),
                    "dev",
                    NODE_IF,
                    "nodad",
                ],
            );
            sh(
                &lb.ns,
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &r6.to_string(),
                ],
            );
            self.lbs.push(lb);
        }
        let client = self.client.clone();
        self.link(
            &client,
            "cl",
            Ipv4Addr::new(10, 79, 0, 1),
            Ipv4Addr::new(10, 79, 0, 2),
        );
        // Backends for the data path to come (DSR/NAT across subnets).
        for k in 0..2u8 {
            let ns = format!("{}-be{k}", self.id);
            self.link(
                &ns,
                &format!("be{k}"),
                Ipv4Addr::new(10, 79, 1 + k, 1),
                Ipv4Addr::new(10, 79, 1 + k, 2),
            );
            self.backends.push(ns);
        }
    }

    /// A namespace `ns` whose eth0 is a /30 to the router's `rif`, default
    /// route via the router.
    fn link(&mut self, ns: &str, rif: &str, router_addr: Ipv4Addr, addr: Ipv4Addr) {
        self.add_ns(ns);
        let rt = self.router.clone();
        sh(ns, &["ip", "link", "set", "lo", "up"]);
        sh(
            ns,
            &[
                "ip", "link", "add", NODE_IF, "type", "veth", "peer", "name", rif, "netns", &rt,
            ],
        );
        sh(
            ns,
            &["ip", "addr", "add", &format!("{addr}/30"), "dev", NODE_IF],
        );
        sh(
            &rt,
            &[
                "ip",
                "addr",
                "add",
                &format!("{router_addr}/30"),
                "dev",
                rif,
            ],
        );
        sh(ns, &["ip", "link", "set", NODE_IF, "up"]);
        sh(&rt, &["ip", "link", "set", rif, "up"]);
        sh(
            ns,
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &router_addr.to_string(),
            ],
        );
    }

    fn add_ns(&mut self, ns: &str) {
        add_namespace(ns);
        self.created.push(ns.to_owned());
    }

    /// zebra, bfdd and bgpd in namespace `ns`, in the foreground (so the pid
    /// we hold is the daemon's), every socket in `run`: nothing clashes with
    /// a host FRR or another namespace's. zebra refuses a run directory it
    /// cannot write as user frr ("Can't create pid lock file"). Then `conf`
    /// through vtysh.
    fn start_frr(&self, ns: &str, run: &Path, conf: &str, label: &str) -> Vec<Proc> {
        std::fs::create_dir_all(run).unwrap_or_else(|e| panic!("create {}: {e}", run.display()));
        let out = Command::new("chown")
            .args(["frr:frr"])
            .arg(run)
            .output()
            .unwrap_or_else(|e| panic!("chown: {e}"));
        assert!(
            out.status.success(),
            "chown frr:frr {}: {} (the frr package creates that user: cargo xtask bootstrap)",
            run.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let r = run.display().to_string();
        let mut procs = Vec::new();
        for d in FRR_DAEMONS {
            let mut args: Vec<String> = [
                "-P",
                "0",
                "--vty_socket",
                &r,
                "-z",
                &format!("{r}/zserv.api"),
                "-i",
                &format!("{r}/{d}.pid"),
                "-f",
                "/dev/null",
                "--log",
                "stdout",
            ]
            .map(str::to_owned)
            .to_vec();
            if d == "bfdd" {
                args.extend(["--bfdctl".to_owned(), format!("{r}/bfdd.sock")]);
            }
            let p = self.spawn(ns, &format!("{FRR_DIR}/{d}"), &args, &format!("{label}{d}"));
            // Each daemon registers with zebra and vtysh talks to each
            // through its vty socket: start in order, wait for the socket.
            let vty = run.join(format!("{d}.vty"));
            wait_path(&vty, &p, Duration::from_secs(10));
            procs.push(p);
        }
        let file = run.join("frr.conf");
        std::fs::write(&file, conf).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
        let out = ns_exec(
            ns,
            &[
                "vtysh",
                "--vty_socket",
                &r,
                "-f",
                &file.display().to_string(),
            ],
        );
        if !out.status.success() {
            let logs: Vec<String> = procs.iter().map(Proc::logs).collect();
            panic!(
                "vtysh -f {} in {ns} failed: {}{}\n{}",
                file.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                logs.join("\n")
            );
        }
        procs
    }

    fn frr_conf(&self) -> String {
        let mut c = String::from(
            "frr defaults traditional\n\
             hostname router\n\
             ! FRR 8.4 leaves a stale kernel route after a link flap with nexthop objects\n\
             no zebra nexthop kernel enable\n\
             bfd\n profile fast\n  detect-multiplier 3\n  receive-interval 50\n  transmit-interval 50\n !\n!\n",
        );
        c += &format!(
            "router bgp {ROUTER_AS}\n bgp router-id 10.79.0.1\n\
             ! without it eBGP routes are held back as \"(Policy)\"\n\
             no bgp ebgp-requires-policy\n\
             neighbor lbs peer-group\n\
             neighbor lbs timers 1 3\n\
             neighbor lbs timers connect 1\n"
        );
        if self.bfd {
            c += " neighbor lbs bfd\n neighbor lbs bfd profile fast\n";
        }
        for lb in &self.lbs {
            c += &format!(
                " neighbor {} remote-as {}\n neighbor {} peer-group lbs\n",
                lb.addr, lb.asn, lb.addr
            );
        }
        c += " address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n\
              address-family ipv6 unicast\n  neighbor lbs activate\n  maximum-paths 8\n exit-address-family\n!\n";
        c
    }

    /// BIRD for LB `i`, loading the shipped snippet; a fresh control socket
    /// per start (a SIGKILLed BIRD leaves its socket file behind).
    fn spawn_bird(&self, i: usize) -> Proc {
        let lb = &self.lbs[i];
        let n = self.bird_starts.fetch_add(1, Ordering::Relaxed);
        let conf = lb.dir.join("bird.conf");
        let snippet = if self.bfd {
            shipped_bird_conf()
        } else {
            let text = std::fs::read_to_string(shipped_bird_conf())
                .unwrap_or_else(|e| panic!("read the shipped BIRD snippet: {e}"));
            assert!(
                text.contains("\tbfd on;"),
                "deploy/bird-vipd.conf no longer says `bfd on;`: the BFD-off lab turns it off"
            );
            let copy = lb.dir.join("bird-vipd-nobfd.conf");
            std::fs::write(&copy, text.replace("\tbfd on;", "\tbfd off;"))
                .unwrap_or_else(|e| panic!("write {}: {e}", copy.display()));
            copy
        };
        let main = format!(
            "router id {};\nlog stderr all;\nprotocol device {{}}\n\
             define VIPD_LOCAL_AS = {};\ndefine VIPD_PEER = {};\ndefine VIPD_PEER_AS = {ROUTER_AS};\n\
             include \"{}\";\n",
            lb.addr,
            lb.asn,
            lb.peer,
            snippet.display()
        );
        std::fs::write(&conf, main).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
        let ctl = lb.dir.join(format!("bird{n}.ctl"));
        let args: Vec<String> = vec![
            "-f".into(),
            "-c".into(),
            conf.display().to_string(),
            "-s".into(),
            ctl.display().to_string(),
        ];
        let p = self.spawn(&lb.ns, "bird", &args, &format!("bird-lb{i}"));
        wait_path(&ctl, &p, Duration::from_secs(10));
        p
    }

    fn spawn(&self, ns: &str, cmd: &str, args: &[String], label: &str) -> Proc {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, cmd]).args(args);
        Proc::spawn_logged(c, &self.dir, label)
    }

    fn birds_lock(&self) -> MutexGuard<'_, Vec<Option<Proc>>> {
        self.birds.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The router's kernel route for the VIP's host prefix: its nexthops,
    /// empty without a route. What clients are actually sent by, not what
    /// bgpd thinks.
    pub fn router_routes(&self, vip: impl Into<IpAddr>) -> Vec<Nexthop> {
        let vip = vip.into();
        let (family, len) = if vip.is_ipv6() {
            ("-6", 128)
        } else {
            ("-4", 32)
        };
        let out = sh(
            &self.router,
            &["ip", "-j", family, "route", "show", &format!("{vip}/{len}")],
        );
        parse_routes(&out)
    }

    /// Polls the router's kernel every 5 ms until `n` usable nexthops lead to
    /// `vip`; returns how long that took. Panics with the route, BGP and BFD
    /// state and the daemons' logs on timeout.
    pub fn wait_for_paths(&self, vip: impl Into<IpAddr>, n: usize, timeout: Duration) -> Duration {
        let vip = vip.into();
        let (afi, len) = if vip.is_ipv6() {
            ("ipv6", 128)
        } else {
            ("ipv4", 32)
        };
        let start = Instant::now();
        loop {
            let hops = self.router_routes(vip);
            if hops.iter().filter(|h| h.usable()).count() == n {
                return start.elapsed();
            }
            if start.elapsed() >= timeout {
                panic!(
                    "router has not {n} usable paths to {vip} after {timeout:?}: {hops:?}\n\
                     --- router: show bgp {afi} unicast {vip}/{len} ---\n{}{}",
                    self.vtysh(&format!("show bgp {afi} unicast {vip}/{len}")),
                    self.state()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls the router every 10 ms until `n` BFD sessions are up; returns
    /// how long that took. Panics with the BGP and BFD state on timeout.
    pub fn wait_bfd_up(&self, n: usize, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let peers = self.vtysh("show bfd peers brief");
            if peers
                .lines()
                .filter(|l| l.trim_end().ends_with(" up"))
                .count()
                == n
            {
                return start.elapsed();
            }
            if start.elapsed() >= timeout {
                panic!(
                    "not {n} BFD sessions up after {timeout:?}\n{}",
                    self.state()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `vtysh -c` on the router.
    pub fn vtysh(&self, cmd: &str) -> String {
        let r = self.dir.join("frr").display().to_string();
        let out = ns_exec(&self.router, &["vtysh", "--vty_socket", &r, "-c", cmd]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// BGP and BFD as the router sees them, for failure messages.
    pub fn state(&self) -> String {
        format!(
            "--- router: show bgp summary ---\n{}--- router: show bfd peers brief ---\n{}",
            self.vtysh("show bgp summary"),
            self.vtysh("show bfd peers brief")
        )
    }

    /// Runs `f` with a `RouteAnnouncer` (default table and proto) opened in
    /// LB `i`'s namespace, on a current-thread runtime of its own.
    pub fn with_announcer<T: Send>(
        &self,
        i: usize,
        f: impl AsyncFnOnce(&RouteAnnouncer) -> T + Send,
    ) -> T {
        in_netns(&self.lbs[i].ns, || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                let a = RouteAnnouncer::new(RouteTable::default())
                    .unwrap_or_else(|e| panic!("RouteAnnouncer in lb{i}: {e}"));
                f(&a).await
            })
        })
    }

    pub fn announce(&self, i: usize, vip: IpAddr) -> Result<Announced, RouteError> {
        self.with_announcer(i, async |a| a.announce(vip).await)
    }

    pub fn withdraw(&self, i: usize, vip: IpAddr) -> Result<bool, RouteError> {
        self.with_announcer(i, async |a| a.withdraw(vip).await)
    }

    pub fn list(&self, i: usize) -> TableView {
        self.with_announcer(i, async |a| a.list().await)
            .unwrap_or_else(|e| panic!("list table 198 in lb{i}: {e}"))
    }

    /// Runs `args` in LB `i`'s namespace, asserts success, returns stdout.
    pub fn lb_sh(&self, i: usize, args: &[&str]) -> String {
        sh(&self.lbs[i].ns, args)
    }

    /// Makes LB `i` silent without any link or process event: nft drops
    /// everything in and out of its eth0, so only BFD (or the BGP hold
    /// timer) can notice.
    pub fn silence_lb(&self, i: usize) {
        let rules = self.lbs[i].dir.join("silence.nft");
        std::fs::write(
            &rules,
            format!(
                "table inet vipd_lab_silence {{\n\
                 \tchain in {{ type filter hook input priority -300; policy accept; iifname \"{NODE_IF}\" drop; }}\n\
                 \tchain out {{ type filter hook output priority -300; policy accept; oifname \"{NODE_IF}\" drop; }}\n\
                 }}\n"
            ),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", rules.display()));
        self.lb_sh(i, &["nft", "-f", &rules.display().to_string()]);
    }

    /// Undoes [`Fabric::silence_lb`].
    pub fn unsilence_lb(&self, i: usize) {
        self.lb_sh(i, &["nft", "delete", "table", "inet", "vipd_lab_silence"]);
    }

    /// Every namespace this fabric created (removed on drop).
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// Whether the sessions run BFD.
    pub fn bfd(&self) -> bool {
        self.bfd
    }

    /// Takes LB `i`'s link down (the router sees carrier loss at once).
    pub fn lb_link_down(&self, i: usize) {
        self.lb_sh(i, &["ip", "link", "set", NODE_IF, "down"]);
    }

    pub fn bird_pid(&self, i: usize) -> Option<u32> {
        self.birds_lock()[i].as_ref().map(Proc::pid)
    }

    /// SIGKILLs LB `i`'s BIRD (no BGP notification, no cleanup) and reaps it.
    pub fn kill_bird(&self, i: usize) {
        let mut birds = self.birds_lock();
        let p = birds[i]
            .take()
            .unwrap_or_else(|| panic!("lb{i}: BIRD not running"));
        p.signal(libc::SIGKILL);
        assert!(
            p.wait_timeout(Duration::from_secs(5)).is_some(),
            "lb{i}: BIRD (pid {}) did not die of SIGKILL",
            p.pid()
        );
    }

    pub fn start_bird(&self, i: usize) {
        assert_eq!(self.lbs[i].daemon, LbDaemon::Bird, "lb{i} runs FRR");
        let p = self.spawn_bird(i);
        let mut birds = self.birds_lock();
        assert!(birds[i].is_none(), "lb{i}: BIRD already running");
        birds[i] = Some(p);
    }

    /// The real vipd in LB `i`'s namespace with `config` (YAML), started the
    /// way scenario.rs starts it but unpinned (`--no-pin`: the program
    /// detaches when vipd exits, and no bpffs is needed); returns once it
    /// says it is ready. Drop the `Proc` before the fabric.
    pub fn spawn_vipd(&self, i: usize, config: &str) -> Proc {
        let lb = &self.lbs[i];
        let path = lb.dir.join("vipd.yaml");
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &lb.ns])
            .arg(crate::vipd_bin())
            .args(["run", "--config"])
            .arg(&path)
            .args(["--stats-interval", "1", "--no-pin"])
            .env("RUST_LOG", "info");
        // A log of its own per start: a restarted vipd's must not erase
        // what the previous one said.
        let n = self.vipd_starts.fetch_add(1, Ordering::Relaxed);
        let p = Proc::spawn_logged(c, &self.dir, &format!("vipd-lb{i}-{n}"));
        p.wait_for_stdout("vipd ready", Duration::from_secs(30));
        p
    }

    /// A TCP server on backend `k` (`10.79.<k+1>.2:port`) that answers
    /// every connection with `be<k>\n` and closes it: something for TCP
    /// probes to reach and for clients to read which backend served them.
    /// Stops (and closes its socket) when dropped.
    pub fn serve_tcp(&self, k: usize, port: u16) -> TcpServer {
        let addr =
            std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 79, 1 + k as u8, 2)), port);
        let l = in_netns(&self.backends[k], || std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in be{k}: {e}"));
        l.set_nonblocking(true).expect("nonblocking listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        use std::io::Write as _;
                        let _ = c.write_all(format!("be{k}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TcpServer {
            stop,
            thread: Some(thread),
        }
    }

    /// Both backends ready for mode dsr across subnets (README, "Backends in
    /// other subnets"): the VIP on `lo`, vipd's `vip_decap` XDP program on
    /// eth0 to strip the LB's IPIP header (this kernel has no `tunl0`, see
    /// tests/tests/l3dsr.rs), and the apiserver stand-in on `port` named
    /// `be<k>`, its certificate valid for the VIP and the backend's own
    /// address (vipd's probes connect to the latter). Also turns off the
    /// client's checksum and segmentation offloads: native XDP loses a
    /// partial checksum (TOOLCHAIN.md), and every client segment is then a
    /// real frame of at most 1500 bytes, as on a wire.
    pub fn dsr_backends(&self, pki: &crate::certs::TestPki, port: u16) -> DsrBackends {
        self.backends_for(pki, port, LabMode::Dsr)
    }

    /// The backends as [`Fabric::dsr_backends`] has them, for `mode`: in
    /// mode nat they are unmodified (no VIP, no decapsulation): the LBs
    /// translate to them, and their replies go to the VIP by routing.
    pub fn backends_for(
        &self,
        pki: &crate::certs::TestPki,
        port: u16,
        mode: LabMode,
    ) -> DsrBackends {
        let mut b = DsrBackends {
            standins: Vec::new(),
            _decap: Vec::new(),
        };
        for (k, ns) in self.backends.iter().enumerate() {
            let addr = Ipv4Addr::new(10, 79, 1 + k as u8, 2);
            if mode == LabMode::Dsr {
                sh(
                    ns,
                    &["ip", "addr", "add", &format!("{VIP}/32"), "dev", "lo"],
                );
                b._decap.push(crate::progtest::attach_in(
                    ns,
                    vip_userspace::dataplane::kernel::PROG_DECAP,
                    NODE_IF,
                ));
            }
            let (cert, key) = pki.issue_server(
                &["kubernetes", "kubernetes.default"],
                &[IpAddr::V4(VIP), IpAddr::V4(addr)],
            );
            let listener = in_netns(ns, || {
                std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
            })
            .unwrap_or_else(|e| panic!("bind 0.0.0.0:{port} in be{k}: {e}"));
            let listen = listener.local_addr().expect("local addr");
            b.standins.push(crate::standin::spawn_in_thread(
                crate::standin::StandinOptions {
                    listen,
                    cert_pem: cert,
                    key_pem: key,
                    name: format!("be{k}"),
                    watch_interval: Duration::from_millis(200),
                    client_ca_pem: None,
                    git_version: crate::standin::GIT_VERSION.to_owned(),
                },
                listener,
            ));
        }
        sh(
            &self.client,
            &[
                "ethtool", "-K", NODE_IF, "tx", "off", "tso", "off", "gso", "off",
            ],
        );
        b
    }

    /// The LB the router forwards a TCP flow from `client` to `vip` to
    /// right now: its kernel's multipath choice for that 5-tuple
    /// (`ip route get` with ports hashes as a forwarded packet would with
    /// `fib_multipath_hash_policy=1`). `None` if no LB is.
    pub fn lb_of(&self, client: std::net::SocketAddr, vip: std::net::SocketAddr) -> Option<usize> {
        // No route at all for a moment is possible: zebra replaces the
        // multipath route as nexthops come and go.
        let out = ns_exec(
            &self.router,
            &[
                "ip",
                "-4",
                "route",
                "get",
                &vip.ip().to_string(),
                "from",
                &client.ip().to_string(),
                "iif",
                "cl",
                "ipproto",
                "tcp",
                "sport",
                &client.port().to_string(),
                "dport",
                &vip.port().to_string(),
            ],
        );
        let out = String::from_utf8_lossy(&out.stdout);
        self.lbs
            .iter()
            .position(|lb| out.contains(&format!(" dev {} ", lb.router_if)))
    }

    /// Every daemon's output so far.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.frr.iter().chain(&self.lb_frr) {
            s += &p.logs();
            s.push('\n');
        }
        for p in self.birds_lock().iter().flatten() {
            s += &p.logs();
            s.push('\n');
        }
        s
    }
}

/// [`Fabric::dsr_backends`]'s stand-ins and decapsulating programs;
/// stopped and detached on drop (before the fabric).
pub struct DsrBackends {
    pub standins: Vec<crate::standin::StandinHandle>,
    _decap: Vec<vip_userspace::dataplane::kernel::KernelMaps>,
}

/// [`Fabric::serve_tcp`]'s server.
pub struct TcpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Fabric {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fabric {} failed; daemon logs (kept in {}):\n{}",
                self.id,
                self.dir.display(),
                self.logs()
            );
        }
        // Daemons first (by pid: SIGTERM, 2 s, SIGKILL), then namespaces.
        drop(std::mem::take(&mut *self.birds_lock()));
        drop(std::mem::take(&mut self.frr));
        drop(std::mem::take(&mut self.lb_frr));
        for ns in self.created.iter().rev() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "fabric {}: ip netns del {ns}: {}",
                    self.id,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("fabric {}: ip netns del {ns}: {e}", self.id),
            }
        }
        // A failed run keeps its logs for a look; sweep_stale removes the
        // directory once this process is gone.
        if !std::thread::panicking()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            eprintln!("fabric {}: remove {}: {e}", self.id, self.dir.display());
        }
    }
}

/// The port the fabric's dsr services and backends use.
pub const DSR_PORT: u16 = 6443;
/// Where each LB's vipd serves /status and /metrics (its own namespace).
pub const DSR_METRICS: &str = "127.0.0.1:9590";
/// The client's address.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
/// Daemon start-up to a stable multipath route is 2.5-3.2 s here
/// (TOOLCHAIN.md); a loaded machine or one BFD flap at start-up (BIRD then
/// waits `error wait time` 1 s) takes longer.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// vipd on an LB in mode dsr, its backends in subnets of their own reached
/// through IPIP (`encap: ipip`): every LB computes the same Maglev table,
/// so a flow the router's ECMP moves to another LB reaches the same backend
/// with no state shared. A 2 s drain covers BIRD's withdrawal reaching the
/// router (tens of ms here, see `a_withdrawn_route_leaves_the_router_quickly`).
pub fn vipd_dsr_config() -> String {
    format!(
        "interface: {NODE_IF}
xdp_mode: skb
metrics_listen: {DSR_METRICS}
announce:
  table: 198
  drain: 2s
cert_gate:
  on_missing_san: off
services:
  - vip: {VIP}
    port: {DSR_PORT}
    mode: dsr
    encap: ipip
    probe: {{ type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 2, jitter: 0ms }}
    backends:
      - address: 10.79.1.2
      - address: 10.79.2.2
"
    )
}

/// vipd on an LB in mode nat, active-active: every LB announces the VIP and
/// translates to it (`snat: vip`), so the backends' replies reach whichever
/// LB the router's hash of the reply picks; each hands out its own slice of
/// `nat.ports`, and state sync (keyed, a mesh: the one list names every LB,
/// each leaves itself out) gives every LB every flow, both directions.
pub fn vipd_nat_config(f: &Fabric) -> String {
    let key = f.dir().join("sync.key");
    let peers: Vec<String> = f.lbs.iter().map(|l| l.addr.to_string()).collect();
    format!(
        "interface: {NODE_IF}
xdp_mode: skb
metrics_listen: {DSR_METRICS}
announce:
  table: 198
  drain: 2s
cert_gate:
  on_missing_san: off
state_sync:
  peers: [{}]
  key_file: {}
services:
  - vip: {VIP}
    port: {DSR_PORT}
    mode: nat
    snat: vip
    probe: {{ type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 2, jitter: 0ms }}
    backends:
      - address: 10.79.1.2
      - address: 10.79.2.2
",
        peers.join(", "),
        key.display()
    )
}

/// How the fabric's LBs forward: [`vipd_dsr_config`] or [`vipd_nat_config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabMode {
    Dsr,
    Nat,
}

/// The fabric with a vipd on every LB (mode dsr or nat), the stand-in on
/// both backends, converged: the router has all three LBs as nexthops.
/// Fields drop in order: vipds and backends before the fabric's namespaces.
pub struct DsrLab {
    pub vipds: Vec<Option<Proc>>,
    /// Each LB's vipd config (the same file everywhere).
    pub config: String,
    pub mode: LabMode,
    pub client_cfg: std::sync::Arc<rustls::ClientConfig>,
    _backends: DsrBackends,
    _pki: crate::certs::TestPki,
    pub f: Fabric,
}

impl DsrLab {
    pub fn new(hint: &str) -> DsrLab {
        DsrLab::on(Fabric::new(hint), hint)
    }

    /// As [`DsrLab::new`], on a fabric built already (e.g. without BFD).
    pub fn on(f: Fabric, hint: &str) -> DsrLab {
        DsrLab::with_mode(f, hint, LabMode::Dsr)
    }

    /// As [`DsrLab::on`], the LBs forwarding in `mode`.
    pub fn with_mode(f: Fabric, hint: &str, mode: LabMode) -> DsrLab {
        let pki = crate::certs::TestPki::new();
        let backends = f.backends_for(&pki, DSR_PORT, mode);
        let client_cfg = crate::standin::client_config(&pki.ca_pem(), None);
        let config = match mode {
            LabMode::Dsr => vipd_dsr_config(),
            LabMode::Nat => {
                let key = f.dir().join("sync.key");
                std::fs::write(&key, format!("1 {}\n", crate::scenario::SYNC_KEY_HEX))
                    .unwrap_or_else(|e| panic!("write {}: {e}", key.display()));
                vipd_nat_config(&f)
            }
        };
        let vipds = (0..LBS).map(|i| Some(f.spawn_vipd(i, &config))).collect();
        let took = f.wait_for_paths(VIP, LBS, CONVERGE);
        eprintln!("{hint}: {LBS}-way ECMP on the router {took:?} after the last vipd was ready");
        let lab = DsrLab {
            vipds,
            config,
            mode,
            client_cfg,
            _backends: backends,
            _pki: pki,
            f,
        };
        lab.wait_spread();
        lab
    }

    pub fn vip_addr() -> std::net::SocketAddr {
        std::net::SocketAddr::new(IpAddr::V4(VIP), DSR_PORT)
    }

    pub fn watches(&self, n: usize) -> crate::traffic::Watches {
        // Mode nat: a connection whose reply the router hashes to another
        // LB than its request waits one SYN retransmission (see README,
        // "Mode nat across the fabric"): open 20 at a time.
        let at_once = if self.mode == LabMode::Nat { 20 } else { 1 };
        crate::traffic::Watches::open_concurrently(
            &self.f.client,
            &self.client_cfg,
            Self::vip_addr(),
            (n, at_once),
            Some(Duration::from_secs(1)),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{n} watch streams through the fabric: {e}\n{}",
                self.f.state()
            )
        })
    }

    /// The LB each stream crosses, by the router's hash of its 5-tuple.
    pub fn lbs_of(&self, w: &crate::traffic::Watches) -> Vec<usize> {
        w.local_addrs()
            .iter()
            .map(|&a| {
                self.f
                    .lb_of(a, Self::vip_addr())
                    .unwrap_or_else(|| panic!("the router has no LB for {a}\n{}", self.f.state()))
            })
            .collect()
    }

    /// LB `i` back after its link went down: link up, its IPv4 default
    /// route again (the kernel dropped it with the link; the IPv6 side,
    /// whose addresses went too, is not used here), vipd started if it was
    /// killed; waits until the router has every LB again.
    pub fn restore(&mut self, i: usize) {
        let lb = self.f.lbs[i].clone();
        self.f.lb_sh(i, &["ip", "link", "set", NODE_IF, "up"]);
        self.f.lb_sh(
            i,
            &[
                "ip",
                "route",
                "replace",
                "default",
                "via",
                &lb.peer.to_string(),
            ],
        );
        if self.vipds[i].as_ref().is_none_or(|p| !p.is_running()) {
            self.vipds[i] = Some(self.f.spawn_vipd(i, &self.config));
        }
        let t = std::time::Instant::now();
        if self.f.bfd() {
            self.f.wait_bfd_up(LBS, CONVERGE);
        }
        self.f.wait_for_paths(VIP, LBS, CONVERGE);
        self.wait_spread();
        eprintln!(
            "lb{i} restored -> the router hashes flows to all {LBS} LBs again: {:?}",
            t.elapsed()
        );
    }

    /// Each running vipd's connection table, opened by id from the map
    /// descriptors the process holds (the lab runs vipd unpinned).
    pub fn conntracks(
        &self,
    ) -> Vec<aya::maps::HashMap<aya::maps::MapData, vip_common::ConnKey, vip_common::ConnValue>>
    {
        self.vipds
            .iter()
            .flatten()
            .map(|p| {
                let dir = format!("/proc/{}/fdinfo", p.pid());
                let id = std::fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("{dir}: {e}"))
                    .flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .filter_map(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix("map_id:"))
                            .and_then(|v| v.trim().parse::<u32>().ok())
                    })
                    .find(|&id| {
                        aya::maps::MapInfo::from_id(id)
                            .is_ok_and(|i| i.name_as_str() == Some("CONNTRACK"))
                    })
                    .unwrap_or_else(|| panic!("vipd {} holds no CONNTRACK map", p.pid()));
                let data = aya::maps::MapData::from_id(id).expect("CONNTRACK by id");
                aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data))
                    .expect("CONNTRACK as an LRU hash")
            })
            .collect()
    }

    /// Mode nat's sync lag across the fabric, as `bench sync-lag` measures
    /// it on one segment: for each of `flows` new flows (a SYN from a fresh
    /// client port, one at a time), every LB's connection table is polled
    /// without sleeping; the first LB to hold the entry is the one the
    /// router sent the SYN to (its XDP program inserted it), the others got
    /// it from state sync. Returns the lags (ms, each other LB's entry minus
    /// the first's) and how many flows some LB never got within 2 s.
    pub fn sync_lag(&self, flows: usize) -> (Vec<f64>, usize) {
        let maps = self.conntracks();
        let refs: Vec<_> = maps.iter().collect();
        let vip = std::net::SocketAddrV4::new(VIP, DSR_PORT);
        let (mut lags, mut missed) = (Vec::new(), 0);
        for n in 0..flows {
            // Below the client's ephemeral ports: no watch stream has one.
            let port = 21000 + n as u16;
            let keys = [crate::bench::sync_lag::key_to(CLIENT, port, vip)];
            let (seen, sent) = std::thread::scope(|s| {
                let poller = s.spawn(|| {
                    crate::bench::sync_lag::wait_all(
                        &refs,
                        &keys,
                        std::time::Instant::now() + Duration::from_secs(2),
                    )
                });
                let sent = crate::bench::sync_lag::syn_to(&self.f.client, CLIENT, port, vip);
                (poller.join().expect("poller"), sent)
            });
            let (fd, _) = sent.unwrap_or_else(|e| panic!("SYN from port {port}: {e:#}"));
            // SAFETY: the descriptor syn_to opened, closed once.
            unsafe { libc::close(fd) };
            let at: Vec<std::time::Instant> = seen.iter().filter_map(|m| m[0]).collect();
            if at.len() < maps.len() {
                missed += 1;
                continue;
            }
            let first = *at.iter().min().expect("three LBs");
            lags.extend(
                at.iter()
                    .filter(|&&t| t != first)
                    .map(|t| (*t - first).as_secs_f64() * 1e3),
            );
        }
        (lags, missed)
    }

    /// Waits until the router's kernel sends flows to every LB, asked for
    /// 60 client ports: its route can list an LB before zebra's rewrite of
    /// the multipath route after a link flap is done.
    pub fn wait_spread(&self) {
        let end = std::time::Instant::now() + CONVERGE;
        loop {
            let mut seen = [false; LBS];
            for port in 40000..40060 {
                let from = std::net::SocketAddr::new(IpAddr::V4(CLIENT), port);
                if let Some(i) = self.f.lb_of(from, Self::vip_addr()) {
                    seen[i] = true;
                }
            }
            if seen.iter().all(|&s| s) {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "the router hashes no flow to some LB ({seen:?}): {:?}\n{}",
                self.f.router_routes(VIP),
                self.f.vtysh(&format!("show ip route {VIP}/32"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `deploy/bird-vipd.conf` in this source tree: the lab runs the snippet
/// that ships, so the two cannot drift apart.
pub fn shipped_bird_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/bird-vipd.conf")
}

/// `deploy/frr-vipd.conf` in this source tree.
pub fn shipped_frr_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/frr-vipd.conf")
}

/// The shipped FRR snippet with its example addresses replaced by LB `lb`'s
/// (its AS numbers are the lab's already).
fn lb_frr_conf(lb: &Lb) -> String {
    let path = shipped_frr_conf();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    for example in [
        "neighbor 10.0.1.1 remote-as 65000",
        "bgp router-id 10.0.1.2",
        "router bgp 65100",
    ] {
        assert!(
            text.contains(example),
            "{} no longer has {example:?}: the lab fills in its example values",
            path.display()
        );
    }
    text.replace("10.0.1.1", &lb.peer.to_string())
        .replace("10.0.1.2", &lb.addr.to_string())
}

/// Root, and the daemons installed; panics with the fix otherwise.
fn preflight() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("not root: the fabric lab runs routing daemons in namespaces (cargo xtask test)");
    }
    let mut missing = Vec::new();
    for (what, probe) in [
        ("bird (package bird2)", "/usr/sbin/bird"),
        ("vtysh (package frr)", "/usr/bin/vtysh"),
        ("FRR's zebra (package frr)", "/usr/lib/frr/zebra"),
        ("FRR's bgpd (package frr)", "/usr/lib/frr/bgpd"),
        ("FRR's bfdd (package frr)", "/usr/lib/frr/bfdd"),
        ("nft (package nftables)", "/usr/sbin/nft"),
    ] {
        if !Path::new(probe).is_file() {
            missing.push(format!("{what} at {probe}"));
        }
    }
    assert!(
        missing.is_empty(),
        "the fabric lab needs {}: run `cargo xtask bootstrap` (as root it installs bird2, frr, nftables)",
        missing.join(", ")
    );
}

/// Waits until the daemon `p` created `path` (its control or vty socket);
/// panics with its logs if it exits or takes longer than `timeout`.
fn wait_path(path: &Path, p: &Proc, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        if !p.is_running() {
            panic!(
                "daemon exited before creating {}\n{}",
                path.display(),
                p.logs()
            );
        }
        if start.elapsed() > timeout {
            panic!("no {} after {timeout:?}\n{}", path.display(), p.logs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Nexthops in `ip -j route show PREFIX` output: a multipath route lists
/// them under `nexthops`, a single path carries `gateway`/`dev` itself.
pub fn parse_routes(json: &str) -> Vec<Nexthop> {
    let v: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("ip -j route output is not JSON ({e}): {json}"));
    let mut hops = Vec::new();
    let flags = |v: &serde_json::Value| -> Vec<String> {
        v["flags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    for route in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let list = match route["nexthops"].as_array() {
            Some(n) => n.clone(),
            None => vec![route.clone()],
        };
        for h in list {
            let Some(gw) = h["gateway"].as_str().and_then(|g| g.parse().ok()) else {
                continue;
            };
            hops.push(Nexthop {
                gateway: gw,
                dev: h["dev"].as_str().unwrap_or_default().to_owned(),
                flags: flags(&h),
            });
        }
    }
    hops
}

fn sh(ns: &str, args: &[&str]) -> String {
    let out: Output = ns_exec(ns, args);
    if !out.status.success() {
        panic!(
            "`ip netns exec {ns} {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(24)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipath_and_single_path_routes() {
        let multi = r#"[{"dst":"10.78.100.1","protocol":"bgp","metric":20,"flags":[],
            "nexthops":[{"gateway":"10.78.0.2","dev":"lb0","weight":1,"flags":[]},
                        {"gateway":"10.78.1.2","dev":"lb1","weight":1,"flags":["linkdown"]}]}]"#;
        let hops = parse_routes(multi);
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].gateway, "10.78.0.2".parse::<IpAddr>().expect("ip"));
        assert_eq!(hops[0].dev, "lb0");
        assert!(hops[0].usable());
        assert!(!hops[1].usable(), "a linkdown nexthop carries nothing");

        let single = r#"[{"dst":"10.78.100.1","gateway":"10.78.2.2","dev":"lb2","protocol":"bgp","metric":20,"flags":[]}]"#;
        let hops = parse_routes(single);
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].dev, "lb2");

        assert!(parse_routes("[]").is_empty());
        assert!(parse_routes("[ ]\n").is_empty());
    }

    #[test]
    fn the_shipped_bird_snippet_is_there() {
        let conf = std::fs::read_to_string(shipped_bird_conf()).expect("deploy/bird-vipd.conf");
        assert!(
            conf.contains("kernel table 198"),
            "the table vipd announces into"
        );
    }
}
