//! One SMTP session as a state machine: lines and events in, replies (into
//! an output buffer) and [`Action`]s out.
//!
//! The I/O layer's loop is: flush [`Session::output`], read a line, hand it
//! to [`Session::line`], perform the returned action, tell the session how
//! it went (`tls_started`, `auth_finished`, `message_finished`, …), repeat.
//! The session never waits: everything slow (the TLS handshake, sasl-auth,
//! relay-queue, the socket) is an action for the caller.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use authrelay_sasl::Mechanism;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::command::{self, Command, Line, MailFrom, ParseError, RcptTo};
use crate::reply::Reply;

/// The relay decisions the session asks for (who may connect, send, and
/// to whom). Synchronous and pure: the frontend's `RelayPolicy`.
pub trait Policy: Send + Sync {
    fn check_connect(&self, ip: IpAddr) -> Result<(), Reply>;
    fn check_sender(&self, address: &str) -> Result<(), Reply>;
    fn check_recipient(&self, address: &str, client: Client) -> Result<(), Reply>;
}

/// The session facts the policy needs about a recipient's sender.
#[derive(Clone, Copy, Debug)]
pub struct Client {
    pub ip: IpAddr,
    /// Authenticated with a mechanism in TRUST_AUTH_MECH.
    pub trusted_auth: bool,
}

/// What every session of a frontend shares.
pub struct Settings {
    /// Our name in the greeting, EHLO and 421 replies.
    pub hostname: String,
    /// Advertised as `SIZE` (RFC 1870); MAIL's SIZE= above it is refused.
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Bad commands before `421` and close.
    pub max_errors: u32,
    /// AUTH commands per connection before `421` and close.
    pub max_auth_attempts: u32,
    /// A certificate is configured: STARTTLS is offered.
    pub starttls: bool,
    /// What a session would be offered under TLS with every binding: a
    /// mechanism in here but not offered now is `538`, not `504`.
    pub mechanisms_with_tls: Vec<Mechanism>,
    /// Accepts a W3C traceparent (`XTRACE`). Passed in so that this crate
    /// needs no OpenTelemetry.
    pub traceparent_ok: fn(&str) -> bool,
    pub policy: Arc<dyn Policy>,
}

/// What the I/O layer knows about a new connection.
pub struct SessionParams {
    /// The client's address (canonical: IPv4 as a.b.c.d).
    pub peer: IpAddr,
    /// MAIL needs AUTH first (submission listeners).
    pub requires_auth: bool,
    /// TLS from the first byte (RFC 8314 submissions): the handshake comes
    /// before the greeting.
    pub implicit_tls: bool,
    /// The client may send `XTRACE` (an authrelay in `xtrace_networks`).
    pub xtrace: bool,
    /// The SASL mechanisms offered before TLS.
    pub mechanisms: Vec<Mechanism>,
}

/// What the I/O layer does next. Replies are already in [`Session::output`];
/// each action flushes them first unless it says otherwise.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the next command.
    Continue,
    /// Close the connection (after flushing).
    Close,
    /// Flush, drop whatever the client sent ahead in the clear (RFC 3207
    /// §4.2, the STARTTLS injection class), run the TLS handshake, then call
    /// [`Session::tls_started`]. A failed handshake closes.
    StartTls,
    /// An AUTH command: call [`Session::begin_auth`] (inside the AUTH span).
    Auth(AuthCommand),
    /// `354` queued: open the upload to the queue, flush, stream the body
    /// until CRLF.CRLF, then [`Session::message_finished`].
    ReceiveData,
    /// RFC 3030: read exactly `size` octets into the message (opening its
    /// upload first when `begin`), then [`Session::chunk_received`] or, when
    /// `last`, [`Session::message_finished`].
    ReceiveChunk {
        size: usize,
        last: bool,
        begin: bool,
    },
    /// RFC 3030: read and drop `size` octets of a refused BDAT (so the
    /// session stays in step), then [`Session::chunk_skipped`].
    SkipChunk { size: usize },
    /// Abandon the BDAT message being uploaded (RSET, EHLO, STARTTLS), then
    /// read on.
    DiscardMessage,
    /// ETRN: ask the queue to flush `domain`, then [`Session::etrn_finished`].
    Etrn(String),
    /// A MAIL or RCPT of an authenticated session passed every other
    /// check: count it against the account's sending limits, then
    /// [`Session::counted`]. Its reply waits for the count.
    Count(Counted),
}

