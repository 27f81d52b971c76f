//! `duet import-perlbal`: turns a Perlbal configuration (and optionally
//! heartbeat's ha.cf and haresources) into the equivalent duet.toml, the
//! Perlbal + heartbeat pair of DESIGN.md section 1, topology 3.
//!
//! Every `reverse_proxy` service that is `ENABLE`d becomes a
//! `mode = "proxy"` `[[service]]` whose backends are its pool's `POOL ADD`
//! members. What needs deciding:
//! - The VIPs: every address a service listens on and every address
//!   haresources moves; a service on `0.0.0.0` (or naming only a port) is
//!   served on each address haresources moves (where heartbeat put them),
//!   else on the first VIP.
//! - Perlbal's only balance method is random; `rr` spreads requests the
//!   same way, without the runs random picks have.
//! - `verify_backend` (Perlbal sends `OPTIONS` on each new backend
//!   connection before using it) becomes an http check: a backend that
//!   fails it gets no request, which is what verification buys.
//! - Perlbal's `persist_client` and `persist_backend` default to off and
//!   duet's to on, so both are always written out.
//! - A `selector` with `VHOST host = service` lines (the vhosts plugin)
//!   becomes one proxy service on its listen address with a
//!   `[[service.route]]` per host; `VHOST *` (or else the first host's
//!   service) takes other hosts and gives the service its settings. The
//!   reverse proxies it names, when they listen nowhere themselves, are
//!   not services of their own. Wildcard hosts (`*.example.com`) are
//!   warned: a route names one host.
//! - Nodes come from ha.cf as for `import-ldirectord`; the node haresources
//!   names first (its preferred owner of the VIP) gets the higher priority.
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::out::{self, duration};
use super::{cluster_of, heartbeat_of, nodes_of, parse_ha, parse_yes_no, Ha, Imported, Warnings};

const PERLBAL: &str = "perlbal.conf";
const HARESOURCES: &str = "haresources";
/// Where Perlbal's pool members listen when `POOL ADD` names no port.
const DEFAULT_BACKEND_PORT: u16 = 80;

/// Converts `perlbal_conf` (and `ha_cf`, `haresources`) into a duet.toml.
pub fn import_perlbal(
    perlbal_conf: &str,
    ha_cf: Option<&str>,
    haresources: Option<&str>,
) -> Imported {
    let mut w = Warnings::default();
    let pb = parse_perlbal(perlbal_conf, &mut w);
    let ha = ha_cf.map(|text| parse_ha(text, &mut w));
    let res = haresources.and_then(|text| parse_haresources(text, &mut w));
    let toml = render(&pb, ha.as_ref(), res.as_ref(), &mut w);
    Imported {
        toml,
        warnings: w.0,
    }
}

// ---------------------------------------------------------------- perlbal.conf

#[derive(Debug, Default)]
struct Pool {
    name: String,
    members: Vec<SocketAddrV4>,
}

#[derive(Debug, Default)]
struct Service {
    name: String,
    line: usize,
    /// Line, address (`None`: every address), port.
    listen: Option<(usize, Option<Ipv4Addr>, u16)>,
    role: Option<(usize, String)>,
    pool: Option<(usize, String)>,
    persist_client: bool,
    persist_backend: bool,
    verify_backend: bool,
    verify_backend_path: Option<String>,
    backend_persist_cache: Option<usize>,
    idle_timeout_s: Option<u64>,
    persist_client_idle_timeout_s: Option<u64>,
    trusted: Vec<Ipv4Addr>,
    enabled: bool,
    /// A selector's `VHOST host = service` lines: (line, host, service).
    vhosts: Vec<(usize, String, String)>,
}

#[derive(Default)]
struct Perlbal {
    pools: Vec<Pool>,
    services: Vec<Service>,
}

/// What a bare `SET key = value` applies to: the pool or service created last.
#[derive(Clone, Copy)]
enum Last {
    None,
    Pool,
    Service(usize),
}

