//! The outbound SMTP client: one connection per next hop carrying all its
//! recipients. Replies are parsed here (multi-line, RFC 5321 §4.2.1).

use std::sync::Arc;
use std::time::Duration;

use authrelay_config::{AuthInfo, OutboundTls};
use authrelay_sasl::{ChannelBinding, ChannelBindingType, Mechanism};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::oauth::TokenSource;
use crate::spool::{Envelope, Recipient};
use crate::tls::OutboundTlsConfigs;

mod auth;
use auth::authenticate;
pub use auth::choose_mechanism;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl SmtpReply {
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" / "))
    }
    fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// How one recipient fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    Delivered(String),
    /// 4xx or a connection problem: try again later.
    Deferred(String),
    /// 5xx: give up on this recipient.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hop could not be reached or did not greet us: every message for it
    /// shares this, so the host status cache remembers it.
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Temporary(String),
    #[error("{0}")]
    Permanent(String),
    /// The TLS handshake failed; opportunistic TLS retries in the clear.
    #[error("TLS handshake: {0}")]
    Tls(String),
}

/// One next hop and how to talk to it.
pub struct Hop<'a> {
    pub host: &'a str,
    pub port: u16,
    /// The address to connect to when routing already resolved `host` (MX);
    /// `None` resolves `host` at connect time.
    pub addr: Option<std::net::IpAddr>,
    pub helo: &'a str,
    pub timeout: Duration,
    pub tls: OutboundTls,
    pub authinfo: Option<&'a AuthInfo>,
    /// The token source the AuthInfo entry names, for XOAUTH2/OAUTHBEARER.
    pub tokens: Option<&'a TokenSource>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    io: BufReader<Box<dyn Io>>,
    timeout: Duration,
    tls: bool,
    channel_binding: Option<ChannelBinding>,
}

impl Conn {
    async fn read_reply(&mut self) -> Result<SmtpReply, ClientError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.timeout, self.io.read_line(&mut line))
                .await
                .map_err(|_| ClientError::Temporary("timeout waiting for reply".into()))?
                .map_err(|e| ClientError::Temporary(format!("read: {e}")))?;
            if n == 0 {
                return Err(ClientError::Temporary(
                    "connection closed by next hop".into(),
                ));
            }
            if line.len() > 4096 || lines.len() > 100 {
                return Err(ClientError::Temporary("reply too long".into()));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| ClientError::Temporary(format!("malformed reply {line:?}")))?;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or("").to_owned());
            if !more {
                return Ok(SmtpReply { code, lines });
            }
        }
    }

    async fn send(&mut self, line: &str) -> Result<SmtpReply, ClientError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        self.read_reply().await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let io = self.io.get_mut();
        let write = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| ClientError::Temporary("timeout writing".into()))?
            .map_err(|e| ClientError::Temporary(format!("write: {e}")))
    }

    /// RFC 3207: after `220` to STARTTLS, the TLS handshake; nothing the hop
    /// sent before it may be kept.
    async fn starttls(
        self,
        host: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Conn, ClientError> {
        if !self.io.buffer().is_empty() {
            // Plain-text bytes pipelined before the handshake would be read as if
            // they came over TLS (the CVE-2011-0411 class of injection).
            return Err(ClientError::Temporary(
                "next hop sent data before the TLS handshake".into(),
            ));
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| ClientError::Tls(format!("{host:?} is not a valid TLS server name")))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream =
            tokio::time::timeout(self.timeout, connector.connect(name, self.io.into_inner()))
                .await
                .map_err(|_| ClientError::Tls("timed out".into()))?
                .map_err(|e| ClientError::Tls(e.to_string()))?;
        let channel_binding =
            crate::tls::tls_exporter(stream.get_ref().1).map(|data| ChannelBinding {
                kind: ChannelBindingType::TlsExporter,
                data,
            });
        Ok(Conn {
            io: BufReader::new(Box::new(stream)),
            timeout: self.timeout,
            tls: true,
            channel_binding,
        })
    }
}

