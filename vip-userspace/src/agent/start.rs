//! The start-up sequence, in small steps: the config resolved for this
//! node, the probes, the dataplane loaded and programmed, state sync, the
//! host changes, the attach, the first certificate round, the side tasks.
//! What runs afterwards is the loop in `mod.rs`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info, warn};
use vip_common::Globals;

use super::{
    Agent, AgentOptions, Inbox, file_stamp,
    observe::Observed,
    probes::{ProbeEvent, Probes, probe_jobs, spawn_gate_round, timing_report},
    snapshots::Snapshots,
    state::{AgentState, Event, Settings, Welcome},
    sweep::{FlowReport, SweepSync, spawn_sweeper},
    telemetry::Telemetry,
    write_local_mac,
};
use crate::{
    certcheck::CertCheck,
    config::{Config, Encap, MetricsListen, Mode},
    controller::Controller,
    dataplane::{
        Maps,
        kernel::{KernelCounters, KernelMaps, LoadOptions, PROG_VIP},
        programmer::Programmer,
    },
    host::{self, HostGuard},
    metrics::{self, Metrics},
    neigh::{self, NeighEvent},
    sync::{SyncHandle, auth::KeySource},
};

/// The VIPs of mode dsr services that have this node's own apiserver as a
/// backend (`local: true`): a stacked control plane, see
/// `host::prepare_stacked`.
fn stacked_vips(cfg: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = cfg
        .services
        .iter()
        .filter(|s| s.mode == Mode::Dsr && s.backends.iter().any(|b| b.local))
        .map(|s| s.vip)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn has_nat(cfg: &Config) -> bool {
    cfg.services.iter().any(|s| s.mode == Mode::Nat)
}

/// Whether some service encapsulates to some backend (this node, as LB,
/// sends IPIP / IPv6 in IPv6).
fn has_encap(cfg: &Config) -> bool {
    cfg.services
        .iter()
        .any(|s| s.backends.iter().any(|b| s.encap_of(b) != Encap::None))
}

/// The families this node decapsulates as an encapsulated backend: a stacked
/// node (its own `local: true` backend) of a service that encapsulates to
/// its other backends is, when another node holds the VIP, one of those
/// other backends (every node runs the same configuration, as with stacked
/// mode dsr). (IPv4, IPv6).
fn decap_families(cfg: &Config) -> (bool, bool) {
    let mut fam = (false, false);
    for s in &cfg.services {
        if !s.backends.iter().any(|b| b.local) {
            continue;
        }
        for b in s.backends.iter().filter(|b| s.encap_of(b) != Encap::None) {
            if b.address.is_ipv4() {
                fam.0 = true;
            } else {
                fam.1 = true;
            }
        }
    }
    fam
}

/// This node's own addresses (every interface's; the VIPs are left out by
/// `neigh::derive_local`) make its backends `local` in mode dsr.
pub(super) fn derive_local(mut cfg: Config) -> Result<Config> {
    let here: Vec<IpAddr> = crate::link::all_addrs()?
        .into_iter()
        .flat_map(|(_, a)| a)
        .collect();
    for b in neigh::derive_local(&mut cfg, &here) {
        info!(backend = %b, "this node's own apiserver (its address is this node's): delivered locally, and tracked by VRRP");
    }
    Ok(cfg)
}

/// Serves /metrics, /healthz, /readyz and /status if asked to.
async fn serve_metrics(cfg: &Config, metrics: &Arc<Metrics>) -> Result<Option<JoinHandle<()>>> {
    let Some(addr) = cfg.metrics_listen.and_then(MetricsListen::addr) else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("metrics_listen: {addr}: cannot listen; pick a free address, or set metrics_listen: null")
    })?;
    info!(listen = %addr, "serving /metrics, /healthz and /readyz");
    Ok(Some(tokio::spawn(metrics::serve(l, metrics.clone()))))
}

