//! Several VIPs in one pair: one election, one virtual MAC, every VIP
//! moving with the director role; a second VIP added by reload serves at
//! once, split over both nodes, and one taken off leaves both nodes' `lo`.
mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

const VIP2: &str = "198.18.0.101";
const VMAC: &str = "00:00:5e:00:01:07";

/// Port 80 on the first VIP; with `second`, port 80 on VIP2 too, where the
/// plain real server serves beside the nodes.
fn services(second: bool) -> String {
    let mut s = SERVICE_RR.to_string();
    if second {
        s.push_str(&format!(
            r#"
[[service]]
vip = "{VIP2}"
port = 80
protocol = "tcp"
scheduler = "rr"
serve_local = true
backends = [{{ name = "real1", address = "198.18.0.20" }}]
"#
        ));
    }
    s
}

fn opts(second: bool) -> Opts {
    Opts {
        services: services(second),
        real_servers: 1,
        ..Opts::default()
    }
}

/// Both nodes' config files for `o`, with `vips` as `cluster.vip`.
fn write_configs(c: &Cluster, o: &Opts, vips: &str) {
    for i in 0..2 {
        let text = c
            .config(i, o)
            .replace(&format!("vip = \"{VIP}\"\n"), &format!("vip = {vips}\n"));
        std::fs::write(c.nodes[i].dir.join("duet.toml"), text).unwrap();
    }
}

fn reload(c: &Cluster, o: &Opts, vips: &str) {
    write_configs(c, o, vips);
    for i in 0..2 {
        c.signal(i, "HUP");
    }
}

fn on_lo(c: &Cluster, ns: &str, vip: &str) -> bool {
    let o = c.exec(ns, "ip -4 -o addr show dev lo");
    String::from_utf8_lossy(&o.stdout).contains(&format!("{vip}/32"))
}

fn neigh(c: &Cluster, vip: &str) -> String {
    let o = c.exec(&c.client, &format!("ip neigh show {vip}"));
    String::from_utf8_lossy(&o.stdout).to_lowercase()
}

/// 40 new connections to `vip`: no errors, and every name in `names` hit.
fn served_by_all(c: &Cluster, vip: &str, names: &[&str]) -> Value {
    let v = c.client(&format!("count http://{vip}/ 40"));
    assert_eq!(v["errors"], 0, "{vip}: {v}");
    for n in names {
        assert!(hits(&v, n) > 0, "{vip}: {n} got nothing: {v}");
    }
    v
}

