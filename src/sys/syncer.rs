//! The connection-sync driver: one thread with its own UDP socket that runs
//! the director's `sync::Sender` or the standby's `sync::Receiver`,
//! depending on the role, and trades entries with the data-plane thread
//! through `Shared::sync` (the hot path never waits on the network).
use crate::sync::{self, Installs, Receiver, Sender};
use crate::wire::envelope::Keys;
use crate::wire::sync::{SyncMessage, MAX_DATAGRAM};
use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::dataplane::Shared;

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

fn run(p: Params, sock: UdpSocket, shared: Arc<Shared>) {
    let now = Instant::now();
    let mut sender = Sender::new(p.boot_id, now);
    let mut receiver = Receiver::new(p.boot_id, now);
    let mut buf = vec![0u8; MAX_DATAGRAM + 64];
    let mut out = Vec::with_capacity(MAX_DATAGRAM + 64);
    let mut installs = Installs::default();
    let mut conns = Vec::new();
    let mut persists = Vec::new();
    let mut rejected = 0u64;
    let mut was_director = false;
    while !shared.stopping() {
        let director = shared.is_active();
        if was_director && !director {
            // A former director follows the new one's stream from scratch
            // (and says hello quickly until it has the snapshot).
            receiver = Receiver::new(p.boot_id, Instant::now());
        }
        was_director = director;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from.ip() == p.peer.ip() => {
                let now = Instant::now();
                let parsed = {
                    let keys = p.keys.read().unwrap_or_else(|e| e.into_inner());
                    SyncMessage::parse_with(&buf[..n], &keys)
                };
                match parsed {
                    Ok(msg @ SyncMessage::Batch(_)) if director => {
                        // A predecessor still stepping down (make-before-
                        // break) creates flows until the LAN has moved the
                        // virtual MAC; following its stream a little longer
                        // brings those here, so their next packets find an
                        // entry instead of being scheduled afresh.
                        receiver.handle(now, &msg, &mut installs)
                    }
                    Ok(msg) if director => sender.handle(now, &msg),
                    Ok(msg) => receiver.handle(now, &msg, &mut installs),
                    Err(e) => {
                        rejected += 1;
                        log::debug!("sync datagram from {from} rejected: {e}");
                    }
                }
            }
            Ok((_, from)) => {
                rejected += 1;
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
        let mut ex = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
        if director {
            if let Some((c, ps)) = ex.snapshot.take() {
                sender.start_snapshot(now, c, ps);
            }
            std::mem::swap(&mut conns, &mut ex.conns);
            std::mem::swap(&mut persists, &mut ex.persists);
            if sender.wants_snapshot() {
                ex.want_snapshot = true;
            }
            drop(ex);
            if !conns.is_empty() || !persists.is_empty() {
                sender.queue(now, &conns, &persists);
                conns.clear();
                persists.clear();
            }
            while let Some(m) = sender.poll_transmit(now) {
                send(&sock, &m, &p, &mut out);
            }
            let mut ex = shared.sync.lock().unwrap_or_else(|e| e.into_inner());
            ex.installs.conns.append(&mut installs.conns);
            ex.installs.persists.append(&mut installs.persists);
            drop(ex);
            while let Some(m) = receiver.poll_transmit(now) {
                if matches!(m, SyncMessage::Ack(_)) {
                    send(&sock, &m, &p, &mut out);
                }
            }
        } else {
            ex.installs.conns.append(&mut installs.conns);
            ex.installs.persists.append(&mut installs.persists);
            drop(ex);
            while let Some(m) = receiver.poll_transmit(now) {
                send(&sock, &m, &p, &mut out);
            }
        }
        let mut st = shared.sync_status.lock().unwrap_or_else(|e| e.into_inner());
        if director {
            let (entries, age) = sender.lag(now);
            st.lag_entries = entries;
            st.lag_ms = age.map(|d| d.as_millis() as u64);
            shared.set_sync_caught_up(sender.caught_up());
        } else {
            st.lag_entries = 0;
            st.lag_ms = None;
        }
        let (stream, seq) = if director {
            sender.position()
        } else {
            receiver.position()
        };
        st.position = sync::position(stream, seq);
        st.synced = receiver.synced();
        st.rejected = rejected;
        let peer_boot = st.peer_boot;
        drop(st);
        if peer_boot != 0 {
            sender.set_standby_boot(peer_boot);
            receiver.set_director_boot(peer_boot);
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
