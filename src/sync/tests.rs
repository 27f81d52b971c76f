//! Sync tests: two forwarding engines joined by a Sender and a Receiver over
//! a simulated lossy, reordering link; every message goes through
//! `emit`/`parse` with the cluster key. Time is simulated.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::*;
use crate::forward::{BackendSnap, Engine, Scheduler, ServiceSnap, Snapshot, Timeouts};
use crate::wire::envelope::EnvelopeError;
use crate::wire::frame::{TCP_ACK, TCP_FIN, TCP_SYN};
use crate::wire::sync::SyncWireError;

const KEY: &[u8] = b"sync-test-key-0123456789";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn emit(m: &SyncMessage) -> Vec<u8> {
    let mut b = Vec::new();
    m.emit(KEY, &mut b);
    b
}

/// A one-way datagram link with loss, latency and jitter (jitter larger
/// than the send spacing reorders).
struct Link {
    rng: fastrand::Rng,
    loss: f64,
    delay: Duration,
    jitter: Duration,
    up: bool,
    queue: Vec<(Instant, u64, Vec<u8>)>,
    sent: u64,
}

impl Link {
    fn new(seed: u64, loss: f64, delay: Duration, jitter: Duration) -> Self {
        Link {
            rng: fastrand::Rng::with_seed(seed),
            loss,
            delay,
            jitter,
            up: true,
            queue: Vec::new(),
            sent: 0,
        }
    }

    fn send(&mut self, now: Instant, bytes: Vec<u8>) {
        self.sent += 1;
        if !self.up || self.rng.f64() < self.loss {
            return;
        }
        let at = now + self.delay + self.jitter.mul_f64(self.rng.f64());
        self.queue.push((at, self.sent, bytes));
    }

    fn due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.queue.sort_by_key(|(t, n, _)| (*t, *n));
        let n = self.queue.iter().take_while(|(t, _, _)| *t <= now).count();
        self.queue.drain(..n).map(|(_, _, b)| b).collect()
    }

    fn next(&self) -> Option<Instant> {
        self.queue.iter().map(|(t, _, _)| *t).min()
    }
}

fn backend(last: u8) -> BackendSnap {
    BackendSnap {
        name: format!("b{last}"),
        addr: Ipv4Addr::new(10, 0, 0, last),
        mac: [2, 0, 0, 0, 0, last],
        weight: 1,
        up: true,
        local: false,
        fallback: false,
    }
}

fn engine() -> Engine {
    let backends = vec![backend(1), backend(2), backend(3)];
    let snap = Snapshot {
        generation: 1,
        vips: vec![VIP],
        services: vec![
            ServiceSnap {
                vip: VIP,
                proto: 6,
                port: 80,
                scheduler: Scheduler::Wlc,
                persistence: Some(Duration::from_secs(300)),
                persist_mask: Ipv4Addr::new(255, 255, 255, 0),
                backends: backends.clone(),
            },
            ServiceSnap {
                vip: VIP,
                proto: 17,
                port: 53,
                scheduler: Scheduler::Rr,
                persistence: None,
                persist_mask: Ipv4Addr::BROADCAST,
                backends,
            },
        ],
        proxy: Vec::new(),
    };
    Engine::new(Arc::new(snap), 20_000, Timeouts::default())
}

fn tcp_key(i: u32) -> FlowKey {
    FlowKey {
        proto: FlowKey::TCP,
        src: Ipv4Addr::from(0xc633_0000 + i),
        sport: 1024 + (i % 50_000) as u16,
        dst: VIP,
        dport: 80,
    }
}

fn udp_key(i: u32) -> FlowKey {
    FlowKey {
        proto: FlowKey::UDP,
        dport: 53,
        ..tcp_key(i)
    }
}

type ConnTable = BTreeMap<(u8, u32, u16), (Ipv4Addr, TcpState, Instant)>;
type PersistTable = BTreeMap<(u8, u16, u32), (Ipv4Addr, Instant)>;

fn conn_table(e: &Engine, now: Instant) -> ConnTable {
    e.export(now)
        .into_iter()
        .map(|c| {
            (
                (c.key.proto, u32::from(c.key.src), c.key.sport),
                (c.backend, c.state, c.expires),
            )
        })
        .collect()
}

