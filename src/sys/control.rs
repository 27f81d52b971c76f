//! The control loop: drives the election over the heartbeat socket and
//! keeps the data plane's backend snapshot in step with health, drains,
//! peers and neighbour MACs. Handovers (SIGTERM, planned failover) and the
//! make-before-break step-down live here too.
//!
//! The loop sleeps until a heartbeat datagram, a signal, an [`Input`] from
//! another thread, a data-plane [`Report`] or the machines' next deadline.
//! The chores kept on a period (link check, neighbour MACs and health
//! details, the drain set's resend, chart samples) run on the turns those
//! make; the heartbeat's own send timer alone brings one at least every
//! `interval`, so they never need a wake-up of their own. The kernel's
//! notices about the LAN interface bring its check forward.
use crate::config::{self, Config};
use crate::election::leave::{Departure, Exit, Step};
use crate::election::{self, Election, Role};
use crate::log_limit::LogLimiter;
use crate::wire::admin::{self, AdminState};
use crate::wire::envelope::{EnvelopeError, Keys};
use crate::wire::heartbeat::{HeartbeatError, HeartbeatRepr};
use async_signal::{Signal, Signals};
use smol::channel::Receiver;
use smol::stream::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::checks::Checks;
use super::ctl::{handle_event, health_summary, Ctl};
use super::host::HostSetup;
use super::inbox::Input;
use super::pool::{backend_defs, build_snapshot, no_new_flows, HealthKey, Inputs};
use super::{localconns, neigh};
use crate::dataplane::{Report, Shared};
use crate::handover::{Action, Handover, Holding, Planned};

/// The drain set goes to the peer on every change and at this period, so a
/// peer that was down catches up.
const ADMIN_STATE_PERIOD: Duration = Duration::from_secs(1);

/// While draining, how often the local connections are counted.
const LOCAL_COUNT_PERIOD: Duration = Duration::from_millis(100);

/// While draining, how often the count of open local connections is logged.
const DRAIN_REPORT_PERIOD: Duration = Duration::from_secs(5);

/// How often the LAN interface's presence and carrier are checked, and how
/// soon after the last check a kernel notice about it is followed (a burst
/// of notices makes one check).
const LINK_CHECK_PERIOD: Duration = Duration::from_secs(1);
const LINK_NOTICE_DELAY: Duration = Duration::from_millis(20);

/// While a MAC the data plane needs is unknown, how often the neighbour
/// table is read again.
const MISSING_MAC_PERIOD: Duration = Duration::from_millis(100);

/// Everything the loop needs that lives longer than it.
pub struct Parts<'h> {
    /// The VIPs on lo follow a reload.
    pub host: &'h mut HostSetup,
    pub cfg: Arc<Config>,
    pub ctl: Arc<Ctl>,
    pub shared: Arc<Shared>,
    pub election: Election,
    /// Shared with the sync thread; replaced when a reload re-reads the key file.
    pub keys: Arc<RwLock<Keys>>,
    pub me: Ipv4Addr,
    pub own_mac: [u8; 6],
    pub peers: Vec<Ipv4Addr>,
    pub cluster_id: u32,
    pub checks: Option<Checks>,
    pub macs: HashMap<Ipv4Addr, [u8; 6]>,
    /// The LAN interface's index at start: the packet socket is bound to it.
    pub link_index: u32,
}

/// A node on its way out: the decision, and what the log needs.
struct Leaving {
    departure: Departure,
    since: Instant,
    /// Stop signals counted when the leave began; one more cuts it short.
    signals_seen: u32,
    last_report: Instant,
    last_count: usize,
    /// The newest count of local connections and when it was read: the
    /// loop turns on every datagram, /proc/net/tcp need not be read as often.
    count: usize,
    counted_at: Instant,
}

/// What ended a wait.
enum Wake {
    Datagram(std::io::Result<(usize, SocketAddr)>),
    Input(Input),
    Report(Report),
    Signal(Signal),
    LinkNotice,
    Deadline,
}

pub struct ControlLoop<'h> {
    p: Parts<'h>,
    /// Stop signals received: the first starts a graceful leave, a second
    /// one cuts its drain short.
    stops: u32,
    /// Addresses whose MAC the data plane needs (peers, real servers, fallback).
    wanted_macs: Vec<Ipv4Addr>,
    last_refresh: Option<Instant>,
    generation: u64,
    /// Who forwards while the role moves (planned handovers, step-down).
    handover: Handover,
    leaving: Option<Leaving>,
    last_admin_sent: Option<Instant>,
    last_link_check: Option<Instant>,
    /// The kernel said something about the LAN interface since that check.
    link_notice: bool,
    carrier: bool,
    /// Why the loop must end with an error (the LAN interface is gone).
    fatal: Option<String>,
    /// Datagrams to send at the end of this turn.
    outbox: Vec<(Ipv4Addr, Vec<u8>)>,
}

