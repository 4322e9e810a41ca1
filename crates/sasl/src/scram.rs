//! SCRAM pieces shared by the server and the client (RFC 5802 §3, RFC 7677).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::mechanism::Mechanism;

/// The hash a SCRAM mechanism is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScramHash {
    Sha1,
    Sha256,
}

/// Keys derived from the salted password (RFC 5802 §3).
pub(crate) struct ScramKeys {
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramHash {
    pub fn for_mechanism(m: Mechanism) -> Option<Self> {
        match m {
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Some(ScramHash::Sha1),
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => Some(ScramHash::Sha256),
            _ => None,
        }
    }

    pub fn output_len(self) -> usize {
        match self {
            ScramHash::Sha1 => 20,
            ScramHash::Sha256 => 32,
        }
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha1 => Sha1::digest(data).to_vec(),
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC accepts keys of any length, so new_from_slice cannot fail here.
        match self {
            ScramHash::Sha1 => {
                let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            ScramHash::Sha256 => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC takes keys of any length");
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
        }
    }

    /// `SaltedPassword := Hi(Normalize(password), salt, i)`; Hi is PBKDF2 with HMAC-H and
    /// Normalize is SASLprep ([`normalize_password`]), as in every other SCRAM implementation
    /// (scramp, GNU SASL, Cyrus): without it a password with, say, a no-break space works
    /// with our client but not with theirs.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let password = normalize_password(password);
        let mut out = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(&password, salt, iterations, &mut out),
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(&password, salt, iterations, &mut out)
            }
        }
        out
    }

    pub fn client_key(self, salted_password: &[u8]) -> Vec<u8> {
        self.hmac(salted_password, b"Client Key")
    }

    pub fn keys(self, salted_password: &[u8]) -> ScramKeys {
        ScramKeys {
            stored_key: self.hash(&self.client_key(salted_password)),
            server_key: self.hmac(salted_password, b"Server Key"),
        }
    }

    /// Server side of RFC 5802 §3: recovers ClientKey from the proof and checks it hashes to
    /// StoredKey. Returns whether it does (compared in constant time, so the comparison leaks
    /// nothing about StoredKey) and the ServerSignature to send back.
    pub fn verify_proof(
        self,
        stored_key: &[u8],
        server_key: &[u8],
        auth_message: &[u8],
        proof: &[u8],
    ) -> (bool, Vec<u8>) {
        let client_signature = self.hmac(stored_key, auth_message);
        let ok = if proof.len() == client_signature.len() {
            let client_key: Vec<u8> = proof
                .iter()
                .zip(&client_signature)
                .map(|(p, s)| p ^ s)
                .collect();
            bool::from(self.hash(&client_key).ct_eq(stored_key))
        } else {
            false
        };
        (ok, self.hmac(server_key, auth_message))
    }

    /// Client side of RFC 5802 §3: the ClientProof to send and the ServerSignature to expect.
    pub fn client_proof(self, salted_password: &[u8], auth_message: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let client_key = self.client_key(salted_password);
        let keys = self.keys(salted_password);
        let client_signature = self.hmac(&keys.stored_key, auth_message);
        let proof = client_key
            .iter()
            .zip(&client_signature)
            .map(|(k, s)| k ^ s)
            .collect();
        (proof, self.hmac(&keys.server_key, auth_message))
    }
}

