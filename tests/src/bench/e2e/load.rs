//! The load generator: threads inside the client namespace making short
//! connections, kept-alive requests, TLS handshakes and one bulk download.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::cpu::CpuUse;
use super::{IO_TIMEOUT, MAX_ERRORS, MAX_HEAD, Options, Target};
use crate::netns::in_netns;
use crate::standin::{HttpsConn, find};

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
pub(super) struct Sample {
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) latencies_ns: Vec<u64>,
    pub(super) bytes: u64,
    pub(super) elapsed: Duration,
    pub(super) cpu: Option<CpuUse>,
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
pub(super) fn short_conns(t: &Target, o: &Options) -> Sample {
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
pub(super) fn kept_alive(t: &Target, o: &Options) -> Sample {
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
pub(super) fn tls_conns(t: &Target, o: &Options) -> Sample {
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
pub(super) fn bulk(t: &Target, o: &Options) -> Sample {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
