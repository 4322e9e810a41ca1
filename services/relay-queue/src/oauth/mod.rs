//! OAuth2 access tokens for XOAUTH2 / OAUTHBEARER to the next hop.
//!
//! Each `[relay_queue.token_sources.NAME]` is one [`TokenSource`]: it holds
//! the current access token for every delivery that needs it, fetches a new
//! one when none is held or the held one is near its end (the last fifth of
//! its lifetime, at most the last minute), and fetches at most one at a time
//! — concurrent deliveries wait for that one fetch instead of each asking
//! the endpoint (single flight). A hub that refuses a token makes the
//! delivery [`TokenSource::invalidate`] it; the next ask fetches anew.
//!
//! Tokens, client secrets and refresh tokens are [`Secret`]s: never printed,
//! wiped from memory when dropped, and no error or log line here carries one.

pub mod endpoint;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use authrelay_config::{Config, OAuthGrant, TokenSourceConfig};
use zeroize::Zeroizing;

pub use store::RefreshTokenStore;

/// A token or secret: `Debug` redacts it, it has no `Display`, and its
/// memory is zeroed on drop.
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }

    /// For the wire only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why no token could be had. Every variant is temporary for the mail: the
/// endpoint comes back, the operator fixes the secret or sets a refresh
/// token, and the queue retries.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not reached, timed out, or an answer that is not OAuth2 (5xx pages).
    #[error("token endpoint unavailable: {0}")]
    Endpoint(String),
    /// RFC 6749 §5.2 error (`invalid_client`, `invalid_grant`, …).
    #[error("token endpoint refused (HTTP {status}): {error}{}", if description.is_empty() { String::new() } else { format!(": {description}") })]
    Refused {
        status: u16,
        error: String,
        description: String,
    },
    #[error("token endpoint answer unusable: {0}")]
    Malformed(String),
    #[error("no refresh token stored: run `authrelay authinfo token set HOST`")]
    NoRefreshToken,
    #[error("{0}")]
    Config(String),
    #[error("refresh token store: {0}")]
    Store(#[from] store::StoreError),
}

/// A token handed to one delivery, with the generation it belongs to so a
/// refusal invalidates only that token, not a newer one another delivery
/// has fetched meanwhile.
#[derive(Clone, Debug)]
pub struct Lease {
    pub token: Secret,
    pub generation: u64,
}

struct Held {
    token: Secret,
    generation: u64,
    /// Past this, fetch a new one before use.
    renew_at: Instant,
    /// Past this, the token is not used at all.
    expires_at: Instant,
}

#[derive(Default)]
struct Slot {
    held: Option<Held>,
    generation: u64,
    /// A rotated refresh token that could not be written to the store: used
    /// for the next refresh, and written again then.
    unsaved_refresh: Option<Secret>,
}

/// One configured token source and its cached access token.
pub struct TokenSource {
    pub name: String,
    cfg: TokenSourceConfig,
    http: reqwest::Client,
    store: Arc<RefreshTokenStore>,
    slot: tokio::sync::Mutex<Slot>,
    fetches: std::sync::atomic::AtomicU64,
}

/// When to renew a token that lives `lifetime`: in its last fifth, but no
/// earlier than its last minute (an hour's token is used for 59 minutes, a
/// 10-second one for 8).
pub fn renew_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(60))
}

impl TokenSource {
    pub fn new(
        name: &str,
        cfg: &TokenSourceConfig,
        store: Arc<RefreshTokenStore>,
        timeout: Duration,
    ) -> Result<Self, anyhow::Error> {
        let http = endpoint::http_client(cfg, timeout)
            .map_err(|e| anyhow::anyhow!("relay_queue.token_sources.{name}: {e}"))?;
        Ok(TokenSource {
            name: name.to_owned(),
            cfg: cfg.clone(),
            http,
            store,
            slot: tokio::sync::Mutex::new(Slot::default()),
            fetches: Default::default(),
        })
    }

    pub fn grant(&self) -> OAuthGrant {
        self.cfg.grant
    }

