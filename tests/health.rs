//! Issue 5: health checks, drain and fallback at ldirectord parity, in
//! network namespaces with the real binary.
mod common;
use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// An http check as the seeds' ldirectord.cf has it, at the given pace.
fn service(interval: &str, timeout: &str, extra: &str) -> String {
    format!(
        r#"
[[service]]
port = 80
protocol = "tcp"
scheduler = "rr"
serve_local = true
{extra}
check = {{ kind = "http", request = "/ldirector.html", receive = "Test Page", interval = "{interval}", timeout = "{timeout}", rise = 2, fall = 2, quiescent = true }}
"#
    )
}

fn probe_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/probe.py")
}

/// Source ports for probe connections: below the kernel's ephemeral range
/// (32768+), each used once per test process, so a probe connection never
/// shares its 4-tuple with an earlier flow (see `syn_on_port_of_finished_flow`).
static NEXT_PORT: AtomicU16 = AtomicU16::new(10000);

/// A running `probe.py series`, past its "started" line.
struct Probe {
    child: Child,
    out: BufReader<ChildStdout>,
}

fn probe_bg(c: &Cluster, secs: f64, period_ms: u64) -> Probe {
    let n = (secs * 1000.0 / period_ms as f64) as u16 + 10;
    let first = NEXT_PORT.fetch_add(n, Ordering::SeqCst);
    assert!(first + n < 32768, "probe source ports exhausted");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &c.client, "python3"])
        .arg(probe_script())
        .arg("series")
        .arg(format!("http://{VIP}/"))
        .arg(secs.to_string())
        .arg(period_ms.to_string())
        .arg(first.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("probe.py");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "started", "probe.py did not start");
    Probe { child, out }
}

fn probe_events(mut p: Probe) -> Vec<(f64, String)> {
    let mut stdout = String::new();
    p.out.read_to_string(&mut stdout).unwrap();
    let out = p.child.wait_with_output().unwrap();
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "probe.py: {e}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e[0].as_f64().unwrap(), e[1].as_str().unwrap().to_string()))
        .collect()
}

/// One request from a chosen source port.
fn once_from(c: &Cluster, port: u16) -> String {
    let o = c.exec(
        &c.client,
        &format!(
            "python3 {} once http://{VIP}/ {port}",
            probe_script().display()
        ),
    );
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("probe.py once: {e}: {}", String::from_utf8_lossy(&o.stderr)));
    v["answer"].as_str().unwrap().to_string()
}

fn count(c: &Cluster, n: usize) -> Value {
    c.client(&format!("count http://{VIP}/ {n}"))
}

