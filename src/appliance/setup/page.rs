//! The setup page's decisions and HTML, without I/O: form decoding, the
//! setup code check, and what each request gets.

use std::collections::HashMap;

use subtle::ConstantTimeEq;

use crate::status::render::esc as escape;

/// Largest form accepted: a config is a few KiB.
pub const MAX_BODY: usize = 64 * 1024;

/// `application/x-www-form-urlencoded` into its fields (last one wins).
pub fn parse_form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// The one-time code, compared in constant time so timing tells nothing.
pub fn code_matches(expected: &str, given: &str) -> bool {
    let given = given.trim();
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// What a request to the box in setup mode gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// The form.
    Form,
    /// A submitted form, to check and apply.
    Submit,
    /// Join a pair by the code its first box offers.
    Join,
    /// Anything else: 403 until setup is done.
    Forbidden,
}

pub fn route(method: &str, path: &str) -> Route {
    let path = path.split('?').next().unwrap_or(path);
    match (method, path) {
        ("GET", "/" | "/setup") => Route::Form,
        ("POST", "/setup") => Route::Submit,
        ("POST", "/setup/pair") => Route::Join,
        _ => Route::Forbidden,
    }
}

/// The form, prefilled with `config` and `node`, listing `errors` (each
/// already `line:column: message`).
pub fn form(config: &str, node: &str, errors: &[String]) -> String {
    let errs: String = errors
        .iter()
        .map(|e| format!("<li>{}</li>", escape(e)))
        .collect();
    let errs = if errs.is_empty() {
        String::new()
    } else {
        format!("<p>The config was not accepted:</p><ul class=\"errors\">{errs}</ul>")
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>duet setup</title></head>\
         <body><h1>duet: first-boot setup</h1>\
         <p>This box has no pair key and will not join a pair until it is set up. \
         The setup code is on its console.</p>{errs}\
         <form method=\"post\" action=\"/setup\">\
         <p><label>Setup code <input name=\"code\" autocomplete=\"off\"></label></p>\
         <p><label>This node's name (a <code>[[node]]</code> of the config) \
         <input name=\"node\" value=\"{}\"></label></p>\
         <p><label>duet.toml (VIP, nodes and their addresses, services and checks)<br>\
         <textarea name=\"config\" rows=\"40\" cols=\"90\">{}</textarea></label></p>\
         <p><button>Generate the pair key and start</button></p></form>\
         <h2>Or join a pair</h2>\
         <p>If the other box of the pair is set up, offer a pairing code on its admin page \
         (\u{201c}pair a box\u{201d}): this box then gets its config and the pair key from it, \
         sealed by the code.</p>\
         <form method=\"post\" action=\"/setup/pair\">\
         <p><label>Setup code <input name=\"code\" autocomplete=\"off\"></label></p>\
         <p><label>The other box's status address <input name=\"sponsor\" \
         placeholder=\"192.168.0.1:8080\"></label></p>\
         <p><label>Pairing code <input name=\"pair\" autocomplete=\"off\" \
         placeholder=\"1234-5678\"></label></p>\
         <p><button>Join and start</button></p></form></body></html>\n",
        escape(node),
        escape(config)
    )
}

/// The answer to a successful setup: the admin token, shown this once.
pub fn done(node: &str, key: &str, token: Option<&str>) -> String {
    let token = match token {
        Some(t) => format!(
            "<p>Admin token (shown once, keep it): <code id=\"admin-token\">{}</code></p>",
            escape(t)
        ),
        None => "<p>The config sets no <code>cluster.admin_token_file</code>: \
                 the admin API stays off.</p>"
            .to_string(),
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>duet setup done</title></head>\
         <body><h1>Set up as {}</h1>{token}\
         <p>The daemon is starting. The pair key (written to the data partition; \
         the other box of the pair needs the same one, shown this once): \
         <code id=\"pair-key\">{}</code></p></body></html>\n",
        escape(node),
        escape(key)
    )
}

/// The answer to anything after setup finished, while the daemon starts.
pub fn already(node: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>duet</title></head>\
         <body><p>This box is already set up as {}; the daemon is starting.</p></body></html>\n",
        escape(node)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_decode() {
        let f = parse_form("code=12345678&node=web1&config=%5Bcluster%5D%0Avip+%3D+%221%22");
        assert_eq!(f["code"], "12345678");
        assert_eq!(f["node"], "web1");
        assert_eq!(f["config"], "[cluster]\nvip = \"1\"");
        assert!(parse_form("").is_empty());
        assert_eq!(parse_form("bare")["bare"], "");
    }

    #[test]
    fn code_needs_an_exact_match() {
        assert!(code_matches("12345678", "12345678"));
        assert!(code_matches("12345678", " 12345678\n"));
        assert!(!code_matches("12345678", "12345679"));
        assert!(!code_matches("12345678", "1234567"));
        assert!(!code_matches("12345678", ""));
    }

    #[test]
    fn only_setup_is_served() {
        assert_eq!(route("GET", "/"), Route::Form);
        assert_eq!(route("GET", "/setup?x=1"), Route::Form);
        assert_eq!(route("POST", "/setup"), Route::Submit);
        assert_eq!(route("POST", "/setup/pair"), Route::Join);
        for (m, p) in [
            ("GET", "/api/status"),
            ("POST", "/api/drain/x"),
            ("PUT", "/setup"),
            ("GET", "/metrics"),
        ] {
            assert_eq!(route(m, p), Route::Forbidden, "{m} {p}");
        }
    }

    #[test]
    fn pages_escape_what_they_echo() {
        let p = form("a = \"<b>\"", "x\"y", &["3:1: bad <key>".into()]);
        assert!(p.contains("a = &quot;&lt;b&gt;&quot;"));
        assert!(p.contains("value=\"x&quot;y\""));
        assert!(p.contains("<li>3:1: bad &lt;key&gt;</li>"));
        assert!(done("w", "k&y", Some("t<k")).contains("t&lt;k"));
        assert!(done("w", "k&y", None).contains("k&amp;y"));
    }
}
