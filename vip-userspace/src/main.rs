//! `vipd`: the agent binary.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use vip_userspace::{
    agent::{self, AgentOptions},
    config::Config,
    dataplane::kernel::{KernelMaps, pin_dir_for},
    host,
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
    },
}

const DEFAULT_CONFIG: &str = "/etc/vipd/vipd.yaml";

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
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
        Cmd::Status {
            config,
            address,
            output,
        } => status(&config, address, output),
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

/// Parses and validates the file and reads the probe certificates it names;
/// changes nothing on the system.
fn check_config(path: &Path) -> Result<()> {
    let cfg = Config::load(path)?;
    agent::probe_jobs(&cfg).map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    let backends: usize = cfg.services.iter().map(|s| s.backends.len()).sum();
    println!(
        "{}: ok ({} services, {} backends)",
        path.display(),
        cfg.services.len(),
        backends
    );
    for (ok, line) in agent::timing_report(&cfg) {
        println!("{}{line}", if ok { "" } else { "warning: " });
    }
    Ok(())
}

fn status(config: &Path, address: Option<SocketAddr>, output: Output) -> Result<()> {
    let addr = match address {
        Some(a) => a,
        // No config at the default place: the default listen address.
        None if config == Path::new(DEFAULT_CONFIG) && !config.exists() => {
            vip_userspace::config::DEFAULT_METRICS_LISTEN.parse()?
        }
        None => match Config::load(config)?.metrics_listen {
            Some(a) => a,
            None => bail!(
                "{}: metrics_listen is null, and /status is served there; set it (default 127.0.0.1:9590) and reload",
                config.display()
            ),
        },
    };
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
    let opts = AgentOptions {
        config_path: path.to_owned(),
        stats_interval,
        sysctl_record: pin_dir.as_deref().map(sysctl_record),
        pin: pin_dir,
    };
    rt.block_on(agent::serve(opts, cfg))
}