/// Polls node `i`'s status until backend `name` satisfies `pred`.
fn wait_backend(
    c: &Cluster,
    i: usize,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if c.backend(i, name).is_some_and(|b| pred(&b)) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Runs short count rounds until `name` answers again; returns the time it took.
fn wait_traffic(c: &Cluster, name: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if hits(&count(c, 4), name) > 0 {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Stops node `victim`'s web server while a probe opens a connection every
/// 20 ms; returns the time from the stop to the last new connection that
/// still landed on it (a refused connection: its server is gone), after
/// checking that every later connection was answered by the other node.
fn measure_stop(c: &mut Cluster, victim: usize, lead: f64, window: f64) -> Duration {
    let name = c.nodes[victim].name.clone();
    let other = c.nodes[1 - victim].name.clone();
    let probe = probe_bg(c, lead + window, 20);
    std::thread::sleep(Duration::from_secs_f64(lead));
    c.stop_web(victim);
    let t_stop = wall();
    let events = probe_events(probe);
    let before = events.iter().filter(|e| e.0 < t_stop).count();
    assert!(before >= 3, "probe did not run before the stop: {events:?}");
    let last_bad = events
        .iter()
        .filter(|e| e.0 >= t_stop && e.1 != other)
        .map(|e| e.0 - t_stop)
        .fold(0.0f64, f64::max);
    let after_ok = events
        .iter()
        .filter(|e| e.0 >= t_stop + last_bad + 0.001)
        .inspect(|e| assert_eq!(e.1, other, "after the cut-off: {e:?}"))
        .count();
    let bad = events
        .iter()
        .filter(|e| e.0 >= t_stop && e.1 != other)
        .count();
    eprintln!(
        "stopped {name}: last new connection to it {:.0} ms after the stop \
         ({bad} failed after the stop, {after_ok} answered by {other} after the cut-off)",
        last_bad * 1000.0
    );
    assert!(
        after_ok >= 10,
        "{name} still received new connections at the end of the {window} s window: {:?}",
        &events[events.len().saturating_sub(20)..]
    );
    Duration::from_secs_f64(last_bad)
}

fn runs(default: usize) -> usize {
    std::env::var("DUET_HEALTH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Stop the HTTP server on one node: within interval × fall + 1 s no new
/// connection lands there; start it again: it gets traffic again. Done for
/// the peer (DR path) and for the director's own backend (local path).
#[test]
fn stopped_server_gets_no_new_connections_and_returns() {
    let mut c = Cluster::new(Opts {
        services: service("1s", "500ms", ""),
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    let v = count(&c, 20);
    assert_eq!(v["errors"], 0, "{v}");
    assert!(hits(&v, "web1") > 0 && hits(&v, "web2") > 0, "{v}");

    let bound = Duration::from_secs(2 + 1);
    let mut lat = Vec::new();
    for (k, victim) in [1 - d, d].into_iter().cycle().take(runs(2)).enumerate() {
        let l = measure_stop(&mut c, victim, 0.5, 4.5);
        lat.push(l);
        assert!(
            l <= bound,
            "run {k}: {} received new connections {l:?} after its server stopped (bound {bound:?})",
            c.nodes[victim].name
        );
        let s = c.backend(d, &c.nodes[victim].name).unwrap();
        assert_eq!(s["healthy"], false, "{s}");
        assert_eq!(s["weight"], 0, "{s}");

        c.start_web(victim);
        let name = c.nodes[victim].name.clone();
        // rise 2 at 1 s: back within ~2 s, plus the daemon's pick-up.
        let back = wait_traffic(&c, &name, Duration::from_secs(6))
            .unwrap_or_else(|| panic!("{name} got no traffic after its server restarted"));
        eprintln!("restarted {name}: traffic again after {back:?}");
        let s = c.backend(d, &name).unwrap();
        assert_eq!(s["healthy"], true, "{s}");
    }
    eprintln!(
        "interval 1s fall 2: failure -> last new connection, median {:?} of {:?}",
        median(lat.clone()),
        lat
    );
}

/// The same with a fast check (200 ms, fall 2): the median over several runs
/// is the number reported next to ldirectord's default 10 s interval.
#[test]
fn fast_check_failure_latency() {
    let mut c = Cluster::new(Opts {
        services: service("200ms", "150ms", ""),
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    let victim = 1 - d;
    let name = c.nodes[victim].name.clone();
    assert!(wait_traffic(&c, &name, Duration::from_secs(3)).is_some());
    let bound = Duration::from_millis(400 + 1000);
    let mut lat = Vec::new();
    for k in 0..runs(5) {
        let l = measure_stop(&mut c, victim, 0.5, 2.5);
        lat.push(l);
        assert!(
            l <= bound,
            "run {k}: {name} received new connections {l:?} after its server stopped (bound {bound:?})"
        );
        c.start_web(victim);
        wait_traffic(&c, &name, Duration::from_secs(4))
            .unwrap_or_else(|| panic!("{name} got no traffic after its server restarted"));
    }
    eprintln!(
        "interval 200ms fall 2: failure -> last new connection, median {:?} of {:?}",
        median(lat.clone()),
        lat
    );
}

/// A backend answering 200 with the wrong body is down: no traffic, and the
/// status says healthy=false. Fixing the page brings it back.
#[test]
fn wrong_body_is_down() {
    let mut c = Cluster::new(Opts {
        services: service("1s", "500ms", ""),
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    assert!(wait_traffic(&c, "web2", Duration::from_secs(3)).is_some());
    c.health_restart_web_with(1, &["--check-body", "Under maintenance"]);
    // The page still answers 200: only the body check can catch it.
    let page = c.client("get http://198.18.0.2/ldirector.html");
    assert_eq!(page["status"], 200, "{page}");
    let t = wait_backend(&c, d, "web2", Duration::from_secs(5), |b| {
        b["healthy"] == false
    });
    let b = c.backend(d, "web2").unwrap();
    assert!(t.is_some(), "web2 with a wrong body still healthy: {b}");
    eprintln!("wrong body: web2 down after {t:?}: {b}");
    assert_eq!(b["weight"], 0, "{b}");
    // Let the data plane take the new snapshot.
    std::thread::sleep(Duration::from_millis(1200));
    let v = count(&c, 30);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(hits(&v, "web1"), 30, "traffic still reaches web2: {v}");

    c.health_restart_web_with(1, &[]);
    assert!(
        wait_traffic(&c, "web2", Duration::from_secs(6)).is_some(),
        "web2 got no traffic after its page was fixed"
    );
    assert_eq!(c.backend(d, "web2").unwrap()["healthy"], true);
}

/// All backends down: the fallback real server answers; once a backend is
/// back, new connections go to it again and not to the fallback.
#[test]
fn fallback_answers_when_all_down() {
    let mut c = Cluster::new(Opts {
        services: service("1s", "500ms", r#"fallback = "198.18.0.20""#),
        real_servers: 1,
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    let v = count(&c, 10);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(
        hits(&v, "real1"),
        0,
        "fallback used while backends are up: {v}"
    );
    let fb = c
        .backend(d, "fallback")
        .expect("no fallback row in the status");
    assert_eq!(fb["fallback"], true, "{fb}");
    assert_eq!(fb["address"], "198.18.0.20", "{fb}");
    assert_eq!(
        fb["healthy"], false,
        "fallback in use while backends are up: {fb}"
    );

    c.stop_web(0);
    c.stop_web(1);
    for n in ["web1", "web2"] {
        let t = wait_backend(&c, d, n, Duration::from_secs(5), |b| b["healthy"] == false);
        assert!(t.is_some(), "{n} still healthy with its server stopped");
    }
    let deadline = Instant::now() + Duration::from_secs(4);
    let v = loop {
        let v = count(&c, 10);
        if hits(&v, "real1") == 10 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("all down: {v}");
    assert_eq!(hits(&v, "real1"), 10, "the fallback did not answer: {v}");
    let fb = c
        .backend(d, "fallback")
        .expect("no fallback row in the status");
    assert_eq!(
        fb["healthy"], true,
        "fallback answers but is not in use: {fb}"
    );

    c.start_web(1 - d);
    let name = c.nodes[1 - d].name.clone();
    assert!(
        wait_traffic(&c, &name, Duration::from_secs(6)).is_some(),
        "{name} got no traffic after coming back"
    );
    let v = count(&c, 10);
    assert_eq!(
        hits(&v, &name),
        10,
        "fallback still used with {name} up: {v}"
    );
}

/// Drain: downloads already running on the drained backend finish intact,
/// new connections go elsewhere; undrain restores it.
#[test]
fn drain_keeps_established_downloads_and_undrain_restores() {
    let c = Cluster::new(Opts {
        services: service("1s", "500ms", ""),
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    assert!(wait_traffic(&c, "web2", Duration::from_secs(3)).is_some());

    // 3 MB at 1 MB/s: each lasts about 3 s; rr puts two on each node.
    let n = 3 * 1024 * 1024;
    let url = format!("http://{VIP}/bytes?n={n}&rate=1048576");
    let downloads: Vec<Child> = (0..4)
        .map(|_| {
            let p = c.client_bg(&format!("download {url} {n}"));
            std::thread::sleep(Duration::from_millis(150));
            p
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));

    let dn = &c.nodes[d];
    let o = c.exec(
        &dn.ns,
        &format!(
            "{} drain web2 -c {}",
            duet_bin(),
            dn.dir.join("duet.toml").display()
        ),
    );
    assert!(
        o.status.success(),
        "duet drain: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let drained_at = Instant::now();
    let b = c.backend(d, "web2").unwrap();
    assert_eq!(b["drained"], true, "{b}");
    assert_eq!(b["weight"], 0, "{b}");
    let v = count(&c, 20);
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(
        hits(&v, "web1"),
        20,
        "new connections reached drained web2: {v}"
    );
    let during = c.backend(d, "web2").unwrap();

    let mut on_web2 = 0;
    for p in downloads {
        let out = p.wait_with_output().unwrap();
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            r["sha256"], r["expected"],
            "download broken by the drain: {r}"
        );
        assert_eq!(r["bytes"], n, "{r}");
        if r["node"] == "web2" {
            on_web2 += 1;
        }
    }
    eprintln!(
        "drain: {on_web2} downloads on web2 finished intact {:?} after the drain; web2 during: {during}",
        drained_at.elapsed()
    );
    assert!(
        on_web2 >= 1,
        "no download ran on web2: the test proved nothing"
    );
    assert!(
        drained_at.elapsed() > Duration::from_millis(1000),
        "downloads ended too soon to have spanned the drain"
    );

    let o = c.exec(
        &dn.ns,
        &format!(
            "{} undrain web2 -c {}",
            duet_bin(),
            dn.dir.join("duet.toml").display()
        ),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let b = c.backend(d, "web2").unwrap();
    assert_eq!(b["drained"], false, "{b}");
    assert!(
        wait_traffic(&c, "web2", Duration::from_secs(3)).is_some(),
        "undrained web2 got no traffic"
    );
    let v = count(&c, 20);
    assert_eq!((hits(&v, "web1"), hits(&v, "web2")), (10, 10), "{v}");
}

/// A client that reuses the source port of a finished connection (its SYN
/// matches the director's entry for the old flow) must be scheduled afresh
/// when that flow's backend is down: a new connection, not a packet of the
/// old one. In DR the director sees only client -> server packets, so after
/// a server-closes-first HTTP exchange the entry stays in FIN_WAIT (120 s).
#[test]
fn syn_on_port_of_finished_flow_is_rescheduled() {
    let mut c = Cluster::new(Opts {
        services: service("1s", "500ms", ""),
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(5));
    let victim = 1 - d;
    let name = c.nodes[victim].name.clone();
    let other = c.nodes[d].name.clone();
    // rr: one of two consecutive connections lands on the victim.
    let port = (30000..30004)
        .find(|&p| once_from(&c, p) == name)
        .unwrap_or_else(|| panic!("no connection reached {name}"));
    c.stop_web(victim);
    assert!(
        wait_backend(&c, d, &name, Duration::from_secs(5), |b| b["healthy"]
            == false)
        .is_some(),
        "{name} still healthy"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        once_from(&c, 30010),
        other,
        "a fresh port must reach {other}"
    );
    let again = once_from(&c, port);
    assert_eq!(
        again, other,
        "a SYN from port {port} (its earlier flow went to {name}, now down) was not rescheduled"
    );
}
