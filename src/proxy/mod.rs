//! `mode = "proxy"` services: an HTTP/1.x reverse proxy on the director.
//!
//! The data plane hands a proxy service's packets to the local stack (its
//! snapshot entry has one local backend); `serve` accepts on VIP:port only
//! while this node directs, and `pick` chooses a backend from the same
//! health/drain/weight standing DR services use. HTTP parsing is httparse
//! (already a dependency): the proxy only rewrites heads and tracks where
//! bodies end (`frame`), so it never buffers a body.
mod access;
mod clock;
mod exchange;
mod frame;
mod head;
mod idle;
mod pick;
mod response;
mod serve;
mod sticky;
mod stream;

pub use frame::{Body, FrameError, Framing};
pub use head::{rewrite_head, HeadError, HeadRules, Rewritten};
pub use pick::Picker;
pub use response::{parse_response, BadResponse, Response};
pub use serve::spawn;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::config;
use crate::forward::{BackendSnap, Scheduler};

/// One backend a proxy service may send new requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyBackend {
    pub name: String,
    pub addr: SocketAddrV4,
    pub weight: u32,
}

/// `[[service.route]]` with only its usable backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    /// Lower case, as `Rewritten::host` is.
    pub host: String,
    pub backends: Vec<ProxyBackend>,
}

/// `max_header_bytes` unless set: HAProxy's and nginx's defaults are
/// smaller (16 KiB, 8 KiB lines), but cookie-heavy sites need more.
const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;

/// Idle connections kept per backend: at least what a busy service has in
/// flight to one backend, or each response beyond it closes a connection
/// the next request opens again (16 made one request in nine pay a new
/// backend connection at 50 clients over two backends). HAProxy keeps every
/// one (`http-reuse`); `backend_idle_timeout` reaps them here.
const DEFAULT_BACKEND_IDLE_MAX: usize = 256;

/// A service's proxy keys with their defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    pub persist_client: bool,
    pub persist_backend: bool,
    pub backend_idle_max: usize,
    pub backend_idle_timeout: Duration,
    pub client_header_timeout: Duration,
    pub client_idle_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_body: Option<u64>,
    /// A request head not complete within this many bytes: 431.
    pub max_header_bytes: usize,
    /// A request head with more headers: 431.
    pub max_headers: usize,
    /// "stderr" or a path.
    pub access_log: Option<String>,
    pub sticky: bool,
}

impl ProxyOptions {
    pub fn from_config(svc: &config::Service) -> ProxyOptions {
        let dur = |v: &Option<toml::Spanned<config::Dur>>, default: u64| {
            v.as_ref()
                .map_or(Duration::from_secs(default), |d| d.get_ref().0)
        };
        ProxyOptions {
            persist_client: svc.persist_client.as_ref().is_none_or(|b| *b.get_ref()),
            persist_backend: svc.persist_backend.as_ref().is_none_or(|b| *b.get_ref()),
            backend_idle_max: svc
                .backend_idle_max
                .as_ref()
                .map_or(DEFAULT_BACKEND_IDLE_MAX, |m| *m.get_ref()),
            // Below common backends' own keep-alive timeouts (Apache's is
            // 5 s): a connection they close as it is reused costs a resend,
            // or a 502 for a request that cannot be resent.
            backend_idle_timeout: dur(&svc.backend_idle_timeout, 4),
            client_header_timeout: dur(&svc.client_header_timeout, 10),
            client_idle_timeout: dur(&svc.client_idle_timeout, 60),
            connect_timeout: dur(&svc.connect_timeout, 3),
            response_timeout: dur(&svc.response_timeout, 60),
            max_body: svc.max_body.as_ref().map(|m| *m.get_ref()),
            max_header_bytes: svc
                .max_header_bytes
                .as_ref()
                .map_or(DEFAULT_MAX_HEADER_BYTES, |m| *m.get_ref()),
            max_headers: svc
                .max_headers
                .as_ref()
                .map_or(head::MAX_HEADERS, |m| *m.get_ref()),
            access_log: svc.access_log.as_ref().map(|l| l.get_ref().clone()),
            sticky: svc.sticky.is_some(),
        }
    }
}

/// A proxy service as the snapshot carries it: only usable backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyService {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub scheduler: Scheduler,
    pub trusted_proxies: Vec<Ipv4Addr>,
    /// Where requests go that match no route.
    pub backends: Vec<ProxyBackend>,
    pub routes: Vec<ProxyRoute>,
    pub opts: ProxyOptions,
}

/// The backends one request may go to, and the key its scheduler state
/// is kept under.
pub struct Pool<'a> {
    pub key: (SocketAddrV4, usize),
    pub scheduler: Scheduler,
    pub backends: &'a [ProxyBackend],
}

