//! The proxy's HTTP parsing, as a client or backend can drive it: the
//! request head rewrite (`rewrite_head`), the response head
//! (`parse_response`, `client_head`) and body framing (`Body`) fed in
//! pieces. The first byte picks options and the piece size. Checked besides
//! "no panic": nothing claims more bytes than it was given, a rewritten
//! head ends in its blank line, and framing gives the same end however the
//! bytes are split.
#![no_main]

use duet::proxy::{parse_response, rewrite_head, Body, Framing, HeadRules};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);

/// How many bytes of `data` the body takes when fed `step` bytes at a time.
fn framed(f: Framing, data: &[u8], step: usize) -> Option<(usize, bool)> {
    let mut b = Body::new(f);
    let mut used = 0;
    for piece in data.chunks(step.max(1)) {
        let n = b.advance(piece).ok()?;
        assert!(n <= piece.len());
        used += n;
        if n < piece.len() {
            break;
        }
    }
    Some((used, b.done()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&opts, data)) = data.split_first() else {
        return;
    };
    let trusted = [CLIENT];
    let rules = HeadRules {
        trusted: if opts & 1 != 0 { &trusted } else { &[] },
        persist_backend: opts & 2 != 0,
        sticky_cookie: (opts & 4 != 0).then_some("duet_80"),
        max_body: (opts & 8 != 0).then_some(1000),
        max_headers: if opts & 32 != 0 { 4 } else { 100 },
    };
    if let Ok(Some(r)) = rewrite_head(data, CLIENT, &rules) {
        assert!(r.consumed <= data.len());
        assert!(r.head.ends_with(b"\r\n\r\n"));
        let rest = &data[r.consumed..];
        let whole = framed(r.body, rest, rest.len());
        assert_eq!(framed(r.body, rest, usize::from(opts >> 4) + 1), whole);
    }
    if let Ok(Some(r)) = parse_response(data, opts & 16 != 0) {
        assert!(r.consumed <= data.len());
        assert!(r
            .client_head(opts & 32 != 0, Some("duet_80=x"))
            .ends_with(b"\r\n\r\n"));
    }
    for f in [Framing::Chunked, Framing::Length(u64::from(opts) * 3)] {
        let whole = framed(f, data, data.len());
        assert_eq!(framed(f, data, usize::from(opts >> 3) + 1), whole);
    }
});
