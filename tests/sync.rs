//! Issue 7: connection sync — takeovers that break nothing.
mod common;
use common::*;
use std::process::Child;
use std::time::{Duration, Instant};

const DL_BYTES: u64 = 2_000_000;
const DL_RATE: u64 = 200_000; // ~10 s per download

fn start_downloads(c: &Cluster, n: usize) -> Vec<Child> {
    (0..n)
        .map(|_| {
            c.client_bg(&format!(
                "download http://{VIP}/bytes?n={DL_BYTES}&rate={DL_RATE} {DL_BYTES}"
            ))
        })
        .collect()
}

/// Waits for every download; returns (intact, per-node counts, failures).
fn finish_downloads(dl: Vec<Child>) -> (usize, Vec<String>) {
    let mut intact = 0;
    let mut bad = Vec::new();
    for d in dl {
        let out = d.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["sha256"].is_string() && v["sha256"] == v["expected"] {
            intact += 1;
        } else {
            bad.push(v.to_string());
        }
    }
    (intact, bad)
}

fn wait_synced(c: &Cluster, i: usize, n: u64) {
    // Twenty client processes start together: give a loaded machine time.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = 0;
    while Instant::now() < deadline {
        got = synced(c, i);
        if got >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("standby synced only {got} entries, expected {n}");
}

fn synced(c: &Cluster, i: usize) -> u64 {
    c.status(i)
        .map(|s| s["sync"]["connections_synced"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

#[test]
fn planned_switchover_loses_nothing() {
    let c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let peer = 1 - d;
    let dl = start_downloads(&c, 20);
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
    assert_eq!(intact, 20, "downloads broken by the switchover: {bad:?}");
    assert_eq!(v["failed"].as_u64(), Some(0), "new connections failed: {v}");
}

#[test]
fn kill9_keeps_established_downloads() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let peer = 1 - d;
    let dl = start_downloads(&c, 20);
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