#[test]
fn second_vip_added_by_reload_serves_on_both_nodes_and_moves_with_the_role() {
    let mut c = Cluster::new(opts(false));
    // The real server stands behind both VIPs: `--vip` repeats.
    let real = c.reals[0].ns.clone();
    must(&format!(
        "ip netns exec {real} {} realserver up --vip {VIP} --vip {VIP2} --interface eth0",
        duet_bin()
    ));
    assert!(on_lo(&c, &real, VIP2), "realserver up --vip twice");
    let d = c.wait_one_director(Duration::from_secs(5));
    let term = c.status(d).unwrap()["term"].clone();
    served_by_all(&c, VIP, &["web1", "web2"]);
    assert!(!on_lo(&c, &c.nodes[d].ns.clone(), VIP2));

    // A second VIP by reload: on both nodes' lo, answered with the virtual
    // MAC, split over both nodes and the real server; the election is not
    // disturbed.
    let two = format!("[\"{VIP}\", \"{VIP2}\"]");
    reload(&c, &opts(true), &two);
    for i in 0..2 {
        let ns = c.nodes[i].ns.clone();
        wait_for("VIP2 on the node's lo", Duration::from_secs(10), || {
            on_lo(&c, &ns, VIP2).then_some(())
        });
    }
    let v = wait_for("VIP2 served", Duration::from_secs(10), || {
        let v = c.client(&format!("count http://{VIP2}/ 40"));
        (v["errors"] == 0 && hits(&v, "web1") > 0 && hits(&v, "web2") > 0 && hits(&v, "real1") > 0)
            .then_some(v)
    });
    eprintln!("VIP2 after reload: {v}");
    assert!(neigh(&c, VIP2).contains(VMAC), "{}", neigh(&c, VIP2));
    served_by_all(&c, VIP, &["web1", "web2"]);
    let s = c.status(d).unwrap();
    assert_eq!(s["term"], term, "a reload is no election");
    assert_eq!(s["vip"], VIP);
    assert_eq!(s["vips"], serde_json::json!([VIP, VIP2]));
    let on_vip2: Vec<&str> = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["vip"] == VIP2)
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(on_vip2, ["web1", "web2", "real1"], "{s}");
    let metrics = String::from_utf8_lossy(
        &c.exec(
            &c.client,
            &format!("curl -s -m 5 http://{}:8080/metrics", c.nodes[d].addr),
        )
        .stdout,
    )
    .to_string();
    assert!(
        metrics.contains(&format!(
            "duet_backend_up{{backend=\"real1\",address=\"198.18.0.20\",service=\"tcp/80\",vip=\"{VIP2}\"}} 1"
        )),
        "{metrics}"
    );
    let cli = c.exec(
        &c.nodes[d].ns,
        &format!(
            "{} status -c {}",
            duet_bin(),
            c.nodes[d].dir.join("duet.toml").display()
        ),
    );
    let cli = String::from_utf8_lossy(&cli.stdout).to_string();
    assert!(cli.contains(&format!("VIP {VIP}, {VIP2} held by")), "{cli}");
    assert!(cli.contains(&format!("  VIP {VIP2}\n")), "{cli}");

    // Both VIPs move together: after kill -9 the survivor serves both and
    // announces both with the virtual MAC.
    c.kill9(d);
    let survivor = 1 - d;
    c.wait_role(survivor, "director", Duration::from_secs(5))
        .expect("takeover");
    let names = ["web1", "web2"];
    let alive: Vec<&str> = names.iter().copied().filter(|n| *n != names[d]).collect();
    for vip in [VIP, VIP2] {
        wait_for(
            "both VIPs served by the survivor",
            Duration::from_secs(10),
            || {
                let v = c.client(&format!("count http://{vip}/ 20"));
                (v["errors"] == 0 && hits(&v, alive[0]) > 0).then_some(())
            },
        );
        assert!(neigh(&c, vip).contains(VMAC), "{vip}: {}", neigh(&c, vip));
    }
    // Back as standby, then VIP2 taken off by reload: off both nodes' lo,
    // and the first VIP serves on.
    c.start_duet(d);
    c.wait_role(d, "standby", Duration::from_secs(10))
        .expect("restarted node joins as standby");
    assert!(
        on_lo(&c, &c.nodes[d].ns.clone(), VIP2),
        "VIP2 on lo at start"
    );
    reload(&c, &opts(false), &format!("\"{VIP}\""));
    for i in 0..2 {
        let ns = c.nodes[i].ns.clone();
        wait_for("VIP2 off the node's lo", Duration::from_secs(10), || {
            (!on_lo(&c, &ns, VIP2)).then_some(())
        });
    }
    served_by_all(&c, VIP, &["web1", "web2"]);
    let s = c.status(survivor).unwrap();
    assert_eq!(s["vips"], serde_json::json!([VIP]));
    assert!(c
        .log(survivor)
        .contains(&format!("VIPs {VIP}, {VIP2} -> {VIP}")));
}

#[test]
fn the_first_vip_names_the_cluster_and_needs_a_restart() {
    let c = Cluster::new(opts(false));
    let d = c.wait_one_director(Duration::from_secs(5));
    write_configs(&c, &opts(false), "\"198.18.0.102\"");
    let conf = c.nodes[d].dir.join("duet.toml");
    let o = c.exec(
        &c.nodes[d].ns,
        &format!("{} reload -c {}", duet_bin(), conf.display()),
    );
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{said}");
    assert!(said.contains("[cluster] changed"), "{said}");
    served_by_all(&c, VIP, &["web1", "web2"]);
}
