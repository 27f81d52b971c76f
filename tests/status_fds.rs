//! The status server in a process out of file descriptors (`EMFILE`), over
//! real loopback sockets: the front door's accept loop must back off and
//! keep serving, and tiny_http, whose accept thread ends on its first accept
//! error, must be replaced. The only test in this binary, because it lowers
//! the descriptor limit of the whole process.
use duet::status::{client, Admin, ServerConfig, StatusReport, StatusServer};
use std::fs::File;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Fixed;

impl Admin for Fixed {
    fn status(&self) -> StatusReport {
        StatusReport {
            node: "web1".into(),
            ..StatusReport::default()
        }
    }
    fn drain(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn undrain(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn failover(&self) -> Result<String, String> {
        Ok(String::new())
    }
    fn reload(&self) -> Result<String, String> {
        Ok(String::new())
    }
}

const T: Duration = Duration::from_secs(3);

/// Sets the soft descriptor limit (the hard one stays).
fn set_fd_limit(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit structs for RLIMIT_NOFILE.
    let rc = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = n.min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim)
    };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// Polls until `GET /api/status` answers 200; returns how long that took.
fn served_within(addr: std::net::SocketAddr, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok((200, body)) = client::request(addr, "GET", "/api/status", None, T) {
            assert!(body.contains("\"web1\""), "{body}");
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no 200 from /api/status {limit:?} after descriptors came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn status_server_survives_running_out_of_descriptors() {
    let _ = env_logger::builder().is_test(true).try_init();
    let dir = std::env::temp_dir().join(format!("duet-fds-{}", std::process::id()));
    let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), &dir);
    cfg.workers = 2;
    let server = StatusServer::start(cfg, Arc::new(Fixed)).unwrap();
    let addr = server.local_addr();
    assert_eq!(
        client::request(addr, "GET", "/api/status", None, T)
            .unwrap()
            .0,
        200
    );
    set_fd_limit(256);

    // 1. Clients take every descriptor: the front door's accept fails with
    // EMFILE, sheds its oldest connections, backs off, and serves again once
    // descriptors are free.
    let mut held: Vec<TcpStream> = Vec::new();
    while let Ok(s) = TcpStream::connect(addr) {
        held.push(s);
        assert!(held.len() < 100_000, "connect never ran out of descriptors");
    }
    let at_limit = held.len();
    std::thread::sleep(Duration::from_millis(300));
    drop(held);
    let back = served_within(addr, Duration::from_secs(5));
    eprintln!("{at_limit} client sockets held at the limit; served again {back:?} after release");

    // 2. Few descriptors left, so that tiny_http's own accept (the last of
    // client, front door, relay, tiny_http to need one) is the one that
    // fails: its accept thread dies and a new tiny_http must take over.
    let generations = |d: &std::path::Path| {
        std::fs::read_dir(d.join("status-http"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    let mut restarted_at = None;
    // Which of the four runs out first depends on the threads' timing: a
    // sweep may starve only the client or the front door, so sweep again.
    'sweeps: for sweep in 0..5 {
        for spare in 1..=8 {
            let mut files: Vec<File> = Vec::new();
            while let Ok(f) = File::open("/dev/null") {
                files.push(f);
            }
            files.truncate(files.len().saturating_sub(spare));
            let t = Instant::now();
            let answer = client::request(addr, "GET", "/api/status", None, T);
            let took = t.elapsed();
            drop(files);
            // Starved, the answer may be a reset, a 503 or (with no descriptor
            // left to accept it) the client's own timeout, but never a hang.
            assert!(took < T + Duration::from_secs(2), "{spare}: {took:?}");
            let first_sock = dir.join("status-http/0.sock");
            let back = served_within(addr, Duration::from_secs(5));
            eprintln!(
                "{spare} spare descriptors: {:?} in {took:?}; served again {back:?} after release",
                answer.map(|(code, _)| code)
            );
            if !first_sock.exists() {
                restarted_at = Some((sweep, spare));
                break 'sweeps;
            }
        }
    }
    assert!(
        restarted_at.is_some(),
        "tiny_http's accept never ran out of descriptors"
    );
    assert_eq!(generations(&dir), 1, "one live tiny_http socket");
    set_fd_limit(1024);
    server.stop();
    assert!(!dir.join("status-http").exists(), "socket directory left");
}
