//! The netns harness: a bridge `br0` in its own namespace, a client and two
//! duet nodes (plus optional plain real servers) with a veth `eth0` each on
//! 198.18.0.0/24, every node running the real `duet` binary and a real web
//! server (tests/support/websrv.py). Namespace names are unique per process
//! and test; everything is torn down on drop, also when a test panics, and
//! namespaces left by a killed run (whose pid is gone) are removed at start.
#![allow(dead_code)] // each test binary uses a different part of the harness

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const VIP: &str = "198.18.0.100";
pub const CLIENT: &str = "198.18.0.254";
pub const KEY: &str = "duet-test-key-0123456789abcdef";
pub const TOKEN: &str = "admin-token-for-tests-42";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn duet_bin() -> &'static str {
    env!("CARGO_BIN_EXE_duet")
}

/// A file of tests/support.
pub fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(file)
}

/// Root is required: say so loudly, and fail rather than pretend to pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "\n\n*** this netns integration test needs root (network namespaces, veth, AF_PACKET) ***\n\
             *** run `make test` as root; it is NOT skipped silently ***\n"
        );
    }
}

pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("running sh")
}

pub fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Removes namespaces of earlier runs whose process is gone.
fn reap_stale() {
    let list = sh("ip netns list");
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix("dt") else {
            continue;
        };
        let pid: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if let Ok(pid) = pid.parse::<u32>() {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                kill_ns(name);
            }
        }
    }
}

fn kill_ns(name: &str) {
    sh(&format!(
        "ip netns pids {name} 2>/dev/null | xargs -r kill -9; ip netns del {name} 2>/dev/null"
    ));
}

pub struct NodeSpec {
    pub name: String,
    pub addr: String,
    pub priority: u8,
    pub key: String,
}

pub struct Opts {
    /// `[[service]]` tables appended to every node's config.
    pub services: String,
    /// Extra `[heartbeat]` keys.
    pub heartbeat: String,
    /// Plain real servers (198.18.0.20, .21, …) running `duet realserver up`.
    pub real_servers: usize,
    pub priorities: [u8; 2],
    /// Key of node 2 (to test a node with a wrong key).
    pub key2: String,
    pub start: bool,
    /// Environment of every duet process.
    pub duet_env: Vec<(&'static str, &'static str)>,
    /// Extra `[cluster]` keys.
    pub cluster: String,
}

/// `cluster.engine` from `DUET_ENGINE` (`make integration` runs the
/// data-plane tests again with `userspace`); the default engine otherwise.
pub fn engine_line() -> String {
    match std::env::var("DUET_ENGINE") {
        Ok(e) if !e.is_empty() => format!("engine = \"{e}\""),
        _ => String::new(),
    }
}

/// The engine the nodes are expected to run.
pub fn expected_engine() -> &'static str {
    match std::env::var("DUET_ENGINE").as_deref() {
        Ok("userspace") => "userspace",
        _ => "ebpf",
    }
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            services: SERVICE_RR.into(),
            heartbeat: String::new(),
            real_servers: 0,
            priorities: [150, 100],
            key2: KEY.into(),
            start: true,
            duet_env: Vec::new(),
            cluster: String::new(),
        }
    }
}

pub const SERVICE_RR: &str = r#"
[[service]]
port = 80
protocol = "tcp"
scheduler = "rr"
serve_local = true
"#;

pub struct Node {
    pub name: String,
    pub addr: String,
    pub ns: String,
    pub dir: PathBuf,
    pub duet: Option<Child>,
    pub web: Option<Child>,
}

pub struct Cluster {
    pub prefix: String,
    pub lan: String,
    pub client: String,
    pub nodes: Vec<Node>,
    pub reals: Vec<Node>,
    pub dir: PathBuf,
    extra: Vec<Child>,
    duet_env: Vec<(&'static str, &'static str)>,
}

