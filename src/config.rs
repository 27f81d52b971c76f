//! The TOML configuration (DESIGN.md section 4): serde structs with defaults,
//! then `validate()` which reports every semantic problem at once, each with
//! the file, line and column of the key at fault (keepalived's
//! `--config-test` habit: one run shows all mistakes).
use crate::forward::Scheduler;
use crate::wire::envelope::Keys;
use serde::{Deserialize, Deserializer};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// A duration written as "100ms", "1s", "10m", "2h" (or a bare number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Beyond this a deadline computed from now could overflow `Instant`.
const MAX_DURATION: Duration = Duration::from_secs(1_000_000_000);

impl Dur {
    /// humantime's syntax: "100ms", "10s", "1m 30s", "2h".
    pub fn parse(s: &str) -> Result<Dur, String> {
        let d = humantime::parse_duration(s.trim())
            .map_err(|e| format!("bad duration {s:?}: {e} (e.g. \"100ms\", \"10s\", \"1m\")"))?;
        Dur::bounded(d).ok_or_else(|| format!("duration {s:?} out of range"))
    }

    fn bounded(d: Duration) -> Option<Dur> {
        (d <= MAX_DURATION).then_some(Dur(d))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => Dur::parse(&s).map_err(serde::de::Error::custom),
            Raw::Secs(n) => Dur::bounded(Duration::from_secs(n))
                .ok_or_else(|| serde::de::Error::custom(format!("duration {n} s out of range"))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub cluster: Cluster,
    #[serde(rename = "node", default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub heartbeat: Heartbeat,
    #[serde(rename = "service", default)]
    pub services: Vec<Service>,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// One address or a list. The first names the cluster (its heartbeats
    /// carry an id made from it), so only the others may change on reload.
    pub vip: Spanned<VipList>,
    #[serde(default = "default_interface")]
    pub interface: String,
    #[serde(default = "default_vrid")]
    pub vrid: Spanned<u8>,
    pub key_file: Spanned<PathBuf>,
    /// Loopback by default: nothing listens wider than configured.
    #[serde(default = "default_status_listen")]
    pub status_listen: SocketAddr,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub admin_token_file: Option<Spanned<PathBuf>>,
    /// Port of the connection-sync stream (UDP, authenticated like the heartbeat).
    #[serde(default = "default_sync_port")]
    pub sync_port: u16,
    /// Confirmed TCP flows the connection table holds (never evicted); half-open
    /// TCP and UDP flows get a quarter of it each, evicted oldest first.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a stopping node waits for the connections it serves as a
    /// backend to end before it takes the VIP off `lo` (0 = at once).
    #[serde(default = "default_stop_drain")]
    pub stop_drain: Spanned<Dur>,
    /// Which data-plane engine forwards (DESIGN.md section 2).
    #[serde(default)]
    pub engine: EngineChoice,
    /// eBPF engine: new flows (TCP connections, UDP flows) a second that
    /// duet's own scheduler decides; the kernel schedules the rest by
    /// consistent hash (a flood's excess). 0: duet decides every one.
    #[serde(default = "default_new_flow_budget")]
    pub new_flow_budget: u32,
}

/// `cluster.vip`: `"198.18.0.100"` or `["198.18.0.100", "198.18.0.101"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipList {
    One(IpAddr),
    Many(Vec<IpAddr>),
}

impl<'de> Deserialize<'de> for VipList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, SeqAccess, Visitor};
        fn ip<E: Error>(s: &str) -> Result<IpAddr, E> {
            s.parse()
                .map_err(|_| E::custom(format!("{s:?} is not an IP address")))
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VipList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an IP address or a list of them")
            }
            fn visit_str<E: Error>(self, s: &str) -> Result<VipList, E> {
                ip(s).map(VipList::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VipList, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(ip(&s)?);
                }
                Ok(VipList::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}

impl VipList {
    fn all(&self) -> &[IpAddr] {
        match self {
            VipList::One(a) => std::slice::from_ref(a),
            VipList::Many(v) => v,
        }
    }
}

fn v4(a: &IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(v) => Some(*v),
        IpAddr::V6(_) => None,
    }
}

/// `a, b, c`: VIPs as logs and events list them.
pub fn list_addrs(addrs: &[Ipv4Addr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// At most this many VIPs in one pair (the eBPF engine's VIP map).
pub const MAX_VIPS: usize = 64;

/// `cluster.engine`: `auto` uses the eBPF engine where the kernel and the
/// privileges allow it and otherwise the userspace one, saying why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    #[default]
    Auto,
    Ebpf,
    Userspace,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: Spanned<String>,
    pub address: Spanned<Ipv4Addr>,
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Weight of this node as a backend of `serve_local` services.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default = "default_interval")]
    pub interval: Spanned<Dur>,
    #[serde(default = "default_dead_after")]
    pub dead_after: Spanned<Dur>,
    #[serde(default)]
    pub preempt: bool,
    #[serde(default)]
    pub ping: Vec<Ipv4Addr>,
    #[serde(default = "default_hb_port")]
    pub port: u16,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: default_interval(),
            dead_after: default_dead_after(),
            preempt: false,
            ping: Vec::new(),
            port: default_hb_port(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Which of `cluster.vip` this service listens on (default the first).
    #[serde(default)]
    pub vip: Option<Spanned<IpAddr>>,
    pub port: Spanned<u16>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    #[serde(default = "default_scheduler")]
    pub scheduler: Scheduler,
    #[serde(default)]
    pub persistence: Option<Dur>,
    #[serde(default)]
    pub persistence_netmask: Option<Ipv4Addr>,
    #[serde(default = "default_true")]
    pub serve_local: bool,
    #[serde(default)]
    pub backends: Vec<Spanned<BackendSpec>>,
    #[serde(default)]
    pub fallback: Option<Spanned<String>>,
    #[serde(default)]
    pub check: Option<Check>,
    /// "dr" (default): direct routing in the data plane; "proxy": an HTTP
    /// reverse proxy on the director (see `crate::proxy`).
    #[serde(default)]
    pub mode: ServiceMode,
    /// Proxy services: clients whose X-Forwarded-* headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Ipv4Addr>,
    /// Proxy services: keep-alive to clients (default on).
    #[serde(default)]
    pub persist_client: Option<Spanned<bool>>,
    /// Proxy services: idle keep-alive connections to backends (default on).
    #[serde(default)]
    pub persist_backend: Option<Spanned<bool>>,
    /// Proxy services: idle connections kept per backend.
    #[serde(default)]
    pub backend_idle_max: Option<Spanned<usize>>,
    /// Proxy services: an idle backend connection older than this is closed.
    #[serde(default)]
    pub backend_idle_timeout: Option<Spanned<Dur>>,
    /// Proxy services: a request head not complete by then gets 408.
    #[serde(default)]
    pub client_header_timeout: Option<Spanned<Dur>>,
    /// Proxy services: an idle keep-alive client connection is closed then.
    #[serde(default)]
    pub client_idle_timeout: Option<Spanned<Dur>>,
    /// Proxy services: connecting to a backend (502 past it).
    #[serde(default)]
    pub connect_timeout: Option<Spanned<Dur>>,
    /// Proxy services: from the request sent to the response head (504).
    #[serde(default)]
    pub response_timeout: Option<Spanned<Dur>>,
    /// Proxy services: request bodies over this many bytes get 413.
    #[serde(default)]
    pub max_body: Option<Spanned<u64>>,
    /// Proxy services: a request head longer than this many bytes gets 431.
    #[serde(default)]
    pub max_header_bytes: Option<Spanned<usize>>,
    /// Proxy services: a request head with more headers gets 431.
    #[serde(default)]
    pub max_headers: Option<Spanned<usize>>,
    /// Proxy services: "stderr" or a file path; one combined-format line a request.
    #[serde(default)]
    pub access_log: Option<Spanned<String>>,
    /// Proxy services: "cookie" keeps a client on one backend by a cookie.
    #[serde(default)]
    pub sticky: Option<Spanned<String>>,
    /// Proxy services: requests whose Host matches go to these backends.
    #[serde(rename = "route", default)]
    pub routes: Vec<Route>,
}

