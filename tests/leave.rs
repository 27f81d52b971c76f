//! Issue 13: stopping or restarting either node loses nothing. The real
//! binary in namespaces, real rate-limited downloads through the VIP, and
//! a probe opening a new connection every 20 ms throughout.
mod common;
use common::*;
use std::time::{Duration, Instant};

/// ~8 s per download at this rate: long enough to span a stop.
const DL_BYTES: u64 = 2_000_000;
const DL_RATE: u64 = 250_000;

fn vip_on_lo(c: &Cluster, i: usize) -> bool {
    let o = c.exec(&c.nodes[i].ns, "ip -4 addr show dev lo");
    String::from_utf8_lossy(&o.stdout).contains(&format!("{VIP}/32"))
}

/// Polls node `i` until it reports backend `name` with weight `w`.
fn wait_weight(c: &Cluster, i: usize, name: &str, w: u64, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if c.backend(i, name).and_then(|b| b["weight"].as_u64()) == Some(w) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// SIGTERM to node `victim` while 10 downloads run; returns how long the
/// node took to exit.
fn stop_during_downloads(c: &mut Cluster, victim: usize) -> Duration {
    let other = 1 - victim;
    let dl = start_downloads(c, 10, DL_BYTES, DL_RATE);
    let standby = if c.role(0).as_deref() == Some("director") {
        1
    } else {
        0
    };
    wait_synced(c, standby, 10);
    let probe = c.client_bg(&format!("gap http://{VIP}/ 6"));
    std::thread::sleep(Duration::from_millis(1000));
    let t = Instant::now();
    c.signal(victim, "TERM");
    // The peer stops sending it new flows on the Leaving heartbeat, not
    // after dead_after (1 s here).
    let name = c.nodes[victim].name.clone();
    let w0 = wait_weight(c, other, &name, 0, Duration::from_secs(5));
    assert!(w0.is_some(), "peer never gave the leaving node weight 0");
    let p = probe.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    let (intact, bad) = finish_downloads(dl);
    eprintln!(
        "stop of {name}: weight 0 at the peer after {:?}; {intact}/10 downloads intact; probe {v}",
        w0.unwrap()
    );
    if intact != 10 || v["failed"].as_u64() != Some(0) {
        c.dump_logs();
    }
    assert_eq!(intact, 10, "downloads broken by the stop: {bad:?}");
    assert_eq!(v["failed"].as_u64(), Some(0), "new connections failed: {v}");
    assert!(
        c.wait_exit(victim, Duration::from_secs(40)),
        "the leaving node did not exit after its connections ended"
    );
    let took = t.elapsed();
    assert!(
        !vip_on_lo(c, victim),
        "the VIP is still on lo after a clean exit"
    );
    let log = c.log(victim);
    assert!(
        log.contains("leaving: ") && log.contains("local connections"),
        "the drain is not logged:\n{log}"
    );
    eprintln!("stop of {name} with open connections took {took:?}");
    took
}

#[test]
fn sigterm_on_the_director_loses_nothing() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(10));
    stop_during_downloads(&mut c, d);
    assert_eq!(c.role(1 - d).as_deref(), Some("director"));
}

#[test]
fn sigterm_on_the_standby_loses_nothing() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(10));
    stop_during_downloads(&mut c, 1 - d);
    assert_eq!(c.role(d).as_deref(), Some("director"));
}

#[test]
fn idle_stop_is_prompt_and_restores_the_host() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(10));
    let standby = 1 - d;
    assert!(vip_on_lo(&c, standby));
    let t = Instant::now();
    c.signal(standby, "TERM");
    assert!(c.wait_exit(standby, Duration::from_secs(10)));
    eprintln!("idle stop took {:?}", t.elapsed());
    assert!(!vip_on_lo(&c, standby));
    assert!(
        c.log(standby).contains("no local connection left"),
        "{}",
        c.log(standby)
    );
}

#[test]
fn second_stop_signal_ends_the_drain_at_once() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(10));
    let standby = 1 - d;
    // Slow downloads, so the drain would last far longer than the test.
    let dl = start_downloads(&c, 4, DL_BYTES, 50_000);
    let name = c.nodes[standby].name.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .backend(d, &name)
        .and_then(|b| b["active_connections"].as_u64())
        .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "no download reached the standby");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.signal(standby, "TERM");
    assert!(wait_weight(&c, d, &name, 0, Duration::from_secs(5)).is_some());
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !c.wait_exit(standby, Duration::from_millis(500)),
        "the node left without draining"
    );
    let t = Instant::now();
    c.signal(standby, "TERM");
    assert!(c.wait_exit(standby, Duration::from_secs(5)));
    eprintln!("second signal to exit: {:?}", t.elapsed());
    assert!(c.log(standby).contains("second stop signal"));
    for mut x in dl {
        let _ = x.kill();
        let _ = x.wait();
    }
}

#[test]
fn rolling_restart_of_both_nodes_loses_nothing() {
    let mut c = Cluster::new(Opts::default());
    c.wait_one_director(Duration::from_secs(10));
    // The probe outlasts both restarts even when a node's drain waits on a
    // slow local connection on a loaded box; lost connections still fail
    // the downloads and the probe.
    let probe = c.client_bg(&format!("gap http://{VIP}/ 60"));
    let mut downloads = Vec::new();
    let started = Instant::now();
    for i in 0..2 {
        downloads.extend(start_downloads(&c, 10, DL_BYTES, DL_RATE));
        let standby = if c.role(0).as_deref() == Some("director") {
            1
        } else {
            0
        };
        wait_synced(&c, standby, 10);
        std::thread::sleep(Duration::from_millis(500));
        c.signal(i, "TERM");
        assert!(
            c.wait_exit(i, Duration::from_secs(40)),
            "node {i} did not exit"
        );
        c.start_duet(i);
        c.wait_role(i, "standby", Duration::from_secs(10))
            .expect("restarted node did not rejoin as standby");
        c.wait_one_director(Duration::from_secs(10));
        // Its peer must hear it before the next node leaves.
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.status(1 - i).is_none_or(|s| {
            s["peers"][0]["last_heard_ms"]
                .as_u64()
                .is_none_or(|ms| ms > 500)
        }) {
            assert!(Instant::now() < deadline, "peer does not hear node {i}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(58),
        "the restarts outlasted the probe"
    );
    let (intact, bad) = finish_downloads(downloads);
    let p = probe.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&p.stdout).unwrap();
    eprintln!("rolling restart: {intact}/20 downloads intact; probe {v}");
    if intact != 20 || v["failed"].as_u64() != Some(0) {
        c.dump_logs();
    }
    assert_eq!(intact, 20, "downloads broken by the restarts: {bad:?}");
    assert_eq!(v["failed"].as_u64(), Some(0), "new connections failed: {v}");
}
