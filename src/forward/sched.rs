//! Scheduling state per service: which eligible backend gets a new flow.
//!
//! The eligible list is fixed per snapshot (sorted by address, weight > 0,
//! up, fallback only when nothing else is); picking is O(1) for rr, sh and
//! mh, and O(backends) for wrr, lc and wlc, as in IPVS. Nothing allocates
//! after construction.

use std::net::Ipv4Addr;

use super::maglev::{flow_hash, Maglev};
use super::Scheduler;
use crate::wire::frame::FlowKey;

/// What lc/wlc need to know about a candidate's load.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub active: u64,
    pub inactive: u64,
}

impl Load {
    /// IPVS's overhead: an active connection costs 256 inactive ones.
    fn overhead(self) -> u128 {
        u128::from(self.active) * 256 + u128::from(self.inactive)
    }
}

pub(crate) struct SchedState {
    pub kind: Scheduler,
    /// Eligible backends as (address, weight), sorted by address.
    pub eligible: Vec<(Ipv4Addr, u32)>,
    rr_next: usize,
    wrr: Wrr,
    maglev: Option<Maglev>,
}

impl SchedState {
    pub(crate) fn new(kind: Scheduler, mut eligible: Vec<(Ipv4Addr, u32)>) -> SchedState {
        eligible.sort_by_key(|e| e.0);
        let maglev = match kind {
            Scheduler::Sh | Scheduler::Mh => Maglev::build(&eligible),
            _ => None,
        };
        let wrr = Wrr::new(&eligible);
        SchedState {
            kind,
            eligible,
            rr_next: 0,
            wrr,
            maglev,
        }
    }

    /// Whether a new snapshot's service can keep this state (cursors and the
    /// Maglev table), i.e. the same scheduler over the same weighted set.
    pub(crate) fn same_as(&self, kind: Scheduler, eligible: &[(Ipv4Addr, u32)]) -> bool {
        if self.kind != kind || self.eligible.len() != eligible.len() {
            return false;
        }
        let mut sorted = eligible.to_vec();
        sorted.sort_by_key(|e| e.0);
        sorted == self.eligible
    }

    /// Index into `eligible` for a new flow; `load(i)` gives candidate i's
    /// current connections. `None` when nothing is eligible.
    pub(crate) fn pick(&mut self, key: &FlowKey, load: impl Fn(usize) -> Load) -> Option<usize> {
        let n = self.eligible.len();
        if n == 0 {
            return None;
        }
        match self.kind {
            Scheduler::Rr => {
                let i = self.rr_next % n;
                self.rr_next = (i + 1) % n;
                Some(i)
            }
            Scheduler::Wrr => Some(self.wrr.next(&self.eligible)),
            Scheduler::Lc => (0..n).min_by_key(|&i| load(i).overhead()),
            Scheduler::Wlc => {
                let mut best = 0;
                for i in 1..n {
                    // overhead_i / w_i < overhead_best / w_best, cross-multiplied.
                    let lhs = load(i).overhead() * u128::from(self.eligible[best].1);
                    let rhs = load(best).overhead() * u128::from(self.eligible[i].1);
                    if lhs < rhs {
                        best = i;
                    }
                }
                Some(best)
            }
            Scheduler::Sh | Scheduler::Mh => self.pick_stateless(key),
        }
    }

    /// The hash pick for sh (client address) and mh (client address and
    /// port); `None` for other schedulers or an empty set.
    pub(crate) fn pick_stateless(&self, key: &FlowKey) -> Option<usize> {
        let m = self.maglev.as_ref()?;
        let hash = match self.kind {
            Scheduler::Sh => flow_hash(key.src, None),
            Scheduler::Mh => flow_hash(key.src, Some(key.sport)),
            _ => return None,
        };
        Some(m.lookup(hash))
    }

    /// The Maglev table, for sh and mh.
    pub(crate) fn table(&self) -> Option<&Maglev> {
        self.maglev.as_ref()
    }

    /// One cycle of the picks rr or wrr makes whatever the flow (indices
    /// into `eligible`, at most `max`), for a data plane that deals them
    /// out to new flows in turn; `None` for schedulers whose pick depends on
    /// the flow or on load. This is the scheduler's own sequence, from the
    /// start of a cycle: the same rule, not a copy of it.
    pub(crate) fn deal(&self, max: usize) -> Option<Vec<usize>> {
        let n = self.eligible.len();
        if n == 0 {
            return None;
        }
        match self.kind {
            Scheduler::Rr => Some((0..n.min(max)).collect()),
            Scheduler::Wrr => {
                let mut w = Wrr::new(&self.eligible);
                let gcd = w.gcd;
                let cycle: u64 = self.eligible.iter().map(|e| u64::from(e.1 / gcd)).sum();
                let len = usize::try_from(cycle).unwrap_or(usize::MAX).min(max);
                Some((0..len).map(|_| w.next(&self.eligible)).collect())
            }
            _ => None,
        }
    }
}

/// IPVS's interleaved weighted round robin: walk the list repeatedly with a
/// falling threshold `cw`; a backend is picked when its weight reaches it.
struct Wrr {
    i: usize,
    cw: u32,
    max: u32,
    gcd: u32,
}

