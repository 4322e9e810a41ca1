//! The outbound SMTP client: one connection per next hop carrying all its
//! recipients. Replies are parsed by `smtp-proto` ([`reply`]); failures are
//! [`DeliveryError`]s.

use authrelay_config::{AuthInfo, OutboundTls};
use authrelay_sasl::Mechanism;
use smtp_proto::{EXT_8BIT_MIME, EXT_AUTH, EXT_DSN, EXT_SMTP_UTF8, EXT_START_TLS};
use tokio::net::TcpStream;

use crate::error::DeliveryError;
use crate::oauth::TokenSource;
use crate::spool::{Envelope, Recipient};
use crate::tls::OutboundTlsConfigs;

mod auth;
mod conn;
pub mod reply;

use auth::authenticate;
pub use auth::choose_mechanism;
use conn::Conn;
use reply::{Extensions, Reply};

/// How the hop answered for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Accepted with the message: the hop's reply to the data.
    Delivered(Reply),
    /// Refused at RCPT, or the data refused: [`Reply::verdict`] says
    /// whether to try again.
    Refused(Reply),
}

/// One next hop and how to talk to it.
pub struct Hop<'a> {
    pub host: &'a str,
    pub port: u16,
    /// The address to connect to when routing already resolved `host` (MX);
    /// `None` resolves `host` at connect time.
    pub addr: Option<std::net::IpAddr>,
    pub helo: &'a str,
    pub timeout: std::time::Duration,
    pub tls: OutboundTls,
    pub authinfo: Option<&'a AuthInfo>,
    /// The token source the AuthInfo entry names, for XOAUTH2/OAUTHBEARER.
    pub tokens: Option<&'a TokenSource>,
}

/// RFC 5321 §4.5.2: a line starting with "." gets another; the body must end
/// in CRLF before the terminating ".".
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Deliver `body` for `rcpts` to the hop. A connection-level failure is an
/// error (every recipient shares it); otherwise one outcome per recipient.
pub async fn deliver(
    hop: &Hop<'_>,
    tls: &OutboundTlsConfigs,
    env: &Envelope,
    rcpts: &[&Recipient],
    body: &[u8],
) -> Result<Vec<RcptOutcome>, DeliveryError> {
    match session(hop, hop.tls, tls, env, rcpts, body).await {
        // RFC 7435: opportunistic TLS that cannot be had falls back to the
        // clear rather than leave the mail undelivered.
        Err(e @ (DeliveryError::Tls(_) | DeliveryError::StartTlsRefused(_)))
            if hop.tls == OutboundTls::Opportunistic =>
        {
            let why = match &e {
                DeliveryError::Tls(t) => t.to_string(),
                DeliveryError::StartTlsRefused(reply) => reply.to_string(),
                other => other.to_string(),
            };
            tracing::info!(
                "relay={}:{}, STARTTLS failed ({why}); retrying without TLS",
                hop.host,
                hop.port
            );
            session(hop, OutboundTls::None, tls, env, rcpts, body).await
        }
        other => other,
    }
}

/// EHLO, or HELO when the hop does not know EHLO (RFC 5321 §4.1.4).
async fn greet(c: &mut Conn, helo: &str) -> Result<Extensions, DeliveryError> {
    let (reply, ext) = c.ehlo(helo).await?;
    if reply.is_positive() {
        return Ok(ext);
    }
    let reply = c.send(&format!("HELO {helo}")).await?;
    if !reply.is_positive() {
        return Err(DeliveryError::Reply(reply));
    }
    Ok(Extensions::default())
}

