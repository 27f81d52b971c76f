//! Connection state as connection sync carries it: the names and numbers
//! of IPVS's states. What each state means for forwarding (timeouts,
//! transitions) is `crate::forward`'s.

/// Connection state. TCP states follow IPVS's "input only" table, the one it
/// uses when the director sees only client → server packets (DR mode):
/// replies go straight from the backend to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// A SYN was seen (IPVS SYN_RECV).
    SynRecv,
    /// The client acknowledged: an active connection (IPVS ESTABLISHED,
    /// counted as "ActiveConn").
    Established,
    /// The client sent FIN on an established connection.
    FinWait,
    /// FIN seen before the handshake completed, or after FIN_WAIT.
    TimeWait,
    /// Reset, or a packet without any of SYN/FIN/ACK/RST.
    Close,
    /// Not a TCP state: UDP entries have a single state.
    Udp,
}

impl TcpState {
    /// A stable number for wire formats (connection sync).
    pub fn as_u8(self) -> u8 {
        match self {
            TcpState::SynRecv => 1,
            TcpState::Established => 2,
            TcpState::FinWait => 3,
            TcpState::TimeWait => 4,
            TcpState::Close => 5,
            TcpState::Udp => 6,
        }
    }

    /// Inverse of [`TcpState::as_u8`]; `None` for unknown values.
    pub fn from_u8(v: u8) -> Option<TcpState> {
        Some(match v {
            1 => TcpState::SynRecv,
            2 => TcpState::Established,
            3 => TcpState::FinWait,
            4 => TcpState::TimeWait,
            5 => TcpState::Close,
            6 => TcpState::Udp,
            _ => return None,
        })
    }

    /// A label for status pages and logs (IPVS spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::Udp => "UDP",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The numbers are on the wire between nodes of different versions:
    /// they never change.
    const ALL: [(TcpState, u8, &str); 6] = [
        (TcpState::SynRecv, 1, "SYN_RECV"),
        (TcpState::Established, 2, "ESTABLISHED"),
        (TcpState::FinWait, 3, "FIN_WAIT"),
        (TcpState::TimeWait, 4, "TIME_WAIT"),
        (TcpState::Close, 5, "CLOSE"),
        (TcpState::Udp, 6, "UDP"),
    ];

    #[test]
    fn numbers_and_names() {
        for (state, n, name) in ALL {
            assert_eq!(state.as_u8(), n, "{name}");
            assert_eq!(TcpState::from_u8(n), Some(state), "{name}");
            assert_eq!(state.as_str(), name);
        }
    }

    #[test]
    fn unknown_numbers_are_refused() {
        for v in 0..=u8::MAX {
            let known = ALL.iter().find(|(_, n, _)| *n == v).map(|(s, _, _)| *s);
            assert_eq!(TcpState::from_u8(v), known, "{v}");
        }
    }
}
