//! The configured backends of each service as the data plane should see them
//! now: configuration plus health plus drains, turned into a `Snapshot`.
use crate::config::{
    self, BannerProtocol, CheckKindName, Config, DnsRcode, DnsTransport, DnsType, Protocol,
};
use crate::forward::{BackendSnap, Scheduler, ServiceSnap, Snapshot};
use crate::health::{CheckKind, CheckSpec, DnsQuery, HealthState};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::Ipv4Addr;

/// The service a health verdict belongs to: a TCP and a UDP service on
/// one port (DNS) check their backends apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceId {
    /// None on the first VIP.
    vip: Option<Ipv4Addr>,
    port: u16,
    protocol: Protocol,
}

impl ServiceId {
    pub fn of(cfg: &Config, svc: &config::Service) -> ServiceId {
        let vip = cfg.vip_of(svc);
        ServiceId {
            vip: (vip != cfg.first_vip()).then_some(vip),
            port: *svc.port.get_ref(),
            protocol: svc.protocol,
        }
    }
}

/// `[vip:]port[/udp]`: a TCP service on the first VIP is named as in a
/// one-VIP cluster, so the verdicts stored before several VIPs stay valid.
impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(vip) = self.vip {
            write!(f, "{vip}:")?;
        }
        write!(f, "{}", self.port)?;
        if self.protocol != Protocol::Tcp {
            write!(f, "/{}", self.protocol.name())?;
        }
        Ok(())
    }
}

/// Which backend of which service a verdict is about; its text form
/// (`service/backend`) names it in logs, events and the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HealthKey {
    pub service: ServiceId,
    pub backend: String,
}

impl fmt::Display for HealthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.backend)
    }
}

