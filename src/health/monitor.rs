//! Drives the probes: one thread per backend, so a slow or hanging backend
//! delays only its own checks. Each thread sleeps on a shared condition
//! variable between checks, so `stop` wakes them all at once instead of
//! waiting out an interval; a probe already running finishes within its own
//! timeout.
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{probe, CheckSpec, Checker, Transition};

/// Checks never run back to back faster than this, whatever the config says.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// One backend to watch, known to the caller as `K` (its text form names
/// the checker in logs and thread names).
#[derive(Debug, Clone)]
pub struct Target<K> {
    /// Key used in callbacks and snapshots (unique per monitor).
    pub key: K,
    pub addr: Ipv4Addr,
    pub spec: CheckSpec,
    /// The state restored from the store, if any.
    pub initial_up: Option<bool>,
}

/// A backend's health as shown on the status page.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HealthState {
    /// Whether traffic goes to it (unknown counts as up).
    pub up: bool,
    /// Latency of the last successful check.
    pub last_latency_ms: Option<f64>,
    /// Why the last check failed; `None` when it succeeded.
    pub last_reason: Option<String>,
    /// Checks run so far.
    pub checks: u64,
    /// Checks that failed so far.
    pub failures: u64,
}

pub type OnChange<K> = Arc<dyn Fn(&K, &Transition) + Send + Sync>;

#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl StopSignal {
    /// Sleeps until `deadline`; returns true if stop was requested.
    fn sleep_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if *stopped {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stopped = self
                .wake
                .wait_timeout(stopped, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }
}

/// Runs the health checks of a set of backends until stopped.
pub struct Monitor<K> {
    stop: Arc<StopSignal>,
    states: Arc<Vec<(K, Mutex<HealthState>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl<K: Clone + std::fmt::Display + Send + Sync + 'static> Monitor<K> {
    /// Starts one checking thread per target; the first check of each runs
    /// at once. `on_change` is called from those threads on every
    /// transition, after the snapshot is updated.
    pub fn start(targets: Vec<Target<K>>, on_change: OnChange<K>) -> Monitor<K> {
        let stop = Arc::new(StopSignal::default());
        let states: Arc<Vec<(K, Mutex<HealthState>)>> = Arc::new(
            targets
                .iter()
                .map(|t| {
                    let state = HealthState {
                        up: t.initial_up.unwrap_or(true),
                        last_latency_ms: None,
                        last_reason: None,
                        checks: 0,
                        failures: 0,
                    };
                    (t.key.clone(), Mutex::new(state))
                })
                .collect(),
        );
        let mut threads = Vec::with_capacity(targets.len());
        for (index, target) in targets.into_iter().enumerate() {
            let (stop, states, on_change) = (stop.clone(), states.clone(), on_change.clone());
            let name = target.key.to_string();
            let spawned = std::thread::Builder::new()
                .name(format!("health-{name}"))
                .spawn(move || run(target, index, &stop, &states, &*on_change));
            match spawned {
                Ok(handle) => threads.push(handle),
                // The backend keeps its initial state; better than no
                // checks at all for the others.
                Err(e) => log::error!("health: cannot start the checker of {name}: {e}"),
            }
        }
        Monitor {
            stop,
            states,
            threads,
        }
    }

    /// A snapshot of every backend's state, in the order of the targets.
    pub fn states(&self) -> Vec<(K, HealthState)> {
        self.states
            .iter()
            .map(|(key, s)| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                (key.clone(), s.clone())
            })
            .collect()
    }

    /// Asks every checker to stop and returns at once: a probe in flight
    /// finishes within its timeout, then its thread ends on its own.
    pub fn detach(self) {
        self.stop.set();
    }

    /// Stops every checker and joins its thread. Returns within the longest
    /// check timeout (a running probe is not interrupted).
    pub fn stop(self) {
        self.stop.set();
        for t in self.threads {
            if t.join().is_err() {
                log::error!("health: a checker thread panicked");
            }
        }
    }
}

fn describe(known: bool, up: bool) -> &'static str {
    match (known, up) {
        (false, _) => "unknown",
        (true, true) => "up",
        (true, false) => "down",
    }
}

