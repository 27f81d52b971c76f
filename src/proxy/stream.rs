//! A buffered read side that gives back what it read past a message (the
//! next pipelined request, or the start of a body), and the body relay
//! that forwards exactly one framed body from it.
use std::sync::Arc;

use async_net::TcpStream;
use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::Async;

use super::frame::{Body, FrameError};

/// Bytes read at a time: a body streams through in pieces this size.
const CHUNK: usize = 32 * 1024;
const HEAD_CHUNK: usize = 4 * 1024;

pub struct Reader {
    pub stream: TcpStream,
    /// The same socket, for waiting on readiness without a read.
    io: Arc<Async<std::net::TcpStream>>,
    buf: Vec<u8>,
    pos: usize,
    /// The socket had no more to give at the last read (it filled less
    /// than asked): the next read waits for readiness first instead of
    /// failing with EAGAIN, then arming the poller, then reading again.
    /// That is two syscalls of the three saved on each keep-alive wait.
    drained: bool,
}

impl Reader {
    /// A connection whose peer may already have sent something (an
    /// accepted client).
    pub fn new(stream: TcpStream) -> Reader {
        Reader::with(stream, false)
    }

    /// A backend connection about to get a request: nothing can come
    /// before it is sent.
    pub fn upstream(stream: TcpStream) -> Reader {
        Reader::with(stream, true)
    }

    fn with(stream: TcpStream, drained: bool) -> Reader {
        Reader {
            io: stream.clone().into(),
            stream,
            buf: Vec::new(),
            pos: 0,
            drained,
        }
    }

    /// For the idle pool, after a message that left nothing unread: a
    /// buffer a body grew goes, so idle connections hold a head's worth.
    pub fn for_reuse(mut self) -> Reader {
        if self.buf.capacity() > HEAD_CHUNK {
            self.buf = Vec::new();
        }
        self.drained = true;
        self
    }

    /// Read but not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more of a body; 0 at end of input.
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        self.fill_up_to(CHUNK).await
    }

    /// Reads more of a head, or waits for the next message: in small
    /// pieces, and first giving back a body's buffer, so thousands of idle
    /// or slow connections hold a few KiB each.
    pub async fn fill_head(&mut self) -> std::io::Result<usize> {
        self.fill_up_to(HEAD_CHUNK).await
    }

    async fn fill_up_to(&mut self, n: usize) -> std::io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > n {
            self.buf = Vec::new();
        }
        if self.drained {
            self.io.readable().await?;
        }
        let len = self.buf.len();
        self.buf.resize(len + n, 0);
        let r = self.stream.read(&mut self.buf[len..]).await;
        let got = r.as_ref().map_or(0, |got| *got);
        self.buf.truncate(len + got);
        self.drained = got < n;
        r
    }
}

/// Writes all of `data` (the stream is a shared handle: clones are cheap).
pub async fn send(s: &TcpStream, data: &[u8]) -> std::io::Result<()> {
    s.clone().write_all(data).await
}

/// Why a body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The sending side failed or closed early.
    #[error("sender: {0}")]
    Source(std::io::Error),
    /// The receiving side failed.
    #[error("receiver: {0}")]
    Sink(std::io::Error),
    #[error("framing: {0}")]
    Frame(FrameError),
    /// More than `max_body` bytes.
    #[error("over max_body")]
    TooLarge,
}