/// Health verdicts by backend of a service.
pub type HealthMap = BTreeMap<HealthKey, HealthState>;

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
        service: ServiceId,
        health: &HealthMap,
        drains: &BTreeSet<String>,
        no_new_flows: bool,
    ) -> Standing {
        let healthy = is_healthy(health, service, &self.name);
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
pub fn is_healthy(health: &HealthMap, service: ServiceId, name: &str) -> bool {
    let key = HealthKey {
        service,
        backend: name.to_string(),
    };
    health.get(&key).is_none_or(|h| h.up)
}

/// What the snapshot is made of, besides the configuration.
pub struct Inputs<'a> {
    pub me: Ipv4Addr,
    pub own_mac: [u8; 6],
    pub macs: &'a HashMap<Ipv4Addr, [u8; 6]>,
    pub health: &'a HealthMap,
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
        let vip = cfg.vip_of(svc);
        let id = ServiceId::of(cfg, svc);
        let quiescent = svc.check.as_ref().is_none_or(|c| c.quiescent);
        let mut backends = Vec::new();
        for d in backend_defs(cfg, svc, me) {
            let st = d.standing(id, health, drains, no_new_flows.contains(&d.addr));
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
                svc, vip, port, backends, me,
            ));
            services.push(ServiceSnap {
                vip,
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
            vip,
            proto: svc.protocol.number(),
            port,
            scheduler: svc.scheduler,
            persistence: svc.persistence.map(|d| d.0),
            persist_mask: svc.persistence_netmask.unwrap_or(Ipv4Addr::BROADCAST),
            backends,
        });
    }
    Snapshot {
        generation,
        vips: cfg.vips(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::{PeerInfo, Role};
    use crate::forward::ServiceSnap;

    const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const REAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
    const OWN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn config(services: &str) -> Config {
        let d = std::env::temp_dir().join(format!("duet-pool-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("key"), "0123456789abcdef0123\n").unwrap();
        let text = format!(
            r#"
[cluster]
vip = "198.18.0.100"
interface = "eth0"
vrid = 1
key_file = "key"

[[node]]
name = "web1"
address = "198.18.0.1"
[[node]]
name = "web2"
address = "198.18.0.2"
weight = 3
{services}"#
        );
        let c = Config::parse(&text, &d).unwrap_or_else(|p| panic!("{p:?}"));
        std::fs::remove_dir_all(&d).ok();
        c
    }

    fn state(up: bool) -> HealthState {
        HealthState {
            up,
            last_latency_ms: None,
            last_reason: None,
            checks: 1,
            failures: u64::from(!up),
        }
    }

    fn tcp(port: u16) -> ServiceId {
        ServiceId {
            vip: None,
            port,
            protocol: Protocol::Tcp,
        }
    }

    fn key(service: ServiceId, backend: &str) -> HealthKey {
        HealthKey {
            service,
            backend: backend.into(),
        }
    }

    #[test]
    fn health_keys_name_vip_port_and_protocol() {
        let other: Ipv4Addr = "198.18.0.101".parse().unwrap();
        let udp = ServiceId {
            protocol: Protocol::Udp,
            ..tcp(53)
        };
        let cases = [
            (tcp(80), "80/web1"),
            (udp, "53/udp/web1"),
            (
                ServiceId {
                    vip: Some(other),
                    ..tcp(443)
                },
                "198.18.0.101:443/web1",
            ),
            (
                ServiceId {
                    vip: Some(other),
                    ..udp
                },
                "198.18.0.101:53/udp/web1",
            ),
        ];
        for (service, text) in cases {
            assert_eq!(key(service, "web1").to_string(), text);
        }
        assert_ne!(key(tcp(53), "web1"), key(udp, "web1"));
    }

    fn def(weight: u32) -> BackendDef {
        BackendDef {
            name: "web2".into(),
            addr: PEER,
            weight,
            local: false,
        }
    }

    #[test]
    fn standing_of_a_backend() {
        // (health verdict, drained, node takes no new flows) → (healthy, weight)
        let cases = [
            (None, false, false, (true, 3)),
            (Some(true), false, false, (true, 3)),
            (Some(false), false, false, (false, 0)),
            (Some(true), true, false, (true, 0)),
            (Some(true), false, true, (true, 0)),
            (None, true, true, (true, 0)),
        ];
        for (i, (verdict, drained, no_new, want)) in cases.into_iter().enumerate() {
            let mut health = BTreeMap::new();
            if let Some(up) = verdict {
                health.insert(key(tcp(80), "web2"), state(up));
            }
            let drains: BTreeSet<String> =
                drained.then(|| "web2".to_string()).into_iter().collect();
            let st = def(3).standing(tcp(80), &health, &drains, no_new);
            assert_eq!((st.healthy, st.weight), want, "case {i}");
            assert_eq!(st.drained, drained, "case {i}");
        }
        // A verdict is per service: another port's, or the UDP service's
        // on the same port, says nothing.
        let udp80 = ServiceId {
            protocol: Protocol::Udp,
            ..tcp(80)
        };
        for other in [tcp(443), udp80] {
            let health = BTreeMap::from([(key(other, "web2"), state(false))]);
            assert!(
                def(3)
                    .standing(tcp(80), &health, &BTreeSet::new(), false)
                    .healthy
            );
        }
    }

    fn peer(alive: bool, role: Role) -> PeerInfo {
        PeerInfo {
            addr: PEER,
            role,
            alive,
            last_heard: None,
            priority: 100,
            effective_priority: 100,
            term: 1,
            sync_pos: 0,
            boot_id: 0,
            backends_up: 0,
            backends_total: 0,
            key: None,
        }
    }

    #[test]
    fn which_nodes_get_no_new_flows() {
        let none = BTreeSet::new();
        let peer_only = BTreeSet::from([PEER]);
        let cases = [
            (
                "heard standby",
                vec![peer(true, Role::Standby)],
                false,
                none.clone(),
            ),
            (
                "heard director",
                vec![peer(true, Role::Director)],
                false,
                none.clone(),
            ),
            (
                "silent peer",
                vec![peer(false, Role::Standby)],
                false,
                peer_only.clone(),
            ),
            (
                "leaving peer",
                vec![peer(true, Role::Leaving)],
                false,
                peer_only.clone(),
            ),
            ("no peer yet", vec![], false, none.clone()),
            (
                "this node leaving",
                vec![peer(true, Role::Standby)],
                true,
                BTreeSet::from([ME]),
            ),
            (
                "both",
                vec![peer(false, Role::Director)],
                true,
                BTreeSet::from([ME, PEER]),
            ),
        ];
        for (name, peers, leaving, want) in cases {
            assert_eq!(no_new_flows(&peers, ME, leaving), want, "{name}");
        }
    }

    fn inputs<'a>(
        macs: &'a HashMap<Ipv4Addr, [u8; 6]>,
        health: &'a HealthMap,
        drains: &'a BTreeSet<String>,
        no_new: &'a BTreeSet<Ipv4Addr>,
    ) -> Inputs<'a> {
        Inputs {
            me: ME,
            own_mac: OWN_MAC,
            macs,
            health,
            drains,
            no_new_flows: no_new,
        }
    }

    fn backend<'a>(s: &'a ServiceSnap, name: &str) -> &'a BackendSnap {
        s.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name}"))
    }

    #[test]
    fn snapshot_of_a_dr_service_with_nodes_a_real_server_and_a_fallback() {
        let cfg = config(
            r#"
[[service]]
port = 80
scheduler = "wrr"
persistence = "300s"
persistence_netmask = "255.255.255.0"
backends = [{ name = "real", address = "198.18.0.20", weight = 5 }]
fallback = "127.0.0.1:80"
check = { kind = "http", quiescent = false }
"#,
        );
        let macs = HashMap::from([(PEER, PEER_MAC), (REAL, [2, 0, 0, 0, 0, 0x20])]);
        let health = BTreeMap::from([(key(tcp(80), "real"), state(false))]);
        let (drains, no_new) = (BTreeSet::new(), BTreeSet::new());
        let snap = build_snapshot(&cfg, &inputs(&macs, &health, &drains, &no_new), 7);
        assert_eq!(snap.generation, 7);
        let s = &snap.services[0];
        assert_eq!((s.port, s.scheduler), (80, Scheduler::Wrr));
        assert_eq!(s.persist_mask, Ipv4Addr::new(255, 255, 255, 0));
        assert!(s.persistence.is_some());
        let web1 = backend(s, "web1");
        assert!(web1.local && web1.up && web1.mac == OWN_MAC && web1.weight == 1);
        let web2 = backend(s, "web2");
        assert!(!web2.local && web2.up && web2.mac == PEER_MAC && web2.weight == 3);
        // Down and not quiescent: removed (its flows cut).
        let real = backend(s, "real");
        assert_eq!((real.up, real.weight, real.addr), (false, 0, REAL));
        // The fallback on loopback is this node itself.
        let fb = backend(s, "fallback");
        assert!(fb.fallback && fb.local && fb.up && fb.addr == ME);
    }

    #[test]
    fn snapshot_weights_follow_drains_silence_and_quiescence() {
        let cfg = config(
            r#"
[[service]]
port = 80
check = { kind = "http", quiescent = true }
"#,
        );
        let health = BTreeMap::from([(key(tcp(80), "web1"), state(false))]);
        let drains = BTreeSet::new();
        let no_new = BTreeSet::from([PEER]);
        // The peer's MAC is not known yet: it cannot be reached.
        let snap = build_snapshot(&cfg, &inputs(&HashMap::new(), &health, &drains, &no_new), 1);
        let s = &snap.services[0];
        assert_eq!(s.scheduler, Scheduler::Wlc, "the default scheduler");
        // Quiescent down: kept (its flows live on), no new ones.
        let web1 = backend(s, "web1");
        assert_eq!((web1.up, web1.weight), (true, 0));
        let web2 = backend(s, "web2");
        assert_eq!((web2.up, web2.weight), (false, 0));
        // Heard again, with a MAC, drained by the operator.
        let macs = HashMap::from([(PEER, PEER_MAC)]);
        let drains = BTreeSet::from(["web2".to_string()]);
        let snap = build_snapshot(
            &cfg,
            &inputs(&macs, &BTreeMap::new(), &drains, &BTreeSet::new()),
            2,
        );
        let s = &snap.services[0];
        assert_eq!(backend(s, "web1").weight, 1);
        let web2 = backend(s, "web2");
        assert_eq!((web2.up, web2.weight), (true, 0));
    }

    #[test]
    fn a_proxy_service_sends_new_connections_to_this_node_only() {
        let cfg = config(
            r#"
[[service]]
port = 8080
mode = "proxy"
serve_local = false
backends = ["198.18.0.20:8000"]
"#,
        );
        let macs = HashMap::from([(PEER, PEER_MAC)]);
        let (health, drains, no_new) = (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
        let snap = build_snapshot(&cfg, &inputs(&macs, &health, &drains, &no_new), 1);
        assert_eq!(snap.proxy.len(), 1);
        let s = &snap.services[0];
        assert_eq!(s.port, 8080);
        let weights: Vec<(&str, u32, bool)> = s
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight, b.local))
            .collect();
        assert_eq!(weights, vec![("web1", 1, true), ("web2", 0, false)]);
    }
}