/// Encodes a name as an RFC 5802 `saslname`: `,` and `=` would be read as syntax.
pub(crate) fn escape_saslname(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            ',' => out.push_str("=2C"),
            '=' => out.push_str("=3D"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes an RFC 5802 `saslname`. Any `=` not starting `=2C` or `=3D` MUST fail the
/// exchange (RFC 5802 §5.1), and NUL is not a `value-safe-char`.
pub(crate) fn unescape_saslname(s: &str) -> Result<String, &'static str> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(['=', '\0']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("=2C") {
            out.push(',');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("=3D") {
            out.push('=');
            rest = after;
        } else {
            return Err("bad saslname escape");
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// RFC 5802 `printable`: %x21-2B / %x2D-7E, i.e. visible ASCII except the comma.
pub(crate) fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A fresh nonce: 24 random bytes (192 bits, above the 18 bytes asked for), base64.
pub(crate) fn random_nonce() -> String {
    let mut bytes = [0u8; 24];
    // ThreadRng: a CSPRNG (ChaCha12, seeded from the OS) without a getrandom(2) call per AUTH.
    rand::thread_rng().fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// Splits `x=value`, checking the attribute letter.
pub(crate) fn attr(part: &str, name: char) -> Option<&str> {
    let mut chars = part.chars();
    if chars.next() == Some(name) && chars.next() == Some('=') {
        Some(&part[2..])
    } else {
        None
    }
}

/// RFC 5056 `cb-name`: 1*(ALPHA / DIGIT / "." / "-").
pub(crate) fn is_valid_cb_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// RFC 5802 §2.2 Normalize(): SASLprep (RFC 4013) with unassigned code points allowed (a
/// "stored string" is prepared the same way as a "query" one by every client we met).
///
/// A password SASLprep refuses (e.g. one with a control character or a bidi mix) is used as
/// its raw bytes rather than refused: the user could not log in with any SCRAM client
/// otherwise, and our own client and server then still agree. ASCII passwords are printable
/// already and are never changed, so the fast path skips the tables.
pub(crate) fn normalize_password(password: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    use std::borrow::Cow;
    if password.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Cow::Borrowed(password);
    }
    match std::str::from_utf8(password).map(stringprep::saslprep) {
        Ok(Ok(Cow::Owned(prepared))) if !prepared.is_empty() => Cow::Owned(prepared.into_bytes()),
        _ => Cow::Borrowed(password),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslname_escapes_round_trip() {
        for name in ["user", "a,b", "a=b", "=,=,", "", "ünï"] {
            assert_eq!(unescape_saslname(&escape_saslname(name)).unwrap(), name);
        }
    }

    #[test]
    fn saslname_rejects_bad_escapes() {
        for bad in ["a=", "a=2", "a=2c", "a=3d", "=41", "a\0b", "=="] {
            assert!(unescape_saslname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc5802_keys_from_password() {
        let salt = B64.decode("QSXCR+Q6sek8bf92").unwrap();
        let salted = ScramHash::Sha1.salted_password(b"pencil", &salt, 4096);
        let keys = ScramHash::Sha1.keys(&salted);
        assert_eq!(B64.encode(&keys.stored_key), "6dlGYMOdZcOPutkcNY8U2g7vK9Y=");
        assert_eq!(B64.encode(&keys.server_key), "D+CSWLOshSulAsxiupA+qs2/fTE=");
    }

    /// RFC 4013 §3's examples: what scramp and GNU SASL send for these passwords.
    #[test]
    fn salted_password_applies_saslprep_like_other_scram_implementations() {
        let salt = b"salt";
        let of = |p: &str| ScramHash::Sha256.salted_password(p.as_bytes(), salt, 16);
        assert_eq!(of("I\u{AD}X"), of("IX"), "soft hyphen is mapped to nothing");
        assert_eq!(of("\u{2168}"), of("IX"), "NFKC: ROMAN NUMERAL NINE is IX");
        assert_eq!(
            of("pass\u{A0}word"),
            of("pass word"),
            "no-break space is a space"
        );
        assert_ne!(of("user"), of("USER"), "case is kept");
        // Prohibited (a control character): hashed as given, not refused.
        assert_eq!(normalize_password(b"a\x07b").as_ref(), b"a\x07b".as_slice());
    }

    #[test]
    fn nonce_excludes_commas_and_controls() {
        assert!(is_valid_nonce("fyko+d2lbbFgONRv9qkxdawL"));
        assert!(!is_valid_nonce("a,b"));
        assert!(!is_valid_nonce("a b"));
        assert!(!is_valid_nonce(""));
        assert!(is_valid_nonce(&random_nonce()));
    }
}