fn persist_table(e: &Engine, now: Instant) -> PersistTable {
    e.export_persist(now)
        .into_iter()
        .map(|p| {
            (
                (p.proto, p.port, u32::from(p.client)),
                (p.backend, p.expires),
            )
        })
        .collect()
}

/// The standby has every entry of the director, same backend and state,
/// and an expiry within `slack` of the director's. Lifetimes count from the
/// send, so the standby's copy runs later by the one-way delay, and earlier
/// by the millisecond rounding and any time spent waiting in a buffer.
fn assert_same_tables(d: &Engine, s: &Engine, now: Instant, slack: Duration) {
    let close = |a: Instant, b: Instant| {
        a.saturating_duration_since(b) <= slack && b.saturating_duration_since(a) <= slack
    };
    let (dc, sc) = (conn_table(d, now), conn_table(s, now));
    assert_eq!(dc.len(), sc.len(), "connection count");
    for (k, (b, st, exp)) in &dc {
        let (sb, sst, sexp) = sc.get(k).unwrap_or_else(|| panic!("missing {k:?}"));
        assert_eq!((b, st), (sb, sst), "{k:?}");
        assert!(close(*exp, *sexp), "{k:?} expiry {exp:?} vs {sexp:?}");
    }
    let (dp, sp) = (persist_table(d, now), persist_table(s, now));
    assert_eq!(dp.len(), sp.len(), "template count");
    for (k, (b, exp)) in &dp {
        let (sb, sexp) = sp
            .get(k)
            .unwrap_or_else(|| panic!("missing template {k:?}"));
        assert_eq!(b, sb, "template {k:?}");
        assert!(close(*exp, *sexp), "template {k:?} expiry");
    }
}

/// Director and standby, each an engine plus its half of sync, driven the
/// way `sys/` drives them.
struct Pair {
    now: Instant,
    director: Engine,
    sender: Sender,
    standby: Engine,
    /// `None` while the standby process is not running.
    receiver: Option<Receiver>,
    to_standby: Link,
    to_director: Link,
    /// Every datagram the director sent, for replay tests.
    captured: Vec<Vec<u8>>,
    rejected: Vec<SyncWireError>,
    installed: u64,
    conns: Vec<ConnEntry>,
    persists: Vec<PersistEntry>,
}

impl Pair {
    fn new(seed: u64, loss: f64, jitter: Duration) -> Self {
        let now = Instant::now();
        Pair {
            now,
            director: engine(),
            sender: Sender::new(7, now),
            standby: engine(),
            receiver: Some(Receiver::new(100, now)),
            to_standby: Link::new(seed, loss, ms(2), jitter),
            to_director: Link::new(seed ^ 0x5eed, loss, ms(2), jitter),
            captured: Vec::new(),
            rejected: Vec::new(),
            installed: 0,
            conns: Vec::new(),
            persists: Vec::new(),
        }
    }

    fn director_out(&mut self) {
        let now = self.now;
        loop {
            self.conns.clear();
            self.persists.clear();
            let r = self
                .director
                .take_changes(&mut self.conns, &mut self.persists, 500);
            if r.overflowed || self.sender.wants_snapshot() {
                self.sender.start_snapshot(
                    now,
                    self.director.export(now),
                    self.director.export_persist(now),
                );
            } else {
                self.sender.queue(now, &self.conns, &self.persists);
            }
            if r.pending == 0 {
                break;
            }
        }
        while let Some(m) = self.sender.poll_transmit(now) {
            let b = emit(&m);
            self.captured.push(b.clone());
            self.to_standby.send(now, b);
        }
    }

    fn standby_deliver(&mut self, bytes: &[u8]) {
        let now = self.now;
        let Some(rx) = self.receiver.as_mut() else {
            return;
        };
        match SyncMessage::parse(bytes, KEY) {
            Ok(m) => {
                let mut out = Installs::default();
                rx.handle(now, &m, &mut out);
                for c in out.conns {
                    self.installed += self.standby.install(now, c) as u64;
                }
                for p in out.persists {
                    self.installed += self.standby.install_persist(now, p) as u64;
                }
            }
            Err(e) => self.rejected.push(e),
        }
    }

