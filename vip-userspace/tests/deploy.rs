//! The files in deploy/ against vipd itself (no root needed): every manifest
//! parses; the DaemonSet and the static pod run unprivileged with exactly
//! the capability set below, on the host network, with bpffs mounted where
//! `--pin-dir` points and probes where the config serves /healthz and
//! /readyz; the ConfigMap's files are valid vipd configs that fit together;
//! the systemd unit passes `systemd-analyze verify` and grants the same set;
//! every `vipd_*` metric, label and label value the dashboard and the alert
//! rules use exists in vipd's real metrics registry; every alert says what
//! to do and links a README section that exists.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use vip_userspace::{
    agent::telemetry::Telemetry,
    config::{Config, MetricsListen, NodeFacts, node::Interface, parse_duration},
    controller::metrics::{BackendState, ServiceLabel},
    dataplane::metrics::CounterSource,
    metrics::BackendLabel,
    probe::{Failure, Outcome},
    vrrp::{Family, machine::State, router},
};

/// The capabilities vipd needs, found by running it with fewer (README
/// "Deploying", "Capabilities"; tests/tests/capabilities.rs repeats it on
/// every `cargo xtask test`): without BPF no map is created, without
/// NET_ADMIN the XDP program does not load (nor attach, nor the VIP get
/// added), without PERFMON the verifier refuses the program's packet-pointer
/// arithmetic, without NET_RAW VRRP cannot open its raw socket. Nothing else
/// is needed: not SYS_ADMIN, SYS_RESOURCE, DAC_OVERRIDE nor NET_BIND_SERVICE.
const CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "NET_RAW", "PERFMON"];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn deploy(file: &str) -> PathBuf {
    root().join("deploy").join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(file: &str) -> Yaml {
    let path = deploy(file);
    serde_yaml_ng::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v:?}"))
}

fn seq<'a>(v: &'a Yaml, what: &str) -> &'a [Yaml] {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: not a list: {v:?}"))
}

// ---------------------------------------------------------------------------
// Every file parses.

