//! `duet run`: sets the host up, starts the data plane, the health checks and
//! the status server, then drives the election over UDP until told to stop,
//! and puts the host back as it found it.
use crate::config::{self, CheckKindName, Config};
use crate::election::{self, Election, Event, Role};
use crate::forward::{BackendSnap, Scheduler, ServiceSnap, Snapshot};
use crate::health::{self, CheckKind, CheckSpec, Monitor, Target, Transition};
use crate::status::model::*;
use crate::status::server::{Admin, ServerConfig, StatusServer};
use crate::store::Store;
use crate::wire::frame::virtual_mac;
use crate::wire::heartbeat::HeartbeatRepr;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::dataplane::{self, Control, Shared};
use super::{neigh, netlink, packet, ping, signals, sysctl, tun::Tun};

const TUN_NAME: &str = "duet0";

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// Everything the status server and admin actions read or change, owned by
/// the control plane and shared under one short-held lock.
struct State {
    node: String,
    vip: Ipv4Addr,
    priority: u8,
    effective_priority: u8,
    role: Role,
    term: u64,
    peers: Vec<election::PeerInfo>,
    peer_names: HashMap<Ipv4Addr, String>,
    counters: election::Counters,
    drains: BTreeSet<String>,
    health: BTreeMap<String, health::HealthState>,
    started: Instant,
    failover_requested: bool,
    /// Set whenever something that shapes the backend snapshot changed.
    dirty: bool,
}

struct Ctl {
    state: Mutex<State>,
    store: Option<Store>,
    shared: Arc<Shared>,
    cfg: Arc<Config>,
    wake: AtomicBool,
}

impl Ctl {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, kind: &str, message: &str) {
        if let Some(s) = &self.store {
            store_warn("event log", s.log_event(kind, message));
        }
    }

    fn backend_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for s in &self.cfg.services {
            if s.serve_local {
                for n in &self.cfg.nodes {
                    names.insert(n.name.get_ref().clone());
                }
            }
            for b in &s.backends {
                names.insert(b.get_ref().name());
            }
        }
        names
    }

    fn set_drain(&self, name: &str, drained: bool) -> Result<(), String> {
        if !self.backend_names().contains(name) {
            return Err(format!("no backend named {name:?}"));
        }
        if let Some(s) = &self.store {
            s.set_drained(name, drained)
                .map_err(|e| format!("storing drain: {e}"))?;
        }
        {
            let mut st = self.lock();
            if drained {
                st.drains.insert(name.to_string());
            } else {
                st.drains.remove(name);
            }
            st.dirty = true;
        }
        let verb = if drained { "drained" } else { "undrained" };
        log::info!("admin: backend {name} {verb}");
        self.event("admin", &format!("backend {name} {verb}"));
        Ok(())
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
    fn failover(&self) -> Result<String, String> {
        let mut st = self.lock();
        if st.role != Role::Director {
            return Err(format!("this node is {}, not the director", st.role));
        }
        st.failover_requested = true;
        self.wake.store(true, Ordering::Release);
        Ok("failover requested".into())
    }
}

