//! Heartbeat election: which node of the pair is the director.
//!
//! A sans-IO state machine in the style of quinn-proto: the driver feeds it
//! authenticated heartbeats ([`Election::handle_heartbeat`]), wake-ups
//! ([`Election::handle_timeout`]) and local facts (ping, service, health
//! summary, sync position), always with an explicit `now`, and drains
//! [`Election::poll_transmit`], [`Election::poll_event`] and
//! [`Election::poll_timeout`]. It never reads the clock or touches a socket.
//!
//! # Rules (VRRP-like, DESIGN.md section 3)
//!
//! A node's rank is `(effective priority, address)`, compared as a tuple:
//! highest effective priority wins, ties go to the higher address. Effective
//! priority is the configured priority, halved (at least 1) while the local
//! service is down, and 0 ("ineligible") while configured ping targets are
//! unreachable or while leaving. An ineligible node never becomes director.
//!
//! * **Starting** (the first `dead_after` after [`Election::new`]): hearing a
//!   live director makes us standby. Hearing any other live peer decides at
//!   once by rank. Hearing nobody for `dead_after` makes us director.
//! * **Standby** becomes director when no live director exists and either a
//!   peer just handed over to us (its heartbeats went from director to
//!   standby/leaving: planned failover, ping or service loss, leave), or we
//!   outrank every live eligible peer (this covers a dead or leaving
//!   director). With `preempt`, a standby that outranks a live director and
//!   whose own service is up takes over; the old director then sees a better
//!   director and yields, exactly like a split brain.
//! * **Director** keeps the role against better nodes unless `preempt` (no
//!   auto-failback). It steps down when it sees a live director that
//!   outranks it (split brain; the winner emits [`Event::Announce`]), when it
//!   is ineligible and a live eligible standby exists, and when its service
//!   is down and a fully healthy standby exists (one whose effective priority
//!   equals its configured priority), regardless of `preempt`.
//!
//! Split brain is decided by rank alone, not by term: both sides then
//! compute the same answer from the same two heartbeats, and the healthier
//! node keeps the address. Terms still order directorships: a node becoming
//! director takes `max(every term seen) + 1`, and the winner of a split
//! brain bumps its term again so its claim is the newest.
//!
//! A node that hands over voluntarily (failover, ping or service loss) holds
//! off re-election by rank for `dead_after`, so it does not snatch the role
//! back in the latency gap before the peer has taken over. With
//! `preempt = true` an admin failover away from the better node is undone as
//! soon as that hold ends, as with keepalived.
//!
//! # Replay protection without a clock
//!
//! Within one boot of a peer, heartbeats are accepted only with a sequence
//! number above the last accepted one. A boot id we have not verified (the
//! peer restarted, or we did, or someone replays an older boot's traffic)
//! is never accepted on its own, whatever its value: we answer its first
//! heartbeat with a fresh challenge nonce in ours (sent at once), and accept
//! that boot only from a heartbeat that echoes the nonce — which the peer can
//! only have written after our challenge left, so it is not a recording. The
//! sequence window then restarts at that heartbeat. Nonces come from a seed
//! the driver draws at random per process, so no two boots of ours share
//! one. Boot ids therefore need only differ between boots; they need not
//! grow, and a node whose clock or boot counter went back rejoins after one
//! round trip.
pub mod leave;
#[cfg(test)]
mod sim_tests;

use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::wire::envelope::KeySlot;
use crate::wire::heartbeat::{HeartbeatRepr, WireRole};

/// Default heartbeat interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(100);
/// Default silence after which a peer is considered dead.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(1);

/// Heartbeats sent per `dead_after`, at least: `interval` is an upper
/// bound. With the tight timings of a 150 ms failover (20 ms / 100 ms)
/// only five heartbeats would fit, and at 20 % loss five in a row go
/// missing every few seconds (0.2^5); ten make that once in hours.
const MIN_HEARTBEATS_PER_DEAD_AFTER: u32 = 10;

