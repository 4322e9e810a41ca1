//! Stolen-account limits: what an authenticated account may send, summed
//! over every frontend in the shared store (`[limits.per_user]`, with
//! per-account overrides from `authrelay user limit`).
//!
//! - MAIL FROM counts one message, RCPT TO one recipient, each in one
//!   atomic round trip (see `authrelay_state::account`). Past a soft limit
//!   the command gets a 4xx and only the attempt is counted.
//! - Past the hard threshold (`suspend_factor` × a limit, on attempts) the
//!   account is suspended in the store, the session is closed with 421,
//!   every frontend is told (pub/sub) and closes that account's sessions,
//!   and AUTH for it is refused `525 5.7.13` everywhere until
//!   `authrelay user unlock`.
//!
//! Replies, and why these codes:
//! - MAIL: `450 4.7.1` — 450 is RFC 5321's "action not taken, try again
//!   later" for MAIL; X.7.1 (RFC 3463, "delivery not authorized") is the
//!   policy refusal, what Postfix's `smtpd_client_message_rate_limit`
//!   answers, and clients queue and retry.
//! - RCPT: `452 4.7.1` — 452 on RCPT is what RFC 5321 §4.5.3.1.10 tells
//!   clients to treat as "deliver to the recipients accepted so far, retry
//!   the rest later"; X.7.1 again, not X.5.3: X.5.3 ("too many recipients")
//!   is a per-message protocol limit that asks the client to split the
//!   message and resend at once, which a rate limit would refuse again.
//! - Closing on suspension: `421 4.7.1` (421 is the only reply that closes;
//!   X.7.1 because what the account may send is refused by policy).
//! - AUTH of a suspended account: `525 5.7.13` — RFC 5248's "user account
//!   disabled", which "occurs after a successful authentication to a
//!   disabled account" and tells the client, unlike 535, that retyping
//!   the password will not help; given only to a client that proved the
//!   password, so it tells a guesser nothing.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use authrelay_config::PerUserLimits;
use authrelay_state::SharedState;
use authrelay_state::account::{self, CountOutcome, WindowLimit};

use crate::registry::Registry;
use authrelay_smtp::Reply;

mod admin;
mod saved;
pub use admin::AccountLimitsService;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);
/// How often every suspension is read again from the store (besides on
/// every suspension and unlock announced): the local copy AUTH reads and
/// the cluster-wide gauge never lag longer, even if an announcement is lost.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

fn set_gauge(n: usize) {
    authrelay_telemetry::metrics::METRICS
        .accounts_suspended
        .set(n as i64);
}

/// What is counted and what a session does with the count: the SMTP
/// session's vocabulary (it asks with `Action::Count`).
pub use authrelay_smtp::{Counted, Verdict};

/// The reply for a count's outcome: the sans-IO part, tested on its own.
pub fn verdict(counted: Counted, outcome: &CountOutcome, host: &str) -> Verdict {
    match outcome {
        CountOutcome::Accepted => Verdict::Pass,
        CountOutcome::Refused { limit, .. } => Verdict::Refuse(match counted {
            Counted::Message => Reply::new(
                450,
                "4.7.1",
                format!("Too many messages from this account ({limit}), try again later"),
            ),
            Counted::Recipient => Reply::new(
                452,
                "4.7.1",
                format!("Too many recipients from this account ({limit}), try again later"),
            ),
        }),
        CountOutcome::SuspendedNow { .. } | CountOutcome::Suspended => {
            Verdict::Close(suspended_close(host))
        }
    }
}

/// Sent to a session of an account that is (or just got) suspended.
pub fn suspended_close(host: &str) -> Reply {
    Reply::new(
        421,
        "4.7.1",
        format!("{host} Account suspended for sending too much mail, closing connection"),
    )
}

/// AUTH answer for a suspended account (after its password was proved).
pub fn suspended_auth() -> Reply {
    Reply::new(
        525,
        "5.7.13",
        "Account suspended for sending too much mail; contact your postmaster",
    )
}

/// The store did not answer: fail closed, as AUTH does (DESIGN: a control
/// that cannot be checked does not let mail through).
fn unavailable() -> Reply {
    Reply::new(451, "4.3.0", "Temporary failure, try again later")
}

