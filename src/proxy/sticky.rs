//! `sticky = "cookie"`: duet's cookie names a backend by a keyed hash of
//! its name and address, so clients learn nothing of the pool, and both
//! nodes (same config, same cluster key) read a cookie the same way after
//! a takeover.
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ProxyBackend;

/// The cookie of the service on `port` (cookies ignore ports, so each
/// service needs its own name).
pub fn cookie_name(port: u16) -> String {
    format!("duet_{port}")
}

/// The sticky key from the cluster key: the cookie never carries a MAC
/// made with the key that signs heartbeats.
pub fn derive_key(cluster_key: &[u8]) -> Vec<u8> {
    mac(cluster_key, b"duet sticky cookie v1").to_vec()
}

fn mac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The cookie value naming `b`: 16 hex digits.
pub fn token(key: &[u8], b: &ProxyBackend) -> String {
    let d = mac(key, format!("{}\0{}", b.name, b.addr).as_bytes());
    d[..8].iter().map(|x| format!("{x:02x}")).collect()
}

/// The usable backend `value` names; none when it names a backend that
/// is down, drained or unknown (the scheduler then picks anew).
pub fn find<'a>(key: &[u8], backends: &'a [ProxyBackend], value: &str) -> Option<&'a ProxyBackend> {
    backends.iter().find(|b| token(key, b) == value)
}

pub fn set_cookie(port: u16, token: &str) -> String {
    format!("{}={token}; Path=/; HttpOnly", cookie_name(port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn b(i: u8) -> ProxyBackend {
        ProxyBackend {
            name: format!("198.18.0.{i}"),
            addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, i), 8088),
            weight: 1,
        }
    }

    #[test]
    fn cookie_names_a_usable_backend_by_keyed_hash() {
        let key = derive_key(b"duet-test-key-0123456789abcdef");
        let pool = [b(20), b(21)];
        let t = token(&key, &pool[1]);
        assert_eq!(t.len(), 16);
        assert!(!t.contains("198.18"));
        // The same config and key read it the same way (the other node).
        let again = derive_key(b"duet-test-key-0123456789abcdef");
        assert_eq!(find(&again, &pool, &t), Some(&pool[1]));
        // Another key, or the backend gone from the usable set: ignored.
        assert_eq!(
            find(&derive_key(b"another-key-0123456789"), &pool, &t),
            None
        );
        assert_eq!(find(&key, &pool[..1], &t), None);
        assert_eq!(find(&key, &pool, "garbage"), None);
        assert_eq!(set_cookie(80, &t), format!("duet_80={t}; Path=/; HttpOnly"));
    }
}
