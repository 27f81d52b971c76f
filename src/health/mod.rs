//! Backend health checks with ldirectord parity.
//!
//! Three layers, kept apart so the decisions are testable without sockets:
//!
//! - [`checker`]: the sans-IO rise/fall hysteresis. It is fed probe results
//!   with an explicit `now` and says when a backend changes state.
//! - [`probe`]: one blocking check (`tcp`, `http`, `https`, `dns`, `ping`,
//!   `banner`, `mysql`, `pgsql`, `udp`, `exec`, `none`), one file per kind,
//!   with its timeout enforced, returning the latency or a [`Failure`].
//! - [`monitor`]: one thread per backend that probes every `interval`, feeds
//!   the checker, keeps a snapshot for the status page and reports
//!   transitions through a callback. Checks of different backends never wait
//!   on each other; `stop` wakes every thread at once.
//!
//! # Initial state
//!
//! A backend whose state was restored from the store starts in that state
//! (`initial_up = Some(..)`) and needs `rise` successes or `fall` failures to
//! change, as usual. A backend never seen before starts *unknown*, and
//! unknown is served as **up**: a restarted or freshly promoted director must
//! not blackhole a healthy pool while its first checks run. (ldirectord
//! instead adds a server only on its first successful check, which leaves a
//! new director empty for a whole check interval.) Unknown becomes known
//! after `fall` consecutive failures (down) or `rise` consecutive successes
//! (up); both are reported as transitions, so the event log records the
//! first verdict on every backend.
//!
//! # HTTP checks
//!
//! Written by hand over `std::net::TcpStream`: `GET <request> HTTP/1.0` with
//! a `Host` header (configured, else the backend address) and
//! `Connection: close`. HTTP/1.0 keeps servers from answering with chunked
//! encoding, so `receive` is matched against the plain body. The status must
//! equal `expect_status` when one is configured, else be 2xx or 3xx.
pub mod checker;
pub mod icmp;
pub mod monitor;
pub mod probe;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

pub use checker::{Checker, Transition};
pub use monitor::{HealthState, Monitor, Target};
pub use probe::probe;

/// What a check does against one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET request`; up when the status is acceptable and the body contains
    /// `receive` (if set).
    Http {
        request: String,
        receive: Option<String>,
        host: Option<String>,
        expect_status: Option<u16>,
    },
    /// The `Http` check over TLS; certificates are checked only if `verify`.
    Https {
        request: String,
        receive: Option<String>,
        host: Option<String>,
        expect_status: Option<u16>,
        verify: bool,
    },
    /// One DNS query; up on the expected rcode (and address).
    Dns(DnsQuery),
    /// ICMP echo; up when one of `count` echoes is answered.
    Ping { count: u32 },
    /// The first line must start with `greeting`; then `request` is sent and
    /// its answer must contain `receive` (when set).
    Banner {
        greeting: String,
        request: Option<String>,
        receive: Option<String>,
    },
    /// The server's handshake packet (connect-level, no login).
    Mysql,
    /// SSLRequest answered `S` or `N` (connect-level, no login).
    Pgsql,
    /// `request` in one datagram; an answer (containing `receive`) is up.
    Udp {
        request: Vec<u8>,
        receive: Option<Vec<u8>>,
    },
    /// Up when a TCP connection to the check port is accepted.
    Tcp,
    /// `/bin/sh -c command` with `DUET_BACKEND_ADDR`, `DUET_BACKEND_PORT` and
    /// `DUET_BACKEND_NAME` in its environment; exit status 0 means up.
    Exec { command: String },
    /// Always up: the backend is trusted (ldirectord's `checktype=on`).
    None,
}

/// What a `dns` check asks and expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuery {
    pub name: String,
    /// Record type number (1 = A, 28 = AAAA...).
    pub qtype: u16,
    /// TCP instead of UDP.
    pub tcp: bool,
    /// Expected response code (0 = NOERROR, 3 = NXDOMAIN...).
    pub rcode: u16,
    /// An A or AAAA record the answer must hold.
    pub expect_address: Option<IpAddr>,
}

/// A check with its schedule and hysteresis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// Port the probe connects to (normally the service port).
    pub port: u16,
    /// Address the probe goes to instead of the backend's (`check.address`).
    pub address: Option<Ipv4Addr>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes needed to bring a backend up.
    pub rise: u32,
    /// Consecutive failures needed to take a backend down.
    pub fall: u32,
}

/// Why one probe failed. `Display` is a short reason for logs and the status
/// page.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No connection, response or exit within the check timeout.
    Timeout,
    /// The backend actively refused the connection (nothing listening).
    Refused,
    /// HTTP status other than the expected one.
    WrongStatus(u16),
    /// HTTP body does not contain the `receive` string.
    BodyMismatch,
    /// The backend answered something that is not HTTP.
    BadResponse(String),
    /// The exec check exited non-zero (128 + signal when killed by a signal).
    Exit(i32),
    /// Any other I/O error (unreachable network, reset, spawn failure).
    Io(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout => f.write_str("timeout"),
            Failure::Refused => f.write_str("connection refused"),
            Failure::WrongStatus(s) => write!(f, "HTTP status {s}"),
            Failure::BodyMismatch => f.write_str("receive string not found"),
            Failure::BadResponse(why) => write!(f, "bad response: {why}"),
            Failure::Exit(code) => write!(f, "exit status {code}"),
            Failure::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons the status page and the event log show.
    #[test]
    fn failure_reasons() {
        let cases = [
            (Failure::Timeout, "timeout"),
            (Failure::Refused, "connection refused"),
            (Failure::WrongStatus(503), "HTTP status 503"),
            (Failure::BodyMismatch, "receive string not found"),
            (
                Failure::BadResponse("no status line".into()),
                "bad response: no status line",
            ),
            (Failure::Exit(0), "exit status 0"),
            (Failure::Exit(137), "exit status 137"),
            (
                Failure::Io("network unreachable".into()),
                "I/O error: network unreachable",
            ),
        ];
        for (failure, text) in cases {
            assert_eq!(failure.to_string(), text, "{failure:?}");
        }
    }
}
