//! The brute-force limits: failures counted per client address and per
//! user in the shared store, so every replica sees the same totals.
//!
//! Reading the counters is a Redis round trip on every AUTH, and on the
//! PLAIN/LOGIN path the only one. Almost every AUTH comes from an address
//! and for a user with no recent failure, so a replica remembers, for
//! `sasl.limits.clean_ttl` (1 s), the counters Redis last showed it as
//! zero, and an AUTH with nothing to claim whose counters are all
//! remembered skips the round trip. What that costs the limits:
//!
//! - a failure on this replica forgets the address's and the user's
//!   entries before it answers, so the next attempt here reads Redis;
//! - another replica's failures are seen here when the entry expires. An
//!   attacker spreading guesses over R replicas gets at most one guess per
//!   replica past the limit from a stale entry (its failure forgets it);
//! - guesses running at once were never held to the limit exactly: each
//!   reads the counters before the others' failures are recorded, with or
//!   without this. `frontend.max_connections_per_ip` bounds that.
//!
//! Only zero is remembered, never "below the limit", so nothing here lets
//! a counter that has reached its limit be passed. And a failure after a
//! check that trusted remembered zeros reads the counters before it
//! answers, so a wrong guess takes as long either way: the time of a 535
//! never tells whether some user logged in here a moment ago.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use authrelay_config::Config;
use authrelay_sasl::Mechanism;
use authrelay_state::SharedState;

use crate::AuthError;
use crate::policy::login_hash;

/// The failure counters as one sasl-auth replica reads and writes them.
pub struct Counters {
    state: SharedState,
    /// None: every check reads the store (an in-process store, where a read
    /// costs no more than this would, or `clean_ttl = 0`).
    clean: Option<Clean>,
}

/// What a passed check did. Its `|` gathers the checks of one AUTH.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct Checked {
    /// Remembered zeros were trusted instead of a read of the store.
    trusted: bool,
}

impl std::ops::BitOr for Checked {
    type Output = Checked;
    fn bitor(self, other: Checked) -> Checked {
        Checked {
            trusted: self.trusted || other.trusted,
        }
    }
}

/// At most this many remembered counters: a flood from many addresses
/// must not grow a replica without bound.
const CLEAN_ENTRIES: usize = 100_000;

/// Counter keys last read as zero, and until when that is trusted.
struct Clean {
    ttl: Duration,
    until: Mutex<HashMap<String, Instant>>,
}

impl Clean {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn all(&self, keys: &[&str]) -> bool {
        let now = Instant::now();
        let until = self.lock();
        keys.iter().all(|k| until.get(*k).is_some_and(|u| *u > now))
    }