    fn drive(&mut self) {
        let now = self.now;
        self.director_out();
        for b in self.to_standby.due(now) {
            self.standby_deliver(&b);
        }
        if let Some(rx) = self.receiver.as_mut() {
            while let Some(m) = rx.poll_transmit(now) {
                self.to_director.send(now, emit(&m));
            }
        }
        for b in self.to_director.due(now) {
            match SyncMessage::parse(&b, KEY) {
                Ok(m) => self.sender.handle(now, &m),
                Err(e) => self.rejected.push(e),
            }
        }
        self.director_out();
    }

    fn next_wake(&self) -> Instant {
        [
            self.sender.poll_timeout(),
            self.receiver.as_ref().and_then(|r| r.poll_timeout()),
            self.to_standby.next(),
            self.to_director.next(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.now + ms(100))
        .max(self.now + Duration::from_micros(50))
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.drive();
            self.now = self.next_wake().min(end);
        }
        self.drive();
    }

    /// Runs until `cond` holds; the time it took, or `None` after `limit`.
    fn run_until(&mut self, limit: Duration, cond: impl Fn(&Pair) -> bool) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            self.drive();
            if cond(self) {
                return Some(self.now - start);
            }
            self.now = self.next_wake();
        }
        None
    }

    fn packet(&mut self, key: FlowKey, flags: u8) {
        let v = self.director.decide(self.now, &key, flags, 60);
        assert!(
            matches!(v, crate::forward::Verdict::Forward { .. }),
            "{v:?}"
        );
    }

    /// `n` established TCP flows and `n / 4` UDP flows, starting at `first`.
    fn open(&mut self, first: u32, n: u32) {
        for i in first..first + n {
            self.packet(tcp_key(i), TCP_SYN);
            self.packet(tcp_key(i), TCP_ACK);
            if i.is_multiple_of(4) {
                self.packet(udp_key(i), 0);
            }
        }
    }

    fn rx(&self) -> &Receiver {
        self.receiver.as_ref().expect("standby running")
    }
}

#[test]
fn snapshot_of_1000_entries_arrives_completely() {
    for (seed, loss) in [(1, 0.0), (2, 0.2)] {
        let mut p = Pair::new(seed, loss, ms(10));
        p.receiver = None;
        p.open(0, 800); // 800 TCP + 200 UDP
        p.run_for(ms(500));
        assert_eq!(p.director.len(), 1000);
        assert_eq!(p.captured.len(), 0, "nobody to send to");
        assert_eq!(p.sender.lag(p.now), (0, None));

        p.receiver = Some(Receiver::new(100, p.now));
        let took = p
            .run_until(Duration::from_secs(20), |p| {
                p.rx().has_snapshot() && p.sender.caught_up()
            })
            .unwrap_or_else(|| panic!("loss {loss}: snapshot incomplete"));
        assert!(took < Duration::from_secs(5), "loss {loss}: took {took:?}");
        let templates = p.director.persist_len() as u64;
        assert!(templates > 0);
        assert_eq!(p.rx().synced(), 1000 + templates);
        assert_eq!(p.installed, 1000 + templates);
        assert_same_tables(&p.director, &p.standby, p.now, ms(100));
        assert_eq!(p.sender.stats().streams, 1);
        if loss > 0.0 {
            assert!(p.sender.stats().retransmits > 0);
        }
        assert!(p.rejected.is_empty());
    }
}

