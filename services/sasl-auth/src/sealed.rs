//! Sealed exchange state.
//!
//! Between SASL steps the exchange travels to the frontend and back inside
//! the challenge's exchange id, sealed with XChaCha20-Poly1305 under a key
//! every sasl-auth replica shares: any replica can take any step, and Redis
//! holds nothing per step (a round trip saved on every challenge, and no
//! store to lose state in). The frontend can neither read nor alter it.
//!
//! - The SMTP session id is the AEAD's associated data: a token lifted into
//!   another session does not open.
//! - The expiry is inside the sealed text: an old token is refused even by a
//!   replica that never saw it.
//! - A random token id rides along; the step that answers the challenge
//!   records it as spent, in the replica's memory ([`crate::spent`]) or,
//!   with `sasl.exchange_claims = "shared"`, in Redis in the pipeline of the
//!   failure counts, so a captured challenge state cannot be answered twice.
//! - Keys rotate without failing exchanges in flight: the previous key
//!   still opens (never seals).
//!
//! Random 192-bit nonces (XChaCha) make nonce reuse under one key a
//! non-issue however many tokens the replicas mint.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use authrelay_sasl::ServerExchange;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Every token starts with this; the version lets the format change.
const PREFIX: &str = "v1.";
const AAD_LABEL: &[u8] = b"authrelay sasl exchange v1\0";
const KID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
/// A LOGIN user name is at most 8 KiB (the mechanism's response limit),
/// six times that JSON-escaped at worst, then base64 and the rest: refuse
/// anything longer before decoding it.
const MAX_TOKEN: usize = 72 * 1024;

/// What a challenge carries to the next step.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct ExchangeState {
    /// Seconds since the Unix epoch after which the token is refused.
    pub expires: u64,
    /// Random, hex: spent once, by the step that answers this state's
    /// challenge (see module note).
    pub id: String,
    /// The per-address failure count was already read for this AUTH.
    pub ip_checked: bool,
    pub exchange: ServerExchange,
}

/// Why a token was refused; for the log line (the client gets 535).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a sealed exchange")]
    Malformed,
    #[error("sealed under a key this replica does not hold")]
    UnknownKey,
    #[error("altered, or sealed for another session")]
    Tampered,
    #[error("expired")]
    Expired,
}

impl Refusal {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Tampered => "tampered",
            Refusal::Expired => "expired",
        }
    }
}

struct Key {
    id: [u8; KID_LEN],
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Key {
        let cipher = XChaCha20Poly1305::new(bytes.into());
        Key {
            id: key_id(&cipher),
            cipher,
        }
    }
}

/// A key's id without another hash crate: the first bytes of the key's own
/// seal of a fixed label under the zero nonce (never used for a token).
/// Distinct keys give distinct ids with overwhelming probability, and the
/// id tells nothing about the key.
fn key_id(cipher: &XChaCha20Poly1305) -> [u8; KID_LEN] {
    let ct = cipher
        .encrypt(&XNonce::default(), &b"authrelay key id"[..])
        .unwrap_or_default();
    let mut id = [0u8; KID_LEN];
    for (d, s) in id.iter_mut().zip(ct.iter()) {
        *d = *s;
    }
    id
}

pub struct ExchangeKeys {
    current: Key,
    previous: Option<Key>,
}

impl ExchangeKeys {
    pub fn new(current: [u8; 32], previous: Option<[u8; 32]>) -> Self {
        ExchangeKeys {
            current: Key::new(&current),
            previous: previous.as_ref().map(Key::new),
        }
    }

    /// A random key for one process (`authrelay serve`): nobody else needs
    /// to open its tokens.
    pub fn ephemeral() -> Self {
        Self::new(rand::random(), None)
    }

    /// The keys named by `sasl.exchange_key_file` / `exchange_previous_key_file`.
    pub fn from_files(current: &Path, previous: Option<&Path>) -> Result<Self, anyhow::Error> {
        let cur = read_key(current, "sasl.exchange_key_file")?;
        let prev = previous
            .map(|p| read_key(p, "sasl.exchange_previous_key_file"))
            .transpose()?;
        Ok(Self::new(cur, prev))
    }

    pub fn seal(&self, session_id: &str, state: &ExchangeState) -> String {
        let plain = serde_json::to_vec(state).expect("an exchange always serialises");
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = aad(session_id);
        let ct = self
            .current
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any length we produce");
        let mut raw = Vec::with_capacity(KID_LEN + NONCE_LEN + ct.len());
        raw.extend_from_slice(&self.current.id);
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        let mut token = String::with_capacity(PREFIX.len() + raw.len() * 4 / 3 + 4);
        token.push_str(PREFIX);
        B64URL.encode_string(&raw, &mut token);
        token
    }

