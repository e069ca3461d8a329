//! Installs what building and testing vipd needs, idempotently and visibly:
//! rust-src for the toolchain that builds the eBPF crate, bpf-linker built against
//! that toolchain's own libLLVM (kept in a cache folder outside the repository),
//! the Debian packages the tests use, and a mounted bpffs.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{cmd_output, run, step};

/// bpf-linker release built here; 0.13 supports LLVM 22 (see shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The target of the static vipd in the image and the package (`cargo xtask
/// image`, `cargo xtask deb`): musl links statically, so the binary needs no
/// libc in the image.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// cargo-deb builds the .deb (`cargo xtask deb`); pinned, installed from
/// crates.io into the cache folder like bpf-linker. 3.8 needs Rust 1.85.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// Debian packages and one command that proves each is usable (a name looked up
/// on PATH, or an absolute path for daemons kept outside it). A package whose
/// command already works (from whatever source) is left alone: this machine image
/// ships Google's `kubectl`, which conflicts with Debian's `kubernetes-client`.
/// `cargo xtask test` checks that every command the code runs is one of these,
/// or essential in Debian (`commands.rs`).
pub const DEBIAN: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("bpftool", "bpftool"),
    ("tcpdump", "tcpdump"),
    ("keepalived", "keepalived"),
    ("haproxy", "haproxy"),
    ("kubernetes-client", "kubectl"),
    ("openssl", "openssl"),
    ("iputils-ping", "ping"),
    ("netcat-openbsd", "nc"),
    // sysctl: the tests and the lab set per-namespace sysctls. procps is
    // "important", not "required": debootstrap's minbase lacks it.
    ("procps", "sysctl"),
    // systemd-analyze verifies the shipped unit (vip-userspace/tests/deploy.rs).
    ("systemd", "systemd-analyze"),
    // The kubeadm recipe's check_apiserver.sh (the keepalived baseline) and the
    // lab's printed commands use curl.
    ("curl", "curl"),
    // The fabric lab (tests/src/fabric.rs): BIRD 2 on the LB nodes, FRR as the
    // upstream router, nft to make a node silent for the BFD tests. FRR's
    // daemons live in /usr/lib/frr, off PATH: the lab runs zebra itself.
    ("bird2", "bird"),
    ("frr", "/usr/lib/frr/zebra"),
    ("nftables", "nft"),
    // A real Prometheus evaluates the shipped alert rules against the lab's
    // vipds (tests/src/prom.rs, tests/tests/alerts.rs); its promtool runs
    // the rules' unit tests (tests/tests/alert_rules.rs).
    ("prometheus", "prometheus"),
    // etcd snapshots (issue 19): a real etcd 3.4 member with client-cert TLS
    // for the snapshot tests (tests/src/etcd.rs), and etcdctl to write the
    // tests' keys, cross-check vipd's reading of a snapshot (`snapshot
    // status`) and perform the README's restore runbook (`snapshot restore`).
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
    // protoc: the etcd-client crate compiles etcd's .proto files in its build
    // script (tonic-prost-build), which runs protoc and has no vendored copy.
    // Like bpf-linker for the eBPF half, the bootstrap provides it before
    // `cargo xtask` builds vip-userspace.
    ("protobuf-compiler", "protoc"),
    // etcd's protos import Google's well-known types (descriptor.proto,
    // struct.proto), which protoc finds in /usr/include beside it.
    (
        "libprotobuf-dev",
        "/usr/include/google/protobuf/descriptor.proto",
    ),
    // The static vipd (MUSL_TARGET): ring's C and assembly are compiled with
    // musl's gcc wrapper, against musl's headers rather than glibc's.
    ("musl-tools", "musl-gcc"),
    // `cargo xtask image` builds the image with podman (buildah inside) in a
    // storage of its own; tests/tests/image.rs runs it.
    ("podman", "podman"),
    // The runtime the image test starts containers with: Debian's podman
    // defaults to crun, which refuses hosts with cgroup v1 and v2 mounted
    // side by side; containerd runs pods with runc too.
    ("runc", "runc"),
    // `ctr images import` of the image archive, as the README tells nodes
    // without a registry (tests/tests/image.rs runs a containerd of its own).
    ("containerd", "ctr"),
    // The image and package checks: vipd must be statically linked.
    ("file", "file"),
];

/// The package the bootstrap installs for `cmd`, if `cmd` is the command that
/// proves one of them.
pub fn provider_of(cmd: &str) -> Option<&'static str> {
    DEBIAN.iter().find(|(_, c)| *c == cmd).map(|(p, _)| *p)
}

