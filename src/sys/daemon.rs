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

    for (port, addr, fport) in fallback_port_mismatches(cfg) {
        log::warn!(
            "service {port}: fallback {addr}:{fport} — direct routing keeps the \
             destination port, so the fallback server must answer on port {port} \
             (as IPVS does in gate mode)"
        );
    }
    let tun = Tun::open(TUN_NAME).map_err(io("creating TUN device duet0"))?;
    netlink::set_up(TUN_NAME).map_err(io("bringing duet0 up"))?;
    host.local_path(store.as_ref())?;
    let kernel = crate::dataplane::select(
        cfg.cluster.engine,
        &kernel_params(cfg, &link, vmac),
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

    let boot_id = boot_id(store.as_ref().map(Store::boot_count), random_u64());
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

/// Services whose fallback server is given a port of its own, which direct
/// routing cannot honour: (service port, fallback address, its port).
fn fallback_port_mismatches(cfg: &Config) -> Vec<(u16, Ipv4Addr, u16)> {
    cfg.services
        .iter()
        .filter_map(|svc| {
            let port = *svc.port.get_ref();
            let f = svc.fallback.as_ref()?;
            match config::parse_fallback(f.get_ref()) {
                Ok((addr, Some(fport))) if fport != port => Some((port, addr, fport)),
                _ => None,
            }
        })
        .collect()
}

/// What the eBPF engine is loaded with.
fn kernel_params(cfg: &Config, link: &netlink::Link, vmac: [u8; 6]) -> dataplane::ebpf::Params {
    dataplane::ebpf::Params {
        ifindex: link.index,
        vmac,
        own_mac: link.mac,
        max_connections: u32::try_from(cfg.cluster.max_connections).unwrap_or(u32::MAX),
        // Fail-safe for a filter that outlives a killed duet: it stops
        // forwarding within half the time a peer takes to take over.
        lease: cfg.heartbeat.dead_after.get_ref().0 / 2,
        new_flow_budget: cfg.cluster.new_flow_budget,
        echo_rate: dataplane::ECHO_RATE,
    }
}

/// Peers accept a boot of ours only after a challenge (see
/// `crate::election`), so the boot id need only differ from every earlier
/// one: the store's boot counter (opened, incremented and flushed before)
/// in the high half, for the logs and so that sync stream ids normally
/// grow, and 32 bits of `random`, so that a counter that went back with a
/// wiped store does not repeat an id; all of `random` without a store. The
/// wall clock plays no part.
fn boot_id(boot_count: Option<u64>, random: u64) -> u64 {
    boot_count.map_or(random, |n| n.wrapping_shl(32) | (random & 0xffff_ffff))
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
    match rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()) {
        Ok(n) if n == b.len() => u64::from_ne_bytes(b),
        _ => fastrand::u64(..),
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

#[cfg(test)]
mod tests {
    use super::super::fixture::{Dir, CONFIG};
    use super::*;
    use std::time::Duration;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn config(extra: &str) -> Arc<Config> {
        Dir::new(&format!("{CONFIG}{extra}")).config()
    }

    #[test]
    fn fallbacks_on_another_port_are_named() {
        let cfg = config(
            r#"
[[service]]
port = 443
fallback = "198.18.0.9:8443"
[[service]]
port = 8080
fallback = "198.18.0.9:8080"
[[service]]
port = 25
fallback = "198.18.0.9"
"#,
        );
        assert_eq!(
            fallback_port_mismatches(&cfg),
            vec![(443, Ipv4Addr::new(198, 18, 0, 9), 8443)]
        );
        assert_eq!(fallback_port_mismatches(&config("")), vec![]);
    }

    #[test]
    fn kernel_lease_is_half_the_takeover_time() {
        let link = netlink::Link {
            index: 4,
            mac: [2, 0, 0, 0, 0, 1],
            carrier: true,
        };
        let vmac = virtual_mac(1);
        let cfg = config("[heartbeat]\ninterval = \"100ms\"\ndead_after = \"900ms\"\n");
        let p = kernel_params(&cfg, &link, vmac);
        assert_eq!(p.lease, Duration::from_millis(450));
        assert_eq!((p.ifindex, p.vmac, p.own_mac), (4, vmac, link.mac));
        assert_eq!(p.max_connections as usize, cfg.cluster.max_connections);
        // A table larger than a BPF map can be is the largest map.
        let mut huge = Arc::try_unwrap(config("")).unwrap();
        huge.cluster.max_connections = usize::MAX;
        assert_eq!(kernel_params(&huge, &link, vmac).max_connections, u32::MAX);
    }

    #[test]
    fn boot_ids() {
        #[rustfmt::skip]
        let cases = [
            ("no store: all random", None, 0xdead_beef_1234_5678, 0xdead_beef_1234_5678),
            ("boot 1", Some(1), 0xdead_beef_1234_5678, 0x0000_0001_1234_5678),
            ("boot 7, random low half", Some(7), 0x0000_0000_ffff_ffff, 0x0000_0007_ffff_ffff),
            ("counter past 32 bits keeps its low half", Some(0x1_0000_0002), 0, 0x0000_0002_0000_0000),
        ];
        for (what, count, random, want) in cases {
            assert_eq!(boot_id(count, random), want, "{what}");
        }
        // A wiped store counts from 1 again; the random half still tells
        // the boots apart.
        assert_ne!(boot_id(Some(1), 1), boot_id(Some(1), 2));
    }

    #[test]
    fn peers_are_the_other_nodes() {
        let cfg = config("");
        assert_eq!(peers_of(&cfg, A), vec![B]);
        assert_eq!(peers_of(&cfg, B), vec![A]);
        // An address that is no node's: every node is a peer.
        assert_eq!(peers_of(&cfg, Ipv4Addr::new(198, 18, 0, 3)), vec![A, B]);
    }

    #[test]
    fn cluster_ids_differ_by_vip_and_vrid() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        assert_eq!(cluster_id(vip, 0), u32::from(vip));
        assert_eq!(cluster_id(vip, 1), 0xc612_0064 ^ 0x0100_0000);
        assert_ne!(cluster_id(vip, 1), cluster_id(vip, 2));
        assert_ne!(
            cluster_id(vip, 1),
            cluster_id(Ipv4Addr::new(198, 18, 0, 101), 1)
        );
    }
}
