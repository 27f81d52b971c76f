//! `duet import-ldirectord`: turns an ldirectord.cf (and optionally
//! heartbeat's ha.cf) into the equivalent duet.toml; `import-perlbal`
//! (`perlbal`) does the same for Perlbal, sharing the ha.cf side.
//!
//! The output follows the config contract of DESIGN.md section 4. Anything
//! that has no duet equivalent, or that the importer had to guess, becomes a
//! warning naming the file and line, so the operator can review the result
//! before using it. Importing never fails: the worst input yields a skeleton
//! config and a list of warnings.
//!
//! What needs guessing:
//! - ha.cf names the nodes but not their addresses. When ha.cf has one
//!   `ucast` address per node, those are used (in order). Otherwise, when
//!   the virtual services' real servers are exactly two addresses and there
//!   are two nodes, this is taken to be the two-box layout (each node is a
//!   real server). Failing both, the nodes get placeholder addresses
//!   198.18.0.1 and 198.18.0.2.
//! - A service whose real servers include both nodes gets
//!   `serve_local = true`; the remaining real servers become `backends`.
mod out;
mod perlbal;

pub use perlbal::import_perlbal;

use out::duration;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The produced config and what the operator must review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub toml: String,
    pub warnings: Vec<String>,
}

const LDIRECTORD: &str = "ldirectord.cf";
const HA: &str = "ha.cf";
const PLACEHOLDER_NODES: [Ipv4Addr; 2] =
    [Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)];
/// ldirectord's defaults.
const DEFAULT_CHECK_INTERVAL_MS: u64 = 5_000;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
const DEFAULT_NEGOTIATE_TIMEOUT_MS: u64 = 30_000;

/// Converts `ldirectord_cf` (and `ha_cf`) into a duet.toml.
pub fn import(ldirectord_cf: &str, ha_cf: Option<&str>) -> Imported {
    let mut w = Warnings::default();
    let ld = parse_ldirectord(ldirectord_cf, &mut w);
    let ha = ha_cf.map(|text| parse_ha(text, &mut w));
    let toml = render(&ld, ha.as_ref(), &mut w);
    Imported {
        toml,
        warnings: w.0,
    }
}

#[derive(Default)]
struct Warnings(Vec<String>);

impl Warnings {
    fn at(&mut self, file: &str, line: usize, msg: impl std::fmt::Display) {
        self.0.push(format!("{file} line {line}: {msg}"));
    }
    fn unsupported(&mut self, file: &str, line: usize, directive: &str, why: &str) {
        self.at(
            file,
            line,
            format_args!("directive {directive} not supported: {why}"),
        );
    }
    fn general(&mut self, msg: impl Into<String>) {
        self.0.push(msg.into());
    }
}

// ---------------------------------------------------------------- ldirectord

/// Directives that may appear globally and be overridden per virtual.
#[derive(Debug, Clone, Default)]
struct Settings {
    checktype: Option<(usize, String)>,
    checkcommand: Option<String>,
    service: Option<String>,
    request: Option<String>,
    receive: Option<String>,
    virtualhost: Option<String>,
    scheduler: Option<(usize, String)>,
    persistent_s: Option<u64>,
    netmask: Option<Ipv4Addr>,
    protocol: Option<(usize, String)>,
    quiescent: Option<bool>,
    checkinterval_ms: Option<u64>,
    checktimeout_ms: Option<u64>,
    negotiatetimeout_ms: Option<u64>,
    connecttimeout_ms: Option<u64>,
    failurecount: Option<u32>,
    fallback: Option<(usize, String)>,
    checkport: Option<u16>,
}

#[derive(Debug)]
struct Virtual {
    line: usize,
    vip: Ipv4Addr,
    port: u16,
    reals: Vec<Ipv4Addr>,
    /// `real=` weights other than 1.
    weights: BTreeMap<Ipv4Addr, u32>,
    settings: Settings,
}

struct Ldirectord {
    virtuals: Vec<Virtual>,
}

/// Splits `key = value` (ldirectord allows blanks around `=`) and strips
/// one level of double quotes from the value.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    let k = k.trim();
    if k.is_empty() || k.contains(char::is_whitespace) {
        return None;
    }
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    Some((k, v))
}

fn service_port(name: &str) -> Option<u16> {
    if let Ok(p) = name.parse() {
        return Some(p);
    }
    Some(match name {
        "ftp" => 21,
        "ssh" => 22,
        "smtp" => 25,
        "domain" | "dns" => 53,
        "http" | "www" => 80,
        "pop3" | "pop" => 110,
        "nntp" => 119,
        "imap" => 143,
        "ldap" => 389,
        "https" => 443,
        "imaps" => 993,
        "pop3s" => 995,
        "mysql" => 3306,
        "postgresql" | "pgsql" => 5432,
        "sip" => 5060,
        _ => return None,
    })
}

/// The service ldirectord assumes for a port when `service=` is absent.
fn port_service(port: u16) -> &'static str {
    match port {
        21 => "ftp",
        25 => "smtp",
        53 => "dns",
        80 => "http",
        110 => "pop",
        119 => "nntp",
        143 => "imap",
        389 => "ldap",
        443 => "https",
        3306 => "mysql",
        5432 => "pgsql",
        5060 => "sip",
        _ => "none",
    }
}

fn parse_secs(v: &str) -> Option<u64> {
    let s: f64 = v.parse().ok()?;
    (s.is_finite() && s >= 0.0).then(|| (s * 1000.0).round() as u64)
}

fn parse_yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "on" | "true" | "1" => Some(true),
        "no" | "off" | "false" | "0" => Some(false),
        _ => None,
    }
}

