//! `kind = "ping"`: ICMP echo with the ping-node prober's socket and packet
//! code. `count` echoes are sent one timeout-share apart; one reply is up.
//! Needs CAP_NET_RAW, as the daemon has.
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::remaining;
use crate::health::Failure;
use crate::sys::ping;

pub(super) fn echo(target: SocketAddr, count: u32, deadline: Instant) -> Result<(), Failure> {
    let IpAddr::V4(to) = target.ip() else {
        return Err(Failure::Io("ping checks are IPv4 only".into()));
    };
    let fd = ping::open_socket(Duration::from_millis(10))
        .map_err(|e| Failure::Io(format!("cannot open an ICMP socket: {e}")))?;
    // Every raw ICMP socket sees every echo reply: a random id tells ours
    // from those of the other checks and of the ping-node prober.
    let id = fastrand::u16(..);
    let count = count.max(1);
    let gap = remaining(deadline)? / count;
    let mut buf = [0u8; 1500];
    for seq in 0..count {
        ping::send_echo(&fd, to, id, seq as u16);
        let until = if seq + 1 == count {
            deadline
        } else {
            Instant::now() + gap
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            ping::set_recv_timeout(&fd, left);
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && ping::is_reply_from(&buf[..n as usize], &[to], id) {
                return Ok(());
            }
        }
    }
    Err(Failure::Timeout)
}
