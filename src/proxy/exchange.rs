//! One request and its response: pick a backend (route, sticky cookie,
//! scheduler), take an idle connection to it or open one, send the head
//! and stream the body while the response streams back, then give the
//! backend connection to the idle pool when its framing allows.
use std::net::SocketAddrV4;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_net::TcpStream;
use futures_util::future::{select, Either};
use smol::future;

use super::frame::{Body, Framing};
use super::response::{parse_response, Response};
use super::serve::{answer, LogFields, State};
use super::stream::{relay_body, send, Reader, RelayError};
use super::{sticky, Pool, ProxyService, Rewritten};

/// A response head larger than this is a bad gateway.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

pub struct Ctx<'a> {
    pub st: &'a State,
    pub svc: &'a ProxyService,
    pub peer: SocketAddrV4,
    pub client: &'a TcpStream,
}

impl Ctx<'_> {
    fn log(&self, req: &Rewritten, status: u16, bytes: u64) {
        let fields = LogFields {
            req: Some(req),
            status,
            bytes,
        };
        self.st.log_request(self.svc, self.peer, fields);
    }
}

struct Upstream {
    addr: SocketAddrV4,
    rd: Reader,
    /// Taken from the idle pool: the backend may have closed it meanwhile.
    reused: bool,
}

enum Attempt {
    Done {
        status: u16,
        bytes: u64,
        keep_client: bool,
        reuse: bool,
    },
    /// 101: both sides relay raw bytes from here on.
    Switched,
    Failed {
        /// What the client is told, when no byte of a response reached it.
        answer: Option<u16>,
        /// The backend sent nothing at all.
        silent: bool,
        status: u16,
    },
}

/// After a failed attempt: send the request again on a fresh connection,
/// tell the client `code`, or close on it (part of a response went out).
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Resend,
    Answer(u16),
    Close,
}

/// A kept-alive connection the backend closed before a byte of answer is
/// the one failure worth a second try, and only for a request that can be
/// sent twice: idempotent, with nothing consumed beyond its head.
fn after_failure(answer: Option<u16>, silent: bool, reused: bool, resendable: bool) -> Next {
    match answer {
        _ if silent && reused && resendable => Next::Resend,
        Some(code) => Next::Answer(code),
        None => Next::Close,
    }
}

/// Serves `req`; whether the client connection carries another request.
pub async fn exchange(ctx: &Ctx<'_>, rd: &mut Reader, req: Rewritten) -> std::io::Result<bool> {
    rd.consume(req.consumed);
    let svc = ctx.svc;
    let pool = svc.pool_for(req.host.as_deref());
    let key = &ctx.st.sticky_key;
    let stuck = req
        .sticky
        .as_deref()
        .filter(|_| svc.opts.sticky)
        .and_then(|v| sticky::find(key, pool.backends, v));
    let picked = match stuck {
        Some(b) => Some(b),
        None => lock(&ctx.st.picker).pick(&pool, ctx.peer),
    };
    let Some(backend) = picked else {
        return refuse(ctx, &req, 503).await;
    };
    let Some(mut up) = obtain(ctx, &pool, backend.addr, &req).await else {
        return refuse(ctx, &req, 502).await;
    };
    lock(&ctx.st.picker).start(up.addr, Instant::now());
    let _busy = Busy {
        st: ctx.st,
        addr: up.addr,
    };
    // The cookie names the backend that really answers (a retry may have
    // gone elsewhere).
    let cookie = pool
        .backends
        .iter()
        .find(|b| b.addr == up.addr)
        .filter(|b| svc.opts.sticky && stuck.map(|s| s.addr) != Some(b.addr))
        .map(|b| sticky::set_cookie(svc.port, &sticky::token(key, b)));
    let resendable = resendable(&req);
    loop {
        let reused = up.reused;
        match attempt(ctx, rd, &mut up, &req, cookie.as_deref()).await {
            Attempt::Done {
                status,
                bytes,
                keep_client,
                reuse,
            } => {
                ctx.log(&req, status, bytes);
                if reuse && svc.opts.persist_backend {
                    lock(&ctx.st.idle).put(
                        (svc.port, up.addr),
                        up.rd.for_reuse(),
                        Instant::now(),
                        svc.opts.backend_idle_timeout,
                        svc.opts.backend_idle_max,
                    );
                }
                return Ok(keep_client && !ctx.st.winding_down());
            }
            Attempt::Switched => {
                ctx.log(&req, 101, 0);
                tunnel(rd, &mut up.rd, ctx.client).await?;
                return Ok(false);
            }
            Attempt::Failed {
                answer,
                silent,
                status,
            } => match after_failure(answer, silent, reused, resendable) {
                Next::Resend => {
                    log::debug!(
                    "proxy: idle connection to {} closed before answering; resending on a new one",
                    up.addr
                );
                    match connect(up.addr, ctx).await {
                        Ok(s) => up = fresh(up.addr, s),
                        Err(e) => {
                            log::warn!("proxy: backend {}: {e}", up.addr);
                            return refuse(ctx, &req, 502).await;
                        }
                    }
                }
                Next::Answer(code) => {
                    if code == 504 {
                        log::warn!(
                            "proxy: backend {} sent no response within {:?}",
                            up.addr,
                            svc.opts.response_timeout
                        );
                    }
                    return refuse(ctx, &req, code).await;
                }
                Next::Close => {
                    ctx.log(&req, status, 0);
                    return Ok(false);
                }
            },
        }
    }
}

