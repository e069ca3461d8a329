//! `vipd`: the agent binary.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use vip_userspace::{
    agent::{self, AgentOptions},
    config::{Config, MetricsListen, Mode, node::node_name},
    dataplane::kernel::{KernelMaps, pin_dir_for},
    host, import, snapshot,
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
    /// detaches, the maps go, and what vipd changed on the host for it (mode
    /// nat's sysctls; stacked dsr's ARP sysctls and VIPs on lo) is undone.
    Detach {
        #[arg(long, short)]
        interface: String,
        #[command(flatten)]
        pin: PinArgs,
    },
    /// Validate a configuration file without touching the system, and show
    /// the values this node resolves from it.
    CheckConfig {
        config: PathBuf,
        /// Away from the node (a laptop, CI before `kubectl apply`): check
        /// only the file itself (syntax, types, cross-field rules, timing)
        /// and list what could not be checked.
        #[arg(long)]
        offline: bool,
    },
    /// Ask the running agent: VRRP role, priority and peers, VIPs, backends
    /// with health, probe latency and flows, the last failover.
    Status {
        /// The agent's config: status is served on its `metrics_listen`.
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Where the agent serves /status (instead of reading --config).
        #[arg(long)]
        address: Option<SocketAddr>,
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// The same as `--output json`.
        #[arg(long, conflicts_with = "output")]
        json: bool,
        /// Ask every node of the group at once and show their views side by
        /// side: the master of each virtual router (two: split brain), each
        /// node's backend states, and the backends the nodes disagree on
        /// (different Maglev tables). Exits 2 when it warns.
        #[arg(long)]
        group: bool,
        /// With --group: the nodes to ask, every one (this one too), as
        /// ADDRESS or ADDRESS:PORT (the port defaults to this node's
        /// metrics_listen port), comma-separated. Default: this node, the
        /// config's state_sync and VRRP unicast peers, every dsr backend
        /// when this node is one of them (stacked), then every VRRP router
        /// the nodes have heard.
        #[arg(
            long,
            value_delimiter = ',',
            requires = "group",
            value_name = "ADDR,..."
        )]
        peers: Vec<String>,
        /// With --group: how long to wait for each node (to connect, and for
        /// each read); the nodes are asked at once.
        #[arg(long, default_value = "2s", value_parser = vip_userspace::config::parse_duration, requires = "group")]
        timeout: std::time::Duration,
    },
    /// Write a vipd configuration equivalent to an existing keepalived.conf
    /// and/or haproxy.cfg (the kubeadm HA recipe's pair); every setting that
    /// is not carried over becomes a comment saying why.
    Import(ImportArgs),
    /// Take one etcd snapshot now: stream it from etcd over mutual TLS,
    /// verify it, put it in the snapshot folder and apply retention. Settings
    /// come from the config's `snapshot:` section (or its defaults, kubeadm's
    /// paths), each overridable here.
    EtcdSnapshot(SnapshotArgs),
    /// Show the XDP program's decisions (service, new or established flow,
    /// backend, verdict and reason) for the packets of one address and/or
    /// port, one line each, while it runs; run it on the node where vipd
    /// runs. Tracing is switched off on exit, Ctrl-C, SIGTERM or timeout,
    /// and within 3 s if this process is killed.
    Trace(TraceArgs),
}

