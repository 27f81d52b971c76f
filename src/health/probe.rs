//! One blocking health probe with its timeout enforced.
//!
//! Each probe opens a fresh connection (or process): nothing is reused, so a
//! backend that only accepts new connections badly is seen as it is.
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{CheckKind, Failure};
use crate::status::response::{self, Head};

/// Bodies are read up to this size; `receive` must appear within it.
const MAX_RESPONSE: usize = 1 << 20;

/// How often a running exec check is polled for exit, at most.
const EXEC_POLL_MAX: Duration = Duration::from_millis(20);

/// Runs one check of `kind` against `target` and returns its latency, or why
/// it failed. Returns within `timeout` plus a few milliseconds.
pub fn probe(
    kind: &CheckKind,
    target: SocketAddr,
    name: &str,
    timeout: Duration,
) -> Result<Duration, Failure> {
    let start = Instant::now();
    let deadline = start + timeout;
    match kind {
        CheckKind::None => Ok(Duration::ZERO),
        CheckKind::Tcp => connect(target, deadline).map(|_| start.elapsed()),
        CheckKind::Http {
            request,
            receive,
            host,
            expect_status,
        } => {
            let req = HttpRequest {
                path: request,
                host: host.as_deref(),
                receive: receive.as_deref(),
                expect_status: *expect_status,
            };
            http(&req, target, deadline).map(|_| start.elapsed())
        }
        CheckKind::Exec { command } => {
            exec(command, target, name, deadline).map(|_| start.elapsed())
        }
    }
}

fn remaining(deadline: Instant) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(Failure::Timeout)
    } else {
        Ok(left)
    }
}

fn io_failure(e: std::io::Error) -> Failure {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Failure::Timeout,
        ErrorKind::ConnectionRefused => Failure::Refused,
        _ => Failure::Io(e.to_string()),
    }
}

fn connect(target: SocketAddr, deadline: Instant) -> Result<TcpStream, Failure> {
    TcpStream::connect_timeout(&target, remaining(deadline)?).map_err(io_failure)
}

struct HttpRequest<'a> {
    path: &'a str,
    host: Option<&'a str>,
    receive: Option<&'a str>,
    expect_status: Option<u16>,
}

/// Builds the request bytes. ldirectord writes `request="ldirector.html"`
/// without the leading slash, so one is added when missing.
fn http_request_bytes(req: &HttpRequest, target: SocketAddr) -> Result<String, Failure> {
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

fn http(req: &HttpRequest, target: SocketAddr, deadline: Instant) -> Result<(), Failure> {
    let request = http_request_bytes(req, target)?;
    let mut stream = connect(target, deadline)?;
    stream
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
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(io_failure)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
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

fn exec(command: &str, target: SocketAddr, name: &str, deadline: Instant) -> Result<(), Failure> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env("DUET_BACKEND_ADDR", target.ip().to_string())
        .env("DUET_BACKEND_PORT", target.port().to_string())
        .env("DUET_BACKEND_NAME", name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so a timeout kills the script's children
        // too and none outlives the check.
        .process_group(0)
        .spawn()
        .map_err(|e| Failure::Io(format!("cannot run /bin/sh: {e}")))?;
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match (status.code(), status.signal()) {
                    (Some(0), _) => Ok(()),
                    (Some(code), _) => Err(Failure::Exit(code)),
                    (None, Some(sig)) => Err(Failure::Exit(128 + sig)),
                    (None, None) => Err(Failure::Io("check ended without a status".into())),
                };
            }
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(Failure::Io(e.to_string()));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            kill_group(&mut child);
            return Err(Failure::Timeout);
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(EXEC_POLL_MAX);
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this child; it touches no memory.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    // Reap it so no zombie is left; SIGKILL makes this prompt.
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::{Ipv4Addr, TcpListener};
    use std::sync::mpsc;
    use std::thread;

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

    fn refused_addr() -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        addr
    }

    const T: Duration = Duration::from_millis(500);

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

    #[test]
    fn tcp_ok_and_refused() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(probe(&CheckKind::Tcp, addr, "web1", T).is_ok());
        drop(listener);
        assert_eq!(
            probe(&CheckKind::Tcp, addr, "web1", T),
            Err(Failure::Refused)
        );
    }

    #[test]
    fn none_is_always_up() {
        assert!(probe(&CheckKind::None, refused_addr(), "web1", T).is_ok());
    }

    fn exec_kind(command: &str) -> CheckKind {
        CheckKind::Exec {
            command: command.into(),
        }
    }

    #[test]
    fn exec_true_false_and_exit_code() {
        let addr: SocketAddr = "198.18.0.20:8080".parse().unwrap();
        assert!(probe(&exec_kind("true"), addr, "web1", T).is_ok());
        assert_eq!(
            probe(&exec_kind("false"), addr, "web1", T),
            Err(Failure::Exit(1))
        );
        assert_eq!(
            probe(&exec_kind("exit 7"), addr, "web1", T),
            Err(Failure::Exit(7))
        );
    }

    #[test]
    fn exec_sees_the_backend_in_its_environment() {
        let addr: SocketAddr = "198.18.0.20:8080".parse().unwrap();
        let cmd = concat!(
            r#"[ "$DUET_BACKEND_ADDR" = 198.18.0.20 ] && "#,
            r#"[ "$DUET_BACKEND_PORT" = 8080 ] && [ "$DUET_BACKEND_NAME" = web1 ]"#
        );
        assert!(probe(&exec_kind(cmd), addr, "web1", T).is_ok());
        assert_eq!(
            probe(&exec_kind(cmd), addr, "web2", T),
            Err(Failure::Exit(1))
        );
    }

    #[test]
    fn exec_slow_command_is_killed_at_the_timeout() {
        let addr: SocketAddr = "198.18.0.20:80".parse().unwrap();
        let timeout = Duration::from_millis(200);
        let dir = std::env::temp_dir().join(format!("duet-exec-{}", std::process::id()));
        let marker = dir.with_extension("marker");
        let _ = std::fs::remove_file(&marker);
        // The child `sleep` must die with the shell: if it survived, it would
        // create the marker after one second.
        let cmd = format!("sleep 1; touch {}; sleep 5", marker.display());
        let start = Instant::now();
        assert_eq!(
            probe(&exec_kind(&cmd), addr, "web1", timeout),
            Err(Failure::Timeout)
        );
        let took = start.elapsed();
        assert!(took >= timeout && took < timeout + SLACK, "took {took:?}");
        thread::sleep(Duration::from_millis(1200));
        assert!(
            !marker.exists(),
            "the check's children outlived the timeout"
        );
    }

    #[test]
    fn failure_display_is_short() {
        assert_eq!(Failure::Timeout.to_string(), "timeout");
        assert_eq!(Failure::WrongStatus(503).to_string(), "HTTP status 503");
        assert_eq!(Failure::Exit(2).to_string(), "exit status 2");
    }
}
