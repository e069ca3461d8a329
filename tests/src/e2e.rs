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

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vip_userspace::dataplane::kernel::AttachMode;

use crate::attempt;
use crate::certs::TestPki;
use crate::failover::percentile;
use crate::netns::{Lab, Proc, VIP_V4, in_netns};
use crate::scenario::{BACKENDS, Fwd, LbLab, LbOptions, start_standins};
use crate::standin::{HttpsConn, StandinHandle, client_config};

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
    /// Measure the TLS connection rate too.
    pub tls: bool,
    /// Where the report goes (`<dir>/e2e-<UTC timestamp>.md`).
    pub out_dir: PathBuf,
}

// ------------------------------------------------------------ plain server

/// What the plain server was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainRequest {
    /// Response body length: 3 for `/`, N for `/bulk?bytes=N`.
    pub body_len: u64,
    /// `Connection: close` or HTTP/1.0.
    pub close: bool,
}

/// Parses a request head (without the final CRLFCRLF); `None` for anything
/// but a GET of `/` or `/bulk?bytes=N` (answered with 400 and a close).
pub fn parse_plain_request(head: &str) -> Option<PlainRequest> {
    let mut lines = head.split("\r\n");
    let mut words = lines.next()?.split(' ');
    let (method, target, version) = (words.next()?, words.next()?, words.next()?);
    if method != "GET" || words.next().is_some() {
        return None;
    }
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return None,
    };
    for l in lines {
        if let Some((name, value)) = l.split_once(':')
            && name.eq_ignore_ascii_case("connection")
        {
            close = value.trim().eq_ignore_ascii_case("close");
        }
    }
    let body_len = match target.split_once('?') {
        None if target == "/" => SMALL_BODY.len() as u64,
        Some(("/bulk", query)) => query
            .split('&')
            .find_map(|kv| kv.strip_prefix("bytes="))?
            .parse()
            .ok()?,
        _ => return None,
    };
    Some(PlainRequest { body_len, close })
}

/// A plain HTTP/1.1 server on its own thread and tokio runtime (like the
/// stand-in); stops, closing every connection, on drop.
pub struct PlainServer {
    stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PlainServer {
    /// Serves on `listener` (bind it in the namespace it must live in).
    pub fn spawn(listener: TcpListener, name: &str) -> std::io::Result<PlainServer> {
        listener.set_nonblocking(true)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("plain-{name}"))
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("plain server: listener: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        () = accept_loop(listener) => {}
                        _ = stop_rx => {}
                    }
                });
                rt.shutdown_timeout(Duration::from_millis(200));
            })?;
        Ok(PlainServer {
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for PlainServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: tokio::net::TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(plain_conn(s));
            }
            // EMFILE and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn plain_conn(mut s: tokio::net::TcpStream) {
    // Responses go out at once (a kept-alive client waits for each).
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let req = std::str::from_utf8(&buf[..end])
            .ok()
            .and_then(parse_plain_request);
        buf.drain(..end + 4);
        let Some(req) = req else {
            let _ = s
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        };
        let close = if req.close {
            "Connection: close\r\n"
        } else {
            ""
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{close}\r\n",
            req.body_len
        );
        let ok = if req.body_len == SMALL_BODY.len() as u64 {
            // One write for head and body: one segment, as a small API
            // response is.
            let mut msg = head.into_bytes();
            msg.extend_from_slice(SMALL_BODY);
            s.write_all(&msg).await.is_ok()
        } else {
            send_bulk(&mut s, head.as_bytes(), req.body_len)
                .await
                .is_ok()
        };
        if !ok || req.close {
            return;
        }
    }
}

async fn send_bulk(
    s: &mut tokio::net::TcpStream,
    head: &[u8],
    mut left: u64,
) -> std::io::Result<()> {
    static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];
    s.write_all(head).await?;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        s.write_all(&ZEROS[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------- load generator

/// The status code and Content-Length of a response head (without the
/// final CRLFCRLF); `None` if it is not an HTTP/1.x head with a length.
pub fn parse_response_head(head: &[u8]) -> Option<(u16, u64)> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut words = status_line.split(' ');
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = words.next()?.parse().ok()?;
    let len = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    Some((status, len))
}

/// Reads one response from `s`; returns its body length. `buf` carries bytes
/// read past the head between calls (none, as no request is pipelined).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, scratch: &mut [u8]) -> Result<u64, String> {
    let end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        let n = s.read(scratch).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response".into());
        }
        buf.extend_from_slice(&scratch[..n]);
    };
    let (status, len) =
        parse_response_head(&buf[..end]).ok_or_else(|| "malformed response head".to_string())?;
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let mut have = (buf.len() - end - 4) as u64;
    buf.clear();
    while have < len {
        let want = (len - have).min(scratch.len() as u64) as usize;
        let n = s
            .read(&mut scratch[..want])
            .map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("connection closed inside the body".into());
        }
        have += n as u64;
    }
    Ok(len)
}

fn plain_connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(IO_TIMEOUT)))
        .and_then(|()| s.set_nodelay(true))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(s)
}

const SMALL_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n";

/// What one load thread saw.
#[derive(Default)]
struct ThreadOut {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_ns: Vec<u64>,
    bytes: u64,
}

