//! Config parser: `Config::parse` on arbitrary UTF-8 (TOML syntax errors,
//! wrong types, out-of-range values, odd durations, semantic validation).
//! A config that parses must also survive `find_node` and every helper the
//! daemon calls on it at start-up, since those run before anything can
//! report an error politely. The ldirectord importer runs on the same input.
#![no_main]

use duet::config::{Config, Dur};
use libfuzzer_sys::fuzz_target;
use std::net::Ipv4Addr;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Dur::parse(text);
    // `duet import-ldirectord` reads operators' old files: split the input
    // into an ldirectord.cf and an optional ha.cf at the first NUL.
    match text.split_once('\0') {
        Some((ld, ha)) => drop(duet::import::import(ld, Some(ha))),
        None => drop(duet::import::import(text, None)),
    }
    let _ = duet::config::parse_fallback(text);
    if let Ok(cfg) = Config::parse(text, Path::new("/etc/duet")) {
        let _ = cfg.find_node(None, &[Ipv4Addr::new(198, 18, 0, 1)]);
        let _ = cfg.find_node(Some("web2"), &[]);
        for s in &cfg.services {
            for b in &s.backends {
                let b = b.get_ref();
                let _ = (b.address(), b.name(), b.weight());
            }
        }
    }
});
