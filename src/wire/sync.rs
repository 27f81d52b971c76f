//! Connection sync messages: what the director streams to the standby and
//! what the standby answers.
//!
//! Framing is the heartbeat's (see [`super::heartbeat`]): one UDP datagram
//! per message, big-endian integers, an 8-byte header, a body and an
//! HMAC-SHA256 trailer keyed with the cluster key over everything before it.
//! [`SyncMessage::parse`] checks the MAC before it reads any other field.
//!
//! | offset | size | field         | notes                                          |
//! |-------:|-----:|---------------|------------------------------------------------|
//! |      0 |    4 | magic         | `b"DUET"`                                      |
//! |      4 |    1 | version       | [`VERSION`] (1)                                |
//! |      5 |    1 | message type  | [`MSG_TYPE`] (2 = sync)                        |
//! |      6 |    2 | body length   | bytes from offset 8 up to the MAC              |
//! |      8 |    1 | kind          | 1 hello, 2 batch, 3 ack                        |
//! |      9 |    1 | flags         | batch: bit 0 snapshot part, bit 1 last part    |
//! |     10 |    2 | reserved      | sent as 0, ignored                             |
//! |     12 |    … | kind's fields | below                                          |
//! |   last |   32 | HMAC-SHA256   | over all bytes before it                       |
//!
//! Hello (standby → director, body 28 bytes): boot id `12..20` (the
//! standby's), stream id `20..28` (the stream it follows, 0 = none), applied
//! sequence `28..36`.
//!
//! Ack (standby → director, body 20 bytes): stream id `12..20`, sequence
//! `20..28`: every batch of that stream up to and including it is applied.
//!
//! Batch (director → standby, body 24 + 22·c + 19·p bytes): stream id
//! `12..20` (non-zero), sequence `20..28` (≥ 1), connection count `28..30`,
//! template count `30..32`, then `c` connection records and `p` template
//! records, packed:
//!
//! | conn record | size | | persist record | size |
//! |-------------|-----:|-|----------------|-----:|
//! | proto       | 1    | | proto          | 1    |
//! | client addr | 4    | | VIP            | 4    |
//! | client port | 2    | | VIP port       | 2    |
//! | VIP         | 4    | | client (masked)| 4    |
//! | VIP port    | 2    | | backend        | 4    |
//! | backend     | 4    | | remaining ms   | 4    |
//! | state       | 1    | |                |      |
//! | remaining ms| 4    | |                |      |
//!
//! Lifetimes travel as milliseconds remaining at the time of sending
//! (instants do not cross machines); `state` is
//! [`TcpState::as_u8`]; proto is 6 or 17.
//! A sender keeps each datagram within [`MAX_DATAGRAM`]; see
//! [`Batch::fits`].
use std::net::Ipv4Addr;

use super::envelope::{self, be_u16, be_u32, be_u64, EnvelopeError, Keys, HEADER_LEN, MAC_LEN};
use super::state::TcpState;

pub use super::envelope::VERSION;
/// Message type byte of a sync message.
pub const MSG_TYPE: u8 = 2;
/// Largest datagram a sender emits (stays under a 1500-byte MTU with room
/// for IPv4, UDP and tunnel headers).
pub const MAX_DATAGRAM: usize = 1400;
/// Size of one connection record.
pub const CONN_RECORD_LEN: usize = 22;
/// Size of one persistence record.
pub const PERSIST_RECORD_LEN: usize = 19;
/// Kind, flags, reserved.
const COMMON_LEN: usize = 4;
const HELLO_BODY_LEN: usize = COMMON_LEN + 24;
const ACK_BODY_LEN: usize = COMMON_LEN + 16;
const BATCH_FIXED_LEN: usize = COMMON_LEN + 20;

const KIND_HELLO: u8 = 1;
const KIND_BATCH: u8 = 2;
const KIND_ACK: u8 = 3;
const FLAG_SNAPSHOT: u8 = 1;
const FLAG_LAST: u8 = 2;

mod field {
    use std::ops::Range;
    // The framing fields (magic, version, type, length) belong to `envelope`.
    pub const KIND: usize = 8;
    pub const FLAGS: usize = 9;
    /// Hello: boot id; ack and batch: stream id.
    pub const WORD_A: Range<usize> = 12..20;
    /// Hello: stream id; ack and batch: sequence.
    pub const WORD_B: Range<usize> = 20..28;
    /// Hello: applied sequence.
    pub const WORD_C: Range<usize> = 28..36;
    pub const CONN_COUNT: Range<usize> = 28..30;
    pub const PERSIST_COUNT: Range<usize> = 30..32;
    pub const RECORDS: usize = 32;
}

