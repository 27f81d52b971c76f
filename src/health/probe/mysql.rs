//! `kind = "mysql"`: connect-level only. The server speaks first with its
//! handshake packet (protocol 10); an error packet instead (too many
//! connections, host blocked) is down. No login is attempted.
use std::net::SocketAddr;
use std::time::Instant;

use super::{connect, read_until};
use crate::health::Failure;

/// Packet header: 3-byte little-endian length, 1-byte sequence number.
const HEADER: usize = 4;

pub(super) fn handshake(target: SocketAddr, deadline: Instant) -> Result<(), Failure> {
    let mut stream = connect(target, deadline)?;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, 1 << 16, deadline, |b| {
        judge(b).is_some()
    })?;
    judge(&buf).unwrap_or_else(|| {
        Err(Failure::BadResponse(
            "connection closed before the handshake packet".into(),
        ))
    })
}

/// The verdict on the bytes so far; `None` while the packet is incomplete.
fn judge(buf: &[u8]) -> Option<Result<(), Failure>> {
    if buf.len() < HEADER + 1 {
        return None;
    }
    let len = usize::from(buf[0]) | usize::from(buf[1]) << 8 | usize::from(buf[2]) << 16;
    match buf[HEADER] {
        10 => Some(Ok(())),
        0xff => {
            let end = (HEADER + len).min(buf.len());
            if end < HEADER + len {
                return None;
            }
            // 0xff, 2-byte error code, then the message.
            let msg = buf.get(HEADER + 3..end).unwrap_or_default();
            Some(Err(Failure::BadResponse(format!(
                "mysql error: {}",
                String::from_utf8_lossy(msg)
            ))))
        }
        v => Some(Err(Failure::BadResponse(format!(
            "not a mysql handshake (protocol byte {v})"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{greeter, T};
    use super::*;

    #[test]
    fn handshake_is_up_error_packet_and_garbage_are_down() {
        let ok = greeter(1, b"\x0a\x00\x00\x00\x0a8.0.36\x00rest", None);
        assert_eq!(handshake(ok, Instant::now() + T), Ok(()));
        let err = greeter(1, b"\x17\x00\x00\x00\xff\x10\x04Too many connections", None);
        assert_eq!(
            handshake(err, Instant::now() + T),
            Err(Failure::BadResponse(
                "mysql error: Too many connections".into()
            ))
        );
        let ssh = greeter(1, b"SSH-2.0-OpenSSH\r\n", None);
        assert!(matches!(
            handshake(ssh, Instant::now() + T),
            Err(Failure::BadResponse(_))
        ));
        assert_eq!(judge(b"\x0a\x00"), None);
    }
}
