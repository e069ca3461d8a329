//! Named L2 topologies in network namespaces: one "switch" namespace holding a
//! bridge, one namespace per node joined to it by a veth pair. Unique names per
//! process and lab so tests run in parallel; everything is removed on drop,
//! including on unwind.

use std::any::Any;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// The lab subnet. Node `i` (0-based, in the order given to `Lab::new`) is
/// 10.77.0.<10+i>, fd77::<10+i> and 02:77:00:00:00:<10+i>, the number written
/// with the same digits in all three (host 11: 10.77.0.11, fd77::11, ..:11).
pub const SUBNET_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
pub const PREFIX_V4: u8 = 24;
pub const SUBNET_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0);
pub const PREFIX_V6: u8 = 64;
/// Suggested VIPs: inside the subnet, outside the node range (10..=99).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0x100);
/// First host number; node `i` gets host number `HOST_BASE + i`.
pub const HOST_BASE: u8 = 10;
/// Node-side interface name in every node namespace.
pub const NODE_IF: &str = "eth0";
/// The bridge in the switch namespace.
pub const BRIDGE: &str = "br0";
/// Namespace name prefix; `vt-<pid>-<counter>-<role>`.
pub const NS_PREFIX: &str = "vt-";

const MAX_NODES: usize = (100 - HOST_BASE as usize) - 1;
const MAX_NS_NAME: usize = 29;

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One node of a lab: its namespace and its single interface towards the bridge.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub ns: String,
    pub ifname: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub mac: [u8; 6],
    pub ifindex: u32,
    /// The veth peer in the switch namespace (enslaved to `br0`).
    pub switch_port: String,
}

impl Node {
    /// This node's address of the family (`v6`: its IPv6 one).
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ipv6.into()
        } else {
            self.ipv4.into()
        }
    }

    /// `02:77:00:00:00:11` style, for `ip`/`tcpdump` comparisons.
    pub fn mac_string(&self) -> String {
        mac_to_string(&self.mac)
    }
}

pub fn mac_to_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A topology: switch namespace with `br0`, plus one namespace per node.
pub struct Lab {
    hint: String,
    id: String,
    switch_ns: String,
    nodes: Vec<Node>,
    /// Every namespace created so far, so a half-built lab is torn down too.
    created: Vec<String>,
    dir: PathBuf,
    kept: Mutex<Vec<Box<dyn Any + Send>>>,
    procs: Mutex<Vec<Weak<Mutex<ProcInner>>>>,
    spawn_counter: AtomicU32,
}

impl Lab {
    /// Builds the topology; panics with the reason (not root, missing tool,
    /// `ip` failure) if it cannot.
    pub fn new(hint: &str, nodes: &[&str]) -> Lab {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            panic!("not root: namespace tests must run as root (cargo xtask test)");
        }
        for tool in ["ip", "ethtool"] {
            if Command::new(tool).arg("-V").output().is_err() {
                panic!(
                    "`{tool}` not found in PATH: install iproute2/ethtool (cargo xtask bootstrap)"
                );
            }
        }
        assert!(
            !nodes.is_empty() && nodes.len() <= MAX_NODES,
            "Lab::new({hint:?}): between 1 and {MAX_NODES} nodes, got {}",
            nodes.len()
        );
        for (i, a) in nodes.iter().enumerate() {
            assert!(
                !nodes[..i].contains(a),
                "Lab::new({hint:?}): duplicate node name {a:?}"
            );
        }
        sweep_stale();

