//! The backend's response head as the client sees it, and what the relay
//! must know of it: where its body ends (so both connections can be
//! reused), whether the backend keeps its connection, and whether it is an
//! interim (1xx) answer or a protocol switch.
use super::frame::Framing;
use std::io::Write;

use super::head::{body_headers, lists_token, one_of, push_header, HOP_BY_HOP, MAX_HEADERS};

/// The backend sent something that is not an HTTP/1.x response (502).
#[derive(Debug, PartialEq, Eq)]
pub struct BadResponse;

pub struct Response {
    pub status: u16,
    /// Bytes of the buffer the head took.
    pub consumed: usize,
    pub body: Framing,
    /// The backend allows another request on this connection.
    pub reusable: bool,
    /// 1xx other than 101: forwarded, then the real answer follows.
    pub interim: bool,
    /// 101: from here on both sides relay raw bytes.
    pub switching: bool,
    /// The head, without its final blank line, hop-by-hop headers dropped;
    /// the relay adds `Connection` (and a sticky cookie) to it.
    pub head: Vec<u8>,
}

/// `Ok(None)` while the head is incomplete. `head_request`: the request
/// was HEAD, so no body follows whatever the headers say.
pub fn parse_response(buf: &[u8], head_request: bool) -> Result<Option<Response>, BadResponse> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let consumed = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(BadResponse);
    };
    let reason = resp.reason.unwrap_or("");
    let connection = resp
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .fold(Vec::new(), |mut all, h| {
            all.extend_from_slice(h.value);
            all.push(b',');
            all
        });
    let switching = status == 101;
    let interim = (100..200).contains(&status) && !switching;
    let body = if interim || switching || status == 204 || status == 304 || head_request {
        Framing::Empty
    } else {
        match body_headers(resp.headers).map_err(|()| BadResponse)? {
            (_, Some(true)) => Framing::Chunked,
            (_, Some(false)) => Framing::UntilClose,
            (Some(n), None) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    let keeps = match version {
        1 => !lists_token(&connection, "close"),
        _ => lists_token(&connection, "keep-alive"),
    };
    let mut head = Vec::with_capacity(consumed + 64);
    // Writing to a Vec cannot fail.
    let _ = write!(head, "HTTP/1.1 {status} {reason}\r\n");
    for h in resp.headers.iter() {
        let keep_for_switch = switching && h.name.eq_ignore_ascii_case("upgrade");
        if one_of(h.name, HOP_BY_HOP) && !keep_for_switch {
            continue;
        }
        push_header(&mut head, h.name, h.value);
    }
    Ok(Some(Response {
        status,
        consumed,
        body,
        reusable: keeps && body != Framing::UntilClose && !switching,
        interim,
        switching,
        head,
    }))
}

impl Response {
    /// The head to send to the client: `keep` says whether its connection
    /// stays open after this response.
    pub fn client_head(&self, keep: bool, set_cookie: Option<&str>) -> Vec<u8> {
        let mut out = self.head.clone();
        if let Some(c) = set_cookie {
            push_header(&mut out, "Set-Cookie", c.as_bytes());
        }
        let conn: &[u8] = match (self.switching, self.interim, keep) {
            (true, _, _) => b"upgrade",
            (false, true, _) => b"",
            (false, false, true) => b"keep-alive",
            (false, false, false) => b"close",
        };
        if !conn.is_empty() {
            push_header(&mut out, "Connection", conn);
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(buf: &[u8], head: bool) -> Response {
        parse_response(buf, head).unwrap().unwrap()
    }

    #[test]
    fn framing_by_status_method_and_headers() {
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false);
        assert_eq!(
            (r.body, r.reusable, r.consumed),
            (Framing::Length(5), true, 38)
        );
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(r.body, Framing::Empty);
        for s in [204, 304] {
            let r = parse(
                format!("HTTP/1.1 {s} X\r\nContent-Length: 5\r\n\r\n").as_bytes(),
                false,
            );
            assert_eq!(r.body, Framing::Empty, "{s}");
        }
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!((r.body, r.reusable), (Framing::Chunked, true));
        // No length: the body ends at close, so nothing is reused.
        let r = parse(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((r.body, r.reusable), (Framing::UntilClose, false));
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!(r.body, Framing::UntilClose);
        assert_eq!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                false
            )
            .err(),
            Some(BadResponse)
        );
        assert_eq!(
            parse_response(b"SSH-2.0\r\n\r\n", false).err(),
            Some(BadResponse)
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn backend_keep_alive_by_version_and_connection() {
        let reusable = |b: &[u8]| parse(b, false).reusable;
        assert!(!reusable(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!reusable(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(reusable(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn client_head_sets_connection_and_cookie() {
        let r = parse(
            b"HTTP/1.0 200 OK\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nContent-Length: 0\r\nX-A: b\r\n\r\n",
            false,
        );
        let t = String::from_utf8(r.client_head(true, Some("duet_80=ab; Path=/"))).unwrap();
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: b\r\nSet-Cookie: duet_80=ab; Path=/\r\nConnection: keep-alive\r\n\r\n"
        );
        assert!(String::from_utf8(r.client_head(false, None))
            .unwrap()
            .ends_with("Connection: close\r\n\r\n"));
        let cont = parse(b"HTTP/1.1 100 Continue\r\n\r\n", false);
        assert!(cont.interim);
        assert_eq!(
            cont.client_head(true, None),
            b"HTTP/1.1 100 Continue\r\n\r\n"
        );
        let sw = parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            false,
        );
        assert!(sw.switching && !sw.reusable);
        assert!(String::from_utf8(sw.client_head(false, None))
            .unwrap()
            .contains("Upgrade: websocket\r\nConnection: upgrade\r\n"));
    }
}
