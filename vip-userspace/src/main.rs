//! `vipd`: the agent binary.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use tracing::{error, info, warn};
use vip_common::Reason;
use vip_userspace::{
    config::{Config, Mode},
    dataplane::{
        Maps,
        kernel::{KernelMaps, LoadOptions, PROG_VIP, pin_dir_for},
        programmer::Programmer,
    },
    host,
    vrrp::{
        Family,
        router::{self, RouterHandle, RouterSpec},
    },
};

#[derive(Parser)]
#[command(
    name = "vipd",
    version,
    about = "A virtual IP for the Kubernetes control plane: XDP load balancing for kube-apiservers"
)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load and attach the XDP program, program the services, serve until
    /// SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Print traffic counters this often (seconds; 0 = never).
        #[arg(long, default_value_t = 5)]
        stats_interval: u64,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Remove what a stopped vipd left pinned on an interface: the XDP program
    /// detaches, the maps go, and the sysctls mode nat changed are restored.
    Detach {
        #[arg(long, short)]
        interface: String,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Validate a configuration file without touching the system.
    CheckConfig { config: PathBuf },
}

#[derive(clap::Args, Clone)]
struct PinArgs {
    /// bpffs folder for the pinned program link and maps. A vipd started with
    /// the same folder adopts them: traffic keeps flowing across restarts.
    #[arg(long, default_value = "/sys/fs/bpf/vipd")]
    pin_dir: PathBuf,
    /// Pin nothing: stopping vipd detaches the program.
    #[arg(long)]
    no_pin: bool,
}

impl PinArgs {
    fn dir(&self, iface: &str) -> Option<PathBuf> {
        (!self.no_pin).then(|| pin_dir_for(&self.pin_dir, iface))
    }
}

/// Where the sysctl values mode nat replaced are kept until `vipd detach`
/// (bpffs holds only BPF objects, so not in the pin folder).
fn sysctl_record(pin: &Path) -> PathBuf {
    let flat: String = pin
        .to_string_lossy()
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    PathBuf::from("/run/vipd").join(format!("{flat}.sysctl"))
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let res = match cli.cmd {
        Cmd::Run {
            config,
            stats_interval,
            pin,
        } => run(&config, stats_interval, &pin),
        Cmd::Detach { interface, pin } => detach(&interface, &pin),
        Cmd::CheckConfig { config } => check_config(&config),
    };
    if let Err(e) = res {
        eprintln!("vipd: error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: logs captured to files or journald stay plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn check_config(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    let backends: usize = cfg.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: ok ({} services, {} backends)",
        path.display(),
        cfg.services.len(),
        backends
    );
    Ok(())
}

fn detach(iface: &str, pin: &PinArgs) -> Result<()> {
    let Some(dir) = pin.dir(iface) else {
        bail!("--no-pin: nothing to detach")
    };
    KernelMaps::unpin(&dir)?;
    let record = sysctl_record(&dir);
    if record.exists() {
        host::restore_recorded(&record)?;
    }
    println!(
        "{iface}: pins under {} removed; the program detaches once no vipd holds it",
        dir.display()
    );
    Ok(())
}

fn run(path: &Path, stats_interval: u64, pin: &PinArgs) -> Result<()> {
    let cfg = Config::load(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let pin_dir = pin.dir(&cfg.interface);
    rt.block_on(serve(path, cfg, stats_interval, pin_dir))
}

fn nat_backends(cfg: &Config) -> Vec<SocketAddr> {
    cfg.services
        .iter()
        .filter(|s| s.mode == Mode::Nat)
        .flat_map(|s| {
            s.backends
                .iter()
                .map(|b| SocketAddr::new(b.address, b.port.unwrap_or(s.port)))
        })
        .collect()
}

fn service_vips(cfg: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = cfg.services.iter().map(|s| s.vip).collect();
    v.sort();
    v.dedup();
    v
}

fn held_vips(cfg: &Config) -> Vec<IpAddr> {
    if cfg.hold_vips {
        service_vips(cfg)
    } else {
        vec![]
    }
}

/// One VRRP virtual router per address family with VIPs (RFC 9568: the
/// families are separate instances, here with the same VRID).
fn start_vrrp(cfg: &Config) -> Result<Vec<RouterHandle>> {
    let Some(v) = &cfg.vrrp else {
        return Ok(vec![]);
    };
    let plan = v.plan().map_err(|(f, m)| anyhow::anyhow!("{f}: {m}"))?;
    let mut routers = vec![];
    for family in [Family::V4, Family::V6] {
        let vips: Vec<IpAddr> = service_vips(cfg)
            .into_iter()
            .filter(|a| Family::of(a) == family)
            .collect();
        if vips.is_empty() {
            continue;
        }
        let spec = RouterSpec {
            ifname: cfg.interface.clone(),
            family,
            plan: plan.clone(),
            vips,
        };
        match router::spawn(spec) {
            Ok(r) => routers.push(r),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("starting {} VRRP", router::label(family))));
            }
        }
    }
    Ok(routers)
}