fn parse_ldirectord(text: &str, w: &mut Warnings) -> Ldirectord {
    let mut global = Settings::default();
    let mut virtuals: Vec<Virtual> = Vec::new();
    // Whether indented lines currently belong to a virtual we kept (false
    // after a skipped one, so its directives do not leak into the previous).
    let mut in_virtual = false;
    let mut skipping = false;
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        let Some((key, value)) = key_value(trimmed) else {
            w.at(
                LDIRECTORD,
                no,
                format_args!("cannot parse {trimmed:?}: expected directive=value"),
            );
            continue;
        };
        if !indented {
            in_virtual = false;
            skipping = false;
        }
        if key == "virtual" {
            match parse_virtual(value, no, w) {
                Some((vip, port)) => {
                    virtuals.push(Virtual {
                        line: no,
                        vip,
                        port,
                        reals: Vec::new(),
                        weights: BTreeMap::new(),
                        settings: global.clone(),
                    });
                    in_virtual = true;
                    skipping = false;
                }
                None => {
                    in_virtual = false;
                    skipping = true;
                }
            }
            continue;
        }
        if skipping {
            continue;
        }
        match virtuals.last_mut() {
            Some(v) if indented && in_virtual => {
                if key == "real" {
                    parse_real(value, no, v.port, &mut v.reals, &mut v.weights, w);
                } else {
                    virtual_directive(&mut v.settings, key, value, no, w);
                }
            }
            _ => global_directive(&mut global, key, value, no, w),
        }
    }
    Ldirectord { virtuals }
}

fn parse_virtual(value: &str, no: usize, w: &mut Warnings) -> Option<(Ipv4Addr, u16)> {
    if !value.contains(':') {
        w.unsupported(
            LDIRECTORD,
            no,
            "virtual",
            &format!(
                "firewall-mark virtual services ({value}) are not supported; this \
                virtual is skipped"
            ),
        );
        return None;
    }
    let (host, port) = value.rsplit_once(':')?;
    let Ok(vip) = host.parse::<Ipv4Addr>() else {
        w.unsupported(
            LDIRECTORD,
            no,
            "virtual",
            &format!(
                "{host:?} is not an IPv4 address (host names and IPv6 are not \
                supported); this virtual is skipped"
            ),
        );
        return None;
    };
    let Some(port) = service_port(port) else {
        w.at(
            LDIRECTORD,
            no,
            format_args!("unknown port {port:?}; this virtual is skipped"),
        );
        return None;
    };
    Some((vip, port))
}

fn parse_real(
    value: &str,
    no: usize,
    vport: u16,
    reals: &mut Vec<Ipv4Addr>,
    weights: &mut BTreeMap<Ipv4Addr, u32>,
    w: &mut Warnings,
) {
    let mut fields = value.split_whitespace();
    let addr = fields.next().unwrap_or("");
    let method = fields.next().unwrap_or("gate");
    let weight = fields.next();
    if fields.next().is_some() {
        w.unsupported(
            LDIRECTORD,
            no,
            "real",
            "a per-real-server request/receive is not supported; the virtual's check is used",
        );
    }
    let (host, port) = match addr.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (addr, None),
    };
    if let Some(p) = port {
        match service_port(p) {
            Some(p) if p == vport => {}
            Some(p) => w.unsupported(
                LDIRECTORD,
                no,
                "real",
                &format!(
                    "port {p} differs from the virtual port {vport}; Direct Routing \
                    cannot change ports, so port {vport} is used"
                ),
            ),
            None => w.at(
                LDIRECTORD,
                no,
                format_args!("unknown port {p:?}; port {vport} is used"),
            ),
        }
    }
    let addrs: Vec<Ipv4Addr> = match host.split_once("->") {
        Some((from, to)) => match (from.parse::<Ipv4Addr>(), to.parse::<Ipv4Addr>()) {
            (Ok(a), Ok(b)) if u32::from(a) <= u32::from(b) && u32::from(b) - u32::from(a) < 256 => {
                (u32::from(a)..=u32::from(b)).map(Ipv4Addr::from).collect()
            }
            _ => {
                w.at(
                    LDIRECTORD,
                    no,
                    format_args!("bad real server range {host:?}; skipped"),
                );
                return;
            }
        },
        None => match host.parse() {
            Ok(a) => vec![a],
            Err(_) => {
                w.unsupported(
                    LDIRECTORD,
                    no,
                    "real",
                    &format!(
                        "{host:?} is not an IPv4 address (host names are not resolved); \
                        skipped"
                    ),
                );
                return;
            }
        },
    };
    match method {
        "gate" => {}
        "masq" | "ipip" => w.unsupported(
            LDIRECTORD,
            no,
            "real",
            &format!(
                "forwarding method {method} is not available, duet forwards in Direct \
                Routing mode only; the real server needs the VIP on lo and the ARP sysctls \
                 (`duet realserver up`)"
            ),
        ),
        other => w.at(
            LDIRECTORD,
            no,
            format_args!(
                "unknown forwarding method {other:?}; \
            Direct Routing is used"
            ),
        ),
    }
    let weight = match weight.map(str::parse::<u32>) {
        None => 1,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            w.at(
                LDIRECTORD,
                no,
                format_args!("bad weight in real={value:?}; 1 is used"),
            );
            1
        }
    };
    if weight != 1 {
        for a in &addrs {
            weights.insert(*a, weight);
        }
    }
    for addr in addrs {
        if reals.contains(&addr) {
            w.at(
                LDIRECTORD,
                no,
                format_args!("real server {addr} listed twice; kept once"),
            );
        } else {
            reals.push(addr);
        }
    }
}