    pub fn open(&self, session_id: &str, token: &str) -> Result<ExchangeState, Refusal> {
        self.open_at(session_id, token, unix_now())
    }

    pub fn open_at(
        &self,
        session_id: &str,
        token: &str,
        now: u64,
    ) -> Result<ExchangeState, Refusal> {
        let body = token
            .strip_prefix(PREFIX)
            .filter(|b| b.len() <= MAX_TOKEN)
            .ok_or(Refusal::Malformed)?;
        let raw = B64URL.decode(body).map_err(|_| Refusal::Malformed)?;
        if raw.len() < KID_LEN + NONCE_LEN + 16 {
            return Err(Refusal::Malformed);
        }
        let (kid, rest) = raw.split_at(KID_LEN);
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == kid)
            .ok_or(Refusal::UnknownKey)?;
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: &aad(session_id),
                },
            )
            .map_err(|_| Refusal::Tampered)?;
        // Authentic: only a replica with the key wrote this, so a decode
        // error is a format change across versions, refused the same way.
        let state: ExchangeState =
            serde_json::from_slice(&plain).map_err(|_| Refusal::Malformed)?;
        if state.expires < now {
            return Err(Refusal::Expired);
        }
        Ok(state)
    }
}

fn aad(session_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + session_id.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(session_id.as_bytes());
    aad
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn new_token_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A key file: 64 hex digits (`openssl rand -hex 32`), surrounding white
/// space ignored. The error names the key and the file, never the content.
fn read_key(path: &Path, key: &str) -> Result<[u8; 32], anyhow::Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| {
        anyhow::anyhow!(
            "{key} {}: not a key (want 64 hex digits, e.g. from `openssl rand -hex 32`)",
            path.display()
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use authrelay_sasl::Mechanism;

    fn state(expires: u64) -> ExchangeState {
        ExchangeState {
            expires,
            id: new_token_id(),
            ip_checked: true,
            exchange: ServerExchange::new(Mechanism::CramMd5),
        }
    }

    #[test]
    fn a_token_opens_in_its_own_session_only() {
        let keys = ExchangeKeys::ephemeral();
        let t = keys.seal("s1", &state(u64::MAX));
        let back = keys.open("s1", &t).expect("opens");
        assert!(back.ip_checked);
        assert_eq!(keys.open("s2", &t).err(), Some(Refusal::Tampered));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let keys = ExchangeKeys::ephemeral();
        let t = keys.seal("s", &state(100));
        assert!(keys.open_at("s", &t, 100).is_ok());
        assert_eq!(keys.open_at("s", &t, 101).err(), Some(Refusal::Expired));
    }

    #[test]
    fn every_altered_byte_is_refused_without_panic() {
        let keys = ExchangeKeys::ephemeral();
        let t = keys.seal("s", &state(u64::MAX));
        let raw = B64URL.decode(&t[PREFIX.len()..]).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let forged = format!("{PREFIX}{}", B64URL.encode(&bad));
            let err = keys.open("s", &forged).err();
            assert!(
                matches!(err, Some(Refusal::Tampered | Refusal::UnknownKey)),
                "byte {i}: {err:?}"
            );
        }
        for junk in [
            "",
            "v1.",
            "v1.!!",
            "inline:abc",
            "v2.AAAA",
            &"v1.A".repeat(30_000),
        ] {
            assert!(keys.open("s", junk).is_err(), "{junk:.20}");
        }
    }

    #[test]
    fn the_previous_key_opens_but_never_seals() {
        let (old, new) = (rand::random::<[u8; 32]>(), rand::random::<[u8; 32]>());
        let before = ExchangeKeys::new(old, None);
        let t = before.seal("s", &state(u64::MAX));
        let rotated = ExchangeKeys::new(new, Some(old));
        assert!(
            rotated.open("s", &t).is_ok(),
            "in-flight token survives rotation"
        );
        let t2 = rotated.seal("s", &state(u64::MAX));
        assert_eq!(before.open("s", &t2).err(), Some(Refusal::UnknownKey));
        let after = ExchangeKeys::new(new, None);
        assert_eq!(after.open("s", &t).err(), Some(Refusal::UnknownKey));
    }

    #[test]
    fn key_files_are_hex_and_errors_never_quote_them() {
        let dir = std::env::temp_dir().join(format!("sealed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("k");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).unwrap();
        assert!(ExchangeKeys::from_files(&good, None).is_ok());
        let bad = dir.join("bad");
        std::fs::write(&bad, "secret-ish-not-hex").unwrap();
        let err = ExchangeKeys::from_files(&bad, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("sasl.exchange_key_file"), "{err}");
        assert!(!err.contains("secret-ish"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