fn parse_perlbal(text: &str, w: &mut Warnings) -> Perlbal {
    let mut pb = Perlbal::default();
    let mut last = Last::None;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let verb = words[0].to_ascii_lowercase();
        let arg = |n: usize| words.get(n).copied().unwrap_or("");
        match verb.as_str() {
            "create" => match (arg(1).to_ascii_lowercase().as_str(), arg(2)) {
                (_, "") => w.at(PERLBAL, no, format_args!("{line:?} names nothing; ignored")),
                ("pool", name) => {
                    pb.pools.push(Pool {
                        name: name.to_string(),
                        members: Vec::new(),
                    });
                    last = Last::Pool;
                }
                ("service", name) => {
                    pb.services.push(Service {
                        name: name.to_string(),
                        line: no,
                        ..Service::default()
                    });
                    last = Last::Service(pb.services.len() - 1);
                }
                (kind, _) => w.unsupported(
                    PERLBAL,
                    no,
                    "CREATE",
                    &format!("{kind:?} is neither a pool nor a service"),
                ),
            },
            "pool" => pool_command(&mut pb, &words, no, w),
            "set" => {
                let rest = line[words[0].len()..].trim();
                let Some((key, value)) = rest.split_once('=') else {
                    w.at(
                        PERLBAL,
                        no,
                        format_args!("cannot parse {line:?}: expected SET key = value"),
                    );
                    continue;
                };
                let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
                // `SET name.key = value` names its target; `SET key = value`
                // means the pool or service created last.
                let (target, key) = match key.split_once('.') {
                    Some((name, k)) => {
                        let t = if let Some(s) = pb.services.iter().position(|s| s.name == name) {
                            Last::Service(s)
                        } else if pb.pools.iter().any(|p| p.name == name) {
                            Last::Pool
                        } else {
                            Last::None
                        };
                        (t, k.to_string())
                    }
                    None => (last, key),
                };
                match target {
                    Last::Service(s) => service_setting(&mut pb.services[s], &key, value, no, w),
                    Last::Pool => pool_setting(&key, value, no, w),
                    Last::None => w.at(
                        PERLBAL,
                        no,
                        format_args!(
                            "SET {key} before any CREATE names no pool or service; ignored"
                        ),
                    ),
                }
            }
            "enable" | "disable" => match pb.services.iter_mut().find(|s| s.name == arg(1)) {
                Some(s) => s.enabled = verb == "enable",
                None => w.at(
                    PERLBAL,
                    no,
                    format_args!("{} of unknown service {:?}; ignored", words[0], arg(1)),
                ),
            },
            "load" if arg(1).eq_ignore_ascii_case("vhosts") => {}
            "load" => w.unsupported(
                PERLBAL,
                no,
                "LOAD",
                &format!("Perlbal plugins ({}) have no duet equivalent", arg(1)),
            ),
            "server" => w.unsupported(
                PERLBAL,
                no,
                "SERVER",
                "process settings are not imported (duet accepts at most 10000 client \
                 connections per service and runs as the service manager starts it)",
            ),
            "header" => w.unsupported(
                PERLBAL,
                no,
                "HEADER",
                "duet sets X-Forwarded-For/-Proto/-Host itself and rewrites no other header",
            ),
            "vhost" => vhost_command(&mut pb, last, line, no, w),
            "xs" => w.unsupported(PERLBAL, no, "XS", "duet has no Perl extensions to enable"),
            _ => w.unsupported(PERLBAL, no, words[0], "unknown command"),
        }
    }
    pb
}

/// `VHOST [selector] host = service` (the vhosts plugin): the selector is
/// the service named, or the one created last.
fn vhost_command(pb: &mut Perlbal, last: Last, line: &str, no: usize, w: &mut Warnings) {
    let rest = line[5..].trim();
    let parsed = rest.split_once('=').and_then(|(left, target)| {
        let target = target.trim();
        let left: Vec<&str> = left.split_whitespace().collect();
        let (selector, host) = match left.as_slice() {
            [host] => (None, *host),
            [sel, host] => (Some(*sel), *host),
            _ => return None,
        };
        (!target.is_empty() && !target.contains(' ')).then_some((selector, host, target))
    });
    let Some((selector, host, target)) = parsed else {
        w.at(
            PERLBAL,
            no,
            "cannot parse VHOST: expected VHOST [service] host = service; ignored",
        );
        return;
    };
    let i = match (selector, last) {
        (Some(name), _) => pb.services.iter().position(|s| s.name == name),
        (None, Last::Service(i)) => Some(i),
        (None, _) => None,
    };
    match i {
        Some(i) => pb.services[i]
            .vhosts
            .push((no, host.to_ascii_lowercase(), target.to_string())),
        None => w.at(
            PERLBAL,
            no,
            "VHOST names no selector service (CREATE SERVICE first); ignored",
        ),
    }
}

/// `POOL name ADD|REMOVE ip[:port]`.
fn pool_command(pb: &mut Perlbal, words: &[&str], no: usize, w: &mut Warnings) {
    let (name, op, addr) = match words {
        [_, name, op, addr] => (*name, op.to_ascii_lowercase(), *addr),
        _ => {
            w.at(
                PERLBAL,
                no,
                "cannot parse POOL: expected POOL name ADD|REMOVE ip:port; ignored",
            );
            return;
        }
    };
    let Some(pool) = pb.pools.iter_mut().find(|p| p.name == name) else {
        w.at(
            PERLBAL,
            no,
            format_args!("POOL {name}: no such pool (CREATE POOL first); ignored"),
        );
        return;
    };
    let parsed = match addr.split_once(':') {
        Some((ip, port)) => ip
            .parse::<Ipv4Addr>()
            .ok()
            .zip(port.parse::<u16>().ok().filter(|p| *p > 0)),
        None => addr.parse().ok().map(|ip| (ip, DEFAULT_BACKEND_PORT)),
    };
    let Some((ip, port)) = parsed else {
        w.unsupported(
            PERLBAL,
            no,
            "POOL",
            &format!(
                "{addr:?} is not an IPv4 address and port (host names are not resolved); skipped"
            ),
        );
        return;
    };
    let member = SocketAddrV4::new(ip, port);
    match op.as_str() {
        "add" if pool.members.contains(&member) => w.at(
            PERLBAL,
            no,
            format_args!("{member} added twice to pool {name}; kept once"),
        ),
        "add" => pool.members.push(member),
        "remove" => pool.members.retain(|m| *m != member),
        _ => w.at(
            PERLBAL,
            no,
            format_args!("POOL {name} {op}: expected ADD or REMOVE; ignored"),
        ),
    }
}

