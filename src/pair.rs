//! Pairing a second box with a short code instead of a key file.
//!
//! The box that is set up (the *sponsor*) offers an eight-digit code on its
//! admin page; the new box (the *joiner*, still in setup mode) is given the
//! code and the sponsor's status address. The two run SPAKE2 (RustCrypto's
//! `spake2`, Ed25519 group) keyed by the code: one request, one answer.
//!
//! ```text
//! joiner → sponsor  POST /api/pair/exchange  {"v":1,"spake":hex(A)}
//! sponsor → joiner  200  {"v":1,"spake":hex(B),"sealed":hex(ChaCha20-Poly1305(K, grant))}
//! ```
//!
//! `K` is SPAKE2's session key, fresh for every exchange, so the AEAD's
//! nonce is fixed at zero. The grant is the cluster config, the key file
//! and the joiner's node name, as JSON. Only a joiner that used the right
//! code derives `K`; anyone else gets a ciphertext it can neither open nor
//! test a guess against offline (SPAKE2 gives one online guess per run).
//! So an offer is used up by the first exchange, whatever its outcome: a
//! wrong code, a replayed request and a third box all meet a spent offer.
//! Parsing and sealing live here, without I/O; `now` is explicit.
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use std::time::{Duration, Instant};

/// How long an offered code stays valid.
pub const OFFER_TTL: Duration = Duration::from_secs(600);
const VERSION: u8 = 1;
const ID_JOINER: &[u8] = b"duet pair joiner";
const ID_SPONSOR: &[u8] = b"duet pair sponsor";
const AAD: &[u8] = b"duet pair v1 grant";
/// Largest request or answer body accepted: a config is a few KiB.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// What the sponsor hands the joiner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The cluster's duet.toml, as the sponsor runs it.
    pub config: String,
    /// The key file's text (the pair key, and the next one during a rotation).
    pub key: String,
    /// The `[[node]]` the joiner runs as.
    pub node: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairError {
    /// No code offered, or the offer was used or expired.
    #[error("no pairing code is on offer (offer one on the first box's admin page)")]
    NoOffer,
    /// Not a pairing message of this version.
    #[error("malformed pairing message")]
    Malformed,
    /// The keys did not agree: a wrong code (or a tampered answer).
    #[error("pairing failed: wrong code, or the code was used or expired")]
    Rejected,
}

#[derive(Serialize, Deserialize)]
struct Request {
    v: u8,
    spake: String,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    v: u8,
    spake: String,
    sealed: String,
}

/// The digits of a code as typed ("1234-5678", "1234 5678").
pub fn normalise(code: &str) -> String {
    code.chars().filter(char::is_ascii_digit).collect()
}

/// The sponsor's side: at most one live offer.
#[derive(Debug, Default)]
pub struct Sponsor {
    offer: Option<(String, Instant)>,
}

impl Sponsor {
    /// Offers `code` (fresh digits from the caller) until `now + OFFER_TTL`;
    /// an earlier offer is withdrawn.
    pub fn offer(&mut self, now: Instant, code: &str) {
        self.offer = Some((normalise(code), now + OFFER_TTL));
    }

    pub fn has_offer(&self, now: Instant) -> bool {
        self.offer.as_ref().is_some_and(|(_, until)| now < *until)
    }

    /// Answers one joiner's request with `grant` sealed under the session
    /// key. The offer is spent by this call whatever the outcome.
    pub fn exchange(
        &mut self,
        now: Instant,
        request: &str,
        grant: &Grant,
    ) -> Result<String, PairError> {
        let (code, until) = self.offer.take().ok_or(PairError::NoOffer)?;
        if now >= until {
            return Err(PairError::NoOffer);
        }
        let req: Request = serde_json::from_str(request).map_err(|_| PairError::Malformed)?;
        let msg_a = unhex(&req.spake).ok_or(PairError::Malformed)?;
        if req.v != VERSION {
            return Err(PairError::Malformed);
        }
        let (state, msg_b) = Spake2::<Ed25519Group>::start_b(
            &Password::new(code.as_bytes()),
            &Identity::new(ID_JOINER),
            &Identity::new(ID_SPONSOR),
        );
        let key = state.finish(&msg_a).map_err(|_| PairError::Malformed)?;
        let plain = serde_json::to_vec(grant).map_err(|_| PairError::Malformed)?;
        let sealed = cipher(&key)?
            .encrypt(
                &Nonce::default(),
                Payload {
                    msg: &plain,
                    aad: AAD,
                },
            )
            .map_err(|_| PairError::Malformed)?;
        serde_json::to_string(&Answer {
            v: VERSION,
            spake: hex(&msg_b),
            sealed: hex(&sealed),
        })
        .map_err(|_| PairError::Malformed)
    }
}

/// The joiner's side of one exchange.
pub struct Joiner {
    state: Spake2<Ed25519Group>,
}

