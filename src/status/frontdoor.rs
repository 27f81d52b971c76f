//! The front door of the status server: what faces the network, bounding
//! what tiny_http cannot (see [`super::server`] for why). One task per
//! connection on a single-threaded smol executor reads the request under one
//! deadline and byte limits, parses its head with httparse, answers the
//! malformed, oversized and slow itself, and relays the rest, rebuilt, to
//! tiny_http on a Unix socket; tiny_http's answer goes back with
//! `Connection: close` added.

use super::server::{text, token_matches, with, Backend, Limits, Reply, PEER_HEADER};
use crate::log_limit::LogLimiter;
use smol::future;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::{Async, LocalExecutor, Timer};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Headers kept per request; a request with more is answered 431.
const MAX_HEADERS: usize = 64;

/// Largest answer taken from tiny_http; a status report with a full event
/// log is a few hundred KiB.
const MAX_RESPONSE: usize = 32 << 20;

pub(crate) struct Door {
    pub backend: Arc<Backend>,
    pub max_body: usize,
    /// The one route that takes large bodies, and the admin token it
    /// needs before the front door buffers one.
    pub upload: Option<(Upload, String)>,
    /// Requests relayed to tiny_http at once; beyond this, 503.
    pub in_flight_cap: usize,
    pub limits: Limits,
}

/// A route whose requests may carry a large body (an upgrade image): only
/// with the admin token, one at a time, with time for its size.
#[derive(Clone, Debug)]
pub struct Upload {
    pub path: &'static str,
    pub max_body: usize,
    /// For the whole request, and again for the handler's answer.
    pub timeout: Duration,
}

struct Ctx {
    door: Door,
    /// An upload is being read or answered.
    uploading: Cell<bool>,
    in_flight: Cell<usize>,
    timeouts: RefCell<Tally>,
}

/// Serves `listener` until `stop` receives (or its sender is dropped).
/// Returning drops the executor, which cancels every connection task and so
/// closes their sockets.
pub(crate) fn run(listener: Async<TcpListener>, door: Door, stop: smol::channel::Receiver<()>) {
    let ctx = Rc::new(Ctx {
        door,
        uploading: Cell::new(false),
        in_flight: Cell::new(0),
        timeouts: RefCell::new(Tally::new("requests or answers not complete in time")),
    });
    let ex = LocalExecutor::new();
    let accept = accept_loop(&ex, listener, ctx);
    smol::block_on(ex.run(future::or(accept, async {
        let _ = stop.recv().await;
    })));
}

/// Where a connection is; each phase has its own cap and sheds its own
/// oldest, so a flood of new connections (which all start out reading)
/// never sheds a request that is already being answered.
#[derive(Clone, Copy)]
enum Phase {
    /// Accepted, request not complete yet.
    Reading = 0,
    /// Request complete (or refused): relaying and writing the answer.
    Answering = 1,
    /// Answer written; reading what the client still sends before closing.
    Lingering = 2,
}

/// Open connections per phase, oldest first; dropping a sender cancels
/// that connection's task, which closes its socket.
struct Open {
    phases: [BTreeMap<u64, smol::channel::Sender<()>>; 3],
    cap: usize,
    shed: Tally,
}

/// Counts what happens by the thousand under attack (sheds, timeouts) and
/// logs the count at most once a second: a line each would cost the I/O
/// thread more than the connection it reports.
struct Tally {
    what: &'static str,
    count: u64,
    since: Instant,
}

impl Tally {
    fn new(what: &'static str) -> Tally {
        Tally {
            what,
            count: 0,
            since: Instant::now(),
        }
    }

    fn add(&mut self) {
        self.count += 1;
        if self.since.elapsed() >= Duration::from_secs(1) {
            log::debug!(
                "status: {} {} in {:?}",
                self.count,
                self.what,
                self.since.elapsed()
            );
            self.count = 0;
            self.since = Instant::now();
        }
    }
}

impl Open {
    fn admit(&mut self, id: u64, cancel: smol::channel::Sender<()>) {
        self.make_room(Phase::Reading);
        self.phases[Phase::Reading as usize].insert(id, cancel);
    }

