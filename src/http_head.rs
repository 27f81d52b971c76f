//! HTTP/1.x response heads, parsed by httparse: the one response parser of
//! the CLI client (`crate::status::client`) and the HTTP health probe.

/// Headers kept per response; a response with more is refused.
const MAX_HEADERS: usize = 64;

/// What the callers need of a response head.
#[derive(Debug, PartialEq)]
pub struct Head {
    pub status: u16,
    /// Bytes up to and including the blank line.
    pub len: usize,
    pub content_length: Option<usize>,
    /// `Transfer-Encoding` was sent (neither caller decodes chunks).
    pub transfer_encoding: bool,
}

/// Parses the status line and headers once they are complete; `Ok(None)`
/// while more bytes are needed. httparse also takes bare-LF line ends,
/// which some backends send.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => return Err("not an HTTP/1.x response".into()),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let status = resp.code.ok_or("no status code")?;
    let mut content_length = None;
    let mut transfer_encoding = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("bad content-length")?;
            if content_length.is_some_and(|l| l != n) {
                return Err("conflicting content-length".into());
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
        }
    }
    Ok(Some(Head {
        status,
        len,
        content_length,
        transfer_encoding,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap(), None);
        assert_eq!(parse_head(b"HTT").unwrap(), None);
        let head = b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            parse_head(head).unwrap(),
            Some(Head {
                status: 204,
                len: head.len(),
                content_length: Some(0),
                transfer_encoding: false,
            })
        );
        assert_eq!(
            parse_head(b"HTTP/1.0 200 OK\nServer: x\n\nbody\r\n\r\n").unwrap(),
            Some(Head {
                status: 200,
                len: 27,
                content_length: None,
                transfer_encoding: false,
            })
        );
        let chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(chunked.unwrap().unwrap().transfer_encoding);
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 2000 X\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"hello world\r\n\r\n").is_err());
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .is_err()
        );
    }
}
