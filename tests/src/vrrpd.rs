//! vipd as a VRRPv3 router in a namespace lab, the counterpart of
//! `keepalived.rs`: a config rendered from a struct that mirrors vipd's YAML
//! `vrrp:` section, `vipd run` in a node, and the state read off its log
//! lines (`VRRP state change family=ipv4 vrid=51 from=backup to=master
//! why=...`). Also the lab-level moves the VRRP tests and the failover
//! benchmark share: a node crash (its link down), a partition that drops
//! only VRRP, the link-local address a node advertises from.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vip_userspace::vrrp::Family;

use crate::keepalived::VrrpState;
use crate::netns::{Lab, NODE_IF, Node, Proc, poll_until};

/// How long `VipdVrrp::start` waits for "vipd ready" (loading the XDP
/// object takes a while on a busy machine).
const STARTUP: Duration = Duration::from_secs(30);
/// How long a stop may take: vipd bounds its own VRRP shutdown at 3 s.
const STOP: Duration = Duration::from_secs(6);
/// The log message of every state change (vip-userspace/src/vrrp/router.rs).
pub const STATE_CHANGE: &str = "VRRP state change";
/// The log message when vipd, as master, meets another master (or another
/// MAC claiming the VIP) and wins.
pub const SPLIT_BRAIN_WON: &str = "VRRP split brain: ";
/// The log message when vipd meets a higher-priority master and yields
/// after meeting it (or its MAC) as another master: a split brain ending.
/// A plain preemption logs only the state change (`why=preempted: ...`).
pub const SPLIT_BRAIN_YIELDED: &str = "VRRP split brain resolved";

static START_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The settings of vipd's `vrrp:` section plus the services whose VIPs it
/// elects a holder for. Field for field the YAML; durations in milliseconds
/// as vipd reads them ("100ms").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipdVrrpConf {
    /// `interface`.
    pub interface: String,
    /// `xdp_mode`: skb in the labs (veth native XDP needs a program on the
    /// peer too).
    pub xdp_mode: String,
    /// `vrrp.vrid`, 1..=255.
    pub vrid: u8,
    /// `vrrp.priority`, 1..=254 (255: the address owner).
    pub priority: u8,
    /// `vrrp.advert_interval`: 20..=40950 ms in 10 ms steps.
    pub advert_interval_ms: u32,
    /// `vrrp.preempt`.
    pub preempt: bool,
    /// `vrrp.preempt_delay`.
    pub preempt_delay_ms: u32,
    /// `vrrp.unicast_peers`: empty is multicast; IPv6 peers by link-local
    /// address.
    pub unicast_peers: Vec<IpAddr>,
    /// `vrrp.announce.count`: gratuitous ARPs / unsolicited NAs per takeover.
    pub announce_count: u32,
    /// `vrrp.announce.interval`.
    pub announce_interval_ms: u32,
    /// `vrrp.announce.refresh` in seconds (0: never).
    pub announce_refresh_s: u32,
    /// `vrrp.track.xdp_detached`.
    pub track_xdp_detached: u8,
    /// `vrrp.track.local_apiserver`.
    pub track_local_apiserver: u8,
    /// This node's own apiserver, added to the service of its family without
    /// `local: true`: its address is the node's, which makes it the local
    /// backend (stacked mode; vipd probes it for priority tracking).
    pub local_backend: Option<IpAddr>,
    /// One mode dsr service per VIP (port `port`, one made-up backend of
    /// the VIP's family): the VIPs VRRP moves. v4 and v6 VIPs run as two
    /// virtual routers with the same VRID.
    pub vips: Vec<IpAddr>,
    pub port: u16,
    /// `vrrp.auth_hmac.key_file`: None leaves the option off.
    pub auth_hmac_key_file: Option<std::path::PathBuf>,
}

