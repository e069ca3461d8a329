//! `cargo xtask bench e2e`: vipd against HAProxy and against no load balancer
//! at all, end to end through the namespace topology, in one run.
//!
//! Four cases, each with its own lab (client, lb, be1..be3; the same addresses
//! in every lab): `direct` (the client talks to the backends themselves, one
//! after the other), `haproxy` (Debian's HAProxy 2.6 on lb in `mode tcp`,
//! round robin, HTTPS `/readyz` checks), `vipd nat` and `vipd dsr`
//! (the real vipd on lb, XDP native by default). `direct` and `haproxy` share
//! a lab without XDP anywhere.
//!
//! Every backend runs two servers: the apiserver stand-in (TLS, port 6443)
//! and a plain HTTP/1.1 server (port 8080) that answers `GET /` with three
//! bytes and `GET /bulk?bytes=N` with N bytes. The plain server carries most
//! metrics: with a TLS handshake per connection the backends' crypto would
//! dominate a 2-core machine and hide the load balancer's own cost. The TLS
//! connection rate is measured as well, because that is what an apiserver
//! client really does.
//!
//! Metrics, each sample a fixed duration with the same concurrency for every
//! case: new connections per second (connect, one request and response,
//! close), the same over TLS with full handshakes (no resumption, as
//! client-go), request latency on kept-alive connections, one large response
//! body, and CPU on the LB node per request (see [`NOTES`]). Samples are
//! interleaved metric by metric and the case order rotates every round, so a
//! noisy moment of a shared machine hits every case alike; the table shows
//! medians over the samples.

pub mod cpu;
pub mod haproxy;
pub mod load;
pub mod report;
pub mod server;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use rustls::ClientConfig;
use vip_userspace::dataplane::kernel::AttachMode;

use self::cpu::{CpuSource, cpu_delta, snap};
use self::haproxy::{haproxy_available, haproxy_cfg};
use self::load::{Sample, bulk, kept_alive, short_conns, tls_conns};
use self::report::{render_report, report_name};
use self::server::PlainServer;
use crate::attempt;
use crate::certs::TestPki;
use crate::netns::{Lab, Proc, VIP_V4, in_netns};
use crate::scenario::{BACKENDS, Fwd, LbLab, LbOptions, start_standins};
use crate::standin::{StandinHandle, client_config};

/// The plain HTTP server's port on every backend (and on the VIP).
pub const PLAIN_PORT: u16 = 8080;
/// The stand-in's port (TLS).
pub const TLS_PORT: u16 = crate::scenario::PORT;
/// Connect, read and write timeout of the load generator.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A load thread stops after this many errors in one sample: a broken path
/// fails fast instead of spinning through the whole duration.
const MAX_ERRORS: u64 = 200;
/// The plain server's small response.
const SMALL_BODY: &[u8] = b"ok\n";
/// Request heads larger than this close the connection.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds; every case is measured once per metric per round.
    pub rounds: usize,
    /// Length of each rate and latency sample.
    pub duration: Duration,
    /// Client connections (threads) in parallel, the same for every case.
    pub concurrency: usize,
    /// Size of the bulk response body.
    pub bulk_bytes: u64,
    /// How vipd attaches its program.
    pub xdp_mode: AttachMode,
    /// Where the report goes (`<dir>/e2e-<UTC timestamp>.md`).
    pub out_dir: PathBuf,
    /// The cases to set up and measure (all by default): one case alone,
    /// long, is what a profiler (`perf record -a`) needs to see its path.
    pub cases: Vec<CaseKind>,
    /// The metrics to measure (all by default; `--no-tls` leaves out
    /// `Metric::Tls`).
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseKind {
    Direct,
    Haproxy,
    VipdNat,
    VipdDsr,
}

impl CaseKind {
    pub const ALL: [CaseKind; 4] = [
        CaseKind::Direct,
        CaseKind::Haproxy,
        CaseKind::VipdNat,
        CaseKind::VipdDsr,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CaseKind::Direct => "direct",
            CaseKind::Haproxy => "haproxy",
            CaseKind::VipdNat => "vipd nat",
            CaseKind::VipdDsr => "vipd dsr",
        }
    }

    /// `--cases` words: direct, haproxy, nat, dsr.
    pub fn parse(word: &str) -> Option<CaseKind> {
        match word {
            "direct" => Some(CaseKind::Direct),
            "haproxy" => Some(CaseKind::Haproxy),
            "nat" | "vipd-nat" => Some(CaseKind::VipdNat),
            "dsr" | "vipd-dsr" => Some(CaseKind::VipdDsr),
            _ => None,
        }
    }
}