impl ProxyService {
    /// Keeps the backends that are up with weight > 0 (drained, unhealthy
    /// or held-down ones never get a request), each pool falling back to
    /// the service's `fallback` only when none of its own is usable; the
    /// port comes from the configured `address:port`, else the service's.
    pub fn from_snap(
        svc: &config::Service,
        vip: Ipv4Addr,
        port: u16,
        snaps: Vec<BackendSnap>,
        me: Ipv4Addr,
    ) -> ProxyService {
        let specs = svc
            .backends
            .iter()
            .chain(svc.routes.iter().flat_map(|r| &r.backends));
        let mut ports: Vec<(Ipv4Addr, u16)> = specs
            .map(|b| (b.get_ref().address(), b.get_ref().port().unwrap_or(port)))
            .collect();
        if let Some(Ok((a, p))) = svc
            .fallback
            .as_ref()
            .map(|f| config::parse_fallback(f.get_ref()))
        {
            // A proxy connects to the fallback's own port, when it names one.
            let a = if a.is_loopback() { me } else { a };
            ports.push((a, p.unwrap_or(port)));
        }
        let usable: Vec<(BackendSnap, ProxyBackend)> = snaps
            .into_iter()
            .filter(|b| b.up && b.weight > 0)
            .map(|b| {
                let bport = ports
                    .iter()
                    .find(|(a, _)| *a == b.addr)
                    .map_or(port, |(_, p)| *p);
                // A node serving locally is reached on its own address.
                let ip = if b.local { me } else { b.addr };
                let pb = ProxyBackend {
                    name: b.name.clone(),
                    addr: SocketAddrV4::new(ip, bport),
                    weight: b.weight,
                };
                (b, pb)
            })
            .collect();
        let pool = |member: &dyn Fn(&BackendSnap) -> bool| -> Vec<ProxyBackend> {
            let own: Vec<ProxyBackend> = usable
                .iter()
                .filter(|(s, _)| !s.fallback && member(s))
                .map(|(_, p)| p.clone())
                .collect();
            if !own.is_empty() {
                return own;
            }
            usable
                .iter()
                .filter(|(s, _)| s.fallback)
                .map(|(_, p)| p.clone())
                .collect()
        };
        // Nodes (serve_local) and the service's own backends; a backend
        // only a route names serves that route alone.
        let own: Vec<Ipv4Addr> = svc.backends.iter().map(|b| b.get_ref().address()).collect();
        let route_only = |a: Ipv4Addr| {
            !own.contains(&a)
                && svc
                    .routes
                    .iter()
                    .flat_map(|r| &r.backends)
                    .any(|b| b.get_ref().address() == a)
        };
        let backends = pool(&|s| !route_only(s.addr));
        let routes = svc
            .routes
            .iter()
            .map(|r| {
                let addrs: Vec<Ipv4Addr> =
                    r.backends.iter().map(|b| b.get_ref().address()).collect();
                ProxyRoute {
                    host: r.host.get_ref().to_ascii_lowercase(),
                    backends: pool(&|s| addrs.contains(&s.addr)),
                }
            })
            .collect();
        ProxyService {
            vip,
            port,
            scheduler: svc.scheduler,
            trusted_proxies: svc.trusted_proxies.clone(),
            backends,
            routes,
            opts: ProxyOptions::from_config(svc),
        }
    }

    /// The address it listens on.
    pub fn at(&self) -> SocketAddrV4 {
        SocketAddrV4::new(self.vip, self.port)
    }

    /// The route whose host is `host`, else the service's own backends.
    pub fn pool_for(&self, host: Option<&str>) -> Pool<'_> {
        let route = host.and_then(|h| self.routes.iter().position(|r| r.host == h));
        Pool {
            key: (self.at(), route.map_or(0, |i| i + 1)),
            scheduler: self.scheduler,
            backends: route.map_or(&self.backends, |i| &self.routes[i].backends),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(last: u8, weight: u32, fallback: bool) -> BackendSnap {
        BackendSnap {
            name: format!("198.18.0.{last}"),
            addr: Ipv4Addr::new(198, 18, 0, last),
            mac: [0; 6],
            weight,
            up: true,
            local: false,
            fallback,
        }
    }

    fn names(b: &[ProxyBackend]) -> Vec<String> {
        b.iter().map(|b| b.addr.to_string()).collect()
    }

    #[test]
    fn pools_by_route_with_fallback_only_when_a_pool_is_empty() {
        let svc: config::Service = toml::from_str(
            r#"
port = 8000
mode = "proxy"
serve_local = false
fallback = "198.18.0.30:8081"
backends = ["198.18.0.20:8088", "198.18.0.21:8088"]
[[route]]
host = "A.test"
backends = ["198.18.0.21:8088", "198.18.0.22:9000"]
[[route]]
host = "b.test"
backends = ["198.18.0.23:80"]
"#,
        )
        .unwrap();
        let me = Ipv4Addr::new(198, 18, 0, 1);
        let all = vec![
            snap(20, 1, false),
            snap(21, 1, false),
            snap(22, 1, false),
            // Held down by its check: in no pool.
            snap(23, 0, false),
            snap(30, 1, true),
        ];
        let p = ProxyService::from_snap(&svc, Ipv4Addr::new(198, 18, 0, 100), 8000, all, me);
        // A route-only backend (22) serves its route alone; the fallback
        // stands in only where nothing else is usable (b.test).
        assert_eq!(names(&p.backends), ["198.18.0.20:8088", "198.18.0.21:8088"]);
        assert_eq!(
            names(p.pool_for(Some("a.test")).backends),
            ["198.18.0.21:8088", "198.18.0.22:9000"]
        );
        assert_eq!(
            names(p.pool_for(Some("b.test")).backends),
            ["198.18.0.30:8081"]
        );
        let other = p.pool_for(Some("c.test"));
        let at = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 8000);
        assert_eq!((other.key, other.backends.len()), ((at, 0), 2));
        assert_eq!(p.pool_for(Some("a.test")).key, (at, 1));
        assert!(p.opts.persist_client && p.opts.persist_backend && !p.opts.sticky);
    }
}
