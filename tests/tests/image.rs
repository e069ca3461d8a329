//! The image and the package `cargo xtask test` builds before it runs the
//! tests (`cargo xtask image`, `cargo xtask deb`, one static vipd for both;
//! their paths come in VIPD_IMAGE_ARCHIVE, VIPD_IMAGE_REF and VIPD_DEB):
//! - the image, loaded into a podman storage of the lab's own and started by
//!   podman in the lab's namespaces exactly as deploy/daemonset.yaml runs it
//!   (capabilities, read-only root, mounts and arguments read from the
//!   manifest), passes the failover check the bare binary passes
//!   (vip_tests::failover, also run by tests/tests/survival.rs);
//! - the .deb installs with dpkg into a throwaway root (never the host's),
//!   its unit passes `systemd-analyze verify` there and grants exactly the
//!   manifests' capabilities.
//!
//! Needs root (namespaces, XDP, dpkg's ownership of installed files).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use vip_tests::{
    container::{Image, assert_runs_with, manifest_caps},
    failover::{dsr_vip_move_keeps_watches, two_lbs},
    netns::{Proc, succeeded},
    scenario::{Fwd, LbOptions},
};
use vip_userspace::dataplane::kernel::AttachMode;

/// Runs `cmd args`; panics with its output unless it succeeds; stdout.
fn output(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}; cargo xtask bootstrap installs it"));
    succeeded(&format!("{cmd} {args:?}"), &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `file` and `ldd` agree that `bin` has no dynamic loader and no shared
/// library: it runs in an image with nothing else in it.
fn assert_static(bin: &Path) {
    let p = bin.to_str().expect("utf-8 path");
    let what = output("file", &["-b", "-L", p]);
    assert!(
        what.contains("static-pie linked") || what.contains("statically linked"),
        "{p} is not static: file says {what}"
    );
    assert!(
        !what.contains("interpreter"),
        "{p} names a dynamic loader: {what}"
    );
    // glibc's ldd says so and exits 1 for a static executable ("not a
    // dynamic executable"), or 0 with "statically linked" for static-pie.
    let ldd = Command::new("ldd").arg(p).output().expect("run ldd");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    assert!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "ldd {p}: {said}"
    );
}

/// The image under podman with the DaemonSet's settings: vipd runs with
/// exactly the manifest's capabilities and no_new_privs, from a static
/// binary, and passes the bare binary's failover check (200 watch streams
/// through a dying master, native XDP, mode dsr).
#[test]
fn image_in_podman_with_the_daemonset_settings_passes_the_failover_check() {
    let image = Image::from_env();
    let l = two_lbs(
        "img-dsr",
        LbOptions {
            image: Some(image),
            ..LbOptions::new(AttachMode::Native, Fwd::Dsr)
        },
    );
    let podman = l.podman.as_ref().expect("the lab runs the image");
    let caps = manifest_caps();
    for node in ["lb", "lb2"] {
        let pid = podman.vipd_pid(node);
        assert_runs_with(pid, &caps);
        assert_static(&PathBuf::from(format!("/proc/{pid}/exe")));
    }
    dsr_vip_move_keeps_watches(&l, "image in podman, dsr VIP move");
}

