//! The request head as the backend sees it: hop-by-hop headers dropped,
//! forwarding headers set, the connection kept open or not, plus what the
//! relay needs to know about the request (body framing, keep-alive,
//! routing and sticky inputs, the access log's fields).
use std::io::Write;
use std::net::Ipv4Addr;

use super::frame::Framing;

/// Why a head cannot be forwarded, with the status the client gets.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or a body whose length cannot be known: 400.
    Malformed,
    /// More headers than the service's `max_headers`: 431.
    TooManyHeaders,
    /// Content-Length over the service's `max_body`: 413.
    BodyTooLarge,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::Malformed => 400,
            HeadError::TooManyHeaders => 431,
            HeadError::BodyTooLarge => 413,
        }
    }
}

/// Headers a request may have unless the service sets `max_headers`,
/// and a backend's response always.
pub const MAX_HEADERS: usize = 100;

/// What the service decides about every request head.
pub struct HeadRules<'a> {
    pub trusted: &'a [Ipv4Addr],
    /// Ask the backend to keep its connection for the next request.
    pub persist_backend: bool,
    /// The name of duet's sticky cookie, when the service has one.
    pub sticky_cookie: Option<&'a str>,
    pub max_body: Option<u64>,
    /// More headers than this: 431.
    pub max_headers: usize,
}

pub struct Rewritten {
    /// The head to send, ending in the blank line.
    pub head: Vec<u8>,
    /// Bytes of `buf` the head took; the rest is body already read.
    pub consumed: usize,
    /// The client asked for a protocol upgrade (WebSocket): relay as is
    /// once the backend agrees.
    pub upgrade: bool,
    /// RFC 9110 idempotent method: safe to send again when no byte of an
    /// answer came back.
    pub idempotent: bool,
    pub body: Framing,
    /// The client allows another request on its connection after this one.
    pub keep_alive: bool,
    /// HEAD: the response has no body whatever its headers say.
    pub head_method: bool,
    /// The `Host` without its port, lower case: for `[[service.route]]`.
    pub host: Option<String>,
    /// The value of duet's sticky cookie.
    pub sticky: Option<String>,
    /// `GET /x HTTP/1.1`, for the access log.
    pub line: String,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
}

