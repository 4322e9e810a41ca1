//! OAUTHBEARER / XOAUTH2: JWT access tokens checked against the configured
//! issuers' published keys.
//!
//! A token is accepted when it is signed (an algorithm of
//! `sasl.oauth.algorithms`, never `none` or HMAC) by a key in its issuer's
//! JWKS, its `iss` is a configured issuer, its `aud` names our audience,
//! `exp`/`nbf` hold (with `sasl.oauth.leeway`), and it carries the issuer's
//! user claim. The key sets live in memory per issuer ([`jwks`]): fetched at
//! start, again when their cache lifetime runs out, and at once (rate
//! limited) when a token names a key we lack — an issuer that rotated keys.

mod jwks;
mod login;

use std::sync::Arc;

use authrelay_config::{Issuer, OAuthConfig};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

pub use jwks::IssuerKeys;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The token is bad: RFC 7628 error challenge, then 535. Static text: it
    /// is logged, and never carries the token or a claim.
    #[error("{0}")]
    Invalid(&'static str),
    /// We could not check it (the issuer's keys cannot be fetched): 454,
    /// the client may try again.
    #[error("{0}")]
    Unavailable(String),
}

/// A token that checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The user claim's value as the token has it.
    pub user: String,
    /// The issuer's `realm`, for a user claim without `@REALM`.
    pub realm: Option<String>,
    pub require_local_user: bool,
}

pub struct TokenVerifier {
    issuers: Vec<Arc<IssuerKeys>>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
}

impl TokenVerifier {
    /// One key set per issuer; nothing is fetched yet ([`Self::spawn_refresh`]).
    pub fn new(cfg: &OAuthConfig) -> Result<Self, anyhow::Error> {
        let issuers = cfg
            .issuers
            .iter()
            .map(|i| IssuerKeys::new(i.clone(), cfg).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let algorithms = cfg
            .algorithms
            .iter()
            .filter_map(|a| a.parse::<Algorithm>().ok())
            // Validation refuses these anyway; the filter makes it two locks.
            .filter(|a| !matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            .collect();
        Ok(TokenVerifier {
            issuers,
            algorithms,
            leeway: cfg.leeway.as_secs(),
        })
    }

    /// Fetch every issuer's keys now and keep them fresh, for the life of
    /// the process: the first login does not wait for a fetch.
    pub fn spawn_refresh(&self) {
        for issuer in &self.issuers {
            tokio::spawn(issuer.clone().keep_fresh());
        }
    }

    /// The issuer a refused client is pointed at (RFC 7628 §3.2.2): the
    /// token's own if it named a configured one, else the first.
    pub fn error_issuer(&self, token: &str) -> Option<&Issuer> {
        let iss = unverified_issuer(token);
        self.issuers
            .iter()
            .map(|i| i.issuer())
            .find(|i| iss.as_deref() == Some(i.issuer.as_str()))
            .or_else(|| self.issuers.first().map(|i| i.issuer()))
    }

    pub async fn verify(&self, token: &str) -> Result<Verified, Refusal> {
        // `alg: none` has no `Algorithm` and fails here, as does any name
        // jsonwebtoken does not know.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::Invalid("not a signed JWT (or an unknown algorithm)"))?;
        if !self.algorithms.contains(&header.alg) {
            return Err(Refusal::Invalid("signature algorithm not allowed"));
        }
        // Which issuer's keys to check against; the signature then proves
        // the claim (the issuer is validated again below, signed).
        let iss = unverified_issuer(token).ok_or(Refusal::Invalid("no iss claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer().issuer == iss)
            .ok_or(Refusal::Invalid("issuer not configured"))?;
        let jwk = issuer.key(header.kid.as_deref(), header.alg).await?;
        let key =
            DecodingKey::from_jwk(&jwk).map_err(|_| Refusal::Invalid("issuer key unusable"))?;
        let cfg = issuer.issuer();
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&cfg.issuer]);
        validation.set_audience(&cfg.audience.iter().collect::<Vec<_>>());
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| Refusal::Invalid(refusal_reason(e.kind())))?;
        let user = data
            .claims
            .get(cfg.user_claim())
            .and_then(|v| v.as_str())
            .filter(|u| !u.is_empty() && u.len() <= 255 && !u.chars().any(char::is_control))
            .ok_or(Refusal::Invalid("user claim missing or not a user name"))?;
        Ok(Verified {
            user: user.to_owned(),
            realm: cfg.realm.clone(),
            require_local_user: cfg.require_local_user,
        })
    }
}

fn refusal_reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm does not match the key",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        _ => "malformed token",
    }
}

/// The `iss` claim, read before the signature is checked: only to pick the
/// key set that then checks it.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_is_read_from_the_payload_without_trusting_it() {
        // {"alg":"RS256"}.{"iss":"https://a.example","sub":"x"}.sig
        let t = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJodHRwczovL2EuZXhhbXBsZSIsInN1YiI6IngifQ.c2ln";
        assert_eq!(unverified_issuer(t).as_deref(), Some("https://a.example"));
        assert_eq!(unverified_issuer("garbage"), None);
        assert_eq!(unverified_issuer("a.!!!.c"), None);
    }

    #[tokio::test]
    async fn alg_none_is_refused_before_any_key_is_looked_up() {
        let mut cfg = OAuthConfig::default();
        cfg.issuers.push(Issuer {
            issuer: "https://a.example".into(),
            jwks_uri: Some("https://a.example/keys".into()),
            audience: authrelay_config::WordList::from(["smtp"]),
            ..Issuer::default()
        });
        let v = TokenVerifier::new(&cfg).unwrap();
        // {"alg":"none","typ":"JWT"}.{"iss":"https://a.example","aud":"smtp","exp":9999999999,"email":"a@b"}.
        let t = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2EuZXhhbXBsZSIsImF1ZCI6InNtdHAiLCJleHAiOjk5OTk5OTk5OTksImVtYWlsIjoiYUBiIn0.";
        let Err(Refusal::Invalid(why)) = v.verify(t).await else {
            panic!("alg none accepted")
        };
        assert_eq!(why, "not a signed JWT (or an unknown algorithm)");
        // HS256 with the issuer's public key as the secret: refused by name.
        let t = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJodHRwczovL2EuZXhhbXBsZSJ9.c2ln";
        let Err(Refusal::Invalid(why)) = v.verify(t).await else {
            panic!("HS256 accepted")
        };
        assert_eq!(why, "signature algorithm not allowed");
    }
}
