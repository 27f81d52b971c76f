//! Flood accounting for the bounded parts of the connection table: when a
//! part is under pressure, how many distinct sources fill it (estimated),
//! and the operator events for the start and end of an episode. Plus the
//! token bucket that bounds how many pings the director answers. Sans-IO:
//! every input carries `now`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Pressure starts when a part is this full (numerator over 4)...
const HIGH_QUARTERS: usize = 3;
/// ... and ends once it has stayed at most this full for [`CALM_HOLD`].
const LOW_QUARTERS: usize = 1;
/// How long occupancy must stay low before an episode ends: a flood that
/// pauses for a few seconds is still one episode (one pair of events).
pub const CALM_HOLD: Duration = Duration::from_secs(10);
/// A new episode starting sooner than this after the last one ended is
/// not announced again (nor its end): a flapping attack cannot flood the
/// event log.
pub const EVENT_GAP: Duration = Duration::from_secs(60);
/// Outside an episode the source estimate covers at most this much history.
const SOURCES_WINDOW: Duration = Duration::from_secs(60);

const HLL_BITS: u32 = 10;
const HLL_REGS: usize = 1 << HLL_BITS;
const HLL_SEED: u64 = 0x7372_6373_6565_6e21;

/// A HyperLogLog distinct counter over IPv4 source addresses: 1 KiB,
/// one hash and one compare per address, about 3 % standard error.
pub(crate) struct Sources {
    regs: Box<[u8; HLL_REGS]>,
}

impl Sources {
    pub(crate) fn new() -> Self {
        Sources {
            regs: Box::new([0; HLL_REGS]),
        }
    }

