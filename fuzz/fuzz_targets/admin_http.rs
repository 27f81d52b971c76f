//! The status/admin HTTP server, black-box: the front door's request
//! reading (src/status/frontdoor.rs), the relay to tiny_http, routing,
//! percent decoding and the bearer-token check (src/status/server.rs) are
//! private, so each input is sent as raw bytes over loopback to a real
//! `StatusServer` (started once per process, with a token and a fake admin).
//! Checked: the server always answers with a well-formed HTTP/1.1 status
//! line or closes; an admin action only ever runs with the right token; and
//! the renderers (HTML, JSON, Prometheus), fed a report whose strings come
//! from the input, escape them (no raw `<` in the page, JSON that parses
//! back to the same report, one sample per metrics line).
#![no_main]

use duet::status::render::View;
use duet::status::{
    render, Admin, BackendStatus, EventRecord, PeerStatus, ServerConfig, StatusReport, StatusServer,
};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

const TOKEN: &str = "fuzz-admin-token-0123456789";

struct FakeAdmin {
    actions: AtomicU64,
}

impl Admin for FakeAdmin {
    fn status(&self) -> StatusReport {
        StatusReport {
            node: "web1".into(),
            role: "director".into(),
            ..StatusReport::default()
        }
    }
    fn drain(&self, backend: &str) -> Result<(), String> {
        self.actions.fetch_add(1, Ordering::SeqCst);
        (backend == "web2")
            .then_some(())
            .ok_or_else(|| "no such backend".into())
    }
    fn undrain(&self, backend: &str) -> Result<(), String> {
        self.drain(backend)
    }
    fn failover(&self) -> Result<String, String> {
        self.actions.fetch_add(1, Ordering::SeqCst);
        Err("no standby".into())
    }
    fn reload(&self) -> Result<String, String> {
        self.actions.fetch_add(1, Ordering::SeqCst);
        Ok("reloading".into())
    }
}

struct Fixture {
    addr: SocketAddr,
    admin: Arc<FakeAdmin>,
    _server: StatusServer,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let admin = Arc::new(FakeAdmin {
            actions: AtomicU64::new(0),
        });
        let dir = std::env::temp_dir().join(format!("duet-fuzz-{}", std::process::id()));
        let mut cfg = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir);
        cfg.token = Some(TOKEN.into());
        let server = StatusServer::start(cfg, admin.clone()).expect("status server");
        Fixture {
            addr: server.local_addr(),
            admin,
            _server: server,
        }
    })
}

/// RST on close: no TIME_WAIT, so millions of runs do not exhaust ports.
fn abortive_close(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn exchange(data: &[u8]) {
    let f = fixture();
    let Ok(mut s) = TcpStream::connect(f.addr) else {
        return;
    };
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
    let has_token = data.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes());
    let before = f.admin.actions.load(Ordering::SeqCst);
    // The server may answer (431/413) and close before taking everything.
    let _ = s.write_all(data);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    abortive_close(&s);
    drop(s);
    if !resp.is_empty() {
        let line_end = resp.windows(2).position(|w| w == b"\r\n");
        let line = &resp[..line_end.unwrap_or(resp.len())];
        let ok = line.len() >= 12
            && line.starts_with(b"HTTP/1.1 ")
            && line[9..12].iter().all(u8::is_ascii_digit);
        assert!(
            ok,
            "malformed status line: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            resp.windows(4).any(|w| w == b"\r\n\r\n"),
            "response head not terminated"
        );
    }
    if !has_token {
        assert_eq!(
            f.admin.actions.load(Ordering::SeqCst),
            before,
            "admin action ran without the token"
        );
    }
}

/// A report whose every string comes from the input.
fn report(parts: &[&str]) -> StatusReport {
    let p = |i: usize| {
        parts
            .get(i % parts.len().max(1))
            .copied()
            .unwrap_or("")
            .to_string()
    };
    StatusReport {
        node: p(0),
        role: p(1),
        vip: p(2),
        vip_holder: Some(p(3)),
        version: p(4),
        peers: vec![PeerStatus {
            node: p(5),
            address: p(6),
            role: p(7),
            ..PeerStatus::default()
        }],
        backends: vec![BackendStatus {
            name: p(8),
            address: p(9),
            service: p(10),
            last_check: Some(p(11)),
            ..BackendStatus::default()
        }],
        events: vec![EventRecord {
            ts_ms: 1,
            kind: p(12),
            message: p(13),
        }],
        ..StatusReport::default()
    }
}

fn renderers(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parts: Vec<&str> = text.split('\u{1}').collect();
    let r = report(&parts);
    let html = render::render(&r, View::Page).body;
    // An input string may legitimately appear next to the page's own markup
    // ("web1" then "</td>" contains "web1<"), so searching for raw input is
    // no oracle. Instead: the same report with every markup character
    // replaced by a neutral one must give a page with exactly as many markup
    // characters, since escaped text contributes none of its own.
    const NEUTRAL: char = '\u{E000}';
    if !text.contains(NEUTRAL) {
        let neutral: Vec<String> = parts
            .iter()
            .map(|p| p.replace(['<', '>', '"', '\''], &NEUTRAL.to_string()))
            .collect();
        let neutral: Vec<&str> = neutral.iter().map(String::as_str).collect();
        let base = render::render(&report(&neutral), View::Page).body;
        for c in ['<', '>', '"', '\''] {
            assert_eq!(
                html.matches(c).count(),
                base.matches(c).count(),
                "unescaped {c:?} in the HTML page"
            );
        }
    }
    let json = render::render(&r, View::Json).body;
    let back: StatusReport = serde_json::from_str(&json).expect("JSON does not parse");
    assert_eq!(back, r, "JSON does not round-trip");
    let metrics = render::render(&r, View::Metrics).body;
    for line in metrics.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // name{labels} value: a label value must not break the line apart.
        let (name, _) = line.split_once(['{', ' ']).unwrap_or((line, ""));
        assert!(
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':'),
            "broken metrics line: {line:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'R') {
        renderers(&data[1..]);
    } else {
        exchange(data);
    }
});
