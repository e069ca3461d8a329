//! Ready-made topologies shared by the namespace tests and the lab: a client, one
//! LB node running the real `vipd`, and three backends running the apiserver
//! stand-in behind the VIP.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    time::Duration,
};

use vip_userspace::dataplane::kernel::{AttachMode, KernelMaps, LoadOptions, PROG_PASS};

use crate::{
    certs::TestPki,
    container::{Image, Podman},
    netns::{Lab, Proc, VIP_V4, VIP_V6, in_netns, mac_to_string},
    standin::{HttpsConn, StandinHandle, StandinOptions, client_config, spawn_in_thread},
};

pub const PORT: u16 = 6443;
pub const BACKENDS: [&str; 3] = ["be1", "be2", "be3"];

/// How the LB forwards (the service's `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fwd {
    /// Backends hold the VIP on lo and answer clients directly.
    Dsr,
    /// Backends are unmodified; vipd translates both directions.
    Nat,
}

/// The certificate a backend's stand-in presents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// Issued by the lab CA for `kubernetes`, the VIPs and the node address.
    Good,
    /// The same without the VIPs in the SAN (a kubeadm cluster whose
    /// certSANs forgot the VIP).
    NoVipSan,
}

/// The state-sync key of labs with [`LbOptions::sync`] (id 1), for tests
/// that craft datagrams as a peer would.
pub const SYNC_KEY_HEX: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";

/// Probe settings (`LbOptions::probe`) for tests that want each health
/// step to settle within two seconds: 500 ms apart, fall 2 and rise 2 (the
/// defaults), so a dead or hung backend is out after at most
/// 2 x (500 + 50) + 500 = 1.6 s. The timeout is what a loaded 2-core machine
/// needs: at 200 ms the probes' TLS handshakes with the debug-built
/// stand-ins timed out under load average 20-30 (`cargo xtask soak`), and
/// healthy backends went down.
pub const QUICK_PROBE: &str = "interval: 500ms, timeout: 500ms, jitter: 50ms";

