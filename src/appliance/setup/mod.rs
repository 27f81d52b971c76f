//! Setup mode: a box whose pair key is missing, unreadable or the published
//! factory key never runs the daemon (so never joins a pair). Its status
//! port serves only the setup page; the console shows the address and a
//! one-time setup code that authenticates the form. A valid submission
//! (checked by the same code as `duet check-config`) gets a freshly
//! generated pair key and admin token, written with the config and the
//! node's name; then PID 1 goes on to start the daemon, with no reboot.
//!
//! The server runs in a child of PID 1 that exits once the box is set up,
//! so tiny_http's threads never exist in the process that later forks the
//! daemon.

mod page;

use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rustix::io::Errno;
use rustix::rand::GetRandomFlags;

use crate::config::{self, Config};
use crate::status::{Reply, ServerConfig, Site, StatusServer};

/// Why the box must be set up, or None when its key is usable.
pub fn needs_setup(key: &Path) -> Option<String> {
    config::read_keys(key)
        .err()
        .map(|e| format!("{}: {e}", key.display()))
}

/// Where a finished setup writes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The config the daemon will run with.
    pub config: PathBuf,
    /// Resolves relative paths of the submitted config.
    pub base: PathBuf,
    /// The persistent master copy of the key (the data partition), besides
    /// the config's `key_file`.
    pub data_key: Option<PathBuf>,
    /// The one-line file naming this node.
    pub node: Option<PathBuf>,
}

/// `n` random bytes from the kernel, as hex.
pub fn random_hex(n: usize) -> io::Result<String> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match rustix::rand::getrandom(&mut buf[got..], GetRandomFlags::empty()) {
            Ok(r) => got += r,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Eight decimal digits, easy to type from a console.
pub fn setup_code() -> io::Result<String> {
    let hex = random_hex(8)?;
    let n = u64::from_str_radix(&hex, 16).map_err(io::Error::other)?;
    Ok(format!("{:08}", n % 100_000_000))
}

fn write_secret(path: &Path, value: &str) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, format!("{value}\n"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
}

fn write_file(path: &Path, text: &str) -> io::Result<()> {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// A `[cluster]` path key of a config not yet validated, resolved as
/// `Config::parse` resolves it.
pub fn cluster_path(text: &str, key: &str, base: &Path) -> Option<PathBuf> {
    let table: toml::Table = text.parse().ok()?;
    let p = Path::new(table.get("cluster")?.get(key)?.as_str()?);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    })
}

/// The secrets a setup created, shown once on the page.
#[derive(Debug)]
pub struct Done {
    pub key: String,
    /// None when the config names no `cluster.admin_token_file`.
    pub token: Option<String>,
}

/// Checks the submission and writes it with a new key and admin token,
/// or returns the problems as `line:column: message`.
pub fn apply(t: &Target, text: &str, node: &str) -> Result<Done, Vec<String>> {
    let key = random_hex(32).map_err(|e| vec![format!("getrandom: {e}")])?;
    apply_with_key(t, text, node, &key)
}

/// As [`apply`] with the pair's key file text (what pairing brought).
pub fn apply_with_key(t: &Target, text: &str, node: &str, key: &str) -> Result<Done, Vec<String>> {
    let node = node.trim();
    if node.is_empty() {
        return Err(vec!["the node's name is empty".into()]);
    }
    let io_err = |what: &Path, e: io::Error| vec![format!("{}: {e}", what.display())];
    let key = key.trim().to_string();
    let token = random_hex(24).map_err(|e| io_err(Path::new("getrandom"), e))?;
    // Validation reads the key and token files, so they are written first
    // and taken back if the config is refused.
    let key_file = cluster_path(text, "key_file", &t.base);
    let token_file = cluster_path(text, "admin_token_file", &t.base);
    let mut written = Vec::new();
    for (path, value) in [(&key_file, &key), (&token_file, &token)] {
        if let Some(p) = path {
            write_secret(p, value).map_err(|e| io_err(p, e))?;
            written.push(p.clone());
        }
    }
    let refuse = |errs: Vec<String>| {
        for p in &written {
            let _ = std::fs::remove_file(p);
        }
        Err(errs)
    };
    let cfg = match Config::parse(text, &t.base) {
        Ok(c) => c,
        Err(problems) => {
            return refuse(
                problems
                    .iter()
                    .map(|p| format!("{}:{}: {}", p.line, p.column, p.message))
                    .collect(),
            )
        }
    };
    if !cfg.nodes.iter().any(|n| n.name.get_ref() == node) {
        return refuse(vec![format!(
            "node {node:?} is not a [[node]] of the config"
        )]);
    }
    let mut writes = vec![(t.config.clone(), text.to_string(), false)];
    if let Some(k) = &t.data_key {
        writes.push((k.clone(), key.clone(), true));
    }
    if let Some(n) = &t.node {
        writes.push((n.clone(), format!("{node}\n"), false));
    }
    for (path, value, secret) in writes {
        let r = if secret {
            write_secret(&path, &value)
        } else {
            write_file(&path, &value)
        };
        if let Err(e) = r {
            return refuse(io_err(&path, e));
        }
    }
    Ok(Done {
        key: key.lines().next().unwrap_or_default().to_string(),
        token: token_file.map(|_| token),
    })
}