fn run<K: std::fmt::Display>(
    target: Target<K>,
    index: usize,
    stop: &StopSignal,
    states: &[(K, Mutex<HealthState>)],
    on_change: &(dyn Fn(&K, &Transition) + Send + Sync),
) {
    let Target {
        key,
        addr,
        spec,
        initial_up,
    } = target;
    let name = key.to_string();
    let socket = SocketAddr::new(spec.address.unwrap_or(addr).into(), spec.port);
    let interval = spec.interval.max(MIN_INTERVAL);
    let mut checker = Checker::new(spec.rise, spec.fall, initial_up);
    let mut next = Instant::now();
    while !stop.sleep_until(next) {
        let result = probe(&spec.kind, socket, &name, spec.timeout);
        let now = Instant::now();
        if stop.is_set() {
            break;
        }
        let before = describe(checker.is_known(), checker.is_up());
        let transition = checker.on_result(now, &result);
        {
            let mut s = states[index]
                .1
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            s.up = checker.is_up();
            s.checks += 1;
            match &result {
                Ok(latency) => {
                    s.last_latency_ms = Some(latency.as_secs_f64() * 1000.0);
                    s.last_reason = None;
                }
                Err(f) => {
                    s.failures += 1;
                    s.last_reason = Some(f.to_string());
                }
            }
        }
        if let Err(f) = &result {
            log::debug!("health: {name} ({socket}) check failed: {f}");
        }
        if let Some(t) = transition {
            let after = if t.up { "up" } else { "down" };
            log::info!(
                "health: {name} ({socket}) {before} -> {after}: {}",
                t.reason
            );
            on_change(&key, &t);
        }
        // Fixed rate; a check that overran its slot is followed at once
        // rather than by a burst of catch-up checks.
        next = (next + interval).max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::CheckKind;
    use std::net::TcpListener;
    use std::sync::mpsc;

    fn spec(kind: CheckKind, port: u16, interval_ms: u64, rise: u32, fall: u32) -> CheckSpec {
        CheckSpec {
            address: None,
            kind,
            port,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(100),
            rise,
            fall,
        }
    }

    fn refused_port() -> u16 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    }

    type Events = mpsc::Receiver<(String, bool, String, Instant)>;

    fn recorder() -> (OnChange<String>, Events) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let cb: OnChange<String> = Arc::new(move |name: &String, t: &Transition| {
            let _ =
                tx.lock()
                    .unwrap()
                    .send((name.to_string(), t.up, t.reason.clone(), Instant::now()));
        });
        (cb, rx)
    }

    #[test]
    fn reports_a_failing_backend_within_interval_times_fall() {
        let good = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let good_port = good.local_addr().unwrap().port();
        let (interval, fall) = (50, 3);
        let targets = vec![
            Target {
                key: "web1".to_string(),
                addr: Ipv4Addr::LOCALHOST,
                spec: spec(CheckKind::Tcp, good_port, interval, 2, fall),
                initial_up: Some(true),
            },
            Target {
                key: "web2".to_string(),
                addr: Ipv4Addr::LOCALHOST,
                spec: spec(CheckKind::Tcp, refused_port(), interval, 2, fall),
                initial_up: Some(true),
            },
        ];
        let (cb, events) = recorder();
        let start = Instant::now();
        let monitor = Monitor::start(targets, cb);
        let (name, up, reason, at) = events.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((name.as_str(), up), ("web2", false));
        assert_eq!(reason, "3 consecutive failures, last: connection refused");
        let bound = Duration::from_millis(interval * u64::from(fall)) + Duration::from_millis(200);
        assert!(at - start < bound, "took {:?}", at - start);

        let states = monitor.states();
        assert_eq!(states[0].0, "web1");
        assert!(states[0].1.up);
        assert!(states[0].1.last_latency_ms.is_some());
        assert_eq!(states[0].1.failures, 0);
        assert_eq!(states[1].0, "web2");
        assert!(!states[1].1.up);
        assert_eq!(
            states[1].1.last_reason.as_deref(),
            Some("connection refused")
        );
        assert!(states[1].1.failures >= 3);
        monitor.stop();
        // web1 was restored as up and stayed up: no transition for it.
        assert!(events.try_iter().all(|(n, ..)| n != "web1"));
    }

    #[test]
    fn unknown_backends_are_up_until_their_first_verdict() {
        let good = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let targets = vec![
            Target {
                key: "web1".to_string(),
                addr: Ipv4Addr::LOCALHOST,
                spec: spec(CheckKind::Tcp, good.local_addr().unwrap().port(), 30, 2, 2),
                initial_up: None,
            },
            Target {
                key: "web2".to_string(),
                addr: Ipv4Addr::LOCALHOST,
                spec: spec(CheckKind::Tcp, refused_port(), 5_000, 2, 2),
                initial_up: None,
            },
        ];
        let (cb, events) = recorder();
        let monitor = Monitor::start(targets, cb);
        let (name, up, ..) = events.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((name.as_str(), up), ("web1", true));
        // web2 has failed once (its next check is seconds away): still served.
        let states = monitor.states();
        assert!(states[1].1.up);
        assert_eq!(states[1].1.checks, 1);
        monitor.stop();
    }

    #[test]
    fn a_hanging_check_does_not_delay_other_backends() {
        let slow = Target {
            key: "slow".to_string(),
            addr: Ipv4Addr::LOCALHOST,
            spec: CheckSpec {
                timeout: Duration::from_millis(1500),
                ..spec(
                    CheckKind::Exec {
                        command: "sleep 1".into(),
                    },
                    80,
                    50,
                    1,
                    1,
                )
            },
            initial_up: Some(true),
        };
        let fast = Target {
            key: "fast".to_string(),
            addr: Ipv4Addr::LOCALHOST,
            spec: spec(CheckKind::Tcp, refused_port(), 50, 1, 1),
            initial_up: Some(true),
        };
        let (cb, events) = recorder();
        let start = Instant::now();
        let monitor = Monitor::start(vec![slow, fast], cb);
        let (name, up, _, at) = events.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((name.as_str(), up), ("fast", false));
        assert!(
            at - start < Duration::from_millis(500),
            "took {:?}",
            at - start
        );
        monitor.stop();
    }

    #[test]
    fn stop_does_not_wait_for_the_interval() {
        let targets = vec![Target {
            key: "idle".to_string(),
            addr: Ipv4Addr::LOCALHOST,
            spec: spec(CheckKind::None, 80, 60_000, 1, 1),
            initial_up: None,
        }];
        let (cb, events) = recorder();
        let monitor = Monitor::start(targets, cb);
        // The first check runs at once and settles the unknown state.
        let (name, up, ..) = events.recv_timeout(Duration::from_secs(2)).unwrap();
        assert_eq!((name.as_str(), up), ("idle", true));
        let start = Instant::now();
        monitor.stop();
        assert!(
            start.elapsed() < Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }
}
