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
//! Alone: a binary that builds the BGP fabric (it links
//! `vip_tests::fabric::Fabric::new`) runs with no other beside it. Its BFD
//! sessions detect a silent peer in 150 ms (50 ms x 3), as the fabric tests
//! assert; a busy neighbour (the image suite's podman, a flood) delayed the
//! router's bfdd past that in the first two-lane run, every session flapped
//! and the VIP's route was withdrawn under a test that expected three paths.
//!
//! Order: the binaries that run alone first (so nothing waits for a lane to
//! drain), then the longest first, from the times of the last run in this
//! target dir (target/test-logs/times.json); binaries without a time (a
//! clean clone) before those with, the namespace suites before the others.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, RwLock, mpsc},
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cargo, step, timed};

/// One test binary.
pub struct Exe {
    /// `package/target` (a lib's unit tests: `package/lib`).
    name: String,
    /// The cargo target's name (`fabric` for tests/tests/fabric.rs).
    pub target: String,
    /// An integration test (tests/*.rs), not a lib's or a bin's unit tests.
    pub integration: bool,
    pub path: PathBuf,
    /// The package's folder: cargo runs a test binary there.
    cwd: PathBuf,
    /// Links `vip_tests::netns::add_namespace`: can build a namespace.
    pub namespaces: bool,
    /// Runs with no other binary beside it.
    alone: bool,
}

/// The BGP fabric's constructor (tests/src/fabric.rs), as pieces of its
/// mangled name in both manglings: binaries that link it run alone.
const FABRIC_SYMBOL: [&str; 4] = ["9vip_tests", "6fabric", "6Fabric", "3new"];

/// `cargo test --no-run` (of `package` only, if given), with cargo's JSON
/// messages read for the binaries; `lint`: clippy (-D warnings) on the
/// workspace's crates as they compile (`crate::with_clippy`). `cargo xtask
/// soak` uses it too.
pub fn build(tc: &bootstrap::Toolchain, package: Option<&str>, lint: bool) -> Result<Vec<Exe>> {
    let mut c = cargo(tc);
    if lint {
        crate::with_clippy(tc, &mut c)?;
    }
    c.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .stderr(Stdio::inherit());
    if let Some(p) = package {
        c.args(["-p", p]);
    }
    let mut out = String::new();
    let what = if lint {
        "build the tests (and clippy -D warnings)"
    } else {
        "build the tests"
    };
    timed(what, || {
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
        let kind = |want: &str| {
            msg["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == want))
        };
        let is_lib = kind("lib");
        let name = if is_lib {
            format!("{package}/lib")
        } else {
            format!("{package}/{target}")
        };
        let path = PathBuf::from(exe);
        let found = crate::soak::links(&path, &[&crate::soak::NAMESPACE_SYMBOL, &FABRIC_SYMBOL])?;
        exes.push(Exe {
            namespaces: found[0],
            alone: found[1],
            target: target.to_owned(),
            integration: kind("test"),
            name,
            path,
            cwd,
        });
    }
    if exes.is_empty() {
        bail!("cargo test --no-run reported no test binary");
    }
    if !exes.iter().any(|e| e.name == "tests/fabric" && e.alone) {
        bail!(
            "tests/fabric does not link vip_tests::fabric::Fabric::new: if it was renamed, \
             update FABRIC_SYMBOL in xtask/src/lanes.rs"
        );
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
    // Readers: binaries that share the machine; a writer: one that runs alone.
    let gate = RwLock::new(());
    let (tx, rx) = mpsc::channel::<(String, Result<Finished>)>();
    let started = Instant::now();
    let mut failed = vec![];
    thread::scope(|s| {
        for lane in 1..=lanes {
            let tx = tx.clone();
            let queue = &queue;
            let log_dir = &log_dir;
            let gate = &gate;
            s.spawn(move || {
                loop {
                    let next = queue.lock().map(|mut q| q.next()).ok().flatten();
                    let Some(exe) = next else { break };
                    let log = log_dir.join(format!("{}.log", exe.name.replace('/', "-")));
                    // A poisoned gate only means a lane panicked; the lock
                    // still orders the runs.
                    let r = if exe.alone {
                        let _g = gate.write().unwrap_or_else(|e| e.into_inner());
                        run_one(&exe, args, env, &log, lane)
                    } else {
                        let _g = gate.read().unwrap_or_else(|e| e.into_inner());
                        run_one(&exe, args, env, &log, lane)
                    };
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
                    // The whole libtest output, as `cargo test` prints it
                    // (every test's line and its `test result:`): a reader
                    // of the CI log, human or tool, sees each test that ran.
                    // A binary's log is a few hundred bytes to 25 KB.
                    println!("     Running {name} ({})", f.exe.display());
                    print!("{}", f.output);
                    if f.ok {
                        step(&format!("[lane {}] {name}: {}", f.lane, f.summary));
                    } else {
                        step(&format!(
                            "[lane {}] {name}: {}; its output is above and in {}",
                            f.lane,
                            f.summary,
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
    // A filtered run's times say nothing of a whole run's order.
    if args.is_empty()
        && let Ok(text) = serde_json::to_vec_pretty(&times)
    {
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

/// The running order: those that run alone first; then longest first by
/// `times`, a binary without a time before every one with (it may be the
/// longest); namespace suites before the others; then by name.
fn order(mut exes: Vec<Exe>, times: &BTreeMap<String, f64>) -> Vec<Exe> {
    let key = |e: &Exe| times.get(&e.name).copied().unwrap_or(f64::INFINITY);
    exes.sort_by(|a, b| {
        b.alone
            .cmp(&a.alone)
            .then(key(b).total_cmp(&key(a)))
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
    exe: PathBuf,
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
        exe: exe.path.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(name: &str, namespaces: bool) -> Exe {
        Exe {
            name: name.into(),
            target: String::new(),
            integration: true,
            path: PathBuf::new(),
            cwd: PathBuf::new(),
            namespaces,
            alone: name == "tests/alone",
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
        // One that runs alone goes first, however short.
        let mut with_alone = all();
        with_alone.push(exe("tests/alone", true));
        let times = BTreeMap::from([("tests/alone".to_owned(), 1.0)]);
        assert_eq!(names(order(with_alone, &times))[0], "tests/alone");
    }
}
