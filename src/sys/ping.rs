//! Ping nodes (heartbeat's `ipfail`): a node that cannot reach any of them
//! must not direct. One thread sends ICMP echoes on a raw socket and records
//! when each target last answered; the control loop hears each change of
//! the verdict.
use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, Ipv4Slice};
use rustix::net::sockopt::Timeout;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::inbox::{Input, Notify};

pub struct Pinger {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pinger {
    /// Probes every `period`; unreachable once no target answered for
    /// `lost_after`, which must be shorter than the heartbeat's dead time
    /// so a cut link is seen as "no gateway" before "no peer".
    pub fn start(
        targets: Vec<Ipv4Addr>,
        period: Duration,
        lost_after: Duration,
        notify: Notify,
    ) -> std::io::Result<Pinger> {
        let fd = open_socket(Duration::from_millis(50))?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::Builder::new()
            .name("duet-ping".into())
            .spawn(move || run(fd, targets, period, lost_after, notify, st))?;
        Ok(Pinger {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raw ICMP socket whose reads wait at most `recv_timeout`.
pub fn open_socket(recv_timeout: Duration) -> std::io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        Some(rustix::net::ipproto::ICMP),
    )?;
    set_recv_timeout(&fd, recv_timeout);
    Ok(fd)
}

/// Bounds the next reads of `fd` (at least 1 ms: zero would mean forever).
pub fn set_recv_timeout(fd: &OwnedFd, timeout: Duration) {
    let timeout = timeout.max(Duration::from_millis(1));
    let _ = rustix::net::sockopt::set_socket_timeout(fd, Timeout::Recv, Some(timeout));
}

fn run(
    fd: OwnedFd,
    targets: Vec<Ipv4Addr>,
    period: Duration,
    lost_after: Duration,
    notify: Notify,
    stop: Arc<AtomicBool>,
) {
    let id = (std::process::id() & 0xffff) as u16;
    let start = Instant::now();
    let mut last_reply: Option<Instant> = None;
    let mut seq: u16 = 0;
    let mut next_send = start;
    let mut buf = [0u8; 1500];
    // None until the first `lost_after` has passed or a target answered.
    let mut reachable: Option<bool> = None;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_send {
            next_send = now + period;
            seq = seq.wrapping_add(1);
            for t in &targets {
                send_echo(&fd, *t, id, seq);
            }
        }
        if let Ok((n, _)) = rustix::net::recv(&fd, &mut buf, RecvFlags::empty()) {
            if n > 0 && is_reply_from(&buf[..n], &targets, id) {
                last_reply = Some(Instant::now());
            }
        }
        let now = Instant::now();
        let verdict = match last_reply {
            Some(t) if now.duration_since(t) < lost_after => Some(true),
            _ if now.duration_since(start) < lost_after => None,
            _ => Some(false),
        };
        if let Some(ok) = verdict.filter(|v| reachable != Some(*v)) {
            reachable = Some(ok);
            let what = if ok { "reachable" } else { "unreachable" };
            log::info!("ping nodes {targets:?} {what}");
            notify.send(Input::Ping(ok));
        }
    }
}

pub fn send_echo(fd: &OwnedFd, to: Ipv4Addr, id: u16, seq: u16) {
    let payload = *b"duet-ping";
    let h = Icmpv4Header::with_checksum(
        Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq }),
        &payload,
    );
    let mut pkt = Vec::with_capacity(32);
    pkt.extend_from_slice(&h.to_bytes());
    pkt.extend_from_slice(&payload);
    let sa = SocketAddrV4::new(to, 0);
    if let Err(e) = rustix::net::sendto(fd, &pkt, SendFlags::DONTWAIT, &sa) {
        log::debug!("ping {to}: {}", std::io::Error::from(e));
    }
}

/// A raw ICMP socket sees every ICMP packet: keep echo replies with our id
/// from one of the targets.
pub fn is_reply_from(ip_packet: &[u8], targets: &[Ipv4Addr], id: u16) -> bool {
    let Ok(ip) = Ipv4Slice::from_slice(ip_packet) else {
        return false;
    };
    let src = ip.header().source_addr();
    if !targets.contains(&src) {
        return false;
    }
    let Ok(icmp) = Icmpv4Slice::from_slice(ip.payload().payload) else {
        return false;
    };
    matches!(icmp.icmp_type(), Icmpv4Type::EchoReply(e) if e.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn reply(src: [u8; 4], id: u16) -> Vec<u8> {
        let b = PacketBuilder::ipv4(src, [198, 18, 0, 1], 64)
            .icmpv4(Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq: 1 }));
        let mut out = Vec::new();
        b.write(&mut out, b"duet-ping").unwrap();
        out
    }

    #[test]
    fn keeps_only_our_replies_from_targets() {
        let t = [Ipv4Addr::new(198, 18, 0, 254)];
        assert!(is_reply_from(&reply([198, 18, 0, 254], 7), &t, 7));
        assert!(!is_reply_from(&reply([198, 18, 0, 254], 8), &t, 7));
        assert!(!is_reply_from(&reply([198, 18, 0, 9], 7), &t, 7));
        assert!(!is_reply_from(&[0x45, 0, 0], &t, 7));
        assert!(!is_reply_from(&[], &t, 7));
    }
}
