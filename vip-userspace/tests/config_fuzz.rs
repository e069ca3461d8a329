//! Property tests of the config loader (issue 7, bad input): whatever an
//! operator or a broken ConfigMap puts in the file, `Config::parse` answers
//! `Ok` or `Err` with a message, never a panic; and a config it accepts
//! survives everything `vipd check-config` and `vipd run` derive from it
//! (probe jobs, timing report, VRRP plan, NAT globals, desired map state).
//!
//! Inputs: arbitrary text, and the shipped example configs mutated line by
//! line (values swapped for hostile ones, lines dropped, duplicated,
//! re-indented, cut mid-way). Case counts are small so `cargo test` stays
//! fast; `PROPTEST_CASES=20000` runs more.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use vip_userspace::{agent, config::Config};

/// The example configs of the repository (examples/*.yaml): the YAML an
/// operator starts from.
fn seeds() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = vec![];
    let examples = root.join("examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap_or_else(|e| panic!("{}: {e}", examples.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        out.push((p, text));
    }
    assert!(
        out.len() >= 3,
        "expected the example configs in {}",
        examples.display()
    );
    out
}

/// Everything vipd computes from an accepted config before it touches the
/// kernel. Errors are fine; a panic fails the property.
fn derive_everything(cfg: &Config) {
    let _ = agent::probe_jobs(cfg);
    let _ = agent::timing_report(cfg);
    let _ = cfg.vips();
    let _ = cfg.split();
    for xdp in [false, true] {
        for local in [false, true] {
            let _ = agent::effective_priority(cfg, xdp, local);
        }
    }
    let _ = cfg.nat.port_range();
    let _ = cfg.nat.globals(None);
    if let Some(v) = &cfg.vrrp {
        let _ = v.plan();
    }
    for s in &cfg.services {
        let _ = s.probe.worst_detection();
        let _ = s.probe.tls_name();
        let _ = s.snat();
    }
    let _ = cfg.local_backends();
    let node: [IpAddr; 2] = [
        "10.0.0.13".parse().expect("addr"),
        "fd00::13".parse().expect("addr"),
    ];
    let _ = cfg.desired(&node);
    let _ = cfg.desired(&[]);
}

fn parse(text: &str) {
    if let Ok(cfg) = Config::parse(Path::new("fuzz.yaml"), text) {
        derive_everything(&cfg);
    }
}

/// Values that have broken parsers before: out-of-range numbers, the
/// wrong type, YAML's own surprises (anchors, tags, null, the Norway
/// problem), durations and addresses at and past their edges.
const HOSTILE: &[&str] = &[
    "",
    "~",
    "null",
    "[]",
    "{}",
    "-1",
    "0",
    "1",
    "255",
    "256",
    "65535",
    "65536",
    "4294967296",
    "18446744073709551616",
    "-9223372036854775809",
    "1e309",
    ".nan",
    "-.inf",
    "0x10",
    "0o17",
    "NO",
    "yes",
    "true",
    "0s",
    "0ms",
    "10ms",
    "-1s",
    "1.5s",
    "86401s",
    "1e400ms",
    "99999999999999999999h",
    "NaNs",
    "10.0.0.256",
    "0.0.0.0",
    "255.255.255.255",
    "::",
    "fe80::1%eth0",
    "\"10.0.0.100/32\"",
    "ff:ff:ff:ff:ff",
    "\"zz:00:00:00:00:00\"",
    "!!binary aGVsbG8=",
    "&anchor 5",
    "*nowhere",
    "'unterminated",
    "\"\\u0000\"",
    "|\n  block",
    "[1, [2, [3, [4]]]]",
    "{a: {b: {c: {d: 1}}}}",
];

#[derive(Debug, Clone)]
enum LineEdit {
    /// Replace what follows the first `:` (or the `- ` item) with a value.
    Value(usize, &'static str),
    Drop(usize),
    Duplicate(usize),
    /// Add or remove leading spaces.
    Indent(usize, i8),
    /// Insert a line of arbitrary text.
    Insert(usize, String),
    /// Cut the whole text at a byte (rounded down to a char boundary).
    Cut(usize),
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    prop_oneof![
        4 => (any::<usize>(), proptest::sample::select(HOSTILE)).prop_map(|(i, v)| LineEdit::Value(i, v)),
        1 => any::<usize>().prop_map(LineEdit::Drop),
        1 => any::<usize>().prop_map(LineEdit::Duplicate),
        1 => (any::<usize>(), -4i8..=4).prop_map(|(i, d)| LineEdit::Indent(i, d)),
        1 => (any::<usize>(), "[ -~\t]{0,40}").prop_map(|(i, s)| LineEdit::Insert(i, s)),
        1 => any::<usize>().prop_map(LineEdit::Cut),
    ]
}

fn apply(text: &str, edits: &[LineEdit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in edits {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let n = lines.len();
        match e {
            LineEdit::Value(i, v) => {
                let l = &mut lines[i % n];
                if let Some(at) = l.find(": ").or_else(|| l.find("- ")) {
                    l.truncate(at + 2);
                    l.push_str(v);
                } else if l.ends_with(':') {
                    l.push(' ');
                    l.push_str(v);
                }
            }
            LineEdit::Drop(i) => {
                lines.remove(i % n);
            }
            LineEdit::Duplicate(i) => {
                let l = lines[i % n].clone();
                lines.insert(i % n, l);
            }
            LineEdit::Indent(i, d) => {
                let l = &mut lines[i % n];
                if *d > 0 {
                    l.insert_str(0, &" ".repeat(*d as usize));
                } else {
                    let strip = l.len() - l.trim_start_matches(' ').len();
                    l.drain(..strip.min(d.unsigned_abs() as usize));
                }
            }
            LineEdit::Insert(i, s) => lines.insert(i % (n + 1), s.clone()),
            LineEdit::Cut(at) => {
                let joined = lines.join("\n");
                let mut at = at % (joined.len() + 1);
                while !joined.is_char_boundary(at) {
                    at -= 1;
                }
                lines = joined[..at].lines().map(str::to_string).collect();
            }
        }
    }
    lines.join("\n")
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The seeds themselves load (otherwise the mutations start from errors
/// and test only the first check).
#[test]
fn seeds_load() {
    for (path, text) in seeds() {
        let cfg = Config::parse(&path, &text)
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        derive_everything(&cfg);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_text_is_an_answer(text in "\\PC{0,400}") {
        parse(&text);
    }

    #[test]
    fn any_bytes_as_lossy_text(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_examples_are_an_answer(
        seed in any::<proptest::sample::Index>(),
        edits in proptest::collection::vec(line_edit(), 1..6),
    ) {
        let seeds = seeds();
        let (_, text) = &seeds[seed.index(seeds.len())];
        let mutated = apply(text, &edits);
        parse(&mutated);
    }
}
