//! `cargo xtask bench sync-lag`: how long after a flow's first packet on
//! the master its connection-table entry exists on the peer LB (mode nat,
//! `state_sync:`), the figure issue 15 asks for: a flow that ECMP or a
//! failover moves to the peer must find its entry there at its next packet.
//!
//! The lab of the namespace tests with a second LB and state sync (the
//! same file on both, HMAC on). For each flow the client binds a fresh
//! source port and sends its SYN (a non-blocking connect); the benchmark
//! busy-polls both LBs' pinned `CONNTRACK` maps for that flow's key, so it
//! reads the moment the master's XDP program inserted it (the baseline,
//! measured the same way in the same run) and the moment the peer's agent
//! wrote it. All namespaces share one kernel and one CLOCK_MONOTONIC, so
//! the two moments compare directly. Reported: p50/p99/max of the lag
//! (peer entry - master entry) and of the master's own insert after the
//! connect call, for single flows and for bursts.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, Map, MapData};
use vip_common::{ConnKey, ConnValue, FAMILY_V4, PROTO_TCP};
use vip_userspace::dataplane::kernel::AttachMode;

use crate::netns::{VIP_V4, in_netns};
use crate::scenario::{Fwd, LbLab, LbOptions, PORT};
use crate::stats::percentile;

#[derive(Debug, Clone)]
pub struct Options {
    /// Flows per case.
    pub runs: usize,
}

/// Every pinned map named `name` below `dir` (vipd pins per interface).
fn find_pin(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|f| f == name) {
            return Some(p);
        }
        // lb2's pins live in a folder inside lb's; do not descend into it
        // when looking for lb's own.
        if p.is_dir()
            && p.file_name().is_some_and(|f| f != "lb2")
            && let Some(found) = find_pin(&p, name)
        {
            return Some(found);
        }
    }
    None
}

fn conntrack(dir: &Path) -> Result<HashMap<MapData, ConnKey, ConnValue>> {
    let path = find_pin(dir, "CONNTRACK")
        .with_context(|| format!("no pinned CONNTRACK below {}", dir.display()))?;
    let data = MapData::from_pin(&path).with_context(|| format!("open {}", path.display()))?;
    HashMap::try_from(Map::LruHashMap(data)).context("CONNTRACK as an LRU hash")
}

fn key(client: Ipv4Addr, sport: u16) -> ConnKey {
    key_to(client, sport, SocketAddrV4::new(VIP_V4, PORT))
}

/// The connection-table key of a TCP flow from `client:sport` to `vip`.
pub fn key_to(client: Ipv4Addr, sport: u16, vip: SocketAddrV4) -> ConnKey {
    let mut saddr = [0u8; 16];
    saddr[..4].copy_from_slice(&client.octets());
    let mut daddr = [0u8; 16];
    daddr[..4].copy_from_slice(&vip.ip().octets());
    ConnKey {
        saddr,
        daddr,
        // The program keys flows by the header's bytes, in network order.
        sport_be: sport.to_be(),
        dport_be: vip.port().to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    }
}

/// Sends a SYN from `client:sport` to the VIP (a non-blocking connect,
/// inside the client's namespace) and returns the socket, to be closed
/// once the entries have been seen, and when connect was called.
fn syn(ns: &str, client: Ipv4Addr, sport: u16) -> Result<(i32, Instant)> {
    syn_to(ns, client, sport, SocketAddrV4::new(VIP_V4, PORT))
}

/// [`syn`] to `vip`.
pub fn syn_to(ns: &str, client: Ipv4Addr, sport: u16, vip: SocketAddrV4) -> Result<(i32, Instant)> {
    in_netns(ns, move || {
        // SAFETY: plain socket calls on a fresh descriptor; sockaddr_in is
        // plain C data; the descriptor is returned and closed by the caller.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let one: libc::c_int = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            );
            let sa = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                sin_zero: [0; 8],
            };
            let len = size_of::<libc::sockaddr_in>() as u32;
            let local = sa(client, sport);
            if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("bind {client}:{sport}: {e}");
            }
            let vip = sa(*vip.ip(), vip.port());
            let t0 = Instant::now();
            let r = libc::connect(fd, (&vip as *const libc::sockaddr_in).cast(), len);
            if r != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("connect: {e}");
            }
            Ok((fd, t0))
        }
    })
}

