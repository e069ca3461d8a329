//! Builds the XDP program (vip-ebpf) with aya-build, once per target dir
//! (`<target>/bpf`), and copies the object to OUT_DIR, where
//! `vip_userspace::dataplane` embeds it.
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
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let shared = shared_bpf_dir(&out_dir);
    std::fs::create_dir_all(&shared)?;
    // aya-build 0.2.0 gives its inner cargo a target dir inside OUT_DIR, and
    // every profile and fingerprint (clippy, dev, test, the static musl build)
    // has its own OUT_DIR: `cargo xtask test` compiled `core` and the XDP
    // program from scratch four times, about 23 s each. Run with OUT_DIR
    // pointing at one folder per target dir instead, the inner cargo finds its
    // own previous build there and returns in a second. It has a target dir of
    // its own (`<target>/bpf`), never the outer one, whose lock the outer cargo
    // holds (rust-lang/cargo#6412); two outer builds at once wait on its lock.
    // SAFETY: build scripts are single-threaded here; restored just below.
    unsafe { env::set_var("OUT_DIR", &shared) };
    let built = aya_build::build_ebpf(
        [Package {
            name: "vip-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    );
    // SAFETY: as above.
    unsafe { env::set_var("OUT_DIR", &out_dir) };
    built?;
    let obj = out_dir.join("vip");
    let _ = std::fs::remove_file(&obj);
    // With AYA_BUILD_SKIP=1 (userspace-only work) aya-build builds nothing; leave
    // an empty object so the crate compiles. Loading it fails with a clear error.
    let skipped =
        env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if !skipped {
        // Through a temporary name, so the object include_bytes! reads is
        // never half-written.
        let tmp = out_dir.join("vip.tmp");
        std::fs::copy(shared.join("vip"), &tmp)?;
        std::fs::rename(&tmp, &obj)?;
    }
    if !obj.exists() {
        println!(
            "cargo:warning=AYA_BUILD_SKIP: vipd is built without its XDP program and cannot load it"
        );
        std::fs::write(&obj, b"")?;
    }
    Ok(())
}

/// `<target>/bpf`: OUT_DIR is `<target>[/<triple>]/<profile>/build/<pkg>/out`,
/// so four levels up is the target dir, or the triple's folder in it when
/// cargo was given `--target`. Any other layout (a `build-dir` of cargo's
/// newer releases, say) keeps the build in OUT_DIR, as aya-build would.
fn shared_bpf_dir(out_dir: &std::path::Path) -> PathBuf {
    let mut up = out_dir.ancestors().nth(4);
    let triple = env::var_os("TARGET");
    if let Some(dir) = up
        && triple.is_some()
        && dir.file_name() == triple.as_deref()
    {
        up = dir.parent();
    }
    match up {
        Some(target) if target.join("CACHEDIR.TAG").is_file() => target.join("bpf"),
        _ => out_dir.join("bpf"),
    }
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