/// The maps programmed, ready to attach.
struct Programmed {
    ctl: Controller<KernelMaps>,
    globals: Globals,
    /// The interface's MAC as written to the program.
    local_mac: Option<[u8; 6]>,
    /// The address state sync listens on, if it runs.
    sync_listen: Option<IpAddr>,
    /// State sync's keys, if it authenticates.
    sync_keys: Option<Arc<KeySource>>,
}

/// Loads (or adopts) the maps and programs every service before anything
/// is attached: the first packet the program sees already finds them.
fn program(
    opts: &AgentOptions,
    cfg: Config,
    neighbours: BTreeMap<IpAddr, [u8; 6]>,
) -> Result<Programmed> {
    let maps = KernelMaps::load(&LoadOptions {
        conntrack_capacity: cfg.conntrack_capacity,
        pin_dir: opts.pin.clone(),
    })?;
    let mut prog = if maps.adopted() {
        info!(pins = %opts.pin.as_deref().unwrap_or(Path::new("")).display(), "adopting the pinned maps: established flows keep their backends");
        Programmer::adopt(maps).context("reading the adopted maps")?
    } else {
        Programmer::new(maps)
    };
    let node_addrs = crate::link::addresses(&cfg.interface)?;
    // Read before anything is changed: a bad key file stops the start.
    let sync_keys = match cfg.state_sync.as_ref().and_then(|s| s.key_file.as_deref()) {
        Some(p) => Some(Arc::new(KeySource::open(p)?)),
        None => None,
    };
    let sync_listen = match &cfg.state_sync {
        Some(s) => Some(s.listen_addr(&node_addrs, &cfg.vips())?),
        None => None,
    };
    let slice = nat_slice(&cfg, sync_listen)?;
    let globals = cfg.nat.globals(slice);
    prog.maps_mut().set_globals(&globals)?;
    let owners = match (slice, &cfg.state_sync, sync_listen) {
        (Some(_), Some(sync), Some(me)) => nat_owner_entries(&cfg, me, &sync.peers),
        _ => Vec::new(),
    };
    prog.maps_mut()
        .set_nat_owners(&owners)
        .context("listing the other LBs' NAT port slices")?;
    let local_mac = write_local_mac(prog.maps_mut(), &cfg.interface, None);
    if local_mac.is_none() {
        warn!(interface = %cfg.interface, "the interface's MAC could not be read or written: frames for a service are served whatever MAC they are addressed to");
    }
    let (ctl, report) = Controller::with_neighbours(prog, cfg, node_addrs, neighbours)
        .context("programming the services")?;
    info!(
        services = report.services_published,
        backends = report.backend_writes,
        maglev_writes = report.maglev_writes,
        "services programmed"
    );
    Ok(Programmed {
        ctl,
        globals,
        local_mac,
        sync_listen,
        sync_keys,
    })
}

/// This node's slice of the NAT source ports when every LB translates to
/// the VIP at once (`announce:` with `state_sync:`), else `None` (the whole
/// range: one VRRP holder allocates at a time, and a new master's
/// allocations skip the ports its synced entries hold).
fn nat_slice(cfg: &Config, listen: Option<IpAddr>) -> Result<Option<crate::config::PortRange>> {
    let (Some(_), Some(sync), Some(me)) = (&cfg.announce, &cfg.state_sync, listen) else {
        return Ok(None);
    };
    let nodes = sync.peers.len() + 1;
    let rank = crate::config::nat_rank(me, &sync.peers);
    let slice = cfg.nat.slice(rank, nodes).with_context(|| {
        format!(
            "nat.ports {} split over {nodes} LBs leaves fewer than {} ports each; widen nat.ports",
            cfg.nat.ports,
            crate::config::MIN_SLICE
        )
    })?;
    info!(%slice, rank, nodes, sync_address = %me, "mode nat: this LB hands out its own slice of nat.ports (every LB translates to the VIP at once)");
    Ok(Some(slice))
}