/// Resending is safe only when nothing of the request was consumed
/// beyond its head and the method allows it.
fn resendable(req: &Rewritten) -> bool {
    req.idempotent && req.body == Framing::Empty && !req.upgrade
}

/// A request in flight on `addr`, for lc/wlc, until dropped.
struct Busy<'a> {
    st: &'a State,
    addr: SocketAddrV4,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        lock(&self.st.picker).finish(self.addr);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The proxy's own answer; the connection closes after it.
async fn refuse(ctx: &Ctx<'_>, req: &Rewritten, status: u16) -> std::io::Result<bool> {
    ctx.log(req, status, 0);
    answer(ctx.client, status).await?;
    Ok(false)
}

/// An idle connection to `addr` that is still open, else a new one; a
/// failed connect sends an idempotent request to another backend, once.
async fn obtain(
    ctx: &Ctx<'_>,
    pool: &Pool<'_>,
    addr: SocketAddrV4,
    req: &Rewritten,
) -> Option<Upstream> {
    let svc = ctx.svc;
    // Without persist_backend nothing is ever put in the idle pool.
    let resendable = resendable(req);
    loop {
        let now = Instant::now();
        let taken = lock(&ctx.st.idle).take(&(svc.port, addr), now);
        let Some((rd, since)) = taken else { break };
        if !needs_check(now - since, resendable) || still_open(&rd.stream).await {
            return Some(Upstream {
                addr,
                rd,
                reused: true,
            });
        }
    }
    let first = match connect(addr, ctx).await {
        Ok(s) => return Some(fresh(addr, s)),
        Err(e) => e,
    };
    log::warn!("proxy: backend {addr}: {first}");
    if !req.idempotent {
        return None;
    }
    // Nothing reached the backend: an idempotent request may go to
    // another one, once.
    let second = lock(&ctx.st.picker).pick_other(pool, ctx.peer, addr)?;
    match connect(second, ctx).await {
        Ok(s) => Some(fresh(second, s)),
        Err(e) => {
            log::warn!("proxy: backend {second}: {e}");
            None
        }
    }
}

fn fresh(addr: SocketAddrV4, s: TcpStream) -> Upstream {
    Upstream {
        addr,
        rd: Reader::upstream(s),
        reused: false,
    }
}

/// Whether a connection idle for `idle_for` must be checked before use
/// (a `peek`, one system call). A backend closes an idle connection, or
/// sends an unasked 408 first, on its own idle timer, seconds long: one
/// idle briefly is checked only for a request that could not be sent
/// again if it turned out closed.
fn needs_check(idle_for: Duration, resendable: bool) -> bool {
    !resendable || idle_for >= UNCHECKED_IDLE
}

