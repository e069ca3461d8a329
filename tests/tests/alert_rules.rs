//! Every alert in `deploy/prometheus-alerts.yaml` against series written
//! for it, by the real `promtool test rules` (tests/promtool/): the alerts a
//! namespace lab cannot raise in a test's time (a snapshot 26 hours old, a
//! certificate a week from expiry, ten minutes of drops) and the ones
//! `alerts.rs` does not reach with a real Prometheus.
//!
//! The list of alerts comes from the rules file: an alert without a case
//! where it fires and one where it stays quiet fails the test, and so does a
//! case naming an alert the file does not have (a quiet case with a typo in
//! its name would pass for the wrong reason).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_yaml_ng::Value;
use vip_tests::prom::rules_path;

fn tests_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("promtool")
        .join("prometheus-alerts.test.yaml")
}

/// The name the unit-test file gives the rules it loads (its `rule_files`).
const LABELS_ONLY: &str = "prometheus-alerts.labels-only.yaml";

fn read_yaml(p: &Path) -> Value {
    let text =
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", p.display()))
}

/// The alert names of the rules file, in order, and the file with every
/// rule's annotations removed.
fn alerts_and_labels_only(rules: &Value) -> (Vec<String>, Value) {
    let mut stripped = rules.clone();
    let mut names = vec![];
    let groups = stripped["groups"]
        .as_sequence_mut()
        .expect("the rules file has `groups:`");
    for g in groups {
        let rules = g["rules"]
            .as_sequence_mut()
            .expect("every group has `rules:`");
        for r in rules {
            let m = r.as_mapping_mut().expect("a rule is a mapping");
            if let Some(a) = m.get("alert").and_then(Value::as_str) {
                names.push(a.to_owned());
            }
            m.remove("annotations");
        }
    }
    (names, stripped)
}

/// Per alert name in the unit tests: (cases where it fires, cases where it
/// is expected quiet).
fn cases(tests: &Value) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in tests["tests"].as_sequence().expect("`tests:` is a list") {
        for c in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = c["alertname"].as_str().expect("every case has alertname");
            let fires = c["exp_alerts"].as_sequence().is_some_and(|s| !s.is_empty());
            let e = out.entry(name.to_owned()).or_default();
            if fires {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    out
}

fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool (Debian package prometheus): {e}; run `cargo xtask bootstrap`")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_alert_fires_on_its_series_and_not_on_a_normal_one() {
    let rules = read_yaml(&rules_path());
    let (alerts, stripped) = alerts_and_labels_only(&rules);
    assert!(
        alerts.len() >= 20,
        "only {} alerts read from {}: is the file's layout still `groups: - rules: - alert:`?",
        alerts.len(),
        rules_path().display()
    );
    let tests = read_yaml(&tests_path());
    let have = cases(&tests);

    let mut missing = vec![];
    for a in &alerts {
        match have.get(a) {
            None => missing.push(format!("{a}: no case")),
            Some((0, _)) => missing.push(format!("{a}: no case where it fires")),
            Some((_, 0)) => missing.push(format!("{a}: no case where it stays quiet")),
            Some(_) => {}
        }
    }
    for name in have.keys() {
        if !alerts.contains(name) {
            missing.push(format!(
                "{name}: a case for an alert the rules file does not have"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "{} does not cover {}:\n  {}",
        tests_path().display(),
        rules_path().display(),
        missing.join("\n  ")
    );

    // The real file, annotation templates included.
    let deploy = rules_path()
        .parent()
        .expect("deploy/")
        .canonicalize()
        .expect("deploy/ exists");
    let (ok, text) = promtool(&deploy, &["check", "rules", "prometheus-alerts.yaml"]);
    assert!(
        ok,
        "promtool check rules deploy/prometheus-alerts.yaml:\n{text}"
    );

    // The unit tests, in a folder of their own with the labels-only rules.
    let dir = std::env::temp_dir().join(format!("vipd-alert-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creating the test folder");
    std::fs::write(
        dir.join(LABELS_ONLY),
        serde_yaml_ng::to_string(&stripped).expect("writing YAML"),
    )
    .expect("writing the labels-only rules");
    std::fs::copy(tests_path(), dir.join("prometheus-alerts.test.yaml"))
        .expect("copying the unit tests");
    let (ok, text) = promtool(&dir, &["test", "rules", "prometheus-alerts.test.yaml"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        ok,
        "promtool test rules {}:\n{text}",
        tests_path().display()
    );
    assert!(text.contains("SUCCESS"), "promtool said:\n{text}");
    println!(
        "{} alerts, {} cases: {}",
        alerts.len(),
        have.values().map(|(f, q)| f + q).sum::<usize>(),
        text.trim()
    );
}
