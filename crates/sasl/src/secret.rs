//! What the credential store keeps for a user, one entry per [`SecretFamily`] (defined beside
//! [`Mechanism`](crate::Mechanism), which names it), and how it is derived from a password.
//!
//! Each family is the least a server needs to verify its mechanisms: an Argon2id hash for
//! the plaintext mechanisms, HMAC-MD5 contexts for CRAM-MD5, `H(user:realm:pass)` for
//! DIGEST-MD5, and StoredKey/ServerKey for SCRAM. None of them is the password.

use std::fmt;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;

use crate::digest::user_realm_password_hash;
use crate::md5ctx::hmac_md5_contexts;
use crate::mechanism::SecretFamily;
use crate::scram::ScramHash;

/// A user's stored secret for one family.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StoredSecret {
    /// Argon2id PHC string.
    Password { phc: String },
    /// HMAC-MD5 pre-computed contexts: MD5 state after absorbing `key ^ ipad` and
    /// `key ^ opad` (RFC 2104 §4), as Dovecot and Cyrus keep them.
    CramMd5 { inner: [u32; 4], outer: [u32; 4] },
    /// `MD5(user ":" realm ":" password)` (RFC 2831 §2.1.2.1) for the bare user
    /// name, and for the name qualified with its realm (`user@realm`): clients
    /// where people log in with their address (swaks, curl, mail clients) send
    /// that as `username` and hash it with the realm the server offered, and
    /// HA1 cannot be re-derived without the password. Secrets imported as a
    /// bare HA1 (Dovecot's `{DIGEST-MD5}`) have no qualified form.
    DigestMd5 {
        ha1: [u8; 16],
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ha1_qualified: Option<[u8; 16]>,
        /// `MD5(user@realm ":" offered ":" password)` for each other realm the
        /// server offered when the password was set: mail clients log in
        /// with the address and hash it with the (first) realm of the
        /// challenge, which on a default set-up is the host name, not the
        /// user's realm. Cyrus computes that from its clear-text sasldb; we
        /// store it, as (offered realm, HA1).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ha1_offered: Vec<(String, [u8; 16])>,
    },
    /// RFC 5802 §3 StoredKey and ServerKey.
    ScramSha1 {
        salt: Vec<u8>,
        iterations: u32,
        stored_key: [u8; 20],
        server_key: [u8; 20],
    },
    /// RFC 7677 StoredKey and ServerKey.
    ScramSha256 {
        salt: Vec<u8>,
        iterations: u32,
        stored_key: [u8; 32],
        server_key: [u8; 32],
    },
}

impl StoredSecret {
    pub fn family(&self) -> SecretFamily {
        match self {
            StoredSecret::Password { .. } => SecretFamily::Password,
            StoredSecret::CramMd5 { .. } => SecretFamily::CramMd5,
            StoredSecret::DigestMd5 { .. } => SecretFamily::DigestMd5,
            StoredSecret::ScramSha1 { .. } => SecretFamily::ScramSha1,
            StoredSecret::ScramSha256 { .. } => SecretFamily::ScramSha256,
        }
    }
}

/// Redacted: a secret that reaches a log line through `{:?}` must not leak.
impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredSecret({}, <redacted>)", self.family().name())
    }
}

/// Cost parameters for [`derive_secret`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretParams {
    /// PBKDF2 iterations for SCRAM; RFC 7677 §4 asks for at least 4096.
    pub scram_iterations: u32,
    /// Argon2id memory cost in KiB (OWASP's 19 MiB recommendation by default).
    pub argon2_m_cost_kib: u32,
    pub argon2_t_cost: u32,
    pub argon2_p_cost: u32,
    /// The realms DIGEST-MD5 offers (`sasl.realms`): a DIGEST-MD5 secret also
    /// holds the address form hashed with each of them.
    pub digest_realms: Vec<String>,
}

impl Default for SecretParams {
    fn default() -> Self {
        Self {
            scram_iterations: 4096,
            argon2_m_cost_kib: 19456,
            argon2_t_cost: 2,
            argon2_p_cost: 1,
            digest_realms: Vec::new(),
        }
    }
}

