//! The configured backends of each service as the data plane should see them
//! now: configuration plus health plus drains, turned into a `Snapshot`.
use crate::config::{self, BannerProtocol, CheckKindName, Config, DnsRcode, DnsTransport, DnsType};
use crate::forward::{BackendSnap, Scheduler, ServiceSnap, Snapshot};
use crate::health::{CheckKind, CheckSpec, DnsQuery, HealthState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

pub fn health_key(port: u16, name: &str) -> String {
    format!("{port}/{name}")
}

/// One backend of one service as configured, before health and drains.
pub struct BackendDef {
    pub name: String,
    pub addr: Ipv4Addr,
    pub weight: u32,
    pub local: bool,
}

pub fn backend_defs(cfg: &Config, svc: &config::Service, me: Ipv4Addr) -> Vec<BackendDef> {
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
    // Route backends are checked, drained and shown like the service's
    // own; one listed twice is one backend.
    let own = svc.backends.len();
    for (i, b) in svc
        .backends
        .iter()
        .chain(svc.routes.iter().flat_map(|r| &r.backends))
        .enumerate()
    {
        let b = b.get_ref();
        if i >= own && out.iter().any(|d| d.addr == b.address()) {
            continue;
        }
        out.push(BackendDef {
            name: b.name(),
            addr: b.address(),
            weight: b.weight(),
            local: false,
        });
    }
    out
}

/// A backend's standing from its last health verdict, the operator's drains
/// and its node's liveness: the one rule the snapshot and the status report
/// share.
pub struct Standing {
    pub healthy: bool,
    pub drained: bool,
    /// The weight in effect: 0 when drained, unhealthy, or a node that takes
    /// no new flows.
    pub weight: u32,
}

impl BackendDef {
    pub fn standing(
        &self,
        port: u16,
        health: &BTreeMap<String, HealthState>,
        drains: &BTreeSet<String>,
        no_new_flows: bool,
    ) -> Standing {
        let healthy = is_healthy(health, port, &self.name);
        let drained = drains.contains(&self.name);
        Standing {
            healthy,
            drained,
            weight: if drained || !healthy || no_new_flows {
                0
            } else {
                self.weight
            },
        }
    }
}

/// A backend never checked (no check configured, or none yet) counts as up.
pub fn is_healthy(health: &BTreeMap<String, HealthState>, port: u16, name: &str) -> bool {
    health.get(&health_key(port, name)).is_none_or(|h| h.up)
}

/// What the snapshot is made of, besides the configuration.
pub struct Inputs<'a> {
    pub me: Ipv4Addr,
    pub own_mac: [u8; 6],
    pub macs: &'a HashMap<Ipv4Addr, [u8; 6]>,
    pub health: &'a BTreeMap<String, HealthState>,
    pub drains: &'a BTreeSet<String>,
    /// Nodes that keep their established flows but get no new ones (see
    /// [`no_new_flows`]).
    pub no_new_flows: &'a BTreeSet<Ipv4Addr>,
}

/// Nodes that get no new flows: peers not heard from (their duet is down,
/// so may be their host or the VIP on their lo) or leaving (draining
/// before they stop), and this node itself while it leaves. A dead node
/// thus leaves the other serving everything, and a stopping one is given
/// weight 0 in the turn its Leaving heartbeat arrives.
pub fn no_new_flows(
    peers: &[crate::election::PeerInfo],
    me: Ipv4Addr,
    leaving: bool,
) -> BTreeSet<Ipv4Addr> {
    let mut out: BTreeSet<Ipv4Addr> = peers
        .iter()
        .filter(|p| !p.takes_new_flows())
        .map(|p| p.addr)
        .collect();
    if leaving {
        out.insert(me);
    }
    out
}

