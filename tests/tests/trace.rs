//! `vipd trace`, all three layers: the program through BPF_PROG_TEST_RUN
//! (verdicts byte-identical with the trace off, on and matching, on and not
//! matching; the matching packet's record), a real vipd in namespaces
//! (`vipd trace --addr <client>` shows that client's flows and no other's,
//! and switches off), and the CLI's errors.
//!
//! Needs root (CAP_BPF, namespaces); run by `cargo xtask test`.

use std::net::IpAddr;
use std::time::Duration;

use vip_common::{MODE_DSR, PROTO_TCP, Reason, TRACE_LEASE_NS};
use vip_tests::netns::VIP_V4;
use vip_tests::packet::{Pkt, TCP_ACK, TCP_SYN};
use vip_tests::progtest::{Dp, XDP_PASS, XDP_TX};
use vip_tests::scenario::LbLab;
use vip_userspace::config::addr_bytes;
use vip_userspace::dataplane::kernel::{AttachMode, PROG_VIP};
use vip_userspace::dataplane::programmer::{DesiredBackend, DesiredService};
use vip_userspace::trace::{Filter, Record, TraceError, Tracer};

const VIP: &str = "10.77.0.100";
const CLIENT: &str = "10.77.0.10";
const OTHER: &str = "10.77.0.99";
const PORT: u16 = 6443;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn backend(i: u8, alive: bool) -> DesiredBackend {
    let (family, addr) = addr_bytes(ip(&format!("10.77.0.{}", 20 + i)));
    DesiredBackend {
        family,
        addr,
        port_be: PORT.to_be(),
        mac: [0x02, 0x77, 0, 0, 0, 0x20 + i],
        local: false,
        encap: None,
        alive,
        draining: false,
    }
}

fn service(alive: bool) -> DesiredService {
    vip_tests::progtest::service(
        ip(VIP),
        PORT,
        PROTO_TCP,
        MODE_DSR,
        [0; 16],
        (1..=3).map(|i| backend(i, alive)).collect(),
    )
}

/// How the trace is set for a run.
#[derive(Clone, Copy, Debug)]
enum Switch {
    Off,
    /// On for another address: must behave exactly as off.
    OnOther,
    /// On for `filter`.
    On(Filter),
}

struct Case {
    desc: &'static str,
    services: Vec<DesiredService>,
    /// Sent before the packet under test (untraced: records are dropped).
    before: Vec<Vec<u8>>,
    input: Vec<u8>,
    action: u32,
    reason: Reason,
    /// Fields of the record the matching run must write.
    flow: Option<&'static str>,
    service: Option<u32>,
    has_backend: bool,
}

fn cases() -> Vec<Case> {
    let syn = || Pkt::tcp(ip(CLIENT), 40000, ip(VIP), PORT, TCP_SYN).build();
    let ack = || {
        Pkt::tcp(ip(CLIENT), 40000, ip(VIP), PORT, TCP_ACK)
            .payload(&[1; 8])
            .build()
    };
    vec![
        Case {
            desc: "new flow: Maglev picks a backend, dsr",
            services: vec![service(true)],
            before: vec![],
            input: syn(),
            action: XDP_TX,
            reason: Reason::TxDsr,
            flow: Some("new"),
            service: Some(0),
            has_backend: true,
        },
        Case {
            desc: "established flow: the connection table's fast path",
            services: vec![service(true)],
            before: vec![syn()],
            input: ack(),
            action: XDP_TX,
            reason: Reason::TxDsr,
            flow: Some("established"),
            service: Some(0),
            has_backend: true,
        },
        Case {
            desc: "not a service port: passed before any lookup",
            services: vec![service(true)],
            before: vec![],
            input: Pkt::tcp(ip(CLIENT), 40000, ip(VIP), 22, TCP_ACK).build(),
            action: XDP_PASS,
            reason: Reason::PassNoService,
            flow: None,
            service: None,
            has_backend: false,
        },
        Case {
            desc: "every backend down: the client gets an RST",
            services: vec![service(false)],
            before: vec![],
            input: ack(),
            action: XDP_TX,
            reason: Reason::TxRst,
            flow: Some("new"),
            service: Some(0),
            has_backend: false,
        },
        Case {
            desc: "no service at all on the port: dropped nothing, passed",
            services: vec![],
            before: vec![],
            input: syn(),
            action: XDP_PASS,
            reason: Reason::PassNoService,
            flow: None,
            service: None,
            has_backend: false,
        },
    ]
}