/// `NAT_OWNERS`: each peer's slice, reached over IPIP / IPv6 in IPv6 from
/// our sync address to its own. Peers of the other family than ours are
/// left out (an outer header of one family cannot carry the other here):
/// their replies keep the old fallback, the kernel's RST and a SYN retry.
fn nat_owner_entries(cfg: &Config, me: IpAddr, peers: &[IpAddr]) -> Vec<vip_common::NatOwner> {
    // The outer packet leaves by the interface we are attached to in every
    // layout vipd supports (LBs reach each other as they reach the router).
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", cfg.interface))
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .unwrap_or(vip_common::ENCAP_DEFAULT_MTU);
    let (family, saddr) = crate::config::addr_bytes(me);
    let owners: Vec<vip_common::NatOwner> = crate::config::nat_owners(&cfg.nat, me, peers)
        .into_iter()
        .filter(|(p, _)| p.is_ipv4() == me.is_ipv4())
        .map(|(p, r)| vip_common::NatOwner {
            addr: crate::config::addr_bytes(p).1,
            saddr,
            lo: r.lo,
            hi: r.hi,
            mtu,
            family,
            _pad: 0,
        })
        .collect();
    info!(
        peers = owners.len(),
        mtu,
        "mode nat: replies that reach this LB before their flow's sync record are handed to the LB whose slice they belong to"
    );
    owners
}

/// The directory state sync resolves flows with: what the maps hold now.
pub(super) fn directory(
    ctl: &Controller<KernelMaps>,
    globals: Globals,
) -> crate::sync::resolve::Directory {
    let mut d = crate::sync::resolve::Directory::of(ctl.programmer());
    d.globals = Some(globals);
    d
}

/// State sync, before attaching: the ring buffer keeps the first flows'
/// events until the sender reads them.
fn start_sync(
    cfg: &Config,
    ctl: &Controller<KernelMaps>,
    globals: Globals,
    (listen, keys): (Option<IpAddr>, Option<Arc<KeySource>>),
    telemetry: &Telemetry,
    counters: Option<Arc<KernelCounters>>,
) -> Result<Option<SyncHandle>> {
    let (Some(s), Some(ip)) = (&cfg.state_sync, listen) else {
        return Ok(None);
    };
    let maps = ctl.programmer().maps();
    let h = crate::sync::start(
        SocketAddr::new(ip, s.port),
        s.peers.clone(),
        keys,
        maps.sync_events()
            .context("state_sync: opening the event ring")?,
        crate::sync::tables::SyncTables::of(maps).context("state_sync: opening the flow tables")?,
        directory(ctl, globals),
        // The program's ring-full count is read at scrape time.
        telemetry.sync.stats(Box::new(move || {
            counters.as_ref().and_then(|c| c.sync_lost().ok())
        })),
    )?;
    Ok(Some(h))
}

