//! Hot-path micro-benchmarks: frame classification, table hits, new flows,
//! expiry sweeps and Maglev rebuilds. Std-only timing (no criterion), run
//! with `cargo bench --bench forward`; needs `harness = false` in Cargo.toml.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet::forward::{BackendSnap, Engine, Scheduler, ServiceSnap, Snapshot, Timeouts};
use duet::wire::frame::{classify, rewrite_macs, Classified, FlowKey, TCP_ACK, TCP_SYN};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

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
        services: vec![ServiceSnap {
            proto: 6,
            port: 80,
            scheduler,
            persistence: None,
            persist_mask: Ipv4Addr::BROADCAST,
            backends,
        }],
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

/// A 54-byte TCP SYN to the VIP (Ethernet + IPv4 + TCP, no options).
fn syn_frame() -> Vec<u8> {
    let mut f = vec![0u8; 54];
    f[12] = 0x08;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&40u16.to_be_bytes());
    f[23] = 6;
    f[26..30].copy_from_slice(&[198, 51, 100, 1]);
    f[30..34].copy_from_slice(&VIP.octets());
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&80u16.to_be_bytes());
    f[46] = 0x50;
    f[47] = TCP_SYN;
    f
}

fn report(name: &str, ops: u64, elapsed: Duration) {
    let ns = elapsed.as_nanos() as f64 / ops as f64;
    println!("{name:<40} {ns:>10.1} ns/op  ({ops} ops)");
}

fn main() {
    let frame = syn_frame();
    let mut mframe = frame.clone();
    let n = 2_000_000u64;
    let t = Instant::now();
    for _ in 0..n {
        let c = classify(black_box(&frame), VIP);
        debug_assert!(matches!(c, Ok(Classified::ToVip { .. })));
        black_box(c).ok();
    }
    report("classify tcp syn", n, t.elapsed());

    let t = Instant::now();
    for i in 0..n {
        rewrite_macs(black_box(&mut mframe), [2, 0, 0, 0, 0, i as u8], [2; 6]);
    }
    report("rewrite_macs", n, t.elapsed());

    let flows = 100_000u32;
    let now = Instant::now();
    for sched in [Scheduler::Wlc, Scheduler::Mh] {
        let mut e = Engine::new(snapshot(1, sched, 10), 1 << 20, Timeouts::default());
        let t = Instant::now();
        for i in 0..flows {
            black_box(e.decide(now, &key(i), TCP_SYN, 74));
        }
        report(
            &format!("decide new flow ({sched}, 10 backends)"),
            flows.into(),
            t.elapsed(),
        );
        let rounds = 20u32;
        let t = Instant::now();
        for _ in 0..rounds {
            for i in 0..flows {
                black_box(e.decide(now, &key(i), TCP_ACK, 1514));
            }
        }
        report(
            &format!("decide table hit ({sched}, {flows} flows)"),
            u64::from(flows * rounds),
            t.elapsed(),
        );
        let t = Instant::now();
        let mut removed = 0;
        while removed < flows as usize {
            removed += e.expire(now + Duration::from_secs(1000), 4096);
        }
        report("expire sweep per entry", flows.into(), t.elapsed());
    }

    let mut e = Engine::new(snapshot(1, Scheduler::Mh, 10), 1024, Timeouts::default());
    let t = Instant::now();
    for g in 0..20u64 {
        e.set_snapshot(snapshot(g + 2, Scheduler::Mh, 10 + (g % 2) as u8));
    }
    report("set_snapshot with maglev rebuild", 20, t.elapsed());
}
