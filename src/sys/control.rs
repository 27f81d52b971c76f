//! The control loop: drives the election over the heartbeat socket and
//! keeps the data plane's backend snapshot in step with health, drains,
//! peers and neighbour MACs. Handovers (SIGTERM, planned failover) and the
//! make-before-break step-down live here too.
use crate::config::{self, Config};
use crate::election::{self, Election, Role};
use crate::wire::admin::{self, AdminState};
use crate::wire::heartbeat::{HeartbeatError, HeartbeatRepr};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checks::Checks;
use super::ctl::{handle_event, health_summary, Ctl};
use super::dataplane::Shared;
use super::pool::{backend_defs, build_snapshot, Inputs};
use super::{neigh, ping, signals};

/// The drain set goes to the peer on every change and at this period, so a
/// peer that was down catches up.
const ADMIN_STATE_PERIOD: Duration = Duration::from_secs(1);

/// A director that lost the role keeps forwarding until it sees the peer's
/// gratuitous ARP, or this long.
const STEP_DOWN_GRACE: Duration = Duration::from_millis(300);

/// How long a planned handover waits for the standby to confirm it holds
/// the connection table before going ahead anyway.
const HANDOVER_SYNC_WAIT: Duration = Duration::from_millis(500);

/// Longest sleep between two turns, so signals and admin requests are seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(50);

#[derive(Clone, Copy)]
enum Handover {
    Leave,
    Failover,
}

#[derive(Clone, Copy)]
struct PendingHandover {
    kind: Handover,
    deadline: Instant,
    wait_for_sync: bool,
}

/// Everything the loop needs that lives longer than it.
pub struct Parts {
    pub cfg: Arc<Config>,
    pub ctl: Arc<Ctl>,
    pub shared: Arc<Shared>,
    pub election: Election,
    pub key: Vec<u8>,
    pub me: Ipv4Addr,
    pub own_mac: [u8; 6],
    pub peers: Vec<Ipv4Addr>,
    pub cluster_id: u32,
    pub checks: Option<Checks>,
    pub pinger: Option<ping::Pinger>,
    pub macs: HashMap<Ipv4Addr, [u8; 6]>,
}

pub struct ControlLoop {
    p: Parts,
    ping_state: u8,
    /// Addresses whose MAC the data plane needs (peers, real servers, fallback).
    wanted_macs: Vec<Ipv4Addr>,
    last_refresh: Option<Instant>,
    generation: u64,
    handover: Option<PendingHandover>,
    leaving_since: Option<Instant>,
    step_down: Option<Instant>,
    last_admin_sent: Option<Instant>,
    /// Datagrams to send at the end of this turn.
    outbox: Vec<(Ipv4Addr, Vec<u8>)>,
}

impl ControlLoop {
    pub fn new(p: Parts) -> ControlLoop {
        let wanted_macs = wanted_macs(&p.cfg, &p.peers, p.me);
        ControlLoop {
            p,
            ping_state: ping::UNKNOWN,
            wanted_macs,
            last_refresh: None,
            generation: 1,
            handover: None,
            leaving_since: None,
            step_down: None,
            last_admin_sent: None,
            outbox: Vec::new(),
        }
    }

    /// Runs until SIGTERM/SIGINT has been handled and the health checks
    /// have stopped; returns the election for its final term.
    pub fn run(mut self, udp: &async_net::UdpSocket, hb_port: u16) -> Election {
        let mut buf = vec![0u8; 2048];
        smol::block_on(async {
            loop {
                let now = Instant::now();
                if !self.before_wait(now) {
                    break;
                }
                let deadline = self.p.election.poll_timeout().min(now + MAX_WAIT);
                let got = smol::future::or(async { Some(udp.recv_from(&mut buf).await) }, async {
                    smol::Timer::at(deadline).await;
                    None
                })
                .await;
                let now = Instant::now();
                match got {
                    Some(Ok((n, from))) => self.on_datagram(now, &buf[..n], from),
                    Some(Err(e)) => log::warn!("heartbeat receive: {e}"),
                    None => {}
                }
                self.after_wait(now);
                for (dst, bytes) in self.outbox.drain(..) {
                    if let Err(e) = udp.send_to(&bytes, SocketAddr::from((dst, hb_port))).await {
                        log::debug!("control message to {dst}: {e}");
                    }
                }
            }
        });
        if let Some(c) = self.p.checks.take() {
            c.stop();
        }
        self.p.election
    }