/// What an authenticated session's command counts against its account's
/// limits: a message (MAIL FROM) or a recipient (RCPT TO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    Message,
    Recipient,
}

/// What the account's limits say about a counted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Answer this and go on.
    Refuse(Reply),
    /// Answer this and close the connection (the account is suspended).
    Close(Reply),
}

/// A command waiting for its count.
enum Counting {
    Mail(MailFrom),
    Rcpt(RcptTo),
}

/// `AUTH mechanism [initial-response]`, as the client sent it.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthCommand {
    pub mechanism: String,
    pub initial: Option<String>,
}

/// The answer to [`Session::begin_auth`].
#[derive(Debug, PartialEq, Eq)]
pub enum AuthStart {
    /// Run the SASL exchange with sasl-auth: each challenge through
    /// [`Session::auth_challenge`] and [`Session::auth_answer`], the end
    /// through [`Session::auth_finished`].
    Exchange {
        mechanism: Mechanism,
        /// Decoded; `Some(empty)` for `=` (RFC 4954 §4).
        initial_response: Option<Vec<u8>>,
    },
    /// Refused before any exchange; the reply is queued.
    Done(Action),
}

/// Why an exchange failed, as sasl-auth classifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// SCRAM-PLUS binding mismatch: a protocol failure, said as such.
    ChannelBinding,
    InvalidCredentials,
    Malformed,
    UnsupportedMechanism,
    EncryptionRequired,
    /// sasl-auth unreachable, rate limited, or an unclassified failure.
    Temporary,
    /// The credentials were good but the login is refused with this reply
    /// (a suspended account, or its state unknown).
    Refused(Reply),
}

impl AuthFailure {
    fn reply(&self) -> Reply {
        match self {
            AuthFailure::ChannelBinding => Reply::auth_channel_binding(),
            AuthFailure::InvalidCredentials => Reply::auth_invalid(),
            AuthFailure::Malformed => Reply::auth_malformed(),
            AuthFailure::UnsupportedMechanism => Reply::auth_unsupported(),
            AuthFailure::EncryptionRequired => Reply::auth_encryption_required(),
            AuthFailure::Temporary => Reply::auth_temporary(),
            AuthFailure::Refused(reply) => reply.clone(),
        }
    }
}

/// A successful AUTH.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// Who proved their credentials.
    pub authcid: String,
    /// Who the session acts as (relayed as AUTH=, logged, in Received:).
    pub authzid: String,
    pub mechanism: String,
    /// Security strength factor, for the Received: header.
    pub bits: u32,
    /// The mechanism is trusted to relay (TRUST_AUTH_MECH).
    pub trusted: bool,
}

/// How a message handed to the queue ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// On disk in the queue, under this id.
    Queued { id: String },
    /// Over the maximum size (RFC 1870).
    TooBig,
    /// The queue's disk is full.
    StorageFull,
    /// The queue did not take it (unreachable, refused, no answer).
    Unavailable,
}

/// Why the I/O layer ends a session on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Closing {
    /// No command within the timeout (RFC 5321 §4.5.3.2).
    Timeout,
    /// The frontend drains (SIGTERM).
    ShuttingDown,
    /// `authrelay sessions end`.
    EndedByOperator,
    /// Ended from outside with this reply (an account suspended).
    Ended(Reply),
}

/// What the client called itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Helo {
    pub host: String,
    /// EHLO rather than HELO.
    pub esmtp: bool,
}