/// Packages whose maintainer scripts would start a daemon on the host (Debian
/// enables and starts `bird.service`, `frr.service` and `prometheus.service`
/// on install; the last would bind :9090 on every address). vipd's tests run
/// their own instances inside namespaces; a host daemon nobody configured is
/// not ours to start.
const DAEMON_PACKAGES: &[(&str, &str)] = &[
    ("bird2", "bird"),
    ("frr", "frr"),
    ("prometheus", "prometheus"),
    // Debian's etcd-server enables and starts etcd.service, a member on
    // 127.0.0.1:2379 that the tests' own members in namespaces do not need.
    ("etcd-server", "etcd"),
    // Debian's containerd enables and starts containerd.service; the image
    // test runs its own with a root, state and socket in a temporary folder.
    ("containerd", "containerd"),
];

/// Process names of the daemons those packages ship, to notice one running
/// in the host's network namespace.
const HOST_DAEMONS: &[&str] = &[
    "bird",
    "zebra",
    "bgpd",
    "bfdd",
    "watchfrr",
    "prometheus",
    "etcd",
];

/// What later steps need to know about the toolchain.
pub struct Toolchain {
    /// rustup toolchain name used for the eBPF build (the one running us).
    pub name: String,
    /// Directory holding the `bpf-linker` binary, to prepend to PATH.
    pub linker_dir: PathBuf,
    /// The pinned `cargo-deb` binary.
    pub cargo_deb: PathBuf,
}

pub fn bootstrap() -> Result<Toolchain> {
    let started = Instant::now();
    let tc = rust_toolchain()?;
    rust_src(&tc)?;
    rust_components(&tc)?;
    let linker_dir = bpf_linker(&tc)?;
    musl_target(&tc)?;
    let cargo_deb = cargo_deb(&tc)?;
    debian_packages()?;
    bpffs()?;
    step(&format!(
        "bootstrap done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(Toolchain {
        name: tc,
        linker_dir,
        cargo_deb,
    })
}

/// The Rust standard library for [`MUSL_TARGET`].
fn musl_target(tc: &str) -> Result<()> {
    let installed = cmd_output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        tc,
    ]))?;
    if installed.lines().any(|l| l.trim() == MUSL_TARGET) {
        step(&format!("target {MUSL_TARGET} for {tc}: present"));
        return Ok(());
    }
    step(&format!(
        "target {MUSL_TARGET} for {tc}: missing, installing"
    ));
    run(Command::new("rustup").args(["target", "add", MUSL_TARGET, "--toolchain", tc]))
        .with_context(|| format!("run `rustup target add {MUSL_TARGET} --toolchain {tc}` by hand"))
}

/// cargo-deb [`CARGO_DEB_VERSION`] under the cache folder (`cargo install
/// --locked`, about a minute once).
fn cargo_deb(tc: &str) -> Result<PathBuf> {
    let root = cache_dir()?.join(format!("cargo-deb-{CARGO_DEB_VERSION}"));
    let bin = root.join("bin/cargo-deb");
    let works = |b: &Path| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if bin.is_file() && works(&bin) {
        step(&format!(
            "cargo-deb {CARGO_DEB_VERSION}: present in {}",
            root.display()
        ));
        return Ok(bin);
    }
    step(&format!(
        "cargo-deb {CARGO_DEB_VERSION}: missing, installing into {}",
        root.display()
    ));
    let started = Instant::now();
    run(Command::new("cargo")
        .args([
            "install",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
            "--locked",
            "--root",
        ])
        .arg(&root)
        .env("RUSTUP_TOOLCHAIN", tc))
    .context("building cargo-deb failed (see cargo's output above)")?;
    if !works(&bin) {
        bail!(
            "cargo-deb was built but `{} --version` fails",
            bin.display()
        );
    }
    step(&format!(
        "cargo-deb built in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(bin)
}

fn rust_toolchain() -> Result<String> {
    if which("rustup").is_none() {
        bail!(
            "rustup is not on PATH. vipd builds its eBPF program with rustup's toolchains \
             (it needs rust-src and the toolchain's libLLVM). Install rustup \
             (https://rustup.rs) and run `cargo xtask` again."
        );
    }
    // rustup's cargo proxy tells child processes which toolchain it chose.
    let tc = match env::var("RUSTUP_TOOLCHAIN") {
        Ok(tc) if !tc.is_empty() => tc,
        _ => "stable".to_owned(),
    };
    step(&format!(
        "toolchain for the eBPF build: {tc} (stable + RUSTC_BOOTSTRAP for -Z build-std)"
    ));
    Ok(tc)
}

/// clippy and rustfmt are part of rustup's default profile but not of the
/// minimal one; `cargo xtask test` needs both.
fn rust_components(tc: &str) -> Result<()> {
    let installed = cmd_output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        tc,
    ]))?;
    let missing: Vec<&str> = ["clippy", "rustfmt"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        step(&format!("clippy, rustfmt for {tc}: present"));
        return Ok(());
    }
    step(&format!(
        "{} for {tc}: missing, installing",
        missing.join(", ")
    ));
    run(Command::new("rustup")
        .args(["component", "add", "--toolchain", tc])
        .args(&missing))
    .with_context(|| {
        format!(
            "run `rustup component add --toolchain {tc} {}` by hand",
            missing.join(" ")
        )
    })
}

