//! The forwarding decision: flow key in, backend out. Sans-IO: the caller
//! classifies frames (`wire::frame`), passes `now`, and applies the verdict.
//!
//! Per packet: the connection table (5-tuple → backend) is consulted first;
//! a new flow goes through the service's persistence table, then its
//! scheduler. All tables are preallocated, so [`Engine::decide`] does not
//! allocate, takes no locks and does O(1) work for a table hit (O(backends)
//! for a new flow under wrr/lc/wlc, as IPVS).
//!
//! Policies (IPVS-like, chosen where IPVS has a knob):
//! - **Mid-flow packets of unknown TCP flows** (no SYN) are scheduled and
//!   get an entry, like IPVS with `sloppy_tcp = 1`: after a takeover without
//!   synced state, mh/sh send them to the backend that already has the
//!   connection, and other schedulers send them somewhere that answers with
//!   a RST rather than letting the client hang. For [`TAKEOVER_HOLD`] after
//!   a node starts forwarding they are dropped instead, counted as
//!   `awaiting_sync`, so that a flow still on its way from the
//!   predecessor's sync stream is not reset.
//! - **RST of an unknown flow and ICMP errors** never create state: they
//!   follow an existing entry, else a persistence template, else the sh/mh
//!   hash; otherwise they are dropped as [`ForwardDrop::NoConnection`].
//! - **A SYN on an entry in TIME_WAIT or CLOSE** (port reuse) is scheduled
//!   afresh, like IPVS `conn_reuse_mode = 1`, so a drained backend does not
//!   keep receiving new connections through recycled ports.
//! - **Table full**: see *Floods* below: a new flow always gets an entry
//!   (evicting the oldest unconfirmed one), confirmed flows are never
//!   evicted, and only the confirmed part can refuse (a promotion, or an
//!   install from the peer).
//! - **Snapshots**: flows stay on their backend while it is `up`, whatever
//!   its weight (weight 0 = quiescent/drain: no new flows). A flow whose
//!   backend is no longer `up` or no longer in the snapshot loses its entry
//!   on its next packet, which is dropped as [`ForwardDrop::BackendDown`];
//!   the retransmission is scheduled anew (and typically reset by the new
//!   backend), as IPVS with `expire_nodest_conn = 1`.
//! - **Persistence** templates (client & mask → backend, per service) live
//!   while they have connections and `persistence` after the last one, as
//!   IPVS templates; a template pointing at a backend that cannot take new
//!   flows (weight 0 or down) is re-pointed, as `expire_quiescent_template`.
//! - **Change tracking** for connection sync: an entry is logged when it is
//!   created, changes state or backend, or when traffic has pushed its expiry
//!   more than half a timeout past what was last reported (so the standby's
//!   copy never runs out while the flow is busy). The log holds slot indices
//!   with a per-entry mark for deduplication; it is preallocated to twice the
//!   table capacity and, when it overflows, [`Engine::take_changes`] says so once
//!   and the caller resyncs with [`Engine::export`]. Entries learnt through
//!   [`Engine::install`] are not logged (no echo back to the peer).
//!
//! # Floods: unconfirmed flows live apart from confirmed ones
//!
//! A spoofed flood never completes a handshake, so the rule that keeps the
//! VIP answering is that **an unconfirmed flow can never take the place of
//! a confirmed one**. The table has three parts, each strictly bounded
//! ([`Limits`]; by default `max_connections` confirmed flows, and a quarter
//! of that for each of the others). Both engines follow it: the eBPF
//! engine's map layout is the same (an LRU hash for each evictable part,
//! a plain hash for the confirmed part).
//!
//! - **embryonic**: every new TCP entry starts here: after a SYN
//!   (SYN_RECV), or a mid-flow packet of an unknown flow picked up
//!   sloppily, or a FIN before any handshake. When the part is full the
//!   least recently seen entry is evicted for the newcomer (LRU), so a new
//!   SYN always gets a slot.
//! - **established**: an embryonic entry is *promoted* here by the packet
//!   that completes the handshake (the client's ACK after its SYN; for a
//!   picked-up flow, its second packet: a state of ESTABLISHED or FIN_WAIT
//!   after a hit). It stays here through FIN_WAIT/TIME_WAIT/CLOSE until it
//!   expires. Nothing is ever evicted from this part; when it is full a
//!   confirmed flow stays (and keeps being forwarded) in the embryonic
//!   part, counted as `promote_refused`.
//! - **udp**: UDP flows. The director never sees UDP replies in DR, so
//!   they are never confirmed; a flow seen twice is *assured* and is
//!   evicted only when no flow seen once is left (single-datagram spoofed
//!   sources go first). Losing a UDP entry costs only affinity: the next
//!   datagram is scheduled anew.
//!
//! **Pressure** (an evictable part more than 3/4 full): new and refreshed
//! entries of that part get short timeouts ([`Timeouts::syn_pressure`],
//! [`Timeouts::udp_pressure`]), like IPVS `secure_tcp`; their entries and
//! persistence templates are not logged for sync until confirmed (the
//! standby would otherwise pay for the flood too); [`Engine::expire`]
//! frees expired entries oldest-first so the part drains as soon as the
//! flood stops. An episode ends once the part has stayed at most 1/4 full
//! for 10 s; its start and end are [`FloodEvent`]s ([`Engine::poll_event`]),
//! with the number of distinct sources estimated by a 1 KiB HyperLogLog,
//! and not repeated within a minute. A persistence template that no
//! confirmed flow used dies with its last connection, so spoofed sources
//! cannot fill the persistence table for its 600 s either.
//!
//! **What a real client sees** when its half-open entry is evicted before
//! its ACK arrives (a flood of more entries than the embryonic part holds
//! within one round trip): the ACK is scheduled anew (sloppy TCP). With
//! `mh` (client address and port) or `sh` (client address) it reaches the
//! backend that answered the SYN, the handshake completes and the client
//! notices nothing. With `rr`, `wrr`, `lc` and `wlc` it most likely
//! reaches another backend, which has no such connection and answers RST:
//! the client's connect() succeeded but its first request fails with
//! "connection reset", and it retries (a new SYN, a new slot). Use `mh` on
//! a service that must ride out floods cleanly. An ACK flood from random
//! sources is bounded the same way (picked-up flows are embryonic until
//! their second packet); a flood of complete spoofed handshakes (SYN then
//! ACK per source) is not recognisable from the client side alone and
//! fills the confirmed part as real clients would.

mod conntable;
mod flood;
pub(crate) mod maglev;
pub(crate) mod sched;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::conntable::Lru;
pub use self::conntable::TcpState;
pub(crate) use self::conntable::{BoundedMap, Key as TableKey};
use self::flood::Guard;
pub use self::flood::{FloodEvent, TokenBucket};
use self::sched::{Load, SchedState};
use crate::wire::frame::{FlowKey, Mac, TCP_ACK, TCP_RST, TCP_SYN};

/// How a service picks a backend for a new flow (IPVS names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    /// Round robin.
    Rr,
    /// Weighted round robin, interleaved as IPVS does.
    Wrr,
    /// Least connections: active × 256 + inactive.
    Lc,
    /// Weighted least connections: (active × 256 + inactive) / weight.
    Wlc,
    /// Source hashing on the client address, weighted, over a consistent
    /// (Maglev) table so a backend change moves few clients.
    Sh,
    /// Maglev hashing on client address and port: consistent across both
    /// directors, so a takeover without synced state keeps most flows.
    Mh,
}

impl Scheduler {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sh => "sh",
            Scheduler::Mh => "mh",
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown scheduler name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler {0:?} (expected rr, wrr, lc, wlc, sh or mh)")]
pub struct UnknownScheduler(pub String);

/// By serde, so the config's and every importer's names are one list.
impl FromStr for Scheduler {
    type Err = UnknownScheduler;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use serde::de::IntoDeserializer;
        use serde::Deserialize;
        Scheduler::deserialize(s.into_deserializer())
            .map_err(|_: serde::de::value::Error| UnknownScheduler(s.to_string()))
    }
}