/// `[[service.route]]`: virtual-host routing of a proxy service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub host: Spanned<String>,
    pub backends: Vec<Spanned<BackendSpec>>,
}

impl Service {
    /// The proxy-only keys this service sets, where they are.
    fn proxy_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        fn at<T>(
            name: &'static str,
            v: &Option<Spanned<T>>,
        ) -> Option<(&'static str, Range<usize>)> {
            v.as_ref().map(|s| (name, s.span()))
        }
        let mut out: Vec<_> = [
            at("persist_client", &self.persist_client),
            at("persist_backend", &self.persist_backend),
            at("backend_idle_max", &self.backend_idle_max),
            at("backend_idle_timeout", &self.backend_idle_timeout),
            at("client_header_timeout", &self.client_header_timeout),
            at("client_idle_timeout", &self.client_idle_timeout),
            at("connect_timeout", &self.connect_timeout),
            at("response_timeout", &self.response_timeout),
            at("max_body", &self.max_body),
            at("max_header_bytes", &self.max_header_bytes),
            at("max_headers", &self.max_headers),
            at("access_log", &self.access_log),
            at("sticky", &self.sticky),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.extend(
            self.routes
                .iter()
                .map(|r| ("[[service.route]]", r.host.span())),
        );
        out
    }

    /// Every timeout key with its value, for the "more than 0" rule.
    fn proxy_timeouts(&self) -> Vec<(&'static str, &Spanned<Dur>)> {
        [
            ("backend_idle_timeout", &self.backend_idle_timeout),
            ("client_header_timeout", &self.client_header_timeout),
            ("client_idle_timeout", &self.client_idle_timeout),
            ("connect_timeout", &self.connect_timeout),
            ("response_timeout", &self.response_timeout),
        ]
        .into_iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
        .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceMode {
    #[default]
    Dr,
    Proxy,
}

/// A real server: `"198.18.0.20"` or `{ name = "db1", address = "198.18.0.20", weight = 2 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BackendSpec {
    Addr(Ipv4Addr),
    /// Proxy services: `"198.18.0.20:8080"`.
    AddrPort(std::net::SocketAddrV4),
    Full {
        #[serde(default)]
        name: Option<String>,
        address: Ipv4Addr,
        #[serde(default = "default_weight")]
        weight: u32,
        /// Proxy services: the backend's port (default: the service's).
        #[serde(default)]
        port: Option<u16>,
    },
}

impl BackendSpec {
    pub fn address(&self) -> Ipv4Addr {
        match self {
            BackendSpec::Addr(a) => *a,
            BackendSpec::AddrPort(a) => *a.ip(),
            BackendSpec::Full { address, .. } => *address,
        }
    }
    pub fn name(&self) -> String {
        match self {
            BackendSpec::Full { name: Some(n), .. } => n.clone(),
            _ => self.address().to_string(),
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            BackendSpec::Addr(_) | BackendSpec::AddrPort(_) => 1,
            BackendSpec::Full { weight, .. } => *weight,
        }
    }
    /// The port a proxy service connects to, when the backend names one.
    pub fn port(&self) -> Option<u16> {
        match self {
            BackendSpec::Addr(_) => None,
            BackendSpec::AddrPort(a) => Some(a.port()),
            BackendSpec::Full { port, .. } => *port,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKindName {
    Http,
    Https,
    Dns,
    Ping,
    Banner,
    Mysql,
    Pgsql,
    Udp,
    Tcp,
    Exec,
    None,
}

/// The greeting a `banner` check expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BannerProtocol {
    Smtp,
    Pop,
    Imap,
    Ftp,
    Nntp,
}

impl BannerProtocol {
    /// How the server's first line starts (NNTP: 200 or 201).
    pub fn greeting(self) -> &'static str {
        match self {
            BannerProtocol::Smtp | BannerProtocol::Ftp => "220",
            BannerProtocol::Pop => "+OK",
            BannerProtocol::Imap => "* OK",
            BannerProtocol::Nntp => "20",
        }
    }

    /// The protocol usually served on `port`.
    pub fn for_port(port: u16) -> Option<BannerProtocol> {
        match port {
            25 | 465 | 587 => Some(BannerProtocol::Smtp),
            110 => Some(BannerProtocol::Pop),
            143 => Some(BannerProtocol::Imap),
            21 => Some(BannerProtocol::Ftp),
            119 => Some(BannerProtocol::Nntp),
            _ => None,
        }
    }
}

/// DNS record types a `dns` check can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DnsType {
    A,
    Aaaa,
    Cname,
    Mx,
    Ns,
    Ptr,
    Soa,
    Srv,
    Txt,
}

impl DnsType {
    pub fn number(self) -> u16 {
        match self {
            DnsType::A => 1,
            DnsType::Ns => 2,
            DnsType::Cname => 5,
            DnsType::Soa => 6,
            DnsType::Ptr => 12,
            DnsType::Mx => 15,
            DnsType::Txt => 16,
            DnsType::Aaaa => 28,
            DnsType::Srv => 33,
        }
    }
}

/// DNS response codes a `dns` check can expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DnsRcode {
    Noerror,
    Formerr,
    Servfail,
    Nxdomain,
    Notimp,
    Refused,
}

