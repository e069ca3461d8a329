//! `cargo xtask test`'s runner: every test binary `cargo test` would run,
//! built once (`cargo test --no-run`) and run directly, several at a time.
//!
//! Why: the namespace suites spend most of their wall time waiting (for an
//! advert interval, a BGP hold timer, a probe), one after the other under
//! `cargo test`, which made them two thirds of a CI run on 2 cores. Tests
//! within one binary already run side by side (libtest's threads) and are
//! isolated from each other (namespaces `vt-<pid>-<n>-<role>`, pin dirs and
//! files under their own lab); binaries are isolated the same way, so
//! `VIPD_TEST_LANES` of them (2 by default, 1 for `cargo test`'s order) run
//! at once. Each binary's output goes to target/test-logs/NAME.log and is
//! printed whole when it fails. The doc tests follow with `cargo test --doc`.
//!
//! Order: the longest first, from the times of the last run in this target
//! dir (target/test-logs/times.json); binaries without a time (a clean
//! clone) first of all, the namespace suites before the others.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, mpsc},
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cargo, step, timed};

/// One test binary.
pub struct Exe {
    /// `package/target` (a lib's unit tests: `package/lib`).
    name: String,
    path: PathBuf,
    /// The package's folder: cargo runs a test binary there.
    cwd: PathBuf,
    namespaces: bool,
}

/// `cargo test --no-run`, with cargo's JSON messages read for the binaries.
pub fn build(tc: &bootstrap::Toolchain) -> Result<Vec<Exe>> {
    let mut c = cargo(tc);
    c.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .stderr(Stdio::inherit());
    let mut out = String::new();
    timed("build the tests", || {
        out = crate::cmd_output(&mut c)?;
        Ok(())
    })?;
    let mut exes = vec![];
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(target), Some(manifest)) = (
            msg["executable"].as_str(),
            msg["target"]["name"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        let cwd = Path::new(manifest)
            .parent()
            .context("a manifest path without a folder")?
            .to_owned();
        let package = cwd
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let is_lib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "lib"));
        let name = if is_lib {
            format!("{package}/lib")
        } else {
            format!("{package}/{target}")
        };
        let path = PathBuf::from(exe);
        exes.push(Exe {
            namespaces: crate::soak::builds_namespaces(&path)?,
            name,
            path,
            cwd,
        });
    }
    if exes.is_empty() {
        bail!("cargo test --no-run reported no test binary");
    }
    Ok(exes)
}

/// How many binaries run at once: `VIPD_TEST_LANES`, default 2.
fn lanes() -> Result<usize> {
    match std::env::var("VIPD_TEST_LANES") {
        Err(_) => Ok(2),
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if (1..=16).contains(&n) => Ok(n),
            _ => {
                bail!("VIPD_TEST_LANES={v:?}: give a number from 1 to 16 (1: one binary at a time)")
            }
        },
    }
}