impl Default for VipdVrrpConf {
    /// The issue's example: VRID 51, priority 100, 100 ms adverts,
    /// preemption, multicast, 3 announcements 100 ms apart, no VIPs (set
    /// them).
    fn default() -> Self {
        VipdVrrpConf {
            interface: NODE_IF.to_string(),
            xdp_mode: "skb".to_string(),
            vrid: 51,
            priority: 100,
            advert_interval_ms: 100,
            preempt: true,
            preempt_delay_ms: 0,
            unicast_peers: Vec::new(),
            announce_count: 3,
            announce_interval_ms: 100,
            announce_refresh_s: 60,
            track_xdp_detached: 100,
            track_local_apiserver: 50,
            local_backend: None,
            auth_hmac_key_file: None,
            vips: Vec::new(),
            port: 6443,
        }
    }
}

/// The made-up backend behind every test service (nothing answers there;
/// the VRRP tests only move the VIP).
pub const BACKEND_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);
pub const BACKEND_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x50);
pub const BACKEND_MAC: &str = "02:77:00:00:00:50";

impl VipdVrrpConf {
    /// The defaults with `vrid`, `priority` and `vips`.
    pub fn new(vrid: u8, priority: u8, vips: &[IpAddr]) -> Self {
        VipdVrrpConf {
            vrid,
            priority,
            vips: vips.to_vec(),
            ..VipdVrrpConf::default()
        }
    }

    /// The families with VIPs, each one virtual router in vipd.
    pub fn families(&self) -> Vec<Family> {
        let mut f: Vec<Family> = self.vips.iter().map(Family::of).collect();
        f.sort_by_key(|f| *f == Family::V6);
        f.dedup();
        f
    }

    /// The YAML vipd reads. Panics on settings vipd would refuse, so a typo
    /// in a test fails here with the reason rather than at `vipd run`.
    pub fn render(&self) -> String {
        assert!(!self.vips.is_empty(), "vipd VRRP config: no VIPs");
        assert!(
            self.advert_interval_ms.is_multiple_of(10)
                && (20..=40_950).contains(&self.advert_interval_ms),
            "vipd VRRP config: advert_interval {} ms is not 20..=40950 in 10 ms steps",
            self.advert_interval_ms
        );
        let mut s = String::new();
        let mut line = |text: &str| {
            // Writing to a String cannot fail.
            let _ = writeln!(s, "{text}");
        };
        line("# Rendered by vip-tests (tests/src/vrrpd.rs).");
        line(&format!("interface: {}", self.interface));
        line(&format!("xdp_mode: {}", self.xdp_mode));
        line("vrrp:");
        line(&format!("  vrid: {}", self.vrid));
        line(&format!("  priority: {}", self.priority));
        line(&format!("  advert_interval: {}ms", self.advert_interval_ms));
        line(&format!("  preempt: {}", self.preempt));
        line(&format!("  preempt_delay: {}ms", self.preempt_delay_ms));
        let peers: Vec<String> = self
            .unicast_peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect();
        line(&format!("  unicast_peers: [{}]", peers.join(", ")));
        line(&format!(
            "  announce: {{ count: {}, interval: {}ms, refresh: {}s }}",
            self.announce_count, self.announce_interval_ms, self.announce_refresh_s
        ));
        line(&format!(
            "  track: {{ xdp_detached: {}, local_apiserver: {} }}",
            self.track_xdp_detached, self.track_local_apiserver
        ));
        if let Some(k) = &self.auth_hmac_key_file {
            line(&format!(
                "  auth_hmac: {{ key_file: {:?} }}",
                k.display().to_string()
            ));
        }
        line("services:");
        for vip in &self.vips {
            let backend: IpAddr = match vip {
                IpAddr::V4(_) => BACKEND_V4.into(),
                IpAddr::V6(_) => BACKEND_V6.into(),
            };
            line(&format!("  - vip: \"{vip}\""));
            line(&format!("    port: {}", self.port));
            line("    mode: dsr");
            // Nothing speaks TLS here: the made-up backend is simply down
            // and the local one, when set, a plain TCP listener.
            line("    probe: { type: tcp }");
            line("    backends:");
            line(&format!("      - address: \"{backend}\""));
            line(&format!("        mac: \"{BACKEND_MAC}\""));
            if let Some(local) = self.local_backend.filter(|l| l.is_ipv4() == vip.is_ipv4()) {
                line(&format!("      - address: \"{local}\""));
            }
        }
        s
    }
}

