//! Issue 7: connection sync — takeovers that break nothing.
mod common;
use common::*;

const DL_BYTES: u64 = 2_000_000;
const DL_RATE: u64 = 200_000; // ~10 s per download
use std::time::{Duration, Instant};

#[test]
fn planned_switchover_loses_nothing() {
    let c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let peer = 1 - d;
    let dl = start_downloads(&c, 20, DL_BYTES, DL_RATE);
    std::thread::sleep(Duration::from_secs(2));
    wait_synced(&c, peer, 20);
    let probe = c.client_bg(&format!("gap http://{VIP}/ 5"));
    std::thread::sleep(Duration::from_millis(1000));
    let o = c.exec(
        &c.nodes[d].ns,
        &format!(
            "{} failover -c {}",
            duet_bin(),
            c.nodes[d].dir.join("duet.toml").display()
        ),
    );
    assert!(
        o.status.success(),
        "duet failover: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        c.wait_role(peer, "director", Duration::from_secs(2))
            .is_some(),
        "peer did not take over"
    );
    let p = probe.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let (intact, bad) = finish_downloads(dl);
    eprintln!("planned switchover: {intact}/20 downloads intact; probe {v}");
    if intact != 20 || v["failed"].as_u64() != Some(0) {
        // A rare failure is worth its logs: they show which flow went where.
        c.dump_logs();
    }
    assert_eq!(intact, 20, "downloads broken by the switchover: {bad:?}");
    assert_eq!(v["failed"].as_u64(), Some(0), "new connections failed: {v}");
}

#[test]
fn kill9_keeps_established_downloads() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let peer = 1 - d;
    let dl = start_downloads(&c, 20, DL_BYTES, DL_RATE);
    std::thread::sleep(Duration::from_secs(2));
    wait_synced(&c, peer, 20);
    let probe = c.client_bg(&format!("gap http://{VIP}/ 5"));
    std::thread::sleep(Duration::from_millis(1000));
    c.kill9(d);
    let p = probe.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let (intact, bad) = finish_downloads(dl);
    eprintln!("kill -9: {intact}/20 downloads intact; probe {v}");
    // The killed node's web server still runs, so every download can finish.
    assert_eq!(intact, 20, "downloads broken by the takeover: {bad:?}");
    assert!(v["max_gap_ms"].as_u64().unwrap() <= 1500, "gap: {v}");
    assert_eq!(c.role(peer).as_deref(), Some("director"));
}

#[test]
fn late_standby_gets_a_snapshot_of_1000_connections() {
    let mut c = Cluster::new(Opts {
        start: false,
        ..Opts::default()
    });
    c.start_duet(0);
    assert!(c.wait_role(0, "director", Duration::from_secs(5)).is_some());
    let v = c.client(&format!("count http://{VIP}/ 1000"));
    assert_eq!(v["errors"].as_u64(), Some(0), "{v}");
    // A few client ports are reused within the run (the kernel picks them),
    // so the table may hold slightly fewer entries than connections made.
    let conns = c.status(0).unwrap()["dataplane"]["connections"]
        .as_u64()
        .unwrap();
    assert!(conns >= 500, "director tracks {conns} connections");
    c.start_duet(1);
    // The standby's status must show the entries both as received and as
    // installed in its own connection table.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut got, mut table) = (0, 0);
    while Instant::now() < deadline {
        if let Some(s) = c.status(1) {
            got = s["sync"]["connections_synced"].as_u64().unwrap_or(0);
            table = s["dataplane"]["connections"].as_u64().unwrap_or(0);
        }
        if got >= conns * 9 / 10 && table >= conns * 9 / 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("late standby synced {got} entries, holds {table} (director had {conns})");
    assert!(
        got >= conns * 9 / 10,
        "late standby synced only {got} of {conns}"
    );
    assert!(
        table >= conns * 9 / 10,
        "late standby holds only {table} of {conns}"
    );
}
