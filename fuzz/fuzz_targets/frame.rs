//! Frame classifier and forwarding decision, as the data plane runs them.
//!
//! The input is split into frames (a 2-byte length prefix each) that go, in
//! order, through `frame::classify` and, for frames to the VIP, through one
//! `forward::Engine` (`decide`, or `decide_related` for ICMP errors) with a
//! simulated clock that advances between frames, so the connection table,
//! persistence templates and expiry all see fuzzed traffic. The table is
//! small so that "full" is reached. Checked besides "no panic": a forward
//! verdict always names a backend of the snapshot, and the table never holds
//! more entries than its capacity.
#![no_main]

use duet::forward::{BackendSnap, Engine, Scheduler, ServiceSnap, Snapshot, Timeouts, Verdict};
use duet::wire::frame::{classify, Classified};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const CAPACITY: usize = 64;
const SCHEDULERS: [Scheduler; 4] = [Scheduler::Rr, Scheduler::Wrr, Scheduler::Lc, Scheduler::Wlc];

fn backend(i: u8, weight: u32, up: bool, local: bool, fallback: bool) -> BackendSnap {
    BackendSnap {
        name: format!("b{i}"),
        addr: Ipv4Addr::new(198, 18, 0, i),
        mac: [2, 0, 0, 0, 0, i],
        weight,
        up,
        local,
        fallback,
    }
}

fn snapshot(sel: u8) -> Snapshot {
    // Not sh/mh: they build a 65,537-slot Maglev table per service, ~20 ms
    // under ASan and sancov, which would take nearly all of the run (the
    // fuzzer learns the selector at once). src/forward's unit tests cover
    // Maglev; everything after the scheduler's pick is shared.
    let sched = SCHEDULERS[(sel % 4) as usize];
    let persistence = (sel & 0x08 != 0).then(|| Duration::from_secs(600));
    let mask = if sel & 0x10 != 0 {
        Ipv4Addr::new(255, 255, 255, 0)
    } else {
        Ipv4Addr::BROADCAST
    };
    let svc = |proto, port| ServiceSnap {
        vip: VIP,
        proto,
        port,
        scheduler: sched,
        persistence,
        persist_mask: mask,
        backends: vec![
            backend(1, 1, true, true, false),
            backend(2, 2, sel & 0x20 == 0, false, false),
            backend(20, if sel & 0x40 != 0 { 0 } else { 3 }, true, false, false),
            backend(21, 1, true, false, true),
        ],
    };
    Snapshot {
        vips: vec![VIP],
        generation: 1,
        services: vec![svc(6, 80), svc(17, 5353)],
        proxy: Vec::new(),
    }
}

fn valid(addr: Ipv4Addr) -> bool {
    matches!(addr.octets(), [198, 18, 0, 1 | 2 | 20 | 21])
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one frame first: the classifier alone.
    let _ = classify(data, &[VIP]);

    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let start = Instant::now();
    let mut now = start;
    let mut engine = Engine::new(Arc::new(snapshot(sel)), CAPACITY, Timeouts::default());
    let mut n = 0u32;
    while rest.len() >= 3 && n < 256 {
        n += 1;
        let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        // Low bits of the length prefix also drive the clock: idle gaps of up
        // to ~17 minutes let every timeout (udp 300 s, tcp 900 s) expire.
        now += Duration::from_millis(u64::from(rest[2]) * u64::from(rest[2]) * 16);
        rest = &rest[3..];
        let len = len.min(rest.len());
        let (frame, tail) = rest.split_at(len);
        rest = tail;
        if let Ok(Classified::ToVip {
            key,
            tcp_flags,
            icmp_error,
        }) = classify(frame, &[VIP])
        {
            let v = if icmp_error {
                engine.decide_related(now, &key, frame.len())
            } else {
                engine.decide(now, &key, tcp_flags, frame.len())
            };
            if let Verdict::Forward { addr, .. } = v {
                assert!(valid(addr), "forwarded to {addr}, not a backend");
            }
        }
        if n.is_multiple_of(32) {
            // The snapshot changes under live flows, as health and drains do.
            engine.set_snapshot(Arc::new(snapshot(sel ^ (rest.len() as u8 & 0x60))));
            engine.expire(now, 32);
        }
        assert!(engine.len() <= CAPACITY, "table above capacity");
    }
    let _ = (
        engine.export(now),
        engine.export_persist(now),
        engine.counters(),
    );
});
