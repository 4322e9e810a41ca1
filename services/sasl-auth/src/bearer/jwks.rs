//! One issuer's signing keys: fetched over HTTPS (its own CA if configured),
//! cached in memory, refreshed when their lifetime runs out or a token names
//! a key we lack.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use authrelay_config::{Issuer, OAuthConfig};
use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};

use super::Refusal;

/// A JWKS or discovery document larger than this is not one (Google's JWKS
/// is ~1.5 KiB, Azure AD's ~10 KiB).
const MAX_DOCUMENT: usize = 1 << 20;

#[derive(Clone, Copy)]
enum Why {
    Periodic,
    /// A token named a key we lack; `seen` is the last try it knew of.
    UnknownKey {
        seen: Option<Instant>,
    },
}

struct KeySet {
    keys: Vec<Jwk>,
    /// When the last fetch was tried (success or not): the rate limit.
    tried: Option<Instant>,
    /// When the keys should be fetched again.
    fresh_until: Instant,
}

pub struct IssuerKeys {
    issuer: Issuer,
    http: reqwest::Client,
    refresh: Duration,
    min_refresh: Duration,
    set: RwLock<KeySet>,
    /// One fetch at a time per issuer: a burst of tokens with a new `kid`
    /// makes one request, not one each.
    fetching: tokio::sync::Mutex<()>,
}

impl IssuerKeys {
    pub fn new(issuer: Issuer, cfg: &OAuthConfig) -> Result<Self, anyhow::Error> {
        let http = http_client(&issuer, cfg.fetch_timeout)?;
        Ok(IssuerKeys {
            issuer,
            http,
            refresh: cfg.jwks_refresh,
            min_refresh: cfg.jwks_min_refresh,
            set: RwLock::new(KeySet {
                keys: Vec::new(),
                tried: None,
                fresh_until: Instant::now(),
            }),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// Fetch now, then whenever the keys' lifetime runs out; after a failed
    /// fetch, again after `jwks_min_refresh`. Keys already held are kept
    /// through failures: an issuer's hiccup must not log everyone out.
    pub async fn keep_fresh(self: Arc<Self>) {
        loop {
            let _ = self.fetch_if_stale(Why::Periodic).await;
            let wait = {
                let set = self.set.read().unwrap_or_else(|e| e.into_inner());
                set.fresh_until
                    .saturating_duration_since(Instant::now())
                    .max(self.min_refresh)
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// The key that signed a token with this `kid` and `alg`. A `kid` we
    /// lack fetches the set again (once per `jwks_min_refresh`): the issuer
    /// may have rotated its keys since we fetched.
    pub async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Jwk, Refusal> {
        if let Some(k) = self.find(kid, alg) {
            return Ok(k);
        }
        let seen = self.tried();
        let fetched = self.fetch_if_stale(Why::UnknownKey { seen }).await;
        if let Some(k) = self.find(kid, alg) {
            return Ok(k);
        }
        if self.is_empty() {
            // No keys at all (the issuer has not answered yet, or its last
            // answer was refused): we cannot tell a good token from a bad
            // one, so fail closed, temporarily.
            return Err(Refusal::Unavailable(fetched.err().unwrap_or_else(|| {
                format!("no signing keys of {} held yet", self.issuer.issuer)
            })));
        }
        Err(Refusal::Invalid("signing key not in the issuer's key set"))
    }

    fn tried(&self) -> Option<Instant> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).tried
    }

    fn is_empty(&self) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .is_empty()
    }

    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<Jwk> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        let usable = |k: &&Jwk| {
            fits(k, alg) && kid.is_none_or(|kid| k.common.key_id.as_deref() == Some(kid))
        };
        let mut candidates = set.keys.iter().filter(usable);
        let first = candidates.next()?;
        // Without a kid, only an unambiguous key set will do.
        if kid.is_none() && candidates.next().is_some() {
            return None;
        }
        Some(first.clone())
    }

    /// Fetch, unless the last try is younger than `jwks_min_refresh`, or
    /// (periodic) the keys are still fresh, or (unknown key) another task
    /// fetched since this one looked: it waited on the lock for that fetch.
    async fn fetch_if_stale(&self, why: Why) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        let now = Instant::now();
        {
            let set = self.set.read().unwrap_or_else(|e| e.into_inner());
            let too_soon = set
                .tried
                .is_some_and(|t| now.duration_since(t) < self.min_refresh);
            let needless = match why {
                Why::Periodic => set.tried.is_some() && now < set.fresh_until,
                Why::UnknownKey { seen } => set.tried != seen,
            };
            if too_soon || needless {
                return Ok(());
            }
        }
        let result = self.fetch().await;
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        set.tried = Some(Instant::now());
        authrelay_telemetry::metrics::jwks_fetch(&self.issuer.issuer, result.is_ok());
        match result {
            Ok((keys, max_age)) => {
                let lifetime = max_age
                    .unwrap_or(self.refresh)
                    .clamp(self.min_refresh, self.refresh);
                tracing::info!(
                    issuer = %self.issuer.issuer,
                    keys = keys.len(),
                    "fetched the issuer's signing keys (JWKS)"
                );
                set.keys = keys;
                set.fresh_until = Instant::now() + lifetime;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    issuer = %self.issuer.issuer,
                    error = %e,
                    kept = set.keys.len(),
                    "JWKS fetch failed; keeping the keys held"
                );
                Err(format!("JWKS of {}: {e}", self.issuer.issuer))
            }
        }
    }