pub fn build_snapshot(cfg: &Config, inp: &Inputs, generation: u64) -> Snapshot {
    let Inputs {
        me,
        own_mac,
        macs,
        health,
        drains,
        no_new_flows,
    } = *inp;
    let mut services = Vec::new();
    let mut proxy = Vec::new();
    for svc in &cfg.services {
        let port = *svc.port.get_ref();
        let quiescent = svc.check.as_ref().is_none_or(|c| c.quiescent);
        let mut backends = Vec::new();
        for d in backend_defs(cfg, svc, me) {
            let st = d.standing(port, health, drains, no_new_flows.contains(&d.addr));
            let mac = if d.local {
                Some(own_mac)
            } else {
                macs.get(&d.addr).copied()
            };
            backends.push(BackendSnap {
                name: d.name,
                addr: d.addr,
                mac: mac.unwrap_or([0; 6]),
                weight: st.weight,
                // A remote backend whose MAC is unknown cannot be reached yet.
                up: mac.is_some() && (st.healthy || quiescent),
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
        if svc.mode == config::ServiceMode::Proxy {
            proxy.push(crate::proxy::ProxyService::from_snap(
                svc, port, backends, me,
            ));
            services.push(ServiceSnap {
                proto: svc.protocol.number(),
                port,
                scheduler: Scheduler::Rr,
                persistence: None,
                persist_mask: Ipv4Addr::BROADCAST,
                backends: proxy_nodes(cfg, me, own_mac, macs),
            });
            continue;
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
        proxy,
    }
}

/// A proxy service in the data plane: new connections go to this node's
/// own stack; the peer stays a weight-0 backend so that connections the
/// previous director accepted still reach its proxy after a takeover.
fn proxy_nodes(
    cfg: &Config,
    me: Ipv4Addr,
    own_mac: [u8; 6],
    macs: &HashMap<Ipv4Addr, [u8; 6]>,
) -> Vec<BackendSnap> {
    cfg.nodes
        .iter()
        .filter_map(|n| {
            let addr = *n.address.get_ref();
            let local = addr == me;
            let mac = if local { own_mac } else { *macs.get(&addr)? };
            Some(BackendSnap {
                name: n.name.get_ref().clone(),
                addr,
                mac,
                weight: u32::from(local),
                up: true,
                local,
                fallback: false,
            })
        })
        .collect()
}

pub fn check_spec(c: &config::Check, port: u16) -> CheckSpec {
    let kind = match c.kind {
        CheckKindName::Http => CheckKind::Http {
            request: c.request.clone().unwrap_or_else(|| "/".into()),
            receive: c.receive.clone(),
            host: c.host.clone(),
            expect_status: c.status,
        },
        CheckKindName::Https => CheckKind::Https {
            request: c.request.clone().unwrap_or_else(|| "/".into()),
            receive: c.receive.clone(),
            host: c.host.clone(),
            expect_status: c.status,
            verify: c.verify,
        },
        CheckKindName::Dns => CheckKind::Dns(DnsQuery {
            name: c
                .name
                .clone()
                .or_else(|| c.request.clone())
                .unwrap_or_else(|| ".".into()),
            qtype: c.qtype.unwrap_or(DnsType::A).number(),
            tcp: c.transport == Some(DnsTransport::Tcp),
            rcode: c.rcode.unwrap_or(DnsRcode::Noerror).number(),
            expect_address: c.expect_address,
        }),
        CheckKindName::Ping => CheckKind::Ping {
            count: c.count.unwrap_or(1),
        },
        CheckKindName::Banner => CheckKind::Banner {
            // Validation made sure one of the three is there.
            greeting: c.greeting.clone().unwrap_or_else(|| {
                c.protocol
                    .or_else(|| BannerProtocol::for_port(c.port.unwrap_or(port)))
                    .map_or("", BannerProtocol::greeting)
                    .to_string()
            }),
            request: c.request.clone(),
            receive: c.receive.clone(),
        },
        CheckKindName::Mysql => CheckKind::Mysql,
        CheckKindName::Pgsql => CheckKind::Pgsql,
        CheckKindName::Udp => CheckKind::Udp {
            request: c.request.clone().unwrap_or_default().into_bytes(),
            receive: c.receive.clone().map(String::into_bytes),
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
        address: c.address,
        interval: c.interval.0,
        timeout: c.timeout.0,
        rise: c.rise,
        fall: c.fall,
    }
}