fn classify(reply: &SmtpReply) -> ClientError {
    if reply.code >= 500 {
        ClientError::Permanent(reply.text())
    } else {
        ClientError::Temporary(reply.text())
    }
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

/// The EHLO keywords of a reply (`AUTH DIGEST-MD5 CRAM-MD5` → "AUTH" with its params).
struct Extensions(Vec<String>);

impl Extensions {
    fn from_ehlo(reply: &SmtpReply) -> Self {
        // The first line is the greeting, not an extension (RFC 5321 §4.1.1.1).
        Extensions(reply.lines.iter().skip(1).cloned().collect())
    }

    fn params(&self, ext: &str) -> Option<Vec<&str>> {
        self.0.iter().find_map(|l| {
            let mut words = l.split_whitespace();
            words
                .next()
                .filter(|w| w.eq_ignore_ascii_case(ext))
                .map(|_| words.collect())
        })
    }

    fn has(&self, ext: &str) -> bool {
        self.params(ext).is_some()
    }
}

/// Deliver `body` for `rcpts` to the hop. A connection-level failure is an
/// error (every recipient shares it); otherwise one outcome per recipient.
pub async fn deliver(
    hop: &Hop<'_>,
    tls: &OutboundTlsConfigs,
    env: &Envelope,
    rcpts: &[&Recipient],
    body: &[u8],
) -> Result<Vec<RcptOutcome>, ClientError> {
    match session(hop, hop.tls, tls, env, rcpts, body).await {
        // RFC 7435: opportunistic TLS that cannot be had falls back to the
        // clear rather than leave the mail undelivered.
        Err(ClientError::Tls(why)) if hop.tls == OutboundTls::Opportunistic => {
            tracing::info!(
                "relay={}:{}, STARTTLS failed ({why}); retrying without TLS",
                hop.host,
                hop.port
            );
            session(hop, OutboundTls::None, tls, env, rcpts, body).await
        }
        Err(ClientError::Tls(why)) => Err(ClientError::Temporary(format!("TLS handshake: {why}"))),
        other => other,
    }
}

async fn ehlo(c: &mut Conn, helo: &str) -> Result<Option<Extensions>, ClientError> {
    let reply = c.send(&format!("EHLO {helo}")).await?;
    if reply.is_positive() {
        return Ok(Some(Extensions::from_ehlo(&reply)));
    }
    let reply = c.send(&format!("HELO {helo}")).await?;
    if !reply.is_positive() {
        return Err(classify(&reply));
    }
    Ok(None)
}

/// Connect, read the greeting, EHLO, and STARTTLS as `policy` says.
async fn open(
    hop: &Hop<'_>,
    policy: OutboundTls,
    tls: &OutboundTlsConfigs,
) -> Result<(Conn, Extensions), ClientError> {
    let (host, port) = (hop.host, hop.port);
    let connect = async {
        match hop.addr {
            Some(ip) => TcpStream::connect((ip, port)).await,
            None => TcpStream::connect((host, port)).await,
        }
    };
    let stream = tokio::time::timeout(hop.timeout, connect)
        .await
        .map_err(|_| ClientError::Unreachable(format!("connect to {host}:{port} timed out")))?
        .map_err(|e| ClientError::Unreachable(format!("connect to {host}:{port}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut c = Conn {
        io: BufReader::new(Box::new(stream)),
        timeout: hop.timeout,
        tls: false,
        channel_binding: None,
    };
    let greeting = match c.read_reply().await {
        Ok(g) => g,
        Err(e) => return Err(ClientError::Unreachable(format!("no greeting: {e}"))),
    };
    if !greeting.is_positive() {
        return Err(classify(&greeting));
    }
    let mut ext = ehlo(&mut c, hop.helo).await?;
    let offers_tls = ext.as_ref().is_some_and(|e| e.has("STARTTLS"));
    let use_tls = match policy {
        OutboundTls::None => false,
        OutboundTls::Opportunistic => offers_tls,
        OutboundTls::Required | OutboundTls::RequiredVerify => {
            if !offers_tls {
                let _ = c.send("QUIT").await;
                return Err(ClientError::Temporary(format!(
                    "{host}:{port} does not offer STARTTLS and TLS is required"
                )));
            }
            true
        }
    };
    if use_tls {
        let reply = c.send("STARTTLS").await?;
        if reply.code != 220 {
            if policy == OutboundTls::Opportunistic {
                return Err(ClientError::Tls(reply.text()));
            }
            return Err(ClientError::Temporary(format!(
                "STARTTLS refused: {}",
                reply.text()
            )));
        }
        let config = if policy == OutboundTls::RequiredVerify {
            tls.verified.clone()
        } else {
            tls.any_certificate.clone()
        };
        c = c.starttls(host, config).await?;
        // RFC 3207 §4.2: forget everything learnt before TLS and ask again.
        ext = ehlo(&mut c, hop.helo).await?;
    }
    Ok((c, ext.unwrap_or(Extensions(Vec::new()))))
}

/// AUTH as the hop's AuthInfo entry says, in an `AUTH client` span; `None`
/// when there is no entry or the hop does not offer AUTH.
async fn auth_step(
    c: &mut Conn,
    hop: &Hop<'_>,
    ext: &Extensions,
) -> Option<Result<Mechanism, ClientError>> {
    let (host, port) = (hop.host, hop.port);
    let info = hop.authinfo?;
    let offered = ext.params("AUTH")?;
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
        authenticate(c, host, info, hop.tokens, &offered, clear_hop),
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
pub async fn probe(hop: &Hop<'_>, tls: &OutboundTlsConfigs) -> Result<ProbeReport, ClientError> {
    let (mut c, ext) = match open(hop, hop.tls, tls).await {
        Err(ClientError::Tls(why)) => {
            return Err(ClientError::Temporary(format!("TLS handshake: {why}")));
        }
        other => other?,
    };
    let offered: Vec<String> = ext
        .params("AUTH")
        .unwrap_or_default()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let result = auth_step(&mut c, hop, &ext).await.transpose();
    let _ = c.send("QUIT").await;
    Ok(ProbeReport {
        tls: c.tls,
        offered,
        mechanism: result?,
    })
}

async fn session(
    hop: &Hop<'_>,
    policy: OutboundTls,
    tls: &OutboundTlsConfigs,
    env: &Envelope,
    rcpts: &[&Recipient],
    body: &[u8],
) -> Result<Vec<RcptOutcome>, ClientError> {
    let (mut c, ext) = open(hop, policy, tls).await?;
    if ext.has("XTRACE") {
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
    let has = |name: &str| ext.has(name);
    let mut mail = format!("MAIL FROM:<{}>", env.mail_from);
    if has("8BITMIME") && !env.body.is_empty() && env.body != "7BIT" {
        mail.push_str(&format!(" BODY={}", env.body));
    }
    if has("SMTPUTF8") && env.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if has("DSN") {
        if !env.ret.is_empty() {
            mail.push_str(&format!(" RET={}", env.ret));
        }
        if !env.env_id.is_empty() {
            mail.push_str(&format!(" ENVID={}", xtext(&env.env_id)));
        }
    }
    let mut rep = if has("AUTH") && !env.auth_param.is_empty() {
        c.send(&format!("{mail} AUTH={}", xtext(&env.auth_param)))
            .await?
    } else {
        c.send(&mail).await?
    };
    if rep.code == 555 && has("AUTH") && !env.auth_param.is_empty() {
        // RFC 4954 §5 makes AUTH= optional; some servers that offer AUTH
        // (aiosmtpd) still refuse the parameter (RFC 5321 §4.1.1.11 555).
        rep = c.send(&mail).await?;
    }
    if !rep.is_positive() {
        return Err(classify(&rep));
    }
    let mut outcomes = Vec::with_capacity(rcpts.len());
    let mut accepted = 0;
    for rcpt in rcpts {
        let mut line = format!("RCPT TO:<{}>", rcpt.address);
        if has("DSN") {
            if !rcpt.notify.is_empty() {
                line.push_str(&format!(" NOTIFY={}", rcpt.notify.join(",")));
            }
            if !rcpt.orcpt.is_empty() {
                // The spool keeps the decoded address (RFC 3461 §4.2).
                line.push_str(&format!(" ORCPT=rfc822;{}", xtext(&rcpt.orcpt)));
            }
        }
        let rep = c.send(&line).await?;
        outcomes.push(match rep.code {
            200..=299 => {
                accepted += 1;
                RcptOutcome::Delivered(String::new())
            }
            500..=599 => RcptOutcome::Failed(rep.text()),
            _ => RcptOutcome::Deferred(rep.text()),
        });
    }
    if accepted == 0 {
        let _ = c.send("QUIT").await;
        return Ok(outcomes);
    }
    let rep = c.send("DATA").await?;
    if rep.code != 354 {
        return Err(classify(&rep));
    }
    c.write(&dot_stuff(body)).await?;
    let rep = c.read_reply().await?;
    let _ = c.send("QUIT").await;
    for o in &mut outcomes {
        if let RcptOutcome::Delivered(text) = o {
            if rep.is_positive() {
                *text = rep.text();
            } else if rep.code >= 500 {
                *o = RcptOutcome::Failed(rep.text());
            } else {
                *o = RcptOutcome::Deferred(rep.text());
            }
        }
    }
    Ok(outcomes)
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
