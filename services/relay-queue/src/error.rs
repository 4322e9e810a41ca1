//! Why a delivery to a next hop did not go through, as a type: the one
//! place where a failure becomes an RFC 3463 status for the DSN and a
//! decision to retry or to give up ([`DeliveryError::verdict`]). The texts
//! are what log lines, `last_error` and DSN diagnostics show; nothing reads
//! them back.

use authrelay_sasl::Mechanism;

use crate::client::reply::{EnhancedStatus, Reply, ReplyError};
use crate::mx::RouteError;
use crate::oauth::TokenError;

/// Try the recipient again later, or give up on it and bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    Later,
    Never,
}

/// What a failure means for the mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The RFC 3463 status a DSN reports.
    pub status: EnhancedStatus,
    pub retry: Retry,
}

impl Verdict {
    const fn later(class: u8, subject: u16, detail: u16) -> Verdict {
        Verdict {
            status: EnhancedStatus::new(class, subject, detail),
            retry: Retry::Later,
        }
    }

    const fn never(class: u8, subject: u16, detail: u16) -> Verdict {
        Verdict {
            status: EnhancedStatus::new(class, subject, detail),
            retry: Retry::Never,
        }
    }
}

impl Reply {
    /// A refusal: 5xx gives up, anything else tries again (RFC 5321
    /// §4.2.1); the status is the hop's enhanced code when it sent one of
    /// class 4 or 5, else the generic one of its class.
    pub fn verdict(&self) -> Verdict {
        let retry = if self.is_permanent() {
            Retry::Never
        } else {
            Retry::Later
        };
        let status = match self.enhanced {
            Some(e) if e.class == 4 || e.class == 5 => e,
            _ if (400..500).contains(&self.code) => EnhancedStatus::new(4, 0, 0),
            _ => EnhancedStatus::new(5, 0, 0),
        };
        Verdict { status, retry }
    }
}

/// The connection broke down under us (every recipient shares it).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("timeout waiting for reply")]
    ReadTimeout,
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("connection closed by next hop")]
    Closed,
    #[error("timeout writing")]
    WriteTimeout,
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// Plain-text bytes pipelined before the TLS handshake would be read as
    /// if they came over TLS (the CVE-2011-0411 class of injection).
    #[error("next hop sent data before the TLS handshake")]
    DataBeforeTls,
}

/// The STARTTLS handshake failed; opportunistic TLS retries in the clear.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Handshake(std::io::Error),
}

/// AUTH to the next hop failed. The texts name the mechanism and hop, never
/// a secret.
#[derive(Debug)]
pub enum AuthError {
    /// Nothing the hop offers is allowed by the entry (or safe here).
    NoMechanism { host: String, why: String },
    NoTokenSource {
        mech: Mechanism,
        host: String,
        name: String,
    },
    Token {
        mech: Mechanism,
        host: String,
        source_name: String,
        error: TokenError,
    },
    /// The hop said no; `token_status` is the status of the error JSON a
    /// bearer mechanism got first.
    Refused {
        mech: Mechanism,
        host: String,
        reply: Reply,
        token_status: Option<String>,
    },
    /// Our side could not go on (a malformed challenge, a server proof
    /// that did not verify).
    Exchange {
        mech: Mechanism,
        host: String,
        why: String,
    },
}

impl AuthError {
    /// What went wrong, without naming the mechanism and hop: what the
    /// `AUTH=client, ... failure:` log line shows.
    pub fn why(&self) -> String {
        match self {
            AuthError::NoMechanism { why, .. } | AuthError::Exchange { why, .. } => why.clone(),
            AuthError::NoTokenSource { name, .. } => {
                format!("token source {name:?} is not configured")
            }
            AuthError::Token {
                source_name, error, ..
            } => format!("no access token from token source {source_name}: {error}"),
            AuthError::Refused {
                reply,
                token_status: Some(status),
                ..
            } => format!("{reply} (token status {status})"),
            AuthError::Refused { reply, .. } => reply.to_string(),
        }
    }
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::NoMechanism { host, why } => write!(f, "AUTH to {host}: {why}"),
            AuthError::Token { mech, host, .. } => {
                write!(f, "AUTH {mech} to {host}: {}", self.why())
            }
            AuthError::NoTokenSource { mech, host, .. }
            | AuthError::Refused { mech, host, .. }
            | AuthError::Exchange { mech, host, .. } => {
                write!(f, "AUTH {mech} to {host} failed: {}", self.why())
            }
        }
    }
}