#[derive(clap::Args)]
struct TraceArgs {
    /// Packets with this address as source or destination: a client, a
    /// VIP, a backend.
    #[arg(long, value_name = "IP")]
    addr: Option<IpAddr>,
    /// Packets with this TCP/UDP port as source or destination.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Stop after this long (like 10s or 5m); default: until Ctrl-C.
    #[arg(long, value_name = "D", value_parser = vip_userspace::config::parse_duration)]
    duration: Option<std::time::Duration>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// The interface vipd's program is attached to (else the config's).
    #[arg(long, short)]
    interface: Option<String>,
    /// The agent's config, read for its interface.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(clap::Args)]
struct SnapshotArgs {
    /// A vipd config whose `snapshot:` section gives the settings. Without
    /// it: /etc/vipd/vipd.yaml when that exists, else the defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// etcd client URL (repeat for more).
    #[arg(long = "endpoint", value_name = "URL")]
    endpoints: Vec<String>,
    /// The etcd CA certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// A client certificate the etcd CA signed, and its key.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The snapshot folder.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// How many verified snapshots to keep.
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
}

const DEFAULT_CONFIG: &str = "/etc/vipd/vipd.yaml";

fn parse_other_node(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(file)))
        }
        _ => Err(format!(
            "{s:?}: write NAME=FILE, the node's name (`kubectl get nodes`) and its keepalived.conf"
        )),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// keepalived.conf: the VIP, the interface and the VRRP settings.
    #[arg(long, value_name = "FILE")]
    keepalived: Option<PathBuf>,
    /// haproxy.cfg: the apiservers and how they are checked.
    #[arg(long, value_name = "FILE")]
    haproxy: Option<PathBuf>,
    /// dsr: stacked control plane, vipd on every control-plane node (the
    /// recipe's shape); nat: dedicated load-balancer nodes.
    #[arg(long, default_value = "dsr", value_parser = import::parse_mode)]
    mode: Mode,
    /// This node's address: the server with it is the local apiserver.
    /// Default: keepalived's unicast_src_ip, else an address of this host.
    #[arg(long, value_name = "ADDR")]
    node_address: Option<IpAddr>,
    /// A backend's MAC for mode dsr, written as an override (else this
    /// node's neighbour table; with --other-node none: vipd reads it).
    #[arg(long = "mac", value_name = "ADDR=MAC", value_parser = import::parse_mac_arg)]
    macs: Vec<(IpAddr, [u8; 6])>,
    /// Without --haproxy: an apiserver (port 6443 by default).
    #[arg(long = "backend", value_name = "ADDR[:PORT]", value_parser = import::parse_backend_arg)]
    backends: Vec<(IpAddr, Option<u16>)>,
    /// Without --keepalived: the VIP (else HAProxy's bind address).
    #[arg(long = "vip", value_name = "ADDR")]
    vips: Vec<IpAddr>,
    /// The interface that carries the VIP (default: keepalived's).
    #[arg(long, value_name = "IF")]
    interface: Option<String>,
    /// Another node's keepalived.conf, by node name (repeat for each): the
    /// output is then one file for every node, the priorities under
    /// `nodes:`, with no `local: true` and no MAC but --mac's.
    #[arg(long = "other-node", value_name = "NAME=FILE", value_parser = parse_other_node)]
    other_nodes: Vec<(String, PathBuf)>,
    /// This node's name under `nodes:` (default: NODE_NAME, else the
    /// hostname).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Where to write the configuration (default: stdout).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
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

/// Where the host changes the pinned program relies on (sysctls, VIPs on
/// lo; see `host::Changed`) are kept until `vipd detach`
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
        Cmd::CheckConfig { config, offline } => check_config(&config, offline),
        Cmd::Status {
            config,
            address,
            output,
            json,
            group: true,
            peers,
            timeout,
        } => status_group(
            &config,
            address,
            &peers,
            timeout,
            json || output == Output::Json,
        )
        .map(|agreed| {
            if !agreed {
                // Printed already; the exit status tells a script.
                std::process::exit(2)
            }
        }),
        Cmd::Status {
            config,
            address,
            output,
            json,
            ..
        } => status(&config, address, if json { Output::Json } else { output }),
        Cmd::Import(args) => import(args),
        Cmd::EtcdSnapshot(args) => etcd_snapshot(args),
        Cmd::Trace(args) => trace(args),
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

/// Parses and validates the file; on the node also resolves this node's
/// values and reads the probe certificates and the state-sync key file it
/// names. Changes nothing on the system.
fn check_config(path: &Path, offline: bool) -> Result<()> {
    let cfg = Config::load(path)?;
    let backends: usize = cfg.services.iter().map(|s| s.backends.len()).sum();
    let nodes = match cfg.nodes.len() {
        0 => String::new(),
        n => format!(", {n} nodes"),
    };
    if offline {
        println!(
            "{}: ok offline ({} services, {} backends{nodes})",
            path.display(),
            cfg.services.len(),
            backends
        );
        for (ok, line) in agent::timing_report(&cfg) {
            println!("{}{line}", if ok { "" } else { "warning: " });
        }
        println!("not checked offline (run `vipd check-config` on each node for these):");
        for line in cfg.offline_unchecked() {
            println!("  - {line}");
        }
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cfg, resolved) = rt.block_on(Config::load_for_node(path))?;
    vip_userspace::link::ifindex(&cfg.interface)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    agent::probe_jobs(&cfg).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    if let Some(d) = cfg.discovery() {
        vip_userspace::discovery::client::Client::new(
            &d,
            |k| std::env::var(k).ok(),
            Path::new(vip_userspace::discovery::client::SERVICE_ACCOUNT_DIR),
        )
        .map_err(|e| anyhow::anyhow!("{}: discovery: {e}", path.display()))?;
    }
    if let Some(k) = cfg.state_sync.as_ref().and_then(|s| s.key_file.as_deref()) {
        vip_userspace::sync::auth::Keys::load(k)
            .map_err(|e| anyhow::anyhow!("{}: state_sync.key_file: {e}", path.display()))?;
    }
    println!(
        "{}: ok ({} services, {} backends{nodes})",
        path.display(),
        cfg.services.len(),
        backends
    );
    println!("{}", resolved.describe(&node_name()));
    for (ok, line) in agent::timing_report(&cfg) {
        println!("{}{line}", if ok { "" } else { "warning: " });
    }
    Ok(())
}