/// What [`LbLab::start_with`] builds.
#[derive(Clone, Debug)]
pub struct LbOptions {
    pub xdp_mode: AttachMode,
    pub fwd: Fwd,
    /// Per backend, in [`BACKENDS`] order.
    pub certs: [CertKind; 3],
    /// More probe settings, as YAML flow-map entries (`interval: 200ms,
    /// fall: 2`); the CA is always set.
    pub probe: String,
    /// The CA file vipd's probes trust; `None`: the lab's own.
    pub probe_ca: Option<PathBuf>,
    /// Elect the holder with VRRP (VRID 51, priority 150) instead of
    /// `hold_vips`.
    pub vrrp: bool,
    /// Top-level YAML added to the config as is.
    pub extra: String,
    /// A second LB node, `lb2`, running vipd with VRRP priority 100 (the
    /// first has 150); implies `vrrp`.
    pub second_lb: bool,
    /// lb and lb2 read ONE file, the same bytes (needs `second_lb`), as the
    /// DaemonSet's ConfigMap: no `interface:` (derived from the backends'
    /// subnet), no top-level priority but `nodes: { lb: 150, lb2: 100 }`
    /// picked by NODE_NAME, `metrics_listen: node:9590` (each node's own
    /// address, where this lab then reads status and metrics), and with
    /// `sync` one peer list naming both.
    pub one_file: bool,
    /// Mode nat state sync between lb and lb2 (needs `second_lb`): every
    /// nat service gets `snat: vip`, and each LB's config a `state_sync:`
    /// naming the other's IPv4 address and the lab's key file
    /// ([`SYNC_KEY_HEX`]).
    pub sync: bool,
    /// `vrrp.advert_interval` in ms (VRRP labs); `None`: vipd's default
    /// (100 ms).
    pub advert_ms: Option<u32>,
    /// Run vipd with only these capabilities (`setpriv --bounding-set`
    /// names: `bpf`, `net_admin`...), as uid 0 with no_new_privs: what a
    /// container gets with `drop: [ALL]` and `add:` them. `None`: all of
    /// root's.
    pub caps: Option<Vec<String>>,
    /// More TCP services on the same VIPs, mode and backends, one per port,
    /// probed by TCP connect: for servers a test or benchmark starts on the
    /// backends itself (the stand-in serves only [`PORT`]).
    pub extra_ports: Vec<u16>,
    /// What each stand-in's `/version` reports, in [`BACKENDS`] order.
    pub git_versions: [&'static str; 3],
    /// Mode dsr: write each backend's `mac:` (an override). Unset, vipd
    /// takes the MACs from the LB's neighbour table.
    pub backend_macs: bool,
    /// More nodes on the segment, after the others (their addresses do not
    /// move the others'), with nothing started on them.
    pub extra_nodes: Vec<&'static str>,
    /// Run once the nodes and the stand-ins are up, before the config is
    /// written and vipd starts (what it starts, it gives to `Lab::keep`).
    pub before_vipd: Option<fn(&Lab, &TestPki)>,
    /// `backends_from: kubernetes` on every service, with this top-level
    /// `discovery:` block (`{lab}` stands for the lab's folder; lb2's copy
    /// of the config names `backends-lb2.json` where lb's names
    /// `backends-lb.json`).
    pub discovery: Option<String>,
    /// With `discovery`: only the IPv4 services read their backends from
    /// the cluster; the IPv6 ones keep their static list.
    pub discovery_v4_only: bool,
    /// Run every vipd from this image with podman, as the DaemonSet's
    /// container runs (capabilities, mounts and arguments from
    /// deploy/daemonset.yaml; see [`crate::container`]) instead of the
    /// binary cargo built. The probes trust the CA at the manifest's mount.
    pub image: Option<Image>,
}

impl LbOptions {
    pub fn new(xdp_mode: AttachMode, fwd: Fwd) -> LbOptions {
        LbOptions {
            xdp_mode,
            fwd,
            certs: [CertKind::Good; 3],
            probe: String::new(),
            probe_ca: None,
            vrrp: false,
            extra: String::new(),
            second_lb: false,
            one_file: false,
            sync: false,
            advert_ms: None,
            caps: None,
            extra_ports: Vec::new(),
            git_versions: [crate::standin::GIT_VERSION; 3],
            backend_macs: true,
            extra_nodes: Vec::new(),
            before_vipd: None,
            discovery: None,
            discovery_v4_only: false,
            image: None,
        }
    }
}

/// client, lb (vipd), be1..be3 (apiserver stand-ins).
pub struct LbLab {
    /// With [`LbOptions::image`]: the lab's podman storage and containers.
    /// First, so it is dropped (its containers removed) before `lab`
    /// deletes the namespaces they run in.
    pub podman: Option<Podman>,
    pub lab: Lab,
    pub pki: TestPki,
    pub ca_path: PathBuf,
    pub config_path: PathBuf,
    /// `--pin-dir` of this lab's vipd (removed when the lab is dropped).
    pub pin_root: PathBuf,
    pub vipd: Proc,
    /// `lb2`'s vipd and config, with [`LbOptions::second_lb`].
    pub vipd2: Option<(Proc, PathBuf)>,
    pub standins: Vec<StandinHandle>,
    pub xdp_mode: AttachMode,
    pub fwd: Fwd,
    /// [`LbOptions::caps`], for restarts.
    pub caps: Option<Vec<String>>,
    /// [`LbOptions::one_file`]: vipd serves status on each node's address.
    pub one_file: bool,
}

impl LbLab {
    /// Builds the topology and starts everything; returns once vipd says it
    /// is ready. `xdp_mode` is Native or Skb.
    pub fn start(hint: &str, xdp_mode: AttachMode, fwd: Fwd) -> LbLab {
        LbLab::start_with(hint, &LbOptions::new(xdp_mode, fwd))
    }

