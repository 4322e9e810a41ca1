//! The verified-credential cache for PLAIN and LOGIN.
//!
//! Argon2id costs tens of milliseconds by design; a mail client that
//! reconnects every minute with the same password should not pay it every
//! time. After a successful verification we remember a fingerprint — an
//! HMAC, under a random key that never leaves this process, over the login,
//! the password and the stored hash (`ServerExchange::plaintext_fingerprint`)
//! — for a short TTL. A later login with the same fingerprint skips Argon2.
//! A changed password changes the stored hash and so the fingerprint: the
//! old entry can never match again. Failures are never cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct VerifiedCache {
    key: [u8; 32],
    ttl: Duration,
    max_entries: usize,
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

impl VerifiedCache {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        VerifiedCache {
            key: rand::random(),
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hit(&self, fingerprint: &[u8; 32]) -> bool {
        self.lock()
            .get(fingerprint)
            .is_some_and(|expires| *expires > Instant::now())
    }

    pub fn insert(&self, fingerprint: [u8; 32]) {
        let mut entries = self.lock();
        if entries.len() >= self.max_entries {
            let now = Instant::now();
            entries.retain(|_, exp| *exp > now);
            if entries.len() >= self.max_entries {
                // Still full of live entries: start over rather than grow.
                entries.clear();
            }
        }
        entries.insert(fingerprint, Instant::now() + self.ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let c = VerifiedCache::new(Duration::from_millis(30), 2);
        c.insert([1; 32]);
        assert!(c.hit(&[1; 32]));
        assert!(!c.hit(&[2; 32]));
        c.insert([2; 32]);
        c.insert([3; 32]);
        assert!(c.lock().len() <= 2);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!c.hit(&[3; 32]));
    }
}
