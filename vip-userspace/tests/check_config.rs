//! `vipd check-config --offline` as a CI pipeline runs it: the real binary on
//! every shipped example and on the DaemonSet's ConfigMap, away from any node
//! (no cluster CA, no key files, no such interfaces), and on broken files.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const VIPD: &str = env!("CARGO_BIN_EXE_vipd");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A fresh folder for one test's files, unique per test and process.
fn scratch(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("check-config-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}

/// `vipd check-config [--offline] FILE` with NODE_NAME set to a node no
/// config here lists, the way a CI runner would be.
fn check(file: &Path, offline: bool) -> Output {
    let mut c = Command::new(VIPD);
    c.arg("check-config");
    if offline {
        c.arg("--offline");
    }
    c.arg(file)
        .env("NODE_NAME", "ci-runner")
        .output()
        .expect("run vipd")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The shipped configs: examples/*.yaml, and the ConfigMap's one file
/// written out as the pod sees it.
fn shipped() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "examples/: {files:?}");
    let cm: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("deploy/configmap.yaml")).expect("configmap"),
    )
    .expect("configmap.yaml parses");
    let dir = scratch("configmap");
    for (k, v) in cm["data"].as_mapping().expect("data") {
        let p = dir.join(k.as_str().expect("key"));
        std::fs::write(&p, v.as_str().expect("a file")).expect("write");
        files.push(p);
    }
    files
}

#[test]
fn every_shipped_config_passes_offline_and_lists_what_it_left_to_the_node() {
    for f in shipped() {
        let o = check(&f, true);
        let t = text(&o);
        assert!(o.status.success(), "{}: {t}", f.display());
        assert!(t.contains("ok offline"), "{}: {t}", f.display());
        assert!(
            t.contains("not checked offline"),
            "{}: no list of what was left: {t}",
            f.display()
        );
        // What only the node can tell is named, never silently passed.
        for want in ["interface", "node match", "probe.ca"] {
            assert!(
                t.contains(want),
                "{}: {want:?} missing in:\n{t}",
                f.display()
            );
        }
        // Nothing on this machine was needed: no such CA or key here.
        assert!(
            !t.contains("cannot read"),
            "{}: offline read a node file: {t}",
            f.display()
        );
    }
}

#[test]
fn without_offline_the_node_checks_run_and_fail_away_from_the_node() {
    // A file for two LB nodes: this runner is neither of them.
    let o = check(&root().join("examples/dedicated-nat.yaml"), false);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("\"ci-runner\"") && t.contains("nodes:"),
        "names the node and the fix: {t}"
    );
}

#[test]
fn offline_still_refuses_what_is_wrong_in_the_file_itself() {
    let dir = scratch("broken");
    let base = "vrrp: { vrid: 51 }\nservices:\n  - vip: 10.0.0.100\n    mode: nat\n    backends:\n      - address: 10.0.0.11\n";
    let cases: &[(&str, String, &[&str])] = &[
        ("syntax", "services: [\n".into(), &["syntax.yaml"]),
        (
            "type",
            base.replace("vip: 10.0.0.100", "vip: 10.0.0.100\n    port: https"),
            &["services[0].port", "1..65535"],
        ),
        ("unknown-field", format!("{base}nodez: {{}}\n"), &["nodez"]),
        (
            "cross-field",
            format!(
                "{}nodes:\n  cp1: {{ priority: 150 }}\n",
                base.replace("vrrp: { vrid: 51 }", "hold_vips: true")
            ),
            &["nodes.cp1.priority", "add vrrp"],
        ),
        (
            "metrics",
            format!("metrics_listen: nodes:9590\n{base}"),
            &["metrics_listen", "node:9590"],
        ),
        (
            "timing",
            base.replace(
                "mode: nat",
                "mode: nat\n    probe: { interval: 3s, timeout: 1s }",
            ),
            &["warning: services[0]"],
        ),
    ];
    for (name, body, want) in cases {
        let p = dir.join(format!("{name}.yaml"));
        std::fs::write(&p, body).expect("write");
        let o = check(&p, true);
        let t = text(&o);
        // The timing lint is a warning, not an error: the file is valid.
        let lint = *name == "timing";
        assert_eq!(o.status.success(), lint, "{name}: {t}");
        for w in *want {
            assert!(t.contains(w), "{name}: {w:?} missing in: {t}");
        }
    }
}