#[test]
fn incremental_changes_arrive_in_order_with_loss_and_reordering() {
    let mut p = Pair::new(3, 0.2, ms(30));
    let mut rng = fastrand::Rng::with_seed(99);
    p.run_until(Duration::from_secs(5), |p| p.sender.caught_up())
        .expect("empty snapshot acked");
    // 10 s of traffic: new flows, handshakes completing, closes, resets of
    // state through port reuse, UDP.
    let mut next = 0u32;
    let mut open: Vec<u32> = Vec::new();
    let end = p.now + Duration::from_secs(10);
    while p.now < end {
        for _ in 0..5 {
            p.packet(tcp_key(next), TCP_SYN);
            open.push(next);
            if next.is_multiple_of(3) {
                p.packet(udp_key(next), 0);
            }
            next += 1;
        }
        for _ in 0..5 {
            let i = open[rng.usize(..open.len())];
            let flags = match rng.u8(..10) {
                0..=5 => TCP_ACK,
                6..=8 => TCP_FIN | TCP_ACK,
                _ => TCP_SYN,
            };
            p.packet(tcp_key(i), flags);
        }
        let t = p.now + ms(10);
        p.run_for(t - p.now);
    }
    assert!(p.director.len() > 5000);
    p.run_until(Duration::from_secs(30), |p| p.sender.caught_up())
        .expect("caught up after the traffic stopped");
    // Traffic that only pushes an expiry out is re-sent once the standby's
    // copy is down to half a timeout, so expiries agree within that.
    let half_tcp_timeout = Timeouts::default().tcp / 2;
    assert_same_tables(&p.director, &p.standby, p.now, half_tcp_timeout + ms(200));
    let s = p.sender.stats();
    assert_eq!(s.streams, 1, "no needless snapshot");
    assert!(s.retransmits > 0);
    let r = p.rx().stats();
    assert!(r.buffered_ahead > 0, "losses and reordering were exercised");
    assert!(r.duplicates > 0, "spurious retransmissions were ignored");
    assert_eq!(p.sender.lag(p.now), (0, None));
    assert!(p.rejected.is_empty());
}

#[test]
fn replayed_batches_change_nothing() {
    let mut p = Pair::new(4, 0.0, ms(0));
    p.run_until(Duration::from_secs(2), |p| p.sender.caught_up())
        .unwrap();
    let k = tcp_key(1);
    p.packet(k, TCP_SYN);
    p.run_until(Duration::from_secs(2), |p| p.sender.caught_up())
        .unwrap();
    p.packet(k, TCP_ACK);
    p.packet(k, TCP_FIN | TCP_ACK);
    p.run_until(Duration::from_secs(2), |p| p.sender.caught_up())
        .unwrap();
    let state = |p: &Pair| p.standby.lookup(p.now, &k).map(|c| c.state);
    assert_eq!(state(&p), Some(TcpState::FinWait));
    let synced = p.rx().synced();
    let position = p.rx().position();
    // Replay every batch the director ever sent, oldest first.
    for b in p.captured.clone() {
        p.standby_deliver(&b);
    }
    assert_eq!(state(&p), Some(TcpState::FinWait), "old states not applied");
    assert_eq!(p.rx().synced(), synced);
    assert_eq!(p.rx().position(), position);
    assert_eq!(
        p.rx().stats().duplicates,
        p.captured.len() as u64,
        "each counted"
    );
    // A replay is re-acked, so a director that lost the ack learns it.
    let rx = p.receiver.as_mut().unwrap();
    assert_eq!(
        rx.poll_transmit(p.now),
        Some(SyncMessage::Ack(Ack {
            stream_id: position.0,
            seq: position.1
        }))
    );
}

#[test]
fn forged_batches_are_rejected() {
    let mut p = Pair::new(5, 0.0, ms(0));
    p.open(0, 10);
    p.run_until(Duration::from_secs(2), |p| p.sender.caught_up())
        .unwrap();
    let before = conn_table(&p.standby, p.now);
    let (stream_id, applied) = p.rx().position();
    // The forger knows the stream position but not the key.
    let forged = SyncMessage::Batch(Batch {
        stream_id,
        seq: applied + 1,
        full_snapshot_part: false,
        last_part: false,
        conns: vec![ConnRecord {
            proto: 6,
            src: tcp_key(0).src,
            sport: tcp_key(0).sport,
            dst: VIP,
            dport: 80,
            backend: Ipv4Addr::new(10, 0, 0, 3),
            state: TcpState::Established,
            remaining_ms: 1_000_000,
        }],
        persists: vec![],
    });
    let mut bytes = Vec::new();
    forged.emit(b"not the cluster key", &mut bytes);
    p.standby_deliver(&bytes);
    // A genuine batch altered in flight.
    let mut altered = p.captured[p.captured.len() - 1].clone();
    altered[40] ^= 0x01;
    p.standby_deliver(&altered);
    // A genuine batch cut short.
    let cut = p.captured[0][..p.captured[0].len() - 1].to_vec();
    p.standby_deliver(&cut);
    assert_eq!(
        p.rejected,
        vec![SyncWireError::Envelope(EnvelopeError::BadMac); 3]
    );
    assert_eq!(conn_table(&p.standby, p.now), before);
    assert_eq!(p.rx().position(), (stream_id, applied));
}