impl ThreadOut {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// What one sample saw, all threads together.
#[derive(Default)]
struct Sample {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_ns: Vec<u64>,
    bytes: u64,
    elapsed: Duration,
    cpu: Option<CpuUse>,
}

/// Runs `work(thread index, deadline)` on `concurrency` threads inside `ns`
/// (threads spawned there inherit the namespace), all starting together.
fn load(
    ns: &str,
    concurrency: usize,
    duration: Duration,
    work: impl Fn(usize, Instant) -> ThreadOut + Sync,
) -> Sample {
    in_netns(ns, || {
        // The threads start at one instant, after all exist.
        let start = Instant::now() + Duration::from_millis(30);
        let deadline = start + duration;
        let outs: Vec<(ThreadOut, Instant)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..concurrency)
                .map(|i| {
                    let work = &work;
                    s.spawn(move || {
                        std::thread::sleep(start.saturating_duration_since(Instant::now()));
                        let out = work(i, deadline);
                        (out, Instant::now())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut sample = Sample::default();
        let mut last = start;
        for (o, end) in outs {
            sample.ok += o.ok;
            sample.errors += o.errors;
            if sample.first_error.is_none() {
                sample.first_error = o.first_error;
            }
            sample.latencies_ns.extend(o.latencies_ns);
            sample.bytes += o.bytes;
            last = last.max(end);
        }
        sample.elapsed = last - start;
        sample
    })
}

/// New connection, `GET /`, close (FIN from the client), again and again;
/// each thread walks the targets in turn.
fn short_conns(t: &Target, o: &Options) -> Sample {
    load(&t.client_ns, o.concurrency, o.duration, |i, deadline| {
        let mut out = ThreadOut::default();
        let (mut buf, mut scratch) = (Vec::new(), vec![0u8; 4096]);
        let mut k = i;
        while Instant::now() < deadline && out.errors < MAX_ERRORS {
            let addr = t.plain[k % t.plain.len()];
            k += 1;
            let r = plain_connect(addr).and_then(|mut s| {
                s.write_all(SMALL_REQUEST)
                    .map_err(|e| format!("write: {e}"))?;
                read_response(&mut s, &mut buf, &mut scratch)
            });
            match r {
                Ok(_) => out.ok += 1,
                Err(e) => out.error(e),
            }
        }
        out
    })
}

/// One connection per thread, `GET /` back to back; every request's time
/// from write to the end of the response.
fn kept_alive(t: &Target, o: &Options) -> Sample {
    load(&t.client_ns, o.concurrency, o.duration, |i, deadline| {
        let mut out = ThreadOut::default();
        let (mut buf, mut scratch) = (Vec::new(), vec![0u8; 4096]);
        let addr = t.plain[i % t.plain.len()];
        let mut conn: Option<TcpStream> = None;
        while Instant::now() < deadline && out.errors < MAX_ERRORS {
            let s = match conn.take() {
                Some(s) => s,
                None => match plain_connect(addr) {
                    Ok(s) => s,
                    Err(e) => {
                        out.error(e);
                        continue;
                    }
                },
            };
            let mut s = s;
            let t0 = Instant::now();
            let r = s
                .write_all(SMALL_REQUEST)
                .map_err(|e| format!("write: {e}"))
                .and_then(|()| read_response(&mut s, &mut buf, &mut scratch));
            match r {
                Ok(_) => {
                    out.latencies_ns.push(t0.elapsed().as_nanos() as u64);
                    out.ok += 1;
                    conn = Some(s);
                }
                Err(e) => {
                    buf.clear();
                    out.error(e);
                }
            }
        }
        out
    })
}

/// New TLS connection (full handshake), `GET /whoami`, close.
fn tls_conns(t: &Target, o: &Options) -> Sample {
    load(&t.client_ns, o.concurrency, o.duration, |i, deadline| {
        let mut out = ThreadOut::default();
        let mut k = i;
        while Instant::now() < deadline && out.errors < MAX_ERRORS {
            let addr = t.tls[k % t.tls.len()];
            k += 1;
            let r = HttpsConn::connect(addr, "kubernetes", t.tls_config.clone(), IO_TIMEOUT)
                .and_then(|mut c| c.get("/whoami"));
            match r {
                Ok(r) if r.status == 200 => out.ok += 1,
                Ok(r) => out.error(format!("TLS GET /whoami: status {}", r.status)),
                Err(e) => out.error(format!("TLS to {addr}: {e}")),
            }
        }
        out
    })
}

/// One connection, one `GET /bulk?bytes=N`, timed to the last byte.
fn bulk(t: &Target, o: &Options) -> Sample {
    load(&t.client_ns, 1, Duration::ZERO, |_, _| {
        let mut out = ThreadOut::default();
        let req = format!(
            "GET /bulk?bytes={} HTTP/1.1\r\nHost: vip\r\n\r\n",
            o.bulk_bytes
        );
        let (mut buf, mut scratch) = (Vec::new(), vec![0u8; 256 * 1024]);
        let r = plain_connect(t.plain[0]).and_then(|mut s| {
            // A transfer of hundreds of MB may take longer than a read
            // timeout between two segments would suggest; keep it per read.
            s.write_all(req.as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            read_response(&mut s, &mut buf, &mut scratch)
        });
        match r {
            Ok(n) => {
                out.ok = 1;
                out.bytes = n;
            }
            Err(e) => out.error(e),
        }
        out
    })
}

// -------------------------------------------------------------------- CPU

/// Cumulative CPU counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct CpuSnap {
    /// Whole machine, /proc/stat `cpu` line, busy ticks.
    machine_busy: u64,
    /// The LB process (vipd or haproxy): utime + stime in ticks.
    proc_ticks: u64,
    /// vipd's XDP program: run time (ns) and runs, from the kernel's BPF
    /// statistics.
    xdp_ns: u64,
    xdp_runs: u64,
}

/// CPU used during one sample, in seconds (and runs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    pub machine_busy_s: f64,
    pub proc_s: f64,
    pub xdp_s: f64,
    pub xdp_runs: u64,
}

impl CpuUse {
    /// What the table calls the LB's CPU: its process plus its XDP program.
    pub fn lb_s(&self) -> f64 {
        self.proc_s + self.xdp_s
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Busy ticks from the first line of /proc/stat: everything but idle and
/// iowait (guest time is already inside user).
pub fn parse_proc_stat(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some(total - v[3] - v[4])
}

/// utime + stime (ticks) from /proc/PID/stat; the fields after the command
/// name, which may itself hold spaces and parentheses.
pub fn parse_pid_stat(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of stat(5), utime 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Where the LB's CPU is read.
#[derive(Debug, Clone, Copy)]
enum CpuSource {
    None,
    Process { pid: u32 },
    Vipd { pid: u32, prog_id: u32 },
}

fn xdp_stats(prog_id: u32) -> Option<(u64, u64)> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == prog_id)
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
}

fn snap(src: CpuSource) -> CpuSnap {
    let machine_busy = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| parse_proc_stat(&t))
        .unwrap_or_default();
    let proc_ticks = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| parse_pid_stat(&t))
            .unwrap_or_default()
    };
    let mut s = CpuSnap {
        machine_busy,
        ..CpuSnap::default()
    };
    match src {
        CpuSource::None => {}
        CpuSource::Process { pid } => s.proc_ticks = proc_ticks(pid),
        CpuSource::Vipd { pid, prog_id } => {
            s.proc_ticks = proc_ticks(pid);
            (s.xdp_ns, s.xdp_runs) = xdp_stats(prog_id).unwrap_or_default();
        }
    }
    s
}

fn cpu_delta(a: CpuSnap, b: CpuSnap) -> CpuUse {
    let hz = clock_ticks();
    let ticks = |x: u64, y: u64| y.saturating_sub(x) as f64 / hz;
    CpuUse {
        machine_busy_s: ticks(a.machine_busy, b.machine_busy),
        proc_s: ticks(a.proc_ticks, b.proc_ticks),
        xdp_s: b.xdp_ns.saturating_sub(a.xdp_ns) as f64 / 1e9,
        xdp_runs: b.xdp_runs.saturating_sub(a.xdp_runs),
    }
}

// ------------------------------------------------------------------ cases

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
enum Metric {
    Short,
    Tls,
    KeptAlive,
    Bulk,
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

/// haproxy.cfg for the `haproxy` case: `mode tcp`, round robin over the
/// backends, for the plain port and the TLS port, with an HTTPS `GET /readyz`
/// check on the TLS one (the recipe's, docs: kubeadm/ha-considerations.md,
/// checks `/healthz`; vipd probes `/readyz`, so both LBs ask the same) and a
/// TCP check on the plain one. No logging: it would cost HAProxy
/// CPU that vipd does not spend either.
pub fn haproxy_cfg(vip: Ipv4Addr, backends: &[Ipv4Addr], nbthread: usize) -> String {
    let mut s = String::new();
    let mut line = |t: &str| {
        let _ = writeln!(s, "{t}");
    };
    line("# Written by vip-tests (tests/src/e2e.rs) for HAProxy 2.6.");
    line("global");
    line(&format!("    nbthread {nbthread}"));
    // HAProxy raises its file limit to about 2 x maxconn and refuses to
    // start when it cannot; the benchmark holds a few hundred at most.
    line("    maxconn 8000");
    line("defaults");
    line("    mode tcp");
    line("    timeout connect 5s");
    line("    timeout client 60s");
    line("    timeout server 60s");
    for (name, port) in [("plain", PLAIN_PORT), ("apiserver", TLS_PORT)] {
        line(&format!("frontend {name}"));
        line(&format!("    bind {vip}:{port}"));
        line(&format!("    default_backend {name}_backends"));
        line(&format!("backend {name}_backends"));
        line("    balance roundrobin");
        let check = if port == TLS_PORT {
            line("    option httpchk");
            line("    http-check connect ssl");
            line("    http-check send meth GET uri /readyz");
            line("    http-check expect status 200");
            "check verify none"
        } else {
            "check"
        };
        for (i, be) in backends.iter().enumerate() {
            line(&format!("    server be{} {be}:{port} {check}", i + 1));
        }
    }
    s
}

fn haproxy_available() -> Result<String, String> {
    match std::process::Command::new("haproxy").arg("-v").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("haproxy")
            .to_owned()),
        Ok(o) => Err(format!("`haproxy -v` failed: {}", o.status)),
        Err(e) => Err(format!(
            "haproxy not found ({e}): install it with `apt-get install haproxy` (or `cargo xtask bootstrap`)"
        )),
    }
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

// ---------------------------------------------------------------- summary

/// One case's medians; `None` where nothing was measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub name: String,
    /// Short plain connections per second.
    pub conn_rate: Option<f64>,
    /// Short TLS connections per second.
    pub tls_rate: Option<f64>,
    /// Requests per second on kept-alive connections.
    pub req_rate: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub bulk_gbit: Option<f64>,
    /// LB CPU (process + XDP) per short plain connection.
    pub lb_us_per_conn: Option<f64>,
    /// The same per TLS connection.
    pub lb_us_per_tls: Option<f64>,
    /// The same per kept-alive request.
    pub lb_us_per_req: Option<f64>,
    /// Whole-machine busy CPU per short plain connection.
    pub machine_us_per_conn: Option<f64>,
    /// XDP ns per run and runs per short connection (vipd only).
    pub xdp_ns_per_run: Option<f64>,
    /// XDP ns per run on kept-alive connections (established flows).
    pub xdp_ns_per_run_kept: Option<f64>,
    /// XDP run time per short connection.
    pub xdp_us_per_conn: Option<f64>,
    pub xdp_runs_per_conn: Option<f64>,
    /// LB process CPU per short connection (the XDP part is the rest).
    pub proc_us_per_conn: Option<f64>,
    /// Failed operations over all samples, and all operations.
    pub errors: u64,
    pub ops: u64,
}

