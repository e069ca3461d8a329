//! vipd as the DaemonSet runs it: the image `cargo xtask image` built,
//! started by podman in a lab node's network namespace with the
//! DaemonSet's security context and mounts, all read from
//! deploy/daemonset.yaml (the capability list, the mount paths, the
//! arguments), so what is tested is what is deployed.
//!
//! Each lab has a podman storage of its own in its folder (`--root`,
//! `--runroot`, loaded from the OCI archive): nothing is pulled, nothing
//! touches the host's /var/lib/containers, and the lab's drop removes the
//! containers before the namespaces they sit in.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use serde_yaml_ng::Value as Yaml;

use crate::netns::{Lab, Proc};

/// The image under test: the OCI archive and the name in it, as `cargo
/// xtask test` passes them (`VIPD_IMAGE_ARCHIVE`, `VIPD_IMAGE_REF`).
#[derive(Clone, Debug)]
pub struct Image {
    pub archive: PathBuf,
    pub reference: String,
}

impl Image {
    /// The archive `cargo xtask test` built; panics with the fix when run
    /// some other way.
    pub fn from_env() -> Image {
        let get = |k: &str| {
            std::env::var_os(k).unwrap_or_else(|| {
                panic!(
                    "{k} is not set: the image tests run the archive `cargo xtask test` builds \
                     (run them with `cargo xtask test`, or `cargo xtask image` and set \
                     VIPD_IMAGE_ARCHIVE=target/image/vipd-<version>.oci.tar \
                     VIPD_IMAGE_REF=localhost/vipd:<version>)"
                )
            })
        };
        let archive = PathBuf::from(get("VIPD_IMAGE_ARCHIVE"));
        assert!(
            archive.is_file(),
            "VIPD_IMAGE_ARCHIVE={}: no such file (cargo xtask image)",
            archive.display()
        );
        Image {
            archive,
            reference: get("VIPD_IMAGE_REF").to_string_lossy().into_owned(),
        }
    }
}

/// deploy/daemonset.yaml's vipd container.
pub fn daemonset_container() -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Yaml =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    doc["spec"]["template"]["spec"]["containers"][0].clone()
}

/// `capabilities.add` of the DaemonSet's container, lower case without
/// `CAP_` (setpriv's spelling; podman takes either).
pub fn manifest_caps() -> Vec<String> {
    let add = &daemonset_container()["securityContext"]["capabilities"]["add"];
    let caps: Vec<String> = add
        .as_sequence()
        .unwrap_or_else(|| panic!("deploy/daemonset.yaml: no capabilities.add list"))
        .iter()
        .map(|c| {
            let c = c.as_str().expect("capability names are strings");
            c.trim_start_matches("CAP_").to_ascii_lowercase()
        })
        .collect();
    assert!(
        !caps.is_empty(),
        "deploy/daemonset.yaml: empty capabilities.add"
    );
    caps
}

/// Bit numbers of linux/capability.h, for the names a manifest may use.
pub fn cap_bit(name: &str) -> u32 {
    const CAPS: [&str; 41] = [
        "chown",
        "dac_override",
        "dac_read_search",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "linux_immutable",
        "net_bind_service",
        "net_broadcast",
        "net_admin",
        "net_raw",
        "ipc_lock",
        "ipc_owner",
        "sys_module",
        "sys_rawio",
        "sys_chroot",
        "sys_ptrace",
        "sys_pacct",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_resource",
        "sys_time",
        "sys_tty_config",
        "mknod",
        "lease",
        "audit_write",
        "audit_control",
        "setfcap",
        "mac_override",
        "mac_admin",
        "syslog",
        "wake_alarm",
        "block_suspend",
        "audit_read",
        "perfmon",
        "bpf",
        "checkpoint_restore",
    ];
    CAPS.iter()
        .position(|c| *c == name)
        .unwrap_or_else(|| panic!("unknown capability {name:?}")) as u32
}

