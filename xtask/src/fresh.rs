//! `cargo xtask fresh-root`: proves the README's promise that the two commands
//! need nothing installed by hand, on a minimal Debian 12 made here with
//! `debootstrap --variant=minbase` (Essential and Priority: required packages
//! only, less than any cloud image). It bind-mounts this host's rustup toolchain
//! and bpf-linker cache (which cannot come from Debian), installs the C
//! toolchain rustup itself needs to link anything, runs `cargo xtask bootstrap`
//! in the root, prints what the bootstrap installed, and checks that every
//! command the code runs ([`crate::commands`]) is then on the root's PATH.
//!
//! Slow (a few minutes: it downloads about 200 MB of Debian packages) and not
//! part of `cargo xtask test`; the root is kept for a second run (`--rm` removes
//! it).

use std::{
    collections::BTreeSet,
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cmd_output, commands, run, step};

/// What rustup needs on any Debian to build a crate (a linker driver, crt files,
/// libc headers): the README's precondition next to rustup, not ours to install.
const RUSTUP_NEEDS: &[&str] = &["gcc", "libc6-dev", "ca-certificates"];

/// What `fresh-root` installs on the host for itself (the check in
/// [`commands`] accepts it).
pub const INSTALLS: &[&str] = &["debootstrap"];

/// The mirror the host's apt uses (the root must reach the same registry).
fn mirror() -> String {
    let text = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .find(|u| u.ends_with("/debian"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_owned()
}

/// Mounts that the root needs, undone in reverse order on drop.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn bind(&mut self, src: &Path, root: &Path) -> Result<()> {
        let dst = root.join(src.strip_prefix("/").unwrap_or(src));
        fs::create_dir_all(&dst)?;
        run(Command::new("mount").arg("--bind").arg(src).arg(&dst))?;
        self.0.push(dst);
        Ok(())
    }

    fn fs(&mut self, kind: &str, dst: &Path) -> Result<()> {
        fs::create_dir_all(dst)?;
        run(Command::new("mount").args(["-t", kind, kind]).arg(dst))?;
        self.0.push(dst.to_owned());
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for m in self.0.drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

/// The mount points at or below `root`, in mount order.
fn mounts_below(root: &Path) -> Vec<PathBuf> {
    let Ok(root) = fs::canonicalize(root) else {
        return vec![];
    };
    fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(&root))
        .collect()
}

/// The packages dpkg knows as installed in `root`.
fn installed(root: &Path) -> Result<BTreeSet<String>> {
    let out = cmd_output(
        Command::new("dpkg-query")
            .arg("--admindir")
            .arg(root.join("var/lib/dpkg"))
            .args(["-W", "-f", "${Package} ${db:Status-Status}\n"]),
    )?;
    Ok(out
        .lines()
        .filter(|l| l.ends_with(" installed"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

pub fn fresh_root(workspace: &Path, dir: Option<PathBuf>, rm: bool) -> Result<()> {
    if !bootstrap::is_root() {
        bail!("debootstrap and chroot need root: run `cargo xtask fresh-root` as root");
    }
    let root = dir.unwrap_or_else(|| workspace.join("target/fresh-root"));
    if rm && root.exists() {
        // A run that was killed leaves its bind mounts (the host's ~/.rustup,
        // the workspace, /dev): removing the tree through them would delete
        // the host's files. Unmount first, and refuse if any remains.
        for m in mounts_below(&root).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        let left = mounts_below(&root);
        if !left.is_empty() {
            bail!(
                "{} still has mounts ({}): unmount them before --rm",
                root.display(),
                left.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        step(&format!("removing {}", root.display()));
        fs::remove_dir_all(&root)?;
    }
    if bootstrap::which("debootstrap").is_none() {
        step("installing debootstrap (host)");
        run(Command::new("apt-get").args(["install", "-y", "-q", "debootstrap"]))?;
    }
    if !root.join("usr/bin/dpkg").exists() {
        let m = mirror();
        step(&format!(
            "debootstrap --variant=minbase bookworm {} {m}",
            root.display()
        ));
        run(Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&root)
            .arg(&m))?;
    }
    // The root's apt must see the same suites as the host (security updates).
    fs::create_dir_all(root.join("etc/apt/sources.list.d"))?;
    fs::copy(
        "/etc/apt/sources.list.d/debian.sources",
        root.join("etc/apt/sources.list.d/debian.sources"),
    )
    .context("copying the host's debian.sources into the root")?;
    let _ = fs::remove_file(root.join("etc/apt/sources.list"));
    let base = installed(&root)?;
    step(&format!("minimal root: {} packages", base.len()));

    if !mounts_below(&root).is_empty() {
        bail!(
            "{} has mounts left by an earlier run that was killed: run with --rm, which unmounts them first",
            root.display()
        );
    }
    let home = PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let cache = bootstrap::cache_dir()?;
    let mut mounts = Mounts(vec![]);
    mounts.fs("proc", &root.join("proc"))?;
    mounts.fs("sysfs", &root.join("sys"))?;
    mounts.bind(Path::new("/dev"), &root)?;
    for d in [home.join(".rustup"), home.join(".cargo"), cache.clone()] {
        mounts.bind(&d, &root)?;
    }
    mounts.bind(workspace, &root)?;
    fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).ok();

    let chroot = |script: &str| {
        let mut c = Command::new("chroot");
        c.arg(&root)
            .args(["/usr/bin/env", "-i"])
            .arg(format!("HOME={}", home.display()))
            .arg(format!(
                // A root login's PATH: ip, sysctl, tc live in sbin.
                "PATH={}/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                home.display()
            ))
            .arg(format!("VIPD_CACHE={}", cache.display()))
            .arg("CARGO_TARGET_DIR=/var/tmp/vipd-target")
            .arg("DEBIAN_FRONTEND=noninteractive")
            .args(["/bin/sh", "-c", script]);
        c
    };
    step(&format!(
        "rustup's own need in the root: {}",
        RUSTUP_NEEDS.join(" ")
    ));
    run(&mut chroot(&format!(
        "apt-get update -q && apt-get install -y -q --no-install-recommends {}",
        RUSTUP_NEEDS.join(" ")
    )))?;
    let before = installed(&root)?;
    step("cargo xtask bootstrap, inside the root");
    run(&mut chroot(&format!(
        "cd {} && cargo xtask bootstrap",
        workspace.display()
    )))?;
    let after = installed(&root)?;
    let added: Vec<&String> = after.difference(&before).collect();
    step(&format!(
        "the bootstrap installed {} packages: {}",
        added.len(),
        added
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));

    // Every command the code runs that this host has must now be in the root.
    let used = commands::used(workspace)?;
    let mut missing = vec![];
    let mut checked = 0;
    for cmd in used.keys() {
        if bootstrap::which(cmd).is_none() || INSTALLS.contains(&cmd.as_str()) {
            continue;
        }
        checked += 1;
        let found = chroot(&format!("command -v {cmd} >/dev/null"))
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(cmd.clone());
        }
    }
    drop(mounts);
    if !missing.is_empty() {
        bail!(
            "after the bootstrap the minimal root still lacks: {} (add their packages to DEBIAN in xtask/src/bootstrap.rs)",
            missing.join(", ")
        );
    }
    step(&format!(
        "every command the code runs ({checked}) is present in the minimal root after the bootstrap"
    ));
    Ok(())
}