/// How long the joiner waits for the sponsor's answer.
const PAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// Joins the pair whose box at `sponsor` offered `code`: the exchange of
/// `crate::pair`, then the config, key and node name it brought written
/// as a setup would.
pub fn join(t: &Target, sponsor: &str, code: &str) -> Result<(String, Done), Vec<String>> {
    let addr: SocketAddr = sponsor
        .trim()
        .parse()
        .map_err(|_| vec![format!("{sponsor:?} is not an address:port")])?;
    let (joiner, request) = crate::pair::Joiner::start(code);
    let (status, answer) = crate::status::client::request_with_body(
        addr,
        "POST",
        "/api/pair/exchange",
        None,
        &request,
        PAIR_TIMEOUT,
    )
    .map_err(|e| vec![e])?;
    if status != 200 {
        return Err(vec![format!("{addr} answered {status}: {}", answer.trim())]);
    }
    let grant = joiner.finish(&answer).map_err(|e| vec![e.to_string()])?;
    let done = apply_with_key(t, &grant.config, &grant.node, &grant.key)?;
    Ok((grant.node, done))
}

fn html(code: u16, body: String) -> Reply {
    let ct = tiny_http::Header::from_bytes("Content-Type", "text/html; charset=utf-8")
        .expect("static header");
    tiny_http::Response::from_string(body)
        .with_status_code(code)
        .with_header(ct)
}

/// The setup routes, answered behind the status server's front door (so a
/// slow or flooding client costs what it costs the status page: one
/// bounded socket, never a worker).
struct SetupSite {
    target: Target,
    code: String,
    /// Held through the pause after a wrong code, so guesses are one a
    /// second in all, however many connections make them.
    guesses: Mutex<()>,
    /// The node's name once a submission was applied.
    done: Mutex<Option<String>>,
    finished: Condvar,
}

impl Site for SetupSite {
    fn answer(&self, rq: &mut tiny_http::Request, _peer: &str) -> Reply {
        if let Some(node) = lock(&self.done).as_deref() {
            return html(409, page::already(node));
        }
        match page::route(rq.method().as_str(), rq.url()) {
            page::Route::Forbidden => html(
                403,
                "<!doctype html><p>This box is in setup mode: only <a href=\"/setup\">/setup</a> \
                 answers until it is set up.</p>\n"
                    .into(),
            ),
            page::Route::Form => {
                let current = std::fs::read_to_string(&self.target.config).unwrap_or_default();
                html(200, page::form(&current, "", &[]))
            }
            page::Route::Submit => self.submit(rq),
            page::Route::Join => self.join(rq),
        }
    }
}

impl SetupSite {
    /// The form's fields (of the first `MAX_BODY` bytes), and whether the
    /// body was over that limit.
    fn fields(rq: &mut tiny_http::Request) -> (std::collections::HashMap<String, String>, bool) {
        let mut body = Vec::new();
        let _ = rq
            .as_reader()
            .take(page::MAX_BODY as u64 + 1)
            .read_to_end(&mut body);
        let too_large = body.len() > page::MAX_BODY;
        (page::parse_form(&String::from_utf8_lossy(&body)), too_large)
    }

    /// A wrong setup code costs a second, one guess at a time: 10^8 codes
    /// at one a second.
    fn wrong_code(&self) {
        let _one_at_a_time = lock(&self.guesses);
        std::thread::sleep(Duration::from_secs(1));
    }

    /// Records the finished setup (`done` is the held `self.done`).
    fn finish(&self, done: &mut Option<String>, node: String, secrets: &Done) -> Reply {
        *done = Some(node.clone());
        self.finished.notify_all();
        html(
            200,
            page::done(&node, &secrets.key, secrets.token.as_deref()),
        )
    }

    fn join(&self, rq: &mut tiny_http::Request) -> Reply {
        let (f, too_large) = Self::fields(rq);
        if too_large {
            return html(413, page::form("", "", &["form too large".into()]));
        }
        let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        if !page::code_matches(&self.code, field("code")) {
            self.wrong_code();
            return html(403, page::form("", "", &["wrong setup code".into()]));
        }
        if let Some(node) = lock(&self.done).as_deref() {
            return html(409, page::already(node));
        }
        // Not under the lock: the exchange may take seconds, and the
        // sponsor's offer is good for one exchange only, so two joins in
        // parallel cannot both succeed.
        let joined = join(&self.target, field("sponsor"), field("pair"));
        let mut done = lock(&self.done);
        if let Some(node) = done.as_deref() {
            return html(409, page::already(node));
        }
        match joined {
            Ok((node, secrets)) => self.finish(&mut done, node, &secrets),
            Err(errs) => html(403, page::form("", "", &errs)),
        }
    }

