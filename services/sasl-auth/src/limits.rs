//! The brute-force limits: failures counted per client address and per
//! user in the shared store, so every replica sees the same totals.

use authrelay_config::Config;
use authrelay_sasl::Mechanism;
use authrelay_state::SharedState;

use crate::AuthError;
use crate::policy::login_hash;

/// The failure counters as one sasl-auth replica reads and writes them.
pub struct Counters {
    state: SharedState,
}

impl Counters {
    pub fn new(state: SharedState) -> Self {
        Counters { state }
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
    ) -> Result<(), AuthError> {
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
        let (counts, claimed) = self
            .state
            .count_events_and_claim(&keys, lim.window, claim)
            .await?;
        if !claimed {
            authrelay_telemetry::metrics::sealed_refusal("replayed");
            tracing::warn!(target: "auth", mech = mech.name(), "sealed SASL exchange refused: replayed (its step was already taken)");
            return Err(AuthError::ExchangeExpired);
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
        Ok(())
    }

    pub async fn record_failure(&self, cfg: &Config, ip: &str, login: Option<&(String, String)>) {
        let w = cfg.sasl.limits.window;
        // Counting is best effort: the failure itself is already an answer.
        let _ = self.state.record_event(&ip_key(ip), w).await;
        if let Some((name, realm)) = login {
            let _ = self.state.record_event(&user_key(name, realm), w).await;
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

#[cfg(test)]
mod tests {
    use super::*;

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
