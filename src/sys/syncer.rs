//! The connection-sync driver: one thread with its own UDP socket that runs
//! the director's `sync::Sender` or the standby's `sync::Receiver`,
//! depending on the role, and trades entries with the data-plane thread
//! through `Shared::sync` (the hot path never waits on the network).
use crate::forward::{ConnEntry, PersistEntry};
use crate::sync::{self, Installs, Receiver, Sender};
use crate::wire::envelope::Keys;
use crate::wire::sync::{SyncMessage, SyncWireError, MAX_DATAGRAM};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::dataplane::{Shared, SyncExchange, SyncStatus};

pub struct Params {
    pub bind: SocketAddr,
    pub peer: SocketAddr,
    /// Shared with the control loop, which replaces them on reload.
    pub keys: Arc<RwLock<Keys>>,
    pub boot_id: u64,
}

pub fn spawn(p: Params, shared: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let sock = UdpSocket::bind(p.bind)?;
    sock.set_read_timeout(Some(Duration::from_millis(10)))?;
    std::thread::Builder::new()
        .name("duet-sync".into())
        .spawn(move || run(p, sock, shared))
}

/// What the sync thread decides, free of sockets and the clock: which
/// machine a message goes to for the role this node has now, what is
/// traded with the data plane, and what the status shows.
pub struct Driver {
    boot_id: u64,
    sender: Sender,
    receiver: Receiver,
    was_director: bool,
    installs: Installs,
    conns: Vec<ConnEntry>,
    persists: Vec<PersistEntry>,
    rejected: u64,
}

impl Driver {
    pub fn new(boot_id: u64, now: Instant) -> Driver {
        Driver {
            boot_id,
            sender: Sender::new(boot_id, now),
            receiver: Receiver::new(boot_id, now),
            was_director: false,
            installs: Installs::default(),
            conns: Vec::new(),
            persists: Vec::new(),
            rejected: 0,
        }
    }

    /// A datagram from the peer, parsed (and authenticated) or not.
    pub fn handle(
        &mut self,
        now: Instant,
        director: bool,
        msg: Result<SyncMessage, SyncWireError>,
    ) {
        match msg {
            Ok(msg @ SyncMessage::Batch(_)) if director => {
                // A predecessor still stepping down (make-before-break)
                // creates flows until the LAN has moved the virtual MAC;
                // following its stream a little longer brings those here,
                // so their next packets find an entry instead of being
                // scheduled afresh.
                self.receiver.handle(now, &msg, &mut self.installs)
            }
            Ok(msg) if director => self.sender.handle(now, &msg),
            Ok(msg) => self.receiver.handle(now, &msg, &mut self.installs),
            Err(e) => {
                self.rejected += 1;
                log::debug!("sync datagram rejected: {e}");
            }
        }
    }

    /// A datagram from anyone but the peer.
    pub fn reject_stranger(&mut self) {
        self.rejected += 1;
    }

    /// One turn: follows a role change, trades entries with the data plane
    /// through `ex`, and returns what to send, in order.
    pub fn turn(
        &mut self,
        now: Instant,
        director: bool,
        ex: &mut SyncExchange,
    ) -> Vec<SyncMessage> {
        if self.was_director && !director {
            // A former director follows the new one's stream from scratch
            // (and says hello quickly until it has the snapshot).
            self.receiver = Receiver::new(self.boot_id, now);
        }
        self.was_director = director;
        let mut out = Vec::new();
        ex.installs.conns.append(&mut self.installs.conns);
        ex.installs.persists.append(&mut self.installs.persists);
        if director {
            if let Some((c, ps)) = ex.snapshot.take() {
                self.sender.start_snapshot(now, c, ps);
            }
            std::mem::swap(&mut self.conns, &mut ex.conns);
            std::mem::swap(&mut self.persists, &mut ex.persists);
            if self.sender.wants_snapshot() {
                ex.want_snapshot = true;
            }
            if !self.conns.is_empty() || !self.persists.is_empty() {
                self.sender.queue(now, &self.conns, &self.persists);
                self.conns.clear();
                self.persists.clear();
            }
            while let Some(m) = self.sender.poll_transmit(now) {
                out.push(m);
            }
            // Of the predecessor's stream only acks go back.
            while let Some(m) = self.receiver.poll_transmit(now) {
                if matches!(m, SyncMessage::Ack(_)) {
                    out.push(m);
                }
            }
        } else {
            while let Some(m) = self.receiver.poll_transmit(now) {
                out.push(m);
            }
        }
        out
    }

