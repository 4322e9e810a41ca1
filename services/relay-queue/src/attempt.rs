//! One delivery attempt of one message: its pending recipients grouped by
//! next hop, one delivery per hop, every recipient's outcome logged
//! (`stat=Sent`, `Deferred`, `Failed`, `Expired`), the failures reported in
//! one DSN, and the delivery state saved. What comes next is the
//! scheduler's: the attempt says how it ended ([`Outcome`]).

use std::collections::BTreeMap;

use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::client::RcptOutcome;
use crate::client::reply::EnhancedStatus;
use crate::delivery::Parcel;
use crate::dsn::FailedRecipient;
use crate::error::Retry;
use crate::queue::Queue;
use crate::routing::{Destination, route};
use crate::spool::{DeliveryState, Envelope, Recipient};
use crate::{bounce, now};

/// How an attempt ended, for the scheduler.
pub enum Outcome {
    /// Nothing left to try: delivered or bounced (and removed), or unreadable.
    Gone,
    /// Held by an operator meanwhile.
    Held,
    /// Recipients left; the state on disk names the next attempt.
    Deferred { next_attempt: i64 },
    /// The DSN could not be queued, so nothing was recorded: again at `at`.
    RetryAt(i64),
}

/// A delivery's outcome for metrics (`authrelay_deliveries_total{outcome}`).
fn count_delivery(outcome: &str, n: usize) {
    let family = &authrelay_telemetry::metrics::METRICS.deliveries;
    for _ in 0..n {
        authrelay_telemetry::metrics::outcome(family, outcome);
    }
}

/// What this attempt did for the recipients it tried.
#[derive(Default)]
struct Tally {
    /// The deferred recipients' reasons, for `last_error`.
    errors: Vec<String>,
    failed: Vec<FailedRecipient>,
}

impl Tally {
    fn fail(&mut self, r: &Recipient, diagnostic: String, status: EnhancedStatus, relay: &str) {
        self.failed.push(FailedRecipient {
            address: r.address.clone(),
            orcpt: r.orcpt.clone(),
            diagnostic,
            remote_mta: Some(relay.to_owned()),
            status,
        });
    }
}

