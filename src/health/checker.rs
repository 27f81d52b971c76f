//! Rise/fall hysteresis for one backend, sans-IO.
//!
//! The checker never probes and never reads the clock: the driver hands it
//! each probe result with the time it completed, and gets back a
//! [`Transition`] when the backend's verdict changes.
use std::time::{Duration, Instant};

use super::Failure;

/// A change of verdict on a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub up: bool,
    /// Why, for the log and the event history
    /// (e.g. "2 consecutive failures, last: connection refused").
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Never established; served as up (see the module docs of `health`).
    Unknown,
    Up,
    Down,
}

/// Counts consecutive successes and failures and flips the verdict after
/// `rise` successes or `fall` failures in a row.
#[derive(Debug, Clone)]
pub struct Checker {
    rise: u32,
    fall: u32,
    verdict: Verdict,
    /// Consecutive results that disagree with the current verdict (for
    /// `Unknown`: successes when positive, failures when negative).
    successes: u32,
    failures: u32,
    since: Option<Instant>,
}

impl Checker {
    /// `rise` and `fall` of 0 are treated as 1: a single result decides.
    /// `initial_up` is the state restored from the store, if any.
    pub fn new(rise: u32, fall: u32, initial_up: Option<bool>) -> Self {
        let verdict = match initial_up {
            Some(true) => Verdict::Up,
            Some(false) => Verdict::Down,
            None => Verdict::Unknown,
        };
        Checker {
            rise: rise.max(1),
            fall: fall.max(1),
            verdict,
            successes: 0,
            failures: 0,
            since: None,
        }
    }

    /// Feeds one probe result completed at `now`. Returns the transition
    /// when the verdict changes (or is first established from unknown).
    pub fn on_result(&mut self, now: Instant, r: &Result<Duration, Failure>) -> Option<Transition> {
        match r {
            Ok(latency) => {
                self.failures = 0;
                if self.verdict == Verdict::Up {
                    return None;
                }
                self.successes = self.successes.saturating_add(1);
                if self.successes < self.rise {
                    return None;
                }
                let reason = format!(
                    "{} consecutive success{}, latency {:.1} ms",
                    self.successes,
                    if self.successes == 1 { "" } else { "es" },
                    latency.as_secs_f64() * 1000.0
                );
                Some(self.flip(now, Verdict::Up, reason))
            }
            Err(failure) => {
                self.successes = 0;
                if self.verdict == Verdict::Down {
                    return None;
                }
                self.failures = self.failures.saturating_add(1);
                if self.failures < self.fall {
                    return None;
                }
                let reason = format!(
                    "{} consecutive failure{}, last: {failure}",
                    self.failures,
                    if self.failures == 1 { "" } else { "s" }
                );
                Some(self.flip(now, Verdict::Down, reason))
            }
        }
    }

    fn flip(&mut self, now: Instant, to: Verdict, reason: String) -> Transition {
        self.verdict = to;
        self.successes = 0;
        self.failures = 0;
        self.since = Some(now);
        Transition {
            up: to == Verdict::Up,
            reason,
        }
    }

    /// Whether traffic should go to this backend. Unknown counts as up.
    pub fn is_up(&self) -> bool {
        self.verdict != Verdict::Down
    }

    /// False until the first transition when no state was restored.
    pub fn is_known(&self) -> bool {
        self.verdict != Verdict::Unknown
    }

    /// When the last transition happened, if any was seen by this checker.
    pub fn since(&self) -> Option<Instant> {
        self.since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Result<Duration, Failure> {
        Ok(Duration::from_millis(3))
    }
    fn bad() -> Result<Duration, Failure> {
        Err(Failure::Refused)
    }

    /// Feeds `results` one second apart, returning the transitions with the
    /// index of the result that caused each.
    fn run(c: &mut Checker, results: &[Result<Duration, Failure>]) -> Vec<(usize, bool)> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for (i, r) in results.iter().enumerate() {
            if let Some(t) = c.on_result(t0 + Duration::from_secs(i as u64), r) {
                assert_eq!(t.up, c.is_up());
                out.push((i, t.up));
            }
        }
        out
    }