    fn advance(&mut self, id: u64, from: Phase, to: Phase) {
        if let Some(cancel) = self.phases[from as usize].remove(&id) {
            self.make_room(to);
            self.phases[to as usize].insert(id, cancel);
        }
    }

    fn make_room(&mut self, phase: Phase) {
        let p = &mut self.phases[phase as usize];
        while p.len() >= self.cap {
            if p.pop_first().is_some() {
                self.shed.add();
            }
        }
    }

    fn remove(&mut self, id: u64) {
        for p in &mut self.phases {
            p.remove(&id);
        }
    }

    /// Frees a descriptor: the oldest lingering connection, else the oldest
    /// reading one, else the oldest being answered.
    fn shed_one(&mut self) {
        for phase in [Phase::Lingering, Phase::Reading, Phase::Answering] {
            if self.phases[phase as usize].pop_first().is_some() {
                return;
            }
        }
    }
}

async fn accept_loop(ex: &LocalExecutor<'_>, listener: Async<TcpListener>, ctx: Rc<Ctx>) {
    let open = Rc::new(RefCell::new(Open {
        phases: Default::default(),
        cap: ctx.door.limits.max_connections.max(1),
        shed: Tally::new("connections shed at the per-phase cap"),
    }));
    let mut next_id = 0u64;
    let mut accept_errors = LogLimiter::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors: free one by shedding a connection and
                // back off, rather than spin or stop serving. Other errors
                // (a client that reset before accept) are per-connection;
                // the short pause only guards against a persistent one
                // turning this into a busy loop.
                let pause = match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        accept_errors.warn(&format!("status: accept failed: {e}"));
                        open.borrow_mut().shed_one();
                        50
                    }
                    _ => {
                        log::debug!("status: accept failed: {e}");
                        5
                    }
                };
                Timer::after(Duration::from_millis(pause)).await;
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let (cancel_tx, cancel_rx) = smol::channel::bounded::<()>(1);
        open.borrow_mut().admit(id, cancel_tx);
        let conn_open = open.clone();
        let ctx = ctx.clone();
        ex.spawn(async move {
            future::or(serve_conn(stream, peer, &ctx, id, &conn_open), async {
                let _ = cancel_rx.recv().await;
            })
            .await;
            conn_open.borrow_mut().remove(id);
        })
        .detach();
        // With a backlog of connections, accept is ready again at once: let
        // the new task (and the others) run before taking the next one, so
        // a flood cannot shed a request before it was even read.
        future::yield_now().await;
    }
}

/// Runs `fut` until `deadline`; `None` if the deadline came first.
async fn before<T>(deadline: Instant, fut: impl std::future::Future<Output = T>) -> Option<T> {
    future::or(async { Some(fut.await) }, async {
        Timer::at(deadline).await;
        None
    })
    .await
}

