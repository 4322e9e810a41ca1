//! The SMTP server side of authrelay, sans-IO: bytes and events in, replies
//! and actions out. No socket, no TLS, no gRPC and no clock live here — the
//! smtp-frontend service owns those and performs what this crate asks.
//!
//! - [`command`]: framing (`LineBuffer`, only CRLF ends a line) and parsing
//!   one line into a [`Command`]. MAIL, RCPT, EHLO, BDAT and the rest go
//!   through Stalwart's `smtp-proto`; AUTH and the STARTTLS-parameter check
//!   are ours, because smtp-proto only knows the mechanisms on its own list
//!   (an unknown one must be `504`, not a syntax error) and ignores what
//!   follows `STARTTLS` (RFC 3207 §4: no parameters). Lines are framed by
//!   our `LineBuffer` rather than smtp-proto's receiver so that the limit
//!   differs per state (1000 octets for commands, 12288 for AUTH answers,
//!   RFC 4954 §4) and an over-long line is dropped whole without buffering it.
//! - [`reply`]: replies with enhanced status codes, one constructor per
//!   reply the server sends, rendered once.
//! - [`session`]: the state machine of one SMTP session. It takes lines
//!   (commands) and events (TLS up, SASL exchange finished, message queued,
//!   …), keeps what the session has learnt (HELO, TLS, AUTH, the
//!   transaction), writes replies into its output buffer and returns an
//!   [`Action`] for the I/O layer: read on, close, start TLS, run a SASL
//!   exchange with sasl-auth, receive DATA or a BDAT chunk for the queue,
//!   discard an upload, ask relay-queue to flush a domain, count a MAIL or
//!   RCPT against the account's sending limits.
//!
//! May import: `authrelay-sasl` (mechanism names and their fixed prompts),
//! `smtp-proto`, `base64`. Nothing that does I/O: the relay policy comes in
//! through the [`Policy`] trait, the traceparent check as a function.
//!
//! Every RFC 5321 / 4954 / 3207 rule the state machine enforces has a unit
//! test on bytes in `session::tests`, named after the rule.

pub mod command;
pub mod reply;
pub mod session;

pub use command::{Command, Line, LineBuffer, MailFrom, ParseError, RcptTo};
pub use reply::Reply;
pub use session::{
    Action, AuthCommand, AuthFailure, AuthStart, Authenticated, Client, Closing, Counted, Delivery,
    Helo, Policy, Session, SessionParams, Settings, Transaction, Verdict,
};