/// One `VRRP state change` log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub family: Family,
    pub from: VrrpState,
    pub to: VrrpState,
    /// The `why=` text ("startup", "no master heard for ...").
    pub why: String,
}

/// A vipd started in a lab node with a VRRP config. Dropping it stops it
/// with SIGTERM (priority 0 advert, VIPs removed).
pub struct VipdVrrp {
    proc: Proc,
    node: String,
    conf: VipdVrrpConf,
    conf_path: PathBuf,
}

impl VipdVrrp {
    /// Writes `conf` into the lab dir, validates it with `vipd
    /// check-config`, runs `vipd run --config F --no-pin --stats-interval 0`
    /// (RUST_LOG=info) in `node` and waits for "vipd ready". The routers
    /// start in the same moment; use `wait_state` for the election.
    pub fn start(lab: &Lab, node: &str, conf: &VipdVrrpConf) -> VipdVrrp {
        VipdVrrp::start_with_stats(lab, node, conf, 0)
    }

    /// `start` with `--stats-interval <secs>`: vipd then logs its VRRP
    /// counters (`vrrp family=ipv4 counters=state=master split_brain=2 ...`)
    /// whenever they changed, every `secs`; read them with `counter`.
    pub fn start_with_stats(
        lab: &Lab,
        node: &str,
        conf: &VipdVrrpConf,
        stats_interval_s: u64,
    ) -> VipdVrrp {
        let n = START_COUNTER.fetch_add(1, Ordering::Relaxed);
        let conf_path = lab.dir().join(format!("vipd-{node}-{n}.yaml"));
        std::fs::write(&conf_path, conf.render())
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        let bin = crate::vipd_bin();
        let bin = bin.to_str().expect("utf-8 vipd path");
        let path = conf_path.to_str().expect("utf-8 lab dir");
        // In the node's namespace: check-config also resolves the node's
        // values and finds the interface there.
        let check = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.node(node).ns,
                bin,
                "check-config",
                path,
            ])
            .output()
            .unwrap_or_else(|e| panic!("run {bin} check-config: {e}"));
        assert!(
            check.status.success(),
            "vipd check-config refuses the rendered config ({}):\n{}{}\n--- {} ---\n{}",
            check.status,
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr),
            conf_path.display(),
            conf.render()
        );
        let proc = lab.spawn(
            node,
            bin,
            &[
                "run",
                "--config",
                path,
                "--no-pin",
                "--stats-interval",
                &stats_interval_s.to_string(),
            ],
            &[("RUST_LOG", "info")],
        );
        proc.wait_for_stdout("vipd ready", STARTUP);
        VipdVrrp {
            proc,
            node: node.to_string(),
            conf: conf.clone(),
            conf_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn conf(&self) -> &VipdVrrpConf {
        &self.conf
    }

    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }

    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// Every state change logged, in order, both families.
    pub fn transitions(&self) -> Vec<Transition> {
        parse_transitions(&self.logs())
    }

    /// The states `family` entered, in order.
    pub fn states(&self, family: Family) -> Vec<VrrpState> {
        self.transitions()
            .into_iter()
            .filter(|t| t.family == family)
            .map(|t| t.to)
            .collect()
    }

    /// The state `family` last logged entering.
    pub fn state(&self, family: Family) -> Option<VrrpState> {
        self.states(family).last().copied()
    }

    /// Waits until every family of the config is in `want` (by log);
    /// returns how long that took. Panics with the logs on timeout or if
    /// vipd exits.
    pub fn wait_state(&self, want: VrrpState, timeout: Duration) -> Duration {
        let families = self.conf.families();
        poll_until(
            timeout,
            || {
                format!(
                    "vipd on {}: not {want} (transitions {:?})\n{}",
                    self.node,
                    self.transitions(),
                    self.logs()
                )
            },
            || {
                let there = families.iter().all(|f| self.state(*f) == Some(want));
                assert!(
                    there || self.is_running(),
                    "vipd on {} exited before entering {want}\n{}",
                    self.node,
                    self.logs()
                );
                there
            },
        )
    }

    /// Waits until the logs contain `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.proc.wait_for_logs(needle, timeout)
    }

    /// Log lines of split brains vipd won (another master, or another MAC
    /// announcing the VIP, while vipd is master).
    pub fn split_brains_won(&self) -> Vec<String> {
        lines_with(&self.logs(), SPLIT_BRAIN_WON)
    }

    /// Log lines of vipd yielding to a higher-priority master it had met
    /// as another master (a split brain ending).
    pub fn split_brains_yielded(&self) -> Vec<String> {
        lines_with(&self.logs(), SPLIT_BRAIN_YIELDED)
    }

    /// Counter `name` (`split_brain`, `adverts_sent`, ...) of `family` in
    /// the last periodic stats line; `None` before the first line or while
    /// the counter is zero (vipd leaves zeros out). Needs
    /// `start_with_stats`.
    pub fn counter(&self, family: Family, name: &str) -> Option<u64> {
        parse_counter(&self.logs(), family, name)
    }

    /// Polls `counter` until it reaches at least `min`; returns the value.
    pub fn wait_counter(&self, family: Family, name: &str, min: u64, timeout: Duration) -> u64 {
        self.wait_counters(family, &[name], min, timeout)
    }

    /// Polls the sum of `names` (one event counted under the reason that
    /// applied at the time) until it reaches at least `min`; returns it.
    pub fn wait_counters(
        &self,
        family: Family,
        names: &[&str],
        min: u64,
        timeout: Duration,
    ) -> u64 {
        let start = Instant::now();
        loop {
            let logs = self.logs();
            let sum: u64 = names
                .iter()
                .filter_map(|n| parse_counter(&logs, family, n))
                .sum();
            if sum >= min {
                return sum;
            }
            assert!(
                start.elapsed() < timeout,
                "vipd on {}: {family:?} counter {} not >= {min} within {timeout:?}\n{logs}",
                self.node,
                names.join(" + ")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A dead node's vipd: SIGKILL, so no priority 0 goes out and the VIPs
    /// stay on the interface. Returns once the process is gone.
    pub fn kill9(&self) {
        self.proc.signal(libc::SIGKILL);
        assert!(
            self.proc.wait_timeout(STOP).is_some(),
            "vipd on {} survived SIGKILL",
            self.node
        );
    }

    /// SIGTERM: vipd sends priority 0, removes the VIPs and exits. Returns
    /// the exit status.
    pub fn term(&self) -> ExitStatus {
        self.proc
            .term_within(STOP, &format!("vipd on {}", self.node))
    }
}

impl Drop for VipdVrrp {
    fn drop(&mut self) {
        // The lab prints the logs of the processes it still tracks when a
        // test fails, but a `VipdVrrp` (declared after the lab) is gone by
        // then: show what vipd said now.
        if std::thread::panicking() {
            eprintln!(
                "vipd on {} ({}):\n{}",
                self.node,
                self.conf_path.display(),
                self.logs()
            );
        }
    }
}

fn lines_with(logs: &str, needle: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// The `VRRP state change family=.. vrid=.. from=.. to=.. why=.. priority=..`
/// lines (tracing's plain format: the message, then the fields; `why` may
/// hold spaces, the others are one word).
pub fn parse_transitions(logs: &str) -> Vec<Transition> {
    logs.lines()
        .filter_map(|l| {
            let rest = &l[l.find(STATE_CHANGE)? + STATE_CHANGE.len()..];
            let word = |key: &str| -> Option<&str> {
                let at = rest.find(&format!(" {key}="))? + key.len() + 2;
                rest[at..].split_whitespace().next()
            };
            let family = match word("family")? {
                "ipv4" => Family::V4,
                "ipv6" => Family::V6,
                _ => return None,
            };
            let why = rest
                .split_once(" why=")
                .map(|(_, w)| w.split(" priority=").next().unwrap_or(w).trim())
                .unwrap_or("")
                .to_string();
            Some(Transition {
                family,
                from: state_of(word("from")?)?,
                to: state_of(word("to")?)?,
                why,
            })
        })
        .collect()
}

/// `name=N` from the last `vrrp family=<f> counters=...` stats line.
fn parse_counter(logs: &str, family: Family, name: &str) -> Option<u64> {
    let tag = format!(
        " vrrp family={} counters=",
        if family == Family::V4 { "ipv4" } else { "ipv6" }
    );
    let line = logs.lines().rev().find(|l| l.contains(&tag))?;
    let counters = &line[line.find(&tag)? + tag.len()..];
    counters.split_whitespace().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok())?
    })
}

