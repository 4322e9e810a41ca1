//! Queueing the DSN for recipients an attempt gave up on: one message from
//! the null sender, through the spool like any other.

use crate::dsn::{self, FailedRecipient};
use crate::now;
use crate::spool::{Envelope, Recipient, Spool, SpoolError};

/// Queue one DSN for `failed` (those whose NOTIFY asks for one) and return
/// its id and queue time; `None` when nobody gets a report or it is queued
/// already. Its id is derived from the message and attempt, so a retry
/// after a crash finds it queued instead of making another.
pub fn queue(
    spool: &Spool,
    reporting_mta: &str,
    id: &str,
    env: &Envelope,
    body: &[u8],
    failed: &[FailedRecipient],
    attempt: u32,
) -> Result<Option<(String, i64)>, SpoolError> {
    let report: Vec<FailedRecipient> = failed
        .iter()
        .filter(|f| {
            env.recipients
                .iter()
                .find(|r| r.address == f.address)
                .is_some_and(|r| dsn::wants_failure_report(env, r))
        })
        .cloned()
        .collect();
    if report.is_empty() {
        tracing::info!(
            queue_id = id,
            failed = failed.len(),
            "no DSN (null sender or NOTIFY)"
        );
        return Ok(None);
    }
    let prefix: String = id.chars().take(22).collect();
    let bounce_id = format!("{prefix}B{attempt}");
    if spool.exists(&bounce_id) {
        return Ok(None);
    }
    let message = dsn::bounce(reporting_mta, id, env, body, &report);
    let bounce_env = Envelope {
        mail_from: String::new(),
        recipients: vec![Recipient {
            address: env.mail_from.clone(),
            notify: Vec::new(),
            orcpt: String::new(),
        }],
        auth_id: String::new(),
        auth_param: String::new(),
        env_id: String::new(),
        ret: String::new(),
        body: if env.body.eq_ignore_ascii_case("8BITMIME") || env.smtputf8 {
            "8BITMIME".into()
        } else {
            String::new()
        },
        smtputf8: env.smtputf8,
        client_address: String::new(),
        session_id: String::new(),
        traceparent: env.traceparent.clone(),
        queued_at: now(),
    };
    let mut writer = spool.writer(&bounce_id, &bounce_env)?;
    writer.write(&message)?;
    writer.commit()?;
    tracing::info!(
        "{bounce_id}: from=<>, size={}, nrcpts=1, stat=queued (DSN for {id} to <{}>)",
        message.len(),
        env.mail_from
    );
    Ok(Some((bounce_id, bounce_env.queued_at)))
}
