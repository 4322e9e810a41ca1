//! The secret cache: Dovecot's auth cache for stored secrets.
//!
//! Every challenge-response login used to cost a credential-store round
//! trip (two for SCRAM, whose final step needs the keys again). Secrets are
//! kept here for `sasl.secret_cache_ttl`, unknown users for
//! `sasl.secret_cache_negative_ttl` (so an unknown user costs what a known
//! one does: same path, same timing), at most `sasl.secret_cache_size`
//! users. What keeps it correct:
//!
//! - credential-store publishes every change (passwd, delete, mechanism
//!   change, import) and every replica drops that user at once
//!   ([`SecretCache::invalidate`], fed by the subscription in `lib.rs`);
//! - while that feed is down the cache is bypassed and emptied
//!   ([`SecretCache::set_live`]): a change could be missed;
//! - a lookup that began before an invalidation does not insert what it
//!   read (it may be the old secret): the epoch check;
//! - the caller looks a user up again before answering 535 against a
//!   cached secret, so a missed change never locks a user out.
//!
//! Secrets are zeroised when the cache lets go of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authrelay_sasl::{SecretFamily, StoredSecret};
use zeroize::Zeroize;

/// A stored secret that wipes itself when the last holder drops it.
pub struct CachedSecret(StoredSecret);

impl std::ops::Deref for CachedSecret {
    type Target = StoredSecret;
    fn deref(&self) -> &StoredSecret {
        &self.0
    }
}