/// The median of `v` (the upper middle for an even count); `None` if empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn summarize(c: &Case) -> Summary {
    let s = &c.samples;
    let rate = |v: &[Sample]| {
        median(
            &v.iter()
                .filter(|x| x.ok > 0)
                .map(|x| x.ok as f64 / x.elapsed.as_secs_f64())
                .collect::<Vec<_>>(),
        )
    };
    let per_op = |v: &[Sample], f: &dyn Fn(&CpuUse) -> f64| {
        median(
            &v.iter()
                .filter(|x| x.ok > 0)
                .filter_map(|x| x.cpu.map(|c| f(&c) * 1e6 / x.ok as f64))
                .collect::<Vec<_>>(),
        )
    };
    let lb = !matches!(
        c.target.as_ref().map(|t| t.cpu),
        Some(CpuSource::None) | None
    );
    let vipd = matches!(
        c.target.as_ref().map(|t| t.cpu),
        Some(CpuSource::Vipd { .. })
    );
    let pct = |p: f64| {
        median(
            &s.kept
                .iter()
                .filter(|x| !x.latencies_ns.is_empty())
                .map(|x| {
                    let mut v: Vec<f64> =
                        x.latencies_ns.iter().map(|&n| n as f64 / 1000.0).collect();
                    v.sort_by(f64::total_cmp);
                    percentile(&v, p)
                })
                .collect::<Vec<_>>(),
        )
    };
    let all = [&s.short, &s.tls, &s.kept, &s.bulk];
    Summary {
        name: c.kind.name().to_owned(),
        conn_rate: rate(&s.short),
        tls_rate: rate(&s.tls),
        req_rate: rate(&s.kept),
        p50_us: pct(50.0),
        p99_us: pct(99.0),
        bulk_gbit: median(
            &s.bulk
                .iter()
                .filter(|x| x.ok > 0)
                .map(|x| x.bytes as f64 * 8.0 / x.elapsed.as_secs_f64() / 1e9)
                .collect::<Vec<_>>(),
        ),
        lb_us_per_conn: lb.then(|| per_op(&s.short, &CpuUse::lb_s)).flatten(),
        lb_us_per_tls: lb.then(|| per_op(&s.tls, &CpuUse::lb_s)).flatten(),
        lb_us_per_req: lb.then(|| per_op(&s.kept, &CpuUse::lb_s)).flatten(),
        machine_us_per_conn: per_op(&s.short, &|c| c.machine_busy_s),
        xdp_ns_per_run: vipd.then(|| ns_per_run(&s.short)).flatten(),
        xdp_ns_per_run_kept: vipd.then(|| ns_per_run(&s.kept)).flatten(),
        xdp_us_per_conn: vipd.then(|| per_op(&s.short, &|c| c.xdp_s)).flatten(),
        xdp_runs_per_conn: vipd
            .then(|| {
                median(
                    &s.short
                        .iter()
                        .filter(|x| x.ok > 0)
                        .filter_map(|x| x.cpu.map(|c| c.xdp_runs as f64 / x.ok as f64))
                        .collect::<Vec<_>>(),
                )
            })
            .flatten(),
        proc_us_per_conn: lb.then(|| per_op(&s.short, &|c| c.proc_s)).flatten(),
        errors: all.iter().flat_map(|v| v.iter()).map(|x| x.errors).sum(),
        ops: all
            .iter()
            .flat_map(|v| v.iter())
            .map(|x| x.ok + x.errors)
            .sum(),
    }
}