/// The limits of one frontend: configuration, store, and the sessions it
/// closes when an account is suspended.
pub struct AccountLimits {
    cfg: PerUserLimits,
    state: SharedState,
    registry: Arc<Registry>,
    host: String,
    /// The suspended accounts, as the feed and the store last said: AUTH
    /// reads it instead of asking Redis (no round trip on the auth path).
    /// Trusted only while `fresh`: subscribed, and the last full read
    /// succeeded; otherwise AUTH asks the store. A suspension this frontend
    /// has not heard of yet still stops the session at its first MAIL,
    /// which the store decides atomically.
    suspended: std::sync::RwLock<std::collections::HashSet<String>>,
    fresh: std::sync::atomic::AtomicBool,
    /// `authrelay serve` without Redis: the file overrides and suspensions
    /// are saved to, so they outlive the process as they outlive a frontend
    /// in a deployment (where Redis keeps them).
    saved_at: Option<std::path::PathBuf>,
    saving: tokio::sync::Mutex<()>,
}

/// An event on `lim:events`.
fn event(what: &str, account: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(what.len() + 1 + account.len());
    m.extend_from_slice(what.as_bytes());
    m.push(0);
    m.extend_from_slice(account.as_bytes());
    m
}

impl AccountLimits {
    pub fn new(
        cfg: PerUserLimits,
        state: SharedState,
        registry: Arc<Registry>,
        host: String,
        saved_at: Option<std::path::PathBuf>,
    ) -> Arc<Self> {
        Arc::new(AccountLimits {
            cfg,
            state,
            registry,
            host,
            suspended: Default::default(),
            fresh: Default::default(),
            saved_at,
            saving: Default::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    fn window(&self, name: &str) -> WindowLimit {
        WindowLimit {
            name: name.to_owned(),
            window: if name.ends_with("_per_day") {
                DAY
            } else {
                HOUR
            },
            limit: self.cfg.get(name).unwrap_or(0),
        }
    }

    fn windows(&self, counted: Counted) -> Vec<WindowLimit> {
        let prefix = match counted {
            Counted::Message => "messages_",
            Counted::Recipient => "recipients_",
        };
        PerUserLimits::NAMES
            .iter()
            .filter(|n| n.starts_with(prefix))
            .map(|n| self.window(n))
            .collect()
    }

    fn all_windows(&self) -> Vec<WindowLimit> {
        PerUserLimits::NAMES
            .iter()
            .map(|n| self.window(n))
            .collect()
    }

    /// Count one message or recipient of `account`, sent from `ip`.
    pub async fn count(&self, counted: Counted, account: &str, ip: IpAddr) -> Verdict {
        if !self.cfg.enabled {
            return Verdict::Pass;
        }
        let windows = self.windows(counted);
        let relay = format!("[{ip}] {}", self.registry.instance);
        let req = account::CountRequest {
            account,
            windows: &windows,
            amount: 1,
            suspend_factor: self.cfg.suspend_factor,
            relay: &relay,
        };
        let outcome = match self.state.count_account(&req).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(authid = %account, error = %e, "account limits unavailable: command refused");
                return Verdict::Refuse(unavailable());
            }
        };
        match &outcome {
            CountOutcome::Accepted | CountOutcome::Suspended => {}
            CountOutcome::Refused { limit, count, max } => {
                authrelay_telemetry::metrics::limit_refusal(limit);
                tracing::info!(
                    "limit exceeded: authid={account}, relay=[{ip}], limit={limit}, used={count}/{max}"
                );
            }
            CountOutcome::SuspendedNow {
                limit,
                attempts,
                threshold,
            } => {
                authrelay_telemetry::metrics::account_suspended();
                tracing::warn!(
                    "account suspended: authid={account}, relay=[{ip}], limit={limit}, attempts={attempts}, threshold={threshold}"
                );
                self.remember(account, true);
                self.announce("suspend", account).await;
                self.save().await;
            }
        }
        verdict(counted, &outcome, &self.host)
    }

    /// Whether an account that just proved its password may log in.
    pub async fn check_login(&self, account: &str) -> Result<(), (Reply, &'static str)> {
        if !self.cfg.enabled {
            return Ok(());
        }
        if self.fresh.load(Ordering::Acquire) {
            let known = self
                .suspended
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(account);
            return if known {
                Err((suspended_auth(), "account suspended"))
            } else {
                Ok(())
            };
        }
        match self.state.suspension(account).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err((suspended_auth(), "account suspended")),
            Err(e) => {
                tracing::warn!(error = %e, "account limits unavailable at AUTH");
                Err((Reply::auth_temporary(), "account limits unavailable"))
            }
        }
    }

    /// Tell every frontend (this one too) about a suspension or an unlock.
    async fn announce(&self, what: &str, account: &str) {
        if let Err(e) = self
            .state
            .publish(account::keys::EVENTS, &event(what, account))
            .await
        {
            tracing::error!(authid = %account, error = %e, "account {what} not announced to the other frontends");
        }
    }

