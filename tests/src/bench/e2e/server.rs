//! The plain HTTP/1.1 server every backend runs next to the stand-in: `GET /`
//! answers three bytes, `GET /bulk?bytes=N` N bytes.

use std::net::TcpListener;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{MAX_HEAD, SMALL_BODY};
use crate::standin::find;

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
    pub(super) stop_tx: Option<tokio::sync::oneshot::Sender<()>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
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
}