/// The median over samples of the XDP program's mean run time.
fn ns_per_run(v: &[Sample]) -> Option<f64> {
    median(
        &v.iter()
            .filter_map(|x| x.cpu)
            .filter(|c| c.xdp_runs > 0)
            .map(|c| c.xdp_s * 1e9 / c.xdp_runs as f64)
            .collect::<Vec<_>>(),
    )
}

/// One column of the table: header, how to print it, which value.
struct Col {
    head: &'static str,
    decimals: usize,
    get: fn(&Summary) -> Option<f64>,
}

const COLS: [Col; 10] = [
    Col {
        head: "conn/s",
        decimals: 0,
        get: |s| s.conn_rate,
    },
    Col {
        head: "TLS conn/s",
        decimals: 0,
        get: |s| s.tls_rate,
    },
    Col {
        head: "kept-alive req/s",
        decimals: 0,
        get: |s| s.req_rate,
    },
    Col {
        head: "p50 µs",
        decimals: 1,
        get: |s| s.p50_us,
    },
    Col {
        head: "p99 µs",
        decimals: 1,
        get: |s| s.p99_us,
    },
    Col {
        head: "bulk Gbit/s",
        decimals: 2,
        get: |s| s.bulk_gbit,
    },
    Col {
        head: "LB CPU µs/conn",
        decimals: 2,
        get: |s| s.lb_us_per_conn,
    },
    Col {
        head: "LB CPU µs/TLS conn",
        decimals: 2,
        get: |s| s.lb_us_per_tls,
    },
    Col {
        head: "LB CPU µs/req",
        decimals: 2,
        get: |s| s.lb_us_per_req,
    },
    Col {
        head: "machine CPU µs/conn",
        decimals: 1,
        get: |s| s.machine_us_per_conn,
    },
];

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.decimals$}"))
}

