//! Listeners and client connections: accept on VIP:port while this node
//! directs, then for each request on a connection (pipelined ones in
//! order) read its head, hand it to `exchange`, and keep the connection
//! for the next one while both sides allow it.
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_net::{TcpListener, TcpStream};
use smol::channel::{Receiver, Sender};
use smol::io::AsyncReadExt;
use smol::{future, Executor};

use super::access::{self, Sinks};
use super::clock::Clock;
use super::exchange::{exchange, Ctx};
use super::idle::IdlePool;
use super::stream::{send, Reader};
use super::{rewrite_head, sticky, HeadRules, Picker, ProxyService, Rewritten};
use crate::dataplane::Shared;

/// Connections beyond this are closed at accept: bounded tasks and memory.
const MAX_CONNECTIONS: usize = 10_000;
/// How soon a new director listens (a client connecting before is refused),
/// and how soon an idle keep-alive connection closes once it lost the role.
const POLL: Duration = Duration::from_millis(20);
/// How long, and for how many bytes, a closing connection is drained.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

pub struct State {
    pub shared: Arc<Shared>,
    pub picker: Mutex<Picker>,
    open: AtomicUsize,
    /// Idle backend connections by (service port, backend).
    /// Kept with their read buffers: a reused connection allocates none.
    pub idle: Mutex<IdlePool<(u16, SocketAddrV4), Reader>>,
    pub sticky_key: Vec<u8>,
    logs: Sinks,
    /// Closed when this node winds down, which wakes every connection
    /// idle between requests at once (rather than each polling); renewed
    /// when it directs again.
    wind_down: Mutex<(Option<Sender<()>>, Receiver<()>)>,
    /// Runs every connection, on as many threads as there are CPUs.
    ex: Arc<Executor<'static>>,
    /// The requests' timeouts.
    pub clock: Arc<Clock>,
}

impl State {
    /// This node should take no further request on a kept connection.
    pub fn winding_down(&self) -> bool {
        self.shared.stopping() || !self.shared.is_active()
    }

    pub fn log_request(&self, svc: &ProxyService, peer: SocketAddrV4, entry: LogFields) {
        let Some(target) = &svc.opts.access_log else {
            return;
        };
        let unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let line = access::format(&access::Entry {
            client: *peer.ip(),
            unix_secs,
            line: entry.req.map(|r| r.line.as_str()),
            status: entry.status,
            bytes: entry.bytes,
            referer: entry.req.and_then(|r| r.referer.as_deref()),
            user_agent: entry.req.and_then(|r| r.user_agent.as_deref()),
        });
        self.logs.write(target, &line);
    }
}

pub struct LogFields<'a> {
    pub req: Option<&'a Rewritten>,
    pub status: u16,
    pub bytes: u64,
}

/// Runs until the daemon stops; listens only while `shared` is active. On
/// stop, requests in flight get up to `stop_drain` to finish.
pub fn spawn(
    shared: Arc<Shared>,
    stop_drain: Duration,
    cluster_key: &[u8],
) -> std::io::Result<JoinHandle<()>> {
    let sticky_key = sticky::derive_key(cluster_key);
    let ex = Arc::new(Executor::new());
    // This thread and the workers all run connections; the workers end
    // when `done` goes with this thread's end.
    let (done, finished) = smol::channel::bounded::<()>(1);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
    for i in 0..workers {
        let (ex, finished) = (ex.clone(), finished.clone());
        std::thread::Builder::new()
            .name(format!("proxy-{}", i + 1))
            .spawn(move || {
                smol::block_on(ex.run(async {
                    let _ = finished.recv().await;
                }))
            })?;
    }
    std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || {
            let st = Arc::new(State {
                shared,
                picker: Mutex::new(Picker::default()),
                open: AtomicUsize::new(0),
                idle: Mutex::new(IdlePool::default()),
                sticky_key,
                logs: Sinks::default(),
                wind_down: Mutex::new(wind_down_signal()),
                ex: ex.clone(),
                clock: Arc::new(Clock::default()),
            });
            ex.spawn(st.clock.clone().run()).detach();
            smol::block_on(ex.run(async {
                supervise(st.clone()).await;
                drain(&st, stop_drain).await;
            }));
            drop(done);
        })
}