#[test]
fn late_and_restarted_standby_gets_the_full_table() {
    let mut p = Pair::new(6, 0.1, ms(5));
    p.receiver = None;
    p.open(0, 400);
    p.run_for(Duration::from_secs(3));
    p.receiver = Some(Receiver::new(100, p.now));
    p.run_until(Duration::from_secs(10), |p| {
        p.rx().has_snapshot() && p.sender.caught_up()
    })
    .expect("late standby synced");
    assert_same_tables(&p.director, &p.standby, p.now, ms(100));

    // More traffic, then the standby restarts with an empty table.
    p.open(400, 100);
    p.run_until(Duration::from_secs(10), |p| p.sender.caught_up())
        .unwrap();
    p.standby = engine();
    p.receiver = Some(Receiver::new(101, p.now));
    p.run_until(Duration::from_secs(10), |p| {
        p.rx().has_snapshot() && p.sender.caught_up()
    })
    .expect("restarted standby synced");
    assert_same_tables(&p.director, &p.standby, p.now, ms(100));
    assert_eq!(p.director.len(), 625);
    assert_eq!(p.sender.stats().streams, 2);
}

#[test]
fn caught_up_only_after_acks() {
    let t0 = Instant::now();
    let mut tx = Sender::new(1, t0);
    let mut rx = Receiver::new(2, t0);
    let via_wire = |m: SyncMessage| SyncMessage::parse(&emit(&m), KEY).unwrap();
    assert!(!tx.caught_up(), "no standby yet");
    let hello = via_wire(rx.poll_transmit(t0).expect("hello at start"));
    tx.handle(t0, &hello);
    assert!(tx.wants_snapshot());
    assert!(!tx.caught_up());
    tx.start_snapshot(t0, vec![], vec![]);
    let b = via_wire(tx.poll_transmit(t0).expect("snapshot batch"));
    assert!(!tx.caught_up(), "sent, not acked");
    let mut out = Installs::default();
    rx.handle(t0, &b, &mut out);
    assert!(rx.has_snapshot());
    let ack = via_wire(rx.poll_transmit(t0).expect("ack"));
    assert!(!tx.caught_up(), "acked, ack not delivered");
    tx.handle(t0 + ms(1), &ack);
    assert!(tx.caught_up());

    let e = ConnEntry {
        key: tcp_key(1),
        backend: Ipv4Addr::new(10, 0, 0, 1),
        state: TcpState::Established,
        expires: t0 + Duration::from_secs(900),
    };
    tx.queue(t0 + ms(2), &[e], &[]);
    assert!(!tx.caught_up(), "queued");
    let b = via_wire(tx.poll_transmit(t0 + ms(2)).unwrap());
    assert!(!tx.caught_up(), "in flight");
    rx.handle(t0 + ms(3), &b, &mut out);
    assert_eq!(out.conns.len(), 1);
    assert_eq!(out.conns[0].expires, t0 + ms(3) + ms(900_000 - 2));
    // A stale ack (the snapshot's) does not count.
    tx.handle(t0 + ms(4), &ack);
    assert!(!tx.caught_up());
    tx.handle(t0 + ms(4), &via_wire(rx.poll_transmit(t0 + ms(3)).unwrap()));
    assert!(tx.caught_up());
}

#[test]
fn lag_is_reported_while_the_standby_lags() {
    let mut p = Pair::new(7, 0.0, ms(0));
    p.run_until(Duration::from_secs(2), |p| p.sender.caught_up())
        .unwrap();
    assert_eq!(p.sender.lag(p.now), (0, None));
    p.to_standby.up = false;
    let t0 = p.now;
    p.open(0, 100); // 100 TCP, 25 UDP, some templates
    let entries = (p.director.len() + p.director.persist_len()) as u64;
    p.run_for(Duration::from_secs(2));
    let (n, age) = p.sender.lag(p.now);
    assert_eq!(n, entries);
    assert_eq!(age, Some(p.now - t0));
    assert!(!p.sender.caught_up());
    p.to_standby.up = true;
    p.run_until(Duration::from_secs(10), |p| p.sender.caught_up())
        .expect("recovers");
    assert_eq!(p.sender.lag(p.now), (0, None));
    assert_same_tables(&p.director, &p.standby, p.now, ms(100));
}