        let pid = std::process::id();
        let counter = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}{pid}-{counter}");
        let dir = std::env::temp_dir().join(format!("{id}-{}", sanitize(hint, 32)));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create lab dir {}: {e}", dir.display()));

        let mut lab = Lab {
            hint: hint.to_string(),
            switch_ns: ns_name(&id, "sw"),
            id,
            nodes: Vec::new(),
            created: Vec::new(),
            dir,
            kept: Mutex::new(Vec::new()),
            procs: Mutex::new(Vec::new()),
            spawn_counter: AtomicU32::new(0),
        };
        // From here on a panic drops `lab`, which deletes what was created.
        lab.build_switch();
        for (index, name) in nodes.iter().enumerate() {
            lab.build_node(index, name);
        }
        lab
    }

    fn build_switch(&mut self) {
        let sw = self.switch_ns.clone();
        self.add_ns(&sw);
        let run = |args: &[&str]| must(&sw, args);
        run(&["ip", "link", "set", "lo", "up"]);
        // forward_delay 0: no 15 s listening/learning wait (only matters if
        // STP is ever turned on). mcast_snooping 0: the bridge must flood
        // multicast (VRRP 224.0.0.18, IPv6 ND) without IGMP/MLD state.
        run(&[
            "ip",
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        run(&[
            "ip",
            "link",
            "set",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        run(&["ip", "link", "set", BRIDGE, "up"]);
        // The switch has no addresses; keep it from emitting its own IPv6
        // RS/MLD traffic into captures.
        run(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        run(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
    }

    fn build_node(&mut self, index: usize, name: &str) {
        let ns = ns_name(&self.id, name);
        self.add_ns(&ns);
        let host = HOST_BASE + u8::try_from(index).expect("node index fits u8 (MAX_NODES)");
        let ipv4 = Ipv4Addr::new(10, 77, 0, host);
        // IPv6 and MAC carry the host number in hex digits that read like the
        // decimal (.11 -> fd77::11, ..:11), so all three line up in tcpdump.
        let ipv6 = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, u16::from(bcd(host)));
        let mac = [0x02, 0x77, 0x00, 0x00, 0x00, bcd(host)];
        let port = format!("p{index}");
        let mac_s = mac_to_string(&mac);
        let (v4, v6) = (format!("{ipv4}/{PREFIX_V4}"), format!("{ipv6}/{PREFIX_V6}"));
        let sw = self.switch_ns.clone();

        must(&ns, &["ip", "link", "set", "lo", "up"]);
        // Create the pair inside the node namespace and move the peer straight
        // into the switch: no temporary names in the root namespace.
        must(
            &ns,
            &[
                "ip", "link", "add", NODE_IF, "address", &mac_s, "type", "veth", "peer", "name",
                &port, "netns", &sw,
            ],
        );
        // Native XDP on veth drops CHECKSUM_PARTIAL metadata: a rewritten
        // frame would leave with an unfinished checksum. Full checksums in
        // software on both ends avoid that.
        must(&ns, &["ethtool", "-K", NODE_IF, "tx", "off"]);
        must(&sw, &["ethtool", "-K", &port, "tx", "off"]);
        must(&sw, &["ip", "link", "set", &port, "master", BRIDGE]);
        must(&sw, &["ip", "link", "set", &port, "up"]);
        must(&ns, &["ip", "addr", "add", &v4, "dev", NODE_IF]);
        must(
            &ns,
            &["ip", "-6", "addr", "add", &v6, "dev", NODE_IF, "nodad"],
        );
        // The link-local address VRRP over IPv6 speaks from (RFC 9568 section
        // 5.1.2.1) must be usable as soon as the link is up, not after a
        // second of duplicate address detection.
        must(
            &ns,
            &[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{NODE_IF}.accept_dad=0"),
            ],
        );
        must(&ns, &["ip", "link", "set", NODE_IF, "up"]);
        // bpf_fib_lookup returns BPF_FIB_LKUP_RET_FWD_DISABLED without it.
        must(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

        let ifindex = in_netns(&ns, || {
            let c = std::ffi::CString::new(NODE_IF).expect("no NUL in ifname");
            // SAFETY: c is a valid NUL-terminated string.
            unsafe { libc::if_nametoindex(c.as_ptr()) }
        });
        assert!(ifindex != 0, "{NODE_IF} missing in {ns} after creation");

        self.nodes.push(Node {
            name: name.to_string(),
            ns,
            ifname: NODE_IF.to_string(),
            ipv4,
            ipv6,
            mac,
            ifindex,
            switch_port: port,
        });
    }

    fn add_ns(&mut self, ns: &str) {
        add_namespace(ns);
        self.created.push(ns.to_string());
    }

    pub fn hint(&self) -> &str {
        &self.hint
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| {
                let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                panic!("lab {:?}: no node {name:?} (nodes: {known:?})", self.hint)
            })
    }

    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// Every namespace of this lab (switch first).
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// Per-lab scratch directory (process logs, certificates), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `args` in `node`'s namespace, asserts success, returns stdout.
    pub fn sh(&self, node: &str, args: &[&str]) -> String {
        must(&self.node(node).ns, args)
    }

    pub fn try_sh(&self, node: &str, args: &[&str]) -> Output {
        ns_exec(&self.node(node).ns, args)
    }

    pub fn switch_sh(&self, args: &[&str]) -> String {
        must(&self.switch_ns, args)
    }

    pub fn try_switch_sh(&self, args: &[&str]) -> Output {
        ns_exec(&self.switch_ns, args)
    }

    pub fn ip_addr_show(&self, node: &str) -> String {
        self.sh(node, &["ip", "addr", "show"])
    }

    /// Adds `cidr` (e.g. "10.77.0.100/32") to the node's eth0; IPv6 without DAD.
    pub fn add_addr(&self, node: &str, cidr: &str) {
        let mut args = vec!["ip", "addr", "add", cidr, "dev", NODE_IF];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.sh(node, &args);
    }

    pub fn del_addr(&self, node: &str, cidr: &str) {
        self.sh(node, &["ip", "addr", "del", cidr, "dev", NODE_IF]);
    }

    /// A permanent neighbour entry on `node`'s eth0 (for tests whose peers
    /// exist only as addresses).
    pub fn add_neighbour(&self, node: &str, addr: &str, mac: &str) {
        self.sh(
            node,
            &[
                "ip",
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                NODE_IF,
                "nud",
                "permanent",
            ],
        );
    }

    /// The link-layer address `node`'s eth0 has for `addr` in its ARP/ND
    /// cache (`ip neigh show <addr> dev eth0`), or `None` without an entry
    /// or with one that has no address yet (INCOMPLETE, FAILED).
    pub fn neighbour(&self, node: &str, addr: IpAddr) -> Option<String> {
        let out = self.sh(
            node,
            &["ip", "neigh", "show", &addr.to_string(), "dev", NODE_IF],
        );
        parse_neighbour(&out, addr)
    }

    /// Whether `addr` is configured on `node`'s eth0 (`ip -o addr show`).
    pub fn has_addr(&self, node: &str, addr: IpAddr) -> bool {
        let out = self.sh(node, &["ip", "-o", "addr", "show", "dev", NODE_IF]);
        addrs_in(&out).contains(&addr)
    }

    /// Polls `has_addr` until it equals `present`; returns how long that
    /// took, panics with the node's addresses on timeout.
    pub fn wait_addr(
        &self,
        node: &str,
        addr: IpAddr,
        present: bool,
        timeout: Duration,
    ) -> Duration {
        let verb = if present { "gain" } else { "lose" };
        poll_until(
            timeout,
            || format!("{node} did not {verb} {addr}:\n{}", self.ip_addr_show(node)),
            || self.has_addr(node, addr) == present,
        )
    }

    /// Polls `neighbour` until `node` resolves `addr` to `mac`
    /// (`02:77:00:00:00:11` style); returns how long that took.
    pub fn wait_neighbour(
        &self,
        node: &str,
        addr: IpAddr,
        mac: &str,
        timeout: Duration,
    ) -> Duration {
        poll_until(
            timeout,
            || {
                let got = self.neighbour(node, addr);
                format!("{node}'s neighbour entry for {addr} is {got:?}, not {mac}")
            },
            || self.neighbour(node, addr).as_deref() == Some(mac),
        )
    }

    /// One ping (`-c 1 -W 1`) from `from` to `to`; panics with ping's
    /// output unless the reply came.
    pub fn ping(&self, from: &str, to: IpAddr) {
        let family = if to.is_ipv6() { "-6" } else { "-4" };
        let out = self.try_sh(
            from,
            &["ping", family, "-c", "1", "-W", "1", &to.to_string()],
        );
        assert!(
            out.status.success(),
            "ping {to} from {from} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `cmd args` inside `node`'s namespace with extra `env`. Output goes
    /// to files in the lab dir (`Proc::logs`). The process is killed when the
    /// `Proc` or the lab is dropped, and by the kernel if this thread dies
    /// first (PR_SET_PDEATHSIG), so a SIGKILLed test run leaves no orphans.
    pub fn spawn(&self, node: &str, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let ns = self.node(node).ns.clone();
        let n = self.spawn_counter.fetch_add(1, Ordering::Relaxed);
        let base = Path::new(cmd)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".into());
        let label = format!("{node}-{}-{n}", sanitize(&base, 24));
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &ns, cmd]).args(args);
        for (k, v) in env {
            command.env(k, v);
        }
        let proc = Proc::spawn_logged(command, &self.dir, &label);
        self.procs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&proc.inner));
        proc
    }

    /// Keeps `obj` alive until the lab is dropped; it is dropped before the
    /// namespaces are deleted (e.g. aya `Ebpf` objects owning XDP links).
    pub fn keep(&self, obj: Box<dyn Any + Send>) {
        self.kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(obj);
    }

    /// Polls until a TCP connect from inside `node` to `addr` succeeds.
    pub fn wait_tcp(&self, node: &str, addr: SocketAddr, timeout: Duration) {
        let ns = self.node(node).ns.clone();
        let result = in_netns(&ns, || {
            let deadline = Instant::now() + timeout;
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        if let Err(e) = result {
            panic!("wait_tcp: no TCP connect from {node} ({ns}) to {addr} within {timeout:?}: {e}");
        }
    }

    /// Logs of every process spawned in this lab that is still tracked.
    pub fn all_logs(&self) -> String {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).logs())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: show what the lab's processes said.
            let logs = self.all_logs();
            if !logs.is_empty() {
                eprintln!("lab {:?} ({}) process logs:\n{logs}", self.hint, self.id);
            }
        }
        // Drop kept objects (XDP links) while their interfaces still exist.
        let kept = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()));
        drop(kept);
        let procs = std::mem::take(&mut *self.procs.lock().unwrap_or_else(|e| e.into_inner()));
        for p in procs.iter().filter_map(Weak::upgrade) {
            p.lock().unwrap_or_else(|e| e.into_inner()).terminate();
        }
        // Nodes first, then the switch (created first): deleting a node
        // namespace destroys its veth pair, including the bridge port.
        for ns in self.created.iter().rev() {
            match Command::new("ip").args(["netns", "del", ns]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "lab {:?}: ip netns del {ns}: {}: {}",
                    self.hint,
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("lab {:?}: ip netns del {ns}: {e}", self.hint),
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("lab {:?}: remove {}: {e}", self.hint, self.dir.display());
        }
    }
}

