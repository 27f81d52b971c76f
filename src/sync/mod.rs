//! Connection sync, sans-IO: the director's [`Sender`] streams new and
//! changed connection and persistence entries to the standby's
//! [`Receiver`], which hands them to its own forwarding engine. Messages are
//! [`crate::wire::sync`] datagrams; the driver (in `sys/`) parses them with
//! the cluster key, calls `handle`, sends what `poll_transmit` returns and
//! sleeps until `poll_timeout`.
//!
//! # Streams
//! A *stream* is a full snapshot followed by incremental batches, numbered
//! from 1 within the stream. The director starts a new stream whenever the
//! standby lacks its table: first contact, a standby restart (new boot id in
//! its Hello), a standby that left our stream, or a change log overflow.
//! Stream ids are `boot_id << 20 | n` for the n-th stream of this Sender, so
//! they grow within a process; the bits above the low 20 tell the boots of
//! a director apart, which need not be ordered (boot ids differ between
//! boots but need not grow, see `crate::election`). Keep one Sender per
//! process (the driver may leave it idle while standby).
//!
//! # Reliability
//! - Acks are cumulative. The receiver buffers up to [`RX_WINDOW`] batches
//!   ahead of the next one it needs and drops anything further ahead (the
//!   sender never has more than [`WINDOW`] unacked, so that only happens to
//!   stale or misbehaving traffic).
//! - The sender retransmits a batch whose ack has not come within the
//!   retransmission timeout (2 × smoothed RTT, 20 ms to 2 s; Karn's rule, and
//!   doubling while the oldest batch keeps timing out). Lifetimes are
//!   recomputed for every transmission, so a retransmitted entry does not
//!   live longer on the standby than on the director.
//! - Sending is paced: bursts of [`PACE_BURST`] datagrams, then one per
//!   [`PACE_INTERVAL`].
//! - A batch with a sequence at or below what the receiver applied is a
//!   duplicate or a replay: re-acked, not applied. A batch of another stream
//!   is adopted only if it starts a stream (sequence 1, snapshot part) and
//!   has a larger id than the current one, so replayed batches of an old
//!   stream are dropped. Boot ids need not grow, though: once the driver
//!   passes on the director's boot as the heartbeat challenge verified it
//!   ([`Receiver::set_director_boot`]), only streams of that boot are
//!   adopted, whatever their id, and only larger ids within it. The
//!   director likewise listens only to Hellos of the standby's verified boot
//!   ([`Sender::set_standby_boot`]). Forged batches never parse
//!   ([`crate::wire::sync`]).
//! - The sender forgets a standby it has not heard from for
//!   [`PEER_TIMEOUT`] (the standby sends a Hello every [`HELLO_INTERVAL`]):
//!   it stops buffering and sends a snapshot when the standby is back.
//!
//! # Driver loop (director)
//! ```text
//! r = engine.take_changes(&mut conns, &mut persists, N)
//! if r.overflowed || sender.wants_snapshot() {
//!     sender.start_snapshot(now, engine.export(now), engine.export_persist(now))
//! } else { sender.queue(now, &conns, &persists) }
//! while let Some(m) = sender.poll_transmit(now) { send(m.emit(key)) }
//! ```
//! On the standby: `receiver.handle(now, &msg, &mut installs)`, then
//! `engine.install` / `engine.install_persist` for each entry.
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::forward::{ConnEntry, PersistEntry, TcpState};
use crate::wire::frame::FlowKey;
use crate::wire::sync::{Ack, Batch, ConnRecord, Hello, PersistRecord, SyncMessage, MAX_DATAGRAM};