/// Priority tracking: the advertised priority drops by the configured weight
/// while this node cannot forward for the VIP, or cannot serve it from its
/// own apiserver.
fn effective_priority(cfg: &Config, xdp_attached: bool, local_ok: bool) -> u8 {
    let Some(v) = &cfg.vrrp else { return 0 };
    let mut p = v.priority;
    if !xdp_attached {
        p = p.saturating_sub(v.track.xdp_detached);
    }
    if !local_ok {
        p = p.saturating_sub(v.track.local_apiserver);
    }
    p.max(1)
}

/// Consecutive probe results before the local apiserver counts as down or
/// up again: one lost SYN must not move the VIP, and a flapping apiserver
/// must not pull it back and forth.
const LOCAL_FALL: u32 = 2;
const LOCAL_RISE: u32 = 2;

/// The local apiserver's health for priority tracking, from TCP connect
/// probes once a second (the HTTPS /readyz probes of the controller will
/// take this over).
struct LocalHealth {
    ok: bool,
    streak: u32,
}

impl LocalHealth {
    /// Feeds one probe round (all local backends answered, or not); returns
    /// the state after it.
    fn feed(&mut self, answered: bool) -> bool {
        if answered == self.ok {
            self.streak = 0;
        } else {
            self.streak += 1;
            let need = if self.ok { LOCAL_FALL } else { LOCAL_RISE };
            if self.streak >= need {
                self.ok = answered;
                self.streak = 0;
            }
        }
        self.ok
    }
}

fn probe_local(backends: &[SocketAddr]) -> bool {
    backends
        .iter()
        .all(|b| std::net::TcpStream::connect_timeout(b, Duration::from_millis(500)).is_ok())
}

/// SIGHUP: validates the file again and applies the difference. Settings
/// fixed at load time (interface, XDP mode, table capacity, NAT settings,
/// adding the first nat service) need a restart; such a file is refused whole
/// and the running configuration stays.
fn reload(path: &Path, old: &Config, prog: &mut Programmer<KernelMaps>) -> Result<Config> {
    let new = Config::load(path)?;
    let fixed = [
        ("interface", old.interface != new.interface),
        ("xdp_mode", old.xdp_mode != new.xdp_mode),
        (
            "conntrack_capacity",
            old.conntrack_capacity != new.conntrack_capacity,
        ),
        ("nat", old.nat != new.nat),
        ("vrrp", old.vrrp != new.vrrp),
        (
            "services[].vip: the VIPs VRRP elects a holder for",
            old.vrrp.is_some() && service_vips(old) != service_vips(&new),
        ),
        (
            "services[].mode: the first nat service",
            nat_backends(old).is_empty() && !nat_backends(&new).is_empty(),
        ),
    ];
    if let Some((field, _)) = fixed.iter().find(|(_, changed)| *changed) {
        bail!(
            "{}: {field} changed; that takes a restart of vipd (systemctl restart vipd)",
            path.display()
        );
    }
    let node_addrs = host::interface_addrs(&new.interface)?;
    let desired = new.desired(&node_addrs).map_err(anyhow::Error::msg)?;
    let report = prog
        .apply(&desired)
        .context("programming the new services")?;
    info!(
        services = report.services_published,
        removed = report.services_removed,
        backends = report.backend_writes,
        maglev_writes = report.maglev_writes,
        "configuration reloaded"
    );
    Ok(new)
}

