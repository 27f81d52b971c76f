//! Where an HTTP/1.1 message body ends (RFC 9112 section 6), tracked over
//! bytes as they stream past so a connection can carry the next message
//! without the body ever being held whole. Sans-IO: the relay feeds bytes
//! and forwards the prefix this says belongs to the body.

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD responses, 1xx/204/304, requests without length).
    Empty,
    Length(u64),
    Chunked,
    /// A response without length: the body ends when the backend closes,
    /// so neither connection can be reused after it.
    UntilClose,
}

/// The body cannot be delimited: the connection it came on must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad chunk size line")]
    BadChunkSize,
    #[error("chunk size line or trailer too long")]
    LineTooLong,
    #[error("chunk data not followed by CRLF")]
    BadChunkEnd,
}

/// Chunk-size lines (with extensions) and trailer lines longer than this
/// are refused: otherwise a peer could make the relay count forever
/// without forwarding anything framed.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far, whether an extension began.
    Size {
        size: u64,
        digits: usize,
        ext: bool,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section; `len` bytes into the current line.
    Trailer {
        len: usize,
    },
    TrailerLf {
        len: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    left: Left,
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Bytes(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

impl Body {
    pub fn new(f: Framing) -> Body {
        let left = match f {
            Framing::Empty | Framing::Length(0) => Left::Done,
            Framing::Length(n) => Left::Bytes(n),
            Framing::Chunked => Left::Chunked(Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            }),
            Framing::UntilClose => Left::UntilClose,
        };
        Body { left, line: 0 }
    }

    pub fn done(&self) -> bool {
        self.left == Left::Done
    }

    /// Ends only at end of input.
    pub fn until_close(&self) -> bool {
        self.left == Left::UntilClose
    }

    /// How many leading bytes of `data` belong to the body; once `done()`,
    /// the rest is the next message.
    pub fn advance(&mut self, data: &[u8]) -> Result<usize, FrameError> {
        let mut used = 0;
        while used < data.len() {
            match &mut self.left {
                Left::Done => break,
                Left::UntilClose => return Ok(data.len()),
                Left::Bytes(n) => {
                    let take = (*n).min((data.len() - used) as u64);
                    *n -= take;
                    used += take as usize;
                    if *n == 0 {
                        self.left = Left::Done;
                    }
                }
                Left::Chunked(Chunk::Data(n)) => {
                    let take = (*n).min((data.len() - used) as u64);
                    *n -= take;
                    used += take as usize;
                    if *n == 0 {
                        self.left = Left::Chunked(Chunk::DataCr);
                    }
                }
                Left::Chunked(c) => {
                    let next = step(*c, data[used], &mut self.line)?;
                    used += 1;
                    self.left = next;
                }
            }
        }
        Ok(used)
    }
}

/// One byte of chunked framing outside chunk data.
fn step(c: Chunk, b: u8, line: &mut usize) -> Result<Left, FrameError> {
    *line += 1;
    if *line > MAX_LINE {
        return Err(FrameError::LineTooLong);
    }
    let next = match c {
        Chunk::Size { size, digits, ext } => match b {
            b'\r' if digits > 0 => Chunk::SizeLf { size },
            _ if ext => Chunk::Size { size, digits, ext },
            b';' | b' ' | b'\t' if digits > 0 => Chunk::Size {
                size,
                digits,
                ext: true,
            },
            _ => {
                let d = (b as char).to_digit(16).ok_or(FrameError::BadChunkSize)?;
                let size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(u64::from(d)))
                    .ok_or(FrameError::BadChunkSize)?;
                Chunk::Size {
                    size,
                    digits: digits + 1,
                    ext,
                }
            }
        },
        Chunk::SizeLf { size } => {
            if b != b'\n' {
                return Err(FrameError::BadChunkSize);
            }
            *line = 0;
            if size == 0 {
                Chunk::Trailer { len: 0 }
            } else {
                Chunk::Data(size)
            }
        }
        Chunk::DataCr if b == b'\r' => Chunk::DataLf,
        Chunk::DataLf if b == b'\n' => {
            *line = 0;
            Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            }
        }
        Chunk::DataCr | Chunk::DataLf => return Err(FrameError::BadChunkEnd),
        Chunk::Trailer { len } if b == b'\r' => Chunk::TrailerLf { len },
        Chunk::Trailer { len } => Chunk::Trailer { len: len + 1 },
        Chunk::TrailerLf { len } => {
            if b != b'\n' {
                return Err(FrameError::BadChunkEnd);
            }
            if len == 0 {
                return Ok(Left::Done);
            }
            *line = 0;
            Chunk::Trailer { len: 0 }
        }
        Chunk::Data(_) => unreachable!("chunk data is taken in bulk by advance"),
    };
    Ok(Left::Chunked(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in pieces of `step` bytes; returns the body length.
    fn feed(f: Framing, data: &[u8], step: usize) -> Result<(usize, bool), FrameError> {
        let mut b = Body::new(f);
        let mut used = 0;
        for piece in data.chunks(step) {
            let n = b.advance(piece)?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((used, b.done()))
    }

    #[test]
    fn length_ends_exactly_and_leaves_the_next_message() {
        let data = b"hello worldGET / HTTP/1.1\r\n";
        for step in [1, 3, data.len()] {
            assert_eq!(feed(Framing::Length(11), data, step), Ok((11, true)));
        }
        assert!(Body::new(Framing::Empty).done());
        assert!(Body::new(Framing::Length(0)).done());
        assert_eq!(feed(Framing::Length(20), b"short", 5), Ok((5, false)));
    }

    #[test]
    fn chunked_with_extensions_and_trailers_in_any_pieces() {
        let body = b"4;name=v\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n";
        let mut data = body.to_vec();
        data.extend_from_slice(b"NEXT");
        for step in 1..=body.len() {
            assert_eq!(
                feed(Framing::Chunked, &data, step),
                Ok((body.len(), true)),
                "step {step}"
            );
        }
        assert_eq!(feed(Framing::Chunked, b"0\r\n\r\nX", 1), Ok((5, true)));
        assert_eq!(feed(Framing::Chunked, b"A\r\n0123", 7), Ok((7, false)));
    }

    #[test]
    fn bad_chunked_framing_is_an_error_not_a_guess() {
        assert_eq!(
            feed(Framing::Chunked, b"zz\r\n", 4),
            Err(FrameError::BadChunkSize)
        );
        assert_eq!(
            feed(Framing::Chunked, b"\r\n", 2),
            Err(FrameError::BadChunkSize)
        );
        assert_eq!(
            feed(Framing::Chunked, b"2\r\nabXY", 7),
            Err(FrameError::BadChunkEnd)
        );
        assert_eq!(
            feed(Framing::Chunked, b"fffffffffffffffff\r\n", 32),
            Err(FrameError::BadChunkSize)
        );
        let long = vec![b'1'; 3]
            .into_iter()
            .chain(vec![b';'; 5000])
            .collect::<Vec<_>>();
        assert_eq!(
            feed(Framing::Chunked, &long, 100),
            Err(FrameError::LineTooLong)
        );
    }

    #[test]
    fn until_close_takes_everything() {
        let mut b = Body::new(Framing::UntilClose);
        assert_eq!(b.advance(b"abc"), Ok(3));
        assert!(!b.done() && b.until_close());
    }
}
