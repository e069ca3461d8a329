//! `cargo xtask soak`: the namespace suites run several times in a row while
//! a CPU load this harness owns keeps other cores busy, to find the tests whose
//! timing only holds on an idle machine (issue 18, item 5).
//!
//! - The test binaries are built once (`cargo test --no-run`), then run directly.
//! - Which binaries are "namespace suites" is read from the binaries, not from a
//!   list: those whose symbol table holds `vip_tests::netns::add_namespace`, the
//!   one function every topology creates its namespaces with. Debug builds are
//!   not inlined and the linker drops unreachable functions (`--gc-sections`),
//!   so the symbol is there exactly when some test can build a namespace.
//! - The load is `xtask burn`: this same binary as a child process with one
//!   busy thread per loaded core; it is started before the first run and killed
//!   (by its pid, only that one) after the last, and dies with us if we die
//!   (`PR_SET_PDEATHSIG`).
//! - Each run's per-test results, and the first line of each failure, go into a
//!   table printed at the end and written to `target/soak/report.md` (rewritten
//!   after every binary, so an interrupted soak still leaves its results); each
//!   binary's full output goes to `target/soak/logs/`.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, cargo, step, timed};

/// The function every namespace topology is built with (tests/src/netns.rs);
/// its mangled name holds these two pieces in both the legacy and the v0
/// symbol mangling.
pub const NAMESPACE_SYMBOL: [&str; 2] = ["9vip_tests", "5netns13add_namespace"];

/// A suite that runs longer than this is stopped (its pid only) and its
/// unreported tests count as failures: a hang is a flake too. The longest
/// suite takes a few minutes on a loaded 2-core machine.
const SUITE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub struct Options {
    pub runs: u32,
    pub load: usize,
    pub suites: Vec<String>,
    pub args: Vec<OsString>,
    /// Where the report, the logs and the binaries' snapshot go
    /// (target/soak by default).
    pub out: Option<PathBuf>,
}

/// One test binary of the vip-tests package.
struct Suite {
    name: String,
    exe: PathBuf,
    /// The tests it holds (`--list`) that the filter selects.
    tests: Vec<String>,
}

#[derive(Clone)]
enum Outcome {
    Pass,
    Fail(String),
}

/// One run's results: suite -> test -> outcome.
#[derive(Default)]
struct Run {
    results: BTreeMap<(String, String), Outcome>,
    secs: f64,
    load_min: f64,
    load_max: f64,
}