/// Most batches the sender has unacknowledged.
pub const WINDOW: usize = 64;
/// Most batches the receiver buffers ahead of the one it needs.
pub const RX_WINDOW: u64 = WINDOW as u64;
/// Standby → director Hello period.
pub const HELLO_INTERVAL: Duration = Duration::from_secs(1);
/// Hello period of a standby that has no complete snapshot yet: a new
/// director learns of it within this, not within [`HELLO_INTERVAL`].
pub const HELLO_INTERVAL_UNSYNCED: Duration = Duration::from_millis(100);
/// Silence after which the sender forgets the standby.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams sent back to back before pacing applies.
pub const PACE_BURST: u32 = 16;
/// Spacing of paced datagrams (10,000/s, about 14 MB/s of batches).
pub const PACE_INTERVAL: Duration = Duration::from_micros(100);
/// Unsent incremental entries kept before giving up and resending a
/// snapshot instead (bounds memory while the standby is slow).
pub const MAX_PENDING: usize = 1 << 18;
const RTO_INITIAL: Duration = Duration::from_millis(200);
const RTO_MIN: Duration = Duration::from_millis(20);
const RTO_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Record {
    Conn(ConnEntry),
    Persist(PersistEntry),
}

/// A batch sent and not yet acknowledged.
struct InFlight {
    seq: u64,
    snapshot: bool,
    last: bool,
    conns: Vec<ConnEntry>,
    persists: Vec<PersistEntry>,
    /// When its oldest entry was queued (for [`Sender::lag`]).
    queued_at: Instant,
    sent_at: Instant,
    retransmitted: bool,
}

impl InFlight {
    fn entries(&self) -> usize {
        self.conns.len() + self.persists.len()
    }

    fn message(&self, stream_id: u64, now: Instant) -> SyncMessage {
        let remaining = |expires: Instant| {
            expires
                .saturating_duration_since(now)
                .as_millis()
                .min(u32::MAX as u128) as u32
        };
        SyncMessage::Batch(Batch {
            stream_id,
            seq: self.seq,
            full_snapshot_part: self.snapshot,
            last_part: self.last,
            conns: self
                .conns
                .iter()
                .map(|c| ConnRecord {
                    proto: c.key.proto,
                    src: c.key.src,
                    sport: c.key.sport,
                    dst: c.key.dst,
                    dport: c.key.dport,
                    backend: c.backend,
                    state: c.state,
                    remaining_ms: remaining(c.expires),
                })
                .collect(),
            persists: self
                .persists
                .iter()
                .map(|p| PersistRecord {
                    proto: p.proto,
                    vip: p.vip,
                    port: p.port,
                    client: p.client,
                    backend: p.backend,
                    remaining_ms: remaining(p.expires),
                })
                .collect(),
        })
    }
}

struct Stream {
    id: u64,
    next_seq: u64,
    acked: u64,
    /// Snapshot entries not yet put in a batch, and when the snapshot began.
    snapshot: VecDeque<Record>,
    snapshot_open: bool,
    snapshot_at: Instant,
    /// Incremental entries not yet put in a batch.
    pending: VecDeque<(Instant, Record)>,
    in_flight: VecDeque<InFlight>,
}

impl Stream {
    fn has_new_data(&self) -> bool {
        self.snapshot_open || !self.pending.is_empty()
    }

    /// Fills the next batch, snapshot entries first, within one datagram.
    fn next_batch(&mut self, now: Instant) -> InFlight {
        let mut b = InFlight {
            seq: self.next_seq,
            snapshot: self.snapshot_open,
            last: false,
            conns: Vec::new(),
            persists: Vec::new(),
            queued_at: now,
            sent_at: now,
            retransmitted: false,
        };
        self.next_seq += 1;
        let fits = |b: &InFlight, r: &Record| match r {
            Record::Conn(_) => Batch::fits(b.conns.len() + 1, b.persists.len()),
            Record::Persist(_) => Batch::fits(b.conns.len(), b.persists.len() + 1),
        };
        let push = |b: &mut InFlight, r: Record| match r {
            Record::Conn(c) => b.conns.push(c),
            Record::Persist(p) => b.persists.push(p),
        };
        if self.snapshot_open {
            b.queued_at = self.snapshot_at;
            while let Some(r) = self.snapshot.front() {
                if !fits(&b, r) {
                    break;
                }
                let r = *r;
                self.snapshot.pop_front();
                push(&mut b, r);
            }
            if self.snapshot.is_empty() {
                b.last = true;
                self.snapshot_open = false;
            }
            return b;
        }
        if let Some((t, _)) = self.pending.front() {
            b.queued_at = *t;
        }
        while let Some((_, r)) = self.pending.front() {
            if !fits(&b, r) {
                break;
            }
            let r = *r;
            self.pending.pop_front();
            push(&mut b, r);
        }
        b
    }
}

