//! The health monitor of the configured services, wired to the shared
//! state: started with the daemon and started anew on each reload.
use crate::config::Config;
use crate::health::{HealthState, Monitor, Target, Transition};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::ctl::{store_warn, Ctl};
use super::inbox::Input;
use super::pool::{backend_defs, check_spec, HealthKey, ServiceId};

/// A running monitor, and whether its verdicts still count.
pub struct Checks {
    monitor: Monitor<HealthKey>,
    retired: Arc<AtomicBool>,
}

impl Checks {
    /// One checker per checked backend of every service; `initial` holds
    /// verdicts known from before (the store, or the monitor this one
    /// replaces), by the keys' text form as the store keeps them, so a
    /// backend keeps its state instead of rising anew.
    pub fn start(
        cfg: &Config,
        me: Ipv4Addr,
        ctl: &Arc<Ctl>,
        initial: &BTreeMap<String, bool>,
    ) -> Option<Checks> {
        let targets = targets(cfg, me, initial);
        if targets.is_empty() {
            return None;
        }
        let retired = Arc::new(AtomicBool::new(false));
        let (c, gone) = (ctl.clone(), retired.clone());
        let monitor = Monitor::start(
            targets,
            Arc::new(move |key: &HealthKey, t: &Transition| verdict(&c, &gone, key, t)),
        );
        Some(Checks { monitor, retired })
    }

    pub fn states(&self) -> Vec<(HealthKey, HealthState)> {
        self.monitor.states()
    }

    /// Stops this monitor without waiting for its probes in flight (which
    /// may take a check timeout): the control loop must not stall.
    pub fn retire(self) {
        self.retired.store(true, Ordering::Release);
        self.monitor.detach();
    }

    /// Stops every checker and waits for them (shutdown).
    pub fn stop(self) {
        self.monitor.stop();
    }
}

/// One checker per checked backend of every service, in `initial`'s state
/// where it holds one.
fn targets(cfg: &Config, me: Ipv4Addr, initial: &BTreeMap<String, bool>) -> Vec<Target<HealthKey>> {
    let mut targets = Vec::new();
    for svc in &cfg.services {
        let port = *svc.port.get_ref();
        let Some(check) = &svc.check else { continue };
        let service = ServiceId::of(cfg, svc);
        for d in backend_defs(cfg, svc, me) {
            let key = HealthKey {
                service,
                backend: d.name,
            };
            targets.push(Target {
                initial_up: initial.get(&key.to_string()).copied(),
                key,
                addr: d.addr,
                spec: check_spec(check, port),
            });
        }
    }
    targets
}

/// A transition of `key` reported by a monitor, `gone` once it was retired.
fn verdict(c: &Ctl, gone: &AtomicBool, key: &HealthKey, t: &Transition) {
    // A probe of a replaced monitor may still finish: its verdict would
    // overwrite the new monitor's.
    if gone.load(Ordering::Acquire) {
        return;
    }
    let state = if t.up { "up" } else { "down" };
    c.event("health", &format!("{key} {state}: {}", t.reason));
    if let Some(s) = &c.store {
        store_warn("health state", s.set_health(&key.to_string(), t.up));
    }
    // The snapshot is rebuilt from `health`: the verdict goes in now, the
    // details (latency, counts) with the next refresh.
    let mut st = c.lock();
    st.health
        .entry(key.clone())
        .or_insert_with(|| HealthState {
            up: t.up,
            last_latency_ms: None,
            last_reason: None,
            checks: 0,
            failures: 0,
        })
        .up = t.up;
    st.dirty = true;
    drop(st);
    c.inbox.send(Input::Changed);
}

#[cfg(test)]
mod tests {
    use super::super::ctl::State;
    use super::super::fixture::{Dir, CONFIG};
    use super::super::inbox;
    use super::*;
    use crate::dataplane::{Control, Shared};
    use crate::store::Store;
    use std::collections::BTreeSet;
    use std::time::Instant;

    const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    /// The fixture's port 80 has no check; these have.
    const CHECKED: &str = r#"
[[service]]
port = 443
serve_local = true
backends = ["198.18.0.20", { name = "db", address = "198.18.0.21" }]
check = { kind = "tcp" }
[[service]]
port = 53
protocol = "udp"
serve_local = false
backends = ["198.18.0.30"]
check = { kind = "none" }
"#;