fn rust_src(tc: &str) -> Result<()> {
    let sysroot =
        cmd_output(Command::new("rustup").args(["run", tc, "rustc", "--print", "sysroot"]))?;
    let src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        step(&format!("rust-src for {tc}: present"));
        return Ok(());
    }
    step(&format!("rust-src for {tc}: missing, installing"));
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", tc]))
        .with_context(|| format!("run `rustup component add rust-src --toolchain {tc}` by hand"))
}

/// The cache root: `$VIPD_CACHE`, else `$XDG_CACHE_HOME/vipd`, else `~/.cache/vipd`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = env::var_os("VIPD_CACHE") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("vipd"));
    }
    let home = env::var_os("HOME")
        .ok_or_else(|| anyhow!("HOME is not set; set VIPD_CACHE to a cache folder"))?;
    Ok(PathBuf::from(home).join(".cache/vipd"))
}

/// LLVM major version of a toolchain's rustc, from `rustc -vV`.
fn llvm_major(tc: &str) -> Result<u32> {
    let vv = cmd_output(Command::new("rustup").args(["run", tc, "rustc", "-vV"]))?;
    let line = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("`rustc -vV` for {tc} printed no LLVM version:\n{vv}"))?;
    let major = line.split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("LLVM version {line:?} from rustc -vV"))
}

