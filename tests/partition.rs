//! Issue 7: split brain. The heartbeat link of one node is cut (its veth
//! on the bridge goes down) with and without a reachable ping node, then
//! healed: exactly one director within 1 s, and a gratuitous ARP for the
//! VIP seen by the client.
mod common;
use common::*;
use std::time::{Duration, Instant};

fn set_link(c: &Cluster, port: &str, up: bool) {
    let state = if up { "up" } else { "down" };
    must(&format!("ip -n {} link set {port} {state}", c.lan));
}

fn directors(c: &Cluster) -> Vec<usize> {
    (0..2)
        .filter(|&i| c.role(i).as_deref() == Some("director"))
        .collect()
}

/// Heals the cut and returns how long until exactly one director remained,
/// with the ARP announcements the client saw meanwhile.
fn heal_and_watch(c: &Cluster, port: &str) -> (Duration, serde_json::Value) {
    let watch = std::process::Command::new("ip")
        .args(["netns", "exec", &c.client, "python3"])
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/arpwatch.py"
        ))
        .args(["eth0", VIP, "3"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    set_link(c, port, true);
    let mut healed = None;
    while start.elapsed() < Duration::from_secs(3) {
        if directors(c).len() == 1 && healed.is_none() {
            healed = Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = watch.wait_with_output().unwrap();
    let arp: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (healed.expect("no single director after healing"), arp)
}

#[test]
fn partition_without_ping_heals_to_one_director_with_garp() {
    let c = Cluster::new(Opts::default());
    let d = c.wait_one_director(Duration::from_secs(5));
    assert_eq!(d, 0, "web1 (priority 150) directs");
    set_link(&c, "vn2", false);
    // Cut off, web2 hears nobody and takes the role: a split brain.
    assert!(
        c.wait_role(1, "director", Duration::from_secs(3)).is_some(),
        "isolated web2 did not take over"
    );
    let (t, arp) = heal_and_watch(&c, "vn2");
    eprintln!("healed partition (no ping): one director after {t:?}; client saw {arp}");
    assert!(
        t <= Duration::from_secs(1),
        "two directors for {t:?} after healing"
    );
    assert_eq!(directors(&c), vec![0], "the higher priority node must win");
    assert!(
        arp["announcements"].as_u64().unwrap() >= 1,
        "no gratuitous ARP after healing: {arp}"
    );
    assert_eq!(arp["macs"], serde_json::json!(["00:00:5e:00:01:07"]));
    // And the VIP serves.
    let v = c.client(&format!("count http://{VIP}/ 10"));
    assert_eq!(v["errors"].as_u64(), Some(0), "{v}");
}

#[test]
fn node_without_ping_never_directs_and_heals_cleanly() {
    let c = Cluster::new(Opts {
        heartbeat: format!("ping = [\"{CLIENT}\"]"),
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    assert_eq!(d, 0);
    std::thread::sleep(Duration::from_secs(2));
    set_link(&c, "vn2", false);
    // web2 can reach neither its peer nor its ping node: it must stay standby.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_ne!(
            c.role(1).as_deref(),
            Some("director"),
            "web2 took over without its ping node"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.role(0).as_deref(), Some("director"));
    let (t, _) = heal_and_watch(&c, "vn2");
    eprintln!("healed partition (ping): one director after {t:?}");
    assert_eq!(directors(&c), vec![0]);
    let v = c.client(&format!("count http://{VIP}/ 10"));
    assert_eq!(v["errors"].as_u64(), Some(0), "{v}");
}

#[test]
fn director_losing_its_ping_node_hands_over() {
    let c = Cluster::new(Opts {
        heartbeat: format!("ping = [\"{CLIENT}\"]"),
        ..Opts::default()
    });
    assert_eq!(c.wait_one_director(Duration::from_secs(5)), 0);
    std::thread::sleep(Duration::from_secs(2));
    // web1 can still hear web2 through the bridge, but no longer reaches the
    // gateway: drop ICMP between it and the ping node.
    must(&format!(
        "ip netns exec {} nft add table ip t && ip netns exec {ns} nft add chain ip t o '{{ type filter hook output priority 0; }}' && ip netns exec {ns} nft add rule ip t o ip daddr {CLIENT} icmp type echo-request drop",
        c.nodes[0].ns,
        ns = c.nodes[0].ns
    ));
    assert!(
        c.wait_role(1, "director", Duration::from_secs(4)).is_some(),
        "web2 did not take over from a director without its ping node"
    );
    assert_eq!(c.role(0).as_deref(), Some("standby"));
    let v = c.client(&format!("count http://{VIP}/ 10"));
    assert_eq!(v["errors"].as_u64(), Some(0), "{v}");
}