/// `case / reference`, or `None` when either is missing or the reference
/// is zero.
pub fn ratio(case: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (case, reference) {
        (Some(c), Some(r)) if r != 0.0 => Some(c / r),
        _ => None,
    }
}

fn table_row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}

fn table_head(out: &mut String, first: &str) {
    let mut cells = vec![first.to_owned()];
    cells.extend(COLS.iter().map(|c| c.head.to_owned()));
    table_row(out, &cells);
    let mut sep = vec!["---".to_owned()];
    sep.extend(COLS.iter().map(|_| "---:".to_owned()));
    table_row(out, &sep);
}

/// The results as Markdown tables: medians, then ratios to `haproxy` and to
/// `direct` (`case / reference`; for latency and CPU lower is better).
pub fn render_tables(rows: &[Summary]) -> String {
    let mut out = String::new();
    table_head(&mut out, "case");
    for r in rows {
        let mut cells = vec![r.name.clone()];
        cells.extend(COLS.iter().map(|c| fmt_opt((c.get)(r), c.decimals)));
        table_row(&mut out, &cells);
    }
    for reference in ["haproxy", "direct"] {
        let Some(base) = rows
            .iter()
            .find(|r| r.name == reference && COLS.iter().any(|c| (c.get)(r).is_some()))
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "\nRatio to {reference} (case / {reference}; higher is better for rates, lower for latency and CPU):\n"
        );
        table_head(&mut out, "case");
        for r in rows.iter().filter(|r| r.name != reference) {
            let mut cells = vec![r.name.clone()];
            cells.extend(
                COLS.iter()
                    .map(|c| fmt_opt(ratio((c.get)(r), (c.get)(base)), 2)),
            );
            table_row(&mut out, &cells);
        }
    }
    out
}

/// The LB CPU split and the error counts.
pub fn render_details(rows: &[Summary]) -> String {
    let mut out = String::new();
    table_row(
        &mut out,
        &[
            "case".into(),
            "LB process µs/conn".into(),
            "XDP µs/conn".into(),
            "XDP ns/run".into(),
            "XDP runs/conn".into(),
            "XDP ns/run kept-alive".into(),
            "failed ops".into(),
        ],
    );
    table_row(
        &mut out,
        &[
            "---".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
            "---:".into(),
        ],
    );
    for r in rows {
        table_row(
            &mut out,
            &[
                r.name.clone(),
                fmt_opt(r.proc_us_per_conn, 2),
                fmt_opt(r.xdp_us_per_conn, 2),
                fmt_opt(r.xdp_ns_per_run, 1),
                fmt_opt(r.xdp_runs_per_conn, 1),
                fmt_opt(r.xdp_ns_per_run_kept, 1),
                format!("{} of {}", r.errors, r.ops),
            ],
        );
    }
    out
}