/// How often heartbeats actually go out for the configured timing.
pub fn send_period(interval: Duration, dead_after: Duration) -> Duration {
    interval.min(dead_after / MIN_HEARTBEATS_PER_DEAD_AFTER)
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Just started; listening for a director for up to `dead_after`.
    Starting,
    Standby,
    /// Owns the virtual address.
    Director,
    /// Shutting down; priority 0, never director again.
    Leaving,
}

impl Role {
    fn to_wire(self) -> WireRole {
        match self {
            Role::Starting => WireRole::Starting,
            Role::Standby => WireRole::Standby,
            Role::Director => WireRole::Director,
            Role::Leaving => WireRole::Leaving,
        }
    }

    fn from_wire(r: WireRole) -> Self {
        match r {
            WireRole::Starting => Role::Starting,
            WireRole::Standby => Role::Standby,
            WireRole::Director => Role::Director,
            WireRole::Leaving => Role::Leaving,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Starting => "starting",
            Role::Standby => "standby",
            Role::Director => "director",
            Role::Leaving => "leaving",
        })
    }
}

/// Static configuration of one node's election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// This node's configured address; also its node id on the wire.
    pub me: Ipv4Addr,
    /// Every other node's configured address.
    pub peers: Vec<Ipv4Addr>,
    pub cluster_id: u32,
    /// Differs between boots of this node (see "Replay protection" above).
    pub boot_id: u64,
    /// Seeds our challenge nonces: random per process, so that a peer's
    /// answer to an earlier boot's challenge never passes for a fresh one.
    pub nonce_seed: u64,
    pub priority: u8,
    pub interval: Duration,
    pub dead_after: Duration,
    pub preempt: bool,
    pub ping_configured: bool,
}

/// Why a role changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Starting: nobody was heard for `dead_after`.
    NoDirectorHeard,
    /// Starting: a live director exists.
    DirectorHeard,
    /// No live director, and we outrank every live eligible peer.
    WonElection,
    /// Starting: a live peer outranks us.
    LostElection,
    /// The peers went silent for `dead_after`.
    PeerDead,
    /// The director announced it is leaving.
    PeerLeaving,
    /// The director handed over to us (planned failover, ping or service loss).
    PeerHandoff,
    /// Split brain: another live director outranks us.
    HigherPriorityDirector,
    /// `preempt = true` and we outrank the live director.
    Preempt,
    /// [`Election::leave`] was called.
    Leaving,
    /// Configured ping targets are unreachable: we are ineligible.
    PingLost,
    /// Configured priority 0: we are ineligible.
    Ineligible,
    /// The local service is down and a healthy peer can take over.
    ServiceDown,
    /// [`Election::failover`] was called.
    AdminFailover,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::NoDirectorHeard => "no director heard",
            Reason::DirectorHeard => "director heard",
            Reason::WonElection => "won election",
            Reason::LostElection => "lost election",
            Reason::PeerDead => "peer dead",
            Reason::PeerLeaving => "peer leaving",
            Reason::PeerHandoff => "peer handed over",
            Reason::HigherPriorityDirector => "higher-priority director seen",
            Reason::Preempt => "preempting lower-priority director",
            Reason::Leaving => "leaving",
            Reason::PingLost => "ping lost",
            Reason::Ineligible => "ineligible (priority 0)",
            Reason::ServiceDown => "local service down",
            Reason::AdminFailover => "admin failover",
        })
    }
}

/// Something the driver must act on or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    RoleChanged {
        from: Role,
        to: Role,
        term: u64,
        reason: Reason,
    },
    PeerUp {
        peer: Ipv4Addr,
    },
    PeerLost {
        peer: Ipv4Addr,
    },
    /// We stay director but another node claimed the address meanwhile:
    /// send gratuitous ARPs again so switches and neighbours point back here.
    Announce,
}

/// Why an authenticated heartbeat was not accepted. Each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Another cluster on the same network (or a misconfigured node).
    WrongCluster,
    /// Same boot and a sequence number not above the last accepted one.
    Replay,
    /// From a boot of the peer we have not verified by challenge: a delayed
    /// or replayed message from an earlier boot, or a restart whose answer
    /// to our challenge has not arrived yet.
    Stale,
    /// The node address is not one of our configured peers.
    UnknownPeer,
    /// Our own heartbeat came back to us.
    SelfEcho,
}