impl Drop for CachedSecret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrite every byte of key material (zeroize's writes are not
/// optimised away, unlike a plain assignment before a free).
fn wipe(secret: &mut StoredSecret) {
    {
        match secret {
            StoredSecret::Password { phc } => phc.zeroize(),
            StoredSecret::CramMd5 { inner, outer } => {
                inner.zeroize();
                outer.zeroize();
            }
            StoredSecret::DigestMd5 {
                ha1,
                ha1_qualified,
                ha1_offered,
            } => {
                ha1.zeroize();
                if let Some(q) = ha1_qualified {
                    q.zeroize();
                }
                for (_, h) in ha1_offered.iter_mut() {
                    h.zeroize();
                }
            }
            StoredSecret::ScramSha1 {
                salt,
                stored_key,
                server_key,
                ..
            } => {
                salt.zeroize();
                stored_key.zeroize();
                server_key.zeroize();
            }
            StoredSecret::ScramSha256 {
                salt,
                stored_key,
                server_key,
                ..
            } => {
                salt.zeroize();
                stored_key.zeroize();
                server_key.zeroize();
            }
        }
    }
}

impl CachedSecret {
    pub fn new(secret: StoredSecret) -> Arc<Self> {
        Arc::new(CachedSecret(secret))
    }
}

/// A lookup's answer: the secret, or `None` for "no such user / family".
pub type Lookup = Option<Arc<CachedSecret>>;

struct Entry {
    secret: Lookup,
    expires: Instant,
}

type UserKey = (String, String);

pub struct SecretCache {
    users: Mutex<HashMap<UserKey, HashMap<SecretFamily, Entry>>>,
    max_users: usize,
    ttl: Duration,
    negative_ttl: Duration,
    epoch: AtomicU64,
    live: AtomicBool,
}

impl SecretCache {
    /// `live` starts false where invalidations arrive over a subscription
    /// (nothing is cached until it is up) and true where they are delivered
    /// in-process.
    pub fn new(max_users: usize, ttl: Duration, negative_ttl: Duration, live: bool) -> Self {
        SecretCache {
            users: Mutex::new(HashMap::new()),
            max_users,
            ttl,
            negative_ttl,
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(live),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<UserKey, HashMap<SecretFamily, Entry>>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(answer)` on a hit (the answer may be "unknown user"), `None`
    /// on a miss. Counted as metrics.
    pub fn get(&self, name: &str, realm: &str, family: SecretFamily) -> Option<Lookup> {
        if !self.live.load(Ordering::Acquire) || self.max_users == 0 {
            return None;
        }
        let now = Instant::now();
        let users = self.lock();
        let hit = users
            .get(&(realm.to_owned(), name.to_owned()))
            .and_then(|f| f.get(&family))
            .filter(|e| e.expires > now)
            .map(|e| e.secret.clone());
        drop(users);
        authrelay_telemetry::metrics::auth_cache(match &hit {
            Some(Some(_)) => "hit",
            Some(None) => "negative_hit",
            None => "miss",
        });
        hit
    }

    /// Read before a credential-store lookup; hand it to [`Self::insert`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Remember what a lookup that began at `epoch` found, unless a change
    /// was announced since (then it may be stale, and is only used once).
    pub fn insert(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
        secret: Lookup,
        epoch: u64,
    ) {
        if self.max_users == 0 || !self.live.load(Ordering::Acquire) {
            return;
        }
        let ttl = if secret.is_some() {
            self.ttl
        } else {
            self.negative_ttl
        };
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut users = self.lock();
        // Checked under the lock: invalidate() bumps the epoch under it too.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        let key = (realm.to_owned(), name.to_owned());
        if !users.contains_key(&key) && users.len() >= self.max_users {
            users.retain(|_, fams| {
                fams.retain(|_, e| e.expires > now);
                !fams.is_empty()
            });
            if users.len() >= self.max_users {
                // Still full of live entries: drop one (HashMap order is
                // as good as random here) rather than grow.
                if let Some(k) = users.keys().next().cloned() {
                    users.remove(&k);
                }
            }
        }
        users.entry(key).or_default().insert(
            family,
            Entry {
                secret,
                expires: now + ttl,
            },
        );
    }

    /// A user changed: forget every family of theirs.
    pub fn invalidate(&self, name: &str, realm: &str) {
        let mut users = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        users.remove(&(realm.to_owned(), name.to_owned()));
    }

    pub fn clear(&self) {
        let mut users = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        users.clear();
    }

    /// The invalidation feed went up (true) or down (false). Either way
    /// what is cached may have missed a change: start empty.
    pub fn set_live(&self, live: bool) {
        self.clear();
        self.live.store(live, Ordering::Release);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(b: u8) -> Lookup {
        Some(CachedSecret::new(StoredSecret::DigestMd5 {
            ha1: [b; 16],
            ha1_qualified: None,
            ha1_offered: Vec::new(),
        }))
    }

    fn cache() -> SecretCache {
        SecretCache::new(
            3,
            Duration::from_secs(3600),
            Duration::from_millis(40),
            true,
        )
    }

    const D: SecretFamily = SecretFamily::DigestMd5;

    #[test]
    fn a_cached_secret_is_served_until_its_user_is_invalidated() {
        let c = cache();
        assert!(c.get("u", "r", D).is_none());
        c.insert("u", "r", D, secret(1), c.epoch());
        assert!(matches!(c.get("u", "r", D), Some(Some(_))));
        c.invalidate("u", "r");
        assert!(c.get("u", "r", D).is_none());
    }

    #[test]
    fn unknown_users_are_cached_for_the_negative_ttl() {
        let c = cache();
        c.insert("ghost", "r", D, None, c.epoch());
        assert!(matches!(c.get("ghost", "r", D), Some(None)));
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get("ghost", "r", D).is_none());
    }

    #[test]
    fn a_lookup_that_raced_an_invalidation_is_not_cached() {
        let c = cache();
        let epoch = c.epoch();
        c.invalidate("u", "r"); // the change lands while credential-store answers
        c.insert("u", "r", D, secret(1), epoch);
        assert!(c.get("u", "r", D).is_none());
    }

    #[test]
    fn the_cache_is_bounded_and_off_while_the_feed_is_down() {
        let c = cache();
        for i in 0..10 {
            c.insert(&format!("u{i}"), "r", D, secret(i), c.epoch());
        }
        assert!(c.len() <= 3);
        c.set_live(false);
        assert_eq!(c.len(), 0);
        c.insert("u", "r", D, secret(1), c.epoch());
        assert!(c.get("u", "r", D).is_none());
    }

    #[test]
    fn wiping_clears_every_kind_of_secret() {
        let mut all = [
            StoredSecret::Password {
                phc: "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA".into(),
            },
            StoredSecret::CramMd5 {
                inner: [7; 4],
                outer: [9; 4],
            },
            StoredSecret::DigestMd5 {
                ha1: [3; 16],
                ha1_qualified: Some([4; 16]),
                ha1_offered: vec![("host".into(), [5; 16])],
            },
            StoredSecret::ScramSha256 {
                salt: vec![1; 16],
                iterations: 4096,
                stored_key: [5; 32],
                server_key: [6; 32],
            },
        ];
        for s in &mut all {
            wipe(s);
        }
        let [p, c, d, sc] = &all;
        assert!(matches!(p, StoredSecret::Password { phc } if phc.is_empty()));
        assert!(
            matches!(c, StoredSecret::CramMd5 { inner, outer } if inner == &[0; 4] && outer == &[0; 4])
        );
        assert!(
            matches!(d, StoredSecret::DigestMd5 { ha1, ha1_qualified: Some(q), ha1_offered } if ha1 == &[0; 16] && q == &[0; 16] && ha1_offered[0].1 == [0; 16])
        );
        assert!(
            matches!(sc, StoredSecret::ScramSha256 { salt, stored_key, server_key, .. }
            if salt.is_empty() && stored_key == &[0; 32] && server_key == &[0; 32])
        );
    }
}