impl Cluster {
    pub fn new(opts: Opts) -> Cluster {
        require_root();
        reap_stale();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("dt{}x{}", std::process::id(), n);
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lan = format!("{prefix}lan");
        let client = format!("{prefix}c");
        let mut c = Cluster {
            prefix: prefix.clone(),
            lan: lan.clone(),
            client: client.clone(),
            nodes: Vec::new(),
            reals: Vec::new(),
            dir: dir.clone(),
            extra: Vec::new(),
            duet_env: opts.duet_env.clone(),
        };
        must(&format!("ip netns add {lan}"));
        must(&format!(
            "ip -n {lan} link add br0 type bridge && ip -n {lan} link set br0 up && ip -n {lan} link set lo up"
        ));
        c.plug(&client, CLIENT, "vc");
        for i in 0..2 {
            let name = format!("web{}", i + 1);
            let addr = format!("198.18.0.{}", i + 1);
            let ns = format!("{prefix}n{}", i + 1);
            c.plug(&ns, &addr, &format!("vn{}", i + 1));
            let ndir = dir.join(&name);
            std::fs::create_dir_all(ndir.join("state")).unwrap();
            std::fs::write(ndir.join("key"), if i == 0 { KEY } else { &opts.key2 }).unwrap();
            std::fs::write(ndir.join("token"), TOKEN).unwrap();
            c.nodes.push(Node {
                name,
                addr,
                ns,
                dir: ndir,
                duet: None,
                web: None,
            });
        }
        for i in 0..opts.real_servers {
            let name = format!("real{}", i + 1);
            let addr = format!("198.18.0.{}", 20 + i);
            let ns = format!("{prefix}r{}", i + 1);
            c.plug(&ns, &addr, &format!("vr{}", i + 1));
            must(&format!(
                "ip netns exec {ns} {} realserver up --vip {VIP} --interface eth0",
                duet_bin()
            ));
            c.reals.push(Node {
                name,
                addr,
                ns,
                dir: dir.join(format!("real{}", i + 1)),
                duet: None,
                web: None,
            });
        }
        for i in 0..2 {
            let cfg = c.config(i, &opts);
            std::fs::write(c.nodes[i].dir.join("duet.toml"), cfg).unwrap();
        }
        for i in 0..2 {
            c.start_web(i);
        }
        for i in 0..c.reals.len() {
            let (ns, name) = (c.reals[i].ns.clone(), c.reals[i].name.clone());
            c.reals[i].web = Some(spawn_web(&ns, &name, &[]));
        }
        c.wait_web();
        if opts.start {
            c.start_duet(0);
            c.start_duet(1);
        }
        c
    }

    /// A namespace with `eth0` (address `addr`/24) on the bridge.
    fn plug(&mut self, ns: &str, addr: &str, port: &str) {
        let lan = &self.lan;
        must(&format!("ip netns add {ns}"));
        must(&format!(
            "ip link add {port} netns {lan} type veth peer name eth0 netns {ns}"
        ));
        must(&format!(
            "ip -n {lan} link set {port} master br0 up && ip -n {ns} link set lo up && \
             ip -n {ns} addr add {addr}/24 dev eth0 && ip -n {ns} link set eth0 up"
        ));
    }

    /// The config file of node `i` for `opts`.
    pub fn config(&self, i: usize, opts: &Opts) -> String {
        let n = &self.nodes[i];
        format!(
            r#"[cluster]
vip = "{VIP}"
interface = "eth0"
vrid = 7
key_file = "key"
admin_token_file = "token"
status_listen = "{addr}:8080"
state_dir = "state"
{engine}
{cluster}

[[node]]
name = "web1"
address = "198.18.0.1"
priority = {p1}

[[node]]
name = "web2"
address = "198.18.0.2"
priority = {p2}

[heartbeat]
{hb}
{services}
"#,
            addr = n.addr,
            p1 = opts.priorities[0],
            p2 = opts.priorities[1],
            hb = heartbeat_keys(&opts.heartbeat),
            services = opts.services,
            engine = engine_line(),
            cluster = opts.cluster,
        )
    }

    pub fn start_web(&mut self, i: usize) {
        let (ns, name) = (self.nodes[i].ns.clone(), self.nodes[i].name.clone());
        self.nodes[i].web = Some(spawn_web(&ns, &name, &["--udp", "5353"]));
    }

