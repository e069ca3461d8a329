//! The namespace lab behind `cargo xtask run`: a client, two LB nodes (`lb`
//! and `lb2`) running vipd with the real XDP program and electing the VIP
//! holder with VRRP, and three apiserver stand-ins behind the VIP. It prints
//! where to look, sends a request through the VIP every second, and removes
//! everything on Ctrl-C (or after --duration). `--demo` walks through a
//! failover and a backend failure and prints what the client saw.

use std::{
    net::IpAddr,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use vip_tests::{
    netns::{VIP_V4, VIP_V6, in_netns},
    scenario::{Fwd, LbLab, LbOptions, PORT},
    standin::{HttpsConn, client_config},
    traffic::{End, Poller, Watches, failure_window, outage},
};
use vip_userspace::{dataplane::kernel::AttachMode, status::Status};

#[path = "vip-lab/fabric.rs"]
mod fabric;

#[derive(Parser)]
#[command(name = "vip-lab", about = "vipd in a network-namespace lab")]
struct Args {
    /// XDP attach mode on the LBs' veths: native or skb.
    #[arg(long, default_value = "native")]
    xdp_mode: String,
    /// Forwarding mode of the service: dsr or nat.
    #[arg(long, default_value = "dsr")]
    mode: String,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Walk through a failover and a backend failure, print what the client
    /// saw, and stop.
    #[arg(long)]
    demo: bool,
    /// Watch streams the demo keeps open.
    #[arg(long, default_value_t = 30)]
    watches: usize,
    /// `vrrp` (two LBs on one segment) or `bgp`: the L3 fabric, a router
    /// running FRR with ECMP over three LBs (vipd in announce mode, BIRD
    /// with BGP + BFD), backends in two other subnets: mode dsr with IPIP,
    /// or mode nat (`--mode nat`: snat to the VIP, port slices, keyed mesh
    /// state sync).
    #[arg(long, default_value = "vrrp")]
    topology: String,
    /// Run vipd on this host's real interfaces with this config instead of the lab.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// A second between two requests of the lab's client, cut short by Ctrl-C.
fn nap(stop: &AtomicBool) {
    for _ in 0..10 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if let Some(cfg) = args.config {
        let status = Command::new(vip_tests::vipd_bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .status()
            .context("starting vipd")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab creates network namespaces and loads XDP programs: run it as root");
    }
    let mode = match args.xdp_mode.as_str() {
        "native" => AttachMode::Native,
        "skb" => AttachMode::Skb,
        other => bail!("--xdp-mode {other:?}: use native or skb"),
    };
    match args.topology.as_str() {
        "vrrp" => {}
        "bgp" => {
            let nat = match args.mode.as_str() {
                "dsr" => false,
                "nat" => true,
                other => bail!("--mode {other:?}: use dsr or nat"),
            };
            return fabric::run(nat, args.demo, args.watches, args.duration, &STOP);
        }
        other => bail!("--topology {other:?}: use vrrp or bgp"),
    }
    let fwd = match args.mode.as_str() {
        "dsr" => Fwd::Dsr,
        "nat" => Fwd::Nat,
        other => bail!("--mode {other:?}: use dsr or nat"),
    };

    println!(
        "==> building the lab: client, lb and lb2 (vipd, XDP {}, VRRP), be1..be3 (apiserver stand-ins)",
        args.xdp_mode
    );
    let l = LbLab::start_with(
        "lab",
        &LbOptions {
            second_lb: true,
            // Mode nat: the LBs replicate their flows (snat: vip), so
            // connections survive the master's death as in dsr.
            sync: fwd == Fwd::Nat,
            ..LbOptions::new(mode, fwd)
        },
    );
    let master = wait_for(&l, "lb", Duration::from_secs(5), |s| {
        s.vrrp.iter().all(|v| v.state == "master")
    });
    if master.is_none() {
        bail!("lb did not become VRRP master:\n{}", l.vipd.logs());
    }
    where_to_look(&l, &args.mode);
    let namespaces = l.lab.namespaces().to_vec();
    let res = if args.demo {
        demo(&l, args.watches)
    } else {
        serve(&l, args.duration)
    };
    println!("==> stopping: vipd on lb and lb2, stand-ins, namespaces");
    drop(l);
    let left =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout)
            .into_owned();
    let leftovers: Vec<&String> = namespaces
        .iter()
        .filter(|n| left.contains(n.as_str()))
        .collect();
    if !leftovers.is_empty() {
        bail!("namespaces left behind: {leftovers:?}");
    }
    println!("==> clean: nothing left behind");
    res
}

/// Polls `node`'s status until `ok` or `timeout`.
fn wait_for(
    l: &LbLab,
    node: &str,
    timeout: Duration,
    ok: impl Fn(&Status) -> bool,
) -> Option<Status> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(s) = l.try_status_of(node)
            && ok(&s)
        {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn where_to_look(l: &LbLab, mode: &str) {
    let ns = |n: &str| l.lab.node(n).ns.clone();
    let ip = |n: &str| l.lab.node(n).ipv4;
    let bin = vip_tests::vipd_bin();
    let cfg2 = l
        .vipd2
        .as_ref()
        .map(|(_, p)| p.display().to_string())
        .unwrap_or_default();
    println!("==> lab up: VIP {VIP_V4}:{PORT} and [{VIP_V6}]:{PORT}, mode {mode}");
    println!("    lb   {}  vipd, VRRP priority 150 (master)", ip("lb"));
    println!("    lb2  {}  vipd, VRRP priority 100 (backup)", ip("lb2"));
    for be in ["be1", "be2", "be3"] {
        println!(
            "    {be}  {}  apiserver stand-in (TLS, the VIP in its certificate)",
            ip(be)
        );
    }
    println!("  where to look:");
    println!(
        "    status   ip netns exec {} {} status --config {}",
        ns("lb"),
        bin.display(),
        l.config_path.display()
    );
    println!(
        "             ip netns exec {} {} status --config {cfg2}",
        ns("lb2"),
        bin.display()
    );
    println!(
        "    metrics  ip netns exec {} curl -s 127.0.0.1:9590/metrics | grep '^vipd_'",
        ns("lb")
    );
    println!(
        "    client   ip netns exec {} curl -s --cacert {} https://{VIP_V4}:{PORT}/whoami",
        ns("client"),
        l.ca_path.display()
    );
    println!(
        "    kubectl  ip netns exec {} kubectl --kubeconfig {} get --raw /readyz",
        ns("client"),
        l.kubeconfig().display()
    );
    println!(
        "    XDP      ip netns exec {} ip link show eth0   (look for 'xdp')",
        ns("lb")
    );
    print!("\n{}", indent(&l.status_of("lb").render()));
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}\n")).collect()
}

/// One request through the VIP a second, and a one-line status of both LBs
/// every 5 s, until Ctrl-C or `duration`.
fn serve(l: &LbLab, duration: Option<u64>) -> Result<()> {
    println!("\n==> one request through the VIP per second; Ctrl-C stops and cleans up");
    let client_ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    let started = Instant::now();
    let mut answered = 0;
    let mut n = 0u64;
    while !STOP.load(Ordering::SeqCst) {
        if duration.is_some_and(|d| started.elapsed() >= Duration::from_secs(d)) {
            break;
        }
        let cfg = cfg.clone();
        let res = in_netns(&client_ns, move || -> Result<String, String> {
            let mut c = HttpsConn::connect(
                LbLab::vip_addr(false),
                "kubernetes",
                cfg,
                Duration::from_secs(2),
            )
            .map_err(|e| format!("{e:?}"))?;
            let local = c.local_addr().map_err(|e| format!("{e:?}"))?;
            let r = c.get("/whoami").map_err(|e| format!("{e:?}"))?;
            Ok(format!(
                "{local} -> {} answered by {}",
                LbLab::vip_addr(false),
                r.text().trim()
            ))
        });
        match res {
            Ok(line) => {
                answered += 1;
                println!("    client: {line}");
            }
            Err(e) => println!("    client: request failed: {e}"),
        }
        if n.is_multiple_of(5) {
            for node in ["lb", "lb2"] {
                match l.try_status_of(node) {
                    Ok(s) => println!("    {node}:    {}", one_line(&s)),
                    Err(e) => println!("    {node}:    {e}"),
                }
            }
        }
        n += 1;
        nap(&STOP);
    }
    if answered == 0 {
        bail!("no request was answered through the VIP");
    }
    Ok(())
}

/// "master priority 150; be1 up 12 flows, be2 up ..., be3 ...".
fn one_line(s: &Status) -> String {
    let roles: Vec<String> = s
        .vrrp
        .iter()
        .map(|v| format!("{} {} priority {}", v.family, v.state, v.priority))
        .collect();
    let bes: Vec<String> = s
        .services
        .first()
        .map(|svc| {
            svc.backends
                .iter()
                .map(|b| format!("{} {} {} new flows", b.address.ip(), b.state, b.new_flows))
                .collect()
        })
        .unwrap_or_default();
    format!("{}; {}", roles.join(", "), bes.join(", "))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The walkthrough: the master dies, then a backend dies, with watch
/// streams open and a new connection every 10 ms; what the client saw.
fn demo(l: &LbLab, n_watches: usize) -> Result<()> {
    let client_ns = l.lab.node("client").ns.clone();
    let cfg = client_config(&l.pki.ca_pem(), None);
    println!(
        "\n==> demo: {n_watches} watch streams open through the VIP, and a new connection every 10 ms, each on its own"
    );
    let watches = Watches::open(&client_ns, &cfg, n_watches).map_err(anyhow::Error::msg)?;
    for (be, (open, _, _)) in watches.by_server() {
        println!("    {open} streams on {be}");
    }
    // Overlapping attempts: with one after another, the one in flight when
    // the VIP moves (its SYN sent to the dead lb) rounds the outage up to
    // whole attempts, which once read as an extra attempt in mode nat
    // (issue 17).
    let poller = Poller::start_overlapping(
        &client_ns,
        &cfg,
        Duration::from_millis(10),
        Duration::from_millis(300),
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut summary = vec![];

    // 1. The master dies as a node does: no priority-0 advert, no VIP
    //    removal, its link gone.
    println!("\n==> 1/2: the VRRP master (lb) dies: vipd SIGKILL and its link down");
    let t1 = Instant::now();
    let t1_unix = vip_userspace::status::unix_ms(std::time::SystemTime::now());
    l.vipd.signal(libc::SIGKILL);
    l.lab.sh("lb", &["ip", "link", "set", "eth0", "down"]);
    let Some(s2) = wait_for(l, "lb2", Duration::from_secs(5), |s| {
        s.vrrp.iter().all(|v| v.state == "master")
    }) else {
        bail!("lb2 did not take over within 5 s");
    };
    std::thread::sleep(Duration::from_secs(2));
    let (worst, failed, total) = outage(&poller.attempts(), t1);
    let took = s2
        .vrrp
        .first()
        .and_then(|v| v.last_failover.as_ref())
        .map_or("?".into(), |f| format!("{} ms", f.took_ms));
    let by = watches.by_server();
    let open: usize = by.values().map(|v| v.0).sum();
    let gap = watches
        .report()
        .iter()
        .map(|r| r.longest_gap)
        .max()
        .unwrap_or_default();
    // `took` counts from the last advert lb2 heard, up to one advert
    // interval before the death; from the death on it is this.
    let moved = s2
        .vrrp
        .iter()
        .find(|v| v.family == "ipv4")
        .and_then(|v| v.last_failover.as_ref())
        .map(|f| Duration::from_millis(f.at_unix_ms.saturating_sub(t1_unix)));
    println!("    lb2 took the VIP over: its status says the failover took {took}");
    println!(
        "    (counted from the last advert lb2 heard; the VIP moved {} after the death)",
        moved.map_or("?".into(), ms)
    );
    // The attempts run one after another: the one in flight when the VIP
    // moved sent its SYN to the dead lb and waits out its timeout, so the
    // outage is the takeover rounded up to whole attempts, in either mode.
    if let Some(m) = moved
        && let Some(a) = poller
            .attempts()
            .iter()
            .find(|a| a.at <= t1 + m && a.done > t1 + m)
    {
        println!(
            "    the attempt in flight then started {} after the death and {} after {}",
            ms(a.at.saturating_duration_since(t1)),
            if a.result.is_ok() {
                "answered"
            } else {
                "failed"
            },
            ms(a.done.saturating_duration_since(t1))
        );
    }
    println!(
        "    new connections: longest time without an answer {} ({failed} of {total} attempts failed; one every 10 ms, each step 300 ms at most)",
        ms(worst)
    );
    println!(
        "    watch streams: {open} of {n_watches} still streaming, longest silence {}",
        ms(gap)
    );
    summary.push(format!(
        "master dies     | outage {} for new connections | {open}/{n_watches} watches kept | failover {took}, VIP moved {} after the death",
        ms(worst),
        moved.map_or("?".into(), ms)
    ));
    print!("{}", indent(&l.status_of("lb2").render()));

    // 2. A backend dies hard: its link goes down, nothing answers, nothing
    //    closes.
    println!("\n==> 2/2: be1 dies: its link goes down");
    let before = watches.by_server();
    let on_be1 = before.get("be1").map_or(0, |v| v.0);
    let t2 = Instant::now();
    l.lab.sh("be1", &["ip", "link", "set", "eth0", "down"]);
    let be1: IpAddr = l.lab.node("be1").ipv4.into();
    let down = wait_for(l, "lb2", Duration::from_secs(10), |s| {
        s.services[0]
            .backends
            .iter()
            .any(|b| b.address.ip() == be1 && b.state == "down")
    });
    if down.is_none() {
        bail!("lb2 did not mark be1 down within 10 s");
    }
    let detected = t2.elapsed();
    // The streams on be1 get their RST as soon as lb2 marks it down: vipd
    // pokes each client, and the client's answer draws the RST.
    std::thread::sleep(Duration::from_secs(3));
    let attempts = poller.finish();
    let window = failure_window(&attempts, t2);
    let (_, failed, total) = outage(&attempts, t2);
    let report = watches.report();
    // Only resets after be1's death count (not one from step 1).
    let be1_reset: Vec<Duration> = report
        .iter()
        .filter(|r| r.server == "be1" && r.end == End::Reset)
        .filter_map(|r| r.ended.filter(|e| *e >= t2).map(|e| e - t2))
        .collect();
    let others_open = report
        .iter()
        .filter(|r| r.server != "be1" && r.end == End::Open)
        .count();
    let others = report.iter().filter(|r| r.server != "be1").count();
    println!(
        "    lb2 marked be1 down {} after its link went down",
        ms(detected)
    );
    match window {
        Some((a, b)) => println!(
            "    new connections: {failed} of {total} failed, all between {} and {} (the ones Maglev sent to be1 before detection)",
            ms(a.saturating_duration_since(t2)),
            ms(b.saturating_duration_since(t2))
        ),
        None => println!("    new connections: none failed ({total} attempts)"),
    }
    println!(
        "    be1's {on_be1} streams: {} reset by an RST from XDP (latest {} after the link went down), {} silent",
        be1_reset.len(),
        ms(be1_reset.iter().max().copied().unwrap_or_default()),
        on_be1.saturating_sub(be1_reset.len())
    );
    println!("    streams on be2 and be3: {others_open} of {others} still streaming");
    summary.push(format!(
        "backend dies    | down after {} | {}/{on_be1} be1 streams reset, {others_open}/{others} others kept",
        ms(detected),
        be1_reset.len()
    ));
    print!("{}", indent(&l.status_of("lb2").render()));

    println!("\n==> what the client saw");
    for line in &summary {
        println!("    {line}");
    }
    drop(watches);
    Ok(())
}