/// The process's capability sets are exactly `caps` (effective, permitted,
/// bounding), with nothing inheritable or ambient and no_new_privs set: the
/// sets a container with `drop: [ALL]`, `add: caps` and
/// `allowPrivilegeEscalation: false` runs with.
pub fn assert_runs_with(pid: u32, caps: &[String]) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| -> u64 {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .trim();
        u64::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{name} {v:?}: {e}"))
    };
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    // The kernel keeps 15 bytes of the executable's name.
    let bin = crate::vipd_bin();
    let name: String = bin
        .file_name()
        .expect("vipd file name")
        .to_string_lossy()
        .chars()
        .take(15)
        .collect();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), name, "pid {pid} is not vipd itself");
    for f in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            field(f),
            want,
            "{f} of vipd is {:#x}, want {want:#x} ({caps:?})",
            field(f)
        );
    }
    assert_eq!(field("CapInh"), 0, "CapInh");
    assert_eq!(field("CapAmb"), 0, "CapAmb");
    assert_eq!(field("NoNewPrivs"), 1, "NoNewPrivs");
}

/// The seccomp profile the containers run under: the runtime's default
/// (containers-common's /usr/share/containers/seccomp.json) with bpf(2)
/// allowed for CAP_BPF, as deploy/daemonset.yaml's comment asks of a
/// runtime whose default allows it only for CAP_SYS_ADMIN. Debian 12's
/// containers-common (0.50) is one; containerd's and newer
/// containers-common defaults carry this very rule. Everything else stays
/// as the default has it (no Unconfined). Written to `dir`; its path.
pub fn seccomp_profile(dir: &Path) -> PathBuf {
    const DEFAULT: &str = "/usr/share/containers/seccomp.json";
    let text = std::fs::read_to_string(DEFAULT)
        .unwrap_or_else(|e| panic!("{DEFAULT}: {e}; podman's containers-common provides it"));
    let mut profile: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DEFAULT}: {e}"));
    let rules = profile["syscalls"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("{DEFAULT}: no syscalls list"));
    // A list of strings in the profile (syscall names, capabilities).
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|n| {
                n.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let names = |r: &serde_json::Value| strings(&r["names"]);
    let caps = |r: &serde_json::Value, k: &str| strings(&r[k]["caps"]);
    let has_bpf_rule = rules.iter().any(|r| {
        names(r).iter().any(|n| n == "bpf")
            && r["action"] == "SCMP_ACT_ALLOW"
            && caps(r, "includes").iter().any(|c| c == "CAP_BPF")
    });
    if !has_bpf_rule {
        // The rule that refuses bpf(2) without CAP_SYS_ADMIN would clash
        // with the allow rule for CAP_BPF (two actions for one syscall);
        // without it, bpf(2) with neither capability meets the profile's
        // default action, EPERM, as before.
        for r in rules.iter_mut() {
            if r["action"] == "SCMP_ACT_ERRNO"
                && caps(r, "excludes").iter().any(|c| c == "CAP_SYS_ADMIN")
                && let Some(list) = r["names"].as_array_mut()
            {
                list.retain(|n| n != "bpf");
            }
        }
        rules.push(serde_json::json!({
            "names": ["bpf"],
            "action": "SCMP_ACT_ALLOW",
            "includes": { "caps": ["CAP_BPF"] },
        }));
    }
    let path = dir.join("seccomp-bpf.json");
    std::fs::write(&path, profile.to_string())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// `--ulimit` options no higher than what this process and podman's
/// conmon already have. Kubernetes sets no rlimits (a pod inherits the
/// runtime's); podman sets its own defaults for root (NOFILE 1048576, NPROC
/// 4194304), and raising a hard limit needs CAP_SYS_RESOURCE, which root on
/// the test machines lacks: the container would fail to start with EPERM.
/// podman starts conmon with NPROC 32768 (seen with podman 4.3), the most a
/// container under it can get.
fn rlimits() -> Vec<String> {
    const CONMON_NPROC: u64 = 32768;
    let hard = |r| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit(2) writes the struct it is given.
        if unsafe { libc::getrlimit(r, &raw mut l) } != 0 {
            panic!("getrlimit: {}", std::io::Error::last_os_error());
        }
        l.rlim_max
    };
    let nofile = hard(libc::RLIMIT_NOFILE);
    let nproc = hard(libc::RLIMIT_NPROC).min(CONMON_NPROC);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// Where the DaemonSet mounts the volume `name` in the container.
fn mount_path(c: &Yaml, name: &str) -> String {
    c["volumeMounts"]
        .as_sequence()
        .and_then(|m| {
            m.iter()
                .find(|v| v["name"].as_str() == Some(name))
                .and_then(|v| v["mountPath"].as_str())
        })
        .unwrap_or_else(|| panic!("deploy/daemonset.yaml: no volumeMount {name:?}"))
        .to_owned()
}

/// The value after `flag` in the DaemonSet's args.
fn arg_after(args: &[String], flag: &str) -> String {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("deploy/daemonset.yaml: no {flag} in args {args:?}"))
        .clone()
}

