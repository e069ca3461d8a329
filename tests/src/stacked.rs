//! A stacked control plane in namespaces, as the DaemonSet deploys it: three
//! nodes (`be1`..`be3`), each running an apiserver stand-in AND vipd, every
//! vipd reading the very same file (deploy/configmap.yaml's shape): no
//! interface, no MACs, no `local:`, no priority, no `nodes:` entry, metrics
//! on `node:9590`. Each node works its values out itself: the interface
//! holding its address on the backends' subnet, its own apiserver (the
//! backend with its address), the other nodes' MACs (neighbour table), its
//! VRRP priority from the order of the backends (be1 200, be2 190, be3 180),
//! its metrics address. The master forwards mode dsr to the other nodes'
//! apiservers by MAC; each of them takes the VIP locally (vipd puts it on
//! `lo` with arp_ignore/arp_announce) and answers the client directly.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use crate::{
    certs::TestPki,
    netns::{Lab, Proc, VIP_V4, VIP_V6, in_netns},
    scenario::{
        BACKENDS, LbLab, PORT, flood_off, mount_pins, release_pins, spawn_vipd,
        start_standin_version,
    },
    standin::{HttpsConn, StandinHandle, client_config},
};

/// Where every node's vipd serves status and metrics (`metrics_listen:
/// node:9590`, the node's own address).
pub const METRICS_PORT: u16 = 9590;

/// client and three stacked control-plane nodes be1..be3.
pub struct StackedLab {
    pub lab: Lab,
    pub pki: TestPki,
    /// The one file every node reads.
    pub config_path: PathBuf,
    pin_root: PathBuf,
    /// vipd per node, in [`BACKENDS`] order.
    pub vipds: Vec<Proc>,
    /// The stand-ins, in [`BACKENDS`] order; `None` once stopped.
    pub standins: Vec<Option<StandinHandle>>,
}

impl StackedLab {
    /// Builds the lab, writes the one file and starts vipd on every node
    /// from it (XDP in skb mode); returns once all three say they are ready.
    pub fn start(hint: &str) -> StackedLab {
        Self::start_with(hint, "", |_, _| ()).0
    }

    /// [`StackedLab::start`] with `extra` appended to the one file, and
    /// `before` run once the nodes and the stand-ins are up, before any
    /// vipd starts (e.g. the etcd members the file's `snapshot:` names),
    /// whose result comes back with the lab (declared after it, so dropped
    /// before it).
    pub fn start_with<T>(
        hint: &str,
        extra: &str,
        before: impl FnOnce(&Lab, &TestPki) -> T,
    ) -> (StackedLab, T) {
        let mut nodes = vec!["client"];
        nodes.extend(BACKENDS);
        let lab = Lab::new(hint, &nodes);
        let pki = TestPki::new();
        let ca_path = lab.dir().join("ca.crt");
        std::fs::write(&ca_path, pki.ca_pem()).expect("write CA");
        let mut standins = vec![];
        for be in BACKENDS {
            // Every node may be master: none floods (see `flood_off`).
            flood_off(&lab, be);
            let ips = [
                IpAddr::V4(lab.node(be).ipv4),
                IpAddr::V4(VIP_V4),
                IpAddr::V6(VIP_V6),
            ];
            standins.push(Some(start_standin_version(
                &lab,
                &pki,
                be,
                &ips,
                crate::standin::GIT_VERSION,
            )));
        }
        let made = before(&lab, &pki);
        let config_path = lab.dir().join("vipd.yaml");
        let file = one_file(&lab, &ca_path) + extra;
        std::fs::write(&config_path, file).expect("write vipd config");
        let pin_root = mount_pins(&lab);
        let vipds = BACKENDS
            .iter()
            .map(|be| {
                // Pins in a folder per node (each attaches to an `eth0`).
                let pins = pin_root.join(be);
                std::fs::create_dir_all(&pins).expect("create a node's pin folder");
                spawn_vipd(&lab, be, &config_path, &pins, None)
            })
            .collect();
        (
            StackedLab {
                lab,
                pki,
                config_path,
                pin_root,
                vipds,
                standins,
            },
            made,
        )
    }

