//! keepalived (Debian 12: 2.2.7) as a VRRPv3 peer in a namespace lab: the
//! reference implementation vipd's VRRP (RFC 9568) is tested against.
//!
//! One `vrrp_instance` per process, run in the foreground with logs on the
//! console, so `Proc` captures them and the state is read off the log lines
//! (`(<instance>) Entering MASTER STATE`). keepalived forks a VRRP child that
//! holds the sockets and the VIPs; `Keepalived::kill9` kills both so the test
//! sees a dead node, not a clean shutdown.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::netns::{Lab, NODE_IF, Proc, poll_until};

/// How long `Keepalived::start` waits for "Startup complete".
const STARTUP: Duration = Duration::from_secs(5);
/// How long a stop (SIGTERM or SIGKILL) may take. keepalived 2.2.7 lingers
/// about one second after SIGTERM before it exits.
const STOP: Duration = Duration::from_secs(5);

static START_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The states keepalived logs as `(<instance>) Entering <STATE> STATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpState {
    Init,
    Backup,
    Master,
    Fault,
    Stop,
}

impl VrrpState {
    /// The word keepalived logs (and `state` takes in the config).
    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Init => "INIT",
            VrrpState::Backup => "BACKUP",
            VrrpState::Master => "MASTER",
            VrrpState::Fault => "FAULT",
            VrrpState::Stop => "STOP",
        }
    }

    fn parse(word: &str) -> Option<VrrpState> {
        [
            VrrpState::Init,
            VrrpState::Backup,
            VrrpState::Master,
            VrrpState::Fault,
            VrrpState::Stop,
        ]
        .into_iter()
        .find(|s| s.as_str() == word)
    }
}

impl std::fmt::Display for VrrpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One keepalived `vrrp_instance` (one address family: RFC 9568 runs IPv4
/// and IPv6 virtual routers separately, and keepalived takes the family
/// from the VIPs, so no `native_ipv6` is needed for an IPv6-only instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepalivedConf {
    /// `virtual_router_id`, 1..=255.
    pub vrid: u8,
    /// `priority`, 1..=255.
    pub priority: u8,
    /// `advert_int` in milliseconds: a multiple of 10 (VRRPv3 counts in
    /// centiseconds; keepalived takes fractional seconds such as `0.1`).
    pub advert_int_ms: u32,
    /// `false` renders `nopreempt` (which needs `state BACKUP`).
    pub preempt: bool,
    /// `preempt_delay`, seconds; 0 leaves it out.
    pub preempt_delay_s: u32,
    /// `virtual_ipaddress`, one family, in order (for IPv6 RFC 9568 section
    /// 5.2.9 wants a link-local address first; keepalived only warns
    /// "the first IPv6 VIP address should be link local" without one).
    /// Rendered without a prefix length: keepalived adds /32 or /128.
    pub vips: Vec<IpAddr>,
    /// `unicast_peer`: empty means multicast to 224.0.0.18 / ff02::12.
    /// For IPv6 give the peers' link-local addresses: without
    /// `unicast_src_ip` keepalived sends from its link-local address and
    /// binds its receive socket to it, so adverts to a global peer address
    /// are never received (both sides end up master).
    pub unicast_peers: Vec<IpAddr>,
    /// `unicast_src_ip`; keepalived defaults to the interface's primary
    /// IPv4 address or its link-local IPv6 address.
    pub unicast_src: Option<IpAddr>,
    /// `unicast_ttl`. keepalived 2.2.7 sends IPv4 unicast adverts with TTL
    /// 255 but IPv6 unicast ones with the default hop limit (64) unless
    /// this is set, and accepts hop limit 64 from a unicast peer itself.
    pub unicast_ttl: Option<u8>,
    /// `interface`.
    pub interface: String,
    /// `state`: the initial state, BACKUP or MASTER.
    pub initial_state: VrrpState,
    /// `garp_master_delay`: seconds after becoming master before the second
    /// burst of gratuitous ARPs / unsolicited NAs (keepalived default 5).
    pub garp_master_delay_s: Option<u32>,
    /// `garp_master_repeat`: ARPs/NAs per burst (keepalived default 5).
    pub garp_master_repeat: Option<u32>,
    /// `garp_master_refresh`: seconds between repeated bursts while master
    /// (keepalived default 0, none).
    pub garp_master_refresh_s: Option<u32>,
    /// Lines copied verbatim into the `vrrp_instance` block.
    pub extra_instance_lines: Vec<String>,
    /// Lines copied verbatim into `global_defs`.
    pub extra_global_lines: Vec<String>,
}

impl Default for KeepalivedConf {
    /// VRID 51, priority 100, 100 ms adverts, preemption, multicast on eth0,
    /// no VIPs (set them).
    fn default() -> Self {
        KeepalivedConf {
            vrid: 51,
            priority: 100,
            advert_int_ms: 100,
            preempt: true,
            preempt_delay_s: 0,
            vips: Vec::new(),
            unicast_peers: Vec::new(),
            unicast_src: None,
            unicast_ttl: None,
            interface: NODE_IF.to_string(),
            initial_state: VrrpState::Backup,
            garp_master_delay_s: None,
            garp_master_repeat: None,
            garp_master_refresh_s: None,
            extra_instance_lines: Vec::new(),
            extra_global_lines: Vec::new(),
        }
    }
}

impl KeepalivedConf {
    /// The defaults with `vrid`, `priority` and `vips`.
    pub fn new(vrid: u8, priority: u8, vips: &[IpAddr]) -> Self {
        KeepalivedConf {
            vrid,
            priority,
            vips: vips.to_vec(),
            ..KeepalivedConf::default()
        }
    }

    pub fn is_ipv6(&self) -> bool {
        self.vips.first().is_some_and(IpAddr::is_ipv6)
    }

    /// `VI4_51` / `VI6_51`: what `Keepalived::start` names the instance.
    pub fn default_instance_name(&self) -> String {
        let family = if self.is_ipv6() { 6 } else { 4 };
        format!("VI{family}_{}", self.vrid)
    }

    /// A complete keepalived.conf holding this one instance. Panics on a
    /// configuration keepalived would reject or silently change.
    pub fn render(&self, instance_name: &str) -> String {
        self.validate(instance_name);
        let mut s = String::new();
        // `let _ =`: writing to a String cannot fail.
        let mut line = |indent: usize, text: &str| {
            let _ = writeln!(s, "{:indent$}{text}", "", indent = indent * 4);
        };
        line(
            0,
            "# Rendered by vip-tests (tests/src/keepalived.rs) for keepalived 2.2.7.",
        );
        line(0, "global_defs {");
        // Only used in logs and notifications, but keep instances apart.
        line(1, &format!("router_id {instance_name}"));
        line(1, "vrrp_version 3");
        for extra in &self.extra_global_lines {
            line(1, extra);
        }
        line(0, "}");
        line(0, &format!("vrrp_instance {instance_name} {{"));
        line(1, &format!("state {}", self.initial_state));
        line(1, &format!("interface {}", self.interface));
        line(1, &format!("virtual_router_id {}", self.vrid));
        line(1, &format!("priority {}", self.priority));
        line(1, &format!("advert_int {}", seconds(self.advert_int_ms)));
        if !self.preempt {
            line(1, "nopreempt");
        }
        if self.preempt_delay_s > 0 {
            line(1, &format!("preempt_delay {}", self.preempt_delay_s));
        }
        if let Some(d) = self.garp_master_delay_s {
            line(1, &format!("garp_master_delay {d}"));
        }
        if let Some(r) = self.garp_master_repeat {
            line(1, &format!("garp_master_repeat {r}"));
        }
        if let Some(r) = self.garp_master_refresh_s {
            line(1, &format!("garp_master_refresh {r}"));
        }
        if let Some(src) = self.unicast_src {
            line(1, &format!("unicast_src_ip {src}"));
        }
        if let Some(ttl) = self.unicast_ttl {
            line(1, &format!("unicast_ttl {ttl}"));
        }
        if !self.unicast_peers.is_empty() {
            line(1, "unicast_peer {");
            for peer in &self.unicast_peers {
                line(2, &peer.to_string());
            }
            line(1, "}");
        }
        line(1, "virtual_ipaddress {");
        for vip in &self.vips {
            line(2, &vip.to_string());
        }
        line(1, "}");
        for extra in &self.extra_instance_lines {
            line(1, extra);
        }
        line(0, "}");
        s
    }

    fn validate(&self, name: &str) {
        let what = format!("keepalived instance {name}");
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "{what}: instance names are one word"
        );
        assert!(self.vrid >= 1, "{what}: VRID 0 is invalid (1..=255)");
        assert!(
            self.priority >= 1,
            "{what}: priority 0 is only sent, never configured"
        );
        assert!(
            self.advert_int_ms.is_multiple_of(10) && (10..=40_950).contains(&self.advert_int_ms),
            "{what}: advert_int_ms {} is not a whole number of centiseconds in 10..=40950",
            self.advert_int_ms
        );
        assert!(!self.vips.is_empty(), "{what}: no VIPs");
        let v6 = self.is_ipv6();
        assert!(
            self.vips
                .iter()
                .chain(&self.unicast_peers)
                .all(|a| a.is_ipv6() == v6),
            "{what}: VIPs and unicast peers must be one family (one instance per family, \
             RFC 9568 section 5.1): {:?} / {:?}",
            self.vips,
            self.unicast_peers
        );
        assert!(
            matches!(self.initial_state, VrrpState::Backup | VrrpState::Master),
            "{what}: initial state must be BACKUP or MASTER, not {}",
            self.initial_state
        );
        assert!(
            self.preempt || self.initial_state == VrrpState::Backup,
            "{what}: nopreempt needs initial state BACKUP"
        );
    }
}

/// 100 -> "0.1", 1000 -> "1", 1250 -> "1.25".
pub(crate) fn seconds(ms: u32) -> String {
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A keepalived started in a lab node. Dropping it stops it with SIGTERM
/// (the clean shutdown: priority 0 advert, VIPs removed).
pub struct Keepalived {
    proc: Proc,
    node: String,
    instance: String,
    conf_path: PathBuf,
    vrrp_pid_file: PathBuf,
}

impl Keepalived {
    /// Writes `conf` into the lab dir and runs
    /// `keepalived --dont-fork --log-console --no-syslog --log-detail --vrrp`
    /// in `node` with pid files of its own (so several run on one machine),
    /// then waits for "Startup complete" and the VRRP child's pid file.
    pub fn start(lab: &Lab, node: &str, conf: &KeepalivedConf) -> Keepalived {
        let instance = conf.default_instance_name();
        Keepalived::start_text(lab, node, &instance, &conf.render(&instance))
    }

    /// `start` with a keepalived.conf written elsewhere (the kubeadm
    /// recipe's, `kubeadm_ha`) holding one `vrrp_instance` named
    /// `instance`.
    pub fn start_text(lab: &Lab, node: &str, instance: &str, text: &str) -> Keepalived {
        let instance = instance.to_string();
        let n = START_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = lab.dir().join(format!("keepalived-{node}-{n}"));
        let file = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
        let conf_path = file("conf");
        std::fs::write(&conf_path, text)
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
        let (pid_file, vrrp_pid_file) = (file("pid"), file("vrrp.pid"));
        let (checkers_pid_file, bfd_pid_file) = (file("checkers.pid"), file("bfd.pid"));
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let args = [
            "--dont-fork".to_string(),
            "--log-console".into(),
            // The console is enough; keep test runs out of the host's syslog.
            "--no-syslog".into(),
            "--log-detail".into(),
            // VRRP only: no health-checker or BFD child.
            "--vrrp".into(),
            "--use-file".into(),
            path(&conf_path),
            // keepalived refuses to start when a pid file names a live
            // process; every start gets files of its own.
            "--pid".into(),
            path(&pid_file),
            "--vrrp_pid".into(),
            path(&vrrp_pid_file),
            "--checkers_pid".into(),
            path(&checkers_pid_file),
            "--bfd_pid".into(),
            path(&bfd_pid_file),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = lab.spawn(node, "keepalived", &args, &[]);
        let k = Keepalived {
            proc,
            node: node.to_string(),
            instance,
            conf_path,
            vrrp_pid_file,
        };
        k.proc.wait_for_logs("Startup complete", STARTUP);
        poll_until(
            STARTUP,
            || {
                format!(
                    "keepalived on {node}: no VRRP child pid in {}\n{}",
                    k.vrrp_pid_file.display(),
                    k.logs()
                )
            },
            || k.vrrp_pid().is_some(),
        );
        // `ip netns exec` execs keepalived, so the pid we spawned is the
        // keepalived parent; kill9 relies on it.
        let main_pid = read_pid(&pid_file);
        assert_eq!(
            main_pid,
            Some(k.pid()),
            "keepalived on {node}: pid file {} does not name the spawned process",
            pid_file.display()
        );
        k
    }

    /// The keepalived parent's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The VRRP child's pid, from its pid file (gone after a clean stop).
    pub fn vrrp_pid(&self) -> Option<u32> {
        read_pid(&self.vrrp_pid_file)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The `vrrp_instance` name, as in the log lines `(<name>) ...`.
    pub fn instance(&self) -> &str {
        &self.instance
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

    /// Every state the instance logged entering, in order.
    pub fn transitions(&self) -> Vec<VrrpState> {
        parse_transitions(&self.logs(), &self.instance)
    }

    /// The state last logged.
    pub fn state(&self) -> Option<VrrpState> {
        self.transitions().last().copied()
    }

    /// Waits until the last logged state is `want`; returns how long that
    /// took. Panics with the logs on timeout or if keepalived exits.
    pub fn wait_state(&self, want: VrrpState, timeout: Duration) -> Duration {
        poll_until(
            timeout,
            || {
                format!(
                    "keepalived on {}: not {want} (transitions {:?})\n{}",
                    self.node,
                    self.transitions(),
                    self.logs()
                )
            },
            || {
                let there = self.state() == Some(want);
                assert!(
                    there || self.is_running(),
                    "keepalived on {} exited before entering {want}\n{}",
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

    /// A dead node: SIGKILL for the VRRP child and the parent, so nothing
    /// sends a priority 0 advert or removes the VIPs (they stay on the
    /// interface, as on a node whose keepalived crashed). Killing only the
    /// parent is not that: the child gets SIGTERM from its parent-death
    /// signal and shuts down cleanly. The parent is stopped first so it can
    /// neither respawn the child nor reap it (which keeps the child's pid
    /// from being reused before it is killed).
    pub fn kill9(&self) {
        if !self.is_running() {
            return;
        }
        self.proc.signal(libc::SIGSTOP);
        let child = self
            .vrrp_pid()
            .filter(|&c| parent_of(c) == Some(self.pid()));
        let Some(c) = child else {
            // Killing the parent alone would be a clean shutdown, not the
            // dead node the caller asked for.
            self.proc.signal(libc::SIGKILL);
            panic!(
                "keepalived on {}: no VRRP child of {} in {}\n{}",
                self.node,
                self.pid(),
                self.vrrp_pid_file.display(),
                self.logs()
            );
        };
        signal(c, libc::SIGKILL);
        self.proc.signal(libc::SIGKILL);
        assert!(
            self.proc.wait_timeout(STOP).is_some(),
            "keepalived on {}: parent {} survived SIGKILL",
            self.node,
            self.pid()
        );
        // Once the child is a zombie (or reaped) its sockets are closed.
        poll_until(
            STOP,
            || {
                format!(
                    "keepalived on {}: VRRP child {c} survived SIGKILL",
                    self.node
                )
            },
            || dead(c),
        );
    }

    /// SIGTERM: keepalived sends a priority 0 advert, removes its VIPs and
    /// exits (about a second later). Returns the exit status.
    pub fn term(&self) -> ExitStatus {
        self.proc
            .term_within(STOP, &format!("keepalived on {}", self.node))
    }
}

/// The states in `(<instance>) Entering <STATE> STATE[ (init)]` lines.
fn parse_transitions(logs: &str, instance: &str) -> Vec<VrrpState> {
    let tag = format!("({instance}) Entering ");
    logs.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&tag)? + tag.len()..];
            let word = rest.strip_suffix(" STATE").or_else(|| {
                // "Entering BACKUP STATE (init)" at startup.
                rest.split_once(" STATE ").map(|(w, _)| w)
            })?;
            VrrpState::parse(word)
        })
        .collect()
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// PPid of `pid` from /proc, `None` if it is gone.
fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Gone or a zombie.
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

fn signal(pid: u32, sig: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2); the caller checked that `pid` is the VRRP child of a
    // keepalived we spawned and have stopped, so it cannot have been reaped
    // and reused.
    if unsafe { libc::kill(pid, sig) } != 0 {
        eprintln!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn renders_a_v3_instance() {
        let conf = KeepalivedConf::new(51, 150, &[ip("10.77.0.100")]);
        let text = conf.render("VI4_51");
        let want = "\
# Rendered by vip-tests (tests/src/keepalived.rs) for keepalived 2.2.7.
global_defs {
    router_id VI4_51
    vrrp_version 3
}
vrrp_instance VI4_51 {
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority 150
    advert_int 0.1
    virtual_ipaddress {
        10.77.0.100
    }
}
";
        assert_eq!(text, want);
    }

    #[test]
    fn renders_options() {
        let conf = KeepalivedConf {
            preempt: false,
            preempt_delay_s: 2,
            advert_int_ms: 1250,
            unicast_peers: vec![ip("fd77::12")],
            unicast_src: Some(ip("fd77::11")),
            unicast_ttl: Some(255),
            garp_master_delay_s: Some(1),
            garp_master_repeat: Some(3),
            garp_master_refresh_s: Some(10),
            ..KeepalivedConf::new(7, 200, &[ip("fe80::100"), ip("fd77::100")])
        };
        assert_eq!(conf.default_instance_name(), "VI6_7");
        let text = conf.render("x");
        for want in [
            "advert_int 1.25\n",
            "nopreempt\n",
            "preempt_delay 2\n",
            "garp_master_delay 1\n",
            "garp_master_repeat 3\n",
            "garp_master_refresh 10\n",
            "unicast_src_ip fd77::11\n",
            "unicast_ttl 255\n",
            "unicast_peer {\n        fd77::12\n    }\n",
            "virtual_ipaddress {\n        fe80::100\n        fd77::100\n    }\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn advert_int_in_seconds() {
        assert_eq!(seconds(100), "0.1");
        assert_eq!(seconds(10), "0.01");
        assert_eq!(seconds(1000), "1");
        assert_eq!(seconds(1250), "1.25");
        assert_eq!(seconds(40_950), "40.95");
    }

    #[test]
    #[should_panic(expected = "one family")]
    fn rejects_mixed_families() {
        KeepalivedConf::new(1, 100, &[ip("10.0.0.1"), ip("fd00::1")]).render("x");
    }

    #[test]
    #[should_panic(expected = "centiseconds")]
    fn rejects_sub_centisecond_intervals() {
        KeepalivedConf {
            advert_int_ms: 105,
            ..KeepalivedConf::new(1, 100, &[ip("10.0.0.1")])
        }
        .render("x");
    }

    /// Real keepalived 2.2.7 log lines (timestamps as printed with -l).
    #[test]
    fn reads_state_transitions_from_logs() {
        let logs = "\
Tue Nov 24 00:33:23 2026: (VI_lb1) removing VIPs.
Tue Nov 24 00:33:23 2026: (VI_lb1) Entering BACKUP STATE (init)
Tue Nov 24 00:33:23 2026: VRRP sockpool: [ifindex(  2), family(IPv4), proto(112), fd(13,14) multicast, address(224.0.0.18)]
Tue Nov 24 00:33:23 2026: (VI_lb1) received lower priority (100) advert from 10.77.0.12 - discarding
Tue Nov 24 00:33:23 2026: (VI_lb1) Entering MASTER STATE
Tue Nov 24 00:33:23 2026: (VI_lb1) setting VIPs.
Tue Nov 24 00:33:23 2026: (VI_other) Entering FAULT STATE
Tue Nov 24 00:33:27 2026: (VI_lb1) Entering BACKUP STATE
";
        assert_eq!(
            parse_transitions(logs, "VI_lb1"),
            [VrrpState::Backup, VrrpState::Master, VrrpState::Backup]
        );
        assert_eq!(parse_transitions(logs, "VI_other"), [VrrpState::Fault]);
    }
}