fn pool_setting(key: &str, value: &str, no: usize, w: &mut Warnings) {
    match key {
        "balance_method" if value.eq_ignore_ascii_case("random") => {}
        "balance_method" => w.unsupported(
            PERLBAL,
            no,
            key,
            &format!("balance method {value:?} is not available; rr is used"),
        ),
        "nodefile" => w.unsupported(
            PERLBAL,
            no,
            key,
            "list the members in backends (duet reads no node file; change them with reload)",
        ),
        _ => w.unsupported(PERLBAL, no, key, "unknown pool setting"),
    }
}

fn service_setting(s: &mut Service, key: &str, value: &str, no: usize, w: &mut Warnings) {
    let flag = |w: &mut Warnings| {
        let b = parse_yes_no(value);
        if b.is_none() {
            w.at(
                PERLBAL,
                no,
                format_args!("{key} = {value:?} is not on or off; ignored"),
            );
        }
        b
    };
    let secs = |w: &mut Warnings| {
        let n = value.parse::<u64>().ok().filter(|n| *n > 0);
        if n.is_none() {
            w.at(
                PERLBAL,
                no,
                format_args!("{key} = {value:?} is not a positive number of seconds; ignored"),
            );
        }
        n
    };
    match key {
        "listen" => s.listen = parse_listen(value, no, w).or(s.listen),
        "role" => s.role = Some((no, value.to_ascii_lowercase())),
        "pool" => s.pool = Some((no, value.to_string())),
        "persist_client" => s.persist_client = flag(w).unwrap_or(s.persist_client),
        "persist_backend" => s.persist_backend = flag(w).unwrap_or(s.persist_backend),
        "verify_backend" => s.verify_backend = flag(w).unwrap_or(s.verify_backend),
        "verify_backend_path" => s.verify_backend_path = Some(value.to_string()),
        "backend_persist_cache" => match value.parse::<usize>() {
            Ok(n) if n > 0 => s.backend_persist_cache = Some(n),
            _ => w.at(
                PERLBAL,
                no,
                format_args!(
                    "backend_persist_cache = {value:?} is not a positive count; ignored \
                     (persist_backend = off keeps no idle connection)"
                ),
            ),
        },
        "idle_timeout" => s.idle_timeout_s = secs(w).or(s.idle_timeout_s),
        "persist_client_idle_timeout" => {
            s.persist_client_idle_timeout_s = secs(w).or(s.persist_client_idle_timeout_s)
        }
        "trusted_upstream_proxies" => trusted(&mut s.trusted, value, no, w),
        "always_trusted" => w.unsupported(
            PERLBAL,
            no,
            key,
            "duet believes forwarding headers only from the addresses in trusted_proxies",
        ),
        "connect_ahead" => w.unsupported(
            PERLBAL,
            no,
            key,
            "duet connects on demand and keeps the connections persist_backend leaves idle",
        ),
        "max_backend_uses" => w.unsupported(
            PERLBAL,
            no,
            key,
            "a kept backend connection is reused until it idles out (backend_idle_timeout)",
        ),
        "enable_reproxy" | "reproxy_cache_maxsize" => w.unsupported(
            PERLBAL,
            no,
            key,
            "X-REPROXY-URL responses are relayed to the client as they are",
        ),
        "buffer_size"
        | "buffer_size_reproxy_url"
        | "buffer_backend_connect"
        | "buffer_uploads"
        | "buffer_uploads_path"
        | "client_sndbuf_size"
        | "max_chunked_request_size" => w.unsupported(
            PERLBAL,
            no,
            key,
            "duet streams bodies both ways without buffering them (max_body caps request \
                 bodies if wanted)",
        ),
        "upload_status_listeners" => w.unsupported(PERLBAL, no, key, "no upload status reports"),
        // Virtual hosts become the service's routes.
        "plugins" if value.eq_ignore_ascii_case("vhosts") => {}
        "plugins" => w.unsupported(PERLBAL, no, key, "Perlbal plugins have no duet equivalent"),
        "docroot"
        | "dirindexing"
        | "index_files"
        | "enable_put"
        | "enable_delete"
        | "min_put_directory"
        | "max_put_size"
        | "enable_concatenate_get" => {
            w.unsupported(PERLBAL, no, key, "duet serves no files (web_server role)")
        }
        _ => w.unsupported(PERLBAL, no, key, "unknown service setting"),
    }
}