/// One backend of a service as the control plane sees it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSnap {
    pub name: String,
    pub addr: Ipv4Addr,
    pub mac: Mac,
    /// Effective weight: 0 when drained or quiescent-down (keeps its flows,
    /// gets no new ones).
    pub weight: u32,
    /// False when removed (non-quiescent down): its flows are cut.
    pub up: bool,
    /// The director itself: hand the packet to the local stack.
    pub local: bool,
    /// Used only while no non-fallback backend is up with weight > 0.
    pub fallback: bool,
}

/// One virtual service: a port on one of the VIPs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSnap {
    pub vip: Ipv4Addr,
    /// 6 TCP, 17 UDP.
    pub proto: u8,
    pub port: u16,
    pub scheduler: Scheduler,
    pub persistence: Option<Duration>,
    /// Clients whose address & mask match share a persistence template.
    pub persist_mask: Ipv4Addr,
    pub backends: Vec<BackendSnap>,
}

/// The whole forwarding configuration; immutable, swapped in as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub generation: u64,
    /// Every address the director answers for; services name theirs.
    pub vips: Vec<Ipv4Addr>,
    pub services: Vec<ServiceSnap>,
    /// `mode = "proxy"` services: the data plane hands their packets to the
    /// local stack (one local backend in `services`); the proxy picks here.
    pub proxy: Vec<crate::proxy::ProxyService>,
}

/// Idle timeouts per connection state (IPVS defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// ESTABLISHED.
    pub tcp: Duration,
    /// FIN_WAIT and TIME_WAIT.
    pub tcp_fin: Duration,
    pub udp: Duration,
    /// SYN_RECV: a handshake the client has not completed.
    pub syn: Duration,
    /// CLOSE: after a RST.
    pub close: Duration,
    /// Cap on a half-open (embryonic) entry's timeout while that part of
    /// the table is under pressure (IPVS `secure_tcp` shortens SYN_RECV).
    pub syn_pressure: Duration,
    /// UDP timeout while the UDP part is under pressure.
    pub udp_pressure: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp: Duration::from_secs(900),
            tcp_fin: Duration::from_secs(120),
            udp: Duration::from_secs(300),
            syn: Duration::from_secs(60),
            close: Duration::from_secs(10),
            syn_pressure: Duration::from_secs(5),
            udp_pressure: Duration::from_secs(10),
        }
    }
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send to this backend: rewrite MACs (or hand to the local stack when
    /// `local`).
    Forward {
        addr: Ipv4Addr,
        mac: Mac,
        local: bool,
    },
    Drop(ForwardDrop),
}

/// Why the engine dropped a packet that classified fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ForwardDrop {
    /// No service for this protocol and port on the VIP.
    NoService,
    /// The service has no backend that can take a new flow.
    NoBackend,
    /// The connection table refused an entry. Cannot happen while the
    /// per-kind limits sum to the table's capacity (a new flow evicts the
    /// oldest unconfirmed entry instead); kept so that a bookkeeping bug
    /// costs a packet, not a panic.
    TableFull,
    /// The flow's backend was removed or is down; its entry is gone now and
    /// the next packet is scheduled anew.
    BackendDown,
    /// A packet that must not create state (ICMP error, RST) for which no
    /// connection, persistence template or hash gives a backend.
    NoConnection,
    /// A mid-flow packet of an unknown TCP flow just after a takeover
    /// ([`Engine::hold_unknown_until`]): its entry is likely still on its
    /// way from the predecessor's sync stream, and the client's
    /// retransmission will find it, where scheduling it afresh would
    /// most likely reset it.
    AwaitingSync,
}

impl ForwardDrop {
    pub const ALL: [ForwardDrop; 6] = [
        ForwardDrop::NoService,
        ForwardDrop::NoBackend,
        ForwardDrop::TableFull,
        ForwardDrop::BackendDown,
        ForwardDrop::NoConnection,
        ForwardDrop::AwaitingSync,
    ];

    /// A stable snake_case label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardDrop::NoService => "no_service",
            ForwardDrop::NoBackend => "no_backend",
            ForwardDrop::TableFull => "table_full",
            ForwardDrop::BackendDown => "backend_down",
            ForwardDrop::NoConnection => "no_connection",
            ForwardDrop::AwaitingSync => "awaiting_sync",
        }
    }
}

/// Drop counts by reason, plus events that are not drops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DropCounters {
    pub no_service: u64,
    pub no_backend: u64,
    pub table_full: u64,
    pub backend_down: u64,
    pub no_connection: u64,
    pub awaiting_sync: u64,
    /// Not a drop: a new flow was scheduled without persistence because the
    /// persistence table was full.
    pub persist_table_full: u64,
}

impl DropCounters {
    pub fn get(&self, reason: ForwardDrop) -> u64 {
        match reason {
            ForwardDrop::NoService => self.no_service,
            ForwardDrop::NoBackend => self.no_backend,
            ForwardDrop::TableFull => self.table_full,
            ForwardDrop::BackendDown => self.backend_down,
            ForwardDrop::NoConnection => self.no_connection,
            ForwardDrop::AwaitingSync => self.awaiting_sync,
        }
    }

    fn count(&mut self, reason: ForwardDrop) {
        let c = match reason {
            ForwardDrop::NoService => &mut self.no_service,
            ForwardDrop::NoBackend => &mut self.no_backend,
            ForwardDrop::TableFull => &mut self.table_full,
            ForwardDrop::BackendDown => &mut self.backend_down,
            ForwardDrop::NoConnection => &mut self.no_connection,
            ForwardDrop::AwaitingSync => &mut self.awaiting_sync,
        };
        *c += 1;
    }
}

/// Traffic and connection counts of a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Entries in ESTABLISHED (IPVS ActiveConn).
    pub active: u64,
    /// All other entries, UDP included (IPVS InActConn).
    pub inactive: u64,
    /// Entries created by scheduling here (not those installed by sync).
    pub total: u64,
}

/// Counters of one backend within one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceBackendCounters {
    pub vip: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
    pub addr: Ipv4Addr,
    pub counters: BackendCounters,
}

/// A connection entry as exported to / imported from connection sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnEntry {
    pub key: FlowKey,
    pub backend: Ipv4Addr,
    pub state: TcpState,
    pub expires: Instant,
}

/// A persistence template as exported to / imported from connection sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistEntry {
    pub vip: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
    /// Client address already masked with the service's `persist_mask`.
    pub client: Ipv4Addr,
    pub backend: Ipv4Addr,
    pub expires: Instant,
}

const NO_PERSIST: u32 = u32::MAX;

/// A backend of a service as the engine tracks it. Ids are stable while
/// anything refers to them, across snapshots, so counters survive reloads.
struct Dest {
    vip: Ipv4Addr,
    proto: u8,
    port: u16,
    addr: Ipv4Addr,
    mac: Mac,
    weight: u32,
    up: bool,
    local: bool,
    in_snapshot: bool,
    counters: BackendCounters,
    /// Persistence templates pointing here.
    templates: u64,
}

impl Dest {
    fn takes_new_flows(&self) -> bool {
        self.up && self.weight > 0
    }

    fn referenced(&self) -> bool {
        self.counters.active + self.counters.inactive + self.templates > 0
    }

    fn verdict(&self) -> Verdict {
        Verdict::Forward {
            addr: self.addr,
            mac: self.mac,
            local: self.local,
        }
    }
}

