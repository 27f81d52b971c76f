//! `duet run`: sets the host up, starts the data plane, the health checks and
//! the status server, then drives the election over UDP until told to stop,
//! and puts the host back as it found it.
use crate::config::{self, Config};
use crate::election::{self, Election};
use crate::status::server::{ServerConfig, StatusServer};
use crate::store::Store;
use crate::wire::envelope::Keys;
use crate::wire::frame::virtual_mac;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use super::checks::Checks;
use super::control::{ControlLoop, Parts};
use super::ctl::{store_warn, Ctl, State};
use super::host::HostSetup;
use super::pool::{build_snapshot, Inputs};
use super::{inbox, neigh, netlink, ping, syncer};
use crate::dataplane::packet;
use crate::dataplane::tun::{Tun, TUN_NAME};
use crate::dataplane::{self, Control, Shared};
use async_signal::Signal;

pub use super::error::{io, DaemonError};

pub fn run(cfg: Config, config_path: &Path, node_name: Option<&str>) -> Result<(), DaemonError> {
    let cfg = Arc::new(cfg);
    match super::raise_fd_limit() {
        Ok(n) => log::debug!("open descriptors: soft limit {n}"),
        Err(e) => log::warn!("raising the open descriptor limit: {e}"),
    }
    let local = netlink::local_ipv4().map_err(io("listing local addresses"))?;
    let me_idx = cfg
        .find_node(node_name, &local)
        .map_err(DaemonError::Config)?;
    let me = &cfg.nodes[me_idx];
    let keys = config::read_keys(cfg.cluster.key_file.get_ref())
        .map_err(|e| DaemonError::Config(format!("key file: {e}")))?;
    let keys = Arc::new(RwLock::new(keys));
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

    // Before anything that takes time: a stop signal from now on waits in
    // this queue for the control loop instead of killing the process.
    let signals = async_signal::Signals::new([Signal::Term, Signal::Int, Signal::Hup])
        .map_err(io("installing signal handlers"))?;
    let mut host = HostSetup::apply(&cfg, &local, store.as_ref())?;
    let result = run_inner(
        &cfg,
        Start {
            config_path: config_path.to_path_buf(),
            me_idx,
            keys,
            token,
            vmac,
            link,
            store,
            signals,
        },
        &mut host,
    );
    // Normally done already, with the store at hand; this covers an error
    // on the way up.
    host.undo(None);
    result
}

/// What `run` resolved before it touched the host.
struct Start {
    config_path: PathBuf,
    me_idx: usize,
    keys: Arc<RwLock<Keys>>,
    token: Option<String>,
    vmac: [u8; 6],
    link: netlink::Link,
    store: Option<Store>,
    signals: async_signal::Signals,
}

