//! Test support for vipd: network-namespace topologies, a packet builder with
//! independent checksum verification, a kube-apiserver stand-in, a test PKI,
//! keepalived and vipd as VRRP routers, the failover and end-to-end benchmarks.
//! Used by the topology tests, the program tests, the lab and the benchmarks.

pub mod capture;
pub mod certs;
pub mod e2e;
pub mod failover;
pub mod keepalived;
pub mod kubeadm_ha;
pub mod netns;
pub mod packet;
pub mod progtest;
pub mod reaction;
pub mod scenario;
pub mod standin;
pub mod traffic;
pub mod vrrpd;
pub mod xdpfuzz;

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
