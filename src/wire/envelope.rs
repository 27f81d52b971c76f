//! The framing every duet control message shares (heartbeat, sync, admin
//! state): `DUET`, version, message type, body length, body, and an
//! HMAC-SHA256 over all of it. [`open`] checks the MAC before it reads any
//! other byte, so without the key only `Truncated` or `BadMac` can come out.
//!
//! | offset | size | field        |
//! |-------:|-----:|--------------|
//! |      0 |    4 | magic `DUET` |
//! |      4 |    1 | version (1)  |
//! |      5 |    1 | message type |
//! |      6 |    2 | body length  |
//! |      8 |    … | body         |
//! |      … |   32 | HMAC-SHA256  |
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// First four bytes of every duet control message.
pub const MAGIC: [u8; 4] = *b"DUET";
/// Framing version this module reads and writes.
pub const VERSION: u8 = 1;
/// Length of the HMAC-SHA256 trailer.
pub const MAC_LEN: usize = 32;
/// Length of magic, version, type and body length.
pub const HEADER_LEN: usize = 8;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Why a datagram is not an acceptable message of the expected type; the
/// heartbeat, sync and admin errors each carry it as they find it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than a header plus a MAC: cannot even be authenticated.
    #[error("truncated: {len} bytes")]
    Truncated { len: usize },
    /// The MAC does not match: wrong key, corruption, truncation or forgery.
    /// Nothing else in the datagram was looked at.
    #[error("bad MAC (wrong key, corrupted or forged)")]
    BadMac,
    /// Authenticated, but does not start with `DUET`.
    #[error("bad magic")]
    BadMagic,
    /// Authenticated duet message of a version this build does not speak.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// Authenticated duet message of another type (e.g. a sync message
    /// sent to the heartbeat port).
    #[error("unexpected message type {0}")]
    BadType(u8),
    /// The header's body length disagrees with the datagram.
    #[error("bad body length {declared} (datagram holds {actual})")]
    BadLength { declared: usize, actual: usize },
}

/// The keys a node holds (SECURITY.md, "Rotating the key"): it signs with
/// the current key and accepts messages signed with either.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    current: Vec<u8>,
    next: Option<Vec<u8>>,
}

/// Which of our keys a message was signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeySlot {
    /// Our signing key (the key file's first line).
    Current,
    /// The other key we accept (the key file's second line).
    Next,
}

impl KeySlot {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySlot::Current => "current",
            KeySlot::Next => "next",
        }
    }
}

impl Keys {
    pub fn new(current: Vec<u8>, next: Option<Vec<u8>>) -> Keys {
        // The same key twice is one key: report it as the current one.
        let next = next.filter(|n| *n != current);
        Keys { current, next }
    }

    /// The key messages are signed with.
    pub fn signing(&self) -> &[u8] {
        &self.current
    }

    pub fn has_next(&self) -> bool {
        self.next.is_some()
    }
}

impl std::fmt::Debug for Keys {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("next", &self.next.is_some())
            .finish_non_exhaustive()
    }
}

pub(crate) fn mac_for(key: &[u8]) -> HmacSha256 {
    // HMAC hashes over-long keys and pads short ones, so no key length fails.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Starts a message of `msg_type` at the end of `out`; returns where it
/// starts, for [`seal`].
pub fn begin(out: &mut Vec<u8>, msg_type: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(msg_type);
    out.extend_from_slice(&[0, 0]);
    start
}

/// Fills in the body length of the message begun at `start` and appends its MAC.
pub fn seal(out: &mut Vec<u8>, start: usize, key: &[u8]) {
    let body_len = (out.len() - start - HEADER_LEN).min(u16::MAX as usize) as u16;
    out[start + 6..start + 8].copy_from_slice(&body_len.to_be_bytes());
    let mut mac = mac_for(key);
    mac.update(&out[start..]);
    out.extend_from_slice(&mac.finalize().into_bytes());
}

/// Authenticates one whole datagram with `key` and checks its framing;
/// returns the signed part (header and body).
pub fn open<'a>(bytes: &'a [u8], key: &[u8], msg_type: u8) -> Result<&'a [u8], EnvelopeError> {
    framing(authenticate(bytes, key)?, msg_type)
}