/// Sender-side counters, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub streams: u64,
    pub batches_sent: u64,
    pub retransmits: u64,
    pub entries_acked: u64,
    /// Incremental entries dropped because no standby was there or the
    /// backlog exceeded [`MAX_PENDING`] (a snapshot replaces them).
    pub entries_dropped: u64,
    /// Hellos and acks that were stale, for another stream, or acked
    /// batches never sent.
    pub ignored: u64,
    pub peer_lost: u64,
}

/// The director side of connection sync. See the module docs.
pub struct Sender {
    boot_id: u64,
    streams_started: u64,
    stream: Option<Stream>,
    peer_boot: Option<u64>,
    /// The standby's boot as the heartbeat layer verified it.
    standby_boot: Option<u64>,
    last_heard: Option<Instant>,
    want_snapshot: bool,
    srtt: Option<Duration>,
    rto: Duration,
    /// Pacing: theoretical time of the next send (GCRA).
    pace_tat: Instant,
    stats: SenderStats,
}

impl Sender {
    pub fn new(boot_id: u64, now: Instant) -> Self {
        Sender {
            boot_id,
            streams_started: 0,
            stream: None,
            peer_boot: None,
            standby_boot: None,
            last_heard: None,
            want_snapshot: false,
            srtt: None,
            rto: RTO_INITIAL,
            pace_tat: now,
            stats: SenderStats::default(),
        }
    }

    /// Queues incremental changes ([`crate::forward::Engine::take_changes`]).
    /// Dropped (and counted) while there is no stream: the next snapshot
    /// carries them.
    pub fn queue(&mut self, now: Instant, conns: &[ConnEntry], persists: &[PersistEntry]) {
        let n = conns.len() + persists.len();
        let Some(s) = self.stream.as_mut() else {
            self.stats.entries_dropped += n as u64;
            return;
        };
        if s.pending.len() + n > MAX_PENDING {
            log::warn!(
                "sync: backlog of {} entries exceeds {MAX_PENDING}; resending a snapshot",
                s.pending.len() + n
            );
            self.stats.entries_dropped += (s.pending.len() + n) as u64;
            s.pending.clear();
            self.want_snapshot = true;
            return;
        }
        s.pending
            .extend(conns.iter().map(|c| (now, Record::Conn(*c))));
        s.pending
            .extend(persists.iter().map(|p| (now, Record::Persist(*p))));
    }

    /// Starts a new stream with the whole table. Ignored while no standby is
    /// heard from: it will ask when it comes.
    pub fn start_snapshot(
        &mut self,
        now: Instant,
        conns: Vec<ConnEntry>,
        persists: Vec<PersistEntry>,
    ) {
        if !self.peer_present(now) {
            log::debug!("sync: no standby, snapshot not started");
            self.want_snapshot = false;
            return;
        }
        self.streams_started += 1;
        self.stats.streams += 1;
        let id = (self.boot_id.wrapping_shl(20) | (self.streams_started & 0xf_ffff)).max(1);
        let mut snapshot = VecDeque::with_capacity(conns.len() + persists.len());
        snapshot.extend(conns.into_iter().map(Record::Conn));
        snapshot.extend(persists.into_iter().map(Record::Persist));
        log::info!(
            "sync: stream {id:#x}: snapshot of {} entries",
            snapshot.len()
        );
        self.stream = Some(Stream {
            id,
            next_seq: 1,
            acked: 0,
            snapshot,
            snapshot_open: true,
            snapshot_at: now,
            pending: VecDeque::new(),
            in_flight: VecDeque::new(),
        });
        self.want_snapshot = false;
    }

