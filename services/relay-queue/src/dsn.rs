//! Delivery status notifications (RFC 3464) for recipients we give up on:
//! one `multipart/report` to the sender, honouring the DSN parameters the
//! client gave (RFC 3461): `NOTIFY`, `RET`, `ENVID`, `ORCPT`.

use crate::client::reply::EnhancedStatus;
use crate::spool::{Envelope, Recipient};

/// One recipient that failed for good.
#[derive(Clone, Debug)]
pub struct FailedRecipient {
    pub address: String,
    pub orcpt: String,
    /// The next hop's reply, or why we gave up.
    pub diagnostic: String,
    /// `host` of the hop that answered, if one did.
    pub remote_mta: Option<String>,
    /// RFC 3463 status, e.g. `5.1.1`.
    pub status: EnhancedStatus,
}

/// Whether a failure of `rcpt` is reported to the sender: never to the null
/// sender (RFC 5321 §4.5.5: no bounce loops), and only as NOTIFY asks —
/// absent NOTIFY means FAILURE (RFC 3461 §4.1).
pub fn wants_failure_report(env: &Envelope, rcpt: &Recipient) -> bool {
    if env.mail_from.is_empty() {
        return false;
    }
    rcpt.notify.is_empty()
        || rcpt
            .notify
            .iter()
            .any(|n| n.eq_ignore_ascii_case("FAILURE"))
}

/// The header block of a message (up to the first empty line).
fn headers_of(body: &[u8]) -> &[u8] {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| body.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(body.len());
    &body[..end]
}

/// Keeps a report line to one line of printable text, whatever a hop sent.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The bounce message (headers and body, CRLF line ends).
pub fn bounce(
    reporting_mta: &str,
    queue_id: &str,
    env: &Envelope,
    original: &[u8],
    failed: &[FailedRecipient],
) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let arrival = time::OffsetDateTime::from_unix_timestamp(env.queued_at)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_else(|| date.clone());
    let boundary = format!("{queue_id}.{}/{reporting_mta}", now.unix_timestamp());
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery Subsystem <MAILER-DAEMON@{reporting_mta}>\r\n"
    ));
    m.push_str(&format!("To: <{}>\r\n", env.mail_from));
    m.push_str("Subject: Returned mail: see transcript for details\r\n");
    m.push_str(&format!("Date: {date}\r\n"));
    m.push_str(&format!("Message-ID: <{queue_id}.dsn@{reporting_mta}>\r\n"));
    // RFC 3834 §5: so that vacation responders and the like stay quiet.
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    m.push_str(&format!(
        "The original message was received at {arrival}\r\nwith queue id {queue_id}.\r\n\r\n   ----- The following addresses had permanent fatal errors -----\r\n"
    ));
    for f in failed {
        m.push_str(&format!(
            "<{}>\r\n    ({})\r\n",
            f.address,
            one_line(&f.diagnostic)
        ));
    }
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {reporting_mta}\r\n"));
    if !env.env_id.is_empty() {
        m.push_str(&format!(
            "Original-Envelope-Id: {}\r\n",
            one_line(&env.env_id)
        ));
    }
    m.push_str(&format!("Arrival-Date: {arrival}\r\n"));
    for f in failed {
        m.push_str("\r\n");
        if !f.orcpt.is_empty() {
            m.push_str(&format!(
                "Original-Recipient: rfc822;{}\r\n",
                one_line(&f.orcpt)
            ));
        }
        m.push_str(&format!("Final-Recipient: rfc822;{}\r\n", f.address));
        m.push_str("Action: failed\r\n");
        m.push_str(&format!("Status: {}\r\n", f.status));
        if let Some(mta) = &f.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        m.push_str(&format!(
            "Diagnostic-Code: smtp; {}\r\n",
            one_line(&f.diagnostic)
        ));
        m.push_str(&format!("Last-Attempt-Date: {date}\r\n"));
    }
    // RFC 3461 §4.3: RET=HDRS returns the headers only; FULL (and, as
    // sendmail does, no RET) the whole message.
    let hdrs_only = env.ret.eq_ignore_ascii_case("HDRS");
    m.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: {}\r\n\r\n",
        if hdrs_only {
            "text/rfc822-headers"
        } else {
            "message/rfc822"
        }
    ));
    let mut out = m.into_bytes();
    let returned = if hdrs_only {
        headers_of(original)
    } else {
        original
    };
    out.extend_from_slice(returned);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(from: &str, ret: &str) -> Envelope {
        Envelope {
            mail_from: from.into(),
            recipients: vec![],
            auth_id: String::new(),
            auth_param: String::new(),
            env_id: "QQ314159".into(),
            ret: ret.into(),
            body: String::new(),
            smtputf8: false,
            client_address: String::new(),
            session_id: String::new(),
            traceparent: String::new(),
            queued_at: 1_700_000_000,
        }
    }

    fn rcpt(notify: &[&str]) -> Recipient {
        Recipient {
            address: "x@y.example".into(),
            notify: notify.iter().map(|s| (*s).to_owned()).collect(),
            orcpt: String::new(),
        }
    }

    #[test]
    fn null_sender_never_gets_a_bounce() {
        assert!(!wants_failure_report(&env("", ""), &rcpt(&[])));
    }

    #[test]
    fn notify_never_suppresses_and_absent_notify_means_failure() {
        let e = env("a@b.example", "");
        assert!(wants_failure_report(&e, &rcpt(&[])));
        assert!(wants_failure_report(&e, &rcpt(&["FAILURE", "DELAY"])));
        assert!(!wants_failure_report(&e, &rcpt(&["NEVER"])));
        assert!(!wants_failure_report(&e, &rcpt(&["SUCCESS", "DELAY"])));
    }

    #[test]
    fn ret_hdrs_returns_headers_only_and_envid_is_reported() {
        let original = b"Subject: secret plans\r\nX-A: 1\r\n\r\nthe body text\r\n";
        let failed = [FailedRecipient {
            address: "x@y.example".into(),
            orcpt: "orig@y.example".into(),
            diagnostic: "550 5.1.1 no such user".into(),
            remote_mta: Some("mx.y.example".into()),
            status: EnhancedStatus::new(5, 1, 1),
        }];
        let b = bounce(
            "relay.example",
            "ABCDEF01",
            &env("a@b.example", "HDRS"),
            original,
            &failed,
        );
        let text = String::from_utf8(b).unwrap();
        assert!(text.contains("report-type=delivery-status"), "{text}");
        assert!(text.contains("Original-Envelope-Id: QQ314159\r\n"));
        assert!(text.contains("Final-Recipient: rfc822;x@y.example\r\n"));
        assert!(text.contains("Original-Recipient: rfc822;orig@y.example\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers"));
        assert!(text.contains("Subject: secret plans"));
        assert!(!text.contains("the body text"));
        let full = bounce(
            "relay.example",
            "ABCDEF01",
            &env("a@b.example", "FULL"),
            original,
            &failed,
        );
        assert!(String::from_utf8(full).unwrap().contains("the body text"));
    }
}