impl fmt::Display for Drop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Drop::WrongCluster => "wrong cluster id",
            Drop::Replay => "replayed sequence number",
            Drop::Stale => "unverified boot id (challenge sent)",
            Drop::UnknownPeer => "unknown peer",
            Drop::SelfEcho => "own heartbeat",
        })
    }
}

/// Message and transition counters, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Heartbeats handed to the driver by `poll_transmit`.
    pub sent: u64,
    /// Heartbeats accepted.
    pub received: u64,
    /// Datagrams that failed authentication or decoding (`note_auth_failure`).
    pub dropped_auth: u64,
    pub dropped_wrong_cluster: u64,
    pub dropped_replay: u64,
    /// Heartbeats of a boot not (yet) verified ([`Drop::Stale`]): one or
    /// two per peer restart while the challenge crosses, which is why they
    /// are not counted with the drops; a count that keeps growing while
    /// `boots_verified` does not is replayed traffic.
    pub unverified: u64,
    pub dropped_unknown_peer: u64,
    pub dropped_self_echo: u64,
    pub role_changes: u64,
    pub announces: u64,
    /// Challenges issued to a peer showing an unverified boot.
    pub challenges_sent: u64,
    /// Peer boots accepted after they echoed our challenge.
    pub boots_verified: u64,
}

/// What we know about one peer, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: Ipv4Addr,
    /// Last role it reported (meaningful only while `alive`).
    pub role: Role,
    /// Heard within `dead_after`.
    pub alive: bool,
    pub last_heard: Option<Instant>,
    pub priority: u8,
    pub effective_priority: u8,
    pub term: u64,
    pub sync_pos: u64,
    pub boot_id: u64,
    pub backends_up: u16,
    pub backends_total: u16,
    /// Which of our keys its last accepted heartbeat was signed with (the
    /// driver reports it with [`Election::note_peer_key`]).
    pub key: Option<KeySlot>,
}

impl PeerInfo {
    /// Whether the director may schedule new flows to this peer: it is
    /// heard and not leaving. A leaving peer keeps the flows it has (it
    /// drains them before it takes the VIP off `lo`); a silent one too,
    /// since its web server may well still be serving them.
    pub fn takes_new_flows(&self) -> bool {
        self.alive && self.role != Role::Leaving
    }
}

type Rank = (u8, Ipv4Addr);

#[derive(Debug, Clone)]
struct Peer {
    info: PeerInfo,
    /// `(boot_id, seq)` of the last accepted heartbeat; survives the peer's
    /// death on purpose, so recorded traffic cannot revive it.
    last_accepted: Option<(u64, u64)>,
    /// The nonce we asked it to echo, while one of its boots is unverified.
    challenge: Option<u64>,
    /// The nonce it asked us to echo (0 = none), sent in our heartbeats.
    echo: u64,
}

impl Peer {
    fn rank(&self) -> Rank {
        (self.info.effective_priority, self.info.addr)
    }

    /// Could become director: alive, not leaving, not ineligible.
    fn eligible(&self) -> bool {
        self.info.alive
            && self.info.role != Role::Leaving
            && self.info.priority > 0
            && self.info.effective_priority > 0
    }

    /// Eligible and running without any penalty.
    fn healthy(&self) -> bool {
        self.eligible() && self.info.effective_priority == self.info.priority
    }
}

#[derive(Debug, Clone, Copy)]
enum Timer {
    /// Next periodic heartbeat round.
    Heartbeat,
    /// End of the Starting listen period.
    StartDeadline,
    /// End of the no-re-election hold after a voluntary handover.
    HandoffHold,
}

const TIMER_COUNT: usize = 3;