impl DnsRcode {
    pub fn number(self) -> u16 {
        match self {
            DnsRcode::Noerror => 0,
            DnsRcode::Formerr => 1,
            DnsRcode::Servfail => 2,
            DnsRcode::Nxdomain => 3,
            DnsRcode::Notimp => 4,
            DnsRcode::Refused => 5,
        }
    }
}

/// How a `dns` check reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsTransport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub kind: CheckKindName,
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub receive: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub command: Option<String>,
    /// Port to probe; defaults to the service port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Address to probe instead of the backend's.
    #[serde(default)]
    pub address: Option<Ipv4Addr>,
    /// https: verify the certificate against the webpki roots.
    #[serde(default)]
    pub verify: bool,
    /// dns: the name asked for (default: `request`, else the root).
    #[serde(default)]
    pub name: Option<String>,
    /// dns: the record type asked for.
    #[serde(default, rename = "type")]
    pub qtype: Option<DnsType>,
    #[serde(default)]
    pub transport: Option<DnsTransport>,
    #[serde(default)]
    pub rcode: Option<DnsRcode>,
    /// dns: an A or AAAA record the answer must contain.
    #[serde(default)]
    pub expect_address: Option<std::net::IpAddr>,
    /// ping: echoes per check.
    #[serde(default)]
    pub count: Option<u32>,
    /// banner: which greeting to expect (default: from the check port).
    #[serde(default)]
    pub protocol: Option<BannerProtocol>,
    /// banner: the greeting prefix, overriding `protocol`'s.
    #[serde(default)]
    pub greeting: Option<String>,
    #[serde(default = "default_check_interval")]
    pub interval: Dur,
    #[serde(default = "default_check_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_rise_fall")]
    pub rise: u32,
    #[serde(default = "default_rise_fall")]
    pub fall: u32,
    #[serde(default = "default_true")]
    pub quiescent: bool,
}

fn default_interface() -> String {
    "eth0".into()
}
fn default_vrid() -> Spanned<u8> {
    Spanned::new(0..0, 1)
}
fn default_status_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/duet")
}
fn default_sync_port() -> u16 {
    695
}
fn default_stop_drain() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(30)))
}

fn default_new_flow_budget() -> u32 {
    // About what the data-plane thread decides a second on one core of a
    // small box with room to spare, so a flood leaves it time for the rest
    // and the packet socket's ring never fills with a flood's packets
    // (dropping legitimate ones with them).
    20_000
}

fn default_max_connections() -> usize {
    // The table is preallocated: ~80 bytes an entry plus its change log.
    1 << 18
}
fn default_priority() -> u8 {
    100
}
fn default_weight() -> u32 {
    1
}
fn default_interval() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_millis(100)))
}
fn default_dead_after() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(1)))
}
fn default_hb_port() -> u16 {
    694
}
fn default_protocol() -> Protocol {
    Protocol::Tcp
}
fn default_scheduler() -> Scheduler {
    Scheduler::Wlc
}
fn default_true() -> bool {
    true
}
fn default_check_interval() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_check_timeout() -> Dur {
    Dur(Duration::from_millis(500))
}
fn default_rise_fall() -> u32 {
    2
}

/// `max_header_bytes` and `max_headers` of proxy services.
const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=1024 * 1024;
const MAX_HEADERS_RANGE: std::ops::RangeInclusive<usize> = 1..=1000;

/// One problem found in a config file, located where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem of one file; `Display` prints one `file:line:column: message` per line.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                p.line,
                p.column,
                p.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}

struct Problems<'a> {
    text: &'a str,
    list: Vec<Problem>,
}

impl Problems<'_> {
    fn at(&mut self, span: Range<usize>, message: String) {
        let (line, column) = if span.is_empty() && span.start == 0 {
            (0, 0)
        } else {
            line_col(self.text, span.start)
        };
        self.list.push(Problem {
            line,
            column,
            message,
        });
    }
}

impl Cluster {
    /// Everything but the VIP list is equal (destructured so that a new key
    /// cannot be forgotten here).
    fn same_but_vips(&self, o: &Cluster) -> bool {
        let Cluster {
            vip: _,
            interface,
            vrid,
            key_file,
            status_listen,
            state_dir,
            admin_token_file,
            sync_port,
            max_connections,
            stop_drain,
            engine,
            new_flow_budget,
        } = self;
        *interface == o.interface
            && *vrid == o.vrid
            && *key_file == o.key_file
            && *status_listen == o.status_listen
            && *state_dir == o.state_dir
            && *admin_token_file == o.admin_token_file
            && *sync_port == o.sync_port
            && *max_connections == o.max_connections
            && *stop_drain == o.stop_drain
            && *engine == o.engine
            && *new_flow_budget == o.new_flow_budget
    }
}

impl Config {
    /// The VIPs, the cluster's own first. A validated config holds IPv4
    /// addresses only.
    pub fn vips(&self) -> Vec<Ipv4Addr> {
        self.cluster
            .vip
            .get_ref()
            .all()
            .iter()
            .filter_map(v4)
            .collect()
    }

