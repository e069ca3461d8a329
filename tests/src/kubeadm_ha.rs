//! The classic pair in front of a kubeadm control plane, configured as the
//! kubeadm HA recipe does it
//! (<https://github.com/kubernetes/kubeadm/blob/main/docs/ha-considerations.md>,
//! "keepalived and haproxy"): keepalived holds the VIP with a check script
//! that asks the local HAProxy for `/healthz`, HAProxy `mode tcp` forwards to
//! the apiservers with HTTPS health checks. The failover benchmark runs it
//! next to vipd. Pure rendering, tested below; starting the processes is the
//! caller's (`Keepalived::start_text`, `Lab::spawn`).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::keepalived::seconds;

/// The recipe's `vrrp_instance` name, as in keepalived's log lines.
pub const INSTANCE: &str = "VI_1";

/// One node's keepalived.conf of the recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeKeepalived {
    /// `state`: the recipe gives MASTER to one node, BACKUP to the others.
    pub master: bool,
    /// `priority`: the recipe's example is 101 on the master, 100 on the
    /// backups.
    pub priority: u8,
    /// `advert_int` in ms; `None` leaves it out like the recipe (keepalived's
    /// default, 1 s). A sub-second interval needs VRRPv3 (VRRPv2 counts in
    /// whole seconds, RFC 3768 section 5.3.7), whose packet has no
    /// authentication fields (RFC 9568 section 5.1): such a config says
    /// `vrrp_version 3` and leaves the recipe's `authentication` block out.
    pub advert_int_ms: Option<u32>,
    pub interface: String,
    pub vrid: u8,
    pub vip: Ipv4Addr,
    /// The recipe's `/etc/keepalived/check_apiserver.sh`.
    pub check_script: String,
}

impl RecipeKeepalived {
    /// Whether this config runs VRRPv3 (a sub-second advert interval).
    pub fn is_v3(&self) -> bool {
        self.advert_int_ms.is_some_and(|ms| ms % 1000 != 0)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |indent: usize, text: &str| {
            // Writing to a String cannot fail.
            let _ = writeln!(s, "{:indent$}{text}", "", indent = indent * 4);
        };
        line(0, "! Configuration File for keepalived (kubeadm HA recipe)");
        line(0, "global_defs {");
        line(1, "router_id LVS_DEVEL");
        if self.is_v3() {
            line(1, "vrrp_version 3");
        }
        line(0, "}");
        line(0, "vrrp_script check_apiserver {");
        line(1, &format!("script \"{}\"", self.check_script));
        line(1, "interval 3");
        line(1, "weight -2");
        line(1, "fall 10");
        line(1, "rise 2");
        line(0, "}");
        line(0, "");
        line(0, &format!("vrrp_instance {INSTANCE} {{"));
        line(
            1,
            &format!("state {}", if self.master { "MASTER" } else { "BACKUP" }),
        );
        line(1, &format!("interface {}", self.interface));
        line(1, &format!("virtual_router_id {}", self.vrid));
        line(1, &format!("priority {}", self.priority));
        if let Some(ms) = self.advert_int_ms {
            line(1, &format!("advert_int {}", seconds(ms)));
        }
        if !self.is_v3() {
            line(1, "authentication {");
            line(2, "auth_type PASS");
            line(2, "auth_pass 42");
            line(1, "}");
        }
        line(1, "virtual_ipaddress {");
        line(2, &self.vip.to_string());
        line(1, "}");
        line(1, "track_script {");
        line(2, "check_apiserver");
        line(1, "}");
        line(0, "}");
        s
    }
}

/// The recipe's check script for an HAProxy on `port` of the same node.
pub fn check_script(port: u16) -> String {
    format!(
        "#!/bin/sh\n\
         errorExit() {{\n    echo \"*** $*\" 1>&2\n    exit 1\n}}\n\n\
         curl -sfk --max-time 2 https://localhost:{port}/healthz -o /dev/null || \
         errorExit \"Error GET https://localhost:{port}/healthz\"\n"
    )
}