    /// Close this frontend's sessions of accounts suspended anywhere, for
    /// as long as the process runs. Resubscribes when the feed is lost, and
    /// then closes the sessions of every account suspended meanwhile.
    pub async fn run(self: Arc<Self>) {
        let mut delay = Duration::from_millis(100);
        loop {
            let mut sub = match self.state.subscribe(account::keys::EVENTS).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot follow account suspensions yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            delay = Duration::from_millis(100);
            // Missed while not subscribed: catch up from the store.
            if self.refresh().await {
                let all: Vec<String> = self
                    .suspended
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                for account in all {
                    self.close_sessions(&account);
                }
            }
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    msg = sub.next() => {
                        let Some(msg) = msg else { break };
                        if let Some(account) = msg.strip_prefix(b"suspend\0") {
                            let account = String::from_utf8_lossy(account);
                            self.remember(&account, true);
                            self.close_sessions(&account);
                        } else if let Some(account) = msg.strip_prefix(b"unlock\0") {
                            self.remember(&String::from_utf8_lossy(account), false);
                        }
                        self.refresh().await;
                    }
                    _ = tick.tick() => { self.refresh().await; }
                }
            }
            self.fresh.store(false, Ordering::Release);
            tracing::debug!("account suspension feed lost; subscribing again");
        }
    }

    /// Read every suspension from the store; whether that worked (else
    /// AUTH asks the store itself until a read works again).
    async fn refresh(&self) -> bool {
        match self.state.suspensions().await {
            Ok(all) => {
                set_gauge(all.len());
                *self.suspended.write().unwrap_or_else(|p| p.into_inner()) =
                    all.into_iter().map(|(a, _)| a).collect();
                self.fresh.store(true, Ordering::Release);
                true
            }
            Err(_) => {
                self.fresh.store(false, Ordering::Release);
                false
            }
        }
    }

    fn remember(&self, account: &str, suspended: bool) {
        let mut set = self.suspended.write().unwrap_or_else(|p| p.into_inner());
        if suspended {
            set.insert(account.to_owned());
        } else {
            set.remove(account);
        }
    }

    fn close_sessions(&self, account: &str) {
        let n = self
            .registry
            .end_account(account, suspended_close(&self.host));
        if n > 0 {
            tracing::warn!("sessions closed: account suspended, authid={account}, sessions={n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(v: &Verdict) -> String {
        match v {
            Verdict::Pass => "pass".into(),
            Verdict::Refuse(r) => format!("refuse {}", String::from_utf8_lossy(&r.to_bytes())),
            Verdict::Close(r) => format!("close {}", String::from_utf8_lossy(&r.to_bytes())),
        }
    }

    #[test]
    fn mail_past_the_message_limit_is_450_4_7_1() {
        let o = CountOutcome::Refused {
            limit: "messages_per_hour".into(),
            count: 10,
            max: 10,
        };
        assert_eq!(
            wire(&verdict(Counted::Message, &o, "mx")),
            "refuse 450 4.7.1 Too many messages from this account (messages_per_hour), try again later\r\n"
        );
    }

    #[test]
    fn rcpt_past_the_recipient_limit_is_452_4_7_1() {
        let o = CountOutcome::Refused {
            limit: "recipients_per_day".into(),
            count: 10,
            max: 10,
        };
        assert!(wire(&verdict(Counted::Recipient, &o, "mx")).starts_with("refuse 452 4.7.1 "));
    }

    #[test]
    fn crossing_the_hard_threshold_closes_with_421() {
        let o = CountOutcome::SuspendedNow {
            limit: "messages_per_hour".into(),
            attempts: 31,
            threshold: 30,
        };
        assert!(wire(&verdict(Counted::Message, &o, "mx")).starts_with("close 421 4.7.1 mx "));
        assert!(
            wire(&verdict(Counted::Recipient, &CountOutcome::Suspended, "mx"))
                .starts_with("close 421 4.7.1 ")
        );
    }

    #[test]
    fn within_limits_passes() {
        assert_eq!(
            verdict(Counted::Message, &CountOutcome::Accepted, "mx"),
            Verdict::Pass
        );
    }

    #[test]
    fn a_suspended_account_authenticating_gets_525_5_7_13() {
        assert_eq!(
            String::from_utf8_lossy(&suspended_auth().to_bytes()),
            "525 5.7.13 Account suspended for sending too much mail; contact your postmaster\r\n"
        );
    }
}
