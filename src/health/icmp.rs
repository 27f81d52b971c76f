//! ICMP echo on a raw socket: what the ping-node prober and `kind =
//! "ping"` checks share.
use etherparse::{IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, Ipv4Slice};
use rustix::net::sockopt::Timeout;
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::time::Duration;

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
