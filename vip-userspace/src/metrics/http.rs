//! The endpoint: `/metrics`, `/status` and the agent's own `/healthz` and
//! `/readyz`: one request per connection (read and written with
//! [`crate::http`]), within connection caps and a time limit on the whole
//! exchange (issue 18).

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tracing::{debug, warn};

use super::Metrics;
use crate::http;

/// The most connections the endpoint serves at once, and from one source
/// address: a client that opens connections and sends nothing holds at most
/// [`MAX_PER_PEER`] of them for [`EXCHANGE_TIMEOUT`], so it cannot keep
/// Prometheus (or `vipd status`) from another address out. Connections over
/// either cap are closed at once.
pub const MAX_CONNS: usize = 256;
pub const MAX_PER_PEER: usize = 8;
/// The whole exchange, request in and reply out: a client that sends slowly,
/// or never reads a large `/metrics` reply, is dropped after it.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head larger than this gets 431 (we read only the request line).
pub const MAX_HEAD: usize = 4096;

/// Connections in flight, in total and by source address.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    by_peer: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// A connection's place under the caps; released on drop, however the
/// connection's task ends.
struct Slot {
    slots: Arc<std::sync::Mutex<Slots>>,
    peer: std::net::IpAddr,
}

impl Slot {
    fn take(slots: &Arc<std::sync::Mutex<Slots>>, peer: std::net::IpAddr) -> Option<Slot> {
        let mut g = slots.lock().unwrap_or_else(|p| p.into_inner());
        let mine = g.by_peer.get(&peer).copied().unwrap_or(0);
        if g.total >= MAX_CONNS || mine >= MAX_PER_PEER {
            return None;
        }
        g.total += 1;
        g.by_peer.insert(peer, mine + 1);
        Some(Slot {
            slots: slots.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        g.total = g.total.saturating_sub(1);
        if let Some(n) = g.by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                g.by_peer.remove(&self.peer);
            }
        }
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/status` on `listener` until
/// dropped, within the caps above.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(std::sync::Mutex::new(Slots::default()));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&slots, peer.ip()) else {
            debug!(peer = %peer, "metrics: over the connection cap; closed");
            drop(sock);
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(sock, &m))
                .await
                .is_err()
            {
                debug!(peer = %peer, "metrics: exchange timed out; closed");
            }
        });
    }
}

/// One request, one reply, then close.
async fn exchange(mut sock: tokio::net::TcpStream, m: &Metrics) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut n = 0;
    while http::head_end(&buf[..n]).is_none() {
        if n == buf.len() {
            let reply = http::answer("431 Request Header Fields Too Large", TEXT, "");
            let _ = sock.write_all(reply.as_bytes()).await;
            return;
        }
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
    }
    let (method, path) = http::request_line(&buf[..n]);
    let (status, ctype, body) = respond(m, &method, &path);
    let _ = sock
        .write_all(http::answer(status, ctype, &body).as_bytes())
        .await;
    let _ = sock.shutdown().await;
}

const TEXT: &str = "text/plain; charset=utf-8";

fn respond(m: &Metrics, method: &str, path: &str) -> (&'static str, &'static str, String) {
    if method != "GET" {
        return ("405 Method Not Allowed", TEXT, "GET only\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            m.encode(),
        ),
        "/healthz" | "/livez" if m.healthy() => ("200 OK", TEXT, "ok\n".into()),
        "/healthz" | "/livez" => (
            "503 Service Unavailable",
            TEXT,
            "the agent loop is stuck\n".into(),
        ),
        "/readyz" if m.ready() && m.healthy() => ("200 OK", TEXT, "ok\n".into()),
        "/status" => match m.status() {
            s if s.is_empty() => (
                "503 Service Unavailable",
                TEXT,
                "vipd is starting; no status yet\n".into(),
            ),
            s => ("200 OK", "application/json", s),
        },
        "/readyz" => (
            "503 Service Unavailable",
            TEXT,
            "not ready: the XDP program is not attached or the services are not written yet\n"
                .into(),
        ),
        _ => (
            "404 Not Found",
            TEXT,
            "try /metrics, /status, /healthz or /readyz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Instant};

    use super::*;

    /// Slow, silent, malformed and oversized clients: none of it keeps
    /// `/metrics` from a client at another address, and the server answers
    /// after all of it. (A client that never reads its reply is bounded by
    /// the same [`EXCHANGE_TIMEOUT`], which covers the whole exchange.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_clients_never_stall_metrics_for_others() {
        use tokio::net::TcpSocket;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let m = Arc::new(Metrics::default());
        m.beat();
        let server = tokio::spawn(serve(l, m));
        let from = |ip: &str| {
            let s = TcpSocket::new_v4().expect("socket");
            s.bind(SocketAddr::new(ip.parse().expect("ip"), 0))
                .expect("bind");
            s
        };
        let get = |ip: &'static str, path: &'static str| async move {
            // Over a cap the server closes at once: an empty answer.
            let mut c = from(ip).connect(addr).await.expect("connect");
            let _ = c
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await;
            let mut out = String::new();
            let _ = c.read_to_string(&mut out).await;
            out
        };
        // 40 connections from 127.0.0.2 that send half a request and wait.
        let mut slow = vec![];
        for _ in 0..40 {
            let mut c = from("127.0.0.2").connect(addr).await.expect("connect");
            let _ = c.write_all(b"GET /metr").await;
            slow.push(c);
        }
        // The ones over the per-address cap are closed at once.
        let mut closed = 0;
        for c in &mut slow {
            let mut b = [0u8; 1];
            // Closed with our bytes unread: FIN (0) or RST (an error).
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(300), c.read(&mut b)).await
            {
                closed += 1;
            }
        }
        assert_eq!(closed, 40 - MAX_PER_PEER, "over the per-address cap");
        // Meanwhile another address is served at once.
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), get("127.0.0.1", "/metrics"))
            .await
            .expect("/metrics answered while 127.0.0.2 holds its slots");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // Malformed and oversized requests get an answer or a close, never a
        // panic of the server.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in 0..200 {
            let mut c = from("127.0.0.3").connect(addr).await.expect("connect");
            let len = if i % 10 == 0 {
                MAX_HEAD + 10
            } else {
                (x % 600) as usize
            };
            let mut junk = Vec::with_capacity(len + 4);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                junk.push(x as u8);
            }
            junk.extend_from_slice(b"\r\n\r\n");
            let _ = c.write_all(&junk).await;
            let mut out = vec![];
            let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut out)).await;
            if len > MAX_HEAD {
                assert!(
                    out.starts_with(b"HTTP/1.1 431"),
                    "oversized head: {:?}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        // The slow clients go: their slots come back (within the time the
        // server takes to see them close).
        drop(slow);
        let t = Instant::now();
        loop {
            let r = get("127.0.0.2", "/healthz").await;
            if r.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "127.0.0.2's slots were not released: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!server.is_finished(), "the server is still running");
        server.abort();
    }

    #[test]
    fn health_endpoints_follow_the_agent() {
        let m = Metrics::default();
        assert_eq!(respond(&m, "GET", "/readyz").0, "503 Service Unavailable");
        m.beat();
        m.set_ready(true);
        assert_eq!(respond(&m, "GET", "/readyz").0, "200 OK");
        assert_eq!(respond(&m, "GET", "/healthz").0, "200 OK");
        assert_eq!(respond(&m, "POST", "/metrics").0, "405 Method Not Allowed");
        assert_eq!(respond(&m, "GET", "/nope").0, "404 Not Found");
        assert!(respond(&m, "GET", "/metrics?x=1").2.contains("# EOF"));
    }
}
