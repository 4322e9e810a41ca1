//! The next hop's replies, sans-IO: bytes in, [`Reply`] values out, parsed
//! by `smtp-proto`'s response parser (multi-line replies, RFC 5321
//! §4.2.1; enhanced status codes, RFC 2034) and its EHLO parser
//! (capabilities and AUTH mechanisms as bit flags).

use std::fmt;

use authrelay_sasl::Mechanism;
use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EhloResponse, Error as ProtoError};

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedStatus {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One reply of the next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The RFC 2034 enhanced status code, when the hop sent one.
    pub enhanced: Option<EnhancedStatus>,
    /// The text, one entry per line, without the codes.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx and 3xx (RFC 5321 §4.2.1).
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 5xx: the hop will not change its mind (RFC 5321 §4.2.1).
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    fn from_response(code: u16, esc: [u8; 3], message: &str) -> Reply {
        // smtp-proto reports "no enhanced code" as 0.0.0; RFC 3463 classes
        // are 2, 4 and 5.
        let enhanced = (esc[0] != 0)
            .then(|| EnhancedStatus::new(esc[0], u16::from(esc[1]), u16::from(esc[2])));
        let lines = message
            .split('\n')
            // A line with nothing after the code leaves its CR behind.
            .map(|l| l.trim_end_matches('\r').to_owned())
            .collect();
        Reply {
            code,
            enhanced,
            lines,
        }
    }
}

/// `550 5.1.1 no such user`, lines joined by " / " — the form log lines,
/// `last_error` and DSN diagnostics have always shown. The enhanced code is
/// shown on every line, as RFC 2034 §3 has the hop send it.
impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for (i, line) in self.lines.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { " / " })?;
            match (self.enhanced, line.is_empty()) {
                (Some(e), true) => write!(f, "{e}")?,
                (Some(e), false) => write!(f, "{e} {line}")?,
                (None, _) => f.write_str(line)?,
            }
        }
        Ok(())
    }
}

/// Replies that cannot be read: the connection is of no further use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// Over smtp-proto's 4096 bytes of text for one reply.
    #[error("reply too long")]
    TooLong,
    #[error("malformed reply: {0}")]
    Malformed(String),
}

impl From<ProtoError> for ReplyError {
    fn from(e: ProtoError) -> Self {
        match e {
            ProtoError::ResponseTooLong => ReplyError::TooLong,
            ProtoError::InvalidResponse { code } => {
                ReplyError::Malformed(format!("unexpected code {code}"))
            }
            ProtoError::SyntaxError { syntax } => ReplyError::Malformed(syntax.to_owned()),
            other => ReplyError::Malformed(format!("{other:?}")),
        }
    }
}

/// Turns the bytes a hop sends into replies, whatever way the network cuts
/// them; bytes after a reply wait for the next one.
#[derive(Default)]
pub struct ReplyReader {
    receiver: ResponseReceiver,
    /// Received, not yet parsed.
    pending: Vec<u8>,
    /// The bytes of the reply being read, for the EHLO parser.
    raw: Vec<u8>,
    last_raw: Vec<u8>,
}