/// The envelope of the mail transaction in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub from: MailFrom,
    pub rcpts: Vec<RcptTo>,
}

pub struct Session {
    settings: Arc<Settings>,
    params: SessionParams,
    out: Vec<u8>,
    /// Code of the last reply queued (AUTH outcome for spans and metrics).
    last_code: u16,
    greeted: bool,
    helo: Option<Helo>,
    tls: bool,
    auth: Option<Authenticated>,
    tx: Option<Transaction>,
    /// A BDAT message is being received (its upload is open).
    chunking: bool,
    /// The refusal of a BDAT whose octets are being skipped.
    skipped: Option<Reply>,
    /// The MAIL or RCPT being counted against the account's limits.
    counting: Option<Counting>,
    errors: u32,
    auth_attempts: u32,
    /// `XTRACE`: the sending authrelay's W3C traceparent. Tracing only.
    xtrace: Option<String>,
}

impl Session {
    pub fn new(settings: Arc<Settings>, params: SessionParams) -> Self {
        Session {
            settings,
            params,
            out: Vec::with_capacity(512),
            last_code: 0,
            greeted: false,
            helo: None,
            tls: false,
            auth: None,
            tx: None,
            chunking: false,
            skipped: None,
            counting: None,
            errors: 0,
            auth_attempts: 0,
            xtrace: None,
        }
    }

    /// Replies queued and not yet written.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The output was written to the client.
    pub fn output_written(&mut self) {
        self.out.clear();
    }

    pub fn last_code(&self) -> u16 {
        self.last_code
    }

    pub fn helo(&self) -> Option<&Helo> {
        self.helo.as_ref()
    }

    pub fn authenticated(&self) -> Option<&Authenticated> {
        self.auth.as_ref()
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        self.tx.as_ref()
    }

    pub fn xtrace(&self) -> Option<&str> {
        self.xtrace.as_deref()
    }

    /// RFC 4954 §5: the AUTH= value to pass on with the current message.
    pub fn auth_param(&self) -> String {
        auth_param(
            self.auth.as_ref().map(|a| (a.authzid.as_str(), a.trusted)),
            self.tx.as_ref().and_then(|t| t.from.auth.as_deref()),
        )
    }

    fn reply(&mut self, reply: Reply) {
        self.last_code = reply.code;
        reply.write_to(&mut self.out);
    }

    fn greet(&mut self) {
        self.greeted = true;
        let text = format!("{} ESMTP authrelay ready", self.settings.hostname);
        self.reply(Reply::new(220, "", text));
    }

    /// A client connected: refused by the policy (reply, close), TLS first
    /// (implicit TLS), or greeted.
    pub fn connected(&mut self) -> Action {
        if let Err(reply) = self.settings.policy.check_connect(self.params.peer) {
            self.reply(reply);
            return Action::Close;
        }
        if self.params.implicit_tls {
            return Action::StartTls;
        }
        self.greet();
        Action::Continue
    }

    /// The TLS handshake succeeded; `mechanisms` are those offered under it
    /// (the -PLUS ones depend on the bindings this connection has).
    pub fn tls_started(&mut self, mechanisms: Vec<Mechanism>) -> Action {
        self.tls = true;
        self.params.mechanisms = mechanisms;
        if !self.greeted {
            self.greet();
            return Action::Continue;
        }
        // RFC 3207 §4.2: forget everything learnt before TLS.
        self.helo = None;
        self.auth = None;
        self.xtrace = None;
        self.reset_transaction()
    }

    /// The I/O layer ends the session; the 421 is queued.
    pub fn close(&mut self, why: Closing) {
        let host = &self.settings.hostname;
        let reply = match why {
            Closing::Timeout => Reply::timeout(host),
            Closing::ShuttingDown => Reply::shutting_down(host),
            Closing::EndedByOperator => Reply::new(
                421,
                "4.7.0",
                format!("{host} Session ended by operator, closing connection"),
            ),
            Closing::Ended(reply) => reply,
        };
        self.reply(reply);
    }