#[test]
fn every_file_in_deploy_parses() {
    let mut seen = BTreeSet::new();
    for e in std::fs::read_dir(root().join("deploy")).expect("deploy/ exists") {
        let path = e.expect("dir entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = read(&path);
        match path.extension().and_then(|x| x.to_str()) {
            Some("yaml" | "yml") => {
                let v: Yaml = serde_yaml_ng::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(v.is_mapping(), "{name}: not a YAML mapping");
            }
            Some("json") => {
                let v: Json = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(v.is_object(), "{name}: not a JSON object");
            }
            _ => {}
        }
        seen.insert(name);
    }
    for want in [
        "kubeadm-static-pod.yaml",
        "daemonset.yaml",
        "configmap.yaml",
        "vipd.service",
        "grafana-dashboard.json",
        "prometheus-alerts.yaml",
        "Containerfile",
    ] {
        assert!(seen.contains(want), "deploy/{want} is missing");
    }
}

// ---------------------------------------------------------------------------
// The pods.

/// `privileged: true` anywhere in the document.
fn find_privileged(v: &Yaml, path: &str, out: &mut Vec<String>) {
    match v {
        Yaml::Mapping(m) => {
            for (k, v) in m {
                let k = k.as_str().unwrap_or("?");
                if k == "privileged" && v.as_bool() != Some(false) {
                    out.push(format!("{path}.{k} = {v:?}"));
                }
                find_privileged(v, &format!("{path}.{k}"), out);
            }
        }
        Yaml::Sequence(xs) => {
            for (i, x) in xs.iter().enumerate() {
                find_privileged(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn normalized_caps(v: &Yaml, what: &str) -> BTreeSet<String> {
    seq(v, what)
        .iter()
        .map(|c| s(c, what).trim_start_matches("CAP_").to_owned())
        .collect()
}

/// What a pod's vipd container is checked against.
struct PodExpect {
    /// Where /healthz and /readyz are served.
    metrics: SocketAddr,
    /// `httpGet.host` the probes must name (`None`: the pod IP, which for a
    /// hostNetwork pod is the node's address).
    probe_host: Option<&'static str>,
    /// The longest VRRP advert interval of the configs the pod runs.
    advert: Duration,
}

/// The value after `flag` in `args`.
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

/// The checks the DaemonSet and the static pod share; returns the
/// container's args and the pod's volumes by name.
fn check_pod<'a>(
    file: &str,
    doc: &Yaml,
    spec: &'a Yaml,
    want: &PodExpect,
) -> (Vec<String>, BTreeMap<&'a str, &'a Yaml>) {
    let mut privileged = vec![];
    find_privileged(doc, file, &mut privileged);
    assert!(
        privileged.is_empty(),
        "{file}: privileged is set: {privileged:?}"
    );
    assert_eq!(
        spec["hostNetwork"].as_bool(),
        Some(true),
        "{file}: hostNetwork"
    );
    assert_eq!(
        spec["priorityClassName"].as_str(),
        Some("system-node-critical"),
        "{file}: priorityClassName"
    );
    // The SIGTERM handover takes at most 3 advert intervals, capped at
    // router::HANDOVER_MAX, then the VIPs are removed and sysctls restored:
    // 10 s for that and the process exit.
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("{file}: terminationGracePeriodSeconds"));
    assert!(
        Duration::from_secs(grace)
            >= (want.advert * 3).min(router::HANDOVER_MAX) + Duration::from_secs(10),
        "{file}: terminationGracePeriodSeconds {grace} is too short for a handover at {:?} adverts",
        want.advert
    );

    let containers = seq(&spec["containers"], "containers");
    assert_eq!(containers.len(), 1, "{file}: one container");
    let c = &containers[0];
    assert_eq!(
        seq(&c["command"], "command")
            .iter()
            .map(|x| s(x, "command"))
            .collect::<Vec<_>>(),
        ["/usr/local/bin/vipd"],
        "{file}: command"
    );
    let args: Vec<String> = seq(&c["args"], "args")
        .iter()
        .map(|x| s(x, "args").to_owned())
        .collect();
    assert!(args.iter().any(|a| a == "run"), "{file}: `vipd run`");

    let sc = &c["securityContext"];
    assert_eq!(
        sc["privileged"].as_bool(),
        Some(false),
        "{file}: privileged"
    );
    assert_eq!(
        sc["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "{file}: allowPrivilegeEscalation"
    );
    assert_eq!(
        sc["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{file}: readOnlyRootFilesystem"
    );
    // The added capabilities reach the process only as uid 0.
    assert_eq!(sc["runAsUser"].as_u64(), Some(0), "{file}: runAsUser");
    assert_eq!(
        normalized_caps(&sc["capabilities"]["drop"], "drop"),
        BTreeSet::from(["ALL".to_owned()]),
        "{file}: capabilities.drop"
    );
    assert_eq!(
        normalized_caps(&sc["capabilities"]["add"], "add"),
        CAPABILITIES.iter().map(|c| (*c).to_owned()).collect(),
        "{file}: capabilities.add must be exactly the set vipd needs"
    );

    // No CPU limit (throttling delays VRRP adverts); a memory limit that
    // leaves room for the BPF maps charged to the pod.
    let res = &c["resources"];
    assert!(res["limits"]["cpu"].is_null(), "{file}: a CPU limit");
    assert!(
        res["limits"]["memory"].as_str().is_some(),
        "{file}: no memory limit"
    );

    // Volumes and mounts, joined by name: mount path -> volume.
    let volumes: BTreeMap<&str, &Yaml> = seq(&spec["volumes"], "volumes")
        .iter()
        .map(|v| (s(&v["name"], "volume name"), v))
        .collect();
    let mounts: BTreeMap<String, (&Yaml, &Yaml)> = seq(&c["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| {
            let name = s(&m["name"], "mount name");
            let vol = volumes
                .get(name)
                .unwrap_or_else(|| panic!("{file}: mount of unknown volume {name}"));
            (s(&m["mountPath"], "mountPath").to_owned(), (m, *vol))
        })
        .collect();
    let host_mount = |host: &str| {
        mounts
            .iter()
            .find(|(_, (_, v))| v["hostPath"]["path"].as_str() == Some(host))
            .map(|(p, (m, _))| (p.as_str(), *m))
            .unwrap_or_else(|| panic!("{file}: hostPath {host} is not mounted"))
    };

    // bpffs, and --pin-dir inside it: the pins must survive the container.
    let (bpf_at, _) = host_mount("/sys/fs/bpf");
    let pin = arg(&args, "--pin-dir").unwrap_or_else(|| panic!("{file}: no --pin-dir"));
    assert!(
        Path::new(pin).starts_with(bpf_at) && pin != bpf_at,
        "{file}: --pin-dir {pin} is not inside the bpffs mount {bpf_at}"
    );
    // The runtimes' AppArmor profile denies writes under /sys/fs/[^c]*.
    assert!(
        !bpf_at.starts_with("/sys/"),
        "{file}: bpffs mounted at {bpf_at}, where AppArmor denies pinning"
    );
    let (run_at, _) = host_mount("/run/vipd");
    assert_eq!(run_at, "/run/vipd", "{file}: the sysctl record folder");
    // The cluster CA where the probes look for it by default, read-only.
    let (ca_at, ca_mount) = host_mount("/etc/kubernetes/pki/ca.crt");
    assert_eq!(ca_at, "/etc/kubernetes/pki/ca.crt", "{file}: CA mount path");
    assert_eq!(
        ca_mount["readOnly"].as_bool(),
        Some(true),
        "{file}: CA readOnly"
    );
    assert!(
        !mounts
            .values()
            .any(|(_, v)| v["hostPath"]["path"].as_str() == Some("/etc/kubernetes/pki")),
        "{file}: the whole pki folder (with private keys) is mounted"
    );
    // The config file lies in a mounted folder (not a single-file mount,
    // which would hide an editor's replacement of the file).
    let config = arg(&args, "--config").unwrap_or_else(|| panic!("{file}: no --config"));
    let config_dir = Path::new(config).parent().expect("config folder");
    assert!(
        mounts.contains_key(config_dir.to_str().expect("utf-8")),
        "{file}: the config folder {} is not a mount",
        config_dir.display()
    );

    // Liveness on /healthz, readiness on /readyz, where vipd serves them.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{file}: {probe} path");
        assert_eq!(
            get["port"].as_u64(),
            Some(u64::from(want.metrics.port())),
            "{file}: {probe} port is not metrics_listen's ({})",
            want.metrics
        );
        assert_eq!(
            get["host"].as_str(),
            want.probe_host,
            "{file}: {probe} host"
        );
    }
    (args, volumes)
}

fn advert_of(cfg: &Config) -> Duration {
    cfg.vrrp
        .as_ref()
        .map(|v| v.advert_interval)
        .unwrap_or_default()
}

/// The ConfigMap's one file, validated by vipd's own config loader: its key
/// and the config.
fn configmap_config() -> (Yaml, String, Config) {
    let doc = yaml("configmap.yaml");
    assert_eq!(doc["kind"].as_str(), Some("ConfigMap"));
    assert_eq!(doc["metadata"]["namespace"].as_str(), Some("kube-system"));
    let data = doc["data"]
        .as_mapping()
        .expect("configmap.yaml: data")
        .clone();
    assert_eq!(
        data.len(),
        1,
        "configmap.yaml: one key, read by every node (issue 16)"
    );
    let (k, v) = data.iter().next().expect("one key");
    let key = s(k, "data key").to_owned();
    let text = s(v, &key);
    // Nothing a node would have to edit: no MACs, no `local:`, no interface.
    for per_node in ["mac:", "local:", "interface:"] {
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with(per_node)),
            "configmap.yaml: {key} sets {per_node}, which differs per node; vipd derives it"
        );
    }
    let cfg = Config::parse(Path::new(&key), text)
        .unwrap_or_else(|e| panic!("configmap.yaml: {key}: {e}"));
    (doc, key, cfg)
}

/// A control-plane node as the ConfigMap's comment describes them: its
/// apiserver's address on eth0 (a /24), loopback, and a second NIC.
fn cp_node(name: &str, addr: IpAddr) -> NodeFacts {
    NodeFacts {
        name: name.into(),
        interfaces: vec![
            Interface {
                name: "lo".into(),
                addrs: vec![(IpAddr::from([127, 0, 0, 1]), 8)],
            },
            Interface {
                name: "eth0".into(),
                addrs: vec![(addr, 24)],
            },
            Interface {
                name: "eth1".into(),
                addrs: vec![(IpAddr::from([192, 168, 100, 2]), 24)],
            },
        ],
        routes: vec![],
    }
}

#[test]
fn configmap_one_file_resolves_to_values_that_fit_together_on_every_node() {
    let (_, _, cfg) = configmap_config();
    // A DaemonSet pod runs only once an apiserver exists.
    assert!(!cfg.bootstrap, "bootstrap in a DaemonSet config");
    let backends = cfg.backend_addresses();
    assert!(backends.len() >= 2, "a VRRP group needs two nodes or more");
    let mut priorities = BTreeSet::new();
    let mut metrics_ports = BTreeSet::new();
    for (k, addr) in backends.iter().enumerate() {
        let name = format!("cp{}", k + 1);
        let r = cfg
            .resolve(&cp_node(&name, *addr))
            .unwrap_or_else(|e| panic!("{name} ({addr}): {e}"));
        assert_eq!(
            r.interface, "eth0",
            "{name}: the interface on the backends' subnet"
        );
        assert_eq!(
            r.backend_index,
            Some(k),
            "{name}: its own apiserver is backend {k}"
        );
        let p = r
            .priority
            .unwrap_or_else(|| panic!("{name}: no VRRP priority"));
        assert!(priorities.insert(p), "{name}: priority {p} repeated");
        let metrics = r
            .metrics_listen
            .unwrap_or_else(|| panic!("{name}: metrics_listen off: no probes"));
        assert_eq!(
            metrics.ip(),
            *addr,
            "{name}: metrics_listen is not the node's address: the kubelet and \
             Prometheus reach a hostNetwork pod at the node's IP"
        );
        metrics_ports.insert(metrics.port());
        // The node's own address (metrics_listen's) makes its backend the
        // local one, as vipd derives it at start.
        let mut node_cfg = cfg.clone().for_node(&r);
        vip_userspace::neigh::derive_local(&mut node_cfg, &[metrics.ip()]);
        let local = node_cfg.local_backends();
        assert_eq!(local.len(), 1, "{name}: one local backend (this node)");
        assert_eq!(
            local[0].ip(),
            *addr,
            "{name}: the local backend must be this node's address"
        );
    }
    assert_eq!(metrics_ports.len(), 1, "one metrics port");
    // The first backend's node is the preferred master.
    let first = cfg
        .resolve(&cp_node("cp1", backends[0]))
        .expect("cp1")
        .priority;
    assert_eq!(first, priorities.last().copied());
    // A node that is none of the backends and not listed is refused, with
    // the fix.
    let e = cfg
        .resolve(&cp_node("worker9", IpAddr::from([10, 0, 0, 99])))
        .expect_err("an unknown node")
        .to_string();
    assert!(e.contains("nodes:"), "{e}");
}

#[test]
fn daemonset_runs_unprivileged_with_exactly_the_needed_capabilities() {
    let doc = yaml("daemonset.yaml");
    assert_eq!(doc["kind"].as_str(), Some("DaemonSet"));
    assert_eq!(doc["metadata"]["namespace"].as_str(), Some("kube-system"));
    let spec = &doc["spec"]["template"]["spec"];
    let (cm, key, cfg) = configmap_config();
    let port = match cfg.metrics_listen {
        Some(MetricsListen::Node(p)) => p,
        other => panic!("{key}: metrics_listen {other:?}: use node:PORT, the node's address"),
    };
    let advert = advert_of(&cfg);
    let want = PodExpect {
        metrics: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port),
        probe_host: None,
        advert,
    };
    let (args, volumes) = check_pod("daemonset.yaml", &doc, spec, &want);

    assert_eq!(
        spec["dnsPolicy"].as_str(),
        Some("ClusterFirstWithHostNet"),
        "dnsPolicy"
    );
    let ru = &doc["spec"]["updateStrategy"];
    assert_eq!(ru["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(ru["rollingUpdate"]["maxUnavailable"].as_u64(), Some(1));
    // Two vipd on one node would fight over the XDP link and VRRP.
    assert_eq!(ru["rollingUpdate"]["maxSurge"].as_u64(), Some(0));
    // Control-plane nodes: selected and their taint tolerated.
    assert!(
        spec["nodeSelector"]["node-role.kubernetes.io/control-plane"].is_string(),
        "nodeSelector for control-plane nodes"
    );
    assert!(
        seq(&spec["tolerations"], "tolerations")
            .iter()
            .any(|t| t["key"].as_str() == Some("node-role.kubernetes.io/control-plane")),
        "no toleration of the control-plane taint"
    );

    // Every node reads the ConfigMap's one file; NODE_NAME picks its
    // `nodes:` entry.
    let c = &spec["containers"][0];
    let config = arg(&args, "--config").expect("--config");
    assert_eq!(config, format!("/etc/vipd/{key}"));
    assert!(
        seq(&c["env"], "env").iter().any(|e| {
            e["name"].as_str() == Some("NODE_NAME")
                && e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("spec.nodeName")
        }),
        "NODE_NAME from spec.nodeName"
    );
    let config_volume = volumes.get("config").expect("the config volume");
    assert_eq!(
        config_volume["configMap"]["name"].as_str(),
        cm["metadata"]["name"].as_str(),
        "the config volume is not deploy/configmap.yaml's ConfigMap"
    );
    // Scraping: the named port and the annotation say the same port.
    assert!(
        seq(&c["ports"], "ports")
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(u64::from(port))),
        "containerPort {port}"
    );
    assert_eq!(
        doc["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
}

#[test]
fn static_pod_runs_unprivileged_with_the_same_set_and_host_config() {
    let doc = yaml("kubeadm-static-pod.yaml");
    assert_eq!(doc["kind"].as_str(), Some("Pod"));
    assert_eq!(doc["metadata"]["namespace"].as_str(), Some("kube-system"));
    // The config the static pod is documented with: metrics_listen default.
    let example = root().join("examples/kubeadm-minimal.yaml");
    let cfg = Config::parse(&example, &read(&example)).expect("kubeadm-minimal.yaml is valid");
    let metrics = cfg
        .metrics_listen
        .and_then(MetricsListen::addr)
        .expect("metrics on an address");
    assert!(
        metrics.ip().is_loopback(),
        "the static pod's probes assume the loopback default"
    );
    let want = PodExpect {
        metrics,
        probe_host: Some("127.0.0.1"),
        advert: advert_of(&cfg),
    };
    let spec = &doc["spec"];
    let (args, volumes) = check_pod("kubeadm-static-pod.yaml", &doc, spec, &want);
    assert_eq!(arg(&args, "--config"), Some("/etc/vipd/vipd.yaml"));
    let config_volume = volumes.get("config").expect("the config volume");
    // Static pods cannot use ConfigMaps.
    assert_eq!(
        config_volume["hostPath"]["path"].as_str(),
        Some("/etc/vipd")
    );
    assert_eq!(
        doc["spec"]["containers"][0]["image"],
        yaml("daemonset.yaml")["spec"]["template"]["spec"]["containers"][0]["image"],
        "the static pod and the DaemonSet run different images"
    );
}

// ---------------------------------------------------------------------------
// The systemd unit.

fn unit() -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(&deploy("vipd.service")).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = sec.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("vipd.service: {line:?}"));
        out.entry((section.clone(), k.to_owned()))
            .or_default()
            .push(v.to_owned());
    }
    out
}

#[test]
fn systemd_unit_grants_the_same_set_and_keeps_what_vipd_needs() {
    let u = unit();
    let one = |sec: &str, key: &str| -> String {
        let v = u
            .get(&(sec.to_owned(), key.to_owned()))
            .unwrap_or_else(|| panic!("vipd.service: no {key}= in [{sec}]"));
        assert_eq!(v.len(), 1, "vipd.service: {key}= more than once");
        v[0].clone()
    };
    let caps: BTreeSet<String> = CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let got: BTreeSet<String> = one("Service", key)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        assert_eq!(got, caps, "vipd.service: {key}");
    }
    assert_eq!(one("Unit", "Before"), "kubelet.service");
    assert!(one("Unit", "After").contains("network-online.target"));
    assert!(one("Unit", "Wants").contains("network-online.target"));
    assert_eq!(one("Service", "Restart"), "always");
    assert_eq!(one("Service", "ExecReload"), "/bin/kill -HUP $MAINPID");
    let exec: Vec<String> = one("Service", "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[..2], ["/usr/local/bin/vipd", "run"]);
    assert_eq!(arg(&exec, "--config"), Some("/etc/vipd/vipd.yaml"));
    assert!(arg(&exec, "--pin-dir").is_some_and(|p| p.starts_with("/sys/fs/bpf/")));
    let stop = parse_duration(&one("Service", "TimeoutStopSec")).expect("TimeoutStopSec");
    assert!(stop >= Duration::from_secs(10), "TimeoutStopSec too short");
    // The sysctl record must outlive a stop for `vipd detach`.
    assert_eq!(one("Service", "RuntimeDirectory"), "vipd");
    assert_eq!(one("Service", "RuntimeDirectoryPreserve"), "yes");
    // The socket families vipd opens.
    let families: BTreeSet<String> = one("Service", "RestrictAddressFamilies")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for f in ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"] {
        assert!(families.contains(f), "RestrictAddressFamilies lacks {f}");
    }
    // Hardening that would break vipd: read-only /proc/sys and /sys (mode
    // nat's sysctls, the pins), a hidden /proc/sys, no network.
    for (key, bad) in [
        ("ProtectKernelTunables", "yes"),
        ("ProcSubset", "pid"),
        ("PrivateNetwork", "yes"),
    ] {
        assert!(
            u.get(&("Service".to_owned(), key.to_owned()))
                .is_none_or(|v| v.iter().all(|x| x != bad)),
            "vipd.service: {key}={bad} breaks vipd"
        );
    }
}

/// `systemd-analyze verify` on the unit, with ExecStart pointing at the
/// vipd cargo built (verify checks that the binary exists). Any warning
/// about the unit fails the test, as does a missing systemd-analyze.
#[test]
fn systemd_analyze_verifies_the_unit() {
    let dir = std::env::temp_dir().join(format!("vipd-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let text =
        read(&deploy("vipd.service")).replace("/usr/local/bin/vipd", env!("CARGO_BIN_EXE_vipd"));
    let unit = dir.join("vipd.service");
    std::fs::write(&unit, text).expect("write unit");
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.unwrap_or_else(|e| {
        panic!("systemd-analyze: {e}; install systemd (apt-get install systemd)")
    });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
    let about_us: Vec<&str> = said.lines().filter(|l| l.contains("vipd")).collect();
    assert!(
        about_us.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        about_us.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Metrics: the registry.

/// One metric family: its type and, for families the test gives series,
/// the labels and label values seen.
#[derive(Debug, Default)]
struct FamilyInfo {
    kind: String,
    /// `None`: no series to learn the labels from (checked by name only).
    labels: Option<BTreeMap<String, BTreeSet<String>>>,
}

impl FamilyInfo {
    fn samples(name: &str, kind: &str) -> Vec<String> {
        match kind {
            "counter" => vec![format!("{name}_total")],
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|x| format!("{name}{x}"))
                .collect(),
            _ => vec![name.to_owned()],
        }
    }
}

/// vipd's registry: every family with its type (`Metrics::families`, as
/// the text encoding leaves out families without series), and the labels
/// and values of one series per label value the agent can produce, from the
/// same sources the agent uses (States, DISCARD_LABELS, probe outcomes,
/// datapath reasons). A family this function does not fill is checked by
/// name only.
fn registry() -> BTreeMap<String, FamilyInfo> {
    /// The program's counters: every one at 1.
    struct Ones;
    impl CounterSource for Ones {
        fn reasons(&self) -> vip_userspace::dataplane::Result<Vec<vip_common::Counter>> {
            Ok(vec![
                vip_common::Counter {
                    packets: 1,
                    bytes: 1
                };
                vip_common::REASON_COUNT as usize
            ])
        }
        fn backend(&self, _: u32) -> vip_userspace::dataplane::Result<vip_common::BackendStats> {
            Ok(vip_common::BackendStats {
                packets: 1,
                bytes: 1,
                new_flows: 1,
                rsts: 1,
            })
        }
    }
    let (t, m) = Telemetry::new();
    let be: SocketAddr = "10.0.0.11:6443".parse().expect("addr");
    let bl = BackendLabel {
        backend: be.to_string(),
    };
    // Each router's series: every state, preemption and discard reason.
    let routers: Vec<_> = [Family::V4, Family::V6]
        .into_iter()
        .map(|f| {
            let r = t.vrrp.router(f, vip_userspace::vrrp::Priority(100));
            r.set_state(State::Master);
            r.failover(0.36);
            for c in [
                &r.became_master,
                &r.left_master,
                &r.adverts_sent,
                &r.adverts_received,
                &r.split_brain,
                &r.preempted_by_us,
                &r.preempted_by_peer,
            ] {
                c.inc();
            }
            r.discards.iter().for_each(|c| {
                c.inc();
            });
            r
        })
        .collect();
    drop(routers);
    // The states the controller's metrics export.
    for st in vip_userspace::controller::BackendHealth::ALL {
        t.backends
            .state
            .get_or_create(&BackendState {
                backend: be.to_string(),
                state: st.label().to_owned(),
            })
            .set(1);
    }
    t.backends.serving.get_or_create(&bl).set(1);
    for o in [
        Outcome::Up,
        Outcome::AuthRefused(401),
        Outcome::Fail(Failure::Timeout),
        Outcome::Fail(Failure::Refused),
        Outcome::Fail(Failure::Connect(String::new())),
        Outcome::Fail(Failure::Tls(String::new())),
        Outcome::Fail(Failure::Status(503)),
        Outcome::Fail(Failure::Protocol(String::new())),
    ] {
        t.probes.probe(be, &o, Duration::from_millis(5));
    }
    t.dataplane.read_from(std::sync::Arc::new(Ones));
    t.dataplane.set_backends(vec![(be, Some(1))]);
    t.flows.backend_flows.get_or_create(&bl).set(1);
    t.flows.entries.set(1);
    t.flows.capacity.set(262_144);
    t.flows.swept.inc();
    let sync = t.sync.stats(Box::new(|| Some(1)));
    sync.sent.inc();
    sync.received.inc();
    sync.applied.inc();
    t.snapshot.known();
    t.backends.cert_san_ok.get_or_create(&bl).set(1);
    t.backends.cert_expiry.get_or_create(&bl).set(86_400);
    t.backends
        .fail_open
        .get_or_create(&ServiceLabel {
            service: "10.0.0.100:6443".into(),
        })
        .set(0);
    let mut fams: BTreeMap<String, FamilyInfo> = BTreeMap::new();
    for (name, kind) in m.families() {
        let old = fams.insert(
            name.clone(),
            FamilyInfo {
                kind: kind.as_str().to_owned(),
                labels: None,
            },
        );
        assert!(old.is_none(), "{name} registered twice");
    }
    for (name, seen) in parse_exposition(&m.encode()) {
        let f = fams
            .get_mut(&name)
            .unwrap_or_else(|| panic!("{name} is exposed but not in Metrics::families()"));
        assert_eq!(f.kind, seen.kind, "{name}: type");
        f.labels = seen.labels;
    }
    fams
}

/// Families from `# TYPE` lines, labels from the samples.
fn parse_exposition(text: &str) -> BTreeMap<String, FamilyInfo> {
    let mut fams: BTreeMap<String, FamilyInfo> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            fams.entry(name.to_owned()).or_default().kind = kind.to_owned();
        }
    }
    let by_sample = sample_names(&fams);
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let Some(fam) = by_sample.get(&line[..end]) else {
            continue;
        };
        let labels = fams
            .get_mut(fam)
            .expect("known family")
            .labels
            .get_or_insert_with(BTreeMap::new);
        if let Some(inner) = line[end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
            .map(|x| x.0)
        {
            for (k, v) in split_matchers(inner) {
                labels.entry(k).or_default().insert(v);
            }
        }
    }
    fams
}

/// `a="x",b="y"` -> pairs (the exposition's label sets; no operator).
fn split_matchers(inner: &str) -> Vec<(String, String)> {
    matchers(inner)
        .into_iter()
        .map(|(k, _, v)| (k, v))
        .collect()
}

/// `a="x", b=~"y"` -> (label, operator, value), commas inside quotes kept.
fn matchers(inner: &str) -> Vec<(String, String, String)> {
    let mut out = vec![];
    let mut parts = vec![];
    let (mut cur, mut quoted, mut escaped) = (String::new(), false, false);
    for ch in inner.chars() {
        match ch {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    parts.push(cur);
    for p in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let op_at = p
            .find(['=', '!'])
            .unwrap_or_else(|| panic!("matcher {p:?}"));
        let label = p[..op_at].trim().to_owned();
        let rest = &p[op_at..];
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|o| rest.starts_with(o))
            .unwrap_or_else(|| panic!("matcher {p:?}"));
        let value = rest[op.len()..].trim().trim_matches('"').to_owned();
        out.push((label, op.to_owned(), value));
    }
    out
}

/// Sample names the registry exposes, each with its family.
fn sample_names(fams: &BTreeMap<String, FamilyInfo>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, f) in fams {
        for sname in FamilyInfo::samples(name, &f.kind) {
            out.insert(sname, name.clone());
        }
    }
    out
}

#[test]
fn the_registry_is_what_this_test_expects() {
    let fams = registry();
    assert!(fams.len() >= 22, "{} families: {fams:?}", fams.len());
    let samples = sample_names(&fams);
    for want in [
        "vipd_vrrp_became_master_total",
        "vipd_probe_duration_seconds_bucket",
        "vipd_backend_bytes_total",
        "vipd_cert_expiry_seconds",
    ] {
        assert!(samples.contains_key(want), "{want} not in {samples:?}");
    }
    assert_eq!(
        fams["vipd_vrrp_state"].labels.as_ref().expect("labels")["state"],
        ["backup", "initialize", "master"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

// ---------------------------------------------------------------------------
// Metrics: what the dashboard and the alerts use.

/// One PromQL expression's metric selectors: (name, matchers).
type Selectors = Vec<(String, Vec<(String, String, String)>)>;

/// Identifiers followed by `{` or standing alone that look like metrics:
/// every `vipd_*` word, and other words directly followed by `{`.
fn selectors(expr: &str) -> Selectors {
    let b = expr.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut out = vec![];
    let mut i = 0;
    let mut quoted = false;
    while i < b.len() {
        if b[i] == b'"' {
            quoted = !quoted;
            i += 1;
            continue;
        }
        if quoted || !word(b[i]) || (i > 0 && (word(b[i - 1]) || b[i - 1] == b'$')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && word(b[i]) {
            i += 1;
        }
        let name = &expr[start..i];
        let mut j = i;
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        let braced = j < b.len() && b[j] == b'{';
        if !(name.starts_with("vipd_") || braced) {
            continue;
        }
        let mut ms = vec![];
        if braced {
            let close = expr[j..].find('}').expect("closing brace") + j;
            ms = matchers(&expr[j + 1..close]);
            i = close + 1;
        }
        out.push((name.to_owned(), ms));
    }
    out
}

/// Label lists after `by`, `without`, `on`, `ignoring`, `group_left`...
fn label_lists(expr: &str, keyword: &str) -> Vec<BTreeSet<String>> {
    let mut out = vec![];
    let mut rest = expr;
    while let Some(at) = rest.find(keyword) {
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let after = rest[at + keyword.len()..].trim_start();
        rest = &rest[at + keyword.len()..];
        if !before_ok || !after.starts_with('(') {
            continue;
        }
        let close = after.find(')').expect("closing paren");
        out.push(
            after[1..close]
                .split(',')
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect(),
        );
    }
    out
}

/// The labels an expression's result carries, or `None` where the test
/// cannot tell (a non-vipd metric, a family without known labels).
fn output_labels(expr: &str, fams: &BTreeMap<String, FamilyInfo>) -> Option<BTreeSet<String>> {
    let samples = sample_names(fams);
    let by = label_lists(expr, "by");
    let mut labels: BTreeSet<String> = if by.is_empty() {
        let mut all: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
        for (name, _) in selectors(expr) {
            let fam = samples.get(&name)?;
            all.extend(fams[fam].labels.as_ref()?.keys().cloned());
        }
        all
    } else {
        by.into_iter().flatten().collect()
    };
    for ignored in label_lists(expr, "ignoring").into_iter().flatten() {
        labels.remove(&ignored);
    }
    if expr.contains("histogram_quantile") {
        labels.remove("le");
    }
    Some(labels)
}

/// Checks one PromQL expression against the registry; `where_` names it.
fn check_expr(where_: &str, expr: &str, fams: &BTreeMap<String, FamilyInfo>) -> Vec<String> {
    let samples = sample_names(fams);
    let mut errors = vec![];
    let mut known: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
    known.insert("le".to_owned());
    let mut all_known = true;
    for (name, ms) in selectors(expr) {
        if !name.starts_with("vipd_") {
            all_known = false;
            continue;
        }
        let Some(fam) = samples.get(&name) else {
            errors.push(format!(
                "{where_}: {name} is not a sample vipd exposes (counters end in _total, \
                 histograms in _bucket/_sum/_count)"
            ));
            continue;
        };
        let Some(labels) = &fams[fam].labels else {
            all_known = false;
            continue;
        };
        known.extend(labels.keys().cloned());
        for (label, op, value) in ms {
            if TARGET_LABELS.contains(&label.as_str()) || (label == "le" && fam != &name) {
                continue;
            }
            let Some(values) = labels.get(&label) else {
                errors.push(format!("{where_}: {name} has no label {label:?}"));
                continue;
            };
            // Closed value sets (state, reason, family) are checked for
            // exact matchers: a typo there matches nothing, or everything.
            if (op == "=" || op == "!=") && !values.is_empty() && !values.contains(&value) {
                errors.push(format!(
                    "{where_}: {name}{{{label}{op}{value:?}}}: vipd exports {values:?}"
                ));
            }
        }
    }
    if all_known {
        for kw in ["by", "without", "on", "ignoring"] {
            for l in label_lists(expr, kw).into_iter().flatten() {
                if !known.contains(&l) {
                    errors.push(format!(
                        "{where_}: `{kw} ({l})` but no metric of the expression has {l:?}"
                    ));
                }
            }
        }
    }
    errors
}

/// `{{label}}` in a legend, `$labels.label` in an annotation.
fn template_labels(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (open, stop) in [("{{", "}}"), ("$labels.", "")] {
        let mut rest = text;
        while let Some(at) = rest.find(open) {
            rest = &rest[at + open.len()..];
            let end = if stop.is_empty() {
                rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len())
            } else {
                rest.find(stop).unwrap_or(rest.len())
            };
            let inner = rest[..end].trim();
            if stop.is_empty() || inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.insert(inner.to_owned());
            }
        }
    }
    out
}

/// Every `vipd_*` word in free text must be a family or sample name.
fn check_words(file: &str, text: &str, fams: &BTreeMap<String, FamilyInfo>) -> Vec<String> {
    let samples = sample_names(fams);
    let mut errors = vec![];
    for (i, _) in text.match_indices("vipd_") {
        if i > 0 && text.as_bytes()[i - 1].is_ascii_alphanumeric() {
            continue;
        }
        let word: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !samples.contains_key(&word) && !fams.contains_key(&word) {
            errors.push(format!("{file}: {word} is not a vipd metric"));
        }
    }
    errors
}

fn dashboard() -> Json {
    let path = deploy("grafana-dashboard.json");
    serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Panels, with the panels of collapsed rows.
fn panels(d: &Json) -> Vec<&Json> {
    let mut out = vec![];
    for p in d["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// Grafana variables to something Prometheus parses.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
}

#[test]
fn dashboard_uses_only_metrics_and_labels_vipd_exports() {
    let fams = registry();
    let d = dashboard();
    let mut errors = check_words("grafana-dashboard.json", &d.to_string(), &fams);
    let mut used = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = grafana_to_promql(t["expr"].as_str().expect("expr"));
            let where_ = format!("panel {title:?}");
            errors.extend(check_expr(&where_, &expr, &fams));
            used.extend(selectors(&expr).into_iter().map(|(n, _)| n));
            if let (Some(out), Some(legend)) =
                (output_labels(&expr, &fams), t["legendFormat"].as_str())
            {
                for l in template_labels(legend) {
                    if !out.contains(&l) {
                        errors.push(format!(
                            "{where_}: legend {{{{{l}}}}} but the query's result has {out:?}"
                        ));
                    }
                }
            }
        }
    }
    for v in d["templating"]["list"].as_array().expect("templating") {
        let q = v["query"]["query"].as_str().expect("variable query");
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _)| sel)
            .expect("label_values(selector, label)");
        errors.extend(check_expr("variable", &grafana_to_promql(inner), &fams));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // What the dashboard is for.
    for want in [
        "vipd_vrrp_state",
        "vipd_vrrp_priority",
        "vipd_vrrp_became_master_total",
        "vipd_vrrp_adverts_rejected_total",
        "vipd_vrrp_split_brain_total",
        "vipd_backend_state",
        "vipd_probe_duration_seconds_bucket",
        "vipd_probe_failures_total",
        "vipd_backend_packets_total",
        "vipd_backend_new_flows_total",
        "vipd_backend_rsts_total",
        "vipd_dataplane_packets_total",
        "vipd_conntrack_entries",
        "vipd_conntrack_capacity",
        "vipd_cert_expiry_seconds",
        "vipd_cert_san_ok",
        "vipd_vrrp_failover_duration_seconds_bucket",
    ] {
        assert!(used.contains(want), "the dashboard does not show {want}");
    }
}

#[test]
fn dashboard_takes_its_datasource_as_an_input() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS datasource input"
    );
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: id repeated"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: datasource"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "{title}: target datasource"
            );
        }
    }
    for v in d["templating"]["list"].as_array().expect("variables") {
        assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}");
    }
}

