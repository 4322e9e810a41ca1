//! Who may log in as whom, and when to stop listening: realms, proxy
//! rights and the brute-force limits.

use authrelay_config::Config;
use authrelay_sasl::Mechanism;
use authrelay_state::SharedState;

use crate::AuthError;

/// A login `NAME@REALM` → (name, realm), split at the last `@` (the seed's
/// `test@mailserver.foo.com`); a bare `NAME` is in the default realm. A realm
/// the mechanism carries itself (DIGEST-MD5's `realm=`) wins.
pub fn split_login(
    login: &str,
    explicit_realm: Option<&str>,
    default_realm: &str,
) -> (String, String) {
    if let Some(realm) = explicit_realm.filter(|r| !r.is_empty()) {
        return (login.to_owned(), realm.to_owned());
    }
    match login.rsplit_once('@') {
        Some((name, realm)) if !name.is_empty() && !realm.is_empty() => {
            (name.to_owned(), realm.to_owned())
        }
        _ => (login.to_owned(), default_realm.to_owned()),
    }
}

/// The IP of "ip:port" (or "[v6]:port"), for per-address counters.
pub fn client_ip(addr: &str) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => addr.to_owned(),
    }
}

/// RFC 4616 §2 / RFC 4422 §3.4.1: an authzid different from the authcid is
/// allowed only with proxy rights (`sasl.proxy`). Returns the effective authzid.
pub fn authorize(
    cfg: &Config,
    authcid: &str,
    authzid: Option<&str>,
    raw_authcid: &str,
) -> Result<String, ()> {
    let Some(z) = authzid.filter(|z| !z.is_empty()) else {
        return Ok(authcid.to_owned());
    };
    if z == authcid || z == raw_authcid {
        return Ok(authcid.to_owned());
    }
    match cfg.sasl.proxy.get(authcid) {
        Some(allowed)
            if allowed
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(z)) =>
        {
            Ok(z.to_owned())
        }
        _ => Err(()),
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

/// A short stable hash of a login for keys and for the log lines of
/// unknown users; a process-wide constant salt keeps it the same on every
/// replica (so counters are shared) without being a plain SHA of the name.
pub fn login_hash(name: &str, realm: &str) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"authrelay login v1\0");
    h.update(realm.as_bytes());
    h.update(b"\0");
    h.update(name.as_bytes());
    hex::encode(&h.finalize()[..12])
}

async fn blocked_delay(cfg: &Config) {
    authrelay_telemetry::metrics::METRICS
        .bruteforce_blocks
        .inc();
    tokio::time::sleep(cfg.sasl.limits.block_delay).await;
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
pub async fn check_limits(
    state: &SharedState,
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
    let (counts, claimed) = state
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
        log_block_once(state, cfg, &ipk, "client address", ip).await;
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
            None => state.count_events(&ipk, lim.window).await? > 0,
        };
        if ip_failed {
            log_block_once(state, cfg, key, "user", &format!("{name}@{realm}")).await;
            blocked_delay(cfg).await;
            return Err(AuthError::RateLimited {
                mechanism: mech,
                authcid: format!("{name}@{realm}"),
            });
        }
    }
    Ok(())
}

pub async fn record_failure(
    state: &SharedState,
    cfg: &Config,
    ip: &str,
    login: Option<&(String, String)>,
) {
    let w = cfg.sasl.limits.window;
    // Counting is best effort: the failure itself is already an answer.
    let _ = state.record_event(&ip_key(ip), w).await;
    if let Some((name, realm)) = login {
        let _ = state.record_event(&user_key(name, realm), w).await;
    }
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
    fn login_splits_at_last_at() {
        assert_eq!(
            split_login("test@mailserver.foo.com", None, "d"),
            ("test".into(), "mailserver.foo.com".into())
        );
        assert_eq!(split_login("test", None, "d"), ("test".into(), "d".into()));
        assert_eq!(
            split_login("test", Some("foo"), "d"),
            ("test".into(), "foo".into())
        );
        assert_eq!(split_login("a@b@c", None, "d"), ("a@b".into(), "c".into()));
        assert_eq!(
            split_login("test@", None, "d"),
            ("test@".into(), "d".into())
        );
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

    #[test]
    fn authzid_needs_proxy_rights() {
        let mut cfg = Config::default();
        assert_eq!(
            authorize(&cfg, "kurt@r", None, "kurt@r"),
            Ok("kurt@r".into())
        );
        assert_eq!(
            authorize(&cfg, "kurt@r", Some("kurt@r"), "kurt@r"),
            Ok("kurt@r".into())
        );
        assert_eq!(
            authorize(&cfg, "kurt@r", Some("ursel@r"), "kurt@r"),
            Err(())
        );
        cfg.sasl.proxy.insert(
            "kurt@r".into(),
            authrelay_config::WordList::from(["ursel@r"]),
        );
        assert_eq!(
            authorize(&cfg, "kurt@r", Some("ursel@r"), "kurt@r"),
            Ok("ursel@r".into())
        );
    }
}