/// vipd's state labels (`State::label`) as keepalived's states.
fn state_of(label: &str) -> Option<VrrpState> {
    match label {
        "initialize" => Some(VrrpState::Init),
        "backup" => Some(VrrpState::Backup),
        "master" => Some(VrrpState::Master),
        _ => None,
    }
}

/// The EUI-64 link-local address the kernel gives a node's eth0 (RFC 4291
/// appendix A): where its IPv6 adverts come from (RFC 9568 section
/// 5.1.2.1) and what IPv6 unicast peers name.
pub fn link_local(node: &Node) -> Ipv6Addr {
    let mac = node.mac;
    let w = |a: u8, b: u8| (u16::from(a) << 8) | u16::from(b);
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        w(mac[0] ^ 0x02, mac[1]),
        w(mac[2], 0xff),
        w(0xfe, mac[3]),
        w(mac[4], mac[5]),
    )
}

/// Where `node`'s adverts for `vip`'s family come from.
pub fn advert_src(node: &Node, vip: IpAddr) -> IpAddr {
    match vip {
        IpAddr::V4(_) => node.ipv4.into(),
        IpAddr::V6(_) => link_local(node).into(),
    }
}

/// Takes `node`'s switch port down (`up == false`) or up: the node drops
/// off the segment with its addresses intact, as a crashed or unplugged
/// machine does, and comes back the same. (Admin-down of the node's own
/// eth0 would delete its IPv6 addresses.)
pub fn set_link(lab: &Lab, node: &str, up: bool) {
    let port = lab.node(node).switch_port.clone();
    lab.switch_sh(&["ip", "link", "set", &port, if up { "up" } else { "down" }]);
}

