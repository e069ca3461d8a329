//! Builds the XDP program (vip-ebpf) with aya-build and leaves the object in
//! OUT_DIR, where `vip_userspace::dataplane` embeds it.
//!
//! The eBPF crate is compiled by the same stable toolchain as the rest, with
//! RUSTC_BOOTSTRAP=1 so aya-build may pass `-Z build-std=core` (see
//! shared/TOOLCHAIN.md). It needs bpf-linker: `cargo xtask` installs it in a cache
//! folder and puts it on PATH; a plain `cargo build` finds it there too.

use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

// Shared with the unit tests in tests/build_linker.rs (a build script has none).
#[path = "build/linker.rs"]
mod linker;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=VIPD_CACHE");
    println!("cargo:rerun-if-env-changed=PATH");
    let path = env::var_os("PATH").unwrap_or_default();
    let on_path = env::split_paths(&path).any(|d| d.join("bpf-linker").is_file());
    if !on_path {
        let cached = cached_linker_dirs();
        let dir = cached.into_iter().find(|d| d.join("bpf-linker").is_file()).ok_or_else(|| {
            anyhow!("bpf-linker not found on PATH or in the vipd cache: run `cargo xtask bootstrap` first")
        })?;
        let mut dirs = vec![dir];
        dirs.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded here; the variable is read by
        // the cargo child that aya-build spawns.
        unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    }
    // SAFETY: as above.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../vip-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?.to_owned();
    aya_build::build_ebpf(
        [Package {
            name: "vip-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )?;
    // With AYA_BUILD_SKIP=1 (userspace-only work) aya-build builds nothing; leave
    // an empty object so the crate compiles. Loading it fails with a clear error.
    let obj = PathBuf::from(env::var("OUT_DIR")?).join("vip");
    if !obj.exists() {
        println!(
            "cargo:warning=AYA_BUILD_SKIP: vipd is built without its XDP program and cannot load it"
        );
        std::fs::write(&obj, b"")?;
    }
    Ok(())
}

/// The folders `cargo xtask bootstrap` installs bpf-linker into
/// (`bpf-linker-<version>-llvm<major>/bin`) that can link for this rustc, best
/// first ([`linker::rank`]; shared/TOOLCHAIN.md has the LLVM rule).
fn cached_linker_dirs() -> Vec<PathBuf> {
    let cache = env::var_os("VIPD_CACHE")
        .map(PathBuf::from)
        .or_else(|| env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("vipd")))
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/vipd")));
    let Some(cache) = cache else { return vec![] };
    let Ok(entries) = std::fs::read_dir(&cache) else {
        return vec![];
    };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    linker::rank(&names, rustc_llvm_major())
        .into_iter()
        .map(|n| cache.join(n).join("bin"))
        .collect()
}

/// The LLVM major of the rustc cargo runs us with (`rustc -vV`).
fn rustc_llvm_major() -> Option<u32> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(rustc).arg("-vV").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?;
    line.split('.').next()?.trim().parse().ok()
}
