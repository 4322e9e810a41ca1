//! The sealed exchange states this replica has taken a step from
//! (`sasl.exchange_claims = "replica"`, the default).
//!
//! A challenge's state is good for one answer (RFC 2831 §2.1's one
//! authentication per nonce; the same for CRAM-MD5 and SCRAM). Recording
//! that here instead of in Redis saves every challenge mechanism's AUTH its
//! only round trip to the store. The set needs to hold a token id only while
//! the token could still open: its expiry is sealed inside it, at most
//! `exchange_ttl` (plus the second it is rounded up by) after it was minted,
//! and so after its first use. Two generations, each as long as that, turned
//! over as time passes: an id stays at least one generation, and memory is
//! bounded by the rate of AUTHs times two generations (16 bytes an id).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Spent {
    generation: Duration,
    sets: Mutex<Generations>,
}

struct Generations {
    current: HashSet<u128>,
    previous: HashSet<u128>,
    /// When `current` began.
    since: Instant,
}

impl Spent {
    /// For tokens that live `exchange_ttl`.
    pub fn new(exchange_ttl: Duration) -> Self {
        Self::starting(exchange_ttl, Instant::now())
    }

    fn starting(exchange_ttl: Duration, now: Instant) -> Self {
        Spent {
            // Expiry is sealed in whole seconds, rounded up.
            generation: exchange_ttl + Duration::from_secs(1),
            sets: Mutex::new(Generations {
                current: HashSet::new(),
                previous: HashSet::new(),
                since: now,
            }),
        }
    }

    /// Record `id` as spent; `false` if it already was (a replayed step).
    /// An id that is not the 32 hex digits `sealed::new_token_id` makes is
    /// refused: it cannot have come from a state this service sealed.
    pub fn take(&self, id: &str) -> bool {
        self.take_at(id, Instant::now())
    }

    fn take_at(&self, id: &str, now: Instant) -> bool {
        let mut raw = [0u8; 16];
        if hex::decode_to_slice(id, &mut raw).is_err() {
            return false;
        }
        let id = u128::from_be_bytes(raw);
        let mut g = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let age = now.saturating_duration_since(g.since);
        if age >= self.generation {
            // Two generations gone: nothing in either can still open.
            g.previous = if age >= self.generation * 2 {
                HashSet::new()
            } else {
                std::mem::take(&mut g.current)
            };
            g.current.clear();
            g.since = now;
        }
        if g.previous.contains(&id) {
            return false;
        }
        g.current.insert(id)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.sets.lock().unwrap();
        g.current.len() + g.previous.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    const A: &str = "00112233445566778899aabbccddeeff";
    const B: &str = "ffeeddccbbaa99887766554433221100";

    #[test]
    fn a_state_is_taken_once() {
        let s = Spent::new(TTL);
        assert!(s.take(A));
        assert!(!s.take(A), "a second step from the same state");
        assert!(s.take(B), "another state is not affected");
    }

    #[test]
    fn a_spent_id_is_held_as_long_as_its_token_can_open() {
        let t0 = Instant::now();
        let s = Spent::starting(TTL, t0);
        // Taken just before the generation turns over ...
        let late = t0 + TTL;
        assert!(s.take_at(A, late));
        // ... it is still refused a whole token lifetime (and the rounding
        // second) later, across the turn-over.
        for later in [1, 30, 61] {
            let at = late + Duration::from_secs(later);
            assert!(!s.take_at(A, at), "replayed {later}s after its use");
        }
    }

    #[test]
    fn memory_is_two_generations_at_most() {
        let t0 = Instant::now();
        let s = Spent::starting(TTL, t0);
        assert!(s.take_at(A, t0));
        assert!(s.take_at(B, t0 + Duration::from_secs(61)));
        assert_eq!(s.len(), 2, "A in the previous generation, B current");
        // A generation on, B is still held; A's token expired long ago and
        // is dropped.
        assert!(!s.take_at(B, t0 + Duration::from_secs(122)));
        assert_eq!(s.len(), 1);
        // Long idle: both generations gone at once.
        let idle = t0 + Duration::from_secs(1000);
        assert!(s.take_at(A, idle));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn ids_not_minted_here_are_refused() {
        let s = Spent::new(TTL);
        for bad in ["", "xyz", "0011", &format!("{A}00")] {
            assert!(!s.take(bad), "{bad:?}");
        }
    }
}