    pub(crate) fn add(&mut self, src: Ipv4Addr) {
        let h = xxh3_64_with_seed(&src.octets(), HLL_SEED);
        let reg = (h >> (64 - HLL_BITS)) as usize;
        // Rank of the first set bit in the remaining 54 bits (1-based);
        // the sentinel bit bounds it.
        let rest = (h << HLL_BITS) | (1 << (HLL_BITS - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if rank > self.regs[reg] {
            self.regs[reg] = rank;
        }
    }

    pub(crate) fn estimate(&self) -> u64 {
        let m = HLL_REGS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let mut sum = 0.0;
        let mut zeros = 0usize;
        for &r in self.regs.iter() {
            sum += 2f64.powi(-i32::from(r));
            zeros += usize::from(r == 0);
        }
        let raw = alpha * m * m / sum;
        let e = if raw <= 2.5 * m && zeros > 0 {
            // Linear counting is exact-ish for small sets.
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        e.round() as u64
    }

    pub(crate) fn clear(&mut self) {
        self.regs.fill(0);
    }
}

/// What an episode of pressure reports when it starts or ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodEvent {
    /// True when pressure started, false when it ended.
    pub started: bool,
    /// For the operator: "SYN flood suspected: …".
    pub message: String,
}

struct Episode {
    since: Instant,
    /// `new_flows` and `evicted` of the part when the episode started.
    new_at_start: u64,
    evicted_at_start: u64,
    peak: usize,
    announced: bool,
}

/// Pressure state of one evictable part of the table (half-open TCP or
/// UDP). The engine feeds it every new entry's source and, a few times a
/// second, the part's occupancy.
pub(crate) struct Guard {
    /// "SYN" or "UDP", for messages.
    what: &'static str,
    /// "half-open flows" or "UDP flows".
    flows: &'static str,
    limit: usize,
    /// Entries created in this part, ever.
    pub(crate) new_flows: u64,
    sources: Sources,
    sources_since: Option<Instant>,
    episode: Option<Episode>,
    calm_since: Option<Instant>,
    last_end: Option<Instant>,
}

impl Guard {
    pub(crate) fn new(what: &'static str, flows: &'static str, limit: usize) -> Self {
        Guard {
            what,
            flows,
            limit,
            new_flows: 0,
            sources: Sources::new(),
            sources_since: None,
            episode: None,
            calm_since: None,
            last_end: None,
        }
    }

    pub(crate) fn under_pressure(&self) -> bool {
        self.episode.is_some()
    }

    /// A new entry from `src` (hot path: one hash, no branch on time).
    pub(crate) fn on_new(&mut self, src: Ipv4Addr) {
        self.new_flows += 1;
        self.sources.add(src);
    }

    /// Periodic check with the part's `occupancy` and its eviction count so
    /// far. Returns the event to announce, if any.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        occupancy: usize,
        evicted: u64,
    ) -> Option<FloodEvent> {
        let high = (self.limit * HIGH_QUARTERS / 4).max(1);
        let low = self.limit * LOW_QUARTERS / 4;
        match &mut self.episode {
            None => {
                if occupancy < high {
                    if self
                        .sources_since
                        .is_none_or(|t| now.saturating_duration_since(t) >= SOURCES_WINDOW)
                    {
                        self.sources.clear();
                        self.sources_since = Some(now);
                    }
                    return None;
                }
                let announced = self
                    .last_end
                    .is_none_or(|t| now.saturating_duration_since(t) >= EVENT_GAP);
                self.episode = Some(Episode {
                    since: now,
                    new_at_start: self.new_flows,
                    evicted_at_start: evicted,
                    peak: occupancy,
                    announced,
                });
                self.calm_since = None;
                announced.then(|| FloodEvent {
                    started: true,
                    message: format!(
                        "{} flood suspected: {} {} from ~{} sources (limit {}: oldest evicted first, short timeouts)",
                        self.what,
                        occupancy,
                        self.flows,
                        self.sources.estimate(),
                        self.limit
                    ),
                })
            }
            Some(ep) => {
                ep.peak = ep.peak.max(occupancy);
                if occupancy > low {
                    self.calm_since = None;
                    return None;
                }
                let calm = *self.calm_since.get_or_insert(now);
                if now.saturating_duration_since(calm) < CALM_HOLD {
                    return None;
                }
                let ep = self.episode.take()?;
                self.last_end = Some(now);
                self.calm_since = None;
                let new = self.new_flows - ep.new_at_start;
                let sources = self.sources.estimate().min(new);
                self.sources.clear();
                self.sources_since = Some(now);
                ep.announced.then(|| FloodEvent {
                    started: false,
                    message: format!(
                        "{} flood over after {}s: {} new {} from ~{} sources, {} evicted, peak {}/{}",
                        self.what,
                        calm.saturating_duration_since(ep.since).as_secs(),
                        new,
                        self.flows,
                        sources,
                        evicted - ep.evicted_at_start,
                        ep.peak,
                        self.limit
                    ),
                })
            }
        }
    }
}

/// A token bucket: `rate` per second, at most `burst` at once.
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        TokenBucket {
            rate,
            burst,
            tokens: f64::from(burst),
            last: None,
        }
    }

    /// Takes a token if one is left.
    pub fn allow(&mut self, now: Instant) -> bool {
        if let Some(t) = self.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            self.tokens = (self.tokens + dt * f64::from(self.rate)).min(f64::from(self.burst));
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_estimate_is_close() {
        for n in [0u32, 10, 1000, 50_000, 300_000] {
            let mut s = Sources::new();
            for i in 0..n {
                // Each address twice: duplicates must not count.
                s.add(Ipv4Addr::from(0x0a00_0000 + i * 7));
                s.add(Ipv4Addr::from(0x0a00_0000 + i * 7));
            }
            let e = s.estimate() as f64;
            let want = f64::from(n);
            assert!(
                (e - want).abs() <= want * 0.1 + 1.0,
                "{n} sources estimated as {e}"
            );
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn episode_starts_high_ends_after_calm_hold() {
        let mut g = Guard::new("SYN", "half-open flows", 1000);
        let t0 = Instant::now();
        assert_eq!(g.observe(t0, 700, 0), None);
        for i in 0..5000u32 {
            g.on_new(Ipv4Addr::from(i));
        }
        let start = g.observe(t0 + ms(100), 1000, 4000).expect("start");
        assert!(start.started);
        for i in 0..5000u32 {
            g.on_new(Ipv4Addr::from(i + 2500));
        }
        assert!(
            start
                .message
                .starts_with("SYN flood suspected: 1000 half-open flows from ~"),
            "{}",
            start.message
        );
        assert!(g.under_pressure());
        // Dips below the high mark but not to the low one: still one episode.
        assert_eq!(g.observe(t0 + secs(2), 600, 4500), None);
        // Calm, but not for long enough; then busy again; then calm for good.
        assert_eq!(g.observe(t0 + secs(3), 100, 4500), None);
        assert_eq!(g.observe(t0 + secs(8), 900, 4600), None);
        assert_eq!(g.observe(t0 + secs(9), 0, 4600), None);
        assert_eq!(g.observe(t0 + secs(18), 0, 4600), None);
        let end = g.observe(t0 + secs(19), 0, 4600).expect("end");
        assert!(!end.started);
        assert!(
            end.message.starts_with(
                "SYN flood over after 8s: 5000 new half-open flows from ~5000 sources"
            ),
            "{}",
            end.message
        );
        assert!(end.message.ends_with("600 evicted, peak 1000/1000"));
        assert!(!g.under_pressure());
        // A flapping flood: the next episode is not announced within a minute.
        assert_eq!(g.observe(t0 + secs(30), 1000, 5000), None);
        assert!(g.under_pressure(), "short timeouts apply all the same");
        assert_eq!(g.observe(t0 + secs(31), 0, 5000), None);
        assert_eq!(g.observe(t0 + secs(41), 0, 5000), None);
        assert!(!g.under_pressure());
        let again = g
            .observe(t0 + secs(200), 800, 5000)
            .expect("announced again");
        assert!(again.started);
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn token_bucket_bounds_rate_and_burst() {
        let mut b = TokenBucket::new(100, 10);
        let t0 = Instant::now();
        let first: usize = (0..50).filter(|_| b.allow(t0)).count();
        assert_eq!(first, 10, "burst");
        // One second later: 100 more at most (capped by the burst of 10
        // if taken at once).
        assert_eq!((0..50).filter(|_| b.allow(t0 + secs(1))).count(), 10);
        // Spread over a second: about the rate.
        let spread = (0..1000).filter(|i| b.allow(t0 + secs(1) + ms(*i))).count();
        assert!((95..=112).contains(&spread), "{spread}");
    }
}