/// Derives the stored secret of `family` from a password. Salts are fresh from the OS RNG.
///
/// `realm` only enters DIGEST-MD5 (whose secret is bound to it); `user` enters DIGEST-MD5 and
/// nothing else. Out-of-range Argon2 costs are raised to the smallest the algorithm accepts
/// rather than failing, so a typo in a config cannot lock every user out.
pub fn derive_secret(
    family: SecretFamily,
    user: &str,
    realm: &str,
    password: &[u8],
    params: &SecretParams,
) -> StoredSecret {
    match family {
        SecretFamily::Password => StoredSecret::Password {
            phc: argon2_phc(password, params),
        },
        SecretFamily::CramMd5 => {
            let (inner, outer) = hmac_md5_contexts(password);
            StoredSecret::CramMd5 { inner, outer }
        }
        SecretFamily::DigestMd5 => StoredSecret::DigestMd5 {
            ha1: user_realm_password_hash(user, realm, password),
            ha1_qualified: Some(user_realm_password_hash(
                &format!("{user}@{realm}"),
                realm,
                password,
            )),
            ha1_offered: params
                .digest_realms
                .iter()
                .filter(|offered| *offered != realm)
                .map(|offered| {
                    (
                        offered.clone(),
                        user_realm_password_hash(&format!("{user}@{realm}"), offered, password),
                    )
                })
                .collect(),
        },
        SecretFamily::ScramSha1 | SecretFamily::ScramSha256 => {
            let mut salt = vec![0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut salt);
            scram_secret(family, password, salt, params.scram_iterations.max(1))
        }
    }
}

/// Derives a SCRAM secret with a given salt and iteration count, e.g. to import one or to
/// reproduce the RFC 5802 / RFC 7677 examples. `None` for a non-SCRAM family or zero
/// iterations.
pub fn derive_scram_secret(
    family: SecretFamily,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Option<StoredSecret> {
    if iterations == 0 || !matches!(family, SecretFamily::ScramSha1 | SecretFamily::ScramSha256) {
        return None;
    }
    Some(scram_secret(family, password, salt.to_vec(), iterations))
}

fn scram_secret(
    family: SecretFamily,
    password: &[u8],
    salt: Vec<u8>,
    iterations: u32,
) -> StoredSecret {
    let hash = match family {
        SecretFamily::ScramSha1 => ScramHash::Sha1,
        _ => ScramHash::Sha256,
    };
    let keys = hash.keys(&hash.salted_password(password, &salt, iterations));
    scram_from_keys(family, salt, iterations, &keys.stored_key, &keys.server_key)
}

fn scram_from_keys(
    family: SecretFamily,
    salt: Vec<u8>,
    iterations: u32,
    stored_key: &[u8],
    server_key: &[u8],
) -> StoredSecret {
    fn arr<const N: usize>(v: &[u8]) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&v[..N]);
        a
    }
    match family {
        SecretFamily::ScramSha1 => StoredSecret::ScramSha1 {
            salt,
            iterations,
            stored_key: arr(stored_key),
            server_key: arr(server_key),
        },
        _ => StoredSecret::ScramSha256 {
            salt,
            iterations,
            stored_key: arr(stored_key),
            server_key: arr(server_key),
        },
    }
}

fn argon2_phc(password: &[u8], params: &SecretParams) -> String {
    let p = params.argon2_p_cost.clamp(1, Params::MAX_P_COST);
    let t = params.argon2_t_cost.max(Params::MIN_T_COST);
    let m = params.argon2_m_cost_kib.max(Params::MIN_M_COST).max(8 * p);
    let argon_params = Params::new(m, t, p, None).unwrap_or_default();
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid Argon2 salt length");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params)
        .hash_password(password, &salt)
        .expect("Argon2id accepts any password under 4 GiB with a valid salt")
        .to_string()
}

/// Checks a password against an Argon2 PHC string; `false` when the PHC is malformed.
///
/// The PHC string carries its own algorithm and costs. The working memory
/// (19 MiB with the default costs) comes from a small pool instead of a
/// fresh allocation per check: glibc keeps such freed blocks in the arena
/// of the thread that freed them, so a login storm spread over a blocking
/// pool's threads left sasl-auth holding about 1 GiB of freed Argon2
/// memory (measured by scripts/bench-peer.sh), and every fresh block had to
/// be faulted in again.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) =
        (Algorithm::try_from(hash.algorithm), Params::try_from(&hash))
    else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let argon = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let mut memory = WorkingMemory::take(params.block_count());
    let ok = argon
        .hash_password_into_with_memory(password, salt, &mut out, memory.blocks())
        .is_ok();
    drop(memory);
    ok && bool::from(subtle::ConstantTimeEq::ct_eq(
        out.as_slice(),
        expected.as_bytes(),
    ))
}

/// Argon2 working memory, taken from and given back to a process-wide pool
/// (as many buffers as checks ever ran at once — sasl-auth bounds that).
struct WorkingMemory {
    blocks: Vec<argon2::Block>,
    len: usize,
}

static WORKING_MEMORY: std::sync::Mutex<Vec<Vec<argon2::Block>>> =
    std::sync::Mutex::new(Vec::new());

impl WorkingMemory {
    fn take(len: usize) -> Self {
        let mut blocks = WORKING_MEMORY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        if blocks.len() < len {
            blocks.resize(len, argon2::Block::default());
        }
        WorkingMemory { blocks, len }
    }