async fn supervise(st: Arc<State>) {
    let mut listening: HashMap<SocketAddrV4, (TcpListener, smol::Task<()>)> = HashMap::new();
    while !st.shared.stopping() {
        let wanted: Vec<SocketAddrV4> = st.shared.snapshot().proxy.iter().map(|s| s.at()).collect();
        let open: Vec<SocketAddrV4> = listening.keys().copied().collect();
        let (gone, new) = listener_changes(st.shared.is_active(), &wanted, &open);
        // Dropping a task stops accepting; connections already accepted
        // run on to their end, those still in the listener's queue too
        // (closing it would reset them).
        for at in gone {
            if let Some((l, task)) = listening.remove(&at) {
                close_listener(at, l, task, &st).await;
            }
        }
        for at in new {
            match TcpListener::bind(SocketAddr::V4(at)).await {
                Ok(l) => {
                    log::info!("proxy: accepting on {at}");
                    let task = st.ex.spawn(accept_loop(l.clone(), at, st.clone()));
                    listening.insert(at, (l, task));
                }
                Err(e) => log::warn!("proxy: binding {at}: {e}"),
            }
        }
        {
            let down = st.winding_down();
            let mut idle = st.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut signal = st.wind_down.lock().unwrap_or_else(|e| e.into_inner());
            if down {
                // A standby keeps no backend sockets it will not use.
                idle.clear();
                signal.0 = None;
            } else {
                idle.sweep(Instant::now());
                if signal.0.is_none() {
                    *signal = wind_down_signal();
                }
            }
        }
        smol::Timer::after(POLL).await;
    }
    for (at, (l, task)) in listening.drain() {
        close_listener(at, l, task, &st).await;
    }
}

/// Which listeners to close and which to open: only a node that forwards
/// accepts on the VIPs, on exactly the proxy services' addresses.
fn listener_changes(
    active: bool,
    wanted: &[SocketAddrV4],
    open: &[SocketAddrV4],
) -> (Vec<SocketAddrV4>, Vec<SocketAddrV4>) {
    let wanted: &[SocketAddrV4] = if active { wanted } else { &[] };
    let gone = open
        .iter()
        .filter(|a| !wanted.contains(a))
        .copied()
        .collect();
    let mut new: Vec<SocketAddrV4> = Vec::new();
    for a in wanted {
        if !open.contains(a) && !new.contains(a) {
            new.push(*a);
        }
    }
    (gone, new)
}

fn wind_down_signal() -> (Option<Sender<()>>, Receiver<()>) {
    let (tx, rx) = smol::channel::bounded(1);
    (Some(tx), rx)
}

/// Stops accepting on `at`, serving what the kernel had queued.
async fn close_listener(
    at: SocketAddrV4,
    l: TcpListener,
    accepting: smol::Task<()>,
    st: &Arc<State>,
) {
    drop(accepting);
    while let Some(Ok((conn, peer))) = future::poll_once(l.accept()).await {
        admit(conn, peer, at, st);
    }
}

async fn drain(st: &State, limit: Duration) {
    let deadline = Instant::now() + limit;
    while st.open.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        smol::Timer::after(Duration::from_millis(50)).await;
    }
    let left = st.open.load(Ordering::Acquire);
    if left > 0 {
        log::warn!("proxy: stopping with {left} connections still open");
    }
}

async fn accept_loop(l: TcpListener, at: SocketAddrV4, st: Arc<State>) {
    loop {
        let (conn, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("proxy: accept on {at}: {e}");
                smol::Timer::after(POLL).await;
                continue;
            }
        };
        admit(conn, peer, at, &st);
    }
}

/// Serves a new connection unless that would pass `MAX_CONNECTIONS`.
fn admit(conn: TcpStream, peer: SocketAddr, at: SocketAddrV4, st: &Arc<State>) {
    let SocketAddr::V4(peer) = peer else { return };
    // A head and its body go out as separate writes: with Nagle's
    // algorithm the second waits for the client's delayed ACK (40 ms a
    // response on a kept connection).
    let _ = conn.set_nodelay(true);
    if st.open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        st.open.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let st2 = st.clone();
    st.ex
        .spawn(async move {
            if let Err(e) = handle(conn.clone(), peer, at, &st2).await {
                log::debug!("proxy: {peer}: {e}");
            }
            close_gently(&conn, &st2).await;
            st2.open.fetch_sub(1, Ordering::AcqRel);
        })
        .detach();
}

async fn handle(
    client: TcpStream,
    peer: SocketAddrV4,
    at: SocketAddrV4,
    st: &State,
) -> std::io::Result<()> {
    let mut rd = Reader::new(client.clone());
    let mut first = true;
    loop {
        let snap = st.shared.snapshot();
        let Some(svc) = snap.proxy.iter().find(|s| s.at() == at) else {
            return answer(&client, 503).await;
        };
        if !first && !wait_next(&mut rd, svc, st).await {
            return Ok(());
        }
        let req = match read_head(&mut rd, peer, svc, st).await {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(status) => {
                st.log_request(
                    svc,
                    peer,
                    LogFields {
                        req: None,
                        status,
                        bytes: 0,
                    },
                );
                return answer(&client, status).await;
            }
        };
        first = false;
        let ctx = Ctx {
            st,
            svc,
            peer,
            client: &client,
        };
        if !exchange(&ctx, &mut rd, req).await? {
            return Ok(());
        }
    }
}