/// Where a case's client connects and whose CPU counts.
#[derive(Clone)]
struct Target {
    client_ns: String,
    /// Plain HTTP addresses, used in turn.
    plain: Vec<SocketAddr>,
    /// TLS addresses, used in turn.
    tls: Vec<SocketAddr>,
    tls_config: Arc<ClientConfig>,
    cpu: CpuSource,
}

/// The metrics, in the order they are measured within a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Short,
    Tls,
    KeptAlive,
    Bulk,
}

impl Metric {
    pub const ALL: [Metric; 4] = [Metric::Short, Metric::Tls, Metric::KeptAlive, Metric::Bulk];

    /// `--metrics` words: conn, tls, kept, bulk.
    pub fn parse(word: &str) -> Option<Metric> {
        match word {
            "conn" | "short" => Some(Metric::Short),
            "tls" => Some(Metric::Tls),
            "kept" | "kept-alive" => Some(Metric::KeptAlive),
            "bulk" => Some(Metric::Bulk),
            _ => None,
        }
    }
}

/// One case's samples, per metric.
#[derive(Default)]
struct Samples {
    short: Vec<Sample>,
    tls: Vec<Sample>,
    kept: Vec<Sample>,
    bulk: Vec<Sample>,
}

struct Case {
    kind: CaseKind,
    target: Option<Target>,
    /// Why the case does not run, or what went wrong.
    failures: Vec<String>,
    samples: Samples,
}

/// The lab of `direct` and `haproxy`: no XDP anywhere, HAProxy on lb with
/// the VIP on its interface.
struct BaseLab {
    // Field order is drop order: processes and servers before the lab.
    haproxy: Option<Proc>,
    _plain: Vec<PlainServer>,
    _standins: Vec<StandinHandle>,
    pki: TestPki,
    lab: Lab,
}

/// Client-side (and HAProxy-side) tuning so tens of thousands of short
/// connections do not run out of ports: a wide ephemeral range, and reuse of
/// TIME_WAIT ports for new outgoing connections (the client closes first).
/// Per namespace, so nothing outside the labs changes.
fn tune_connector(lab: &Lab, node: &str) {
    lab.sh(
        node,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ],
    );
}

fn start_plain_servers(lab: &Lab) -> Vec<PlainServer> {
    BACKENDS
        .iter()
        .map(|be| {
            let ns = lab.node(be).ns.clone();
            let l = in_netns(&ns, || TcpListener::bind(("::", PLAIN_PORT)))
                .unwrap_or_else(|e| panic!("bind [::]:{PLAIN_PORT} in {be}: {e}"));
            PlainServer::spawn(l, be).unwrap_or_else(|e| panic!("plain server on {be}: {e}"))
        })
        .collect()
}