    /// Tokens fetched from the endpoint since start.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A token good for now: the held one, or a new one fetched (once, for
    /// every caller waiting).
    pub async fn token(&self) -> Result<Lease, TokenError> {
        let mut slot = self.slot.lock().await;
        let now = Instant::now();
        if let Some(h) = &slot.held
            && now < h.renew_at
        {
            return Ok(Lease {
                token: h.token.clone(),
                generation: h.generation,
            });
        }
        match self.fetch(&mut slot).await {
            Ok(lease) => Ok(lease),
            // Renewal failed but the held token has not expired: use it,
            // and try the endpoint again next time.
            Err(e) => match &slot.held {
                Some(h) if now < h.expires_at => {
                    tracing::warn!(
                        "token_source={}, renewal failed ({e}); using the current token until it expires",
                        self.name
                    );
                    Ok(Lease {
                        token: h.token.clone(),
                        generation: h.generation,
                    })
                }
                _ => Err(e),
            },
        }
    }

    /// The hub refused the token of `generation`: drop it (unless a newer
    /// one replaced it already).
    pub async fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().await;
        if slot
            .held
            .as_ref()
            .is_some_and(|h| h.generation == generation)
        {
            slot.held = None;
        }
    }

    async fn fetch(&self, slot: &mut Slot) -> Result<Lease, TokenError> {
        let refresh = match self.cfg.grant {
            OAuthGrant::ClientCredentials => None,
            OAuthGrant::RefreshToken => match slot.unsaved_refresh.clone() {
                Some(rt) => Some(rt),
                None => Some(
                    self.store
                        .load(&self.name)?
                        .ok_or(TokenError::NoRefreshToken)?,
                ),
            },
        };
        let started = Instant::now();
        let issued = endpoint::request(&self.http, &self.cfg, refresh.as_ref()).await?;
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(rotated) = issued.refresh_token
            && self.cfg.grant == OAuthGrant::RefreshToken
        {
            // RFC 6749 §6 / OAuth 2.1: the old refresh token may be revoked
            // now, so the new one is on disk before anything else.
            match self.store.save(&self.name, &rotated) {
                Ok(()) => {
                    slot.unsaved_refresh = None;
                    tracing::info!("token_source={}, rotated refresh token stored", self.name);
                }
                Err(e) => {
                    tracing::error!(
                        "token_source={}, cannot store the rotated refresh token ({e}); keeping it in memory",
                        self.name
                    );
                    slot.unsaved_refresh = Some(rotated);
                }
            }
        }
        slot.generation += 1;
        let lifetime = issued.lifetime;
        let held = Held {
            token: issued.access_token,
            generation: slot.generation,
            renew_at: started + lifetime - renew_margin(lifetime),
            expires_at: started + lifetime,
        };
        tracing::info!(
            "token_source={}, access token fetched, expires_in={}s",
            self.name,
            lifetime.as_secs()
        );
        let lease = Lease {
            token: held.token.clone(),
            generation: held.generation,
        };
        slot.held = Some(held);
        Ok(lease)
    }
}

/// Every configured token source, by name.
#[derive(Clone, Default)]
pub struct TokenSources {
    sources: BTreeMap<String, Arc<TokenSource>>,
    store: Option<Arc<RefreshTokenStore>>,
}

impl TokenSources {
    pub fn new(cfg: &Config) -> Result<Self, anyhow::Error> {
        let store = Arc::new(RefreshTokenStore::new(cfg));
        let mut sources = BTreeMap::new();
        for (name, sc) in &cfg.relay_queue.token_sources {
            let source =
                TokenSource::new(name, sc, store.clone(), cfg.relay_queue.connect_timeout)?;
            sources.insert(name.clone(), Arc::new(source));
        }
        Ok(TokenSources {
            sources,
            store: Some(store),
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<TokenSource>> {
        self.sources.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<TokenSource>> {
        self.sources.values()
    }

    /// Refresh-token sources with no token stored yet: said at start, so
    /// the operator learns it before the first message waits.
    pub fn missing_refresh_tokens(&self) -> Vec<String> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        self.sources
            .values()
            .filter(|s| s.grant() == OAuthGrant::RefreshToken && !store.exists(&s.name))
            .map(|s| s.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_in_their_last_fifth_at_most_a_minute_early() {
        assert_eq!(
            renew_margin(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            renew_margin(Duration::from_secs(10)),
            Duration::from_secs(2)
        );
        assert_eq!(renew_margin(Duration::from_secs(0)), Duration::ZERO);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("tok-123".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        let l = Lease {
            token: s,
            generation: 1,
        };
        assert!(!format!("{l:?}").contains("tok-123"));
    }
}