fn tracer_of(dp: &Dp) -> Tracer {
    let id = dp
        .prog
        .maps()
        .xdp(PROG_VIP)
        .expect("program")
        .info()
        .expect("program info")
        .id();
    Tracer::for_program(id).expect("open the program's trace maps")
}

/// One case in a fresh program with the trace set by `sw`: (action, output
/// frame, records of the packet under test).
fn run_case(c: &Case, sw: Switch) -> (u32, Vec<u8>, Vec<Result<Record, String>>) {
    let dp = Dp::new(&c.services);
    let mut t = tracer_of(&dp);
    match sw {
        Switch::Off => {}
        Switch::OnOther => t
            .start(Filter {
                addr: Some(ip(OTHER)),
                port: None,
            })
            .expect("switch on"),
        Switch::On(f) => t.start(f).expect("switch on"),
    }
    for p in &c.before {
        dp.run_raw(p);
    }
    let _ = t.records();
    let (action, out) = dp.run(&c.input, c.reason);
    (action, out, t.records())
}

#[test]
fn verdicts_identical_with_trace_off_on_and_not_matching() {
    vip_tests::progtest::require_root();
    let filters = [
        Filter {
            addr: Some(ip(CLIENT)),
            port: None,
        },
        Filter {
            addr: Some(ip(VIP)),
            port: Some(PORT),
        },
    ];
    for c in cases() {
        let (a_off, out_off, r_off) = run_case(&c, Switch::Off);
        assert_eq!(a_off, c.action, "{}: action", c.desc);
        assert!(r_off.is_empty(), "{}: records with the trace off", c.desc);
        let (a, out, r) = run_case(&c, Switch::OnOther);
        assert_eq!(
            (a, &out),
            (a_off, &out_off),
            "{}: on for another address vs off",
            c.desc
        );
        assert!(r.is_empty(), "{}: records for another address", c.desc);
        for f in filters {
            // The port filter misses the packet to port 22. TCP's
            // destination port: after 14 bytes of Ethernet and 20 of IPv4.
            let dport = u16::from_be_bytes([c.input[36], c.input[37]]);
            let port_miss = f.port.is_some_and(|p| p != dport);
            let (a, out, r) = run_case(&c, Switch::On(f));
            assert_eq!(
                (a, &out),
                (a_off, &out_off),
                "{}: traced ({f:?}) vs off",
                c.desc
            );
            if port_miss {
                assert!(r.is_empty(), "{}: a port the filter does not name", c.desc);
                continue;
            }
            assert_eq!(
                r.len(),
                1,
                "{}: one record per traced packet: {r:?}",
                c.desc
            );
            let rec = r[0]
                .as_ref()
                .unwrap_or_else(|raw| panic!("{}: the record does not parse: {raw}", c.desc));
            assert_eq!(rec.src, ip(CLIENT), "{}: record src", c.desc);
            assert_eq!(rec.sport, 40000, "{}: record sport", c.desc);
            assert_eq!(rec.dst, ip(VIP), "{}: record dst", c.desc);
            assert_eq!(rec.action, c.action, "{}: record action", c.desc);
            assert_eq!(rec.reason, Some(c.reason), "{}: record reason", c.desc);
            assert_eq!(rec.flow_name(), c.flow, "{}: record flow", c.desc);
            assert_eq!(rec.service, c.service, "{}: record service", c.desc);
            assert_eq!(
                rec.mode_name(),
                c.service.map(|_| "dsr"),
                "{}: record mode",
                c.desc
            );
            match (c.has_backend, rec.backend) {
                (false, None) => {}
                (true, Some((id, addr, port))) => {
                    // The backend the verdict sent it to: its MAC is in the
                    // output frame's destination.
                    assert!(id < 3, "{}: backend id {id}", c.desc);
                    assert_eq!(
                        addr,
                        ip(&format!("10.77.0.{}", 21 + id)),
                        "{}: backend addr",
                        c.desc
                    );
                    assert_eq!(port, PORT, "{}: backend port", c.desc);
                    assert_eq!(
                        out[5],
                        0x21 + id as u8,
                        "{}: frame sent to that backend",
                        c.desc
                    );
                }
                (want, got) => panic!("{}: backend {got:?}, wanted one: {want}", c.desc),
            }
        }
    }
}