    /// The status figures, and whether the standby has confirmed all sent
    /// (director); `peer_boot` from the verified heartbeats binds the
    /// streams to the peer's boot.
    pub fn status(&mut self, now: Instant, director: bool, st: &mut SyncStatus) -> bool {
        let caught_up = director && self.sender.caught_up();
        if director {
            let (entries, age) = self.sender.lag(now);
            st.lag_entries = entries;
            st.lag_ms = age.map(|d| d.as_millis() as u64);
        } else {
            st.lag_entries = 0;
            st.lag_ms = None;
        }
        let (stream, seq) = if director {
            self.sender.position()
        } else {
            self.receiver.position()
        };
        st.position = sync::position(stream, seq);
        st.synced = self.receiver.synced();
        st.rejected = self.rejected;
        if st.peer_boot != 0 {
            self.sender.set_standby_boot(st.peer_boot);
            self.receiver.set_director_boot(st.peer_boot);
        }
        caught_up
    }
}

fn run(p: Params, sock: UdpSocket, shared: Arc<Shared>) {
    let mut driver = Driver::new(p.boot_id, Instant::now());
    let mut buf = vec![0u8; MAX_DATAGRAM + 64];
    let mut out = Vec::with_capacity(MAX_DATAGRAM + 64);
    while !shared.stopping() {
        let director = shared.is_active();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from.ip() == p.peer.ip() => {
                let parsed = {
                    let keys = p.keys.read().unwrap_or_else(|e| e.into_inner());
                    SyncMessage::parse_with(&buf[..n], &keys)
                };
                driver.handle(Instant::now(), director, parsed);
            }
            Ok((_, from)) => {
                driver.reject_stranger();
                log::debug!("sync datagram from unknown {from} dropped");
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => log::debug!("sync receive: {e}"),
        }
        let now = Instant::now();
        let msgs = {
            let mut ex = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            driver.turn(now, director, &mut ex)
        };
        for m in &msgs {
            send(&sock, m, &p, &mut out);
        }
        let caught_up = {
            let mut st = shared.sync_status.lock().unwrap_or_else(|e| e.into_inner());
            driver.status(now, director, &mut st)
        };
        if director {
            shared.set_sync_caught_up(caught_up);
        }
    }
}