/// Below every common backend's keep-alive timeout (nginx 75 s, Apache
/// 5 s, HAProxy 1 s by default).
const UNCHECKED_IDLE: Duration = Duration::from_millis(500);

/// An idle connection with anything to read (its close, or bytes no
/// request asked for) is of no use.
async fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    future::poll_once(s.peek(&mut b)).await.is_none()
}

async fn connect(addr: SocketAddrV4, ctx: &Ctx<'_>) -> std::io::Result<TcpStream> {
    let connect = async {
        let s = TcpStream::connect(addr).await?;
        // As for clients: a head and its body are separate writes.
        s.set_nodelay(true)?;
        Ok(s)
    };
    future::or(connect, async {
        ctx.st.clock.sleep(ctx.svc.opts.connect_timeout).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))
    })
    .await
}

/// Sends the request on `up` and relays the response; the request body
/// streams up while the response (a 100 Continue first, perhaps) comes
/// back, so neither waits for the other.
async fn attempt(
    ctx: &Ctx<'_>,
    rd: &mut Reader,
    up: &mut Upstream,
    req: &Rewritten,
    cookie: Option<&str>,
) -> Attempt {
    if send(&up.rd.stream, &req.head).await.is_err() {
        return Attempt::Failed {
            answer: Some(502),
            silent: true,
            status: 502,
        };
    }
    let uploaded = AtomicBool::new(req.body == Framing::Empty);
    let answered = AtomicBool::new(false);
    // Closed when the request is all sent: the response timeout runs
    // from then on, so a long upload is not cut by it.
    let (sent_tx, sent_rx) = smol::channel::bounded::<()>(1);
    let up_w = up.rd.stream.clone();
    let up_w_addr = up.addr;
    let max_body = ctx.svc.opts.max_body;
    let upload = async {
        let mut body = Body::new(req.body);
        let r = relay_body(rd, &up_w, &mut body, max_body, Vec::new()).await;
        if let Err(e) = &r {
            log::debug!("proxy: {}: request body to {}: {e}", ctx.peer, up_w_addr);
        }
        uploaded.store(r.is_ok(), Relaxed);
        drop(sent_tx);
        r
    };
    let download = respond(ctx, &mut up.rd, req, cookie, &uploaded, &answered, sent_rx);
    let (upload, download) = (pin!(upload), pin!(download));
    match select(upload, download).await {
        Either::Left((Ok(_), download)) => download.await,
        // The backend stopped reading; it may still answer (an early 413).
        Either::Left((Err(RelayError::Sink(_)), download)) => download.await,
        Either::Left((Err(RelayError::TooLarge), _)) => Attempt::Failed {
            answer: (!answered.load(Relaxed)).then_some(413),
            silent: false,
            status: 413,
        },
        Either::Left((Err(RelayError::Frame(_)), _)) => Attempt::Failed {
            answer: (!answered.load(Relaxed)).then_some(400),
            silent: false,
            status: 400,
        },
        Either::Left((Err(RelayError::Source(_)), _)) => Attempt::Failed {
            answer: None,
            silent: false,
            status: 400,
        },
        // Answered before the whole request was sent: `uploaded` was
        // false throughout, so neither connection is kept.
        Either::Right((done, _)) => done,
    }
}

/// Why no final response head came.
enum NoHead {
    /// Closed or failed; `silent` if not one byte came first.
    Gone {
        silent: bool,
    },
    Bad,
    Timeout,
    ClientGone,
}