    /// [`LbLab::start`] with certificates, probe settings and election as
    /// `opts` says.
    pub fn start_with(hint: &str, opts: &LbOptions) -> LbLab {
        let (xdp_mode, fwd) = (opts.xdp_mode, opts.fwd);
        // lb2 last: the others keep their addresses (10.77.0.10 + index).
        let mut nodes: Vec<&str> = if opts.second_lb {
            vec!["client", "lb", "be1", "be2", "be3", "lb2"]
        } else {
            vec!["client", "lb", "be1", "be2", "be3"]
        };
        nodes.extend(&opts.extra_nodes);
        let lab = Lab::new(hint, &nodes);
        let lbs: &[&str] = if opts.second_lb {
            &["lb", "lb2"]
        } else {
            &["lb"]
        };
        for lb in lbs {
            flood_off(&lab, lb);
        }
        let pki = TestPki::new();
        let ca_path = lab.dir().join("ca.crt");
        std::fs::write(&ca_path, pki.ca_pem()).expect("write CA");

        let mut standins = vec![];
        for be in BACKENDS.into_iter().filter(|_| fwd == Fwd::Dsr) {
            // The VIP is local on every backend (so the kernel accepts packets
            // sent to it) but never announced: arp_ignore=1 answers ARP only for
            // addresses on the receiving interface, arp_announce=2 never uses
            // the VIP as an ARP source (Documentation/networking/ip-sysctl.rst).
            lab.sh(
                be,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv4.conf.all.arp_ignore=1",
                    "net.ipv4.conf.all.arp_announce=2",
                ],
            );
            lab.sh(
                be,
                &["ip", "addr", "add", &format!("{VIP_V4}/32"), "dev", "lo"],
            );
            lab.sh(
                be,
                &[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{VIP_V6}/128"),
                    "dev",
                    "lo",
                    "nodad",
                ],
            );
        }
        for ((be, kind), version) in BACKENDS.into_iter().zip(opts.certs).zip(opts.git_versions) {
            let mut ips = vec![IpAddr::V4(lab.node(be).ipv4)];
            if kind == CertKind::Good {
                ips.extend([IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)]);
            }
            standins.push(start_standin_version(&lab, &pki, be, &ips, version));
        }

        if xdp_mode == AttachMode::Native {
            // veth delivers the LB's native XDP_TX frames only if its peer runs
            // an XDP program (drivers/net/veth.c); give the switch port one that
            // passes everything.
            for lb in lbs {
                let port = lab.node(lb).switch_port.clone();
                let sw = lab.switch_ns().to_owned();
                let pass = in_netns(&sw, || {
                    let mut m = KernelMaps::load(&LoadOptions {
                        conntrack_capacity: 1024,
                        pin_dir: None,
                    })
                    .expect("load the XDP object for the switch port");
                    m.attach(PROG_PASS, &port, AttachMode::Native)
                        .expect("attach vip_pass to the switch port");
                    m
                });
                lab.keep(Box::new(pass));
            }
        }

