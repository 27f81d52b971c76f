//! Admin state message: the operator's drains, shared by the pair so a drain
//! holds whichever node directs. Sent on the heartbeat port.
//!
//! | offset | size | field          | notes                                          |
//! |-------:|-----:|----------------|------------------------------------------------|
//! |      0 |    4 | magic          | `b"DUET"`                                      |
//! |      4 |    1 | version        | 1                                              |
//! |      5 |    1 | message type   | [`MSG_TYPE`] (3)                               |
//! |      6 |    2 | body length    | bytes from offset 8 up to the MAC              |
//! |      8 |    4 | cluster id     |                                                |
//! |     12 |    4 | node           | the sender's configured address                |
//! |     16 |    8 | state version  | unix ms of the last change; newer wins         |
//! |     24 |    1 | drain count    | at most [`MAX_DRAINS`]                         |
//! |     25 |    … | drains         | each: 1-byte length + name bytes (UTF-8, 1..=64)|
//! |      … |   32 | HMAC-SHA256    | over everything before it                      |
//!
//! As with heartbeats the MAC is checked before any field is read. A
//! replayed message carries an old version and is ignored by the receiver;
//! replaying the newest one changes nothing.
use std::net::Ipv4Addr;

use super::envelope::{self, be_u32, be_u64, EnvelopeError, Keys, HEADER_LEN};

pub const MSG_TYPE: u8 = 3;
pub const MAX_DRAINS: usize = 64;
pub const MAX_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminState {
    pub cluster_id: u32,
    pub node: Ipv4Addr,
    pub version: u64,
    pub drains: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminError {
    /// Shorter than header and MAC, or a name runs past the end.
    #[error("truncated admin message")]
    Truncated,
    /// Not an authentic duet message of the admin type.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// More names than allowed, an empty or over-long name, non-UTF-8, or
    /// bytes after the list.
    #[error("malformed drain list")]
    BadDrains,
}

impl AdminState {
    /// Appends the signed message to `out`; names beyond the limits are
    /// left out (the config validator keeps backend names short).
    pub fn emit(&self, key: &[u8], out: &mut Vec<u8>) {
        let start = envelope::begin(out, MSG_TYPE);
        out.extend_from_slice(&self.cluster_id.to_be_bytes());
        out.extend_from_slice(&u32::from(self.node).to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        let names: Vec<&String> = self
            .drains
            .iter()
            .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
            .take(MAX_DRAINS)
            .collect();
        out.push(names.len() as u8);
        for n in names {
            out.push(n.len() as u8);
            out.extend_from_slice(n.as_bytes());
        }
        envelope::seal(out, start, key);
    }

    pub fn parse(bytes: &[u8], key: &[u8]) -> Result<AdminState, AdminError> {
        Self::decode(envelope::open(bytes, key, MSG_TYPE)?)
    }

    /// Like [`AdminState::parse`], accepting either of `keys`.
    pub fn parse_with(bytes: &[u8], keys: &Keys) -> Result<AdminState, AdminError> {
        Self::decode(envelope::open_with(bytes, keys, MSG_TYPE)?.0)
    }

    fn decode(msg: &[u8]) -> Result<AdminState, AdminError> {
        if msg.len() < HEADER_LEN + 17 {
            return Err(AdminError::Truncated);
        }
        let count = msg[24] as usize;
        if count > MAX_DRAINS {
            return Err(AdminError::BadDrains);
        }
        let mut drains = Vec::with_capacity(count);
        let mut at = 25;
        for _ in 0..count {
            let len = *msg.get(at).ok_or(AdminError::Truncated)? as usize;
            let name = msg.get(at + 1..at + 1 + len).ok_or(AdminError::Truncated)?;
            if len == 0 || len > MAX_NAME {
                return Err(AdminError::BadDrains);
            }
            let name = std::str::from_utf8(name).map_err(|_| AdminError::BadDrains)?;
            drains.push(name.to_string());
            at += 1 + len;
        }
        if at != msg.len() {
            return Err(AdminError::BadDrains);
        }
        Ok(AdminState {
            cluster_id: be_u32(&msg[8..12]),
            node: Ipv4Addr::from(be_u32(&msg[12..16])),
            version: be_u64(&msg[16..24]),
            drains,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::{mac_for, MAC_LEN};
    use hmac::Mac;

    const KEY: &[u8] = b"0123456789abcdef-admin";

    fn sample() -> AdminState {
        AdminState {
            cluster_id: 0xc612_0064,
            node: Ipv4Addr::new(198, 18, 0, 1),
            version: 1_700_000_000_123,
            drains: vec!["web2".into(), "db-1".into()],
        }
    }

    fn emitted(a: &AdminState) -> Vec<u8> {
        let mut v = Vec::new();
        a.emit(KEY, &mut v);
        v
    }

    #[test]
    fn round_trip_and_layout() {
        let a = sample();
        let b = emitted(&a);
        assert_eq!(&b[..8], &[b'D', b'U', b'E', b'T', 1, 3, 0, 27]);
        assert_eq!(b[24], 2);
        assert_eq!(&b[25..30], b"\x04web2");
        assert_eq!(b.len(), 8 + 27 + 32);
        assert_eq!(AdminState::parse(&b, KEY), Ok(a));
        let empty = AdminState {
            drains: vec![],
            ..sample()
        };
        assert_eq!(AdminState::parse(&emitted(&empty), KEY), Ok(empty));
    }

    #[test]
    fn either_key_during_a_rotation() {
        let b = emitted(&sample());
        let next = Keys::new(b"the new key, 16 bytes+".to_vec(), Some(KEY.to_vec()));
        assert_eq!(AdminState::parse_with(&b, &next), Ok(sample()));
        let gone = Keys::new(b"the new key, 16 bytes+".to_vec(), None);
        assert_eq!(
            AdminState::parse_with(&b, &gone),
            Err(AdminError::from(EnvelopeError::BadMac))
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let b = emitted(&sample());
        for n in 0..b.len() {
            assert!(AdminState::parse(&b[..n], KEY).is_err(), "length {n}");
        }
        for i in 0..b.len() * 8 {
            let mut c = b.clone();
            c[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                AdminState::parse(&c, KEY),
                Err(AdminError::Envelope(EnvelopeError::BadMac)),
                "bit {i}"
            );
        }
        assert_eq!(
            AdminState::parse(&b, b"another key of sixteen"),
            Err(AdminError::Envelope(EnvelopeError::BadMac))
        );
    }

    #[test]
    fn keyed_garbage_is_rejected_by_structure() {
        // A peer with the key but a broken encoder: too many names.
        let mut b = emitted(&sample());
        b.truncate(b.len() - MAC_LEN);
        b[24] = 200;
        let mut mac = mac_for(KEY);
        mac.update(&b);
        let tag = mac.finalize().into_bytes();
        b.extend_from_slice(&tag);
        assert_eq!(AdminState::parse(&b, KEY), Err(AdminError::BadDrains));
    }

    #[test]
    fn over_long_names_are_left_out() {
        let a = AdminState {
            drains: vec!["x".repeat(65), "ok".into()],
            ..sample()
        };
        assert_eq!(
            AdminState::parse(&emitted(&a), KEY).unwrap().drains,
            vec!["ok"]
        );
    }
}
