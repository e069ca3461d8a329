//! The `haproxy` case's load balancer: its configuration and whether the
//! binary is there.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use anyhow::Result;

use super::{PLAIN_PORT, TLS_PORT};

/// haproxy.cfg for the `haproxy` case: `mode tcp`, round robin over the
/// backends, for the plain port and the TLS port, with an HTTPS `GET /readyz`
/// check on the TLS one (the recipe's, docs: kubeadm/ha-considerations.md,
/// checks `/healthz`; vipd probes `/readyz`, so both LBs ask the same) and a
/// TCP check on the plain one. No logging: it would cost HAProxy
/// CPU that vipd does not spend either.
pub fn haproxy_cfg(vip: Ipv4Addr, backends: &[Ipv4Addr], nbthread: usize) -> String {
    let mut s = String::new();
    let mut line = |t: &str| {
        let _ = writeln!(s, "{t}");
    };
    line("# Written by vip-tests (tests/src/bench/e2e/haproxy.rs) for HAProxy 2.6.");
    line("global");
    line(&format!("    nbthread {nbthread}"));
    // HAProxy raises its file limit to about 2 x maxconn and refuses to
    // start when it cannot; the benchmark holds a few hundred at most.
    line("    maxconn 8000");
    line("defaults");
    line("    mode tcp");
    line("    timeout connect 5s");
    line("    timeout client 60s");
    line("    timeout server 60s");
    for (name, port) in [("plain", PLAIN_PORT), ("apiserver", TLS_PORT)] {
        line(&format!("frontend {name}"));
        line(&format!("    bind {vip}:{port}"));
        line(&format!("    default_backend {name}_backends"));
        line(&format!("backend {name}_backends"));
        line("    balance roundrobin");
        let check = if port == TLS_PORT {
            line("    option httpchk");
            line("    http-check connect ssl");
            line("    http-check send meth GET uri /readyz");
            line("    http-check expect status 200");
            "check verify none"
        } else {
            "check"
        };
        for (i, be) in backends.iter().enumerate() {
            line(&format!("    server be{} {be}:{port} {check}", i + 1));
        }
    }
    s
}

pub(super) fn haproxy_available() -> Result<String, String> {
    match std::process::Command::new("haproxy").arg("-v").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("haproxy")
            .to_owned()),
        Ok(o) => Err(format!("`haproxy -v` failed: {}", o.status)),
        Err(e) => Err(format!(
            "haproxy not found ({e}): install it with `apt-get install haproxy` (or `cargo xtask bootstrap`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::VIP_V4;

    #[test]
    fn haproxy_config() {
        let be = [
            Ipv4Addr::new(10, 77, 0, 12),
            Ipv4Addr::new(10, 77, 0, 13),
            Ipv4Addr::new(10, 77, 0, 14),
        ];
        let cfg = haproxy_cfg(VIP_V4, &be, 2);
        for want in [
            "    nbthread 2\n",
            "    mode tcp\n",
            "frontend plain\n    bind 10.77.0.100:8080\n    default_backend plain_backends\n",
            "    server be1 10.77.0.12:8080 check\n",
            "frontend apiserver\n    bind 10.77.0.100:6443\n",
            "    http-check send meth GET uri /readyz\n",
            "    server be3 10.77.0.14:6443 check verify none\n",
        ] {
            assert!(cfg.contains(want), "{want:?} missing from:\n{cfg}");
        }
        // The real parser agrees (`haproxy -c` binds nothing; no root).
        let dir = std::env::temp_dir().join(format!("e2e-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &cfg).expect("write cfg");
        let out = std::process::Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .expect("haproxy not found: install it (`apt-get install haproxy`, or `cargo xtask bootstrap`)");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
