//! `sasl.oauth`: the token issuers whose JWT access tokens OAUTHBEARER and
//! XOAUTH2 accept, and how a token's claim becomes a user.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ConfigError;
use crate::lists::WordList;

/// Signature algorithms a token may use. `none` and the HMAC ones (`HS*`)
/// are not in it and cannot be put in: a public key from a JWKS must never
/// serve as an HMAC secret (the RS256→HS256 confusion attack).
pub const SUPPORTED_ALGORITHMS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OAuthConfig {
    /// The issuers whose tokens are accepted. None: OAUTHBEARER and XOAUTH2
    /// are not offered.
    pub issuers: Vec<Issuer>,
    /// Signature algorithms accepted (a subset of [`SUPPORTED_ALGORITHMS`]).
    pub algorithms: WordList,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// How often a JWKS is fetched again when its response says nothing
    /// (`Cache-Control: max-age` is honoured between `jwks_min_refresh` and this).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// A token signed by a key the cached JWKS lacks (the issuer rotated
    /// keys) fetches the JWKS again at once, but at most this often per
    /// issuer: tokens with made-up `kid`s cannot make us hammer the issuer.
    #[serde(with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// Timeout of one JWKS or discovery request.
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            issuers: Vec::new(),
            algorithms: WordList::from(SUPPORTED_ALGORITHMS),
            leeway: Duration::from_secs(60),
            jwks_refresh: Duration::from_secs(3600),
            jwks_min_refresh: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Issuer {
    /// The `iss` claim, exactly as the issuer writes it (`https://…`).
    pub issuer: String,
    /// Where its keys are. Unset: from `ISSUER/.well-known/openid-configuration`.
    pub jwks_uri: Option<String>,
    /// `aud` values accepted (one of them must be in the token).
    pub audience: WordList,
    /// The claim naming the user: `email`, `preferred_username`, `sub`, `upn`…
    pub user_claim: String,
    /// Realm of a user whose claim has no `@REALM`; default: `default_realm`.
    pub realm: Option<String>,
    /// PEM CA bundle the JWKS/discovery endpoint's certificate must chain to,
    /// instead of the public Web PKI roots (a private issuer). Read by
    /// sasl-auth only (the other services need not mount it), at start.
    pub ca_file: Option<PathBuf>,
    /// The user must also exist in credential-store (any mechanism): tokens
    /// then only log in users the operator created.
    pub require_local_user: bool,
    /// `scope` to tell a refused client in the RFC 7628 error.
    pub scope: Option<String>,
}

impl Issuer {
    /// The discovery document's URL (OpenID Connect Discovery §4).
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }

    pub fn user_claim(&self) -> &str {
        if self.user_claim.is_empty() {
            "email"
        } else {
            &self.user_claim
        }
    }
}

impl OAuthConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for a in self.algorithms.iter() {
            if !SUPPORTED_ALGORITHMS.contains(&a) {
                let why = if a.eq_ignore_ascii_case("none")
                    || a.to_ascii_uppercase().starts_with("HS")
                {
                    "is never accepted: unsigned or HMAC tokens cannot be checked against an issuer's public keys".to_owned()
                } else {
                    format!("unknown; supported: {}", SUPPORTED_ALGORITHMS.join(" "))
                };
                return Err(ConfigError::new("sasl.oauth.algorithms", a, why));
            }
        }
        if !self.issuers.is_empty() && self.algorithms.iter().next().is_none() {
            return Err(ConfigError::new(
                "sasl.oauth.algorithms",
                "",
                "must name at least one algorithm when issuers are configured",
            ));
        }
        if self.jwks_min_refresh > self.jwks_refresh {
            return Err(ConfigError::new(
                "sasl.oauth.jwks_min_refresh",
                humantime_serde::re::humantime::format_duration(self.jwks_min_refresh).to_string(),
                "must not exceed sasl.oauth.jwks_refresh",
            ));
        }
        if self.fetch_timeout.is_zero() {
            return Err(ConfigError::new(
                "sasl.oauth.fetch_timeout",
                "0s",
                "must be positive",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, iss) in self.issuers.iter().enumerate() {
            let key = |k: &str| format!("sasl.oauth.issuers[{i}].{k}");
            if !iss.issuer.starts_with("https://") {
                return Err(ConfigError::new(
                    key("issuer"),
                    &iss.issuer,
                    "must be an https:// URL, as the tokens' iss claim writes it",
                ));
            }
            if !seen.insert(iss.issuer.as_str()) {
                return Err(ConfigError::new(
                    key("issuer"),
                    &iss.issuer,
                    "is listed twice",
                ));
            }
            if let Some(u) = &iss.jwks_uri
                && !u.starts_with("https://")
            {
                return Err(ConfigError::new(
                    key("jwks_uri"),
                    u,
                    "must be an https:// URL (keys fetched in the clear could be anyone's)",
                ));
            }
            if iss.audience.iter().next().is_none() {
                return Err(ConfigError::new(
                    key("audience"),
                    "",
                    "must name the audience tokens for this relay carry (aud): without it a token issued to any other application would log in",
                ));
            }
            let claim = iss.user_claim();
            if claim.is_empty() || claim.contains(char::is_whitespace) {
                return Err(ConfigError::new(
                    key("user_claim"),
                    claim,
                    "must be a claim name",
                ));
            }
            if let Some(r) = &iss.realm
                && (r.is_empty() || r.contains(['@', ' ']))
            {
                return Err(ConfigError::new(key("realm"), r, "must be a realm name"));
            }
        }
        Ok(())
    }
}
