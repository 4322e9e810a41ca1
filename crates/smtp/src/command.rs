//! Turning bytes into SMTP commands, with no socket in sight.
//!
//! [`LineBuffer`] frames lines under a length limit (RFC 5321 §4.5.3.1.4;
//! RFC 4954 §4 for AUTH). [`parse`] turns one line into a [`Command`]: AUTH
//! is parsed here (so an unknown mechanism is `504`, not a syntax error, and
//! its line may be 12288 octets), everything else by Stalwart's `smtp-proto`.

use std::borrow::Cow;

use smtp_proto::{Error as ProtoError, Request};

/// Buffered bytes from the client, cut into lines.
#[derive(Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Inside an over-long line: drop bytes until its LF.
    discarding: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its CRLF.
    Complete(Vec<u8>),
    /// A line over the limit was read and dropped whole.
    TooLong,
}

impl LineBuffer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && !self.discarding
    }

    /// Everything buffered and not yet consumed (for DATA, which frames differently).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Up to `n` buffered bytes from the front (BDAT payload).
    pub fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.buf.len());
        self.buf.drain(..n).collect()
    }

    /// Drop whatever the client sent ahead. STARTTLS must do this: bytes
    /// pipelined after it arrived in plain text and must not be executed
    /// inside TLS (CVE-2011-0411 and the STARTTLS injection class).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// The next line, if a whole one is buffered. `max` counts the CRLF.
    ///
    /// Only CRLF ends a line (RFC 5321 §2.3.8: no other sequence may be
    /// recognised as a terminator). A bare LF or CR stays inside the line, where
    /// `parse` refuses it: were a bare LF a terminator here and not at a front
    /// end (or the other way round), the two would see different commands —
    /// the command-level form of SMTP smuggling.
    pub fn next_line(&mut self, max: usize) -> Option<Line> {
        let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            if self.buf.len() > max {
                // Do not buffer an endless line: remember to skip its rest.
                self.discarding = true;
            }
            if self.discarding {
                // Keep a trailing CR: its LF may arrive in the next segment.
                let cr = self.buf.last() == Some(&b'\r');
                self.buf.clear();
                if cr {
                    self.buf.push(b'\r');
                }
            }
            return None;
        };
        let mut line: Vec<u8> = self.buf.drain(..pos + 2).collect();
        if self.discarding {
            self.discarding = false;
            return Some(Line::TooLong);
        }
        if line.len() > max {
            return Some(Line::TooLong);
        }
        line.truncate(pos);
        Some(Line::Complete(line))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// Empty for the null reverse-path `<>`.
    pub address: String,
    pub size: Option<u64>,
    pub body: Option<&'static str>,
    pub smtputf8: bool,
    pub ret: Option<&'static str>,
    pub env_id: Option<String>,
    /// RFC 4954 §5 AUTH= parameter, as given (xtext).
    pub auth: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub address: String,
    pub notify: Vec<&'static str>,
    pub orcpt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Bdat {
        size: usize,
        last: bool,
    },
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    StartTls,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    Etrn(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// 500 5.5.1
    Unrecognized,
    /// 501 5.5.4 with the expected syntax
    Syntax(Cow<'static, str>),
    /// 555 5.5.4 (RFC 5321 §4.1.1.11: MAIL/RCPT parameter not recognised)
    Parameter(String),
    /// 500 5.5.2: NUL, bare CR or bare LF inside a command
    BadCharacters,
}

pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    if line.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(ParseError::BadCharacters);
    }
    if line.len() >= 4
        && line[..4].eq_ignore_ascii_case(b"AUTH")
        && (line.len() == 4 || line[4] == b' ')
    {
        return parse_auth(&line[4..]);
    }
    // RFC 3207 §4: `STARTTLS` takes no parameters. smtp-proto skips
    // whatever follows the verb; a parameter is a syntax error, and TLS
    // does not start.
    if line.len() > 8
        && line[..8].eq_ignore_ascii_case(b"STARTTLS")
        && line[8] == b' '
        && line[8..].iter().any(|&b| b != b' ')
    {
        return Err(ParseError::Syntax(Cow::Borrowed("STARTTLS")));
    }
    let mut framed = Vec::with_capacity(line.len() + 2);
    framed.extend_from_slice(line);
    framed.extend_from_slice(b"\r\n");
    let req = Request::parse(&mut framed.iter()).map_err(|e| match e {
        ProtoError::UnknownCommand => ParseError::Unrecognized,
        ProtoError::SyntaxError { syntax } => ParseError::Syntax(Cow::Borrowed(syntax)),
        ProtoError::InvalidSenderAddress => {
            ParseError::Syntax(Cow::Borrowed("MAIL FROM:<address> [parameters]"))
        }
        ProtoError::InvalidRecipientAddress => {
            ParseError::Syntax(Cow::Borrowed("RCPT TO:<address> [parameters]"))
        }
        ProtoError::InvalidParameter { param } => ParseError::Parameter(param.to_owned()),
        ProtoError::UnsupportedParameter { param } => ParseError::Parameter(param),
        _ => ParseError::Syntax(Cow::Borrowed("command")),
    })?;
    Ok(match req {
        Request::Ehlo { host } => Command::Ehlo(host.into_owned()),
        Request::Helo { host } => Command::Helo(host.into_owned()),
        Request::Lhlo { .. } => return Err(ParseError::Unrecognized),
        Request::Mail { from } => Command::Mail(MailFrom {
            address: from.address.into_owned(),
            size: (from.size > 0).then_some(from.size as u64),
            body: if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
                Some("8BITMIME")
            } else if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
                Some("BINARYMIME")
            } else if from.flags & smtp_proto::MAIL_BODY_7BIT != 0 {
                Some("7BIT")
            } else {
                None
            },
            smtputf8: from.flags & smtp_proto::MAIL_SMTPUTF8 != 0,
            ret: if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
                Some("FULL")
            } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
                Some("HDRS")
            } else {
                None
            },
            env_id: from.env_id.map(Cow::into_owned),
            auth: from.auth.map(Cow::into_owned),
        }),
        Request::Rcpt { to } => Command::Rcpt(RcptTo {
            address: to.address.into_owned(),
            notify: [
                (smtp_proto::RCPT_NOTIFY_SUCCESS, "SUCCESS"),
                (smtp_proto::RCPT_NOTIFY_FAILURE, "FAILURE"),
                (smtp_proto::RCPT_NOTIFY_DELAY, "DELAY"),
                (smtp_proto::RCPT_NOTIFY_NEVER, "NEVER"),
            ]
            .into_iter()
            .filter(|(f, _)| to.flags & f != 0)
            .map(|(_, n)| n)
            .collect(),
            orcpt: to.orcpt.map(Cow::into_owned),
        }),
        Request::Bdat {
            chunk_size,
            is_last,
        } => Command::Bdat {
            size: chunk_size,
            last: is_last,
        },
        Request::Auth { .. } => unreachable_auth(),
        Request::Noop { .. } => Command::Noop,
        Request::Vrfy { .. } => Command::Vrfy,
        Request::Expn { .. } => Command::Expn,
        Request::Help { .. } => Command::Help,
        Request::Etrn { name } => Command::Etrn(name.into_owned()),
        Request::Atrn { .. } | Request::Burl { .. } => return Err(ParseError::Unrecognized),
        Request::StartTls => Command::StartTls,
        Request::Data => Command::Data,
        Request::Rset => Command::Rset,
        Request::Quit => Command::Quit,
    })
}