impl<'h> ControlLoop<'h> {
    pub fn new(p: Parts<'h>) -> ControlLoop<'h> {
        let wanted_macs = wanted_macs(&p.cfg, &p.peers, p.me);
        ControlLoop {
            p,
            stops: 0,
            wanted_macs,
            last_refresh: None,
            generation: 1,
            handover: Handover::new(),
            leaving: None,
            last_admin_sent: None,
            last_link_check: None,
            link_notice: false,
            carrier: true,
            fatal: None,
            outbox: Vec::new(),
        }
    }

    /// Runs until SIGTERM/SIGINT has been handled and the health checks
    /// have stopped; returns the election for its final term, and why it
    /// had to stop if it was not asked to.
    pub fn run(
        mut self,
        udp: &async_net::UdpSocket,
        hb_port: u16,
        inputs: Receiver<Input>,
        mut signals: Signals,
    ) -> (Election, Option<String>) {
        use smol::future::{or, pending};
        let mut buf = vec![0u8; 2048];
        let reports = self.p.shared.reports();
        // Without notices the periodic check still finds every change.
        let mut notices = super::netlink::LinkNotices::subscribe(self.p.link_index)
            .map_err(|e| log::warn!("link notices: {e}; checking the link once a second"))
            .ok();
        smol::block_on(async {
            loop {
                let now = Instant::now();
                if !self.before_wait(now) {
                    break;
                }
                let deadline = self.deadline();
                let datagram = async { Wake::Datagram(udp.recv_from(&mut buf).await) };
                // A closed channel or an ended stream never wakes the loop.
                let input = async {
                    match inputs.recv().await {
                        Ok(i) => Wake::Input(i),
                        Err(_) => pending().await,
                    }
                };
                let report = async {
                    match reports.recv().await {
                        Ok(r) => Wake::Report(r),
                        Err(_) => pending().await,
                    }
                };
                let signal = async {
                    loop {
                        match signals.next().await {
                            Some(Ok(s)) => break Wake::Signal(s),
                            Some(Err(e)) => log::warn!("signal: {e}"),
                            None => pending().await,
                        }
                    }
                };
                let notice = async {
                    match notices.as_mut() {
                        Some(n) => n.next().await,
                        None => pending().await,
                    }
                    Wake::LinkNotice
                };
                let timer = async {
                    smol::Timer::at(deadline).await;
                    Wake::Deadline
                };
                let wake = or(
                    or(datagram, signal),
                    or(or(input, report), or(notice, timer)),
                )
                .await;
                let now = Instant::now();
                match wake {
                    Wake::Datagram(Ok((n, from))) => self.on_datagram(now, &buf[..n], from),
                    Wake::Datagram(Err(e)) => log::warn!("heartbeat receive: {e}"),
                    Wake::Input(i) => self.on_input(now, i),
                    Wake::Report(r) => self.on_report(r),
                    Wake::Signal(s) => self.on_signal(s),
                    Wake::LinkNotice => self.link_notice = true,
                    Wake::Deadline => {}
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
        (self.p.election, self.fatal)
    }

    /// The earliest time the machines need a turn: the election's and the
    /// handover's timers, and while leaving or missing a MAC their retries.
    fn deadline(&self) -> Instant {
        let mut d = self.p.election.poll_timeout();
        if let Some(t) = self.handover.poll_timeout() {
            d = d.min(t);
        }
        if let Some(l) = &self.leaving {
            d = d.min(l.counted_at + LOCAL_COUNT_PERIOD);
        }
        if self.missing_mac() {
            if let Some(t) = self.last_refresh {
                d = d.min(t + MISSING_MAC_PERIOD);
            }
        }
        if self.link_notice {
            if let Some(t) = self.last_link_check {
                d = d.min(t + LINK_NOTICE_DELAY);
            }
        }
        d
    }

    fn on_signal(&mut self, s: Signal) {
        match s {
            // Refusals are logged and recorded by `reload` itself; a good
            // config comes back as an input.
            Signal::Hup => {
                let _ = self.p.ctl.reload();
            }
            _ => self.stops += 1,
        }
    }

    fn on_input(&mut self, now: Instant, i: Input) {
        match i {
            Input::Config(new) => self.apply_config(new),
            Input::Failover => {
                if !self.handover.planned() {
                    self.begin_handover(Planned::Failover, now);
                }
            }
            // The turn rebuilds the snapshot and sends the drain set.
            Input::Changed => {}
            Input::Ping(ok) => self.p.election.set_ping_ok(now, ok),
        }
    }

    fn on_report(&mut self, r: Report) {
        match r {
            Report::SuccessorAnnounced => self.handover.handle_successor_announced(),
            // `progress_handover` reads the confirmation itself.
            Report::SyncCaughtUp => {}
            Report::Flood(ev) => self.p.ctl.event("flood", &ev.message),
        }
    }

    /// Work before waiting; false when it is time to exit.
    fn before_wait(&mut self, now: Instant) -> bool {
        if self.stops > 0 && self.leaving.is_none() && !self.handover.planned() {
            self.begin_handover(Planned::Leave, now);
        }
        self.progress_handover(now);
        if !self.progress_leave(now) || !self.watch_link(now) {
            return false;
        }
        self.refresh(now);
        self.p.ctl.sample_history();
        let (up, total, own_ok) = health_summary(&self.p.ctl, &self.p.cfg, self.p.me);
        self.p.election.set_health_summary(up, total);
        {
            // Our sync position goes into our heartbeats; the peer's verified
            // boot binds the sync streams to it (`crate::sync`).
            let mut st = self
                .p
                .shared
                .sync_status
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.p.election.set_sync_pos(st.position);
            st.peer_boot = self.p.election.peers().first().map_or(0, |p| p.boot_id);
        }
        self.p.election.set_service_ok(now, own_ok);
        self.rebuild_snapshot_if_dirty();
        true
    }

    /// A director with a live standby and a table to hand over first lets
    /// connection sync catch up (the sync thread re-confirms after the reset
    /// here); anyone else goes at once.
    fn begin_handover(&mut self, kind: Planned, now: Instant) {
        let el = &self.p.election;
        let wait = el.role() == Role::Director
            && el.peers().iter().any(|p| p.alive)
            && self.p.shared.stats().connections > 0;
        if wait {
            self.p.shared.reset_sync_caught_up();
            log::info!("handover: waiting for the standby to confirm the connection table");
        }
        let sent = self.p.shared.sync_status().position;
        self.handover.begin(now, kind, wait, sent);
    }

    /// Feeds the handover machine what it waits for and carries out what
    /// it decides.
    fn progress_handover(&mut self, now: Instant) {
        if let Some(sent) = self.handover.awaited_sync() {
            if self.p.shared.sync_caught_up() || self.p.election.peer_synced_to(sent) {
                self.handover.handle_synced(now);
            }
        }
        self.handover.handle_timeout(now);
        while let Some(a) = self.handover.poll_action() {
            match a {
                Action::Hold(h) => {
                    if h == Holding::No {
                        log::info!("step-down: forwarding stops");
                    }
                    self.p.shared.update(|c| c.holding = h);
                }
                Action::Proceed { kind, confirmed } => self.proceed(now, kind, confirmed),
            }
        }
    }

    fn proceed(&mut self, now: Instant, kind: Planned, confirmed: bool) {
        if !confirmed {
            log::warn!("handing over before the standby confirmed the connection table");
        }
        match kind {
            Planned::Leave => {
                let directing = self.p.election.role() == Role::Director;
                self.p.election.leave(now);
                let stop_drain = self.p.cfg.cluster.stop_drain.get_ref().0;
                let departure =
                    Departure::new(now, self.p.cfg.heartbeat.interval.get_ref().0, stop_drain);
                let count = self.local_connections();
                log::info!(
                    "leaving: {}told the peer to send no new flows; {count} local connections, \
                     waiting up to {:.1}s for them (cluster.stop_drain) with the VIP kept on lo",
                    if directing {
                        "handed the VIP over, "
                    } else {
                        ""
                    },
                    departure.remaining(now).as_secs_f64()
                );
                self.leaving = Some(Leaving {
                    departure,
                    since: now,
                    signals_seen: self.stops,
                    last_report: now,
                    last_count: count,
                    count,
                    counted_at: now,
                });
                // This node's own weight drops to 0 in its snapshot too,
                // for the frames it may still forward while stepping down.
                self.p.ctl.lock().dirty = true;
            }
            Planned::Failover => {
                if self.p.election.failover(now) {
                    self.p.ctl.event("admin", "planned failover");
                } else {
                    log::warn!("failover requested but no live eligible peer");
                }
            }
        }
    }

    /// Carrier loss is waited out (heartbeats go on, and the election
    /// converges when the link returns); a deleted or re-created interface
    /// is not, since the packet socket is bound to the old one: the loop
    /// ends and duet exits non-zero for its supervisor to restart it.
    fn watch_link(&mut self, now: Instant) -> bool {
        let wait = if self.link_notice {
            LINK_NOTICE_DELAY
        } else {
            LINK_CHECK_PERIOD
        };
        if self
            .last_link_check
            .is_some_and(|t| now.duration_since(t) < wait)
        {
            return true;
        }
        self.last_link_check = Some(now);
        self.link_notice = false;
        let iface = &self.p.cfg.cluster.interface;
        let link = match super::netlink::link(iface) {
            Ok(l) if l.index == self.p.link_index => l,
            Ok(_) => {
                self.fatal = Some(format!(
                    "interface {iface} is gone: it was re-created under a new index; \
                     exiting so the supervisor starts duet afresh"
                ));
                return false;
            }
            Err(e) => {
                self.fatal = Some(format!(
                    "interface {iface} is gone ({e}); exiting so the supervisor starts duet \
                     again once it is back"
                ));
                return false;
            }
        };
        if link.carrier != self.carrier {
            self.carrier = link.carrier;
            if link.carrier {
                log::info!("{iface}: carrier back; announcing the VIP again if directing");
                self.p.ctl.event("link", &format!("{iface} carrier back"));
                if self.p.election.role() == Role::Director {
                    self.p.shared.update(|c| c.announce += 1);
                }
            } else {
                log::warn!(
                    "{iface}: lost carrier; heartbeats go on and duet waits for the link to return"
                );
                self.p.ctl.event("link", &format!("{iface} lost carrier"));
            }
        }
        true
    }

    fn local_connections(&self) -> usize {
        localconns::count(&self.p.cfg.vips()).unwrap_or_else(|e| {
            log::warn!("leaving: cannot read /proc/net/tcp ({e}); not waiting for connections");
            0
        })
    }

    /// False when the leave is complete and the loop should end.
    fn progress_leave(&mut self, now: Instant) -> bool {
        let Some(l) = self.leaving.as_ref() else {
            return true;
        };
        let forced = self.stops > l.signals_seen;
        let stale = now.duration_since(l.counted_at) >= LOCAL_COUNT_PERIOD;
        let fresh = (stale || forced).then(|| self.local_connections());
        let Some(l) = self.leaving.as_mut() else {
            return true;
        };
        if let Some(n) = fresh {
            l.count = n;
            l.counted_at = now;
        }
        let count = l.count;
        if forced {
            l.departure.force();
        }
        let waited = now.duration_since(l.since).as_secs_f64();
        match l.departure.poll(now, count) {
            Step::Wait => {
                if count != l.last_count && now.duration_since(l.last_report) >= DRAIN_REPORT_PERIOD
                {
                    log::info!(
                        "leaving: {count} local connections still open after {waited:.1}s, \
                         {:.1}s left",
                        l.departure.remaining(now).as_secs_f64()
                    );
                    l.last_report = now;
                    l.last_count = count;
                }
                true
            }
            Step::Exit(e) => {
                match e {
                    Exit::Drained => {
                        log::info!("leaving: no local connection left after {waited:.1}s")
                    }
                    Exit::DrainBound { remaining } => log::warn!(
                        "leaving: drain bound reached after {waited:.1}s with {remaining} local \
                         connections open; they end when the VIP leaves lo"
                    ),
                    Exit::Forced { remaining } => log::warn!(
                        "leaving: second stop signal after {waited:.1}s; {remaining} local \
                         connections end when the VIP leaves lo"
                    ),
                }
                false
            }
        }
    }

    fn missing_mac(&self) -> bool {
        self.wanted_macs
            .iter()
            .any(|a| !self.p.macs.contains_key(a))
    }

    /// Neighbour MACs and health details (verdicts arrive at once, as an
    /// input; latencies and counts are for the page): fast while a MAC is
    /// missing, then once a second.
    fn refresh(&mut self, now: Instant) {
        let period = if self.missing_mac() {
            MISSING_MAC_PERIOD
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
        let no_new = no_new_flows(
            &st.peers,
            self.p.me,
            self.p.election.role() == Role::Leaving,
        );
        let snap = Arc::new(build_snapshot(
            &self.p.cfg,
            &Inputs {
                me: self.p.me,
                own_mac: self.p.own_mac,
                macs: &self.p.macs,
                health: &st.health,
                drains: &st.drains,
                no_new_flows: &no_new,
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
            st.health
                .iter()
                .map(|(k, h)| (k.to_string(), h.up))
                .collect()
        };
        let checks = Checks::start(&new, self.p.me, &self.p.ctl, &known);
        if let Some(old) = std::mem::replace(&mut self.p.checks, checks) {
            old.retire();
        }
        let live: BTreeSet<HealthKey> = self
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
        self.reload_keys(&new);
        let (old_vips, new_vips) = (self.p.cfg.vips(), new.vips());
        if old_vips != new_vips {
            // Before the snapshot names them, so a new VIP's first packets
            // find their address; a VIP taken off ends its connections.
            if let Err(e) = self.p.host.set_vips(&new_vips) {
                log::error!("reload: VIPs on lo: {e}");
            }
            let msg = format!(
                "VIPs {} -> {}",
                config::list_addrs(&old_vips),
                config::list_addrs(&new_vips)
            );
            log::info!("reload: {msg}");
            self.p.ctl.event("config", &msg);
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

    /// Key rotation (SECURITY.md): the key file is read again on every
    /// reload; heartbeats, admin state and sync then sign with its first key
    /// and accept either. `Config::load` checked the file just before, so a
    /// failure here is a race with an editor: keep the keys in use.
    fn reload_keys(&mut self, cfg: &Config) {
        match config::read_keys(cfg.cluster.key_file.get_ref()) {
            Ok(k) => {
                let mut cur = self.p.keys.write().unwrap_or_else(|e| e.into_inner());
                if *cur != k {
                    let msg = if k.has_next() {
                        "key file re-read: signing with the first key, accepting the second too"
                    } else {
                        "key file re-read: one key"
                    };
                    log::info!("{msg}");
                    self.p.ctl.event("config", msg);
                    *cur = k;
                }
            }
            Err(e) => log::error!("reload: key file: {e}; keeping the keys in use"),
        }
    }

    fn on_datagram(&mut self, now: Instant, bytes: &[u8], from: SocketAddr) {
        let keys = self
            .p
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match HeartbeatRepr::parse_with(bytes, &keys) {
            Ok((msg, slot)) => match self.p.election.handle_heartbeat(now, &msg) {
                Ok(()) => self.p.election.note_peer_key(msg.node, slot),
                Err(d) => log::debug!("heartbeat from {from} dropped: {d:?}"),
            },
            Err(HeartbeatError::Envelope(EnvelopeError::BadType(admin::MSG_TYPE))) => {
                match AdminState::parse_with(bytes, &keys) {
                    Ok(a)
                        if a.cluster_id == self.p.cluster_id && self.p.peers.contains(&a.node) =>
                    {
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
                }
            }
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
        let keys = self
            .p
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        while let Some((dst, msg)) = self.p.election.poll_transmit() {
            let mut out = Vec::with_capacity(128);
            msg.emit(keys.signing(), &mut out);
            self.outbox.push((dst, out));
        }
        self.queue_admin_state(now, &keys);
        while let Some(ev) = self.p.election.poll_event() {
            if let Some((from, to)) = handle_event(&self.p.ctl, &self.p.shared, ev) {
                self.handover.handle_role(now, from, to);
            }
        }
        self.progress_handover(now);
        self.publish();
    }

    fn queue_admin_state(&mut self, now: Instant, keys: &Keys) {
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
        a.emit(keys.signing(), &mut out);
        for p in &self.p.peers {
            self.outbox.push((*p, out.clone()));
        }
    }

    fn publish(&mut self) {
        let el = &self.p.election;
        let mut st = self.p.ctl.lock();
        st.role = el.role();
        st.term = el.term();
        let peers_now = el.peers();
        // A peer that dies, returns or starts leaving changes who may get
        // new flows: in this turn, not after `dead_after`.
        let takes = |ps: &[election::PeerInfo]| -> Vec<bool> {
            ps.iter().map(|p| p.takes_new_flows()).collect()
        };
        if takes(&peers_now) != takes(&st.peers) {
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

/// Rejected control datagrams are counted in the election's counters; the
/// log gets at most one warning a second of them in all, whatever their
/// sources.
fn warn_rejected(from: SocketAddr, why: &str) {
    static REJECTED: Mutex<LogLimiter> = Mutex::new(LogLimiter::new());
    REJECTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .warn(&format!("rejected heartbeat from {from}: {why}"));
}
#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