/// Directives valid in both scopes; returns false when `key` is not one.
fn shared_directive(s: &mut Settings, key: &str, value: &str, no: usize, w: &mut Warnings) -> bool {
    let secs = |w: &mut Warnings| {
        let v = parse_secs(value);
        if v.is_none() {
            w.at(
                LDIRECTORD,
                no,
                format_args!("{key}={value:?} is not a number of seconds; ignored"),
            );
        }
        v
    };
    match key {
        "checkinterval" => s.checkinterval_ms = secs(w).or(s.checkinterval_ms),
        "checktimeout" => s.checktimeout_ms = secs(w).or(s.checktimeout_ms),
        "negotiatetimeout" => s.negotiatetimeout_ms = secs(w).or(s.negotiatetimeout_ms),
        "connecttimeout" => s.connecttimeout_ms = secs(w).or(s.connecttimeout_ms),
        "failurecount" | "checkcount" => match value.parse::<u32>() {
            Ok(n) if n > 0 => s.failurecount = Some(n),
            _ => w.at(
                LDIRECTORD,
                no,
                format_args!("{key}={value:?} is not a positive count; ignored"),
            ),
        },
        "quiescent" => match parse_yes_no(value) {
            Some(b) => s.quiescent = Some(b),
            None => w.at(
                LDIRECTORD,
                no,
                format_args!("quiescent={value:?} is not yes or no; ignored"),
            ),
        },
        "fallback" => s.fallback = Some((no, value.to_string())),
        "checktype" => s.checktype = Some((no, value.to_ascii_lowercase())),
        "checkcommand" => s.checkcommand = Some(value.to_string()),
        "service" => s.service = Some(value.to_ascii_lowercase()),
        "request" => s.request = Some(value.to_string()),
        "receive" => s.receive = Some(value.to_string()),
        "virtualhost" => s.virtualhost = Some(value.to_string()),
        "scheduler" => s.scheduler = Some((no, value.to_ascii_lowercase())),
        "protocol" => s.protocol = Some((no, value.to_ascii_lowercase())),
        "persistent" => match value.parse::<u64>() {
            Ok(n) => s.persistent_s = Some(n),
            Err(_) => w.at(
                LDIRECTORD,
                no,
                format_args!("persistent={value:?} is not a number of seconds; ignored"),
            ),
        },
        "emailalert" | "emailalertfreq" | "emailalertstatus" | "emailalertfrom" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "duet sends no mail; watch the event log, /api/status or /metrics instead",
        ),
        "cleanstop" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "duet always keeps the service while it runs",
        ),
        _ => return false,
    }
    true
}

fn global_directive(s: &mut Settings, key: &str, value: &str, no: usize, w: &mut Warnings) {
    if shared_directive(s, key, value, no, w) {
        return;
    }
    match key {
        // duet checks every backend concurrently, as fork=yes does.
        // Labels for ldirectord's own status output.
        "fork" | "servicename" | "comment" => {}
        "logfile" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "duet logs to stderr; set the level with RUST_LOG",
        ),
        "autoreload" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "duet does not watch its config; send SIGHUP (systemctl reload duet) to apply changes",
        ),
        "callback" | "execute" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "duet does not run external commands on reload",
        ),
        "supervised" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "run duet under your service manager instead",
        ),
        "maintenancedir" => w.unsupported(LDIRECTORD, no, key, "use `duet drain BACKEND` instead"),
        "readdquiescent" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "duet keeps quiescent backends in the pool anyway",
        ),
        _ => w.unsupported(LDIRECTORD, no, key, "unknown global directive"),
    }
}

fn virtual_directive(s: &mut Settings, key: &str, value: &str, no: usize, w: &mut Warnings) {
    if shared_directive(s, key, value, no, w) {
        return;
    }
    match key {
        "netmask" => match value.parse::<Ipv4Addr>() {
            Ok(m) => s.netmask = Some(m),
            Err(_) => w.unsupported(LDIRECTORD, no, key, "not a dotted-quad netmask"),
        },
        "httpmethod" => {
            if !value.eq_ignore_ascii_case("GET") {
                w.unsupported(LDIRECTORD, no, key, "HTTP checks always use GET");
            }
        }
        "checkport" => match value.parse::<u16>() {
            Ok(p) if p > 0 => s.checkport = Some(p),
            _ => w.unsupported(LDIRECTORD, no, key, "not a port number"),
        },
        "login" | "passwd" | "database" | "secret" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "checks of mail and database servers are connect-level (greeting only, no \
            login); use checktype=external with a script to log in",
        ),
        "monitorfile" => w.unsupported(
            LDIRECTORD,
            no,
            key,
            "check results are in the event log and /api/status",
        ),
        _ => w.unsupported(LDIRECTORD, no, key, "unknown virtual-service directive"),
    }
}

// ---------------------------------------------------------------- ha.cf

#[derive(Debug, Default)]
struct Ha {
    keepalive_ms: Option<u64>,
    deadtime_ms: Option<u64>,
    auto_failback: Option<bool>,
    ping: Vec<Ipv4Addr>,
    nodes: Vec<String>,
    ucast: Vec<Ipv4Addr>,
    interface: Option<String>,
}

/// heartbeat times are seconds unless suffixed with `ms`.
fn parse_ha_time(v: &str) -> Option<u64> {
    match v.strip_suffix("ms") {
        Some(ms) => ms.parse().ok(),
        None => parse_secs(v.strip_suffix('s').unwrap_or(v)),
    }
}

