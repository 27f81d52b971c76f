//! `access_log`: one line per request in the combined log format (Apache's
//! and nginx's default, which log analysers read), with the real client
//! address, to stderr or an appended file.
use crate::wire::civil::Civil;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

/// What one line says.
pub struct Entry<'a> {
    pub client: Ipv4Addr,
    pub unix_secs: u64,
    /// `GET / HTTP/1.1`, or `None` when no head was read.
    pub line: Option<&'a str>,
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

/// `198.18.0.254 - - [03/Dec/2026:14:48:00 +0000] "GET / HTTP/1.1" 200 12 "-" "curl/8"`
pub fn format(e: &Entry) -> String {
    let quoted = |v: Option<&str>| v.map_or_else(|| "-".to_string(), escape);
    format!(
        "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\"\n",
        e.client,
        clf_time(e.unix_secs),
        quoted(e.line),
        e.status,
        e.bytes,
        quoted(e.referer),
        quoted(e.user_agent)
    )
}

/// Quotes and control bytes escaped as nginx does, so a client cannot
/// forge a field or a line.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", c as u32 & 0xff)),
            c => out.push(c),
        }
    }
    out
}

/// `03/Dec/2026:14:48:00 +0000` (UTC).
fn clf_time(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = Civil::from_unix(secs);
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        c.day,
        MONTHS[(c.month - 1) as usize],
        c.year,
        c.hour,
        c.minute,
        c.second
    )
}

/// The open log files, one handle per path however many services share it.
#[derive(Default)]
pub struct Sinks {
    files: Mutex<HashMap<String, Arc<Mutex<File>>>>,
}

impl Sinks {
    /// Writes `line` to `target`; a file that cannot be opened or written
    /// is reported in the daemon's log, and the request goes on.
    pub fn write(&self, target: &str, line: &str) {
        if target == "stderr" {
            let _ = std::io::stderr().write_all(line.as_bytes());
            return;
        }
        let file = {
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            match files.get(target) {
                Some(f) => f.clone(),
                None => match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)
                {
                    Ok(f) => {
                        let f = Arc::new(Mutex::new(f));
                        files.insert(target.to_string(), f.clone());
                        f
                    }
                    Err(e) => {
                        log::warn!("proxy: access_log {target}: {e}");
                        return;
                    }
                },
            }
        };
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(line.as_bytes()) {
            log::warn!("proxy: access_log {target}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_format_with_escaping() {
        let e = Entry {
            client: Ipv4Addr::new(198, 18, 0, 254),
            // 2026-12-03 14:48:00 UTC
            unix_secs: 1_796_309_280,
            line: Some("GET /a\"b HTTP/1.1"),
            status: 200,
            bytes: 12,
            referer: None,
            user_agent: Some("curl/8\n1.2.3.4 - - forged"),
        };
        assert_eq!(
            format(&e),
            "198.18.0.254 - - [03/Dec/2026:14:48:00 +0000] \"GET /a\\\"b HTTP/1.1\" 200 12 \"-\" \"curl/8\\x0A1.2.3.4 - - forged\"\n"
        );
        assert_eq!(clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(clf_time(951_782_400), "29/Feb/2000:00:00:00 +0000");
        let none = Entry { line: None, ..e };
        assert!(format(&none).contains("] \"-\" 200"));
    }
}
