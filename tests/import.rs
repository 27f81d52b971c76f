//! Issue 5: `duet import-ldirectord` on configuration files written like the
//! Ultra Monkey seeds produces a config that `duet check-config` accepts.
//! No root or namespaces needed: these run the real binary on files.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn duet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_duet"))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh directory per test (tests of one binary run in parallel).
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("duet-import-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the importer; returns (toml text, warnings text).
fn import(ld: &str, ha: &str) -> (String, String) {
    let o = duet()
        .arg("import-ldirectord")
        .arg(fixture(ld))
        .arg(fixture(ha))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "import-ldirectord failed: {}",
        text(&o.stderr)
    );
    (text(&o.stdout), text(&o.stderr))
}

/// Runs `import-perlbal` on a fixture with the pair's ha.cf and
/// haresources; returns (toml text, warnings text).
fn import_perlbal(conf: &str) -> (String, String) {
    let o = duet()
        .arg("import-perlbal")
        .arg(fixture(conf))
        .arg(fixture("ha-perlbal.cf"))
        .arg(fixture("haresources"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "import-perlbal failed: {}",
        text(&o.stderr)
    );
    (text(&o.stdout), text(&o.stderr))
}

fn check_config(path: &Path) -> Output {
    duet()
        .arg("check-config")
        .arg("-c")
        .arg(path)
        .output()
        .unwrap()
}

/// Writes the imported config next to a key file (the importer names
/// /etc/duet/key, which this test must not create) and runs check-config.
fn accepted(dir: &Path, toml_text: &str) {
    let line = "key_file = \"/etc/duet/key\"";
    assert!(toml_text.contains(line), "no key_file line:\n{toml_text}");
    let cfg = dir.join("duet.toml");
    std::fs::write(&cfg, toml_text.replace(line, "key_file = \"key\"")).unwrap();

    // Without the key the config is refused: check-config really checks.
    let o = check_config(&cfg);
    assert!(!o.status.success(), "accepted without a key file");
    assert!(text(&o.stderr).contains("key_file"), "{}", text(&o.stderr));

    std::fs::write(dir.join("key"), "a shared secret of 32 bytes....\n").unwrap();
    let o = check_config(&cfg);
    assert!(
        o.status.success(),
        "check-config refused the imported config:\n{}\n{toml_text}",
        text(&o.stderr)
    );
    assert!(text(&o.stdout).contains("OK"), "{}", text(&o.stdout));
    let _ = std::fs::remove_dir_all(dir);
}

fn at<'a>(v: &'a toml::Value, path: &str) -> &'a toml::Value {
    path.split('.').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => v.get(k).unwrap_or_else(|| panic!("no {path} ({k}) in {v}")),
    })
}

fn s<'a>(v: &'a toml::Value, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} not a string"))
}

