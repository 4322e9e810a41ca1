//! `[limits]`: what an authenticated account may send (`limits.per_user`).

use crate::{ConfigError, LimitsConfig, PerUserLimits};

pub(super) fn check(limits: &LimitsConfig) -> Result<(), ConfigError> {
    let per_user = &limits.per_user;
    if per_user.enabled && per_user.suspend_factor == 1 {
        return Err(ConfigError::new(
            "limits.per_user.suspend_factor",
            "1",
            "would suspend an account at its first refused message; use 2 or more (or 0 for never)",
        ));
    }
    if per_user.suspend_factor > 1000 {
        return Err(ConfigError::new(
            "limits.per_user.suspend_factor",
            per_user.suspend_factor.to_string(),
            "must be at most 1000 (0 = never suspend)",
        ));
    }
    for name in PerUserLimits::NAMES {
        let v = per_user.get(name).unwrap_or(0);
        if v > 1_000_000_000 {
            return Err(ConfigError::new(
                format!("limits.per_user.{name}"),
                v.to_string(),
                "must be at most 1000000000 (0 = no limit)",
            ));
        }
    }
    Ok(())
}
