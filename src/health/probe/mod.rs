//! One blocking health probe per check kind, behind one interface:
//! [`probe`] runs a check against a target within its timeout and returns the
//! latency or a [`Failure`]. Each kind lives in its own file (keepalived
//! style); the shared helpers here enforce the deadline.
//!
//! Each probe opens a fresh connection (or process): nothing is reused, so a
//! backend that only accepts new connections badly is seen as it is.
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{CheckKind, Failure};

mod banner;
mod dns;
mod exec;
mod http;
mod https;
mod mysql;
mod pgsql;
mod ping;
mod udp;

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
    let done = match kind {
        CheckKind::None => return Ok(Duration::ZERO),
        CheckKind::Tcp => connect(target, deadline).map(drop),
        CheckKind::Http {
            request,
            receive,
            host,
            expect_status,
        } => {
            let req = http::HttpRequest {
                path: request,
                host: host.as_deref(),
                receive: receive.as_deref(),
                expect_status: *expect_status,
            };
            http::get(&req, target, deadline)
        }
        CheckKind::Https {
            request,
            receive,
            host,
            expect_status,
            verify,
        } => {
            let req = http::HttpRequest {
                path: request,
                host: host.as_deref(),
                receive: receive.as_deref(),
                expect_status: *expect_status,
            };
            https::get(&req, *verify, target, deadline)
        }
        CheckKind::Dns(q) => dns::query(q, target, deadline),
        CheckKind::Ping { count } => ping::echo(target, *count, deadline),
        CheckKind::Banner {
            greeting,
            request,
            receive,
        } => banner::check(
            greeting,
            request.as_deref(),
            receive.as_deref(),
            target,
            deadline,
        ),
        CheckKind::Mysql => mysql::handshake(target, deadline),
        CheckKind::Pgsql => pgsql::ssl_request(target, deadline),
        CheckKind::Udp { request, receive } => {
            udp::exchange(request, receive.as_deref(), target, deadline)
        }
        CheckKind::Exec { command } => exec::run(command, target, name, deadline),
    };
    done.map(|()| start.elapsed())
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
    let s = TcpStream::connect_timeout(&target, remaining(deadline)?).map_err(io_failure)?;
    s.set_write_timeout(Some(remaining(deadline)?))
        .map_err(io_failure)?;
    Ok(s)
}

/// Reads from `stream` into `buf` until `done(buf)` holds, the peer closes,
/// `max` bytes arrived or the deadline passes (`Timeout`).
fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
    done: impl Fn(&[u8]) -> bool,
) -> Result<(), Failure> {
    use std::io::Read;
    let mut chunk = [0u8; 4096];
    while !done(buf) && buf.len() < max {
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
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};

    pub const T: std::time::Duration = std::time::Duration::from_millis(500);

    pub fn refused_addr() -> SocketAddr {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        addr
    }

    /// A server that writes `greeting` on each of `conns` connections, then
    /// answers one read with `reply` (if any) and closes.
    pub fn greeter(
        conns: usize,
        greeting: &'static [u8],
        reply: Option<&'static [u8]>,
    ) -> SocketAddr {
        use std::io::{Read, Write};
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().take(conns) {
                let Ok(mut s) = s else { return };
                let _ = s.write_all(greeting);
                if let Some(reply) = reply {
                    let mut b = [0u8; 512];
                    let _ = s.read(&mut b);
                    let _ = s.write_all(reply);
                }
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

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

    #[test]
    fn failure_display_is_short() {
        assert_eq!(Failure::Timeout.to_string(), "timeout");
        assert_eq!(Failure::WrongStatus(503).to_string(), "HTTP status 503");
        assert_eq!(Failure::Exit(2).to_string(), "exit status 2");
    }
}
