//! Connection-sync wire format and the sender/receiver machines.
//!
//! The input scripts a director (`sync::Sender`) and a standby
//! (`sync::Receiver`) under a simulated clock, joined by a channel that
//! loses, duplicates and reorders datagrams as the input says, while an
//! attacker injects raw datagrams (through `SyncMessage::parse`, like the
//! daemon) and well-signed messages with fuzzed fields on either side. The
//! standby installs what it receives into a `forward::Engine`. Checked
//! besides "no panic": every message either machine emits fits in
//! `MAX_DATAGRAM` and parses back to itself, and any tampered datagram is
//! rejected.
#![no_main]

use duet::forward::{
    BackendSnap, ConnEntry, Engine, PersistEntry, Scheduler, ServiceSnap, Snapshot, TcpState,
    Timeouts,
};
use duet::sync::{Installs, Receiver, Sender};
use duet::wire::frame::FlowKey;
use duet::wire::sync::{Ack, Batch, ConnRecord, Hello, PersistRecord, SyncMessage, MAX_DATAGRAM};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &[u8] = b"duet-fuzz-key-0123456789abcdef";
const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

fn addr(u: &mut Unstructured) -> Result<Ipv4Addr> {
    Ok(if u.ratio(3, 4)? {
        Ipv4Addr::new(198, 18, 0, u.int_in_range(1..=3)?)
    } else {
        Ipv4Addr::from(u.arbitrary::<u32>()?)
    })
}

fn proto(u: &mut Unstructured) -> Result<u8> {
    Ok(if u.arbitrary()? { 6 } else { 17 })
}

fn state(u: &mut Unstructured) -> Result<TcpState> {
    Ok(TcpState::from_u8(u.int_in_range(1..=6)?).unwrap_or(TcpState::Udp))
}

fn structured(u: &mut Unstructured) -> Result<SyncMessage> {
    let small = |u: &mut Unstructured| -> Result<u64> {
        Ok(if u.ratio(7, 8)? {
            u.int_in_range(0..=8)?
        } else {
            u.arbitrary()?
        })
    };
    Ok(match u.int_in_range(0..=2u8)? {
        0 => SyncMessage::Hello(Hello {
            boot_id: small(u)?,
            stream_id: small(u)?,
            applied_seq: small(u)?,
        }),
        1 => SyncMessage::Ack(Ack {
            stream_id: small(u)?,
            seq: small(u)?,
        }),
        _ => {
            let nc = u.int_in_range(0..=8usize)?;
            let np = u.int_in_range(0..=4usize)?;
            let mut conns = Vec::new();
            for _ in 0..nc {
                conns.push(ConnRecord {
                    proto: proto(u)?,
                    src: addr(u)?,
                    sport: u.arbitrary()?,
                    dst: if u.ratio(7, 8)? { VIP } else { addr(u)? },
                    dport: if u.arbitrary()? { 80 } else { u.arbitrary()? },
                    backend: addr(u)?,
                    state: state(u)?,
                    remaining_ms: u.arbitrary()?,
                });
            }
            let mut persists = Vec::new();
            for _ in 0..np {
                persists.push(PersistRecord {
                    proto: proto(u)?,
                    vip: if u.ratio(7, 8)? { VIP } else { addr(u)? },
                    port: if u.arbitrary()? { 80 } else { u.arbitrary()? },
                    client: addr(u)?,
                    backend: addr(u)?,
                    remaining_ms: u.arbitrary()?,
                });
            }
            SyncMessage::Batch(Batch {
                stream_id: small(u)?.max(1),
                seq: small(u)?.max(1),
                full_snapshot_part: u.arbitrary()?,
                last_part: u.arbitrary()?,
                conns,
                persists,
            })
        }
    })
}

fn entries(u: &mut Unstructured, now: Instant) -> Result<(Vec<ConnEntry>, Vec<PersistEntry>)> {
    let mut conns = Vec::new();
    for _ in 0..u.int_in_range(0..=80usize)? {
        conns.push(ConnEntry {
            key: FlowKey {
                proto: proto(u)?,
                src: Ipv4Addr::from(u.arbitrary::<u32>()?),
                sport: u.arbitrary()?,
                dst: VIP,
                dport: 80,
            },
            backend: addr(u)?,
            state: state(u)?,
            expires: now + Duration::from_millis(u.int_in_range(0..=900_000)?),
        });
    }
    let mut persists = Vec::new();
    for _ in 0..u.int_in_range(0..=8usize)? {
        persists.push(PersistEntry {
            vip: VIP,
            proto: proto(u)?,
            port: 80,
            client: Ipv4Addr::from(u.arbitrary::<u32>()?),
            backend: addr(u)?,
            expires: now + Duration::from_millis(u.int_in_range(0..=600_000)?),
        });
    }
    Ok((conns, persists))
}

/// Emits `msg`, checks size and round trip, and returns the datagram.
fn wire(msg: &SyncMessage) -> Vec<u8> {
    let mut buf = Vec::new();
    msg.emit(KEY, &mut buf);
    assert!(
        buf.len() <= MAX_DATAGRAM,
        "sync datagram of {} bytes",
        buf.len()
    );
    let back = SyncMessage::parse(&buf, KEY).expect("own sync message does not parse");
    assert_eq!(&back, msg, "sync message does not round-trip");
    buf
}