struct Conn {
    dest: u32,
    kind: Kind,
    state: TcpState,
    expires: Instant,
    /// The template this connection was scheduled through, or NO_PERSIST.
    persist: u32,
    /// Equal to the change log's epoch while the entry is in the log.
    mark: u32,
    /// The expiry last handed to [`Engine::take_changes`] (or installed).
    synced_until: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PersistKey {
    vip: Ipv4Addr,
    proto: u8,
    port: u16,
    client: Ipv4Addr,
}

impl conntable::Key for PersistKey {
    fn hash_with(&self, seed: u64) -> u64 {
        let mut b = [0u8; 11];
        b[0] = self.proto;
        b[1..3].copy_from_slice(&self.port.to_be_bytes());
        b[3..7].copy_from_slice(&self.client.octets());
        b[7..11].copy_from_slice(&self.vip.octets());
        xxhash_rust::xxh3::xxh3_64_with_seed(&b, seed)
    }
}

struct Persist {
    dest: u32,
    expires: Instant,
    timeout: Duration,
    /// Connections scheduled through this template that are still alive.
    conns: u64,
    /// A connection through it completed a handshake (UDP: sent a second
    /// datagram), or the peer synced it. An unconfirmed template dies with
    /// its last connection instead of outliving it: a spoofed flood must
    /// not fill the persistence table either.
    confirmed: bool,
    mark: u32,
    synced_until: Instant,
}

/// What [`Engine::take_changes`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TakeChanges {
    /// Changes were lost since the last call because the log was full: the
    /// peer needs a full snapshot ([`Engine::export`],
    /// [`Engine::export_persist`]). Nothing was written to the outputs.
    pub overflowed: bool,
    /// Log slots still queued after this call (stale ones included): call
    /// again when non-zero.
    pub pending: usize,
}

/// Slot indices of entries changed since the last [`Engine::take_changes`].
/// An entry is in the log iff its `mark` equals `epoch`; bumping the epoch
/// empties the log in O(1) after an overflow.
struct ChangeLog {
    slots: VecDeque<u32>,
    cap: usize,
    epoch: u32,
    overflowed: bool,
}

impl ChangeLog {
    fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        ChangeLog {
            slots: VecDeque::with_capacity(cap),
            cap,
            epoch: 1,
            overflowed: false,
        }
    }

    /// Logs slot `i` unless it is already logged. Never allocates: the
    /// deque was sized at construction and is never pushed past `cap`.
    fn mark(&mut self, mark: &mut u32, i: u32) {
        if *mark == self.epoch {
            return;
        }
        if self.slots.len() >= self.cap {
            self.overflowed = true;
            return;
        }
        *mark = self.epoch;
        self.slots.push_back(i);
    }

    /// Forgets everything logged (after an overflow); 0 is never an epoch,
    /// so entries created with mark 0 are never taken for logged ones.
    fn reset(&mut self) {
        self.slots.clear();
        self.overflowed = false;
        self.epoch = self.epoch.wrapping_add(1).max(1);
    }
}

/// Whether an entry whose expiry moved to `expires` should be re-sent: when
/// the peer's copy (`synced_until`) has less than half a timeout left.
fn needs_refresh(expires: Instant, synced_until: Instant, timeout: Duration) -> bool {
    expires.saturating_duration_since(synced_until) > timeout / 2
}

struct Service {
    vip: Ipv4Addr,
    proto: u8,
    port: u16,
    persistence: Option<Duration>,
    mask: u32,
    sched: SchedState,
    /// Dest ids parallel to `sched.eligible`.
    eligible: Vec<u32>,
}

/// The parts of the connection table. Each has its own limit; only the
/// unconfirmed ones are evicted for newcomers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCP not yet confirmed: SYN seen but no handshake ACK, or picked up
    /// mid-flow (sloppy) and seen once.
    Embryonic,
    /// TCP confirmed by the director having seen the handshake complete
    /// (or a second packet of a picked-up flow), in whatever state it is now.
    Established,
    /// UDP: the director never sees replies, so never confirmed.
    Udp,
}

impl Kind {
    fn idx(self) -> usize {
        match self {
            Kind::Embryonic => 0,
            Kind::Established => 1,
            Kind::Udp => 2,
        }
    }
}

/// Recency lists (oldest first) of the evictable entries.
const LIST_EMBRYONIC: usize = 0;
/// UDP flows seen once: evicted before any UDP flow seen twice.
const LIST_UDP_FRESH: usize = 1;
const LIST_UDP_ASSURED: usize = 2;

/// How many entries each part of the connection table may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Confirmed TCP flows (`cluster.max_connections`); never evicted.
    pub established: usize,
    /// Half-open TCP flows; the oldest is evicted for a new one.
    pub embryonic: usize,
    /// UDP flows; the oldest seen-once flow is evicted for a new one.
    pub udp: usize,
}

impl Limits {
    /// The parts for a connection table of `capacity` confirmed flows: a
    /// quarter of it each for half-open TCP and UDP flows (all of it for
    /// small tables, which tests and tiny deployments use).
    pub fn for_capacity(capacity: usize) -> Limits {
        let capacity = capacity.max(1);
        let part = (capacity / 4).max(capacity.min(1024));
        Limits {
            established: capacity,
            embryonic: part,
            udp: part,
        }
    }

    fn of(&self, k: Kind) -> usize {
        match k {
            Kind::Embryonic => self.embryonic,
            Kind::Established => self.established,
            Kind::Udp => self.udp,
        }
    }

    fn total(&self) -> usize {
        self.established
            .saturating_add(self.embryonic)
            .saturating_add(self.udp)
    }
}

/// Occupancy of one part of the connection table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartStats {
    pub entries: usize,
    pub limit: usize,
    /// Entries evicted to make room for a newer one (never for
    /// `established`).
    pub evicted: u64,
    /// Under pressure: more than 3/4 full, short timeouts in force, until
    /// it has stayed at most 1/4 full for 10 s.
    pub pressure: bool,
}

/// The connection table by part, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub embryonic: PartStats,
    pub established: PartStats,
    pub udp: PartStats,
    /// Half-open entries that completed their handshake and moved to the
    /// established part.
    pub promoted: u64,
    /// Packets of confirmed flows carried in the embryonic part because
    /// the established part was full (they stay evictable).
    pub promote_refused: u64,
}

/// At most this many flood events wait for [`Engine::poll_event`].
const EVENT_QUEUE: usize = 8;

/// Room for one service's dealt picks (a cycle of rr or wrr) in a
/// [`HashTable`].
pub const MAX_DEAL: usize = 4096;

/// One service's scheduling table, for a data plane that schedules new
/// flows without the engine (the eBPF engine). Slot
/// `maglev::flow_hash(client) % TABLE_SIZE` names the backend; rr and wrr
/// deal `deal` out in turn instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashTable {
    pub vip: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
    /// Clients whose address & mask match share a backend.
    pub src_mask: Ipv4Addr,
    /// Whether the client's port is hashed too.
    pub with_port: bool,
    pub backends: Vec<TableBackend>,
    /// `maglev::TABLE_SIZE` indices into `backends`.
    pub slots: Vec<u16>,
    /// One cycle of rr or wrr's picks, indices into `backends`; empty for
    /// other schedulers.
    pub deal: Vec<u16>,
    /// The table picks as the engine itself would (rr, wrr, sh, mh without
    /// persistence), so the data plane may schedule every new flow by it;
    /// otherwise (lc and wlc hang on load, persistence on templates) only
    /// those beyond its budget.
    pub exact: bool,
}

/// A backend a [`HashTable`] slot names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableBackend {
    pub backend: Ipv4Addr,
    pub mac: Mac,
    pub local: bool,
}

/// The forwarding engine of one director. See the module docs for policies.
pub struct Engine {
    snapshot: Arc<Snapshot>,
    timeouts: Timeouts,
    services: Vec<Service>,
    dests: Vec<Dest>,
    dest_free: Vec<u32>,
    /// (VIP, protocol, port, backend) to dest id.
    dest_index: HashMap<(Ipv4Addr, u8, u16, Ipv4Addr), u32>,
    conns: BoundedMap<FlowKey, Conn>,
    /// Recency of the embryonic and UDP entries of `conns`.
    lru: Lru<3>,
    limits: Limits,
    /// Entries per [`Kind`], and evictions per kind.
    counts: [usize; 3],
    evicted: [u64; 3],
    promoted: u64,
    promote_refused: u64,
    syn_guard: Guard,
    udp_guard: Guard,
    events: VecDeque<FloodEvent>,
    persists: BoundedMap<PersistKey, Persist>,
    drops: DropCounters,
    conn_log: ChangeLog,
    persist_log: ChangeLog,
    /// See [`Engine::hold_unknown_until`].
    hold_unknown: Option<Instant>,
}