        if let Some(f) = opts.before_vipd {
            f(&lab, &pki);
        }
        let mode = match xdp_mode {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
            AttachMode::Auto => "auto",
        };
        assert!(
            !opts.one_file || opts.second_lb,
            "LbOptions.one_file needs second_lb"
        );
        let advert = opts
            .advert_ms
            .map_or(String::new(), |ms| format!(", advert_interval: {ms}ms"));
        let holder = if opts.one_file {
            // Every per-node value from the file's node list or derived.
            format!(
                "vrrp: {{ vrid: 51{advert} }}\nnodes:\n  lb: {{ priority: 150 }}\n  lb2: {{ priority: 100 }}\nmetrics_listen: node:{}\n",
                metrics_addr().port()
            )
        } else if opts.vrrp || opts.second_lb {
            format!("interface: eth0\nvrrp: {{ vrid: 51, priority: 150{advert} }}\n")
        } else {
            "interface: eth0\nhold_vips: true\n".to_owned()
        };
        let discovery = opts.discovery.as_ref().map_or(String::new(), |d| {
            d.replace("{lab}", &lab.dir().display().to_string())
        });
        let mut cfg = format!(
            "# Written by vip_tests::scenario::LbLab\nxdp_mode: {mode}\n{holder}{}{discovery}services:\n",
            opts.extra
        );
        let backends_from = if opts.discovery.is_some() {
            "    backends_from: kubernetes\n"
        } else {
            ""
        };
        assert!(
            opts.image.is_none() || opts.caps.is_none(),
            "LbOptions: an image runs with the manifest's capabilities, not `caps`"
        );
        let probe_ca = match (&opts.probe_ca, &opts.image) {
            (Some(ca), _) => ca.clone(),
            // The lab's CA is mounted where the DaemonSet mounts the node's.
            (None, Some(_)) => PathBuf::from(crate::container::ca_mount_path()),
            (None, None) => ca_path.clone(),
        };
        let probe_extra = if opts.probe.is_empty() {
            String::new()
        } else {
            format!(", {}", opts.probe)
        };
        let fwd_mode = match fwd {
            Fwd::Dsr => "dsr",
            Fwd::Nat if opts.sync => "nat\n    snat: vip",
            Fwd::Nat => "nat\n    snat: node",
        };
        assert!(
            !opts.sync || opts.second_lb,
            "LbOptions.sync needs second_lb"
        );
        // Authenticated, as the README recommends: every LB reads the same
        // key file (`state_sync.key_file`).
        let key_path = lab.dir().join("sync.key");
        if opts.sync {
            std::fs::write(&key_path, format!("1 {SYNC_KEY_HEX}\n")).expect("write the sync key");
        }
        let sync_peer = |node: &str| {
            // One file: both LBs listed, each leaves itself out.
            let peers = if opts.one_file {
                format!("\"{}\", \"{}\"", lab.node("lb").ipv4, lab.node("lb2").ipv4)
            } else {
                format!("\"{}\"", lab.node(node).ipv4)
            };
            format!(
                "state_sync: {{ peers: [{peers}], key_file: \"{}\" }}\n",
                key_path.display()
            )
        };
        if opts.sync {
            // Top level, before the services.
            cfg = cfg.replacen(
                "\nservices:\n",
                &format!("\n{}services:\n", sync_peer("lb2")),
                1,
            );
        }
        // /readyz over TLS verified with the lab's CA (the defaults but for
        // the CA's path) on the stand-in's port; a TCP connect on the others.
        let https_probe = format!("{{ ca: \"{}\"{probe_extra} }}", probe_ca.display());
        let ports = std::iter::once((PORT, https_probe)).chain(
            opts.extra_ports
                .iter()
                .map(|&p| (p, "{ type: tcp }".to_owned())),
        );
        for ((port, probe), vip) in
            ports.flat_map(|p| [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)].map(|v| (p.clone(), v)))
        {
            let backends_from = if opts.discovery_v4_only && vip.is_ipv6() {
                ""
            } else {
                backends_from
            };
            cfg.push_str(&format!(
                "  - vip: \"{vip}\"\n    port: {port}\n    mode: {fwd_mode}\n    probe: {probe}\n{backends_from}    backends:\n"
            ));
            for be in BACKENDS {
                let n = lab.node(be);
                let addr = n.ip(vip.is_ipv6());
                cfg.push_str(&format!("      - address: \"{addr}\"\n"));
                if fwd == Fwd::Dsr && opts.backend_macs {
                    // mode dsr rewrites the destination MAC to the backend's.
                    cfg.push_str(&format!("        mac: \"{}\"\n", mac_to_string(&n.mac)));
                }
            }
        }
        let config_path = lab.dir().join("vipd.yaml");
        std::fs::write(&config_path, cfg).expect("write vipd config");

        let pin_root = mount_pins(&lab);
        let podman = opts
            .image
            .as_ref()
            .map(|image| Podman::new(&lab, image, &ca_path));
        let start = |node: &str, config: &std::path::Path, pins: &std::path::Path| match &podman {
            Some(p) => p.run_vipd(&lab, node, config, pins),
            None => spawn_vipd(&lab, node, config, pins, opts.caps.as_deref()),
        };
        let vipd = start("lb", &config_path, &pin_root);
        let vipd2 = opts.second_lb.then(|| {
            // The same config but for the priority (or the very same file);
            // pins in a folder of its own (both attach to an `eth0`).
            let path = if opts.one_file {
                config_path.clone()
            } else {
                let text = std::fs::read_to_string(&config_path).expect("read vipd config");
                let mut text = text
                    .replace("priority: 150", "priority: 100")
                    .replace("/backends-lb.json", "/backends-lb2.json");
                if opts.sync {
                    text = text.replace(&sync_peer("lb2"), &sync_peer("lb"));
                }
                let path = lab.dir().join("vipd-lb2.yaml");
                std::fs::write(&path, text).expect("write lb2's vipd config");
                path
            };
            let pins = pin_root.join("lb2");
            std::fs::create_dir_all(&pins).expect("create lb2's pin folder");
            (start("lb2", &path, &pins), path)
        });
        LbLab {
            podman,
            lab,
            pki,
            ca_path,
            config_path,
            pin_root,
            vipd,
            vipd2,
            standins,
            xdp_mode,
            fwd,
            caps: opts.caps.clone(),
            one_file: opts.one_file,
        }
    }

    /// Where `node`'s vipd serves status and metrics: loopback, or with
    /// [`LbOptions::one_file`] the node's own address (`node:9590`).
    pub fn metrics_addr_of(&self, node: &str) -> SocketAddr {
        if self.one_file {
            SocketAddr::new(self.lab.node(node).ipv4.into(), metrics_addr().port())
        } else {
            metrics_addr()
        }
    }

    /// Stops vipd with SIGTERM and checks it exits cleanly within 10 s.
    pub fn stop_vipd(&self) {
        self.vipd.signal(libc::SIGTERM);
        let status = self
            .vipd
            .wait_timeout(Duration::from_secs(10))
            .expect("vipd stops on SIGTERM");
        assert!(
            status.success(),
            "vipd exit status {status}: {}",
            self.vipd.logs()
        );
    }

    /// Stops vipd and starts a new one with the same config and pins, as
    /// `systemctl restart` would; returns once the new one is ready.
    pub fn restart_vipd(&mut self) {
        self.stop_vipd();
        self.respawn_vipd("lb");
    }

    /// Starts vipd on `node` (`lb`, or `lb2` with [`LbOptions::second_lb`])
    /// again with its config and pins: after a test killed it, or as a
    /// restart (a running one is stopped first: SIGTERM, 2 s, SIGKILL, so
    /// two never share the pins). Returns once the new one is ready.
    pub fn respawn_vipd(&mut self, node: &str) {
        let (config, pins) = match node {
            "lb" => {
                self.vipd.kill();
                (self.config_path.clone(), self.pin_root.clone())
            }
            "lb2" => {
                let (old, config) = self.vipd2.as_ref().expect("lb2 runs with second_lb");
                old.kill();
                (config.clone(), self.pin_root.join("lb2"))
            }
            other => panic!("no vipd on {other:?}: lb or lb2"),
        };
        let p = match &self.podman {
            Some(podman) => podman.run_vipd(&self.lab, node, &config, &pins),
            None => spawn_vipd(&self.lab, node, &config, &pins, self.caps.as_deref()),
        };
        if node == "lb" {
            self.vipd = p;
        } else {
            self.vipd2 = Some((p, config));
        }
    }

    /// `node`'s vipd dies at once (SIGKILL), as in a node crash: the
    /// process itself, or in a container vipd inside it (a SIGKILL to
    /// `podman run` would leave the container running).
    pub fn kill_vipd(&self, node: &str) {
        match &self.podman {
            Some(p) => p.kill_vipd(node),
            None => self
                .vipd_on(node)
                .unwrap_or_else(|| panic!("no vipd on {node:?}"))
                .signal(libc::SIGKILL),
        }
    }

    /// The vipd process on `node` (`lb` or `lb2`).
    pub fn vipd_on(&self, node: &str) -> Option<&Proc> {
        match node {
            "lb" => Some(&self.vipd),
            "lb2" => self.vipd2.as_ref().map(|(p, _)| p),
            _ => None,
        }
    }

    pub fn vip_addr(v6: bool) -> SocketAddr {
        if v6 {
            SocketAddr::new(IpAddr::V6(VIP_V6), PORT)
        } else {
            SocketAddr::new(IpAddr::V4(VIP_V4), PORT)
        }
    }

    /// A backend's address and port (IPv4).
    pub fn backend(&self, be: &str) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.lab.node(be).ipv4), PORT)
    }

    /// Drives a stand-in's failure switches from the client namespace:
    /// `what` is `readyz` (status `200`, `503`, `hang`...) or `auth`
    /// (`200`, `401`, `403`).
    pub fn control(&self, be: &str, what: &str, status: &str) {
        let addr = self.backend(be);
        let cfg = client_config(&self.pki.ca_pem(), None);
        let ns = self.lab.node("client").ns.clone();
        let path = format!("/standin/{what}?status={status}");
        let r = in_netns(&ns, || {
            HttpsConn::connect(addr, "kubernetes", cfg, Duration::from_secs(5))
                .and_then(|mut c| c.request("POST", &path))
        })
        .unwrap_or_else(|e| panic!("POST {path} to {be}: {e:?}"));
        assert_eq!(r.status, 200, "POST {path} to {be}: {}", r.text());
    }

    /// `n` new TLS connections to the IPv4 VIP from the client, each asking
    /// GET /whoami: (status, body) per connection, or the error.
    pub fn ask_vip(&self, n: usize) -> Vec<Result<(u16, String), String>> {
        let cfg = client_config(&self.pki.ca_pem(), None);
        let ns = self.lab.node("client").ns.clone();
        let addr = LbLab::vip_addr(false);
        in_netns(&ns, || {
            (0..n)
                .map(|_| {
                    HttpsConn::connect(addr, "kubernetes", cfg.clone(), Duration::from_secs(3))
                        .and_then(|mut c| c.get("/whoami"))
                        .map(|r| (r.status, r.text().trim().to_owned()))
                        .map_err(|e| format!("{e:?}"))
                })
                .collect()
        })
    }

    /// The backends that answered `n` new connections through the VIP with
    /// 200; panics on any failed connection.
    pub fn answering(&self, n: usize) -> std::collections::BTreeSet<String> {
        let mut seen = std::collections::BTreeSet::new();
        for r in self.ask_vip(n) {
            match r {
                Ok((200, who)) => {
                    seen.insert(who);
                }
                other => panic!("through the VIP: {other:?}\n{}", self.vipd.logs()),
            }
        }
        seen
    }

    /// GET `path` from vipd's metrics endpoint (127.0.0.1:9590 in the lb
    /// namespace): (status, body).
    pub fn vipd_http(&self, path: &str) -> (u16, String) {
        self.vipd_http_on("lb", path)
    }

    /// [`LbLab::vipd_http`] against the vipd on `node` (`lb` or `lb2`).
    pub fn vipd_http_on(&self, node: &str, path: &str) -> (u16, String) {
        let ns = self.lab.node(node).ns.clone();
        let at = self.metrics_addr_of(node);
        in_netns(&ns, || {
            vip_userspace::status::get(at, path, Duration::from_secs(5))
        })
        .unwrap_or_else(|e| panic!("GET {path} from vipd on {node}: {e}"))
    }

    /// The `vipd status` snapshot of the vipd on `node` (`lb` or `lb2`).
    pub fn status_of(&self, node: &str) -> vip_userspace::status::Status {
        self.try_status_of(node)
            .unwrap_or_else(|e| panic!("vipd status on {node}: {e}"))
    }

    /// [`LbLab::status_of`] that tells rather than panics (a vipd that was
    /// killed does not answer).
    pub fn try_status_of(&self, node: &str) -> Result<vip_userspace::status::Status, String> {
        let ns = self.lab.node(node).ns.clone();
        let at = self.metrics_addr_of(node);
        in_netns(&ns, || {
            vip_userspace::status::fetch(at, Duration::from_secs(3)).map(|(s, _)| s)
        })
        .map_err(|e| e.to_string())
    }

    /// One sample of vipd's metrics: `series` is the name with its labels
    /// as exposed (`vipd_backend_serving{backend="10.77.0.11:6443"}`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().get(series).copied()
    }

    /// Every sample of lb's `/metrics`, by series (name with labels as
    /// exposed), parsed; panics on a line that is neither a comment nor a
    /// sample.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        self.metrics_of("lb")
    }

    /// [`LbLab::metrics`] of the vipd on `node` (`lb` or `lb2`).
    pub fn metrics_of(&self, node: &str) -> std::collections::BTreeMap<String, f64> {
        let (code, body) = self.vipd_http_on(node, "/metrics");
        assert_eq!(code, 200, "GET /metrics on {node}: {body}");
        parse_metrics(&body)
    }

    /// Writes a kubeconfig for the VIP and returns its path. A token is set
    /// (the stand-in ignores it) because kubectl with no credentials at all
    /// prompts for a username.
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.lab.dir().join("kubeconfig");
        let cfg = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: vip\n  cluster:\n    server: https://{VIP_V4}:{PORT}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: vipd-test\ncontexts:\n- name: c\n  context:\n    cluster: vip\n    user: u\ncurrent-context: c\n",
            self.ca_path.display()
        );
        std::fs::write(&path, cfg).expect("write kubeconfig");
        path
    }

    /// Runs kubectl inside the client namespace against the VIP.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let full = self.kubectl_args(args);
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        self.lab.sh("client", &args)
    }

    /// kubectl's stdout and stderr together (its -v logs go to stderr);
    /// panics if it fails.
    pub fn kubectl_output(&self, args: &[&str]) -> String {
        let full = self.kubectl_args(args);
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = self.lab.try_sh("client", &args);
        crate::netns::succeeded(&format!("kubectl {args:?}"), &out)
    }

    fn kubectl_args(&self, args: &[&str]) -> Vec<String> {
        let kc = self.kubeconfig();
        let home = self.lab.dir().join("kubectl-home");
        std::fs::create_dir_all(&home).expect("kubectl home");
        let home_env = format!("HOME={}", home.display());
        let mut full: Vec<String> = [
            "env",
            &home_env,
            "kubectl",
            "--kubeconfig",
            kc.to_str().expect("utf-8"),
            "--request-timeout=10s",
        ]
        .map(String::from)
        .to_vec();
        full.extend(args.iter().map(|a| (*a).to_owned()));
        full
    }
}