async fn serve_conn(
    mut stream: Async<TcpStream>,
    peer: SocketAddr,
    ctx: &Ctx,
    id: u64,
    open: &RefCell<Open>,
) {
    let limits = &ctx.door.limits;
    let deadline = Instant::now() + limits.request_timeout;
    let head = before(deadline, read_head(&mut stream, limits.max_head)).await;
    // Held until the answer is written: one upload's memory at a time.
    let mut _upload = None;
    let read = match head {
        None => None,
        Some(Err(e)) => Some(Err(e)),
        Some(Ok((head, rest))) => match upload_slot(ctx, &head.request) {
            UploadSlot::Busy => Some(Err(ReadError::Reject(with(
                text(503, "another upload is in progress\n"),
                "Retry-After",
                "10",
            )))),
            slot => {
                let (max_body, deadline) = match slot {
                    UploadSlot::Granted(guard, u) => {
                        _upload = Some(guard);
                        (u.max_body, Instant::now() + u.timeout)
                    }
                    _ => (ctx.door.max_body, deadline),
                };
                let upload = _upload.is_some();
                let read = read_body(&mut stream, head, rest, max_body);
                before(deadline, read).await.map(|r| {
                    r.map(|mut req| {
                        req.upload = upload;
                        req
                    })
                })
            }
        },
    };
    open.borrow_mut()
        .advance(id, Phase::Reading, Phase::Answering);
    let bytes = match read {
        None => {
            ctx.timeouts.borrow_mut().add();
            finish(text(408, "request timeout\n"), false)
        }
        Some(Err(ReadError::Closed)) => return,
        Some(Err(ReadError::Reject(resp))) => finish(resp, false),
        Some(Ok(req)) => relay(&req, peer, ctx).await,
    };
    let write_deadline = Instant::now() + limits.response_timeout;
    if before(write_deadline, stream.write_all(&bytes))
        .await
        .is_none()
    {
        ctx.timeouts.borrow_mut().add();
        return;
    }
    let _ = stream.get_ref().shutdown(Shutdown::Write);
    open.borrow_mut()
        .advance(id, Phase::Answering, Phase::Lingering);
    // Lingering close: read what the client still sends (e.g. the body of a
    // refused upload) so that closing does not reset the connection before
    // the client has read the answer. Bounded in time and bytes.
    let linger = Instant::now() + Duration::from_millis(500);
    // On the heap, as every buffer a connection's task holds across an
    // await (see `read_head`).
    let mut sink = vec![0u8; 4096];
    let mut left = 256 * 1024usize;
    while left > 0 {
        match before(linger, stream.read(&mut sink)).await {
            Some(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

/// What is relayed of a request: all the routes need.
#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    authorization: Option<String>,
    body: Vec<u8>,
    /// On the upload route, with its longer deadline.
    upload: bool,
}

enum ReadError {
    /// The client went away (or failed) before sending a whole request.
    Closed,
    /// Answer with this and close.
    Reject(Reply),
}

fn bad(msg: &str) -> ReadError {
    ReadError::Reject(text(400, format!("bad request: {msg}\n")))
}

fn too_large_head() -> ReadError {
    ReadError::Reject(text(431, "request head too large\n"))
}

/// The head's fields, once httparse has found all of it.
struct Head {
    len: usize,
    request: Request,
    content_length: u64,
    expects_continue: bool,
}

/// Parses `buf`; `Ok(None)` while the head is incomplete.
fn parse_head(buf: &[u8], max_head: usize) -> Result<Option<Head>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_head => return Err(too_large_head()),
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(too_large_head()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large_head()),
        Err(httparse::Error::Version) => {
            return Err(ReadError::Reject(text(505, "only HTTP/1.0 and HTTP/1.1\n")))
        }
        Err(e) => return Err(bad(&e.to_string())),
    };
    let target = req.path.unwrap_or("");
    // Origin form only, and ASCII: the target is written into tiny_http's
    // request line as it is.
    if !target.starts_with('/') || !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("malformed target"));
    }
    let mut content_length: Option<u64> = None;
    let mut authorization = None;
    let mut expects_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Reject(text(
                501,
                "transfer-encoding not supported; send Content-Length\n",
            )));
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value.is_empty() || !h.value.iter().all(u8::is_ascii_digit) {
                return Err(bad("malformed content-length"));
            }
            let n: u64 = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("content-length out of range"))?;
            if content_length.is_some_and(|l| l != n) {
                return Err(bad("conflicting content-length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("authorization") {
            // Relayed as a header line of its own: printable ASCII only. A
            // value that is not is dropped, and the request is refused 401.
            let printable = h
                .value
                .iter()
                .all(|b| *b == b'\t' || (0x20..0x7f).contains(b));
            authorization = printable.then(|| String::from_utf8_lossy(h.value).into_owned());
        }
    }
    Ok(Some(Head {
        len,
        request: Request {
            method: req.method.unwrap_or("").to_string(),
            target: target.to_string(),
            authorization,
            body: Vec::new(),
            upload: false,
        },
        content_length: content_length.unwrap_or(0),
        expects_continue,
    }))
}

/// Clears [`Ctx::uploading`] when the upload's connection is done.
struct UploadGuard<'a>(&'a Cell<bool>);

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

enum UploadSlot<'a> {
    /// Not the upload route (or without the token): the usual limits.
    No,
    Busy,
    Granted(UploadGuard<'a>, &'a Upload),
}

