//! Idle keep-alive connections to backends, per service and backend:
//! newest first (the one least likely to have been closed by the
//! backend's own idle timer), at most `max` each, none past its expiry.
//! Sans-IO over any connection type: the caller checks that a taken
//! connection is still open.
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A connection, when it went idle, and when it expires.
type Idle<C> = (C, Instant, Instant);

pub struct IdlePool<K, C> {
    idle: HashMap<K, Vec<Idle<C>>>,
}

impl<K, C> Default for IdlePool<K, C> {
    fn default() -> Self {
        IdlePool {
            idle: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq, C> IdlePool<K, C> {
    /// Keeps `conn`, idle since `now`, for `keep`; the oldest of `key`'s
    /// goes past `max`.
    pub fn put(&mut self, key: K, conn: C, now: Instant, keep: Duration, max: usize) {
        let list = self.idle.entry(key).or_default();
        list.push((conn, now, now + keep));
        if list.len() > max {
            list.remove(0);
        }
    }

    /// The newest unexpired connection of `key`, with the time it went
    /// idle; expired ones are dropped.
    pub fn take(&mut self, key: &K, now: Instant) -> Option<(C, Instant)> {
        let list = self.idle.get_mut(key)?;
        list.retain(|(_, _, exp)| *exp > now);
        let got = list.pop().map(|(c, since, _)| (c, since));
        if list.is_empty() {
            self.idle.remove(key);
        }
        got
    }

    pub fn clear(&mut self) {
        self.idle.clear();
    }

    /// Closes what has expired, so a quiet service holds no sockets.
    pub fn sweep(&mut self, now: Instant) {
        self.idle.retain(|_, list| {
            list.retain(|(_, _, exp)| *exp > now);
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_bounded_and_expiring() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut p = IdlePool::default();
        for c in 1..=4 {
            p.put("a", c, t0, s * c, 3);
        }
        p.put("b", 9, t0, s, 3);
        assert_eq!(
            p.take(&"a", t0),
            Some((4, t0)),
            "with the time it went idle"
        );
        assert_eq!(p.take(&"c", t0), None);
        // At t0 + 2.5 s connection 2 has expired; 3 is left.
        assert_eq!(p.take(&"a", t0 + s * 5 / 2).map(|(c, _)| c), Some(3));
        // 1 went past the cap of 3, and 2 has expired.
        assert_eq!(p.take(&"a", t0), None);
        p.put("c", 7, t0, s * 9, 3);
        p.sweep(t0 + s * 2);
        assert_eq!(p.take(&"b", t0), None);
        p.clear();
        assert_eq!(p.take(&"c", t0), None);
    }
}
