//! `duet run`: sets the host up, starts the data plane, the health checks and
//! the status server, then drives the election over UDP until told to stop,
//! and puts the host back as it found it.
use crate::config::{self, Config};
use crate::election::{self, Election, Role};
use crate::health::{HealthState, Monitor, Target, Transition};
use crate::status::server::{ServerConfig, StatusServer};
use crate::store::Store;
use crate::wire::admin::AdminState;
use crate::wire::frame::virtual_mac;
use crate::wire::heartbeat::{HeartbeatError, HeartbeatRepr};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ctl::{handle_event, health_summary, store_warn, unix_ms, Ctl, State};
use super::dataplane::{self, Control, Shared};
use super::host::HostSetup;
use super::pool::{backend_defs, build_snapshot, check_spec, health_key, Inputs};
use super::{neigh, netlink, packet, ping, signals, syncer, tun::Tun};

pub const TUN_NAME: &str = "duet0";

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

pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
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
    let drains_version = store.as_ref().map_or(0, |s| s.drains_version());
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
        (drains, drains_version),
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
    drains: (BTreeSet<String>, u64),
    stored_health: BTreeMap<String, bool>,
    host: &mut HostSetup,
) -> Result<(), DaemonError> {
    let me = &cfg.nodes[me_idx];
    let my_addr = *me.address.get_ref();
    let vip = *cfg.cluster.vip.get_ref();

    for svc in &cfg.services {
        let port = *svc.port.get_ref();
        if let Some((addr, Some(fport))) = svc
            .fallback
            .as_ref()
            .and_then(|f| config::parse_fallback(f.get_ref()).ok())
        {
            if fport != port {
                log::warn!(
                    "service {port}: fallback {addr}:{fport} — direct routing keeps the \
                     destination port, so the fallback server must answer on port {port} \
                     (as IPVS does in gate mode)"
                );
            }
        }
    }
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
        drains: drains.0,
        drains_version: drains.1,
        announce_admin: true,
        health: BTreeMap::new(),
        started: Instant::now(),
        failover_requested: false,
        dirty: true,
    };
    let mut generation = 1;
    let macs = neigh::read(&cfg.cluster.interface);
    let silent: BTreeSet<Ipv4Addr> = peers_of(cfg, my_addr).into_iter().collect();
    let snapshot = Arc::new(build_snapshot(
        cfg,
        &Inputs {
            me: my_addr,
            own_mac: link.mac,
            macs: &macs,
            health: &state.health,
            drains: &state.drains,
            silent_peers: &silent,
        },
        generation,
    ));
    let shared = Shared::new(Control {
        active: false,
        snapshot,
        announce: 0,
    })
    .map_err(io("creating the data plane's eventfd"))?;
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

    let boot_id = unix_ms();
    let sync_thread = match peers_of(cfg, my_addr).first() {
        Some(peer) => Some(
            syncer::spawn(
                syncer::Params {
                    bind: SocketAddr::from((my_addr, cfg.cluster.sync_port)),
                    peer: SocketAddr::from((*peer, cfg.cluster.sync_port)),
                    key: key.clone(),
                    boot_id,
                },
                shared.clone(),
            )
            .map_err(io("starting connection sync"))?,
        ),
        None => None,
    };

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
                // The snapshot is rebuilt from `health`: the verdict goes in
                // now, the details (latency, counts) with the next refresh.
                let mut st = c.lock();
                st.health
                    .entry(name.to_string())
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
    let peers = peers_of(cfg, my_addr);
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
        let hb = &cfg.heartbeat;
        match ping::Pinger::start(
            hb.ping.clone(),
            hb.interval.get_ref().0,
            hb.dead_after.get_ref().0 / 2,
        ) {
            Ok(p) => Some(p),
            Err(e) => {
                log::error!("ping nodes: cannot open an ICMP socket: {e}");
                None
            }
        }
    };
    let mut ping_state = ping::UNKNOWN;

    let mut macs = macs;
    let mut wanted_macs: Vec<Ipv4Addr> = peers.clone();
    for svc in &cfg.services {
        wanted_macs.extend(svc.backends.iter().map(|b| b.get_ref().address()));
        if let Some((a, _)) = svc
            .fallback
            .as_ref()
            .and_then(|f| config::parse_fallback(f.get_ref()).ok())
        {
            if !a.is_loopback() && a != my_addr {
                wanted_macs.push(a);
            }
        }
    }
    let mut last_refresh = Instant::now() - Duration::from_secs(10);
    let mut leaving_since: Option<Instant> = None;
    let mut handover: Option<PendingHandover> = None;
    let mut step_down: Option<Instant> = None;
    let mut last_admin_sent = Instant::now();
    let cid = cluster_id(vip, *cfg.cluster.vrid.get_ref());
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(256);
    smol::block_on(async {
        loop {
            let now = Instant::now();
            if signals::terminating() && leaving_since.is_none() && handover.is_none() {
                handover = Some(begin_handover(&el, &shared, Handover::Leave, now));
            }
            if let Some(h) = handover {
                if now >= h.deadline || shared.sync_caught_up.load(Ordering::Acquire) {
                    if now >= h.deadline && h.wait_for_sync {
                        log::warn!(
                            "handing over before the standby confirmed the connection table"
                        );
                    }
                    handover = None;
                    match h.kind {
                        Handover::Leave => {
                            log::info!("terminating: handing over");
                            el.leave(now);
                            leaving_since = Some(now);
                        }
                        Handover::Failover => {
                            if el.failover(now) {
                                ctl.event("admin", "planned failover");
                            } else {
                                log::warn!("failover requested but no live eligible peer");
                            }
                        }
                    }
                }
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
                if req && handover.is_none() {
                    handover = Some(begin_handover(&el, &shared, Handover::Failover, now));
                }
            }
            // Learn missing backend MACs quickly; after that, a slow refresh.
            let missing = wanted_macs.iter().any(|a| !macs.contains_key(a));
            let period = if missing {
                Duration::from_millis(100)
            } else {
                Duration::from_secs(1)
            };
            if now.duration_since(last_refresh) >= period {
                last_refresh = now;
                let fresh = neigh::read(&cfg.cluster.interface);
                for a in wanted_macs.iter().filter(|a| !fresh.contains_key(a)) {
                    neigh::poke(*a);
                }
                if fresh != macs {
                    macs = fresh;
                    ctl.lock().dirty = true;
                }
                if let Some(m) = &monitor {
                    let states = m.states();
                    let mut st = ctl.lock();
                    for (k, s) in states {
                        if let Some(old) = st.health.insert(k, s.clone()) {
                            st.dirty |= old.up != s.up;
                        } else {
                            st.dirty = true;
                        }
                    }
                }
            }
            let (up, total, own_ok) = health_summary(&ctl, cfg, my_addr);
            el.set_health_summary(up, total);
            el.set_service_ok(now, own_ok);
            {
                let mut st = ctl.lock();
                if st.dirty {
                    st.dirty = false;
                    generation += 1;
                    let silent: BTreeSet<Ipv4Addr> = st
                        .peers
                        .iter()
                        .filter(|p| !p.alive)
                        .map(|p| p.addr)
                        .collect();
                    let snap = Arc::new(build_snapshot(
                        cfg,
                        &Inputs {
                            me: my_addr,
                            own_mac: link.mac,
                            macs: &macs,
                            health: &st.health,
                            drains: &st.drains,
                            silent_peers: &silent,
                        },
                        generation,
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
                        Err(HeartbeatError::BadType(crate::wire::admin::MSG_TYPE)) => {
                            match AdminState::parse(&buf[..n], &key) {
                                Ok(a) if a.cluster_id == cid && peers.contains(&a.node) => {
                                    let name = ctl.lock().peer_names.get(&a.node).cloned();
                                    ctl.adopt_drains(
                                        &name.unwrap_or_else(|| a.node.to_string()),
                                        a.drains.into_iter().collect(),
                                        a.version,
                                    );
                                }
                                Ok(a) => log::debug!("admin state from {} ignored", a.node),
                                Err(e) => {
                                    el.note_auth_failure();
                                    warn_rejected(from, &e.to_string());
                                }
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
            let announce = std::mem::take(&mut ctl.lock().announce_admin);
            if announce || now.duration_since(last_admin_sent) >= ADMIN_STATE_PERIOD {
                last_admin_sent = now;
                let a = {
                    let st = ctl.lock();
                    AdminState {
                        cluster_id: cid,
                        node: my_addr,
                        version: st.drains_version,
                        drains: st.drains.iter().cloned().collect(),
                    }
                };
                out.clear();
                a.emit(&key, &mut out);
                for p in &peers {
                    if let Err(e) = udp.send_to(&out, SocketAddr::from((*p, hb_port))).await {
                        log::debug!("admin state to {p}: {e}");
                    }
                }
            }
            while let Some(ev) = el.poll_event() {
                if handle_event(&ctl, &shared, ev) {
                    step_down = Some(now + STEP_DOWN_GRACE);
                }
            }
            if let Some(t) = step_down {
                let peer_directs = el
                    .peers()
                    .iter()
                    .any(|p| p.alive && p.role == Role::Director);
                if el.role() == Role::Director {
                    step_down = None;
                } else if peer_directs || now >= t {
                    shared.update(|c| c.active = false);
                    step_down = None;
                }
            }
            let mut st = ctl.lock();
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
    });

    shared.update(|c| c.active = false);
    shared.stop();
    let _ = dp_thread.join();
    if let Some(t) = sync_thread {
        let _ = t.join();
    }
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

/// The drain set goes to the peer on every change and at this period, so a
/// peer that was down catches up.
const ADMIN_STATE_PERIOD: Duration = Duration::from_secs(1);

/// A director that lost the role keeps forwarding until the peer says it
/// directs, or this long: frames reach it until the peer's gratuitous ARP.
const STEP_DOWN_GRACE: Duration = Duration::from_millis(300);

/// How long a planned handover waits for the standby to confirm it holds
/// the connection table before going ahead anyway.
const HANDOVER_SYNC_WAIT: Duration = Duration::from_millis(500);

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

/// A director with a live standby first lets connection sync catch up (the
/// sync thread re-confirms after this reset); anyone else goes at once.
fn begin_handover(el: &Election, shared: &Shared, kind: Handover, now: Instant) -> PendingHandover {
    // With no tracked connection there is nothing for the standby to confirm.
    let wait = el.role() == Role::Director
        && el.peers().iter().any(|p| p.alive)
        && shared.stats().connections > 0;
    if wait {
        shared.sync_caught_up.store(false, Ordering::Release);
        log::info!("handover: waiting for the standby to confirm the connection table");
    }
    PendingHandover {
        kind,
        deadline: if wait { now + HANDOVER_SYNC_WAIT } else { now },
        wait_for_sync: wait,
    }
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

fn peers_of(cfg: &Config, me: Ipv4Addr) -> Vec<Ipv4Addr> {
    cfg.nodes
        .iter()
        .map(|n| *n.address.get_ref())
        .filter(|a| *a != me)
        .collect()
}

fn cluster_id(vip: Ipv4Addr, vrid: u8) -> u32 {
    u32::from(vip) ^ (u32::from(vrid) << 24)
}