fn parse_ha(text: &str, w: &mut Warnings) -> Ha {
    let mut ha = Ha::default();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let line = raw.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let args: Vec<&str> = words.collect();
        let first = args.first().copied().unwrap_or("");
        let time = |w: &mut Warnings| {
            let v = parse_ha_time(first);
            if v.is_none() {
                w.at(
                    HA,
                    no,
                    format_args!("{key} {first:?} is not a time; ignored"),
                );
            }
            v
        };
        let set_interface = |ha: &mut Ha, w: &mut Warnings| match &ha.interface {
            None => ha.interface = Some(first.to_string()),
            Some(i) if i != first => w.at(
                HA,
                no,
                format_args!("heartbeat also runs on {first}; duet uses one interface ({i})"),
            ),
            Some(_) => {}
        };
        match key {
            "keepalive" => ha.keepalive_ms = time(w).or(ha.keepalive_ms),
            "deadtime" => ha.deadtime_ms = time(w).or(ha.deadtime_ms),
            "auto_failback" => match first {
                "on" | "yes" => ha.auto_failback = Some(true),
                "off" | "no" => ha.auto_failback = Some(false),
                "legacy" => {
                    ha.auto_failback = Some(true);
                    w.at(
                        HA,
                        no,
                        "auto_failback legacy is taken as on (preempt = true)",
                    );
                }
                _ => w.at(
                    HA,
                    no,
                    format_args!("auto_failback {first:?} is not on/off; ignored"),
                ),
            },
            "ping" => {
                for a in &args {
                    match a.parse() {
                        Ok(ip) => ha.ping.push(ip),
                        Err(_) => {
                            w.unsupported(HA, no, "ping", &format!("{a:?} is not an IPv4 address"))
                        }
                    }
                }
            }
            "ping_group" => {
                w.unsupported(
                    HA,
                    no,
                    key,
                    "ping groups (reachable if any member is) are not supported; the members \
                        are listed as plain ping nodes",
                );
                ha.ping.extend(
                    args.iter()
                        .skip(1)
                        .filter_map(|a| a.parse::<Ipv4Addr>().ok()),
                );
            }
            "node" => ha.nodes.extend(args.iter().map(|s| s.to_string())),
            "udpport" => {
                if first != "694" {
                    w.unsupported(HA, no, key, "duet's heartbeat uses UDP port 694");
                }
            }
            "ucast" => {
                set_interface(&mut ha, w);
                match args.get(1).and_then(|a| a.parse::<Ipv4Addr>().ok()) {
                    Some(ip) if !ha.ucast.contains(&ip) => ha.ucast.push(ip),
                    Some(_) => {}
                    None => w.at(HA, no, "ucast without an IPv4 address; ignored"),
                }
            }
            "bcast" | "mcast" => {
                set_interface(&mut ha, w);
                w.unsupported(
                    HA,
                    no,
                    key,
                    "duet's heartbeat is unicast UDP to the peer (many switches and clouds \
                        drop broadcast and multicast)",
                );
            }
            "logfacility" | "logfile" | "debugfile" | "use_logd" | "debug" => w.unsupported(
                HA,
                no,
                key,
                "duet logs to stderr; set the level with RUST_LOG",
            ),
            "warntime" | "initdead" => w.unsupported(HA, no, key, "duet has only dead_after"),
            // ipfail's job is built in: unreachable ping nodes lower the
            // node's priority.
            "respawn" if line.contains("ipfail") => {}
            "apiauth" if first == "ipfail" => {}
            "serial" | "baud" => w.unsupported(HA, no, key, "serial heartbeats are not supported"),
            "crm" | "pacemaker" => w.unsupported(
                HA,
                no,
                key,
                "duet manages the VIP itself, without a cluster resource manager",
            ),
            _ => w.unsupported(HA, no, key, "no duet equivalent"),
        }
    }
    ha
}

// ---------------------------------------------------------------- output

/// Quotes `s` for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

struct Check {
    kind: &'static str,
    request: Option<String>,
    receive: Option<String>,
    host: Option<String>,
    command: Option<String>,
    /// Keys of this check kind only.
    extra: BTreeMap<&'static str, String>,
}

fn check_of(v: &Virtual, w: &mut Warnings) -> Check {
    let s = &v.settings;
    let (ct_line, checktype) = s
        .checktype
        .clone()
        .unwrap_or((v.line, "negotiate".to_string()));
    let service = s
        .service
        .clone()
        .unwrap_or_else(|| port_service(v.port).to_string());
    let plain = |kind| Check {
        kind,
        request: None,
        receive: None,
        host: None,
        command: None,
        extra: BTreeMap::new(),
    };
    let web = |kind| Check {
        request: Some(s.request.clone().unwrap_or_else(|| "/".into())),
        receive: s.receive.clone(),
        host: s.virtualhost.clone(),
        ..plain(kind)
    };
    let negotiate = |w: &mut Warnings| match service.as_str() {
        "http" => web("http"),
        "https" => web("https"),
        "smtp" | "pop" | "imap" | "ftp" | "nntp" => Check {
            extra: BTreeMap::from([("protocol", service)]),
            ..plain("banner")
        },
        "mysql" => plain("mysql"),
        "pgsql" => plain("pgsql"),
        "dns" => {
            // ldirectord resolves `request` and looks for `receive` among
            // the answers.
            let mut extra =
                BTreeMap::from([("name", s.request.as_deref().unwrap_or(".").to_string())]);
            if let Some(addr) = s
                .receive
                .as_deref()
                .and_then(|r| r.parse::<std::net::IpAddr>().ok())
            {
                extra.insert("expect_address", addr.to_string());
            }
            if matches!(&s.protocol, Some((_, p)) if p == "tcp") {
                extra.insert("transport", "tcp".to_string());
            }
            Check {
                extra,
                ..plain("dns")
            }
        }
        "none" => plain("tcp"),
        other => {
            w.unsupported(
                LDIRECTORD,
                ct_line,
                "checktype",
                &format!(
                    "negotiate checks of service {other} are not available (http, https, \
                    smtp, pop, imap, ftp, nntp, dns, mysql, pgsql); a tcp connect check is used"
                ),
            );
            plain("tcp")
        }
    };
    match checktype.as_str() {
        "negotiate" => negotiate(w),
        "connect" => plain("tcp"),
        "on" => plain("none"),
        "off" => {
            w.unsupported(
                LDIRECTORD,
                ct_line,
                "checktype",
                "off (every real server permanently down) has no equivalent; kind none \
                    (always up) is used, drain the backends to take them out",
            );
            plain("none")
        }
        "ping" => plain("ping"),
        "external" | "external-perl" => match &s.checkcommand {
            Some(cmd) => {
                // ldirectord passes VIP, virtual port, real IP, real port
                // as arguments; keep that calling convention.
                let interp = if checktype == "external-perl" {
                    "perl "
                } else {
                    ""
                };
                Check {
                    kind: "exec",
                    command: Some(format!(
                        "{interp}{} {} {} \"$DUET_BACKEND_ADDR\" \"$DUET_BACKEND_PORT\"",
                        sh_quote(cmd),
                        v.vip,
                        v.port
                    )),
                    ..plain("exec")
                }
            }
            None => {
                w.at(
                    LDIRECTORD,
                    ct_line,
                    "checktype=external without checkcommand; a tcp connect check is used",
                );
                plain("tcp")
            }
        },
        n if n.parse::<u32>().is_ok() => {
            w.unsupported(
                LDIRECTORD,
                ct_line,
                "checktype",
                &format!(
                    "{n} (connect checks with a negotiate check every {n}th time) is \
                    simplified to negotiate every time"
                ),
            );
            negotiate(w)
        }
        other => {
            w.unsupported(
                LDIRECTORD,
                ct_line,
                "checktype",
                &format!("unknown check type {other:?}; a tcp connect check is used"),
            );
            plain("tcp")
        }
    }
}