/// The container path of the cluster CA the DaemonSet mounts: what a lab
/// writes as the probes' `ca:` (the lab's CA is mounted there).
pub fn ca_mount_path() -> String {
    mount_path(&daemonset_container(), "cluster-ca")
}

/// A podman storage of its own in `dir` (`--root`, `--runroot`), never the
/// host's; removes its containers and itself when dropped.
pub struct Store {
    storage: PathBuf,
    runroot: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Store {
        Store {
            storage: dir.join("podman"),
            runroot: dir.join("podman-run"),
        }
    }

    /// `podman` with this storage's global options.
    pub fn command(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(&self.storage)
            .arg("--runroot")
            .arg(&self.runroot)
            // vfs: no overlay support needed from the filesystem below;
            // cgroupfs and no events log: no systemd needed.
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none"])
            // runc, as containerd runs pods: Debian's default crun refuses
            // a host with cgroup v1 and v2 mounted side by side ("cgroups in
            // hybrid mode not supported"), as the test machines are.
            .args(["--runtime", "runc"]);
        c
    }

    /// Runs `podman args` to completion; panics with its output on failure;
    /// stdout and stderr.
    pub fn cmd(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("podman: {e}; install podman (cargo xtask bootstrap)"));
        crate::netns::succeeded(&format!("podman {args:?}"), &out)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Containers first (they may hold a lab's namespaces), then the
        // storage with its vfs copies of the image.
        let _ = self.command().args(["rm", "-a", "-f", "-t", "0"]).output();
        let _ = self.command().args(["system", "reset", "-f"]).output();
        for d in [&self.storage, &self.runroot] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A lab's podman [`Store`] with the image loaded, and the lab's vipd
/// containers by node; dropped before the lab's namespaces
/// ([`crate::scenario::LbLab`] holds it in its first field).
pub struct Podman {
    store: Store,
    image: Image,
    /// The cluster CA mounted into every container.
    ca: PathBuf,
    /// Node to its current container's name.
    names: Mutex<BTreeMap<String, String>>,
}

static CONTAINERS: AtomicU32 = AtomicU32::new(0);

impl Podman {
    /// A storage in `lab`'s folder with `image` loaded from its archive;
    /// its containers trust `ca` as the cluster CA.
    pub fn new(lab: &Lab, image: &Image, ca: &Path) -> Podman {
        let store = Store::new(lab.dir());
        let out = store.cmd(&["load", "-i", image.archive.to_str().expect("utf-8 path")]);
        assert!(
            out.contains(&image.reference),
            "podman load of {} did not yield {}: {out}",
            image.archive.display(),
            image.reference
        );
        Podman {
            store,
            image: image.clone(),
            ca: ca.to_owned(),
            names: Mutex::new(BTreeMap::new()),
        }
    }

    /// Starts vipd in the image on `node` as the DaemonSet's container runs:
    /// the host's (here the node's) network namespace, uid 0, `drop: [ALL]`
    /// and the manifest's `add:` list, no privilege escalation, a read-only
    /// root, the config folder and the cluster CA read-only at the
    /// manifest's paths, the bpffs at its path with HostToContainer
    /// propagation (rslave), /run/vipd, NODE_NAME, and the manifest's
    /// arguments with this node's config file and `--stats-interval 1` (the
    /// lab reads metrics once a second). Attached, so the Proc's output is
    /// vipd's and a SIGTERM to it reaches vipd (podman's --sig-proxy).
    /// Returns once vipd says it is ready.
    pub fn run_vipd(&self, lab: &Lab, node: &str, config: &Path, bpffs: &Path) -> Proc {
        let c = daemonset_container();
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsUser"].as_u64(), Some(0), "runAsUser");
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(sc["privileged"].as_bool(), Some(false));
        let drop: Vec<&str> = sc["capabilities"]["drop"]
            .as_sequence()
            .map(|d| d.iter().filter_map(Yaml::as_str).collect())
            .unwrap_or_default();
        assert_eq!(drop, ["ALL"], "capabilities.drop");
        let args: Vec<String> = c["args"]
            .as_sequence()
            .expect("deploy/daemonset.yaml: args")
            .iter()
            .map(|a| a.as_str().expect("args are strings").to_owned())
            .collect();
        let command = c["command"][0]
            .as_str()
            .expect("deploy/daemonset.yaml: command");
        let config_dir = mount_path(&c, "config");
        let manifest_config = format!("{config_dir}/vipd.yaml");
        assert_eq!(
            arg_after(&args, "--config"),
            manifest_config,
            "the DaemonSet reads vipd.yaml from its config mount"
        );
        let bpffs_dir = mount_path(&c, "bpffs");
        assert!(
            arg_after(&args, "--pin-dir").starts_with(&format!("{bpffs_dir}/")),
            "--pin-dir is not under the bpffs mount"
        );
        let run_dir = lab.dir().join(format!("run-vipd-{node}"));
        std::fs::create_dir_all(&run_dir).expect("create the node's /run/vipd");
        let n = CONTAINERS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{node}-{n}", lab.switch_ns().trim_end_matches("-sw"));
        let ns = &lab.node(node).ns;
        let file = config
            .file_name()
            .expect("config file name")
            .to_string_lossy();
        let vipd_args: Vec<String> = args
            .iter()
            .flat_map(|a| match a.as_str() {
                a if a == manifest_config => vec![format!("{config_dir}/{file}")],
                "run" => vec!["run".into(), "--stats-interval".into(), "1".into()],
                a => vec![a.to_owned()],
            })
            .collect();
        let volume = |host: &Path, mount: &str, opts: &str| {
            format!("--volume={}:{mount}{opts}", host.display())
        };
        let mut cmd = self.store.command();
        cmd.args(["run", "--rm", "--pull=never", "--name", &name])
            .arg(format!("--network=ns:/run/netns/{ns}"))
            .args(["--user", "0", "--read-only", "--cap-drop=ALL"])
            .arg(format!("--cap-add={}", manifest_caps().join(",")))
            .args(["--security-opt", "no-new-privileges"])
            // seccompProfile RuntimeDefault, on a runtime whose default
            // allows bpf(2) for CAP_BPF (see seccomp_profile).
            .arg(format!(
                "--security-opt=seccomp={}",
                seccomp_profile(lab.dir()).display()
            ))
            .args(rlimits())
            .arg(volume(
                config.parent().expect("config folder"),
                &config_dir,
                ":ro",
            ))
            .arg(volume(&self.ca, &mount_path(&c, "cluster-ca"), ":ro"))
            .arg(volume(bpffs, &bpffs_dir, ":rslave"))
            .arg(volume(&run_dir, &mount_path(&c, "run-vipd"), ""))
            .args(["-e", &format!("NODE_NAME={node}"), "-e", "RUST_LOG=info"])
            .arg(format!("--entrypoint={command}"))
            .arg(&self.image.reference)
            .args(&vipd_args);
        let proc = Proc::spawn_logged(cmd, lab.dir(), &format!("{node}-podman-{n}"));
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.to_owned(), name);
        proc.wait_for_stdout("vipd ready", Duration::from_secs(60));
        proc
    }

    fn name_of(&self, node: &str) -> String {
        self.names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node)
            .unwrap_or_else(|| panic!("no vipd container on {node}"))
            .clone()
    }

    /// The host pid of vipd in `node`'s container (PID 1 in the
    /// container's pid namespace).
    pub fn vipd_pid(&self, node: &str) -> u32 {
        let name = self.name_of(node);
        let out = self
            .store
            .cmd(&["inspect", "--format", "{{.State.Pid}}", &name]);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("podman inspect pid of {name}: {out:?}: {e}"))
    }

    /// `node`'s vipd dies at once: SIGKILL from the host, as a node crash
    /// or the OOM killer would end it (no priority-0 advert, no cleanup).
    pub fn kill_vipd(&self, node: &str) {
        let pid = self.vipd_pid(node);
        let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
        // SAFETY: kill(2) of the container's init, which podman just
        // reported running.
        if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
            panic!("kill -9 {pid}: {}", std::io::Error::last_os_error());
        }
    }
}
