//! `cargo xtask image` and `cargo xtask deb`: the container image and the
//! Debian package, both around one static vipd (musl, the eBPF program
//! embedded), built once and shared by the two.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cargo, cmd_output, run, step, timed};

/// Where the image's and the package's outputs go, under the workspace.
const IMAGE_DIR: &str = "target/image";
const DEB_DIR: &str = "target/deb";

/// vipd's version, from vip-userspace/Cargo.toml: the image tag and the
/// package version.
pub fn version(root: &Path) -> Result<String> {
    let path = root.join("vip-userspace/Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
        })
        .map(str::to_owned)
        .with_context(|| format!("{}: no `version = \"...\"` line", path.display()))
}

/// The image's name; `ctr images import` keeps it, and the manifests name it.
pub fn image_ref(root: &Path) -> Result<String> {
    Ok(format!("localhost/vipd:{}", version(root)?))
}

/// Builds vipd for [`bootstrap::MUSL_TARGET`] with the `static` profile
/// (release, see the workspace Cargo.toml) and checks that it is statically
/// linked; returns its path.
pub fn static_vipd(root: &Path, tc: &bootstrap::Toolchain) -> Result<PathBuf> {
    let target = bootstrap::MUSL_TARGET;
    timed(
        &format!("build static vipd ({target}, profile static)"),
        || {
            run(cargo(tc)
                .args([
                    "build",
                    "--profile",
                    "static",
                    "--locked",
                    "-p",
                    "vip-userspace",
                ])
                .args(["--bin", "vipd", "--target", target])
                // ring's C and assembly: musl's wrapper of the system gcc (cc-rs
                // would otherwise try `x86_64-linux-musl-gcc`, which Debian lacks).
                .env("CC_x86_64_unknown_linux_musl", "musl-gcc"))
        },
    )?;
    let bin = root.join(format!("target/{target}/static/vipd"));
    let what = cmd_output(Command::new("file").arg("-b").arg(&bin))?;
    // `file` says "static-pie linked" for Rust's default musl output and
    // "statically linked" for a non-PIE one; "dynamically linked" otherwise.
    if !(what.contains("static-pie linked") || what.contains("statically linked")) {
        bail!(
            "{} is not statically linked (file: {}); the image has no libc",
            bin.display(),
            what.trim()
        );
    }
    step(&format!("{}: {}", bin.display(), what.trim()));
    Ok(bin)
}

/// The OCI archive of the image: a podman storage of its own under
/// target/image (never the host's), `podman build --pull=never
/// --network=none` of deploy/Containerfile on a context holding only the
/// static vipd, `podman save --format oci-archive`; the storage is removed
/// afterwards. Returns the archive's path.
pub fn image(root: &Path, tc: &bootstrap::Toolchain) -> Result<PathBuf> {
    let vipd = static_vipd(root, tc)?;
    let version = version(root)?;
    let name = image_ref(root)?;
    let out = root.join(IMAGE_DIR);
    let context = out.join("context");
    let storage = out.join("storage");
    let runroot = out.join("run");
    for d in [&context, &storage, &runroot] {
        remove_dir(d)?;
    }
    fs::create_dir_all(&context).with_context(|| format!("mkdir {}", context.display()))?;
    fs::copy(&vipd, context.join("vipd")).context("copy vipd into the build context")?;
    let archive = out.join(format!("vipd-{version}.oci.tar"));
    let _ = fs::remove_file(&archive);
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.args(podman_storage(&storage, &runroot)).args(args);
        c
    };
    let built = timed(&format!("podman build {name}"), || {
        run(&mut podman(&[
            "build",
            "--pull=never",
            "--network=none",
            "--build-arg",
            &format!("VERSION={version}"),
            "-f",
            root.join("deploy/Containerfile")
                .to_str()
                .context("utf-8 path")?,
            "-t",
            &name,
            context.to_str().context("utf-8 path")?,
        ]))?;
        run(&mut podman(&[
            "save",
            "--format",
            "oci-archive",
            "-o",
            archive.to_str().context("utf-8 path")?,
            &name,
        ]))
    });
    for d in [&storage, &runroot, &context] {
        remove_dir(d)?;
    }
    built?;
    let size = fs::metadata(&archive)
        .with_context(|| format!("{} was not written", archive.display()))?
        .len();
    step(&format!(
        "image {name}: {} ({:.1} MiB); load it with `ctr -n k8s.io images import {}` or `podman load -i {}`",
        archive.display(),
        size as f64 / 1048576.0,
        archive.display(),
        archive.display()
    ));
    Ok(archive)
}