    /// The cluster's own VIP, which names it in heartbeats.
    pub fn first_vip(&self) -> Ipv4Addr {
        self.cluster
            .vip
            .get_ref()
            .all()
            .iter()
            .find_map(v4)
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The VIP a service listens on: its `vip`, or the first.
    pub fn vip_of(&self, s: &Service) -> Ipv4Addr {
        s.vip
            .as_ref()
            .and_then(|v| v4(v.get_ref()))
            .unwrap_or_else(|| self.first_vip())
    }

    /// Reads, parses and validates; `base` resolves relative paths (the config's directory).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                line: 0,
                column: 0,
                message: format!("cannot read: {e}"),
            }],
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|problems| ConfigError {
            file: path.to_owned(),
            problems,
        })
    }

    /// The parts a running daemon cannot take over on reload (SIGHUP): the
    /// sections in which `new` differs from `self`. The election, the
    /// sockets and the host setup were made from them; services, backends,
    /// checks and node weights are free to change.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        // VIPs after the first may come and go; the first names the cluster.
        if self.first_vip() != new.first_vip() || !self.cluster.same_but_vips(&new.cluster) {
            out.push("[cluster]");
        }
        if self.heartbeat != new.heartbeat {
            out.push("[heartbeat]");
        }
        let members = |c: &Config| -> Vec<(String, Ipv4Addr, u8)> {
            c.nodes
                .iter()
                .map(|n| (n.name.get_ref().clone(), *n.address.get_ref(), n.priority))
                .collect()
        };
        if members(self) != members(new) {
            out.push("[[node]] names, addresses or priorities");
        }
        out
    }

    pub fn parse(text: &str, base: &Path) -> Result<Config, Vec<Problem>> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_col(text, s.start));
            vec![Problem {
                line,
                column,
                message: e.message().trim().to_string(),
            }]
        })?;
        cfg.resolve_paths(base);
        let mut p = Problems {
            text,
            list: Vec::new(),
        };
        cfg.validate(&mut p);
        if p.list.is_empty() {
            Ok(cfg)
        } else {
            Err(p.list)
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(self.cluster.key_file.get_mut());
        if let Some(t) = self.cluster.admin_token_file.as_mut() {
            fix(t.get_mut());
        }
        fix(&mut self.cluster.state_dir);
        for s in &mut self.services {
            if let Some(l) = s.access_log.as_mut() {
                let l = l.get_mut();
                if !l.is_empty() && l != "stderr" && Path::new(l).is_relative() {
                    *l = base.join(&*l).to_string_lossy().into_owned();
                }
            }
        }
    }

    fn validate(&self, p: &mut Problems) {
        let c = &self.cluster;
        let all = c.vip.get_ref().all();
        if all.is_empty() {
            p.at(
                c.vip.span(),
                "cluster.vip must name at least one address".into(),
            );
        }
        if all.len() > MAX_VIPS {
            p.at(
                c.vip.span(),
                format!(
                    "cluster.vip holds {} addresses; at most {MAX_VIPS}",
                    all.len()
                ),
            );
        }
        for (i, a) in all.iter().enumerate() {
            match a {
                IpAddr::V6(_) => p.at(
                    c.vip.span(),
                    format!("cluster.vip {a}: IPv6 VIPs are not supported yet"),
                ),
                IpAddr::V4(v)
                    if v.is_unspecified()
                        || v.is_broadcast()
                        || v.is_multicast()
                        || v.is_loopback() =>
                {
                    p.at(
                        c.vip.span(),
                        format!("cluster.vip {v} is not a usable unicast address"),
                    )
                }
                IpAddr::V4(_) => {}
            }
            if all[..i].contains(a) {
                p.at(c.vip.span(), format!("cluster.vip lists {a} twice"));
            }
        }
        let vips = self.vips();
        if *c.vrid.get_ref() == 0 {
            p.at(c.vrid.span(), "cluster.vrid must be 1..=255".into());
        }
        match read_keys(c.key_file.get_ref()) {
            Ok(_) => {}
            Err(e) => p.at(
                c.key_file.span(),
                format!("cluster.key_file {}: {e}", c.key_file.get_ref().display()),
            ),
        }
        if let Some(t) = &c.admin_token_file {
            if let Err(e) = read_secret(t.get_ref()) {
                p.at(
                    t.span(),
                    format!("cluster.admin_token_file {}: {e}", t.get_ref().display()),
                );
            }
        }
        if self.nodes.is_empty() {
            p.at(
                0..0,
                "no [[node]] entries: a cluster needs its nodes".into(),
            );
        }
        if self.nodes.len() > 2 {
            p.at(
                self.nodes[2].name.span(),
                "duet runs exactly one pair: at most two [[node]] entries".into(),
            );
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.get_ref().is_empty() {
                p.at(n.name.span(), "node.name must not be empty".into());
            }
            if vips.contains(n.address.get_ref()) {
                p.at(
                    n.address.span(),
                    format!(
                        "node {:?} address equals the VIP {}",
                        n.name.get_ref(),
                        n.address.get_ref()
                    ),
                );
            }
            for m in &self.nodes[..i] {
                if m.name.get_ref() == n.name.get_ref() {
                    p.at(
                        n.name.span(),
                        format!("duplicate node name {:?}", n.name.get_ref()),
                    );
                }
                if m.address.get_ref() == n.address.get_ref() {
                    p.at(
                        n.address.span(),
                        format!("duplicate node address {}", n.address.get_ref()),
                    );
                }
            }
        }
        let hb = &self.heartbeat;
        if hb.interval.get_ref().0 < Duration::from_millis(10) {
            p.at(
                hb.interval.span(),
                "heartbeat.interval must be at least 10ms".into(),
            );
        }
        if hb.dead_after.get_ref().0 < hb.interval.get_ref().0 * 3 {
            p.at(
                hb.dead_after.span(),
                "heartbeat.dead_after must be at least 3 intervals".into(),
            );
        }
        for (i, s) in self.services.iter().enumerate() {
            if *s.port.get_ref() == 0 {
                p.at(s.port.span(), "service.port must be 1..=65535".into());
            }
            if let Some(v) = &s.vip {
                if !all.contains(v.get_ref()) {
                    p.at(
                        v.span(),
                        format!("service.vip {} is not one of cluster.vip", v.get_ref()),
                    );
                }
            }
            let vip = self.vip_of(s);
            for t in &self.services[..i] {
                if t.port.get_ref() == s.port.get_ref()
                    && t.protocol == s.protocol
                    && self.vip_of(t) == vip
                {
                    p.at(
                        s.port.span(),
                        format!(
                            "duplicate service {vip}:{}/{}",
                            s.port.get_ref(),
                            s.protocol.name()
                        ),
                    );
                }
            }
            if !s.serve_local && s.backends.is_empty() {
                p.at(
                    s.port.span(),
                    "service has serve_local = false and no backends".into(),
                );
            }
            if s.mode == ServiceMode::Proxy && s.protocol != Protocol::Tcp {
                p.at(s.port.span(), "mode = \"proxy\" needs protocol tcp".into());
            }
            self.validate_proxy_keys(s, p);
            for b in s
                .backends
                .iter()
                .chain(s.routes.iter().flat_map(|r| &r.backends))
            {
                if s.mode == ServiceMode::Dr && b.get_ref().port().is_some() {
                    p.at(
                        b.span(),
                        "a backend port needs mode = \"proxy\" (direct routing keeps the port)"
                            .into(),
                    );
                }
                let a = b.get_ref().address();
                if vips.contains(&a) || self.nodes.iter().any(|n| *n.address.get_ref() == a) {
                    p.at(
                        b.span(),
                        format!(
                            "backend {a} is the VIP or a node (nodes serve through serve_local)"
                        ),
                    );
                }
            }
            if let Some(f) = &s.fallback {
                if let Err(e) = parse_fallback(f.get_ref()) {
                    p.at(f.span(), e);
                }
            }
            if let Some(ch) = &s.check {
                if ch.kind == CheckKindName::Exec && ch.command.is_none() {
                    p.at(s.port.span(), "check kind \"exec\" needs a command".into());
                }
                let check_port = ch.port.unwrap_or(*s.port.get_ref());
                if ch.kind == CheckKindName::Banner
                    && ch.greeting.is_none()
                    && ch.protocol.is_none()
                    && BannerProtocol::for_port(check_port).is_none()
                {
                    p.at(
                        s.port.span(),
                        format!(
                            "check kind \"banner\" on port {check_port} needs a protocol \
                             (smtp, pop, imap, ftp, nntp) or a greeting"
                        ),
                    );
                }
                if ch.kind == CheckKindName::Udp && ch.request.is_none() {
                    p.at(s.port.span(), "check kind \"udp\" needs a request".into());
                }
                if ch.rise == 0 || ch.fall == 0 {
                    p.at(
                        s.port.span(),
                        "check rise and fall must be at least 1".into(),
                    );
                }
            }
        }
    }

    fn validate_proxy_keys(&self, s: &Service, p: &mut Problems) {
        if s.mode != ServiceMode::Proxy {
            for (key, span) in s.proxy_keys() {
                p.at(span, format!("{key} needs mode = \"proxy\""));
            }
            return;
        }
        for (key, d) in s.proxy_timeouts() {
            if d.get_ref().0.is_zero() {
                p.at(d.span(), format!("{key} must be more than 0"));
            }
        }
        if let Some(m) = &s.backend_idle_max {
            if *m.get_ref() == 0 {
                p.at(
                    m.span(),
                    "backend_idle_max must be at least 1 (persist_backend = false keeps no idle connection)"
                        .into(),
                );
            }
        }
        if let Some(m) = &s.max_body {
            if *m.get_ref() == 0 {
                p.at(m.span(), "max_body must be at least 1 (bytes)".into());
            }
        }
        // A head must hold a request line and a Host header; each client
        // connection may buffer up to the byte limit, so it stays far
        // below what 10,000 connections could hold in memory.
        if let Some(m) = &s.max_header_bytes {
            if !MAX_HEADER_BYTES_RANGE.contains(m.get_ref()) {
                p.at(
                    m.span(),
                    format!(
                        "max_header_bytes must be from {} to {} (bytes)",
                        MAX_HEADER_BYTES_RANGE.start(),
                        MAX_HEADER_BYTES_RANGE.end()
                    ),
                );
            }
        }
        if let Some(m) = &s.max_headers {
            if !MAX_HEADERS_RANGE.contains(m.get_ref()) {
                p.at(
                    m.span(),
                    format!(
                        "max_headers must be from {} to {}",
                        MAX_HEADERS_RANGE.start(),
                        MAX_HEADERS_RANGE.end()
                    ),
                );
            }
        }
        if let Some(st) = &s.sticky {
            if st.get_ref() != "cookie" {
                p.at(
                    st.span(),
                    format!(
                        "unknown sticky {:?} (the one kind is \"cookie\")",
                        st.get_ref()
                    ),
                );
            }
        }
        if let Some(l) = &s.access_log {
            if l.get_ref().is_empty() {
                p.at(
                    l.span(),
                    "access_log must be \"stderr\" or a file path".into(),
                );
            }
        }
        for (i, r) in s.routes.iter().enumerate() {
            let host = r.host.get_ref();
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
                p.at(
                    r.host.span(),
                    format!("route host {host:?} is not a host name"),
                );
            }
            if s.routes[..i]
                .iter()
                .any(|o| o.host.get_ref().eq_ignore_ascii_case(host))
            {
                p.at(r.host.span(), format!("duplicate route host {host:?}"));
            }
            if r.backends.is_empty() {
                p.at(r.host.span(), format!("route {host:?} has no backends"));
            }
        }
    }

    /// Which `[[node]]` this process is: by name, or by matching local addresses.
    pub fn find_node(&self, name: Option<&str>, local: &[Ipv4Addr]) -> Result<usize, String> {
        if let Some(name) = name {
            return self
                .nodes
                .iter()
                .position(|n| n.name.get_ref() == name)
                .ok_or_else(|| format!("--node {name}: no [[node]] with that name"));
        }
        self.nodes
            .iter()
            .position(|n| local.contains(n.address.get_ref()))
            .ok_or_else(|| {
                "none of this host's addresses matches a [[node]].address (use --node NAME)"
                    .to_string()
            })
    }
}