    /// A Hello or Ack from the standby. Batches (a misdirected peer) are
    /// ignored.
    pub fn handle(&mut self, now: Instant, msg: &SyncMessage) {
        match msg {
            SyncMessage::Hello(h) => self.handle_hello(now, h),
            SyncMessage::Ack(a) => {
                match self.stream.as_ref() {
                    Some(s) if s.id == a.stream_id => {}
                    _ => {
                        log::debug!("sync: ack for stream {:#x} ignored", a.stream_id);
                        self.stats.ignored += 1;
                        return;
                    }
                }
                self.last_heard = Some(now);
                self.handle_ack(now, a.seq);
            }
            SyncMessage::Batch(b) => {
                log::debug!(
                    "sync: batch {:#x}/{} sent to a director ignored",
                    b.stream_id,
                    b.seq
                );
                self.stats.ignored += 1;
            }
        }
    }

    /// The standby's boot id as the heartbeat challenge verified it: Hellos
    /// of any other boot (replays of an earlier one) are ignored from now on.
    pub fn set_standby_boot(&mut self, boot_id: u64) {
        self.standby_boot = Some(boot_id);
    }

    fn handle_hello(&mut self, now: Instant, h: &Hello) {
        if self.standby_boot.is_some_and(|b| b != h.boot_id) {
            log::debug!(
                "sync: hello from unverified standby boot {} ignored",
                h.boot_id
            );
            self.stats.ignored += 1;
            return;
        }
        // Another boot is a restart, whether its id is larger or not.
        let new_boot = self.peer_boot != Some(h.boot_id);
        if new_boot {
            log::info!("sync: standby boot {} is here", h.boot_id);
        }
        self.peer_boot = Some(h.boot_id);
        self.last_heard = Some(now);
        let Some(s) = self.stream.as_ref() else {
            self.want_snapshot = true;
            return;
        };
        if s.id == h.stream_id {
            self.handle_ack(now, h.applied_seq);
        } else if new_boot || s.acked > 0 {
            // It restarted, or it left a stream it had acknowledged.
            log::info!(
                "sync: standby follows stream {:#x}, not {:#x}: snapshot",
                h.stream_id,
                s.id
            );
            self.want_snapshot = true;
        }
        // Otherwise our stream's first batch is still on its way.
    }

    fn handle_ack(&mut self, now: Instant, seq: u64) {
        let Some(s) = self.stream.as_mut() else {
            return;
        };
        if seq <= s.acked {
            return;
        }
        if seq >= s.next_seq {
            log::debug!("sync: ack {seq} of a batch never sent ignored");
            self.stats.ignored += 1;
            return;
        }
        let mut sample = None;
        while s.in_flight.front().is_some_and(|b| b.seq <= seq) {
            let Some(b) = s.in_flight.pop_front() else {
                break;
            };
            self.stats.entries_acked += b.entries() as u64;
            if !b.retransmitted {
                sample = Some(now.saturating_duration_since(b.sent_at));
            }
        }
        s.acked = seq;
        if let Some(rtt) = sample {
            let srtt = match self.srtt {
                Some(old) => (old * 7 + rtt) / 8,
                None => rtt,
            };
            self.srtt = Some(srtt);
            self.rto = (srtt * 2).clamp(RTO_MIN, RTO_MAX);
        } else if let Some(srtt) = self.srtt {
            // Progress ends the backoff even without a clean sample.
            self.rto = (srtt * 2).clamp(RTO_MIN, RTO_MAX);
        }
    }

    /// The standby needs the whole table: the driver exports the engine and
    /// calls [`Sender::start_snapshot`].
    pub fn wants_snapshot(&self) -> bool {
        self.want_snapshot
    }

