//! `[sasl]`: the mechanisms offered and trusted, realms, proxy rights,
//! the brute-force limits, the secret and verified-credential caches.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{OAuthConfig, WordList};

/// Where the step that answers a challenge (CRAM-MD5, DIGEST-MD5, SCRAM)
/// records that its sealed state is spent, so that the answer is taken once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeClaims {
    /// In the memory of the replica that takes the step: no Redis round
    /// trip. A second taking of the same step is refused by that replica;
    /// another replica would accept it, but only a frontend ever holds a
    /// sealed state, bound to its own SMTP session (SECURITY.md).
    Replica,
    /// In Redis, in the pipeline of the step's failure counts: no two
    /// replicas accept the same step, for a round trip on every challenge
    /// mechanism's AUTH.
    Shared,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaslConfig {
    /// Offered mechanisms, in EHLO order (`confAUTH_MECHANISMS`).
    pub mechanisms: WordList,
    /// Mechanisms whose sessions may relay (`TRUST_AUTH_MECH`).
    pub trusted: WordList,
    /// Offer PLAIN and LOGIN on a connection without TLS. Off: they appear
    /// only after STARTTLS, and using them before is `538 5.7.11`.
    pub allow_plaintext_without_tls: bool,
    /// DIGEST-MD5 realms offered; empty = `[default_realm]`.
    pub realms: WordList,
    /// Lifetime of an unfinished exchange: the sealed state a challenge
    /// carries is refused after this long.
    #[serde(with = "humantime_serde")]
    pub exchange_ttl: Duration,
    /// Where a sealed exchange's single use is recorded (see
    /// [`ExchangeClaims`]).
    pub exchange_claims: ExchangeClaims,
    /// File with the key (64 hex digits) that seals exchange state between
    /// SASL steps; every sasl-auth replica needs the same one. Unset in
    /// `authrelay serve`: a random key per process. A separate sasl-auth
    /// refuses to start without it.
    pub exchange_key_file: Option<PathBuf>,
    /// The key before the current one, still accepted (never used to seal)
    /// so keys rotate without failing exchanges in flight.
    pub exchange_previous_key_file: Option<PathBuf>,
    /// Stored secrets cached in sasl-auth (Dovecot's `auth_cache_size`, in
    /// entries); 0 = no cache.
    pub secret_cache_size: usize,
    /// How long a cached secret is used (`auth_cache_ttl`). A change through
    /// credential-store invalidates it at once on every replica.
    #[serde(with = "humantime_serde")]
    pub secret_cache_ttl: Duration,
    /// How long "no such user" is cached (`auth_cache_negative_ttl`).
    #[serde(with = "humantime_serde")]
    pub secret_cache_negative_ttl: Duration,
    /// Proxy rights: authentication id (NAME@REALM) → authorization ids it
    /// may act as (`*` = any). Without an entry an authzid different from the
    /// authcid is refused.
    pub proxy: BTreeMap<String, WordList>,
    pub limits: BruteForceLimits,
    /// EXTERNAL: how a verified client-certificate identity maps to a user.
    pub external: ExternalConfig,
    /// How long a successful PLAIN/LOGIN verification is remembered (as a
    /// keyed fingerprint in sasl-auth's memory) so a client that reconnects
    /// does not pay Argon2id each time; 0 = off.
    #[serde(with = "humantime_serde")]
    pub verified_cache_ttl: Duration,
    /// OAUTHBEARER / XOAUTH2: the token issuers trusted.
    pub oauth: OAuthConfig,
}

impl Default for SaslConfig {
    fn default() -> Self {
        let all = WordList::from([
            "SCRAM-SHA-256-PLUS",
            "SCRAM-SHA-256",
            "SCRAM-SHA-1-PLUS",
            "SCRAM-SHA-1",
            "DIGEST-MD5",
            "CRAM-MD5",
            "PLAIN",
            "LOGIN",
        ]);
        SaslConfig {
            trusted: all.clone(),
            mechanisms: all,
            allow_plaintext_without_tls: false,
            realms: WordList::default(),
            exchange_ttl: Duration::from_secs(60),
            exchange_claims: ExchangeClaims::Replica,
            exchange_key_file: None,
            exchange_previous_key_file: None,
            secret_cache_size: 10_000,
            secret_cache_ttl: Duration::from_secs(600),
            secret_cache_negative_ttl: Duration::from_secs(60),
            proxy: BTreeMap::new(),
            limits: BruteForceLimits::default(),
            external: ExternalConfig::default(),
            verified_cache_ttl: Duration::from_secs(300),
            oauth: OAuthConfig::default(),
        }
    }
}

/// Brute-force defence, counted in the shared store so every replica sees
/// the same totals.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BruteForceLimits {
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Failures from one client IP within the window before it is blocked (0 = off).
    pub max_failures_per_ip: u32,
    /// Failures against one (user, realm) within the window before it is blocked (0 = off).
    pub max_failures_per_user: u32,
    /// Added delay before answering a blocked attempt.
    #[serde(with = "humantime_serde")]
    pub block_delay: Duration,
    /// How long a sasl-auth replica trusts a counter it read from Redis as
    /// zero, so that an AUTH with nothing to claim (PLAIN, LOGIN) from a
    /// clean address for a clean user skips its Redis round trip. A failure
    /// on the replica forgets its entries at once; another replica's
    /// failures are seen when the entry expires (0 = read every time).
    #[serde(with = "humantime_serde")]
    pub clean_ttl: Duration,
}

impl Default for BruteForceLimits {
    fn default() -> Self {
        BruteForceLimits {
            window: Duration::from_secs(600),
            max_failures_per_ip: 20,
            max_failures_per_user: 10,
            block_delay: Duration::from_secs(2),
            clean_ttl: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalConfig {
    /// Certificate identity (subject CN or SAN e-mail) → NAME@REALM.
    /// Unmapped identities are used as they are.
    pub map: BTreeMap<String, String>,
}