/// Fallback server: `"127.0.0.1:8081"`, `"198.18.0.30"` or `"198.18.0.30:80"`.
pub fn parse_fallback(s: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    if let Ok(sa) = s.parse::<std::net::SocketAddrV4>() {
        return Ok((*sa.ip(), Some(sa.port())));
    }
    s.parse::<Ipv4Addr>()
        .map(|a| (a, None))
        .map_err(|_| format!("fallback {s:?} is not ADDRESS or ADDRESS:PORT"))
}

/// Shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// The key early appliance images shipped to every box: anyone can read it
/// from the image, so it authenticates nothing and is refused everywhere.
pub const FACTORY_KEY: &str = "duet-factory-default-key-CHANGE-ME";

/// The cluster key file: the current key on its first non-empty line, and
/// optionally the next key (during a rotation, SECURITY.md) on the second.
/// Surrounding whitespace of each line is ignored; each key needs at least
/// [`MIN_KEY_LEN`] bytes. Messages are signed with the first and accepted
/// with either.
pub fn read_keys(path: &Path) -> Result<Keys, String> {
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() > 2 {
        return Err(format!(
            "{} keys; it holds the current key and at most one next key, one a line",
            lines.len()
        ));
    }
    for (i, l) in lines.iter().enumerate() {
        if *l == FACTORY_KEY {
            return Err(format!(
                "{} key is the published factory key {FACTORY_KEY:?}; generate a secret \
                 (e.g. `head -c 32 /dev/urandom | base64`)",
                if i == 0 { "current" } else { "next" }
            ));
        }
        if l.len() < MIN_KEY_LEN {
            return Err(format!(
                "{} key has {} bytes, needs at least {MIN_KEY_LEN}",
                if i == 0 { "current" } else { "next" },
                l.len()
            ));
        }
    }
    let mut keys = lines.into_iter().map(|l| l.as_bytes().to_vec());
    let current = keys.next().ok_or("empty")?;
    Ok(Keys::new(current, keys.next()))
}