/// Where the lab's vipds serve /metrics and /status (each in its own
/// namespace): the default `metrics_listen`.
fn metrics_addr() -> SocketAddr {
    vip_userspace::config::DEFAULT_METRICS_LISTEN
}

/// The samples of an OpenMetrics text, by series; panics on a line that is
/// neither a comment nor a sample.
/// Unknown-unicast flooding off on `node`'s switch port. A real NIC drops
/// unicast frames for other MACs before XDP sees them; a veth hands XDP
/// everything. Without this, frames for a dead LB's MAC, flooded once the
/// bridge forgets it, would be served by the other LB's XDP program before
/// any VRRP takeover, and failover figures would flatter vipd.
pub fn flood_off(lab: &Lab, node: &str) {
    let port = lab.node(node).switch_port.clone();
    lab.switch_sh(&["bridge", "link", "set", "dev", &port, "flood", "off"]);
}

/// The apiserver stand-in on backend `be`, on [::]:[`PORT`], with a
/// certificate for the `kubernetes` names and `ips`, one watch event per
/// 200 ms.
pub fn start_standin(lab: &Lab, pki: &TestPki, be: &str, ips: &[IpAddr]) -> StandinHandle {
    start_standin_version(lab, pki, be, ips, crate::standin::GIT_VERSION)
}