/// Why a datagram is not an acceptable sync message.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SyncWireError {
    /// Not an authentic duet message of the sync type.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// Unknown kind byte.
    #[error("unknown sync message kind {0}")]
    BadKind(u8),
    /// The body length field disagrees with the datagram or with the kind's
    /// layout (record counts included).
    #[error("bad body length {declared} (datagram holds {actual})")]
    BadLength { declared: usize, actual: usize },
    /// A batch or ack for stream 0, or a batch with sequence 0: both are
    /// reserved for "none".
    #[error("stream id and batch sequence must be non-zero")]
    ZeroId,
    /// A record's protocol is neither TCP (6) nor UDP (17).
    #[error("bad protocol {0} in record {1}")]
    BadProto(u8, usize),
    /// A connection record's state byte is not a known state.
    #[error("bad connection state {0} in record {1}")]
    BadState(u8, usize),
}

/// Standby → director: "I am here, this is what I have". Sent at start and
/// periodically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The standby's boot id: a change tells the director its peer lost its
    /// table.
    pub boot_id: u64,
    /// The stream the standby follows; 0 when none.
    pub stream_id: u64,
    /// The last batch of that stream it applied (cumulative).
    pub applied_seq: u64,
}

/// Standby → director: every batch of `stream_id` up to `seq` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub stream_id: u64,
    pub seq: u64,
}

/// One connection entry on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRecord {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub backend: Ipv4Addr,
    pub state: TcpState,
    pub remaining_ms: u32,
}

/// One persistence template on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistRecord {
    pub proto: u8,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub client: Ipv4Addr,
    pub backend: Ipv4Addr,
    pub remaining_ms: u32,
}

/// Director → standby: entries to install, in sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub stream_id: u64,
    pub seq: u64,
    /// Part of the full table sent at the start of a stream.
    pub full_snapshot_part: bool,
    /// The last part of that snapshot (only meaningful with
    /// `full_snapshot_part`).
    pub last_part: bool,
    pub conns: Vec<ConnRecord>,
    pub persists: Vec<PersistRecord>,
}

impl Batch {
    /// Bytes of the whole datagram for these record counts.
    pub fn datagram_len(conns: usize, persists: usize) -> usize {
        HEADER_LEN
            + BATCH_FIXED_LEN
            + conns * CONN_RECORD_LEN
            + persists * PERSIST_RECORD_LEN
            + MAC_LEN
    }

    /// Whether a batch with these record counts fits in [`MAX_DATAGRAM`].
    pub fn fits(conns: usize, persists: usize) -> bool {
        Self::datagram_len(conns, persists) <= MAX_DATAGRAM
    }
}

/// A parsed, authenticated sync message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    Hello(Hello),
    Batch(Batch),
    Ack(Ack),
}

fn valid_proto(p: u8) -> bool {
    p == 6 || p == 17
}

impl SyncMessage {
    /// Appends header, body and HMAC-SHA256 to `out`. Record counts above
    /// 65535 are not representable; the sender keeps batches within
    /// [`MAX_DATAGRAM`] anyway ([`Batch::fits`]), far below that.
    pub fn emit(&self, key: &[u8], out: &mut Vec<u8>) {
        let start = envelope::begin(out, MSG_TYPE);
        match self {
            SyncMessage::Hello(h) => {
                out.extend_from_slice(&[KIND_HELLO, 0, 0, 0]);
                out.extend_from_slice(&h.boot_id.to_be_bytes());
                out.extend_from_slice(&h.stream_id.to_be_bytes());
                out.extend_from_slice(&h.applied_seq.to_be_bytes());
            }
            SyncMessage::Ack(a) => {
                out.extend_from_slice(&[KIND_ACK, 0, 0, 0]);
                out.extend_from_slice(&a.stream_id.to_be_bytes());
                out.extend_from_slice(&a.seq.to_be_bytes());
            }
            SyncMessage::Batch(b) => {
                let mut flags = 0;
                if b.full_snapshot_part {
                    flags |= FLAG_SNAPSHOT;
                }
                if b.last_part {
                    flags |= FLAG_LAST;
                }
                out.extend_from_slice(&[KIND_BATCH, flags, 0, 0]);
                out.extend_from_slice(&b.stream_id.to_be_bytes());
                out.extend_from_slice(&b.seq.to_be_bytes());
                let nc = b.conns.len().min(u16::MAX as usize);
                let np = b.persists.len().min(u16::MAX as usize);
                out.extend_from_slice(&(nc as u16).to_be_bytes());
                out.extend_from_slice(&(np as u16).to_be_bytes());
                for c in &b.conns[..nc] {
                    out.push(c.proto);
                    out.extend_from_slice(&c.src.octets());
                    out.extend_from_slice(&c.sport.to_be_bytes());
                    out.extend_from_slice(&c.dst.octets());
                    out.extend_from_slice(&c.dport.to_be_bytes());
                    out.extend_from_slice(&c.backend.octets());
                    out.push(c.state.as_u8());
                    out.extend_from_slice(&c.remaining_ms.to_be_bytes());
                }
                for p in &b.persists[..np] {
                    out.push(p.proto);
                    out.extend_from_slice(&p.vip.octets());
                    out.extend_from_slice(&p.port.to_be_bytes());
                    out.extend_from_slice(&p.client.octets());
                    out.extend_from_slice(&p.backend.octets());
                    out.extend_from_slice(&p.remaining_ms.to_be_bytes());
                }
            }
        }
        envelope::seal(out, start, key);
    }