/// Builds bpf-linker against the toolchain's own libLLVM (Debian 12 has no LLVM
/// new enough) and installs it under the cache folder, keyed by linker version and
/// LLVM major. bpf-linker's LLVM major must be >= rustc's, or linking fails with
/// `Invalid record`; building against the same toolchain guarantees equality.
fn bpf_linker(tc: &str) -> Result<PathBuf> {
    let major = llvm_major(tc)?;
    let root = cache_dir()?.join(format!("bpf-linker-{BPF_LINKER_VERSION}-llvm{major}"));
    let bin_dir = root.join("bin");
    let bin = bin_dir.join("bpf-linker");
    if bin.is_file()
        && Command::new(&bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        step(&format!(
            "bpf-linker {BPF_LINKER_VERSION} (LLVM {major}): present in {}",
            bin_dir.display()
        ));
        return Ok(bin_dir);
    }
    step(&format!(
        "bpf-linker {BPF_LINKER_VERSION} (LLVM {major}): building against {tc}'s libLLVM into {} (about a minute)",
        root.display()
    ));
    let sysroot =
        cmd_output(Command::new("rustup").args(["run", tc, "rustc", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM.so* in {}: this toolchain does not ship its LLVM. \
                 Install a rustup toolchain that does (stable or nightly from rustup).",
                sysroot_lib.display()
            )
        })?;
    // A prefix whose lib/ holds libLLVM.so (for the linker at build time) and the
    // library under its own SONAME file name (for the loader at run time: without
    // it bpf-linker only starts under `rustup run`).
    let prefix = root.join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    let soname = libllvm
        .file_name()
        .ok_or_else(|| anyhow!("libLLVM path has no file name"))?;
    for name in [OsString::from("libLLVM.so"), soname.to_owned()] {
        let link = prefix_lib.join(&name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("symlink {} -> {}", link.display(), libllvm.display()))?;
    }
    let started = Instant::now();
    run(Command::new("rustup")
        .args([
            "run",
            tc,
            "cargo",
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        ])
        .args([
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker failed (see cargo's output above)")?;
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .context("running the new bpf-linker")?;
    if !out.status.success() {
        bail!(
            "bpf-linker was built but does not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    step(&format!(
        "bpf-linker built in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(bin_dir)
}

pub fn is_root() -> bool {
    cmd_output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(_, cmd)| !usable(cmd))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
        return Ok(());
    }
    let list = missing.join(" ");
    if which("apt-get").is_none() {
        bail!(
            "missing tools from Debian packages [{list}] and there is no apt-get: install them by hand"
        );
    }
    if !is_root() {
        bail!("missing Debian packages; as root run: apt-get update && apt-get install -y {list}");
    }
    step(&format!("Debian packages: installing {list}"));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    let services: Vec<&str> = DAEMON_PACKAGES
        .iter()
        .filter(|(p, _)| missing.contains(p))
        .map(|(_, s)| *s)
        .collect();
    let guard = NoStart::install(&services)?;
    let installed = run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {list}"));
    drop(guard);
    installed?;
    report_host_daemons();
    Ok(())
}

/// Whether `cmd` (a name on PATH, or an absolute path) is an executable file.
fn usable(cmd: &str) -> bool {
    if cmd.starts_with('/') {
        Path::new(cmd).is_file()
    } else {
        which(cmd).is_some()
    }
}

/// A temporary `/usr/sbin/policy-rc.d` that forbids starting `services` while
/// apt-get runs: Debian's maintainer scripts ask it before starting anything
/// (invoke-rc.d(8), deb-systemd-invoke; exit 101 = "action forbidden"), so the
/// packages install with their units enabled but nothing running. An existing
/// policy-rc.d is the administrator's (container images ship one that denies
/// everything) and is left as it is. Removed on drop, also when apt-get fails.
struct NoStart(Option<PathBuf>);

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

impl NoStart {
    fn install(services: &[&str]) -> Result<NoStart> {
        let path = Path::new(POLICY_RC_D);
        if services.is_empty() || path.exists() {
            return Ok(NoStart(None));
        }
        let script = format!(
            "#!/bin/sh\n# Written by `cargo xtask bootstrap` for the length of one apt-get run.\n\
             case \"$1\" in {}) exit 101 ;; esac\nexit 0\n",
            services.join("|")
        );
        fs::write(path, script).with_context(|| format!("writing {POLICY_RC_D}"))?;
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("chmod 755 {POLICY_RC_D}"))?;
        step(&format!(
            "{POLICY_RC_D}: keeps {} from starting on the host while apt-get installs",
            services.join(", ")
        ));
        Ok(NoStart(Some(path.to_owned())))
    }
}

impl Drop for NoStart {
    fn drop(&mut self) {
        if let Some(p) = self.0.take()
            && let Err(e) = fs::remove_file(&p)
        {
            eprintln!("WARNING: remove {} by hand: {e}", p.display());
        }
    }
}

/// Says (and leaves alone) any BIRD, FRR or Prometheus daemon running in
/// this network namespace: the tests never use one, and stopping a service
/// is the administrator's call (`systemctl disable --now bird frr prometheus`).
fn report_host_daemons() {
    let own_ns = fs::read_link("/proc/self/ns/net").ok();
    let mut seen = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if HOST_DAEMONS.contains(&comm) && fs::read_link(entry.path().join("ns/net")).ok() == own_ns
        {
            seen.push(format!("{comm} (pid {pid})"));
        }
    }
    if !seen.is_empty() {
        step(&format!(
            "WARNING: daemons running on the host: {}. vipd's tests do not use them; \
             if nobody meant to run them: systemctl disable --now bird frr prometheus",
            seen.join(", ")
        ));
    }
}

/// Pinning maps and programs needs bpffs at /sys/fs/bpf.
fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"))
    {
        step("bpffs: mounted");
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted; as root run: mount -t bpf bpf /sys/fs/bpf");
    }
    step("bpffs: mounting at /sys/fs/bpf");
    run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// The folders a root shell has on PATH that a non-login one (`su`, `sudo`
/// without `-i`, a CI runner) may lack: `ip`, `sysctl`, `tcpdump` live there.
const SBIN: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Puts [`SBIN`] on this process's PATH when it lacks them, before anything
/// looks for a tool: the tests and the lab inherit this PATH, so a tool
/// [`which`] finds is one they can start (looking in /usr/sbin for `which`
/// alone once reported tools present that the tests then could not run).
pub fn complete_path() {
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    let missing: Vec<PathBuf> = SBIN
        .iter()
        .map(PathBuf::from)
        .filter(|d| !dirs.contains(d))
        .collect();
    if missing.is_empty() {
        return;
    }
    dirs.extend(missing);
    if let Ok(p) = env::join_paths(dirs) {
        // SAFETY: called first thing in main, before any thread is started.
        unsafe { env::set_var("PATH", p) };
    }
}

/// Finds an executable on PATH, exactly as a child process would.
pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}