/// Connect, read the greeting, EHLO, and STARTTLS as `policy` says.
async fn open(
    hop: &Hop<'_>,
    policy: OutboundTls,
    tls: &OutboundTlsConfigs,
) -> Result<(Conn, Extensions), DeliveryError> {
    let (host, port) = (hop.host, hop.port);
    let connect = async {
        match hop.addr {
            Some(ip) => TcpStream::connect((ip, port)).await,
            None => TcpStream::connect((host, port)).await,
        }
    };
    let stream = tokio::time::timeout(hop.timeout, connect)
        .await
        .map_err(|_| DeliveryError::ConnectTimeout {
            host: host.to_owned(),
            port,
        })?
        .map_err(|error| DeliveryError::Connect {
            host: host.to_owned(),
            port,
            error,
        })?;
    let _ = stream.set_nodelay(true);
    let mut c = Conn::new(Box::new(stream), hop.timeout);
    let greeting = c.read_reply().await.map_err(DeliveryError::NoGreeting)?;
    if !greeting.is_positive() {
        return Err(DeliveryError::Reply(greeting));
    }
    let mut ext = greet(&mut c, hop.helo).await?;
    let offers_tls = ext.has(EXT_START_TLS);
    let use_tls = match policy {
        OutboundTls::None => false,
        OutboundTls::Opportunistic => offers_tls,
        OutboundTls::Required | OutboundTls::RequiredVerify => {
            if !offers_tls {
                let _ = c.send("QUIT").await;
                return Err(DeliveryError::TlsNotOffered {
                    host: host.to_owned(),
                    port,
                });
            }
            true
        }
    };
    if use_tls {
        let reply = c.send("STARTTLS").await?;
        if reply.code != 220 {
            return Err(DeliveryError::StartTlsRefused(reply));
        }
        let config = if policy == OutboundTls::RequiredVerify {
            tls.verified.clone()
        } else {
            tls.any_certificate.clone()
        };
        c = c.starttls(host, config).await?;
        // RFC 3207 §4.2: forget everything learnt before TLS and ask again.
        ext = greet(&mut c, hop.helo).await?;
    }
    Ok((c, ext))
}

