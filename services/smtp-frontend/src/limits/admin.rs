//! The admin API of the account limits (`authrelay user limit|unlock|show`,
//! `user list`): overrides, usage, suspensions and unlock, over the shared
//! store, so any frontend answers for all of them.

use authrelay_config::PerUserLimits;
use authrelay_proto::frontend::v1 as pb;
use authrelay_state::account;
use authrelay_state::{SharedState, StateError};
use std::sync::Arc;

use super::AccountLimits;
use crate::admin_error::AdminError;

/// What `authrelay user show` prints: limits, usage, suspension.
async fn info(limits: &AccountLimits, account: &str) -> Result<pb::AccountInfo, StateError> {
    let windows = limits.all_windows();
    let usage = limits.state.account_usage(account, &windows).await?;
    let overrides = limits.state.account_overrides(account).await?;
    let suspension = limits.state.suspension(account).await?;
    Ok(pb::AccountInfo {
        account: account.to_owned(),
        enabled: limits.cfg.enabled,
        windows: windows
            .iter()
            .zip(usage)
            .map(|(w, u)| pb::AccountWindow {
                name: w.name.clone(),
                limit: u.limit,
                overridden: overrides.contains_key(&w.name),
                used: u.accepted,
                attempts: u.attempts,
                suspend_at: account::threshold(u.limit, limits.cfg.suspend_factor).unwrap_or(0),
            })
            .collect(),
        suspension: suspension.map(|s| suspension_pb(account, s)),
    })
}

fn suspension_pb(account: &str, s: account::Suspension) -> pb::Suspension {
    pb::Suspension {
        account: account.to_owned(),
        since: s.since,
        relay: s.relay,
        limit: s.limit,
        attempts: s.attempts,
        threshold: s.threshold,
    }
}

/// An account name as AUTH reports it: NAME@REALM, no control characters
/// (it becomes part of store keys and log lines).
fn check_account(account: &str) -> Result<(), AdminError> {
    if account.is_empty()
        || account.len() > 512
        || !account.contains('@')
        || account.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AdminError::InvalidAccount);
    }
    Ok(())
}

/// The admin API (`authrelay user limit|unlock|show`).
pub struct AccountLimitsService {
    pub limits: Arc<AccountLimits>,
}

#[tonic::async_trait]
impl pb::account_limits_server::AccountLimits for AccountLimitsService {
    async fn show_account(
        &self,
        req: tonic::Request<pb::AccountRequest>,
    ) -> Result<tonic::Response<pb::AccountInfo>, tonic::Status> {
        let account = req.into_inner().account;
        check_account(&account)?;
        let info = info(&self.limits, &account)
            .await
            .map_err(AdminError::from)?;
        Ok(tonic::Response::new(info))
    }

    async fn set_account_limits(
        &self,
        req: tonic::Request<pb::SetAccountLimitsRequest>,
    ) -> Result<tonic::Response<pb::AccountInfo>, tonic::Status> {
        let r = req.into_inner();
        check_account(&r.account)?;
        let mut set = Vec::new();
        for (name, value) in &r.set {
            if !PerUserLimits::NAMES.contains(&name.as_str()) {
                return Err(AdminError::UnknownLimit {
                    name: name.clone(),
                    known: PerUserLimits::NAMES.join(", "),
                }
                .into());
            }
            if *value > 1_000_000_000 {
                return Err(AdminError::LimitTooHigh(name.clone()).into());
            }
            set.push((name.clone(), *value));
        }
        self.limits
            .state
            .set_account_overrides(&r.account, &set, &[], r.clear)
            .await
            .map_err(AdminError::from)?;
        self.limits.save().await;
        let shown: Vec<String> = set.iter().map(|(n, v)| format!("{n}={v}")).collect();
        tracing::info!(
            "account limits changed: authid={}, {}{}",
            r.account,
            if r.clear { "cleared, " } else { "" },
            if shown.is_empty() {
                "no overrides set".to_owned()
            } else {
                shown.join(", ")
            }
        );
        let info = info(&self.limits, &r.account)
            .await
            .map_err(AdminError::from)?;
        Ok(tonic::Response::new(info))
    }

    async fn unlock_account(
        &self,
        req: tonic::Request<pb::AccountRequest>,
    ) -> Result<tonic::Response<pb::UnlockAccountResponse>, tonic::Status> {
        let account = req.into_inner().account;
        check_account(&account)?;
        let counters = account::keys::live_counters(
            &account,
            &self.limits.all_windows(),
            SharedState::now_ms(),
        );
        let was = self
            .limits
            .state
            .unlock_account(&account, &counters)
            .await
            .map_err(AdminError::from)?;
        self.limits.remember(&account, false);
        self.limits.announce("unlock", &account).await;
        self.limits.save().await;
        tracing::warn!("account unlocked: authid={account}, was_suspended={was}, counts cleared");
        Ok(tonic::Response::new(pb::UnlockAccountResponse {
            was_suspended: was,
        }))
    }

    async fn list_suspended(
        &self,
        _req: tonic::Request<pb::ListSuspendedRequest>,
    ) -> Result<tonic::Response<pb::ListSuspendedResponse>, tonic::Status> {
        let all = self
            .limits
            .state
            .suspensions()
            .await
            .map_err(AdminError::from)?;
        Ok(tonic::Response::new(pb::ListSuspendedResponse {
            suspensions: all.into_iter().map(|(a, s)| suspension_pb(&a, s)).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_checked_before_they_become_keys() {
        assert!(check_account("alice@example.com").is_ok());
        for bad in ["", "alice", "a b@r", "a\r\n@r"] {
            assert!(check_account(bad).is_err(), "{bad:?}");
        }
    }
}