impl Wrr {
    fn new(eligible: &[(Ipv4Addr, u32)]) -> Wrr {
        let max = eligible.iter().map(|e| e.1).max().unwrap_or(0);
        let gcd = eligible.iter().fold(0, |g, e| gcd(g, e.1)).max(1);
        Wrr {
            i: eligible.len().saturating_sub(1),
            cw: 0,
            max,
            gcd,
        }
    }

    /// Callers guarantee a non-empty list with positive weights; the walk
    /// ends because after a reset `cw` equals the maximum weight.
    fn next(&mut self, eligible: &[(Ipv4Addr, u32)]) -> usize {
        let n = eligible.len();
        loop {
            self.i = (self.i + 1) % n;
            if self.i == 0 {
                self.cw = if self.cw <= self.gcd {
                    self.max
                } else {
                    self.cw - self.gcd
                };
            }
            if eligible[self.i].1 >= self.cw {
                return self.i;
            }
        }
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey {
            proto: 6,
            src: Ipv4Addr::from(0x0a00_0000 + i),
            sport: (i % 50_000) as u16 + 1024,
            dst: Ipv4Addr::new(198, 18, 0, 100),
            dport: 80,
        }
    }

    fn set(weights: &[u32]) -> Vec<(Ipv4Addr, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (Ipv4Addr::new(10, 1, 0, i as u8 + 1), *w))
            .collect()
    }

    #[test]
    fn wrr_sequence_is_interleaved_like_ipvs() {
        // IPVS with weights a=4, b=3, c=2: a a b a b c a b c
        let mut s = SchedState::new(Scheduler::Wrr, set(&[4, 3, 2]));
        let seq: Vec<usize> = (0..9)
            .map(|i| {
                s.pick(&key(i), |_| Load {
                    active: 0,
                    inactive: 0,
                })
                .unwrap()
            })
            .collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_deal_is_one_cycle_of_the_schedulers_own_picks() {
        let idle = |_| Load {
            active: 0,
            inactive: 0,
        };
        for (kind, weights, cycle) in [
            (Scheduler::Rr, &[1, 5, 1][..], 3),
            (Scheduler::Wrr, &[4, 3, 2][..], 9),
            (Scheduler::Wrr, &[150, 100][..], 5),
        ] {
            let mut s = SchedState::new(kind, set(weights));
            let deal = s.deal(4096).unwrap();
            assert_eq!(deal.len(), cycle, "{kind:?} {weights:?}");
            // Dealt in turn, twice round: what the engine would pick.
            for i in 0..2 * cycle {
                assert_eq!(Some(deal[i % cycle]), s.pick(&key(i as u32), idle));
            }
        }
        // A cycle longer than the room: cut short.
        let s = SchedState::new(Scheduler::Wrr, set(&[1000, 999]));
        assert_eq!(s.deal(64).unwrap().len(), 64);
        for kind in [Scheduler::Lc, Scheduler::Wlc, Scheduler::Sh, Scheduler::Mh] {
            assert_eq!(SchedState::new(kind, set(&[1, 2])).deal(64), None);
        }
        assert_eq!(SchedState::new(Scheduler::Rr, vec![]).deal(64), None);
    }

    #[test]
    fn wlc_prefers_lowest_load_per_weight() {
        let mut s = SchedState::new(Scheduler::Wlc, set(&[1, 3]));
        let loads = [
            Load {
                active: 1,
                inactive: 0,
            },
            Load {
                active: 2,
                inactive: 0,
            },
        ];
        // 256/1 vs 512/3: the heavier-weighted backend wins.
        assert_eq!(s.pick(&key(0), |i| loads[i]), Some(1));
        let mut s = SchedState::new(Scheduler::Lc, set(&[1, 3]));
        assert_eq!(s.pick(&key(0), |i| loads[i]), Some(0));
    }

    #[test]
    fn sh_depends_on_client_address_only() {
        let s = SchedState::new(Scheduler::Sh, set(&[1, 1, 1, 1]));
        for i in 0..100 {
            let a = key(i);
            let b = FlowKey {
                sport: a.sport.wrapping_add(7),
                ..a
            };
            assert_eq!(s.pick_stateless(&a), s.pick_stateless(&b));
        }
    }

    #[test]
    fn same_as_ignores_order() {
        let s = SchedState::new(Scheduler::Mh, set(&[1, 2]));
        let mut rev = set(&[1, 2]);
        rev.reverse();
        assert!(s.same_as(Scheduler::Mh, &rev));
        assert!(!s.same_as(Scheduler::Sh, &rev));
        assert!(!s.same_as(Scheduler::Mh, &set(&[1, 3])));
    }

    #[test]
    fn empty_set_picks_nothing() {
        for kind in [
            Scheduler::Rr,
            Scheduler::Wrr,
            Scheduler::Lc,
            Scheduler::Wlc,
            Scheduler::Sh,
            Scheduler::Mh,
        ] {
            let mut s = SchedState::new(kind, vec![]);
            assert_eq!(
                s.pick(&key(1), |_| Load {
                    active: 0,
                    inactive: 0
                }),
                None
            );
        }
    }
}
