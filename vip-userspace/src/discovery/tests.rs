//! The merge of discovered apiservers into the file's services.

use std::path::Path;

use super::*;

const FILE: &str = r#"
interface: eth0
hold_vips: true
services:
  - vip: 10.0.0.100
    mode: dsr
    backends_from: kubernetes
    probe: { ca: /etc/kubernetes/pki/ca.crt }
    backends:
      - address: 10.0.0.11
        mac: "02:00:00:00:00:11"
      - address: 10.0.0.12
  - vip: fd00::100
    mode: dsr
    backends_from: kubernetes
    probe: { ca: /etc/kubernetes/pki/ca.crt }
    backends: []
  - vip: 10.0.0.101
    port: 8443
    mode: nat
    backends:
      - address: 10.0.0.50
"#;

fn file() -> Config {
    Config::parse(Path::new("vipd.yaml"), FILE).expect("valid")
}

fn a(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn addrs(c: &Config, i: usize) -> Vec<String> {
    c.services[i]
        .backends
        .iter()
        .map(|b| c.services[i].backend_addr(b).to_string())
        .collect()
}

#[test]
fn nothing_known_keeps_the_files_list() {
    let c = merge(&file(), &Admission::default(), false);
    assert_eq!(c, file());
}

#[test]
fn the_admitted_set_replaces_the_seed_and_keeps_its_overrides() {
    let ad = Admission::with([a("10.0.0.11:6443"), a("10.0.0.14:7443")]);
    let c = merge(&file(), &ad, false);
    assert_eq!(addrs(&c, 0), ["10.0.0.11:6443", "10.0.0.14:7443"]);
    // The seed's override stays with its address; the port is the slice's.
    assert_eq!(c.services[0].backends[0].mac, Some([2, 0, 0, 0, 0, 0x11]));
    assert_eq!(c.services[0].backends[0].port, None);
    assert_eq!(c.services[0].backends[1].port, Some(7443));
    // The v6 service knows nothing yet; the static service is untouched.
    assert!(c.services[1].backends.is_empty());
    assert_eq!(addrs(&c, 2), ["10.0.0.50:8443"]);
}

#[test]
fn candidates_are_merged_only_for_their_probes() {
    let mut ad = Admission::with([a("10.0.0.11:6443")]);
    let step = ad.discovered(
        Family::V6,
        &Found::Set([a("[fd00::11]:6443")].into_iter().collect()),
    );
    assert_eq!(step.vet, [a("[fd00::11]:6443")]);
    assert!(merge(&file(), &ad, false).services[1].backends.is_empty());
    assert_eq!(addrs(&merge(&file(), &ad, true), 1), ["[fd00::11]:6443"]);
}

#[test]
fn families_ports_and_the_names_a_candidate_needs() {
    let (f, port) = families(&file());
    assert_eq!(f, BTreeSet::from([Family::V4, Family::V6]));
    assert_eq!(port, 6443);
    assert_eq!(
        wanted_names(&file(), a("10.0.0.14:6443")),
        [SanName::Ip("10.0.0.100".parse().expect("vip"))]
    );
}

#[test]
fn the_config_refuses_discovery_that_nothing_reads_and_bad_servers() {
    let parse = |t: &str| Config::parse(Path::new("vipd.yaml"), t);
    let unused = FILE.replace("    backends_from: kubernetes\n", "")
        + "discovery: { kubeconfig: /etc/kubernetes/admin.conf }\n";
    let e = parse(&unused).expect_err("unused").to_string();
    assert!(e.contains("add `backends_from: kubernetes`"), "{e}");
    let bad = format!("{FILE}discovery: {{ servers: [\"10.0.0.11:6443\"] }}\n");
    let e = parse(&bad).expect_err("no scheme").to_string();
    assert!(
        e.contains("discovery.servers[0]") && e.contains("https://10.0.0.11:6443"),
        "{e}"
    );
    let rel = format!("{FILE}discovery: {{ cache: backends.json }}\n");
    let e = parse(&rel).expect_err("relative").to_string();
    assert!(
        e.contains("discovery.cache") && e.contains("absolute"),
        "{e}"
    );
    let typo = FILE.replacen("backends_from: kubernetes", "backends_from: consul", 1);
    let e = parse(&typo).expect_err("unknown source").to_string();
    assert!(
        e.contains("backends_from") && e.contains("kubernetes"),
        "{e}"
    );
    let ok = format!(
        "{FILE}discovery:\n  kubeconfig: /etc/kubernetes/admin.conf\n  servers: [\"https://127.0.0.1:6443\", \"https://10.0.0.100:6443\"]\n  tls_name: kubernetes\n"
    );
    let c = parse(&ok).expect("valid");
    let d = c.discovery().expect("used");
    assert_eq!(d.cache, Path::new(crate::config::DEFAULT_DISCOVERY_CACHE));
    assert_eq!(d.servers.len(), 2);
    // Absent `discovery:` with a backends_from service: the defaults.
    assert_eq!(
        file().discovery(),
        Some(crate::config::DiscoverySettings::default())
    );
}
