//! At most one warning a second from one source of bad input (forged
//! heartbeats, rejected admin requests, failed accepts), so a flood of it
//! cannot flood the log: the rest go to debug and are counted in the next
//! warning.
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_secs(1);

pub struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new()
    }
}

impl LogLimiter {
    /// Usable in a `static`.
    pub const fn new() -> LogLimiter {
        LogLimiter {
            last: None,
            suppressed: 0,
        }
    }

    /// Whether a warning at `now` goes out: `Some(n)` with the number held
    /// back since the last one, or `None` (and it is counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < PERIOD) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    pub fn warn(&mut self, msg: &str) {
        match self.admit(Instant::now()) {
            None => log::debug!("{msg}"),
            Some(0) => log::warn!("{msg}"),
            Some(n) => log::warn!("{msg} ({n} similar suppressed)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_a_second_with_the_count_held_back() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = LogLimiter::new();
        // (time, what admit says)
        let cases = [
            (0, Some(0)),
            (10, None),
            (999, None),
            (1000, Some(2)),
            (1500, None),
            (3000, Some(1)),
            (4000, Some(0)),
        ];
        for (at, want) in cases {
            assert_eq!(l.admit(ms(at)), want, "at {at} ms");
        }
    }
}