/// The two-box layout: both nodes are directors and real servers.
#[test]
fn two_box_seed_imports_to_a_config_check_config_accepts() {
    let (out, warnings) = import("ldirectord.cf", "ha.cf");
    eprintln!("{warnings}");
    let v: toml::Value = toml::from_str(&out).expect("importer output is not TOML");

    assert_eq!(s(&v, "cluster.vip"), "192.168.6.240");
    assert_eq!(s(&v, "node.0.name"), "ultramonkey1");
    assert_eq!(s(&v, "node.0.address"), "192.168.6.4");
    assert_eq!(s(&v, "node.1.name"), "ultramonkey2");
    assert_eq!(s(&v, "node.1.address"), "192.168.6.5");
    // keepalive 2 / deadtime 10 / auto_failback off / ping.
    assert_eq!(s(&v, "heartbeat.interval"), "2s");
    assert_eq!(s(&v, "heartbeat.dead_after"), "10s");
    assert_eq!(at(&v, "heartbeat.preempt").as_bool(), Some(false));
    assert_eq!(s(&v, "heartbeat.ping.0"), "192.168.6.254");

    // virtual=…:80, negotiate check of ldirector.html.
    assert_eq!(at(&v, "service.0.port").as_integer(), Some(80));
    assert_eq!(s(&v, "service.0.scheduler"), "rr");
    assert_eq!(at(&v, "service.0.serve_local").as_bool(), Some(true));
    assert_eq!(s(&v, "service.0.fallback"), "127.0.0.1:80");
    assert_eq!(s(&v, "service.0.check.kind"), "http");
    assert_eq!(s(&v, "service.0.check.request"), "/ldirector.html");
    assert_eq!(s(&v, "service.0.check.receive"), "Test Page");
    assert_eq!(s(&v, "service.0.check.interval"), "2s");
    assert_eq!(s(&v, "service.0.check.timeout"), "10s");
    assert_eq!(at(&v, "service.0.check.quiescent").as_bool(), Some(true));
    // virtual=…:443: wlc, persistent=600, quiescent=no.
    assert_eq!(at(&v, "service.1.port").as_integer(), Some(443));
    assert_eq!(s(&v, "service.1.scheduler"), "wlc");
    assert_eq!(s(&v, "service.1.persistence"), "600s");
    assert_eq!(at(&v, "service.1.check.quiescent").as_bool(), Some(false));

    // Every directive it cannot map is named, with its line.
    for w in [
        "ldirectord.cf line 8: directive autoreload",
        "ldirectord.cf line 9: directive logfile",
        "ha.cf line 6: directive bcast",
        "ha.cf line 7: directive mcast",
        "key_file",
    ] {
        assert!(warnings.contains(w), "no warning {w:?} in:\n{warnings}");
    }

    accepted(&scratch("twobox"), &out);
}

/// Two sites on two addresses: each `virtual=` address becomes a VIP of
/// the one pair, and each service names its own.
#[test]
fn two_vip_seed_imports_each_address_as_a_vip() {
    let (out, warnings) = import("ldirectord-two-vips.cf", "ha.cf");
    eprintln!("{warnings}");
    let v: toml::Value = toml::from_str(&out).expect("importer output is not TOML");
    let vips: Vec<&str> = at(&v, "cluster.vip")
        .as_array()
        .expect("cluster.vip is a list")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert_eq!(vips, ["192.168.6.240", "192.168.6.241"]);
    let services: Vec<(String, i64)> = at(&v, "service")
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["vip"].as_str().unwrap().to_string(),
                s["port"].as_integer().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        services,
        [
            ("192.168.6.240".to_string(), 80),
            ("192.168.6.240".to_string(), 443),
            ("192.168.6.241".to_string(), 80),
            ("192.168.6.241".to_string(), 443),
        ]
    );
    assert_eq!(s(&v, "service.2.check.request"), "/alive.txt");
    assert_eq!(s(&v, "service.3.scheduler"), "sh");
    assert!(!warnings.contains("one VIP"), "{warnings}");
    accepted(&scratch("twovips"), &out);
}

/// Two dedicated directors in front of three real servers, heartbeat over
/// ucast, an http check with a virtual host, a connect check.
#[test]
fn directors_seed_imports_to_a_config_check_config_accepts() {
    let (out, warnings) = import("ldirectord-directors.cf", "ha-directors.cf");
    eprintln!("{warnings}");
    let v: toml::Value = toml::from_str(&out).expect("importer output is not TOML");

    assert_eq!(s(&v, "node.0.name"), "lb1");
    assert_eq!(s(&v, "node.0.address"), "192.168.6.4");
    assert_eq!(s(&v, "node.1.address"), "192.168.6.5");
    assert_eq!(s(&v, "heartbeat.interval"), "1s");
    assert_eq!(s(&v, "heartbeat.dead_after"), "5s");
    // auto_failback on: the preferred node takes the VIP back.
    assert_eq!(at(&v, "heartbeat.preempt").as_bool(), Some(true));

    assert_eq!(at(&v, "service.0.serve_local").as_bool(), Some(false));
    let backends: Vec<&str> = at(&v, "service.0.backends")
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(backends, ["192.168.6.2", "192.168.6.3", "192.168.6.6"]);
    assert_eq!(s(&v, "service.0.scheduler"), "wlc");
    assert_eq!(s(&v, "service.0.persistence"), "300s");
    assert_eq!(s(&v, "service.0.check.host"), "www.example.com");
    assert_eq!(s(&v, "service.0.check.kind"), "http");
    assert_eq!(at(&v, "service.1.port").as_integer(), Some(25));
    assert_eq!(s(&v, "service.1.check.kind"), "tcp");
    assert_eq!(at(&v, "service.1.check.quiescent").as_bool(), Some(false));

    for w in [
        "ha.cf line 6: directive warntime",
        "ha.cf line 7: directive initdead",
        "ucast",
    ] {
        assert!(warnings.contains(w), "no warning {w:?} in:\n{warnings}");
    }

    accepted(&scratch("directors"), &out);
}