    /// The key set and its `Cache-Control: max-age`, from `jwks_uri` or
    /// from OpenID Connect discovery.
    async fn fetch(&self) -> Result<(Vec<Jwk>, Option<Duration>), String> {
        let uri = match &self.issuer.jwks_uri {
            Some(u) => u.clone(),
            None => self.discover().await?,
        };
        let (body, max_age) = self.get(&uri).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| "not JSON".to_owned())?;
        let keys = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| "no \"keys\" array".to_owned())?;
        // One key we cannot read (a new key type, an encryption key) must
        // not cost us the others.
        let keys: Vec<Jwk> = keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
            .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .collect();
        if keys.is_empty() {
            return Err("no usable signing key".into());
        }
        Ok((keys, max_age))
    }

    /// OpenID Connect Discovery 1.0 §4: the document's `issuer` must be the
    /// one we asked about, and its `jwks_uri` https.
    async fn discover(&self) -> Result<String, String> {
        let (body, _) = self.get(&self.issuer.discovery_url()).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| "discovery: not JSON".to_owned())?;
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.issuer.as_str()) {
            return Err("discovery: issuer differs from the configured one".into());
        }
        doc.get("jwks_uri")
            .and_then(|v| v.as_str())
            .filter(|u| u.starts_with("https://"))
            .map(str::to_owned)
            .ok_or_else(|| "discovery: no https jwks_uri".into())
    }

    async fn get(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), String> {
        let mut resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| describe(&e))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status().as_u16()));
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| describe(&e))? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("{url}: larger than {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// Whether a JWK can verify `alg`: its type matches, and its own `alg`, if
/// it names one, is this one.
fn fits(k: &Jwk, alg: Algorithm) -> bool {
    let family = match &k.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(_) => {
            matches!(alg, Algorithm::ES256 | Algorithm::ES384)
        }
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => false,
    };
    let named = k
        .common
        .key_algorithm
        .is_none_or(|ka| format!("{ka:?}") == format!("{alg:?}"));
    family && named
}

/// `max-age` of a `Cache-Control` value (RFC 9111 §5.2.2.1); `no-store` /
/// `no-cache` count as 0 (then `jwks_min_refresh` applies).
fn max_age(value: &str) -> Option<Duration> {
    value.split(',').map(str::trim).find_map(|d| {
        if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        let (k, v) = d.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| {
                v.trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs)
            })
            .flatten()
    })
}

/// reqwest's error with its causes (the TLS or connect error is in the
/// chain), without the URL's query (there is none in a JWKS URL anyway).
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// HTTPS only, no redirects (one could lead to plain HTTP or elsewhere),
/// the Web PKI roots or the issuer's own CA: `authrelay_https::client`.
fn http_client(issuer: &Issuer, timeout: Duration) -> Result<reqwest::Client, anyhow::Error> {
    authrelay_https::client(issuer.ca_file.as_deref(), timeout)
        .map_err(|e| anyhow::anyhow!("sasl.oauth {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age_is_read() {
        assert_eq!(
            max_age("public, max-age=3600"),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(max_age("max-age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }

    #[test]
    fn a_key_fits_only_its_own_algorithm_family() {
        let rsa: Jwk =
            serde_json::from_str(r#"{"kty":"RSA","kid":"r","n":"sXch","e":"AQAB","alg":"RS256"}"#)
                .unwrap();
        assert!(fits(&rsa, Algorithm::RS256));
        assert!(!fits(&rsa, Algorithm::PS256), "the key names RS256");
        assert!(!fits(&rsa, Algorithm::ES256));
        assert!(!fits(&rsa, Algorithm::HS256));
        let ed: Jwk = serde_json::from_str(
            r#"{"kty":"OKP","crv":"Ed25519","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#,
        )
        .unwrap();
        assert!(fits(&ed, Algorithm::EdDSA));
        assert!(!fits(&ed, Algorithm::RS256));
    }
}
