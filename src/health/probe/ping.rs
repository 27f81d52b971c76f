//! `kind = "ping"`: ICMP echo (`crate::health::icmp`, as the ping-node prober
//! sends it). `count` echoes are sent one timeout-share apart; one reply is up.
//! Needs CAP_NET_RAW, as the daemon has.
use rustix::net::RecvFlags;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::remaining;
use crate::health::icmp;
use crate::health::Failure;

pub(super) fn echo(target: SocketAddr, count: u32, deadline: Instant) -> Result<(), Failure> {
    let IpAddr::V4(to) = target.ip() else {
        return Err(Failure::Io("ping checks are IPv4 only".into()));
    };
    let fd = icmp::open_socket(Duration::from_millis(10))
        .map_err(|e| Failure::Io(format!("cannot open an ICMP socket: {e}")))?;
    // Every raw ICMP socket sees every echo reply: a random id tells ours
    // from those of the other checks and of the ping-node prober.
    let id = fastrand::u16(..);
    let count = count.max(1);
    let gap = remaining(deadline)? / count;
    let mut buf = [0u8; 1500];
    for seq in 0..count {
        icmp::send_echo(&fd, to, id, seq as u16);
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
            icmp::set_recv_timeout(&fd, left);
            if let Ok((n, _)) = rustix::net::recv(&fd, &mut buf, RecvFlags::empty()) {
                if n > 0 && icmp::is_reply_from(&buf[..n], &[to], id) {
                    return Ok(());
                }
            }
        }
    }
    Err(Failure::Timeout)
}