    fn blocks(&mut self) -> &mut [argon2::Block] {
        &mut self.blocks[..self.len]
    }
}

impl Drop for WorkingMemory {
    fn drop(&mut self) {
        // The blocks held a password's derivation: wipe before reuse.
        for b in &mut self.blocks[..self.len] {
            *b = argon2::Block::default();
        }
        let blocks = std::mem::take(&mut self.blocks);
        WORKING_MEMORY
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(blocks);
    }
}

/// A random key for this process, so dummy secrets are stable per user name within a
/// process yet unpredictable from outside.
pub(crate) fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key
    })
}

fn keyed(label: &str, user: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(process_key())
        .expect("HMAC takes keys of any length");
    mac.update(label.as_bytes());
    mac.update(&[0]);
    mac.update(user.as_bytes());
    mac.finalize().into_bytes().into()
}

static DUMMY_PARAMS: OnceLock<SecretParams> = OnceLock::new();

/// The cost parameters real users' secrets are made with (the credential store's
/// configuration), for [`dummy_secret`] to copy. Call once at startup, before the first
/// `dummy_secret`; later calls are ignored. Without it the defaults are used, and an
/// operator who changed the costs would make unknown users measurably slower or faster than
/// real ones (Argon2id) and give them away in SCRAM's visible `i=` iteration count.
pub fn set_dummy_params(params: SecretParams) {
    let _ = DUMMY_PARAMS.set(params);
}

fn dummy_params() -> &'static SecretParams {
    DUMMY_PARAMS.get_or_init(SecretParams::default)
}

