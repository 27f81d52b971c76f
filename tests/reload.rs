//! Reloading the configuration (SIGHUP): services, backends and checks
//! change while running; the election, the VIP and established connections
//! stay. A broken file or a change that needs a restart changes nothing.
mod common;
use common::*;
use serde_json::Value;
use std::time::Duration;

/// The real server joins port 80 with twice the weight, behind a TCP check.
const WITH_REAL: &str = r#"
[[service]]
port = 80
protocol = "tcp"
scheduler = "wrr"
serve_local = true
backends = [{ name = "real1", address = "198.18.0.20", weight = 2 }]
check = { kind = "tcp", interval = "200ms", timeout = "200ms", rise = 1, fall = 1 }
"#;

fn opts(services: &str) -> Opts {
    Opts {
        services: services.into(),
        real_servers: 1,
        ..Opts::default()
    }
}

/// Rewrites both nodes' config files.
fn write_configs(c: &Cluster, services: &Opts, edit: impl Fn(String) -> String) {
    for i in 0..2 {
        let text = edit(c.config(i, services));
        std::fs::write(c.nodes[i].dir.join("duet.toml"), text).unwrap();
    }
}

fn reload(c: &Cluster, services: &Opts, edit: impl Fn(String) -> String) {
    write_configs(c, services, edit);
    for i in 0..2 {
        c.signal(i, "HUP");
    }
}

/// `duet reload` on node `i`: (success, what it printed).
fn reload_cli(c: &Cluster, i: usize) -> (bool, String) {
    let conf = c.nodes[i].dir.join("duet.toml");
    let o = c.exec(
        &c.nodes[i].ns,
        &format!("{} reload -c {}", duet_bin(), conf.display()),
    );
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    (o.status.success(), said)
}

#[test]
fn sighup_adds_a_backend_without_breaking_connections_or_the_election() {
    let mut c = Cluster::new(opts(SERVICE_RR));
    let d = c.wait_one_director(Duration::from_secs(5));
    let term = c.status(d).unwrap()["term"].clone();
    let v = c.client(&format!("count http://{VIP}/ 40"));
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(
        hits(&v, "real1"),
        0,
        "real1 served before it was configured: {v}"
    );

    // Downloads of ~10 s each span the reload.
    let downloads: Vec<_> = (0..4)
        .map(|_| {
            c.client_bg(&format!(
                "download http://{VIP}/bytes?n=2000000&rate=200000 2000000"
            ))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    // The standby by signal, the director through `duet reload`.
    write_configs(&c, &opts(WITH_REAL), |t| t);
    c.signal(1 - d, "HUP");
    let (ok, said) = reload_cli(&c, d);
    assert!(ok && said.contains("reloading"), "duet reload: {said}");
    // Its check (rise 1) must pass before it takes its share: on a loaded
    // box the count below can be over before the first probe is.
    wait_for(
        "real1 healthy in the director's status",
        Duration::from_secs(5),
        || {
            c.backend(d, "real1")
                .filter(|b| b["healthy"] == true && b["weight"].as_u64() == Some(2))
        },
    );
    let v = c.client(&format!("count http://{VIP}/ 120"));
    eprintln!("after reload: {v}");
    assert_eq!(v["errors"], 0, "{v}");
    // Weights 1 : 1 : 2 under wrr.
    assert!((45..=75).contains(&hits(&v, "real1")), "{v}");
    assert!(hits(&v, "web1") > 15 && hits(&v, "web2") > 15, "{v}");
    for dl in downloads {
        let out = dl.wait_with_output().unwrap();
        let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert!(
            r["sha256"].is_string() && r["sha256"] == r["expected"],
            "a download broke across the reload: {r}"
        );
    }
    let s = c.status(d).unwrap();
    assert_eq!(s["role"], "director", "{s}");
    assert_eq!(s["term"], term, "the reload changed the election: {s}");
    let events = s["events"].to_string();
    assert!(events.contains("configuration reloaded"), "{events}");

    // The check configured by the reload runs: a dead real1 goes down.
    if let Some(mut w) = c.reals[0].web.take() {
        let _ = w.kill();
        let _ = w.wait();
    }
    wait_for("real1 marked down", Duration::from_secs(5), || {
        c.backend(d, "real1").filter(|b| b["healthy"] == false)
    });
    let v = c.client(&format!("count http://{VIP}/ 30"));
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(hits(&v, "real1"), 0, "{v}");
}

#[test]
fn broken_or_restart_only_reload_changes_nothing() {
    let c = Cluster::new(opts(WITH_REAL));
    let d = c.wait_one_director(Duration::from_secs(5));
    let with_real = opts(WITH_REAL);

    // A syntax error: the error names the file and line, service goes on.
    reload(&c, &with_real, |t| {
        t.replace("scheduler = \"wrr\"", "scheduler = \"wrr")
    });
    let log = wait_for(
        "the reload error in the log",
        Duration::from_secs(5),
        || {
            let l = c.log(d);
            l.contains("keeping the running configuration").then_some(l)
        },
    );
    for line in log.lines().filter(|l| l.contains("reload")) {
        eprintln!("{line}");
    }
    assert!(
        log.contains("duet.toml:"),
        "no file:line in the error: {log}"
    );

    // A new VIP needs a restart: refused at once, VIP unchanged.
    write_configs(&c, &with_real, |t| t.replace(VIP, "198.18.0.101"));
    let (ok, said) = reload_cli(&c, d);
    assert!(!ok, "duet reload took a new VIP: {said}");
    assert!(
        said.contains("409") && said.contains("[cluster] changed"),
        "{said}"
    );
    let s = c.status(d).unwrap();
    assert_eq!(s["vip"], VIP, "{s}");
    assert_eq!(s["role"], "director", "{s}");
    let events = s["events"].to_string();
    assert!(events.contains("reload refused"), "{events}");
    let v = c.client(&format!("count http://{VIP}/ 40"));
    assert_eq!(v["errors"], 0, "{v}");
    assert!(hits(&v, "real1") > 0, "the running services were lost: {v}");
}