/// AUTH as the hop's AuthInfo entry says, in an `AUTH client` span; `None`
/// when there is no entry or the hop does not offer AUTH.
async fn auth_step(
    c: &mut Conn,
    hop: &Hop<'_>,
    ext: &Extensions,
) -> Option<Result<Mechanism, DeliveryError>> {
    let (host, port) = (hop.host, hop.port);
    let info = hop.authinfo?;
    if !ext.has(EXT_AUTH) {
        return None;
    }
    let span = tracing::info_span!(
        "AUTH client",
        otel.name = "smtp AUTH client",
        otel.kind = "client",
        server.address = %host,
        server.port = port,
        sasl.mechanism = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    let clear_hop = hop.tls == OutboundTls::None;
    let result = tracing::Instrument::instrument(
        authenticate(c, host, info, hop.tokens, ext, clear_hop),
        span.clone(),
    )
    .await;
    span.record(
        "outcome",
        if result.is_ok() { "success" } else { "failure" },
    );
    if result.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    Some(result)
}

/// What `authrelay authinfo test` reports.
#[derive(Debug)]
pub struct ProbeReport {
    /// Whether STARTTLS was done.
    pub tls: bool,
    /// What the hop offered for AUTH (empty: no AUTH offered).
    pub offered: Vec<String>,
    /// The mechanism that succeeded; `None` when there was nothing to do.
    pub mechanism: Option<Mechanism>,
}

/// Connect to the hop, STARTTLS, AUTH as its entry says, QUIT — no mail.
pub async fn probe(hop: &Hop<'_>, tls: &OutboundTlsConfigs) -> Result<ProbeReport, DeliveryError> {
    let (mut c, ext) = open(hop, hop.tls, tls).await?;
    let offered = ext.auth_words().to_vec();
    let result = auth_step(&mut c, hop, &ext).await.transpose();
    let _ = c.send("QUIT").await;
    Ok(ProbeReport {
        tls: c.tls,
        offered,
        mechanism: result?,
    })
}

/// The MAIL command with the parameters the hop understands.
fn mail_command(env: &Envelope, ext: &Extensions) -> String {
    let mut mail = format!("MAIL FROM:<{}>", env.mail_from);
    if ext.has(EXT_8BIT_MIME) && !env.body.is_empty() && env.body != "7BIT" {
        mail.push_str(&format!(" BODY={}", env.body));
    }
    if ext.has(EXT_SMTP_UTF8) && env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if ext.has(EXT_DSN) {
        if !env.ret.is_empty() {
            mail.push_str(&format!(" RET={}", env.ret));
        }
        if !env.env_id.is_empty() {
            mail.push_str(&format!(" ENVID={}", xtext(&env.env_id)));
        }
    }
    mail
}

/// The RCPT command, with the DSN parameters when the hop takes them.
fn rcpt_command(rcpt: &Recipient, ext: &Extensions) -> String {
    let mut line = format!("RCPT TO:<{}>", rcpt.address);
    if ext.has(EXT_DSN) {
        if !rcpt.notify.is_empty() {
            line.push_str(&format!(" NOTIFY={}", rcpt.notify.join(",")));
        }
        if !rcpt.orcpt.is_empty() {
            // The spool keeps the decoded address (RFC 3461 §4.2).
            line.push_str(&format!(" ORCPT=rfc822;{}", xtext(&rcpt.orcpt)));
        }
    }
    line
}

async fn session(
    hop: &Hop<'_>,
    policy: OutboundTls,
    tls: &OutboundTlsConfigs,
    env: &Envelope,
    rcpts: &[&Recipient],
    body: &[u8],
) -> Result<Vec<RcptOutcome>, DeliveryError> {
    let (mut c, ext) = open(hop, policy, tls).await?;
    if ext.has_xtrace() {
        // Our own extension, between authrelay instances only: the next hop
        // continues this trace (its AUTH and transaction spans). A refusal
        // changes nothing for the mail.
        let traceparent = authrelay_telemetry::traceparent();
        if !traceparent.is_empty() {
            c.send(&format!("XTRACE {traceparent}")).await?;
        }
    }
    if let Some(result) = auth_step(&mut c, hop, &ext).await {
        result?;
    }
    let mail = mail_command(env, &ext);
    let with_auth = ext.has(EXT_AUTH) && !env.auth_param.is_empty();
    let mut rep = if with_auth {
        c.send(&format!("{mail} AUTH={}", xtext(&env.auth_param)))
            .await?
    } else {
        c.send(&mail).await?
    };
    if rep.code == 555 && with_auth {
        // RFC 4954 §5 makes AUTH= optional; some servers that offer AUTH
        // (aiosmtpd) still refuse the parameter (RFC 5321 §4.1.1.11 555).
        rep = c.send(&mail).await?;
    }
    if !rep.is_positive() {
        return Err(DeliveryError::Reply(rep));
    }
    // Each recipient's refusal, `None` when accepted.
    let mut refusals = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        let rep = c.send(&rcpt_command(rcpt, &ext)).await?;
        refusals.push((!(200..300).contains(&rep.code)).then_some(rep));
    }
    if refusals.iter().all(Option::is_some) {
        let _ = c.send("QUIT").await;
        return Ok(refusals
            .into_iter()
            .flatten()
            .map(RcptOutcome::Refused)
            .collect());
    }
    let rep = c.send("DATA").await?;
    if rep.code != 354 {
        return Err(DeliveryError::Reply(rep));
    }
    c.write(&dot_stuff(body)).await?;
    let rep = c.read_reply().await?;
    let _ = c.send("QUIT").await;
    Ok(refusals
        .into_iter()
        .map(|refusal| match refusal {
            Some(refused) => RcptOutcome::Refused(refused),
            None if rep.is_positive() => RcptOutcome::Delivered(rep.clone()),
            None => RcptOutcome::Refused(rep.clone()),
        })
        .collect())
}

/// RFC 3461 §4 xtext: "+" and "=" and anything outside 33-126 as +HH.
pub fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_doubles_leading_dots_and_terminates() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b".start"), b"..start\r\n.\r\n");
    }

    #[test]
    fn xtext_encodes_specials() {
        assert_eq!(xtext("test@foo.com"), "test@foo.com");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