impl ReplyReader {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// The next whole reply, or `None` until more bytes come.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let mut rest = self.pending.iter();
        let result = self.receiver.parse(&mut rest);
        let consumed = self.pending.len() - rest.len();
        self.raw.extend_from_slice(&self.pending[..consumed]);
        self.pending.drain(..consumed);
        match result {
            Ok(r) => {
                self.receiver.reset();
                self.last_raw = std::mem::take(&mut self.raw);
                Ok(Some(Reply::from_response(r.code, r.esc, &r.message)))
            }
            Err(ProtoError::NeedsMoreData { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Bytes the hop sent after the last reply (pipelined, or injected
    /// before a TLS handshake).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The wire bytes of the last reply returned.
    pub fn last_raw(&self) -> &[u8] {
        &self.last_raw
    }
}

/// What the hop offered in its EHLO reply.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extensions {
    /// smtp-proto's `EXT_*` flags.
    capabilities: u32,
    /// smtp-proto's `AUTH_*` flags.
    auth: u64,
    /// The AUTH keyword's words as the hop sent them, for messages: the
    /// flags above lose the hop's order and names smtp-proto does not know.
    auth_words: Vec<String>,
    /// Our own `XTRACE` (between authrelay instances), which smtp-proto
    /// does not know.
    xtrace: bool,
}

impl Extensions {
    /// `reply` is a positive EHLO reply, `raw` its bytes. A one-line reply
    /// offers nothing (RFC 5321 §4.1.1.1: the first line is the greeting).
    pub fn from_ehlo(reply: &Reply, raw: &[u8]) -> Result<Self, ReplyError> {
        if reply.code != 250 || reply.lines.len() < 2 {
            return Ok(Extensions::default());
        }
        let ehlo = EhloResponse::parse(&mut raw.iter())?;
        let keyword = |name: &str| {
            reply.lines.iter().skip(1).find_map(|l| {
                let mut words = l.split_whitespace();
                words
                    .next()
                    .filter(|w| w.eq_ignore_ascii_case(name))
                    .map(|_| words.map(str::to_owned).collect::<Vec<_>>())
            })
        };
        Ok(Extensions {
            capabilities: ehlo.capabilities,
            auth: ehlo.auth_mechanisms,
            auth_words: keyword("AUTH").unwrap_or_default(),
            xtrace: keyword("XTRACE").is_some(),
        })
    }

    /// One of smtp-proto's `EXT_*` flags.
    pub fn has(&self, ext: u32) -> bool {
        self.capabilities & ext != 0
    }

    pub fn has_xtrace(&self) -> bool {
        self.xtrace
    }

    /// smtp-proto's `AUTH_*` flags of the mechanisms the hop offers.
    pub fn auth_flags(&self) -> u64 {
        self.auth
    }

    /// The AUTH mechanisms as the hop named them.
    pub fn auth_words(&self) -> &[String] {
        &self.auth_words
    }
}

/// smtp-proto's flag for each mechanism the SASL crate speaks.
pub fn auth_flag(m: Mechanism) -> u64 {
    match m {
        Mechanism::Plain => smtp_proto::AUTH_PLAIN,
        Mechanism::Login => smtp_proto::AUTH_LOGIN,
        Mechanism::CramMd5 => smtp_proto::AUTH_CRAM_MD5,
        Mechanism::DigestMd5 => smtp_proto::AUTH_DIGEST_MD5,
        Mechanism::ScramSha1 => smtp_proto::AUTH_SCRAM_SHA_1,
        Mechanism::ScramSha1Plus => smtp_proto::AUTH_SCRAM_SHA_1_PLUS,
        Mechanism::ScramSha256 => smtp_proto::AUTH_SCRAM_SHA_256,
        Mechanism::ScramSha256Plus => smtp_proto::AUTH_SCRAM_SHA_256_PLUS,
        Mechanism::External => smtp_proto::AUTH_EXTERNAL,
        Mechanism::OAuthBearer => smtp_proto::AUTH_OAUTHBEARER,
        Mechanism::XOAuth2 => smtp_proto::AUTH_XOAUTH2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one by one, as a network might cut them.
    fn replies(chunks: &[&[u8]]) -> Vec<Reply> {
        let mut r = ReplyReader::default();
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c);
            while let Some(reply) = r.next_reply().unwrap() {
                out.push(reply);
            }
        }
        out
    }

    #[test]
    fn multi_line_reply_is_one_reply_rfc5321_4_2_1() {
        let r = replies(&[b"250-first\r\n250-second\r\n250 last\r\n"]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].code, 250);
        assert_eq!(r[0].lines, ["first", "second", "last"]);
        assert_eq!(r[0].to_string(), "250 first / second / last");
    }

    #[test]
    fn a_reply_split_across_reads_is_read_whole() {
        let r = replies(&[b"55", b"0 5.1.", b"1 no such", b" user\r", b"\n"]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].to_string(), "550 5.1.1 no such user");
    }