    /// Work before waiting for a datagram; false when it is time to exit.
    fn before_wait(&mut self, now: Instant) -> bool {
        if signals::terminating() && self.leaving_since.is_none() && self.handover.is_none() {
            self.handover = Some(self.begin_handover(Handover::Leave, now));
        }
        self.progress_handover(now);
        if let Some(t) = self.leaving_since {
            // Two intervals let the Leaving heartbeat reach the peer even if one is lost.
            if now.duration_since(t) > self.p.cfg.heartbeat.interval.get_ref().0 * 2 {
                return false;
            }
        }
        self.poll_ping(now);
        if signals::take_reload() {
            // Refusals are logged and recorded by `reload` itself.
            let _ = self.p.ctl.reload();
        }
        if let Some(new) = self.p.ctl.take_pending_config() {
            self.apply_config(new);
        }
        if self.p.ctl.wake.swap(false, Ordering::AcqRel) {
            let req = std::mem::take(&mut self.p.ctl.lock().failover_requested);
            if req && self.handover.is_none() {
                self.handover = Some(self.begin_handover(Handover::Failover, now));
            }
        }
        self.refresh(now);
        for ev in self.p.shared.take_events() {
            self.p.ctl.event("flood", &ev.message);
        }
        let (up, total, own_ok) = health_summary(&self.p.ctl, &self.p.cfg, self.p.me);
        self.p.election.set_health_summary(up, total);
        self.p.election.set_service_ok(now, own_ok);
        self.rebuild_snapshot_if_dirty();
        true
    }

    /// A director with a live standby and a table to hand over first lets
    /// connection sync catch up (the sync thread re-confirms after the reset
    /// here); anyone else goes at once.
    fn begin_handover(&self, kind: Handover, now: Instant) -> PendingHandover {
        let el = &self.p.election;
        let wait = el.role() == Role::Director
            && el.peers().iter().any(|p| p.alive)
            && self.p.shared.stats().connections > 0;
        if wait {
            self.p.shared.sync_caught_up.store(false, Ordering::Release);
            log::info!("handover: waiting for the standby to confirm the connection table");
        }
        PendingHandover {
            kind,
            deadline: if wait { now + HANDOVER_SYNC_WAIT } else { now },
            wait_for_sync: wait,
        }
    }

    fn progress_handover(&mut self, now: Instant) {
        let Some(h) = self.handover else { return };
        let caught_up = self.p.shared.sync_caught_up.load(Ordering::Acquire);
        if now < h.deadline && !caught_up {
            return;
        }
        if !caught_up && h.wait_for_sync {
            log::warn!("handing over before the standby confirmed the connection table");
        }
        self.handover = None;
        match h.kind {
            Handover::Leave => {
                log::info!("terminating: handing over");
                self.p.election.leave(now);
                self.leaving_since = Some(now);
            }
            Handover::Failover => {
                if self.p.election.failover(now) {
                    self.p.ctl.event("admin", "planned failover");
                } else {
                    log::warn!("failover requested but no live eligible peer");
                }
            }
        }
    }

    fn poll_ping(&mut self, now: Instant) {
        let Some(p) = &self.p.pinger else { return };
        let v = p.state.load(Ordering::Acquire);
        if v != self.ping_state && v != ping::UNKNOWN {
            self.p.election.set_ping_ok(now, v == ping::REACHABLE);
        }
        self.ping_state = v;
    }