fn scheduler_of(v: &Virtual, w: &mut Warnings) -> String {
    match &v.settings.scheduler {
        None => "wrr".into(), // ldirectord's default
        Some((_, s)) if s.parse::<crate::forward::Scheduler>().is_ok() => s.clone(),
        Some((no, s)) => {
            w.unsupported(
                LDIRECTORD,
                *no,
                "scheduler",
                &format!("scheduler {s} is not available (rr, wrr, lc, wlc, sh, mh); wlc is used"),
            );
            "wlc".into()
        }
    }
}

/// Works out the node names and addresses (see the module docs).
fn nodes_of(
    ha: Option<&Ha>,
    first_reals: &[Ipv4Addr],
    w: &mut Warnings,
) -> (Vec<String>, Vec<Ipv4Addr>) {
    let mut names: Vec<String> = ha.map(|h| h.nodes.clone()).unwrap_or_default();
    match ha {
        None => w.general("no ha.cf given: the nodes are named node1 and node2"),
        Some(_) if names.len() != 2 => w.general(format!(
            "{HA}: {} node(s) listed; duet runs exactly two nodes",
            names.len()
        )),
        Some(_) => {}
    }
    names.truncate(2);
    for i in names.len()..2 {
        names.push(format!("node{}", i + 1));
    }
    let ucast = ha.map(|h| h.ucast.as_slice()).unwrap_or_default();
    if ucast.len() == 2 {
        w.general(format!(
            "{HA}: node addresses taken from the ucast lines, assuming they are in the order \
                of the node lines ({} = {}, {} = {}); check them",
            names[0], ucast[0], names[1], ucast[1]
        ));
        return (names, ucast.to_vec());
    }
    if first_reals.len() == 2 {
        w.general(format!(
            "assumed the two-box layout (each node is one of the two real servers): {} = {}, \
                {} = {}; if the directors are separate machines, set their addresses, \
                 serve_local = false and backends",
            names[0], first_reals[0], names[1], first_reals[1]
        ));
        return (names, first_reals.to_vec());
    }
    w.general(format!(
        "node addresses are not in {HA}: placeholders {} and {} are used; replace them",
        PLACEHOLDER_NODES[0], PLACEHOLDER_NODES[1]
    ));
    (names, PLACEHOLDER_NODES.to_vec())
}

/// `[cluster]`, the part both importers write the same way. `interface`:
/// the one heartbeat runs on, when the inputs name it.
fn cluster_of(vips: &[Ipv4Addr], interface: Option<String>, w: &mut Warnings) -> out::Cluster {
    let interface = match interface {
        Some(i) => i,
        None => {
            w.general(
                "no heartbeat interface found (bcast/mcast/ucast in ha.cf): interface = \
                \"eth0\" is assumed",
            );
            "eth0".into()
        }
    };
    w.general(
        "key_file: heartbeat's authkeys is not imported; write a shared secret of at \
        least 16 bytes to /etc/duet/key on both nodes",
    );
    out::Cluster::new(vips, interface)
}

/// `[heartbeat]` from ha.cf's timings, auto_failback and ping nodes.
fn heartbeat_of(ha: Option<&Ha>, w: &mut Warnings) -> out::Heartbeat {
    let hb = |ms: Option<u64>, default: &str| ms.map_or_else(|| default.to_string(), duration);
    let preempt = match ha.map(|h| h.auto_failback) {
        Some(Some(b)) => b,
        Some(None) => {
            w.general(format!(
                "{HA}: auto_failback not set (heartbeat's default fails back): preempt = true"
            ));
            true
        }
        None => false,
    };
    out::Heartbeat {
        interval: hb(ha.and_then(|h| h.keepalive_ms), "100ms"),
        dead_after: hb(ha.and_then(|h| h.deadtime_ms), "1s"),
        preempt,
        ping: ha
            .map(|h| h.ping.iter().map(|p| p.to_string()).collect())
            .unwrap_or_default(),
    }
}