/// The goals of issue 7, each vipd mode against HAProxy: met, MISSED, or
/// not measurable.
pub fn render_goals(rows: &[Summary]) -> String {
    let mut out = String::new();
    let measured = |r: &&Summary| COLS.iter().any(|c| (c.get)(r).is_some());
    let Some(h) = rows.iter().filter(measured).find(|r| r.name == "haproxy") else {
        let _ = writeln!(
            out,
            "- goals: not evaluated, the haproxy case has no results"
        );
        return out;
    };
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for v in rows.iter().filter(|r| r.name.starts_with("vipd")) {
        // "At equal CPU": connections per second of LB CPU.
        let eff = |r: &Summary| r.lb_us_per_conn.filter(|&u| u > 0.0).map(|u| 1e6 / u);
        match ratio(eff(v), eff(h)) {
            Some(x) => {
                let _ = writeln!(
                    out,
                    "- {}: connection rate at equal CPU >= 2x HAProxy, by LB CPU: {} ({:.1}x: {:.0} vs {:.0} \
                     connections per LB CPU-second; raw rate {}x on this machine)",
                    v.name,
                    verdict(x >= 2.0),
                    x,
                    eff(v).unwrap_or_default(),
                    eff(h).unwrap_or_default(),
                    fmt_opt(ratio(v.conn_rate, h.conn_rate), 2)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "- {}: connection rate at equal CPU: not measured (no LB CPU figure)",
                    v.name
                );
            }
        }
        // The same question asked of the whole machine: what the LB path
        // adds over `direct`, softirqs and veth hops included.
        let direct = rows.iter().find(|r| r.name == "direct");
        let extra = |r: &Summary| {
            let d = direct?.machine_us_per_conn?;
            r.machine_us_per_conn.map(|m| m - d)
        };
        if let (Some(ev), Some(eh)) = (extra(v), extra(h)) {
            let _ = writeln!(
                out,
                "  - the same on the whole machine: {} (the LB path adds {ev:.1} µs of busy CPU per connection \
                 over direct with {}, {eh:.1} µs with HAProxy: {}x; noisy on a shared machine)",
                verdict(ev <= 0.0 || eh / ev >= 2.0),
                v.name,
                fmt_opt(ratio(Some(eh), Some(ev)).filter(|_| ev > 0.0), 2)
            );
        }
        match (v.p99_us, h.p99_us) {
            (Some(a), Some(b)) => {
                let _ = writeln!(
                    out,
                    "- {}: p99 latency below HAProxy's: {} ({a:.1} µs vs {b:.1} µs)",
                    v.name,
                    verdict(a < b)
                );
            }
            _ => {
                let _ = writeln!(out, "- {}: p99 latency: not measured", v.name);
            }
        }
    }
    out
}