fn run_inner(cfg: &Arc<Config>, start: Start, host: &mut HostSetup) -> Result<(), DaemonError> {
    let Start {
        config_path,
        me_idx,
        keys,
        token,
        vmac,
        link,
        store,
        signals,
    } = start;
    let drains = store.as_ref().map(|s| s.drains()).unwrap_or_default();
    let drains_version = store.as_ref().map_or(0, |s| s.drains_version());
    let stored_health = store.as_ref().map(|s| s.health()).unwrap_or_default();
    let me = &cfg.nodes[me_idx];
    let my_addr = *me.address.get_ref();
    let vips = cfg.vips();
    let cluster = cluster_id(cfg.first_vip(), *cfg.cluster.vrid.get_ref());

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
    host.local_path(store.as_ref())?;
    let kernel = crate::dataplane::select(
        cfg.cluster.engine,
        &crate::dataplane::ebpf::Params {
            ifindex: link.index,
            vmac,
            own_mac: link.mac,
            max_connections: u32::try_from(cfg.cluster.max_connections).unwrap_or(u32::MAX),
            // Fail-safe for a filter that outlives a killed duet: it stops
            // forwarding within half the time a peer takes to take over.
            lease: cfg.heartbeat.dead_after.get_ref().0 / 2,
            new_flow_budget: cfg.cluster.new_flow_budget,
            echo_rate: dataplane::ECHO_RATE,
        },
        &cfg.cluster.interface,
    )
    .map_err(|e| DaemonError::Config(format!("cluster.engine = \"ebpf\": {e}")))?;
    // Behind the tc program the socket sees only what it leaves to user space.
    let at = match kernel {
        Some(_) => packet::Receive::AfterTc,
        None => packet::Receive::All,
    };
    let sock =
        packet::PacketSocket::open(link.index, vmac, at).map_err(io("opening packet socket"))?;

    let state = State::starting(cfg, me_idx, drains, drains_version, Instant::now());
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
            no_new_flows: &silent,
        },
        1,
    ));
    let shared = Shared::new(Control {
        holding: crate::handover::Holding::No,
        snapshot,
        announce: 0,
    })
    .map_err(io("creating the data plane's eventfd"))?;
    let dp_thread = dataplane::spawn(
        dataplane::Params {
            vmac,
            own_mac: link.mac,
            max_connections: cfg.cluster.max_connections,
            kernel,
        },
        sock,
        tun,
        shared.clone(),
    )
    .map_err(io("starting the data plane"))?;
    let proxy_thread = if cfg
        .services
        .iter()
        .any(|s| s.mode == crate::config::ServiceMode::Proxy)
    {
        Some(
            crate::proxy::spawn(
                shared.clone(),
                cfg.cluster.stop_drain.get_ref().0,
                keys.read().unwrap_or_else(|e| e.into_inner()).signing(),
            )
            .map_err(io("starting the proxy"))?,
        )
    } else {
        None
    };

    // Peers accept a boot of ours only after a challenge (see
    // `crate::election`), so the boot id need only differ from every earlier
    // one: the store's boot counter (opened, incremented and flushed above)
    // in the high half, for the logs and so that sync stream ids normally
    // grow, and 32 random bits, so that a counter that went back with a
    // wiped store does not repeat an id; fully random without a store. The
    // wall clock plays no part.
    let boot_id = store.as_ref().map_or_else(random_u64, |s| {
        s.boot_count().wrapping_shl(32) | (random_u64() & 0xffff_ffff)
    });
    log::debug!("boot id {boot_id}");
    let sync_thread = match peers_of(cfg, my_addr).first() {
        Some(peer) => Some(
            syncer::spawn(
                syncer::Params {
                    bind: SocketAddr::from((my_addr, cfg.cluster.sync_port)),
                    peer: SocketAddr::from((*peer, cfg.cluster.sync_port)),
                    keys: keys.clone(),
                    boot_id,
                },
                shared.clone(),
            )
            .map_err(io("starting connection sync"))?,
        ),
        None => None,
    };

    let (notify, inputs) = inbox::channel();
    let ctl = Arc::new(Ctl::new(
        state,
        store,
        shared.clone(),
        cfg.clone(),
        config_path,
        notify.clone(),
    ));

    // Health checks: both nodes run them, so a new director starts warm.
    let checks = Checks::start(cfg, my_addr, &ctl, &stored_health);

    let server = match StatusServer::start(
        ServerConfig {
            listen: cfg.cluster.status_listen,
            token,
            workers: 4,
            max_body: 4096,
            // An upgrade image under QEMU TCG: ~14 MB in a few seconds,
            // then hashed and written to the boot partition.
            upload: Some(crate::status::Upload {
                path: "/api/upgrade",
                max_body: crate::appliance::upgrade::MAX_ARCHIVE,
                timeout: std::time::Duration::from_secs(120),
            }),
            runtime_dir: cfg.cluster.state_dir.clone(),
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
    let el = Election::new(
        election::Params {
            me: my_addr,
            peers: peers.clone(),
            cluster_id: cluster,
            boot_id,
            nonce_seed: random_u64(),
            priority: me.priority,
            interval: election::send_period(
                cfg.heartbeat.interval.get_ref().0,
                cfg.heartbeat.dead_after.get_ref().0,
            ),
            dead_after: cfg.heartbeat.dead_after.get_ref().0,
            preempt: cfg.heartbeat.preempt,
            ping_configured: !cfg.heartbeat.ping.is_empty(),
        },
        now,
    );
    log::info!(
        "node {} ({my_addr}) priority {} starting; VIP {} on {} via {}",
        me.name.get_ref(),
        me.priority,
        crate::config::list_addrs(&vips),
        cfg.cluster.interface,
        dataplane::fmt_mac(&vmac)
    );

    // Runs until dropped after the loop; its verdicts come as inputs.
    let _pinger = if cfg.heartbeat.ping.is_empty() {
        None
    } else {
        let hb = &cfg.heartbeat;
        match ping::Pinger::start(
            hb.ping.clone(),
            hb.interval.get_ref().0,
            hb.dead_after.get_ref().0 / 2,
            notify,
        ) {
            Ok(p) => Some(p),
            Err(e) => {
                log::error!("ping nodes: cannot open an ICMP socket: {e}");
                None
            }
        }
    };

    let link_index = link.index;
    favour_control_thread();
    let (el, fatal) = ControlLoop::new(Parts {
        host: &mut *host,
        cfg: cfg.clone(),
        ctl: ctl.clone(),
        shared: shared.clone(),
        election: el,
        keys,
        me: my_addr,
        own_mac: link.mac,
        peers,
        cluster_id: cluster,
        checks,
        macs,
        link_index,
    })
    .run(&udp, hb_port, inputs, signals);

    shared.update(|c| c.holding = crate::handover::Holding::No);
    shared.stop();
    let _ = dp_thread.join();
    if let Some(t) = proxy_thread {
        let _ = t.join();
    }
    if let Some(t) = sync_thread {
        let _ = t.join();
    }
    if let Some(s) = server {
        s.stop();
    }
    host.undo(ctl.store.as_ref());
    log::info!("stopped; VIP off lo and host settings restored");
    if let Some(s) = &ctl.store {
        store_warn("last role", s.set_last_role("leaving", el.term()));
        store_warn("event log", s.log_event("stop", "duet stopped"));
        store_warn("flush", s.flush());
    }
    match fatal {
        Some(why) => Err(DaemonError::LinkGone(why)),
        None => Ok(()),
    }
}

fn peers_of(cfg: &Config, me: Ipv4Addr) -> Vec<Ipv4Addr> {
    cfg.nodes
        .iter()
        .map(|n| *n.address.get_ref())
        .filter(|a| *a != me)
        .collect()
}

/// 64 bits from the kernel's random pool, or from fastrand (seeded from the
/// OS at start) should `getrandom(2)` fail.
fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == b.len() as isize {
        u64::from_ne_bytes(b)
    } else {
        fastrand::u64(..)
    }
}

fn cluster_id(vip: Ipv4Addr, vrid: u8) -> u32 {
    u32::from(vip) ^ (u32::from(vrid) << 24)
}

/// Nice value of the thread that sends and hears heartbeats.
const CONTROL_NICE: i32 = -10;

/// The peer declares us dead after `dead_after` of silence (100 ms at the
/// tightest), so a busy box must not hold our heartbeats back; corosync
/// runs real-time for the same reason. Only this thread is raised: the
/// data plane and the status server keep their normal share.
fn favour_control_thread() {
    let tid = rustix::thread::gettid();
    match rustix::process::setpriority_process(Some(tid), CONTROL_NICE) {
        Ok(()) => log::debug!("control thread at nice {CONTROL_NICE}"),
        Err(e) => log::info!("control thread keeps its priority (nice {CONTROL_NICE}: {e})"),
    }
}