impl Joiner {
    /// Starts an exchange with `code`; returns the request body to send.
    pub fn start(code: &str) -> (Joiner, String) {
        let (state, msg_a) = Spake2::<Ed25519Group>::start_a(
            &Password::new(normalise(code).as_bytes()),
            &Identity::new(ID_JOINER),
            &Identity::new(ID_SPONSOR),
        );
        let body = serde_json::to_string(&Request {
            v: VERSION,
            spake: hex(&msg_a),
        })
        .unwrap_or_default();
        (Joiner { state }, body)
    }

    /// Opens the sponsor's answer.
    pub fn finish(self, answer: &str) -> Result<Grant, PairError> {
        let a: Answer = serde_json::from_str(answer).map_err(|_| PairError::Malformed)?;
        if a.v != VERSION {
            return Err(PairError::Malformed);
        }
        let msg_b = unhex(&a.spake).ok_or(PairError::Malformed)?;
        let sealed = unhex(&a.sealed).ok_or(PairError::Malformed)?;
        let key = self
            .state
            .finish(&msg_b)
            .map_err(|_| PairError::Malformed)?;
        let plain = cipher(&key)?
            .decrypt(
                &Nonce::default(),
                Payload {
                    msg: &sealed,
                    aad: AAD,
                },
            )
            .map_err(|_| PairError::Rejected)?;
        serde_json::from_slice(&plain).map_err(|_| PairError::Malformed)
    }
}

fn cipher(key: &[u8]) -> Result<ChaCha20Poly1305, PairError> {
    ChaCha20Poly1305::new_from_slice(key).map_err(|_| PairError::Malformed)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAX_MESSAGE {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> Grant {
        Grant {
            config: "[cluster]\nvip = \"198.18.0.100\"\n".into(),
            key: "0123456789abcdef0123456789abcdef\n".into(),
            node: "web2".into(),
        }
    }

    #[test]
    fn the_right_code_hands_over_the_grant_once() {
        let t0 = Instant::now();
        let mut s = Sponsor::default();
        s.offer(t0, "1234-5678");
        assert!(s.has_offer(t0));
        let (j, req) = Joiner::start("12345678");
        let answer = s.exchange(t0, &req, &grant()).unwrap();
        assert!(
            !answer.contains("0123456789abcdef"),
            "the key travels sealed"
        );
        assert!(!answer.contains("198.18.0.100"));
        assert_eq!(j.finish(&answer), Ok(grant()));
        // Spent: the same request again (a replay) meets no offer.
        assert_eq!(s.exchange(t0, &req, &grant()), Err(PairError::NoOffer));
        assert!(!s.has_offer(t0));
    }

    #[test]
    fn a_wrong_code_learns_nothing_and_spends_the_offer() {
        let t0 = Instant::now();
        let mut s = Sponsor::default();
        s.offer(t0, "12345678");
        let (j, req) = Joiner::start("12345679");
        let answer = s.exchange(t0, &req, &grant()).unwrap();
        assert_eq!(j.finish(&answer), Err(PairError::Rejected));
        // The next try, even with the right code, needs a new offer.
        let (_, req) = Joiner::start("12345678");
        assert_eq!(s.exchange(t0, &req, &grant()), Err(PairError::NoOffer));
    }

    #[test]
    fn a_replayed_answer_does_not_open_for_another_joiner() {
        let t0 = Instant::now();
        let mut s = Sponsor::default();
        s.offer(t0, "12345678");
        let (_first, req) = Joiner::start("12345678");
        let answer = s.exchange(t0, &req, &grant()).unwrap();
        // A third box that saw the answer and knows the code still lacks
        // the first joiner's secret.
        let (third, _) = Joiner::start("12345678");
        assert_eq!(third.finish(&answer), Err(PairError::Rejected));
    }

    #[test]
    fn offers_expire_and_bad_messages_are_refused() {
        let t0 = Instant::now();
        let mut s = Sponsor::default();
        let (_, req) = Joiner::start("12345678");
        assert_eq!(s.exchange(t0, &req, &grant()), Err(PairError::NoOffer));
        s.offer(t0, "12345678");
        assert!(!s.has_offer(t0 + OFFER_TTL));
        assert_eq!(
            s.exchange(t0 + OFFER_TTL, &req, &grant()),
            Err(PairError::NoOffer)
        );
        for bad in [
            "",
            "{}",
            "{\"v\":1,\"spake\":\"zz\"}",
            "{\"v\":1,\"spake\":\"abc\"}",
            "{\"v\":2,\"spake\":\"00\"}",
            "{\"v\":1,\"spake\":\"00\"}",
        ] {
            s.offer(t0, "12345678");
            assert_eq!(
                s.exchange(t0, bad, &grant()),
                Err(PairError::Malformed),
                "{bad}"
            );
            assert!(!s.has_offer(t0), "{bad} spent the offer");
        }
        let (j, _) = Joiner::start("12345678");
        assert_eq!(j.finish("not json"), Err(PairError::Malformed));
    }

    #[test]
    fn codes_are_typed_loosely() {
        assert_eq!(normalise(" 1234-5678\n"), "12345678");
        assert_eq!(normalise("1234 5678"), "12345678");
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("g0"), None);
        assert_eq!(hex(&[1, 171]), "01ab");
    }
}