/// How long after a takeover a mid-flow packet of an unknown TCP flow is
/// held back: longer than the predecessor's sync stream takes to bring a
/// flow it created in its last moments (its data plane and sync thread
/// trade every few tens of ms), shorter than the client's retransmission
/// of what it sent, which then finds the entry.
pub const TAKEOVER_HOLD: std::time::Duration = std::time::Duration::from_millis(300);

impl Engine {
    /// `capacity` bounds the confirmed connections and the persistence
    /// table; half-open and UDP flows get [`Limits::for_capacity`]. All
    /// memory for the tables is allocated here.
    pub fn new(snapshot: Arc<Snapshot>, capacity: usize, timeouts: Timeouts) -> Self {
        Engine::with_limits(snapshot, Limits::for_capacity(capacity), timeouts)
    }

    /// Like [`Engine::new`] with explicit part limits; the persistence
    /// table holds `limits.established` templates.
    pub fn with_limits(snapshot: Arc<Snapshot>, limits: Limits, timeouts: Timeouts) -> Self {
        let limits = Limits {
            established: limits.established.max(1),
            embryonic: limits.embryonic.max(1),
            udp: limits.udp.max(1),
        };
        let capacity = limits.total();
        let mut e = Engine {
            snapshot: Arc::new(Snapshot::default()),
            timeouts,
            services: Vec::new(),
            dests: Vec::new(),
            dest_free: Vec::new(),
            dest_index: HashMap::new(),
            conns: BoundedMap::new(capacity),
            lru: Lru::new(capacity),
            limits,
            counts: [0; 3],
            evicted: [0; 3],
            promoted: 0,
            promote_refused: 0,
            syn_guard: Guard::new("SYN", "half-open flows", limits.embryonic),
            udp_guard: Guard::new("UDP", "UDP flows", limits.udp),
            events: VecDeque::with_capacity(EVENT_QUEUE),
            persists: BoundedMap::new(limits.established),
            drops: DropCounters::default(),
            // Twice the table: indices of entries removed before being
            // taken stay in the log, so churn between two takes needs room.
            conn_log: ChangeLog::new(capacity.saturating_mul(2)),
            persist_log: ChangeLog::new(capacity.saturating_mul(2)),
            hold_unknown: None,
        };
        e.set_snapshot(snapshot);
        e
    }

    /// This node has just started to forward (a takeover): until `until`,
    /// mid-flow packets of unknown TCP flows are dropped, counted as
    /// [`ForwardDrop::AwaitingSync`], instead of being scheduled (sloppy
    /// TCP). A flow the predecessor created just before the LAN moved the
    /// virtual MAC reaches this node through sync a little after its
    /// handshake's ACK can; scheduled afresh, that ACK most likely goes to
    /// a backend without the connection, which resets it. Held, the
    /// client's retransmission finds the synced entry; past `until`
    /// (a dead predecessor syncs nothing) such packets are picked up as
    /// before.
    pub fn hold_unknown_until(&mut self, until: Instant) {
        self.hold_unknown = Some(until);
    }

    /// Swaps in a new configuration. Work is O(services + backends + tracked
    /// backends); connection entries are not touched: a flow whose backend
    /// is gone or down is dropped on its next packet. A service keeps its
    /// scheduler state (round-robin position, Maglev table) when its
    /// scheduler and weighted backend set are unchanged.
    pub fn set_snapshot(&mut self, snap: Arc<Snapshot>) {
        for d in &mut self.dests {
            d.in_snapshot = false;
        }
        let mut old: Vec<Service> = std::mem::take(&mut self.services);
        let mut services = Vec::with_capacity(snap.services.len());
        for s in &snap.services {
            if services
                .iter()
                .any(|x: &Service| x.vip == s.vip && x.proto == s.proto && x.port == s.port)
            {
                log::warn!(
                    "forward: duplicate service {}:{}/{} ignored",
                    s.vip,
                    s.port,
                    s.proto
                );
                continue;
            }
            // (address, weight, fallback, dest id) of each distinct backend.
            let mut members: Vec<(Ipv4Addr, u32, bool, u32)> = Vec::with_capacity(s.backends.len());
            for b in &s.backends {
                if members.iter().any(|m| m.0 == b.addr) {
                    log::warn!(
                        "forward: duplicate backend {} in service {}:{}/{} ignored",
                        b.addr,
                        s.vip,
                        s.port,
                        s.proto
                    );
                    continue;
                }
                let id = self.dest_for(s.vip, s.proto, s.port, b.addr);
                let d = &mut self.dests[id as usize];
                d.mac = b.mac;
                d.weight = b.weight;
                d.up = b.up;
                d.local = b.local;
                d.in_snapshot = true;
                let usable_weight = if b.up { b.weight } else { 0 };
                members.push((b.addr, usable_weight, b.fallback, id));
            }
            let usable = |fallback: bool| -> Vec<(Ipv4Addr, u32)> {
                members
                    .iter()
                    .filter(|m| m.2 == fallback && m.1 > 0)
                    .map(|m| (m.0, m.1))
                    .collect()
            };
            let mut eligible = usable(false);
            if eligible.is_empty() {
                eligible = usable(true);
            }
            let mut sched = match old
                .iter()
                .position(|o| o.vip == s.vip && o.proto == s.proto && o.port == s.port)
            {
                Some(i) if old[i].sched.same_as(s.scheduler, &eligible) => old.swap_remove(i).sched,
                _ => SchedState::new(s.scheduler, eligible.clone()),
            };
            let ids_of = |sched: &SchedState| -> Vec<u32> {
                sched
                    .eligible
                    .iter()
                    .filter_map(|(addr, _)| members.iter().find(|m| m.0 == *addr).map(|m| m.3))
                    .collect()
            };
            let mut eligible_ids = ids_of(&sched);
            if eligible_ids.len() != sched.eligible.len() {
                // Cannot happen (same_as compared the sets); rebuild rather
                // than let the two lists disagree.
                sched = SchedState::new(s.scheduler, eligible);
                eligible_ids = ids_of(&sched);
            }
            services.push(Service {
                vip: s.vip,
                proto: s.proto,
                port: s.port,
                persistence: s.persistence,
                mask: u32::from(s.persist_mask),
                sched,
                eligible: eligible_ids,
            });
        }
        self.services = services;
        for id in 0..self.dests.len() as u32 {
            let d = &mut self.dests[id as usize];
            if !d.in_snapshot {
                d.up = false;
                d.weight = 0;
                self.maybe_free_dest(id);
            }
        }
        log::debug!(
            "forward: snapshot generation {} -> {}",
            self.snapshot.generation,
            snap.generation
        );
        self.snapshot = snap;
    }

