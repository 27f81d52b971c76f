//! Which backend gets a request: the data plane's schedulers over the
//! client's address, state kept per service while its backend set holds.
//! lc and wlc count requests in flight as IPVS counts active connections,
//! and the requests of the last `WINDOW` as its inactive ones, so that
//! requests one after another (none in flight at each pick) still spread.
use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use super::{Pool, ProxyBackend};
use crate::forward::sched::{Load, SchedState};
use crate::wire::frame::FlowKey;

/// How long a request counts as "recent" load (a backend new to the pool
/// is not flooded to catch up with counts older than this).
const WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Picker {
    states: HashMap<(SocketAddrV4, usize), SchedState>,
    /// Per backend: requests in flight, requests started in this window.
    load: HashMap<SocketAddrV4, (u64, u64)>,
    window: Option<Instant>,
}

impl Picker {
    /// A request to `addr` starts (call `finish` when it ends).
    pub fn start(&mut self, addr: SocketAddrV4, now: Instant) {
        if self.window.is_none_or(|w| now.duration_since(w) >= WINDOW) {
            self.window = Some(now);
            self.load.retain(|_, l| l.0 > 0);
            self.load.values_mut().for_each(|l| l.1 = 0);
        }
        let l = self.load.entry(addr).or_default();
        l.0 += 1;
        l.1 += 1;
    }

    pub fn finish(&mut self, addr: SocketAddrV4) {
        if let Some(l) = self.load.get_mut(&addr) {
            l.0 = l.0.saturating_sub(1);
        }
    }

    /// Another backend than `failed` for a retry: the scheduler's choice
    /// unless that is `failed` again (sh/mh), then the next usable one.
    pub fn pick_other(
        &mut self,
        pool: &Pool,
        client: SocketAddrV4,
        failed: SocketAddrV4,
    ) -> Option<SocketAddrV4> {
        match self.pick(pool, client) {
            Some(b) if b.addr != failed => Some(b.addr),
            _ => pool.backends.iter().map(|b| b.addr).find(|a| *a != failed),
        }
    }

    /// A backend for a request from `client`, or `None` when no backend
    /// is usable (the caller answers 503).
    pub fn pick<'a>(&mut self, pool: &Pool<'a>, client: SocketAddrV4) -> Option<&'a ProxyBackend> {
        let eligible: Vec<_> = pool
            .backends
            .iter()
            .map(|b| (*b.addr.ip(), b.weight))
            .collect();
        let state = self
            .states
            .entry(pool.key)
            .or_insert_with(|| SchedState::new(pool.scheduler, eligible.clone()));
        if !state.same_as(pool.scheduler, &eligible) {
            *state = SchedState::new(pool.scheduler, eligible);
        }
        let key = FlowKey {
            proto: FlowKey::TCP,
            src: *client.ip(),
            // sh/mh hash the client address only, so one client sticks.
            sport: 0,
            dst: *client.ip(),
            dport: pool.key.0.port(),
        };
        let load = &self.load;
        // The scheduler's own order (sorted by address), which `i` indexes.
        let order: Vec<_> = state.eligible.iter().map(|e| e.0).collect();
        let i = state.pick(&key, |i| {
            let (active, inactive) = pool
                .backends
                .iter()
                .filter(|b| *b.addr.ip() == order[i])
                .filter_map(|b| load.get(&b.addr))
                .fold((0, 0), |(a, r), l| (a + l.0, r + l.1));
            Load { active, inactive }
        })?;
        let ip = state.eligible[i].0;
        pool.backends.iter().find(|b| *b.addr.ip() == ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::Scheduler;
    use std::net::Ipv4Addr;

    struct Svc {
        scheduler: Scheduler,
        backends: Vec<ProxyBackend>,
    }

    impl Svc {
        fn pool(&self) -> Pool<'_> {
            Pool {
                key: (SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80), 0),
                scheduler: self.scheduler,
                backends: &self.backends,
            }
        }
    }

    fn svc(kind: Scheduler, n: u8) -> Svc {
        Svc {
            scheduler: kind,
            backends: (1..=n)
                .map(|i| ProxyBackend {
                    name: format!("b{i}"),
                    addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 20 + i), 8080),
                    weight: 1,
                })
                .collect(),
        }
    }

    fn pick(p: &mut Picker, s: &Svc, c: SocketAddrV4) -> Option<SocketAddrV4> {
        p.pick(&s.pool(), c).map(|b| b.addr)
    }

    fn client(i: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, i), 40000)
    }

    #[test]
    fn rr_alternates_and_keeps_backend_port() {
        let s = svc(Scheduler::Rr, 2);
        let mut p = Picker::default();
        let a = pick(&mut p, &s, client(1)).unwrap();
        let b = pick(&mut p, &s, client(1)).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.port(), 8080);
        assert_eq!(pick(&mut p, &s, client(1)), Some(a));
    }

    #[test]
    fn wlc_counts_requests_in_flight_and_recent_ones() {
        let s = svc(Scheduler::Wlc, 2);
        let mut p = Picker::default();
        let t0 = Instant::now();
        // One after another, none in flight at each pick: they alternate.
        let mut seen = Vec::new();
        for _ in 0..4 {
            let b = pick(&mut p, &s, client(1)).unwrap();
            p.start(b, t0);
            p.finish(b);
            seen.push(b);
        }
        assert_eq!(seen[0], seen[2]);
        assert_ne!(seen[0], seen[1]);
        // A slow request in flight on one: the next ones go to the other.
        let slow = pick(&mut p, &s, client(1)).unwrap();
        p.start(slow, t0);
        for _ in 0..3 {
            let b = pick(&mut p, &s, client(1)).unwrap();
            assert_ne!(b, slow);
            p.start(b, t0);
            p.finish(b);
        }
        // A new window forgets the recent counts, not what is in flight.
        p.start(slow, t0 + WINDOW);
        p.finish(slow);
        assert_ne!(pick(&mut p, &s, client(1)), Some(slow));
    }

    #[test]
    fn sh_sticks_per_client() {
        let s = svc(Scheduler::Sh, 3);
        let mut p = Picker::default();
        let first = pick(&mut p, &s, client(7));
        for _ in 0..10 {
            assert_eq!(pick(&mut p, &s, client(7)), first);
        }
    }

    #[test]
    fn retry_goes_elsewhere_even_when_hashing() {
        let s = svc(Scheduler::Sh, 2);
        let mut p = Picker::default();
        let first = pick(&mut p, &s, client(3)).unwrap();
        let other = p.pick_other(&s.pool(), client(3), first).unwrap();
        assert_ne!(first, other);
        let one = svc(Scheduler::Sh, 1);
        let only = one.backends[0].addr;
        assert_eq!(p.pick_other(&one.pool(), client(3), only), None);
    }

    #[test]
    fn nothing_usable_is_none_and_a_change_rebuilds() {
        let mut s = svc(Scheduler::Rr, 2);
        let mut p = Picker::default();
        pick(&mut p, &s, client(1)).unwrap();
        s.backends.remove(0);
        let only = s.backends[0].addr;
        assert_eq!(pick(&mut p, &s, client(1)), Some(only));
        assert_eq!(pick(&mut p, &s, client(1)), Some(only));
        s.backends.clear();
        assert_eq!(pick(&mut p, &s, client(1)), None);
    }
}
