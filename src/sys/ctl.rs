//! The control plane's shared state: what the status server reads and what
//! admin actions change, under one short-held lock.
use crate::config::{self, Config};
use crate::election::{self, Event, Role};
use crate::status::history::History;
use crate::status::model::*;
use crate::status::server::Admin;
use crate::store::{now_ms, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use super::inbox::{Input, Notify};
use super::pool::{backend_defs, is_healthy, no_new_flows, HealthKey, HealthMap, ServiceId};
use crate::dataplane::Shared;

/// Everything the status server and admin actions read or change, owned by
/// the control plane and shared under one short-held lock.
pub struct State {
    pub node: String,
    pub priority: u8,
    pub effective_priority: u8,
    pub role: Role,
    pub term: u64,
    pub peers: Vec<election::PeerInfo>,
    pub peer_names: HashMap<Ipv4Addr, String>,
    pub counters: election::Counters,
    pub drains: BTreeSet<String>,
    pub drains_version: u64,
    /// Our drains changed: tell the peer now rather than at the next refresh.
    pub announce_admin: bool,
    pub health: HealthMap,
    pub started: Instant,
    /// Set whenever something that shapes the backend snapshot changed.
    pub dirty: bool,
}

impl State {
    /// Node `me_idx` of `cfg` at start: no peer heard yet, the drains the
    /// store kept, and everything to announce and build.
    pub fn starting(
        cfg: &Config,
        me_idx: usize,
        drains: BTreeSet<String>,
        drains_version: u64,
        now: Instant,
    ) -> State {
        let me = &cfg.nodes[me_idx];
        State {
            node: me.name.get_ref().clone(),
            priority: me.priority,
            effective_priority: me.priority,
            role: Role::Starting,
            term: 0,
            peers: Vec::new(),
            peer_names: cfg
                .nodes
                .iter()
                .map(|n| (*n.address.get_ref(), n.name.get_ref().clone()))
                .collect(),
            counters: Default::default(),
            drains,
            drains_version,
            announce_admin: true,
            health: BTreeMap::new(),
            started: now,
            dirty: true,
        }
    }
}

pub struct Ctl {
    pub state: Mutex<State>,
    pub store: Option<Store>,
    pub shared: Arc<Shared>,
    /// Replaced as a whole on reload; readers take the current one.
    cfg: Mutex<Arc<Config>>,
    config_path: PathBuf,
    /// Tells the control loop what changed here.
    pub inbox: Notify,
    /// Connection rates per service over the last 10 minutes, for the page.
    history: Mutex<History>,
    /// The pairing code on offer for the other box, if any.
    pairing: Mutex<crate::pair::Sponsor>,
}

/// One history sample per 5 s over 10 minutes.
const HISTORY_STEP_MS: u64 = 5_000;
const HISTORY_WINDOW_MS: u64 = 600_000;

impl Ctl {
    pub fn new(
        state: State,
        store: Option<Store>,
        shared: Arc<Shared>,
        cfg: Arc<Config>,
        config_path: PathBuf,
        inbox: Notify,
    ) -> Ctl {
        Ctl {
            state: Mutex::new(state),
            store,
            shared,
            cfg: Mutex::new(cfg),
            config_path,
            inbox,
            history: Mutex::new(History::new(HISTORY_STEP_MS, HISTORY_WINDOW_MS)),
            pairing: Mutex::new(crate::pair::Sponsor::default()),
        }
    }

    /// What a box joining by code receives: this config, the key file and
    /// the name of the other `[[node]]`.
    fn pair_grant(&self) -> Result<crate::pair::Grant, String> {
        let cfg = self.config();
        let me = self.lock().node.clone();
        let node = cfg
            .nodes
            .iter()
            .map(|n| n.name.get_ref().clone())
            .find(|n| *n != me)
            .ok_or("the config names no second [[node]] to pair")?;
        let config = std::fs::read_to_string(&self.config_path)
            .map_err(|e| format!("reading {}: {e}", self.config_path.display()))?;
        let key_file = cfg.cluster.key_file.get_ref();
        let key = std::fs::read_to_string(key_file)
            .map_err(|e| format!("reading {}: {e}", key_file.display()))?;
        Ok(crate::pair::Grant { config, key, node })
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a history sample when one is due; cheap otherwise, so the
    /// control loop calls it on every turn.
    pub fn sample_history(&self) {
        let now = now_ms();
        if !self.history().due(now) {
            return;
        }
        let mut by_service: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for b in report(self).backends {
            let e = by_service.entry(b.service).or_default();
            e.0 += b.total_connections;
            e.1 += b.active_connections;
        }
        self.history().record(now, &by_service);
    }

    pub fn config(&self) -> Arc<Config> {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_config(&self, cfg: Arc<Config>) {
        *self.cfg.lock().unwrap_or_else(|e| e.into_inner()) = cfg;
    }

    /// Reads the configuration file again (SIGHUP or the admin API). A
    /// configuration that parses and changes nothing that needs a restart
    /// is queued for the control loop, which takes it over on its next turn
    /// (that cannot fail); otherwise the running one stays and the reason
    /// is logged, recorded as an event and returned.
    pub fn reload(&self) -> Result<String, String> {
        let path = self.config_path.display().to_string();
        let refuse = |why: String, event: &str| {
            log::error!("reload: {why}; keeping the running configuration");
            self.event("config", event);
            Err(why)
        };
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                return refuse(
                    e.to_string(),
                    &format!("reload of {path} failed; nothing changed"),
                )
            }
        };
        let restart = self.config().restart_only_changes(&new);
        if !restart.is_empty() {
            let what = restart.join(", ");
            return refuse(
                format!(
                    "{what} changed in {path}; that takes a restart (SIGTERM hands over first)"
                ),
                &format!("reload refused: {what} changed; restart to apply"),
            );
        }
        let summary = format!("reloading {path}: {} services", new.services.len());
        self.inbox.send(Input::Config(Arc::new(new)));
        Ok(summary)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn event(&self, kind: &str, message: &str) {
        if let Some(s) = &self.store {
            store_warn("event log", s.log_event(kind, message));
        }
    }

    pub fn backend_names(&self) -> BTreeSet<String> {
        let cfg = self.config();
        let mut names = BTreeSet::new();
        for s in &cfg.services {
            if s.serve_local {
                for n in &cfg.nodes {
                    names.insert(n.name.get_ref().clone());
                }
            }
            for b in &s.backends {
                names.insert(b.get_ref().name());
            }
        }
        names
    }

    pub fn set_drain(&self, name: &str, drained: bool) -> Result<(), String> {
        if !self.backend_names().contains(name) {
            return Err(format!("no backend named {name:?}"));
        }
        // The lock is held across the store write so two admin requests
        // cannot interleave their versions.
        let mut st = self.lock();
        let mut drains = st.drains.clone();
        if drained {
            drains.insert(name.to_string());
        } else {
            drains.remove(name);
        }
        let version = now_ms().max(st.drains_version + 1);
        if let Some(s) = &self.store {
            s.set_drains(&drains, version)
                .map_err(|e| format!("storing drain: {e}"))?;
        }
        st.drains = drains;
        st.drains_version = version;
        st.dirty = true;
        st.announce_admin = true;
        drop(st);
        self.inbox.send(Input::Changed);
        let verb = if drained { "drained" } else { "undrained" };
        log::info!("admin: backend {name} {verb}");
        self.event("admin", &format!("backend {name} {verb}"));
        // An admin action is answered only once its record is on disk.
        if let Some(s) = &self.store {
            store_warn("flush", s.flush());
        }
        Ok(())
    }

    /// The peer's drain set, when newer than ours (last writer wins).
    pub fn adopt_drains(&self, from: &str, drains: BTreeSet<String>, version: u64) {
        let mut st = self.lock();
        if version <= st.drains_version {
            return;
        }
        if st.drains != drains {
            log::info!("admin: drains {drains:?} from {from}");
            if let Some(s) = &self.store {
                store_warn("drains", s.set_drains(&drains, version));
            }
            st.dirty = true;
            drop(st);
            self.event("admin", &format!("drains {drains:?} from {from}"));
            st = self.lock();
        } else if let Some(s) = &self.store {
            store_warn("drains", s.set_drains(&drains, version));
        }
        st.drains = drains;
        st.drains_version = version;
    }
}

impl Admin for Ctl {
    fn status(&self) -> StatusReport {
        report(self)
    }
    fn drain(&self, backend: &str) -> Result<(), String> {
        self.set_drain(backend, true)
    }
    fn undrain(&self, backend: &str) -> Result<(), String> {
        self.set_drain(backend, false)
    }
    fn reload(&self) -> Result<String, String> {
        Ctl::reload(self)
    }
    fn failover(&self) -> Result<String, String> {
        let role = self.lock().role;
        if role != Role::Director {
            return Err(format!("this node is {role}, not the director"));
        }
        self.inbox.send(Input::Failover);
        Ok("failover requested".into())
    }
    fn pair_offer(&self) -> Result<String, String> {
        // A third box must not take a live peer's place.
        if let Some(p) = self.lock().peers.iter().find(|p| p.alive) {
            return Err(format!(
                "the pair is complete: its peer {} is up; a pairing code is offered only \
                 while the other box is missing",
                p.addr
            ));
        }
        let grant = self.pair_grant()?;
        let code = crate::appliance::setup::setup_code().map_err(|e| e.to_string())?;
        let shown = format!("{}-{}", &code[..4], &code[4..]);
        lock_pairing(self).offer(Instant::now(), &code);
        self.event(
            "admin",
            &format!(
                "pairing code offered for {} (valid 10 minutes, once)",
                grant.node
            ),
        );
        Ok(format!(
            "pairing code {shown}: enter it on the setup page of the box that joins as {} \
             within 10 minutes; it works once",
            grant.node
        ))
    }
    fn upgrade(&self, archive: &[u8]) -> Result<String, String> {
        // Refused, it writes nothing; installed, the box was booted from a
        // slot by the appliance's init, which reboots on SIGTERM.
        let r = crate::appliance::install_upgrade(archive);
        match &r {
            Ok(msg) => {
                self.event("admin", &format!("upgrade: {msg}"));
                crate::appliance::reboot_soon(std::time::Duration::from_secs(1));
            }
            Err(e) => self.event("admin", &format!("upgrade refused: {e}")),
        }
        r
    }
    fn pair_exchange(&self, request: &str) -> Result<String, crate::pair::PairError> {
        // Without an offer nothing is logged: requests cost no event.
        if !lock_pairing(self).has_offer(Instant::now()) {
            return Err(crate::pair::PairError::NoOffer);
        }
        let grant = self.pair_grant().map_err(|e| {
            log::error!("pairing: {e}");
            crate::pair::PairError::NoOffer
        })?;
        let r = lock_pairing(self).exchange(Instant::now(), request, &grant);
        match &r {
            Ok(_) => self.event(
                "admin",
                &format!(
                    "pairing: config and key sealed for {}; the code is spent",
                    grant.node
                ),
            ),
            Err(e) => self.event("admin", &format!("pairing exchange refused: {e}")),
        }
        r
    }
}

fn lock_pairing(ctl: &Ctl) -> std::sync::MutexGuard<'_, crate::pair::Sponsor> {
    ctl.pairing.lock().unwrap_or_else(|e| e.into_inner())
}

/// Losing a store write must not stop the cluster: it is logged, and the
/// state stays right in memory.
pub fn store_warn<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) {
    if let Err(e) = r {
        log::warn!("state store ({what}): {e}");
    }
}

