//! The outbound SMTP client: one connection per next hop carrying all its
//! recipients. Replies are parsed here (multi-line, RFC 5321 §4.2.1).

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::spool::{Envelope, Recipient};

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
    #[error("{0}")]
    Temporary(String),
    #[error("{0}")]
    Permanent(String),
}

struct Conn {
    reader: BufReader<tokio::io::ReadHalf<TcpStream>>,
    writer: tokio::io::WriteHalf<TcpStream>,
    timeout: Duration,
}

impl Conn {
    async fn read_reply(&mut self) -> Result<SmtpReply, ClientError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(self.timeout, self.reader.read_line(&mut line))
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
        tokio::time::timeout(self.timeout, self.writer.write_all(bytes))
            .await
            .map_err(|_| ClientError::Temporary("timeout writing".into()))?
            .map_err(|e| ClientError::Temporary(format!("write: {e}")))
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

/// Deliver `body` for `rcpts` to `host:port`. A connection-level failure is
/// an error (every recipient shares it); otherwise one outcome per recipient.
pub async fn deliver(
    host: &str,
    port: u16,
    helo: &str,
    env: &Envelope,
    rcpts: &[&Recipient],
    body: &[u8],
    timeout: Duration,
) -> Result<Vec<RcptOutcome>, ClientError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| ClientError::Temporary(format!("connect to {host}:{port} timed out")))?
        .map_err(|e| ClientError::Temporary(format!("connect to {host}:{port}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (r, w) = tokio::io::split(stream);
    let mut c = Conn {
        reader: BufReader::new(r),
        writer: w,
        timeout,
    };
    let greeting = c.read_reply().await?;
    if !greeting.is_positive() {
        return Err(classify(&greeting));
    }
    let mut ehlo = c.send(&format!("EHLO {helo}")).await?;
    let mut esmtp = true;
    if !ehlo.is_positive() {
        ehlo = c.send(&format!("HELO {helo}")).await?;
        esmtp = false;
        if !ehlo.is_positive() {
            return Err(classify(&ehlo));
        }
    }
    let has = |ext: &str| {
        esmtp
            && ehlo.lines.iter().any(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(ext))
            })
    };
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
            mail.push_str(&format!(" ENVID={}", env.env_id));
        }
    }
    if has("AUTH") && !env.auth_param.is_empty() {
        mail.push_str(&format!(" AUTH={}", xtext(&env.auth_param)));
    }
    let rep = c.send(&mail).await?;
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
                line.push_str(&format!(" ORCPT={}", rcpt.orcpt));
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
