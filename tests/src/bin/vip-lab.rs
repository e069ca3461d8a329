//! The namespace lab behind `cargo xtask run`: a client, an LB node running
//! vipd with the real XDP program, and three apiserver stand-ins behind the VIP.
//! It sends a request through the VIP every second, prints who answered and
//! vipd's counters, and removes everything on Ctrl-C (or after --duration).

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use vip_tests::{
    netns::{VIP_V4, in_netns},
    scenario::{Fwd, LbLab, PORT},
    standin::{HttpsConn, client_config},
};
use vip_userspace::dataplane::kernel::AttachMode;

#[derive(Parser)]
#[command(name = "vip-lab", about = "vipd in a network-namespace lab")]
struct Args {
    /// XDP attach mode on the LB's veth: native or skb.
    #[arg(long, default_value = "native")]
    xdp_mode: String,
    /// Forwarding mode of the service: dsr or nat.
    #[arg(long, default_value = "dsr")]
    mode: String,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Run vipd on this host's real interfaces with this config instead of the lab.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

static STOP: AtomicBool = AtomicBool::new(false);

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
    let fwd = match args.mode.as_str() {
        "dsr" => Fwd::Dsr,
        "nat" => Fwd::Nat,
        other => bail!("--mode {other:?}: use dsr or nat"),
    };

    println!(
        "==> building the lab: client, lb (vipd, XDP {}), be1..be3 (apiserver stand-ins)",
        args.xdp_mode
    );
    let l = LbLab::start("lab", mode, fwd);
    let client_ns = l.lab.node("client").ns.clone();
    let lb_ns = l.lab.node("lb").ns.clone();
    println!(
        "==> lab up. VIP {VIP_V4}:{PORT} (and [fd77::100]:{PORT}), mode {}",
        args.mode
    );
    for line in l
        .vipd
        .logs()
        .lines()
        .filter(|l| l.contains("attached") || l.contains("programmed"))
    {
        println!("    vipd:   {}", line.trim());
    }
    let link = l.lab.sh("lb", &["ip", "-d", "link", "show", "eth0"]);
    for line in link
        .lines()
        .filter(|l| l.contains("prog/xdp") || l.contains("xdp"))
    {
        println!("    lb eth0: {}", line.trim());
    }
    println!("    namespaces: {}", l.lab.namespaces().join(" "));
    println!("    program:    ip netns exec {lb_ns} ip link show eth0   (look for 'xdp')");
    println!(
        "    try:        ip netns exec {client_ns} curl -s --cacert {} https://{VIP_V4}:{PORT}/whoami",
        l.ca_path.display()
    );
    println!("    vipd config: {}", l.config_path.display());
    println!("==> one request through the VIP per second; Ctrl-C stops and cleans up");

    let cfg = client_config(&l.pki.ca_pem(), None);
    let started = Instant::now();
    let counters_seen = Arc::new(AtomicBool::new(false));
    let mut last_log_len = l.vipd.logs().len();
    while !STOP.load(Ordering::SeqCst) {
        if let Some(d) = args.duration
            && started.elapsed() >= Duration::from_secs(d)
        {
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
            Ok(line) => println!("    client: {line}"),
            Err(e) => println!("    client: request failed: {e}"),
        }
        // Show vipd's new log lines (its counters), as it prints them.
        let logs = l.vipd.logs();
        if logs.len() > last_log_len {
            for line in logs[last_log_len..]
                .lines()
                .filter(|l| l.contains("traffic") || l.contains("VIP"))
            {
                println!("    vipd:   {}", line.trim());
                if line.contains("tx_dsr=") || line.contains("tx_reverse_nat=") {
                    counters_seen.store(true, Ordering::SeqCst);
                }
            }
            last_log_len = logs.len();
        }
        for _ in 0..10 {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    println!("==> stopping: vipd, stand-ins, namespaces");
    let namespaces = l.lab.namespaces().to_vec();
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
    if !counters_seen.load(Ordering::SeqCst) {
        bail!("vipd reported no traffic counters while the lab ran");
    }
    Ok(())
}