async fn serve(
    path: &Path,
    mut cfg: Config,
    stats_interval: u64,
    pin: Option<PathBuf>,
) -> Result<()> {
    let maps = KernelMaps::load(&LoadOptions {
        conntrack_capacity: cfg.conntrack_capacity,
        pin_dir: pin.clone(),
    })?;
    let mut prog = if maps.adopted() {
        info!(pins = %pin.as_deref().unwrap_or(Path::new("")).display(), "adopting the pinned maps: established flows keep their backends");
        Programmer::adopt(maps).context("reading the adopted maps")?
    } else {
        Programmer::new(maps)
    };
    let globals = cfg.nat.globals().map_err(anyhow::Error::msg)?;
    prog.maps_mut().set_globals(&globals)?;
    let node_addrs = host::interface_addrs(&cfg.interface)?;
    let desired = cfg.desired(&node_addrs).map_err(anyhow::Error::msg)?;
    let nat_list = nat_backends(&cfg);
    // Program the maps before attaching: the first packet the program sees
    // already finds every service.
    let report = prog.apply(&desired).context("programming the services")?;
    info!(
        services = report.services_published,
        backends = report.backend_writes,
        maglev_writes = report.maglev_writes,
        "services programmed"
    );
    let sysctls = if nat_list.is_empty() {
        vec![]
    } else {
        let c = host::prepare_nat(&cfg.interface, globals.nat_port_lo, globals.nat_port_hi)?;
        if let Some(dir) = &pin {
            // The pinned program needs these after we stop; `vipd detach`
            // restores the originals recorded by the first run.
            host::record(&c, &sysctl_record(dir))?;
        }
        info!(ports = %cfg.nat.ports, "mode nat: accept_local on, redirects off, source ports reserved");
        c
    };
    let attached = match prog
        .maps_mut()
        .attach(PROG_VIP, &cfg.interface, cfg.xdp_mode)
    {
        Ok(a) => a,
        Err(e) => {
            host::restore_all(sysctls);
            return Err(anyhow::Error::new(e).context(format!("attaching to {}", cfg.interface)));
        }
    };
    info!(interface = %cfg.interface, mode = %attached, "XDP program attached");
    let vips = held_vips(&cfg);
    let mut added = vec![];
    for vip in &vips {
        match host::set_vip(&cfg.interface, *vip, true) {
            Ok(()) => {
                info!(vip = %vip, interface = %cfg.interface, "VIP added");
                added.push(*vip);
            }
            Err(e) => {
                remove_vips(&cfg.interface, &added);
                host::restore_all(sysctls);
                return Err(e.into());
            }
        }
    }
    let routers = match start_vrrp(&cfg) {
        Ok(r) => r,
        Err(e) => {
            remove_vips(&cfg.interface, &added);
            host::restore_all(sysctls);
            return Err(e);
        }
    };
    println!("vipd ready: {} attached ({attached})", cfg.interface);

    // Keep the nat backends' neighbours resolved for the FIB lookups in XDP
    // (health probes will take this over).
    let keep = std::sync::Arc::new(std::sync::Mutex::new(nat_list.clone()));
    let keeper = (!nat_list.is_empty()).then(|| {
        let b = keep.clone();
        tokio::spawn(async move {
            loop {
                let b2 = b.lock().map(|v| v.clone()).unwrap_or_default();
                let _ = tokio::task::spawn_blocking(move || host::touch_backends(&b2)).await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut tick = tokio::time::interval(Duration::from_secs(stats_interval.max(1)));
    // Priority tracking is read once a second: the checks spawn `ip`.
    let mut track = tokio::time::interval(Duration::from_secs(1));
    let mut xdp_ok = true;
    let mut local = LocalHealth {
        ok: true,
        streak: 0,
    };
    let mut last = vec![];
    let mut last_vrrp = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break }
            _ = term.recv() => { info!("SIGTERM: stopping"); break }
            _ = hup.recv() => {
                match reload(path, &cfg, &mut prog) {
                    Ok(new) => {
                        let want = held_vips(&new);
                        let gone: Vec<IpAddr> = added.iter().filter(|v| !want.contains(v)).copied().collect();
                        remove_vips(&new.interface, &gone);
                        added.retain(|v| want.contains(v));
                        let new_vips: Vec<IpAddr> = want.iter().filter(|v| !added.contains(v)).copied().collect();
                        for vip in &new_vips {
                            match host::set_vip(&new.interface, *vip, true) {
                                Ok(()) => added.push(*vip),
                                Err(e) => error!(vip = %vip, error = %format!("{e:#}"), "adding a VIP failed"),
                            }
                        }
                        if let Ok(mut k) = keep.lock() {
                            *k = nat_backends(&new);
                        }
                        cfg = new;
                    }
                    Err(e) => error!(error = %format!("{e:#}"), "configuration reload refused; the running configuration stays"),
                }
            }
            _ = track.tick(), if !routers.is_empty() => {
                let iface = cfg.interface.clone();
                let locals = cfg.local_backends();
                let probe = locals.clone();
                let (attached, answered) = tokio::task::spawn_blocking(move || {
                    (host::xdp_attached(&iface).map_err(|e| e.to_string()), probe_local(&probe))
                })
                .await
                .unwrap_or_else(|e| (Err(e.to_string()), false));
                let now_xdp = attached.unwrap_or_else(|e| {
                    warn!(error = %e, "reading the XDP attachment failed; counting it as detached");
                    false
                });
                if now_xdp != xdp_ok {
                    xdp_ok = now_xdp;
                    if xdp_ok {
                        info!(interface = %cfg.interface, "XDP program attached again");
                    } else {
                        error!(interface = %cfg.interface, "XDP program not attached: this node cannot forward for the VIP; lowering the VRRP priority");
                    }
                }
                let was = local.ok;
                if local.feed(answered) != was {
                    if local.ok {
                        info!(backends = ?locals, "local apiserver answers again; VRRP priority restored");
                    } else {
                        error!(backends = ?locals, "local apiserver does not answer: lowering the VRRP priority");
                    }
                }
                let p = effective_priority(&cfg, xdp_ok, local.ok);
                for r in &routers {
                    r.set_priority(p);
                }
            }
            _ = tick.tick(), if stats_interval > 0 => {
                match prog.maps().reason_counters() {
                    Ok(c) => {
                        let line: Vec<String> = Reason::ALL
                            .iter()
                            .filter(|r| c[**r as usize].packets > 0)
                            .map(|r| format!("{}={}", r.label(), c[*r as usize].packets))
                            .collect();
                        if line != last {
                            info!(counters = %line.join(" "), "traffic");
                            last = line;
                        }
                    }
                    Err(e) => warn!(error = %e, "reading counters failed"),
                }
                for r in &routers {
                    let line = r.summary();
                    if last_vrrp.get(&r.family()) != Some(&line) {
                        info!(family = %router::label(r.family()), counters = %line, "vrrp");
                        last_vrrp.insert(r.family(), line);
                    }
                }
            }
        }
    }
    if let Some(k) = keeper {
        k.abort();
    }
    // VRRP first: the priority-0 advertisement lets a Backup take over after
    // its skew time; the pinned program keeps forwarding meanwhile.
    routers.iter().for_each(RouterHandle::stop);
    for r in routers {
        r.stopped().await;
    }
    remove_vips(&cfg.interface, &added);
    match &pin {
        Some(dir) => {
            // Pinned: the program keeps forwarding with these maps until the
            // next vipd adopts them, so its sysctls stay too.
            info!(
                pins = %dir.display(),
                "the XDP program stays attached and keeps forwarding; `vipd detach --interface {}` removes it",
                cfg.interface
            );
        }
        None => host::restore_all(sysctls),
    }
    // Dropping the programmer closes our handles; without pins the XDP link
    // goes with them and the program detaches.
    drop(prog);
    info!("stopped");
    Ok(())
}

fn remove_vips(iface: &str, vips: &[IpAddr]) {
    for vip in vips {
        match host::set_vip(iface, *vip, false) {
            Ok(()) => info!(vip = %vip, "VIP removed"),
            Err(e) => {
                warn!(vip = %vip, error = %e, "removing the VIP failed; remove it by hand with `ip addr del`")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_health_needs_two_results_in_a_row_to_change() {
        let mut h = LocalHealth {
            ok: true,
            streak: 0,
        };
        assert!(h.feed(false), "one failed probe must not move the VIP");
        assert!(h.feed(true));
        assert!(h.feed(false));
        assert!(!h.feed(false), "two in a row: down");
        assert!(!h.feed(true), "one success is not enough to come back");
        assert!(!h.feed(false));
        assert!(!h.feed(true));
        assert!(h.feed(true), "two in a row: up");
    }

    #[test]
    fn effective_priority_subtracts_the_weights_of_what_fails() {
        let text = "
interface: eth0
vrrp:
  vrid: 1
  priority: 150
  track:
    xdp_detached: 100
    local_apiserver: 60
services:
  - vip: 10.0.0.100
    mode: dsr
    backends:
      - address: 10.0.0.11
        local: true
";
        let cfg = Config::parse(Path::new("t.yaml"), text).expect("valid");
        assert_eq!(
            cfg.local_backends(),
            ["10.0.0.11:6443".parse().expect("addr")]
        );
        assert_eq!(effective_priority(&cfg, true, true), 150);
        assert_eq!(effective_priority(&cfg, false, true), 50);
        assert_eq!(effective_priority(&cfg, true, false), 90);
        assert_eq!(
            effective_priority(&cfg, false, false),
            1,
            "never 0: that means leaving"
        );
    }
}
