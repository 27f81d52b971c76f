//! The request head as the backend sees it: hop-by-hop headers dropped,
//! forwarding headers set, and `Connection: close` so one backend
//! connection carries one request (the relay then needs no body framing).
use std::net::Ipv4Addr;

/// Why a head cannot be forwarded, with the status the client gets.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x: 400.
    Malformed,
    /// More than `MAX_HEADERS` headers: 431.
    TooManyHeaders,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed => 400,
            HeadError::TooManyHeaders => 431,
        }
    }
}

pub const MAX_HEADERS: usize = 100;

pub struct Rewritten {
    /// The head to send, ending in the blank line.
    pub head: Vec<u8>,
    /// Bytes of `buf` the head took; the rest is body already read.
    pub consumed: usize,
    /// The client asked for a protocol upgrade (WebSocket): relay as is.
    pub upgrade: bool,
    /// RFC 9110 idempotent method: safe to send again to another backend
    /// when connecting to the first one fails.
    pub idempotent: bool,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];
const FORWARDING: &[&str] = &["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// `Ok(None)` while the head is incomplete. Forwarding headers from a
/// client not in `trusted` are dropped rather than believed.
pub fn rewrite_head(
    buf: &[u8],
    client: Ipv4Addr,
    trusted: &[Ipv4Addr],
) -> Result<Option<Rewritten>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    let trust = trusted.contains(&client);
    let find = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let upgrade_to = find("upgrade").filter(|_| {
        find("connection").is_some_and(|c| {
            String::from_utf8_lossy(c)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    let mut out = Vec::with_capacity(consumed + 128);
    out.extend_from_slice(format!("{method} {path} HTTP/1.{version}\r\n").as_bytes());
    let mut xff = None;
    for h in req.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        if lower == "x-forwarded-for" && trust {
            xff = Some(String::from_utf8_lossy(h.value).into_owned());
            continue;
        }
        if HOP_BY_HOP.contains(&lower.as_str()) || FORWARDING.contains(&lower.as_str()) {
            if trust && lower != "x-forwarded-for" && FORWARDING.contains(&lower.as_str()) {
                push_header(&mut out, h.name, h.value);
            }
            continue;
        }
        push_header(&mut out, h.name, h.value);
    }
    let xff = match xff {
        Some(prev) => format!("{prev}, {client}"),
        None => client.to_string(),
    };
    push_header(&mut out, "X-Forwarded-For", xff.as_bytes());
    if !(trust && find("x-forwarded-proto").is_some()) {
        push_header(&mut out, "X-Forwarded-Proto", b"http");
    }
    if let Some(host) = find("host").filter(|_| !(trust && find("x-forwarded-host").is_some())) {
        push_header(&mut out, "X-Forwarded-Host", host);
    }
    match upgrade_to {
        Some(proto) => {
            push_header(&mut out, "Upgrade", proto);
            push_header(&mut out, "Connection", b"upgrade");
        }
        None => push_header(&mut out, "Connection", b"close"),
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(Rewritten {
        head: out,
        consumed,
        upgrade: upgrade_to.is_some(),
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
    }))
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 5);
    const LB: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 9);

    fn text(buf: &[u8], trusted: &[Ipv4Addr]) -> String {
        let r = rewrite_head(buf, CLIENT, trusted).unwrap().unwrap();
        String::from_utf8(r.head).unwrap()
    }

    #[test]
    fn partial_head_waits() {
        assert!(rewrite_head(b"GET / HTTP/1.1\r\nHost: a", CLIENT, &[])
            .unwrap()
            .is_none());
    }

    #[test]
    fn sets_forwarding_headers_and_closes() {
        let req = b"GET /x HTTP/1.1\r\nHost: www.example\r\nConnection: keep-alive\r\n\r\nBODY";
        let r = rewrite_head(req, CLIENT, &[]).unwrap().unwrap();
        assert_eq!(&req[r.consumed..], b"BODY");
        assert!(r.idempotent);
        let t = String::from_utf8(r.head).unwrap();
        assert!(t.starts_with("GET /x HTTP/1.1\r\nHost: www.example\r\n"));
        assert!(t.contains("X-Forwarded-For: 198.18.1.5\r\n"));
        assert!(t.contains("X-Forwarded-Proto: http\r\n"));
        assert!(t.contains("X-Forwarded-Host: www.example\r\n"));
        assert!(t.ends_with("Connection: close\r\n\r\n"));
        assert!(!t.contains("keep-alive"));
        let post = rewrite_head(b"POST / HTTP/1.1\r\n\r\n", CLIENT, &[])
            .unwrap()
            .unwrap();
        assert!(!post.idempotent);
    }

    #[test]
    fn untrusted_forwarding_headers_are_dropped() {
        let req = b"GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\r\n";
        let t = text(req, &[]);
        assert!(!t.contains("6.6.6.6"));
        assert!(!t.contains("https"));
        assert!(t.contains("X-Forwarded-For: 198.18.1.5\r\n"));
    }

    #[test]
    fn trusted_proxy_chain_is_appended() {
        let req =
            b"GET / HTTP/1.1\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Proto: https\r\n\r\n";
        let t = text(req, &[CLIENT, LB]);
        assert!(t.contains("X-Forwarded-For: 203.0.113.7, 198.18.1.5\r\n"));
        assert!(t.contains("X-Forwarded-Proto: https\r\n"));
        assert!(!t.contains("X-Forwarded-Proto: http\r\n"));
    }

    #[test]
    fn websocket_upgrade_is_kept() {
        let req = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let r = rewrite_head(req, CLIENT, &[]).unwrap().unwrap();
        assert!(r.upgrade);
        let t = String::from_utf8(r.head).unwrap();
        assert!(t.contains("Upgrade: websocket\r\nConnection: upgrade\r\n"));
    }

    #[test]
    fn bad_input_gets_a_status() {
        assert_eq!(
            rewrite_head(b"\x00\x01 nonsense\r\n\r\n", CLIENT, &[]).err(),
            Some(HeadError::Malformed)
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..150 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let e = rewrite_head(&many, CLIENT, &[]).err().unwrap();
        assert_eq!(e.status(), 431);
    }
}
