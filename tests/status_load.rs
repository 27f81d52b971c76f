//! Issue 14: the status server (tiny_http behind duet's front door) under
//! hostile load, end to end over real sockets in network namespaces: 2,000
//! slowloris sockets and a burst of 10,000 connects every 2 s at the
//! director's status port, while `/api/status` is polled from the same
//! client. The page must keep answering fast, the heartbeat must keep
//! flowing and no election may happen. (Oversized heads and bodies:
//! tests/faults.rs; running out of descriptors: tests/status_fds.rs.)
mod common;
use common::*;
use std::time::Duration;

#[test]
fn status_answers_under_slowloris_and_connect_floods() {
    let c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let term = c.status(d).expect("status before the flood")["term"].clone();
    let addr = c.nodes[d].addr.clone();
    // The attack runs niced: on this 2-core box its Python loop would
    // otherwise starve the poller and the figure would measure the client.
    let flood = py_bg_niced(&c.client, "flood.py", &format!("{addr} 8080 2000 10000 14"));
    // Let the 2,000 connect and the first burst land.
    std::thread::sleep(Duration::from_secs(3));
    let poll = py_bg(
        &c.client,
        "statuspoll.py",
        &format!("http://{addr}:8080/api/status 9 100"),
    );
    let poll = json_of(poll);
    let vip = c.client(&format!("count http://{VIP}/ 10"));
    let flood = json_of(flood);
    eprintln!("flood: {flood}\n/api/status under it: {poll}\nVIP meanwhile: {vip}");

    assert!(
        flood["slow_max_open"].as_u64().unwrap() >= 1900,
        "the attack never held 2,000 sockets: {flood}"
    );
    assert!(flood["bursts"].as_u64().unwrap() >= 3, "{flood}");
    assert_eq!(poll["failed"].as_u64(), Some(0), "{poll}");
    assert!(poll["ok"].as_u64().unwrap() >= 20, "too few polls: {poll}");
    let median = poll["median_ms"].as_f64().unwrap();
    // Issue 14's bound. On this 2-core box the median measured 2.9-7.6 ms,
    // alone and beside tests/status's slow-client test (101.6 ms was seen
    // once beside another netns test in an integration run); the bursts'
    // 10,000 accepts show in the p95 (88-260 ms), not the median.
    assert!(median < 100.0, "/api/status median {median} ms under load");
    // Heartbeats every 100 ms: older than two intervals means they stalled.
    let heard = poll["heard_max_ms"].as_u64().unwrap();
    assert!(heard < 200, "a heartbeat was {heard} ms old under load");
    assert_eq!(vip["errors"].as_u64(), Some(0), "VIP under load: {vip}");
    let after = c.status(d).expect("status after the flood");
    assert_eq!(after["term"], term, "an election happened under load");
    assert_eq!(after["role"], "director");
}