fn render(ld: &Ldirectord, ha: Option<&Ha>, w: &mut Warnings) -> String {
    // Each virtual= address is a VIP of the pair, in order of appearance.
    let mut vips: Vec<Ipv4Addr> = Vec::new();
    let mut virtuals = Vec::new();
    let mut ports = BTreeSet::new();
    for v in &ld.virtuals {
        let proto = v
            .settings
            .protocol
            .as_ref()
            .map_or("tcp", |(_, p)| p.as_str());
        if !ports.insert((v.vip, v.port, proto.to_string())) {
            w.at(
                LDIRECTORD,
                v.line,
                format_args!("second virtual for {}:{} skipped", v.vip, v.port),
            );
            continue;
        }
        if !vips.contains(&v.vip) {
            vips.push(v.vip);
        }
        virtuals.push(v);
    }

    // Distinct real server addresses in order of appearance.
    let mut first_reals: Vec<Ipv4Addr> = Vec::new();
    for &addr in virtuals.iter().flat_map(|v| &v.reals) {
        if !first_reals.contains(&addr) {
            first_reals.push(addr);
        }
    }
    let (names, addrs) = nodes_of(ha, &first_reals, w);

    let header = vec![
        format!(
            "Imported from ldirectord.cf{} by `duet import-ldirectord`.",
            if ha.is_some() { " and ha.cf" } else { "" }
        ),
        "Review the warnings printed with it before use.".to_string(),
    ];

    if vips.is_empty() {
        w.general(
            "no usable virtual= service in ldirectord.cf: the VIP 198.18.0.100 is a \
            placeholder",
        );
        vips.push(Ipv4Addr::new(198, 18, 0, 100));
    }
    let cluster = cluster_of(&vips, ha.and_then(|h| h.interface.clone()), w);

    let mut nodes = Vec::new();
    for (i, (name, addr)) in names.iter().zip(&addrs).enumerate() {
        // A node's weight as a real server; duet has one per node, so the
        // first virtual that gives one sets it.
        let weights: Vec<u32> = virtuals
            .iter()
            .filter_map(|v| v.weights.get(addr).copied())
            .collect();
        if let Some(first) = weights.first() {
            if weights.iter().any(|x| x != first) {
                w.at(
                    LDIRECTORD,
                    0,
                    format_args!(
                        "node {name} has different weights per virtual; duet uses {first} for all"
                    ),
                );
            }
        }
        nodes.push(out::Node {
            name: name.clone(),
            address: addr.to_string(),
            priority: if i == 0 { 150 } else { 100 },
            weight: weights.first().copied(),
        });
    }

    let heartbeat = heartbeat_of(ha, w);
    let mut services = Vec::new();

    let node_set: BTreeSet<Ipv4Addr> = addrs.iter().copied().collect();
    for v in virtuals {
        let s = &v.settings;
        let reals: BTreeSet<Ipv4Addr> = v.reals.iter().copied().collect();
        let serve_local = node_set.is_subset(&reals);
        let backends: Vec<out::Backend> = v
            .reals
            .iter()
            .filter(|a| !(serve_local && node_set.contains(a)))
            .map(|a| match v.weights.get(a) {
                Some(wt) => out::Backend::Weighted {
                    address: a.to_string(),
                    weight: *wt,
                },
                None => out::Backend::Plain(a.to_string()),
            })
            .collect();
        if !serve_local && reals.iter().any(|a| node_set.contains(a)) {
            w.at(
                LDIRECTORD,
                v.line,
                "only one node is a real server of this virtual; it is listed in backends \
                    with serve_local = false",
            );
        }
        if v.reals.is_empty() {
            w.at(LDIRECTORD, v.line, "virtual without real servers");
        }
        let protocol = match &s.protocol {
            None => "tcp".to_string(),
            Some((_, p)) if p == "tcp" || p == "udp" => p.clone(),
            Some((no, p)) => {
                w.unsupported(
                    LDIRECTORD,
                    *no,
                    "protocol",
                    &format!("protocol {p} is not available (tcp, udp); tcp is used"),
                );
                "tcp".into()
            }
        };
        let check = check_of(v, w);
        let interval = s.checkinterval_ms.unwrap_or(DEFAULT_CHECK_INTERVAL_MS);
        let timeout = match check.kind {
            "tcp" => s
                .connecttimeout_ms
                .or(s.checktimeout_ms)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            "exec" | "none" | "ping" => s.checktimeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            _ => s
                .negotiatetimeout_ms
                .or(s.checktimeout_ms)
                .unwrap_or(DEFAULT_NEGOTIATE_TIMEOUT_MS),
        };

        let fallback = s.fallback.as_ref().and_then(|(no, fb)| {
            // "127.0.0.1:80 gate": the forwarding method does not apply.
            let addr = fb.split_whitespace().next().unwrap_or("");
            let with_port = if addr.contains(':') {
                addr.to_string()
            } else {
                format!("{addr}:{}", v.port)
            };
            match with_port.parse::<std::net::SocketAddrV4>() {
                Ok(sa) => Some(sa.to_string()),
                Err(_) => {
                    w.unsupported(
                        LDIRECTORD,
                        *no,
                        "fallback",
                        &format!("{addr:?} is not an IPv4 address and port"),
                    );
                    None
                }
            }
        });
        let request = check.request.map(|r| {
            if r.starts_with('/') {
                r
            } else {
                format!("/{r}")
            }
        });
        let persistence = s.persistent_s.map(|p| duration(p.saturating_mul(1000)));
        let service = out::Service {
            vip: (vips.len() > 1).then(|| v.vip.to_string()),
            port: v.port,
            protocol: Some(protocol),
            scheduler: scheduler_of(v, w),
            persistence_netmask: s
                .netmask
                .filter(|m| persistence.is_some() && *m != Ipv4Addr::BROADCAST)
                .map(|m| m.to_string()),
            persistence,
            serve_local,
            backends: (!backends.is_empty()).then_some(backends),
            fallback,
            check: Some(out::Check {
                kind: check.kind,
                request,
                receive: check.receive,
                host: check.host,
                command: check.command,
                extra: check.extra,
                port: s.checkport,
                interval: duration(interval),
                timeout: duration(timeout),
                // ldirectord adds a server on its first good check and
                // removes it after failurecount bad ones.
                rise: 1,
                fall: s.failurecount.unwrap_or(1),
                quiescent: Some(s.quiescent.unwrap_or(true)),
            }),
            ..out::Service::default()
        };
        let comment = format!(
            "ldirectord.cf line {}: virtual={}:{}",
            v.line, v.vip, v.port
        );
        services.push((comment, service));
    }
    out::Document {
        header,
        cluster,
        nodes,
        heartbeat,
        services,
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Value;

    const LD: &str = include_str!("../../tests/fixtures/ldirectord.cf");
    const HA_CF: &str = include_str!("../../tests/fixtures/ha.cf");

    fn parsed(i: &Imported) -> Value {
        match toml::from_str::<Value>(&i.toml) {
            Ok(v) => v,
            Err(e) => panic!("invalid TOML: {e}\n{}", i.toml),
        }
    }

    fn has_warning(i: &Imported, needle: &str) -> bool {
        i.warnings.iter().any(|w| w.contains(needle))
    }

    fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
        path.split('.').fold(v, |v, k| match k.parse::<usize>() {
            Ok(n) => &v[n],
            Err(_) => match v.get(k) {
                Some(x) => x,
                None => panic!("no key {k} in path {path}"),
            },
        })
    }

    fn s<'a>(v: &'a Value, path: &str) -> &'a str {
        get(v, path)
            .as_str()
            .unwrap_or_else(|| panic!("{path} is not a string"))
    }

    #[test]
    fn ultra_monkey_two_box_fixture() {
        let i = import(LD, Some(HA_CF));
        let v = parsed(&i);
        assert_eq!(s(&v, "cluster.vip"), "192.168.6.240");
        assert_eq!(s(&v, "cluster.interface"), "eth0");
        assert_eq!(get(&v, "cluster.vrid").as_integer(), Some(1));
        assert_eq!(s(&v, "cluster.key_file"), "/etc/duet/key");
        assert_eq!(s(&v, "cluster.status_listen"), "0.0.0.0:8080");
        assert_eq!(s(&v, "cluster.state_dir"), "/var/lib/duet");

        assert_eq!(get(&v, "node").as_array().map(Vec::len), Some(2));
        assert_eq!(s(&v, "node.0.name"), "ultramonkey1");
        assert_eq!(s(&v, "node.0.address"), "192.168.6.4");
        assert_eq!(get(&v, "node.0.priority").as_integer(), Some(150));
        assert_eq!(s(&v, "node.1.name"), "ultramonkey2");
        assert_eq!(s(&v, "node.1.address"), "192.168.6.5");
        assert_eq!(get(&v, "node.1.priority").as_integer(), Some(100));

        assert_eq!(s(&v, "heartbeat.interval"), "2s");
        assert_eq!(s(&v, "heartbeat.dead_after"), "10s");
        assert_eq!(get(&v, "heartbeat.preempt").as_bool(), Some(false));
        assert_eq!(s(&v, "heartbeat.ping.0"), "192.168.6.254");

        assert_eq!(get(&v, "service").as_array().map(Vec::len), Some(2));
        // virtual=192.168.6.240:80, both nodes are the real servers.
        assert_eq!(get(&v, "service.0.port").as_integer(), Some(80));
        assert_eq!(s(&v, "service.0.protocol"), "tcp");
        assert_eq!(s(&v, "service.0.scheduler"), "rr");
        assert_eq!(get(&v, "service.0.serve_local").as_bool(), Some(true));
        assert!(get(&v, "service.0").get("backends").is_none());
        assert!(get(&v, "service.0").get("persistence").is_none());
        assert_eq!(s(&v, "service.0.fallback"), "127.0.0.1:80");
        assert_eq!(s(&v, "service.0.check.kind"), "http");
        assert_eq!(s(&v, "service.0.check.request"), "/ldirector.html");
        assert_eq!(s(&v, "service.0.check.receive"), "Test Page");
        assert_eq!(s(&v, "service.0.check.interval"), "2s");
        assert_eq!(s(&v, "service.0.check.timeout"), "10s");
        assert_eq!(get(&v, "service.0.check.rise").as_integer(), Some(1));
        assert_eq!(get(&v, "service.0.check.fall").as_integer(), Some(1));
        assert_eq!(get(&v, "service.0.check.quiescent").as_bool(), Some(true));
        // virtual=192.168.6.240:443: per-virtual overrides.
        assert_eq!(get(&v, "service.1.port").as_integer(), Some(443));
        assert_eq!(s(&v, "service.1.scheduler"), "wlc");
        assert_eq!(s(&v, "service.1.persistence"), "600s");
        assert_eq!(get(&v, "service.1.serve_local").as_bool(), Some(true));
        assert_eq!(s(&v, "service.1.check.kind"), "https");
        assert_eq!(get(&v, "service.1.check.quiescent").as_bool(), Some(false));
        assert!(!has_warning(&i, "negotiate checks of service https"));

        for expected in [
            "ldirectord.cf line 8: directive autoreload not supported:",
            "ldirectord.cf line 9: directive logfile not supported:",
            "ha.cf line 2: directive logfacility not supported:",
            "ha.cf line 6: directive bcast not supported:",
            "ha.cf line 7: directive mcast not supported:",
            "assumed the two-box layout",
            "key_file",
        ] {
            assert!(
                has_warning(&i, expected),
                "missing {expected:?} in {:#?}",
                i.warnings
            );
        }
        // Mapped directives and ipfail (built in) are not warned about.
        for quiet in [
            "udpport",
            "respawn",
            "apiauth",
            "keepalive",
            "deadtime",
            "line 19:",
        ] {
            assert!(
                !has_warning(&i, quiet),
                "unexpected warning {quiet:?}: {:#?}",
                i.warnings
            );
        }
    }

    const CLASSIC_LD: &str = "\
checktimeout=3
checkinterval=1
negotiatetimeout=4
failurecount=3
fallback=127.0.0.1:80
quiescent=no