/// A stand-in secret for a user that does not exist, so the server does the same work and
/// answers the same way as for a wrong password (no user enumeration).
///
/// SCRAM's salt is visible to the client in server-first: it is derived from the user name
/// under a per-process key, so repeated probes for one unknown user see one stable salt,
/// like a real user's, with the configured iteration count ([`set_dummy_params`]). The
/// Password family's PHC is a real Argon2id hash (configured costs) of a random password,
/// computed once per process, so the verification costs what a real one does. That hash is
/// made on first use, so the first unknown-user probe would be slower than later ones: call
/// `dummy_secret(SecretFamily::Password, "")` once at startup to make it then.
pub fn dummy_secret(family: SecretFamily, user: &str) -> StoredSecret {
    match family {
        SecretFamily::Password => {
            static PHC: OnceLock<String> = OnceLock::new();
            let phc = PHC.get_or_init(|| {
                let mut password = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut password);
                argon2_phc(&password, dummy_params())
            });
            StoredSecret::Password { phc: phc.clone() }
        }
        SecretFamily::CramMd5 => {
            let (inner, outer) = hmac_md5_contexts(&keyed("cram-md5", user));
            StoredSecret::CramMd5 { inner, outer }
        }
        SecretFamily::DigestMd5 => {
            let mut ha1 = [0u8; 16];
            ha1.copy_from_slice(&keyed("digest-md5", user)[..16]);
            let mut qualified = [0u8; 16];
            qualified.copy_from_slice(&keyed("digest-md5-qualified", user)[..16]);
            StoredSecret::DigestMd5 {
                ha1,
                ha1_qualified: Some(qualified),
                ha1_offered: Vec::new(),
            }
        }
        SecretFamily::ScramSha1 | SecretFamily::ScramSha256 => {
            let salt = keyed(&format!("{}-salt", family.name()), user)[..16].to_vec();
            // The keys need not come from any password: nobody can produce a proof for them,
            // and the server refuses an unknown user regardless. Deriving them by HMAC instead
            // of PBKDF2 keeps probes cheap for us.
            let stored = keyed(&format!("{}-stored", family.name()), user);
            let server = keyed(&format!("{}-server", family.name()), user);
            let iterations = dummy_params().scram_iterations.max(1);
            scram_from_keys(family, salt, iterations, &stored, &server)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as B64;
    use hmac::{Hmac, Mac};

    fn fast() -> SecretParams {
        SecretParams {
            argon2_m_cost_kib: 64,
            argon2_t_cost: 1,
            ..SecretParams::default()
        }
    }

    #[test]
    fn derived_secret_has_requested_family() {
        for f in SecretFamily::ALL {
            assert_eq!(derive_secret(f, "u", "r", b"pw", &fast()).family(), f);
            assert_eq!(dummy_secret(f, "u").family(), f);
        }
    }

    #[test]
    fn password_phc_is_argon2id_and_verifies() {
        let StoredSecret::Password { phc } =
            derive_secret(SecretFamily::Password, "u", "", b"hunter2", &fast())
        else {
            panic!("wrong family")
        };
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(verify_password(&phc, b"hunter2"));
        assert!(!verify_password(&phc, b"hunter3"));
        assert!(!verify_password("not a phc", b"hunter2"));
        assert!(!verify_password("", b""));
    }

    #[test]
    fn verification_reuses_working_memory_of_any_size_and_still_tells_passwords_apart() {
        let small = SecretParams {
            argon2_m_cost_kib: 64,
            argon2_t_cost: 1,
            ..SecretParams::default()
        };
        let large = SecretParams {
            argon2_m_cost_kib: 256,
            ..small.clone()
        };
        let a = argon2_phc(b"first", &large);
        let b = argon2_phc(b"second", &small);
        for _ in 0..3 {
            // Large, then small from the same pooled buffer, then large again.
            assert!(verify_password(&a, b"first"));
            assert!(!verify_password(&a, b"second"));
            assert!(verify_password(&b, b"second"));
            assert!(!verify_password(&b, b"first"));
        }
        // Another Argon2 variant and version in the PHC are honoured.
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x10,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::encode_b64(b"0123456789abcdef").unwrap())
        .unwrap()
        .to_string();
        assert!(verify_password(&argon2i, b"pw"));
        assert!(!verify_password(&argon2i, b"pw2"));
        assert!(!verify_password(
            "$argon2id$v=19$m=64,t=1,p=1$bm9zYWx0$",
            b"pw"
        ));
    }

    #[test]
    fn silly_argon2_costs_are_raised_not_fatal() {
        let params = SecretParams {
            argon2_m_cost_kib: 0,
            argon2_t_cost: 0,
            argon2_p_cost: 0,
            scram_iterations: 0,
            digest_realms: Vec::new(),
        };
        let StoredSecret::Password { phc } =
            derive_secret(SecretFamily::Password, "u", "", b"pw", &params)
        else {
            panic!("wrong family")
        };
        assert!(verify_password(&phc, b"pw"));
        let StoredSecret::ScramSha1 { iterations, .. } =
            derive_secret(SecretFamily::ScramSha1, "u", "", b"pw", &params)
        else {
            panic!("wrong family")
        };
        assert_eq!(iterations, 1);
    }

    #[test]
    fn cram_md5_contexts_agree_with_hmac_crate() {
        let StoredSecret::CramMd5 { inner, outer } = derive_secret(
            SecretFamily::CramMd5,
            "tim",
            "",
            b"tanstaaftanstaaf",
            &fast(),
        ) else {
            panic!("wrong family")
        };
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        let ours = crate::md5ctx::hmac_md5_from_contexts(&inner, &outer, challenge);
        let mut mac = <Hmac<md5::Md5> as Mac>::new_from_slice(b"tanstaaftanstaaf").unwrap();
        mac.update(challenge);
        assert_eq!(ours[..], mac.finalize().into_bytes()[..]);
    }

    #[test]
    fn scram_rfc_example_keys() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let Some(StoredSecret::ScramSha256 {
            stored_key,
            server_key,
            ..
        }) = derive_scram_secret(SecretFamily::ScramSha256, b"pencil", &salt, 4096)
        else {
            panic!("wrong family")
        };
        assert_eq!(
            B64.encode(stored_key),
            "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
        );
        assert_eq!(
            B64.encode(server_key),
            "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
        assert!(derive_scram_secret(SecretFamily::Password, b"p", b"s", 1).is_none());
        assert!(derive_scram_secret(SecretFamily::ScramSha1, b"p", b"s", 0).is_none());
    }

    #[test]
    fn debug_never_shows_secret_bytes() {
        let s = derive_secret(SecretFamily::ScramSha256, "u", "", b"pw", &fast());
        let StoredSecret::ScramSha256 { stored_key, .. } = &s else {
            panic!("wrong family")
        };
        let shown = format!("{s:?}");
        assert_eq!(shown, "StoredSecret(scram-sha-256, <redacted>)");
        assert!(!shown.contains(&hex::encode(stored_key)));
    }

    #[test]
    fn dummy_scram_salt_is_stable_per_user_and_differs_between_users() {
        let salt = |u| match dummy_secret(SecretFamily::ScramSha256, u) {
            StoredSecret::ScramSha256 {
                salt, iterations, ..
            } => {
                assert_eq!(iterations, 4096);
                salt
            }
            _ => panic!("wrong family"),
        };
        assert_eq!(salt("ghost"), salt("ghost"));
        assert_ne!(salt("ghost"), salt("phantom"));
        assert_eq!(salt("ghost").len(), 16);
    }

    #[test]
    fn dummy_password_is_a_real_default_cost_argon2id_hash() {
        let StoredSecret::Password { phc } = dummy_secret(SecretFamily::Password, "ghost") else {
            panic!("wrong family")
        };
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(
            dummy_secret(SecretFamily::Password, "other"),
            StoredSecret::Password { phc }
        );
    }
}
