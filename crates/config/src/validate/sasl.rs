//! `[sasl]`: which mechanisms are offered and trusted, the bearer token
//! issuers they need, and the exchange and brute-force settings.

use authrelay_sasl::Mechanism;

use super::known_mechanisms;
use crate::{ConfigError, SaslConfig};

pub(super) fn check(sasl: &SaslConfig) -> Result<(), ConfigError> {
    for (key, list) in [
        ("sasl.mechanisms", &sasl.mechanisms),
        ("sasl.trusted", &sasl.trusted),
    ] {
        for m in list.iter() {
            if Mechanism::from_name(m).is_none() {
                return Err(ConfigError::new(
                    key,
                    m,
                    format!("unknown SASL mechanism; known: {}", known_mechanisms()),
                ));
            }
        }
    }
    sasl.oauth.validate()?;
    for m in sasl.mechanisms.iter() {
        if Mechanism::from_name(m).is_some_and(Mechanism::uses_bearer_token)
            && sasl.oauth.issuers.is_empty()
        {
            return Err(ConfigError::new(
                "sasl.mechanisms",
                m,
                "needs a token issuer: add a [[sasl.oauth.issuers]] entry (issuer, audience, user_claim)",
            ));
        }
    }
    for m in sasl.trusted.iter() {
        if !sasl.mechanisms.contains_ignore_case(m) {
            return Err(ConfigError::new(
                "sasl.trusted",
                m,
                "is not in sasl.mechanisms (a mechanism must be offered to be trusted)",
            ));
        }
    }
    if sasl.exchange_ttl.as_secs() == 0 {
        return Err(ConfigError::new(
            "sasl.exchange_ttl",
            "0s",
            "must be at least one second",
        ));
    }
    let lim = &sasl.limits;
    if (lim.max_failures_per_ip > 0 || lim.max_failures_per_user > 0) && lim.window.as_secs() == 0 {
        return Err(ConfigError::new(
            "sasl.limits.window",
            "0s",
            "must be at least one second when a limit is set",
        ));
    }
    Ok(())
}
