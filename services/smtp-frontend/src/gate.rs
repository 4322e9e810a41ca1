//! Admission under overload: sessions in progress finish first.
//!
//! When the CPUs are saturated, every session in progress competes for them
//! in every process of the auth path. Letting new sessions in as fast as
//! they arrive spreads that wait over every step of every session, AUTH's
//! round trips included, so a client half-way through an exchange waits
//! behind connections that have not been greeted yet. This gate holds a new
//! connection's `220` back instead, while both hold:
//!
//! - `sessions` sessions are in progress: greeted, and heard from within
//!   [`IDLE_AFTER`]. A session waiting longer on its client (an idle one, a
//!   user typing, a client across an ocean) holds no place, so idle or slow
//!   clients can never keep the gate shut;
//! - the frontend's runtime is running ready work at least `behind` late,
//!   measured by the connection itself (a yield, timed), so a frontend with
//!   many sessions but spare CPU never holds anyone.
//!
//! The wait moves to before the greeting, where the client has no exchange
//! half done — what Postfix's process limit and listen queue do for it. It
//! is bounded by `greeting_hold`: past it the connection is greeted anyway,
//! so overload delays new sessions but never refuses them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use authrelay_config::AdmissionConfig;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a session may wait on its client and still count as in
/// progress. Long enough to cover a saturated client's own turnaround (on
/// the loopback bench it is a few milliseconds), short against a network
/// round trip or a person.
pub const IDLE_AFTER: Duration = Duration::from_millis(5);

pub struct Gate {
    in_progress: AtomicUsize,
    /// Sessions in progress at which greetings may wait; 0: never.
    limit: usize,
    behind: Duration,
    hold: Duration,
    /// Moving average of the measured lateness, in microseconds.
    late_us: AtomicU64,
    /// Greetings waiting for a place.
    waiting: AtomicUsize,
    freed: Notify,
}

struct Waiting<'a>(&'a Gate);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A session's place among those in progress; dropping it frees the place.
pub struct InProgress(Arc<Gate>);

impl Gate {
    pub fn new(cfg: &AdmissionConfig, cpus: usize) -> Arc<Self> {
        let limit = if cfg.greeting_hold.is_zero() {
            0
        } else {
            cfg.sessions_for(cpus)
        };
        Arc::new(Gate {
            in_progress: AtomicUsize::new(0),
            limit,
            behind: cfg.behind,
            hold: cfg.greeting_hold,
            late_us: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Whether places are counted at all: with the gate off, a session
    /// need not arm a timer on every read to give its place up.
    pub fn gating(&self) -> bool {
        self.limit > 0
    }

    /// A greeted session heard from its client again: it never waits
    /// (finishing it is what the gate is for).
    pub fn enter(self: &Arc<Self>) -> InProgress {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(self.clone())
    }

    /// A new connection, before its greeting. Waiting is first come, first
    /// served: while anyone waits, a newcomer waits behind them, so a place
    /// freed goes to the longest waiting and no greeting is overtaken.
    pub async fn admit(self: &Arc<Self>) -> InProgress {
        if self.limit == 0 {
            return self.enter();
        }
        if self.waiting.load(Ordering::Relaxed) == 0 {
            if self.in_progress.load(Ordering::Relaxed) < self.limit {
                return self.enter();
            }
            if !self.runtime_behind().await {
                return self.enter();
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(self);
        let started = Instant::now();
        let deadline = started + self.hold;
        let place = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check: a place freed in between still
            // wakes this waiter.
            freed.as_mut().enable();
            if let Some(place) = self.try_enter() {
                break place;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break self.enter();
            }
        };
        authrelay_telemetry::metrics::METRICS
            .greeting_holds
            .observe(started.elapsed().as_secs_f64());
        place
    }

    fn try_enter(self: &Arc<Self>) -> Option<InProgress> {
        self.in_progress
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InProgress(self.clone()))
    }

    /// Times one trip through the runtime's queue of ready work: a yielding
    /// task runs again after everything ready before it (and after the OS
    /// gives the worker back its CPU). Averaged, so one slow trip decides
    /// nothing.
    async fn runtime_behind(&self) -> bool {
        let t = Instant::now();
        tokio::task::yield_now().await;
        let sample = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u64;
        let mut avg = 0;
        let _ = self
            .late_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                avg = (old * 3 + sample) / 4;
                Some(avg)
            });
        Duration::from_micros(avg) >= self.behind
    }

    #[cfg(test)]
    fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Relaxed)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let before = self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
        if before <= self.0.limit {
            self.0.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(sessions: usize, behind: Duration, hold: Duration) -> Arc<Gate> {
        Gate::new(
            &AdmissionConfig {
                sessions,
                behind,
                greeting_hold: hold,
            },
            2,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_greeting_waits_for_a_place_when_the_runtime_is_behind() {
        // behind = 0: every measured trip counts as behind.
        let g = gate(2, Duration::ZERO, Duration::from_secs(3600));
        let a = g.admit().await;
        let b = g.admit().await;
        assert_eq!(g.in_progress(), 2);
        let waiting = tokio::spawn({
            let g = g.clone();
            async move { g.admit().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished(), "admitted past the limit");
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a freed place admits the waiter")
            .unwrap();
        assert_eq!(g.in_progress(), 2);
        drop((b, c));
        assert_eq!(g.in_progress(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_greeting_never_waits_past_the_hold() {
        let g = gate(1, Duration::ZERO, Duration::from_millis(200));
        let _a = g.admit().await;
        let t = Instant::now();
        let _b = g.admit().await;
        assert_eq!(t.elapsed(), Duration::from_millis(200));
        assert_eq!(g.in_progress(), 2, "admitted past the limit at the hold");
    }

    #[tokio::test(start_paused = true)]
    async fn a_runtime_on_time_never_holds_a_greeting() {
        // An hour behind is never reached: the CPUs are not the bottleneck,
        // however many sessions are in progress.
        let g = gate(1, Duration::from_secs(3600), Duration::from_secs(3600));
        let places: Vec<_> = futures_places(&g, 10).await;
        assert_eq!(places.len(), 10);
        assert_eq!(g.in_progress(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_hold_turns_the_gate_off() {
        let g = gate(1, Duration::ZERO, Duration::ZERO);
        let places = futures_places(&g, 5).await;
        assert_eq!(places.len(), 5);
    }

    #[tokio::test]
    async fn sessions_entering_again_never_wait() {
        let g = gate(1, Duration::ZERO, Duration::from_secs(3600));
        let _a = g.admit().await;
        let _b = g.enter();
        assert_eq!(g.in_progress(), 2);
    }

    async fn futures_places(g: &Arc<Gate>, n: usize) -> Vec<InProgress> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(
                tokio::time::timeout(Duration::from_secs(1), g.admit())
                    .await
                    .expect("admitted at once"),
            );
        }
        v
    }
}