    #[test]
    fn up_goes_down_after_fall_failures() {
        let mut c = Checker::new(2, 3, Some(true));
        assert_eq!(run(&mut c, &[bad(), bad()]), vec![]);
        assert!(c.is_up());
        let t = c.on_result(Instant::now(), &bad()).unwrap();
        assert!(!t.up);
        assert_eq!(t.reason, "3 consecutive failures, last: connection refused");
        assert!(!c.is_up());
    }

    #[test]
    fn down_comes_up_after_rise_successes() {
        let mut c = Checker::new(2, 3, Some(false));
        assert!(!c.is_up());
        assert_eq!(run(&mut c, &[ok(), bad(), ok(), ok()]), vec![(3, true)]);
        assert!(c.is_up());
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let mut c = Checker::new(1, 2, Some(true));
        assert_eq!(run(&mut c, &[bad(), ok(), bad(), ok(), bad()]), vec![]);
        assert!(c.is_up());
    }

    #[test]
    fn flapping_input_does_not_flap_the_verdict() {
        let mut c = Checker::new(2, 2, Some(true));
        let flapping: Vec<_> = (0..100)
            .map(|i| if i % 2 == 0 { bad() } else { ok() })
            .collect();
        assert_eq!(run(&mut c, &flapping), vec![]);
        assert!(c.is_up());

        let mut c = Checker::new(2, 2, Some(false));
        assert_eq!(run(&mut c, &flapping), vec![]);
        assert!(!c.is_up());
    }

    #[test]
    fn seeded_random_input_transitions_only_on_full_runs() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (rise, fall) = (3, 2);
        let mut c = Checker::new(rise, fall, Some(true));
        let t0 = Instant::now();
        let (mut run_ok, mut run_bad) = (0u32, 0u32);
        let mut transitions = 0;
        for i in 0..10_000u64 {
            let up_before = c.is_up();
            let r = if rng.u8(..10) < 6 { ok() } else { bad() };
            if r.is_ok() {
                run_ok += 1;
                run_bad = 0;
            } else {
                run_bad += 1;
                run_ok = 0;
            }
            match c.on_result(t0 + Duration::from_millis(i), &r) {
                Some(t) => {
                    transitions += 1;
                    assert_ne!(t.up, up_before);
                    if t.up {
                        assert_eq!(run_ok, rise);
                        run_ok = 0;
                    } else {
                        assert_eq!(run_bad, fall);
                        run_bad = 0;
                    }
                }
                None => assert_eq!(c.is_up(), up_before),
            }
        }
        assert!(transitions > 10, "the input should have caused transitions");
    }

    #[test]
    fn unknown_is_served_as_up_and_resolves_either_way() {
        let mut c = Checker::new(2, 3, None);
        assert!(c.is_up());
        assert!(!c.is_known());
        assert_eq!(run(&mut c, &[ok(), ok()]), vec![(1, true)]);
        assert!(c.is_known() && c.is_up());

        let mut c = Checker::new(2, 3, None);
        assert_eq!(run(&mut c, &[bad(), bad()]), vec![]);
        assert!(c.is_up(), "unknown stays served until fall failures");
        assert_eq!(run(&mut c, &[bad()]), vec![(0, false)]);
        assert!(c.is_known() && !c.is_up());
    }

    #[test]
    fn restored_state_needs_no_confirmation() {
        let mut c = Checker::new(2, 2, Some(true));
        assert!(c.is_known());
        assert_eq!(run(&mut c, &[ok(), ok(), ok()]), vec![]);
        let mut c = Checker::new(2, 2, Some(false));
        assert_eq!(run(&mut c, &[bad(), bad(), bad()]), vec![]);
    }

    #[test]
    fn zero_rise_and_fall_act_as_one() {
        let mut c = Checker::new(0, 0, Some(true));
        assert_eq!(
            run(&mut c, &[bad(), ok(), bad()]),
            vec![(0, false), (1, true), (2, false)]
        );
    }

    #[test]
    fn records_when_the_last_transition_happened() {
        let t0 = Instant::now();
        let mut c = Checker::new(1, 1, Some(true));
        assert_eq!(c.since(), None);
        c.on_result(t0 + Duration::from_secs(5), &bad());
        assert_eq!(c.since(), Some(t0 + Duration::from_secs(5)));
    }
}