    /// Authenticates `bytes` (one whole datagram) with `key`, then decodes
    /// it. The MAC comparison is constant time; no field is read before it
    /// passes, so without the key only `Truncated` or `BadMac` can result.
    pub fn parse(bytes: &[u8], key: &[u8]) -> Result<Self, SyncWireError> {
        Self::decode(envelope::open(bytes, key, MSG_TYPE)?)
    }

    /// Like [`SyncMessage::parse`], accepting either of `keys`.
    pub fn parse_with(bytes: &[u8], keys: &Keys) -> Result<Self, SyncWireError> {
        Self::decode(envelope::open_with(bytes, keys, MSG_TYPE)?.0)
    }

    fn decode(signed: &[u8]) -> Result<Self, SyncWireError> {
        let actual = signed.len() - HEADER_LEN;
        let declared = actual;
        let bad_len = SyncWireError::BadLength { declared, actual };
        if declared != actual || actual < COMMON_LEN {
            return Err(bad_len);
        }
        let kind = signed[field::KIND];
        let flags = signed[field::FLAGS];
        match kind {
            KIND_HELLO => {
                if actual != HELLO_BODY_LEN {
                    return Err(bad_len);
                }
                Ok(SyncMessage::Hello(Hello {
                    boot_id: be_u64(&signed[field::WORD_A]),
                    stream_id: be_u64(&signed[field::WORD_B]),
                    applied_seq: be_u64(&signed[field::WORD_C]),
                }))
            }
            KIND_ACK => {
                if actual != ACK_BODY_LEN {
                    return Err(bad_len);
                }
                let stream_id = be_u64(&signed[field::WORD_A]);
                if stream_id == 0 {
                    return Err(SyncWireError::ZeroId);
                }
                Ok(SyncMessage::Ack(Ack {
                    stream_id,
                    seq: be_u64(&signed[field::WORD_B]),
                }))
            }
            KIND_BATCH => {
                if actual < BATCH_FIXED_LEN {
                    return Err(bad_len);
                }
                let nc = be_u16(&signed[field::CONN_COUNT]) as usize;
                let np = be_u16(&signed[field::PERSIST_COUNT]) as usize;
                if actual != BATCH_FIXED_LEN + nc * CONN_RECORD_LEN + np * PERSIST_RECORD_LEN {
                    return Err(bad_len);
                }
                let stream_id = be_u64(&signed[field::WORD_A]);
                let seq = be_u64(&signed[field::WORD_B]);
                if stream_id == 0 || seq == 0 {
                    return Err(SyncWireError::ZeroId);
                }
                let mut conns = Vec::with_capacity(nc);
                let mut at = field::RECORDS;
                for i in 0..nc {
                    let r = &signed[at..at + CONN_RECORD_LEN];
                    if !valid_proto(r[0]) {
                        return Err(SyncWireError::BadProto(r[0], i));
                    }
                    let state =
                        TcpState::from_u8(r[17]).ok_or(SyncWireError::BadState(r[17], i))?;
                    conns.push(ConnRecord {
                        proto: r[0],
                        src: Ipv4Addr::from(be_u32(&r[1..5])),
                        sport: be_u16(&r[5..7]),
                        dst: Ipv4Addr::from(be_u32(&r[7..11])),
                        dport: be_u16(&r[11..13]),
                        backend: Ipv4Addr::from(be_u32(&r[13..17])),
                        state,
                        remaining_ms: be_u32(&r[18..22]),
                    });
                    at += CONN_RECORD_LEN;
                }
                let mut persists = Vec::with_capacity(np);
                for i in 0..np {
                    let r = &signed[at..at + PERSIST_RECORD_LEN];
                    if !valid_proto(r[0]) {
                        return Err(SyncWireError::BadProto(r[0], nc + i));
                    }
                    persists.push(PersistRecord {
                        proto: r[0],
                        vip: Ipv4Addr::from(be_u32(&r[1..5])),
                        port: be_u16(&r[5..7]),
                        client: Ipv4Addr::from(be_u32(&r[7..11])),
                        backend: Ipv4Addr::from(be_u32(&r[11..15])),
                        remaining_ms: be_u32(&r[15..19]),
                    });
                    at += PERSIST_RECORD_LEN;
                }
                Ok(SyncMessage::Batch(Batch {
                    stream_id,
                    seq,
                    full_snapshot_part: flags & FLAG_SNAPSHOT != 0,
                    last_part: flags & FLAG_LAST != 0,
                    conns,
                    persists,
                }))
            }
            other => Err(SyncWireError::BadKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::envelope::mac_for;
    use hmac::Mac;

    const KEY: &[u8] = b"0123456789abcdef-test-key";

    fn batch() -> Batch {
        Batch {
            stream_id: 0x0102_0304_0506_0708,
            seq: 9,
            full_snapshot_part: true,
            last_part: false,
            conns: vec![ConnRecord {
                proto: 6,
                src: Ipv4Addr::new(198, 51, 100, 7),
                sport: 0x1234,
                dst: Ipv4Addr::new(198, 18, 0, 100),
                dport: 80,
                backend: Ipv4Addr::new(198, 18, 0, 2),
                state: TcpState::Established,
                remaining_ms: 900_000,
            }],
            persists: vec![PersistRecord {
                proto: 17,
                vip: Ipv4Addr::new(198, 18, 0, 101),
                port: 53,
                client: Ipv4Addr::new(198, 51, 100, 0),
                backend: Ipv4Addr::new(198, 18, 0, 1),
                remaining_ms: 0x0102_0304,
            }],
        }
    }

    /// `batch()` emitted, without the MAC, laid out by hand from the tables.
    #[rustfmt::skip]
    static BATCH_FIXTURE: [u8; 73] = [
        b'D', b'U', b'E', b'T', 0x01, 0x02, 0x00, 24 + 22 + 19,
        0x02, 0x01, 0x00, 0x00,
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
        0, 0, 0, 0, 0, 0, 0, 9,
        0x00, 0x01, 0x00, 0x01,
        // conn
        6, 198, 51, 100, 7, 0x12, 0x34, 198, 18, 0, 100, 0x00, 80,
        198, 18, 0, 2, 2, 0x00, 0x0d, 0xbb, 0xa0,
        // persist
        17, 198, 18, 0, 101, 0x00, 53, 198, 51, 100, 0, 198, 18, 0, 1,
        0x01, 0x02, 0x03, 0x04,
    ];

    #[rustfmt::skip]
    static HELLO_FIXTURE: [u8; 36] = [
        b'D', b'U', b'E', b'T', 0x01, 0x02, 0x00, 28,
        0x01, 0x00, 0x00, 0x00,
        0, 0, 0, 0, 0, 0, 0x30, 0x39,
        0, 0, 0, 0, 0, 0, 0, 0x2a,
        0, 0, 0, 0, 0, 0, 0x01, 0x00,
    ];

    #[rustfmt::skip]
    static ACK_FIXTURE: [u8; 28] = [
        b'D', b'U', b'E', b'T', 0x01, 0x02, 0x00, 20,
        0x03, 0x00, 0x00, 0x00,
        0, 0, 0, 0, 0, 0, 0, 0x2a,
        0, 0, 0, 0, 0, 0, 0x01, 0x00,
    ];

    fn hello() -> SyncMessage {
        SyncMessage::Hello(Hello {
            boot_id: 12345,
            stream_id: 42,
            applied_seq: 256,
        })
    }

    fn ack() -> SyncMessage {
        SyncMessage::Ack(Ack {
            stream_id: 42,
            seq: 256,
        })
    }

    fn sign(signed: &[u8], key: &[u8]) -> Vec<u8> {
        let mut out = signed.to_vec();
        let mut mac = mac_for(key);
        mac.update(signed);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    fn emitted(m: &SyncMessage) -> Vec<u8> {
        let mut out = Vec::new();
        m.emit(KEY, &mut out);
        out
    }

    fn resigned(fixture: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut body = fixture.to_vec();
        f(&mut body);
        sign(&body, KEY)
    }

    #[test]
    fn emit_matches_fixtures() {
        let cases: [(SyncMessage, &[u8]); 3] = [
            (SyncMessage::Batch(batch()), &BATCH_FIXTURE),
            (hello(), &HELLO_FIXTURE),
            (ack(), &ACK_FIXTURE),
        ];
        for (m, fixture) in cases {
            let out = emitted(&m);
            assert_eq!(&out[..out.len() - MAC_LEN], fixture, "{m:?}");
            assert_eq!(out, sign(fixture, KEY));
            assert_eq!(SyncMessage::parse(&sign(fixture, KEY), KEY), Ok(m));
        }
    }

    /// The MAC construction is the heartbeat's; pin it with a value
    /// computed independently (Python: `hmac.new(KEY, ACK_FIXTURE, sha256)`).
    #[test]
    fn ack_mac_fixture() {
        let out = emitted(&ack());
        let hex: String = out[ACK_FIXTURE.len()..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, ACK_MAC_FIXTURE);
    }

    const ACK_MAC_FIXTURE: &str =
        "bc96cae54fd245a43ffdccd13c8bd2730ecff25641a41cc0feaa20999ab36087";

    #[test]
    fn round_trip_batches_of_every_shape() {
        let states = [
            TcpState::SynRecv,
            TcpState::Established,
            TcpState::FinWait,
            TcpState::TimeWait,
            TcpState::Close,
            TcpState::Udp,
        ];
        for (nc, np, snap, last) in [
            (0, 0, true, true),
            (60, 0, false, false),
            (0, 70, true, false),
            (30, 30, false, true),
        ] {
            let b = Batch {
                stream_id: u64::MAX,
                seq: 1 + nc as u64,
                full_snapshot_part: snap,
                last_part: last,
                conns: (0..nc)
                    .map(|i| ConnRecord {
                        state: states[i % states.len()],
                        sport: i as u16,
                        remaining_ms: u32::MAX - i as u32,
                        ..batch().conns[0]
                    })
                    .collect(),
                persists: (0..np)
                    .map(|i| PersistRecord {
                        client: Ipv4Addr::from(i as u32),
                        ..batch().persists[0]
                    })
                    .collect(),
            };
            assert!(Batch::fits(nc, np), "{nc} {np}");
            let m = SyncMessage::Batch(b);
            let out = emitted(&m);
            assert_eq!(out.len(), Batch::datagram_len(nc, np));
            assert_eq!(SyncMessage::parse(&out, KEY), Ok(m));
        }
        assert!(!Batch::fits(61, 0));
        assert!(!Batch::fits(0, 71));
    }

    #[test]
    fn emit_appends() {
        let mut out = vec![0xaa];
        hello().emit(KEY, &mut out);
        assert_eq!(SyncMessage::parse(&out[1..], KEY), Ok(hello()));
    }

    #[test]
    fn every_truncation_rejected() {
        for m in [SyncMessage::Batch(batch()), hello(), ack()] {
            let out = emitted(&m);
            for len in 0..out.len() {
                let err = SyncMessage::parse(&out[..len], KEY).unwrap_err();
                if len < HEADER_LEN + MAC_LEN {
                    assert_eq!(
                        err,
                        SyncWireError::Envelope(EnvelopeError::Truncated { len })
                    );
                } else {
                    assert_eq!(
                        err,
                        SyncWireError::Envelope(EnvelopeError::BadMac),
                        "len {len}"
                    );
                }
            }
            let mut longer = out.clone();
            longer.push(0);
            assert_eq!(
                SyncMessage::parse(&longer, KEY),
                Err(SyncWireError::Envelope(EnvelopeError::BadMac))
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_bad_mac() {
        for m in [SyncMessage::Batch(batch()), hello(), ack()] {
            let out = emitted(&m);
            for byte in 0..out.len() {
                for bit in 0..8 {
                    let mut bad = out.clone();
                    bad[byte] ^= 1 << bit;
                    assert_eq!(
                        SyncMessage::parse(&bad, KEY),
                        Err(SyncWireError::Envelope(EnvelopeError::BadMac)),
                        "byte {byte} bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn either_key_during_a_rotation() {
        let out = emitted(&hello());
        let next = Keys::new(b"the new key, 16 bytes+".to_vec(), Some(KEY.to_vec()));
        assert_eq!(SyncMessage::parse_with(&out, &next), Ok(hello()));
        let gone = Keys::new(b"the new key, 16 bytes+".to_vec(), None);
        assert_eq!(
            SyncMessage::parse_with(&out, &gone),
            Err(SyncWireError::Envelope(EnvelopeError::BadMac))
        );
    }

    #[test]
    fn wrong_key_and_heartbeat_key_domain() {
        let mut out = Vec::new();
        SyncMessage::Batch(batch()).emit(b"another key entirely", &mut out);
        assert_eq!(
            SyncMessage::parse(&out, KEY),
            Err(SyncWireError::Envelope(EnvelopeError::BadMac))
        );
        // A keyed heartbeat is authentic but not a sync message.
        let hb = crate::wire::heartbeat::HeartbeatRepr {
            cluster_id: 1,
            node: Ipv4Addr::new(198, 18, 0, 1),
            boot_id: 1,
            seq: 1,
            term: 1,
            priority: 100,
            effective_priority: 100,
            role: crate::wire::heartbeat::WireRole::Director,
            backends_up: 0,
            backends_total: 0,
            sync_pos: 0,
            challenge: 0,
            echo: 0,
        };
        let mut out = Vec::new();
        hb.emit(KEY, &mut out);
        assert_eq!(
            SyncMessage::parse(&out, KEY),
            Err(SyncWireError::Envelope(EnvelopeError::BadType(1)))
        );
    }

    #[test]
    fn authenticated_errors() {
        let p = |b: Vec<u8>| SyncMessage::parse(&b, KEY);
        assert_eq!(
            p(resigned(&ACK_FIXTURE, |b| b[0] = b'X')),
            Err(SyncWireError::Envelope(EnvelopeError::BadMagic))
        );
        assert_eq!(
            p(resigned(&ACK_FIXTURE, |b| b[4] = 2)),
            Err(SyncWireError::Envelope(EnvelopeError::BadVersion(2)))
        );
        assert_eq!(
            p(resigned(&ACK_FIXTURE, |b| b[8] = 9)),
            Err(SyncWireError::BadKind(9))
        );
        assert_eq!(
            p(resigned(&ACK_FIXTURE, |b| b[7] = 21)),
            Err(SyncWireError::Envelope(EnvelopeError::BadLength {
                declared: 21,
                actual: 20
            }))
        );
        // An ack-sized body labelled hello.
        assert_eq!(
            p(resigned(&ACK_FIXTURE, |b| b[8] = 1)),
            Err(SyncWireError::BadLength {
                declared: 20,
                actual: 20
            })
        );
        assert_eq!(
            p(resigned(&ACK_FIXTURE, |b| b[12..20].fill(0))),
            Err(SyncWireError::ZeroId)
        );
        assert_eq!(
            p(resigned(&BATCH_FIXTURE, |b| b[20..28].fill(0))),
            Err(SyncWireError::ZeroId)
        );
        // Counts that disagree with the records present.
        assert_eq!(
            p(resigned(&BATCH_FIXTURE, |b| b[29] = 2)),
            Err(SyncWireError::BadLength {
                declared: 65,
                actual: 65
            })
        );
        assert_eq!(
            p(resigned(&BATCH_FIXTURE, |b| b[32] = 1)),
            Err(SyncWireError::BadProto(1, 0))
        );
        assert_eq!(
            p(resigned(&BATCH_FIXTURE, |b| b[49] = 0)),
            Err(SyncWireError::BadState(0, 0))
        );
        assert_eq!(
            p(resigned(&BATCH_FIXTURE, |b| b[54] = 0)),
            Err(SyncWireError::BadProto(0, 1))
        );
        // Reserved bytes and unknown flag bits are ignored.
        let mut want = batch();
        want.last_part = true;
        assert_eq!(
            p(resigned(&BATCH_FIXTURE, |b| {
                b[9] = 0xf3;
                b[10] = 0xff;
            })),
            Ok(SyncMessage::Batch(want))
        );
    }
}