/// [`start_standin`] reporting `git_version` at `/version`.
pub fn start_standin_version(
    lab: &Lab,
    pki: &TestPki,
    be: &str,
    ips: &[IpAddr],
    git_version: &str,
) -> StandinHandle {
    let (cert, key) = pki.issue_server(
        &["kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        ips,
    );
    let ns = lab.node(be).ns.clone();
    let listener = in_netns(&ns, || TcpListener::bind(("::", PORT)))
        .unwrap_or_else(|e| panic!("bind [::]:{PORT} in {be}: {e}"));
    let listen = listener.local_addr().expect("local addr");
    spawn_in_thread(
        StandinOptions {
            listen,
            cert_pem: cert,
            key_pem: key,
            name: be.to_owned(),
            watch_interval: Duration::from_millis(200),
            client_ca_pem: None,
            git_version: git_version.to_owned(),
        },
        listener,
    )
}

/// The stand-in on every backend with a certificate for its own address
/// and the IPv4 VIP, for the labs whose LB is not vipd's dsr (nothing on
/// the backends' loopback): the benchmarks' HAProxy and keepalived labs.
pub fn start_standins(lab: &Lab, pki: &TestPki) -> Vec<StandinHandle> {
    BACKENDS
        .iter()
        .map(|be| {
            let ips = [IpAddr::V4(lab.node(be).ipv4), IpAddr::V4(VIP_V4)];
            start_standin(lab, pki, be, &ips)
        })
        .collect()
}

pub fn parse_metrics(body: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("{line:?}: value {value:?}: {e}"));
        out.insert(series.to_owned(), v);
    }
    out
}