    #[test]
    fn targets_start_in_their_known_state() {
        let dir = Dir::new(&format!("{CONFIG}{CHECKED}"));
        let cfg = dir.config();
        let initial = BTreeMap::from([
            ("443/web2".to_string(), false),
            ("443/db".to_string(), true),
            // A verdict on a backend no longer checked starts nothing.
            ("80/web1".to_string(), true),
        ]);
        let got: Vec<_> = targets(&cfg, ME, &initial)
            .into_iter()
            .map(|t| (t.key.to_string(), t.addr, t.spec.port, t.initial_up))
            .collect();
        let a = |d| Ipv4Addr::new(198, 18, 0, d);
        assert_eq!(
            got,
            vec![
                ("443/web1".to_string(), a(1), 443, None),
                ("443/web2".to_string(), a(2), 443, Some(false)),
                ("443/198.18.0.20".to_string(), a(20), 443, None),
                ("443/db".to_string(), a(21), 443, Some(true)),
                ("53/udp/198.18.0.30".to_string(), a(30), 53, None),
            ]
        );
        // Nothing checked: no monitor at all.
        assert!(targets(&Dir::new(CONFIG).config(), ME, &initial).is_empty());
    }

    struct Fixture {
        ctl: Arc<Ctl>,
        inputs: smol::channel::Receiver<Input>,
        _dir: Dir,
    }

    fn fixture() -> Fixture {
        let dir = Dir::new(&format!("{CONFIG}{CHECKED}"));
        let cfg = dir.config();
        let shared = Shared::new(Control {
            holding: crate::handover::Holding::No,
            snapshot: Arc::new(crate::forward::Snapshot::default()),
            announce: 0,
        })
        .unwrap();
        let (notify, inputs) = inbox::channel();
        let state = State::starting(&cfg, 0, BTreeSet::new(), 0, Instant::now());
        let store = Store::open(&dir.path().join("state")).unwrap();
        let ctl = Arc::new(Ctl::new(
            state,
            Some(store),
            shared,
            cfg,
            dir.config_path(),
            notify,
        ));
        ctl.lock().dirty = false;
        Fixture {
            ctl,
            inputs,
            _dir: dir,
        }
    }

    fn key(cfg: &Config, backend: &str) -> HealthKey {
        HealthKey {
            service: ServiceId::of(cfg, &cfg.services[1]),
            backend: backend.to_string(),
        }
    }

    fn down(reason: &str) -> Transition {
        Transition {
            up: false,
            reason: reason.to_string(),
        }
    }

    #[test]
    fn a_verdict_reaches_state_store_log_and_loop() {
        let f = fixture();
        let k = key(&f.ctl.config(), "db");
        verdict(&f.ctl, &AtomicBool::new(false), &k, &down("timeout"));
        let st = f.ctl.lock();
        assert_eq!(st.health.get(&k).map(|h| h.up), Some(false));
        assert!(st.dirty);
        drop(st);
        let store = f.ctl.store.as_ref().unwrap();
        assert_eq!(store.health().get("443/db"), Some(&false));
        let events = store.events(10);
        assert!(
            events
                .iter()
                .any(|e| e.kind == "health" && e.message == "443/db down: timeout"),
            "{events:?}"
        );
        assert!(matches!(f.inputs.try_recv(), Ok(Input::Changed)));
    }

    #[test]
    fn a_verdict_keeps_the_details_it_does_not_bring() {
        let f = fixture();
        let k = key(&f.ctl.config(), "db");
        f.ctl.lock().health.insert(
            k.clone(),
            HealthState {
                up: true,
                last_latency_ms: Some(1.5),
                last_reason: None,
                checks: 9,
                failures: 1,
            },
        );
        verdict(&f.ctl, &AtomicBool::new(false), &k, &down("refused"));
        let st = f.ctl.lock();
        let h = &st.health[&k];
        assert_eq!(
            (h.up, h.last_latency_ms, h.checks, h.failures),
            (false, Some(1.5), 9, 1)
        );
    }

    #[test]
    fn a_retired_monitor_changes_nothing() {
        let f = fixture();
        let k = key(&f.ctl.config(), "db");
        let before = f.ctl.store.as_ref().unwrap().events(10).len();
        verdict(&f.ctl, &AtomicBool::new(true), &k, &down("timeout"));
        let st = f.ctl.lock();
        assert!(!st.health.contains_key(&k));
        assert!(!st.dirty);
        drop(st);
        let store = f.ctl.store.as_ref().unwrap();
        assert_eq!(store.health().get("443/db"), None);
        assert_eq!(store.events(10).len(), before);
        assert!(f.inputs.try_recv().is_err());
    }
}
