//! Which external commands the project runs, read from its own source, and the
//! proof that each one exists on a minimal Debian 12 after `cargo xtask
//! bootstrap`: it is either installed by the bootstrap's package list or part of
//! Debian's essential/required set (what `debootstrap --variant=minbase` lays
//! down). The list is derived from the code every time, so a new
//! `Command::new("foo")` in a test cannot slip past with no package behind it.
//!
//! What counts as a command (a string literal in one of these positions):
//! - `Command::new("X")`;
//! - the first element of an array literal, `["X", ...]` / `&["X", ...]`: the
//!   argument vectors the namespace harness runs (`lab.sh(node, &["ip", ...])`);
//! - the second argument of a `spawn(node, "X", ...)` call: the processes the
//!   harness starts in a namespace (`lab.spawn("lb", "haproxy", ...)`);
//! - inside a string literal, the word after `netns exec <ns> ` (commands the
//!   lab prints for the operator to paste);
//! - inside a string literal that is a shell script (`#!/bin/sh`), the first word
//!   of each line and each word after `|`, `||`, `&&`, `;` or `$(`.
//!
//! A word is a command only if it names an executable on PATH here: array
//! literals of interface names or flags are not. Prose never counts.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, step};

/// The README's precondition, not Debian's nor ours to install: rustup's stable
/// toolchain, and the C compiler it links with (rustup needs one on any
/// Debian; `cargo xtask` cannot even be built without it).
const FROM_RUSTUP: &[&str] = &["cargo", "rustup", "rustc", "gcc"];

/// The folders whose sources are scanned.
const SCANNED: &[&str] = &["tests", "vip-userspace", "xtask"];

/// Every command-position word found in `src` (one file's text).
pub fn commands_in(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let lits = string_literals(src);
    for lit in &lits {
        let before = &src[..lit.start];
        let trimmed = before.trim_end();
        // Command::new("X")
        if trimmed.ends_with("Command::new(") {
            out.insert(lit.text.clone());
        }
        // ["X", ...] or &["X", ...] or vec!["X", ...]: the first element only.
        if trimmed.ends_with('[') && src[lit.end..].trim_start().starts_with(',') {
            out.insert(lit.text.clone());
        }
        out.extend(words_in_text(&lit.text));
    }
    out.extend(spawned(src));
    out.retain(|w| is_word(w));
    out
}

/// The `"X"` of every `spawn(FIRST, "X"` in `src`, where FIRST is a string
/// literal or an expression with no quote, parenthesis or comma in it.
fn spawned(src: &str) -> Vec<String> {
    let mut out = vec![];
    for (at, _) in src.match_indices("spawn(") {
        let rest = src[at + "spawn(".len()..].trim_start();
        let after_first = if let Some(lit) = rest.strip_prefix('"') {
            match lit.find('"') {
                Some(end) => &lit[end + 1..],
                None => continue,
            }
        } else {
            match rest.find([',', '"', '(', ')']) {
                Some(i) if rest[i..].starts_with(',') => &rest[i..],
                _ => continue,
            }
        };
        let Some(second) = after_first.trim_start().strip_prefix(',') else {
            continue;
        };
        let Some(lit) = second.trim_start().strip_prefix('"') else {
            continue;
        };
        if let Some(end) = lit.find('"') {
            out.push(lit[..end].to_owned());
        }
    }
    out
}

/// Command words inside one string literal's text: after `netns exec <ns> `,
/// and, for a shell script, at the start of each line and after a shell
/// operator.
fn words_in_text(text: &str) -> Vec<String> {
    let mut out = vec![];
    let toks: Vec<&str> = text.split_whitespace().collect();
    for w in toks.windows(4) {
        if w[0] == "netns" && w[1] == "exec" {
            out.push(w[3].to_owned());
        }
    }
    if text.starts_with("#!/bin/sh") || text.starts_with("#!/bin/bash") {
        for line in text.lines().skip(1) {
            let mut next_is_cmd = true;
            for tok in shell_tokens(line) {
                if next_is_cmd {
                    out.push(tok.to_owned());
                }
                next_is_cmd = matches!(tok, "|" | "||" | "&&" | ";" | "$(" | "then" | "do");
            }
        }
    }
    out
}