#[test]
fn window_and_pacing_bound_what_is_in_flight() {
    let t0 = Instant::now();
    let mut tx = Sender::new(1, t0);
    tx.handle(
        t0,
        &SyncMessage::Hello(Hello {
            boot_id: 5,
            stream_id: 0,
            applied_seq: 0,
        }),
    );
    let entries: Vec<ConnEntry> = (0..10_000)
        .map(|i| ConnEntry {
            key: tcp_key(i),
            backend: Ipv4Addr::new(10, 0, 0, 1),
            state: TcpState::Established,
            expires: t0 + Duration::from_secs(900),
        })
        .collect();
    tx.start_snapshot(t0, entries, vec![]);
    let burst = std::iter::from_fn(|| tx.poll_transmit(t0)).count();
    assert_eq!(burst, PACE_BURST as usize + 1);
    // Nobody acks: after a while the window is full and only
    // retransmissions go out.
    let mut t = t0;
    let mut highest = 0;
    for _ in 0..2000 {
        t = tx
            .poll_timeout()
            .unwrap()
            .max(t + Duration::from_micros(10));
        if t > t0 + Duration::from_secs(3) {
            break;
        }
        while let Some(SyncMessage::Batch(b)) = tx.poll_transmit(t) {
            assert!(Batch::datagram_len(b.conns.len(), b.persists.len()) <= MAX_DATAGRAM);
            highest = highest.max(b.seq);
        }
    }
    assert_eq!(highest, WINDOW as u64);
    assert!(tx.stats().retransmits > 0);
    assert_eq!(tx.lag(t).0, 10_000);
    // Then the standby is declared gone and nothing is kept for it.
    let later = t0 + PEER_TIMEOUT + ms(1);
    assert_eq!(tx.poll_transmit(later), None);
    assert_eq!(tx.position(), (0, 0));
    assert_eq!(tx.lag(later), (0, None));
    tx.queue(later, &[], &[]);
    assert_eq!(tx.stats().peer_lost, 1);
}

#[test]
fn receiver_buffers_within_its_window_and_drops_beyond() {
    let t0 = Instant::now();
    let mut rx = Receiver::new(1, t0);
    let batch = |seq: u64, i: u32| {
        SyncMessage::Batch(Batch {
            stream_id: 9,
            seq,
            full_snapshot_part: seq == 1,
            last_part: seq == 1,
            conns: vec![ConnRecord {
                proto: 6,
                src: tcp_key(i).src,
                sport: 1,
                dst: VIP,
                dport: 80,
                backend: Ipv4Addr::new(10, 0, 0, 1),
                state: TcpState::Established,
                remaining_ms: 1000,
            }],
            persists: vec![],
        })
    };
    let mut out = Installs::default();
    // Ahead of a stream start: not ours yet.
    rx.handle(t0, &batch(2, 2), &mut out);
    assert_eq!(rx.stats().foreign_stream, 1);
    rx.handle(t0, &batch(1, 1), &mut out);
    rx.handle(t0, &batch(4, 4), &mut out);
    rx.handle(t0, &batch(3, 3), &mut out);
    rx.handle(t0, &batch(3, 3), &mut out);
    assert_eq!(rx.position(), (9, 1), "waits for 2");
    assert_eq!((rx.stats().buffered_ahead, rx.stats().duplicates), (2, 1));
    rx.handle(t0 + ms(500), &batch(2, 2), &mut out);
    assert_eq!(rx.position(), (9, 4));
    let order: Vec<u32> = out
        .conns
        .iter()
        .map(|c| u32::from(c.key.src) & 0xff)
        .collect();
    assert_eq!(order, vec![1, 2, 3, 4], "applied in sequence order");
    // Lifetimes count from arrival, not from when the hole was filled.
    assert_eq!(out.conns[2].expires, t0 + ms(1000));
    rx.handle(t0, &batch(4 + RX_WINDOW + 1, 5), &mut out);
    assert_eq!(rx.stats().out_of_window, 1);
    assert_eq!(rx.synced(), 4);
}