/// TC_ACT_SHOT (linux/pkt_cls.h): what a direct-action classifier returns
/// to drop.
const TC_ACT_SHOT: u32 = 2;

/// Drops VRRP (IP protocol 112, both families) on its way from the bridge
/// to each of `nodes`, so they stop hearing each other's (and anyone's)
/// advertisements while everything else, ARP and ND included, flows and a
/// capture on another node still sees every advert. A classic-BPF filter
/// compiled by tcpdump runs as a direct-action cls_bpf classifier on the
/// switch ports' egress: the lab kernel has cls_bpf but neither nftables
/// nor the gact action, so `u32 ... action drop` is not available.
pub fn block_vrrp_to(lab: &Lab, nodes: &[&str]) {
    let bytecode = vrrp_drop_bytecode();
    for node in nodes {
        let port = lab.node(node).switch_port.clone();
        lab.switch_sh(&["tc", "qdisc", "add", "dev", &port, "clsact"]);
        lab.switch_sh(&[
            "tc", "filter", "add", "dev", &port, "egress", "bpf", "da", "bytecode", &bytecode,
        ]);
    }
}

/// Undoes `block_vrrp_to`.
pub fn unblock_vrrp_to(lab: &Lab, nodes: &[&str]) {
    for node in nodes {
        let port = lab.node(node).switch_port.clone();
        lab.switch_sh(&["tc", "qdisc", "del", "dev", &port, "clsact"]);
    }
}