/// The image holds one file, the binary (FROM scratch, deploy/Containerfile),
/// under the name the manifests and the README's `ctr images import` use.
#[test]
fn the_image_is_the_binary_alone_under_the_manifests_name() {
    let image = Image::from_env();
    // The archive's index names the image, which `ctr images import` and
    // `podman load` keep.
    let index = output(
        "tar",
        &[
            "-xOf",
            image.archive.to_str().expect("utf-8 path"),
            "index.json",
        ],
    );
    assert!(
        index.contains(&format!("\"{}\"", image.reference)),
        "index.json of the archive does not name {}: {index}",
        image.reference
    );
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml"),
    )
    .expect("read the DaemonSet");
    assert!(
        manifest.contains(&format!("image: {}", image.reference)),
        "deploy/daemonset.yaml does not run {}",
        image.reference
    );

    let dir = tempdir("vipd-image-files");
    let podman = vip_tests::container::Store::new(&dir);
    podman.cmd(&["load", "-i", image.archive.to_str().expect("utf-8 path")]);
    let layers = podman.cmd(&[
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}}",
        &image.reference,
    ]);
    assert_eq!(layers.trim(), "1", "one layer: the binary");
    let id = podman.cmd(&["create", "--pull=never", &image.reference]);
    let tar = dir.join("fs.tar");
    podman.cmd(&["export", "-o", tar.to_str().expect("utf-8 path"), id.trim()]);
    let files: BTreeSet<String> = output("tar", &["-tf", tar.to_str().expect("utf-8 path")])
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(str::to_owned)
        .collect();
    // podman adds the files a runtime mounts over (resolv.conf, hosts...)
    // as empty placeholders in a container's root; the image has no other.
    let ours: BTreeSet<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| !f.starts_with("etc/") && !f.starts_with("run/"))
        .collect();
    assert_eq!(
        ours,
        BTreeSet::from(["usr/local/bin/vipd"]),
        "files in the image: {files:?}"
    );
    drop(podman);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ctr -n k8s.io images import` of the archive, the README's way onto a
/// node without a registry, into a containerd of the test's own (root,
/// state and sockets in a temporary folder, the CRI plugin off): the image
/// arrives under the name the manifests run, unpacked, complete.
#[test]
fn ctr_imports_the_archive_under_the_manifests_name() {
    let image = Image::from_env();
    let dir = tempdir("vipd-ctr-import");
    let sock = dir.join("containerd.sock");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{d}/containerd-ttrpc.sock\"\n",
            d = dir.display()
        ),
    )
    .expect("write the containerd config");
    let mut c = Command::new("containerd");
    c.arg("--config").arg(&config);
    let containerd = Proc::spawn_logged(c, &dir, "containerd");
    containerd.wait_for_logs("containerd successfully booted", Duration::from_secs(20));
    let s = sock.to_str().expect("utf-8 path");
    let ctr = |args: &[&str]| {
        let mut all = vec!["--address", s, "--namespace", "k8s.io", "images"];
        all.extend(args);
        output("ctr", &all)
    };
    ctr(&["import", image.archive.to_str().expect("utf-8 path")]);
    let listed = ctr(&["ls", "--quiet"]);
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        [image.reference.as_str()],
        "ctr images import named the image otherwise"
    );
    let check = ctr(&["check"]);
    let row = check
        .lines()
        .find(|l| l.starts_with(&image.reference))
        .unwrap_or_else(|| panic!("ctr images check lists no {}:\n{check}", image.reference));
    assert!(
        row.contains("complete") && row.trim_end().ends_with("true"),
        "the imported image is not complete and unpacked: {row}"
    );
    let status = containerd.term_within(Duration::from_secs(10), "containerd");
    assert!(status.success(), "containerd: {}", containerd.logs());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// The package `cargo xtask test` built.
fn deb() -> PathBuf {
    let deb = PathBuf::from(std::env::var_os("VIPD_DEB").unwrap_or_else(|| {
        panic!(
            "VIPD_DEB is not set: the package test installs the .deb `cargo xtask test` builds \
             (run it with `cargo xtask test`, or `cargo xtask deb` and set \
             VIPD_DEB=target/deb/vipd_<version>_amd64.deb)"
        )
    }));
    assert!(deb.is_file(), "VIPD_DEB={}: no such file", deb.display());
    deb
}

/// `Key=value` lines of `section` in a unit file, values split on spaces.
fn unit_values(unit: &str, section: &str, key: &str) -> Vec<String> {
    let mut in_section = false;
    let mut out = vec![];
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_section = line == format!("[{section}]");
        } else if in_section && let Some(v) = line.strip_prefix(&format!("{key}=")) {
            out.extend(v.split_whitespace().map(str::to_owned));
        }
    }
    out
}

/// The .deb's metadata and contents (dpkg-deb -I/-c); dpkg installs it into
/// a throwaway root (`--instdir`/`--admindir`, so nothing of the host's
/// changes) and removes it again; the installed binary is static and
/// starts; the installed unit passes `systemd-analyze verify` in that root
/// and grants exactly the manifests' capabilities.
#[test]
fn the_package_installs_verifies_and_grants_the_manifest_capabilities() {
    let deb = deb();
    let d = deb.to_str().expect("utf-8 path");
    let info = output("dpkg-deb", &["-I", d]);
    for want in ["Package: vipd", "Architecture: amd64", "Section: net"] {
        assert!(info.contains(want), "dpkg-deb -I: no {want:?}:\n{info}");
    }
    // cargo-deb writes the field even when it is empty.
    let depends: Vec<&str> = info
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    assert!(
        depends.is_empty(),
        "a static vipd depends on nothing, the package says {depends:?}"
    );
    let listing = output("dpkg-deb", &["-c", d]);
    let files: BTreeSet<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|f| !f.ends_with('/'))
        .collect();
    for want in [
        "./usr/bin/vipd",
        "./lib/systemd/system/vipd.service",
        "./usr/share/doc/vipd/examples/kubeadm-minimal.yaml",
        "./usr/share/doc/vipd/README.md",
    ] {
        assert!(files.contains(want), "the package lacks {want}:\n{listing}");
    }

    let root = tempdir("vipd-deb-root");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).expect("create the dpkg database");
    }
    std::fs::write(admin.join("status"), "").expect("create the dpkg status");
    let r = root.to_str().expect("utf-8 path");
    let a = admin.to_str().expect("utf-8 path");
    let dpkg = |args: &[&str]| {
        let mut all = vec!["--instdir", r, "--admindir", a];
        all.extend(args);
        output("dpkg", &all)
    };
    dpkg(&["-i", d]);
    assert!(
        dpkg(&["-s", "vipd"]).contains("Status: install ok installed"),
        "dpkg does not list vipd as installed"
    );

    let bin = root.join("usr/bin/vipd");
    assert_static(&bin);
    let version = output(bin.to_str().expect("utf-8 path"), &["--version"]);
    assert!(version.contains("vipd"), "vipd --version: {version}");

    // `systemd-analyze verify --root` wants a whole systemd tree in the
    // root (sysinit.target, /bin/kill): the installed unit is verified on
    // the host instead, with its binary path pointing into the root (verify
    // checks that ExecStart is executable); that ExecStart is the
    // installed /usr/bin/vipd is asserted below.
    let unit_path = root.join("lib/systemd/system/vipd.service");
    let unit = std::fs::read_to_string(&unit_path).expect("read the installed unit");
    let check_dir = tempdir("vipd-deb-unit");
    let check = check_dir.join("vipd.service");
    std::fs::write(
        &check,
        unit.replace("/usr/bin/vipd", bin.to_str().expect("utf-8 path")),
    )
    .expect("write the unit to verify");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&check)
        .output()
        .expect("systemd-analyze (cargo xtask bootstrap installs systemd)");
    let _ = std::fs::remove_dir_all(&check_dir);
    let said = succeeded("systemd-analyze verify", &out);
    let about_us: Vec<&str> = said.lines().filter(|l| l.contains("vipd")).collect();
    assert!(
        about_us.is_empty(),
        "systemd-analyze verify warns about the installed unit:\n{}",
        about_us.join("\n")
    );

    assert_eq!(
        unit_values(&unit, "Service", "ExecStart")
            .first()
            .map(String::as_str),
        Some("/usr/bin/vipd"),
        "the installed unit starts the installed binary"
    );
    let want: BTreeSet<String> = manifest_caps()
        .iter()
        .map(|c| format!("CAP_{}", c.to_ascii_uppercase()))
        .collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let have: BTreeSet<String> = unit_values(&unit, "Service", key).into_iter().collect();
        assert_eq!(
            have, want,
            "{key} of the installed unit is not deploy/daemonset.yaml's set"
        );
    }

    dpkg(&["-r", "vipd"]);
    assert!(!bin.exists(), "dpkg -r left /usr/bin/vipd");
    assert!(!unit_path.exists(), "dpkg -r left the unit");
    let _ = std::fs::remove_dir_all(&root);
}