impl Queue {
    pub(crate) async fn attempt(&self, id: &str) -> Outcome {
        let (env, body) = match self.spool.read(id) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(queue_id = id, error = %e, "cannot read queued message");
                return Outcome::Gone;
            }
        };
        let state = self.spool.state(id);
        if state.held {
            return Outcome::Held;
        }
        // One attempt is one unit of work in the submission's trace: its
        // deliveries are children, and every log line it writes (stat=Sent,
        // Deferred, Failed, Expired, the DSN) carries that trace's ids.
        let span = tracing::info_span!(
            "attempt",
            otel.name = "relay-queue attempt",
            messaging.system = "smtp",
            messaging.operation.type = "process",
            messaging.message.id = %id,
            attempt = state.attempts + 1,
        );
        if let Some(cx) = authrelay_telemetry::context_from_traceparent(&env.traceparent) {
            let _ = span.set_parent(cx);
        }
        self.attempt_traced(id, env, body, state)
            .instrument(span)
            .await
    }

    async fn attempt_traced(
        &self,
        id: &str,
        env: Envelope,
        body: Vec<u8>,
        mut state: DeliveryState,
    ) -> Outcome {
        // One connection per next hop carrying all its recipients.
        let mut by_hop: BTreeMap<Destination, Vec<&Recipient>> = BTreeMap::new();
        for r in env
            .recipients
            .iter()
            .filter(|r| !state.delivered.contains(&r.address))
        {
            let domain = r.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
            by_hop
                .entry(route(&self.cfg.relay_queue, domain))
                .or_default()
                .push(r);
        }
        let mut tally = Tally::default();
        for (dest, rcpts) in by_hop {
            let parcel = Parcel {
                id,
                env: &env,
                rcpts: &rcpts,
                body: &body,
            };
            let (relay, result) = self.delivery.to_destination(&dest, &parcel).await;
            match result {
                Ok(outcomes) => {
                    for (r, o) in rcpts.iter().zip(outcomes) {
                        self.record(id, r, &relay, o, &mut tally, &mut state);
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    let verdict = e.verdict();
                    let (stat, outcome) = match verdict.retry {
                        Retry::Never => ("Failed", "failed"),
                        Retry::Later => ("Deferred", "deferred"),
                    };
                    count_delivery(outcome, rcpts.len());
                    for r in &rcpts {
                        tracing::info!(
                            "{id}: to=<{}>, relay={relay}, stat={stat} ({text})",
                            r.address
                        );
                        if verdict.retry == Retry::Never {
                            tally.fail(r, text.clone(), verdict.status, &relay);
                        }
                    }
                    if verdict.retry == Retry::Later {
                        tally.errors.push(text);
                    }
                }
            }
        }
        self.expire(id, &env, &state, &mut tally);
        if !tally.failed.is_empty() {
            // The bounce is on disk before the failures are recorded: a crash in
            // between retries the recipients (and may bounce twice) but never
            // loses the report.
            match bounce::queue(
                &self.spool,
                &self.cfg.hostname,
                id,
                &env,
                &body,
                &tally.failed,
                state.attempts,
            ) {
                Ok(Some((bounce_id, queued_at))) => self.scheduler.queued(&bounce_id, queued_at),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(queue_id = id, error = %e, "cannot queue DSN; will retry");
                    return Outcome::RetryAt(now() + 60);
                }
            }
            for f in &tally.failed {
                state.delivered.push(f.address.clone());
            }
        }
        let all_done = env
            .recipients
            .iter()
            .all(|r| state.delivered.contains(&r.address));
        if all_done {
            if let Err(e) = self.spool.remove(id) {
                tracing::error!(queue_id = id, error = %e, "cannot remove delivered message");
            }
            return Outcome::Gone;
        }
        state.attempts += 1;
        state.last_error = tally.errors.join("; ");
        state.next_attempt = self.scheduler.next_attempt(state.attempts);
        if let Err(e) = self.spool.save_state(id, &state) {
            tracing::error!(queue_id = id, error = %e, "cannot save delivery state");
        }
        Outcome::Deferred {
            next_attempt: state.next_attempt,
        }
    }

    /// One recipient's outcome at a hop that took the session.
    fn record(
        &self,
        id: &str,
        r: &Recipient,
        relay: &str,
        outcome: RcptOutcome,
        tally: &mut Tally,
        state: &mut DeliveryState,
    ) {
        match outcome {
            RcptOutcome::Delivered(reply) => {
                count_delivery("sent", 1);
                tracing::info!(
                    "{id}: to=<{}>, relay={relay}, stat=Sent ({reply})",
                    r.address
                );
                state.delivered.push(r.address.clone());
            }
            RcptOutcome::Refused(reply) => {
                let verdict = reply.verdict();
                match verdict.retry {
                    Retry::Later => {
                        count_delivery("deferred", 1);
                        tracing::info!(
                            "{id}: to=<{}>, relay={relay}, stat=Deferred ({reply})",
                            r.address
                        );
                        tally.errors.push(reply.to_string());
                    }
                    Retry::Never => {
                        count_delivery("failed", 1);
                        tracing::info!(
                            "{id}: to=<{}>, relay={relay}, stat=Failed ({reply})",
                            r.address
                        );
                        tally.fail(r, reply.to_string(), verdict.status, relay);
                    }
                }
            }
        }
    }

    /// Past `max_queue_lifetime`, every recipient still pending fails with
    /// RFC 3463 4.4.7 (delivery time expired); the last error says why.
    fn expire(&self, id: &str, env: &Envelope, state: &DeliveryState, tally: &mut Tally) {
        if !self.scheduler.gives_up(env.queued_at) {
            return;
        }
        let last = if tally.errors.is_empty() {
            state.last_error.clone()
        } else {
            tally.errors.join("; ")
        };
        for r in &env.recipients {
            let settled = state.delivered.contains(&r.address)
                || tally.failed.iter().any(|f| f.address == r.address);
            if !settled {
                tracing::info!("{id}: to=<{}>, stat=Expired ({last})", r.address);
                count_delivery("expired", 1);
                tally.failed.push(FailedRecipient {
                    address: r.address.clone(),
                    orcpt: r.orcpt.clone(),
                    diagnostic: format!("queue lifetime exceeded; last error: {last}"),
                    remote_mta: None,
                    status: EnhancedStatus::new(4, 4, 7),
                });
            }
        }
    }
}