/// `tcpdump -ddd` of the VRRP filter, with "accept" (return the snap
/// length) turned into TC_ACT_SHOT and "reject" (return 0) left as
/// TC_ACT_OK: in tc's comma-separated `bytecode` form.
fn vrrp_drop_bytecode() -> String {
    let out = Command::new("tcpdump")
        .args(["-ddd", crate::capture::VRRP_FILTER])
        .output()
        .unwrap_or_else(|e| panic!("run tcpdump -ddd: {e}"));
    assert!(
        out.status.success(),
        "tcpdump -ddd {}: {}",
        crate::capture::VRRP_FILTER,
        String::from_utf8_lossy(&out.stderr)
    );
    to_tc_drop(&String::from_utf8_lossy(&out.stdout))
}

/// `tcpdump -ddd` text (a count, then "code jt jf k" lines) to tc's
/// `bytecode` argument, with every non-zero return made TC_ACT_SHOT.
fn to_tc_drop(ddd: &str) -> String {
    const BPF_RET_K: u32 = 0x06;
    let mut lines = ddd.lines().map(str::trim).filter(|l| !l.is_empty());
    let count: usize = lines
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("tcpdump -ddd output without a count:\n{ddd}"));
    let insns: Vec<String> = lines
        .map(|l| {
            let f: Vec<u32> = l
                .split_whitespace()
                .map(|w| {
                    w.parse()
                        .unwrap_or_else(|_| panic!("tcpdump -ddd line {l:?}"))
                })
                .collect();
            assert_eq!(f.len(), 4, "tcpdump -ddd line {l:?}");
            let k = if f[0] == BPF_RET_K && f[3] != 0 {
                TC_ACT_SHOT
            } else {
                f[3]
            };
            format!("{} {} {} {k}", f[0], f[1], f[2])
        })
        .collect();
    assert_eq!(insns.len(), count, "tcpdump -ddd count:\n{ddd}");
    format!("{count},{}", insns.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn renders_the_issue_example() {
        let conf = VipdVrrpConf::new(51, 150, &[ip("10.77.0.100")]);
        let want = "\
# Rendered by vip-tests (tests/src/vrrpd.rs).
interface: eth0
xdp_mode: skb
vrrp:
  vrid: 51
  priority: 150
  advert_interval: 100ms
  preempt: true
  preempt_delay: 0ms
  unicast_peers: []
  announce: { count: 3, interval: 100ms, refresh: 60s }
  track: { xdp_detached: 100, local_apiserver: 50 }
services:
  - vip: \"10.77.0.100\"
    port: 6443
    mode: dsr
    probe: { type: tcp }
    backends:
      - address: \"10.77.0.50\"
        mac: \"02:77:00:00:00:50\"
";
        assert_eq!(conf.render(), want);
        assert_eq!(conf.families(), [Family::V4]);
    }

    #[test]
    fn renders_peers_and_both_families() {
        let conf = VipdVrrpConf {
            unicast_peers: vec![ip("10.77.0.12"), ip("fe80::77:ff:fe00:12")],
            local_backend: Some(ip("10.77.0.11")),
            ..VipdVrrpConf::new(7, 100, &[ip("fd77::100"), ip("10.77.0.100")])
        };
        let text = conf.render();
        for want in [
            "unicast_peers: [\"10.77.0.12\", \"fe80::77:ff:fe00:12\"]\n",
            "  - vip: \"fd77::100\"\n    port: 6443\n    mode: dsr\n    probe: { type: tcp }\n    backends:\n      - address: \"fd77::50\"\n",
            // The local backend joins only the service of its family, and
            // is local by its address alone.
            "        mac: \"02:77:00:00:00:50\"\n      - address: \"10.77.0.11\"\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert_eq!(text.matches("10.77.0.11").count(), 1, "{text}");
        assert!(!text.contains("local:"), "{text}");
        assert_eq!(conf.families(), [Family::V4, Family::V6]);
    }

    #[test]
    #[should_panic(expected = "10 ms steps")]
    fn refuses_odd_intervals() {
        VipdVrrpConf {
            advert_interval_ms: 105,
            ..VipdVrrpConf::new(1, 100, &[ip("10.0.0.1")])
        }
        .render();
    }

    /// Lines as vipd writes them (tracing's plain format, no colours).
    #[test]
    fn reads_state_changes() {
        let logs = "\
2026-03-01T10:00:00.000001Z  INFO vip_userspace::vrrp::router: VRRP router starting family=ipv4 vrid=51 priority=150
2026-03-01T10:00:00.000002Z  INFO vip_userspace::vrrp::router: VRRP state change family=ipv4 vrid=51 from=initialize to=backup why=startup priority=150
2026-03-01T10:00:00.360000Z  INFO vip_userspace::vrrp::router: VRRP state change family=ipv6 vrid=51 from=backup to=master why=no master heard for the master-down interval priority=150
2026-03-01T10:00:01.000000Z  INFO vip_userspace::vrrp::router: VRRP state change family=ipv4 vrid=51 from=master to=initialize why=shutdown or link down priority=150
";
        let t = parse_transitions(logs);
        assert_eq!(t.len(), 3);
        assert_eq!(
            t[1],
            Transition {
                family: Family::V6,
                from: VrrpState::Backup,
                to: VrrpState::Master,
                why: "no master heard for the master-down interval".into(),
            }
        );
        assert_eq!(
            (t[0].family, t[0].to, t[0].why.as_str()),
            (Family::V4, VrrpState::Backup, "startup")
        );
        assert_eq!((t[2].from, t[2].to), (VrrpState::Master, VrrpState::Init));
    }

    #[test]
    fn reads_counters() {
        let logs = "\
2026-03-01T10:00:01Z  INFO vipd: vrrp family=ipv4 counters=state=master adverts_sent=10 split_brain=1
2026-03-01T10:00:01Z  INFO vipd: vrrp family=ipv6 counters=state=backup adverts_received=9
2026-03-01T10:00:02Z  INFO vipd: vrrp family=ipv4 counters=state=master adverts_sent=20 split_brain=6 discarded_ttl=1
";
        assert_eq!(parse_counter(logs, Family::V4, "split_brain"), Some(6));
        assert_eq!(parse_counter(logs, Family::V4, "adverts_sent"), Some(20));
        assert_eq!(parse_counter(logs, Family::V6, "adverts_received"), Some(9));
        assert_eq!(parse_counter(logs, Family::V6, "split_brain"), None);
        assert_eq!(parse_counter("", Family::V4, "split_brain"), None);
    }

    #[test]
    fn link_local_of_a_lab_mac() {
        let node = Node {
            name: "lb1".into(),
            ns: "x".into(),
            ifname: NODE_IF.into(),
            ipv4: Ipv4Addr::new(10, 77, 0, 11),
            ipv6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x11),
            mac: [0x02, 0x77, 0, 0, 0, 0x11],
            ifindex: 2,
            switch_port: "p1".into(),
        };
        assert_eq!(
            link_local(&node),
            "fe80::77:ff:fe00:11".parse::<Ipv6Addr>().expect("addr")
        );
        assert_eq!(advert_src(&node, ip("10.77.0.100")), ip("10.77.0.11"));
    }

    /// tcpdump 4.99.3's `-ddd` of VRRP_FILTER.
    #[test]
    fn tcpdump_program_to_a_tc_drop() {
        let ddd = "12\n40 0 0 12\n21 0 2 2048\n48 0 0 23\n21 6 7 112\n21 0 6 34525\n48 0 0 20\n\
                   21 3 0 112\n21 0 3 44\n48 0 0 54\n21 0 1 112\n6 0 0 262144\n6 0 0 0\n";
        assert_eq!(
            to_tc_drop(ddd),
            "12,40 0 0 12,21 0 2 2048,48 0 0 23,21 6 7 112,21 0 6 34525,48 0 0 20,\
             21 3 0 112,21 0 3 44,48 0 0 54,21 0 1 112,6 0 0 2,6 0 0 0"
        );
    }
}