/// `ip:port`, `0.0.0.0:port` or a bare `port` (every address).
fn parse_listen(
    value: &str,
    no: usize,
    w: &mut Warnings,
) -> Option<(usize, Option<Ipv4Addr>, u16)> {
    let (ip, port) = match value.rsplit_once(':') {
        Some((ip, port)) => (Some(ip), port),
        None => (None, value),
    };
    let port = port.parse::<u16>().ok().filter(|p| *p > 0);
    let ip = match ip.map(str::parse::<Ipv4Addr>) {
        None => Some(None),
        Some(Ok(a)) if a.is_unspecified() => Some(None),
        Some(Ok(a)) => Some(Some(a)),
        Some(Err(_)) => None,
    };
    match (ip, port) {
        (Some(ip), Some(port)) => Some((no, ip, port)),
        _ => {
            w.unsupported(
                PERLBAL,
                no,
                "listen",
                &format!("{value:?} is not an IPv4 address and port; ignored"),
            );
            None
        }
    }
}

/// `trusted_upstream_proxies`: addresses and networks, comma separated.
/// duet lists addresses, so a network up to /24 is spelled out.
fn trusted(out: &mut Vec<Ipv4Addr>, value: &str, no: usize, w: &mut Warnings) {
    for item in value.split([',', ' ']).filter(|s| !s.is_empty()) {
        let (addr, bits) = match item.split_once('/') {
            Some((a, b)) => (a, b.parse::<u32>().ok()),
            None => (item, Some(32)),
        };
        match (addr.parse::<Ipv4Addr>(), bits) {
            (Ok(a), Some(bits @ 24..=32)) => {
                let size = 1u32 << (32 - bits);
                let base = u32::from(a) & !(size - 1);
                for n in base..base + size {
                    let ip = Ipv4Addr::from(n);
                    if !out.contains(&ip) {
                        out.push(ip);
                    }
                }
            }
            _ => w.unsupported(
                PERLBAL,
                no,
                "trusted_upstream_proxies",
                &format!(
                    "{item:?}: trusted_proxies lists addresses, and networks larger than /24 \
                     are not spelled out; add the proxies' addresses"
                ),
            ),
        }
    }
}

// ---------------------------------------------------------------- haresources

/// The first resource group: `node resource…`, such as
/// `lb1 192.168.0.99 perlbal` or `lb1 IPaddr::192.168.0.99/24/eth0 perlbal`.
struct Resources {
    node: String,
    vips: Vec<(usize, Ipv4Addr)>,
    interface: Option<String>,
}

fn parse_haresources(text: &str, w: &mut Warnings) -> Option<Resources> {
    let mut res: Option<Resources> = None;
    // A trailing backslash continues a group on the next line.
    let mut continued = false;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continued = false;
            continue;
        }
        let (line, more) = match line.strip_suffix('\\') {
            Some(l) => (l.trim(), true),
            None => (line, false),
        };
        let mut words = line.split_whitespace();
        if !continued {
            let Some(node) = words.next() else { continue };
            if res.is_some() {
                w.unsupported(
                    HARESOURCES,
                    no,
                    "resource group",
                    &format!("a duet pair moves one VIP; the resources of {node} are not imported"),
                );
                continued = more;
                continue;
            }
            res = Some(Resources {
                node: node.to_string(),
                vips: Vec::new(),
                interface: None,
            });
        }
        continued = more;
        let Some(r) = res.as_mut() else { continue };
        for word in words {
            resource(r, word, no, w);
        }
    }
    res
}

fn resource(r: &mut Resources, word: &str, no: usize, w: &mut Warnings) {
    // `IPaddr::ip/bits/iface`, `IPaddr2::…`, or a bare address.
    let (agent, args) = match word.split_once("::") {
        Some((a, args)) => (a, args),
        None if word.parse::<Ipv4Addr>().is_ok() => ("IPaddr", word),
        None => (word, ""),
    };
    match agent {
        "IPaddr" | "IPaddr2" => {
            let mut parts = args.split('/');
            match parts.next().unwrap_or("").parse::<Ipv4Addr>() {
                Ok(ip) => r.vips.push((no, ip)),
                Err(_) => w.unsupported(
                    HARESOURCES,
                    no,
                    agent,
                    &format!("{args:?} does not start with an IPv4 address"),
                ),
            }
            if let Some(iface) = parts.nth(1).filter(|i| !i.is_empty()) {
                r.interface.get_or_insert_with(|| iface.to_string());
            }
        }
        // duet is the proxy heartbeat started here.
        "perlbal" => {}
        _ => w.unsupported(
            HARESOURCES,
            no,
            agent,
            "duet moves the VIP and runs the proxy; other resources need their own manager",
        ),
    }
}

// ---------------------------------------------------------------- output

/// A service the output keeps.
struct Kept<'a> {
    svc: &'a Service,
    vip: Ipv4Addr,
    port: u16,
    members: &'a [SocketAddrV4],
    /// A selector's virtual hosts: (host, members); `svc` is then the
    /// service its other hosts go to.
    routes: Vec<(String, &'a [SocketAddrV4])>,
    selector: Option<&'a Service>,
}

/// What one enabled service turns into, before its VIPs are known.
struct Candidate<'a> {
    svc: &'a Service,
    ip: Option<Ipv4Addr>,
    port: u16,
    members: &'a [SocketAddrV4],
    routes: Vec<(String, &'a [SocketAddrV4])>,
    selector: Option<&'a Service>,
}

