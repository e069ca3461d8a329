//! Watches as client-go makes them: every watch a stream of **one** HTTP/2
//! connection (ALPN `h2`, RFC 9113), so one TCP flow through the VIP carries a
//! kubelet's or a controller's every watch. A dead flow ends them all at once;
//! a silent one leaves them all hanging.

use std::{
    net::{SocketAddr, TcpStream as StdTcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rustls::{ClientConfig, pki_types::ServerName};
use tokio_rustls::TlsConnector;

use crate::{
    netns::in_netns,
    traffic::{End, WATCH_PATH, WatchReport, WatchState as State, lock},
};

/// `n` watches multiplexed on one HTTP/2 connection, read by one tokio
/// runtime on a thread of its own; stopped on drop.
pub struct H2Watches {
    states: Vec<Arc<Mutex<State>>>,
    /// The ALPN protocol the server chose.
    pub protocol: String,
    /// The connection's local port (one TCP flow for every watch).
    pub local_port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What ended a stream: an error of the connection (the TCP flow reset, as
/// the XDP program resets a dead backend's flows) or of the stream.
fn end_of(e: &h2::Error) -> End {
    let io_reset = e.get_io().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        )
    });
    if io_reset || e.to_string().to_lowercase().contains("connection reset") {
        End::Reset
    } else {
        End::Error(e.to_string())
    }
}

impl H2Watches {
    /// Connects from `client_ns` to `target` with `cfg` (its ALPN replaced by
    /// `h2` alone: a server that does not speak HTTP/2 fails the handshake),
    /// opens `n` watches on that one connection and returns once each has
    /// its first event.
    pub fn open(
        client_ns: &str,
        cfg: &Arc<ClientConfig>,
        target: SocketAddr,
        n: usize,
    ) -> Result<H2Watches, String> {
        let tcp = in_netns(client_ns, || {
            StdTcpStream::connect_timeout(&target, Duration::from_secs(5))
        })
        .map_err(|e| format!("connect {target}: {e}"))?;
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let local_port = tcp.local_addr().map_err(|e| e.to_string())?.port();
        let mut cfg = (**cfg).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let cfg = Arc::new(cfg);
        let states: Vec<Arc<Mutex<State>>> = (0..n)
            .map(|_| {
                Arc::new(Mutex::new(State {
                    server: String::new(),
                    end: End::Open,
                    ended: None,
                    last: Instant::now(),
                    longest_gap: Duration::ZERO,
                    events: 0,
                }))
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, String>>();
        let thread = {
            let (states, stop) = (states.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(run(tcp, cfg, states, stop, ready_tx));
            })
        };
        let protocol = match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("the watches did not all start within 20 s".into()),
        };
        Ok(H2Watches {
            states,
            protocol,
            local_port,
            stop,
            thread: Some(thread),
        })
    }

    /// Every stream's state now.
    pub fn report(&self) -> Vec<WatchReport> {
        self.states.iter().map(|s| lock(s).report()).collect()
    }
}

impl Drop for H2Watches {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run(
    tcp: StdTcpStream,
    cfg: Arc<ClientConfig>,
    states: Vec<Arc<Mutex<State>>>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<String, String>>,
) {
    let setup = async {
        let tcp = tokio::net::TcpStream::from_std(tcp).map_err(|e| format!("tcp: {e}"))?;
        let name = ServerName::try_from("kubernetes").map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let protocol = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let (client, conn) = h2::client::handshake(tls)
            .await
            .map_err(|e| format!("HTTP/2 handshake (ALPN {protocol:?}): {e}"))?;
        Ok::<_, String>((client, conn, protocol))
    };
    let (client, conn, protocol) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The connection task: drives every stream's frames.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut firsts = vec![];
    for (i, st) in states.iter().enumerate() {
        let req = match http::Request::get(format!("https://kubernetes{WATCH_PATH}")).body(()) {
            Ok(r) => r,
            Err(e) => {
                let _ = ready.send(Err(format!("watch {i}: {e}")));
                return;
            }
        };
        let sent = match client.clone().ready().await {
            Ok(mut c) => c.send_request(req, true),
            Err(e) => Err(e),
        };
        let resp = match sent {
            Ok((resp, _)) => resp,
            Err(e) => {
                let _ = ready.send(Err(format!("watch {i}: send: {e}")));
                return;
            }
        };
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
        firsts.push(first_rx);
        let st = st.clone();
        tokio::spawn(async move {
            let resp = match resp.await {
                Ok(r) => r,
                Err(e) => {
                    let _ = first_tx.send(Err(format!("watch {i}: response: {e}")));
                    return;
                }
            };
            let server = resp
                .headers()
                .get("x-standin-name")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            lock(&st).server = server;
            let mut body = resp.into_body();
            let mut first = Some(first_tx);
            loop {
                let next = body.data().await;
                let now = Instant::now();
                let mut s = lock(&st);
                match next {
                    Some(Ok(chunk)) => {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        let events = chunk.iter().filter(|b| **b == b'\n').count() as u64;
                        if events > 0 {
                            let gap = now - s.last;
                            if s.events > 0 {
                                s.longest_gap = s.longest_gap.max(gap);
                            }
                            s.last = now;
                            s.events += events;
                            if let Some(tx) = first.take() {
                                let _ = tx.send(Ok(()));
                            }
                        }
                    }
                    Some(Err(e)) => {
                        s.end = end_of(&e);
                        s.ended = Some(now);
                        return;
                    }
                    None => {
                        s.end = End::Closed;
                        s.ended = Some(now);
                        return;
                    }
                }
            }
        });
    }
    for (i, f) in firsts.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), f).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                let _ = ready.send(Err(e));
                return;
            }
            _ => {
                let _ = ready.send(Err(format!("watch {i}: no first event within 10 s")));
                return;
            }
        }
    }
    let _ = ready.send(Ok(protocol));
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