    /// The vipd on `node` (`be1`..`be3`).
    pub fn vipd(&self, node: &str) -> &Proc {
        &self.vipds[index(node)]
    }

    /// Stops `node`'s apiserver stand-in (its listener closes, its
    /// connections end): the apiserver process dies, vipd there lives on.
    pub fn stop_apiserver(&mut self, node: &str) {
        if let Some(s) = self.standins[index(node)].take() {
            s.stop();
        }
    }

    /// The `vipd status` snapshot of `node`'s vipd, from its own address.
    pub fn try_status_of(&self, node: &str) -> Result<vip_userspace::status::Status, String> {
        let n = self.lab.node(node);
        let at = SocketAddr::new(n.ipv4.into(), METRICS_PORT);
        in_netns(&n.ns.clone(), || {
            vip_userspace::status::fetch(at, Duration::from_secs(3)).map(|(s, _)| s)
        })
        .map_err(|e| e.to_string())
    }

    /// `n` new TLS connections to the IPv4 VIP from the client, each asking
    /// GET /whoami: the answering node per connection, or the error.
    pub fn ask_vip(&self, n: usize) -> Vec<Result<String, String>> {
        let cfg = client_config(&self.pki.ca_pem(), None);
        let ns = self.lab.node("client").ns.clone();
        in_netns(&ns, || {
            (0..n)
                .map(|_| {
                    HttpsConn::connect(
                        LbLab::vip_addr(false),
                        "kubernetes",
                        cfg.clone(),
                        Duration::from_secs(3),
                    )
                    .and_then(|mut c| c.get("/whoami"))
                    .map_err(|e| format!("{e:?}"))
                    .and_then(|r| match r.status {
                        200 => Ok(r.text().trim().to_owned()),
                        s => Err(format!("status {s}: {}", r.text())),
                    })
                })
                .collect()
        })
    }

    /// The nodes that answered `n` new connections through the VIP, or the
    /// first failure.
    pub fn answering(&self, n: usize) -> Result<BTreeSet<String>, String> {
        self.ask_vip(n).into_iter().collect()
    }

    /// Every node's vipd log, for failure messages.
    pub fn logs(&self) -> String {
        BACKENDS
            .iter()
            .zip(&self.vipds)
            .map(|(be, p)| format!("--- vipd on {be} ---\n{}", p.logs()))
            .collect()
    }
}

impl Drop for StackedLab {
    fn drop(&mut self) {
        release_pins(&self.pin_root);
    }
}

fn index(node: &str) -> usize {
    BACKENDS
        .iter()
        .position(|b| *b == node)
        .unwrap_or_else(|| panic!("{node} is not a node of the stacked lab"))
}

/// The one file: both VIPs in mode dsr in front of the three nodes'
/// apiservers, probed over TLS with the lab's CA; nothing that names or
/// differs per node.
pub fn one_file(lab: &Lab, ca: &std::path::Path) -> String {
    let mut cfg = format!(
        "# Written by vip_tests::stacked: the same bytes on every node\n\
         xdp_mode: skb\nmetrics_listen: node:{METRICS_PORT}\nvrrp: {{ vrid: 51 }}\nservices:\n"
    );
    for vip in [IpAddr::V4(VIP_V4), IpAddr::V6(VIP_V6)] {
        cfg.push_str(&format!(
            "  - vip: \"{vip}\"\n    port: {PORT}\n    mode: dsr\n    probe: {{ ca: \"{}\" }}\n    backends:\n",
            ca.display()
        ));
        for be in BACKENDS {
            let addr = lab.node(be).ip(vip.is_ipv6());
            cfg.push_str(&format!("      - address: \"{addr}\"\n"));
        }
    }
    cfg
}
