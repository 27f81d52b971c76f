//! Issue 4: the director forwards VIP traffic to itself and its peer in
//! Direct Routing mode, with default offloads everywhere else.
mod common;
use common::*;
use std::time::Duration;

fn names(v: &serde_json::Value) -> (u64, u64, u64) {
    let n = &v["names"];
    (
        n["web1"].as_u64().unwrap_or(0),
        n["web2"].as_u64().unwrap_or(0),
        v["errors"].as_u64().unwrap_or(999),
    )
}

#[test]
fn vip_spreads_connections_over_both_nodes_by_weight() {
    let c = Cluster::new(Opts {
        services: r#"
[[service]]
port = 80
scheduler = "wrr"
serve_local = true

[[service]]
port = 5353
protocol = "udp"
scheduler = "rr"
"#
        .into(),
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    let v = c.client(&format!("count http://{VIP}/ 200"));
    let (a, b, errors) = names(&v);
    eprintln!(
        "200 connections: web1={a} web2={b} errors={errors} (director web{})",
        d + 1
    );
    assert_eq!(errors, 0, "{v}");
    assert_eq!(a + b, 200, "{v}");
    // Equal weights: each node near half.
    assert!((80..=120).contains(&a), "{v}");

    // The client's ARP entry for the VIP is the virtual MAC of vrid 7.
    let neigh = c.exec(&c.client, &format!("ip neigh show {VIP}"));
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_lowercase();
    assert!(neigh.contains("00:00:5e:00:01:07"), "ARP entry: {neigh}");

    // Operators ping the VIP: the director answers.
    let ping = c.exec(&c.client, &format!("ping -c 3 -i 0.2 -W 1 {VIP}"));
    assert!(
        ping.status.success(),
        "ping to the VIP: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // UDP service.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let u = c.client(&format!("udp {VIP} 5353"));
        let ans = u["answer"]
            .as_str()
            .unwrap_or_else(|| panic!("udp: {u}"))
            .to_string();
        seen.insert(ans);
    }
    assert!(seen.contains("web1") || seen.contains("web2"), "{seen:?}");

    // Status counters report per-backend traffic.
    let s = c.status(d).unwrap();
    assert_eq!(s["dataplane"]["engine"], expected_engine(), "{s}");
    let total: u64 = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["total_connections"].as_u64().unwrap_or(0))
        .sum();
    assert!(total >= 200, "total_connections not counted: {s}");
}

#[test]
fn bulk_transfers_both_paths_intact() {
    let c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    let mut down = std::collections::BTreeMap::new();
    let mut up = std::collections::BTreeMap::new();
    // rr alternates backends, so consecutive transfers cover the local and the peer path.
    for _ in 0..4 {
        let v = c.client(&format!("download http://{VIP}/bytes?n=52428800 52428800"));
        assert_eq!(v["sha256"], v["expected"], "download corrupted: {v}");
        down.insert(v["node"].as_str().unwrap().to_string(), v["bytes"].clone());
        if down.len() == 2 {
            break;
        }
    }
    for _ in 0..4 {
        let v = c.client(&format!("upload http://{VIP}/sha256 20971520"));
        assert_eq!(v["sha256"], v["expected"], "upload corrupted: {v}");
        up.insert(v["node"].as_str().unwrap().to_string(), true);
        if up.len() == 2 {
            break;
        }
    }
    assert_eq!(
        down.len(),
        2,
        "downloads did not cover both paths: {down:?}"
    );
    assert_eq!(up.len(), 2, "uploads did not cover both paths: {up:?}");
    if expected_engine() == "ebpf" {
        // The transfers' segments went through the kernel, not the ring.
        let s = c.status(d).unwrap();
        let kernel = s["dataplane"]["kernel_packets"].as_u64().unwrap_or(0);
        assert!(kernel > 1000, "eBPF engine forwarded {kernel} packets: {s}");
    }
}

#[test]
fn kill9_director_new_connections_within_1500ms() {
    let mut c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    assert_eq!(names(&c.client(&format!("count http://{VIP}/ 10"))).2, 0);
    let probe = c.client_bg(&format!("gap http://{VIP}/ 5"));
    std::thread::sleep(Duration::from_millis(1000));
    c.kill9(d);
    let out = probe.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("kill -9 gap: {v}");
    let gap = v["max_gap_ms"].as_u64().unwrap();
    assert!(gap <= 1500, "client-visible gap {gap} ms: {v}");
    assert!(v["ok"].as_u64().unwrap() > 50, "{v}");
}

#[test]
fn directors_with_plain_real_servers() {
    let c = Cluster::new(Opts {
        services: r#"
[[service]]
port = 80
scheduler = "rr"
serve_local = false
backends = ["198.18.0.20", "198.18.0.21"]
"#
        .into(),
        real_servers: 2,
        ..Opts::default()
    });
    c.wait_one_director(Duration::from_secs(5));
    // Give the director a moment to learn the real servers' MACs.
    std::thread::sleep(Duration::from_millis(1500));
    let v = c.client(&format!("count http://{VIP}/ 40"));
    let n = &v["names"];
    assert_eq!(v["errors"].as_u64(), Some(0), "{v}");
    assert_eq!(n["real1"].as_u64(), Some(20), "{v}");
    assert_eq!(n["real2"].as_u64(), Some(20), "{v}");
}