    /// RFC 5321 §4.1.4: RSET, EHLO and STARTTLS abandon a transaction.
    fn reset_transaction(&mut self) -> Action {
        self.tx = None;
        if std::mem::take(&mut self.chunking) {
            Action::DiscardMessage
        } else {
            Action::Continue
        }
    }

    /// Answer a bad command; the one that reaches `max_errors` is answered
    /// `421` instead, and the connection closes.
    fn error(&mut self, reply: Reply) -> Action {
        self.errors += 1;
        if self.errors >= self.settings.max_errors {
            self.reply(Reply::too_many_errors());
            Action::Close
        } else {
            self.reply(reply);
            Action::Continue
        }
    }

    /// One framed line from the client, in the command state.
    pub fn line(&mut self, line: Line) -> Action {
        match line {
            Line::TooLong => self.error(Reply::line_too_long()),
            Line::Complete(bytes) => self.command(&bytes),
        }
    }

    /// One command line (without its CRLF).
    pub fn command(&mut self, line: &[u8]) -> Action {
        // From other clients XTRACE is an unknown command, as it is unoffered.
        if self.params.xtrace && line.len() >= 7 && line[..7].eq_ignore_ascii_case(b"XTRACE ") {
            self.xtrace_command(&line[7..]);
            return Action::Continue;
        }
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                return self.error(match e {
                    ParseError::Unrecognized => Reply::unrecognized(),
                    ParseError::Syntax(s) => Reply::new(501, "5.5.4", format!("Syntax: {s}")),
                    ParseError::Parameter(p) => {
                        Reply::new(555, "5.5.4", format!("Unsupported parameter {p}"))
                    }
                    ParseError::BadCharacters => {
                        Reply::new(500, "5.5.2", "Invalid characters in command")
                    }
                });
            }
        };
        match cmd {
            Command::Ehlo(host) => self.ehlo(host, true),
            Command::Helo(host) => self.ehlo(host, false),
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => {
                Action::Auth(AuthCommand { mechanism, initial })
            }
            Command::Mail(m) => self.mail(m),
            Command::Rcpt(rc) => self.rcpt(rc),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                let action = self.reset_transaction();
                self.reply(Reply::new(250, "2.0.0", "Reset state"));
                action
            }
            Command::Noop => {
                self.reply(Reply::ok());
                Action::Continue
            }
            Command::Quit => {
                let text = format!("{} closing connection", self.settings.hostname);
                self.reply(Reply::new(221, "2.0.0", text));
                Action::Close
            }
            Command::Help => {
                self.reply(Reply::multi(
                    214,
                    "2.0.0",
                    vec![
                        "This is authrelay, an authenticated SMTP relay".into(),
                        "Topics: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN ETRN".into(),
                        "End of HELP info".into(),
                    ],
                ));
                Action::Continue
            }
            // Sendmail's `novrfy`/`noexpn` answers: nothing about who exists.
            Command::Vrfy => {
                self.reply(Reply::new(
                    252,
                    "2.5.2",
                    "Cannot VRFY user; try RCPT to attempt delivery",
                ));
                Action::Continue
            }
            Command::Expn => {
                self.reply(Reply::new(
                    502,
                    "5.7.0",
                    "Sorry, we do not allow this operation",
                ));
                Action::Continue
            }
            Command::Etrn(node) => Action::Etrn(node.trim_start_matches(['@', '#']).to_owned()),
        }
    }

    /// `XTRACE <traceparent>` (ours, between authrelay instances): the
    /// sender's trace continues here. It only parents spans — never touches
    /// authorization — is taken once per session, and a malformed value is
    /// refused without counting as an error.
    fn xtrace_command(&mut self, value: &[u8]) {
        if self.xtrace.is_some() {
            self.reply(Reply::bad_sequence("XTRACE already given"));
            return;
        }
        let value = std::str::from_utf8(value).unwrap_or("").trim();
        if !(self.settings.traceparent_ok)(value) {
            self.reply(Reply::new(501, "5.5.4", "Syntax: XTRACE traceparent"));
            return;
        }
        self.xtrace = Some(value.to_owned());
        self.reply(Reply::new(250, "2.0.0", "Trace continued"));
    }

    fn ehlo(&mut self, host: String, esmtp: bool) -> Action {
        let action = self.reset_transaction();
        let greet = format!(
            "{} Hello {} [{}], pleased to meet you",
            self.settings.hostname, host, self.params.peer
        );
        self.helo = Some(Helo { host, esmtp });
        if !esmtp {
            self.reply(Reply::new(250, "", greet));
            return action;
        }
        let mut lines: Vec<Cow<'static, str>> = vec![
            greet.into(),
            "ENHANCEDSTATUSCODES".into(),
            "PIPELINING".into(),
            "8BITMIME".into(),
            format!("SIZE {}", self.settings.max_message_size).into(),
            "DSN".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
        ];
        if !self.tls && self.settings.starttls {
            lines.push("STARTTLS".into());
        }
        if !self.params.mechanisms.is_empty() {
            let names: Vec<&str> = self.params.mechanisms.iter().map(|m| m.name()).collect();
            lines.push(format!("AUTH {}", names.join(" ")).into());
        }
        lines.push("ETRN".into());
        if self.params.xtrace {
            lines.push("XTRACE".into());
        }
        lines.push("HELP".into());
        self.reply(Reply::multi(250, "", lines));
        action
    }

    fn starttls(&mut self) -> Action {
        if self.tls {
            self.reply(Reply::new(503, "5.5.1", "TLS already active"));
            return Action::Continue;
        }
        if !self.settings.starttls {
            self.reply(Reply::new(454, "4.7.0", "TLS not available"));
            return Action::Continue;
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        Action::StartTls
    }

    /// The checks of RFC 4954 §4 before any exchange, and the mechanism.
    pub fn begin_auth(&mut self, cmd: &AuthCommand) -> AuthStart {
        let refuse = |s: &mut Self, reply: Reply| {
            s.reply(reply);
            AuthStart::Done(Action::Continue)
        };
        if self.helo.as_ref().is_none_or(|h| !h.esmtp) {
            return refuse(self, Reply::bad_sequence("Send EHLO first"));
        }
        if self.auth.is_some() {
            return refuse(self, Reply::bad_sequence("Already authenticated"));
        }
        if self.tx.is_some() {
            return refuse(
                self,
                Reply::bad_sequence("AUTH not permitted during a mail transaction"),
            );
        }
        self.auth_attempts += 1;
        if self.auth_attempts > self.settings.max_auth_attempts {
            self.reply(Reply::new(
                421,
                "4.7.0",
                "Too many authentication attempts, closing connection",
            ));
            return AuthStart::Done(Action::Close);
        }
        let Some(mechanism) = Mechanism::from_name(&cmd.mechanism) else {
            return refuse(self, Reply::auth_unsupported());
        };
        if !self.params.mechanisms.contains(&mechanism) {
            let clear_text_refused = mechanism.is_plaintext()
                && !self.tls
                && self.settings.mechanisms_with_tls.contains(&mechanism);
            return refuse(
                self,
                if clear_text_refused {
                    Reply::auth_encryption_required()
                } else {
                    Reply::auth_unsupported()
                },
            );
        }
        // RFC 4954 §4: "=" is an empty initial response.
        let initial_response = match cmd.initial.as_deref() {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(b64) => match B64.decode(b64) {
                Ok(v) => Some(v),
                Err(_) => return refuse(self, Reply::auth_malformed()),
            },
        };
        AuthStart::Exchange {
            mechanism,
            initial_response,
        }
    }

    /// Queue a `334` carrying `data`, base64 (RFC 4954 §4).
    pub fn auth_challenge(&mut self, data: &[u8]) {
        self.reply(Reply::challenge(B64.encode(data)));
    }

    /// The client's answer to a challenge, base64 decoded. `None` ends the
    /// AUTH command, its reply queued: the client cancelled with `*` (501),
    /// sent a line too long (500) or something not base64 (501).
    pub fn auth_answer(&mut self, line: Line) -> Option<Vec<u8>> {
        let line = match line {
            Line::Complete(l) => l,
            Line::TooLong => {
                self.reply(Reply::new(
                    500,
                    "5.5.6",
                    "Authentication Exchange line is too long",
                ));
                return None;
            }
        };
        if line == b"*" {
            self.reply(Reply::auth_cancelled());
            return None;
        }
        match B64.decode(&line) {
            Ok(answer) => Some(answer),
            Err(_) => {
                self.reply(Reply::auth_malformed());
                None
            }
        }
    }

    /// The exchange ended: `235` and the session is authenticated, or the
    /// failure's reply.
    pub fn auth_finished(&mut self, result: Result<Authenticated, AuthFailure>) {
        match result {
            Ok(auth) => {
                self.auth = Some(auth);
                self.reply(Reply::auth_ok());
            }
            Err(failure) => self.reply(failure.reply()),
        }
    }

    fn mail(&mut self, m: MailFrom) -> Action {
        let reply = if self.helo.is_none() {
            Reply::bad_sequence("Polite people say HELO first")
        } else if self.tx.is_some() {
            Reply::bad_sequence("Sender already specified")
        } else if self.params.requires_auth && self.auth.is_none() {
            Reply::auth_required()
        } else if m.size.is_some_and(|s| s > self.settings.max_message_size) {
            Reply::too_big()
        } else if let Err(reply) = self.settings.policy.check_sender(&m.address) {
            reply
        } else if self.auth.is_some() {
            // Last, so only a MAIL that would otherwise be accepted is counted.
            self.counting = Some(Counting::Mail(m));
            return Action::Count(Counted::Message);
        } else {
            self.open_transaction(m)
        };
        self.reply(reply);
        Action::Continue
    }

    fn open_transaction(&mut self, from: MailFrom) -> Reply {
        self.tx = Some(Transaction {
            from,
            rcpts: Vec::new(),
        });
        Reply::new(250, "2.1.0", "Sender ok")
    }

    fn add_recipient(&mut self, rc: RcptTo) -> Reply {
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(rc);
        }
        Reply::new(250, "2.1.5", "Recipient ok")
    }

    /// The account's limits counted the MAIL or RCPT of [`Action::Count`].
    pub fn counted(&mut self, verdict: Verdict) -> Action {
        let Some(command) = self.counting.take() else {
            return Action::Continue;
        };
        let reply = match verdict {
            Verdict::Pass => match command {
                Counting::Mail(m) => self.open_transaction(m),
                Counting::Rcpt(rc) => self.add_recipient(rc),
            },
            Verdict::Refuse(reply) => reply,
            Verdict::Close(reply) => {
                let _ = self.reset_transaction();
                self.reply(reply);
                return Action::Close;
            }
        };
        self.reply(reply);
        Action::Continue
    }

    fn rcpt(&mut self, rc: RcptTo) -> Action {
        let client = Client {
            ip: self.params.peer,
            trusted_auth: self.auth.as_ref().is_some_and(|a| a.trusted),
        };
        let reply = match &self.tx {
            None => Reply::bad_sequence("Need MAIL before RCPT"),
            Some(tx) if tx.rcpts.len() >= self.settings.max_recipients => {
                Reply::new(452, "4.5.3", "Too many recipients")
            }
            Some(_) => match self.settings.policy.check_recipient(&rc.address, client) {
                // Only a recipient the policy accepts is counted.
                Ok(()) if self.auth.is_some() => {
                    self.counting = Some(Counting::Rcpt(rc));
                    return Action::Count(Counted::Recipient);
                }
                Ok(()) => self.add_recipient(rc),
                Err(reply) => reply,
            },
        };
        self.reply(reply);
        Action::Continue
    }

    fn data(&mut self) -> Action {
        let reply = if self.chunking {
            Reply::bad_sequence("DATA not allowed after BDAT")
        } else if let Some(tx) = &self.tx {
            if tx.rcpts.is_empty() {
                // RFC 2920 §3.1: with pipelining, DATA after all RCPTs failed is 554.
                Reply::new(554, "5.5.1", "No valid recipients")
            } else {
                self.reply(Reply::new(
                    354,
                    "",
                    "Enter mail, end with \".\" on a line by itself",
                ));
                return Action::ReceiveData;
            }
        } else {
            Reply::bad_sequence("Need MAIL command")
        };
        self.reply(reply);
        Action::Continue
    }

    /// RFC 3030 BDAT: exactly `size` octets follow the command. They are
    /// read even when the command is refused, so the session stays in step;
    /// the refusal is answered after them.
    fn bdat(&mut self, size: usize, last: bool) -> Action {
        let refusal = match &self.tx {
            None => Some(Reply::bad_sequence("Need MAIL command")),
            Some(tx) if tx.rcpts.is_empty() => {
                Some(Reply::new(554, "5.5.1", "No valid recipients"))
            }
            Some(_) => None,
        };
        if let Some(reply) = refusal {
            self.skipped = Some(reply);
            return Action::SkipChunk { size };
        }
        let begin = !self.chunking;
        self.chunking = true;
        Action::ReceiveChunk { size, last, begin }
    }

    /// The octets of a refused BDAT were read and dropped.
    pub fn chunk_skipped(&mut self) {
        if let Some(reply) = self.skipped.take() {
            self.reply(reply);
        }
    }

    /// A chunk (not the last) is in the upload. `too_big`: the message went
    /// over the maximum size — refused now, and the rest of its chunks are
    /// refused as out of sequence (the I/O layer drops the upload).
    pub fn chunk_received(&mut self, size: usize, too_big: bool) {
        if too_big {
            self.reply(Reply::too_big());
            self.tx = None;
            self.chunking = false;
        } else {
            self.reply(Reply::new(250, "2.0.0", format!("{size} octets received")));
        }
    }

    /// The message (DATA, or BDAT LAST) went to the queue with this result;
    /// the transaction is over.
    pub fn message_finished(&mut self, delivery: Delivery) {
        self.tx = None;
        self.chunking = false;
        self.reply(match delivery {
            Delivery::Queued { id } => {
                Reply::new(250, "2.0.0", format!("{id} Message accepted for delivery"))
            }
            Delivery::TooBig => Reply::too_big(),
            Delivery::StorageFull => {
                Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
            }
            Delivery::Unavailable => Reply::queue_unavailable(),
        });
    }

    /// RFC 1985 ETRN: whether the queue started a run for `domain`.
    pub fn etrn_finished(&mut self, domain: &str, started: bool) {
        self.reply(if started {
            Reply::new(250, "2.0.0", format!("Queuing for node {domain} started"))
        } else {
            Reply::new(
                458,
                "4.3.0",
                format!("Unable to queue messages for node {domain}"),
            )
        });
    }
}

/// RFC 4954 §5: the AUTH= value passed on with a message — the session's
/// authorization id when it authenticated with a trusted mechanism, else
/// `<>` ("unknown") when the client gave one, else nothing. A client's own
/// AUTH= value is never passed on: it could name anyone.
pub fn auth_param(auth: Option<(&str, bool)>, given: Option<&str>) -> String {
    match (auth, given) {
        (Some((authzid, true)), _) => authzid.to_owned(),
        (_, Some(_)) => "<>".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