/// A reverse proxy's pool members, or why it has none.
fn pool_of<'a>(pb: &'a Perlbal, s: &Service) -> Result<&'a [SocketAddrV4], (usize, String)> {
    let Some((line, pool)) = &s.pool else {
        return Err((s.line, format!("service {} has no pool", s.name)));
    };
    pb.pools
        .iter()
        .find(|p| &p.name == pool)
        .map(|p| p.members.as_slice())
        .ok_or((*line, format!("pool {pool} does not exist")))
}

/// A selector (the vhosts plugin) as one proxy service with a route per
/// virtual host; `*` (or, without it, the first host's service) takes the
/// rest.
fn selector<'a>(pb: &'a Perlbal, sel: &'a Service, w: &mut Warnings) -> Option<Candidate<'a>> {
    let mut routes = Vec::new();
    let mut default: Option<&Service> = None;
    let mut first: Option<&Service> = None;
    for (no, host, target) in &sel.vhosts {
        let Some(t) = pb.services.iter().find(|s| {
            &s.name == target && s.role.as_ref().is_some_and(|(_, r)| r == "reverse_proxy")
        }) else {
            w.at(
                PERLBAL,
                *no,
                format_args!("VHOST {host}: {target} is not a reverse_proxy service; ignored"),
            );
            continue;
        };
        let members = match pool_of(pb, t) {
            Ok(m) => m,
            Err((l, why)) => {
                w.at(PERLBAL, l, format_args!("{why}; VHOST {host} ignored"));
                continue;
            }
        };
        if host == "*" {
            default = Some(t);
        } else if host.contains('*') {
            w.unsupported(
                PERLBAL,
                *no,
                "VHOST",
                &format!("{host}: a route names one host exactly (no wildcards); skipped"),
            );
        } else {
            first.get_or_insert(t);
            routes.push((host.clone(), members));
        }
    }
    let Some(svc) = default.or(first) else {
        w.at(
            PERLBAL,
            sel.line,
            format_args!("selector {} has no usable VHOST; skipped", sel.name),
        );
        return None;
    };
    if default.is_none() {
        w.at(
            PERLBAL,
            sel.line,
            format_args!(
                "selector {} has no VHOST * = …: other hosts go to {}'s pool",
                sel.name, svc.name
            ),
        );
    }
    let (ip, port) = sel.listen.map_or((None, 80), |(_, ip, port)| (ip, port));
    Some(Candidate {
        svc,
        ip,
        port,
        members: pool_of(pb, svc).ok()?,
        routes,
        selector: Some(sel),
    })
}