    #[test]
    fn every_cut_of_the_bytes_gives_the_same_replies() {
        let wire: &[u8] = b"220 mx.example ESMTP\r\n250-mx.example\r\n250-AUTH PLAIN\r\n\
                            250 8BITMIME\r\n550 5.1.1 no such user\r\n354 go ahead\r\n";
        let whole = replies(&[wire]);
        assert_eq!(whole.len(), 4);
        for cut in 1..wire.len() {
            let (a, b) = wire.split_at(cut);
            assert_eq!(replies(&[a, b]), whole, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(replies(&bytes), whole, "one byte at a time");
    }

    #[test]
    fn enhanced_status_code_is_taken_apart_rfc2034() {
        let r = &replies(&[b"550 5.1.10 null MX\r\n"])[0];
        assert_eq!(r.enhanced, Some(EnhancedStatus::new(5, 1, 10)));
        assert_eq!(r.lines, ["null MX"]);
        assert_eq!(r.to_string(), "550 5.1.10 null MX");
        let multi = &replies(&[b"452-4.2.2 mailbox\r\n452 4.2.2 full\r\n"])[0];
        assert_eq!(multi.to_string(), "452 4.2.2 mailbox / 4.2.2 full");
    }

    #[test]
    fn text_that_only_starts_with_digits_is_not_an_enhanced_code() {
        let r = &replies(&[b"220 10.0.0.1 ESMTP ready\r\n"])[0];
        assert_eq!(r.enhanced, None);
        assert_eq!(r.to_string(), "220 10.0.0.1 ESMTP ready");
    }

    #[test]
    fn pipelined_bytes_after_a_reply_wait_for_the_next() {
        let mut r = ReplyReader::default();
        r.feed(b"220 go ahead\r\n250 injected\r\n");
        assert_eq!(r.next_reply().unwrap().unwrap().code, 220);
        assert!(r.has_pending(), "a STARTTLS must see the injected bytes");
        assert_eq!(r.next_reply().unwrap().unwrap().code, 250);
        assert!(!r.has_pending());
    }

    #[test]
    fn a_reply_without_text_keeps_its_code() {
        let r = &replies(&[b"334 \r\n"])[0];
        assert_eq!((r.code, r.lines.as_slice()), (334, &["".to_owned()][..]));
        assert_eq!(replies(&[b"250 2.0.0\r\n"])[0].to_string(), "250 2.0.0");
    }

    #[test]
    fn a_reply_that_is_not_smtp_is_an_error() {
        let mut r = ReplyReader::default();
        r.feed(b"HTTP/1.1 400 Bad Request\r\n");
        assert!(matches!(r.next_reply(), Err(ReplyError::Malformed(_))));
    }

    #[test]
    fn a_reply_over_4096_bytes_is_too_long() {
        let mut r = ReplyReader::default();
        for _ in 0..100 {
            r.feed(b"250-");
            r.feed(&[b'x'; 100]);
            r.feed(b"\r\n");
        }
        let result = r.next_reply();
        assert_eq!(result, Err(ReplyError::TooLong));
    }

    fn offers(e: &Extensions, m: Mechanism) -> bool {
        e.auth_flags() & auth_flag(m) != 0
    }

    fn ehlo(bytes: &[u8]) -> Extensions {
        let mut r = ReplyReader::default();
        r.feed(bytes);
        let reply = r.next_reply().unwrap().unwrap();
        Extensions::from_ehlo(&reply, r.last_raw()).unwrap()
    }

    #[test]
    fn ehlo_keywords_become_capabilities_rfc5321_4_1_1_1() {
        let e = ehlo(
            b"250-mx.example greets you\r\n250-8BITMIME\r\n250-DSN\r\n250-STARTTLS\r\n\
              250-AUTH LOGIN PLAIN SCRAM-SHA-256-PLUS\r\n250-XTRACE\r\n250 SMTPUTF8\r\n",
        );
        for ext in [
            smtp_proto::EXT_8BIT_MIME,
            smtp_proto::EXT_DSN,
            smtp_proto::EXT_START_TLS,
            smtp_proto::EXT_AUTH,
            smtp_proto::EXT_SMTP_UTF8,
        ] {
            assert!(e.has(ext), "{ext:#x}");
        }
        assert!(!e.has(smtp_proto::EXT_CHUNKING));
        assert!(e.has_xtrace());
        assert!(offers(&e, Mechanism::Plain) && offers(&e, Mechanism::Login));
        assert!(offers(&e, Mechanism::ScramSha256Plus));
        assert!(!offers(&e, Mechanism::ScramSha256) && !offers(&e, Mechanism::CramMd5));
        assert_eq!(e.auth_words(), ["LOGIN", "PLAIN", "SCRAM-SHA-256-PLUS"]);
    }

    #[test]
    fn the_greeting_line_is_not_an_extension() {
        assert_eq!(ehlo(b"250 STARTTLS\r\n"), Extensions::default());
        assert!(!ehlo(b"250-STARTTLS\r\n250 HELP\r\n").has(smtp_proto::EXT_START_TLS));
    }

    #[test]
    fn every_sasl_mechanism_has_its_own_flag() {
        let flags: std::collections::HashSet<u64> =
            Mechanism::ALL.into_iter().map(auth_flag).collect();
        assert_eq!(flags.len(), Mechanism::ALL.len());
        for m in Mechanism::ALL {
            let line = format!("250-h\r\n250 AUTH {}\r\n", m.name());
            assert!(offers(&ehlo(line.as_bytes()), m), "{m}");
        }
    }
}