/// The config at `config`, resolved for this node as `vipd run` resolves
/// it; `None` when there is no file at the default place.
fn node_config(config: &Path) -> Result<Option<Config>> {
    if config == Path::new(DEFAULT_CONFIG) && !config.exists() {
        return Ok(None);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(Some(rt.block_on(Config::load_for_node(config))?.0))
}

/// Where this node's agent serves /status: `--address`, else the config's
/// `metrics_listen` (`node:PORT` resolved), else the default.
fn listen_addr(
    config: &Path,
    cfg: Option<&Config>,
    address: Option<SocketAddr>,
) -> Result<SocketAddr> {
    match (address, cfg) {
        (Some(a), _) => Ok(a),
        (None, None) => Ok(vip_userspace::config::DEFAULT_METRICS_LISTEN),
        (None, Some(c)) => match c.metrics_listen.and_then(MetricsListen::addr) {
            Some(a) => Ok(a),
            None => bail!(
                "{}: metrics_listen is null, and /status is served there; set it (default 127.0.0.1:9590) and reload",
                config.display()
            ),
        },
    }
}

fn status(config: &Path, address: Option<SocketAddr>, output: Output) -> Result<()> {
    let cfg = match address {
        Some(_) => None,
        None => node_config(config)?,
    };
    let addr = listen_addr(config, cfg.as_ref(), address)?;
    let (st, json) = vip_userspace::status::fetch(
        vip_userspace::status::reach(addr),
        std::time::Duration::from_secs(3),
    )?;
    match output {
        Output::Json => println!("{json}"),
        Output::Table => print!("{}", st.render()),
    }
    Ok(())
}

/// `vipd status --group`: every node's /status, compared. `Ok(false)`: it
/// warned (split brain, no master, a disagreement, a node that did not
/// answer).
fn status_group(
    config: &Path,
    address: Option<SocketAddr>,
    peers: &[String],
    timeout: std::time::Duration,
    json: bool,
) -> Result<bool> {
    use std::collections::BTreeSet;
    use vip_userspace::status::{group, reach};
    let cfg = node_config(config)?;
    let listen = listen_addr(config, cfg.as_ref(), address)?;
    let port = listen.port();
    let views = if peers.is_empty() {
        let Some(cfg) = &cfg else {
            bail!(
                "no config at {DEFAULT_CONFIG} to find the other nodes in: pass --config FILE, or --peers ADDR,ADDR,... (every node's metrics address)"
            );
        };
        if listen.ip().is_loopback() {
            bail!(
                "{}: metrics_listen is {listen}, on loopback: no other node's /status can be reached there. Serve it on the nodes' addresses (`metrics_listen: node:{port}`, or [::]:{port}) on every node, or pass --peers",
                config.display()
            );
        }
        let here: Vec<IpAddr> = vip_userspace::link::all_addrs()
            .map_err(|e| anyhow::anyhow!("reading this node's addresses: {e}"))?
            .into_iter()
            .flat_map(|(_, a)| a)
            .collect();
        let mut addrs = vec![reach(listen)];
        addrs.extend(
            group::config_peers(cfg, &here)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port)),
        );
        let mut views = group::fetch_all(&addrs, timeout);
        // Second round: the VRRP routers the nodes heard that the file does
        // not name (a multicast group has no peer list).
        let known: BTreeSet<IpAddr> = addrs.iter().map(SocketAddr::ip).chain(here).collect();
        let heard: Vec<SocketAddr> = group::heard_peers(&views, &known)
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        views.extend(group::fetch_all(&heard, timeout));
        views
    } else {
        let addrs = peers
            .iter()
            .map(|p| {
                let p = p.trim();
                p.parse::<SocketAddr>()
                    .or_else(|_| p.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, port)))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "--peers: {p:?} is not ADDRESS or ADDRESS:PORT (like 10.0.0.12, 10.0.0.12:9590 or [fd00::12]:9590)"
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        group::fetch_all(&addrs, timeout)
    };
    let views = group::dedupe(views);
    let cmp = group::compare(&views);
    if json {
        println!("{:#}", group::to_json(&views, &cmp));
    } else {
        print!("{}", group::render(&views, &cmp));
    }
    Ok(cmp.warnings().is_empty())
}

