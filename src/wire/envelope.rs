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

/// Why a datagram is not an acceptable message of the expected type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeError {
    Truncated { len: usize },
    BadMac,
    BadMagic,
    BadVersion(u8),
    BadType(u8),
    BadLength { declared: usize, actual: usize },
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
    if bytes.len() < HEADER_LEN + MAC_LEN {
        return Err(EnvelopeError::Truncated { len: bytes.len() });
    }
    let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let mut mac = mac_for(key);
    mac.update(signed);
    mac.verify_slice(tag).map_err(|_| EnvelopeError::BadMac)?;
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
}
