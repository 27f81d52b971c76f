//! Issue 18: no shared default key. A node never runs with the published
//! factory key, and `duet setup` (the page an appliance without a key
//! serves) sets a node up from a real HTTP client: 403 for everything but
//! the setup page, a wrong code and a bad config refused, then a fresh key
//! and admin token with which the pair forms.
mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FACTORY_KEY: &str = "duet-factory-default-key-CHANGE-ME";

/// HTTP status code and body of a curl run from the client namespace.
fn curl(c: &Cluster, args: &str) -> (u16, String) {
    let out = c.exec(
        &c.client,
        &format!("curl -s -m 10 -w '\\n%{{http_code}}' {args}"),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Starts `duet setup` for node `i` (listening on its address) and reads
/// the setup code it prints.
fn start_setup(c: &Cluster, i: usize) -> (std::process::Child, String) {
    let n = &c.nodes[i];
    let mut setup = Command::new("ip")
        .args(["netns", "exec", &n.ns, duet_bin(), "setup", "-c"])
        .arg(n.dir.join("duet.toml"))
        .args(["--listen", &format!("{}:8080", n.addr)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(setup.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let code = first
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(code.len(), 8, "no setup code in {first:?}");
    (setup, code)
}

#[test]
fn factory_key_is_refused_and_setup_page_sets_up_a_pair() {
    let opts = Opts {
        start: false,
        ..Opts::default()
    };
    let mut c = Cluster::new(opts);
    let (d1, d2) = (c.nodes[0].dir.clone(), c.nodes[1].dir.clone());

    // The daemon refuses the factory key with a clear error.
    std::fs::write(d2.join("key"), format!("{FACTORY_KEY}\n")).unwrap();
    let out = c.exec(
        &c.nodes[1].ns,
        &format!(
            "timeout 20 {} run -c {}",
            duet_bin(),
            d2.join("duet.toml").display()
        ),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "duet ran with the factory key: {err}"
    );
    assert!(err.contains("factory key"), "{err}");

    // web1 has no key and no token: it is set up through the page.
    let config = std::fs::read_to_string(d1.join("duet.toml")).unwrap();
    std::fs::remove_file(d1.join("key")).unwrap();
    let _ = std::fs::remove_file(d1.join("token"));
    let (mut setup, code) = start_setup(&c, 0);
    let base = "http://198.18.0.1:8080";
    let deadline = Instant::now() + Duration::from_secs(30);
    let form = loop {
        let (status, body) = curl(&c, &format!("{base}/setup"));
        if status == 200 || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(form.0, 200, "setup page: {}", form.1);
    assert!(form.1.contains("name=\"config\""), "{}", form.1);
    for path in ["/api/status", "/metrics", "/"] {
        let method = if path == "/" { "-X POST" } else { "" };
        let (status, _) = curl(&c, &format!("{method} {base}{path}"));
        assert_eq!(status, 403, "{path} in setup mode");
    }
    let cfg_file = c.dir.join("submitted.toml");
    std::fs::write(&cfg_file, &config).unwrap();
    let post = |code: &str, node: &str, file: &std::path::Path| {
        curl(
            &c,
            &format!(
                "--data-urlencode code={code} --data-urlencode node={node} \
                 --data-urlencode config@{} {base}/setup",
                file.display()
            ),
        )
    };
    // Slow clients do not stall the page: it is behind the status server's
    // front door, not a bare tiny_http answering one request at a time.
    let slow = Command::new("ip")
        .args(["netns", "exec", &c.client, "python3"])
        .arg(support("slowclients.py"))
        .args(["198.18.0.1", "8080", "300", "8"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("slowclients.py");
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (status, _) = curl(&c, &format!("{base}/setup"));
    assert_eq!(status, 200, "setup page under 300 slow clients");
    let took = t.elapsed();
    // `ip netns exec` execs duet in place, so this is the setup server.
    let threads = std::fs::read_dir(format!("/proc/{}/task", setup.id()))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        (1..=32).contains(&threads),
        "{threads} threads under 300 slow clients: a thread per connection?"
    );
    let out = slow.wait_with_output().unwrap();
    let held: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "slowclients.py: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        held["max_open"].as_u64().unwrap_or(0) >= 250,
        "the slow clients never held their sockets: {held}"
    );
    assert!(
        took < Duration::from_secs(5),
        "setup page took {took:?} under slow clients"
    );

    let (status, body) = post("00000000x", "web1", &cfg_file);
    assert_eq!(status, 403, "wrong code: {body}");
    assert!(body.contains("wrong setup code"));
    let bad = c.dir.join("bad.toml");
    std::fs::write(&bad, config.replace("vrid = 7", "vrid = 0")).unwrap();
    let (status, body) = post(&code, "web1", &bad);
    assert_eq!(status, 400, "bad config: {body}");
    assert!(body.contains("4:8: cluster.vrid"), "line:column in {body}");
    assert!(!d1.join("key").exists(), "a refused config left a key");
    let (status, body) = post(&code, "web1", &cfg_file);
    assert_eq!(status, 200, "setup: {body}");
    let token = body
        .split("id=\"admin-token\">")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap_or_default()
        .to_string();
    assert_eq!(token.len(), 48, "{body}");
    assert!(setup.wait().unwrap().success(), "duet setup did not exit 0");
    let key = std::fs::read_to_string(d1.join("key")).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(
        body.contains(&format!("id=\"pair-key\">{}<", key.trim())),
        "{body}"
    );
    assert_eq!(
        std::fs::read_to_string(d1.join("token")).unwrap().trim(),
        token
    );
    assert_eq!(std::fs::read_to_string(d1.join("node")).unwrap(), "web1\n");

    // The generated key pairs the two nodes.
    std::fs::write(d2.join("key"), &key).unwrap();
    c.start_duet(0);
    c.start_duet(1);
    let i = c.wait_one_director(Duration::from_secs(30));
    let peer = c.status(1 - i).unwrap();
    assert_eq!(peer["role"], "standby", "{peer}");
}

/// A box in setup mode joins the pair by a code the set-up box offers:
/// SPAKE2 over the LAN brings it the config and the pair key. A wrong code
/// fails and spends the offer, a replayed exchange meets no offer, and
/// once the pair is complete a third box gets no code at all.
#[test]
fn second_box_pairs_by_code_and_a_wrong_code_or_third_box_fails() {
    let opts = Opts {
        start: false,
        ..Opts::default()
    };
    let mut c = Cluster::new(opts);
    let (d1, d2) = (c.nodes[0].dir.clone(), c.nodes[1].dir.clone());
    // One file for both boxes, as on appliances: the status port on every
    // address of the box.
    let config = std::fs::read_to_string(d1.join("duet.toml"))
        .unwrap()
        .replace(
            "status_listen = \"198.18.0.1:8080\"",
            "status_listen = \"0.0.0.0:8080\"",
        );
    assert!(config.contains("0.0.0.0:8080"));
    std::fs::write(d1.join("duet.toml"), &config).unwrap();
    c.start_duet(0);
    assert!(c
        .wait_role(0, "director", Duration::from_secs(10))
        .is_some());

    // web2 is a fresh box: no key, no token, no config.
    for f in ["key", "token", "duet.toml"] {
        let _ = std::fs::remove_file(d2.join(f));
    }
    let (mut setup, setup_code) = start_setup(&c, 1);
    let joiner = "http://198.18.0.2:8080";
    let sponsor = "http://198.18.0.1:8080";
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&c, &format!("{joiner}/setup")).0 != 200 {
        assert!(Instant::now() < deadline, "setup page never came up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let offer = || {
        let (status, body) = curl(
            &c,
            &format!("-X POST -H 'Authorization: Bearer {TOKEN}' {sponsor}/api/pair"),
        );
        assert_eq!(status, 200, "offer: {body}");
        let code = body
            .split("pairing code ")
            .nth(1)
            .and_then(|t| t.split(':').next())
            .unwrap_or_default()
            .to_string();
        assert_eq!(code.len(), 9, "no code in {body}");
        code
    };
    let join = |code: &str| {
        curl(
            &c,
            &format!(
                "--data-urlencode code={setup_code} --data-urlencode sponsor=198.18.0.1:8080 \
                 --data-urlencode pair={code} {joiner}/setup/pair"
            ),
        )
    };
    // Without the admin token there is no code.
    let (status, _) = curl(&c, &format!("-X POST {sponsor}/api/pair"));
    assert_eq!(status, 401);

    // A wrong code: refused, nothing written, and the offer is spent.
    let right = offer();
    let wrong = if right.ends_with('0') {
        format!("{}1", &right[..8])
    } else {
        format!("{}0", &right[..8])
    };
    let (status, body) = join(&wrong);
    assert_eq!(status, 403, "wrong code: {body}");
    assert!(body.contains("pairing failed"), "{body}");
    assert!(!d2.join("key").exists(), "a wrong code wrote a key");
    let (status, body) = join(&right);
    assert_eq!(status, 403, "a spent offer: {body}");
    assert!(body.contains("410"), "{body}");
    // A replayed (or any) exchange without an offer gets nothing.
    let (status, body) = curl(
        &c,
        &format!("-H 'Content-Type: application/json' --data '{{\"v\":1,\"spake\":\"00\"}}' {sponsor}/api/pair/exchange"),
    );
    assert_eq!(status, 410, "{body}");

    // The right code: web2 gets the config, the key and its name.
    let code = offer();
    let (status, body) = join(&code);
    assert_eq!(status, 200, "join: {body}");
    assert!(body.contains("Set up as web2"), "{body}");
    assert!(setup.wait().unwrap().success(), "duet setup did not exit 0");
    assert_eq!(
        std::fs::read_to_string(d2.join("key")).unwrap().trim(),
        std::fs::read_to_string(d1.join("key")).unwrap().trim()
    );
    assert_eq!(
        std::fs::read_to_string(d2.join("duet.toml")).unwrap(),
        config
    );
    assert_eq!(std::fs::read_to_string(d2.join("node")).unwrap(), "web2\n");
    let token2 = std::fs::read_to_string(d2.join("token")).unwrap();
    assert_eq!(token2.trim().len(), 48, "web2 has its own admin token");
    assert_ne!(token2.trim(), TOKEN);

    // Both boxes form the pair and serve.
    c.start_duet(1);
    assert!(
        c.wait_role(1, "standby", Duration::from_secs(15)).is_some(),
        "the paired box joined"
    );
    let v = c.client(&format!("count http://{VIP}/ 40"));
    assert_eq!(v["errors"], 0, "{v}");
    assert!(hits(&v, "web1") > 0 && hits(&v, "web2") > 0, "{v}");

    // A third box: the pair is complete, so no code is offered.
    let (status, body) = curl(
        &c,
        &format!("-X POST -H 'Authorization: Bearer {TOKEN}' {sponsor}/api/pair"),
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("the pair is complete"), "{body}");
    let s = c.status(0).unwrap();
    assert!(
        s["events"]
            .to_string()
            .contains("pairing: config and key sealed for web2"),
        "{s}"
    );
}
