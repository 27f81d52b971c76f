//! `kind = "banner"`: the greeting of a line-based server (smtp, pop, imap,
//! ftp, nntp), optionally followed by one `request` whose answer must
//! contain `receive`.
use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

use super::{connect, io_failure, read_until};
use crate::health::Failure;

/// Greetings and answers are read up to this size.
const MAX_LINE: usize = 4096;

pub(super) fn check(
    greeting: &str,
    request: Option<&str>,
    receive: Option<&str>,
    target: SocketAddr,
    deadline: Instant,
) -> Result<(), Failure> {
    let mut stream = connect(target, deadline)?;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, MAX_LINE, deadline, |b| {
        b.contains(&b'\n')
    })?;
    let line = buf.split(|&c| c == b'\n').next().unwrap_or_default();
    if !line.starts_with(greeting.as_bytes()) {
        let shown = String::from_utf8_lossy(line).trim_end().to_string();
        return Err(Failure::BadResponse(format!(
            "greeting {shown:?} does not start with {greeting:?}"
        )));
    }
    let Some(request) = request else {
        return Ok(());
    };
    let mut line = request.to_string();
    if !line.ends_with('\n') {
        line.push_str("\r\n");
    }
    stream.write_all(line.as_bytes()).map_err(io_failure)?;
    let Some(receive) = receive else {
        return Ok(());
    };
    let mut answer = Vec::new();
    let want = receive.as_bytes();
    read_until(&mut stream, &mut answer, MAX_LINE, deadline, |b| {
        memchr::memmem::find(b, want).is_some()
    })?;
    if memchr::memmem::find(&answer, want).is_none() {
        return Err(Failure::BodyMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{greeter, refused_addr, T};
    use super::*;
    use std::time::Duration;

    fn run(g: &str, req: Option<&str>, rcv: Option<&str>, addr: SocketAddr) -> Result<(), Failure> {
        check(g, req, rcv, addr, Instant::now() + T)
    }

    #[test]
    fn smtp_greeting_is_up_and_wrong_code_is_bad() {
        let addr = greeter(2, b"220 mail.example.com ESMTP\r\n", None);
        assert_eq!(run("220", None, None, addr), Ok(()));
        assert!(matches!(
            run("+OK", None, None, addr),
            Err(Failure::BadResponse(_))
        ));
    }

    #[test]
    fn request_answer_must_contain_receive() {
        let addr = greeter(2, b"220 ftp ready\r\n", Some(b"221 Goodbye\r\n"));
        assert_eq!(run("220", Some("QUIT"), Some("221"), addr), Ok(()));
        assert_eq!(
            run("220", Some("QUIT"), Some("250"), addr),
            Err(Failure::BodyMismatch)
        );
    }

    #[test]
    fn silent_server_times_out_and_closed_port_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let start = Instant::now();
        let r = check(
            "220",
            None,
            None,
            l.local_addr().unwrap(),
            Instant::now() + Duration::from_millis(200),
        );
        assert_eq!(r, Err(Failure::Timeout));
        assert!(start.elapsed() < Duration::from_millis(500));
        assert_eq!(
            run("220", None, None, refused_addr()),
            Err(Failure::Refused)
        );
    }
}