/// Writes the check script to `path`, executable.
pub fn write_check_script(path: &Path, port: u16) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, check_script(port))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// The recipe's haproxy.cfg: a `mode tcp` frontend on `port` (all
/// addresses, so it serves the VIP whenever keepalived puts it on the
/// node) and round robin over `backends` (name, address) with HTTPS
/// `/healthz` checks. Two changes, neither touching timing: no `daemon`
/// (the lab runs it in the foreground to own the process) and the log on
/// stdout, which the recipe already uses.
pub fn haproxy_cfg(port: u16, backends: &[(String, SocketAddr)]) -> String {
    let mut s = String::from(
        "# haproxy.cfg of the kubeadm HA recipe (rendered by vip-tests)
global
    log stdout format raw local0

defaults
    mode                    http
    log                     global
    option                  httplog
    option                  dontlognull
    option http-server-close
    option forwardfor       except 127.0.0.0/8
    option                  redispatch
    retries                 1
    timeout http-request    10s
    timeout queue           20s
    timeout connect         5s
    timeout client          35s
    timeout server          35s
    timeout http-keep-alive 10s
    timeout check           10s

frontend apiserver
",
    );
    let _ = writeln!(s, "    bind *:{port}");
    s.push_str(
        "    mode tcp
    option tcplog
    default_backend apiserverbackend

backend apiserverbackend
    option httpchk

    http-check connect ssl
    http-check send meth GET uri /healthz
    http-check expect status 200

    mode tcp
    balance     roundrobin

",
    );
    for (name, addr) in backends {
        let _ = writeln!(s, "    server {name} {addr} check verify none");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(master: bool, advert: Option<u32>) -> RecipeKeepalived {
        RecipeKeepalived {
            master,
            priority: if master { 101 } else { 100 },
            advert_int_ms: advert,
            interface: "eth0".into(),
            vrid: 51,
            vip: Ipv4Addr::new(10, 77, 0, 100),
            check_script: "/x/check_apiserver.sh".into(),
        }
    }

    #[test]
    fn renders_the_recipe_as_written() {
        let want = "\
! Configuration File for keepalived (kubeadm HA recipe)
global_defs {
    router_id LVS_DEVEL
}
vrrp_script check_apiserver {
    script \"/x/check_apiserver.sh\"
    interval 3
    weight -2
    fall 10
    rise 2
}

vrrp_instance VI_1 {
    state MASTER
    interface eth0
    virtual_router_id 51
    priority 101
    authentication {
        auth_type PASS
        auth_pass 42
    }
    virtual_ipaddress {
        10.77.0.100
    }
    track_script {
        check_apiserver
    }
}
";
        assert_eq!(conf(true, None).render(), want);
        assert!(!conf(true, None).is_v3());
        let backup = conf(false, None).render();
        assert!(backup.contains("state BACKUP\n"), "{backup}");
        assert!(backup.contains("priority 100\n"), "{backup}");
    }

    #[test]
    fn tuned_to_100ms_is_vrrpv3_without_authentication() {
        let c = conf(true, Some(100));
        let text = c.render();
        assert!(c.is_v3());
        assert!(
            text.contains("    router_id LVS_DEVEL\n    vrrp_version 3\n}"),
            "{text}"
        );
        assert!(text.contains("    advert_int 0.1\n"), "{text}");
        assert!(!text.contains("authentication"), "{text}");
        // Whole seconds stay VRRPv2 with the recipe's password.
        let two = conf(true, Some(2000));
        assert!(!two.is_v3());
        assert!(two.render().contains("advert_int 2\n    authentication {"));
    }

    #[test]
    fn check_script_asks_the_local_haproxy() {
        let s = check_script(6443);
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(
            s.contains(
                "curl -sfk --max-time 2 https://localhost:6443/healthz -o /dev/null || errorExit"
            ),
            "{s}"
        );
    }

    #[test]
    fn haproxy_forwards_tcp_with_https_checks() {
        let cfg = haproxy_cfg(
            6443,
            &[
                ("be1".into(), "10.77.0.12:6443".parse().expect("addr")),
                ("be2".into(), "10.77.0.13:6443".parse().expect("addr")),
            ],
        );
        for want in [
            "frontend apiserver\n    bind *:6443\n    mode tcp\n",
            "    http-check connect ssl\n    http-check send meth GET uri /healthz\n",
            "    server be1 10.77.0.12:6443 check verify none\n    server be2 10.77.0.13:6443 check verify none\n",
        ] {
            assert!(cfg.contains(want), "missing {want:?} in:\n{cfg}");
        }
        assert!(!cfg.contains("daemon"), "{cfg}");
    }
}
