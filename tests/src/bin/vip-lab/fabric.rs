//! `cargo xtask run -- --topology bgp`: the fabric lab (`vip_tests::fabric`)
//! as the interactive lab. A router running FRR (ECMP over an L4 hash), three
//! LBs each running vipd (announce mode, mode dsr with IPIP to the backends,
//! or with `--mode nat` mode nat to the VIP with port slices and keyed mesh
//! sync) and BIRD with the shipped snippet (BGP + BFD 50 ms x 3 to the router),
//! two apiserver stand-ins in subnets of their own, a client behind the
//! router. It prints where to look and sends a request through the VIP
//! every second; `--demo` kills an LB and restarts another under traffic and
//! prints what the client saw.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use vip_tests::fabric::{CONVERGE, DSR_METRICS, DsrLab, Fabric, LBS, LabMode, VIP};
use vip_tests::netns::in_netns;
use vip_tests::standin::HttpsConn;
use vip_tests::traffic::{End, Poller, outage};

pub fn run(
    nat: bool,
    demo: bool,
    n_watches: usize,
    duration: Option<u64>,
    stop: &AtomicBool,
) -> Result<()> {
    let how = if nat {
        "mode nat to the VIP, port slices, keyed mesh state sync"
    } else {
        "mode dsr/IPIP"
    };
    println!(
        "==> building the fabric: router (FRR, ECMP L4 hash), lb0..lb2 (vipd announce + {how}, XDP skb, BIRD BGP + BFD), be0 and be1 (apiserver stand-ins, other subnets), client"
    );
    let mode = if nat { LabMode::Nat } else { LabMode::Dsr };
    let mut lab = DsrLab::with_mode(Fabric::new("lab-bgp"), "lab-bgp", mode);
    where_to_look(&lab);
    let namespaces = lab.f.namespaces().to_vec();
    let res = if demo {
        walkthrough(&mut lab, n_watches)
    } else {
        serve(&lab, duration, stop)
    };
    println!("==> stopping: vipd, BIRD, FRR, stand-ins, namespaces");
    drop(lab);
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let left = String::from_utf8_lossy(&out.stdout).into_owned();
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

fn where_to_look(lab: &DsrLab) {
    let f = &lab.f;
    println!(
        "\n==> the VIP {VIP}:{} is announced by all {LBS} LBs; where to look:",
        DsrLab::vip_addr().port()
    );
    println!(
        "    router's ECMP route:   ip netns exec {} ip route show {VIP}",
        f.router
    );
    println!(
        "    router's BGP and BFD:  ip netns exec {} vtysh --vty_socket {}/frr -c 'show bgp summary' -c 'show bfd peers brief'",
        f.router,
        f.dir().display()
    );
    for (i, lb) in f.lbs.iter().enumerate() {
        println!(
            "    lb{i}: ip netns exec {} vipd status --address {DSR_METRICS}   (table 198: ip netns exec {} ip route show table 198)",
            lb.ns, lb.ns
        );
    }
    println!(
        "    client:                ip netns exec {} curl -k https://{VIP}:{}/whoami",
        f.client,
        DsrLab::vip_addr().port()
    );
    println!(
        "    router now: {:?}",
        f.router_routes(VIP)
            .iter()
            .map(|h| h.dev.clone())
            .collect::<Vec<_>>()
    );
}

/// One request through the VIP per second: which LB the router hashed it
/// to and which backend answered.
fn serve(lab: &DsrLab, duration: Option<u64>, stop: &AtomicBool) -> Result<()> {
    println!("\n==> one request through the VIP per second; Ctrl-C stops and cleans up");
    let started = Instant::now();
    let mut answered = 0;
    while !stop.load(Ordering::SeqCst) {
        if duration.is_some_and(|d| started.elapsed() >= Duration::from_secs(d)) {
            break;
        }
        let cfg = lab.client_cfg.clone();
        let res = in_netns(&lab.f.client, move || -> Result<_, String> {
            let mut c = HttpsConn::connect(
                DsrLab::vip_addr(),
                "kubernetes",
                cfg,
                Duration::from_secs(2),
            )
            .map_err(|e| format!("{e:?}"))?;
            let local = c.local_addr().map_err(|e| format!("{e:?}"))?;
            let r = c.get("/whoami").map_err(|e| format!("{e:?}"))?;
            Ok((local, r.text().trim().to_owned()))
        });
        match res {
            Ok((local, who)) => {
                answered += 1;
                let via = lab
                    .f
                    .lb_of(local, DsrLab::vip_addr())
                    .map_or("?".into(), |i| format!("lb{i}"));
                println!(
                    "    client: {local} -> {} via {via}, answered by {who}",
                    DsrLab::vip_addr()
                );
            }
            Err(e) => println!("    client: request failed: {e}"),
        }
        super::nap(stop);
    }
    if answered == 0 {
        bail!("no request was answered through the VIP");
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// The walkthrough: lb0 dies (link down, vipd SIGKILL), then lb1's vipd
/// restarts (SIGTERM, drain, start), with watch streams open and a new
/// connection every 10 ms; what the client saw.
fn walkthrough(lab: &mut DsrLab, n_watches: usize) -> Result<()> {
    println!(
        "\n==> demo: {n_watches} watch streams open through the VIP, and a new connection every 10 ms"
    );
    let watches = lab.watches(n_watches);
    let on = lab.lbs_of(&watches);
    for i in 0..LBS {
        println!(
            "    {} streams cross lb{i}",
            on.iter().filter(|&&l| l == i).count()
        );
    }
    let poller = Poller::start_at(
        &lab.f.client,
        &lab.client_cfg,
        DsrLab::vip_addr(),
        Duration::from_millis(10),
        Duration::from_millis(300),
    );
    std::thread::sleep(Duration::from_secs(2));
    let mut summary = vec![];

    println!("\n==> 1/2: lb0 dies: its link goes down and vipd gets SIGKILL");
    let before: Vec<u64> = watches.report().iter().map(|r| r.events).collect();
    let t1 = Instant::now();
    lab.f.lb_link_down(0);
    if let Some(p) = lab.vipds[0].take() {
        p.signal(libc::SIGKILL);
        p.wait_timeout(Duration::from_secs(5));
    }
    let dropped = lab.f.wait_for_paths(VIP, LBS - 1, Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(3));
    let (worst, failed, total) = outage(&poller.attempts(), t1);
    let rep = watches.report();
    let kept = |lb_dead: bool| {
        let v: Vec<_> = rep
            .iter()
            .enumerate()
            .filter(|(n, _)| (on[*n] == 0) == lb_dead)
            .collect();
        let ok = v
            .iter()
            .filter(|(n, r)| r.end == End::Open && r.events > before[*n])
            .count();
        (ok, v.len())
    };
    let (dead_ok, dead_n) = kept(true);
    let (live_ok, live_n) = kept(false);
    println!(
        "    the router dropped lb0 {} after its link went down",
        ms(dropped)
    );
    println!(
        "    new connections: longest time without an answer {} ({failed} of {total} failed)",
        ms(worst)
    );
    let why = match lab.mode {
        LabMode::Dsr => "an ECMP rehash to an LB with the same Maglev table",
        LabMode::Nat => "an ECMP rehash to an LB that state sync told of the flow",
    };
    println!("    streams that crossed lb0: {dead_ok} of {dead_n} still streaming ({why})");
    println!("    streams on lb1 and lb2: {live_ok} of {live_n} still streaming");
    summary.push(format!(
        "lb0 dies        | router drops it in {} | new connections: {failed}/{total} failed | streams kept: {dead_ok}/{dead_n} via lb0, {live_ok}/{live_n} others",
        ms(dropped)
    ));
    lab.restore(0);

    println!(
        "\n==> 2/2: planned restart of lb1's vipd: SIGTERM (route withdrawn, drain), then started again"
    );
    let t2 = Instant::now();
    let p = lab.vipds[1].take().expect("lb1's vipd runs");
    p.signal(libc::SIGTERM);
    let withdrawn = lab.f.wait_for_paths(VIP, LBS - 1, Duration::from_secs(5));
    p.wait_timeout(Duration::from_secs(10));
    let exited = t2.elapsed();
    lab.vipds[1] = Some(lab.f.spawn_vipd(1, &lab.config));
    lab.f.wait_for_paths(VIP, LBS, CONVERGE);
    let back = t2.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let attempts = poller.finish();
    let (_, failed, total) = outage(&attempts, t2);
    let open = watches
        .report()
        .iter()
        .filter(|r| r.end == End::Open)
        .count();
    println!(
        "    route off the router {} after SIGTERM, vipd exited at {}, back on the router at {}",
        ms(withdrawn),
        ms(exited),
        ms(back)
    );
    println!(
        "    new connections: {failed} of {total} failed; streams: {open} of {n_watches} still streaming"
    );
    summary.push(format!(
        "lb1 restarts    | {failed}/{total} new connections failed | {open}/{n_watches} streams open"
    ));

    println!("\n==> what the client saw");
    for line in &summary {
        println!("    {line}");
    }
    Ok(())
}
