//! Leaving the pair without breaking a connection (SIGTERM, `systemctl
//! stop`/`restart`).
//!
//! The driver has already handed the VIP over (if it directed) and sent its
//! Leaving heartbeat, which makes the peer give it weight 0 at once. From
//! then on the node is only a backend for the flows it already serves, and
//! its kernel delivers them only while the VIP stays on `lo`. This machine
//! decides when that may end: once no local connection is left, or when the
//! `stop_drain` bound passes, or at once after a second stop signal. It
//! never exits before the Leaving heartbeat has had two intervals to reach
//! the peer, so one lost datagram does not leave the peer scheduling new
//! flows to a node that is going away.
//!
//! Sans-IO: the driver passes `now` and the count of local connections it
//! read from the kernel.
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every local connection ended.
    Drained,
    /// `stop_drain` passed with connections still open.
    DrainBound { remaining: usize },
    /// A second stop signal cut the drain short.
    Forced { remaining: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Keep heartbeating as Leaving and keep the VIP on `lo`.
    Wait,
    Exit(Exit),
}

#[derive(Debug)]
pub struct Departure {
    /// Until then the Leaving heartbeat may still be on its way.
    announce_until: Instant,
    deadline: Instant,
    forced: bool,
}

impl Departure {
    pub fn new(now: Instant, interval: Duration, stop_drain: Duration) -> Departure {
        let announce_until = now + interval * 2;
        Departure {
            announce_until,
            deadline: (now + stop_drain).max(announce_until),
            forced: false,
        }
    }

    /// A second SIGTERM/SIGINT: the operator does not want to wait.
    pub fn force(&mut self) {
        self.forced = true;
    }

    pub fn poll(&self, now: Instant, local_connections: usize) -> Step {
        if now < self.announce_until {
            return Step::Wait;
        }
        let remaining = local_connections;
        if remaining == 0 {
            Step::Exit(Exit::Drained)
        } else if self.forced {
            Step::Exit(Exit::Forced { remaining })
        } else if now >= self.deadline {
            Step::Exit(Exit::DrainBound { remaining })
        } else {
            Step::Wait
        }
    }

    /// Time left until the drain bound (for the log line that opens it).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IV: Duration = Duration::from_millis(100);
    const S: Duration = Duration::from_secs(1);

    #[test]
    fn waits_for_the_leaving_heartbeat_even_when_idle() {
        let t0 = Instant::now();
        let d = Departure::new(t0, IV, Duration::ZERO);
        assert_eq!(d.poll(t0, 0), Step::Wait);
        assert_eq!(d.poll(t0 + IV, 0), Step::Wait);
        assert_eq!(d.poll(t0 + IV * 2, 0), Step::Exit(Exit::Drained));
    }

    #[test]
    fn waits_for_local_connections_until_they_end() {
        let t0 = Instant::now();
        let d = Departure::new(t0, IV, 30 * S);
        assert_eq!(d.poll(t0 + S, 5), Step::Wait);
        assert_eq!(d.poll(t0 + 10 * S, 1), Step::Wait);
        assert_eq!(d.poll(t0 + 11 * S, 0), Step::Exit(Exit::Drained));
    }

    #[test]
    fn the_drain_bound_ends_the_wait() {
        let t0 = Instant::now();
        let d = Departure::new(t0, IV, 30 * S);
        assert_eq!(d.poll(t0 + 29 * S, 3), Step::Wait);
        assert_eq!(
            d.poll(t0 + 30 * S, 3),
            Step::Exit(Exit::DrainBound { remaining: 3 })
        );
        assert_eq!(d.remaining(t0 + 10 * S), 20 * S);
    }

    #[test]
    fn zero_drain_leaves_after_the_announcement() {
        let t0 = Instant::now();
        let d = Departure::new(t0, IV, Duration::ZERO);
        assert_eq!(d.poll(t0 + IV, 4), Step::Wait);
        assert_eq!(
            d.poll(t0 + IV * 2, 4),
            Step::Exit(Exit::DrainBound { remaining: 4 })
        );
    }

    #[test]
    fn a_second_signal_ends_the_drain_at_once() {
        let t0 = Instant::now();
        let mut d = Departure::new(t0, IV, 30 * S);
        assert_eq!(d.poll(t0 + S, 2), Step::Wait);
        d.force();
        assert_eq!(d.poll(t0 + S, 2), Step::Exit(Exit::Forced { remaining: 2 }));
        // Still not before the peer could have heard the Leaving heartbeat.
        let mut d = Departure::new(t0, IV, 30 * S);
        d.force();
        assert_eq!(d.poll(t0, 2), Step::Wait);
    }
}
