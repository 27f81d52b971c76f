//! `kind = "http"`: `GET request` over a plain connection; the exchange is
//! shared with `https`, which runs it over TLS.
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use super::{connect, io_failure, remaining};
use crate::health::Failure;
use crate::http_head::{self as response, Head};

/// Bodies are read up to this size; `receive` must appear within it.
const MAX_RESPONSE: usize = 1 << 20;

/// A byte stream whose timeouts are set on the TCP socket beneath it.
pub(super) trait Conn: Read + Write {
    fn tcp(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

pub(super) struct HttpRequest<'a> {
    pub path: &'a str,
    pub host: Option<&'a str>,
    pub receive: Option<&'a str>,
    pub expect_status: Option<u16>,
}

pub(super) fn get(req: &HttpRequest, target: SocketAddr, deadline: Instant) -> Result<(), Failure> {
    let request = http_request_bytes(req, target)?;
    let stream = connect(target, deadline)?;
    exchange(req, &request, stream, deadline)
}

/// Builds the request bytes. ldirectord writes `request="ldirector.html"`
/// without the leading slash, so one is added when missing.
pub(super) fn http_request_bytes(req: &HttpRequest, target: SocketAddr) -> Result<String, Failure> {
    let bad = |s: &str| s.chars().any(|c| c.is_whitespace() || c.is_control());
    if bad(req.path) || req.host.is_some_and(bad) {
        return Err(Failure::Io(
            "request or host contains whitespace or control characters".into(),
        ));
    }
    let slash = if req.path.starts_with('/') { "" } else { "/" };
    let host = match req.host {
        Some(h) => h.to_string(),
        None if target.port() == 80 => target.ip().to_string(),
        None => target.to_string(),
    };
    Ok(format!(
        "GET {slash}{} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: duet-health\r\nAccept: \
            */*\r\nConnection: close\r\n\r\n",
        req.path
    ))
}

/// Sends `request` on `stream` and judges the response.
pub(super) fn exchange<C: Conn>(
    req: &HttpRequest,
    request: &str,
    mut stream: C,
    deadline: Instant,
) -> Result<(), Failure> {
    stream
        .tcp()
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(io_failure)?;
    stream.write_all(request.as_bytes()).map_err(io_failure)?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(head) = parse_head(&buf)? {
            // A server that ignores `Connection: close` would otherwise hold
            // the probe until the timeout.
            if head
                .content_length
                .is_some_and(|n| buf.len() - head.len >= n)
            {
                break;
            }
        }
        if buf.len() >= MAX_RESPONSE {
            break;
        }
        stream
            .tcp()
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(io_failure)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A TLS peer that closes without close_notify: the data so far
            // is all there is.
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io_failure(e)),
        }
    }
    let head = parse_head(&buf)?.ok_or_else(|| {
        Failure::BadResponse("connection closed before the end of the headers".into())
    })?;
    let status_ok = match req.expect_status {
        Some(want) => head.status == want,
        None => (200..400).contains(&head.status),
    };
    if !status_ok {
        return Err(Failure::WrongStatus(head.status));
    }
    if let Some(receive) = req.receive {
        let body = &buf[head.len..];
        let end = head
            .content_length
            .map_or(body.len(), |n| n.min(body.len()));
        if memchr::memmem::find(&body[..end], receive.as_bytes()).is_none() {
            return Err(Failure::BodyMismatch);
        }
    }
    Ok(())
}