/// Whether `req` may send a large body: a POST to the upload route with
/// the admin token, while no other upload is under way.
fn upload_slot<'a>(ctx: &'a Ctx, req: &Request) -> UploadSlot<'a> {
    let Some((u, token)) = &ctx.door.upload else {
        return UploadSlot::No;
    };
    let path = req.target.split('?').next().unwrap_or("");
    let bearer = req.authorization.as_deref().and_then(|a| {
        let (scheme, cred) = a.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| cred.trim_matches([' ', '\t']))
    });
    if req.method != "POST" || path != u.path || !bearer.is_some_and(|b| token_matches(token, b)) {
        return UploadSlot::No;
    }
    if ctx.uploading.replace(true) {
        return UploadSlot::Busy;
    }
    UploadSlot::Granted(UploadGuard(&ctx.uploading), u)
}

/// Reads until the head is complete; returns it and the bytes after it.
async fn read_head(
    stream: &mut Async<TcpStream>,
    max_head: usize,
) -> Result<(Head, Vec<u8>), ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    // On the heap: an array held across an await lives in the task's
    // future, which is moved (copied) as it is spawned. With the relay's
    // buffer as well that was 20 KiB a connection, and under a connect
    // flood copying it took a quarter of the I/O thread's time.
    let mut chunk = vec![0u8; 2048];
    let head = loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head) = parse_head(&buf, max_head)? {
            break head;
        }
    };
    let rest = buf[head.len..].to_vec();
    Ok((head, rest))
}

/// Reads the body announced in `head` (`rest` is what came with the head).
async fn read_body(
    stream: &mut Async<TcpStream>,
    head: Head,
    rest: Vec<u8>,
    max_body: usize,
) -> Result<Request, ReadError> {
    if head.content_length > max_body as u64 {
        return Err(ReadError::Reject(text(
            413,
            format!("body larger than {max_body} bytes\n"),
        )));
    }
    let len = head.content_length as usize;
    let mut req = head.request;
    let mut body = rest;
    body.reserve(len.saturating_sub(body.len()));
    // On the heap, as in `read_head`.
    let mut chunk = vec![0u8; 16 * 1024];
    if body.len() < len {
        if head.expects_continue {
            stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| ReadError::Closed)?;
        }
        while body.len() < len {
            let want = (len - body.len()).min(chunk.len());
            let n = stream
                .read(&mut chunk[..want])
                .await
                .map_err(|_| ReadError::Closed)?;
            if n == 0 {
                return Err(ReadError::Closed);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    // Anything after the body would be a pipelined request; one per connection.
    body.truncate(len);
    req.body = body;
    Ok(req)
}

/// Counts a relay in flight for as long as it lives, so that a connection
/// shed mid-relay gives its slot back too.
struct InFlight<'a>(&'a Cell<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Hands `req` to tiny_http and returns its answer, ready for the client.
async fn relay(req: &Request, peer: SocketAddr, ctx: &Ctx) -> Vec<u8> {
    let head_only = req.method == "HEAD";
    if ctx.in_flight.get() >= ctx.door.in_flight_cap {
        return finish(with(text(503, "busy\n"), "Retry-After", "1"), head_only);
    }
    ctx.in_flight.set(ctx.in_flight.get() + 1);
    let _slot = InFlight(&ctx.in_flight);
    let answer_time = match &ctx.door.upload {
        Some((u, _)) if req.upload => u.timeout,
        _ => ctx.door.limits.response_timeout,
    };
    let deadline = Instant::now() + answer_time;
    let Some((path, generation)) = ctx.door.backend.target() else {
        return finish(text(503, "stopping\n"), head_only);
    };
    match before(deadline, exchange(&path, req, peer)).await {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                ctx.door.backend.refused(generation);
            }
            log::debug!("status: {peer}: relaying to tiny_http: {e}");
            finish(
                with(
                    text(503, "status handler unavailable\n"),
                    "Retry-After",
                    "1",
                ),
                head_only,
            )
        }
        None => finish(text(503, "handler did not answer in time\n"), head_only),
    }
}