pub fn report(ctl: &Ctl) -> StatusReport {
    let dp = ctl.shared.stats();
    let sync = ctl.shared.sync_status();
    let cfg = ctl.config();
    let st = ctl.lock();
    let now = Instant::now();
    let me = cfg.nodes.iter().find(|n| n.name.get_ref() == &st.node);
    let my_addr = me.map(|n| *n.address.get_ref());
    let peers = st
        .peers
        .iter()
        .map(|p| PeerStatus {
            node: st
                .peer_names
                .get(&p.addr)
                .cloned()
                .unwrap_or_else(|| p.addr.to_string()),
            address: p.addr.to_string(),
            role: p.role.to_string(),
            priority: p.priority,
            last_heard_ms: p
                .last_heard
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            term: p.term,
            key: p.key.map(|k| k.as_str().to_string()),
            sync_pos: p.sync_pos,
            sync_batch: p.sync_pos & 0xffff_ffff,
        })
        .collect::<Vec<_>>();
    let vip_holder = if st.role == Role::Director {
        Some(st.node.clone())
    } else {
        peers
            .iter()
            .find(|p| p.role == "director")
            .map(|p| p.node.clone())
    };
    let no_new = no_new_flows(
        &st.peers,
        my_addr.unwrap_or(Ipv4Addr::UNSPECIFIED),
        st.role == Role::Leaving,
    );
    let counters: HashMap<(Ipv4Addr, Ipv4Addr), crate::forward::BackendCounters> =
        dp.backends.iter().cloned().collect();
    let mut backends = Vec::new();
    for svc in &cfg.services {
        let port = *svc.port.get_ref();
        let vip_addr = cfg.vip_of(svc);
        let vip = vip_addr.to_string();
        let id = ServiceId::of(&cfg, svc);
        for d in backend_defs(&cfg, svc, my_addr.unwrap_or(Ipv4Addr::UNSPECIFIED)) {
            let h = st.health.get(&HealthKey {
                service: id,
                backend: d.name.clone(),
            });
            let standing = d.standing(id, &st.health, &st.drains, no_new.contains(&d.addr));
            let c = counters
                .get(&(vip_addr, d.addr))
                .cloned()
                .unwrap_or_default();
            backends.push(BackendStatus {
                name: d.name.clone(),
                address: d.addr.to_string(),
                vip: vip.clone(),
                service: format!("{}/{}", svc.protocol.name(), port),
                healthy: standing.healthy,
                weight: standing.weight,
                configured_weight: d.weight,
                drained: standing.drained,
                fallback: false,
                local: d.local,
                active_connections: c.active,
                total_connections: c.total,
                packets: c.packets,
                bytes: c.bytes,
                check_latency_ms: h.and_then(|h| h.last_latency_ms),
                last_check: h.and_then(|h| h.last_reason.clone()),
            });
        }
        if let Some((addr, _)) = svc
            .fallback
            .as_ref()
            .and_then(|f| config::parse_fallback(f.get_ref()).ok())
        {
            // The data plane sends new flows here only while every regular
            // backend of the service is out, so that is when it is "in use".
            let service = format!("{}/{}", svc.protocol.name(), port);
            let in_use = !backends
                .iter()
                .any(|b| b.vip == vip && b.service == service && b.healthy && b.weight > 0);
            let c = counters.get(&(vip_addr, addr)).cloned().unwrap_or_default();
            backends.push(BackendStatus {
                name: "fallback".into(),
                address: addr.to_string(),
                vip,
                service,
                healthy: in_use,
                weight: u32::from(in_use),
                configured_weight: 1,
                drained: false,
                fallback: true,
                local: addr.is_loopback() || Some(addr) == my_addr,
                active_connections: c.active,
                total_connections: c.total,
                packets: c.packets,
                bytes: c.bytes,
                check_latency_ms: None,
                last_check: None,
            });
        }
    }
    let cnt = &st.counters;
    let mut dropped = BTreeMap::new();
    dropped.insert("auth".to_string(), cnt.dropped_auth);
    dropped.insert("wrong_cluster".to_string(), cnt.dropped_wrong_cluster);
    dropped.insert("replay".to_string(), cnt.dropped_replay);
    dropped.insert("unknown_peer".to_string(), cnt.dropped_unknown_peer);
    dropped.insert("self_echo".to_string(), cnt.dropped_self_echo);
    StatusReport {
        node: st.node.clone(),
        role: st.role.to_string(),
        term: st.term,
        vip: cfg.first_vip().to_string(),
        vips: cfg.vips().iter().map(|v| v.to_string()).collect(),
        vip_holder,
        priority: st.priority,
        effective_priority: st.effective_priority,
        uptime_s: st.started.elapsed().as_secs(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        peers,
        backends,
        heartbeat: HeartbeatStats {
            sent: cnt.sent,
            received: cnt.received,
            dropped,
            unverified: cnt.unverified,
            challenges_sent: cnt.challenges_sent,
            boots_verified: cnt.boots_verified,
        },
        dataplane: DataplaneStats {
            engine: dp.engine.to_string(),
            kernel_flows: dp.kernel_flows as u64,
            kernel_packets: dp.kernel_packets,
            kernel_full: dp.kernel_full,
            kernel_embryonic_lost: dp.kernel_embryonic_lost,
            kernel_scheduled: dp.kernel_scheduled,
            kernel_adopt_lost: dp.kernel_adopt_lost,
            rx_packets: dp.rx_packets,
            tx_packets: dp.tx_packets,
            rx_bytes: dp.rx_bytes,
            local_packets: dp.local_packets,
            vip_conflicts: dp.vip_conflicts,
            connections: dp.connections as u64,
            drops: dp.drops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            tables: [
                ("embryonic", dp.table.embryonic),
                ("established", dp.table.established),
                ("udp", dp.table.udp),
            ]
            .into_iter()
            .map(|(k, t)| {
                let part = TablePart {
                    entries: t.entries as u64,
                    limit: t.limit as u64,
                    evicted: t.evicted,
                    pressure: t.pressure,
                };
                (k.to_string(), part)
            })
            .collect(),
            promoted: dp.table.promoted,
            promote_refused: dp.table.promote_refused,
        },
        sync: SyncStats {
            connections_synced: sync.synced,
            lag_entries: sync.lag_entries,
            lag_ms: sync.lag_ms,
            rejected: sync.rejected,
        },
        events: ctl.store.as_ref().map(|s| s.events(20)).unwrap_or_default(),
        history: ctl.history().snapshot(),
    }
}

/// (backends up, backends total, whether this node's own service is up).
pub fn health_summary(ctl: &Ctl, cfg: &Config, me: Ipv4Addr) -> (u16, u16, bool) {
    let st = ctl.lock();
    let (mut up, mut total, mut own_ok) = (0u16, 0u16, true);
    for svc in &cfg.services {
        let id = ServiceId::of(cfg, svc);
        for d in backend_defs(cfg, svc, me) {
            total = total.saturating_add(1);
            if is_healthy(&st.health, id, &d.name) {
                up = up.saturating_add(1);
            } else if d.local {
                own_ok = false;
            }
        }
    }
    (up, total, own_ok)
}

/// "web2 (198.18.0.2)" for the event log, which already says "peer".
fn peer_label(ctl: &Ctl, addr: Ipv4Addr) -> String {
    match ctl.lock().peer_names.get(&addr) {
        Some(name) => format!("{name} ({addr})"),
        None => addr.to_string(),
    }
}

/// Logs and records one election event; a role change comes back as
/// (from, to) for the handover machine.
pub fn handle_event(ctl: &Ctl, shared: &Shared, ev: Event) -> Option<(Role, Role)> {
    match ev {
        Event::RoleChanged {
            from,
            to,
            term,
            reason,
        } => {
            log::info!("role {from} -> {to} (term {term}): {reason}");
            ctl.event("role", &format!("{from} -> {to} (term {term}): {reason}"));
            if let Some(s) = &ctl.store {
                store_warn("last role", s.set_last_role(&to.to_string(), term));
            }
            return Some((from, to));
        }
        Event::PeerUp { peer } => {
            log::info!("peer {peer} up");
            ctl.event("peer", &format!("{} up", peer_label(ctl, peer)));
        }
        Event::PeerLost { peer } => {
            log::warn!("peer {peer} lost");
            ctl.event("peer", &format!("{} lost", peer_label(ctl, peer)));
        }
        Event::Announce => {
            log::info!("re-announcing the VIP");
            shared.update(|c| c.announce += 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{Dir, CONFIG};
    use super::super::inbox;
    use super::*;
    use crate::dataplane::Control;
    use crate::election::Reason;
    use crate::status::server::Admin;
    use smol::channel::Receiver;

    struct Fixture {
        ctl: Ctl,
        inputs: Receiver<Input>,
        dir: Dir,
    }

    /// web1 of the shared two-node config, with a store.
    fn fixture() -> Fixture {
        let dir = Dir::new(CONFIG);
        let cfg = dir.config();
        let shared = Shared::new(Control {
            holding: Default::default(),
            snapshot: Default::default(),
            announce: 0,
        })
        .unwrap();
        let store = Store::open(&dir.path().join("state")).unwrap();
        let (notify, inputs) = inbox::channel();
        let state = State::starting(&cfg, 0, BTreeSet::new(), 0, Instant::now());
        let ctl = Ctl::new(state, Some(store), shared, cfg, dir.config_path(), notify);
        Fixture { ctl, inputs, dir }
    }

    /// Oldest first.
    fn events(ctl: &Ctl, kind: &str) -> Vec<String> {
        let store = ctl.store.as_ref().unwrap();
        let mut out: Vec<String> = store
            .events(100)
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.message)
            .collect();
        out.reverse();
        out
    }

    #[test]
    fn failover_only_on_the_director() {
        let f = fixture();
        let e = Admin::failover(&f.ctl).unwrap_err();
        assert_eq!(e, "this node is starting, not the director");
        assert!(f.inputs.try_recv().is_err());
        f.ctl.lock().role = Role::Director;
        Admin::failover(&f.ctl).unwrap();
        assert!(matches!(f.inputs.try_recv(), Ok(Input::Failover)));
    }

    #[test]
    fn drains_are_stored_versioned_and_announced() {
        let f = fixture();
        assert_eq!(
            f.ctl.set_drain("nope", true).unwrap_err(),
            "no backend named \"nope\""
        );
        f.ctl.lock().announce_admin = false;
        f.ctl.set_drain("web2", true).unwrap();
        let v1 = f.ctl.lock().drains_version;
        f.ctl.set_drain("web2", false).unwrap();
        f.ctl.set_drain("web1", true).unwrap();
        let st = f.ctl.lock();
        // Versions grow even within one millisecond: the peer keeps the
        // newest set by them.
        assert!(st.drains_version >= v1 + 2);
        assert_eq!(st.drains, BTreeSet::from(["web1".to_string()]));
        assert!(st.announce_admin && st.dirty);
        drop(st);
        let store = f.ctl.store.as_ref().unwrap();
        assert_eq!(store.drains(), BTreeSet::from(["web1".to_string()]));
        assert!(matches!(f.inputs.try_recv(), Ok(Input::Changed)));
        assert_eq!(
            events(&f.ctl, "admin"),
            [
                "backend web2 drained",
                "backend web2 undrained",
                "backend web1 drained"
            ]
        );
    }

    #[test]
    fn the_peers_drains_are_taken_when_newer() {
        let f = fixture();
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        f.ctl.adopt_drains("web2", set(&["web1"]), 10);
        assert_eq!(f.ctl.lock().drains, set(&["web1"]));
        // Older or the same version: ours stands.
        f.ctl.adopt_drains("web2", set(&[]), 10);
        f.ctl.adopt_drains("web2", set(&["web2"]), 9);
        assert_eq!(f.ctl.lock().drains, set(&["web1"]));
        // The same set under a newer version: taken, no new event.
        f.ctl.adopt_drains("web2", set(&["web1"]), 11);
        assert_eq!(f.ctl.lock().drains_version, 11);
        assert_eq!(events(&f.ctl, "admin"), ["drains {\"web1\"} from web2"]);
        assert_eq!(f.ctl.store.as_ref().unwrap().drains_version(), 11);
    }

    #[test]
    fn reload_queues_a_good_config_and_refuses_the_rest() {
        let f = fixture();
        let path = f.dir.config_path();
        // Unchanged: queued for the loop.
        assert!(f.ctl.reload().unwrap().contains("1 services"));
        assert!(matches!(f.inputs.try_recv(), Ok(Input::Config(_))));
        // Broken: nothing queued, the reason returned and recorded.
        std::fs::write(&path, "[cluster\n").unwrap();
        assert!(f.ctl.reload().is_err());
        assert!(f.inputs.try_recv().is_err());
        // A change that takes a restart.
        std::fs::write(&path, CONFIG.replace("vrid = 1", "vrid = 2")).unwrap();
        let e = f.ctl.reload().unwrap_err();
        assert!(e.contains("[cluster] changed"), "{e}");
        assert!(f.inputs.try_recv().is_err());
        let ev = events(&f.ctl, "config");
        assert!(ev[0].starts_with("reload of ") && ev[0].ends_with("failed; nothing changed"));
        assert_eq!(ev[1], "reload refused: [cluster] changed; restart to apply");
    }

    #[test]
    fn health_summary_counts_and_flags_our_own_service() {
        let f = fixture();
        let cfg = f.ctl.config();
        let me = Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!(health_summary(&f.ctl, &cfg, me), (2, 2, true));
        let id = ServiceId::of(&cfg, &cfg.services[0]);
        let down = crate::health::HealthState {
            up: false,
            last_latency_ms: None,
            last_reason: Some("refused".into()),
            checks: 1,
            failures: 1,
        };
        let key = |b: &str| HealthKey {
            service: id,
            backend: b.into(),
        };
        f.ctl.lock().health.insert(key("web2"), down.clone());
        assert_eq!(health_summary(&f.ctl, &cfg, me), (1, 2, true));
        f.ctl.lock().health.insert(key("web1"), down);
        assert_eq!(health_summary(&f.ctl, &cfg, me), (0, 2, false));
    }

    #[test]
    fn no_pairing_code_while_the_peer_is_up() {
        let f = fixture();
        let mut peer = crate::election::PeerInfo {
            addr: Ipv4Addr::new(198, 18, 0, 2),
            role: Role::Standby,
            alive: true,
            last_heard: None,
            priority: 100,
            effective_priority: 100,
            term: 1,
            sync_pos: 0,
            boot_id: 1,
            backends_up: 0,
            backends_total: 0,
            key: None,
        };
        f.ctl.lock().peers = vec![peer.clone()];
        let e = Admin::pair_offer(&f.ctl).unwrap_err();
        assert!(e.starts_with("the pair is complete"), "{e}");
        peer.alive = false;
        f.ctl.lock().peers = vec![peer];
        assert!(Admin::pair_offer(&f.ctl)
            .unwrap()
            .starts_with("pairing code "));
    }

    #[test]
    fn role_changes_are_recorded_and_handed_back() {
        let f = fixture();
        let ev = Event::RoleChanged {
            from: Role::Starting,
            to: Role::Director,
            term: 3,
            reason: Reason::NoDirectorHeard,
        };
        let got = handle_event(&f.ctl, &f.ctl.shared, ev);
        assert_eq!(got, Some((Role::Starting, Role::Director)));
        let store = f.ctl.store.as_ref().unwrap();
        assert_eq!(store.last_role(), Some(("director".to_string(), 3)));
        let peer = Ipv4Addr::new(198, 18, 0, 2);
        assert_eq!(
            handle_event(&f.ctl, &f.ctl.shared, Event::PeerUp { peer }),
            None
        );
        assert_eq!(events(&f.ctl, "peer"), ["web2 (198.18.0.2) up"]);
    }
}
