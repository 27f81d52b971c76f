//! Hot-path micro-benchmarks of the per-packet work of the director, without
//! syscalls: parse (classify), lookup (connection-table hit), schedule (new
//! flow), rewrite (MAC swap) and the whole path as the data-plane thread runs
//! it (classify + decide + rewrite, over many flows so the table does not sit
//! in L1), plus expiry sweeps and Maglev rebuilds. Std-only timing (no
//! criterion), run with `cargo bench --bench forward` (`harness = false`).
//!
//! Each case reports the best of a few repetitions, timed in CPU time of this
//! thread (`CLOCK_THREAD_CPUTIME_ID`), so time slices lost to other processes
//! on a shared machine do not count; wall time is printed alongside. The last line, `BENCH_JSON {...}`, carries
//! every figure for `make bench` (bench/run.py).

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet::forward::{BackendSnap, Engine, Scheduler, ServiceSnap, Snapshot, Timeouts, Verdict};
use duet::wire::frame::{classify, rewrite_macs, Classified, FlowKey, TCP_ACK, TCP_SYN};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const OWN_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
/// Flows in the table for lookups and for the whole path.
const FLOWS: u32 = 100_000;
const REPS: usize = 5;

fn snapshot(generation: u64, scheduler: Scheduler, backends: u8) -> Arc<Snapshot> {
    let backends = (1..=backends)
        .map(|i| BackendSnap {
            name: format!("b{i}"),
            addr: Ipv4Addr::new(10, 0, 0, i),
            mac: [2, 0, 0, 0, 0, i],
            weight: u32::from(i % 3) + 1,
            up: true,
            local: false,
            fallback: false,
        })
        .collect();
    Arc::new(Snapshot {
        generation,
        vips: vec![VIP],
        services: vec![ServiceSnap {
            vip: VIP,
            proto: 6,
            port: 80,
            scheduler,
            persistence: None,
            persist_mask: Ipv4Addr::BROADCAST,
            backends,
        }],
        proxy: Vec::new(),
    })
}

fn key(i: u32) -> FlowKey {
    FlowKey {
        proto: 6,
        src: Ipv4Addr::from(0x6400_0000 + i),
        sport: 1024 + (i % 60_000) as u16,
        dst: VIP,
        dport: 80,
    }
}

/// A 60-byte (minimum Ethernet) TCP segment of flow `i` to the VIP.
fn tcp_frame(i: u32, flags: u8) -> [u8; 60] {
    let k = key(i);
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0x00, 0x00, 0x5e, 0x00, 0x01, 0x07]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xfe]);
    f[12] = 0x08;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&k.src.octets());
    f[30..34].copy_from_slice(&VIP.octets());
    f[34..36].copy_from_slice(&k.sport.to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f[46] = 0x50;
    f[47] = flags;
    f
}

struct Case {
    name: String,
    ns: f64,
    wall_ns: f64,
}

/// CPU time consumed by this thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time and wall time of one timed section.
#[derive(Clone, Copy)]
struct Timer {
    cpu: Duration,
    wall: Instant,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            cpu: thread_cpu(),
            wall: Instant::now(),
        }
    }

    fn stop(self) -> (Duration, Duration) {
        (thread_cpu() - self.cpu, self.wall.elapsed())
    }
}

type Best = (Duration, Duration);

fn better(a: Best, b: Best) -> Best {
    if b.0 < a.0 {
        b
    } else {
        a
    }
}

const NONE: Best = (Duration::MAX, Duration::MAX);

#[derive(Default)]
struct Report {
    cases: Vec<Case>,
}

impl Report {
    /// Runs `body` (which does `ops` operations) `REPS` times, keeps the best.
    fn run(&mut self, name: &str, ops: u64, mut body: impl FnMut()) -> f64 {
        let mut best = NONE;
        for _ in 0..REPS {
            let t = Timer::start();
            body();
            best = better(best, t.stop());
        }
        self.record(name, ops, best)
    }

    fn record(&mut self, name: &str, ops: u64, (cpu, wall): Best) -> f64 {
        let ns = cpu.as_nanos() as f64 / ops as f64;
        let wall_ns = wall.as_nanos() as f64 / ops as f64;
        println!(
            "{name:<56} {ns:>9.1} ns/op  {:>7.2} Mops/s  (wall {wall_ns:.1} ns, {ops} ops)",
            1e3 / ns
        );
        self.cases.push(Case {
            name: name.to_string(),
            ns,
            wall_ns,
        });
        ns
    }
}