/// Like [`open`] with each of `keys` (the current one first); also says
/// which key signed the datagram.
pub fn open_with<'a>(
    bytes: &'a [u8],
    keys: &Keys,
    msg_type: u8,
) -> Result<(&'a [u8], KeySlot), EnvelopeError> {
    let (signed, slot) = match authenticate(bytes, &keys.current) {
        Ok(s) => (s, KeySlot::Current),
        Err(EnvelopeError::BadMac) => match &keys.next {
            Some(next) => (authenticate(bytes, next)?, KeySlot::Next),
            None => return Err(EnvelopeError::BadMac),
        },
        Err(e) => return Err(e),
    };
    Ok((framing(signed, msg_type)?, slot))
}

/// Checks the MAC (in constant time: `verify_slice`) and returns the
/// signed part.
fn authenticate<'a>(bytes: &'a [u8], key: &[u8]) -> Result<&'a [u8], EnvelopeError> {
    if bytes.len() < HEADER_LEN + MAC_LEN {
        return Err(EnvelopeError::Truncated { len: bytes.len() });
    }
    let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let mut mac = mac_for(key);
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| EnvelopeError::BadMac)?;
    Ok(signed)
}

fn framing(signed: &[u8], msg_type: u8) -> Result<&[u8], EnvelopeError> {
    if signed[0..4] != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    if signed[4] != VERSION {
        return Err(EnvelopeError::BadVersion(signed[4]));
    }
    if signed[5] != msg_type {
        return Err(EnvelopeError::BadType(signed[5]));
    }
    let declared = be_u16(&signed[6..8]) as usize;
    let actual = signed.len() - HEADER_LEN;
    if declared != actual {
        return Err(EnvelopeError::BadLength { declared, actual });
    }
    Ok(signed)
}

pub fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

pub fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open() {
        let mut out = vec![9, 9];
        let start = begin(&mut out, 7);
        out.extend_from_slice(b"body");
        seal(&mut out, start, b"k");
        let signed = open(&out[2..], b"k", 7).unwrap();
        assert_eq!(&signed[..8], &[b'D', b'U', b'E', b'T', 1, 7, 0, 4]);
        assert_eq!(&signed[8..], b"body");
        assert_eq!(open(&out[2..], b"k", 6), Err(EnvelopeError::BadType(7)));
        assert_eq!(open(&out[2..], b"x", 7), Err(EnvelopeError::BadMac));
        assert_eq!(
            open(&out[2..9], b"k", 7),
            Err(EnvelopeError::Truncated { len: 7 })
        );
    }

    #[test]
    fn open_with_either_key_says_which() {
        let mut out = Vec::new();
        let start = begin(&mut out, 7);
        out.extend_from_slice(b"body");
        seal(&mut out, start, b"new key");
        let both = Keys::new(b"old key".to_vec(), Some(b"new key".to_vec()));
        assert_eq!(open_with(&out, &both, 7).unwrap().1, KeySlot::Next);
        let swapped = Keys::new(b"new key".to_vec(), Some(b"old key".to_vec()));
        assert_eq!(open_with(&out, &swapped, 7).unwrap().1, KeySlot::Current);
        let old_only = Keys::new(b"old key".to_vec(), None);
        assert_eq!(open_with(&out, &old_only, 7), Err(EnvelopeError::BadMac));
        // Framing errors come after authentication, with either key.
        assert_eq!(open_with(&out, &both, 6), Err(EnvelopeError::BadType(7)));
        assert_eq!(
            open_with(&out[..9], &both, 7),
            Err(EnvelopeError::Truncated { len: 9 })
        );
        // The same key twice is one key.
        assert!(!Keys::new(b"k".to_vec(), Some(b"k".to_vec())).has_next());
        assert!(!format!("{both:?}").contains("key\""));
    }
}