/// What the columns mean; part of every report.
pub const NOTES: &str = "\
- conn/s: new TCP connection, `GET /` (3-byte body), close by the client, per second, all client threads together.
- TLS conn/s: the same against the apiserver stand-in with a full TLS 1.3 handshake each (no resumption, as client-go).
- kept-alive req/s, p50/p99 µs: one connection per client thread, requests back to back (closed loop); latency from writing the request to the last byte of the response; percentiles per sample, then the median over samples.
- bulk Gbit/s: one connection, one response body of the given size, timed from the request to its last byte.
- LB CPU: what the LB node spends that can be attributed to it. HAProxy: its process's user+system time (/proc/PID/stat), which includes the socket work done in its system calls, but not the TCP receive processing done in softirq context outside it. vipd: its process's time (probes, stats; nearly idle) plus its XDP program's run time from the kernel's BPF statistics (BPF_ENABLE_STATS, enabled for the run only), which covers the program itself but not the veth driver's receive and transmit work around it, nor packets vipd passes to the kernel. So neither column is the whole cost; the machine column is.
- machine CPU µs/conn: busy CPU of the whole machine (/proc/stat, all but idle and iowait) per connection: client, backends, the LB, softirqs, and anything else running. The client and backends are the same in every case, so the difference to `direct` is the cost of the LB path; on a shared machine this column also carries other people's work (compare it within one run only).
- Without CONFIG_IRQ_TIME_ACCOUNTING (the usual case; /proc/stat's softirq column then stays near zero) softirq work is charged to whichever task it interrupted: part of the network receive work of every case then lands in the process column of whoever was running, HAProxy's included, and in the machine column in any case.
- Enabling BPF statistics costs vipd's XDP program two clock reads per run; HAProxy and direct pay nothing for it.
- XDP ns/run is measured live, with caches shared with everything else on the machine; `cargo xtask bench dataplane` measures the same program in a hot loop (BPF_PROG_TEST_RUN), which is why its figures are lower.
- With native XDP on veth, the lab also runs an XDP_PASS program on the switch side of lb's link (veth delivers XDP_TX frames only then); it is not counted as vipd's.
";

/// `e2e-YYYYMMDDTHHMMSSZ` for a time (UTC).
pub fn report_name(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days_from_civil inverse (civil_from_days).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "e2e-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// -------------------------------------------------------------------- run

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
    let mut base = None;
    match attempt(BaseLab::start) {
        Ok(mut b) => {
            let tls_config = b.tls_config();
            let client_ns = b.client_ns();
            let node = |n: &str| b.lab.node(n).ipv4;
            cases[0].target = Some(Target {
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
            match attempt(|| b.start_haproxy()).and_then(|r| r) {
                Ok(()) => {
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
            cases[0].failures.push(format!("setup: {e}"));
            cases[1].failures.push(format!("setup: {e}"));
        }
    }
    let mut vipd_labs = vec![];
    for (i, fwd) in [(2, Fwd::Nat), (3, Fwd::Dsr)] {
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
    for c in cases.iter().filter(|c| c.target.is_none()) {
        println!("{}: not measured: {}", c.kind.name(), c.failures.join("; "));
    }
    if cases.iter().all(|c| c.target.is_none()) {
        bail!("no case could be set up");
    }

    let metrics: &[Metric] = &[Metric::Short, Metric::Tls, Metric::KeptAlive, Metric::Bulk];
    println!();
    println!(
        "{:<6} {:<10} {:>18} {:>18} {:>18} {:>18}",
        "round", "metric", "direct", "haproxy", "vipd nat", "vipd dsr"
    );
    for round in 0..o.rounds {
        for &metric in metrics {
            if metric == Metric::Tls && !o.tls {
                continue;
            }
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

    // What vipd's program dropped over the whole run, by reason: a case's
    // failed or slow connections have their cause here (its /metrics,
    // refreshed once a second).
    let drops: Vec<String> = vipd_labs
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
        .collect();
    let rows: Vec<Summary> = cases.iter().map(summarize).collect();
    let mut report = String::new();
    let _ = writeln!(report, "# vipd end-to-end benchmark\n");
    let _ = writeln!(
        report,
        "{} rounds, interleaved (case order rotates each round); {:.1} s per rate/latency sample; \
         {} client connections in parallel (equal for every case); bulk body {} MiB; vipd XDP {mode}; \
         {} CPUs; {}; kernel {}. Medians over the rounds.\n",
        o.rounds,
        o.duration.as_secs_f64(),
        o.concurrency,
        o.bulk_bytes >> 20,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        haproxy_available().unwrap_or_else(|e| e),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        report,
        "Backends: three, each with a plain HTTP/1.1 server (tokio, port {PLAIN_PORT}: conn/s, latency, bulk) \
         and the TLS apiserver stand-in (rustls, port {TLS_PORT}: TLS conn/s). direct: the client walks the \
         three backends in turn; the load balancers spread over the same three.\n"
    );
    report.push_str(&render_tables(&rows));
    let _ = writeln!(report, "\nLB CPU split and failures:\n");
    report.push_str(&render_details(&rows));
    let _ = writeln!(
        report,
        "\nPackets vipd's XDP program dropped over the whole run, by reason:\n"
    );
    for d in &drops {
        let _ = writeln!(report, "{d}");
    }
    let _ = writeln!(report, "\nGoals (issue 7):\n");
    report.push_str(&render_goals(&rows));
    let _ = writeln!(report, "\nWhat the columns mean:\n");
    report.push_str(NOTES);
    let failures: Vec<String> = cases
        .iter()
        .flat_map(|c| {
            c.failures
                .iter()
                .map(move |f| format!("- {}: {f}", c.kind.name()))
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(report, "\nFailures:\n");
        for f in &failures {
            let _ = writeln!(report, "{f}");
        }
    }
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

fn write_report(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests() {
        let r = parse_plain_request("GET / HTTP/1.1\r\nHost: vip").expect("small");
        assert_eq!(
            r,
            PlainRequest {
                body_len: 3,
                close: false
            }
        );
        let r = parse_plain_request("GET /bulk?bytes=1048576 HTTP/1.1\r\nConnection: close")
            .expect("bulk");
        assert_eq!(
            r,
            PlainRequest {
                body_len: 1 << 20,
                close: true
            }
        );
        assert!(parse_plain_request("GET / HTTP/1.0").expect("1.0").close);
        for bad in [
            "POST / HTTP/1.1",
            "GET /other HTTP/1.1",
            "GET /bulk?bytes=x HTTP/1.1",
            "GET /bulk HTTP/1.1",
            "GET / HTTP/2",
            "GET / HTTP/1.1 extra",
            "",
        ] {
            assert_eq!(parse_plain_request(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn response_heads() {
        assert_eq!(
            parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3"),
            Some((200, 3))
        );
        assert_eq!(
            parse_response_head(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length:  12 "),
            Some((503, 12))
        );
        assert_eq!(parse_response_head(b"HTTP/1.1 200 OK\r\nX: y"), None);
        assert_eq!(parse_response_head(b"SSH-2.0 hi"), None);
    }

    #[test]
    fn proc_stat_lines() {
        let stat = "cpu  100 5 50 1000 20 3 7 0 0 0\ncpu0 50 2 25 500 10 1 3 0 0 0\n";
        // busy = user + nice + system + irq + softirq + steal.
        assert_eq!(parse_proc_stat(stat), Some(165));
        assert_eq!(parse_proc_stat("intr 1 2 3"), None);
        // The command name may hold spaces and parentheses.
        let pid = "42 (tokio (worker) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0";
        assert_eq!(parse_pid_stat(pid), Some(325));
        assert_eq!(parse_pid_stat("42 (x) S 1"), None);
    }

    #[test]
    fn xdp_prog_id_from_bpftool() {
        let json = r#"[{"xdp":[{"devname":"eth0","ifindex":2,"mode":"driver","id":1234}],"tc":[],"flow_dissector":[],"netfilter":[]}]"#;
        assert_eq!(parse_xdp_prog_id(json), Some(1234));
        assert_eq!(parse_xdp_prog_id(r#"[{"xdp":[],"tc":[]}]"#), None);
        assert_eq!(parse_xdp_prog_id("not json"), None);
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
        assert_eq!(ratio(Some(6.0), Some(3.0)), Some(2.0));
        assert_eq!(ratio(Some(6.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(3.0)), None);
    }

    fn row(name: &str, conn: f64, p99: f64, lb: Option<f64>) -> Summary {
        Summary {
            name: name.into(),
            conn_rate: Some(conn),
            p99_us: Some(p99),
            lb_us_per_conn: lb,
            ..Summary::default()
        }
    }

    #[test]
    fn tables_with_ratios() {
        let rows = [
            row("direct", 1000.0, 100.0, None),
            row("haproxy", 500.0, 200.0, Some(40.0)),
            row("vipd nat", 800.0, 150.0, Some(2.0)),
        ];
        let t = render_tables(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("| case | conn/s | TLS conn/s |"),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "| direct | 1000 | - | - | - | 100.0 | - | - | - | - | - |"
        );
        assert!(t.contains("Ratio to haproxy"), "{t}");
        // vipd nat against haproxy: rate 1.6, p99 0.75, LB CPU 0.05.
        assert!(
            t.contains("| vipd nat | 1.60 | - | - | - | 0.75 | - | 0.05 | - | - | - |"),
            "{t}"
        );
        // Against direct: no LB CPU for direct, so no ratio.
        assert!(
            t.contains("| vipd nat | 0.80 | - | - | - | 1.50 | - | - | - | - | - |"),
            "{t}"
        );
        // Without a haproxy row only the direct ratios are shown.
        let t = render_tables(&rows[..1]);
        assert!(!t.contains("Ratio to haproxy"), "{t}");
    }

    #[test]
    fn goals_met_and_missed() {
        let rows = [
            row("haproxy", 500.0, 200.0, Some(40.0)),
            row("vipd nat", 800.0, 150.0, Some(10.0)),
            row("vipd dsr", 900.0, 250.0, Some(30.0)),
        ];
        let g = render_goals(&rows);
        assert!(
            g.contains(
                "- vipd nat: connection rate at equal CPU >= 2x HAProxy, by LB CPU: met (4.0x"
            ),
            "{g}"
        );
        assert!(
            g.contains("- vipd nat: p99 latency below HAProxy's: met"),
            "{g}"
        );
        assert!(
            g.contains(
                "- vipd dsr: connection rate at equal CPU >= 2x HAProxy, by LB CPU: MISSED (1.3x"
            ),
            "{g}"
        );
        assert!(
            g.contains("- vipd dsr: p99 latency below HAProxy's: MISSED"),
            "{g}"
        );
        assert!(render_goals(&rows[1..]).contains("not evaluated"));
        let unmeasured = Summary {
            name: "haproxy".into(),
            ..Summary::default()
        };
        assert!(render_goals(&[unmeasured, rows[1].clone()]).contains("not evaluated"));
        // With direct's machine figure, the machine-wide view is added.
        let m = |mut r: Summary, us: f64| {
            r.machine_us_per_conn = Some(us);
            r
        };
        let rows = [
            m(row("direct", 1000.0, 100.0, None), 100.0),
            m(row("haproxy", 500.0, 200.0, Some(40.0)), 300.0),
            m(row("vipd nat", 800.0, 150.0, Some(10.0)), 150.0),
        ];
        let g = render_goals(&rows);
        assert!(
            g.contains(
                "  - the same on the whole machine: met (the LB path adds 50.0 µs of busy CPU per \
                 connection over direct with vipd nat, 200.0 µs with HAProxy: 4.00x;"
            ),
            "{g}"
        );
    }

    #[test]
    fn haproxy_config() {
        let be = [
            Ipv4Addr::new(10, 77, 0, 12),
            Ipv4Addr::new(10, 77, 0, 13),
            Ipv4Addr::new(10, 77, 0, 14),
        ];
        let cfg = haproxy_cfg(VIP_V4, &be, 2);
        for want in [
            "    nbthread 2\n",
            "    mode tcp\n",
            "frontend plain\n    bind 10.77.0.100:8080\n    default_backend plain_backends\n",
            "    server be1 10.77.0.12:8080 check\n",
            "frontend apiserver\n    bind 10.77.0.100:6443\n",
            "    http-check send meth GET uri /readyz\n",
            "    server be3 10.77.0.14:6443 check verify none\n",
        ] {
            assert!(cfg.contains(want), "{want:?} missing from:\n{cfg}");
        }
        // The real parser agrees (`haproxy -c` binds nothing; no root).
        let dir = std::env::temp_dir().join(format!("e2e-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, &cfg).expect("write cfg");
        let out = std::process::Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .expect("haproxy not found: install it (`apt-get install haproxy`, or `cargo xtask bootstrap`)");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "haproxy -c: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn report_names_are_utc_timestamps() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_763_202_645);
        assert_eq!(report_name(t), "e2e-20251115T103045Z");
        assert_eq!(report_name(SystemTime::UNIX_EPOCH), "e2e-19700101T000000Z");
        // A leap day.
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(report_name(t), "e2e-20000229T000000Z");
    }
}