/// The response head once complete; `Ok(None)` while more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    response::parse_head(buf).map_err(Failure::BadResponse)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{refused_addr, T};
    use super::*;
    use crate::health::probe::probe;
    use crate::health::{CheckKind, Failure};
    use std::io::BufRead;
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    const SLACK: Duration = Duration::from_millis(300);

    /// A one-shot-per-connection HTTP server on an ephemeral port. `respond`
    /// gets the request head and returns the raw response (or None to hang
    /// for `hang` without answering). Requests are sent on the channel.
    fn server<F>(max_conns: usize, respond: F) -> (SocketAddr, mpsc::Receiver<String>)
    where
        F: Fn(&str) -> Option<Vec<u8>> + Send + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming().take(max_conns) {
                let Ok(mut stream) = stream else { return };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let _ = tx.send(head.clone());
                match respond(&head) {
                    Some(resp) => {
                        let _ = stream.write_all(&resp);
                    }
                    None => thread::sleep(Duration::from_secs(3)),
                }
            }
        });
        (addr, rx)
    }

    fn ok_page(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn http_kind(receive: Option<&str>) -> CheckKind {
        CheckKind::Http {
            request: "ldirector.html".into(),
            receive: receive.map(Into::into),
            host: None,
            expect_status: None,
        }
    }

    #[test]
    fn http_right_content_is_up_and_request_is_well_formed() {
        let (addr, requests) = server(1, |_| Some(ok_page("<html>Test Page</html>")));
        let r = probe(&http_kind(Some("Test Page")), addr, "web1", T);
        assert!(r.is_ok(), "{r:?}");
        let head = requests.recv().unwrap();
        assert!(
            head.starts_with("GET /ldirector.html HTTP/1.0\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("Host: {addr}\r\n")), "{head}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
    }

    #[test]
    fn http_configured_host_header_is_sent() {
        let (addr, requests) = server(1, |_| Some(ok_page("x")));
        let kind = CheckKind::Http {
            request: "/health".into(),
            receive: None,
            host: Some("www.example.com".into()),
            expect_status: None,
        };
        assert!(probe(&kind, addr, "web1", T).is_ok());
        let head = requests.recv().unwrap();
        assert!(head.starts_with("GET /health HTTP/1.0\r\n"), "{head}");
        assert!(head.contains("Host: www.example.com\r\n"), "{head}");
    }

    #[test]
    fn http_wrong_body_is_body_mismatch() {
        let (addr, _) = server(1, |_| Some(ok_page("<html>It works</html>")));
        assert_eq!(
            probe(&http_kind(Some("Test Page")), addr, "web1", T),
            Err(Failure::BodyMismatch)
        );
    }

    #[test]
    fn http_500_is_wrong_status() {
        let (addr, _) = server(1, |_| {
            Some(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 9\r\n\r\nTest Page"
                    .to_vec(),
            )
        });
        assert_eq!(
            probe(&http_kind(Some("Test Page")), addr, "web1", T),
            Err(Failure::WrongStatus(500))
        );
    }

    #[test]
    fn http_redirect_is_up_unless_a_status_is_expected() {
        let resp = b"HTTP/1.1 302 Found\r\nLocation: /login\r\n\r\n".to_vec();
        let r1 = resp.clone();
        let (addr, _) = server(2, move |_| Some(r1.clone()));
        assert!(probe(&http_kind(None), addr, "web1", T).is_ok());
        let kind = CheckKind::Http {
            request: "/".into(),
            receive: None,
            host: None,
            expect_status: Some(200),
        };
        assert_eq!(
            probe(&kind, addr, "web1", T),
            Err(Failure::WrongStatus(302))
        );

        let (addr, _) = server(1, |_| Some(b"HTTP/1.1 404 Not Found\r\n\r\n".to_vec()));
        let kind = CheckKind::Http {
            request: "/".into(),
            receive: None,
            host: None,
            expect_status: Some(404),
        };
        assert!(probe(&kind, addr, "web1", T).is_ok());
    }

    #[test]
    fn http_keepalive_server_is_not_waited_for_once_body_is_complete() {
        // Answers with Content-Length, then keeps the connection open.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(&ok_page("Test Page")).unwrap();
            thread::sleep(Duration::from_secs(3));
        });
        let start = Instant::now();
        let r = probe(&http_kind(Some("Test Page")), addr, "web1", T);
        assert!(r.is_ok(), "{r:?}");
        assert!(start.elapsed() < T);
    }

    #[test]
    fn http_slow_server_times_out_within_the_timeout() {
        let (addr, _) = server(1, |_| None);
        let start = Instant::now();
        let timeout = Duration::from_millis(200);
        assert_eq!(
            probe(&http_kind(None), addr, "web1", timeout),
            Err(Failure::Timeout)
        );
        let took = start.elapsed();
        assert!(took >= timeout && took < timeout + SLACK, "took {took:?}");
    }

    #[test]
    fn http_refused_port_is_refused() {
        assert_eq!(
            probe(&http_kind(None), refused_addr(), "web1", T),
            Err(Failure::Refused)
        );
    }

    #[test]
    fn http_garbage_is_bad_response() {
        let (addr, _) = server(1, |_| Some(b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()));
        assert!(matches!(
            probe(&http_kind(None), addr, "web1", T),
            Err(Failure::BadResponse(_))
        ));
    }

    #[test]
    fn http_request_with_newline_is_rejected_before_connecting() {
        let kind = CheckKind::Http {
            request: "/x HTTP/1.0\r\nEvil: 1".into(),
            receive: None,
            host: None,
            expect_status: None,
        };
        assert!(matches!(
            probe(&kind, refused_addr(), "w", T),
            Err(Failure::Io(_))
        ));
    }

    #[test]
    fn parse_head_maps_errors_to_bad_response() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert!(matches!(
            parse_head(b"hello world\r\n\r\n"),
            Err(Failure::BadResponse(_))
        ));
    }
}
