//! Issue 13: rotating the cluster key is hitless. The key file holds the
//! current key and, during a rotation, a next key on its second line; a
//! node signs with the first and accepts either, and SIGHUP re-reads it.
mod common;
use common::*;
use std::process::Child;
use std::time::{Duration, Instant};

const NEW_KEY: &str = "rotated-key-fedcba9876543210-xyz";
const DL_BYTES: u64 = 4_000_000;
const DL_RATE: u64 = 200_000; // ~20 s per download, longer than the rotation

fn start_downloads(c: &Cluster, n: usize) -> Vec<Child> {
    (0..n)
        .map(|_| {
            c.client_bg(&format!(
                "download http://{VIP}/bytes?n={DL_BYTES}&rate={DL_RATE} {DL_BYTES}"
            ))
        })
        .collect()
}

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

/// Writes node `i`'s key file and sends SIGHUP.
fn rotate(c: &Cluster, i: usize, text: &str) {
    std::fs::write(c.nodes[i].dir.join("key"), text).unwrap();
    c.signal(i, "HUP");
}

/// Waits until node `i` reports that its peer signs with `key`
/// ("current" or "next"), then returns the status.
fn wait_peer_key(c: &Cluster, i: usize, key: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = c.status(i) {
            if s["peers"][0]["key"] == key {
                let heard = s["peers"][0]["last_heard_ms"].as_u64().unwrap_or(u64::MAX);
                assert!(heard < 1000, "peer of node {i} silent: {s}");
                return s;
            }
            if Instant::now() > deadline {
                c.dump_logs();
                panic!("node {i}: peer key {} not {key}", s["peers"][0]["key"]);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn metric(c: &Cluster, i: usize, name: &str) -> Option<String> {
    let n = &c.nodes[i];
    let o = c.exec(
        &n.ns,
        &format!("curl -s -m 2 http://{}:8080/metrics", n.addr),
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find(|l| l.starts_with(name))
        .map(str::to_string)
}

#[test]
fn key_rotation_under_load_breaks_nothing() {
    let c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let s = 1 - d;
    let term = c.status(d).unwrap()["term"].as_u64().unwrap();
    for i in 0..2 {
        wait_peer_key(&c, i, "current");
    }
    let dl = start_downloads(&c, 10);
    std::thread::sleep(Duration::from_secs(2));

    // Watch the roles all along: one sample every 100 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let roles_seen = {
        let stop = stop.clone();
        let urls: Vec<(String, String)> = c
            .nodes
            .iter()
            .map(|n| (n.ns.clone(), format!("http://{}:8080/api/status", n.addr)))
            .collect();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, (ns, url)) in urls.iter().enumerate() {
                    let o = sh(&format!("ip netns exec {ns} curl -s -m 2 {url}"));
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&o.stdout) {
                        seen.push((i, v["role"].as_str().unwrap_or("").to_string()));
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        })
    };

    let started = Instant::now();
    // 1. Both nodes learn the next key; both still sign with the old one.
    for i in 0..2 {
        rotate(&c, i, &format!("{KEY}\n{NEW_KEY}\n"));
    }
    for i in 0..2 {
        wait_peer_key(&c, i, "current");
    }
    // 2. One node at a time signs with the new key. In between, each
    // accepts the other's key as its "next" one.
    rotate(&c, d, &format!("{NEW_KEY}\n{KEY}\n"));
    wait_peer_key(&c, d, "next"); // s still signs with the old key
    wait_peer_key(&c, s, "next"); // d signs with s's next key
    assert!(
        metric(&c, s, "duet_peer_key_next").is_some_and(|l| l.ends_with(" 1")),
        "{:?}",
        metric(&c, s, "duet_peer_key_next")
    );
    rotate(&c, s, &format!("{NEW_KEY}\n{KEY}\n"));
    for i in 0..2 {
        wait_peer_key(&c, i, "current");
    }
    // 3. The old key goes.
    for i in 0..2 {
        rotate(&c, i, &format!("{NEW_KEY}\n"));
    }
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        wait_peer_key(&c, i, "current");
    }
    let rotation = started.elapsed();
    // The old key is no longer accepted: a datagram signed with it counts
    // as an authentication failure (the harness key is the old one).
    let before = c.status(d).unwrap()["heartbeat"]["dropped"]["auth"]
        .as_u64()
        .unwrap_or(0);
    let o = c.exec(
        &c.nodes[s].ns,
        &format!(
            "python3 -c \"import hmac,hashlib,socket;b=b'DUET\\x01\\x01\\x00\\x40'+bytes(64);\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);\
             s.sendto(b+hmac.new(b'{KEY}',b,hashlib.sha256).digest(),('{}',694))\"",
            c.nodes[d].addr
        ),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(3);
    while c.status(d).unwrap()["heartbeat"]["dropped"]["auth"]
        .as_u64()
        .unwrap_or(0)
        <= before
    {
        assert!(Instant::now() < deadline, "old-key datagram not rejected");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (intact, bad) = finish_downloads(dl);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = roles_seen.join().unwrap();
    let sd = c.status(d).unwrap();
    let ss = c.status(s).unwrap();
    eprintln!(
        "key rotation in {rotation:?}: {intact}/10 downloads intact; {} role samples; \
         sync rejected {} / {}; term {} -> {}",
        seen.len(),
        sd["sync"]["rejected"],
        ss["sync"]["rejected"],
        term,
        sd["term"]
    );
    assert_eq!(intact, 10, "downloads broken by the rotation: {bad:?}");
    let changed: Vec<_> = seen
        .iter()
        .filter(|(i, r)| *r != if *i == d { "director" } else { "standby" })
        .collect();
    assert!(
        changed.is_empty(),
        "role changed during rotation: {changed:?}"
    );
    assert!(seen.len() > 20, "too few role samples: {}", seen.len());
    assert_eq!(sd["role"], "director");
    assert_eq!(ss["role"], "standby");
    assert_eq!(sd["term"].as_u64(), Some(term), "no new directorship");
    // Connection sync never lost the peer's messages to a key mismatch.
    assert_eq!(sd["sync"]["rejected"].as_u64(), Some(0), "{sd}");
    assert_eq!(ss["sync"]["rejected"].as_u64(), Some(0), "{ss}");
    // The standby applied sync batches, and says so in its heartbeats.
    assert!(
        sd["peers"][0]["sync_pos"].as_u64().unwrap_or(0) > 0,
        "director sees no sync position from the standby: {sd}"
    );
}
