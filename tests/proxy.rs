//! Issue 15: `mode = "proxy"` services, an HTTP reverse proxy on the
//! director next to DR services, against real backends in network namespaces.
mod common;
use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROXY: &str = r#"
[[service]]
port = 80
scheduler = "rr"
serve_local = true

[[service]]
port = 8000
mode = "proxy"
scheduler = "rr"
serve_local = false
trusted_proxies = ["198.18.0.250"]
backends = ["198.18.0.20:8088", "198.18.0.21:8088"]
"#;

fn echo(c: &mut Cluster, i: usize) -> Child {
    let r = &c.reals[i];
    Command::new("ip")
        .args(["netns", "exec", &r.ns, "python3"])
        .arg(support("echohdr.py"))
        .args(["--name", &r.name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("echohdr.py")
}

fn curl(c: &Cluster, args: &str) -> String {
    let o = c.exec(
        &c.client,
        &format!("curl -s -m 5 -w '\\ncode=%{{http_code}}\\n' {args}"),
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls until the proxy answers 200 through the VIP.
fn wait_proxy(c: &Cluster) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = curl(c, &format!("http://{VIP}:8000/"));
        if out.contains("code=200") {
            return out;
        }
        assert!(Instant::now() < deadline, "proxy never answered: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn proxy_forwards_with_forwarding_headers_beside_dr_and_survives_takeover() {
    let mut c = Cluster::new(Opts {
        services: PROXY.into(),
        real_servers: 2,
        ..Opts::default()
    });
    let e0 = echo(&mut c, 0);
    let e1 = echo(&mut c, 1);
    c.adopt(e0);
    c.adopt(e1);
    let d = c.wait_one_director(Duration::from_secs(10));
    let first = wait_proxy(&c);

    // Headers the backend got: the client's address appended, proto and
    // host set, one request per backend connection.
    assert!(first.contains("X-Forwarded-For: 198.18.0.254\n"), "{first}");
    assert!(first.contains("X-Forwarded-Proto: http\n"), "{first}");
    assert!(
        first.contains(&format!("X-Forwarded-Host: {VIP}:8000\n")),
        "{first}"
    );
    assert!(first.contains("Connection: close\n"), "{first}");

    // rr spreads requests over both backends.
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let out = curl(&c, &format!("http://{VIP}:8000/"));
        assert!(out.contains("code=200"), "{out}");
        let name = out.lines().next().unwrap_or("").to_string();
        names.insert(name);
    }
    assert_eq!(names.len(), 2, "{names:?}");

    // The client is not a trusted proxy: its forwarding headers are dropped.
    let spoof = curl(
        &c,
        &format!("-H 'X-Forwarded-For: 6.6.6.6' -H 'X-Forwarded-Proto: https' http://{VIP}:8000/"),
    );
    assert!(spoof.contains("code=200"), "{spoof}");
    assert!(!spoof.contains("6.6.6.6"), "{spoof}");
    assert!(!spoof.contains("https"), "{spoof}");

    // Too many headers: 431 from the proxy itself.
    let many: String = (0..150).map(|i| format!("-H 'X-H{i}: v' ")).collect();
    let big = curl(&c, &format!("{many} http://{VIP}:8000/"));
    assert!(big.contains("code=431"), "{big}");

    // The DR service on the same VIP keeps working.
    let dr = curl(&c, &format!("http://{VIP}/"));
    assert!(dr.contains("code=200"), "{dr}");

    // Only the director listens on VIP:8000.
    let standby = 1 - d;
    let ss = c.exec(&c.nodes[standby].ns, "ss -ltnH");
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(
        !ss.contains(&format!("{VIP}:8000")),
        "standby listens: {ss}"
    );

    // kill -9 the director: the survivor takes over and proxies.
    c.kill9(d);
    c.wait_role(standby, "director", Duration::from_secs(15))
        .expect("standby never became director");
    let after = wait_proxy(&c);
    assert!(after.contains("X-Forwarded-For: 198.18.0.254\n"), "{after}");
}

#[test]
fn idempotent_requests_retry_another_backend_others_get_502() {
    let mut c = Cluster::new(Opts {
        services: PROXY.into(),
        real_servers: 2,
        ..Opts::default()
    });
    // Only the second backend runs: connecting to the first is refused.
    let e1 = echo(&mut c, 1);
    c.adopt(e1);
    c.wait_one_director(Duration::from_secs(10));
    wait_proxy(&c);
    let alive = format!("name={}", c.reals[1].name);
    for _ in 0..6 {
        let out = curl(&c, &format!("http://{VIP}:8000/"));
        assert!(out.contains("code=200") && out.contains(&alive), "{out}");
    }
    // A POST is not retried: rr sends one of these to the dead backend.
    let posts: Vec<String> = (0..4)
        .map(|_| curl(&c, &format!("-d x http://{VIP}:8000/")))
        .collect();
    assert!(posts.iter().any(|o| o.contains("code=502")), "{posts:?}");
}

#[test]
fn large_upload_with_100_continue_and_download_stream_through_bounded() {
    let c = Cluster::new(Opts {
        services: r#"
[[service]]
port = 8001
mode = "proxy"
serve_local = false
backends = ["198.18.0.20:80"]
"#
        .into(),
        real_servers: 1,
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(10));
    // 200 MB each way: the director's peak RSS (its packet rings and maps
    // included, tens of MB) stays below half of one direction's bytes, so
    // nothing is buffered whole; quick enough on a loaded box.
    const N: u64 = 200_000_000;
    let file = c.dir.join("upload.bin");
    must(&format!("head -c {N} /dev/urandom > {}", file.display()));
    let want = must(&format!("sha256sum {}", file.display()));
    let want = want.split_whitespace().next().unwrap().to_string();
    // curl sends `Expect: 100-continue` for a body this size; the backend's
    // 100 comes back through the relay.
    let up = curl(
        &c,
        &format!(
            "-m 120 -H 'Expect: 100-continue' --data-binary @{} http://{VIP}:8001/sha256",
            file.display()
        ),
    );
    assert!(
        up.contains("code=200") && up.contains(&want),
        "{up} want {want}"
    );
    let down = c.exec(
        &c.client,
        &format!("curl -s -m 120 -o /dev/null -w '%{{size_download}} %{{http_code}}' 'http://{VIP}:8001/bytes?n={N}'"),
    );
    let down = String::from_utf8_lossy(&down.stdout).into_owned();
    assert_eq!(down, format!("{N} 200"));
    let pid = c.nodes[d].duet.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    eprintln!("director peak RSS after 2 x {N} bytes: {hwm_kb} kB");
    assert!(hwm_kb < N / 2 / 1024, "peak RSS {hwm_kb} kB");
    let _ = std::fs::remove_file(&file);
}

#[test]
fn planned_switchover_finishes_requests_in_flight() {
    let c = Cluster::new(Opts {
        services: r#"
[[service]]
port = 8001
mode = "proxy"
serve_local = false
backends = ["198.18.0.20:80"]
"#
        .into(),
        real_servers: 1,
        ..Opts::default()
    });
    let d = c.wait_one_director(Duration::from_secs(10));
    let url = format!("http://{VIP}:8001/bytes?n=3000000&rate=1000000");
    let dl: Vec<Child> = (0..4)
        .map(|_| c.client_bg(&format!("download {url} 3000000")))
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // SIGTERM on the director: planned switchover, then stop; the old
    // director keeps relaying what it accepted (bounded by stop_drain).
    c.signal(d, "TERM");
    c.wait_role(1 - d, "director", Duration::from_secs(10))
        .expect("peer never took over");
    let mut failed = 0;
    let mut ok = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while ok < 10 && Instant::now() < deadline {
        if curl(&c, &format!("http://{VIP}:8001/")).contains("code=200") {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    eprintln!("after the switchover: {ok} requests ok, {failed} refused before the new listener");
    assert_eq!(ok, 10);
    let (intact, bad) = finish_downloads(dl);
    assert_eq!(intact, 4, "downloads cut by the switchover: {bad:?}");
}