fn send(sock: &UdpSocket, m: &SyncMessage, p: &Params, out: &mut Vec<u8>) {
    out.clear();
    {
        let keys = p.keys.read().unwrap_or_else(|e| e.into_inner());
        m.emit(keys.signing(), out);
    }
    if let Err(e) = sock.send_to(out, p.peer) {
        log::debug!("sync send to {}: {e}", p.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::FlowKey;
    use crate::wire::state::TcpState;
    use std::net::Ipv4Addr;

    const STEP: Duration = Duration::from_millis(10);

    fn entry(i: u32, expires: Instant) -> ConnEntry {
        ConnEntry {
            key: FlowKey {
                proto: FlowKey::TCP,
                src: Ipv4Addr::from(0xc633_0000 + i),
                sport: 1024 + i as u16,
                dst: Ipv4Addr::new(198, 18, 0, 100),
                dport: 80,
            },
            backend: Ipv4Addr::new(198, 18, 0, 2),
            state: TcpState::Established,
            expires,
        }
    }

    /// Two nodes' drivers, each with its data plane's exchange and status,
    /// their messages carried through the wire format with the pair's key.
    struct Pair {
        now: Instant,
        d: [Driver; 2],
        ex: [SyncExchange; 2],
        st: [SyncStatus; 2],
        director: [bool; 2],
        caught_up: [bool; 2],
    }

    const KEY: &[u8] = b"0123456789abcdef0123";

    impl Pair {
        fn new() -> Pair {
            let now = Instant::now();
            let mut p = Pair {
                now,
                d: [Driver::new(11, now), Driver::new(22, now)],
                ex: Default::default(),
                st: Default::default(),
                director: [true, false],
                caught_up: [false; 2],
            };
            // The heartbeats' challenge verified each side's boot.
            p.st[0].peer_boot = 22;
            p.st[1].peer_boot = 11;
            p
        }

        fn step(&mut self) {
            self.now += STEP;
            let mut wire = [Vec::new(), Vec::new()];
            for i in 0..2 {
                for m in self.d[i].turn(self.now, self.director[i], &mut self.ex[i]) {
                    let mut bytes = Vec::new();
                    m.emit(KEY, &mut bytes);
                    wire[1 - i].push(bytes);
                }
                self.caught_up[i] = self.d[i].status(self.now, self.director[i], &mut self.st[i]);
            }
            for (i, datagrams) in wire.into_iter().enumerate() {
                for b in datagrams {
                    let parsed = SyncMessage::parse(&b, KEY);
                    self.d[i].handle(self.now, self.director[i], parsed);
                }
            }
        }

        fn until(&mut self, f: impl Fn(&Pair) -> bool) -> bool {
            for _ in 0..300 {
                if f(self) {
                    return true;
                }
                self.step();
            }
            false
        }

        /// Answers a snapshot request of the data plane on node `i`.
        fn serve_snapshot(&mut self, i: usize, table: Vec<ConnEntry>) {
            if std::mem::take(&mut self.ex[i].want_snapshot) {
                self.ex[i].snapshot = Some((table, Vec::new()));
            }
        }
    }

    #[test]
    fn changes_reach_the_standby_and_are_confirmed() {
        let mut p = Pair::new();
        let far = p.now + Duration::from_secs(900);
        // The standby's hello asks the director for its table (empty here).
        assert!(p.until(|p| p.ex[0].want_snapshot));
        p.serve_snapshot(0, Vec::new());
        assert!(p.until(|p| p.caught_up[0]));
        p.ex[0].conns = (0..3).map(|i| entry(i, far)).collect();
        assert!(p.until(|p| p.caught_up[0] && p.ex[1].installs.conns.len() == 3));
        // Both report the same stream position: the handover gate.
        assert!(sync::position_covers(p.st[1].position, p.st[0].position));
        assert_eq!(p.st[0].lag_entries, 0);
        assert_eq!(p.st[1].synced, 3);
    }

    #[test]
    fn a_late_standby_gets_the_whole_table() {
        let mut p = Pair::new();
        let far = p.now + Duration::from_secs(900);
        let table: Vec<ConnEntry> = (0..500).map(|i| entry(i, far)).collect();
        assert!(p.until(|p| p.ex[0].want_snapshot));
        p.serve_snapshot(0, table);
        assert!(p.until(|p| p.ex[1].installs.conns.len() == 500 && p.caught_up[0]));
    }

    #[test]
    fn after_a_role_swap_the_new_director_streams_to_the_old() {
        let mut p = Pair::new();
        let far = p.now + Duration::from_secs(900);
        assert!(p.until(|p| p.ex[0].want_snapshot));
        p.serve_snapshot(0, Vec::new());
        assert!(p.until(|p| p.caught_up[0]));
        p.director = [false, true];
        // The new director is asked for its table by the old one, which
        // follows its stream from scratch.
        assert!(p.until(|p| p.ex[1].want_snapshot));
        p.serve_snapshot(1, vec![entry(7, far)]);
        assert!(p.until(|p| p.ex[0].installs.conns.len() == 1 && p.caught_up[1]));
        assert_eq!(p.ex[0].installs.conns[0].key, entry(7, far).key);
    }

    #[test]
    fn a_director_follows_its_stepping_down_predecessor() {
        let mut p = Pair::new();
        let far = p.now + Duration::from_secs(900);
        assert!(p.until(|p| p.ex[0].want_snapshot));
        p.serve_snapshot(0, Vec::new());
        assert!(p.until(|p| p.caught_up[0]));
        // Both direct for a moment (make-before-break): the old director's
        // last flows still reach the new one.
        p.director = [true, true];
        p.ex[0].conns = vec![entry(9, far)];
        assert!(p.until(|p| p.ex[1]
            .installs
            .conns
            .iter()
            .any(|e| e.key == entry(9, far).key)));
    }

    #[test]
    fn garbage_and_strangers_are_counted() {
        let mut p = Pair::new();
        p.d[1].handle(p.now, false, SyncMessage::parse(b"not a sync message", KEY));
        p.d[1].reject_stranger();
        p.step();
        assert_eq!(p.st[1].rejected, 2);
    }
}
