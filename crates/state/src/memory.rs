//! The in-process store: same semantics as the Redis one, for a single
//! all-in-one process. Expired entries are dropped lazily, values as they
//! fall due on each write and the small maps by a sweep on every hundredth
//! write, so memory stays bounded without a background task.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct MemoryState {
    inner: Arc<Mutex<Inner>>,
    /// Publish/subscribe within the process (channel, message).
    feed: tokio::sync::broadcast::Sender<(String, Vec<u8>)>,
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState {
            inner: Arc::default(),
            feed: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

#[derive(Default)]
struct Inner {
    values: HashMap<String, (Vec<u8>, Instant)>,
    /// When each value falls due, soonest first. A challenge-mechanism AUTH
    /// claims a key for two minutes, so `values` holds hundreds of
    /// thousands under load: scanning them all every hundredth write held
    /// the lock for milliseconds and showed in `serve`'s AUTH p99. Popping
    /// what is due costs each value O(log n) once. An entry written again
    /// leaves its old time here, passed over when it comes up.
    due: BinaryHeap<Reverse<(Instant, String)>>,
    windows: HashMap<String, VecDeque<Instant>>,
    lists: HashMap<String, (Vec<Vec<u8>>, Instant)>,
    /// Counters with an expiry (account limits).
    counters: HashMap<String, (u64, Instant)>,
    /// Hashes without expiry (suspensions, overrides): kept until deleted.
    hashes: HashMap<String, BTreeMap<String, Vec<u8>>>,
    writes: u64,
}

impl Inner {
    fn sweep(&mut self) {
        self.writes += 1;
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.due.peek()
            && *at <= now
        {
            let Some(Reverse((_, key))) = self.due.pop() else {
                break;
            };
            if self.values.get(&key).is_some_and(|(_, exp)| *exp <= now) {
                self.values.remove(&key);
            }
        }
        if self.writes.is_multiple_of(100) {
            self.lists.retain(|_, (_, exp)| *exp > now);
            self.counters.retain(|_, (_, exp)| *exp > now);
            self.windows.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(86400))
            });
        }
    }
}