fn render(pb: &Perlbal, ha: Option<&Ha>, res: Option<&Resources>, w: &mut Warnings) -> String {
    // Which services become proxy services. A reverse proxy that only a
    // selector's VHOST reaches (it listens nowhere itself) is served
    // through that selector.
    let behind_selector: BTreeSet<&str> = pb
        .services
        .iter()
        .filter(|s| s.enabled && s.role.as_ref().is_some_and(|(_, r)| r == "selector"))
        .flat_map(|s| s.vhosts.iter().map(|(_, _, t)| t.as_str()))
        .collect();
    let mut candidates: Vec<Candidate> = Vec::new();
    for s in &pb.services {
        let role = s.role.as_ref().map_or("", |(_, r)| r.as_str());
        if role == "selector" && s.enabled {
            candidates.extend(selector(pb, s, w));
            continue;
        }
        if role != "reverse_proxy" {
            let why = match role {
                "" => "it has no role".to_string(),
                "management" => "the management console's place is taken by duet's status \
                    page and admin API (cluster.status_listen)"
                    .to_string(),
                "web_server" => "duet serves no files".to_string(),
                "selector" => "it is never ENABLEd".to_string(),
                other => format!("role {other:?} is not available"),
            };
            let line = s.role.as_ref().map_or(s.line, |(l, _)| *l);
            w.unsupported(
                PERLBAL,
                line,
                "role",
                &format!("service {} is skipped: {why}", s.name),
            );
            continue;
        }
        if s.listen.is_none() && behind_selector.contains(s.name.as_str()) {
            continue;
        }
        if !s.enabled {
            w.at(
                PERLBAL,
                s.line,
                format_args!("service {} is never ENABLEd; skipped", s.name),
            );
            continue;
        }
        let members = match pool_of(pb, s) {
            Ok(m) => m,
            Err((line, why)) => {
                w.at(
                    PERLBAL,
                    line,
                    format_args!("{why}; service {} skipped", s.name),
                );
                continue;
            }
        };
        let (ip, port) = match s.listen {
            Some((_, ip, port)) => (ip, port),
            None => {
                w.at(
                    PERLBAL,
                    s.line,
                    format_args!("service {} sets no listen; port 80 is used", s.name),
                );
                (None, 80)
            }
        };
        candidates.push(Candidate {
            svc: s,
            ip,
            port,
            members,
            routes: Vec::new(),
            selector: None,
        });
    }

    // Every address a service names and every address heartbeat moves is a
    // VIP of the pair, services' own first. A service on every address
    // (0.0.0.0) was served on what heartbeat moved there: it gets a
    // service on each of those (or on the first VIP).
    let mut vips: Vec<Ipv4Addr> = Vec::new();
    let moved: Vec<Ipv4Addr> = res
        .map(|r| r.vips.iter().map(|(_, a)| *a).collect())
        .unwrap_or_default();
    for a in candidates
        .iter()
        .filter_map(|c| c.ip)
        .chain(moved.iter().copied())
    {
        if !vips.contains(&a) {
            vips.push(a);
        }
    }
    if vips.is_empty() {
        w.general(
            "no service listens on an address and no haresources names one: the VIP \
             198.18.0.100 is a placeholder",
        );
        vips.push(Ipv4Addr::new(198, 18, 0, 100));
    }
    let everywhere: Vec<Ipv4Addr> = if moved.is_empty() {
        vec![vips[0]]
    } else {
        moved.clone()
    };
    let mut kept: Vec<Kept> = Vec::new();
    let mut ports = BTreeSet::new();
    for c in candidates {
        let named = c.selector.unwrap_or(c.svc);
        let (svc, port) = (c.svc, c.port);
        let line = named.listen.map_or(named.line, |(l, _, _)| l);
        let on: Vec<Ipv4Addr> = match c.ip {
            Some(a) => vec![a],
            None => {
                let list: Vec<String> = everywhere.iter().map(|v| v.to_string()).collect();
                w.at(
                    PERLBAL,
                    line,
                    format_args!(
                        "service {} listens on every address; duet accepts on the VIP {} only",
                        named.name,
                        list.join(", ")
                    ),
                );
                everywhere.clone()
            }
        };
        for vip in on {
            if !ports.insert((vip, port)) {
                w.at(
                    PERLBAL,
                    line,
                    format_args!("second service on {vip}:{port} ({}) skipped", named.name),
                );
                continue;
            }
            kept.push(Kept {
                svc,
                vip,
                port,
                members: c.members,
                routes: c.routes.clone(),
                selector: c.selector,
            });
        }
    }

    let (mut names, addrs) = nodes_of(ha, &[], w);
    // haresources names the node that owns the VIP when both are up.
    let preferred = res.and_then(|r| {
        let i = names.iter().position(|n| *n == r.node);
        if i.is_none() {
            w.general(format!(
                "{HARESOURCES}: node {} is not one of the nodes ({}); priorities follow ha.cf",
                r.node,
                names.join(", ")
            ));
        }
        i
    });
    let order: [usize; 2] = if preferred == Some(1) { [1, 0] } else { [0, 1] };
    if ha.is_none() {
        if let Some(r) = res {
            // The one name haresources gives is better than a placeholder.
            names[0] = r.node.clone();
        }
    }

    let header = vec![
        format!(
            "Imported from perlbal.conf{}{} by `duet import-perlbal`.",
            if ha.is_some() { ", ha.cf" } else { "" },
            if res.is_some() { ", haresources" } else { "" }
        ),
        "Review the warnings printed with it before use.".to_string(),
    ];
    let interface = ha
        .and_then(|h| h.interface.clone())
        .or_else(|| res.and_then(|r| r.interface.clone()));
    let cluster = cluster_of(&vips, interface, w);
    let nodes = order
        .iter()
        .map(|&i| out::Node {
            name: names[i].clone(),
            address: addrs[i].to_string(),
            priority: if i == order[0] { 150 } else { 100 },
            weight: None,
        })
        .collect();
    let heartbeat = heartbeat_of(ha, w);

    if kept.is_empty() {
        w.general("no enabled reverse_proxy service with a pool: the config has no service");
    }
    let services = kept
        .iter()
        .map(|k| service_of(k, &addrs, &vips, w))
        .collect();
    out::Document {
        header,
        cluster,
        nodes,
        heartbeat,
        services,
    }
    .render()
}

