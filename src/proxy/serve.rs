//! Listeners and connections: accept on VIP:port while this node directs,
//! read and rewrite the request head, then relay bytes both ways.
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_net::{TcpListener, TcpStream};
use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};

use super::{rewrite_head, Picker, ProxyService};
use crate::dataplane::Shared;

/// A request head larger than this gets 431.
const MAX_HEAD: usize = 64 * 1024;
/// A client that has not sent its head by then gets 408.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections beyond this are closed at accept: bounded tasks and memory.
const MAX_CONNECTIONS: usize = 10_000;
/// How soon a new director listens (a client connecting before is refused).
const POLL: Duration = Duration::from_millis(20);

struct State {
    shared: Arc<Shared>,
    picker: Mutex<Picker>,
    open: AtomicUsize,
}

/// Runs until the daemon stops; listens only while `shared` is active. On
/// stop, requests in flight get up to `stop_drain` to finish.
pub fn spawn(
    vip: Ipv4Addr,
    shared: Arc<Shared>,
    stop_drain: Duration,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || {
            let st = Arc::new(State {
                shared,
                picker: Mutex::new(Picker::default()),
                open: AtomicUsize::new(0),
            });
            smol::block_on(supervise(vip, st.clone()));
            smol::block_on(drain(&st, stop_drain));
        })
}

async fn supervise(vip: Ipv4Addr, st: Arc<State>) {
    let mut listening: HashMap<u16, smol::Task<()>> = HashMap::new();
    while !st.shared.stopping() {
        let wanted: Vec<u16> = if st.shared.is_active() {
            st.shared.snapshot().proxy.iter().map(|s| s.port).collect()
        } else {
            Vec::new()
        };
        // Dropping a task stops accepting; connections already accepted
        // run on to their end.
        listening.retain(|p, _| wanted.contains(p));
        for port in wanted {
            if listening.contains_key(&port) {
                continue;
            }
            match TcpListener::bind(SocketAddr::from((vip, port))).await {
                Ok(l) => {
                    log::info!("proxy: accepting on {vip}:{port}");
                    listening.insert(port, smol::spawn(accept_loop(l, port, st.clone())));
                }
                Err(e) => log::warn!("proxy: binding {vip}:{port}: {e}"),
            }
        }
        smol::Timer::after(POLL).await;
    }
}

async fn drain(st: &State, limit: Duration) {
    let deadline = std::time::Instant::now() + limit;
    while st.open.load(Ordering::Acquire) > 0 && std::time::Instant::now() < deadline {
        smol::Timer::after(Duration::from_millis(50)).await;
    }
    let left = st.open.load(Ordering::Acquire);
    if left > 0 {
        log::warn!("proxy: stopping with {left} connections still open");
    }
}

async fn accept_loop(l: TcpListener, port: u16, st: Arc<State>) {
    loop {
        let (conn, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("proxy: accept on port {port}: {e}");
                smol::Timer::after(POLL).await;
                continue;
            }
        };
        let SocketAddr::V4(peer) = peer else { continue };
        if st.open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            st.open.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let st2 = st.clone();
        smol::spawn(async move {
            if let Err(e) = handle(conn, peer, port, &st2).await {
                log::debug!("proxy: {peer}: {e}");
            }
            st2.open.fetch_sub(1, Ordering::AcqRel);
        })
        .detach();
    }
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddrV4,
    port: u16,
    st: &State,
) -> std::io::Result<()> {
    let snap = st.shared.snapshot();
    let Some(svc) = snap.proxy.iter().find(|s| s.port == port) else {
        return answer(&mut client, 503).await;
    };
    let mut buf = Vec::with_capacity(4096);
    let rewritten = match read_head(&mut client, &mut buf, peer, svc).await {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(status) => return answer(&mut client, status).await,
    };
    let picker = || st.picker.lock().unwrap_or_else(|e| e.into_inner());
    let Some(backend) = picker().pick(svc, peer) else {
        return answer(&mut client, 503).await;
    };
    let mut upstream = match connect(backend).await {
        Ok(u) => u,
        Err(e) => {
            log::warn!("proxy: backend {backend}: {e}");
            // Nothing reached the backend: an idempotent request may go
            // to another one, once.
            let retry = match rewritten.idempotent {
                true => picker().pick_other(svc, peer, backend),
                false => None,
            };
            let Some(second) = retry else {
                return answer(&mut client, 502).await;
            };
            match connect(second).await {
                Ok(u) => u,
                Err(e) => {
                    log::warn!("proxy: backend {second}: {e}");
                    return answer(&mut client, 502).await;
                }
            }
        }
    };
    upstream.write_all(&rewritten.head).await?;
    upstream.write_all(&buf[rewritten.consumed..]).await?;
    drop(buf);
    relay(client, upstream).await
}

/// The rewritten head, `Ok(None)` for a client that left before sending
/// one, or the status to answer with.
async fn read_head(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    peer: SocketAddrV4,
    svc: &ProxyService,
) -> Result<Option<super::Rewritten>, u16> {
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            match rewrite_head(buf, *peer.ip(), &svc.trusted_proxies) {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => {}
                Err(e) => return Err(e.status()),
            }
            if buf.len() >= MAX_HEAD {
                return Err(431);
            }
            match client.read(&mut chunk).await {
                Ok(0) if buf.is_empty() => return Ok(None),
                Ok(0) => return Err(400),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Ok(None),
            }
        }
    };
    future::or(read, async {
        smol::Timer::after(HEAD_TIMEOUT).await;
        Err(408)
    })
    .await
}

async fn connect(backend: SocketAddrV4) -> std::io::Result<TcpStream> {
    future::or(TcpStream::connect(backend), async {
        smol::Timer::after(CONNECT_TIMEOUT).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))
    })
    .await
}

/// Bytes both ways until the backend closes (it was asked to after one
/// response); the client's end of input is passed on as a half-close.
async fn relay(client: TcpStream, upstream: TcpStream) -> std::io::Result<()> {
    let up = {
        let (mut c, u) = (client.clone(), upstream.clone());
        async move {
            let mut w = u.clone();
            smol::io::copy(&mut c, &mut w).await?;
            u.shutdown(std::net::Shutdown::Write)
        }
    };
    let down = {
        let (mut u, mut c) = (upstream.clone(), client.clone());
        async move {
            smol::io::copy(&mut u, &mut c).await?;
            c.shutdown(std::net::Shutdown::Write)
        }
    };
    let up = smol::spawn(up);
    let result = down.await;
    drop(up);
    result
}

async fn answer(client: &mut TcpStream, status: u16) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    };
    let body = format!("{status} {reason}\n");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(resp.as_bytes()).await?;
    client.flush().await
}