/// A secret file: text, surrounding whitespace ignored.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let raw = std::fs::read(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let t = text.trim();
    if t.is_empty() {
        return Err("empty".into());
    }
    Ok(t.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with_key() -> PathBuf {
        let d = std::env::temp_dir().join(format!("duet-cfg-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("key"), "0123456789abcdef0123\n").unwrap();
        d
    }

    const GOOD: &str = r#"
[cluster]
vip = "198.18.0.100"
interface = "eth0"
vrid = 1
key_file = "key"
status_listen = "0.0.0.0:8080"

[[node]]
name = "web1"
address = "198.18.0.1"
priority = 150
[[node]]
name = "web2"
address = "198.18.0.2"

[heartbeat]
interval = "100ms"
dead_after = "1s"
ping = ["198.18.0.254"]

[[service]]
port = 80
scheduler = "wlc"
persistence = "600s"
backends = ["198.18.0.20", { name = "db", address = "198.18.0.21", weight = 3 }]
fallback = "127.0.0.1:8081"
check = { kind = "http", request = "/ldirector.html", receive = "Test Page", interval = "1s", timeout = "500ms", rise = 2, fall = 2, quiescent = true }
"#;

    #[test]
    fn parses_the_design_example() {
        let d = dir_with_key();
        let c = Config::parse(GOOD, &d).unwrap();
        assert_eq!(c.vips(), [Ipv4Addr::new(198, 18, 0, 100)]);
        assert_eq!(c.nodes[1].priority, 100);
        assert_eq!(c.heartbeat.interval.get_ref().0, Duration::from_millis(100));
        let s = &c.services[0];
        assert_eq!(s.persistence, Some(Dur(Duration::from_secs(600))));
        assert_eq!(s.backends[1].get_ref().weight(), 3);
        assert_eq!(s.backends[1].get_ref().name(), "db");
        assert_eq!(
            s.check.as_ref().unwrap().timeout.0,
            Duration::from_millis(500)
        );
        assert_eq!(c.cluster.key_file.get_ref(), &d.join("key"));
    }

    #[test]
    fn reload_may_change_services_and_weights_only() {
        let d = dir_with_key();
        let old = Config::parse(GOOD, &d).unwrap();
        let changes = |text: &str| old.restart_only_changes(&Config::parse(text, &d).unwrap());
        // Moved lines and changed services are no restart.
        let moved = GOOD.replace("[[node]]\nname = \"web1\"", "\n\n[[node]]\nname = \"web1\"");
        assert_eq!(changes(&moved), Vec::<&str>::new());
        let services = GOOD
            .replace("scheduler = \"wlc\"", "scheduler = \"rr\"")
            .replace("weight = 3", "weight = 5")
            .replace("priority = 150", "priority = 150\nweight = 4");
        assert_eq!(changes(&services), Vec::<&str>::new());
        assert_eq!(
            changes(&GOOD.replace("198.18.0.100", "198.18.0.101")),
            ["[cluster]"]
        );
        // VIPs after the first come and go by reload.
        let two = GOOD.replace(
            "vip = \"198.18.0.100\"",
            "vip = [\"198.18.0.100\", \"198.18.0.101\"]",
        );
        assert_eq!(changes(&two), Vec::<&str>::new());
        assert_eq!(
            changes(&GOOD.replace("dead_after = \"1s\"", "dead_after = \"2s\"")),
            ["[heartbeat]"]
        );
        assert_eq!(
            changes(&GOOD.replace("priority = 150", "priority = 120")),
            ["[[node]] names, addresses or priorities"]
        );
    }

    fn problems(text: &str) -> Vec<Problem> {
        Config::parse(text, &dir_with_key()).unwrap_err()
    }

    const HTTP_CHECK: &str = r#"check = { kind = "http", request = "/ldirector.html", receive = "Test Page", interval = "1s", timeout = "500ms", rise = 2, fall = 2, quiescent = true }"#;

    #[test]
    fn check_kinds_parse_with_their_keys() {
        let d = dir_with_key();
        let with = |check: &str| Config::parse(&GOOD.replace(HTTP_CHECK, check), &d);
        let c = with(r#"check = { kind = "dns", name = "www.test", type = "AAAA", transport = "tcp", rcode = "NXDOMAIN", expect_address = "2001:db8::1", address = "198.18.0.53", port = 5353 }"#).unwrap();
        let ch = c.services[0].check.as_ref().unwrap();
        assert_eq!(ch.qtype.map(DnsType::number), Some(28));
        assert_eq!(ch.rcode.map(DnsRcode::number), Some(3));
        assert_eq!(ch.transport, Some(DnsTransport::Tcp));
        assert_eq!(ch.address, Some(Ipv4Addr::new(198, 18, 0, 53)));
        assert_eq!(ch.port, Some(5353));
        with(r#"check = { kind = "https", verify = true, host = "www.test" }"#).unwrap();
        with(r#"check = { kind = "banner", protocol = "imap" }"#).unwrap();
        with(r#"check = { kind = "banner", greeting = "OK" }"#).unwrap();
        with(r#"check = { kind = "ping", count = 3 }"#).unwrap();
        with(r#"check = { kind = "udp", request = "hi" }"#).unwrap();
        let p = with(r#"check = { kind = "dns", type = "BOGUS" }"#).unwrap_err();
        assert!(p[0].message.contains("BOGUS"), "{p:?}");
        // Port 80 says nothing about which greeting to expect.
        let p = with(r#"check = { kind = "banner" }"#).unwrap_err();
        assert!(p[0].message.contains("needs a protocol"), "{p:?}");
        let p = with(r#"check = { kind = "udp" }"#).unwrap_err();
        assert!(p[0].message.contains("needs a request"), "{p:?}");
        assert_eq!(
            BannerProtocol::for_port(25).map(BannerProtocol::greeting),
            Some("220")
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let bad = GOOD.replace("vrid = 1", "vrid = 1\nbogus = 2");
        let p = problems(&bad);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, 6, "{p:?}");
        assert!(p[0].message.contains("bogus"), "{p:?}");
    }

    #[test]
    fn bad_duration_and_address() {
        let p = problems(&GOOD.replace("\"100ms\"", "\"100 parsecs\""));
        assert!(p[0].message.contains("duration"), "{p:?}");
        assert_eq!(p[0].line, 18);
        let p = problems(&GOOD.replace("198.18.0.100", "198.18.0.300"));
        assert!(p[0].message.contains("address"), "{p:?}");
        assert_eq!(p[0].line, 3);
    }

    #[test]
    fn several_vips_and_the_service_that_names_one() {
        let d = dir_with_key();
        let two = GOOD.replace(
            "vip = \"198.18.0.100\"",
            "vip = [\"198.18.0.100\", \"198.18.0.101\"]",
        );
        let c = Config::parse(&two, &d).unwrap();
        let v1 = Ipv4Addr::new(198, 18, 0, 100);
        let v2 = Ipv4Addr::new(198, 18, 0, 101);
        assert_eq!(c.vips(), [v1, v2]);
        assert_eq!(c.vip_of(&c.services[0]), v1, "default: the first");
        // The same port on the second VIP is another service.
        let svc = &GOOD[GOOD.find("[[service]]").unwrap()..];
        let both = format!(
            "{two}\n{}",
            svc.replacen("[[service]]", "[[service]]\nvip = \"198.18.0.101\"", 1)
        );
        let c = Config::parse(&both, &d).unwrap();
        assert_eq!(c.vip_of(&c.services[1]), v2);
        // ... but not on the same one.
        let dup = format!(
            "{two}\n{}",
            svc.replacen("[[service]]", "[[service]]\nvip = \"198.18.0.100\"", 1)
        );
        let p = Config::parse(&dup, &d).unwrap_err();
        assert!(
            p.iter()
                .any(|p| p.message.contains("duplicate service 198.18.0.100:80/tcp")),
            "{p:?}"
        );
        for (vip_line, service_vip, want) in [
            ("vip = []", None, "at least one address"),
            (
                "vip = [\"198.18.0.100\", \"198.18.0.100\"]",
                None,
                "lists 198.18.0.100 twice",
            ),
            (
                "vip = [\"198.18.0.100\", \"2001:db8::1\"]",
                None,
                "IPv6 VIPs are not supported yet",
            ),
            (
                "vip = [\"198.18.0.100\", \"198.18.0.1\"]",
                None,
                "address equals the VIP 198.18.0.1",
            ),
            (
                "vip = [\"198.18.0.100\", \"224.0.0.1\"]",
                None,
                "224.0.0.1 is not a usable unicast",
            ),
            (
                "vip = [\"198.18.0.100\", \"nope\"]",
                None,
                "\"nope\" is not an IP address",
            ),
            (
                "vip = \"198.18.0.100\"",
                Some("198.18.0.101"),
                "service.vip 198.18.0.101 is not one of cluster.vip",
            ),
        ] {
            let mut text = GOOD.replace("vip = \"198.18.0.100\"", vip_line);
            if let Some(v) = service_vip {
                text = text.replacen("[[service]]", &format!("[[service]]\nvip = \"{v}\""), 1);
            }
            let p = Config::parse(&text, &d).unwrap_err();
            assert!(
                p.iter().any(|p| p.message.contains(want)),
                "{vip_line}: {p:?}"
            );
            assert!(p.iter().all(|p| p.line > 0), "{vip_line}: located: {p:?}");
        }
    }

    #[test]
    fn semantic_problems_are_all_reported() {
        let bad = GOOD
            .replace("address = \"198.18.0.2\"", "address = \"198.18.0.100\"")
            .replace("name = \"web2\"", "name = \"web1\"")
            .replace("key_file = \"key\"", "key_file = \"missing\"");
        let p = problems(&bad);
        let text: Vec<_> = p.iter().map(|p| p.message.as_str()).collect();
        assert!(
            text.iter().any(|m| m.contains("equals the VIP")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|m| m.contains("duplicate node name")),
            "{text:?}"
        );
        assert!(text.iter().any(|m| m.contains("key_file")), "{text:?}");
        assert!(p.iter().all(|p| p.line > 0), "{p:?}");
        // A scheduler is a type, like an address: serde names the choices.
        let p = problems(&GOOD.replace("\"wlc\"", "\"fastest\""));
        assert!(
            p[0].message.contains("unknown variant `fastest`") && p[0].message.contains("`mh`"),
            "{p:?}"
        );
        assert!(p[0].line > 0, "{p:?}");
    }

    #[test]
    fn short_key_rejected() {
        let d = dir_with_key();
        std::fs::write(d.join("key"), "short").unwrap();
        let p = Config::parse(GOOD, &d).unwrap_err();
        assert!(p[0].message.contains("at least 16"), "{p:?}");
    }

    #[test]
    fn factory_key_is_refused() {
        let k = dir_with_key().join("key");
        std::fs::write(&k, format!("{FACTORY_KEY}\n")).unwrap();
        let e = read_keys(&k).unwrap_err();
        assert!(e.contains("factory key"), "{e}");
        std::fs::write(
            &k,
            format!("a-real-secret-of-enough-length\n{FACTORY_KEY}\n"),
        )
        .unwrap();
        assert!(read_keys(&k)
            .unwrap_err()
            .contains("next key is the published"));
    }

    #[test]
    fn key_file_with_current_and_next_key() {
        let d = dir_with_key();
        let path = d.join("key");
        let current = b"0123456789abcdef0123".to_vec();
        let next = b"fedcba9876543210-next".to_vec();
        // One key, as before: nothing else accepted.
        assert_eq!(read_keys(&path), Ok(Keys::new(current.clone(), None)));
        std::fs::write(&path, "  0123456789abcdef0123 \n\nfedcba9876543210-next\n").unwrap();
        let k = read_keys(&path).unwrap();
        assert_eq!(k, Keys::new(current.clone(), Some(next.clone())));
        assert_eq!(k.signing(), &current[..]);
        std::fs::write(&path, "0123456789abcdef0123\nshort\n").unwrap();
        assert!(read_keys(&path)
            .unwrap_err()
            .contains("next key has 5 bytes"));
        std::fs::write(
            &path,
            "0123456789abcdef0123\nfedcba9876543210-next\nthird-key-0123456789\n",
        )
        .unwrap();
        assert!(read_keys(&path).unwrap_err().contains("3 keys"));
        std::fs::write(&path, "\n \n").unwrap();
        assert_eq!(read_keys(&path), Err("empty".into()));
        let p = Config::parse(GOOD, &d).unwrap_err();
        assert!(p[0].message.contains("key_file"), "{p:?}");
    }

    #[test]
    fn durations() {
        assert_eq!(Dur::parse("1500ms").unwrap().0, Duration::from_millis(1500));
        assert_eq!(Dur::parse("1m 30s").unwrap().0, Duration::from_secs(90));
        assert_eq!(Dur::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Dur::parse("ms").is_err());
        assert!(Dur::parse("-1s").is_err());
        assert!(Dur::parse("1e400s").is_err());
        assert!(Dur::parse("100000000000s").is_err());
        assert!(Dur::parse("10 parsecs").is_err());
    }

    #[test]
    fn find_node_by_address_or_name() {
        let c = Config::parse(GOOD, &dir_with_key()).unwrap();
        assert_eq!(c.find_node(None, &[Ipv4Addr::new(198, 18, 0, 2)]), Ok(1));
        assert_eq!(c.find_node(Some("web1"), &[]), Ok(0));
        assert!(c.find_node(None, &[Ipv4Addr::LOCALHOST]).is_err());
    }

    #[test]
    fn proxy_backends_take_a_port_dr_ones_do_not() {
        let proxy = format!(
            "{GOOD}\n[[service]]\nport = 8000\nmode = \"proxy\"\nbackends = [\"198.18.0.30:8088\", {{ address = \"198.18.0.31\", port = 9000 }}]\n"
        );
        let c = Config::parse(&proxy, &dir_with_key()).unwrap();
        let s = c.services.last().unwrap();
        assert_eq!(s.mode, ServiceMode::Proxy);
        assert_eq!(s.backends[0].get_ref().port(), Some(8088));
        assert_eq!(
            s.backends[0].get_ref().address(),
            Ipv4Addr::new(198, 18, 0, 30)
        );
        assert_eq!(s.backends[1].get_ref().port(), Some(9000));
        let dr = proxy.replace("mode = \"proxy\"\n", "");
        let p = problems(&dr);
        assert!(p.iter().any(|p| p.message.contains("needs mode")), "{p:?}");
    }

    #[test]
    fn proxy_keys_parse_and_are_checked() {
        let d = dir_with_key();
        let svc = |keys: &str| {
            format!(
                "{GOOD}\n[[service]]\nport = 8000\nmode = \"proxy\"\nbackends = [\"198.18.0.30:8088\"]\n{keys}"
            )
        };
        let c = Config::parse(
            &svc(
                "persist_client = false\nbackend_idle_max = 4\nresponse_timeout = \"2s\"\n\
                 max_body = 1000\naccess_log = \"access.log\"\nsticky = \"cookie\"\n\
                 max_header_bytes = 2048\nmax_headers = 20\n\
                 [[service.route]]\nhost = \"a.test\"\nbackends = [\"198.18.0.31:80\"]\n",
            ),
            &d,
        )
        .unwrap();
        let s = c.services.last().unwrap();
        let o = crate::proxy::ProxyOptions::from_config(s);
        assert!(!o.persist_client && o.persist_backend);
        assert_eq!(o.backend_idle_max, 4);
        assert_eq!(o.response_timeout, Duration::from_secs(2));
        assert_eq!(o.connect_timeout, Duration::from_secs(3));
        assert_eq!(o.max_body, Some(1000));
        assert_eq!((o.max_header_bytes, o.max_headers), (2048, 20));
        assert!(o.sticky);
        assert_eq!(
            o.access_log.as_deref(),
            Some(d.join("access.log").to_str().unwrap())
        );
        assert_eq!(s.routes[0].backends[0].get_ref().port(), Some(80));
        let bad = svc(
            "response_timeout = \"0s\"\nbackend_idle_max = 0\nsticky = \"ip\"\n\
             max_header_bytes = 100\nmax_headers = 0\n\
             [[service.route]]\nhost = \"a b\"\nbackends = []\n",
        );
        let p = problems(&bad);
        let text: Vec<_> = p.iter().map(|p| p.message.as_str()).collect();
        for want in [
            "response_timeout must be more than 0",
            "backend_idle_max must be at least 1",
            "unknown sticky \"ip\"",
            "max_header_bytes must be from 256 to 1048576",
            "max_headers must be from 1 to 1000",
            "route host \"a b\" is not a host name",
            "route \"a b\" has no backends",
        ] {
            assert!(text.iter().any(|m| m.contains(want)), "{want}: {text:?}");
        }
        assert!(p.iter().all(|p| p.line > 0), "{p:?}");
        // Proxy keys on a DR service are a mistake, located.
        let p = problems(&GOOD.replace("persistence = \"600s\"", "sticky = \"cookie\""));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("sticky needs mode = \"proxy\""),
            "{p:?}"
        );
        assert_eq!(p[0].line, 25, "{p:?}");
    }
}
