//! The HTTP client behind `duet status`, `drain`, `undrain` and `failover`:
//! one request per connection over a plain `TcpStream`, bounded in time and
//! in the size of the answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest response accepted; a status report with a full event log is a few
/// hundred KiB.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Sends `method path` to `addr` and returns the status code and body.
/// `timeout` bounds the whole exchange, connect included. A bearer `token`
/// is sent as `Authorization: Bearer <token>`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    request_with_body(addr, method, path, token, "", timeout)
}

/// Like [`request`], sending `body` (JSON) with a POST or PUT.
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let kind = (!body.is_empty()).then_some("application/json");
    request_with_bytes(addr, method, path, token, kind, body.as_bytes(), timeout)
}

/// Like [`request`], sending `body` of type `content_type` with a POST or PUT.
pub fn request_with_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, String), String> {
    if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.is_empty() {
        return Err(format!("invalid method {method:?}"));
    }
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!("invalid path {path:?}"));
    }
    if token.is_some_and(|t| t.bytes().any(|b| b == b'\r' || b == b'\n')) {
        return Err("token contains a line break".into());
    }
    if content_type.is_some_and(|t| t.contains(['\r', '\n'])) {
        return Err("content type contains a line break".into());
    }
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;

    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if let Some(t) = content_type {
            req.push_str(&format!("Content-Type: {t}\r\n"));
        }
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body);
    set_timeouts(&stream, deadline)?;
    stream
        .write_all(&req)
        .map_err(|e| format!("cannot send request to {addr}: {e}"))?;

    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        set_timeouts(&stream, deadline)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(format!(
                        "response from {addr} larger than {MAX_RESPONSE} bytes"
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading response from {addr}: {e}")),
        }
    }
    parse_response(&buf).map_err(|e| format!("bad response from {addr}: {e}"))
}

fn set_timeouts(stream: &TcpStream, deadline: Instant) -> Result<(), String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err("timed out".into());
    }
    stream
        .set_read_timeout(Some(left))
        .and_then(|()| stream.set_write_timeout(Some(left)))
        .map_err(|e| format!("cannot set socket timeout: {e}"))
}

/// Splits a complete HTTP/1.x response into status code and body.
fn parse_response(buf: &[u8]) -> Result<(u16, String), String> {
    let head = crate::http_head::parse_head(buf)?.ok_or("no end of headers")?;
    if head.transfer_encoding {
        return Err("chunked responses are not supported".into());
    }
    let body = &buf[head.len..];
    let body = match head.content_length {
        Some(n) if n > body.len() => return Err("response truncated".into()),
        Some(n) => &body[..n],
        None => body,
    };
    Ok((head.status, String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_responses() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXX").unwrap(),
            (200, "hi".to_string())
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 404 Not Found\r\n\r\ngone").unwrap(),
            (404, "gone".to_string())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 2000 X\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn sends_token_and_close() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1024];
            while memchr::memmem::find(&got, b"\r\n\r\n").is_none() {
                let n = s.read(&mut b).unwrap();
                got.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let r = request(
            addr,
            "POST",
            "/api/failover",
            Some("tok"),
            Duration::from_secs(5),
        );
        assert_eq!(r.unwrap(), (200, "ok\n".to_string()));
        let sent = server.join().unwrap();
        assert!(sent.starts_with("POST /api/failover HTTP/1.1\r\n"));
        assert!(sent.contains("Authorization: Bearer tok\r\n"));
        assert!(sent.contains("Connection: close\r\n"));
        assert!(sent.contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn times_out_on_a_silent_server() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = Instant::now();
        let r = request(addr, "GET", "/", None, Duration::from_millis(300));
        assert!(r.is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(l);
    }

    #[test]
    fn rejects_bad_arguments() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let t = Duration::from_millis(100);
        assert!(request(a, "get", "/", None, t).is_err());
        assert!(request(a, "GET", "no-slash", None, t).is_err());
        assert!(request(a, "GET", "/a b", None, t).is_err());
        assert!(request(a, "GET", "/", Some("x\r\nEvil: 1"), t).is_err());
    }
}