/// The host changes the modes need (mode nat's sysctls and reserved
/// ports; stacked mode dsr's VIPs on `lo` and ARP sysctls), recorded for
/// `vipd detach`. Undone when the guard goes, should anything after fail.
fn prepare_host(cfg: &Config, globals: &Globals, record: Option<&Path>) -> Result<HostGuard> {
    let mut guard = HostGuard::new();
    if has_nat(cfg) {
        guard.extend(host::prepare_nat(
            &cfg.interface,
            globals.nat_port_lo,
            globals.nat_port_hi,
        )?);
        info!(ports = %cfg.nat.ports, "mode nat: accept_local on, redirects off, source ports reserved");
    }
    if has_encap(cfg) && !has_nat(cfg) {
        guard.extend(
            host::prepare_encap(&cfg.interface)
                .context("preparing this node to encapsulate to backends in other subnets")?,
        );
        info!(interface = %cfg.interface, "encap: forwarding and accept_local on, redirects off (the FIB lookup for the outer header)");
    }
    let (d4, d6) = decap_families(cfg);
    if d4 || d6 {
        guard.extend(
            host::prepare_decap(d4, d6)
                .context("preparing this node as an encapsulated backend")?,
        );
        info!(
            ipip = d4,
            ip6ip6 = d6,
            "encap backend: the tunnel fallback device up (tunl0 / ip6tnl0), rp_filter loose on tunl0"
        );
    }
    // announce: every VIP on lo, whatever the mode (`hold::announce` says
    // why); the same host changes as stacked mode dsr's.
    if cfg.announce.is_some() {
        let vips = cfg.vips();
        guard.extend(
            host::prepare_stacked(&cfg.interface, &vips)
                .context("preparing this node for announce (the VIPs on lo)")?,
        );
        info!(vips = ?vips, interface = %cfg.interface, "announce: the VIPs on lo, arp_ignore=1, arp_announce=2 (what the program passes for a VIP is taken locally, never routed back to the fabric)");
    }
    let stacked = stacked_vips(cfg);
    if !stacked.is_empty() && cfg.announce.is_none() {
        guard.extend(
            host::prepare_stacked(&cfg.interface, &stacked)
                .context("preparing this node for stacked mode dsr")?,
        );
        info!(vips = ?stacked, interface = %cfg.interface, "stacked mode dsr: the VIPs on lo, arp_ignore=1, arp_announce=2 (flows the master sends here are taken locally, and only the master answers ARP)");
    }
    if let Some(rec) = record.filter(|_| !guard.changed().is_empty()) {
        // The pinned program needs these after we stop; `vipd detach`
        // restores the originals recorded by the first run.
        host::record(guard.changed(), rec)?;
    }
    Ok(guard)
}

/// The flow-table sweeper, with state sync's refresh when it runs.
fn start_sweeper(
    ctl: &Controller<KernelMaps>,
    globals: Globals,
    sync: Option<&SyncHandle>,
    iface: &str,
    tx: mpsc::Sender<FlowReport>,
    poke: mpsc::Receiver<()>,
) -> Option<JoinHandle<()>> {
    match ctl.programmer().maps().flow_tables() {
        Ok(t) => Some(spawn_sweeper(
            t,
            globals,
            tx,
            poke,
            sync.map(|s| SweepSync {
                dir: s.directory(),
                tx: s.refresh_sender(),
                iface: iface.to_owned(),
                // A slice narrower than the whole range: the LBs share the
                // VIP as source at once (see `nat_slice`).
                own_ports: (globals.nat_alloc_lo, globals.nat_alloc_hi)
                    .ne(&(globals.nat_port_lo, globals.nat_port_hi))
                    .then_some((globals.nat_alloc_lo, globals.nat_alloc_hi)),
                welcomes: s.take_welcomes(),
            }),
        )),
        Err(e) => {
            // Forwarding does not need the sweep; status and the flow
            // metrics go without counts, and the LRU evicts as before.
            error!(error = %format!("{e:#}"), "opening the flow tables for the sweep failed; flows will not be counted");
            None
        }
    }
}

