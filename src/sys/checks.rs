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
        if targets.is_empty() {
            return None;
        }
        let retired = Arc::new(AtomicBool::new(false));
        let (c, gone) = (ctl.clone(), retired.clone());
        let monitor = Monitor::start(
            targets,
            Arc::new(move |key: &HealthKey, t: &Transition| {
                // A probe of a replaced monitor may still finish: its
                // verdict would overwrite the new monitor's.
                if gone.load(Ordering::Acquire) {
                    return;
                }
                let state = if t.up { "up" } else { "down" };
                c.event("health", &format!("{key} {state}: {}", t.reason));
                if let Some(s) = &c.store {
                    store_warn("health state", s.set_health(&key.to_string(), t.up));
                }
                // The snapshot is rebuilt from `health`: the verdict goes in
                // now, the details (latency, counts) with the next refresh.
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
            }),
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