async fn exchange(
    path: &std::path::Path,
    req: &Request,
    peer: SocketAddr,
) -> std::io::Result<Vec<u8>> {
    let mut s = Async::<UnixStream>::connect(path).await?;
    // Rebuilt from checked parts (method: an httparse token; target: ASCII
    // without spaces; authorization: printable), so nothing the client sent
    // can add a line. HTTP/1.1 with Connection: close makes tiny_http answer
    // once, with a Content-Length, and then close.
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: duet\r\nConnection: close\r\n{PEER_HEADER}: {peer}\r\n\
         Content-Length: {}\r\n",
        req.method,
        req.target,
        req.body.len()
    );
    if let Some(a) = &req.authorization {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    head.push_str("\r\n");
    // Apart: an upload's body is not copied again.
    s.write_all(head.as_bytes()).await?;
    s.write_all(&req.body).await?;
    let mut resp = Vec::with_capacity(16 * 1024);
    // On the heap, as in `read_head`.
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if resp.len() + n > MAX_RESPONSE {
            return Err(std::io::Error::other("answer too large"));
        }
        resp.extend_from_slice(&chunk[..n]);
    }
    close_after(resp).ok_or_else(|| std::io::Error::other("malformed answer"))
}

/// A response the front door gives itself, in the bytes tiny_http writes.
fn finish(r: Reply, head_only: bool) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail.
    let _ = r.raw_print(&mut out, tiny_http::HTTPVersion(1, 1), &[], head_only, None);
    close_after(out).unwrap_or_default()
}

/// Adds `Connection: close` after the status line (tiny_http refuses to set
/// that header itself); `None` if `resp` is not an HTTP/1.1 response.
fn close_after(mut resp: Vec<u8>) -> Option<Vec<u8>> {
    if !resp.starts_with(b"HTTP/1.1 ") {
        return None;
    }
    let line_end = memchr::memmem::find(&resp, b"\r\n")? + 2;
    resp.splice(line_end..line_end, b"Connection: close\r\n".iter().copied());
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<Head>, u16> {
        parse_head(bytes, 8192).map_err(|e| match e {
            ReadError::Reject(r) => r.status_code().0,
            ReadError::Closed => 0,
        })
    }

    #[test]
    fn parses_a_normal_request() {
        let bytes = b"POST /api/failover?x HTTP/1.0\r\nHost: a\r\nAuthorization:  Bearer t \r\n\
                      Content-Length: 3\r\n\r\nabc";
        let h = head(bytes).unwrap().unwrap();
        assert_eq!(h.request.method, "POST");
        assert_eq!(h.request.target, "/api/failover?x");
        assert_eq!(h.request.authorization.as_deref(), Some("Bearer t"));
        assert_eq!(h.content_length, 3);
        assert_eq!(h.len, bytes.len() - 3);
        assert!(head(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn refuses_what_cannot_be_relayed() {
        assert_eq!(head(b"GET * HTTP/1.1\r\n\r\n").err(), Some(400));
        assert_eq!(head(b"GET http://x/ HTTP/1.1\r\n\r\n").err(), Some(400));
        assert_eq!(head(b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n").err(), Some(400));
        let many: Vec<u8> = [
            b"GET / HTTP/1.1\r\n".to_vec(),
            b"A: b\r\n".repeat(65),
            b"\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(head(&many).err(), Some(431));
        let h = head(b"POST / HTTP/1.1\r\nAuthorization: Bearer \xff\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.request.authorization, None);
    }

    #[test]
    fn close_is_added_after_the_status_line() {
        let r = close_after(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nx".to_vec()).unwrap();
        assert_eq!(r, b"HTTP/1.1 200 OK\r\nConnection: close\r\nA: b\r\n\r\nx");
        assert!(close_after(b"HTTP/1.0 200 OK\r\n\r\n".to_vec()).is_none());
        assert!(close_after(Vec::new()).is_none());
    }

    #[test]
    fn parse_head_never_panics_on_noise() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5000 {
            let len = rng.usize(0..200);
            let alphabet = b"GET /HTP1.:\r\n %az\xff";
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            let _ = parse_head(&bytes, 100);
        }
    }
}