    /// The snapshot in use.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Every service's consistent-hash table over its eligible
    /// backends: sh and mh hash as [`Engine::decide`] does; the other
    /// schedulers degrade to a weighted hash (and persistence to hashing
    /// the masked client address), which is what a data plane that cannot
    /// ask the engine can do.
    pub fn hash_tables(&self) -> Vec<HashTable> {
        let mut out = Vec::new();
        for s in &self.services {
            let built;
            let m = match s.sched.table() {
                Some(m) => m,
                None => match maglev::Maglev::build(&s.sched.eligible) {
                    Some(m) => {
                        built = m;
                        &built
                    }
                    None => continue,
                },
            };
            let (src_mask, with_port) = match (s.persistence, s.sched.kind) {
                (Some(_), _) => (Ipv4Addr::from(s.mask), false),
                (None, Scheduler::Sh) => (Ipv4Addr::BROADCAST, false),
                (None, _) => (Ipv4Addr::BROADCAST, true),
            };
            let deal = match s.persistence {
                Some(_) => None,
                None => s.sched.deal(MAX_DEAL),
            };
            let exact = s.persistence.is_none()
                && (deal.is_some() || matches!(s.sched.kind, Scheduler::Sh | Scheduler::Mh));
            let backends = s
                .eligible
                .iter()
                .map(|&id| {
                    let d = &self.dests[id as usize];
                    TableBackend {
                        backend: d.addr,
                        mac: d.mac,
                        local: d.local,
                    }
                })
                .collect();
            out.push(HashTable {
                vip: s.vip,
                proto: s.proto,
                port: s.port,
                src_mask,
                with_port,
                backends,
                slots: m.slots().to_vec(),
                deal: deal
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| i as u16)
                    .collect(),
                exact,
            });
        }
        out
    }

    /// Takes in a flow a data plane scheduled without the engine (see
    /// [`Engine::hash_tables`]), as if it had been decided here: counted,
    /// synced to the peer, and replacing an older entry on its ports. False
    /// when its service or backend is unknown or down, or the table is full.
    pub fn adopt(
        &mut self,
        now: Instant,
        key: &FlowKey,
        backend: Ipv4Addr,
        confirmed: bool,
    ) -> bool {
        let (state, kind) = match (key.proto, confirmed) {
            (FlowKey::TCP, true) => (TcpState::Established, Kind::Established),
            (FlowKey::TCP, false) => (TcpState::SynRecv, Kind::Embryonic),
            _ => (TcpState::Udp, Kind::Udp),
        };
        let e = ConnEntry {
            key: *key,
            backend,
            state,
            expires: now + self.timeout_for(kind, state),
        };
        if !self.install(now, e) {
            return false;
        }
        let Some(ci) = self.conns.find(key) else {
            return false;
        };
        if kind == Kind::Udp && confirmed {
            // Seen twice already: the last of UDP flows to be evicted.
            self.lru.push(LIST_UDP_ASSURED, ci);
        }
        if let Some((_, c)) = self.conns.at_mut(ci) {
            self.dests[c.dest as usize].counters.total += 1;
        }
        // As for a new flow decided here.
        match (kind, confirmed) {
            (Kind::Embryonic, _) => self.enter_unconfirmed(now, ci, true, key.src),
            (Kind::Udp, false) => self.enter_unconfirmed(now, ci, false, key.src),
            _ => self.mark_for_sync(now, ci, false),
        }
        true
    }

    /// A flow just entered unconfirmed (half-open TCP, UDP seen once): its
    /// part's flood guard counts its source. Under a flood, unconfirmed
    /// entries are not synced until they are confirmed (IPVS syncs only
    /// after a few packets): the standby would spend as much on the flood
    /// as the director.
    fn enter_unconfirmed(&mut self, now: Instant, ci: u32, tcp: bool, src: Ipv4Addr) {
        let guard = if tcp {
            &mut self.syn_guard
        } else {
            &mut self.udp_guard
        };
        guard.on_new(src);
        let quiet = guard.under_pressure();
        self.mark_for_sync(now, ci, quiet);
    }

    /// Queues a new entry for the peer, or, `held` back, counts it as one
    /// whose peer copy has run out, so the packet that confirms it also
    /// sends it.
    fn mark_for_sync(&mut self, now: Instant, ci: u32, held: bool) {
        if let Some((_, c)) = self.conns.at_mut(ci) {
            if held {
                c.synced_until = now;
            } else {
                self.conn_log.mark(&mut c.mark, ci);
            }
        }
    }

    /// A flow the data plane confirmed itself (its handshake's ACK, a UDP
    /// flow's second datagram, forwarded without the engine): the same
    /// transition as that frame here, without counting it as a packet (the
    /// data plane's counters bring it). False when the flow is unknown.
    pub fn confirm(&mut self, now: Instant, key: &FlowKey) -> bool {
        let Some(ci) = self.conns.find(key) else {
            return false;
        };
        let tcp = key.proto == FlowKey::TCP;
        let flags = if tcp { TCP_ACK } else { 0 };
        if self.hit(now, ci, tcp, flags, 0).is_none() {
            self.remove_conn(ci);
            return false;
        }
        true
    }

    /// Decides where a TCP/UDP packet of `key` goes, updating the connection
    /// state, timeouts and counters. `tcp_flags` is 0 for UDP; `len` is the
    /// frame length, for byte counters.
    pub fn decide(&mut self, now: Instant, key: &FlowKey, tcp_flags: u8, len: usize) -> Verdict {
        let tcp = key.proto == FlowKey::TCP;
        if let Some(ci) = self.conns.find(key) {
            match self.hit(now, ci, tcp, tcp_flags, len) {
                Some(v) => return v,
                None => self.remove_conn(ci),
            }
        }
        let Some(si) = self.service_index(key) else {
            return self.drop(ForwardDrop::NoService);
        };
        if tcp && tcp_flags & TCP_RST != 0 {
            return self.stateless(now, si, key, len);
        }
        if tcp && tcp_flags & TCP_SYN == 0 && self.hold_unknown.is_some_and(|t| now < t) {
            return self.drop(ForwardDrop::AwaitingSync);
        }
        // Every new flow starts unconfirmed, in a part of its own.
        let kind = if tcp { Kind::Embryonic } else { Kind::Udp };
        self.make_room(kind);
        let Some((dest, persist)) = self.schedule(now, si, key) else {
            return self.drop(ForwardDrop::NoBackend);
        };
        let state = if tcp {
            TcpState::after(None, tcp_flags)
        } else {
            TcpState::Udp
        };
        let expires = now + self.timeout_for(kind, state);
        let conn = Conn {
            dest,
            kind,
            state,
            expires,
            persist,
            mark: 0,
            synced_until: expires,
        };
        let Some(ci) = self.conns.insert(*key, conn) else {
            // Unreachable: make_room kept the part, hence the slab, below
            // its limit. Stay consistent anyway.
            self.release_template(persist);
            self.forget_unconfirmed_template(persist);
            return self.drop(ForwardDrop::TableFull);
        };
        self.counts[kind.idx()] += 1;
        self.lru
            .push(if tcp { LIST_EMBRYONIC } else { LIST_UDP_FRESH }, ci);
        self.enter_unconfirmed(now, ci, tcp, key.src);
        if let Some(p) = self.persists.at_mut(persist) {
            p.1.conns += 1;
        }
        let d = &mut self.dests[dest as usize];
        d.counters.total += 1;
        count_state(&mut d.counters, state, 1);
        d.counters.packets += 1;
        d.counters.bytes += len as u64;
        d.verdict()
    }

    /// Decides where an ICMP error about `key`'s flow (already turned to
    /// client → VIP) goes: like [`Engine::decide`] but it never creates or
    /// advances state.
    pub fn decide_related(&mut self, now: Instant, key: &FlowKey, len: usize) -> Verdict {
        let Some(si) = self.service_index(key) else {
            return self.drop(ForwardDrop::NoService);
        };
        self.stateless(now, si, key, len)
    }

    /// Table hit: `None` when the entry is stale and must be removed before
    /// scheduling; a verdict otherwise.
    fn hit(&mut self, now: Instant, ci: u32, tcp: bool, flags: u8, len: usize) -> Option<Verdict> {
        let (_, c) = self.conns.at(ci)?;
        if c.expires <= now {
            return None;
        }
        let (dest, old, kind, persist) = (c.dest, c.state, c.kind, c.persist);
        let pure_syn = tcp && flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN;
        if !self.dests[dest as usize].up {
            // A new connection (SYN) is scheduled afresh instead of costing
            // the client a retransmission; mid-flow packets of a removed
            // backend are dropped.
            if pure_syn {
                return None;
            }
            self.remove_conn(ci);
            return Some(self.drop(ForwardDrop::BackendDown));
        }
        // In DR the director sees only the client's half: after a close the
        // entry lingers in FIN_WAIT, and a SYN on that port is a new
        // connection (IPVS conn_reuse_mode), not a retransmission.
        let reuse = pure_syn
            && matches!(
                old,
                TcpState::FinWait | TcpState::TimeWait | TcpState::Close
            );
        if reuse {
            return None;
        }
        let state = if tcp {
            TcpState::after(Some(old), flags)
        } else {
            TcpState::Udp
        };
        // Confirmation: the handshake completed (or a picked-up flow sent
        // again), or a UDP flow's second datagram.
        let mut new_kind = kind;
        let mut confirmed = false;
        match kind {
            Kind::Embryonic if matches!(state, TcpState::Established | TcpState::FinWait) => {
                confirmed = true;
                if self.counts[Kind::Established.idx()] < self.limits.established {
                    self.lru.unlink(ci);
                    self.counts[Kind::Embryonic.idx()] -= 1;
                    self.counts[Kind::Established.idx()] += 1;
                    self.promoted += 1;
                    new_kind = Kind::Established;
                } else {
                    // Confirmed flows are never evicted to make room: this
                    // one keeps going as best it can where it is.
                    self.promote_refused += 1;
                    self.lru.push(LIST_EMBRYONIC, ci);
                }
            }
            Kind::Embryonic => self.lru.push(LIST_EMBRYONIC, ci),
            Kind::Udp => {
                confirmed = self.lru.list_of(ci) == Some(LIST_UDP_FRESH);
                self.lru.push(LIST_UDP_ASSURED, ci);
            }
            Kind::Established => {}
        }
        if confirmed {
            self.confirm_template(persist);
        }
        // Seen twice (UDP) or confirmed: worth syncing even under a flood.
        let quiet = new_kind == Kind::Embryonic && self.syn_guard.under_pressure();
        let timeout = self.timeout_for(new_kind, state);
        let (_, c) = self.conns.at_mut(ci)?;
        let d = &mut self.dests[dest as usize];
        let changed = state != c.state;
        if changed {
            count_state(&mut d.counters, c.state, -1);
            count_state(&mut d.counters, state, 1);
            c.state = state;
        }
        c.kind = new_kind;
        c.expires = now + timeout;
        if !quiet && (changed || needs_refresh(c.expires, c.synced_until, timeout)) {
            self.conn_log.mark(&mut c.mark, ci);
        }
        // Length 0: a confirmation reported by the data plane, no packet.
        if len > 0 {
            d.counters.packets += 1;
            d.counters.bytes += len as u64;
        }
        Some(d.verdict())
    }

    /// Idle timeout of an entry of `kind` in `state`: the state's own,
    /// capped while that part of the table is under pressure.
    fn timeout_for(&self, kind: Kind, state: TcpState) -> Duration {
        let t = &self.timeouts;
        match kind {
            Kind::Established => state.timeout(t),
            Kind::Embryonic if self.syn_guard.under_pressure() => {
                state.timeout(t).min(t.syn_pressure)
            }
            Kind::Embryonic => state.timeout(t),
            Kind::Udp if self.udp_guard.under_pressure() => t.udp_pressure,
            Kind::Udp => t.udp,
        }
    }

    /// Evicts the oldest entry of `kind`'s part when it is full: the
    /// oldest half-open flow, or the oldest UDP flow seen only once (else
    /// the oldest UDP flow). The established part never evicts.
    fn make_room(&mut self, kind: Kind) {
        if self.counts[kind.idx()] < self.limits.of(kind) {
            return;
        }
        let victim = match kind {
            Kind::Embryonic => self.lru.oldest(LIST_EMBRYONIC),
            Kind::Udp => self
                .lru
                .oldest(LIST_UDP_FRESH)
                .or_else(|| self.lru.oldest(LIST_UDP_ASSURED)),
            Kind::Established => None,
        };
        if let Some(ci) = victim {
            self.remove_conn(ci);
            self.evicted[kind.idx()] += 1;
        }
    }

    /// Marks the template a confirmed flow went through as confirmed, and
    /// logs it for sync if it was held back.
    fn confirm_template(&mut self, pi: u32) {
        if let Some((_, p)) = self.persists.at_mut(pi) {
            p.confirmed = true;
            if needs_refresh(p.expires, p.synced_until, p.timeout) {
                self.persist_log.mark(&mut p.mark, pi);
            }
        }
    }

    /// Removes a template no confirmed flow ever used once its last
    /// connection is gone.
    fn forget_unconfirmed_template(&mut self, pi: u32) {
        if matches!(self.persists.at(pi), Some((_, p)) if p.conns == 0 && !p.confirmed) {
            self.remove_persist(pi);
        }
    }

    /// The path for packets that must not create state.
    fn stateless(&mut self, now: Instant, si: usize, key: &FlowKey, len: usize) -> Verdict {
        let from_conn = self.conns.find(key).and_then(|ci| {
            let (_, c) = self.conns.at(ci)?;
            (c.expires > now).then_some(c.dest)
        });
        let dest = match from_conn {
            Some(d) if self.dests[d as usize].up => Some(d),
            Some(_) => return self.drop(ForwardDrop::BackendDown),
            None => self.template_dest(now, si, key).or_else(|| {
                let s = &self.services[si];
                s.sched.pick_stateless(key).map(|i| s.eligible[i])
            }),
        };
        let Some(dest) = dest else {
            return self.drop(ForwardDrop::NoConnection);
        };
        let d = &mut self.dests[dest as usize];
        d.counters.packets += 1;
        d.counters.bytes += len as u64;
        d.verdict()
    }

    fn persist_key(&self, si: usize, key: &FlowKey) -> PersistKey {
        let s = &self.services[si];
        PersistKey {
            vip: s.vip,
            proto: s.proto,
            port: s.port,
            client: Ipv4Addr::from(u32::from(key.src) & s.mask),
        }
    }

    /// The backend of a live template for this client that can take new flows.
    fn template_dest(&self, now: Instant, si: usize, key: &FlowKey) -> Option<u32> {
        self.services[si].persistence?;
        let pi = self.persists.find(&self.persist_key(si, key))?;
        let (_, p) = self.persists.at(pi)?;
        let live = p.conns > 0 || p.expires > now;
        (live && self.dests[p.dest as usize].takes_new_flows()).then_some(p.dest)
    }

    /// Picks a backend for a new flow: persistence template, else scheduler.
    /// Returns the dest and the template index (or NO_PERSIST).
    fn schedule(&mut self, now: Instant, si: usize, key: &FlowKey) -> Option<(u32, u32)> {
        let Some(timeout) = self.services[si].persistence else {
            return self.pick(si, key).map(|d| (d, NO_PERSIST));
        };
        let pkey = self.persist_key(si, key);
        // Templates of unconfirmed flows are held back from sync under a
        // flood, like the flows themselves.
        let quiet = if key.proto == FlowKey::TCP {
            self.syn_guard.under_pressure()
        } else {
            self.udp_guard.under_pressure()
        };
        if let Some(pi) = self.persists.find(&pkey) {
            if let Some(d) = self.template_dest(now, si, key) {
                let (_, p) = self.persists.at_mut(pi)?;
                p.expires = p.expires.max(now + timeout);
                if (p.confirmed || !quiet) && needs_refresh(p.expires, p.synced_until, timeout) {
                    self.persist_log.mark(&mut p.mark, pi);
                }
                return Some((d, pi));
            }
            // Expired, or its backend takes no new flows: re-point in place
            // (connections may still refer to this template by index).
            let new = self.pick(si, key)?;
            let (_, p) = self.persists.at_mut(pi)?;
            let old = std::mem::replace(&mut p.dest, new);
            p.expires = now + timeout;
            p.timeout = timeout;
            if p.confirmed || !quiet {
                self.persist_log.mark(&mut p.mark, pi);
            } else {
                p.synced_until = now;
            }
            self.dests[new as usize].templates += 1;
            self.dests[old as usize].templates =
                self.dests[old as usize].templates.saturating_sub(1);
            self.maybe_free_dest(old);
            return Some((new, pi));
        }
        let dest = self.pick(si, key)?;
        let template = Persist {
            dest,
            expires: now + timeout,
            timeout,
            conns: 0,
            confirmed: false,
            mark: 0,
            synced_until: now + timeout,
        };
        match self.persists.insert(pkey, template) {
            Some(pi) => {
                if let Some((_, p)) = self.persists.at_mut(pi) {
                    if quiet {
                        p.synced_until = now;
                    } else {
                        self.persist_log.mark(&mut p.mark, pi);
                    }
                }
                self.dests[dest as usize].templates += 1;
                Some((dest, pi))
            }
            None => {
                self.drops.persist_table_full += 1;
                Some((dest, NO_PERSIST))
            }
        }
    }

    fn pick(&mut self, si: usize, key: &FlowKey) -> Option<u32> {
        let s = &mut self.services[si];
        let dests = &self.dests;
        let eligible = &s.eligible;
        let i = s.sched.pick(key, |i| {
            let c = &dests[eligible[i] as usize].counters;
            Load {
                active: c.active,
                inactive: c.inactive,
            }
        })?;
        Some(s.eligible[i])
    }

    fn service_index(&self, key: &FlowKey) -> Option<usize> {
        self.services
            .iter()
            .position(|s| s.vip == key.dst && s.proto == key.proto && s.port == key.dport)
    }

    fn drop(&mut self, reason: ForwardDrop) -> Verdict {
        self.drops.count(reason);
        Verdict::Drop(reason)
    }

    fn remove_conn(&mut self, ci: u32) {
        let Some((_, c)) = self.conns.remove_at(ci) else {
            return;
        };
        self.lru.unlink(ci);
        self.counts[c.kind.idx()] -= 1;
        count_state(&mut self.dests[c.dest as usize].counters, c.state, -1);
        self.release_template(c.persist);
        self.forget_unconfirmed_template(c.persist);
        self.maybe_free_dest(c.dest);
    }

    fn release_template(&mut self, pi: u32) {
        if let Some((_, p)) = self.persists.at_mut(pi) {
            p.conns = p.conns.saturating_sub(1);
        }
    }

    fn remove_persist(&mut self, pi: u32) {
        if let Some((_, p)) = self.persists.remove_at(pi) {
            self.dests[p.dest as usize].templates =
                self.dests[p.dest as usize].templates.saturating_sub(1);
            self.maybe_free_dest(p.dest);
        }
    }

    fn dest_for(&mut self, vip: Ipv4Addr, proto: u8, port: u16, addr: Ipv4Addr) -> u32 {
        if let Some(&id) = self.dest_index.get(&(vip, proto, port, addr)) {
            return id;
        }
        let d = Dest {
            vip,
            proto,
            port,
            addr,
            mac: [0; 6],
            weight: 0,
            up: false,
            local: false,
            in_snapshot: false,
            counters: BackendCounters::default(),
            templates: 0,
        };
        let id = match self.dest_free.pop() {
            Some(id) => {
                self.dests[id as usize] = d;
                id
            }
            None => {
                self.dests.push(d);
                (self.dests.len() - 1) as u32
            }
        };
        self.dest_index.insert((vip, proto, port, addr), id);
        id
    }

    /// Forgets a backend that left the snapshot once nothing refers to it.
    fn maybe_free_dest(&mut self, id: u32) {
        let d = &self.dests[id as usize];
        if d.in_snapshot || d.referenced() {
            return;
        }
        let key = (d.vip, d.proto, d.port, d.addr);
        // A freed record keeps its old key; only the live holder of the key
        // may release it.
        if self.dest_index.get(&key) == Some(&id) {
            self.dest_index.remove(&key);
            self.dest_free.push(id);
        }
    }

    /// Removes expired entries, visiting at most `budget` connection slots
    /// and `budget` persistence slots. Returns how many entries were removed.
    /// Calling it with budget ≥ `capacity / calls-per-timeout` keeps memory
    /// tight; lookups ignore expired entries regardless.
    ///
    /// Also the place where pressure on the evictable parts is judged
    /// (call it a few times a second): see [`Engine::poll_event`].
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        let mut removed = 0;
        let mut visited = 0;
        // The oldest evictable entries first: after a flood they are what
        // fills the table, and in recency order the expired ones come
        // first, so this frees them at once instead of a sweep later.
        for list in [LIST_EMBRYONIC, LIST_UDP_FRESH, LIST_UDP_ASSURED] {
            while visited < budget {
                let Some(ci) = self.lru.oldest(list) else {
                    break;
                };
                if !matches!(self.conns.at(ci), Some((_, c)) if c.expires <= now) {
                    break;
                }
                visited += 1;
                self.remove_conn(ci);
                removed += 1;
            }
        }
        self.judge_pressure(now);
        for _ in 0..(budget - visited).min(self.conns.slot_count()) {
            let Some(ci) = self.conns.sweep_next() else {
                break;
            };
            if matches!(self.conns.at(ci), Some((_, c)) if c.expires <= now) {
                self.remove_conn(ci);
                removed += 1;
            }
        }
        for _ in 0..budget.min(self.persists.slot_count()) {
            let Some(pi) = self.persists.sweep_next() else {
                break;
            };
            let Some((_, p)) = self.persists.at_mut(pi) else {
                continue;
            };
            if p.expires > now {
                continue;
            }
            if p.conns > 0 {
                // Templates outlive their connections by the timeout.
                p.expires = now + p.timeout;
                if needs_refresh(p.expires, p.synced_until, p.timeout) {
                    self.persist_log.mark(&mut p.mark, pi);
                }
                continue;
            }
            self.remove_persist(pi);
            removed += 1;
        }
        removed
    }

    fn judge_pressure(&mut self, now: Instant) {
        let emb = self.counts[Kind::Embryonic.idx()];
        let udp = self.counts[Kind::Udp.idx()];
        let events = [
            self.syn_guard
                .observe(now, emb, self.evicted[Kind::Embryonic.idx()]),
            self.udp_guard
                .observe(now, udp, self.evicted[Kind::Udp.idx()]),
        ];
        for ev in events.into_iter().flatten() {
            if self.events.len() >= EVENT_QUEUE {
                self.events.pop_front();
            }
            self.events.push_back(ev);
        }
    }

    /// The next flood event (pressure on a part of the table started or
    /// ended), oldest first; at most a few are kept.
    pub fn poll_event(&mut self) -> Option<FloodEvent> {
        self.events.pop_front()
    }

    /// Occupancy, limits and evictions per part of the connection table.
    pub fn table_stats(&self) -> TableStats {
        let part = |k: Kind, pressure: bool| PartStats {
            entries: self.counts[k.idx()],
            limit: self.limits.of(k),
            evicted: self.evicted[k.idx()],
            pressure,
        };
        TableStats {
            embryonic: part(Kind::Embryonic, self.syn_guard.under_pressure()),
            established: part(Kind::Established, false),
            udp: part(Kind::Udp, self.udp_guard.under_pressure()),
            promoted: self.promoted,
            promote_refused: self.promote_refused,
        }
    }

    /// Live connection entries (all parts).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.len() == 0
    }

    /// Live persistence templates.
    pub fn persist_len(&self) -> usize {
        self.persists.len()
    }

    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Counters per (VIP, backend address), summed over the VIP's services
    /// (what the status page shows). Backends that left the snapshot appear
    /// while they still have entries.
    pub fn counters(&self) -> Vec<((Ipv4Addr, Ipv4Addr), BackendCounters)> {
        let mut out: Vec<((Ipv4Addr, Ipv4Addr), BackendCounters)> = Vec::new();
        for c in self.service_counters() {
            match out.iter_mut().find(|(a, _)| *a == (c.vip, c.addr)) {
                Some((_, sum)) => {
                    sum.packets += c.counters.packets;
                    sum.bytes += c.counters.bytes;
                    sum.active += c.counters.active;
                    sum.inactive += c.counters.inactive;
                    sum.total += c.counters.total;
                }
                None => out.push(((c.vip, c.addr), c.counters)),
            }
        }
        out
    }

    /// Counters per (service, backend).
    pub fn service_counters(&self) -> Vec<ServiceBackendCounters> {
        self.dest_index
            .values()
            .map(|&id| {
                let d = &self.dests[id as usize];
                ServiceBackendCounters {
                    vip: d.vip,
                    proto: d.proto,
                    port: d.port,
                    addr: d.addr,
                    counters: d.counters,
                }
            })
            .collect()
    }

    /// Live connection entries, for a full sync to the peer.
    pub fn export(&self, now: Instant) -> Vec<ConnEntry> {
        self.conns
            .iter()
            .filter(|(_, (_, c))| c.expires > now)
            .map(|(_, (key, c))| ConnEntry {
                key: *key,
                backend: self.dests[c.dest as usize].addr,
                state: c.state,
                expires: c.expires,
            })
            .collect()
    }

    /// Starts fetching what [`Engine::lookup`] of `key` will read, for a
    /// caller that knows its next keys (the eBPF engine's walk): `near`
    /// false the table's index, `near` true (a few keys later, once that
    /// has arrived) the entry. A hint only: nothing changes.
    pub fn prefetch(&self, key: &FlowKey, near: bool) {
        if near {
            self.conns.prefetch_slot(key);
        } else {
            self.conns.prefetch_index(key);
        }
    }

    /// One entry by key, for incremental sync after a packet changed it.
    pub fn lookup(&self, now: Instant, key: &FlowKey) -> Option<ConnEntry> {
        let (k, c) = self.conns.at(self.conns.find(key)?)?;
        (c.expires > now).then(|| ConnEntry {
            key: *k,
            backend: self.dests[c.dest as usize].addr,
            state: c.state,
            expires: c.expires,
        })
    }

    /// Live persistence templates, for a full sync to the peer.
    pub fn export_persist(&self, now: Instant) -> Vec<PersistEntry> {
        self.persists
            .iter()
            .filter(|(_, (_, p))| p.conns > 0 || p.expires > now)
            .map(|(_, (k, p))| PersistEntry {
                vip: k.vip,
                proto: k.proto,
                port: k.port,
                client: k.client,
                backend: self.dests[p.dest as usize].addr,
                expires: p.expires.max(now),
            })
            .collect()
    }

    /// Installs (or overwrites) a connection learnt from the peer. Returns
    /// false when it is expired, its service or backend is unknown here or
    /// down, or the table is full.
    pub fn install(&mut self, now: Instant, e: ConnEntry) -> bool {
        if e.expires <= now {
            return false;
        }
        let Some(si) = self.service_index(&e.key) else {
            return false;
        };
        let s = &self.services[si];
        let Some(&dest) = self.dest_index.get(&(s.vip, s.proto, s.port, e.backend)) else {
            return false;
        };
        if !self.dests[dest as usize].up {
            return false;
        }
        let (state, kind) = match (e.key.proto, e.state) {
            (FlowKey::TCP, TcpState::SynRecv) => (TcpState::SynRecv, Kind::Embryonic),
            (FlowKey::TCP, s) => (s, Kind::Established),
            _ => (TcpState::Udp, Kind::Udp),
        };
        if let Some(ci) = self.conns.find(&e.key) {
            self.remove_conn(ci);
        }
        // The peer's confirmed flows are confirmed here too, and as here
        // they never displace one another; unconfirmed ones take the
        // place of the oldest.
        if kind == Kind::Established && self.counts[kind.idx()] >= self.limits.established {
            return false;
        }
        self.make_room(kind);
        let conn = Conn {
            dest,
            kind,
            state,
            expires: e.expires,
            persist: NO_PERSIST,
            mark: 0,
            synced_until: e.expires,
        };
        let Some(ci) = self.conns.insert(e.key, conn) else {
            return false;
        };
        self.counts[kind.idx()] += 1;
        match kind {
            Kind::Embryonic => self.lru.push(LIST_EMBRYONIC, ci),
            Kind::Udp => self.lru.push(LIST_UDP_FRESH, ci),
            Kind::Established => {}
        }
        count_state(&mut self.dests[dest as usize].counters, state, 1);
        true
    }

    /// Installs (or overwrites) a persistence template learnt from the peer.
    /// Same refusals as [`Engine::install`], plus a service without
    /// persistence.
    pub fn install_persist(&mut self, now: Instant, e: PersistEntry) -> bool {
        if e.expires <= now {
            return false;
        }
        let Some(si) = self
            .services
            .iter()
            .position(|s| s.vip == e.vip && s.proto == e.proto && s.port == e.port)
        else {
            return false;
        };
        let s = &self.services[si];
        let Some(timeout) = s.persistence else {
            return false;
        };
        let client = Ipv4Addr::from(u32::from(e.client) & s.mask);
        let Some(&dest) = self.dest_index.get(&(s.vip, s.proto, s.port, e.backend)) else {
            return false;
        };
        if !self.dests[dest as usize].up {
            return false;
        }
        let pkey = PersistKey {
            vip: e.vip,
            proto: e.proto,
            port: e.port,
            client,
        };
        if let Some(pi) = self.persists.find(&pkey) {
            let Some((_, p)) = self.persists.at_mut(pi) else {
                return false;
            };
            let old = std::mem::replace(&mut p.dest, dest);
            p.expires = e.expires;
            p.synced_until = e.expires;
            self.dests[dest as usize].templates += 1;
            self.dests[old as usize].templates =
                self.dests[old as usize].templates.saturating_sub(1);
            self.maybe_free_dest(old);
            return true;
        }
        let template = Persist {
            dest,
            expires: e.expires,
            timeout,
            conns: 0,
            confirmed: true,
            mark: 0,
            synced_until: e.expires,
        };
        if self.persists.insert(pkey, template).is_none() {
            return false;
        }
        self.dests[dest as usize].templates += 1;
        true
    }
}

