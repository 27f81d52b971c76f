//! `kind = "pgsql"`: connect-level only. Sends the SSLRequest message; a
//! PostgreSQL server answers one byte, `S` or `N`, before any login.
use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

use super::{connect, io_failure, read_until};
use crate::health::Failure;

/// Length 8, then the SSLRequest code 80877103 (1234 << 16 | 5679).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

pub(super) fn ssl_request(target: SocketAddr, deadline: Instant) -> Result<(), Failure> {
    let mut stream = connect(target, deadline)?;
    stream.write_all(&SSL_REQUEST).map_err(io_failure)?;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, 1, deadline, |b| !b.is_empty())?;
    match buf.first() {
        Some(b'S' | b'N') => Ok(()),
        Some(b) => Err(Failure::BadResponse(format!(
            "SSLRequest answered {:?}, not S or N",
            char::from(*b)
        ))),
        None => Err(Failure::BadResponse(
            "connection closed before answering SSLRequest".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{greeter, T};
    use super::*;

    #[test]
    fn s_and_n_are_up_anything_else_is_down() {
        for answer in [b"S", b"N"] {
            let addr = greeter(1, b"", Some(answer));
            assert_eq!(ssl_request(addr, Instant::now() + T), Ok(()));
        }
        let addr = greeter(1, b"", Some(b"E\x00\x00"));
        assert!(matches!(
            ssl_request(addr, Instant::now() + T),
            Err(Failure::BadResponse(_))
        ));
    }
}