/// A process started by `Lab::spawn` (or `Proc::spawn_logged`).
pub struct Proc {
    inner: Arc<Mutex<ProcInner>>,
    pid: u32,
}

struct ProcInner {
    child: Child,
    label: String,
    stdout: PathBuf,
    stderr: PathBuf,
    status: Option<ExitStatus>,
}

impl ProcInner {
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            match self.child.try_wait() {
                Ok(s) => self.status = s,
                Err(e) => eprintln!("proc {}: wait: {e}", self.label),
            }
        }
        self.status
    }

    /// SIGTERM, up to 2 s grace, then SIGKILL. Only signals our own unreaped
    /// child, so the pid cannot have been reused.
    fn terminate(&mut self) {
        if self.poll().is_some() {
            return;
        }
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.poll().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = self.child.kill() {
            eprintln!("proc {}: SIGKILL: {e}", self.label);
        }
        match self.child.wait() {
            Ok(s) => self.status = Some(s),
            Err(e) => eprintln!("proc {}: wait after SIGKILL: {e}", self.label),
        }
    }

    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"));
        format!(
            "--- {} stdout ---\n{}--- {} stderr ---\n{}",
            self.label,
            read(&self.stdout),
            self.label,
            read(&self.stderr)
        )
    }
}

fn send_signal(pid: u32, sig: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a pid of our own unreaped child.
    if unsafe { libc::kill(pid, sig) } != 0 {
        eprintln!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
}

impl Proc {
    /// Spawns `command` with stdout/stderr in `<dir>/<label>.out|.err`.
    pub fn spawn_logged(mut command: Command, dir: &Path, label: &str) -> Proc {
        let stdout = dir.join(format!("{label}.out"));
        let stderr = dir.join(format!("{label}.err"));
        let out =
            File::create(&stdout).unwrap_or_else(|e| panic!("create {}: {e}", stdout.display()));
        let err =
            File::create(&stderr).unwrap_or_else(|e| panic!("create {}: {e}", stderr.display()));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label} ({command:?}): {e}"));
        let pid = child.id();
        Proc {
            inner: Arc::new(Mutex::new(ProcInner {
                child,
                label: label.to_string(),
                stdout,
                stderr,
                status: None,
            })),
            pid,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `sig` (e.g. `libc::SIGSTOP`) unless the process has been reaped.
    pub fn signal(&self, sig: i32) {
        let mut inner = self.lock();
        if inner.poll().is_none() {
            send_signal(self.pid, sig);
        }
    }

    pub fn is_running(&self) -> bool {
        self.lock().poll().is_none()
    }

    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.lock().poll() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits for the exit; panics with `who` and the logs if
    /// the process is still running after `timeout` (a clean stop is what
    /// the caller tests).
    pub fn term_within(&self, timeout: Duration, who: &str) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "{who} still running {timeout:?} after SIGTERM\n{}",
                self.logs()
            )
        })
    }

    /// Terminates now (SIGTERM, 2 s, SIGKILL) and returns the exit status.
    pub fn kill(&self) -> Option<ExitStatus> {
        let mut inner = self.lock();
        inner.terminate();
        inner.status
    }

    pub fn stdout(&self) -> String {
        let path = self.lock().stdout.clone();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        self.lock().logs()
    }

    /// Waits until stdout contains `needle` (e.g. "listening on"); panics with
    /// the logs on timeout or if the process exits first.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for(needle, timeout, Self::stdout)
    }

    /// Like `wait_for_stdout`, over stdout and stderr (where logs go).
    pub fn wait_for_logs(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for(needle, timeout, Self::logs)
    }

    fn wait_for(&self, needle: &str, timeout: Duration, read: fn(&Proc) -> String) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let out = read(self);
            if out.contains(needle) {
                return out;
            }
            // Bind the status first: the guard of a lock taken in an `if let`
            // scrutinee lives through the block (edition 2024), and the
            // block locks again.
            let exited = self.lock().poll();
            if let Some(s) = exited {
                // Re-read: the line may have landed just before exit.
                let out = read(self);
                if out.contains(needle) {
                    return out;
                }
                panic!(
                    "process exited ({}) before printing {needle:?}\n{}",
                    describe(s),
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                panic!("no {needle:?} within {timeout:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.lock().terminate();
    }
}

fn describe(s: ExitStatus) -> String {
    match s.signal() {
        Some(sig) => format!("killed by signal {sig}"),
        None => s.to_string(),
    }
}

/// Runs `f` on a fresh thread that has joined network namespace `ns`
/// (`/run/netns/<ns>`). Sockets created there stay in `ns` for their whole
/// life, whichever thread uses them later; threads spawned from `f` inherit
/// the namespace. Panics in `f` propagate with their message.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            let file =
                File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e} (namespace gone?)"));
            // setns(CLONE_NEWNET) only affects the calling thread, which is
            // ours alone and ends with the scope.
            // SAFETY: valid fd for the duration of the call.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns({path}): {}", std::io::Error::last_os_error());
            }
            drop(file);
            f()
        });
        match handle.join() {
            Ok(v) => v,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Calls `cond` every 10 ms until it holds; returns how long that took.
/// On timeout panics with `what()`, which says what was awaited and what
/// was seen instead (it runs once, after the last `cond`). For cheap checks
/// (a log file, one `ip` command); a tcpdump read wants a slower pace.
pub fn poll_until(
    timeout: Duration,
    what: impl FnOnce() -> String,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?}: {}", what());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends one raw Ethernet frame out of `ifindex` in namespace `ns` (an
/// AF_PACKET socket): for frames the kernel's stack would never send, such
/// as one addressed to a MAC no node has, which the lab's bridge floods.
pub fn send_frame(ns: &str, ifindex: u32, frame: &[u8]) -> std::io::Result<()> {
    send_frames(ns, ifindex, std::iter::once(frame.to_vec()), usize::MAX).map(drop)
}

/// [`send_frame`] for many frames on one socket, pausing 1 ms after every
/// `burst`: the veths and the bridge between here and an XDP program queue
/// at most `netdev_max_backlog` (1000) frames per CPU and drop the rest
/// silently, so a flood whose every frame must be counted is paced.
/// Returns how many were sent.
pub fn send_frames(
    ns: &str,
    ifindex: u32,
    frames: impl Iterator<Item = Vec<u8>> + Send,
    burst: usize,
) -> std::io::Result<usize> {
    in_netns(ns, || {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                0, // send only: no protocol to receive
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut sent = 0;
        for frame in frames {
            // SAFETY: zero is a valid sockaddr_ll; the fields are set below.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = ifindex as i32;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            // SAFETY: frame and address are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            sent += 1;
            if sent % burst == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(sent)
    })
}

/// `ip netns exec <ns> args...`, output captured.
pub fn ns_exec(ns: &str, args: &[&str]) -> Output {
    assert!(!args.is_empty(), "ns_exec({ns}): empty command");
    run_cmd(Command::new("ip").args(["netns", "exec", ns]).args(args))
}

/// stdout and stderr of `out` together; panics naming `what` (the command
/// as the operator would type it) with that text unless it succeeded.
pub fn succeeded(what: &str, out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {}\n{text}", out.status);
    text
}

fn must(ns: &str, args: &[&str]) -> String {
    let out = ns_exec(ns, args);
    if !out.status.success() {
        panic!(
            "`ip netns exec {ns} {}` failed ({}):\nstderr: {}\nstdout: {}",
            args.join(" "),
            describe(out.status),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_cmd(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

/// Creates the network namespace `ns` (`ip netns add`), panicking with ip's
/// reason if it cannot. Every topology in this crate creates its namespaces
/// through this one function: `cargo xtask soak` finds the suites that build
/// namespaces by looking for it in each test binary's symbol table.
pub fn add_namespace(ns: &str) {
    let out = run_cmd(Command::new("ip").args(["netns", "add", ns]));
    if !out.status.success() {
        panic!(
            "ip netns add {ns}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Deletes `vt-<pid>-*` namespaces and lab dirs whose process is gone (a
/// SIGKILLed run cannot run its Drop). Live pids are left alone: a parallel
/// test binary owns them.
pub fn sweep_stale() {
    let me = std::process::id();
    let stale = |name: &str| {
        name.strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            .is_some_and(|pid| pid != me && !Path::new(&format!("/proc/{pid}")).exists())
    };
    for entry in std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !stale(&name) {
            continue;
        }
        // Another test binary may be sweeping the same name concurrently.
        if let Ok(o) = Command::new("ip").args(["netns", "del", &name]).output()
            && o.status.success()
        {
            eprintln!("swept stale namespace {name}");
        }
    }
    let tmp = std::env::temp_dir();
    for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The lladdr of `addr` in `ip neigh show` output; `None` for a missing
/// entry or one without an address (INCOMPLETE, FAILED).
fn parse_neighbour(out: &str, addr: IpAddr) -> Option<String> {
    out.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let first: IpAddr = words.next()?.parse().ok()?;
        if first != addr {
            return None;
        }
        let mut words = words.skip_while(|w| *w != "lladdr");
        words.next()?;
        words.next().map(str::to_string)
    })
}

/// Every address in `ip -o addr show` output (the word after inet/inet6,
/// without its prefix length).
fn addrs_in(out: &str) -> Vec<IpAddr> {
    out.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// `vt-<pid>-<counter>-<role>`, truncated to stay short in `ip netns list`.
fn ns_name(id: &str, role: &str) -> String {
    let room = MAX_NS_NAME.saturating_sub(id.len() + 1).max(1);
    format!("{id}-{}", sanitize(role, room))
}

fn sanitize(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    if s.is_empty() { "x".into() } else { s }
}

/// 11 -> 0x11: decimal digits as hex digits (host numbers stay below 100).
fn bcd(host: u8) -> u8 {
    ((host / 10) << 4) | (host % 10)
}

/// The id of the XDP link `pid` holds, from its fdinfo (each bpf_link fd
/// shows `link_type` and `link_id`): exact even with other tests' programs
/// attached to interfaces with the same index in other namespaces.
pub fn xdp_link_id(pid: u32) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbour_entries() {
        let vip: IpAddr = "10.77.0.100".parse().expect("addr");
        let out = "10.77.0.100 lladdr 02:77:00:00:00:11 REACHABLE \n";
        assert_eq!(
            parse_neighbour(out, vip).as_deref(),
            Some("02:77:00:00:00:11")
        );
        // Entries still resolving, or given up on, have no lladdr.
        assert_eq!(parse_neighbour("10.77.0.100 FAILED \n", vip), None);
        assert_eq!(parse_neighbour("10.77.0.100 INCOMPLETE \n", vip), None);
        assert_eq!(parse_neighbour("", vip), None);
        let v6: IpAddr = "fd77::100".parse().expect("addr");
        let out = "fd77::100 lladdr 02:77:00:00:00:12 router STALE \n";
        assert_eq!(
            parse_neighbour(out, v6).as_deref(),
            Some("02:77:00:00:00:12")
        );
    }

    #[test]
    fn poll_until_returns_once_the_condition_holds() {
        let mut calls = 0;
        let took = poll_until(
            Duration::from_secs(5),
            || unreachable!("no timeout"),
            || {
                calls += 1;
                calls == 3
            },
        );
        assert_eq!(calls, 3);
        assert!(
            took >= Duration::from_millis(20),
            "two 10 ms pauses: {took:?}"
        );
    }

    #[test]
    #[should_panic(expected = "timed out after 30ms: no sign of it")]
    fn poll_until_panics_with_what_was_awaited() {
        poll_until(
            Duration::from_millis(30),
            || "no sign of it".to_string(),
            || false,
        );
    }

    #[test]
    fn addresses_of_ip_o_addr() {
        let out = "2: eth0    inet 10.77.0.11/24 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet 10.77.0.100/32 scope global eth0\\       valid_lft forever preferred_lft forever\n\
                   2: eth0    inet6 fd77::100/128 scope global nodad \\       valid_lft forever preferred_lft forever\n";
        let got = addrs_in(out);
        let want: Vec<IpAddr> = ["10.77.0.11", "10.77.0.100", "fd77::100"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        assert_eq!(got, want);
    }
}