    fn peer_present(&self, now: Instant) -> bool {
        self.last_heard
            .is_some_and(|t| now.saturating_duration_since(t) < PEER_TIMEOUT)
    }

    fn check_peer(&mut self, now: Instant) {
        if self.stream.is_some() && !self.peer_present(now) {
            log::info!(
                "sync: standby silent for {PEER_TIMEOUT:?}; stream dropped until it is back"
            );
            self.stats.peer_lost += 1;
            self.stream = None;
            self.want_snapshot = false;
        }
    }

    fn pace_allows(&self, now: Instant) -> bool {
        self.pace_tat <= now + PACE_INTERVAL * PACE_BURST
    }

    fn paced(&mut self, now: Instant) {
        self.pace_tat = self.pace_tat.max(now) + PACE_INTERVAL;
        self.stats.batches_sent += 1;
    }

    /// The next batch to send: a retransmission if one is due, else a new
    /// batch if the window and pacing allow.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<SyncMessage> {
        self.check_peer(now);
        if !self.pace_allows(now) {
            return None;
        }
        let rto = self.rto;
        let s = self.stream.as_mut()?;
        let id = s.id;
        if let Some(i) = s.in_flight.iter().position(|b| b.sent_at + rto <= now) {
            if i == 0 {
                self.rto = (self.rto * 2).min(RTO_MAX);
            }
            let b = &mut s.in_flight[i];
            b.sent_at = now;
            b.retransmitted = true;
            let m = b.message(id, now);
            self.stats.retransmits += 1;
            self.paced(now);
            return Some(m);
        }
        if s.in_flight.len() >= WINDOW || !s.has_new_data() {
            return None;
        }
        let b = s.next_batch(now);
        let m = b.message(id, now);
        s.in_flight.push_back(b);
        self.paced(now);
        Some(m)
    }

    /// When [`Sender::poll_transmit`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let s = self.stream.as_ref()?;
        let mut t = self.last_heard.map(|h| h + PEER_TIMEOUT);
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        let pace_at = self
            .pace_tat
            .checked_sub(PACE_INTERVAL * PACE_BURST)
            .unwrap_or(self.pace_tat);
        if let Some(oldest) = s.in_flight.iter().map(|b| b.sent_at).min() {
            at((oldest + self.rto).max(pace_at));
        }
        if s.has_new_data() && s.in_flight.len() < WINDOW {
            at(pace_at);
        }
        t
    }

    /// Everything queued so far is acknowledged by a standby that is
    /// following our stream: a planned switchover may proceed.
    pub fn caught_up(&self) -> bool {
        !self.want_snapshot
            && self
                .stream
                .as_ref()
                .is_some_and(|s| !s.snapshot_open && s.pending.is_empty() && s.in_flight.is_empty())
    }

    /// Entries queued or sent but not acknowledged, and how long the oldest
    /// of them has waited. `(0, None)` without a standby.
    pub fn lag(&self, now: Instant) -> (u64, Option<Duration>) {
        let Some(s) = self.stream.as_ref() else {
            return (0, None);
        };
        let n = s.in_flight.iter().map(|b| b.entries()).sum::<usize>()
            + s.snapshot.len()
            + s.pending.len();
        let oldest = s
            .in_flight
            .front()
            .map(|b| b.queued_at)
            .or(s.snapshot_open.then_some(s.snapshot_at))
            .or(s.pending.front().map(|p| p.0));
        (n as u64, oldest.map(|t| now.saturating_duration_since(t)))
    }

    /// The current stream id (0 = none) and the last sequence sent in it.
    pub fn position(&self) -> (u64, u64) {
        self.stream
            .as_ref()
            .map_or((0, 0), |s| (s.id, s.next_seq - 1))
    }

    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }
}

/// Entries the standby should install, converted to its clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Installs {
    pub conns: Vec<ConnEntry>,
    pub persists: Vec<PersistEntry>,
}