#[test]
fn a_new_director_stream_resets_the_receiver() {
    let t0 = Instant::now();
    let mut rx = Receiver::new(1, t0);
    let mut out = Installs::default();
    let mut old = Sender::new(10, t0);
    let mut new = Sender::new(11, t0);
    let hello = rx.poll_transmit(t0).unwrap();
    for tx in [&mut old, &mut new] {
        tx.handle(t0, &hello);
        tx.start_snapshot(t0, vec![], vec![]);
    }
    let first_old = old.poll_transmit(t0).unwrap();
    rx.handle(t0, &first_old, &mut out);
    assert_eq!(rx.position(), (old.position().0, 1));
    assert!(new.position().0 > old.position().0);
    rx.handle(t0, &new.poll_transmit(t0).unwrap(), &mut out);
    assert_eq!(rx.position(), (new.position().0, 1));
    assert!(rx.has_snapshot());
    // The old director's stream start, replayed, does not take it back.
    rx.handle(t0, &first_old, &mut out);
    assert_eq!(rx.position(), (new.position().0, 1));
    assert_eq!(rx.stats().foreign_stream, 1);
    // The old director learns from the standby's Hello that it moved on.
    let mut t = t0;
    let hello = loop {
        t += ms(100);
        match rx.poll_transmit(t) {
            Some(m @ SyncMessage::Hello(_)) => break m,
            _ => continue,
        }
    };
    new.handle(t, &hello);
    assert!(new.caught_up());
    old.handle(t, &hello);
    assert!(!old.caught_up());
}

#[test]
fn a_director_whose_boot_id_went_back_is_followed_once_verified() {
    let t0 = Instant::now();
    let mut rx = Receiver::new(1, t0);
    let mut out = Installs::default();
    // The director restarted with a lower boot id (its boot counter went
    // back): its stream ids are lower than the one the standby follows.
    let mut before = Sender::new(900, t0);
    let mut after = Sender::new(7, t0);
    let hello = rx.poll_transmit(t0).unwrap();
    for tx in [&mut before, &mut after] {
        tx.handle(t0, &hello);
        tx.start_snapshot(t0, vec![], vec![]);
    }
    let first_before = before.poll_transmit(t0).unwrap();
    rx.handle(t0, &first_before, &mut out);
    assert_eq!(rx.position(), (before.position().0, 1));
    let first_after = after.poll_transmit(t0).unwrap();
    assert!(after.position().0 < before.position().0);
    // Unverified, the lower id looks like a replay.
    rx.handle(t0, &first_after, &mut out);
    assert_eq!(rx.position(), (before.position().0, 1));
    // Once the heartbeat challenge verified boot 7, its stream is followed,
    // and the earlier boot's, replayed, no longer is.
    rx.set_director_boot(7);
    rx.handle(t0, &first_after, &mut out);
    assert_eq!(rx.position(), (after.position().0, 1));
    rx.handle(t0, &first_before, &mut out);
    assert_eq!(rx.position(), (after.position().0, 1));
    assert_eq!(rx.stats().foreign_stream, 2);
}

#[test]
fn hellos_of_an_unverified_standby_boot_are_ignored() {
    let t0 = Instant::now();
    let mut tx = Sender::new(10, t0);
    let mut old = Receiver::new(50, t0);
    let mut new = Receiver::new(3, t0);
    let old_hello = old.poll_transmit(t0).unwrap();
    let new_hello = new.poll_transmit(t0).unwrap();
    // Without a verified boot, any new boot is a restart, lower or not.
    tx.handle(t0, &old_hello);
    tx.handle(t0, &new_hello);
    assert_eq!(tx.stats().ignored, 0);
    tx.set_standby_boot(3);
    tx.handle(t0, &old_hello);
    assert_eq!(tx.stats().ignored, 1, "a replayed hello of boot 50");
    tx.handle(t0, &new_hello);
    assert_eq!(tx.stats().ignored, 1);
}

#[test]
fn positions_compare_stream_and_batch() {
    assert_eq!(position(0, 5), 0);
    let sent = position((7 << 20) | 1, 12);
    assert_eq!(sent & 0xffff_ffff, 12);
    assert!(position_covers(position((7 << 20) | 1, 12), sent));
    assert!(position_covers(position((7 << 20) | 1, 13), sent));
    assert!(!position_covers(position((7 << 20) | 1, 11), sent));
    assert!(
        !position_covers(position((7 << 20) | 2, 12), sent),
        "another stream"
    );
    assert!(position_covers(0, 0), "nothing sent");
    assert!(!position_covers(0, sent));
}
