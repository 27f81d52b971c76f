//! Heartbeat wire parser and election state machine.
//!
//! The input is a script of operations on one `Election` (node 198.18.0.1,
//! peer 198.18.0.2) under a simulated clock: raw datagrams go through
//! `HeartbeatRepr::parse` exactly as the daemon does (authenticated ones into
//! `handle_heartbeat`, the rest into `note_auth_failure`); structured steps
//! build a correctly signed heartbeat from fuzzed fields so the state machine
//! sees far more than the few inputs that happen to carry a valid HMAC; they
//! often echo the challenge the machine last sent, so boots get verified.
//! Checked besides "no panic": every message the machine emits parses back to
//! itself, a leaving node never becomes director again, and after
//! `handle_timeout(now)` the next wake-up lies in the future (no busy loop).
#![no_main]

use duet::election::{Election, Params, Role};
use duet::wire::heartbeat::{HeartbeatRepr, WireRole};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const KEY: &[u8] = b"duet-fuzz-key-0123456789abcdef";
const ME: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLUSTER: u32 = 0x00c6_1200;

fn role(b: u8) -> WireRole {
    match b % 4 {
        0 => WireRole::Starting,
        1 => WireRole::Standby,
        2 => WireRole::Director,
        _ => WireRole::Leaving,
    }
}

fn structured(u: &mut Unstructured, last_challenge: u64) -> Result<HeartbeatRepr> {
    let node = match u.int_in_range(0..=3u8)? {
        0 | 1 => PEER,
        2 => ME,
        _ => Ipv4Addr::from(u.arbitrary::<u32>()?),
    };
    let total: u16 = u.arbitrary()?;
    let up = if total == 0 {
        0
    } else {
        u.int_in_range(0..=total)?
    };
    Ok(HeartbeatRepr {
        cluster_id: if u.ratio(1, 16)? {
            u.arbitrary()?
        } else {
            CLUSTER
        },
        node,
        // Small ranges make replays, stale boots and new boots all likely.
        boot_id: u.int_in_range(0..=4u64)?,
        seq: u.int_in_range(0..=64u64)?,
        term: if u.ratio(1, 8)? {
            u.arbitrary()?
        } else {
            u.int_in_range(0..=16)?
        },
        priority: u.arbitrary()?,
        effective_priority: u.arbitrary()?,
        role: role(u.arbitrary()?),
        backends_up: up,
        backends_total: total,
        sync_pos: u.arbitrary()?,
        challenge: if u.ratio(1, 4)? { u.arbitrary()? } else { 0 },
        echo: if u.ratio(3, 4)? {
            last_challenge
        } else {
            u.arbitrary()?
        },
    })
}

/// Drains what the machine sent; returns the last challenge in it, if any.
fn drain(e: &mut Election, left: bool, last_challenge: &mut u64) {
    while let Some((to, msg)) = e.poll_transmit() {
        if msg.challenge != 0 {
            *last_challenge = msg.challenge;
        }
        assert_ne!(to, ME, "heartbeat addressed to ourselves");
        let mut buf = Vec::new();
        msg.emit(KEY, &mut buf);
        let back = HeartbeatRepr::parse(&buf, KEY).expect("own heartbeat does not parse");
        assert_eq!(back, msg, "heartbeat does not round-trip");
    }
    while e.poll_event().is_some() {}
    if left {
        assert_ne!(e.role(), Role::Director, "director again after leave()");
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let start = Instant::now();
    let mut now = start;
    let params = Params {
        me: ME,
        peers: vec![PEER],
        cluster_id: CLUSTER,
        boot_id: 3,
        nonce_seed: u.arbitrary()?,
        priority: u.arbitrary()?,
        interval: Duration::from_millis(100),
        dead_after: Duration::from_millis(u.int_in_range(100..=3000)?),
        preempt: u.arbitrary()?,
        ping_configured: u.arbitrary()?,
    };
    let mut e = Election::new(params, now);
    let mut left = false;
    let mut last_challenge = 0;
    let mut steps = 0;
    while !u.is_empty() && steps < 512 {
        steps += 1;
        match u.int_in_range(0..=7u8)? {
            0 => {
                let len = u.int_in_range(0..=160usize)?;
                let raw = u.bytes(len)?;
                match HeartbeatRepr::parse(raw, KEY) {
                    Ok(m) => {
                        let _ = e.handle_heartbeat(now, &m);
                    }
                    Err(_) => e.note_auth_failure(),
                }
            }
            1 | 2 => {
                let m = structured(u, last_challenge)?;
                let mut buf = Vec::new();
                m.emit(KEY, &mut buf);
                // Truncate or flip a byte sometimes: must be rejected, not misread.
                if u.ratio(1, 8)? {
                    let cut = u.int_in_range(0..=buf.len())?;
                    let flip = u.int_in_range(0..=buf.len().saturating_sub(1))?;
                    if cut < buf.len() {
                        buf.truncate(cut);
                    } else {
                        buf[flip] ^= 1 << (cut % 8);
                    }
                    assert!(
                        HeartbeatRepr::parse(&buf, KEY).is_err(),
                        "tampered heartbeat accepted"
                    );
                    e.note_auth_failure();
                } else {
                    let back = HeartbeatRepr::parse(&buf, KEY).expect("signed heartbeat rejected");
                    assert_eq!(back, m);
                    let _ = e.handle_heartbeat(now, &back);
                }
            }
            3 => {
                now += Duration::from_millis(u.int_in_range(0..=2500u64)?);
                e.handle_timeout(now);
                assert!(
                    e.poll_timeout() > now,
                    "wake-up not in the future after handle_timeout"
                );
            }
            4 => {
                // Jump exactly to the requested wake-up, as the driver does.
                let t = e.poll_timeout();
                if t > now {
                    now = t;
                }
                e.handle_timeout(now);
                assert!(
                    e.poll_timeout() > now,
                    "wake-up not in the future after handle_timeout"
                );
            }
            5 => {
                if u.arbitrary()? {
                    e.set_ping_ok(now, u.arbitrary()?);
                } else {
                    e.set_service_ok(now, u.arbitrary()?);
                }
            }
            6 => {
                if u.ratio(1, 4)? {
                    e.leave(now);
                    left = true;
                } else {
                    let _ = e.failover(now);
                }
            }
            _ => {
                let total: u16 = u.arbitrary()?;
                e.set_health_summary(u.int_in_range(0..=total)?, total);
                e.set_sync_pos(u.arbitrary()?);
            }
        }
        drain(&mut e, left, &mut last_challenge);
        let _ = (e.term(), e.effective_priority(), e.peers(), e.counters());
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    // Plain parse of the whole input, as a datagram on port 694.
    let _ = HeartbeatRepr::parse(data, KEY);
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
