//! When to try what: the in-memory schedule of the spooled messages (rebuilt
//! from the spool's state files at start), the back-off between attempts,
//! when to give up (`max_queue_lifetime`), and the operator's flush/ETRN,
//! hold and release. It holds no mail and
//! opens no connection: the spool keeps the messages, an attempt delivers.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use authrelay_config::{DeliveryMode, RelayQueueConfig};
use tokio::sync::Notify;

use crate::now;
use crate::spool::DeliveryState;

pub struct Scheduler {
    /// `delivery_mode = "background"`; queue-only mail waits for a flush.
    background: bool,
    retry_initial: Duration,
    retry_max: Duration,
    /// Give up on what is still pending after this long in the queue.
    lifetime: Duration,
    /// id → next attempt (epoch seconds). Held messages, and in queue-only
    /// mode those not flushed, are not in it.
    next: Mutex<HashMap<String, i64>>,
    /// Being tried right now: never twice at once.
    inflight: Mutex<HashSet<String>>,
    /// Every spooled message → queued_at, for the queue gauges.
    queued: Mutex<HashMap<String, i64>>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scheduler {
    pub fn new(rq: &RelayQueueConfig) -> Scheduler {
        Scheduler {
            background: rq.delivery_mode == DeliveryMode::Background,
            retry_initial: rq.retry_initial,
            retry_max: rq.retry_max,
            lifetime: rq.max_queue_lifetime,
            next: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashSet::new()),
            queued: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    pub fn background(&self) -> bool {
        self.background
    }

    /// A message found in the spool at start (`queued_at` when its envelope
    /// reads): due when its state says, unless held or queue-only — there
    /// recovered mail waits for a flush, as new mail does.
    pub fn recover(&self, id: &str, queued_at: Option<i64>, state: &DeliveryState) {
        if let Some(at) = queued_at {
            lock(&self.queued).insert(id.to_owned(), at);
        }
        if !state.held && self.background {
            lock(&self.next).insert(id.to_owned(), state.next_attempt);
        }
    }

    /// Messages with a next attempt, and messages in the spool.
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.next).len(), lock(&self.queued).len())
    }

    /// A new message is on disk: try it now, unless queue-only.
    pub fn queued(&self, id: &str, queued_at: i64) {
        lock(&self.queued).insert(id.to_owned(), queued_at);
        if self.background {
            self.try_now(id);
        }
    }

    /// The message left the spool (delivered, bounced, deleted, unreadable).
    pub fn forget(&self, id: &str) {
        lock(&self.next).remove(id);
        lock(&self.queued).remove(id);
    }

    fn try_now(&self, id: &str) {
        lock(&self.next).insert(id.to_owned(), 0);
        self.wake.notify_one();
    }

    pub fn hold(&self, id: &str) {
        lock(&self.next).remove(id);
    }

    /// Released from hold: tried now, unless queue-only.
    pub fn release(&self, id: &str) {
        if self.background {
            self.try_now(id);
        }
    }

    /// An operator's flush (or ETRN): these messages now, whatever the mode.
    pub fn flush(&self, ids: impl IntoIterator<Item = String>) -> u32 {
        let mut next = lock(&self.next);
        let mut n = 0;
        for id in ids {
            next.insert(id, 0);
            n += 1;
        }
        drop(next);
        self.wake.notify_one();
        n
    }

    /// An attempt left recipients to try again at `next_attempt`. Queue-only:
    /// a flushed message that is deferred waits for the next flush, as it
    /// would for sendmail's next queue run.
    pub fn deferred(&self, id: &str, next_attempt: i64) {
        if self.background {
            lock(&self.next).insert(id.to_owned(), next_attempt);
        } else {
            lock(&self.next).remove(id);
        }
    }

    /// Try again at `at` whatever the mode: the attempt could not record
    /// its outcome (a DSN that could not be queued).
    pub fn retry_at(&self, id: &str, at: i64) {
        lock(&self.next).insert(id.to_owned(), at);
    }

    /// The wait before attempt `attempts + 1`: exponential from
    /// `retry_initial`, capped at `retry_max`, with ±25% jitter so that
    /// messages deferred together do not come back together.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let base =
            self.retry_initial.as_secs_f64() * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
        let capped = base.min(self.retry_max.as_secs_f64());
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        Duration::from_secs_f64((capped * jitter).max(1.0))
    }

    /// When to try again after `attempts` attempts (epoch seconds).
    pub fn next_attempt(&self, attempts: u32) -> i64 {
        now() + self.backoff(attempts).as_secs() as i64
    }

    /// Whether a message queued at `queued_at` has been tried long enough
    /// (`max_queue_lifetime`): its pending recipients fail now.
    pub fn gives_up(&self, queued_at: i64) -> bool {
        now() - queued_at > self.lifetime.as_secs() as i64
    }

    /// Messages due now that are not being tried already.
    pub fn due(&self) -> Vec<String> {
        let t = now();
        let inflight = lock(&self.inflight);
        lock(&self.next)
            .iter()
            .filter(|(id, at)| **at <= t && !inflight.contains(*id))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn start(&self, id: &str) {
        lock(&self.inflight).insert(id.to_owned());
    }

    pub fn finish(&self, id: &str) {
        lock(&self.inflight).remove(id);
    }

    /// Until woken (new mail, a flush, a release) or a second has passed.
    pub async fn wait(&self) {
        tokio::select! {
            _ = self.wake.notified() => {},
            _ = tokio::time::sleep(Duration::from_secs(1)) => {},
        }
    }

    /// The queue gauges, from memory (no disk reads).
    pub fn update_gauges(&self) {
        let queued = lock(&self.queued);
        let m = &authrelay_telemetry::metrics::METRICS;
        m.queue_messages.set(queued.len() as i64);
        let oldest = queued.values().min().map_or(0, |t| (now() - t).max(0));
        m.queue_oldest_age.set(oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(mode: DeliveryMode) -> Scheduler {
        let rq = RelayQueueConfig {
            delivery_mode: mode,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            max_queue_lifetime: Duration::from_secs(5 * 86400),
            ..RelayQueueConfig::default()
        };
        Scheduler::new(&rq)
    }

    #[test]
    fn backoff_doubles_from_retry_initial_within_the_jitter() {
        let s = scheduler(DeliveryMode::Background);
        for (attempts, base) in [(1u32, 60.0), (2, 120.0), (3, 240.0)] {
            for _ in 0..50 {
                let d = s.backoff(attempts).as_secs_f64();
                assert!((base * 0.75..=base * 1.25).contains(&d), "{attempts}: {d}");
            }
        }
    }

    #[test]
    fn backoff_is_capped_at_retry_max() {
        let s = scheduler(DeliveryMode::Background);
        for attempts in [7, 30, u32::MAX] {
            let d = s.backoff(attempts).as_secs_f64();
            assert!((2700.0..=4500.0).contains(&d), "{attempts}: {d}");
        }
    }

    #[test]
    fn mail_is_given_up_after_max_queue_lifetime_not_before() {
        let s = scheduler(DeliveryMode::Background);
        assert!(!s.gives_up(now() - 5 * 86400 + 60));
        assert!(s.gives_up(now() - 5 * 86400 - 1));
    }

    #[test]
    fn new_mail_is_due_at_once_in_background_mode() {
        let s = scheduler(DeliveryMode::Background);
        s.queued("MSG0000001", now());
        assert_eq!(s.due(), ["MSG0000001"]);
    }

    #[test]
    fn queue_only_mail_waits_for_a_flush() {
        let s = scheduler(DeliveryMode::QueueOnly);
        s.queued("MSG0000001", now());
        s.release("MSG0000001");
        assert!(s.due().is_empty());
        assert_eq!(s.flush(["MSG0000001".to_owned()]), 1);
        assert_eq!(s.due(), ["MSG0000001"]);
        // Deferred after the flush: back to waiting for the next one.
        s.deferred("MSG0000001", now() + 60);
        assert!(s.due().is_empty());
        assert_eq!(s.counts(), (0, 1));
    }

    #[test]
    fn a_message_in_flight_is_not_due_twice() {
        let s = scheduler(DeliveryMode::Background);
        s.queued("MSG0000001", now());
        s.start("MSG0000001");
        assert!(s.due().is_empty());
        s.finish("MSG0000001");
        assert_eq!(s.due(), ["MSG0000001"]);
    }

    #[test]
    fn a_deferred_message_is_due_at_its_next_attempt_not_before() {
        let s = scheduler(DeliveryMode::Background);
        s.queued("MSG0000001", now());
        s.deferred("MSG0000001", now() + 60);
        assert!(s.due().is_empty());
        s.retry_at("MSG0000001", now() - 1);
        assert_eq!(s.due(), ["MSG0000001"]);
    }

    #[test]
    fn a_held_message_is_not_due_and_recovers_held() {
        let s = scheduler(DeliveryMode::Background);
        s.queued("MSG0000001", now());
        s.hold("MSG0000001");
        assert!(s.due().is_empty());
        let held = DeliveryState {
            held: true,
            ..Default::default()
        };
        s.recover("MSG0000002", Some(now()), &held);
        s.recover("MSG0000003", None, &DeliveryState::default());
        assert_eq!(s.due(), ["MSG0000003"]);
        assert_eq!(s.counts(), (1, 2));
    }

    #[test]
    fn a_forgotten_message_leaves_schedule_and_gauges() {
        let s = scheduler(DeliveryMode::Background);
        s.queued("MSG0000001", now());
        s.forget("MSG0000001");
        assert!(s.due().is_empty());
        assert_eq!(s.counts(), (0, 0));
    }
}