impl std::error::Error for AuthError {}

/// Why mail for some recipients did not reach a next hop this time.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("connect to {host}:{port} timed out")]
    ConnectTimeout { host: String, port: u16 },
    #[error("connect to {host}:{port}: {error}")]
    Connect {
        host: String,
        port: u16,
        error: std::io::Error,
    },
    #[error("no greeting: {0}")]
    NoGreeting(LinkError),
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The hop refused the session or the transaction (greeting, HELO,
    /// MAIL, DATA).
    #[error("{0}")]
    Reply(Reply),
    #[error("TLS handshake: {0}")]
    Tls(#[from] TlsError),
    #[error("STARTTLS refused: {0}")]
    StartTlsRefused(Reply),
    #[error("{host}:{port} does not offer STARTTLS and TLS is required")]
    TlsNotOffered { host: String, port: u16 },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The host status cache says the hop did not answer a moment ago.
    #[error("host status: {host}:{port} did not answer recently ({why})")]
    HostDown {
        host: String,
        port: u16,
        why: String,
    },
    #[error("no MX host of {domain} answered: {}", tried.join("; "))]
    NoMxAnswered { domain: String, tried: Vec<String> },
}

impl DeliveryError {
    /// The one mapping of a failure to a DSN status and a retry decision.
    /// Only the hop's 5xx and a domain that cannot take mail give up:
    /// everything on our side or in the network (TLS, AUTH — a wrong
    /// password is the operator's to fix, not a reason to bounce) waits for
    /// the next attempt and, at worst, the queue lifetime.
    pub fn verdict(&self) -> Verdict {
        use DeliveryError as E;
        match self {
            E::Reply(reply) => reply.verdict(),
            // RFC 7505 §4.1.
            E::Route(RouteError::NullMx(_)) => Verdict::never(5, 1, 10),
            // RFC 3463 X.1.2: bad destination system address.
            E::Route(RouteError::NoSuchDomain(_)) => Verdict::never(5, 1, 2),
            // X.4.3: directory server failure.
            E::Route(RouteError::Temporary(..)) => Verdict::later(4, 4, 3),
            // X.4.1: no answer from host.
            E::ConnectTimeout { .. }
            | E::Connect { .. }
            | E::HostDown { .. }
            | E::NoMxAnswered { .. } => Verdict::later(4, 4, 1),
            // X.5.0: the hop does not speak SMTP as we know it.
            E::Link(LinkError::Reply(_)) | E::NoGreeting(LinkError::Reply(_)) => {
                Verdict::later(4, 5, 0)
            }
            // X.4.2: bad connection.
            E::Link(_) | E::NoGreeting(_) => Verdict::later(4, 4, 2),
            // X.7.5: cryptographic failure.
            E::Tls(_) => Verdict::later(4, 7, 5),
            // X.7.10: encryption needed (RFC 5248 registry).
            E::StartTlsRefused(_) | E::TlsNotOffered { .. } => Verdict::later(4, 7, 10),
            // RFC 4954 §6: 4.7.0, temporary authentication failure.
            E::Auth(_) => Verdict::later(4, 7, 0),
        }
    }

    /// The hop did not answer at all: every message for it shares this, so
    /// the host status cache remembers it and MX routing tries the next host.
    pub fn hop_unreachable(&self) -> bool {
        matches!(
            self,
            DeliveryError::ConnectTimeout { .. }
                | DeliveryError::Connect { .. }
                | DeliveryError::NoGreeting(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> Reply {
        Reply {
            code,
            enhanced: enhanced.map(|(c, s, d)| EnhancedStatus::new(c, s, d)),
            lines: vec![text.to_owned()],
        }
    }

    fn status(e: &DeliveryError) -> String {
        e.verdict().status.to_string()
    }

    #[test]
    fn a_5xx_reply_gives_up_with_its_enhanced_status() {
        let e = DeliveryError::Reply(reply(550, Some((5, 1, 1)), "no such user"));
        assert_eq!(e.verdict().retry, Retry::Never);
        assert_eq!(status(&e), "5.1.1");
        assert_eq!(e.to_string(), "550 5.1.1 no such user");
    }

    #[test]
    fn a_4xx_reply_is_retried_with_its_enhanced_status() {
        let e = DeliveryError::Reply(reply(452, Some((4, 2, 2)), "full"));
        assert_eq!(e.verdict().retry, Retry::Later);
        assert_eq!(status(&e), "4.2.2");
    }

    #[test]
    fn a_reply_without_enhanced_code_gets_the_generic_status_of_its_class() {
        let perm = reply(554, None, "transaction failed");
        assert_eq!(perm.verdict(), Verdict::never(5, 0, 0));
        let temp = reply(421, None, "closing");
        assert_eq!(temp.verdict(), Verdict::later(4, 0, 0));
        // 2.x.x is a success code, not a failure's status.
        let odd = reply(550, Some((2, 0, 0)), "odd");
        assert_eq!(odd.verdict(), Verdict::never(5, 0, 0));
    }

    #[test]
    fn null_mx_bounces_with_rfc7505_status() {
        let e = DeliveryError::Route(RouteError::NullMx("null.example".into()));
        assert_eq!(e.verdict(), Verdict::never(5, 1, 10));
    }

    #[test]
    fn a_domain_that_does_not_exist_bounces_with_5_1_2() {
        let e = DeliveryError::Route(RouteError::NoSuchDomain("gone.example".into()));
        assert_eq!(e.verdict(), Verdict::never(5, 1, 2));
    }

    #[test]
    fn dns_trouble_is_retried_with_4_4_3() {
        let e = DeliveryError::Route(RouteError::Temporary("f.example".into(), "SERVFAIL".into()));
        assert_eq!(e.verdict(), Verdict::later(4, 4, 3));
    }

    #[test]
    fn a_hop_that_does_not_answer_is_retried_and_marked_unreachable() {
        let timeout = DeliveryError::ConnectTimeout {
            host: "mx.example".into(),
            port: 25,
        };
        let refused = DeliveryError::Connect {
            host: "mx.example".into(),
            port: 25,
            error: std::io::ErrorKind::ConnectionRefused.into(),
        };
        let silent = DeliveryError::NoGreeting(LinkError::Closed);
        for e in [&timeout, &refused, &silent] {
            assert_eq!(e.verdict().retry, Retry::Later, "{e}");
            assert!(e.hop_unreachable(), "{e}");
        }
        assert_eq!(status(&timeout), "4.4.1");
        assert_eq!(status(&silent), "4.4.2");
        assert_eq!(timeout.to_string(), "connect to mx.example:25 timed out");
        assert_eq!(
            silent.to_string(),
            "no greeting: connection closed by next hop"
        );
    }

    #[test]
    fn a_refusal_after_the_greeting_is_not_unreachable() {
        let e = DeliveryError::Reply(reply(554, None, "go away"));
        assert!(!e.hop_unreachable());
        assert!(!DeliveryError::Link(LinkError::ReadTimeout).hop_unreachable());
    }

    #[test]
    fn tls_failures_are_retried_whatever_the_hop_replied() {
        let refused = DeliveryError::StartTlsRefused(reply(554, Some((5, 7, 0)), "no TLS"));
        assert_eq!(refused.verdict(), Verdict::later(4, 7, 10));
        let handshake = DeliveryError::Tls(TlsError::Timeout);
        assert_eq!(handshake.verdict(), Verdict::later(4, 7, 5));
        assert_eq!(handshake.to_string(), "TLS handshake: timed out");
        let missing = DeliveryError::TlsNotOffered {
            host: "hub".into(),
            port: 587,
        };
        assert_eq!(missing.verdict().retry, Retry::Later);
    }

    #[test]
    fn auth_failures_are_retried_not_bounced_even_on_535() {
        let e = DeliveryError::Auth(AuthError::Refused {
            mech: Mechanism::Plain,
            host: "hub".into(),
            reply: reply(535, Some((5, 7, 8)), "bad credentials"),
            token_status: None,
        });
        assert_eq!(e.verdict(), Verdict::later(4, 7, 0));
        assert_eq!(
            e.to_string(),
            "AUTH PLAIN to hub failed: 535 5.7.8 bad credentials"
        );
        let token = DeliveryError::Auth(AuthError::Token {
            mech: Mechanism::XOAuth2,
            host: "hub".into(),
            source_name: "gw".into(),
            error: TokenError::NoRefreshToken,
        });
        assert_eq!(token.verdict(), Verdict::later(4, 7, 0));
    }

    #[test]
    fn a_hop_that_does_not_speak_smtp_is_a_protocol_failure() {
        let e = DeliveryError::Link(LinkError::Reply(ReplyError::TooLong));
        assert_eq!(e.verdict(), Verdict::later(4, 5, 0));
    }
}