/// ldirectord's `netmask=` (persistence granularity) has a duet equivalent,
/// `persistence_netmask` in `[[service]]` (src/config.rs), so it should be
/// imported rather than warned about.
#[test]
fn netmask_becomes_persistence_netmask() {
    let (out, warnings) = import("ldirectord.cf", "ha.cf");
    let v: toml::Value = toml::from_str(&out).unwrap();
    assert_eq!(
        at(&v, "service.1")
            .get("persistence_netmask")
            .and_then(|n| n.as_str()),
        Some("255.255.255.0"),
        "{out}\n{warnings}"
    );
    accepted(&scratch("netmask"), &out);
}

/// Issue 20: resource-agents' sample with every service switched on maps
/// each service's negotiate check (and ping, checkport=) to a check of its
/// kind, with no "not available" warning.
#[test]
fn every_sample_service_imports_to_its_own_check_kind() {
    let (out, warnings) = import("ldirectord-sample.cf", "ha.cf");
    eprintln!("{warnings}");
    let v: toml::Value = toml::from_str(&out).expect("importer output is not TOML");
    let services = at(&v, "service").as_array().unwrap();
    let by_port = |port: i64| {
        services
            .iter()
            .find(|s| s["port"].as_integer() == Some(port))
            .unwrap_or_else(|| panic!("no service on port {port}:\n{out}"))
    };
    for (port, kind) in [
        (80, "http"),
        (443, "https"),
        (21, "banner"),
        (25, "banner"),
        (110, "banner"),
        (143, "banner"),
        (119, "banner"),
        (53, "dns"),
        (5353, "ping"),
        (3306, "mysql"),
        (5432, "pgsql"),
    ] {
        assert_eq!(s(by_port(port), "check.kind"), kind, "port {port}");
    }
    for (port, protocol) in [
        (21, "ftp"),
        (25, "smtp"),
        (110, "pop"),
        (143, "imap"),
        (119, "nntp"),
    ] {
        assert_eq!(s(by_port(port), "check.protocol"), protocol);
    }
    let https = by_port(443);
    assert_eq!(at(https, "check.port").as_integer(), Some(8080));
    assert_eq!(s(https, "check.host"), "www.x.y.z");
    assert_eq!(s(https, "check.receive"), "Test Page");
    let dns = by_port(53);
    assert_eq!(s(dns, "check.name"), "www.x.y.z");
    assert_eq!(s(dns, "check.expect_address"), "192.168.6.240");
    assert_eq!(s(dns, "protocol"), "udp");

    assert!(
        !warnings.contains("not available"),
        "a service is still not available:\n{warnings}"
    );
    assert!(!warnings.contains("checkport"), "{warnings}");
    // What stays missing is named: no login to mail or database servers.
    assert!(
        warnings.contains("directive login not supported"),
        "{warnings}"
    );
    accepted(&scratch("sample"), &out);
}

