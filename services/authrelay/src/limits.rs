//! `authrelay user limit|unlock|show`: per-account sending limits and
//! suspensions, through the frontends' admin API (`endpoints.frontend`;
//! any frontend answers for all, the counts being in the shared store).

use std::collections::BTreeMap;

use authrelay_config::Config;
use authrelay_proto::frontend::v1 as fpb;
use authrelay_proto::frontend::v1::account_limits_client::AccountLimitsClient;

use crate::{LimitArgs, admin_request, status_error};

fn client(cfg: &Config) -> anyhow::Result<AccountLimitsClient<tonic::transport::Channel>> {
    let ch = authrelay_grpc_tls::channel(
        cfg,
        cfg.endpoints.frontend.as_slice(),
        cfg.endpoints.timeout,
    )
    .map_err(|e| anyhow::anyhow!("endpoints.frontend: {e}"))?;
    Ok(AccountLimitsClient::new(ch))
}

/// `NAME` with `--realm` (or the default realm) → `NAME@REALM`, the form
/// AUTH reports; a `NAME@REALM` given without `--realm` is taken as it is.
fn account(cfg: &Config, realm: Option<String>, name: &str) -> String {
    match realm {
        Some(r) => format!("{name}@{r}"),
        None if name.contains('@') => name.to_owned(),
        None => format!("{name}@{}", cfg.default_realm),
    }
}

fn eps(cfg: &Config) -> Vec<String> {
    cfg.endpoints.frontend.as_slice().to_vec()
}

pub(crate) async fn limit(cfg: &Config, a: LimitArgs) -> anyhow::Result<()> {
    let account = account(cfg, a.realm, &a.name);
    let mut set = std::collections::HashMap::new();
    for (name, v) in [
        ("messages_per_hour", a.messages_per_hour),
        ("messages_per_day", a.messages_per_day),
        ("recipients_per_hour", a.recipients_per_hour),
        ("recipients_per_day", a.recipients_per_day),
    ] {
        if let Some(v) = v {
            set.insert(name.to_owned(), v);
        }
    }
    let mut c = client(cfg)?;
    let info = if a.show || (set.is_empty() && !a.clear) {
        c.show_account(admin_request(cfg, fpb::AccountRequest { account })?)
            .await
            .map_err(|s| status_error("user limit", &eps(cfg), s))?
    } else {
        c.set_account_limits(admin_request(
            cfg,
            fpb::SetAccountLimitsRequest {
                account,
                set,
                clear: a.clear,
            },
        )?)
        .await
        .map_err(|s| status_error("user limit", &eps(cfg), s))?
    }
    .into_inner();
    print_info(&info, a.json);
    Ok(())
}

pub(crate) async fn show(
    cfg: &Config,
    realm: Option<String>,
    name: &str,
    json: bool,
) -> anyhow::Result<()> {
    let account = account(cfg, realm, name);
    let info = client(cfg)?
        .show_account(admin_request(cfg, fpb::AccountRequest { account })?)
        .await
        .map_err(|s| status_error("user show", &eps(cfg), s))?
        .into_inner();
    print_info(&info, json);
    Ok(())
}

pub(crate) async fn unlock(cfg: &Config, realm: Option<String>, name: &str) -> anyhow::Result<()> {
    let account = account(cfg, realm, name);
    let r = client(cfg)?
        .unlock_account(admin_request(
            cfg,
            fpb::AccountRequest {
                account: account.clone(),
            },
        )?)
        .await
        .map_err(|s| status_error("user unlock", &eps(cfg), s))?
        .into_inner();
    if r.was_suspended {
        println!("unlocked {account}: suspension lifted, counts cleared");
    } else {
        println!("{account} was not suspended; counts cleared");
    }
    Ok(())
}

/// Suspended accounts by NAME@REALM (for `user list`).
pub(crate) async fn suspended(cfg: &Config) -> anyhow::Result<BTreeMap<String, fpb::Suspension>> {
    let list = client(cfg)?
        .list_suspended(admin_request(cfg, fpb::ListSuspendedRequest {})?)
        .await
        .map_err(|s| status_error("suspensions", &eps(cfg), s))?
        .into_inner()
        .suspensions;
    Ok(list.into_iter().map(|s| (s.account.clone(), s)).collect())
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

pub(crate) fn suspension_text(s: &fpb::Suspension) -> String {
    format!(
        "since {} ({}: {} attempts, threshold {}; last from {})",
        rfc3339(s.since),
        s.limit,
        s.attempts,
        s.threshold,
        s.relay
    )
}

pub(crate) fn suspension_json(s: &fpb::Suspension) -> serde_json::Value {
    serde_json::json!({
        "since": rfc3339(s.since), "limit": s.limit, "attempts": s.attempts,
        "threshold": s.threshold, "relay": s.relay,
    })
}

fn print_info(info: &fpb::AccountInfo, json: bool) {
    if json {
        let windows: Vec<serde_json::Value> = info
            .windows
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name, "limit": w.limit, "overridden": w.overridden,
                    "used": w.used, "attempts": w.attempts, "suspend_at": w.suspend_at,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "account": info.account, "enabled": info.enabled, "windows": windows,
                "suspended": info.suspension.is_some(),
                "suspension": info.suspension.as_ref().map(suspension_json),
            })
        );
        return;
    }
    println!("account: {}", info.account);
    if !info.enabled {
        println!("limits: off (limits.per_user.enabled = false)");
    }
    for w in &info.windows {
        let limit = if w.limit == 0 {
            "none".to_owned()
        } else {
            w.limit.to_string()
        };
        println!(
            "{}: {}{} used: {} attempts: {}{}",
            w.name,
            limit,
            if w.overridden { " (this user's)" } else { "" },
            w.used,
            w.attempts,
            if w.suspend_at > 0 {
                format!(" suspend at: {}", w.suspend_at)
            } else {
                String::new()
            }
        );
    }
    match &info.suspension {
        Some(s) => println!("suspended: {}", suspension_text(s)),
        None => println!("suspended: no"),
    }
}