#[test]
fn trace_lease_ends_without_renewal_and_a_second_tracer_is_refused() {
    vip_tests::progtest::require_root();
    let dp = Dp::new(&[service(true)]);
    let mut t = tracer_of(&dp);
    let f = Filter {
        addr: Some(ip(CLIENT)),
        port: None,
    };
    t.start(f).expect("switch on");
    match tracer_of(&dp).start(f) {
        Err(TraceError::Busy { .. }) => {}
        other => panic!("a second tracer while the first runs: {:?}", other.err()),
    }
    let syn = Pkt::tcp(ip(CLIENT), 40001, ip(VIP), PORT, TCP_SYN).build();
    dp.run(&syn, Reason::TxDsr);
    assert_eq!(t.records().len(), 1, "traced while the lease runs");
    // A tracer that was killed renews nothing: the program stops by itself.
    std::thread::sleep(Duration::from_nanos(TRACE_LEASE_NS) + Duration::from_millis(300));
    let syn = Pkt::tcp(ip(CLIENT), 40002, ip(VIP), PORT, TCP_SYN).build();
    dp.run(&syn, Reason::TxDsr);
    assert!(t.records().is_empty(), "traced after the lease ended");
    // And a new tracer may start then.
    tracer_of(&dp)
        .start(f)
        .expect("start after the lease ended");
}

/// A real vipd: `vipd trace --addr <client>` shows the client's flows
/// through the VIP (service, backend, verdict), nothing of another client's,
/// stops on SIGTERM and leaves tracing off.
#[test]
fn vipd_trace_shows_one_clients_flows() {
    let l = LbLab::start("trace", AttachMode::Skb, vip_tests::scenario::Fwd::Dsr);
    let client = l.lab.node("client").ipv4.to_string();
    // The other client: a second address on the client's interface, used by
    // curl as its source.
    let other = "10.77.0.200";
    l.lab.sh(
        "client",
        &["ip", "addr", "add", &format!("{other}/24"), "dev", "eth0"],
    );
    let vipd = vip_tests::vipd_bin();
    let cfg = l.config_path.to_str().expect("utf-8").to_owned();
    let tr = l.lab.spawn(
        "lb",
        vipd.to_str().expect("utf-8"),
        &["trace", "--config", &cfg, "--addr", &client],
        &[],
    );
    tr.wait_for_logs("Ctrl-C stops", Duration::from_secs(10));
    let url = format!("https://{VIP_V4}:{}/readyz", vip_tests::scenario::PORT);
    for _ in 0..3 {
        l.lab.sh(
            "client",
            &["curl", "-sk", "--interface", other, "-o", "/dev/null", &url],
        );
    }
    let answered = l.ask_vip(3);
    assert!(
        answered.iter().all(Result::is_ok),
        "client through the VIP: {answered:?}"
    );
    tr.wait_for_stdout("tx_dsr", Duration::from_secs(5));
    let status = tr.term_within(Duration::from_secs(5), "vipd trace");
    assert!(
        status.success(),
        "vipd trace after SIGTERM: {status:?}\n{}",
        tr.logs()
    );
    let out = tr.stdout();
    eprintln!("vipd trace printed:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(!lines.is_empty(), "no records\n{}", tr.logs());
    for l in &lines {
        assert!(l.contains(&client), "a line of another flow: {l}");
        assert!(!l.contains(other), "the other client traced: {l}");
    }
    // Three connections: a SYN each, a new flow with a backend, sent by dsr.
    let news: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            l.starts_with(&format!("{client}:")) && l.contains(", new flow") && l.contains("[S]")
        })
        .collect();
    assert_eq!(news.len(), 3, "one new flow per connection: {lines:#?}");
    for l in news {
        assert!(
            l.contains(&format!("> {VIP_V4}:{} tcp", vip_tests::scenario::PORT)),
            "{l}"
        );
        assert!(
            l.contains(" tcp [S] service ") && l.contains(" dsr, new flow (slot "),
            "{l}"
        );
        assert!(l.contains(", backend "), "{l}");
        assert!(l.ends_with(": tx tx_dsr"), "{l}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(", established flow") && l.ends_with(": tx tx_dsr")),
        "the connections' later packets: {lines:#?}"
    );
    assert!(tr.logs().contains("tracing is off"), "{}", tr.logs());
    // Off: traffic now leaves no record in the ring.
    let ns = l.lab.node("lb").ns.clone();
    let mut t = vip_tests::netns::in_netns(&ns, || Tracer::for_interface("eth0"))
        .expect("open the running program's trace maps");
    let _ = t.records();
    assert!(l.ask_vip(2).iter().all(Result::is_ok));
    assert!(t.records().is_empty(), "records after vipd trace stopped");
}

