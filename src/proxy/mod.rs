//! `mode = "proxy"` services: an HTTP/1.x reverse proxy on the director.
//!
//! The data plane hands a proxy service's packets to the local stack (its
//! snapshot entry has one local backend); `serve` accepts on VIP:port only
//! while this node directs, and `pick` chooses a backend from the same
//! health/drain/weight standing DR services use. HTTP parsing is httparse
//! (already a dependency): the proxy only rewrites the request head and then
//! relays bytes, so it never buffers a body.
mod head;
mod pick;
mod serve;

pub use head::{rewrite_head, HeadError, Rewritten};
pub use pick::Picker;
pub use serve::spawn;

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::config;
use crate::forward::{BackendSnap, Scheduler};

/// One backend a proxy service may send new requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyBackend {
    pub name: String,
    pub addr: SocketAddrV4,
    pub weight: u32,
}

/// A proxy service as the snapshot carries it: only usable backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyService {
    pub port: u16,
    pub scheduler: Scheduler,
    pub trusted_proxies: Vec<Ipv4Addr>,
    pub backends: Vec<ProxyBackend>,
}

impl ProxyService {
    /// Keeps the backends that are up with weight > 0 (drained, unhealthy
    /// or held-down ones never get a request); the port comes from the
    /// configured `address:port`, else the service's port.
    pub fn from_snap(
        svc: &config::Service,
        port: u16,
        snaps: Vec<BackendSnap>,
        me: Ipv4Addr,
    ) -> ProxyService {
        let ports: Vec<(Ipv4Addr, u16)> = svc
            .backends
            .iter()
            .map(|b| (b.get_ref().address(), b.get_ref().port().unwrap_or(port)))
            .collect();
        let backends = snaps
            .into_iter()
            .filter(|b| b.up && b.weight > 0)
            .map(|b| {
                let bport = ports
                    .iter()
                    .find(|(a, _)| *a == b.addr)
                    .map_or(port, |(_, p)| *p);
                // A node serving locally is reached on its own address.
                let ip = if b.local { me } else { b.addr };
                ProxyBackend {
                    name: b.name,
                    addr: SocketAddrV4::new(ip, bport),
                    weight: b.weight,
                }
            })
            .collect();
        ProxyService {
            port,
            scheduler: svc
                .scheduler
                .get_ref()
                .parse::<Scheduler>()
                .unwrap_or(Scheduler::Wlc),
            trusted_proxies: svc.trusted_proxies.clone(),
            backends,
        }
    }
}