impl MemoryState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // (every operation is a single insert/remove), so poison is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn publish(&self, channel: &str, message: &[u8]) {
        // No receiver is not an error: nobody is listening yet.
        let _ = self.feed.send((channel.to_owned(), message.to_vec()));
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(String, Vec<u8>)> {
        self.feed.subscribe()
    }

    pub fn put(&self, key: &str, value: &[u8], ttl: Duration) {
        let mut g = self.lock();
        g.sweep();
        let exp = Instant::now() + ttl;
        g.values.insert(key.to_owned(), (value.to_vec(), exp));
        g.due.push(Reverse((exp, key.to_owned())));
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let g = self.lock();
        g.values
            .get(key)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(v, _)| v.clone())
    }

    pub fn claim(&self, key: &str, ttl: Duration) -> bool {
        let mut g = self.lock();
        g.sweep();
        let now = Instant::now();
        if g.values.get(key).is_some_and(|(_, exp)| *exp > now) {
            return false;
        }
        g.values.insert(key.to_owned(), (Vec::new(), now + ttl));
        g.due.push(Reverse((now + ttl, key.to_owned())));
        true
    }

    pub fn window(&self, key: &str, window: Duration, add: bool) -> u64 {
        let mut g = self.lock();
        let now = Instant::now();
        if add {
            g.sweep();
        }
        let q = g.windows.entry(key.to_owned()).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) > window) {
            q.pop_front();
        }
        if add {
            q.push_back(now);
        }
        q.len() as u64
    }

    pub fn push(&self, key: &str, value: &[u8], ttl: Duration) {
        let mut g = self.lock();
        g.sweep();
        let now = Instant::now();
        let entry = g
            .lists
            .entry(key.to_owned())
            .or_insert_with(|| (Vec::new(), now));
        if entry.1 <= now {
            entry.0.clear();
        }
        entry.0.push(value.to_vec());
        entry.1 = now + ttl;
    }

    pub fn drain(&self, key: &str) -> Vec<Vec<u8>> {
        let mut g = self.lock();
        match g.lists.remove(key) {
            Some((v, exp)) if exp > Instant::now() => v,
            _ => Vec::new(),
        }
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let g = self.lock();
        let now = Instant::now();
        g.values
            .iter()
            .filter(|(k, (_, exp))| k.starts_with(prefix) && *exp > now)
            .map(|(k, _)| k.clone())
            .chain(g.hashes.keys().filter(|k| k.starts_with(prefix)).cloned())
            .collect()
    }

    fn counter(g: &Inner, key: &str, now: Instant) -> u64 {
        g.counters
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map_or(0, |(n, _)| *n)
    }

    fn add(g: &mut Inner, key: String, amount: u64, ttl: Duration, now: Instant) {
        let e = g.counters.entry(key).or_insert((0, now));
        if e.1 <= now {
            e.0 = 0;
        }
        e.0 += amount;
        e.1 = now + ttl;
    }

    /// The account count under the lock: what the Redis script does.
    pub fn count_account(
        &self,
        req: &crate::account::CountRequest<'_>,
        now_ms: u64,
        since: i64,
    ) -> crate::account::CountOutcome {
        use crate::account::{self as acct, CountOutcome, Decision, keys};
        let mut g = self.lock();
        g.sweep();
        if g.hashes
            .get(keys::SUSPENDED)
            .is_some_and(|h| h.contains_key(req.account))
        {
            return CountOutcome::Suspended;
        }
        let now = Instant::now();
        let overrides = g.hashes.get(&keys::overrides(req.account)).cloned();
        let mut counts = Vec::with_capacity(req.windows.len());
        let mut slots = Vec::with_capacity(req.windows.len());
        for w in req.windows {
            let (b, weight) = acct::bucket(now_ms, w.window);
            let limit = overrides
                .as_ref()
                .and_then(|o| o.get(&w.name))
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(w.limit);
            let get = |kind: &str, b: u64| {
                Self::counter(&g, &keys::counter(kind, req.account, &w.name, b), now)
            };
            counts.push(acct::WindowCounts {
                accepted: acct::estimate(get("acc", b), get("acc", b.saturating_sub(1)), weight),
                attempts: acct::estimate(get("att", b), get("att", b.saturating_sub(1)), weight),
                limit,
            });
            slots.push((b, w.window * 2));
        }
        let decision = acct::decide(&counts, req.amount, req.suspend_factor);
        for (w, (b, ttl)) in req.windows.iter().zip(&slots) {
            let key = keys::counter("att", req.account, &w.name, *b);
            Self::add(&mut g, key, req.amount, *ttl, now);
            if decision == Decision::Accept {
                let key = keys::counter("acc", req.account, &w.name, *b);
                Self::add(&mut g, key, req.amount, *ttl, now);
            }
        }
        match decision {
            Decision::Accept => CountOutcome::Accepted,
            Decision::Refuse(i) => CountOutcome::Refused {
                limit: req.windows[i].name.clone(),
                count: counts[i].accepted,
                max: counts[i].limit,
            },
            Decision::Suspend(i) => {
                let attempts = counts[i].attempts + req.amount;
                let threshold = counts[i].limit * req.suspend_factor;
                let record = acct::Suspension {
                    since,
                    relay: req.relay.to_owned(),
                    limit: req.windows[i].name.clone(),
                    attempts,
                    threshold,
                };
                g.hashes
                    .entry(keys::SUSPENDED.to_owned())
                    .or_default()
                    .insert(
                        req.account.to_owned(),
                        serde_json::to_vec(&record).unwrap_or_default(),
                    );
                CountOutcome::SuspendedNow {
                    limit: req.windows[i].name.clone(),
                    attempts,
                    threshold,
                }
            }
        }
    }

    pub fn counters(&self, keys: &[String]) -> Vec<u64> {
        let g = self.lock();
        let now = Instant::now();
        keys.iter().map(|k| Self::counter(&g, k, now)).collect()
    }

    pub fn hget_all(&self, key: &str) -> BTreeMap<String, Vec<u8>> {
        self.lock().hashes.get(key).cloned().unwrap_or_default()
    }

    pub fn hget(&self, key: &str, field: &str) -> Option<Vec<u8>> {
        self.lock()
            .hashes
            .get(key)
            .and_then(|h| h.get(field).cloned())
    }

    /// Set `set` and delete `del` in the hash under `key`, atomically.
    pub fn hupdate(&self, key: &str, set: &[(String, Vec<u8>)], del: &[String], clear: bool) {
        let mut g = self.lock();
        let h = g.hashes.entry(key.to_owned()).or_default();
        if clear {
            h.clear();
        }
        for f in del {
            h.remove(f);
        }
        for (f, v) in set {
            h.insert(f.clone(), v.clone());
        }
        if h.is_empty() {
            g.hashes.remove(key);
        }
    }

    /// Remove `field` from the hash `key` and delete the counters `keys`,
    /// atomically; whether the field was there.
    pub fn hdel_and_clear(&self, key: &str, field: &str, keys: &[String]) -> bool {
        let mut g = self.lock();
        let was = g
            .hashes
            .get_mut(key)
            .and_then(|h| h.remove(field))
            .is_some();
        for k in keys {
            g.counters.remove(k);
        }
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_leave_the_map_as_they_fall_due() {
        let m = MemoryState::default();
        for n in 0..1000 {
            assert!(m.claim(&format!("sasl:used:{n}"), Duration::from_millis(10)));
        }
        m.put("long", b"v", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(30));
        // One write later every claim that fell due is gone, not just on
        // the hundredth write.
        assert!(m.claim("sasl:used:new", Duration::from_secs(60)));
        assert_eq!(m.lock().values.len(), 2);
        assert_eq!(m.get("long").as_deref(), Some(&b"v"[..]));
        // A value written again keeps its new time past the old one's.
        m.put("again", b"1", Duration::from_millis(10));
        m.put("again", b"2", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(30));
        m.put("other", b"x", Duration::from_secs(60));
        assert_eq!(m.get("again").as_deref(), Some(&b"2"[..]));
    }
}
