//! `cargo xtask`: the one entry point for building, checking, testing and running
//! vipd. Every command bootstraps first (idempotent, seconds when everything is
//! in place) so a fresh machine needs nothing installed by hand.

mod bootstrap;
mod commands;
mod fresh;
mod lanes;
mod package;
mod soak;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, check, test and run vipd")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src, bpf-linker, Debian packages, bpffs.
    Bootstrap,
    /// Build the agent (with its embedded XDP program) and the test tools.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// rustfmt and clippy (-D warnings) for the userspace crates and the eBPF crate.
    Check,
    /// The container image: a static vipd (musl) alone in an image built from
    /// deploy/Containerfile with podman, saved as an OCI archive under
    /// target/image for `ctr -n k8s.io images import` or `podman load`.
    Image,
    /// The Debian package (cargo-deb): the static vipd, the systemd unit and
    /// example configs, under target/deb.
    Deb,
    /// Every test: checks, unit tests, BPF_PROG_TEST_RUN program tests, namespace
    /// topology tests. Needs root (the last two load XDP programs).
    Test {
        /// Passed to `cargo test` after `--` (a test name filter, `--nocapture`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// The main job: with no arguments, the namespace lab (vipd attached to a veth,
    /// apiserver stand-ins behind it, a client); Ctrl-C stops and cleans up.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Benchmarks: `dataplane` (ns per packet through BPF_PROG_TEST_RUN, with
    /// baselines measured in the same run), `failover` (the outage a client
    /// sees when an LB's daemon is killed, its link goes down, or VRRP is
    /// partitioned, vipd against the kubeadm recipe's keepalived + HAProxy;
    /// `--runs N`, `--scenario kill,link,partition`; `--topology bgp`: the
    /// L3 fabric with and without BFD, `--scenario kill,link,restart`), `reaction` (how long a
    /// failing apiserver keeps new flows; `--runs N`), `e2e` (connection
    /// rate, latency, bulk throughput and LB CPU per request for vipd nat and
    /// dsr, HAProxy and no LB, side by side; `--rounds N --duration S
    /// --concurrency C`; report under target/bench), `sync-lag` (mode nat
    /// state sync: p50/p99 from a flow's first packet on the master to its
    /// entry on the peer; `--runs N`), `flood` (200 watch streams through a
    /// connection flood in dsr and nat, every frame accounted for;
    /// `--flood-syns N --flood-segments N`). Needs root.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Lists the external commands the code runs (read from the source) and
    /// checks that each comes from a package the bootstrap installs or from
    /// Debian's essential set; `cargo xtask test` runs it first.
    Commands,
    /// The namespace suites (the test binaries that build network namespaces,
    /// found in their symbols) `--runs` times in a row while `--load` busy
    /// threads started by the harness keep that many cores loaded; prints a
    /// per-test table of passes and failures (with each failure's first line)
    /// and writes it to target/soak/report.md. `--suite NAME` (repeatable)
    /// limits it to some suites; args after `--` go to each test binary
    /// (a test name filter). Needs root.
    Soak {
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Busy threads (one per core to load).
        #[arg(long, default_value_t = 1)]
        load: usize,
        #[arg(long = "suite")]
        suites: Vec<String>,
        /// Report, logs and binaries' snapshot here (default target/soak).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// The soak's CPU load: N spinning threads until killed (started by
    /// `soak`, not meant to be run by hand).
    #[command(hide = true)]
    Burn { threads: usize },
    /// The image and the package for `cargo xtask test`, built in a child
    /// beside its checks; writes their environment to OUT as JSON (started
    /// by `test`, not meant to be run by hand).
    #[command(hide = true)]
    Packages { out: PathBuf },
    /// Runs the bootstrap in a minimal Debian 12 root made with `debootstrap
    /// --variant=minbase` (rustup and its bpf-linker cache bind-mounted from
    /// this host), prints what it installs and checks that every command the
    /// code runs is then present. A few minutes; needs root and the Debian
    /// mirror.
    FreshRoot {
        /// Where the root is made (kept for the next run).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Start from a new root.
        #[arg(long)]
        rm: bool,
    },
}

fn main() -> Result<()> {
    bootstrap::complete_path();
    let cli = Cli::parse();
    let root = workspace_root();
    env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match cli.cmd.unwrap_or(Cmd::Run { args: vec![] }) {
        Cmd::Bench { args } => {
            let tc = bootstrap::bootstrap()?;
            // `bench failover` runs the vipd next to vip-bench (target/release).
            timed("build vipd (release)", || {
                run(cargo(&tc).args([
                    "build",
                    "--release",
                    "-q",
                    "-p",
                    "vip-userspace",
                    "--bin",
                    "vipd",
                ]))
            })?;
            let mut c = cargo(&tc);
            c.args([
                "run",
                "--release",
                "-q",
                "-p",
                "vip-tests",
                "--bin",
                "vip-bench",
                "--",
            ])
            .args(&args);
            run(&mut c)
        }
        Cmd::Bootstrap => bootstrap::bootstrap().map(drop),
        Cmd::Soak {
            runs,
            load,
            suites,
            out,
            args,
        } => {
            let tc = bootstrap::bootstrap()?;
            soak::soak(
                &root,
                &tc,
                &soak::Options {
                    runs,
                    load,
                    suites,
                    args,
                    out,
                },
            )
        }
        Cmd::Burn { threads } => soak::burn(threads),
        Cmd::Packages { out } => {
            let tc = bootstrap::bootstrap()?;
            let env: Vec<(&str, String)> = package_env(&root, &tc)?
                .into_iter()
                .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
                .collect();
            std::fs::write(&out, serde_json::to_vec(&env)?)
                .with_context(|| format!("write {}", out.display()))
        }
        Cmd::Commands => commands::check(&root),
        Cmd::FreshRoot { dir, rm } => fresh::fresh_root(&root, dir, rm),
        Cmd::Image => {
            let tc = bootstrap::bootstrap()?;
            package::image(&root, &tc).map(drop)
        }
        Cmd::Deb => {
            let tc = bootstrap::bootstrap()?;
            package::deb(&root, &tc).map(drop)
        }
        Cmd::Build { release } => {
            let tc = bootstrap::bootstrap()?;
            build(&tc, release)
        }
        Cmd::Check => {
            let tc = bootstrap::bootstrap()?;
            check(&tc)
        }
        Cmd::Test { args } => {
            let started = Instant::now();
            let tc = bootstrap::bootstrap()?;
            commands::check(&root)?;
            // The static build (minutes, release) has its own lock folders
            // (target/static, target/<musl>/static), so it runs beside the
            // checks and the debug builds and fills the cores they leave idle
            // (their single-crate tails).
            let packages = Packages::start(&root)?;
            fmt_check(&tc)?;
            ebpf_clippy(&tc)?;
            test(&root, &tc, &args, packages)?;
            step(&format!(
                "all tests passed in {:.0}s",
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Cmd::Run { args } => {
            let tc = bootstrap::bootstrap()?;
            build(&tc, false)?;
            let lab = root.join("target/debug/vip-lab");
            step("starting the lab (Ctrl-C to stop and clean up)");
            let mut c = Command::new(lab);
            c.args(&args)
                .env("VIPD_BIN", root.join("target/debug/vipd"));
            exec(c)
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `cargo` for the chosen toolchain, with bpf-linker on PATH.
fn cargo(tc: &bootstrap::Toolchain) -> Command {
    let mut c = Command::new("cargo");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![tc.linker_dir.clone()];
    dirs.extend(env::split_paths(&path));
    c.env("PATH", env::join_paths(dirs).unwrap_or(path));
    c.env("RUSTUP_TOOLCHAIN", &tc.name);
    c
}

fn build(tc: &bootstrap::Toolchain, release: bool) -> Result<()> {
    let mut c = cargo(tc);
    c.args(["build", "-p", "vip-userspace", "-p", "vip-tests", "--bins"]);
    if release {
        c.arg("--release");
    }
    timed("build", || run(&mut c))
}

fn check(tc: &bootstrap::Toolchain) -> Result<()> {
    fmt_check(tc)?;
    timed("clippy (userspace, -D warnings)", || {
        run(cargo(tc).args(["clippy", "--all-targets", "--", "-D", "warnings"]))
    })?;
    ebpf_clippy(tc)
}

fn fmt_check(tc: &bootstrap::Toolchain) -> Result<()> {
    timed("cargo fmt --check", || {
        run(cargo(tc).args(["fmt", "--all", "--check"]))
    })
}

/// The eBPF crate is checked for its real target with its own `core`, as
/// aya-build builds it; RUSTC_BOOTSTRAP lets stable accept -Z build-std.
fn ebpf_clippy(tc: &bootstrap::Toolchain) -> Result<()> {
    timed("clippy (eBPF, -D warnings)", || {
        run(cargo(tc)
            .args([
                "clippy",
                "-p",
                "vip-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(["--release", "--", "-D", "warnings"])
            .env("RUSTC_BOOTSTRAP", "1"))
    })
}

/// Makes `c` (a cargo build) lint the workspace's crates with clippy
/// (`-D warnings`) as it compiles them, the way `cargo clippy` does it: cargo
/// runs clippy-driver, a rustc with clippy's lints, for workspace members
/// (RUSTC_WORKSPACE_WRAPPER) and reads the lint flags from CLIPPY_ARGS, one
/// `__CLIPPY_HACKERY__` after each. `cargo clippy` drives `cargo check`, whose
/// metadata-only builds of every dependency are of no use to the test build
/// after it: `cargo xtask test` compiled the dependency tree twice, about
/// 200 s of one core on a 2-core machine. Dependencies are compiled by plain
/// rustc either way (clippy never lints them).
///
/// The workspace crates' fingerprints include the wrapper: a later build
/// without it recompiles them (not their dependencies).
fn with_clippy<'a>(tc: &bootstrap::Toolchain, c: &'a mut Command) -> Result<&'a mut Command> {
    let driver = cmd_output(Command::new("rustup").args([
        "which",
        "--toolchain",
        &tc.name,
        "clippy-driver",
    ]))
    .context("find clippy-driver (`cargo xtask bootstrap` installs clippy)")?;
    Ok(c.env("RUSTC_WORKSPACE_WRAPPER", driver.trim()).env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    ))
}

fn test(
    root: &Path,
    tc: &bootstrap::Toolchain,
    args: &[OsString],
    packages: Packages,
) -> Result<()> {
    if !bootstrap::is_root() {
        bail!(
            "the program and namespace tests load XDP programs and create network namespaces: \
             run `cargo xtask test` as root"
        );
    }
    // The namespace tests run the real vipd binary; cargo test builds test
    // targets only, so build it first.
    // Both builds lint as they compile (with_clippy): the userspace clippy of
    // `cargo xtask check`, without compiling the dependencies a second time.
    timed("build vipd (and clippy -D warnings)", || {
        let mut c = cargo(tc);
        c.args(["build", "-p", "vip-userspace", "--bin", "vipd"]);
        run(with_clippy(tc, &mut c)?)
    })?;
    let exes = lanes::build(tc, None, true)?;
    let artifacts = packages.wait()?;
    lanes::run(root, exes, args, &artifacts)?;
    timed("doc tests", || {
        let mut c = cargo(tc);
        // With the wrapper, so the libraries the doc tests link are the ones
        // built above, not compiled again.
        with_clippy(tc, &mut c)?;
        c.args(["test", "--doc", "--no-fail-fast"]);
        if !args.is_empty() {
            c.arg("--").args(args);
        }
        run(&mut c)
    })
}

/// `cargo xtask packages` in a child whose output goes to a log, started
/// before the checks: what [`package_env`] returns, without its minutes on the
/// critical path.
struct Packages {
    /// None once waited for.
    child: Option<std::process::Child>,
    log: PathBuf,
    out: PathBuf,
    started: Instant,
}

impl Packages {
    fn start(root: &Path) -> Result<Self> {
        let dir = root.join("target");
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let log = dir.join("packages.log");
        let out = dir.join("packages.json");
        let _ = std::fs::remove_file(&out);
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let exe = env::current_exe().context("the xtask binary's path")?;
        // A process group of its own, so that an early return (a clippy
        // error) ends its cargo, podman and cargo-deb too (Drop); Ctrl-C on
        // the terminal does not reach it, and a build left running then ends
        // on its own.
        let child = Command::new(exe)
            .process_group(0)
            .arg("packages")
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start `xtask packages`")?;
        step(&format!(
            "image and package: building beside the checks (log: {})",
            log.display()
        ));
        Ok(Self {
            child: Some(child),
            log,
            out,
            started: Instant::now(),
        })
    }

    /// Waits for the child; on failure its log is printed.
    fn wait(mut self) -> Result<Vec<(String, OsString)>> {
        step("image and package: waiting for the build");
        let mut child = self.child.take().context("waited for twice")?;
        let status = child.wait().context("wait for `xtask packages`")?;
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if !status.success() {
            eprint!("{log}");
            bail!(
                "building the image and the package failed ({status}); its output is above and in {}",
                self.log.display()
            );
        }
        // Its steps' timings, for the CI log.
        for line in log
            .lines()
            .filter(|l| l.starts_with("==> ") && l.contains(": ok in "))
        {
            eprintln!("    {line}");
        }
        step(&format!(
            "image and package: ready {:.1}s after they were started",
            self.started.elapsed().as_secs_f64()
        ));
        let text =
            std::fs::read(&self.out).with_context(|| format!("read {}", self.out.display()))?;
        let pairs: Vec<(String, String)> = serde_json::from_slice(&text)
            .with_context(|| format!("parse {}", self.out.display()))?;
        Ok(pairs
            .into_iter()
            .map(|(k, v)| (k, OsString::from(v)))
            .collect())
    }
}

impl Drop for Packages {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The child leads its group (process_group(0) above): its pid is
            // the group's id.
            if let Ok(pgid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) with a negative pid signals that group only.
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
            }
            let _ = child.wait();
        }
    }
}

/// The image and the package that tests/tests/image.rs runs and installs
/// (both from one static vipd build), as the environment it reads them from.
fn package_env(root: &Path, tc: &bootstrap::Toolchain) -> Result<Vec<(&'static str, OsString)>> {
    let image = package::image(root, tc)?;
    let deb = package::deb(root, tc)?;
    Ok(vec![
        ("VIPD_IMAGE_ARCHIVE", image.into_os_string()),
        ("VIPD_IMAGE_REF", package::image_ref(root)?.into()),
        ("VIPD_DEB", deb.into_os_string()),
    ])
}

pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}

fn timed(what: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    step(what);
    let t = Instant::now();
    f()?;
    step(&format!("{what}: ok in {:.1}s", t.elapsed().as_secs_f64()));
    Ok(())
}

pub fn run(c: &mut Command) -> Result<()> {
    let status = c
        .status()
        .with_context(|| format!("failed to start {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

pub fn cmd_output(c: &mut Command) -> Result<String> {
    let out = c
        .output()
        .with_context(|| format!("failed to start {c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a foreground child that owns the terminal, and exits with its status.
/// Ctrl-C reaches the child (same process group); we ignore it ourselves so the
/// child can clean up and exit on its own.
fn exec(mut c: Command) -> Result<()> {
    // SAFETY: installing SIG_IGN for SIGINT has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = c
        .status()
        .with_context(|| format!("failed to start {c:?}"))?;
    std::process::exit(status.code().unwrap_or(1));
}