// ---------------------------------------------------------------------------
// Alerts.

/// GitHub's heading anchors in the README.
fn readme_anchors() -> BTreeSet<String> {
    read(&root().join("README.md"))
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// Prometheus durations: `1h30m`, `30s`, `0s`.
fn prom_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit_ms = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            'y' => 365 * 86_400_000,
            _ => return None,
        };
        total += n * unit_ms;
        any = true;
    }
    (any && num.is_empty()).then(|| Duration::from_millis(total))
}

#[test]
fn alerts_use_only_metrics_vipd_exports_and_say_what_to_do() {
    let fams = registry();
    let doc = yaml("prometheus-alerts.yaml");
    let text = read(&deploy("prometheus-alerts.yaml"));
    let mut errors = check_words("prometheus-alerts.yaml", &text, &fams);
    let anchors = readme_anchors();
    let mut names = BTreeSet::new();
    for g in seq(&doc["groups"], "groups") {
        for r in seq(&g["rules"], "rules") {
            let name = s(&r["alert"], "alert").to_owned();
            assert!(names.insert(name.clone()), "{name} twice");
            let expr = s(&r["expr"], "expr");
            errors.extend(check_expr(&name, expr, &fams));
            let for_ = r["for"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no for:"));
            assert!(prom_duration(for_).is_some(), "{name}: for: {for_:?}");
            let sev = r["labels"]["severity"].as_str();
            assert!(
                matches!(sev, Some("warning" | "critical")),
                "{name}: severity {sev:?}"
            );
            let summary = r["annotations"]["summary"].as_str().unwrap_or("");
            let desc = r["annotations"]["description"].as_str().unwrap_or("");
            assert!(!summary.is_empty(), "{name}: no summary");
            assert!(
                desc.len() > 80,
                "{name}: the description must say what to do"
            );
            let link = desc
                .split("README.md#")
                .nth(1)
                .map(|r| {
                    r.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
                        .collect::<String>()
                })
                .unwrap_or_else(|| panic!("{name}: the description names no README section"));
            assert!(
                anchors.contains(&link),
                "{name}: README.md#{link} does not exist"
            );
            if let Some(out) = output_labels(expr, &fams) {
                for l in template_labels(&format!("{summary} {desc}")) {
                    if !out.contains(&l) {
                        errors.push(format!(
                            "{name}: annotations use $labels.{l}, the expression yields {out:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for want in [
        "VipdVipFlapping",
        "VipdNoMaster",
        "VipdMultipleMasters",
        "VipdSplitBrain",
        "VipdBackendDown",
        "VipdCertificateSanMissing",
        "VipdCertificateExpiringSoon",
        "VipdCertificateExpiring",
        "VipdFailOpen",
        "VipdDown",
        "VipdNotReady",
        "VipdConntrackNearlyFull",
    ] {
        assert!(names.contains(want), "no alert {want}");
    }
    // Warn at 30 days, page at 7.
    let thresholds: Vec<&str> = seq(&doc["groups"][0]["rules"], "rules")
        .iter()
        .filter(|r| s(&r["expr"], "expr").contains("vipd_cert_expiry_seconds"))
        .map(|r| s(&r["expr"], "expr"))
        .collect();
    assert!(thresholds.iter().any(|e| e.ends_with("< 30 * 86400")));
    assert!(thresholds.iter().any(|e| e.ends_with("< 7 * 86400")));
}

// ---------------------------------------------------------------------------
// The checks themselves catch what they are for.

#[test]
fn the_checks_catch_wrong_names_labels_and_values() {
    let fams = registry();
    let bad = [
        // a counter without _total
        "rate(vipd_backend_new_flows[5m])",
        // a label the metric does not have
        "vipd_backend_state{reason=\"down\"}",
        // a value vipd never exports
        "vipd_vrrp_state{state=\"MASTER\"}",
        // grouping by a label no metric has
        "sum by (node) (vipd_vrrp_priority)",
        // a metric that does not exist at all
        "vipd_vrrp_masters",
    ];
    for expr in bad {
        assert!(
            !check_expr("probe", expr, &fams).is_empty(),
            "{expr:?} passed the check"
        );
    }
    let good = "sum by (job, family) (vipd_vrrp_state{state=\"master\", job=~\"x\"})";
    assert_eq!(check_expr("probe", good, &fams), Vec::<String>::new());
    assert_eq!(
        output_labels(good, &fams),
        Some(["family", "job"].map(String::from).into_iter().collect())
    );
    assert_eq!(
        output_labels(
            "(vipd_backend_state{state=\"up\"} * 2) + ignoring(state) vipd_backend_state",
            &fams
        ),
        Some(
            ["backend", "instance", "job"]
                .map(String::from)
                .into_iter()
                .collect()
        )
    );
    assert_eq!(prom_duration("1h30m"), Some(Duration::from_secs(5400)));
    assert_eq!(prom_duration("10ms"), Some(Duration::from_millis(10)));
    assert_eq!(prom_duration("5 m"), None);
    assert!(!check_words("x", "see vipd_backend_rst_total", &fams).is_empty());
}
