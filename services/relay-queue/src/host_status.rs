//! Next hops that did not answer (sendmail's `confTO_HOSTSTATUS`): for
//! `relay_queue.host_status_ttl`, mail for them waits without connecting,
//! so one dead hub does not cost every queued message a connect timeout.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::now;

pub struct HostStatus {
    /// Zero: no cache, every attempt connects.
    ttl: Duration,
    /// (host, port) → (until, why).
    down: Mutex<HashMap<(String, u16), (i64, String)>>,
}

impl HostStatus {
    pub fn new(ttl: Duration) -> HostStatus {
        HostStatus {
            ttl,
            down: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, u16), (i64, String)>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the hop is taken for down, while that holds.
    pub fn down(&self, host: &str, port: u16) -> Option<String> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut down = self.lock();
        let key = (host.to_owned(), port);
        match down.get(&key) {
            Some((until, why)) if *until > now() => Some(why.clone()),
            Some(_) => {
                down.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn mark_down(&self, host: &str, port: u16, why: &str) {
        if !self.ttl.is_zero() {
            self.lock().insert(
                (host.to_owned(), port),
                (now() + self.ttl.as_secs() as i64, why.to_owned()),
            );
        }
    }

    pub fn mark_up(&self, host: &str, port: u16) {
        self.lock().remove(&(host.to_owned(), port));
    }

    /// An operator's flush is a request to try now, dead hosts included.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_marked_down_waits_until_it_answers_or_a_flush() {
        let hs = HostStatus::new(Duration::from_secs(300));
        hs.mark_down("hub.example", 587, "connect timed out");
        assert_eq!(
            hs.down("hub.example", 587).as_deref(),
            Some("connect timed out")
        );
        assert_eq!(hs.down("hub.example", 25), None, "per port");
        hs.mark_up("hub.example", 587);
        assert_eq!(hs.down("hub.example", 587), None);
        hs.mark_down("hub.example", 587, "refused");
        hs.clear();
        assert_eq!(hs.down("hub.example", 587), None);
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let hs = HostStatus::new(Duration::ZERO);
        hs.mark_down("hub.example", 587, "refused");
        assert_eq!(hs.down("hub.example", 587), None);
    }
}
