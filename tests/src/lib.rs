//! Test support for vipd: network-namespace topologies, a packet builder with
//! independent checksum verification, a kube-apiserver stand-in, a test PKI,
//! keepalived and vipd as VRRP routers. Used by the topology tests, the program
//! tests, the lab and the benchmarks. The benchmarks (`bench`, binary
//! `vip-bench`) and the parser fuzz (`fuzz`) are their own module trees on top.

pub mod bench;
pub mod capture;
pub mod certs;
pub mod container;
pub mod etcd;
pub mod fabric;
pub mod failover;
pub mod flood;
pub mod fuzz;
pub mod h2client;
pub mod keepalived;
pub mod kubeadm_ha;
pub mod netns;
pub mod packet;
pub mod progtest;
pub mod prom;
pub mod scenario;
pub mod slices;
pub mod stacked;
pub mod standin;
pub mod stats;
pub mod traffic;
pub mod vrrpd;

use std::path::PathBuf;

/// The `vipd` binary under test: `$VIPD_BIN`, else the one cargo built next to
/// this test executable (target/<profile>/vipd). Panics with the fix if missing.
pub fn vipd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VIPD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let cand = dir.join("vipd");
        if cand.is_file() {
            return cand;
        }
    }
    panic!(
        "vipd binary not found next to {}: build it first (`cargo build -p vip-userspace --bin vipd`, \
         which `cargo xtask test` does) or set VIPD_BIN",
        exe.display()
    );
}

/// Runs `f`, turning a panic (the lab helpers panic with the logs on a
/// deadline) into an error holding the first lines of its message: a
/// benchmark reports a failed step and goes on.
pub fn attempt<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| first_lines(&panic_text(&*p), 12))
}

/// A panic payload's message.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "panic".into()
    }
}

/// The first `n` lines of `s`, indented for a report, "..." if cut.
pub fn first_lines(s: &str, n: usize) -> String {
    let mut out: Vec<&str> = s.lines().take(n).collect();
    if s.lines().count() > n {
        out.push("...");
    }
    out.join("\n    ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_cut() {
        assert_eq!(first_lines("a\nb\nc", 2), "a\n    b\n    ...");
        assert_eq!(first_lines("a", 2), "a");
        let p: Box<dyn std::any::Any + Send> = Box::new(String::from("boom"));
        assert_eq!(panic_text(&*p), "boom");
        assert_eq!(attempt(|| 7), Ok(7));
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let e = attempt(|| -> u8 { panic!("one\ntwo") });
        std::panic::set_hook(hook);
        assert_eq!(e, Err("one\n    two".into()));
    }
}
