//! The in-process store: same semantics as the Redis one, for a single
//! all-in-one process. Expired entries are dropped lazily and by a sweep on
//! every hundredth write, so memory stays bounded without a background task.

use std::collections::{HashMap, VecDeque};
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
    windows: HashMap<String, VecDeque<Instant>>,
    lists: HashMap<String, (Vec<Vec<u8>>, Instant)>,
    writes: u64,
}

impl Inner {
    fn sweep(&mut self) {
        self.writes += 1;
        if self.writes.is_multiple_of(100) {
            let now = Instant::now();
            self.values.retain(|_, (_, exp)| *exp > now);
            self.lists.retain(|_, (_, exp)| *exp > now);
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
        g.values
            .insert(key.to_owned(), (value.to_vec(), Instant::now() + ttl));
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
            .collect()
    }
}
