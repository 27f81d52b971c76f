//! `kind = "udp"`: sends `request` in one datagram; up when an answer
//! arrives (containing `receive`, if set) within the timeout. An ICMP port
//! unreachable is seen as refused.
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Instant;

use super::{io_failure, remaining};
use crate::health::Failure;

pub(super) fn exchange(
    request: &[u8],
    receive: Option<&[u8]>,
    target: SocketAddr,
    deadline: Instant,
) -> Result<(), Failure> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io_failure)?;
    // Connected, so only the target's answers (and its ICMP errors) count.
    sock.connect(target).map_err(io_failure)?;
    sock.send(request).map_err(io_failure)?;
    let mut buf = vec![0u8; 65536];
    loop {
        sock.set_read_timeout(Some(remaining(deadline)?))
            .map_err(io_failure)?;
        let n = sock.recv(&mut buf).map_err(io_failure)?;
        match receive {
            None => return Ok(()),
            Some(want) if memchr::memmem::find(&buf[..n], want).is_some() => return Ok(()),
            // A stray or late datagram; the right one may still come.
            Some(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::T;
    use super::*;
    use crate::health::Failure;
    use std::time::Duration;

    fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut b) {
                let _ = s.send_to(&b[..n], from);
            }
        });
        addr
    }

    #[test]
    fn echo_is_up_wrong_answer_times_out_closed_port_is_refused() {
        let addr = echo();
        assert_eq!(
            exchange(b"ping", Some(b"ping"), addr, Instant::now() + T),
            Ok(())
        );
        let start = Instant::now();
        let short = Instant::now() + Duration::from_millis(200);
        assert_eq!(
            exchange(b"ping", Some(b"pong"), addr, short),
            Err(Failure::Timeout)
        );
        assert!(start.elapsed() < Duration::from_millis(500));
        let closed = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(
            exchange(b"x", None, closed, Instant::now() + T),
            Err(Failure::Refused)
        );
    }
}