/// Waits until a TCP connect from `ns` to `addr` succeeds.
fn wait_connect(ns: &str, addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let ok = in_netns(ns, || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        if ok {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!("no TCP connect to {addr} within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl BaseLab {
    fn start() -> BaseLab {
        let lab = Lab::new("e2e-base", &["client", "lb", "be1", "be2", "be3"]);
        tune_connector(&lab, "client");
        tune_connector(&lab, "lb");
        let pki = TestPki::new();
        let standins = start_standins(&lab, &pki);
        let plain = start_plain_servers(&lab);
        BaseLab {
            haproxy: None,
            _plain: plain,
            _standins: standins,
            pki,
            lab,
        }
    }

    /// HAProxy on lb with the VIP on lb's interface; Err names the fix.
    fn start_haproxy(&mut self) -> Result<(), String> {
        haproxy_available()?;
        self.lab.add_addr("lb", &format!("{VIP_V4}/32"));
        let backends: Vec<Ipv4Addr> = BACKENDS.iter().map(|b| self.lab.node(b).ipv4).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let path = self.lab.dir().join("haproxy.cfg");
        std::fs::write(&path, haproxy_cfg(VIP_V4, &backends, threads))
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        let path_s = path.to_string_lossy().into_owned();
        let check = std::process::Command::new("haproxy")
            .args(["-c", "-q", "-f", &path_s])
            .output()
            .map_err(|e| format!("haproxy -c: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "haproxy -c rejects {path_s}: {}",
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        // -db: foreground, so the Proc's pid is HAProxy's only process.
        let p = self
            .lab
            .spawn("lb", "haproxy", &["-db", "-f", &path_s], &[]);
        let client = self.lab.node("client").ns.clone();
        let up = wait_connect(
            &client,
            SocketAddr::new(VIP_V4.into(), PLAIN_PORT),
            Duration::from_secs(10),
        );
        if let Err(e) = up {
            return Err(format!("haproxy did not start: {e}\n{}", p.logs()));
        }
        self.haproxy = Some(p);
        Ok(())
    }

    fn client_ns(&self) -> String {
        self.lab.node("client").ns.clone()
    }

    fn tls_config(&self) -> Arc<ClientConfig> {
        // Full handshakes every time, as client-go makes them:
        // `client_config` never resumes.
        client_config(&self.pki.ca_pem(), None)
    }
}

/// vipd's XDP program id on lb's eth0 (`bpftool net show` in lb's namespace).
fn xdp_prog_id(lab: &Lab) -> Result<u32, String> {
    let out = lab.try_sh("lb", &["bpftool", "-j", "net", "show", "dev", "eth0"]);
    if !out.status.success() {
        return Err(format!(
            "bpftool net show: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_xdp_prog_id(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| "bpftool shows no XDP program on lb's eth0".to_string())
}

/// The first XDP program id in `bpftool -j net show` output.
pub fn parse_xdp_prog_id(json: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let first = v.as_array()?.first()?;
    first["xdp"].as_array()?.first()?["id"]
        .as_u64()
        .and_then(|id| u32::try_from(id).ok())
}

/// vipd's metrics say every backend of the plain service is up.
fn wait_plain_backends_up(l: &LbLab) -> Result<(), String> {
    let want: Vec<String> = BACKENDS
        .iter()
        .map(|b| format!("{}:{PLAIN_PORT}", l.lab.node(b).ipv4))
        .collect();
    let start = Instant::now();
    loop {
        let m = l.metrics();
        let up = |be: &String| {
            m.iter().any(|(k, v)| {
                k.starts_with("vipd_backend_state{")
                    && k.contains(&format!("backend=\"{be}\""))
                    && k.contains("state=\"up\"")
                    && *v == 1.0
            })
        };
        if want.iter().all(up) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(15) {
            return Err(format!(
                "vipd does not report the plain backends {want:?} up within 15 s\n{}",
                l.vipd.logs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A vipd lab with the plain servers started and ready.
fn start_vipd_lab(
    fwd: Fwd,
    xdp_mode: AttachMode,
) -> Result<(LbLab, Vec<PlainServer>, u32), String> {
    let name = if fwd == Fwd::Nat {
        "e2e-nat"
    } else {
        "e2e-dsr"
    };
    let l = LbLab::start_with(
        name,
        &LbOptions {
            extra_ports: vec![PLAIN_PORT],
            ..LbOptions::new(xdp_mode, fwd)
        },
    );
    tune_connector(&l.lab, "client");
    let plain = start_plain_servers(&l.lab);
    wait_plain_backends_up(&l)?;
    let prog_id = xdp_prog_id(&l.lab)?;
    let client = l.lab.node("client").ns.clone();
    wait_connect(
        &client,
        SocketAddr::new(VIP_V4.into(), PLAIN_PORT),
        Duration::from_secs(10),
    )?;
    Ok((l, plain, prog_id))
}

fn measure_one(case: &mut Case, metric: Metric, o: &Options) -> Option<String> {
    let t = case.target.clone()?;
    let before = snap(t.cpu);
    let r = attempt(|| match metric {
        Metric::Short => short_conns(&t, o),
        Metric::Tls => tls_conns(&t, o),
        Metric::KeptAlive => kept_alive(&t, o),
        Metric::Bulk => bulk(&t, o),
    });
    let after = snap(t.cpu);
    let mut sample = match r {
        Ok(s) => s,
        Err(e) => {
            case.failures.push(format!("{metric:?}: {e}"));
            return Some("panic".into());
        }
    };
    sample.cpu = Some(cpu_delta(before, after));
    if let Some(e) = &sample.first_error {
        let msg = format!("{metric:?}: {} failed, first: {e}", sample.errors);
        if !case.failures.contains(&msg) && case.failures.len() < 20 {
            case.failures.push(msg);
        }
    }
    let cell = match metric {
        Metric::Bulk if sample.ok > 0 => {
            format!(
                "{:.2}G",
                sample.bytes as f64 * 8.0 / sample.elapsed.as_secs_f64() / 1e9
            )
        }
        _ => format!(
            "{:.0}/s",
            sample.ok as f64 / sample.elapsed.as_secs_f64().max(1e-9)
        ),
    };
    let errs = if sample.errors > 0 {
        format!(" ({} err)", sample.errors)
    } else {
        String::new()
    };
    let v = &mut case.samples;
    match metric {
        Metric::Short => v.short.push(sample),
        Metric::Tls => v.tls.push(sample),
        Metric::KeptAlive => v.kept.push(sample),
        Metric::Bulk => v.bulk.push(sample),
    }
    Some(format!("{cell}{errs}"))
}

pub fn run(o: &Options) -> Result<()> {
    if o.rounds == 0 || o.concurrency == 0 || o.duration.is_zero() || o.bulk_bytes == 0 {
        bail!("--rounds, --concurrency, --duration and --bulk-mib must be above zero");
    }
    let mode = match o.xdp_mode {
        AttachMode::Native => "native",
        AttachMode::Skb => "skb",
        AttachMode::Auto => "auto",
    };
    println!(
        "vipd end-to-end benchmark: direct, haproxy, vipd nat, vipd dsr (XDP {mode}); {} rounds, \
         {:.1} s per rate/latency sample, {} client connections in parallel, bulk {} MiB",
        o.rounds,
        o.duration.as_secs_f64(),
        o.concurrency,
        o.bulk_bytes >> 20
    );
    // The XDP program's run time is counted only while BPF statistics are
    // on. The fd form (BPF_ENABLE_STATS) switches them off again when it is
    // closed, also if this process dies, unlike the sysctl.
    let stats_fd = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(e) => {
            println!("warning: BPF_ENABLE_STATS failed ({e}): vipd's XDP time is not counted");
            None
        }
    };
    // A failed step panics with the logs; `attempt` reports its first lines,
    // so the default hook's copy on stderr is only noise.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = measure(o, mode);
    std::panic::set_hook(hook);
    drop(stats_fd);
    result
}

fn measure(o: &Options, mode: &str) -> Result<()> {
    let started = SystemTime::now();
    eprintln!("==> building the labs");
    let mut cases: Vec<Case> = CaseKind::ALL
        .iter()
        .map(|&kind| Case {
            kind,
            target: None,
            failures: vec![],
            samples: Samples::default(),
        })
        .collect();
    // Kept alive until the end; dropped (namespaces removed) on every path.
    let base = set_up_base(&mut cases, o);
    let vipd_labs = set_up_vipd(o, &mut cases);
    // A case left out by --cases is not a failure: the report's header
    // lists the cases run.
    for c in cases
        .iter()
        .filter(|c| c.target.is_none() && o.cases.contains(&c.kind))
    {
        println!("{}: not measured: {}", c.kind.name(), c.failures.join("; "));
    }
    if cases.iter().all(|c| c.target.is_none()) {
        bail!("no case could be set up");
    }
    run_rounds(&mut cases, o);
    let drops = vipd_drops(&vipd_labs);
    let report = render_report(o, mode, &cases, &drops);
    // The file first: it is the record, whatever happens to stdout.
    std::fs::create_dir_all(&o.out_dir)
        .with_context(|| format!("create {}", o.out_dir.display()))?;
    let path = o.out_dir.join(format!("{}.md", report_name(started)));
    write_report(&path, &report)?;
    println!();
    print!("{report}");
    println!();
    println!("report written to {}", path.display());
    drop(vipd_labs);
    drop(base);
    Ok(())
}

/// The `direct` and `haproxy` cases' lab, their targets set (or why not).
fn set_up_base(cases: &mut [Case], o: &Options) -> Option<BaseLab> {
    let (direct, haproxy) = (
        o.cases.contains(&CaseKind::Direct),
        o.cases.contains(&CaseKind::Haproxy),
    );
    if !direct && !haproxy {
        return None;
    }
    let mut base = None;
    match attempt(BaseLab::start) {
        Ok(mut b) => {
            let tls_config = b.tls_config();
            let client_ns = b.client_ns();
            let node = |n: &str| b.lab.node(n).ipv4;
            cases[0].target = direct.then(|| Target {
                client_ns: client_ns.clone(),
                plain: BACKENDS
                    .iter()
                    .map(|be| SocketAddr::new(node(be).into(), PLAIN_PORT))
                    .collect(),
                tls: BACKENDS
                    .iter()
                    .map(|be| SocketAddr::new(node(be).into(), TLS_PORT))
                    .collect(),
                tls_config: tls_config.clone(),
                cpu: CpuSource::None,
            });
            match haproxy
                .then(|| attempt(|| b.start_haproxy()).and_then(|r| r))
                .transpose()
            {
                Ok(None) => {}
                Ok(Some(())) => {
                    let pid = b.haproxy.as_ref().map(Proc::pid).unwrap_or_default();
                    cases[1].target = Some(Target {
                        client_ns,
                        plain: vec![SocketAddr::new(VIP_V4.into(), PLAIN_PORT)],
                        tls: vec![SocketAddr::new(VIP_V4.into(), TLS_PORT)],
                        tls_config,
                        cpu: CpuSource::Process { pid },
                    });
                }
                Err(e) => cases[1].failures.push(format!("setup: {e}")),
            }
            base = Some(b);
        }
        Err(e) => {
            for (i, on) in [(0, direct), (1, haproxy)] {
                if on {
                    cases[i].failures.push(format!("setup: {e}"));
                }
            }
        }
    }
    base
}

/// vipd's labs (nat, then dsr), their cases' targets set (or why not); each
/// with its plain servers, to be dropped before the lab that holds their
/// namespaces.
fn set_up_vipd(o: &Options, cases: &mut [Case]) -> Vec<(Vec<PlainServer>, LbLab)> {
    let mut vipd_labs = vec![];
    for (i, fwd) in [(2, Fwd::Nat), (3, Fwd::Dsr)] {
        if !o.cases.contains(&cases[i].kind) {
            continue;
        }
        match attempt(|| start_vipd_lab(fwd, o.xdp_mode)).and_then(|r| r) {
            Ok((l, plain, prog_id)) => {
                cases[i].target = Some(Target {
                    client_ns: l.lab.node("client").ns.clone(),
                    plain: vec![SocketAddr::new(VIP_V4.into(), PLAIN_PORT)],
                    tls: vec![SocketAddr::new(VIP_V4.into(), TLS_PORT)],
                    tls_config: client_config(&l.pki.ca_pem(), None),
                    cpu: CpuSource::Vipd {
                        pid: l.vipd.pid(),
                        prog_id,
                    },
                });
                // Servers before the lab that holds their namespaces.
                vipd_labs.push((plain, l));
            }
            Err(e) => cases[i].failures.push(format!("setup: {e}")),
        }
    }
    vipd_labs
}

/// Every round measures every case once per metric, the case order
/// rotating; a line per round and metric.
fn run_rounds(cases: &mut [Case], o: &Options) {
    let metrics: Vec<Metric> = Metric::ALL
        .into_iter()
        .filter(|m| o.metrics.contains(m))
        .collect();
    println!();
    println!(
        "{:<6} {:<10} {:>18} {:>18} {:>18} {:>18}",
        "round", "metric", "direct", "haproxy", "vipd nat", "vipd dsr"
    );
    for round in 0..o.rounds {
        for &metric in &metrics {
            let mut cells = vec!["-".to_string(); cases.len()];
            // Rotate who goes first, so no case always follows the same one.
            for k in 0..cases.len() {
                let i = (round + k) % cases.len();
                if let Some(cell) = measure_one(&mut cases[i], metric, o) {
                    cells[i] = cell;
                }
            }
            println!(
                "{:<6} {:<10} {:>18} {:>18} {:>18} {:>18}",
                round + 1,
                format!("{metric:?}"),
                cells[0],
                cells[1],
                cells[2],
                cells[3]
            );
        }
    }
}

/// What vipd's program dropped over the whole run, by reason: a case's
/// failed or slow connections have their cause here (its /metrics,
/// refreshed once a second).
fn vipd_drops(vipd_labs: &[(Vec<PlainServer>, LbLab)]) -> Vec<String> {
    vipd_labs
        .iter()
        .map(|(_, l)| {
            let name = if l.fwd == Fwd::Nat {
                "vipd nat"
            } else {
                "vipd dsr"
            };
            let listed = match attempt(|| l.metrics()) {
                Ok(m) => {
                    let d: Vec<String> = m
                        .iter()
                        .filter_map(|(k, v)| {
                            let r = k
                                .strip_prefix("vipd_dataplane_packets_total{reason=\"")?
                                .strip_suffix("\"}")?;
                            (r.starts_with("drop_") && *v > 0.0).then(|| format!("{r} {v}"))
                        })
                        .collect();
                    if d.is_empty() {
                        "none".to_owned()
                    } else {
                        d.join(", ")
                    }
                }
                Err(e) => format!("unknown ({e})"),
            };
            format!("- {name}: {listed}")
        })
        .collect()
}

fn write_report(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_prog_id_from_bpftool() {
        let json = r#"[{"xdp":[{"devname":"eth0","ifindex":2,"mode":"driver","id":1234}],"tc":[],"flow_dissector":[],"netfilter":[]}]"#;
        assert_eq!(parse_xdp_prog_id(json), Some(1234));
        assert_eq!(parse_xdp_prog_id(r#"[{"xdp":[],"tc":[]}]"#), None);
        assert_eq!(parse_xdp_prog_id("not json"), None);
    }
}
