//! Crashes found by fuzzing (fuzz/, issue 10), each reduced to the smallest
//! input that shows it. The raw fuzzer inputs are in fuzz/regressions/.
use duet::election::{Election, Params, Role};
use duet::wire::heartbeat::{HeartbeatRepr, WireRole};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn params() -> Params {
    Params {
        me: ME,
        peers: vec![PEER],
        cluster_id: 1,
        boot_id: 1,
        nonce_seed: 7,
        priority: 150,
        interval: Duration::from_millis(100),
        dead_after: Duration::from_secs(1),
        preempt: false,
        ping_configured: false,
    }
}

fn heartbeat(term: u64, role: WireRole) -> HeartbeatRepr {
    HeartbeatRepr {
        cluster_id: 1,
        node: PEER,
        boot_id: 1,
        seq: 1,
        term,
        priority: 100,
        effective_priority: 100,
        role,
        backends_up: 0,
        backends_total: 0,
        sync_pos: 0,
        challenge: 0,
        echo: 0,
    }
}

/// Hand `hb` to `e` the way a live peer gets in: its first heartbeat draws
/// a challenge, and `hb` (one sequence number later) echoes it.
fn admit(e: &mut Election, now: Instant, hb: HeartbeatRepr) {
    let _ = e.handle_heartbeat(
        now,
        &HeartbeatRepr {
            seq: hb.seq - 1,
            ..hb.clone()
        },
    );
    let mut nonce = 0;
    while let Some((_, out)) = e.poll_transmit() {
        nonce = out.challenge;
    }
    let _ = e.handle_heartbeat(now, &HeartbeatRepr { echo: nonce, ..hb });
}

/// fuzz/regressions/heartbeat/term-overflow: an authenticated heartbeat
/// carrying term u64::MAX. The node adopts the highest term seen, then
/// takes `term + 1` on becoming director: `attempt to add with overflow` in
/// `Election::change_role` (src/election/mod.rs, `self.term += 1`) in debug
/// builds, a wrap to term 0 in release builds. A peer with the key (a bug,
/// a corrupted store) must not be able to crash or rewind the election.
#[test]
fn term_at_u64_max_does_not_overflow() {
    let now = Instant::now();
    let mut e = Election::new(params(), now);
    // A lower-ranked standby peer: we win the election at once.
    admit(
        &mut e,
        now,
        HeartbeatRepr {
            seq: 2,
            ..heartbeat(u64::MAX, WireRole::Standby)
        },
    );
    e.handle_timeout(now + Duration::from_millis(10));
    assert_eq!(e.role(), Role::Director);
    assert!(
        e.term() >= u64::MAX - 1,
        "term went backwards: {}",
        e.term()
    );
}

/// Same overflow through the split-brain path (`handle_heartbeat`: the
/// winner bumps its term again).
#[test]
fn split_brain_at_u64_max_does_not_overflow() {
    let now = Instant::now();
    let mut e = Election::new(params(), now);
    let later = now + Duration::from_secs(2);
    e.handle_timeout(later);
    assert_eq!(e.role(), Role::Director);
    let mut hb = heartbeat(u64::MAX, WireRole::Director);
    hb.seq = 2;
    admit(&mut e, later, hb);
    assert_eq!(e.role(), Role::Director, "the higher-ranked node yielded");
    assert!(
        e.term() >= u64::MAX - 1,
        "term went backwards: {}",
        e.term()
    );
}