/// No vipd, bad arguments: clear errors, exit status 1 or 2, never a panic.
#[test]
fn vipd_trace_errors() {
    let lab = vip_tests::netns::Lab::new("traceerr", &["n"]);
    let vipd = vip_tests::vipd_bin();
    let v = vipd.to_str().expect("utf-8");
    let run = |args: &[&str]| {
        let mut a = vec![v];
        a.extend_from_slice(args);
        let o = lab.try_sh("n", &a);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["trace", "--interface", "eth0", "--addr", CLIENT]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no XDP program is attached to eth0") && err.contains("is vipd running"),
        "{err}"
    );
    let (code, err) = run(&["trace", "--interface", "nosuch0", "--addr", CLIENT]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("nosuch0"), "{err}");
    let (code, err) = run(&["trace", "--interface", "eth0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--addr IP") && err.contains("--port N"),
        "{err}"
    );
    let (code, err) = run(&["trace", "--interface", "eth0", "--addr", "10.0.0.300"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--addr"), "{err}");
    let (code, err) = run(&["trace", "--interface", "eth0", "--port", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--port"), "{err}");
    let (code, err) = run(&[
        "trace",
        "--interface",
        "eth0",
        "--port",
        "1",
        "--duration",
        "soon",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not a duration"), "{err}");
    let (code, err) = run(&["trace", "--config", "/nonexistent/vipd.yaml", "--port", "1"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("/nonexistent/vipd.yaml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // vipd's own capabilities (the pod's set) are not enough: opening a
    // running program's maps by id takes CAP_SYS_ADMIN, and the error says
    // so. A program attached to the interface, as a running vipd's is.
    let ns = lab.node("n").ns.clone();
    let maps = vip_tests::progtest::attach_in(&ns, PROG_VIP, "eth0");
    let caps: Vec<String> = ["bpf", "net_admin", "net_raw", "perfmon"]
        .map(String::from)
        .to_vec();
    let mut a = vec!["setpriv".to_owned()];
    a.extend(vip_tests::scenario::setpriv_args(&caps));
    a.extend([v, "trace", "--interface", "eth0", "--addr", CLIENT].map(String::from));
    let o = lab.try_sh("n", &a.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("needs CAP_SYS_ADMIN"), "{err}");
    // With it (root's full set), the same command traces.
    let tr = lab.spawn(
        "n",
        v,
        &[
            "trace",
            "--interface",
            "eth0",
            "--addr",
            CLIENT,
            "--duration",
            "1s",
        ],
        &[],
    );
    let status = tr
        .wait_timeout(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("vipd trace --duration 1s still running\n{}", tr.logs()));
    assert!(status.success(), "{}", tr.logs());
    assert!(
        tr.logs().contains("0 records; tracing is off"),
        "{}",
        tr.logs()
    );
    drop(maps);
}