/// Receiver-side counters, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub batches_applied: u64,
    /// Batches at or below the applied sequence (retransmissions, replays).
    pub duplicates: u64,
    /// Batches too far ahead of the applied sequence.
    pub out_of_window: u64,
    /// Batches that arrived after a gap and waited in the buffer.
    pub buffered_ahead: u64,
    /// Batches of a stream that is not ours and does not start a newer one.
    pub foreign_stream: u64,
    /// Entries that arrived with no lifetime left.
    pub expired: u64,
    /// Hellos and acks sent to the standby (a misdirected peer).
    pub ignored: u64,
}

struct Buffered {
    snapshot: bool,
    last: bool,
    installs: Installs,
}

/// The standby side of connection sync. See the module docs.
pub struct Receiver {
    boot_id: u64,
    /// `stream_boot` of the director's verified boot, once known.
    director_boot: Option<u64>,
    stream: Option<u64>,
    applied: u64,
    snapshot_complete: bool,
    buffer: BTreeMap<u64, Buffered>,
    ack_at: Option<Instant>,
    next_hello: Instant,
    synced: u64,
    stats: ReceiverStats,
}

impl Receiver {
    /// `boot_id` must grow across restarts: a new one tells the director
    /// this node's table is empty.
    pub fn new(boot_id: u64, now: Instant) -> Self {
        Receiver {
            boot_id,
            director_boot: None,
            stream: None,
            applied: 0,
            snapshot_complete: false,
            buffer: BTreeMap::new(),
            ack_at: None,
            next_hello: now,
            synced: 0,
            stats: ReceiverStats::default(),
        }
    }

    /// A message from the director: entries to install are appended to
    /// `out`, in stream order.
    pub fn handle(&mut self, now: Instant, msg: &SyncMessage, out: &mut Installs) {
        let b = match msg {
            SyncMessage::Batch(b) => b,
            SyncMessage::Hello(_) | SyncMessage::Ack(_) => {
                log::debug!("sync: hello/ack sent to a standby ignored");
                self.stats.ignored += 1;
                return;
            }
        };
        if self.stream != Some(b.stream_id) {
            let starts = b.seq == 1 && b.full_snapshot_part;
            let adopt = match self.director_boot {
                Some(d) => {
                    stream_boot(b.stream_id) == d
                        && self
                            .stream
                            .is_none_or(|cur| stream_boot(cur) != d || b.stream_id >= cur)
                }
                None => self.stream.is_none_or(|cur| b.stream_id >= cur),
            };
            if !starts || !adopt {
                log::debug!(
                    "sync: batch {:#x}/{} of another stream dropped",
                    b.stream_id,
                    b.seq
                );
                self.stats.foreign_stream += 1;
                return;
            }
            log::info!(
                "sync: following stream {:#x} (was {:#x})",
                b.stream_id,
                self.stream.unwrap_or(0)
            );
            self.stream = Some(b.stream_id);
            self.applied = 0;
            self.snapshot_complete = false;
            self.buffer.clear();
        }
        self.ack_at.get_or_insert(now);
        if b.seq <= self.applied {
            self.stats.duplicates += 1;
            return;
        }
        if b.seq > self.applied + RX_WINDOW {
            self.stats.out_of_window += 1;
            return;
        }
        if !self.buffer.contains_key(&b.seq) {
            if b.seq > self.applied + 1 {
                self.stats.buffered_ahead += 1;
            }
            let installs = self.convert(now, b);
            self.buffer.insert(
                b.seq,
                Buffered {
                    snapshot: b.full_snapshot_part,
                    last: b.last_part,
                    installs,
                },
            );
        } else {
            self.stats.duplicates += 1;
        }
        while let Some(mut next) = self.buffer.remove(&(self.applied + 1)) {
            self.applied += 1;
            self.stats.batches_applied += 1;
            self.synced += (next.installs.conns.len() + next.installs.persists.len()) as u64;
            out.conns.append(&mut next.installs.conns);
            out.persists.append(&mut next.installs.persists);
            if next.snapshot && next.last {
                log::info!("sync: snapshot of stream {:#x} complete", b.stream_id);
                self.snapshot_complete = true;
            }
        }
    }