/// Election state of one node. See the module docs for the rules.
#[derive(Debug)]
pub struct Election {
    p: Params,
    role: Role,
    /// Our directorship term while director; otherwise the highest term seen.
    term: u64,
    seq: u64,
    /// Challenge nonces issued so far (input to [`Election::next_nonce`]).
    nonces: u64,
    ping_ok: bool,
    service_ok: bool,
    backends_up: u16,
    backends_total: u16,
    sync_pos: u64,
    start_deadline: Instant,
    /// Effective priority last advertised, to send at once when it changes.
    advertised_priority: u8,
    peers: Vec<Peer>,
    timers: [Option<Instant>; TIMER_COUNT],
    transmits: VecDeque<(Ipv4Addr, HeartbeatRepr)>,
    events: VecDeque<Event>,
    counters: Counters,
}

impl Election {
    /// Start in [`Role::Starting`] and queue a first heartbeat to every peer.
    ///
    /// Ping and service are assumed fine until the driver says otherwise, so
    /// the driver should report its first ping result promptly.
    pub fn new(params: Params, now: Instant) -> Self {
        let mut addrs: Vec<Ipv4Addr> = Vec::with_capacity(params.peers.len());
        for &a in &params.peers {
            // A duplicate entry would never be heard (lookups find the first).
            if a != params.me && !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        let peers = addrs
            .into_iter()
            .map(|addr| Peer {
                info: PeerInfo {
                    addr,
                    role: Role::Starting,
                    alive: false,
                    last_heard: None,
                    priority: 0,
                    effective_priority: 0,
                    term: 0,
                    sync_pos: 0,
                    boot_id: 0,
                    backends_up: 0,
                    backends_total: 0,
                    key: None,
                },
                last_accepted: None,
                challenge: None,
                echo: 0,
            })
            .collect();
        let start_deadline = now + params.dead_after;
        let mut e = Election {
            role: Role::Starting,
            term: 0,
            seq: 0,
            nonces: 0,
            ping_ok: true,
            service_ok: true,
            backends_up: 0,
            backends_total: 0,
            sync_pos: 0,
            start_deadline,
            advertised_priority: 0,
            peers,
            timers: [None; TIMER_COUNT],
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            p: params,
        };
        e.advertised_priority = e.effective_priority();
        e.timers[Timer::Heartbeat as usize] = Some(now + e.p.interval);
        e.timers[Timer::StartDeadline as usize] = Some(start_deadline);
        e.queue_heartbeats();
        e
    }

    /// Take in a heartbeat that [`HeartbeatRepr::parse`] authenticated.
    pub fn handle_heartbeat(&mut self, now: Instant, msg: &HeartbeatRepr) -> Result<(), Drop> {
        if let Err(d) = self.admit(msg) {
            match d {
                Drop::WrongCluster => self.counters.dropped_wrong_cluster += 1,
                Drop::Replay => self.counters.dropped_replay += 1,
                Drop::Stale => self.counters.unverified += 1,
                Drop::UnknownPeer => self.counters.dropped_unknown_peer += 1,
                Drop::SelfEcho => self.counters.dropped_self_echo += 1,
            }
            log::debug!(
                "heartbeat from {} (boot {} seq {}) dropped: {d}",
                msg.node,
                msg.boot_id,
                msg.seq
            );
            return Err(d);
        }
        self.counters.received += 1;
        let my_rank = self.rank();
        let Some(peer) = self.peers.iter_mut().find(|p| p.info.addr == msg.node) else {
            // check() found it; unreachable in practice, but never panic on input.
            return Err(Drop::UnknownPeer);
        };
        let was_alive = peer.info.alive;
        let same_boot = peer.last_accepted.map(|(b, _)| b) == Some(msg.boot_id);
        let prev_role = peer.info.role;
        let role = Role::from_wire(msg.role);
        peer.last_accepted = Some((msg.boot_id, msg.seq));
        let key = peer.info.key;
        peer.info = PeerInfo {
            addr: msg.node,
            role,
            alive: true,
            last_heard: Some(now),
            priority: msg.priority,
            effective_priority: msg.effective_priority,
            term: msg.term,
            sync_pos: msg.sync_pos,
            boot_id: msg.boot_id,
            backends_up: msg.backends_up,
            backends_total: msg.backends_total,
            key,
        };
        let peer_rank = peer.rank();
        if !was_alive {
            log::info!("peer {} up ({role}, term {})", msg.node, msg.term);
            self.events.push_back(Event::PeerUp { peer: msg.node });
        }
        self.term = self.term.max(msg.term);

        // Continuity matters: a peer we knew as a live director in this same
        // boot now says standby/leaving, so it is handing the role to us.
        let knew_director = was_alive && same_boot && prev_role == Role::Director;
        let handoff = match role {
            Role::Standby if knew_director => Some(Reason::PeerHandoff),
            Role::Leaving if knew_director => Some(Reason::PeerLeaving),
            _ => None,
        };

        if self.role == Role::Director {
            if role == Role::Director && !knew_director && peer_rank < my_rank {
                // Split brain and we win: make our claim the newest, tell the
                // loser quickly, and re-announce the address.
                self.term = self.term.saturating_add(1);
                log::info!(
                    "split brain with {}: keeping director role, term {}",
                    msg.node,
                    self.term
                );
                self.announce();
                self.queue_heartbeats();
            } else if knew_director && role != Role::Director {
                // The other claimant just let go; frames it sent meanwhile may
                // have pulled switches towards it.
                self.announce();
            }
        }
        self.evaluate(now, handoff);
        Ok(())
    }

    /// Record which of our keys `peer`'s last accepted heartbeat was signed
    /// with, for status.
    pub fn note_peer_key(&mut self, peer: Ipv4Addr, key: KeySlot) {
        if let Some(p) = self.peers.iter_mut().find(|p| p.info.addr == peer) {
            p.info.key = Some(key);
        }
    }

    /// Count a datagram that failed [`HeartbeatRepr::parse`].
    pub fn note_auth_failure(&mut self) {
        self.counters.dropped_auth += 1;
    }

    /// Run every timer due at `now`: heartbeats, the start deadline, the
    /// handoff hold and peer deaths.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.due(Timer::Heartbeat, now) {
            self.queue_heartbeats();
            self.timers[Timer::Heartbeat as usize] = Some(now + self.p.interval);
        }
        if self.due(Timer::StartDeadline, now) {
            self.timers[Timer::StartDeadline as usize] = None;
        }
        if self.due(Timer::HandoffHold, now) {
            self.timers[Timer::HandoffHold as usize] = None;
        }
        let dead_after = self.p.dead_after;
        for peer in &mut self.peers {
            let expired = peer.info.alive
                && peer
                    .info
                    .last_heard
                    .is_some_and(|t| now.saturating_duration_since(t) >= dead_after);
            if expired {
                peer.info.alive = false;
                log::info!(
                    "peer {} lost (last seen as {})",
                    peer.info.addr,
                    peer.info.role
                );
                self.events.push_back(Event::PeerLost {
                    peer: peer.info.addr,
                });
            }
        }
        self.evaluate(now, None);
    }

    /// Next heartbeat to send and its destination peer.
    pub fn poll_transmit(&mut self) -> Option<(Ipv4Addr, HeartbeatRepr)> {
        let t = self.transmits.pop_front()?;
        self.counters.sent += 1;
        Some(t)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Election::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        let timers = self.timers.iter().flatten().copied();
        let deaths = self
            .peers
            .iter()
            .filter(|p| p.info.alive)
            .filter_map(|p| p.info.last_heard)
            .map(|t| t + self.p.dead_after);
        timers
            .chain(deaths)
            .min()
            // The heartbeat timer is always armed; this is only a fallback.
            .unwrap_or(self.start_deadline)
    }

    pub fn set_ping_ok(&mut self, now: Instant, ok: bool) {
        if self.ping_ok != ok {
            log::info!("ping targets {}", if ok { "reachable" } else { "lost" });
        }
        self.ping_ok = ok;
        self.priority_inputs_changed(now);
    }

    pub fn set_service_ok(&mut self, now: Instant, ok: bool) {
        if self.service_ok != ok {
            log::info!("local service {}", if ok { "up" } else { "down" });
        }
        self.service_ok = ok;
        self.priority_inputs_changed(now);
    }

    /// Health summary carried in our heartbeats (`up` is capped at `total`).
    pub fn set_health_summary(&mut self, up: u16, total: u16) {
        self.backends_up = up.min(total);
        self.backends_total = total;
    }

    /// Our connection-sync position ([`crate::sync::position`]), carried
    /// in our heartbeats: the last batch sent (director) or applied
    /// (standby).
    pub fn set_sync_pos(&mut self, pos: u64) {
        self.sync_pos = pos;
    }

    /// For a planned switchover: a live peer's last heartbeat says it has
    /// applied everything up to `sent` (our position when the handover
    /// began: under load our own position keeps moving, so compare with
    /// the one taken then). An independent confirmation besides the sync
    /// layer's acks, and one that survives a lost ack.
    pub fn peer_synced_to(&self, sent: u64) -> bool {
        self.peers
            .iter()
            .any(|p| p.info.alive && crate::sync::position_covers(p.info.sync_pos, sent))
    }

    /// Leave the cluster: priority 0 from now on. Sends a Leaving heartbeat
    /// at once so a standby takes over without waiting for `dead_after`.
    pub fn leave(&mut self, now: Instant) {
        if self.role != Role::Leaving {
            self.change_role(now, Role::Leaving, Reason::Leaving);
        }
    }

    /// Planned switchover: a director steps down and a live eligible standby
    /// takes over as soon as it hears our standby heartbeat. Returns false
    /// (and changes nothing) if we are not director or no such standby is
    /// live.
    pub fn failover(&mut self, now: Instant) -> bool {
        let has_taker = self
            .peers
            .iter()
            .any(|p| p.eligible() && p.info.role == Role::Standby);
        if self.role != Role::Director || !has_taker {
            return false;
        }
        self.change_role(now, Role::Standby, Reason::AdminFailover);
        true
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    /// Configured priority after penalties; 0 means ineligible.
    pub fn effective_priority(&self) -> u8 {
        let ping_lost = self.p.ping_configured && !self.ping_ok;
        if self.role == Role::Leaving || self.p.priority == 0 || ping_lost {
            0
        } else if !self.service_ok {
            (self.p.priority / 2).max(1)
        } else {
            self.p.priority
        }
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        self.peers.iter().map(|p| p.info.clone()).collect()
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Replay protection (module docs): the sequence window within a
    /// verified boot, the challenge for any other boot. Takes in the
    /// challenge the peer put to us, and issues ours.
    fn admit(&mut self, msg: &HeartbeatRepr) -> Result<(), Drop> {
        if msg.cluster_id != self.p.cluster_id {
            return Err(Drop::WrongCluster);
        }
        if msg.node == self.p.me {
            return Err(Drop::SelfEcho);
        }
        let i = self
            .peers
            .iter()
            .position(|p| p.info.addr == msg.node)
            .ok_or(Drop::UnknownPeer)?;
        let peer = &mut self.peers[i];
        let same_boot = peer.last_accepted.map(|(b, _)| b) == Some(msg.boot_id);
        if peer
            .last_accepted
            .is_some_and(|(_, seq)| same_boot && msg.seq > seq)
        {
            if peer.challenge.is_some_and(|n| n == msg.echo) {
                // Answered by the boot we already trust (our challenge came
                // from a replay): nothing left to prove.
                peer.challenge = None;
            }
            self.take_challenge(i, msg.challenge);
            return Ok(());
        }
        // A boot we have not verified, or an old sequence number: a
        // recording, or a restart that drew a boot id seen before. Either
        // way only a heartbeat echoing a fresh challenge gets in. Its
        // challenge may come from the real peer, which cannot trust us
        // either until we answer; a replayed 0 must not erase a pending one,
        // so only nonces are taken.
        let drop = if same_boot { Drop::Replay } else { Drop::Stale };
        if msg.challenge != 0 {
            self.take_challenge(i, msg.challenge);
        }
        let peer = &mut self.peers[i];
        if peer.challenge.is_some_and(|n| n == msg.echo) {
            peer.challenge = None;
            self.counters.boots_verified += 1;
            log::info!(
                "peer {} boot {} verified (answered our challenge)",
                msg.node,
                msg.boot_id
            );
            return Ok(());
        }
        if peer.challenge.is_none() {
            let nonce = self.next_nonce();
            self.peers[i].challenge = Some(nonce);
            self.counters.challenges_sent += 1;
            // A new boot is news; an old sequence number (a duplicate
            // datagram, a replay) is not worth more than a debug line.
            let level = if same_boot {
                log::Level::Debug
            } else {
                log::Level::Info
            };
            log::log!(
                level,
                "peer {} shows unverified boot {} (seq {}): challenging it",
                msg.node,
                msg.boot_id,
                msg.seq
            );
            self.queue_heartbeats();
        }
        Err(drop)
    }

    /// Echo `challenge` from now on; a new nonce is answered at once, so a
    /// restarted peer is back within a round trip.
    fn take_challenge(&mut self, i: usize, challenge: u64) {
        if self.peers[i].echo != challenge {
            self.peers[i].echo = challenge;
            if challenge != 0 {
                self.queue_heartbeats();
            }
        }
    }

    /// Distinct non-zero nonces (splitmix64 over the per-process seed).
    fn next_nonce(&mut self) -> u64 {
        loop {
            self.nonces += 1;
            let mut z = self
                .p
                .nonce_seed
                .wrapping_add(self.nonces.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    }

    fn rank(&self) -> Rank {
        (self.effective_priority(), self.p.me)
    }

    fn due(&self, t: Timer, now: Instant) -> bool {
        self.timers[t as usize].is_some_and(|at| at <= now)
    }

    fn ineligible_reason(&self) -> Reason {
        if self.p.priority > 0 && self.p.ping_configured && !self.ping_ok {
            Reason::PingLost
        } else {
            Reason::Ineligible
        }
    }

    fn priority_inputs_changed(&mut self, now: Instant) {
        let changed_role = self.evaluate(now, None);
        let eff = self.effective_priority();
        if eff != self.advertised_priority && !changed_role {
            // Peers decide on our advertised rank; don't make them wait a round.
            self.queue_heartbeats();
        }
        self.advertised_priority = eff;
    }

    /// Apply the rules until no transition fires. Returns whether one did.
    fn evaluate(&mut self, now: Instant, handoff: Option<Reason>) -> bool {
        let mut changed = false;
        let mut handoff = handoff;
        // Each transition moves towards a fixed point; the bound is a guard.
        for _ in 0..4 {
            let Some((to, reason)) = self.decide(now, handoff.take()) else {
                break;
            };
            self.change_role(now, to, reason);
            changed = true;
        }
        changed
    }

    fn decide(&self, now: Instant, handoff: Option<Reason>) -> Option<(Role, Reason)> {
        let me = self.rank();
        let eligible = me.0 > 0;
        let live = || self.peers.iter().filter(|p| p.info.alive);
        let director = live()
            .filter(|p| p.info.role == Role::Director)
            .max_by_key(|p| p.rank());
        let candidates = || live().filter(|p| p.eligible() && p.info.role != Role::Director);
        let outranked = candidates().any(|p| p.rank() > me);

        match self.role {
            Role::Leaving => None,
            Role::Starting => {
                let heard_any = live().next().is_some();
                if !eligible {
                    (heard_any || now >= self.start_deadline)
                        .then(|| (Role::Standby, self.ineligible_reason()))
                } else if director.is_some() {
                    Some((Role::Standby, Reason::DirectorHeard))
                } else if heard_any {
                    Some(if outranked {
                        (Role::Standby, Reason::LostElection)
                    } else {
                        (Role::Director, Reason::WonElection)
                    })
                } else if now >= self.start_deadline {
                    Some((Role::Director, Reason::NoDirectorHeard))
                } else {
                    None
                }
            }
            Role::Standby => {
                if !eligible {
                    return None;
                }
                if let Some(d) = director {
                    let preempt = self.p.preempt && self.service_ok && d.rank() < me;
                    return preempt.then_some((Role::Director, Reason::Preempt));
                }
                if let Some(reason) = handoff {
                    return Some((Role::Director, reason));
                }
                let held = self.timers[Timer::HandoffHold as usize].is_some();
                if outranked || (held && candidates().next().is_some()) {
                    return None;
                }
                let reason = if live().any(|p| p.info.role == Role::Leaving || p.info.priority == 0)
                {
                    Reason::PeerLeaving
                } else if live().next().is_none() {
                    Reason::PeerDead
                } else {
                    Reason::WonElection
                };
                Some((Role::Director, reason))
            }
            Role::Director => {
                if director.is_some_and(|d| d.rank() > me) {
                    return Some((Role::Standby, Reason::HigherPriorityDirector));
                }
                let standby = |p: &&Peer| p.info.role == Role::Standby;
                if !eligible && live().filter(standby).any(|p| p.eligible()) {
                    return Some((Role::Standby, self.ineligible_reason()));
                }
                if !self.service_ok && live().filter(standby).any(|p| p.healthy()) {
                    return Some((Role::Standby, Reason::ServiceDown));
                }
                None
            }
        }
    }

    fn change_role(&mut self, now: Instant, to: Role, reason: Reason) {
        let from = self.role;
        if to == Role::Director {
            // self.term is already the highest term seen.
            self.term = self.term.saturating_add(1);
            self.timers[Timer::HandoffHold as usize] = None;
        }
        let voluntary = matches!(
            reason,
            Reason::AdminFailover | Reason::PingLost | Reason::Ineligible | Reason::ServiceDown
        );
        if from == Role::Director && to == Role::Standby && voluntary {
            self.timers[Timer::HandoffHold as usize] = Some(now + self.p.dead_after);
        }
        if to == Role::Leaving {
            self.timers[Timer::HandoffHold as usize] = None;
        }
        self.timers[Timer::StartDeadline as usize] = None;
        self.role = to;
        self.advertised_priority = self.effective_priority();
        self.counters.role_changes += 1;
        log::info!("role {from} -> {to} (term {}): {reason}", self.term);
        self.events.push_back(Event::RoleChanged {
            from,
            to,
            term: self.term,
            reason,
        });
        self.queue_heartbeats();
    }

    fn announce(&mut self) {
        self.counters.announces += 1;
        self.events.push_back(Event::Announce);
    }

    /// Queue one heartbeat per peer, replacing any still unsent: an older
    /// heartbeat carries nothing the new one does not.
    fn queue_heartbeats(&mut self) {
        self.transmits.clear();
        let leaving = self.role == Role::Leaving;
        for i in 0..self.peers.len() {
            self.seq += 1;
            let msg = HeartbeatRepr {
                cluster_id: self.p.cluster_id,
                node: self.p.me,
                boot_id: self.p.boot_id,
                seq: self.seq,
                term: self.term,
                priority: if leaving { 0 } else { self.p.priority },
                effective_priority: self.effective_priority(),
                role: self.role.to_wire(),
                backends_up: self.backends_up,
                backends_total: self.backends_total,
                sync_pos: self.sync_pos,
                challenge: self.peers[i].challenge.unwrap_or(0),
                echo: self.peers[i].echo,
            };
            self.transmits.push_back((self.peers[i].info.addr, msg));
        }
    }
}

#[cfg(test)]
mod send_period_tests {
    use super::send_period;
    use std::time::Duration;

    #[test]
    fn ten_heartbeats_fit_in_dead_after() {
        let ms = Duration::from_millis;
        assert_eq!(send_period(ms(100), ms(1000)), ms(100));
        assert_eq!(send_period(ms(50), ms(300)), ms(30));
        assert_eq!(send_period(ms(20), ms(100)), ms(10));
        assert_eq!(send_period(ms(10), ms(5000)), ms(10));
    }
}