pub fn soak(root: &Path, tc: &bootstrap::Toolchain, opts: &Options) -> Result<()> {
    if !bootstrap::is_root() {
        bail!(
            "the namespace suites create network namespaces and load XDP programs: run `cargo xtask soak` as root"
        );
    }
    if opts.runs == 0 {
        bail!("--runs 0 runs nothing: give at least 1");
    }
    timed("build vipd", || {
        crate::run(cargo(tc).args(["build", "-p", "vip-userspace", "--bin", "vipd"]))
    })?;
    let mut suites = namespace_suites(tc)?;
    if !opts.suites.is_empty() {
        let known: Vec<String> = suites.iter().map(|s| s.name.clone()).collect();
        for want in &opts.suites {
            if !known.contains(want) {
                bail!(
                    "--suite {want}: not a namespace suite; the namespace suites are: {}",
                    known.join(", ")
                );
            }
        }
        suites.retain(|s| opts.suites.contains(&s.name));
    }
    let out_dir = opts.out.clone().unwrap_or_else(|| root.join("target/soak"));
    let log_dir = out_dir.join("logs");
    fs::create_dir_all(&log_dir).with_context(|| format!("create {}", log_dir.display()))?;
    let report_path = out_dir.join("report.md");
    // The binaries this soak runs, hard-linked (no copy) under its own
    // folder: a build during the soak (cargo replaces a binary by a new
    // file) then cannot change what the later runs test.
    let bin_dir = out_dir.join("bin");
    let _ = fs::remove_dir_all(&bin_dir);
    fs::create_dir_all(&bin_dir).with_context(|| format!("create {}", bin_dir.display()))?;
    let vipd = snapshot(&root.join("target/debug/vipd"), &bin_dir.join("vipd"))?;
    for s in &mut suites {
        s.exe = snapshot(&s.exe, &bin_dir.join(&s.name))?;
        s.tests = list_tests(&s.exe, &opts.args)?;
    }
    suites.retain(|s| !s.tests.is_empty());
    // The image suite runs the image and installs the package, which are
    // built here only when it is selected (the static build is minutes),
    // after the snapshot: their cargo runs must not race a test build.
    let env = if suites.iter().any(|s| s.name == "image") {
        crate::package_env(root, tc)?
    } else {
        vec![]
    };
    if suites.is_empty() {
        bail!(
            "the filter {:?} selects no test in any namespace suite",
            opts.args
        );
    }
    let total: usize = suites.iter().map(|s| s.tests.len()).sum();
    step(&format!(
        "soak: {} runs of {total} tests in {} suites ({}), {} core(s) loaded",
        opts.runs,
        suites.len(),
        suites
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        opts.load
    ));

    let _load = Load::start(opts.load)?;
    let mut runs: Vec<Run> = vec![];
    for r in 1..=opts.runs {
        let started = Instant::now();
        let first = loadavg();
        runs.push(Run {
            load_min: first,
            load_max: first,
            ..Run::default()
        });
        for s in &suites {
            let log = log_dir.join(format!("run{r}-{}.log", s.name));
            let (results, t) = run_suite(s, &opts.args, &env, &vipd, &log, runs.last_mut())?;
            let failed = results
                .values()
                .filter(|o| matches!(o, Outcome::Fail(_)))
                .count();
            step(&format!(
                "run {r}/{}: {}: {} passed, {failed} failed in {t:.0}s (load {:.1})",
                opts.runs,
                s.name,
                results.len() - failed,
                loadavg()
            ));
            let run = runs.last_mut().expect("pushed above");
            for (test, o) in results {
                run.results.insert((s.name.clone(), test), o);
            }
            fs::write(&report_path, report(&suites, &runs, opts))
                .with_context(|| format!("write {}", report_path.display()))?;
        }
        let run = runs.last_mut().expect("pushed above");
        run.secs = started.elapsed().as_secs_f64();
    }
    let text = report(&suites, &runs, opts);
    fs::write(&report_path, &text).with_context(|| format!("write {}", report_path.display()))?;
    println!("{text}");
    let failures: usize = runs.iter().map(Run::failed).sum();
    if failures > 0 {
        bail!(
            "{failures} test failure(s) over {} runs: see {} and the logs in {}",
            opts.runs,
            report_path.display(),
            log_dir.display()
        );
    }
    step(&format!(
        "soak: every test passed in all {} runs; report in {}",
        opts.runs,
        report_path.display()
    ));
    Ok(())
}

impl Run {
    fn failed(&self) -> usize {
        self.results
            .values()
            .filter(|o| matches!(o, Outcome::Fail(_)))
            .count()
    }
}

/// Builds the vip-tests test binaries once (`lanes::build`) and keeps the
/// integration tests that can build a namespace.
fn namespace_suites(tc: &bootstrap::Toolchain) -> Result<Vec<Suite>> {
    let (ns, others): (Vec<_>, Vec<_>) = crate::lanes::build(tc, Some("vip-tests"), false)?
        .into_iter()
        .filter(|e| e.integration)
        .partition(|e| e.namespaces);
    let mut suites: Vec<Suite> = ns
        .into_iter()
        .map(|e| Suite {
            name: e.target,
            exe: e.path,
            tests: vec![],
        })
        .collect();
    if suites.is_empty() {
        bail!(
            "no vip-tests binary links vip_tests::netns::add_namespace: if the function was \
             renamed, update NAMESPACE_SYMBOL in xtask/src/soak.rs"
        );
    }
    suites.sort_by(|a, b| a.name.cmp(&b.name));
    let mut others: Vec<String> = others.into_iter().map(|e| e.target).collect();
    others.sort();
    step(&format!(
        "not namespace suites (no add_namespace in their symbols): {}",
        others.join(", ")
    ));
    Ok(suites)
}

fn snapshot(from: &Path, to: &Path) -> Result<PathBuf> {
    fs::hard_link(from, to)
        .with_context(|| format!("hard-link {} to {}", from.display(), to.display()))?;
    Ok(to.to_owned())
}