// AUTH lines never reach smtp-proto (see `parse`); keep the match total.
fn unreachable_auth() -> Command {
    Command::Noop
}

/// `AUTH SP mechanism [SP initial-response]` (RFC 4954 §4).
fn parse_auth(rest: &[u8]) -> Result<Command, ParseError> {
    let syntax = || ParseError::Syntax(Cow::Borrowed("AUTH mechanism [initial-response]"));
    let text = std::str::from_utf8(rest).map_err(|_| syntax())?;
    let mut parts = text.split(' ').filter(|p| !p.is_empty());
    let mechanism = parts.next().ok_or_else(syntax)?;
    let initial = parts.next().map(str::to_owned);
    if parts.next().is_some() {
        return Err(syntax());
    }
    // RFC 4422 §3.1: mechanism names are 1-20 of [A-Z0-9-_].
    if mechanism.len() > 20
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(syntax());
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut b = LineBuffer::default();
        b.push(input);
        std::iter::from_fn(|| b.next_line(max)).collect()
    }

    #[test]
    fn only_crlf_ends_a_line_and_bare_lf_or_cr_stay_inside_it() {
        assert_eq!(
            lines(b"EHLO a\r\nNOOP\nQUIT\r\nRSET\rQUIT\r\n", 100),
            [
                Line::Complete(b"EHLO a".to_vec()),
                Line::Complete(b"NOOP\nQUIT".to_vec()),
                Line::Complete(b"RSET\rQUIT".to_vec())
            ]
        );
        assert_eq!(parse(b"NOOP\nQUIT"), Err(ParseError::BadCharacters));
    }

    #[test]
    fn crlf_split_across_segments_after_an_over_long_line_still_ends_it() {
        let mut b = LineBuffer::default();
        b.push(&[b'x'; 40]);
        b.push(b"x\r");
        assert_eq!(b.next_line(16), None);
        b.push(b"\nNOOP\r\n");
        assert_eq!(b.next_line(16), Some(Line::TooLong));
        assert_eq!(b.next_line(16), Some(Line::Complete(b"NOOP".to_vec())));
    }

    #[test]
    fn over_long_line_is_dropped_whole_and_next_line_survives() {
        let mut input = vec![b'x'; 3000];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let mut b = LineBuffer::default();
        // Arrives in pieces, as over TCP.
        let mut out = Vec::new();
        for chunk in input.chunks(700) {
            b.push(chunk);
            while let Some(l) = b.next_line(512) {
                out.push(l);
            }
        }
        assert_eq!(out, [Line::TooLong, Line::Complete(b"NOOP".to_vec())]);
    }

    #[test]
    fn partial_line_waits_for_more() {
        let mut b = LineBuffer::default();
        b.push(b"EHL");
        assert_eq!(b.next_line(512), None);
        b.push(b"O x\r\n");
        assert_eq!(b.next_line(512), Some(Line::Complete(b"EHLO x".to_vec())));
    }

    #[test]
    fn starttls_with_a_parameter_is_a_syntax_error_and_without_one_is_starttls() {
        for line in [&b"STARTTLS"[..], b"starttls", b"StartTLS", b"STARTTLS  "] {
            assert_eq!(parse(line), Ok(Command::StartTls), "{line:?}");
        }
        for line in [
            &b"STARTTLS foo"[..],
            b"starttls x",
            b"STARTTLS  TLSv1.3 now",
        ] {
            assert_eq!(
                parse(line),
                Err(ParseError::Syntax(Cow::Borrowed("STARTTLS"))),
                "{line:?}"
            );
        }
        // Another verb that only begins with it is still no command.
        assert_eq!(parse(b"STARTTLSX"), Err(ParseError::Unrecognized));
    }

    #[test]
    fn ehlo_mail_rcpt_parse() {
        assert_eq!(
            parse(b"EHLO client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        let Ok(Command::Mail(m)) = parse(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME") else {
            panic!()
        };
        assert_eq!(
            (m.address.as_str(), m.size, m.body),
            ("a@b.example", Some(1000), Some("8BITMIME"))
        );
        let Ok(Command::Mail(m)) = parse(b"MAIL FROM:<>") else {
            panic!()
        };
        assert_eq!(m.address, "");
        let Ok(Command::Rcpt(r)) = parse(b"RCPT TO:<x@y.example> NOTIFY=SUCCESS,FAILURE") else {
            panic!()
        };
        assert_eq!(r.address, "x@y.example");
        assert_eq!(r.notify, ["SUCCESS", "FAILURE"]);
    }

    #[test]
    fn auth_parses_mechanism_and_initial_response() {
        assert_eq!(
            parse(b"AUTH plain AHRpbQB0YW5zdGFhZnRhbnN0YWFm"),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AHRpbQB0YW5zdGFhZnRhbnN0YWFm".into())
            })
        );
        assert_eq!(
            parse(b"AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        // Unknown but well-formed: parsed, so the session answers 504, not 501.
        assert_eq!(
            parse(b"AUTH X-UNKNOWN"),
            Ok(Command::Auth {
                mechanism: "X-UNKNOWN".into(),
                initial: None
            })
        );
        assert!(matches!(parse(b"AUTH"), Err(ParseError::Syntax(_))));
        assert!(matches!(
            parse(b"AUTH PLAIN a b"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse(b"AUTH THIS-NAME-IS-FAR-TOO-LONG-FOR-SASL"),
            Err(ParseError::Syntax(_))
        ));
    }

    #[test]
    fn unknown_and_malformed_commands() {
        assert_eq!(parse(b"FROBNICATE"), Err(ParseError::Unrecognized));
        assert!(parse(b"MAIL FROM:").is_err());
        assert!(parse(b"RCPT TO:<unterminated").is_err());
        assert_eq!(parse(b"NOOP\0x"), Err(ParseError::BadCharacters));
        assert_eq!(parse(b"NOOP\rx"), Err(ParseError::BadCharacters));
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..400 {
            let mut line = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                line.push((seed & 0xff) as u8);
            }
            let _ = parse(&line);
            for prefix in [
                &b"MAIL FROM:"[..],
                b"RCPT TO:",
                b"AUTH ",
                b"EHLO ",
                b"BDAT ",
            ] {
                let mut l = prefix.to_vec();
                l.extend_from_slice(&line);
                let _ = parse(&l);
            }
        }
    }
}