    fn remember(&self, key: &str) {
        let mut until = self.lock();
        let now = Instant::now();
        if until.len() >= CLEAN_ENTRIES {
            until.retain(|_, u| *u > now);
            if until.len() >= CLEAN_ENTRIES {
                return; // still full of live entries: read next time
            }
        }
        until.insert(key.to_owned(), now + self.ttl);
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

impl Counters {
    pub fn new(state: SharedState, cfg: &Config) -> Self {
        let ttl = cfg.sasl.limits.clean_ttl;
        let clean = (state.kind() == "redis" && !ttl.is_zero()).then(|| Clean {
            ttl,
            until: Mutex::new(HashMap::new()),
        });
        Counters { state, clean }
    }

    /// As [`Counters::new`], remembering zeros whatever the store (tests).
    #[cfg(test)]
    fn remembering(state: SharedState, ttl: Duration) -> Self {
        Counters {
            state,
            clean: Some(Clean {
                ttl,
                until: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The limits one AUTH step is subject to, read in one round trip, together
    /// with the single-use `claim` of the sealed exchange the step came from
    /// (a replayed step is refused: [`AuthError::ExchangeExpired`]).
    ///
    /// `ip_pending`: the per-address count has not been read for this AUTH yet
    /// (it is read with the first step that names a user, or ends the
    /// exchange): an address past its limit is then answered 454 after a
    /// delay. `user`: the login, once the mechanism has named it. A user past
    /// its limit is blocked only for addresses that have failed recently; a
    /// clean address still gets through, so an attacker cannot lock the real
    /// user out (the lockout-DoS), while each attacking address gets at most
    /// one more guess per window.
    pub async fn check(
        &self,
        cfg: &Config,
        ip: &str,
        ip_pending: bool,
        user: Option<(&str, &str)>,
        claim: Option<(&str, std::time::Duration)>,
        mech: Mechanism,
    ) -> Result<Checked, AuthError> {
        let lim = &cfg.sasl.limits;
        let want_ip = ip_pending && lim.max_failures_per_ip > 0;
        let want_user = user.filter(|_| lim.max_failures_per_user > 0);
        let ipk = ip_key(ip);
        let userk = want_user.map(|(name, realm)| user_key(name, realm));
        let keys: Vec<&str> = want_ip
            .then_some(ipk.as_str())
            .into_iter()
            .chain(userk.as_deref())
            .collect();
        // A claim needs the round trip anyway, and the counts ride along.
        if claim.is_none() && !keys.is_empty() && self.clean.as_ref().is_some_and(|c| c.all(&keys))
        {
            return Ok(Checked { trusted: true });
        }
        let (counts, claimed) = self
            .state
            .count_events_and_claim(&keys, lim.window, claim)
            .await?;
        if !claimed {
            return Err(replayed(mech));
        }
        if let Some(clean) = &self.clean {
            for (key, n) in keys.iter().zip(&counts) {
                if *n == 0 {
                    clean.remember(key);
                }
            }
        }
        let mut counts = counts.into_iter();
        let ip_n = if want_ip { counts.next() } else { None };
        let user_n = if want_user.is_some() {
            counts.next()
        } else {
            None
        };
        if ip_n.is_some_and(|n| n >= u64::from(lim.max_failures_per_ip)) {
            log_block_once(&self.state, cfg, &ipk, "client address", ip).await;
            blocked_delay(cfg).await;
            return Err(AuthError::RateLimited {
                mechanism: mech,
                authcid: String::new(),
            });
        }
        if let (Some(n), Some((name, realm)), Some(key)) = (user_n, want_user, &userk)
            && n >= u64::from(lim.max_failures_per_user)
        {
            // Rare (a user under attack): the address's count, if not read above.
            let ip_failed = match ip_n {
                Some(n) => n > 0,
                None => self.state.count_events(&ipk, lim.window).await? > 0,
            };
            if ip_failed {
                log_block_once(&self.state, cfg, key, "user", &format!("{name}@{realm}")).await;
                blocked_delay(cfg).await;
                return Err(AuthError::RateLimited {
                    mechanism: mech,
                    authcid: format!("{name}@{realm}"),
                });
            }
        }
        Ok(Checked::default())
    }

    /// Count a failure against the address and the login. `checked`: what
    /// the checks of this AUTH did; if they trusted remembered zeros, the
    /// read they skipped is made now, so the 535 comes as late as it would
    /// have.
    pub async fn record_failure(
        &self,
        cfg: &Config,
        ip: &str,
        login: Option<&(String, String)>,
        checked: Checked,
    ) {
        let lim = &cfg.sasl.limits;
        let w = lim.window;
        let ipk = ip_key(ip);
        let userk = login.map(|(name, realm)| user_key(name, realm));
        if checked.trusted {
            let keys: Vec<&str> = (lim.max_failures_per_ip > 0)
                .then_some(ipk.as_str())
                .into_iter()
                .chain(userk.as_deref().filter(|_| lim.max_failures_per_user > 0))
                .collect();
            let _ = self.state.count_events_and_claim(&keys, w, None).await;
        }
        // Forgotten before anything awaits: the next attempt reads Redis.
        if let Some(clean) = &self.clean {
            clean.forget(&ipk);
            if let Some(k) = &userk {
                clean.forget(k);
            }
        }
        // Counting is best effort: the failure itself is already an answer.
        let _ = self.state.record_event(&ipk, w).await;
        if let Some(k) = &userk {
            let _ = self.state.record_event(k, w).await;
        }
    }
}

fn ip_key(ip: &str) -> String {
    format!("bf:ip:{ip}")
}

/// The per-user counter's key names the login by a keyed hash, not as
/// typed: a password typed into the user-name field (it happens) must not
/// end up readable in Redis's key space.
fn user_key(name: &str, realm: &str) -> String {
    format!("bf:user:{}", login_hash(name, realm))
}

async fn blocked_delay(cfg: &Config) {
    authrelay_telemetry::metrics::METRICS
        .bruteforce_blocks
        .inc();
    tokio::time::sleep(cfg.sasl.limits.block_delay).await;
}

async fn log_block_once(state: &SharedState, cfg: &Config, key: &str, what: &str, who: &str) {
    if state
        .claim(&format!("{key}:logged"), cfg.sasl.limits.window)
        .await
        .unwrap_or(false)
    {
        tracing::warn!(target: "auth", "AUTH blocked: too many failures for {what} {who} within {}s", cfg.sasl.limits.window.as_secs());
    }
}

/// A step from a sealed state that was already answered: counted, logged,
/// and refused like an expired one (535).
pub fn replayed(mech: Mechanism) -> AuthError {
    authrelay_telemetry::metrics::sealed_refusal("replayed");
    tracing::warn!(target: "auth", mech = mech.name(), "sealed SASL exchange refused: replayed (its step was already taken)");
    AuthError::ExchangeExpired
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: &str = "192.0.2.7";
    const HOUR: Duration = Duration::from_secs(3600);

    fn cfg(per_ip: u32) -> Config {
        let mut cfg = Config::default();
        cfg.sasl.limits.max_failures_per_ip = per_ip;
        cfg.sasl.limits.max_failures_per_user = 0;
        cfg.sasl.limits.block_delay = Duration::from_millis(1);
        cfg
    }

    /// One PLAIN attempt's check: the address pending, nothing to claim.
    async fn check(c: &Counters, cfg: &Config) -> Result<Checked, AuthError> {
        c.check(cfg, IP, true, None, None, Mechanism::Plain).await
    }

    /// A failure some other replica recorded, straight into the store.
    async fn failure_elsewhere(state: &SharedState, cfg: &Config) {
        state
            .record_event(&ip_key(IP), cfg.sasl.limits.window)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_zero_read_is_trusted_until_a_failure_on_this_replica_forgets_it() {
        let cfg = cfg(1);
        let state = SharedState::in_process();
        let here = Counters::remembering(state.clone(), HOUR);
        let read = Checked { trusted: false };
        let trusted = Checked { trusted: true };
        assert_eq!(check(&here, &cfg).await.unwrap(), read, "read, remembered");
        assert_eq!(check(&here, &cfg).await.unwrap(), trusted);
        assert_eq!(read | trusted, trusted, "an AUTH that trusted once");
        failure_elsewhere(&state, &cfg).await;
        // The limit (1) is reached in the store; this replica still trusts
        // its zero: the one guess past the limit a stale entry allows.
        assert_eq!(check(&here, &cfg).await.unwrap(), trusted);
        here.record_failure(&cfg, IP, None, Checked::default())
            .await;
        assert!(matches!(
            check(&here, &cfg).await,
            Err(AuthError::RateLimited { .. })
        ));
    }

    #[tokio::test]
    async fn without_remembering_every_check_reads_the_store() {
        let cfg = cfg(1);
        let state = SharedState::in_process();
        let here = Counters::new(state.clone(), &cfg);
        assert!(
            here.clean.is_none(),
            "an in-process store remembers nothing"
        );
        assert!(check(&here, &cfg).await.is_ok());
        failure_elsewhere(&state, &cfg).await;
        assert!(matches!(
            check(&here, &cfg).await,
            Err(AuthError::RateLimited { .. })
        ));
    }

    #[tokio::test]
    async fn guesses_spread_over_replicas_pass_the_limit_by_at_most_one_per_replica() {
        let cfg = cfg(3);
        let state = SharedState::in_process();
        let replicas: Vec<Counters> = (0..3)
            .map(|_| Counters::remembering(state.clone(), HOUR))
            .collect();
        // Every replica has seen this address clean.
        for r in &replicas {
            assert!(check(r, &cfg).await.is_ok());
        }
        // The attacker guesses round-robin until every replica refuses.
        let mut guesses = 0;
        for round in 0..10 {
            let mut refused = 0;
            for r in &replicas {
                match check(r, &cfg).await {
                    Ok(checked) => {
                        guesses += 1;
                        r.record_failure(&cfg, IP, None, checked).await;
                    }
                    Err(AuthError::RateLimited { .. }) => refused += 1,
                    Err(e) => panic!("round {round}: {e:?}"),
                }
            }
            if refused == replicas.len() {
                break;
            }
        }
        // Three within the limit; past it, at most one more per other
        // replica (each stale zero is used once, then forgotten).
        assert!(
            (3..=3 + replicas.len() - 1).contains(&guesses),
            "{guesses} guesses"
        );
    }

    #[tokio::test]
    async fn an_entry_expires_after_clean_ttl() {
        let cfg = cfg(1);
        let state = SharedState::in_process();
        let here = Counters::remembering(state.clone(), Duration::from_millis(30));
        assert!(check(&here, &cfg).await.is_ok());
        failure_elsewhere(&state, &cfg).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(
            check(&here, &cfg).await,
            Err(AuthError::RateLimited { .. })
        ));
    }

    #[tokio::test]
    async fn a_step_with_a_claim_always_goes_to_the_store() {
        let cfg = cfg(5);
        let state = SharedState::in_process();
        let here = Counters::remembering(state.clone(), HOUR);
        let claim = Some(("sasl:used:t1", Duration::from_secs(60)));
        let step = |claim| here.check(&cfg, IP, true, None, claim, Mechanism::CramMd5);
        assert!(step(claim).await.is_ok(), "first use of the sealed state");
        // The address is remembered clean, yet the replay is still caught.
        assert!(matches!(step(claim).await, Err(AuthError::ExchangeExpired)));
    }

    #[test]
    fn the_remembered_set_is_bounded() {
        let clean = Clean {
            ttl: HOUR,
            until: Mutex::new(HashMap::new()),
        };
        for n in 0..CLEAN_ENTRIES + 10 {
            clean.remember(&format!("bf:ip:{n}"));
        }
        assert_eq!(clean.lock().len(), CLEAN_ENTRIES);
        assert!(!clean.all(&["bf:ip:100009"]), "not remembered once full");
        clean.forget("bf:ip:0");
        assert!(!clean.all(&["bf:ip:0"]));
    }

    #[test]
    fn a_per_user_counter_key_never_holds_what_was_typed_as_the_user() {
        let typed = "Hunter2-the-password";
        let k = user_key(typed, "mailserver.foo.com");
        assert!(!k.contains(typed) && !k.contains("mailserver"), "{k}");
        assert_eq!(
            k,
            user_key(typed, "mailserver.foo.com"),
            "stable across replicas"
        );
        assert_ne!(k, user_key("other", "mailserver.foo.com"));
    }
}