    fn submit(&self, rq: &mut tiny_http::Request) -> Reply {
        let (f, too_large) = Self::fields(rq);
        let field = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
        if too_large {
            return html(
                413,
                page::form("", field("node"), &["form too large".into()]),
            );
        }
        if !page::code_matches(&self.code, field("code")) {
            self.wrong_code();
            return html(
                403,
                page::form(field("config"), field("node"), &["wrong setup code".into()]),
            );
        }
        let mut done = lock(&self.done);
        if let Some(node) = done.as_deref() {
            return html(409, page::already(node));
        }
        match apply(&self.target, field("config"), field("node")) {
            Ok(secrets) => self.finish(&mut done, field("node").trim().to_string(), &secrets),
            Err(errs) => html(400, page::form(field("config"), field("node"), &errs)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long the server stays up after the successful submission, so the
/// front door can pass its answer (the secrets, shown once) to the client.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// Serves the setup page on `listen` until a submission with `code` has
/// been applied; returns the node's name.
pub fn serve(listen: SocketAddr, t: &Target, code: &str) -> io::Result<String> {
    let mut cfg = ServerConfig::new(listen, t.base.clone());
    cfg.max_body = page::MAX_BODY;
    let site = Arc::new(SetupSite {
        target: t.clone(),
        code: code.to_string(),
        guesses: Mutex::new(()),
        done: Mutex::new(None),
        finished: Condvar::new(),
    });
    let server = StatusServer::serve_site(cfg, site.clone())?;
    let mut done = lock(&site.done);
    let node = loop {
        if let Some(node) = done.clone() {
            break node;
        }
        done = site
            .finished
            .wait(done)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    };
    drop(done);
    std::thread::sleep(ANSWER_GRACE);
    server.stop();
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"[cluster]
vip = "198.18.0.100"
interface = "eth0"
key_file = "key"
admin_token_file = "admin_token"
state_dir = "state"

[[node]]
name = "web1"
address = "198.18.0.1"

[[node]]
name = "web2"
address = "198.18.0.2"
"#;

    fn target() -> Target {
        let d = std::env::temp_dir().join(format!("duet-setup-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&d).unwrap();
        Target {
            config: d.join("duet.toml"),
            base: d.clone(),
            data_key: Some(d.join("data-key")),
            node: Some(d.join("node")),
        }
    }

    #[test]
    fn missing_and_factory_keys_need_setup() {
        let t = target();
        let key = t.base.join("key");
        assert!(needs_setup(&key).is_some());
        std::fs::write(&key, config::FACTORY_KEY).unwrap();
        assert!(needs_setup(&key).unwrap().contains("factory"));
        std::fs::write(&key, random_hex(32).unwrap()).unwrap();
        assert_eq!(needs_setup(&key), None);
    }

    #[test]
    fn codes_and_keys_are_fresh() {
        let c = setup_code().unwrap();
        assert_eq!(c.len(), 8);
        assert!(c.bytes().all(|b| b.is_ascii_digit()));
        let (a, b) = (random_hex(32).unwrap(), random_hex(32).unwrap());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }

    #[test]
    fn a_valid_config_is_written_with_a_new_key() {
        let t = target();
        let done = apply(&t, CONFIG, "web2").unwrap();
        let token = done.token.expect("token");
        assert_eq!(std::fs::read_to_string(&t.config).unwrap(), CONFIG);
        assert_eq!(
            std::fs::read_to_string(t.node.as_ref().unwrap()).unwrap(),
            "web2\n"
        );
        let key = std::fs::read_to_string(t.base.join("key")).unwrap();
        assert_eq!(key.trim(), done.key);
        assert_eq!(key.trim().len(), 64);
        assert_eq!(
            std::fs::read_to_string(t.data_key.as_ref().unwrap()).unwrap(),
            key
        );
        assert_eq!(
            std::fs::read_to_string(t.base.join("admin_token"))
                .unwrap()
                .trim(),
            token
        );
        assert_eq!(needs_setup(&t.base.join("key")), None);
    }

    #[test]
    fn a_refused_config_leaves_the_box_in_setup_mode() {
        let t = target();
        let bad = CONFIG.replace("vip = \"198.18.0.100\"", "vip = \"nope\"");
        let errs = apply(&t, &bad, "web1").unwrap_err();
        assert!(errs[0].starts_with("2:"), "{errs:?}");
        assert!(needs_setup(&t.base.join("key")).is_some());
        assert!(!t.config.exists());
        let errs = apply(&t, CONFIG, "web9").unwrap_err();
        assert!(errs[0].contains("web9"), "{errs:?}");
        assert!(needs_setup(&t.base.join("key")).is_some());
        assert!(apply(&t, CONFIG, " ").is_err());
    }
}
