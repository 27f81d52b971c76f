//! Issue 13: a node whose boot id went back rejoins. Boot ids are the
//! store's boot counter (high half) and random bits; a node whose state
//! directory was wiped (a replaced disk, a re-imaged appliance) starts
//! again at boot 1, below the id its peer last accepted. The peer accepts
//! the new boot once it has echoed a challenge, so the pair has one
//! director again, not two.
mod common;
use common::*;
use std::time::{Duration, Instant};

/// Waits until node `i` hears its peer on a boot other than `not` and
/// returns that boot id.
fn wait_peer_boot(c: &Cluster, i: usize, not: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = c.status(i) {
            let p = &s["peers"][0];
            let heard = p["last_heard_ms"].as_u64().unwrap_or(u64::MAX);
            let boot = boot_of(&c.log(i), &c.nodes[1 - i].addr);
            if heard < 500 && boot.is_some_and(|b| b != not) {
                return boot.unwrap();
            }
        }
        if Instant::now() > deadline {
            c.dump_logs();
            panic!("node {i} never heard its peer on a new boot (last {not})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last boot of `peer` that node's log says it verified.
fn boot_of(log: &str, peer: &str) -> Option<u64> {
    let prefix = format!("peer {peer} boot ");
    log.lines()
        .rev()
        .filter_map(|l| l.split_once(&prefix))
        .filter(|(_, rest)| rest.contains("verified"))
        .find_map(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
}

fn boots_verified(c: &Cluster, i: usize) -> u64 {
    c.status(i).unwrap()["heartbeat"]["boots_verified"]
        .as_u64()
        .unwrap()
}

/// Both nodes must agree on one director, and stay so.
fn assert_stays_one_director(c: &Cluster, d: usize, for_: Duration) {
    let end = Instant::now() + for_;
    while Instant::now() < end {
        assert_eq!(c.role(d).as_deref(), Some("director"));
        assert_eq!(c.role(1 - d).as_deref(), Some("standby"));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn node_with_a_lower_boot_id_rejoins_as_standby() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let s = 1 - d;
    let mut boot = wait_peer_boot(&c, d, 0);
    // A few restarts raise the standby's boot counter ...
    for _ in 0..2 {
        c.kill9(s);
        c.start_duet(s);
        boot = wait_peer_boot(&c, d, boot);
        assert_eq!(c.wait_one_director(Duration::from_secs(5)), d);
    }
    assert_eq!(boot >> 32, 3, "boot counter in the high half: {boot:#x}");
    // ... then its state is wiped: it comes back on boot 1, lower than 3.
    let before = boots_verified(&c, d);
    c.kill9(s);
    std::fs::remove_dir_all(c.nodes[s].dir.join("state")).unwrap();
    let restarted = Instant::now();
    c.start_duet(s);
    let lower = wait_peer_boot(&c, d, boot);
    let rejoined = restarted.elapsed();
    assert_eq!(lower >> 32, 1, "boot {lower:#x}");
    assert!(lower < boot);
    assert!(
        c.wait_role(s, "standby", Duration::from_secs(5)).is_some(),
        "restarted node is not standby"
    );
    assert_eq!(c.wait_one_director(Duration::from_secs(5)), d);
    assert_stays_one_director(&c, d, Duration::from_secs(3));
    assert_eq!(boots_verified(&c, d), before + 1);
    // It was challenged, not taken on trust.
    assert!(
        c.log(d).contains(&format!("shows unverified boot {lower}")),
        "no challenge logged"
    );
    eprintln!(
        "boot {:#x} -> {:#x}: heard again {rejoined:?} after start",
        boot, lower
    );
}

#[test]
fn director_with_a_lower_boot_id_rejoins_as_standby() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let s = 1 - d;
    let boot = wait_peer_boot(&c, s, 0);
    c.kill9(d);
    std::fs::remove_dir_all(c.nodes[d].dir.join("state")).unwrap();
    // The standby takes over; then the old director comes back on boot 1
    // again (its first boot had id 1 << 32 | random too, so the counter
    // alone would repeat it: the random half tells the boots apart).
    assert!(c.wait_role(s, "director", Duration::from_secs(5)).is_some());
    c.start_duet(d);
    let again = wait_peer_boot(&c, s, boot);
    assert_eq!(
        again >> 32,
        boot >> 32,
        "same counter: {boot:#x} {again:#x}"
    );
    assert_eq!(c.wait_one_director(Duration::from_secs(5)), s);
    assert!(c.wait_role(d, "standby", Duration::from_secs(5)).is_some());
    assert_stays_one_director(&c, s, Duration::from_secs(3));
}