impl Agent {
    /// The start-up sequence up to "vipd ready".
    pub(super) async fn start(opts: AgentOptions, cfg: Config) -> Result<(Agent, Inbox)> {
        let file_cfg = cfg.clone();
        super::hold::announce::withdraw_leftovers(
            &cfg,
            opts.pin
                .as_deref()
                .is_some_and(crate::dataplane::kernel::pins_present),
        )
        .await;
        // `backends_from: kubernetes`: the last known set (the cache) is
        // programmed now; the apiserver is asked beside the agent, never
        // waited for. The credentials are local files, read now: a missing
        // one is a setup error to fix, said at once.
        let discovery = match cfg.discovery() {
            Some(d) => {
                let client = crate::discovery::client::Client::new(
                    &d,
                    |k| std::env::var(k).ok(),
                    Path::new(crate::discovery::client::SERVICE_ACCOUNT_DIR),
                )
                .context("discovery: the apiserver's credentials")?;
                Some((
                    crate::discovery::Discovery::new(d.cache.clone(), crate::discovery::seed(&cfg)),
                    client,
                ))
            }
            None => None,
        };
        let cfg = match &discovery {
            Some((d, _)) => crate::discovery::merge(&cfg, &d.admission, false),
            None => cfg,
        };
        let cfg = derive_local(cfg)?;
        let jobs = probe_jobs(&cfg)?;
        let (telemetry, metrics) = Telemetry::new();
        let metrics = Arc::new(metrics);
        telemetry.probes.known_backends(jobs.keys().copied());
        metrics.beat();
        let metrics_task = serve_metrics(&cfg, &metrics).await?;
        for (ok, line) in timing_report(&cfg) {
            if ok {
                info!("{line}");
            } else {
                warn!("{line}");
            }
        }
        let targets = neigh::targets(&cfg);
        let neighbours = neigh::snapshot(&cfg.interface, &targets)
            .await
            .context("mode dsr: reading the backends' MACs from the neighbour table")?;
        let Programmed {
            mut ctl,
            globals,
            local_mac,
            sync_listen,
            sync_keys,
        } = program(&opts, cfg, neighbours)?;
        let cfg = ctl.config().clone();
        let counters = match ctl.programmer().maps().counters() {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                error!(error = %format!("{e:#}"), "opening the program's counters for the metrics failed; /metrics goes without them");
                None
            }
        };
        if let Some(c) = &counters {
            telemetry.dataplane.read_from(c.clone());
        }
        telemetry.show_controller(&ctl);
        let sync_started = Instant::now();
        let sync = start_sync(
            &cfg,
            &ctl,
            globals,
            (sync_listen, sync_keys),
            &telemetry,
            counters,
        )?;
        // Planned once; the file's check made the same plan, so an error
        // here is reported, not expected.
        let snapshot_plan = match &cfg.snapshot {
            Some(s) => Some(s.plan().map_err(crate::config::FieldError::from)?),
            None => None,
        };
        let state = AgentState::new(Settings {
            snapshot: snapshot_plan.as_ref().map(|p| p.schedule),
            config: cfg.clone(),
            config_path: opts.config_path.clone(),
            stamp: file_stamp(&opts.config_path),
            pinned: opts.pin.is_some(),
            sync: sync.as_ref().map(|_| ctl.programmer().generation()),
            // Adopted maps kept their flows: nothing to wait for.
            welcome: match (&sync, &cfg.state_sync) {
                (Some(_), Some(s)) if !ctl.programmer().maps().adopted() => Some(Welcome {
                    waiting: s.peers.iter().copied().collect(),
                    until: sync_started + crate::sync::WELCOME_WAIT,
                }),
                _ => None,
            },
        });
        let host = prepare_host(&cfg, &globals, opts.sysctl_record.as_deref())?;
        let attached = ctl
            .programmer_mut()
            .maps_mut()
            .attach(PROG_VIP, &cfg.interface, cfg.xdp_mode)
            .with_context(|| format!("attaching to {}", cfg.interface))?;
        info!(interface = %cfg.interface, mode = %attached, "XDP program attached");
        let mut obs = Observed::new(attached.to_string());
        obs.sync = sync.as_ref().map(|s| s.stats.clone());
        let (sweep_tx, sweeps) = mpsc::channel::<FlowReport>(2);
        // One pending poke is enough: a round pokes every flow of every
        // dead backend.
        let (poke_tx, poke_rx) = mpsc::channel::<()>(1);
        let sweeper = start_sweeper(
            &ctl,
            globals,
            sync.as_ref(),
            &cfg.interface,
            sweep_tx,
            poke_rx,
        );
        let (probe_tx, probe_rx) = mpsc::channel::<ProbeEvent>(256);
        let (cert_tx, cert_rx) = mpsc::channel::<(SocketAddr, CertCheck)>(64);
        let (version_tx, version_rx) = mpsc::channel(64);
        let mut probes = Probes::new(probe_tx);
        probes.sync(jobs.clone());
        let (neigh_tx, neigh_rx) = mpsc::channel::<NeighEvent>(64);
        let neigh = neigh::spawn(&cfg.interface, neigh_tx)
            .context("mode dsr: following the neighbour table")?;
        neigh.watch(ctl.neighbour_targets());
        let (snapshots, snapshot_rx) = match snapshot_plan {
            Some(plan) => {
                // The period's claim names this node by its address.
                let own = crate::link::addresses(&cfg.interface).unwrap_or_default();
                let node = own
                    .first()
                    .map_or_else(|| cfg.interface.clone(), ToString::to_string);
                let head_start = super::snapshots::head_start(&cfg, &own, &plan);
                if cfg.announce.is_some() {
                    info!(
                        head_start_s = head_start.as_secs(),
                        "etcd snapshot: every announcing node holds the VIP; this node's turn comes this long after each slot (rank by address among snapshot.nodes, else the backends and state-sync peers)"
                    );
                }
                let (s, rx) = Snapshots::new(plan, node, head_start, telemetry.snapshot.clone());
                (Some(s), rx)
            }
            None => (None, mpsc::unbounded_channel().1),
        };
        let (watch_tx, watch_rx) = mpsc::unbounded_channel();
        let (vet_tx, vet_rx) = mpsc::unbounded_channel();
        let (discovery, watch) = match discovery {
            Some((d, client)) => {
                info!(servers = %crate::discovery::join_all(&client.servers().iter().map(|s| format!("{}:{}", s.host, s.port)).collect::<Vec<_>>()), "discovery: watching the kubernetes Service's EndpointSlices");
                let watching = crate::discovery::families(&file_cfg);
                (
                    Some(d),
                    Some(super::Watch::start(Arc::new(client), watching, watch_tx)),
                )
            }
            None => (None, None),
        };
        let mut agent = Agent {
            opts,
            cfg,
            state,
            holder: None,
            host: Some(host),
            ctl,
            globals,
            attached: attached.to_string(),
            local_mac,
            metrics,
            telemetry,
            metrics_task,
            sweeper,
            sync,
            probes: Some(probes),
            jobs,
            obs,
            poke_tx,
            cert_tx,
            version_tx,
            neigh,
            snapshots,
            discovery,
            file_cfg,
            pending_file: None,
            vet_tx,
            watch,
        };
        agent.show_discovery();
        let mut inbox = Inbox {
            probes: probe_rx,
            certs: cert_rx,
            versions: version_rx,
            sweeps,
            neigh: neigh_rx,
            snapshots: snapshot_rx,
            watch: watch_rx,
            vets: vet_rx,
            sync_answers: agent
                .sync
                .as_ref()
                .and_then(SyncHandle::take_answers)
                .unwrap_or_else(|| mpsc::channel(1).1),
        };
        agent.first_gate_round(&mut inbox.certs).await;
        let v = agent.verdicts();
        agent.feed(Event::Started(v)).await?;
        Ok((agent, inbox))
    }

    /// The first certificate round before the VIP holder starts: a node
    /// whose certificates lack the VIP must not win an election meanwhile.
    async fn first_gate_round(&mut self, certs: &mut mpsc::Receiver<(SocketAddr, CertCheck)>) {
        let targets = self.ctl.gate_targets();
        let mut pending = targets.len();
        spawn_gate_round(targets, &self.jobs, &self.cert_tx);
        let end = Instant::now() + Duration::from_secs(5);
        while pending > 0 {
            match tokio::time::timeout_at(end.into(), certs.recv()).await {
                Ok(Some((addr, check))) => {
                    pending -= 1;
                    self.cert(addr, check);
                }
                _ => break,
            }
        }
    }
}