virtual=198.18.0.100:80
\treal=198.18.0.20:80 gate
\treal=198.18.0.21->198.18.0.22:80 gate 1
\treal=198.18.0.23:80 masq
\tservice=http
\trequest=\"/health\"
\treceive=say \"OK\" \\o/
\tvirtualhost=www.example.com
\tscheduler=lblc
\tprotocol=tcp
\tchecktype=negotiate
";

    #[test]
    fn classic_two_directors_with_real_servers_and_ucast() {
        let ha = "keepalive 500ms\ndeadtime 2\nucast eth1 198.18.0.1\nucast eth1 \
            198.18.0.2\nauto_failback on\nnode lvs1 lvs2\nping 198.18.0.254 198.18.0.253\n";
        let i = import(CLASSIC_LD, Some(ha));
        let v = parsed(&i);
        assert_eq!(s(&v, "cluster.interface"), "eth1");
        assert_eq!(s(&v, "node.0.name"), "lvs1");
        assert_eq!(s(&v, "node.0.address"), "198.18.0.1");
        assert_eq!(s(&v, "node.1.name"), "lvs2");
        assert_eq!(s(&v, "node.1.address"), "198.18.0.2");
        assert_eq!(s(&v, "heartbeat.interval"), "500ms");
        assert_eq!(s(&v, "heartbeat.dead_after"), "2s");
        assert_eq!(get(&v, "heartbeat.preempt").as_bool(), Some(true));
        assert_eq!(get(&v, "heartbeat.ping").as_array().map(Vec::len), Some(2));

        assert_eq!(get(&v, "service.0.serve_local").as_bool(), Some(false));
        let backends: Vec<&str> = get(&v, "service.0.backends")
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            backends,
            ["198.18.0.20", "198.18.0.21", "198.18.0.22", "198.18.0.23"]
        );
        assert_eq!(s(&v, "service.0.fallback"), "127.0.0.1:80");
        assert_eq!(s(&v, "service.0.scheduler"), "wlc");
        assert_eq!(s(&v, "service.0.check.request"), "/health");
        assert_eq!(s(&v, "service.0.check.receive"), r#"say "OK" \o/"#);
        assert_eq!(s(&v, "service.0.check.host"), "www.example.com");
        assert_eq!(s(&v, "service.0.check.interval"), "1s");
        // negotiatetimeout wins over checktimeout for an http check.
        assert_eq!(s(&v, "service.0.check.timeout"), "4s");
        assert_eq!(get(&v, "service.0.check.fall").as_integer(), Some(3));
        assert_eq!(get(&v, "service.0.check.quiescent").as_bool(), Some(false));

        assert!(has_warning(
            &i,
            "line 11: directive real not supported: forwarding method masq"
        ));
        assert!(has_warning(
            &i,
            "line 16: directive scheduler not supported: scheduler lblc"
        ));
        assert!(has_warning(&i, "node addresses taken from the ucast lines"));
        assert!(!has_warning(&i, "placeholder"));
    }

    #[test]
    fn without_ha_cf_nodes_get_placeholders() {
        let i = import(CLASSIC_LD, None);
        let v = parsed(&i);
        assert_eq!(s(&v, "node.0.name"), "node1");
        assert_eq!(s(&v, "node.0.address"), "198.18.0.1");
        assert_eq!(s(&v, "node.1.address"), "198.18.0.2");
        assert_eq!(get(&v, "service.0.serve_local").as_bool(), Some(false));
        assert_eq!(get(&v, "heartbeat.preempt").as_bool(), Some(false));
        assert!(has_warning(&i, "placeholders 198.18.0.1 and 198.18.0.2"));
        assert!(has_warning(&i, "no ha.cf given"));
        assert!(has_warning(&i, "interface = \"eth0\" is assumed"));
    }

    #[test]
    fn unsupported_and_unknown_directives_are_warned_with_their_line() {
        let ld = "\
frobnicate=yes
emailalert=root@localhost
virtual=198.18.0.100:80
\treal=198.18.0.20:80 gate
\tchecktype=external
\tcheckcommand=/usr/local/bin/check web
\tlogin=admin
\tflux=1
virtual=198.18.0.100:53
\treal=198.18.0.20:53 gate
\tprotocol=udp
\tchecktype=ping
virtual=198.18.0.101:80
\treal=198.18.0.30:80 gate
virtual=7
\treal=198.18.0.40:80 gate
virtual=www.example.com:80
\treal=198.18.0.50:80 gate
virtual=198.18.0.100:8080
\treal=web3.example.com:8080 gate
\treal=198.18.0.20:8081 gate
\tchecktype=off
not a directive
";
        let i = import(ld, None);
        let v = parsed(&i);
        for expected in [
            "line 1: directive frobnicate not supported: unknown global directive",
            "line 2: directive emailalert not supported:",
            "line 7: directive login not supported:",
            "line 8: directive flux not supported: unknown virtual-service directive",
            "line 15: directive virtual not supported: firewall-mark",
            "line 17: directive virtual not supported: \"www.example.com\" is not an IPv4 address",
            "line 20: directive real not supported: \"web3.example.com\" is not an IPv4 address",
            "line 21: directive real not supported: port 8081 differs",
            "line 22: directive checktype not supported: off",
            "line 23: cannot parse",
        ] {
            assert!(
                has_warning(&i, expected),
                "missing {expected:?} in {:#?}",
                i.warnings
            );
        }
        let services = get(&v, "service").as_array().unwrap();
        let ports: Vec<i64> = services
            .iter()
            .filter_map(|s| s["port"].as_integer())
            .collect();
        // 198.18.0.101 (line 13) is a second VIP of the pair.
        assert_eq!(ports, [80, 53, 80, 8080]);
        assert_eq!(
            *get(&v, "cluster.vip"),
            Value::from(vec!["198.18.0.100", "198.18.0.101"])
        );
        assert_eq!(s(&v, "service.2.vip"), "198.18.0.101");
        assert_eq!(s(&v, "service.0.vip"), "198.18.0.100");
        assert_eq!(s(&v, "service.0.check.kind"), "exec");
        assert_eq!(
            s(&v, "service.0.check.command"),
            "'/usr/local/bin/check web' 198.18.0.100 80 \"$DUET_BACKEND_ADDR\" \
                \"$DUET_BACKEND_PORT\""
        );
        assert_eq!(s(&v, "service.1.protocol"), "udp");
        assert_eq!(s(&v, "service.1.check.kind"), "ping");
        assert!(!has_warning(&i, "line 12:"));
        assert_eq!(s(&v, "service.3.check.kind"), "none");
        // Directives of skipped virtuals do not leak into the previous one.
        assert!(!has_warning(&i, "line 16:"));
    }

    #[test]
    fn empty_input_gives_a_valid_skeleton() {
        let i = import("", Some(""));
        let v = parsed(&i);
        assert_eq!(s(&v, "cluster.vip"), "198.18.0.100");
        assert!(v.get("service").is_none());
        assert!(has_warning(&i, "no usable virtual="));
    }

    #[test]
    fn random_input_never_panics_and_always_yields_valid_toml() {
        let pieces = [
            "virtual=",
            "real=",
            "\t",
            " ",
            "=",
            ":",
            "->",
            "198.18.0.1",
            "80",
            "gate",
            "masq",
            "checktype=",
            "negotiate",
            "external",
            "\"",
            "'",
            "\\",
            "\n",
            "#",
            "service=http",
            "fallback=",
            "persistent=",
            "x",
            "-1",
            "1e99",
            "NaN",
            "keepalive",
            "ms",
            "node",
            "ucast eth0 ",
            "ping ",
            "\u{feff}",
            "é",
        ];
        let mut rng = fastrand::Rng::with_seed(42);
        for _ in 0..2000 {
            let len = rng.usize(0..40);
            let text: String = (0..len)
                .map(|_| pieces[rng.usize(..pieces.len())])
                .collect();
            let i = import(&text, Some(&text));
            parsed(&i);
        }
    }
}