/// For each symbol (given as pieces of its mangled name, all present in
/// both manglings), whether the binary `exe` holds it: debug test builds
/// are not inlined and the linker drops unreachable functions
/// (`--gc-sections`), so a function is there exactly when a test can call
/// it.
pub fn links(exe: &Path, symbols: &[&[&str]]) -> Result<Vec<bool>> {
    use object::{Object as _, ObjectSymbol as _};
    let data = fs::read(exe).with_context(|| format!("read {}", exe.display()))?;
    let file = object::File::parse(&*data).with_context(|| {
        format!(
            "{}: not an object file cargo could have built",
            exe.display()
        )
    })?;
    let mut found = vec![false; symbols.len()];
    for s in file.symbols() {
        let Ok(n) = s.name() else { continue };
        for (f, pieces) in found.iter_mut().zip(symbols) {
            *f = *f || pieces.iter().all(|piece| n.contains(piece));
        }
    }
    Ok(found)
}

/// The tests of `exe` that the libtest arguments select (`--list`).
fn list_tests(exe: &Path, args: &[OsString]) -> Result<Vec<String>> {
    let out = crate::cmd_output(Command::new(exe).args(args).arg("--list"))?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// Runs one suite to completion (or to `SUITE_TIMEOUT`), its whole output
/// into `log`, sampling the load average into `run` while it waits.
fn run_suite(
    s: &Suite,
    args: &[OsString],
    env: &[(&str, OsString)],
    vipd: &Path,
    log: &Path,
    mut run: Option<&mut Run>,
) -> Result<(BTreeMap<String, Outcome>, f64)> {
    let started = Instant::now();
    let err_log = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut child = Command::new(&s.exe)
        .args(args)
        .env("VIPD_BIN", vipd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err_log)
        .spawn()
        .with_context(|| format!("start {}", s.exe.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut lines = vec![];
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            lines.push(line);
        }
        let _ = tx.send(());
        lines
    });
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for the suite")? {
            break Some(status);
        }
        if started.elapsed() > SUITE_TIMEOUT {
            kill(&mut child);
            break None;
        }
        if let Some(run) = run.as_deref_mut() {
            let l = loadavg();
            run.load_min = run.load_min.min(l);
            run.load_max = run.load_max.max(l);
        }
        let _ = rx.recv_timeout(Duration::from_secs(2));
    };
    let lines = reader.join().unwrap_or_default();
    // The libtest output goes into the log too, after the children's stderr.
    let mut text = fs::read_to_string(log).unwrap_or_default();
    text.push_str("\n==== libtest output ====\n");
    text.push_str(&lines.join("\n"));
    fs::write(log, text).with_context(|| format!("write {}", log.display()))?;

    let mut results = parse_libtest(&lines);
    let missing = match status {
        None => format!(
            "no result: the suite ran over {} min and was stopped",
            SUITE_TIMEOUT.as_secs() / 60
        ),
        Some(st) => format!("no result: the test binary exited with {st}"),
    };
    for t in &s.tests {
        results
            .entry(t.clone())
            .or_insert_with(|| Outcome::Fail(missing.clone()));
    }
    results.retain(|t, _| s.tests.contains(t));
    Ok((results, started.elapsed().as_secs_f64()))
}

/// SIGKILL to the suite's own pid (only that process: its namespaces and
/// daemons are swept by the next suite's `sweep_stale`).
fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Results from libtest's default (pretty) output: `test NAME ... ok|FAILED`
/// lines, and for each failure the first line of its panic message from the
/// `---- NAME stdout ----` section.
fn parse_libtest(lines: &[String]) -> BTreeMap<String, Outcome> {
    let mut out = BTreeMap::new();
    for l in lines {
        let Some(rest) = l.strip_prefix("test ") else {
            continue;
        };
        let Some((name, verdict)) = rest.split_once(" ... ") else {
            continue;
        };
        if verdict.starts_with("ok") {
            out.insert(name.to_owned(), Outcome::Pass);
        } else if verdict.starts_with("FAILED") {
            out.insert(
                name.to_owned(),
                Outcome::Fail("(no panic message found)".into()),
            );
        }
    }
    let mut current: Option<String> = None;
    let mut after_panic = false;
    for l in lines {
        if let Some(name) = l
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            current = Some(name.to_owned());
            after_panic = false;
            continue;
        }
        let Some(name) = &current else { continue };
        if l.contains("panicked at") {
            after_panic = true;
            continue;
        }
        if after_panic && !l.trim().is_empty() {
            let first: String = l.trim().chars().take(200).collect();
            out.insert(name.clone(), Outcome::Fail(first));
            current = None;
        }
    }
    out
}

fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn report(suites: &[Suite], runs: &[Run], opts: &Options) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Soak: namespace suites, {} core(s) loaded\n",
        opts.load
    );
    let _ = writeln!(
        md,
        "`cargo xtask soak --runs {} --load {}`{}; {} cores; load average (1 min) sampled during each run.\n",
        opts.runs,
        opts.load,
        if opts.args.is_empty() {
            String::new()
        } else {
            format!(
                " with `-- {}`",
                opts.args
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
        thread::available_parallelism().map_or(0, usize::from)
    );
    let _ = writeln!(md, "| run | tests | failed | time | load min-max |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (i, r) in runs.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.1}-{:.1} |",
            i + 1,
            r.results.len(),
            r.failed(),
            if r.secs > 0.0 {
                format!("{:.0} s", r.secs)
            } else {
                "running".into()
            },
            r.load_min,
            r.load_max
        );
    }
    let _ = writeln!(md, "\n| suite | test | passed | failed | first failure |");
    let _ = writeln!(md, "|---|---|---|---|---|");
    let mut rows = vec![];
    for s in suites {
        for t in &s.tests {
            let key = (s.name.clone(), t.clone());
            let (mut pass, mut fail, mut first) = (0, 0, String::new());
            for r in runs {
                match r.results.get(&key) {
                    Some(Outcome::Pass) => pass += 1,
                    Some(Outcome::Fail(why)) => {
                        fail += 1;
                        if first.is_empty() {
                            first = why.replace('|', "\\|");
                        }
                    }
                    None => {}
                }
            }
            rows.push((fail, &s.name, t, pass, first));
        }
    }
    // Failing tests first, then by suite and name.
    rows.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)).then(a.2.cmp(b.2)));
    for (fail, suite, test, pass, first) in rows {
        let _ = writeln!(md, "| {suite} | {test} | {pass} | {fail} | {first} |");
    }
    md
}

/// The harness's CPU load: `xtask burn N` as a child process.
struct Load(Option<Child>);

impl Load {
    fn start(threads: usize) -> Result<Load> {
        if threads == 0 {
            return Ok(Load(None));
        }
        let exe = std::env::current_exe().context("find the xtask binary")?;
        let child = Command::new(exe)
            .args(["burn", &threads.to_string()])
            .stdin(Stdio::null())
            .spawn()
            .context("start the CPU load (xtask burn)")?;
        step(&format!(
            "CPU load: {threads} busy thread(s) in pid {}",
            child.id()
        ));
        Ok(Load(Some(child)))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            step(&format!("stopping the CPU load (pid {})", c.id()));
            kill(&mut c);
        }
    }
}

/// `xtask burn N`: N threads spinning until killed. It asks the kernel to kill
/// it when the soak that started it exits (PR_SET_PDEATHSIG), so a soak
/// stopped by a signal leaves no load behind.
pub fn burn(threads: usize) -> ! {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and has no
    // memory-safety preconditions.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    for _ in 0..threads {
        thread::spawn(|| {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
    }
    loop {
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(str::to_owned).collect()
    }

    #[test]
    fn libtest_output_gives_each_verdict_and_the_first_line_of_each_panic() {
        let out = lines(
            "running 3 tests\n\
             test a::one ... ok\n\
             test two ... FAILED\n\
             test three ... FAILED\n\
             \n\
             failures:\n\
             \n\
             ---- two stdout ----\n\
             some captured line\n\
             \n\
             thread 'two' panicked at tests/tests/x.rs:10:5:\n\
             lb1 never became master within 2s\n\
             second line\n\
             ---- three stdout ----\n\
             \n\
             failures:\n",
        );
        let r = parse_libtest(&out);
        assert!(matches!(r["a::one"], Outcome::Pass));
        match &r["two"] {
            Outcome::Fail(m) => assert_eq!(m, "lb1 never became master within 2s"),
            Outcome::Pass => panic!("two passed"),
        }
        match &r["three"] {
            Outcome::Fail(m) => assert_eq!(m, "(no panic message found)"),
            Outcome::Pass => panic!("three passed"),
        }
    }
}
