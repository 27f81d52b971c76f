//! A short per-service history of connection rates for the status page:
//! one sample per step over a fixed window, driven by an explicit clock so
//! the logic is unit-tested without waiting.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// One point of a service's history.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(default)]
pub struct Sample {
    /// Unix ms at which the sample was taken.
    pub ts_ms: u64,
    /// New connections per second since the previous sample.
    pub new_per_s: f64,
    /// Active connections at `ts_ms`.
    pub active: u64,
}

/// Ring buffers of samples by service ("tcp/80").
pub struct History {
    step_ms: u64,
    len: usize,
    last_ms: Option<u64>,
    /// Cumulative connection totals at the previous sample, to derive rates.
    last_total: BTreeMap<String, u64>,
    series: BTreeMap<String, VecDeque<Sample>>,
}

impl History {
    /// Keeps `window_ms / step_ms` samples per service.
    pub fn new(step_ms: u64, window_ms: u64) -> History {
        let step_ms = step_ms.max(1);
        History {
            step_ms,
            len: (window_ms / step_ms).max(1) as usize,
            last_ms: None,
            last_total: BTreeMap::new(),
            series: BTreeMap::new(),
        }
    }

    /// True when a sample is due at `now_ms`: the caller gathers the totals
    /// only then.
    pub fn due(&self, now_ms: u64) -> bool {
        self.last_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.step_ms)
    }

    /// Records one sample per service from (service, total connections ever,
    /// active connections). A service that disappears is forgotten; a total
    /// that went down (counters reset) counts as no new connections.
    pub fn record(&mut self, now_ms: u64, services: &BTreeMap<String, (u64, u64)>) {
        let dt_ms = self.last_ms.map(|t| now_ms.saturating_sub(t));
        self.series.retain(|k, _| services.contains_key(k));
        self.last_total.retain(|k, _| services.contains_key(k));
        for (name, &(total, active)) in services {
            let new_per_s = match (dt_ms, self.last_total.get(name)) {
                (Some(dt), Some(&prev)) if dt > 0 => {
                    total.saturating_sub(prev) as f64 * 1000.0 / dt as f64
                }
                _ => 0.0,
            };
            self.last_total.insert(name.clone(), total);
            let ring = self.series.entry(name.clone()).or_default();
            if ring.len() == self.len {
                ring.pop_front();
            }
            ring.push_back(Sample {
                ts_ms: now_ms,
                new_per_s,
                active,
            });
        }
        self.last_ms = Some(now_ms);
    }

    /// Oldest first, by service.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<Sample>> {
        self.series
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(total: u64, active: u64) -> BTreeMap<String, (u64, u64)> {
        BTreeMap::from([("tcp/80".to_string(), (total, active))])
    }

    #[test]
    fn rates_come_from_totals_over_elapsed_time() {
        let mut h = History::new(5_000, 600_000);
        assert!(h.due(1_000));
        h.record(1_000, &svc(100, 3));
        assert!(!h.due(5_999));
        assert!(h.due(6_000));
        h.record(6_000, &svc(150, 7));
        let s = &h.snapshot()["tcp/80"];
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].new_per_s, s[0].active), (0.0, 3));
        assert_eq!((s[1].ts_ms, s[1].new_per_s, s[1].active), (6_000, 10.0, 7));
    }

    #[test]
    fn window_keeps_only_the_newest_samples() {
        let mut h = History::new(5_000, 20_000);
        for i in 0..10u64 {
            h.record(i * 5_000, &svc(i * 5, 0));
        }
        let s = &h.snapshot()["tcp/80"];
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].ts_ms, 30_000);
        assert!(s.iter().all(|x| x.new_per_s == 1.0));
    }

    #[test]
    fn counter_reset_and_clock_step_back_do_not_go_negative_or_divide_by_zero() {
        let mut h = History::new(5_000, 600_000);
        h.record(10_000, &svc(100, 0));
        h.record(15_000, &svc(10, 0));
        h.record(15_000, &svc(20, 0));
        h.record(12_000, &svc(30, 0));
        let s = &h.snapshot()["tcp/80"];
        assert!(s.iter().all(|x| x.new_per_s == 0.0), "{s:?}");
    }

    #[test]
    fn removed_services_are_forgotten() {
        let mut h = History::new(1_000, 10_000);
        h.record(0, &svc(1, 1));
        h.record(1_000, &BTreeMap::from([("udp/53".to_string(), (5, 0))]));
        let snap = h.snapshot();
        assert_eq!(snap.keys().collect::<Vec<_>>(), ["udp/53"]);
        assert_eq!(snap["udp/53"][0].new_per_s, 0.0);
    }
}