    /// Lifetimes start now: converted on arrival, not when applied, so
    /// buffering does not extend them.
    fn convert(&mut self, now: Instant, b: &Batch) -> Installs {
        let mut out = Installs::default();
        for c in &b.conns {
            if c.remaining_ms == 0 {
                self.stats.expired += 1;
                continue;
            }
            out.conns.push(ConnEntry {
                key: FlowKey {
                    proto: c.proto,
                    src: c.src,
                    sport: c.sport,
                    dst: c.dst,
                    dport: c.dport,
                },
                backend: c.backend,
                state: if c.proto == FlowKey::UDP {
                    TcpState::Udp
                } else {
                    c.state
                },
                expires: now + Duration::from_millis(c.remaining_ms.into()),
            });
        }
        for p in &b.persists {
            if p.remaining_ms == 0 {
                self.stats.expired += 1;
                continue;
            }
            out.persists.push(PersistEntry {
                vip: p.vip,
                proto: p.proto,
                port: p.port,
                client: p.client,
                backend: p.backend,
                expires: now + Duration::from_millis(p.remaining_ms.into()),
            });
        }
        out
    }

    /// An ack when batches arrived, else a Hello when one is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<SyncMessage> {
        if let (Some(_), Some(stream_id)) = (self.ack_at, self.stream) {
            self.ack_at = None;
            return Some(SyncMessage::Ack(Ack {
                stream_id,
                seq: self.applied,
            }));
        }
        if now >= self.next_hello {
            self.next_hello = now
                + if self.snapshot_complete {
                    HELLO_INTERVAL
                } else {
                    HELLO_INTERVAL_UNSYNCED
                };
            return Some(SyncMessage::Hello(Hello {
                boot_id: self.boot_id,
                stream_id: self.stream.unwrap_or(0),
                applied_seq: self.applied,
            }));
        }
        None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(
            self.ack_at
                .map_or(self.next_hello, |a| a.min(self.next_hello)),
        )
    }

    /// The director's boot id as the heartbeat challenge verified it: from
    /// now on only its streams are followed, even if their ids are lower
    /// than the current one (its boot counter went back).
    pub fn set_director_boot(&mut self, boot_id: u64) {
        self.director_boot = Some(stream_boot(boot_id.wrapping_shl(20)));
    }

    /// Entries handed out for installation since start.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// The current stream's snapshot has been applied completely.
    pub fn has_snapshot(&self) -> bool {
        self.snapshot_complete
    }

    /// The stream followed (0 = none) and the last batch applied in it.
    pub fn position(&self) -> (u64, u64) {
        (self.stream.unwrap_or(0), self.applied)
    }

    pub fn stats(&self) -> &ReceiverStats {
        &self.stats
    }
}

/// The part of a stream id that names the director's boot (the boot id's
/// low 44 bits).
fn stream_boot(stream_id: u64) -> u64 {
    stream_id >> 20
}

/// The sync position a node puts in its heartbeats (`Election::set_sync_pos`):
/// the low 32 bits of the stream id above the batch sequence (the last one
/// sent on a director, the last one applied on a standby); 0 = no stream.
pub fn position(stream_id: u64, seq: u64) -> u64 {
    if stream_id == 0 {
        return 0;
    }
    (stream_id & 0xffff_ffff) << 32 | (seq & 0xffff_ffff)
}

/// Whether the standby's reported position `applied` covers everything the
/// director's `sent` position says it sent: same stream, sequence at least
/// as far. A planned switchover can wait for this on the peer's heartbeat.
pub fn position_covers(applied: u64, sent: u64) -> bool {
    sent == 0 || (applied >> 32 == sent >> 32 && applied as u32 >= sent as u32)
}

/// Largest datagram either side emits, for the driver's receive buffer.
pub const MAX_MESSAGE: usize = MAX_DATAGRAM;

#[cfg(test)]
mod tests;