/// When each key first shows up in `map`, polled without sleeping until
/// all have or `deadline` passes (`None` for those that never did).
pub fn wait_all(
    maps: &[&HashMap<MapData, ConnKey, ConnValue>],
    keys: &[ConnKey],
    deadline: Instant,
) -> Vec<Vec<Option<Instant>>> {
    let mut seen = vec![vec![None; keys.len()]; maps.len()];
    loop {
        let mut missing = false;
        for (m, map) in maps.iter().enumerate() {
            for (k, key) in keys.iter().enumerate() {
                if seen[m][k].is_none() {
                    if map.get(key, 0).is_ok() {
                        seen[m][k] = Some(Instant::now());
                    } else {
                        missing = true;
                    }
                }
            }
        }
        if !missing || Instant::now() > deadline {
            return seen;
        }
    }
}

struct Row {
    lag_ms: Vec<f64>,
    local_ms: Vec<f64>,
    missed: usize,
}

fn case(
    l: &LbLab,
    lb: &HashMap<MapData, ConnKey, ConnValue>,
    lb2: &HashMap<MapData, ConnKey, ConnValue>,
    runs: usize,
    burst: usize,
    next_port: &mut u16,
) -> Result<Row> {
    let client_ns = l.lab.node("client").ns.clone();
    let client = l.lab.node("client").ipv4;
    let mut row = Row {
        lag_ms: vec![],
        local_ms: vec![],
        missed: 0,
    };
    for _ in 0..runs.div_ceil(burst) {
        let ports: Vec<u16> = (0..burst)
            .map(|_| {
                let port = *next_port;
                *next_port = if port >= 60_999 { 20_000 } else { port + 1 };
                port
            })
            .collect();
        let keys: Vec<ConnKey> = ports.iter().map(|p| key(client, *p)).collect();
        // The poller runs while the burst is sent: started after it, it
        // would find both entries already there and read a lag of zero.
        let (seen, sent) = std::thread::scope(|s| {
            let poller =
                s.spawn(|| wait_all(&[lb, lb2], &keys, Instant::now() + Duration::from_secs(2)));
            let sent: Result<Vec<(i32, Instant)>> =
                ports.iter().map(|p| syn(&client_ns, client, *p)).collect();
            (poller.join().expect("poller"), sent)
        });
        let sent = sent?;
        for (k, (fd, t0)) in sent.into_iter().enumerate() {
            match (seen[0][k], seen[1][k]) {
                (Some(a), Some(b)) => {
                    row.local_ms
                        .push(a.saturating_duration_since(t0).as_secs_f64() * 1e3);
                    row.lag_ms
                        .push(b.saturating_duration_since(a).as_secs_f64() * 1e3);
                }
                _ => row.missed += 1,
            }
            // SAFETY: the descriptor `syn` returned, closed once.
            unsafe { libc::close(fd) };
        }
        // Spacing between flows (or bursts), as connections arrive, not
        // back to back: each datagram then carries one burst.
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(row)
}

pub fn run(opts: &Options) -> Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let l = LbLab::start_with(
        "bench-slag",
        &LbOptions {
            second_lb: true,
            sync: true,
            ..LbOptions::new(AttachMode::Skb, Fwd::Nat)
        },
    );
    let lb = conntrack(&l.pin_root).context("lb")?;
    let lb2 = conntrack(&l.pin_root.join("lb2")).context("lb2")?;
    // Connections to the VIP are answered before measuring: both LBs ready,
    // lb the master.
    if l.ask_vip(3).iter().any(Result::is_err) {
        bail!("the VIP does not answer through lb: {:?}", l.ask_vip(3));
    }
    println!(
        "state-sync lag: mode nat, two LBs (lb master, lb2 peer), HMAC-authenticated sync over \
         veth, {} flows per case; lag = lb2's CONNTRACK entry - lb's (both busy-polled from one \
         process, one CLOCK_MONOTONIC); baseline = lb's own insert after the client's connect()",
        opts.runs
    );
    println!();
    println!(
        "{:<14} {:>6} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7}",
        "case", "flows", "lag p50", "lag p99", "lag max", "local p50", "local p99", "missed"
    );
    let mut port = 20_000;
    for (name, burst) in [
        ("one at a time", 1),
        ("bursts of 10", 10),
        ("bursts of 50", 50),
    ] {
        let mut r = case(&l, &lb, &lb2, opts.runs, burst, &mut port)?;
        if r.lag_ms.is_empty() {
            println!("{name:<14} every flow missed");
            continue;
        }
        r.lag_ms.sort_by(f64::total_cmp);
        r.local_ms.sort_by(f64::total_cmp);
        println!(
            "{name:<14} {:>6} {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>9.3}ms {:>9.3}ms {:>7}",
            r.lag_ms.len(),
            percentile(&r.lag_ms, 50.0),
            percentile(&r.lag_ms, 99.0),
            r.lag_ms.last().copied().unwrap_or(0.0),
            percentile(&r.local_ms, 50.0),
            percentile(&r.local_ms, 99.0),
            r.missed
        );
    }
    Ok(())
}