    pub fn stop_web(&mut self, i: usize) {
        if let Some(mut w) = self.nodes[i].web.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    fn wait_web(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in self.nodes.iter().chain(self.reals.iter()) {
            loop {
                let o = sh(&format!(
                    "ip netns exec {} curl -s -m 1 http://{}/",
                    n.ns, n.addr
                ));
                if o.status.success() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "web server on {} never came up",
                    n.name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn start_duet(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("duet.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &n.ns, duet_bin(), "run", "-c"])
            .arg(n.dir.join("duet.toml"))
            .env("RUST_LOG", "debug")
            .envs(self.duet_env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting duet");
        n.duet = Some(child);
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].duet.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.nodes[i].duet {
            sh(&format!("kill -{sig} {}", c.id()));
        }
    }

    /// Waits for the process of node `i` to exit (after SIGTERM).
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(c) = self.nodes[i].duet.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.nodes[i].duet = None;
                    return true;
                }
            } else {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn exec(&self, ns: &str, cmd: &str) -> Output {
        sh(&format!("ip netns exec {ns} {cmd}"))
    }

    /// The node's /api/status; one retry, since a busy 2-core machine can
    /// stall a single request (the daemon's own timing is not at stake here).
    pub fn status(&self, i: usize) -> Option<Value> {
        let n = &self.nodes[i];
        for attempt in 0..2 {
            let o = sh(&format!(
                "ip netns exec {} curl -s -m 2 http://{}:8080/api/status",
                n.ns, n.addr
            ));
            if o.status.success() {
                if let Ok(v) = serde_json::from_slice(&o.stdout) {
                    return Some(v);
                }
            }
            if attempt == 0 && self.nodes[i].duet.is_none() {
                break;
            }
        }
        None
    }

    /// Backend `name` as node `i`'s status reports it.
    pub fn backend(&self, i: usize, name: &str) -> Option<Value> {
        self.status(i)?["backends"]
            .as_array()?
            .iter()
            .find(|b| b["name"] == name)
            .cloned()
    }

    pub fn role(&self, i: usize) -> Option<String> {
        self.status(i)
            .and_then(|v| v["role"].as_str().map(str::to_string))
    }

    /// Waits until exactly one live node is director; returns its index.
    pub fn wait_one_director(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let roles: Vec<Option<String>> = (0..2)
                .map(|i| {
                    if self.nodes[i].duet.is_some() {
                        self.role(i)
                    } else {
                        None
                    }
                })
                .collect();
            let directors: Vec<usize> = (0..2)
                .filter(|&i| roles[i].as_deref() == Some("director"))
                .collect();
            let others_ok = (0..2).all(|i| {
                self.nodes[i].duet.is_none()
                    || roles[i].as_deref() == Some("director")
                    || roles[i].as_deref() == Some("standby")
            });
            if directors.len() == 1 && others_ok {
                return directors[0];
            }
            if Instant::now() > deadline {
                self.dump_logs();
                panic!("no single director within {timeout:?}: roles {roles:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls node `i` until it reports `role`; returns the time it took.
    pub fn wait_role(&self, i: usize, role: &str, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.role(i).as_deref() == Some(role) {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Runs tests/support/client.py in the client namespace and parses its JSON.
    pub fn client(&self, args: &str) -> Value {
        let o = self.exec(
            &self.client,
            &format!("python3 {} {args}", support("client.py").display()),
        );
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
            panic!(
                "client.py {args}: {e}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
    }

    /// Starts client.py in the background (for concurrent downloads).
    pub fn client_bg(&self, args: &str) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.client, "python3"])
            .arg(support("client.py"))
            .args(args.split_whitespace())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("client.py")
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].dir.join("duet.log")).unwrap_or_default()
    }

    pub fn dump_logs(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let l = self.log(i);
            let tail: Vec<&str> = l.lines().rev().take(60).collect();
            eprintln!("===== {} log (last 60 lines) =====", n.name);
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }

    /// Keeps a background process alive until the cluster is dropped.
    pub fn adopt(&mut self, c: Child) {
        self.extra.push(c);
    }

    /// Health tests: replaces node `i`'s web server by one started with
    /// extra websrv.py arguments (e.g. `--check-body Wrong`).
    pub fn health_restart_web_with(&mut self, i: usize, extra: &[&str]) {
        self.stop_web(i);
        let (ns, name) = (self.nodes[i].ns.clone(), self.nodes[i].name.clone());
        let mut args = vec!["--udp", "5353"];
        args.extend_from_slice(extra);
        self.nodes[i].web = Some(spawn_web(&ns, &name, &args));
        self.wait_web();
    }

    /// Plugs one more host into the LAN: namespace `<prefix><suffix>` with
    /// `eth0` at `addr`/24 (bridge port `v<suffix>`). The caller removes it
    /// (tests/faults.rs wraps it in a guard); a killed run's is reaped by
    /// prefix like the others.
    pub fn plug_host(&mut self, suffix: &str, addr: &str) -> String {
        let ns = format!("{}{suffix}", self.prefix);
        self.plug(&ns, addr, &format!("v{suffix}"));
        ns
    }
}

fn spawn_web(ns: &str, name: &str, extra: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns, "python3"])
        .arg(support("websrv.py"))
        .args(["--name", name])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting websrv.py")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for n in self.nodes.iter_mut().chain(self.reals.iter_mut()) {
            for c in [n.duet.take(), n.web.take()].into_iter().flatten() {
                let mut c = c;
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        for mut c in self.extra.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let mut all: Vec<String> = self.nodes.iter().map(|n| n.ns.clone()).collect();
        all.extend(self.reals.iter().map(|n| n.ns.clone()));
        all.push(self.client.clone());
        all.push(self.lan.clone());
        for ns in all {
            kill_ns(&ns);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connections answered by `name` in the client's `count` output.
pub fn hits(v: &Value, name: &str) -> u64 {
    v["names"][name].as_u64().unwrap_or(0)
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The `[heartbeat]` keys of a test config: 100 ms / 1 s unless `extra`
/// sets its own.
fn heartbeat_keys(extra: &str) -> String {
    let mut out = String::new();
    for (key, default) in [("interval", "\"100ms\""), ("dead_after", "\"1s\"")] {
        if !extra.lines().any(|l| l.trim_start().starts_with(key)) {
            out.push_str(&format!("{key} = {default}\n"));
        }
    }
    out + extra
}

/// Starts `n` rate-limited downloads of `bytes` through the VIP, each a
/// client process that checks what it got.
pub fn start_downloads(c: &Cluster, n: usize, bytes: u64, rate: u64) -> Vec<Child> {
    (0..n)
        .map(|_| {
            c.client_bg(&format!(
                "download http://{VIP}/bytes?n={bytes}&rate={rate} {bytes}"
            ))
        })
        .collect()
}

/// Waits for every download; returns how many arrived intact, and the
/// client's report of each one that did not.
pub fn finish_downloads(dl: Vec<Child>) -> (usize, Vec<String>) {
    let mut intact = 0;
    let mut bad = Vec::new();
    for d in dl {
        let out = d.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["sha256"].is_string() && v["sha256"] == v["expected"] {
            intact += 1;
        } else {
            bad.push(v.to_string());
        }
    }
    (intact, bad)
}

/// Connection entries node `i` has received as a standby.
pub fn synced(c: &Cluster, i: usize) -> u64 {
    c.status(i)
        .map(|s| s["sync"]["connections_synced"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

/// Waits until node `i` has received at least `n` synced entries.
pub fn wait_synced(c: &Cluster, i: usize, n: u64) {
    // Many client processes start together: give a loaded machine time.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = 0;
    while Instant::now() < deadline {
        got = synced(c, i);
        if got >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("standby synced only {got} entries, expected {n}");
}

/// Unix time in seconds, to compare with what the support scripts print.
pub fn wall() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Runs a tests/support script in `ns` in the background; its stdout is
/// one JSON object (see [`json_of`]).
pub fn py_bg(ns: &str, script: &str, args: &str) -> Child {
    py_spawn(&["netns", "exec", ns, "python3"], script, args)
}

/// [`py_bg`] at the lowest CPU priority, for load generators that would
/// otherwise starve the measuring side of a 2-core box.
pub fn py_bg_niced(ns: &str, script: &str, args: &str) -> Child {
    py_spawn(
        &["netns", "exec", ns, "nice", "-n", "19", "python3"],
        script,
        args,
    )
}

fn py_spawn(ip_args: &[&str], script: &str, args: &str) -> Child {
    Command::new("ip")
        .args(ip_args)
        .arg(support(script))
        .args(args.split_whitespace())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3")
}

/// Waits for a [`py_bg`] script and parses what it printed.
pub fn json_of(c: Child) -> Value {
    let o = c.wait_with_output().unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

/// Polls `f` every 100 ms until it gives a value; fails naming `what` after
/// `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
