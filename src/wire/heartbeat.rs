//! Heartbeat message: the one datagram election nodes exchange.
//!
//! One UDP datagram carries exactly one message. All integers are big-endian.
//!
//! | offset | size | field                | notes                                            |
//! |-------:|-----:|----------------------|--------------------------------------------------|
//! |      0 |    4 | magic                | `b"DUET"`                                        |
//! |      4 |    1 | version              | [`VERSION`] (1)                                  |
//! |      5 |    1 | message type         | [`MSG_TYPE`] (1 = heartbeat; 2 = sync, elsewhere)|
//! |      6 |    2 | body length          | bytes from offset 8 up to the MAC: 64            |
//! |      8 |    4 | cluster id           |                                                  |
//! |     12 |    4 | node                 | the sender's configured IPv4 address             |
//! |     16 |    8 | boot id              | grows across restarts of the sender              |
//! |     24 |    8 | sequence             | strictly increasing within one boot              |
//! |     32 |    8 | term                 |                                                  |
//! |     40 |    1 | priority             | configured priority; 0 = leaving                 |
//! |     41 |    1 | effective priority   | after ping/service penalties; 0 = ineligible     |
//! |     42 |    1 | role                 | 0 starting, 1 standby, 2 director, 3 leaving     |
//! |     43 |    1 | reserved             | sent as 0, ignored                               |
//! |     44 |    2 | backends up          | health summary, `up <= total`                    |
//! |     46 |    2 | backends total       |                                                  |
//! |     48 |    8 | sync position        | director: sent; standby: applied                 |
//! |     56 |    8 | challenge            | nonce the receiver must echo; 0 = none           |
//! |     64 |    8 | echo                 | last challenge received from the receiver        |
//! |     72 |   32 | HMAC-SHA256          | keyed with the cluster key over bytes `0..72`    |
//!
//! Challenge and echo make replay protection independent of the wall clock
//! (see `crate::election`): a node accepts a boot of its peer only after a
//! heartbeat of that boot echoed a fresh nonce. The first duet releases sent
//! a 48-byte body without them; such a datagram is reported as
//! [`HeartbeatError::OldLayout`] so a mixed pair says what is wrong.
//!
//! The MAC is always the last 32 bytes of the datagram and covers everything
//! before it. [`HeartbeatRepr::parse`] checks it before it looks at any other
//! field, so a sender without the key can only ever cause
//! [`EnvelopeError::Truncated`] or [`EnvelopeError::BadMac`], and every
//! other error (version, type, role, ...) is known to come from a keyed peer,
//! which makes it worth reporting to an operator as a real misconfiguration.
use std::net::Ipv4Addr;

use super::envelope::{self, be_u16, be_u32, be_u64, EnvelopeError, KeySlot, Keys};

/// Message type byte of a heartbeat.
pub const MSG_TYPE: u8 = 1;
/// Length of a heartbeat body.
pub const BODY_LEN: usize = 64;
/// Body length of the first releases' heartbeat, without challenge and echo.
pub const OLD_BODY_LEN: usize = 48;
/// Length of a whole heartbeat datagram.
pub const MESSAGE_LEN: usize = HEADER_LEN + BODY_LEN + MAC_LEN;

pub use super::envelope::{HEADER_LEN, MAC_LEN, MAGIC, VERSION};

mod field {
    use std::ops::Range;
    // The framing fields (magic, version, type, length) belong to
    // `envelope`; tests reach into them to re-sign tampered messages.
    #[cfg(test)]
    pub const VERSION: usize = 4;
    #[cfg(test)]
    pub const MSG_TYPE: usize = 5;
    pub const CLUSTER_ID: Range<usize> = 8..12;
    pub const NODE: Range<usize> = 12..16;
    pub const BOOT_ID: Range<usize> = 16..24;
    pub const SEQ: Range<usize> = 24..32;
    pub const TERM: Range<usize> = 32..40;
    pub const PRIORITY: usize = 40;
    pub const EFFECTIVE_PRIORITY: usize = 41;
    pub const ROLE: usize = 42;
    pub const BACKENDS_UP: Range<usize> = 44..46;
    pub const BACKENDS_TOTAL: Range<usize> = 46..48;
    pub const SYNC_POS: Range<usize> = 48..56;
    pub const CHALLENGE: Range<usize> = 56..64;
    pub const ECHO: Range<usize> = 64..72;
}

/// A node's role as carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireRole {
    Starting,
    Standby,
    Director,
    Leaving,
}