/// Closing with unread input makes the kernel send a reset, which can
/// destroy the last response before the client read it (a pipelined
/// request, the body of a refused one): end the sending side first and
/// read what still comes, briefly.
async fn close_gently(conn: &TcpStream, st: &State) {
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut b = [0u8; 4096];
        let mut seen = 0;
        while seen < LINGER_BYTES {
            match conn.clone().read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    };
    future::or(drain, st.clock.sleep(LINGER)).await;
}

/// Between requests: whether another one starts on this connection
/// before `client_idle_timeout`, and before this node winds down (its
/// idle connections then close, and their clients reconnect to the new
/// director).
async fn wait_next(rd: &mut Reader, svc: &ProxyService, st: &State) -> bool {
    if !rd.data().is_empty() {
        return true;
    }
    let wind_down = st
        .wind_down
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .1
        .clone();
    let more = async { matches!(rd.fill_head().await, Ok(n) if n > 0) };
    let idle = async {
        let _ = wind_down.recv().await;
        false
    };
    let timeout = async {
        st.clock.sleep(svc.opts.client_idle_timeout).await;
        false
    };
    future::or(more, future::or(idle, timeout)).await
}

/// The rewritten head, `Ok(None)` for a client that left before sending
/// one, or the status to answer with. The first request's head is timed
/// from the accept, a kept connection's from its first byte.
async fn read_head(
    rd: &mut Reader,
    peer: SocketAddrV4,
    svc: &ProxyService,
    st: &State,
) -> Result<Option<Rewritten>, u16> {
    let cookie = svc.opts.sticky.then(|| sticky::cookie_name(svc.port));
    let rules = HeadRules {
        trusted: &svc.trusted_proxies,
        persist_backend: svc.opts.persist_backend,
        sticky_cookie: cookie.as_deref(),
        max_body: svc.opts.max_body,
        max_headers: svc.opts.max_headers,
    };
    let read = async {
        loop {
            match rewrite_head(rd.data(), *peer.ip(), &rules) {
                // A head that came whole in one read is held to the limit
                // too, not only one still arriving.
                Ok(Some(r)) if r.consumed > svc.opts.max_header_bytes => return Err(431),
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => {}
                Err(e) => return Err(e.status()),
            }
            if rd.data().len() >= svc.opts.max_header_bytes {
                return Err(431);
            }
            match rd.fill_head().await {
                Ok(0) if rd.data().is_empty() => return Ok(None),
                Ok(0) => return Err(400),
                Ok(_) => {}
                Err(_) => return Ok(None),
            }
        }
    };
    future::or(read, async {
        st.clock.sleep(svc.opts.client_header_timeout).await;
        Err(408)
    })
    .await
}

/// An error the proxy answers itself, closing the connection after it.
pub async fn answer(client: &TcpStream, status: u16) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Service Unavailable",
    };
    let body = format!("{status} {reason}\n");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    send(client, resp.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_follow_the_role_and_the_services() {
        let a: SocketAddrV4 = "198.18.0.100:80".parse().unwrap();
        let b: SocketAddrV4 = "198.18.0.100:8080".parse().unwrap();
        let c: SocketAddrV4 = "198.18.0.101:80".parse().unwrap();
        type Case<'a> = (
            bool,
            &'a [SocketAddrV4],
            &'a [SocketAddrV4],
            (&'a [SocketAddrV4], &'a [SocketAddrV4]),
        );
        // (forwarding, services, open now) → (close, open)
        let cases: [Case; 5] = [
            (true, &[a, b], &[], (&[], &[a, b])),
            (true, &[a, b], &[a], (&[], &[b])),
            // A reload took b away and added a VIP's service.
            (true, &[a, c], &[a, b], (&[b], &[c])),
            // A node that does not forward accepts on nothing.
            (false, &[a, b], &[a, b], (&[a, b], &[])),
            (false, &[a], &[], (&[], &[])),
        ];
        for (i, (active, wanted, open, (gone, new))) in cases.into_iter().enumerate() {
            let got = listener_changes(active, wanted, open);
            assert_eq!(
                (got.0.as_slice(), got.1.as_slice()),
                (gone, new),
                "case {i}"
            );
        }
    }
}