/// Headers that describe one connection, not the message: never relayed.
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];
const FORWARDING: &[&str] = &["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// Whether header `name` is one of `names` (lower case), without
/// lowering a copy of it for every header of every message.
pub(crate) fn one_of(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Whether a `Connection` header value lists `token`.
pub fn lists_token(value: &[u8], token: &str) -> bool {
    String::from_utf8_lossy(value)
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A message's Content-Length and Transfer-Encoding, as RFC 9112 section
/// 6.3 reads them: `Err` where the length is ambiguous (both present,
/// conflicting lengths), which smuggling relies on.
pub fn body_headers(headers: &[httparse::Header]) -> Result<(Option<u64>, Option<bool>), ()> {
    let mut length = None;
    let mut chunked = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map_err(|_| ())?;
            for part in v.split(',') {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                let n: u64 = part.parse().map_err(|_| ())?;
                if length.is_some_and(|l| l != n) {
                    return Err(());
                }
                length = Some(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value);
            let last = v.split(',').map(str::trim).rfind(|t| !t.is_empty());
            chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")));
        }
    }
    if length.is_some() && chunked.is_some() {
        return Err(());
    }
    Ok((length, chunked))
}

/// `Ok(None)` while the head is incomplete. Forwarding headers from a
/// client not in `trusted` are dropped rather than believed.
pub fn rewrite_head(
    buf: &[u8],
    client: Ipv4Addr,
    rules: &HeadRules,
) -> Result<Option<Rewritten>, HeadError> {
    // Sized by the service: one small allocation a head, next to the
    // head's own.
    let mut headers = vec![httparse::EMPTY_HEADER; rules.max_headers];
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
    let trust = rules.trusted.contains(&client);
    let find = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let text = |name: &str| find(name).map(|v| String::from_utf8_lossy(v).into_owned());
    let connection = find("connection").unwrap_or(b"");
    let upgrade_to = find("upgrade").filter(|_| lists_token(connection, "upgrade"));
    let body = match body_headers(req.headers) {
        // A request's body cannot end at a close (the answer needs the
        // connection), so any other transfer coding is refused.
        Ok((_, Some(false))) | Err(()) => return Err(HeadError::Malformed),
        Ok((_, Some(true))) if version == 0 => return Err(HeadError::Malformed),
        Ok((_, Some(true))) => Framing::Chunked,
        Ok((Some(n), None)) => Framing::Length(n),
        Ok((None, None)) => Framing::Empty,
    };
    if let (Framing::Length(n), Some(max)) = (body, rules.max_body) {
        if n > max {
            return Err(HeadError::BodyTooLarge);
        }
    }
    let keep_alive = match version {
        1 => !lists_token(connection, "close"),
        _ => lists_token(connection, "keep-alive"),
    };
    let mut out = Vec::with_capacity(consumed + 128);
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{method} {path} HTTP/1.{version}\r\n");
    let mut xff = None;
    for h in req.headers.iter() {
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("x-forwarded-for") && trust {
            xff = Some(String::from_utf8_lossy(h.value).into_owned());
            continue;
        }
        // duet's own cookie is for duet: the backend sees the others.
        if let (Some(name), true) = (rules.sticky_cookie, is("cookie")) {
            match without_cookie(h.value, name) {
                Some(rest) if rest.is_empty() => {}
                Some(rest) => push_header(&mut out, h.name, &rest),
                None => push_header(&mut out, h.name, h.value),
            }
            continue;
        }
        let forwarding = one_of(h.name, FORWARDING);
        if one_of(h.name, HOP_BY_HOP) || forwarding {
            if trust && forwarding && !is("x-forwarded-for") {
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
        None if rules.persist_backend => push_header(&mut out, "Connection", b"keep-alive"),
        None => push_header(&mut out, "Connection", b"close"),
    }
    out.extend_from_slice(b"\r\n");
    let sticky = rules.sticky_cookie.and_then(|name| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .find_map(|h| cookie_value(h.value, name))
    });
    Ok(Some(Rewritten {
        head: out,
        consumed,
        upgrade: upgrade_to.is_some(),
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        body,
        keep_alive,
        head_method: method == "HEAD",
        host: text("host").map(|h| host_name(&h)),
        sticky,
        line: format!("{method} {path} HTTP/1.{version}"),
        referer: text("referer"),
        user_agent: text("user-agent"),
    }))
}

/// `Host: WWW.Example:8000` routes as `www.example`.
fn host_name(h: &str) -> String {
    let h = h.trim();
    let bare = match h.rsplit_once(':') {
        Some((name, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (!name.contains(':') || name.ends_with(']')) =>
        {
            name
        }
        _ => h,
    };
    bare.to_ascii_lowercase()
}

fn cookie_value(header: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(header).split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// A `Cookie` value without the pairs named `name`; `None` when it has
/// none (the header goes on as it came).
fn without_cookie(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let named = |pair: &&[u8]| {
        let key = pair.split(|b| *b == b'=').next().unwrap_or(b"");
        key.trim_ascii() == name.as_bytes()
    };
    let pairs: Vec<&[u8]> = header.split(|b| *b == b';').collect();
    if !pairs.iter().any(named) {
        return None;
    }
    let kept: Vec<&[u8]> = pairs
        .into_iter()
        .filter(|p| !named(p))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
        .collect();
    Some(kept.join(&b"; "[..]))
}

pub fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
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

    fn rules(trusted: &[Ipv4Addr]) -> HeadRules<'_> {
        HeadRules {
            trusted,
            persist_backend: false,
            sticky_cookie: Some("duet_80"),
            max_body: Some(1000),
            max_headers: MAX_HEADERS,
        }
    }

    fn parse(buf: &[u8]) -> Result<Option<Rewritten>, HeadError> {
        rewrite_head(buf, CLIENT, &rules(&[]))
    }

    fn text(buf: &[u8], trusted: &[Ipv4Addr]) -> String {
        let r = rewrite_head(buf, CLIENT, &rules(trusted)).unwrap().unwrap();
        String::from_utf8(r.head).unwrap()
    }

    #[test]
    fn partial_head_waits() {
        assert!(parse(b"GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
    }

    #[test]
    fn sets_forwarding_headers_and_closes() {
        let req = b"GET /x HTTP/1.1\r\nHost: www.example\r\nConnection: keep-alive\r\n\r\nBODY";
        let r = parse(req).unwrap().unwrap();
        assert_eq!(&req[r.consumed..], b"BODY");
        assert!(r.idempotent);
        assert_eq!(r.body, Framing::Empty);
        let t = String::from_utf8(r.head).unwrap();
        assert!(t.starts_with("GET /x HTTP/1.1\r\nHost: www.example\r\n"));
        assert!(t.contains("X-Forwarded-For: 198.18.1.5\r\n"));
        assert!(t.contains("X-Forwarded-Proto: http\r\n"));
        assert!(t.contains("X-Forwarded-Host: www.example\r\n"));
        assert!(t.ends_with("Connection: close\r\n\r\n"));
        assert!(!t.contains("keep-alive"));
        let post = parse(b"POST / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert!(!post.idempotent);
    }

    #[test]
    fn backend_persistence_asks_to_keep_the_connection() {
        let mut r = rules(&[]);
        r.persist_backend = true;
        let out = rewrite_head(b"GET / HTTP/1.0\r\n\r\n", CLIENT, &r)
            .unwrap()
            .unwrap();
        assert!(String::from_utf8(out.head)
            .unwrap()
            .ends_with("Connection: keep-alive\r\n\r\n"));
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let ka = |req: &[u8]| parse(req).unwrap().unwrap().keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn body_framing_and_smuggling_attempts() {
        let framing = |req: &[u8]| parse(req).map(|r| r.unwrap().body);
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nContent-Length: 12, 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(framing(bad).err(), Some(HeadError::Malformed), "{bad:?}");
        }
        let big = parse(b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n");
        assert_eq!(big.err().map(|e| e.status()), Some(413));
    }

    #[test]
    fn routing_sticky_and_log_fields() {
        let r = parse(
            b"HEAD /a?b HTTP/1.1\r\nHost: WWW.Example.org:8000\r\nCookie: x=1; duet_80=\"ab12\"\r\nUser-Agent: t/1\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(r.head_method);
        assert_eq!(r.host.as_deref(), Some("www.example.org"));
        assert_eq!(r.sticky.as_deref(), Some("ab12"));
        assert_eq!(r.line, "HEAD /a?b HTTP/1.1");
        assert_eq!(r.user_agent.as_deref(), Some("t/1"));
        assert_eq!(r.referer, None);
        assert_eq!(host_name("[2001:db8::1]:80"), "[2001:db8::1]");
        assert_eq!(host_name("[2001:db8::1]"), "[2001:db8::1]");
        assert_eq!(
            cookie_value(b"duet_800=z; duet_80=y", "duet_80").as_deref(),
            Some("y")
        );
    }

    #[test]
    fn the_sticky_cookie_is_not_forwarded_and_other_cookies_are() {
        let t = text(
            b"GET / HTTP/1.1\r\nCookie: a=1; duet_80=ab12;b=2\r\nCookie: duet_80=ab12\r\n\
              Cookie: duet_800=z\r\n\r\n",
            &[],
        );
        assert!(t.contains("Cookie: a=1; b=2\r\n"), "{t}");
        // A header holding only duet's cookie is dropped; a look-alike stays.
        assert_eq!(t.matches("Cookie:").count(), 2, "{t}");
        assert!(t.contains("Cookie: duet_800=z\r\n"), "{t}");
        assert!(!t.contains("ab12"), "{t}");
        // Without sticky sessions the header is the client's.
        let mut plain = rules(&[]);
        plain.sticky_cookie = None;
        let r = rewrite_head(
            b"GET / HTTP/1.1\r\nCookie: duet_80=x\r\n\r\n",
            CLIENT,
            &plain,
        )
        .unwrap()
        .unwrap();
        assert!(String::from_utf8(r.head)
            .unwrap()
            .contains("Cookie: duet_80=x\r\n"));
        assert_eq!(without_cookie(b"x=1", "duet_80"), None);
        assert_eq!(
            without_cookie(b" duet_80 = q ; y=2 ", "duet_80").as_deref(),
            Some(&b"y=2"[..])
        );
    }

    #[test]
    fn header_count_limit_is_the_services() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..10 {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut r = rules(&[]);
        r.max_headers = 10;
        assert!(rewrite_head(&head, CLIENT, &r).unwrap().is_some());
        r.max_headers = 9;
        let e = rewrite_head(&head, CLIENT, &r).err().unwrap();
        assert_eq!(e.status(), 431);
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
        let r = parse(req).unwrap().unwrap();
        assert!(r.upgrade);
        let t = String::from_utf8(r.head).unwrap();
        assert!(t.contains("Upgrade: websocket\r\nConnection: upgrade\r\n"));
    }

    #[test]
    fn bad_input_gets_a_status() {
        assert_eq!(
            parse(b"\x00\x01 nonsense\r\n\r\n").err(),
            Some(HeadError::Malformed)
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..150 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let e = parse(&many).err().unwrap();
        assert_eq!(e.status(), 431);
    }
}