/// Splits a shell line into words, keeping `$(` as a token of its own
/// (`a=$(sysctl -n x)` runs `sysctl`).
fn shell_tokens(line: &str) -> Vec<&str> {
    let mut out = vec![];
    for tok in line.split_whitespace() {
        match tok.split_once("$(") {
            Some((before, rest)) => {
                if !before.is_empty() {
                    out.push(before);
                }
                out.push("$(");
                if !rest.is_empty() {
                    out.push(rest);
                }
            }
            None => out.push(tok),
        }
    }
    out
}

/// A plausible program name: lower case, digits, `-`, `_`, `.`, `+`.
fn is_word(w: &str) -> bool {
    w.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && w.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.+".contains(c))
}

struct Literal {
    start: usize,
    end: usize,
    /// The literal's content with `\n` escapes turned into newlines and a
    /// `\` line continuation (with the following indentation) removed.
    text: String,
}

/// The plain `"..."` string literals of a Rust source file (raw strings and
/// char literals are skipped; comments too).
fn string_literals(src: &str) -> Vec<Literal> {
    let b = src.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\'' => {
                // A char literal ('"', '\'') or a lifetime: skip what could
                // hide a quote.
                if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else if b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'') {
                    i += 4;
                } else {
                    i += 1;
                }
            }
            b'"' => {
                let start = i;
                let mut text = String::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        match b[i + 1] {
                            b'n' => text.push('\n'),
                            b'\n' => {
                                i += 2;
                                while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
                                    i += 1;
                                }
                                continue;
                            }
                            c => text.push(c as char),
                        }
                        i += 2;
                        continue;
                    }
                    // Multi-byte UTF-8 stays intact: copy the whole char.
                    let ch = src[i..].chars().next().unwrap_or(' ');
                    text.push(ch);
                    i += ch.len_utf8();
                }
                out.push(Literal {
                    start,
                    end: (i + 1).min(b.len()),
                    text,
                });
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Every `.rs` file below `dir`, skipping `target`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "target") {
                rust_files(&p, out)?;
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// The Debian package that owns `path` (following /usr merge: /bin is /usr/bin).
fn owner(path: &Path) -> Option<String> {
    let real = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let mut tries = vec![path.to_owned(), real.clone()];
    for p in [path, real.as_path()] {
        if let Ok(rest) = p.strip_prefix("/usr") {
            tries.push(Path::new("/").join(rest));
        } else {
            tries.push(Path::new("/usr").join(p.strip_prefix("/").unwrap_or(p)));
        }
    }
    tries.into_iter().find_map(|p| {
        let out = Command::new("dpkg").arg("-S").arg(&p).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8_lossy(&out.stdout);
        let line = s.lines().next()?;
        // "pkg:arch: /path" or "pkg: /path"; "diversion by" lines are not owners.
        if line.starts_with("diversion") {
            return None;
        }
        let pkg = line.split(':').next()?.trim();
        Some(pkg.split(',').next()?.trim().to_owned())
    })
}

/// Whether a package is in every minimal Debian 12 (Essential, or Priority
/// required: what debootstrap's minbase variant installs).
fn in_minbase(pkg: &str) -> bool {
    let Ok(out) = Command::new("dpkg-query")
        .args(["-W", "-f", "${Essential} ${Priority}", pkg])
        .output()
    else {
        return false;
    };
    let s = String::from_utf8_lossy(&out.stdout);
    s.starts_with("yes") || s.split_whitespace().any(|w| w == "required")
}

/// Every command the code runs, with the files that run it.
pub fn used(root: &Path) -> Result<BTreeMap<String, BTreeSet<PathBuf>>> {
    let mut files = vec![];
    for d in SCANNED {
        rust_files(&root.join(d), &mut files)?;
    }
    let mut used: BTreeMap<String, BTreeSet<PathBuf>> = BTreeMap::new();
    for f in &files {
        let src = fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        for c in commands_in(&src) {
            let rel = f.strip_prefix(root).unwrap_or(f).to_owned();
            used.entry(c).or_default().insert(rel);
        }
    }
    Ok(used)
}

/// The check `cargo xtask test` runs after the bootstrap: every command the
/// code runs is provided by a bootstrap package, the essential set, or rustup.
pub fn check(root: &Path) -> Result<()> {
    step(
        "external commands: every one the tests and the lab run is installed by the bootstrap or essential",
    );
    let used = used(root)?;
    let mut bad = vec![];
    let mut table = vec![];
    for (cmd, places) in &used {
        if FROM_RUSTUP.contains(&cmd.as_str()) {
            table.push(format!("{cmd} (precondition)"));
            continue;
        }
        let Some(path) = bootstrap::which(cmd) else {
            // Not a program on this machine: an interface name, a flag, one
            // of our own binaries (run by path).
            continue;
        };
        if crate::fresh::INSTALLS.contains(&cmd.as_str()) {
            table.push(format!("{cmd} (fresh-root installs it)"));
            continue;
        }
        if let Some(pkg) = bootstrap::provider_of(cmd) {
            table.push(format!("{cmd} ({pkg}, bootstrap)"));
            continue;
        }
        match owner(&path) {
            Some(pkg) if bootstrap::DEBIAN.iter().any(|(p, _)| *p == pkg) => {
                table.push(format!("{cmd} ({pkg}, bootstrap)"))
            }
            Some(pkg) if in_minbase(&pkg) => table.push(format!("{cmd} ({pkg}, essential)")),
            owner => {
                let places: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
                bad.push(format!(
                    "`{cmd}` ({}), run by {}: add its package to DEBIAN in xtask/src/bootstrap.rs",
                    match owner {
                        Some(p) => format!("package {p}, not in a minimal Debian 12"),
                        None => format!("{} belongs to no Debian package", path.display()),
                    },
                    places.join(", ")
                ));
            }
        }
    }
    if !bad.is_empty() {
        bail!(
            "commands the code runs that a fresh Debian 12 would not have after `cargo xtask bootstrap`:\n  {}",
            bad.join("\n  ")
        );
    }
    step(&format!("external commands: {}", table.join(", ")));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(src: &str) -> Vec<String> {
        commands_in(src).into_iter().collect()
    }

    #[test]
    fn command_new_and_argument_vectors_are_commands() {
        let src = r#"
            let a = Command::new("tcpdump").arg("-i");
            lab.sh("lb", &["sysctl", "-w", "x=1"]);
            ns_exec(ns, &["ip", "link"]);
            let not = ["eth0"];
            let v = vec!["ping", "-c", "1"];
        "#;
        assert_eq!(found(src), ["ip", "ping", "sysctl", "tcpdump"]);
    }

    #[test]
    fn prose_is_not_a_command() {
        let src = r#"
            // Command::new("commented")
            bail!("make sure the link is up; kill the process");
            info!(x = "watch", "file written");
        "#;
        assert!(found(src).is_empty(), "{:?}", found(src));
    }

    #[test]
    fn printed_lab_commands_and_shell_scripts_count() {
        let src = r##"
            println!("    metrics  ip netns exec {} curl -s 127.0.0.1:9590/metrics | grep x");
            let s = format!(
                "#!/bin/sh\n\
                 errorExit() {{\n    echo \"*** $*\" 1>&2\n}}\n\
                 curl -sfk https://localhost/ -o /dev/null || errorExit \"x\"\n\
                 a=$(sysctl -n x) && logger done\n"
            );
        "##;
        let f = found(src);
        for c in ["curl", "sysctl", "logger", "echo"] {
            assert!(f.contains(&c.to_owned()), "{c} missing from {f:?}");
        }
        assert!(!f.contains(&"-sfk".to_owned()), "{f:?}");
    }

    #[test]
    fn processes_the_harness_spawns_are_commands() {
        let src = r#"
            let p = lab.spawn(node, "prometheus", &args, &[]);
            let q = self.spawn(&lb.ns, "bird", &args, &label);
            let r = lab.spawn(
                "lb",
                "haproxy",
                &["-f", cfg],
            );
            let not = lab.spawn(node, cmd, &args, &[]);
            std::thread::spawn(move || run("x"));
        "#;
        assert_eq!(found(src), ["bird", "haproxy", "prometheus"]);
    }

    #[test]
    fn char_literals_do_not_open_strings() {
        let src = r#"let q = '"'; let c = Command::new("ethtool"); let e = '\'';"#;
        assert_eq!(found(src), ["ethtool"]);
    }
}