/// Runs every binary with `args` (libtest's: a filter, `--nocapture`) and
/// `env`; fails naming each binary that failed.
pub fn run(
    root: &Path,
    exes: Vec<Exe>,
    args: &[OsString],
    env: &[(String, OsString)],
) -> Result<()> {
    let lanes = lanes()?;
    let log_dir = root.join("target/test-logs");
    fs::create_dir_all(&log_dir).with_context(|| format!("create {}", log_dir.display()))?;
    let times_path = log_dir.join("times.json");
    let mut times: BTreeMap<String, f64> = fs::read(&times_path)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default();
    let queue = order(exes, &times);
    step(&format!(
        "running {} test binaries, {lanes} at a time (VIPD_TEST_LANES); logs in {}",
        queue.len(),
        log_dir.display()
    ));
    let queue = Mutex::new(queue.into_iter());
    let (tx, rx) = mpsc::channel::<(String, Result<Finished>)>();
    let started = Instant::now();
    let mut failed = vec![];
    thread::scope(|s| {
        for lane in 1..=lanes {
            let tx = tx.clone();
            let queue = &queue;
            let log_dir = &log_dir;
            s.spawn(move || {
                loop {
                    let next = queue.lock().map(|mut q| q.next()).ok().flatten();
                    let Some(exe) = next else { break };
                    let log = log_dir.join(format!("{}.log", exe.name.replace('/', "-")));
                    let r = run_one(&exe, args, env, &log, lane);
                    if tx.send((exe.name, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        for (name, r) in rx {
            match r {
                Ok(f) => {
                    times.insert(name.clone(), f.secs);
                    if f.ok {
                        step(&format!(
                            "[lane {}] {name}: {} in {:.1}s",
                            f.lane, f.summary, f.secs
                        ));
                    } else {
                        eprint!("{}", f.output);
                        step(&format!(
                            "[lane {}] {name}: FAILED ({}) in {:.1}s; its output is above and in {}",
                            f.lane,
                            f.summary,
                            f.secs,
                            f.log.display()
                        ));
                        failed.push(name);
                    }
                }
                Err(e) => {
                    step(&format!("{name}: could not run: {e:#}"));
                    failed.push(name);
                }
            }
        }
    });
    if let Ok(text) = serde_json::to_vec_pretty(&times) {
        let _ = fs::write(&times_path, text);
    }
    step(&format!(
        "test binaries: {:.0}s, {} failed",
        started.elapsed().as_secs_f64(),
        failed.len()
    ));
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The running order: longest first by `times`; a binary without a time
/// before every one with (it may be the longest), namespace suites before
/// the others, then by name.
fn order(mut exes: Vec<Exe>, times: &BTreeMap<String, f64>) -> Vec<Exe> {
    let key = |e: &Exe| times.get(&e.name).copied().unwrap_or(f64::INFINITY);
    exes.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then(b.namespaces.cmp(&a.namespaces))
            .then(a.name.cmp(&b.name))
    });
    exes
}

struct Finished {
    ok: bool,
    lane: usize,
    /// libtest's `test result:` line, or the exit status.
    summary: String,
    secs: f64,
    output: String,
    log: PathBuf,
}

/// One binary to completion, its stdout and stderr together into `log`.
fn run_one(
    exe: &Exe,
    args: &[OsString],
    env: &[(String, OsString)],
    log: &Path,
    lane: usize,
) -> Result<Finished> {
    let t = Instant::now();
    let file = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let status = Command::new(&exe.path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&exe.cwd)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .with_context(|| format!("start {}", exe.path.display()))?;
    let output = fs::read_to_string(log).unwrap_or_default();
    let summary = output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("test result: "))
        .map_or_else(|| format!("exit {status}, no test result"), str::to_owned);
    Ok(Finished {
        ok: status.success(),
        lane,
        summary,
        secs: t.elapsed().as_secs_f64(),
        output,
        log: log.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(name: &str, namespaces: bool) -> Exe {
        Exe {
            name: name.into(),
            path: PathBuf::new(),
            cwd: PathBuf::new(),
            namespaces,
        }
    }

    #[test]
    fn longest_first_and_the_unknown_before_all() {
        let names = |v: Vec<Exe>| v.into_iter().map(|e| e.name).collect::<Vec<_>>();
        // A clean target dir: namespace suites first, then by name.
        let all = || {
            vec![
                exe("tests/b", false),
                exe("tests/fabric", true),
                exe("tests/agent", true),
                exe("vip-common/lib", false),
            ]
        };
        assert_eq!(
            names(order(all(), &BTreeMap::new())),
            ["tests/agent", "tests/fabric", "tests/b", "vip-common/lib"]
        );
        // With times: the longest first, a binary without one before them.
        let times = BTreeMap::from([
            ("tests/agent".to_owned(), 12.0),
            ("tests/fabric".to_owned(), 150.0),
            ("vip-common/lib".to_owned(), 0.1),
        ]);
        assert_eq!(
            names(order(all(), &times)),
            ["tests/b", "tests/fabric", "tests/agent", "vip-common/lib"]
        );
    }
}