/// What the data-plane thread does per frame (src/dataplane/thread.rs `handle`),
/// minus the socket: classify, decide, rewrite. Returns the bytes to send.
fn whole_path(engine: &mut Engine, now: Instant, frame: &mut [u8]) -> usize {
    match classify(frame, &[VIP]) {
        Ok(Classified::ToVip { key, tcp_flags, .. }) => {
            let len = frame.len();
            match engine.decide(now, &key, tcp_flags, len) {
                Verdict::Forward {
                    mac, local: false, ..
                } => {
                    rewrite_macs(frame, mac, OWN_MAC);
                    len
                }
                _ => 0,
            }
        }
        _ => 0,
    }
}

fn main() {
    let mut r = Report::default();
    let n = 2_000_000u64;

    // Frames of many flows, visited in a scattered order as they would
    // arrive interleaved on a busy director.
    let order: Vec<u32> = {
        let mut rng = fastrand::Rng::with_seed(9);
        let mut v: Vec<u32> = (0..FLOWS).collect();
        rng.shuffle(&mut v);
        v
    };
    let mut acks: Vec<[u8; 60]> = order.iter().map(|&i| tcp_frame(i, TCP_ACK)).collect();
    let syns: Vec<[u8; 60]> = (0..FLOWS).map(|i| tcp_frame(i, TCP_SYN)).collect();

    let one = tcp_frame(1, TCP_SYN);
    let parse = r.run("parse: classify tcp (one frame)", n, || {
        for _ in 0..n {
            black_box(classify(black_box(&one), &[VIP])).ok();
        }
    });
    r.run(
        &format!("parse: classify tcp ({FLOWS} frames)"),
        u64::from(FLOWS) * 10,
        || {
            for _ in 0..10 {
                for f in &acks {
                    black_box(classify(black_box(f), &[VIP])).ok();
                }
            }
        },
    );

    let mut mframe = one;
    let rewrite = r.run("rewrite: rewrite_macs", n, || {
        for i in 0..n {
            rewrite_macs(black_box(&mut mframe), [2, 0, 0, 0, 0, i as u8], OWN_MAC);
        }
    });

    let now = Instant::now();
    let mut lookup = 0.0;
    let mut schedule = 0.0;
    for sched in [Scheduler::Wlc, Scheduler::Mh, Scheduler::Rr] {
        // New flows: a fresh engine per repetition (a flow is new only once).
        let mut best = NONE;
        let mut e = None;
        for _ in 0..REPS {
            let mut fresh = Engine::new(snapshot(1, sched, 10), 1 << 20, Timeouts::default());
            let t = Timer::start();
            for i in 0..FLOWS {
                black_box(fresh.decide(now, &key(i), TCP_SYN, 60));
            }
            best = better(best, t.stop());
            e = Some(fresh);
        }
        let ns = r.record(
            &format!("schedule: new flow ({sched}, 10 backends)"),
            FLOWS.into(),
            best,
        );
        if sched == Scheduler::Wlc {
            schedule = ns;
        }
        let mut e = e.expect("REPS > 0");
        let ns = r.run(
            &format!("lookup: table hit ({sched}, {FLOWS} flows)"),
            u64::from(FLOWS) * 10,
            || {
                for _ in 0..10 {
                    for &i in &order {
                        black_box(e.decide(now, &key(i), TCP_ACK, 1514));
                    }
                }
            },
        );
        if sched == Scheduler::Wlc {
            lookup = ns;
        }
        let t = Timer::start();
        let mut removed = 0;
        while removed < FLOWS as usize {
            removed += e.expire(now + Duration::from_secs(1000), 4096);
        }
        r.record(
            &format!("expire: sweep per entry ({sched})"),
            FLOWS.into(),
            t.stop(),
        );
    }

    // The same lookups in a table sized for the flows it holds rather than
    // for the daemon's default 1M: how much of a hit is cache misses
    // spread over a sparse index.
    let mut small = Engine::new(
        snapshot(1, Scheduler::Wlc, 10),
        1 << 17,
        Timeouts::default(),
    );
    for i in 0..FLOWS {
        // Confirmed: 100k half-open flows would not fit the embryonic part.
        small.decide(now, &key(i), TCP_SYN, 60);
        small.decide(now, &key(i), TCP_ACK, 60);
    }
    r.run(
        &format!("lookup: table hit (wlc, {FLOWS} flows, capacity 128k)"),
        u64::from(FLOWS) * 10,
        || {
            for _ in 0..10 {
                for &i in &order {
                    black_box(small.decide(now, &key(i), TCP_ACK, 1514));
                }
            }
        },
    );
    drop(small);

    // The whole path on established flows (the common case) and on SYNs.
    let mut e = Engine::new(
        snapshot(1, Scheduler::Wlc, 10),
        1 << 20,
        Timeouts::default(),
    );
    for s in &syns {
        let mut f = *s;
        whole_path(&mut e, now, &mut f);
    }
    let whole = r.run(
        &format!("whole path: established ({FLOWS} flows)"),
        u64::from(FLOWS) * 10,
        || {
            let mut sent = 0usize;
            for _ in 0..10 {
                for f in acks.iter_mut() {
                    sent += whole_path(&mut e, now, f);
                }
            }
            black_box(sent);
        },
    );
    // Few flows, table and frames in cache: the compute part of the path.
    let hot_flows = 1000u32;
    let mut e = Engine::new(snapshot(1, Scheduler::Wlc, 10), 4096, Timeouts::default());
    for i in 0..hot_flows {
        let mut f = syns[i as usize];
        whole_path(&mut e, now, &mut f);
    }
    let mut hot: Vec<[u8; 60]> = (0..hot_flows).map(|i| tcp_frame(i, TCP_ACK)).collect();
    let whole_hot = r.run(
        &format!("whole path: established ({hot_flows} flows, cached)"),
        u64::from(hot_flows) * 1000,
        || {
            let mut sent = 0usize;
            for _ in 0..1000 {
                for f in hot.iter_mut() {
                    sent += whole_path(&mut e, now, f);
                }
            }
            black_box(sent);
        },
    );

    let mut best = NONE;
    for _ in 0..REPS {
        let mut fresh = Engine::new(
            snapshot(1, Scheduler::Wlc, 10),
            1 << 20,
            Timeouts::default(),
        );
        let mut frames = syns.clone();
        let t = Timer::start();
        let mut sent = 0usize;
        for f in frames.iter_mut() {
            sent += whole_path(&mut fresh, now, f);
        }
        best = better(best, t.stop());
        black_box(sent);
    }
    let whole_new = r.record("whole path: new flow (SYN, wlc)", FLOWS.into(), best);

    let mut e = Engine::new(snapshot(1, Scheduler::Mh, 10), 1024, Timeouts::default());
    let t = Timer::start();
    for g in 0..20u64 {
        e.set_snapshot(snapshot(g + 2, Scheduler::Mh, 10 + (g % 2) as u8));
    }
    r.record("control: set_snapshot with maglev rebuild", 20, t.stop());

    println!();
    println!(
        "whole path {whole:.1} ns/packet = {:.2} Mpps per core (established), \
         {whole_new:.1} ns = {:.2} Mpps (new flows); target <= 300 ns / >= 3 Mpps",
        1e3 / whole,
        1e3 / whole_new
    );
    let cases: Vec<serde_json::Value> = r
        .cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "ns_per_op": round1(c.ns),
                "wall_ns_per_op": round1(c.wall_ns),
            })
        })
        .collect();
    let json = serde_json::json!({
        "parse_ns": round1(parse),
        "lookup_ns": round1(lookup),
        "schedule_ns": round1(schedule),
        "rewrite_ns": round1(rewrite),
        "whole_path_ns": round1(whole),
        "whole_path_new_flow_ns": round1(whole_new),
        "whole_path_cached_ns": round1(whole_hot),
        "mpps_per_core_cached": round2(1e3 / whole_hot),
        "mpps_per_core": round2(1e3 / whole),
        "mpps_per_core_new_flows": round2(1e3 / whole_new),
        "flows": FLOWS,
        "timing": "best of 5, thread CPU time",
        "cases": cases,
    });
    println!("BENCH_JSON {json}");
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