impl Engine {
    /// Moves up to `max` entries (connections first, then templates) that
    /// were created or changed since the last call into `out` / `pout`, each
    /// once however often it changed. No allocation beyond growing the
    /// caller's vectors, which can be reused (cleared, not freed).
    ///
    /// After an overflow it writes nothing, empties the log and returns
    /// `overflowed: true` once: the caller then sends a full snapshot.
    pub fn take_changes(
        &mut self,
        out: &mut Vec<ConnEntry>,
        pout: &mut Vec<PersistEntry>,
        max: usize,
    ) -> TakeChanges {
        if self.conn_log.overflowed || self.persist_log.overflowed {
            self.conn_log.reset();
            self.persist_log.reset();
            return TakeChanges {
                overflowed: true,
                pending: 0,
            };
        }
        let mut n = 0;
        while n < max {
            let Some(ci) = self.conn_log.slots.pop_front() else {
                break;
            };
            // A slot freed since it was logged is empty or holds a newer
            // entry, which starts unmarked: a stale index is skipped here.
            let Some((key, c)) = self.conns.at_mut(ci) else {
                continue;
            };
            if c.mark != self.conn_log.epoch {
                continue;
            }
            c.mark = 0;
            c.synced_until = c.expires;
            out.push(ConnEntry {
                key: *key,
                backend: self.dests[c.dest as usize].addr,
                state: c.state,
                expires: c.expires,
            });
            n += 1;
        }
        while n < max {
            let Some(pi) = self.persist_log.slots.pop_front() else {
                break;
            };
            let Some((k, p)) = self.persists.at_mut(pi) else {
                continue;
            };
            if p.mark != self.persist_log.epoch {
                continue;
            }
            p.mark = 0;
            p.synced_until = p.expires;
            pout.push(PersistEntry {
                vip: k.vip,
                proto: k.proto,
                port: k.port,
                client: k.client,
                backend: self.dests[p.dest as usize].addr,
                expires: p.expires,
            });
            n += 1;
        }
        TakeChanges {
            overflowed: false,
            pending: self.conn_log.slots.len() + self.persist_log.slots.len(),
        }
    }
}

fn count_state(c: &mut BackendCounters, state: TcpState, delta: i64) {
    let n = if state.is_active() {
        &mut c.active
    } else {
        &mut c.inactive
    };
    *n = n.saturating_add_signed(delta);
}

#[cfg(test)]
mod tests;