/// One proxy service, and the comment that says where it came from.
fn service_of(
    k: &Kept,
    nodes: &[Ipv4Addr],
    vips: &[Ipv4Addr],
    w: &mut Warnings,
) -> (String, out::Service) {
    let s = k.svc;
    let line = s.pool.as_ref().map_or(s.line, |(l, _)| *l);
    // A node in its own pool serves through serve_local, which reaches
    // the nodes on the service port.
    let on_nodes: Vec<&SocketAddrV4> = k
        .members
        .iter()
        .filter(|m| nodes.contains(m.ip()) || vips.contains(m.ip()))
        .collect();
    let serve_local = nodes
        .iter()
        .all(|n| on_nodes.iter().any(|m| m.ip() == n && m.port() == k.port));
    for m in &on_nodes {
        if !(serve_local && nodes.contains(m.ip())) {
            w.at(
                PERLBAL,
                line,
                format_args!(
                    "pool member {m} is a node or the VIP; only both nodes on the service port \
                     can serve (serve_local), so it is left out"
                ),
            );
        }
    }
    let backends: Vec<out::Backend> = k
        .members
        .iter()
        .filter(|m| !on_nodes.contains(m))
        .map(|m| out::Backend::Plain(m.to_string()))
        .collect();
    if backends.is_empty() && !serve_local {
        w.at(
            PERLBAL,
            line,
            format_args!("pool of service {} has no usable member", s.name),
        );
    }
    let comment = match k.selector {
        Some(sel) => format!(
            "Perlbal selector {} (vhosts); other hosts go to service {}",
            sel.name, s.name
        ),
        None => format!("Perlbal service {}", s.name),
    };
    let check = s.verify_backend.then(|| {
        let ports: BTreeSet<u16> = k.members.iter().map(|m| m.port()).collect();
        // OPTIONS * (Perlbal's default) has no path a GET can ask for.
        let path = match s.verify_backend_path.as_deref() {
            Some(p) if p.starts_with('/') => p,
            _ => "/",
        };
        let port = match ports.iter().next() {
            Some(p) if ports.len() == 1 && *p != k.port => Some(*p),
            _ if ports.len() > 1 => {
                w.at(
                    PERLBAL,
                    line,
                    format_args!(
                        "pool members of service {} listen on different ports; the check \
                         probes port {} (set check.port, or split the service)",
                        s.name, k.port
                    ),
                );
                None
            }
            _ => None,
        };
        // Perlbal verifies before every new connection: react at once.
        out::Check {
            kind: "http",
            request: Some(path.to_string()),
            port,
            interval: "1s".into(),
            timeout: "1s".into(),
            rise: 1,
            fall: 1,
            ..out::Check::default()
        }
    });
    let mut route = Vec::new();
    for (host, members) in &k.routes {
        // Nodes serve a proxy only as serve_local members of the service.
        let backends: Vec<String> = members
            .iter()
            .filter(|m| !nodes.contains(m.ip()) && !vips.contains(m.ip()))
            .map(|m| m.to_string())
            .collect();
        if backends.len() < members.len() {
            w.at(
                PERLBAL,
                line,
                format_args!(
                    "VHOST {host}: pool members on a node or the VIP are left out of its route"
                ),
            );
        }
        if backends.is_empty() {
            w.at(
                PERLBAL,
                line,
                format_args!("VHOST {host}: no usable member; the route is left out"),
            );
            continue;
        }
        route.push(out::Route {
            host: host.clone(),
            backends,
        });
    }
    let service = out::Service {
        vip: (vips.len() > 1).then(|| k.vip.to_string()),
        port: k.port,
        mode: Some("proxy"),
        scheduler: "rr".into(),
        serve_local,
        backends: Some(backends),
        persist_client: Some(s.persist_client),
        persist_backend: Some(s.persist_backend),
        backend_idle_max: s.backend_persist_cache.filter(|_| s.persist_backend),
        client_idle_timeout: s
            .persist_client_idle_timeout_s
            .or(s.idle_timeout_s)
            .map(|t| duration(t * 1000)),
        trusted_proxies: (!s.trusted.is_empty())
            .then(|| s.trusted.iter().map(|a| a.to_string()).collect()),
        check,
        route,
        ..out::Service::default()
    };
    (comment, service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Value;

    const CONF: &str = include_str!("../../tests/fixtures/perlbal.conf");
    const HA_CF: &str = include_str!("../../tests/fixtures/ha-perlbal.cf");
    const RES: &str = include_str!("../../tests/fixtures/haresources");

    fn parsed(i: &Imported) -> Value {
        match toml::from_str::<Value>(&i.toml) {
            Ok(v) => v,
            Err(e) => panic!("invalid TOML: {e}\n{}", i.toml),
        }
    }

    fn warned(i: &Imported, needle: &str) -> bool {
        i.warnings.iter().any(|w| w.contains(needle))
    }

    #[test]
    fn issue_fixture_maps_every_line() {
        let i = import_perlbal(CONF, Some(HA_CF), Some(RES));
        let v = parsed(&i);
        assert_eq!(v["cluster"]["vip"].as_str(), Some("192.168.0.99"));
        assert_eq!(v["node"][0]["name"].as_str(), Some("lb1"));
        assert_eq!(v["node"][0]["priority"].as_integer(), Some(150));
        let s = &v["service"][0];
        assert_eq!(s["port"].as_integer(), Some(80));
        assert_eq!(s["mode"].as_str(), Some("proxy"));
        assert_eq!(s["serve_local"].as_bool(), Some(false));
        let backends: Vec<&str> = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(backends, ["192.168.0.102:80", "192.168.0.103:80"]);
        assert_eq!(s["persist_client"].as_bool(), Some(true));
        assert_eq!(s["persist_backend"].as_bool(), Some(true));
        assert_eq!(s["check"]["kind"].as_str(), Some("http"));
        assert!(s["check"].get("port").is_none());
        // Every perlbal.conf line of the issue has an equivalent.
        assert!(!warned(&i, "perlbal.conf"), "{:#?}", i.warnings);
    }

    #[test]
    fn haresources_gives_the_vip_and_the_preferred_node() {
        let conf = "CREATE POOL p\nPOOL p ADD 198.18.0.20:8080\nPOOL p ADD 198.18.0.21\n\
            CREATE SERVICE web\nSET listen = 0.0.0.0:8000\nSET role = reverse_proxy\n\
            SET pool = p\nSET verify_backend = yes\nSET backend_persist_cache = 4\n\
            SET persist_backend = on\nSET idle_timeout = 20\n\
            SET web.trusted_upstream_proxies = 198.18.1.0/30, 198.18.2.7\nENABLE web\n";
        let ha = "ucast eth1 198.18.0.1\nucast eth1 198.18.0.2\nnode a\nnode b\n";
        let res = "# comment\nb IPaddr::198.18.0.100/24/eth1 \\\n  perlbal httpd\na 10.0.0.1\n";
        let i = import_perlbal(conf, Some(ha), Some(res));
        let v = parsed(&i);
        assert_eq!(v["cluster"]["vip"].as_str(), Some("198.18.0.100"));
        assert_eq!(v["node"][0]["name"].as_str(), Some("b"));
        assert_eq!(v["node"][0]["address"].as_str(), Some("198.18.0.2"));
        assert_eq!(v["node"][0]["priority"].as_integer(), Some(150));
        assert_eq!(v["node"][1]["name"].as_str(), Some("a"));
        let s = &v["service"][0];
        assert_eq!(s["port"].as_integer(), Some(8000));
        assert_eq!(s["persist_client"].as_bool(), Some(false));
        assert_eq!(s["backend_idle_max"].as_integer(), Some(4));
        assert_eq!(s["client_idle_timeout"].as_str(), Some("20s"));
        assert_eq!(s["trusted_proxies"].as_array().map(Vec::len), Some(5));
        // Members on 8080 and 80: the check cannot name one port.
        assert!(warned(&i, "different ports"), "{:#?}", i.warnings);
        assert!(warned(
            &i,
            "haresources line 3: directive httpd not supported"
        ));
        assert!(warned(&i, "haresources line 4: directive resource group"));
        assert!(warned(&i, "listens on every address"));
    }

    #[test]
    fn what_cannot_be_carried_over_is_named_with_its_line() {
        let conf = "\
LOAD stats
CREATE POOL p
SET nodefile = /etc/perlbal/nodes
POOL p ADD web1.example:80
POOL p ADD 198.18.0.20:80
CREATE SERVICE mgmt
SET role = management
SET listen = 127.0.0.1:60000
ENABLE mgmt
CREATE SERVICE web
SET role = reverse_proxy
SET pool = p
SET listen = 198.18.0.100:80
SET enable_reproxy = true
SET frobnicate = 1
HEADER web INSERT X-A: b
CREATE SERVICE off
SET role = reverse_proxy
SET pool = p
SET listen = 198.18.0.100:81
SET web.buffer_uploads = on
CREATE SERVICE other
SET role = reverse_proxy
SET pool = p
SET listen = 198.18.0.101:80
ENABLE other
ENABLE web
bogus line
";
        let i = import_perlbal(conf, None, None);
        let v = parsed(&i);
        for expected in [
            "perlbal.conf line 1: directive LOAD not supported",
            "perlbal.conf line 3: directive nodefile not supported",
            "perlbal.conf line 4: directive POOL not supported",
            "perlbal.conf line 7: directive role not supported: service mgmt is skipped",
            "perlbal.conf line 14: directive enable_reproxy not supported",
            "perlbal.conf line 15: directive frobnicate not supported",
            "perlbal.conf line 16: directive HEADER not supported",
            "perlbal.conf line 17: service off is never ENABLEd",
            "perlbal.conf line 21: directive buffer_uploads not supported",
            "perlbal.conf line 28: directive bogus not supported",
            "no ha.cf given",
        ] {
            assert!(
                warned(&i, expected),
                "missing {expected:?} in {:#?}",
                i.warnings
            );
        }
        // Service other on 198.18.0.101 is a second VIP of the pair.
        assert_eq!(v["service"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            v["cluster"]["vip"],
            Value::from(vec!["198.18.0.100", "198.18.0.101"])
        );
        assert_eq!(v["service"][0]["vip"].as_str(), Some("198.18.0.100"));
        assert_eq!(v["service"][1]["vip"].as_str(), Some("198.18.0.101"));
        assert_eq!(v["service"][0]["persist_client"].as_bool(), Some(false));
        assert!(v["service"][0].get("check").is_none());
    }

    #[test]
    fn random_input_never_panics_and_always_yields_valid_toml() {
        let pieces = [
            "CREATE ",
            "POOL ",
            "SERVICE ",
            "SET ",
            "ENABLE ",
            "p ",
            "s ",
            "ADD ",
            "REMOVE ",
            "listen",
            " = ",
            "role",
            "reverse_proxy",
            "pool",
            "0.0.0.0",
            ":",
            "80",
            "198.18.0.20",
            "\n",
            "#",
            "\\",
            "/",
            "IPaddr::",
            "verify_backend",
            "on",
            "x",
            "-1",
            "é",
            ".",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let len = rng.usize(0..40);
            let text: String = (0..len)
                .map(|_| pieces[rng.usize(..pieces.len())])
                .collect();
            parsed(&import_perlbal(&text, Some(&text), Some(&text)));
        }
    }
}