/// `vipd import`: reads the files, this host's addresses and neighbour table,
/// converts, and writes the result (already parsed by vipd's own loader).
fn import(a: ImportArgs) -> Result<()> {
    let read = |p: &Option<PathBuf>| -> Result<Option<import::Source>> {
        p.as_ref()
            .map(|p| {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read", p.display()))?;
                Ok(import::Source {
                    name: p.display().to_string(),
                    text,
                })
            })
            .transpose()
    };
    let other_nodes = a
        .other_nodes
        .iter()
        .map(|(name, path)| {
            Ok((
                name.clone(),
                read(&Some(path.clone()))?.expect("a path was given"),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = import::Options {
        other_nodes,
        node_name: a.node_name.unwrap_or_else(node_name),
        keepalived: read(&a.keepalived)?,
        haproxy: read(&a.haproxy)?,
        mode: a.mode,
        node_address: a.node_address,
        interface: a.interface,
        vips: a.vips,
        backends: a.backends,
        macs: a.macs.into_iter().collect(),
        host: import::host_addresses().context("listing this host's addresses")?,
    };
    let out = import::convert(&opts, &import::KernelNeighbours)?;
    match &a.output {
        Some(path) => {
            std::fs::write(path, &out.yaml)
                .with_context(|| format!("{}: cannot write", path.display()))?;
            eprintln!(
                "vipd import: wrote {} ({} service(s); {} settings not carried over, each a `# not carried over` comment). Read it, then run `vipd check-config {}`",
                path.display(),
                out.config.services.len(),
                out.not_carried_over,
                path.display()
            );
        }
        None => print!("{}", out.yaml),
    }
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (cfg, resolved) = rt.block_on(Config::load_for_node(path))?;
    tracing::info!("{}", resolved.describe(&node_name()));
    let pin_dir = pin.dir(&cfg.interface);
    let opts = AgentOptions {
        config_path: path.to_owned(),
        stats_interval,
        sysctl_record: pin_dir.as_deref().map(sysctl_record),
        pin: pin_dir,
    };
    rt.block_on(agent::serve(opts, cfg))
}

/// `vipd etcd-snapshot`: one snapshot now, named for the current time.
fn etcd_snapshot(a: SnapshotArgs) -> Result<()> {
    let default = Path::new(DEFAULT_CONFIG);
    let config = a
        .config
        .as_deref()
        .or_else(|| default.exists().then_some(default));
    let mut settings = match config {
        Some(c) => Config::load(c)?.snapshot.unwrap_or_default(),
        None => snapshot::SnapshotSettings::default(),
    };
    if !a.endpoints.is_empty() {
        settings.endpoints = a.endpoints;
    }
    let over = |slot: &mut PathBuf, v: Option<PathBuf>| {
        if let Some(v) = v {
            *slot = v;
        }
    };
    over(&mut settings.ca, a.ca);
    over(&mut settings.cert, a.cert);
    over(&mut settings.key, a.key);
    over(&mut settings.dir, a.dir);
    if a.keep.is_some() {
        settings.keep = a.keep;
    }
    let plan = settings
        .plan()
        .map_err(|(f, m)| anyhow::anyhow!("{f}: {m}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let taken = rt
        .block_on(snapshot::take(&plan, snapshot::unix_now()))
        .map_err(|e| anyhow::anyhow!("etcd snapshot failed [{}]: {e}", e.reason()))?;
    println!(
        "{}: {} bytes, revision {}, {} keys, verified in {:.2}s",
        taken.path.display(),
        taken.size,
        taken.revision,
        taken.total_keys,
        taken.duration.as_secs_f64()
    );
    for p in &taken.pruned {
        println!("pruned {p}");
    }
    for c in &taken.corrupt {
        println!("warning: {c} is corrupt (kept out of retention, left in place)");
    }
    Ok(())
}

/// `vipd trace`: switches the program's decision trace on for the filter,
/// prints its records until stopped, switches it off (`trace::follow`).
fn trace(a: TraceArgs) -> Result<()> {
    if a.addr.is_none() && a.port.is_none() {
        bail!(
            "say what to trace: --addr IP (a client, VIP or backend) and/or --port N; every packet would flood the record ring"
        );
    }
    let iface = match a.interface {
        Some(i) => i,
        None => match node_config(&a.config)? {
            Some(c) => c.interface,
            None => bail!(
                "no config at {DEFAULT_CONFIG} to read the interface from: pass --interface IF (the one vipd attached to) or --config FILE"
            ),
        },
    };
    let opts = vip_userspace::trace::Options {
        iface,
        filter: vip_userspace::trace::Filter {
            addr: a.addr,
            port: a.port,
        },
        duration: a.duration,
        json: a.json,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(vip_userspace::trace::follow(
        &opts,
        &mut std::io::stdout().lock(),
    ))?;
    Ok(())
}