/// Issue 15: the Perlbal + heartbeat pair of the issue (its perlbal.conf,
/// an ha.cf naming lb1 and lb2, haresources `lb1 192.168.0.99`) becomes one
/// proxy service on the VIP that `duet check-config` accepts.
#[test]
fn perlbal_pair_imports_to_a_proxy_service_check_config_accepts() {
    let (out, warnings) = import_perlbal("perlbal.conf");
    eprintln!("{warnings}");
    let v: toml::Value = toml::from_str(&out).expect("importer output is not TOML");

    assert_eq!(s(&v, "cluster.vip"), "192.168.0.99");
    assert_eq!(s(&v, "cluster.interface"), "eth0");
    assert_eq!(s(&v, "node.0.name"), "lb1");
    assert_eq!(s(&v, "node.0.address"), "192.168.0.100");
    assert_eq!(at(&v, "node.0.priority").as_integer(), Some(150));
    assert_eq!(s(&v, "node.1.name"), "lb2");
    assert_eq!(s(&v, "node.1.address"), "192.168.0.101");
    assert_eq!(s(&v, "heartbeat.interval"), "1s");
    assert_eq!(s(&v, "heartbeat.dead_after"), "5s");
    assert_eq!(at(&v, "heartbeat.preempt").as_bool(), Some(false));

    assert_eq!(at(&v, "service").as_array().map(Vec::len), Some(1));
    assert_eq!(at(&v, "service.0.port").as_integer(), Some(80));
    assert_eq!(s(&v, "service.0.mode"), "proxy");
    assert_eq!(at(&v, "service.0.serve_local").as_bool(), Some(false));
    let backends: Vec<&str> = at(&v, "service.0.backends")
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    assert_eq!(backends, ["192.168.0.102:80", "192.168.0.103:80"]);
    assert_eq!(at(&v, "service.0.persist_client").as_bool(), Some(true));
    assert_eq!(at(&v, "service.0.persist_backend").as_bool(), Some(true));
    // verify_backend: a backend failing its check gets no request.
    assert_eq!(s(&v, "service.0.check.kind"), "http");
    assert_eq!(s(&v, "service.0.check.request"), "/");

    // Every line of the perlbal.conf is carried over; what is not
    // (ha.cf's logging, authkeys) is named.
    assert!(!warnings.contains("perlbal.conf"), "{warnings}");
    assert!(!warnings.contains("haresources"), "{warnings}");
    for w in ["ha.cf line 2: directive logfacility", "key_file"] {
        assert!(warnings.contains(w), "no warning {w:?} in:\n{warnings}");
    }
    accepted(&scratch("perlbal"), &out);
}

/// A Perlbal selector (the vhosts plugin) becomes one proxy service whose
/// routes are its virtual hosts; the reverse proxies behind it are not
/// services of their own.
#[test]
fn perlbal_vhost_selector_imports_to_routes_check_config_accepts() {
    let (out, warnings) = import_perlbal("perlbal-vhosts.conf");
    eprintln!("{warnings}");
    let v: toml::Value = toml::from_str(&out).expect("importer output is not TOML");
    assert_eq!(at(&v, "service").as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(at(&v, "service.0.port").as_integer(), Some(80));
    let list = |path: &str| -> Vec<String> {
        at(&v, path)
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect()
    };
    // `VHOST * = www`: other hosts go to www's pool.
    assert_eq!(
        list("service.0.backends"),
        ["192.168.0.102:80", "192.168.0.103:80"]
    );
    assert_eq!(s(&v, "service.0.route.0.host"), "www.example.com");
    assert_eq!(s(&v, "service.0.route.1.host"), "api.example.com");
    assert_eq!(
        list("service.0.route.1.backends"),
        ["192.168.0.110:8080", "192.168.0.111:8080"]
    );
    assert_eq!(
        s(&v, "service.0.check.kind"),
        "http",
        "www's verify_backend"
    );
    assert!(
        warnings.contains("*.example.com: a route names one host exactly"),
        "{warnings}"
    );
    assert!(!warnings.contains("LOAD"), "{warnings}");
    assert!(!warnings.contains("plugins"), "{warnings}");
    accepted(&scratch("vhosts"), &out);
}