/// Starts vipd on `node` with `config` and its pins under `pin_root` (with
/// only `caps`, if given); returns once it says it is ready.
pub(crate) fn spawn_vipd(
    lab: &Lab,
    node: &str,
    config: &std::path::Path,
    pin_root: &std::path::Path,
    caps: Option<&[String]>,
) -> Proc {
    let vipd_bin = crate::vipd_bin();
    let vipd_bin = vipd_bin.to_str().expect("utf-8 path");
    let run = [
        "run",
        "--config",
        config.to_str().expect("utf-8 path"),
        "--stats-interval",
        "1",
        "--pin-dir",
        pin_root.to_str().expect("utf-8 path"),
    ];
    // NODE_NAME as the DaemonSet's downward API sets it: picks the node's
    // entry in a config with `nodes:`.
    let env = [("RUST_LOG", "info"), ("NODE_NAME", node)];
    let p = match caps {
        None => lab.spawn(node, vipd_bin, &run, &env),
        Some(caps) => {
            // setpriv execs vipd in the same process, so the Proc's pid is
            // vipd's.
            let prefix = setpriv_args(caps);
            let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
            args.push(vipd_bin);
            args.extend(run);
            lab.spawn(node, "setpriv", &args, &env)
        }
    };
    p.wait_for_stdout("vipd ready", Duration::from_secs(30));
    p
}