/// Losing a store write must not stop the cluster: it is logged, and the
/// state stays right in memory.
fn store_warn<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) {
    if let Err(e) = r {
        log::warn!("state store ({what}): {e}");
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn health_key(port: u16, name: &str) -> String {
    format!("{port}/{name}")
}

/// One backend of one service as configured, before health and drains.
struct BackendDef {
    name: String,
    addr: Ipv4Addr,
    weight: u32,
    local: bool,
}

fn backend_defs(cfg: &Config, svc: &config::Service, me: Ipv4Addr) -> Vec<BackendDef> {
    let mut out = Vec::new();
    if svc.serve_local {
        for n in &cfg.nodes {
            out.push(BackendDef {
                name: n.name.get_ref().clone(),
                addr: *n.address.get_ref(),
                weight: n.weight,
                local: *n.address.get_ref() == me,
            });
        }
    }
    for b in &svc.backends {
        let b = b.get_ref();
        out.push(BackendDef {
            name: b.name(),
            addr: b.address(),
            weight: b.weight(),
            local: false,
        });
    }
    out
}

fn build_snapshot(
    cfg: &Config,
    me: Ipv4Addr,
    own_mac: [u8; 6],
    macs: &HashMap<Ipv4Addr, [u8; 6]>,
    st: &State,
    generation: u64,
) -> Snapshot {
    let mut services = Vec::new();
    for svc in &cfg.services {
        let port = *svc.port.get_ref();
        let quiescent = svc.check.as_ref().is_none_or(|c| c.quiescent);
        let mut backends = Vec::new();
        for d in backend_defs(cfg, svc, me) {
            let healthy = st
                .health
                .get(&health_key(port, &d.name))
                .is_none_or(|h| h.up);
            let mac = if d.local {
                Some(own_mac)
            } else {
                macs.get(&d.addr).copied()
            };
            let drained = st.drains.contains(&d.name);
            let weight = if drained || !healthy { 0 } else { d.weight };
            backends.push(BackendSnap {
                name: d.name,
                addr: d.addr,
                mac: mac.unwrap_or([0; 6]),
                weight,
                // A remote backend whose MAC is unknown cannot be reached yet.
                up: mac.is_some() && (healthy || quiescent),
                local: d.local,
                fallback: false,
            });
        }
        if let Some(f) = &svc.fallback {
            if let Ok((addr, _)) = config::parse_fallback(f.get_ref()) {
                let local = addr.is_loopback() || addr == me;
                let mac = if local {
                    Some(own_mac)
                } else {
                    macs.get(&addr).copied()
                };
                backends.push(BackendSnap {
                    name: "fallback".into(),
                    addr: if local { me } else { addr },
                    mac: mac.unwrap_or([0; 6]),
                    weight: 1,
                    up: mac.is_some(),
                    local,
                    fallback: true,
                });
            }
        }
        services.push(ServiceSnap {
            proto: svc.protocol.number(),
            port,
            scheduler: svc
                .scheduler
                .get_ref()
                .parse::<Scheduler>()
                .unwrap_or(Scheduler::Wlc),
            persistence: svc.persistence.map(|d| d.0),
            persist_mask: svc.persistence_netmask.unwrap_or(Ipv4Addr::BROADCAST),
            backends,
        });
    }
    Snapshot {
        generation,
        services,
    }
}

fn check_spec(c: &config::Check, port: u16) -> CheckSpec {
    let kind = match c.kind {
        CheckKindName::Http => CheckKind::Http {
            request: c.request.clone().unwrap_or_else(|| "/".into()),
            receive: c.receive.clone(),
            host: c.host.clone(),
            expect_status: c.status,
        },
        CheckKindName::Tcp => CheckKind::Tcp,
        CheckKindName::Exec => CheckKind::Exec {
            command: c.command.clone().unwrap_or_default(),
        },
        CheckKindName::None => CheckKind::None,
    };
    CheckSpec {
        kind,
        port: c.port.unwrap_or(port),
        interval: c.interval.0,
        timeout: c.timeout.0,
        rise: c.rise,
        fall: c.fall,
    }
}

fn report(ctl: &Ctl) -> StatusReport {
    let dp = ctl.shared.stats();
    let st = ctl.lock();
    let now = Instant::now();
    let me = ctl.cfg.nodes.iter().find(|n| n.name.get_ref() == &st.node);
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
    let counters: HashMap<Ipv4Addr, crate::forward::BackendCounters> =
        dp.backends.iter().cloned().collect();
    let mut backends = Vec::new();
    for svc in &ctl.cfg.services {
        let port = *svc.port.get_ref();
        let quiescent = svc.check.as_ref().is_none_or(|c| c.quiescent);
        for d in backend_defs(&ctl.cfg, svc, my_addr.unwrap_or(Ipv4Addr::UNSPECIFIED)) {
            let h = st.health.get(&health_key(port, &d.name));
            let healthy = h.is_none_or(|h| h.up);
            let drained = st.drains.contains(&d.name);
            let c = counters.get(&d.addr).cloned().unwrap_or_default();
            let _ = quiescent;
            backends.push(BackendStatus {
                name: d.name.clone(),
                address: d.addr.to_string(),
                service: format!("{}/{}", svc.protocol.name(), port),
                healthy,
                weight: if drained || !healthy { 0 } else { d.weight },
                configured_weight: d.weight,
                drained,
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
    }
    let cnt = &st.counters;
    let mut dropped = BTreeMap::new();
    dropped.insert("auth".to_string(), cnt.dropped_auth);
    dropped.insert("wrong_cluster".to_string(), cnt.dropped_wrong_cluster);
    dropped.insert("replay".to_string(), cnt.dropped_replay);
    dropped.insert("unknown_peer".to_string(), cnt.dropped_unknown_peer);
    StatusReport {
        node: st.node.clone(),
        role: st.role.to_string(),
        term: st.term,
        vip: st.vip.to_string(),
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
        },
        dataplane: DataplaneStats {
            rx_packets: dp.rx_packets,
            tx_packets: dp.tx_packets,
            rx_bytes: dp.rx_bytes,
            connections: dp.connections as u64,
            drops: dp.drops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        },
        sync: SyncStats::default(),
        events: ctl.store.as_ref().map(|s| s.events(20)).unwrap_or_default(),
    }
}

/// Host changes made at start, undone at exit.
struct HostSetup {
    sysctls: sysctl::Saved,
    vip: Ipv4Addr,
    iface: String,
    gro_was_on: Option<bool>,
}

impl HostSetup {
    fn apply(cfg: &Config) -> Result<HostSetup, DaemonError> {
        let vip = *cfg.cluster.vip.get_ref();
        let iface = cfg.cluster.interface.clone();
        let mut h = HostSetup {
            sysctls: sysctl::Saved::default(),
            vip,
            iface: iface.clone(),
            gro_was_on: None,
        };
        // ARP settings first, so the kernel never answers for the VIP once it is on lo.
        sysctl::arp_settings(&mut h.sysctls, &iface).map_err(io("setting ARP sysctls"))?;
        netlink::add_addr("lo", vip, 32).map_err(io("adding the VIP to lo"))?;
        match packet::set_gro(&iface, false) {
            Ok(was) => h.gro_was_on = Some(was),
            Err(e) => log::warn!("cannot turn GRO off on {iface}: {e}"),
        }
        Ok(h)
    }

    fn local_path(&mut self) -> Result<(), DaemonError> {
        // Packets from the TUN device carry client sources that route via the
        // LAN: reverse-path filtering must not drop them.
        for dev in ["all", TUN_NAME] {
            self.sysctls
                .set(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")
                .map_err(io("setting rp_filter"))?;
        }
        Ok(())
    }

    fn undo(&mut self) {
        if let Err(e) = netlink::del_addr("lo", self.vip, 32) {
            log::warn!("removing VIP from lo: {e}");
        }
        if let Some(true) = self.gro_was_on {
            let _ = packet::set_gro(&self.iface, true);
        }
        self.sysctls.restore();
    }
}

pub fn run(cfg: Config, node_name: Option<&str>) -> Result<(), DaemonError> {
    let cfg = Arc::new(cfg);
    let local = netlink::local_ipv4().map_err(io("listing local addresses"))?;
    let me_idx = cfg
        .find_node(node_name, &local)
        .map_err(DaemonError::Config)?;
    let me = &cfg.nodes[me_idx];
    let key = config::read_secret(cfg.cluster.key_file.get_ref())
        .map_err(|e| DaemonError::Config(format!("key file: {e}")))?;
    let token = match &cfg.cluster.admin_token_file {
        Some(p) => Some(
            String::from_utf8_lossy(
                &config::read_secret(p.get_ref())
                    .map_err(|e| DaemonError::Config(format!("admin token file: {e}")))?,
            )
            .into_owned(),
        ),
        None => None,
    };
    let vmac = virtual_mac(*cfg.cluster.vrid.get_ref());
    let iface = cfg.cluster.interface.clone();
    let link = netlink::link(&iface).map_err(io(format!("interface {iface}")))?;

    let store = match Store::open(&cfg.cluster.state_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!(
                "state store {}: {e}; running without persistent state",
                cfg.cluster.state_dir.display()
            );
            None
        }
    };
    let drains = store.as_ref().map(|s| s.drains()).unwrap_or_default();
    let stored_health = store.as_ref().map(|s| s.health()).unwrap_or_default();
    if let Some(s) = &store {
        log::info!("boot {} of node {}", s.boot_count(), me.name.get_ref());
        store_warn(
            "event log",
            s.log_event(
                "start",
                &format!("duet {} started", env!("CARGO_PKG_VERSION")),
            ),
        );
    }

    signals::install();
    let mut host = HostSetup::apply(&cfg)?;
    let result = run_inner(
        &cfg,
        me_idx,
        key,
        token,
        vmac,
        link,
        store,
        drains,
        stored_health,
        &mut host,
    );
    host.undo();
    log::info!("stopped; host settings restored");
    result
}

#[allow(clippy::too_many_arguments)]
fn run_inner(
    cfg: &Arc<Config>,
    me_idx: usize,
    key: Vec<u8>,
    token: Option<String>,
    vmac: [u8; 6],
    link: netlink::Link,
    store: Option<Store>,
    drains: BTreeSet<String>,
    stored_health: BTreeMap<String, bool>,
    host: &mut HostSetup,
) -> Result<(), DaemonError> {
    let me = &cfg.nodes[me_idx];
    let my_addr = *me.address.get_ref();
    let vip = *cfg.cluster.vip.get_ref();

    let tun = Tun::open(TUN_NAME).map_err(io("creating TUN device duet0"))?;
    netlink::set_up(TUN_NAME).map_err(io("bringing duet0 up"))?;
    host.local_path()?;
    let sock = packet::PacketSocket::open(link.index, vmac).map_err(io("opening packet socket"))?;

    let state = State {
        node: me.name.get_ref().clone(),
        vip,
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
        health: BTreeMap::new(),
        started: Instant::now(),
        failover_requested: false,
        dirty: true,
    };
    let mut generation = 1;
    let macs = neigh::read(&cfg.cluster.interface);
    let snapshot = Arc::new(build_snapshot(
        cfg, my_addr, link.mac, &macs, &state, generation,
    ));
    let shared = Shared::new(Control {
        active: false,
        snapshot,
        announce: 0,
    });
    let dp_thread = dataplane::spawn(
        dataplane::Params {
            vip,
            vmac,
            own_mac: link.mac,
            max_connections: cfg.cluster.max_connections,
        },
        sock,
        tun,
        shared.clone(),
    )
    .map_err(io("starting the data plane"))?;

    let ctl = Arc::new(Ctl {
        state: Mutex::new(state),
        store,
        shared: shared.clone(),
        cfg: cfg.clone(),
        wake: AtomicBool::new(false),
    });

    // Health checks: both nodes run them, so a new director starts warm.
    let mut targets = Vec::new();
    for svc in &cfg.services {
        let port = *svc.port.get_ref();
        let Some(check) = &svc.check else { continue };
        for d in backend_defs(cfg, svc, my_addr) {
            let k = health_key(port, &d.name);
            targets.push(Target {
                initial_up: stored_health.get(&k).copied(),
                name: k,
                addr: d.addr,
                spec: check_spec(check, port),
            });
        }
    }
    let monitor = if targets.is_empty() {
        None
    } else {
        let c = ctl.clone();
        Some(Monitor::start(
            targets,
            Arc::new(move |name: &str, t: &Transition| {
                let state = if t.up { "up" } else { "down" };
                c.event("health", &format!("{name} {state}: {}", t.reason));
                if let Some(s) = &c.store {
                    store_warn("health state", s.set_health(name, t.up));
                }
                c.lock().dirty = true;
                c.wake.store(true, Ordering::Release);
            }),
        ))
    };

    let server = match StatusServer::start(
        ServerConfig {
            listen: cfg.cluster.status_listen,
            token,
            workers: 4,
            max_body: 4096,
        },
        ctl.clone(),
    ) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("status server on {}: {e}", cfg.cluster.status_listen);
            None
        }
    };

    let hb_port = cfg.heartbeat.port;
    let udp = smol::block_on(async_net::UdpSocket::bind(SocketAddr::from((
        my_addr, hb_port,
    ))))
    .map_err(io(format!("binding heartbeat socket {my_addr}:{hb_port}")))?;
    let peers: Vec<Ipv4Addr> = cfg
        .nodes
        .iter()
        .filter(|n| *n.address.get_ref() != my_addr)
        .map(|n| *n.address.get_ref())
        .collect();
    let boot_id = unix_ms();
    let now = Instant::now();
    let mut el = Election::new(
        election::Params {
            me: my_addr,
            peers: peers.clone(),
            cluster_id: cluster_id(vip, *cfg.cluster.vrid.get_ref()),
            boot_id,
            priority: me.priority,
            interval: cfg.heartbeat.interval.get_ref().0,
            dead_after: cfg.heartbeat.dead_after.get_ref().0,
            preempt: cfg.heartbeat.preempt,
            ping_configured: !cfg.heartbeat.ping.is_empty(),
        },
        now,
    );
    log::info!(
        "node {} ({my_addr}) priority {} starting; VIP {vip} on {} via {}",
        me.name.get_ref(),
        me.priority,
        cfg.cluster.interface,
        dataplane::fmt_mac(&vmac)
    );

    let pinger = if cfg.heartbeat.ping.is_empty() {
        None
    } else {
        match ping::Pinger::start(cfg.heartbeat.ping.clone()) {
            Ok(p) => Some(p),
            Err(e) => {
                log::error!("ping nodes: cannot open an ICMP socket: {e}");
                None
            }
        }
    };
    let mut ping_state = ping::UNKNOWN;

    let mut macs = macs;
    let mut last_refresh = Instant::now() - Duration::from_secs(10);
    let mut leaving_since: Option<Instant> = None;
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(256);
    smol::block_on(async {
        loop {
            let now = Instant::now();
            if signals::terminating() && leaving_since.is_none() {
                log::info!("terminating: handing over");
                el.leave(now);
                leaving_since = Some(now);
            }
            if let Some(t) = leaving_since {
                // Two intervals let the Leaving heartbeat reach the peer even if one is lost.
                if now.duration_since(t) > cfg.heartbeat.interval.get_ref().0 * 2 {
                    break;
                }
            }
            if let Some(p) = &pinger {
                let v = p.state.load(Ordering::Acquire);
                if v != ping_state && v != ping::UNKNOWN {
                    el.set_ping_ok(now, v == ping::REACHABLE);
                }
                ping_state = v;
            }
            if ctl.wake.swap(false, Ordering::AcqRel) {
                let req = std::mem::take(&mut ctl.lock().failover_requested);
                if req {
                    if el.failover(now) {
                        ctl.event("admin", "planned failover");
                    } else {
                        log::warn!("failover requested but no live eligible peer");
                    }
                }
            }
            if now.duration_since(last_refresh) >= Duration::from_secs(1) {
                last_refresh = now;
                let fresh = neigh::read(&cfg.cluster.interface);
                for p in &peers {
                    if !fresh.contains_key(p) {
                        neigh::poke(*p);
                    }
                }
                for svc in &cfg.services {
                    for b in &svc.backends {
                        if !fresh.contains_key(&b.get_ref().address()) {
                            neigh::poke(b.get_ref().address());
                        }
                    }
                }
                if fresh != macs {
                    macs = fresh;
                    ctl.lock().dirty = true;
                }
                if let Some(m) = &monitor {
                    let states = m.states();
                    let mut st = ctl.lock();
                    for (k, s) in states {
                        st.health.insert(k, s);
                    }
                }
                let (up, total, own_ok) = health_summary(&ctl, cfg, my_addr);
                el.set_health_summary(up, total);
                el.set_service_ok(now, own_ok);
            }
            {
                let mut st = ctl.lock();
                if st.dirty {
                    st.dirty = false;
                    generation += 1;
                    let snap = Arc::new(build_snapshot(
                        cfg, my_addr, link.mac, &macs, &st, generation,
                    ));
                    drop(st);
                    shared.update(|c| c.snapshot = snap);
                }
            }

            let deadline = el.poll_timeout().min(now + Duration::from_millis(50));
            let got = smol::future::or(async { Some(udp.recv_from(&mut buf).await) }, async {
                smol::Timer::at(deadline).await;
                None
            })
            .await;
            let now = Instant::now();
            if let Some(r) = got {
                match r {
                    Ok((n, from)) => match HeartbeatRepr::parse(&buf[..n], &key) {
                        Ok(msg) => {
                            if let Err(d) = el.handle_heartbeat(now, &msg) {
                                log::debug!("heartbeat from {from} dropped: {d:?}");
                            }
                        }
                        Err(e) => {
                            el.note_auth_failure();
                            log::debug!("heartbeat from {from} rejected: {e}");
                            warn_rejected(from, &e.to_string());
                        }
                    },
                    Err(e) => log::warn!("heartbeat receive: {e}"),
                }
            }
            el.handle_timeout(now);
            while let Some((dst, msg)) = el.poll_transmit() {
                out.clear();
                msg.emit(&key, &mut out);
                if let Err(e) = udp.send_to(&out, SocketAddr::from((dst, hb_port))).await {
                    log::debug!("heartbeat to {dst}: {e}");
                }
            }
            while let Some(ev) = el.poll_event() {
                handle_event(&ctl, &shared, ev);
            }
            let mut st = ctl.lock();
            st.role = el.role();
            st.term = el.term();
            st.peers = el.peers();
            st.counters = el.counters().clone();
            st.effective_priority = el.effective_priority();
        }
    });

    shared.update(|c| c.active = false);
    shared.stop();
    let _ = dp_thread.join();
    if let Some(s) = server {
        s.stop();
    }
    if let Some(m) = monitor {
        m.stop();
    }
    if let Some(s) = &ctl.store {
        store_warn("last role", s.set_last_role("leaving", el.term()));
        store_warn("event log", s.log_event("stop", "duet stopped"));
        store_warn("flush", s.flush());
    }
    Ok(())
}

/// Rejected heartbeats are logged at warn, at most once a minute per source.
fn warn_rejected(from: SocketAddr, why: &str) {
    static LAST: Mutex<Vec<(SocketAddr, Instant)>> = Mutex::new(Vec::new());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match last.iter_mut().find(|(a, _)| *a == from) {
        Some((_, t)) if now.duration_since(*t) < Duration::from_secs(60) => {}
        Some((_, t)) => {
            *t = now;
            log::warn!("rejected heartbeat from {from}: {why}");
        }
        None => {
            if last.len() < 64 {
                last.push((from, now));
            }
            log::warn!("rejected heartbeat from {from}: {why}");
        }
    }
}

fn cluster_id(vip: Ipv4Addr, vrid: u8) -> u32 {
    u32::from(vip) ^ (u32::from(vrid) << 24)
}

/// (backends up, backends total, whether this node's own service is up).
fn health_summary(ctl: &Ctl, cfg: &Config, me: Ipv4Addr) -> (u16, u16, bool) {
    let st = ctl.lock();
    let (mut up, mut total, mut own_ok) = (0u16, 0u16, true);
    for svc in &cfg.services {
        let port = *svc.port.get_ref();
        for d in backend_defs(cfg, svc, me) {
            let healthy = st
                .health
                .get(&health_key(port, &d.name))
                .is_none_or(|h| h.up);
            total = total.saturating_add(1);
            if healthy {
                up = up.saturating_add(1);
            } else if d.local {
                own_ok = false;
            }
        }
    }
    (up, total, own_ok)
}

fn handle_event(ctl: &Ctl, shared: &Shared, ev: Event) {
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
            shared.update(|c| c.active = to == Role::Director);
        }
        Event::PeerUp { peer } => {
            log::info!("peer {peer} up");
            ctl.event("peer", &format!("peer {peer} up"));
        }
        Event::PeerLost { peer } => {
            log::warn!("peer {peer} lost");
            ctl.event("peer", &format!("peer {peer} lost"));
        }
        Event::Announce => {
            log::info!("re-announcing the VIP");
            shared.update(|c| c.announce += 1);
        }
    }
}