impl WireRole {
    fn to_byte(self) -> u8 {
        match self {
            WireRole::Starting => 0,
            WireRole::Standby => 1,
            WireRole::Director => 2,
            WireRole::Leaving => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(WireRole::Starting),
            1 => Some(WireRole::Standby),
            2 => Some(WireRole::Director),
            3 => Some(WireRole::Leaving),
            _ => None,
        }
    }
}

/// Why a datagram is not an acceptable heartbeat.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeartbeatError {
    /// Not an authentic duet message of the heartbeat type.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// A heartbeat of the first releases' layout (no challenge and echo):
    /// the peer runs an older duet.
    #[error("heartbeat without challenge/echo fields from an older duet: upgrade both nodes")]
    OldLayout,
    /// The body length field disagrees with the datagram or with the layout.
    #[error("bad body length {declared} (datagram holds {actual})")]
    BadLength { declared: usize, actual: usize },
    /// Unknown role byte.
    #[error("bad role {0}")]
    BadRole(u8),
    /// Health summary claims more backends up than exist.
    #[error("bad health summary {up}/{total}")]
    BadHealthSummary { up: u16, total: u16 },
}

/// A parsed, authenticated heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRepr {
    pub cluster_id: u32,
    /// Node id: the sender's configured address.
    pub node: Ipv4Addr,
    /// Differs between boots of the sender (the driver uses the store's boot
    /// counter, or a random number without a store). Need not grow.
    pub boot_id: u64,
    /// Per boot, strictly increasing.
    pub seq: u64,
    pub term: u64,
    /// Configured priority (0 = leaving).
    pub priority: u8,
    /// After ping/service penalties; 0 = ineligible.
    pub effective_priority: u8,
    pub role: WireRole,
    pub backends_up: u16,
    pub backends_total: u16,
    /// Sync stream position (director: sent; standby: applied), see
    /// `crate::sync::position`.
    pub sync_pos: u64,
    /// A nonce the receiver must echo before its boot is accepted; 0 = none.
    pub challenge: u64,
    /// The last challenge the sender received from the receiver; 0 = none.
    pub echo: u64,
}