/// Global podman options for a storage of its own: `--root` and
/// `--runroot` keep images and containers out of the host's
/// /var/lib/containers, vfs needs no overlay support from the filesystem
/// under target/, cgroupfs and no events log need no systemd.
pub fn podman_storage(storage: &Path, runroot: &Path) -> Vec<String> {
    vec![
        "--root".into(),
        storage.display().to_string(),
        "--runroot".into(),
        runroot.display().to_string(),
        "--storage-driver".into(),
        "vfs".into(),
        "--cgroup-manager".into(),
        "cgroupfs".into(),
        "--events-backend".into(),
        "none".into(),
    ]
}

/// The .deb: the static vipd as /usr/bin/vipd (the very file the image
/// holds, unstripped in both), deploy/vipd.service as
/// /lib/systemd/system/vipd.service (its paths made the package's: the unit
/// in deploy/ names /usr/local/bin for a hand install, which a package must
/// not use), the example configs and the README. Built by cargo-deb from
/// `[package.metadata.deb]` in vip-userspace/Cargo.toml. Returns its path.
pub fn deb(root: &Path, tc: &bootstrap::Toolchain) -> Result<PathBuf> {
    let vipd = static_vipd(root, tc)?;
    let out = root.join(DEB_DIR);
    fs::create_dir_all(&out).with_context(|| format!("mkdir {}", out.display()))?;
    let unit =
        fs::read_to_string(root.join("deploy/vipd.service")).context("read deploy/vipd.service")?;
    // Next to the binary: cargo-deb maps an asset under `target/release/`
    // to the target's and profile's folder (target/<triple>/static), the
    // one place it takes generated files from.
    let built = vipd.parent().context("vipd's folder")?;
    fs::write(built.join("vipd.service"), package_unit(&unit)?)
        .context("write the package's vipd.service")?;
    let version = version(root)?;
    let deb = out.join(format!("vipd_{version}_amd64.deb"));
    let _ = fs::remove_file(&deb);
    timed("cargo-deb", || {
        run(Command::new(&tc.cargo_deb)
            .args([
                "-p",
                "vip-userspace",
                "--no-build",
                "--no-strip",
                "--profile",
                "static",
            ])
            .args(["--target", bootstrap::MUSL_TARGET, "--output"])
            .arg(&deb))
    })?;
    step(&format!(
        "package: {} (install with `dpkg -i`, then write /etc/vipd/vipd.yaml and `systemctl enable --now vipd`)",
        deb.display()
    ));
    Ok(deb)
}

/// deploy/vipd.service with the package's paths.
fn package_unit(unit: &str) -> Result<String> {
    for want in ["/usr/local/bin/vipd", "/usr/local/share/doc/vipd/"] {
        if !unit.contains(want) {
            bail!("deploy/vipd.service no longer mentions {want}: update package_unit in xtask");
        }
    }
    Ok(unit
        .replace("/usr/local/bin/vipd", "/usr/bin/vipd")
        .replace("/usr/local/share/doc/vipd/", "/usr/share/doc/vipd/")
        .replace(
            "# Install: vipd in /usr/local/bin, the config in /etc/vipd/vipd.yaml, this\n# file in /etc/systemd/system/, then `systemctl enable --now vipd`.",
            "# Installed by the vipd package: write /etc/vipd/vipd.yaml (examples in\n# /usr/share/doc/vipd/examples/), then `systemctl enable --now vipd`.",
        ))
}

fn remove_dir(d: &Path) -> Result<()> {
    match fs::remove_dir_all(d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", d.display()))
        }
        _ => Ok(()),
    }
}
