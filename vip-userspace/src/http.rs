//! The HTTP/1.1 vipd speaks, as pure functions over bytes: the requests it
//! sends (health probes, `GET /version`, `vipd status`), the responses it
//! reads, and the answers of its own endpoint (`metrics::http`).
//!
//! One request per connection with `Connection: close` (RFC 9112 section
//! 9.6), no keep-alive, no pipelining, bodies of a few kilobytes: that is
//! all vipd needs, so this is a codec and not a client or server stack
//! (hyper would bring its own connection handling, which the probes' TLS
//! dial, the endpoint's caps and the blocking CLI each do their own way).
//! The sockets and their limits stay with the callers.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HttpError {
    #[error("malformed HTTP status line {0:?}")]
    StatusLine(String),
    #[error("no end of the headers")]
    NoHeadEnd,
    #[error("malformed chunked body")]
    Chunked,
}

/// A GET with `Host` (RFC 9110 section 7.2), then `headers`, then
/// `Connection: close`.
pub fn get(path: &str, host: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str("Connection: close\r\n\r\n");
    r
}

/// Where the head of a message ends (after its empty line), if it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// `HTTP-version SP status-code SP [reason-phrase]` (RFC 9112 section 4),
/// HTTP/1.x only. A missing SP after the code is accepted, as most clients do.
pub fn status_line(line: &[u8]) -> Result<u16, HttpError> {
    let malformed =
        || HttpError::StatusLine(String::from_utf8_lossy(line).chars().take(64).collect());
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(malformed)?;
    let (minor, rest) = rest.split_first().ok_or_else(malformed)?;
    if !minor.is_ascii_digit() {
        return Err(malformed());
    }
    let rest = rest.strip_prefix(b" ").ok_or_else(malformed)?;
    let (code, after) = rest.split_at_checked(3).ok_or_else(malformed)?;
    if !code.iter().all(u8::is_ascii_digit) || !(after.is_empty() || after[0] == b' ') {
        return Err(malformed());
    }
    Ok(code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0')))
}

/// A whole response as read until the server closed.
#[derive(Debug)]
pub struct Response<'a> {
    pub status: u16,
    head: &'a [u8],
    rest: &'a [u8],
}

/// Splits a response into its status, head and body.
pub fn response(raw: &[u8]) -> Result<Response<'_>, HttpError> {
    let end = head_end(raw).ok_or(HttpError::NoHeadEnd)?;
    let head = &raw[..end - 4];
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    Ok(Response {
        status: status_line(&head[..line_end])?,
        head,
        rest: &raw[end..],
    })
}

impl Response<'_> {
    /// The body, de-chunked if the server chunked it.
    pub fn body(&self) -> Result<Vec<u8>, HttpError> {
        let chunked = String::from_utf8_lossy(self.head).lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        if chunked {
            dechunk(self.rest).ok_or(HttpError::Chunked)
        } else {
            Ok(self.rest.to_vec())
        }
    }
}

/// RFC 9112 section 7.1 chunked body, extensions and trailers ignored.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![];
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A request's method and target, from its head (empty if absent).
pub fn request_line(head: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split_whitespace();
    let method = parts.next().unwrap_or("").to_owned();
    let target = parts.next().unwrap_or("").to_owned();
    (method, target)
}

/// A whole answer of vipd's endpoint; the connection closes after it.
pub fn answer(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_its_answer_round_trip() {
        let req = get("/x", "h:1", &[("Accept", "*/*")]);
        assert_eq!(
            req,
            "GET /x HTTP/1.1\r\nHost: h:1\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let end = head_end(req.as_bytes()).expect("a whole head");
        assert_eq!(end, req.len());
        assert_eq!(
            request_line(&req.as_bytes()[..end]),
            ("GET".into(), "/x".into())
        );
        let a = answer("404 Not Found", "text/plain", "nope\n");
        let r = response(a.as_bytes()).expect("parses");
        assert_eq!(r.status, 404);
        assert_eq!(r.body().expect("body"), b"nope\n");
    }

    #[test]
    fn chunked_bodies_and_broken_responses() {
        let r = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1;x=y\r\nd\r\n0\r\n\r\n")
            .expect("parses");
        assert_eq!(r.body().expect("dechunked"), b"abcd");
        let bad = response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
            .expect("head parses");
        assert_eq!(bad.body(), Err(HttpError::Chunked));
        assert_eq!(
            response(b"HTTP/1.1 200 OK\r\n").map(|r| r.status),
            Err(HttpError::NoHeadEnd)
        );
        assert!(matches!(
            response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HttpError::StatusLine(_))
        ));
        assert_eq!(request_line(b""), (String::new(), String::new()));
    }
}