async fn respond(
    ctx: &Ctx<'_>,
    upr: &mut Reader,
    req: &Rewritten,
    cookie: Option<&str>,
    uploaded: &AtomicBool,
    answered: &AtomicBool,
    sent: smol::channel::Receiver<()>,
) -> Attempt {
    let timeout = ctx.svc.opts.response_timeout;
    let heads = async {
        let mut got_any = false;
        loop {
            match parse_response(upr.data(), req.head_method) {
                Ok(Some(r)) if r.interim => {
                    upr.consume(r.consumed);
                    // An interim answer leaves room for a final one,
                    // the proxy's own included.
                    if send(ctx.client, &r.client_head(false, None)).await.is_err() {
                        return Err(NoHead::ClientGone);
                    }
                    continue;
                }
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(_) => return Err(NoHead::Bad),
            }
            if upr.data().len() >= MAX_RESPONSE_HEAD {
                return Err(NoHead::Bad);
            }
            match upr.fill_head().await {
                Ok(n) if n > 0 => got_any = true,
                _ => return Err(NoHead::Gone { silent: !got_any }),
            }
        }
    };
    let timer = async {
        let _ = sent.recv().await;
        ctx.st.clock.sleep(timeout).await;
        Err(NoHead::Timeout)
    };
    let resp: Response = match future::or(heads, timer).await {
        Ok(r) => r,
        Err(why) => {
            let (code, silent) = match why {
                NoHead::Gone { silent } => (502, silent),
                NoHead::Bad => (502, false),
                NoHead::Timeout => (504, false),
                NoHead::ClientGone => (502, false),
            };
            return Attempt::Failed {
                answer: (!answered.load(Relaxed)).then_some(code),
                silent,
                status: code,
            };
        }
    };
    upr.consume(resp.consumed);
    if resp.switching && req.upgrade {
        if send(ctx.client, &resp.client_head(false, cookie))
            .await
            .is_err()
        {
            return Attempt::Failed {
                answer: None,
                silent: false,
                status: 101,
            };
        }
        return Attempt::Switched;
    }
    let keep_client = req.keep_alive
        && ctx.svc.opts.persist_client
        && uploaded.load(Relaxed)
        && resp.body != Framing::UntilClose
        && !resp.switching
        && !ctx.st.winding_down();
    // From here the client may have bytes of this answer: no other.
    answered.store(true, Relaxed);
    let head = resp.client_head(keep_client, cookie);
    let mut body = Body::new(resp.body);
    match relay_body(upr, ctx.client, &mut body, None, head).await {
        Ok(bytes) => Attempt::Done {
            status: resp.status,
            bytes,
            keep_client,
            reuse: resp.reusable && upr.data().is_empty() && uploaded.load(Relaxed),
        },
        Err(_) => Attempt::Failed {
            answer: None,
            silent: false,
            status: resp.status,
        },
    }
}

/// After a 101: what each side sent past the heads, then bytes both ways.
async fn tunnel(rd: &mut Reader, upr: &mut Reader, client: &TcpStream) -> std::io::Result<()> {
    send(&upr.stream, rd.data()).await?;
    rd.consume(rd.data().len());
    send(client, upr.data()).await?;
    upr.consume(upr.data().len());
    relay(client.clone(), upr.stream.clone()).await
}

/// Bytes both ways until the backend closes; the client's end of input is
/// passed on as a half-close.
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
    // The client's half runs beside the backend's and is dropped with it:
    // the backend's end of the stream is the end of the exchange.
    let up = async {
        let _ = up.await;
        future::pending().await
    };
    future::or(down, up).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_briefly_idle_connection_goes_unchecked_only_for_a_resendable_request() {
        let ms = Duration::from_millis;
        for (idle, resendable, want) in [
            (ms(0), true, false),
            (ms(499), true, false),
            (ms(500), true, true),
            (ms(0), false, true),
            (ms(4000), false, true),
        ] {
            assert_eq!(needs_check(idle, resendable), want, "{idle:?} {resendable}");
        }
    }

    #[test]
    fn only_a_silent_kept_connection_is_tried_again() {
        // (answer, silent, reused, resendable) → next
        let cases = [
            ((Some(502), true, true, true), Next::Resend),
            ((Some(502), true, false, true), Next::Answer(502)),
            ((Some(502), true, true, false), Next::Answer(502)),
            ((Some(502), false, true, true), Next::Answer(502)),
            ((Some(504), false, false, true), Next::Answer(504)),
            ((None, false, true, true), Next::Close),
            ((None, true, true, true), Next::Resend),
        ];
        for ((answer, silent, reused, resendable), want) in cases {
            assert_eq!(
                after_failure(answer, silent, reused, resendable),
                want,
                "{answer:?} silent {silent} reused {reused} resendable {resendable}"
            );
        }
    }
}
