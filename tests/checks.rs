//! Issue 20: every check kind against a real server of its kind, in network
//! namespaces with the real binary. nginx with a self-signed certificate for
//! https (checked on its status port through `check.port`), stdlib Python
//! servers for dns, the mail/news banners, mysql and pgsql greetings and
//! udp, the kernel's echo reply for ping. Each backend must be seen up while
//! its server answers right, and down within interval x fall (plus slack)
//! once it stops or answers wrong. Detection times are printed.
mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REAL: &str = "198.18.0.20";
/// Nothing answers there: the ping check of it must go down.
const NOBODY: &str = "198.18.0.99";
const INTERVAL_MS: u64 = 500;
const TIMEOUT_MS: u64 = 300;
const FALL: u64 = 2;

fn service(port: u16, protocol: &str, backend: &str, check: &str) -> String {
    format!(
        r#"
[[service]]
port = {port}
protocol = "{protocol}"
serve_local = false
backends = ["{backend}"]
check = {{ {check}, interval = "{INTERVAL_MS}ms", timeout = "{TIMEOUT_MS}ms", rise = 1, fall = {FALL} }}
"#
    )
}

fn services() -> String {
    [
        service(
            443,
            "tcp",
            REAL,
            r#"kind = "https", port = 8080, host = "www.test", request = "/", receive = "Test Page""#,
        ),
        // The self-signed certificate fails verification when asked for.
        service(
            444,
            "tcp",
            REAL,
            r#"kind = "https", port = 8080, host = "www.test", verify = true"#,
        ),
        service(53, "udp", REAL, r#"kind = "dns", name = "www.test", expect_address = "198.18.0.20""#),
        service(25, "tcp", REAL, r#"kind = "banner", protocol = "smtp", request = "QUIT", receive = "221""#),
        service(143, "tcp", REAL, r#"kind = "banner", protocol = "imap""#),
        service(3306, "tcp", REAL, r#"kind = "mysql""#),
        service(5432, "tcp", REAL, r#"kind = "pgsql""#),
        service(7, "udp", REAL, r#"kind = "udp", request = "hello", receive = "hello""#),
        service(9, "tcp", REAL, r#"kind = "ping", count = 2"#),
        service(10, "tcp", NOBODY, r#"kind = "ping""#),
    ]
    .concat()
}

/// Starts `checksrv.py kind port [--wrong]` in the real server's namespace
/// and waits for it to listen.
fn fake(c: &Cluster, kind: &str, port: u16, wrong: bool) -> Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &c.reals[0].ns, "python3"])
        .arg(support("checksrv.py"))
        .args([kind, &port.to_string()]);
    if wrong {
        cmd.arg("--wrong");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("checksrv.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "checksrv.py {kind} did not start");
    child
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// nginx serving "Test Page" over TLS with a certificate made now, on the
/// status port 8080 only: the check of service 443 reaches it only through
/// `check.port`.
fn nginx(c: &Cluster) -> Child {
    let dir = c.dir.join("nginx");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    must(&format!(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout {d}/key.pem -out {d}/cert.pem -days 1 -subj /CN=www.test 2>&1"
    ));
    let conf = format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{}}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 8080 ssl;
    server_name www.test;
    ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;
    location / {{ return 200 "Test Page\n"; }}
  }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &c.reals[0].ns, "nginx", "-p"])
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let o = c.exec(
            &c.reals[0].ns,
            "curl -sk -m 1 --resolve www.test:8080:127.0.0.1 https://www.test:8080/",
        );
        if String::from_utf8_lossy(&o.stdout).contains("Test Page") {
            return child;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(child);
    panic!(
        "nginx did not come up: {}",
        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
    );
}

fn backend(c: &Cluster, d: usize, svc: &str, name: &str) -> Option<Value> {
    c.status(d)?["backends"]
        .as_array()?
        .iter()
        .find(|b| b["service"] == svc && b["name"] == name)
        .cloned()
}

/// Up on a successful check: unknown is served as up too, so a latency
/// and no failure reason are required.
fn answered(b: &Value) -> bool {
    b["healthy"] == true && b["last_check"].is_null() && b["check_latency_ms"].is_number()
}

fn wait(
    c: &Cluster,
    d: usize,
    svc: &str,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if backend(c, d, svc, name).is_some_and(|b| pred(&b)) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// Detection bound: `fall` checks an interval apart, the last one taking
/// up to its timeout, plus one interval of phase, plus slack for the status
/// refresh and a loaded 2-core machine.
fn bound() -> Duration {
    Duration::from_millis(INTERVAL_MS * FALL + TIMEOUT_MS + INTERVAL_MS + 1500)
}

struct Run<'a> {
    c: &'a Cluster,
    d: usize,
    results: Vec<(String, Duration)>,
}

impl Run<'_> {
    /// Waits for `svc` to be up, runs `breaker`, and measures how long the
    /// backend takes to be seen down.
    fn up_then_down(&mut self, what: &str, svc: &str, breaker: impl FnOnce()) {
        let (c, d) = (self.c, self.d);
        wait(c, d, svc, REAL, Duration::from_secs(10), answered).unwrap_or_else(|| {
            panic!("{what}: never up: {:?}", backend(c, d, svc, REAL));
        });
        let t0 = Instant::now();
        breaker();
        let down = wait(c, d, svc, REAL, bound() + Duration::from_secs(3), |b| {
            b["healthy"] == false
        });
        let took = t0.elapsed();
        let b = backend(c, d, svc, REAL);
        assert!(
            down.is_some() && took <= bound(),
            "{what}: down after {took:?} (bound {:?}): {b:?}",
            bound()
        );
        eprintln!(
            "{what}: down after {took:?} (reason {})",
            b.as_ref().map_or(Value::Null, |b| b["last_check"].clone())
        );
        self.results.push((what.to_string(), took));
    }
}

#[test]
fn every_check_kind_sees_its_server_up_and_then_down() {
    let mut c = Cluster::new(Opts {
        services: services(),
        real_servers: 1,
        start: false,
        ..Opts::default()
    });
    let ns = c.reals[0].ns.clone();
    let web = nginx(&c);
    let dns = fake(&c, "dns", 53, false);
    let smtp = fake(&c, "smtp", 25, false);
    let imap = fake(&c, "imap", 143, false);
    let mysql = fake(&c, "mysql", 3306, false);
    let pgsql = fake(&c, "pgsql", 5432, false);
    let udp = fake(&c, "udp", 7, false);
    c.start_duet(0);
    c.start_duet(1);
    let d = c.wait_one_director(Duration::from_secs(10));
    let mut run = Run {
        c: &c,
        d,
        results: Vec::new(),
    };

    // The unreachable host: down without anything to break.
    wait(&c, d, "tcp/10", NOBODY, Duration::from_secs(10), |b| {
        b["healthy"] == false
    })
    .unwrap_or_else(|| {
        panic!(
            "ping of {NOBODY}: never down: {:?}",
            backend(&c, d, "tcp/10", NOBODY)
        )
    });

    // verify = true: nginx's self-signed certificate is refused.
    wait(&c, d, "tcp/444", REAL, Duration::from_secs(10), |b| {
        b["healthy"] == false
    })
    .unwrap_or_else(|| {
        panic!(
            "https verify = true accepted a self-signed certificate: {:?}",
            backend(&c, d, "tcp/444", REAL)
        )
    });
    let b = backend(&c, d, "tcp/444", REAL).unwrap();
    let why = b["last_check"].as_str().unwrap_or("").to_lowercase();
    assert!(why.contains("certificate"), "{b}");

    run.up_then_down(
        "https (service 443, check.port 8080), nginx stopped",
        "tcp/443",
        || stop(web),
    );
    let mut wrong = Vec::new();
    run.up_then_down("dns, answers SERVFAIL", "udp/53", || {
        stop(dns);
        wrong.push(fake(&c, "dns", 53, true));
    });
    run.up_then_down("banner smtp, greets 554", "tcp/25", || {
        stop(smtp);
        wrong.push(fake(&c, "smtp", 25, true));
    });
    run.up_then_down("banner imap, stopped", "tcp/143", || stop(imap));
    run.up_then_down("mysql, error packet", "tcp/3306", || {
        stop(mysql);
        wrong.push(fake(&c, "mysql", 3306, true));
    });
    run.up_then_down("pgsql, answers E", "tcp/5432", || {
        stop(pgsql);
        wrong.push(fake(&c, "pgsql", 5432, true));
    });
    run.up_then_down("udp, answers wrong", "udp/7", || {
        stop(udp);
        wrong.push(fake(&c, "udp", 7, true));
    });
    run.up_then_down("ping, echo ignored", "tcp/9", || {
        must(&format!(
            "ip netns exec {ns} sysctl -q -w net.ipv4.icmp_echo_ignore_all=1"
        ));
    });
    eprintln!("detection times (interval {INTERVAL_MS}ms, timeout {TIMEOUT_MS}ms, fall {FALL}):");
    for (what, took) in &run.results {
        eprintln!("  {what}: {took:?}");
    }
    for w in wrong {
        c.adopt(w);
    }
}