fn standby_engine() -> Engine {
    let b = |i: u8, local| BackendSnap {
        name: format!("web{i}"),
        addr: Ipv4Addr::new(198, 18, 0, i),
        mac: [2, 0, 0, 0, 0, i],
        weight: 1,
        up: true,
        local,
        fallback: false,
    };
    let svc = |proto| ServiceSnap {
        vip: VIP,
        proto,
        port: 80,
        scheduler: Scheduler::Rr,
        persistence: Some(Duration::from_secs(600)),
        persist_mask: Ipv4Addr::BROADCAST,
        backends: vec![b(1, false), b(2, true)],
    };
    let snap = Snapshot {
        generation: 1,
        vips: vec![VIP],
        services: vec![svc(6), svc(17)],
        proxy: Vec::new(),
    };
    Engine::new(Arc::new(snap), 256, Timeouts::default())
}

struct World {
    now: Instant,
    tx: Sender,
    rx: Receiver,
    engine: Engine,
    to_standby: Vec<Vec<u8>>,
    to_director: Vec<Vec<u8>>,
}

impl World {
    fn install(&mut self, out: Installs) {
        for c in out.conns {
            let _ = self.engine.install(self.now, c);
        }
        for p in out.persists {
            let _ = self.engine.install_persist(self.now, p);
        }
    }

    fn deliver_standby(&mut self, buf: &[u8]) {
        if let Ok(m) = SyncMessage::parse(buf, KEY) {
            let mut out = Installs::default();
            self.rx.handle(self.now, &m, &mut out);
            self.install(out);
        }
    }

    fn deliver_director(&mut self, buf: &[u8]) {
        if let Ok(m) = SyncMessage::parse(buf, KEY) {
            self.tx.handle(self.now, &m);
        }
    }

    fn pump(&mut self) {
        for _ in 0..64 {
            let Some(m) = self.tx.poll_transmit(self.now) else {
                break;
            };
            self.to_standby.push(wire(&m));
        }
        for _ in 0..64 {
            let Some(m) = self.rx.poll_transmit(self.now) else {
                break;
            };
            self.to_director.push(wire(&m));
        }
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let start = Instant::now();
    let mut w = World {
        now: start,
        tx: Sender::new(7, start),
        rx: Receiver::new(9, start),
        engine: standby_engine(),
        to_standby: Vec::new(),
        to_director: Vec::new(),
    };
    let mut steps = 0;
    while !u.is_empty() && steps < 400 {
        steps += 1;
        match u.int_in_range(0..=9u8)? {
            0 => {
                let len = u.int_in_range(0..=400usize)?;
                let raw = u.bytes(len)?.to_vec();
                if u.arbitrary()? {
                    w.deliver_standby(&raw);
                } else {
                    w.deliver_director(&raw);
                }
            }
            1 => {
                let m = structured(u)?;
                let mut buf = Vec::new();
                m.emit(KEY, &mut buf);
                if u.ratio(1, 6)? && !buf.is_empty() {
                    let i = u.int_in_range(0..=buf.len() - 1)?;
                    if u.arbitrary()? {
                        buf.truncate(i);
                    } else {
                        buf[i] ^= 0x80;
                    }
                    assert!(
                        SyncMessage::parse(&buf, KEY).is_err(),
                        "tampered sync accepted"
                    );
                } else if u.arbitrary()? {
                    w.deliver_standby(&buf);
                } else {
                    w.deliver_director(&buf);
                }
            }
            2 | 3 => {
                w.now += Duration::from_millis(u.int_in_range(0..=1500)?);
                w.pump();
            }
            4 | 5 => {
                // The channel: each queued datagram is lost, delivered, or
                // delivered twice; the order is reversed sometimes.
                let reverse: bool = u.arbitrary()?;
                let mut to_s = std::mem::take(&mut w.to_standby);
                let mut to_d = std::mem::take(&mut w.to_director);
                if reverse {
                    to_s.reverse();
                    to_d.reverse();
                }
                for d in to_s {
                    for _ in 0..u.int_in_range(0..=2u8)? {
                        w.deliver_standby(&d);
                    }
                }
                for d in to_d {
                    for _ in 0..u.int_in_range(0..=2u8)? {
                        w.deliver_director(&d);
                    }
                }
                w.pump();
            }
            6 => {
                let (c, p) = entries(u, w.now)?;
                w.tx.queue(w.now, &c, &p);
            }
            7 => {
                if w.tx.wants_snapshot() || u.ratio(1, 4)? {
                    let (c, p) = entries(u, w.now)?;
                    w.tx.start_snapshot(w.now, c, p);
                }
            }
            8 => {
                // Standby restart: a new boot id and an empty table.
                w.rx = Receiver::new(u.int_in_range(10..=20)?, w.now);
                w.engine = standby_engine();
            }
            _ => {
                let _ = (
                    w.tx.caught_up(),
                    w.tx.lag(w.now),
                    w.tx.position(),
                    w.tx.stats(),
                );
                let _ = (
                    w.rx.synced(),
                    w.rx.has_snapshot(),
                    w.rx.position(),
                    w.rx.stats(),
                );
                let _ = (w.tx.poll_timeout(), w.rx.poll_timeout());
                w.engine.expire(w.now, 64);
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = SyncMessage::parse(data, KEY);
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