/// `setpriv` arguments (up to and including `--`) that run the next command
/// as uid 0 with only `caps` (`bpf`, `net_admin`, ...), as a container
/// runtime does for `capabilities: {drop: [ALL], add: [...]}` with
/// `allowPrivilegeEscalation: false`: for uid 0 the permitted and effective
/// sets after exec are the bounding set, the inheritable set is cleared and
/// no_new_privs is set.
pub fn setpriv_args(caps: &[String]) -> Vec<String> {
    let mut bounding = String::from("-all");
    for c in caps {
        bounding.push_str(",+");
        bounding.push_str(&c.to_ascii_lowercase());
    }
    vec![
        "--no-new-privs".into(),
        "--inh-caps=-all".into(),
        format!("--bounding-set={bounding}"),
        "--".into(),
    ]
}

impl Drop for LbLab {
    fn drop(&mut self) {
        release_pins(&self.pin_root);
    }
}

/// Mounts a bpffs of `lab`'s own under /run for its vipds' pins (after
/// sweeping those of dead test processes) and returns its path. vipd runs
/// under `ip netns exec`, which mounts a fresh /sys and so hides
/// /sys/fs/bpf; namespaced mounts inherit /run, so the folder is visible to
/// every vipd the lab starts and shared with no other lab.
pub(crate) fn mount_pins(lab: &Lab) -> PathBuf {
    sweep_stale_pins();
    let pin_root =
        PathBuf::from("/run").join(format!("{}-bpf", lab.switch_ns().trim_end_matches("-sw")));
    std::fs::create_dir_all(&pin_root).expect("create the pin folder");
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&pin_root)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount -t bpf at {}: {}",
        pin_root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    pin_root
}

/// Undoes [`mount_pins`]: unmounting the lab's bpffs drops the pins, so the
/// program detaches once vipd (killed next, with the namespaces) lets go;
/// the sysctl records under /run/vipd have no meaning without them.
pub(crate) fn release_pins(pin_root: &std::path::Path) {
    unmount_pins(pin_root);
    if let Ok(entries) = std::fs::read_dir("/run/vipd") {
        let tag: String = pin_root.to_string_lossy().replace('/', "_");
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&tag) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn unmount_pins(dir: &std::path::Path) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(dir)
        .output();
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("removing {}: {e}", dir.display());
    }
}

/// Pin mounts of labs whose test process died (/run/vt-<pid>-<n>-bpf).
fn sweep_stale_pins() {
    let Ok(entries) = std::fs::read_dir("/run") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with("-bpf") {
            continue;
        }
        let Some(pid) = name
            .strip_prefix("vt-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            unmount_pins(&e.path());
        }
    }
}