impl HeartbeatRepr {
    /// Append the header, body and HMAC-SHA256 (over everything this call
    /// wrote before the MAC) to `out`.
    pub fn emit(&self, key: &[u8], out: &mut Vec<u8>) {
        let start = envelope::begin(out, MSG_TYPE);
        out.extend_from_slice(&self.cluster_id.to_be_bytes());
        out.extend_from_slice(&self.node.octets());
        out.extend_from_slice(&self.boot_id.to_be_bytes());
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.term.to_be_bytes());
        out.push(self.priority);
        out.push(self.effective_priority);
        out.push(self.role.to_byte());
        out.push(0);
        out.extend_from_slice(&self.backends_up.to_be_bytes());
        out.extend_from_slice(&self.backends_total.to_be_bytes());
        out.extend_from_slice(&self.sync_pos.to_be_bytes());
        out.extend_from_slice(&self.challenge.to_be_bytes());
        out.extend_from_slice(&self.echo.to_be_bytes());
        envelope::seal(out, start, key);
    }

    /// Authenticate `bytes` (one whole datagram) with `key`, then decode it.
    ///
    /// The MAC comparison is constant time; no field is read before it passes.
    pub fn parse(bytes: &[u8], key: &[u8]) -> Result<Self, HeartbeatError> {
        Self::decode(envelope::open(bytes, key, MSG_TYPE)?)
    }

    /// Like [`HeartbeatRepr::parse`] with either of `keys`; also says which
    /// key the sender signed with.
    pub fn parse_with(bytes: &[u8], keys: &Keys) -> Result<(Self, KeySlot), HeartbeatError> {
        let (signed, slot) = envelope::open_with(bytes, keys, MSG_TYPE)?;
        Ok((Self::decode(signed)?, slot))
    }

    fn decode(signed: &[u8]) -> Result<Self, HeartbeatError> {
        let actual = signed.len() - HEADER_LEN;
        if actual == OLD_BODY_LEN {
            return Err(HeartbeatError::OldLayout);
        }
        if actual != BODY_LEN {
            return Err(HeartbeatError::BadLength {
                declared: actual,
                actual,
            });
        }

        let role_byte = signed[field::ROLE];
        let role = WireRole::from_byte(role_byte).ok_or(HeartbeatError::BadRole(role_byte))?;
        let backends_up = be_u16(&signed[field::BACKENDS_UP]);
        let backends_total = be_u16(&signed[field::BACKENDS_TOTAL]);
        if backends_up > backends_total {
            return Err(HeartbeatError::BadHealthSummary {
                up: backends_up,
                total: backends_total,
            });
        }
        Ok(HeartbeatRepr {
            cluster_id: be_u32(&signed[field::CLUSTER_ID]),
            node: Ipv4Addr::from(be_u32(&signed[field::NODE])),
            boot_id: be_u64(&signed[field::BOOT_ID]),
            seq: be_u64(&signed[field::SEQ]),
            term: be_u64(&signed[field::TERM]),
            priority: signed[field::PRIORITY],
            effective_priority: signed[field::EFFECTIVE_PRIORITY],
            role,
            backends_up,
            backends_total,
            sync_pos: be_u64(&signed[field::SYNC_POS]),
            challenge: be_u64(&signed[field::CHALLENGE]),
            echo: be_u64(&signed[field::ECHO]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::mac_for;
    use hmac::Mac;

    const KEY: &[u8] = b"0123456789abcdef-test-key";

    fn repr() -> HeartbeatRepr {
        HeartbeatRepr {
            cluster_id: 0x0102_0304,
            node: Ipv4Addr::new(198, 18, 0, 1),
            boot_id: 0x1112_1314_1516_1718,
            seq: 0x2122_2324_2526_2728,
            term: 7,
            priority: 150,
            effective_priority: 75,
            role: WireRole::Director,
            backends_up: 2,
            backends_total: 3,
            sync_pos: 0x3132_3334_3536_3738,
            challenge: 0x4142_4344_4546_4748,
            echo: 0x5152_5354_5556_5758,
        }
    }

    /// Bytes 0..72 of `repr()` emitted, laid out by hand from the table.
    #[rustfmt::skip]
    static BODY_FIXTURE: [u8; 72] = [
        b'D', b'U', b'E', b'T', 0x01, 0x01, 0x00, 0x40,
        0x01, 0x02, 0x03, 0x04,
        198, 18, 0, 1,
        0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18,
        0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
        0, 0, 0, 0, 0, 0, 0, 7,
        150, 75, 2, 0,
        0x00, 0x02, 0x00, 0x03,
        0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38,
        0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
        0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
    ];

    /// HMAC-SHA256 of `BODY_FIXTURE` under `KEY`, computed independently
    /// (Python's `hmac` module), so a change of MAC construction shows up.
    const MAC_FIXTURE: &str = "e2db869fc1a8390783db61a3f5f2c97863ae09616bfc0df196c45d71fb9fef1e";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sign(signed: &[u8], key: &[u8]) -> Vec<u8> {
        let mut out = signed.to_vec();
        let mut mac = mac_for(key);
        mac.update(signed);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Change the signed part and re-MAC it with the right key, to reach the
    /// checks that come after authentication.
    fn tampered_and_resigned(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut body = BODY_FIXTURE.to_vec();
        f(&mut body);
        sign(&body, KEY)
    }

    #[test]
    fn emit_matches_fixture() {
        let mut out = Vec::new();
        repr().emit(KEY, &mut out);
        assert_eq!(out.len(), MESSAGE_LEN);
        assert_eq!(&out[..72], &BODY_FIXTURE[..]);
        assert_eq!(hex(&out[72..]), MAC_FIXTURE);
    }

    #[test]
    fn parse_fixture() {
        let bytes = sign(&BODY_FIXTURE, KEY);
        assert_eq!(HeartbeatRepr::parse(&bytes, KEY), Ok(repr()));
    }

    #[test]
    fn parse_with_either_key() {
        let mut out = Vec::new();
        repr().emit(b"the next key, 16+ bytes", &mut out);
        let keys = Keys::new(KEY.to_vec(), Some(b"the next key, 16+ bytes".to_vec()));
        assert_eq!(
            HeartbeatRepr::parse_with(&out, &keys),
            Ok((repr(), KeySlot::Next))
        );
        let mut out = Vec::new();
        repr().emit(KEY, &mut out);
        assert_eq!(
            HeartbeatRepr::parse_with(&out, &keys),
            Ok((repr(), KeySlot::Current))
        );
        let other = Keys::new(b"neither of them".to_vec(), None);
        assert_eq!(
            HeartbeatRepr::parse_with(&out, &other),
            Err(HeartbeatError::Envelope(EnvelopeError::BadMac))
        );
    }

    #[test]
    fn round_trip_every_role() {
        for role in [
            WireRole::Starting,
            WireRole::Standby,
            WireRole::Director,
            WireRole::Leaving,
        ] {
            let r = HeartbeatRepr { role, ..repr() };
            let mut out = Vec::new();
            r.emit(KEY, &mut out);
            assert_eq!(HeartbeatRepr::parse(&out, KEY), Ok(r));
        }
    }

    #[test]
    fn emit_appends() {
        let mut out = vec![0xaa, 0xbb];
        repr().emit(KEY, &mut out);
        assert_eq!(&out[..2], &[0xaa, 0xbb]);
        assert_eq!(HeartbeatRepr::parse(&out[2..], KEY), Ok(repr()));
    }

    #[test]
    fn every_truncation_rejected() {
        let mut out = Vec::new();
        repr().emit(KEY, &mut out);
        for len in 0..out.len() {
            let err = HeartbeatRepr::parse(&out[..len], KEY).unwrap_err();
            if len < HEADER_LEN + MAC_LEN {
                assert_eq!(
                    err,
                    HeartbeatError::Envelope(EnvelopeError::Truncated { len })
                );
            } else {
                assert_eq!(
                    err,
                    HeartbeatError::Envelope(EnvelopeError::BadMac),
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_rejected() {
        let mut out = Vec::new();
        repr().emit(KEY, &mut out);
        out.push(0);
        assert_eq!(
            HeartbeatRepr::parse(&out, KEY),
            Err(HeartbeatError::Envelope(EnvelopeError::BadMac))
        );
    }

    #[test]
    fn every_flipped_bit_is_bad_mac() {
        let mut out = Vec::new();
        repr().emit(KEY, &mut out);
        for byte in 0..out.len() {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[byte] ^= 1 << bit;
                assert_eq!(
                    HeartbeatRepr::parse(&bad, KEY),
                    Err(HeartbeatError::Envelope(EnvelopeError::BadMac)),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn wrong_key_is_bad_mac() {
        let mut out = Vec::new();
        repr().emit(b"another key entirely", &mut out);
        assert_eq!(
            HeartbeatRepr::parse(&out, KEY),
            Err(HeartbeatError::Envelope(EnvelopeError::BadMac))
        );
        // An empty key is a valid HMAC key but still not the cluster key.
        let mut out = Vec::new();
        repr().emit(b"", &mut out);
        assert_eq!(
            HeartbeatRepr::parse(&out, KEY),
            Err(HeartbeatError::Envelope(EnvelopeError::BadMac))
        );
    }

    #[test]
    fn authenticated_header_errors() {
        let bytes = tampered_and_resigned(|b| b[field::VERSION] = 2);
        assert_eq!(
            HeartbeatRepr::parse(&bytes, KEY),
            Err(HeartbeatError::Envelope(EnvelopeError::BadVersion(2)))
        );
        let bytes = tampered_and_resigned(|b| b[0] = b'X');
        assert_eq!(
            HeartbeatRepr::parse(&bytes, KEY),
            Err(HeartbeatError::Envelope(EnvelopeError::BadMagic))
        );
        let bytes = tampered_and_resigned(|b| b[field::MSG_TYPE] = 2);
        assert_eq!(
            HeartbeatRepr::parse(&bytes, KEY),
            Err(HeartbeatError::Envelope(EnvelopeError::BadType(2)))
        );
        let bytes = tampered_and_resigned(|b| b[7] = 0x41);
        assert_eq!(
            HeartbeatRepr::parse(&bytes, KEY),
            Err(HeartbeatError::Envelope(EnvelopeError::BadLength {
                declared: 65,
                actual: 64
            }))
        );
        // A longer body with a matching length field is still not this layout.
        let bytes = tampered_and_resigned(|b| {
            b[7] = 0x41;
            b.push(0);
        });
        assert_eq!(
            HeartbeatRepr::parse(&bytes, KEY),
            Err(HeartbeatError::BadLength {
                declared: 65,
                actual: 65
            })
        );
        // The first releases' 48-byte layout is named as such.
        let bytes = tampered_and_resigned(|b| {
            b[7] = 0x30;
            b.truncate(56);
        });
        assert_eq!(
            HeartbeatRepr::parse(&bytes, KEY),
            Err(HeartbeatError::OldLayout)
        );
    }

    #[test]
    fn authenticated_body_errors() {
        let bytes = tampered_and_resigned(|b| b[field::ROLE] = 4);
        assert_eq!(
            HeartbeatRepr::parse(&bytes, KEY),
            Err(HeartbeatError::BadRole(4))
        );
        let bytes = tampered_and_resigned(|b| b[45] = 4);
        assert_eq!(
            HeartbeatRepr::parse(&bytes, KEY),
            Err(HeartbeatError::BadHealthSummary { up: 4, total: 3 })
        );
        // The reserved byte is ignored, so v1 can give it a meaning later.
        let bytes = tampered_and_resigned(|b| b[43] = 0xff);
        assert_eq!(HeartbeatRepr::parse(&bytes, KEY), Ok(repr()));
    }
}