    /// Neighbour MACs and health details: fast while a MAC is missing, then
    /// once a second.
    fn refresh(&mut self, now: Instant) {
        let missing = self
            .wanted_macs
            .iter()
            .any(|a| !self.p.macs.contains_key(a));
        let period = if missing {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if self
            .last_refresh
            .is_some_and(|t| now.duration_since(t) < period)
        {
            return;
        }
        self.last_refresh = Some(now);
        let fresh = neigh::read(&self.p.cfg.cluster.interface);
        for a in self.wanted_macs.iter().filter(|a| !fresh.contains_key(a)) {
            neigh::poke(*a);
        }
        if fresh != self.p.macs {
            self.p.macs = fresh;
            self.p.ctl.lock().dirty = true;
        }
        if let Some(m) = &self.p.checks {
            let states = m.states();
            let mut st = self.p.ctl.lock();
            for (k, s) in states {
                let changed = st.health.get(&k).is_none_or(|old| old.up != s.up);
                st.dirty |= changed;
                st.health.insert(k, s);
            }
        }
    }

    fn rebuild_snapshot_if_dirty(&mut self) {
        let mut st = self.p.ctl.lock();
        if !st.dirty {
            return;
        }
        st.dirty = false;
        self.generation += 1;
        let silent: BTreeSet<Ipv4Addr> = st
            .peers
            .iter()
            .filter(|p| !p.alive)
            .map(|p| p.addr)
            .collect();
        let snap = Arc::new(build_snapshot(
            &self.p.cfg,
            &Inputs {
                me: self.p.me,
                own_mac: self.p.own_mac,
                macs: &self.p.macs,
                health: &st.health,
                drains: &st.drains,
                silent_peers: &silent,
            },
            self.generation,
        ));
        drop(st);
        self.p.shared.update(|c| c.snapshot = snap);
    }

    /// Takes over a configuration `Ctl::reload` checked and queued (after
    /// SIGHUP or an admin request): services, backends, checks and node
    /// weights; the rest is equal by construction.
    fn apply_config(&mut self, new: Arc<Config>) {
        // Checks start anew; each backend keeps its verdict meanwhile.
        let known: BTreeMap<String, bool> = {
            let st = self.p.ctl.lock();
            st.health.iter().map(|(k, h)| (k.clone(), h.up)).collect()
        };
        let checks = Checks::start(&new, self.p.me, &self.p.ctl, &known);
        if let Some(old) = std::mem::replace(&mut self.p.checks, checks) {
            old.retire();
        }
        let live: BTreeSet<String> = self
            .p
            .checks
            .as_ref()
            .map(|c| c.states().into_iter().map(|(k, _)| k).collect())
            .unwrap_or_default();
        {
            let mut st = self.p.ctl.lock();
            st.health.retain(|k, _| live.contains(k));
            st.dirty = true;
        }
        self.wanted_macs = wanted_macs(&new, &self.p.peers, self.p.me);
        self.last_refresh = None;
        self.p.ctl.set_config(new.clone());
        let backends: usize = new
            .services
            .iter()
            .map(|s| backend_defs(&new, s, self.p.me).len())
            .sum();
        let msg = format!(
            "configuration reloaded: {} services, {backends} backends",
            new.services.len()
        );
        log::info!("{msg}");
        self.p.ctl.event("config", &msg);
        self.p.cfg = new;
    }

    fn on_datagram(&mut self, now: Instant, bytes: &[u8], from: SocketAddr) {
        let key = &self.p.key;
        match HeartbeatRepr::parse(bytes, key) {
            Ok(msg) => {
                if let Err(d) = self.p.election.handle_heartbeat(now, &msg) {
                    log::debug!("heartbeat from {from} dropped: {d:?}");
                }
            }
            Err(HeartbeatError::BadType(admin::MSG_TYPE)) => match AdminState::parse(bytes, key) {
                Ok(a) if a.cluster_id == self.p.cluster_id && self.p.peers.contains(&a.node) => {
                    let name = self.p.ctl.lock().peer_names.get(&a.node).cloned();
                    self.p.ctl.adopt_drains(
                        &name.unwrap_or_else(|| a.node.to_string()),
                        a.drains.into_iter().collect(),
                        a.version,
                    );
                }
                Ok(a) => log::debug!("admin state from {} ignored", a.node),
                Err(e) => {
                    self.p.election.note_auth_failure();
                    warn_rejected(from, &e.to_string());
                }
            },
            Err(e) => {
                self.p.election.note_auth_failure();
                log::debug!("heartbeat from {from} rejected: {e}");
                warn_rejected(from, &e.to_string());
            }
        }
    }

    /// Timers, outgoing messages, role events, and the state the status
    /// server shows.
    fn after_wait(&mut self, now: Instant) {
        self.p.election.handle_timeout(now);
        while let Some((dst, msg)) = self.p.election.poll_transmit() {
            let mut out = Vec::with_capacity(128);
            msg.emit(&self.p.key, &mut out);
            self.outbox.push((dst, out));
        }
        self.queue_admin_state(now);
        while let Some(ev) = self.p.election.poll_event() {
            if handle_event(&self.p.ctl, &self.p.shared, ev) {
                self.step_down = Some(now + STEP_DOWN_GRACE);
            }
        }
        self.progress_step_down(now);
        self.publish();
    }

    fn queue_admin_state(&mut self, now: Instant) {
        let announce = std::mem::take(&mut self.p.ctl.lock().announce_admin);
        let due = self
            .last_admin_sent
            .is_none_or(|t| now.duration_since(t) >= ADMIN_STATE_PERIOD);
        if !announce && !due {
            return;
        }
        self.last_admin_sent = Some(now);
        let a = {
            let st = self.p.ctl.lock();
            AdminState {
                cluster_id: self.p.cluster_id,
                node: self.p.me,
                version: st.drains_version,
                drains: st.drains.iter().cloned().collect(),
            }
        };
        let mut out = Vec::with_capacity(128);
        a.emit(&self.p.key, &mut out);
        for p in &self.p.peers {
            self.outbox.push((*p, out.clone()));
        }
    }

    /// Make-before-break: a former director forwards until the data plane
    /// sees its successor's gratuitous ARP (which proves the LAN moved the
    /// virtual MAC; a heartbeat saying "director" does not), or at most
    /// the grace period.
    fn progress_step_down(&mut self, now: Instant) {
        let Some(t) = self.step_down else { return };
        if self.p.election.role() == Role::Director || !self.p.shared.is_active() {
            self.step_down = None;
            return;
        }
        if now >= t {
            self.p.shared.update(|c| {
                c.active = false;
                c.stepping_down = false;
            });
            self.step_down = None;
        }
    }

    fn publish(&mut self) {
        let el = &self.p.election;
        let mut st = self.p.ctl.lock();
        st.role = el.role();
        st.term = el.term();
        let peers_now = el.peers();
        let alive =
            |ps: &[election::PeerInfo]| -> Vec<bool> { ps.iter().map(|p| p.alive).collect() };
        if alive(&peers_now) != alive(&st.peers) {
            st.dirty = true;
        }
        st.peers = peers_now;
        st.counters = el.counters().clone();
        st.effective_priority = el.effective_priority();
    }
}

/// Addresses whose MAC the data plane needs: peers, real servers, a remote
/// fallback.
fn wanted_macs(cfg: &Config, peers: &[Ipv4Addr], me: Ipv4Addr) -> Vec<Ipv4Addr> {
    let mut out = peers.to_vec();
    for svc in &cfg.services {
        out.extend(svc.backends.iter().map(|b| b.get_ref().address()));
        if let Some((a, _)) = svc
            .fallback
            .as_ref()
            .and_then(|f| config::parse_fallback(f.get_ref()).ok())
        {
            if !a.is_loopback() && a != me {
                out.push(a);
            }
        }
    }
    out
}

/// Rejected control datagrams are logged at warn at most once a second in
/// all (with the number suppressed meanwhile), so forged traffic from many
/// sources cannot flood the log; each one is counted in the election's
/// counters anyway.
fn warn_rejected(from: SocketAddr, why: &str) {
    static STATE: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    if st
        .0
        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
    {
        st.1 += 1;
        return;
    }
    let suppressed = std::mem::take(&mut st.1);
    st.0 = Some(now);
    if suppressed > 0 {
        log::warn!("rejected heartbeat from {from}: {why} ({suppressed} more rejected since the last report)");
    } else {
        log::warn!("rejected heartbeat from {from}: {why}");
    }
}