/// Forwards one body from `src` to `dst`, after `lead` (the message's
/// head, or nothing); returns the body's size. Bytes after the body stay in
/// `src` for the next message.
pub async fn relay_body(
    src: &mut Reader,
    dst: &TcpStream,
    body: &mut Body,
    limit: Option<u64>,
    lead: Vec<u8>,
) -> Result<u64, RelayError> {
    let mut dst = dst.clone();
    let mut sent = 0u64;
    // The head goes out in one write with the body bytes already read (a
    // small response then takes one segment and one syscall, not two), or
    // alone before waiting for more, so a slow body never holds it back.
    let mut lead = (!lead.is_empty()).then_some(lead);
    loop {
        if !src.data().is_empty() && !body.done() {
            let n = body.advance(src.data()).map_err(RelayError::Frame)?;
            sent += n as u64;
            if limit.is_some_and(|l| sent > l) {
                return Err(RelayError::TooLarge);
            }
            let piece = &src.data()[..n];
            match lead.take() {
                Some(mut out) => {
                    out.extend_from_slice(piece);
                    dst.write_all(&out).await
                }
                None => dst.write_all(piece).await,
            }
            .map_err(RelayError::Sink)?;
            src.consume(n);
        }
        if let Some(out) = lead.take() {
            dst.write_all(&out).await.map_err(RelayError::Sink)?;
        }
        if body.done() {
            return Ok(sent);
        }
        match src.fill().await {
            Ok(0) if body.until_close() => return Ok(sent),
            Ok(0) => {
                return Err(RelayError::Source(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed before the end of the body",
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(RelayError::Source(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::Framing;
    use super::*;
    use async_net::TcpListener;

    /// A connected pair over loopback: (the side the test writes, the
    /// side a `Reader` reads).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Everything `s` receives until its peer closes.
    async fn all(mut s: TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        out
    }

    #[test]
    fn reader_keeps_what_follows_a_message() {
        smol::block_on(async {
            let (w, r) = pair().await;
            let mut rd = Reader::new(r);
            send(&w, b"GET / HTTP/1.1\r\n\r\nGET /next").await.unwrap();
            while rd.data().len() < 27 {
                assert!(rd.fill_head().await.unwrap() > 0);
            }
            rd.consume(18);
            assert_eq!(rd.data(), b"GET /next");
            // Consuming past the end is clamped, and leaves nothing.
            rd.consume(100);
            assert!(rd.data().is_empty());
            drop(w);
            assert_eq!(rd.fill_head().await.unwrap(), 0, "end of input");
        })
    }

    #[test]
    fn an_upstream_reader_waits_for_the_answer_instead_of_failing() {
        smol::block_on(async {
            let (w, r) = pair().await;
            // Nothing has been sent yet: the first read must wait for
            // readiness and then return the bytes, not EAGAIN.
            let mut rd = Reader::upstream(r);
            let writer = smol::spawn(async move {
                smol::Timer::after(std::time::Duration::from_millis(20)).await;
                send(&w, b"HTTP/1.1 200 OK\r\n").await.unwrap();
                w
            });
            assert_eq!(rd.fill_head().await.unwrap(), 17);
            assert_eq!(rd.data(), b"HTTP/1.1 200 OK\r\n");
            drop(writer.await);
        })
    }

    /// Relays `input` framed as `framing` with `limit`; the result, what
    /// the receiver got, and what stayed in the reader.
    fn relay(
        input: &'static [u8],
        framing: Framing,
        limit: Option<u64>,
        lead: &[u8],
    ) -> (Result<u64, String>, Vec<u8>, Vec<u8>) {
        let lead = lead.to_vec();
        smol::block_on(async move {
            let (src_w, src_r) = pair().await;
            let (dst_w, dst_r) = pair().await;
            send(&src_w, input).await.unwrap();
            src_w.shutdown(std::net::Shutdown::Write).unwrap();
            let mut rd = Reader::new(src_r);
            let mut body = Body::new(framing);
            let r = relay_body(&mut rd, &dst_w, &mut body, limit, lead).await;
            drop(dst_w);
            let got = all(dst_r).await;
            (r.map_err(|e| e.to_string()), got, rd.data().to_vec())
        })
    }

    #[test]
    fn a_body_is_relayed_exactly_and_the_rest_stays() {
        let (r, got, rest) = relay(b"hello, worldNEXT", Framing::Length(12), None, b"HEAD ");
        assert_eq!(r, Ok(12));
        assert_eq!(
            got, b"HEAD hello, world",
            "the head goes out before the body"
        );
        assert_eq!(rest, b"NEXT");

        let (r, got, rest) = relay(b"5\r\nhello\r\n0\r\n\r\nNEXT", Framing::Chunked, None, b"");
        assert_eq!(r, Ok(15));
        assert_eq!(got, b"5\r\nhello\r\n0\r\n\r\n");
        assert_eq!(rest, b"NEXT");

        let (r, got, _) = relay(b"all of it", Framing::UntilClose, None, b"");
        assert_eq!(r, Ok(9));
        assert_eq!(got, b"all of it");

        // No body: the head alone goes out, and nothing is read (what
        // follows is the next message's, still in the socket).
        let (r, got, rest) = relay(b"NEXT", Framing::Empty, None, b"HEAD");
        assert_eq!(r, Ok(0));
        assert_eq!(got, b"HEAD");
        assert!(rest.is_empty());
    }

    #[test]
    fn a_short_oversized_or_misframed_body_is_an_error() {
        let (r, _, _) = relay(b"short", Framing::Length(12), None, b"");
        assert!(r.unwrap_err().starts_with("sender:"));
        let (r, _, _) = relay(b"0123456789", Framing::Length(10), Some(4), b"");
        assert_eq!(r.unwrap_err(), "over max_body");
        let (r, _, _) = relay(b"zz\r\nhello\r\n", Framing::Chunked, None, b"");
        assert!(r.unwrap_err().starts_with("framing:"));
    }
}
