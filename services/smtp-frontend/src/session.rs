//! One SMTP session: the I/O around the sans-IO pieces (line framing and
//! command parsing in `command`, replies in `reply`, relay decisions in
//! `policy`, the trace header in `received`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use authrelay_config::Listener;
use authrelay_proto::queue::v1 as qpb;
use authrelay_proto::sasl::v1 as spb;
use authrelay_sasl::Mechanism;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::Shared;
use crate::command::{self, Command, Line, MailFrom, ParseError, RcptTo};
use crate::limits::{Counted, Verdict};
use crate::policy::Client;
use crate::received;
use crate::reply::{Reply, r};

/// Body bytes forwarded to relay-queue per gRPC message.
const CHUNK: usize = 64 * 1024;

/// The client connection, before or after TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Handed to the TLS acceptor; a failed handshake ends the session.
    Gone,
}

fn gone() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::NotConnected)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

struct TlsInfo {
    version: String,
    cipher: String,
    exporter: Option<Vec<u8>>,
    end_point: Vec<u8>,
    /// Identity from a verified client certificate (EXTERNAL).
    client_identity: Option<String>,
}

/// Who the client authenticated as, and how (one per session: AUTH is
/// refused once it has succeeded, RFC 4954 §4).
struct Authenticated {
    /// The account that proved its credentials (limits count per account).
    authcid: String,
    authzid: String,
    mechanism: String,
    bits: u32,
    trusted: bool,
}

struct Transaction {
    from: MailFrom,
    rcpts: Vec<RcptTo>,
}

enum Flow {
    Continue,
    Close,
}

enum ReadError {
    Closed,
    Timeout,
    Draining,
    /// An operator ended the session (`authrelay sessions end`).
    Ended,
}

pub struct Session {
    shared: Arc<Shared>,
    stream: Stream,
    listener: Listener,
    peer: SocketAddr,
    id: String,
    lines: command::LineBuffer,
    out: Vec<u8>,
    helo: Option<(String, bool)>,
    tls: Option<TlsInfo>,
    auth: Option<Authenticated>,
    tx: Option<Transaction>,
    errors: u32,
    auth_attempts: u32,
    registration: crate::sessions::Registration,
    /// A BDAT transaction in progress.
    bdat: Option<Upload>,
    /// Code of the last reply queued (AUTH outcome for spans and metrics).
    last_code: u16,
    /// `XTRACE`: the sending authrelay's W3C traceparent, adopted as parent
    /// of this session's AUTH spans and queued messages. Tracing only.
    xtrace: Option<String>,
    xtrace_seen: bool,
}

pub fn new_id(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode_upper(raw)
}

impl Session {
    pub fn new(
        shared: Arc<Shared>,
        stream: TcpStream,
        listener: Listener,
        peer: SocketAddr,
        id: String,
        registration: crate::sessions::Registration,
    ) -> Self {
        Session {
            registration,
            bdat: None,
            last_code: 0,
            xtrace: None,
            xtrace_seen: false,
            shared,
            stream: Stream::Plain(stream),
            listener,
            peer,
            id,
            lines: command::LineBuffer::default(),
            out: Vec::with_capacity(512),
            helo: None,
            tls: None,
            auth: None,
            tx: None,
            errors: 0,
            auth_attempts: 0,
        }
    }

    fn hostname(&self) -> &str {
        &self.shared.cfg.hostname
    }

    fn reply(&mut self, reply: Reply) {
        self.last_code = reply.code;
        reply.write_to(&mut self.out);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            // A client that never reads its replies must not hold the session
            // (its task, buffers and connection slot) forever: writing gets the
            // command timeout too (RFC 5321 §4.5.3.2).
            let timeout = self.shared.cfg.frontend.timeouts.command;
            let (stream, out) = (&mut self.stream, &self.out);
            let write = async move {
                stream.write_all(out).await?;
                stream.flush().await
            };
            tokio::time::timeout(timeout, write)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            self.out.clear();
        }
        Ok(())
    }

    pub async fn run(mut self) {
        let span = tracing::info_span!(
            "smtp",
            otel.name = "smtp session",
            session = %self.id,
            peer = %self.peer,
            client.address = %self.peer.ip(),
            server.address = %self.shared.cfg.hostname,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        authrelay_telemetry::record_trace_ids(&span);
        let metrics = &authrelay_telemetry::metrics::METRICS;
        metrics.sessions_live.inc();
        let _ = tracing::Instrument::instrument(self.run_inner(), span).await;
        metrics.sessions_live.dec();
    }

    async fn run_inner(&mut self) -> std::io::Result<()> {
        if let Err(reply) = self.shared.policy.check_connect(self.peer.ip()) {
            self.reply(reply);
            return self.flush().await;
        }
        if self.listener.role == authrelay_config::ListenerRole::Submissions
            && !self.start_tls().await
        {
            return Ok(());
        }
        let greeting = format!("{} ESMTP authrelay ready", self.hostname());
        self.reply(Reply::new(220, "", greeting));
        let session_deadline =
            tokio::time::Instant::now() + self.shared.cfg.frontend.timeouts.session;
        loop {
            if tokio::time::Instant::now() > session_deadline {
                let host = self.hostname().to_owned();
                self.reply(r::timeout(&host));
                break;
            }
            let max = self.shared.cfg.frontend.max_line_length;
            let line = match self.read_line(max, true).await {
                Ok(l) => l,
                Err(ReadError::Closed) => break,
                Err(ReadError::Timeout) => {
                    let host = self.hostname().to_owned();
                    self.reply(r::timeout(&host));
                    break;
                }
                Err(ReadError::Draining) => {
                    let host = self.hostname().to_owned();
                    self.reply(r::shutting_down(&host));
                    break;
                }
                Err(ReadError::Ended) => {
                    let host = self.hostname().to_owned();
                    // An account suspension says why; else the operator ended it.
                    let why = self
                        .registration
                        .ending
                        .lock()
                        .ok()
                        .and_then(|mut w| w.take());
                    self.reply(why.unwrap_or_else(|| {
                        Reply::new(
                            421,
                            "4.7.0",
                            format!("{host} Session ended by operator, closing connection"),
                        )
                    }));
                    break;
                }
            };
            let flow = match line {
                Line::TooLong => self.error_reply(r::line_too_long()),
                Line::Complete(bytes) => self.handle(&bytes).await,
            };
            if let Flow::Close = flow {
                break;
            }
        }
        self.flush().await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    /// The next line; flushes pending replies before waiting (pipelining,
    /// RFC 2920: replies to a batch go out together). `idle`: waiting for a
    /// command between transactions, where a drain may end the session.
    async fn read_line(&mut self, max: usize, idle: bool) -> Result<Line, ReadError> {
        // One deadline for the whole line, not per read: a slow-loris client
        // trickling a byte at a time must still time out (RFC 5321 §4.5.3.2.7).
        let deadline = tokio::time::Instant::now() + self.shared.cfg.frontend.timeouts.command;
        loop {
            if let Some(line) = self.lines.next_line(max) {
                return Ok(line);
            }
            self.flush().await.map_err(|_| ReadError::Closed)?;
            let drain_ok = idle && self.tx.is_none();
            if drain_ok && *self.shared.draining.borrow() {
                return Err(ReadError::Draining);
            }
            let mut buf = [0u8; 4096];
            let mut draining = self.shared.draining.clone();
            let end = self.registration.end.clone();
            let n = tokio::select! {
                _ = end.notified() => return Err(ReadError::Ended),
                res = tokio::time::timeout_at(deadline, self.stream.read(&mut buf)) => match res {
                    Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadError::Closed),
                    Ok(Ok(n)) => n,
                    Err(_) => return Err(ReadError::Timeout),
                },
                _ = draining.wait_for(|d| *d), if drain_ok => return Err(ReadError::Draining),
            };
            self.lines.push(&buf[..n]);
        }
    }

    /// Answer a bad command; the one that reaches `max_errors` is answered
    /// `421` instead, and the connection closes.
    fn error_reply(&mut self, reply: Reply) -> Flow {
        self.errors += 1;
        if self.errors >= self.shared.cfg.frontend.max_errors {
            self.reply(r::too_many_errors());
            Flow::Close
        } else {
            self.reply(reply);
            Flow::Continue
        }
    }

    async fn handle(&mut self, line: &[u8]) -> Flow {
        // From other clients XTRACE is an unknown command, as it is unoffered.
        if line.len() >= 7
            && line[..7].eq_ignore_ascii_case(b"XTRACE ")
            && self.shared.policy.may_xtrace(self.peer.ip())
        {
            self.xtrace_command(&line[7..]);
            return Flow::Continue;
        }
        let cmd = match command::parse(line) {
            Ok(c) => c,
            Err(e) => {
                return self.error_reply(match e {
                    ParseError::Unrecognized => r::unrecognized(),
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
            Command::StartTls => return self.starttls_command().await,
            Command::Auth { mechanism, initial } => return self.auth(&mechanism, initial).await,
            Command::Mail(m) => return self.mail(m).await,
            Command::Rcpt(rc) => return self.rcpt(rc).await,
            Command::Data => return self.data().await,
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Rset => {
                self.reset_transaction();
                self.reply(Reply::new(250, "2.0.0", "Reset state"));
            }
            Command::Noop => self.reply(r::ok()),
            Command::Quit => {
                let text = format!("{} closing connection", self.hostname());
                self.reply(Reply::new(221, "2.0.0", text));
                return Flow::Close;
            }
            Command::Help => self.reply(Reply::multi(
                214,
                "2.0.0",
                vec![
                    "This is authrelay, an authenticated SMTP relay".into(),
                    "Topics: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET NOOP QUIT HELP VRFY EXPN ETRN".into(),
                    "End of HELP info".into(),
                ],
            )),
            // Sendmail's `novrfy`/`noexpn` answers: nothing about who exists.
            Command::Vrfy => self.reply(Reply::new(252, "2.5.2", "Cannot VRFY user; try RCPT to attempt delivery")),
            Command::Expn => self.reply(Reply::new(502, "5.7.0", "Sorry, we do not allow this operation")),
            Command::Etrn(node) => self.etrn(node).await,
        }
        Flow::Continue
    }

    /// `XTRACE <traceparent>` (ours, between authrelay instances): the
    /// sender's trace continues here. It only parents spans — never touches
    /// authorization — is taken once per session, and a malformed value is
    /// refused without counting as an error.
    fn xtrace_command(&mut self, value: &[u8]) {
        if self.xtrace_seen {
            self.reply(r::bad_sequence("XTRACE already given"));
            return;
        }
        let value = std::str::from_utf8(value).unwrap_or("").trim();
        if authrelay_telemetry::context_from_traceparent(value).is_none() {
            self.reply(Reply::new(501, "5.5.4", "Syntax: XTRACE traceparent"));
            return;
        }
        self.xtrace_seen = true;
        self.xtrace = Some(value.to_owned());
        self.reply(Reply::new(250, "2.0.0", "Trace continued"));
    }

    fn offered(&self) -> Vec<Mechanism> {
        // -PLUS only where the client's default binding exists: TLS 1.3's
        // tls-exporter (TLS 1.2 clients bind with tls-unique, which we
        // cannot offer).
        let cb = self.tls.as_ref().is_some_and(|t| t.exporter.is_some());
        let cert = self
            .tls
            .as_ref()
            .is_some_and(|t| t.client_identity.is_some());
        self.shared.cfg.mechanisms_for(self.tls.is_some(), cb, cert)
    }

    /// RFC 5321 §4.1.4: RSET, EHLO and STARTTLS abandon a transaction.
    fn reset_transaction(&mut self) {
        self.tx = None;
        if let Some(u) = self.bdat.take() {
            u.abort();
        }
    }

    fn ehlo(&mut self, host: String, esmtp: bool) {
        self.reset_transaction();
        let greet = format!(
            "{} Hello {} [{}], pleased to meet you",
            self.hostname(),
            host,
            self.peer.ip()
        );
        self.helo = Some((host, esmtp));
        if !esmtp {
            self.reply(Reply::new(250, "", greet));
            return;
        }
        let mut lines: Vec<std::borrow::Cow<'static, str>> = vec![
            greet.into(),
            "ENHANCEDSTATUSCODES".into(),
            "PIPELINING".into(),
            "8BITMIME".into(),
            format!("SIZE {}", self.shared.cfg.frontend.max_message_size).into(),
            "DSN".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
        ];
        if self.tls.is_none() && self.shared.tls.is_some() {
            lines.push("STARTTLS".into());
        }
        let mechs = self.offered();
        if !mechs.is_empty() {
            let names: Vec<&str> = mechs.iter().map(|m| m.name()).collect();
            lines.push(format!("AUTH {}", names.join(" ")).into());
        }
        lines.push("ETRN".into());
        if self.shared.policy.may_xtrace(self.peer.ip()) {
            lines.push("XTRACE".into());
        }
        lines.push("HELP".into());
        self.reply(Reply::multi(250, "", lines));
    }

    async fn starttls_command(&mut self) -> Flow {
        if self.tls.is_some() {
            self.reply(Reply::new(503, "5.5.1", "TLS already active"));
            return Flow::Continue;
        }
        if self.shared.tls.is_none() {
            self.reply(Reply::new(454, "4.7.0", "TLS not available"));
            return Flow::Continue;
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        // RFC 3207 §4.2 and the STARTTLS injection class: anything the
        // client pipelined after STARTTLS came in the clear; discard it.
        self.lines.clear();
        if !self.start_tls().await {
            return Flow::Close;
        }
        // RFC 3207 §4.2: forget everything learnt before TLS.
        self.helo = None;
        self.auth = None;
        self.xtrace = None;
        self.xtrace_seen = false;
        self.reset_transaction();
        Flow::Continue
    }

    /// Handshake on the current plain stream; false when it failed.
    async fn start_tls(&mut self) -> bool {
        let Some(acceptor) = self.shared.tls.clone() else {
            return false;
        };
        let plain = match std::mem::replace(&mut self.stream, Stream::Gone) {
            Stream::Plain(s) => s,
            other => {
                self.stream = other;
                return false;
            }
        };
        let timeout = self.shared.cfg.frontend.timeouts.tls_handshake;
        match tokio::time::timeout(timeout, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                let (_, conn) = tls.get_ref();
                let version = conn
                    .protocol_version()
                    .map(|v| match v {
                        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
                        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
                        other => format!("{other:?}"),
                    })
                    .unwrap_or_default();
                let cipher = conn
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default();
                let exporter = crate::tls::tls_exporter(conn);
                let client_identity = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(crate::tls::client_identity);
                let end_point = self
                    .shared
                    .cert
                    .as_ref()
                    .map(|c| c.end_point_hash())
                    .unwrap_or_default();
                authrelay_telemetry::metrics::outcome(
                    &authrelay_telemetry::metrics::METRICS.tls_handshakes,
                    "success",
                );
                tracing::info!(version = %version, cipher = %cipher, "STARTTLS=server");
                self.shared.registry.update(&self.id, |r| {
                    r.tls_version = version.clone();
                    r.tls_cipher = cipher.clone();
                });
                self.tls = Some(TlsInfo {
                    version,
                    cipher,
                    exporter,
                    end_point,
                    client_identity,
                });
                self.stream = Stream::Tls(Box::new(tls));
                true
            }
            Ok(Err(e)) => {
                authrelay_telemetry::metrics::outcome(
                    &authrelay_telemetry::metrics::METRICS.tls_handshakes,
                    "failure",
                );
                tracing::info!(error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::info!("TLS handshake timed out");
                false
            }
        }
    }

    fn session_facts(&self) -> spb::SessionFacts {
        spb::SessionFacts {
            session_id: self.id.clone(),
            client_address: self.peer.to_string(),
            tls: self.tls.is_some(),
            server_name: self.shared.cfg.hostname.clone(),
            tls_version: self
                .tls
                .as_ref()
                .map(|t| t.version.clone())
                .unwrap_or_default(),
            cb_tls_exporter: self
                .tls
                .as_ref()
                .and_then(|t| t.exporter.clone())
                .unwrap_or_default(),
            cb_tls_server_end_point: self
                .tls
                .as_ref()
                .map(|t| t.end_point.clone())
                .unwrap_or_default(),
            client_cert_identity: self
                .tls
                .as_ref()
                .and_then(|t| t.client_identity.clone())
                .unwrap_or_default(),
            listener: format!("{:?}", self.listener.role).to_lowercase(),
        }
    }

    fn log_auth_failure(&self, mech: &str, reason: &str, authcid: &str) {
        tracing::info!(
            target: "auth",
            "AUTH failure ({mech}): {reason}, relay=[{}], authid={}",
            self.peer.ip(),
            if authcid.is_empty() { "-" } else { authcid }
        );
    }

    /// Sends `data` as a 334 challenge and reads the client's answer, base64
    /// decoded (RFC 4954 §4). `Err` ends the AUTH command: the client
    /// cancelled with `*` (501), sent a line too long (500) or something not
    /// base64 (501), or went away.
    async fn challenge(&mut self, data: &[u8]) -> Result<Vec<u8>, Flow> {
        self.reply(Reply::challenge(B64.encode(data)));
        let max = self.shared.cfg.frontend.max_auth_line_length;
        let line = match self.read_line(max, false).await {
            Ok(Line::Complete(l)) => l,
            Ok(Line::TooLong) => {
                self.reply(Reply::new(
                    500,
                    "5.5.6",
                    "Authentication Exchange line is too long",
                ));
                return Err(Flow::Continue);
            }
            Err(_) => return Err(Flow::Close),
        };
        if line == b"*" {
            self.reply(r::auth_cancelled());
            return Err(Flow::Continue);
        }
        B64.decode(&line).map_err(|_| {
            self.reply(r::auth_malformed());
            Flow::Continue
        })
    }

    /// One AUTH command, as one span (the root of its trace below the
    /// session): mechanism, outcome and, if allowed, the user; the outcome
    /// is read off the reply the client got, so span, metric and client agree.
    async fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Flow {
        let mech_label = Mechanism::from_name(mechanism).map_or("unknown", |m| m.name());
        let span = tracing::info_span!(
            "AUTH",
            otel.name = %format!("smtp AUTH {mech_label}"),
            sasl.mechanism = mech_label,
            outcome = tracing::field::Empty,
            enduser.id = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        if let Some(tp) = &self.xtrace {
            authrelay_telemetry::adopt_parent(&span, tp);
        }
        authrelay_telemetry::record_trace_ids(&span);
        let started = std::time::Instant::now();
        let flow =
            tracing::Instrument::instrument(self.auth_inner(mechanism, initial), span.clone())
                .await;
        let outcome = match self.last_code {
            235 => "success",
            535 => "failure",
            454 => "temporary",
            501 => "malformed",
            504 => "unsupported",
            538 => "encryption_required",
            421 => "too_many_attempts",
            _ => "refused",
        };
        span.record("outcome", outcome);
        if outcome != "success" {
            span.record("otel.status_code", "ERROR");
        } else if self.shared.cfg.telemetry.span_user_names
            && let Some(a) = &self.auth
        {
            span.record("enduser.id", a.authzid.as_str());
        }
        authrelay_telemetry::metrics::auth(mech_label, outcome, started.elapsed());
        flow
    }

    async fn auth_inner(&mut self, mechanism: &str, initial: Option<String>) -> Flow {
        if self.helo.as_ref().is_none_or(|(_, esmtp)| !esmtp) {
            self.reply(r::bad_sequence("Send EHLO first"));
            return Flow::Continue;
        }
        if self.auth.is_some() {
            self.reply(r::bad_sequence("Already authenticated"));
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.reply(r::bad_sequence(
                "AUTH not permitted during a mail transaction",
            ));
            return Flow::Continue;
        }
        self.auth_attempts += 1;
        if self.auth_attempts > self.shared.cfg.frontend.max_auth_attempts {
            self.reply(Reply::new(
                421,
                "4.7.0",
                "Too many authentication attempts, closing connection",
            ));
            return Flow::Close;
        }
        let Some(mech) = Mechanism::from_name(mechanism) else {
            self.reply(r::auth_unsupported());
            return Flow::Continue;
        };
        if !self.offered().contains(&mech) {
            let clear_text_refused = mech.is_plaintext()
                && self.tls.is_none()
                && self
                    .shared
                    .cfg
                    .mechanisms_for(true, true, true)
                    .contains(&mech);
            self.reply(if clear_text_refused {
                r::auth_encryption_required()
            } else {
                r::auth_unsupported()
            });
            return Flow::Continue;
        }
        // RFC 4954 §4: "=" is an empty initial response.
        let initial_response = match initial.as_deref() {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(b64) => match B64.decode(b64) {
                Ok(v) => Some(v),
                Err(_) => {
                    self.reply(r::auth_malformed());
                    return Flow::Continue;
                }
            },
        };
        // Prompts that hold no server state (LOGIN's, PLAIN's empty one) are
        // sent from here and their answers go to sasl-auth with the start:
        // one call per AUTH instead of one per prompt.
        let prompts = mech.fixed_prompts(initial_response.as_deref());
        let mut responses = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            match self.challenge(prompt).await {
                Ok(answer) => responses.push(answer),
                Err(flow) => return flow,
            }
        }
        // A sasl-auth older than `StartRequest.responses` (during a rolling
        // upgrade) asks the prompts again: those are answered from here.
        let mut answered = prompts.iter().zip(responses.clone());
        let facts = self.session_facts();
        let sasl = self.shared.sasl.clone();
        let start = spb::StartRequest {
            mechanism: mech.name().to_owned(),
            initial_response,
            session: Some(facts.clone()),
            responses,
        };
        let mut resp = match sasl.start(start.clone()).await {
            Err(s) if retry_is_safe(&s) => sasl.start(start).await,
            other => other,
        };
        loop {
            let result = match resp {
                Ok(r) => r.result,
                Err(status) => {
                    self.log_auth_failure(
                        mech.name(),
                        &format!("sasl-auth unavailable ({})", status.code()),
                        "",
                    );
                    self.reply(r::auth_temporary());
                    return Flow::Continue;
                }
            };
            match result {
                Some(spb::step_response::Result::Challenge(ch)) => {
                    let response = match answered.next() {
                        Some((prompt, answer)) if ch.data == *prompt => answer,
                        _ => match self.challenge(&ch.data).await {
                            Ok(answer) => answer,
                            Err(flow) => return flow,
                        },
                    };
                    let step = spb::StepRequest {
                        exchange_id: ch.exchange_id,
                        response,
                        session: Some(facts.clone()),
                    };
                    resp = match sasl.step(step.clone()).await {
                        Err(s) if retry_is_safe(&s) => sasl.step(step).await,
                        other => other,
                    };
                }
                Some(spb::step_response::Result::Success(s)) => {
                    if let Some(extra) = &s.additional_data {
                        // RFC 4954 §4: server data with success goes in a 334
                        // and the client answers with an empty line.
                        if let Err(flow) = self.challenge(extra).await {
                            return flow;
                        }
                    }
                    if let Err((reply, why)) = self.shared.limits.check_login(&s.authcid).await {
                        self.log_auth_failure(&s.mechanism, why, &s.authcid);
                        self.reply(reply);
                        return Flow::Continue;
                    }
                    let authz = if s.authzid != s.authcid {
                        format!(", authzid={}", s.authzid)
                    } else {
                        String::new()
                    };
                    tracing::info!(
                        target: "auth",
                        "AUTH=server, relay=[{}], authid={}{authz}, mech={}, bits={}",
                        self.peer.ip(),
                        s.authcid,
                        s.mechanism,
                        s.bits
                    );
                    self.shared.registry.update(&self.id, |r| {
                        r.auth_id = s.authzid.clone();
                        r.mechanism = s.mechanism.clone();
                    });
                    self.shared.registry.set_account(&self.id, &s.authcid);
                    self.auth = Some(Authenticated {
                        authcid: s.authcid,
                        authzid: s.authzid,
                        mechanism: s.mechanism,
                        bits: s.bits,
                        trusted: s.trusted,
                    });
                    self.reply(r::auth_ok());
                    return Flow::Continue;
                }
                Some(spb::step_response::Result::Failure(f)) => {
                    use spb::failure::Kind;
                    let kind = Kind::try_from(f.kind).unwrap_or(Kind::Temporary);
                    let mech_name = if f.mechanism.is_empty() {
                        mech.name().to_owned()
                    } else {
                        f.mechanism.clone()
                    };
                    self.log_auth_failure(&mech_name, &f.reason, &f.authcid);
                    if let Some(extra) = &f.additional_data {
                        // RFC 5802 §7 server-error (`e=…`): sent as a 334
                        // the client answers (usually with `*`), then the
                        // failure reply.
                        if let Err(flow) = self.challenge(extra).await {
                            return flow;
                        }
                    }
                    self.reply(match kind {
                        Kind::ChannelBinding => r::auth_channel_binding(),
                        Kind::InvalidCredentials | Kind::ExchangeExpired => r::auth_invalid(),
                        Kind::Malformed => r::auth_malformed(),
                        Kind::UnsupportedMechanism => r::auth_unsupported(),
                        Kind::EncryptionRequired => r::auth_encryption_required(),
                        Kind::Temporary | Kind::RateLimited | Kind::Unspecified => {
                            r::auth_temporary()
                        }
                    });
                    return Flow::Continue;
                }
                None => {
                    self.log_auth_failure(mech.name(), "empty answer from sasl-auth", "");
                    self.reply(r::auth_temporary());
                    return Flow::Continue;
                }
            }
        }
    }

    async fn mail(&mut self, m: MailFrom) -> Flow {
        if self.helo.is_none() {
            self.reply(r::bad_sequence("Polite people say HELO first"));
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.reply(r::bad_sequence("Sender already specified"));
            return Flow::Continue;
        }
        if self.listener.requires_auth() && self.auth.is_none() {
            self.reply(r::auth_required());
            return Flow::Continue;
        }
        if m.size
            .is_some_and(|s| s > self.shared.cfg.frontend.max_message_size)
        {
            self.reply(r::too_big());
            return Flow::Continue;
        }
        if let Err(reply) = self.shared.policy.check_sender(&m.address) {
            self.reply(reply);
            return Flow::Continue;
        }
        // Last, so only a MAIL that would otherwise be accepted is counted.
        if let Some(flow) = self.count_for_limits(Counted::Message).await {
            return flow;
        }
        self.tx = Some(Transaction {
            from: m,
            rcpts: Vec::new(),
        });
        self.reply(Reply::new(250, "2.1.0", "Sender ok"));
        Flow::Continue
    }

    /// Count a message or recipient against the account's limits (only
    /// authenticated sessions have one). None: go on; else the command
    /// was answered, and the flow says whether the session closes.
    async fn count_for_limits(&mut self, counted: Counted) -> Option<Flow> {
        let account = self.auth.as_ref()?.authcid.clone();
        match self
            .shared
            .limits
            .count(counted, &account, self.peer.ip())
            .await
        {
            Verdict::Pass => None,
            Verdict::Refuse(reply) => {
                self.reply(reply);
                Some(Flow::Continue)
            }
            Verdict::Close(reply) => {
                self.reset_transaction();
                self.reply(reply);
                Some(Flow::Close)
            }
        }
    }

    async fn rcpt(&mut self, rc: RcptTo) -> Flow {
        let client = Client {
            ip: self.peer.ip(),
            trusted_auth: self.auth.as_ref().is_some_and(|a| a.trusted),
        };
        let max = self.shared.cfg.frontend.max_recipients;
        let Some(tx) = self.tx.as_ref() else {
            self.reply(r::bad_sequence("Need MAIL before RCPT"));
            return Flow::Continue;
        };
        if tx.rcpts.len() >= max {
            self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
            return Flow::Continue;
        }
        if let Err(reply) = self.shared.policy.check_recipient(&rc.address, client) {
            tracing::info!(rcpt = %rc.address, code = reply.code, "recipient refused");
            self.reply(reply);
            return Flow::Continue;
        }
        // Only a recipient the policy accepts is counted.
        if let Some(flow) = self.count_for_limits(Counted::Recipient).await {
            return flow;
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.rcpts.push(rc);
        }
        self.reply(Reply::new(250, "2.1.5", "Recipient ok"));
        Flow::Continue
    }

    async fn etrn(&mut self, node: String) {
        let domain = node.trim_start_matches(['@', '#']).to_owned();
        match self
            .shared
            .queue
            .flush(qpb::FlushRequest {
                domain: domain.clone(),
            })
            .await
        {
            Ok(_) => self.reply(Reply::new(
                250,
                "2.0.0",
                format!("Queuing for node {domain} started"),
            )),
            Err(_) => self.reply(Reply::new(
                458,
                "4.3.0",
                format!("Unable to queue messages for node {domain}"),
            )),
        }
    }

    fn envelope(&self, tx: &Transaction, queue_id: &str) -> qpb::Envelope {
        qpb::Envelope {
            mail_from: tx.from.address.clone(),
            recipients: tx
                .rcpts
                .iter()
                .map(|r| qpb::Recipient {
                    address: r.address.clone(),
                    notify: r.notify.iter().map(|n| (*n).to_owned()).collect(),
                    orcpt: r.orcpt.clone().unwrap_or_default(),
                })
                .collect(),
            auth_id: self
                .auth
                .as_ref()
                .map(|a| a.authzid.clone())
                .unwrap_or_default(),
            auth_param: auth_param(
                self.auth.as_ref().map(|a| (a.authzid.as_str(), a.trusted)),
                tx.from.auth.as_deref(),
            ),
            env_id: tx.from.env_id.clone().unwrap_or_default(),
            ret: tx.from.ret.unwrap_or_default().to_owned(),
            body: tx.from.body.unwrap_or_default().to_owned(),
            smtputf8: tx.from.smtputf8,
            client_address: self.peer.to_string(),
            session_id: self.id.clone(),
            // Delivery continues the submission's trace (or the one XTRACE named).
            traceparent: self
                .xtrace
                .clone()
                .unwrap_or_else(authrelay_telemetry::traceparent),
            queue_id: queue_id.to_owned(),
        }
    }

    /// Open the stream to relay-queue for the current transaction: the
    /// envelope, then our `Received:` header as the first body bytes.
    async fn begin_upload(&mut self) -> Upload {
        let tx = self.tx.as_ref().expect("callers check the transaction");
        let queue_id = new_id(8);
        let envelope = self.envelope(tx, &queue_id);
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let header = received::header(&received::ReceivedInfo {
            helo: &helo,
            client_ip: self.peer.ip(),
            hostname: &self.shared.cfg.hostname,
            esmtp,
            tls: self
                .tls
                .as_ref()
                .map(|t| (t.version.as_str(), t.cipher.as_str())),
            auth: self
                .auth
                .as_ref()
                .filter(|_| self.shared.cfg.frontend.received_shows_auth)
                .map(|a| (a.authzid.as_str(), a.mechanism.as_str(), a.bits)),
            authenticated: self.auth.is_some(),
            id: &queue_id,
            single_recipient: (tx.rcpts.len() == 1).then(|| tx.rcpts[0].address.as_str()),
            date: time::OffsetDateTime::now_utc(),
        });
        Upload::begin(&self.shared, queue_id, envelope, header).await
    }

    /// Log and answer the end of a message.
    async fn finish_upload(&mut self, upload: Upload) {
        let tx = self.tx.take().expect("callers check the transaction");
        let size = upload.size;
        let queue_id = upload.queue_id.clone();
        if upload.too_big {
            upload.abort();
            tracing::info!(queue_id = %queue_id, size, "message refused: over SIZE");
            self.reply(r::too_big());
            return;
        }
        match upload.finish().await {
            Ok(id) => {
                tracing::info!(
                    "{id}: from=<{}>, size={size}, nrcpts={}, relay=[{}], authid={}",
                    tx.from.address,
                    tx.rcpts.len(),
                    self.peer.ip(),
                    self.auth.as_ref().map_or("-", |a| a.authzid.as_str())
                );
                self.reply(Reply::new(
                    250,
                    "2.0.0",
                    format!("{id} Message accepted for delivery"),
                ));
            }
            Err(QueueFailure { why, disk_full }) => {
                tracing::warn!(queue_id = %queue_id, reason = %why, "message not queued");
                self.reply(if disk_full {
                    Reply::new(452, "4.3.1", "Insufficient system storage, try again later")
                } else {
                    r::queue_unavailable()
                });
            }
        }
    }

    async fn data(&mut self) -> Flow {
        if self.bdat.is_some() {
            self.reply(r::bad_sequence("DATA not allowed after BDAT"));
            return Flow::Continue;
        }
        let Some(tx) = self.tx.as_ref() else {
            self.reply(r::bad_sequence("Need MAIL command"));
            return Flow::Continue;
        };
        if tx.rcpts.is_empty() {
            // RFC 2920 §3.1: with pipelining, DATA after all RCPTs failed is 554.
            self.reply(Reply::new(554, "5.5.1", "No valid recipients"));
            return Flow::Continue;
        }
        let mut upload = self.begin_upload().await;
        self.reply(Reply::new(
            354,
            "",
            "Enter mail, end with \".\" on a line by itself",
        ));
        if self.flush().await.is_err() {
            upload.abort();
            return Flow::Close;
        }
        // Stream to relay-queue while the client sends: the body is never
        // held whole in memory, and SIZE is enforced as it arrives. Only
        // CRLF.CRLF ends the data (smtp-proto's receiver): a bare-LF or
        // bare-CR "end" is content, which stops SMTP smuggling.
        let mut receiver = DataReceiver::new();
        let mut body = Vec::with_capacity(CHUNK + 4096);
        let mut pending = self.lines.take_rest();
        let mut read_buf = vec![0u8; 16 * 1024];
        loop {
            let mut iter = pending.iter();
            let done = receiver.ingest(&mut iter, &mut body);
            let rest = iter.as_slice().to_vec();
            if body.len() >= CHUNK || done {
                // Keep the last two bytes back until the end: the receiver
                // may still take back a trailing CR when it sees CRLF.CRLF.
                let keep = if done { 0 } else { 2.min(body.len()) };
                let out: Vec<u8> = body.drain(..body.len() - keep).collect();
                upload.push(out).await;
            }
            if done {
                self.lines.push(&rest);
                break;
            }
            let timeout = self.shared.cfg.frontend.timeouts.data_block;
            let n = match tokio::time::timeout(timeout, self.stream.read(&mut read_buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => {
                    // Client gone or silent: no commit, so the queue discards it.
                    tracing::info!(queue_id = %upload.queue_id, "connection lost during DATA");
                    upload.abort();
                    return Flow::Close;
                }
            };
            pending = read_buf[..n].to_vec();
        }
        self.finish_upload(upload).await;
        Flow::Continue
    }

    /// RFC 3030 BDAT: exactly `size` octets follow the command. They are read
    /// even when the command is refused, so the session stays in step.
    async fn bdat(&mut self, size: usize, last: bool) -> Flow {
        let refusal = if self.tx.is_none() {
            Some(r::bad_sequence("Need MAIL command"))
        } else if self.tx.as_ref().is_some_and(|t| t.rcpts.is_empty()) {
            Some(Reply::new(554, "5.5.1", "No valid recipients"))
        } else {
            None
        };
        if refusal.is_none() && self.bdat.is_none() {
            self.bdat = Some(self.begin_upload().await);
        }
        let mut left = size;
        let mut read_buf = vec![0u8; 16 * 1024];
        while left > 0 {
            let chunk = self.lines.take(left.min(CHUNK));
            if chunk.is_empty() {
                let timeout = self.shared.cfg.frontend.timeouts.data_block;
                match tokio::time::timeout(timeout, self.stream.read(&mut read_buf)).await {
                    Ok(Ok(n)) if n > 0 => self.lines.push(&read_buf[..n]),
                    _ => {
                        if let Some(u) = self.bdat.take() {
                            u.abort();
                        }
                        return Flow::Close;
                    }
                }
                continue;
            }
            left -= chunk.len();
            if let Some(u) = self.bdat.as_mut() {
                u.push(chunk).await;
            }
        }
        if let Some(reply) = refusal {
            self.reply(reply);
            return Flow::Continue;
        }
        if last {
            let upload = self.bdat.take().expect("started above");
            self.finish_upload(upload).await;
        } else if self.bdat.as_ref().is_some_and(|u| u.too_big) {
            // Tell the client now; the rest of its chunks are read and dropped.
            self.reply(r::too_big());
            if let Some(u) = self.bdat.take() {
                u.abort();
            }
            self.tx = None;
        } else {
            self.reply(Reply::new(250, "2.0.0", format!("{size} octets received")));
        }
        Flow::Continue
    }
}

struct QueueFailure {
    why: String,
    disk_full: bool,
}

/// One message on its way to relay-queue: a client stream of envelope,
/// chunks, and a final Commit. Dropped without `finish`, the stream ends
/// without Commit and the queue discards the message.
pub(crate) struct Upload {
    queue_id: String,
    sender: tokio::sync::mpsc::Sender<qpb::EnqueueRequest>,
    call: tokio::task::JoinHandle<Result<qpb::EnqueueResponse, tonic::Status>>,
    queue_ok: bool,
    /// Body bytes from the client (SIZE counts these).
    size: u64,
    header_len: u64,
    max: u64,
    too_big: bool,
}

fn part(p: qpb::enqueue_request::Part) -> qpb::EnqueueRequest {
    qpb::EnqueueRequest { part: Some(p) }
}

impl Upload {
    async fn begin(
        shared: &Shared,
        queue_id: String,
        envelope: qpb::Envelope,
        header: String,
    ) -> Upload {
        let (sender, rx) = tokio::sync::mpsc::channel::<qpb::EnqueueRequest>(8);
        let queue = shared.queue.clone();
        // In the session's span, so the gRPC call carries its trace context.
        let call = tokio::spawn(tracing::Instrument::in_current_span(async move {
            queue.enqueue(ReceiverStream::new(rx)).await
        }));
        let header_len = header.len() as u64;
        let queue_ok = sender
            .send(part(qpb::enqueue_request::Part::Envelope(envelope)))
            .await
            .is_ok()
            && sender
                .send(part(qpb::enqueue_request::Part::Chunk(header.into_bytes())))
                .await
                .is_ok();
        Upload {
            queue_id,
            sender,
            call,
            queue_ok,
            size: 0,
            header_len,
            max: shared.cfg.frontend.max_message_size,
            too_big: false,
        }
    }

    async fn push(&mut self, bytes: Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.size > self.max {
            self.too_big = true;
        }
        if self.queue_ok && !self.too_big && !bytes.is_empty() {
            self.queue_ok = self
                .sender
                .send(part(qpb::enqueue_request::Part::Chunk(bytes)))
                .await
                .is_ok();
        }
    }

    fn abort(self) {
        self.call.abort();
    }

    /// Commit and wait for relay-queue's answer: the queue id once the
    /// message is on disk.
    async fn finish(self) -> Result<String, QueueFailure> {
        let Upload {
            sender,
            call,
            mut queue_ok,
            size,
            header_len,
            ..
        } = self;
        if queue_ok {
            let commit = qpb::Commit {
                size: size + header_len,
            };
            queue_ok = sender
                .send(part(qpb::enqueue_request::Part::Commit(commit)))
                .await
                .is_ok();
        }
        drop(sender);
        let answer = tokio::time::timeout(Duration::from_secs(120), call).await;
        let fail = |why: String, disk_full| Err(QueueFailure { why, disk_full });
        match answer {
            Ok(Ok(Ok(resp))) if queue_ok => Ok(resp.queue_id),
            Ok(Ok(Ok(_))) => fail("relay-queue: stream closed early".into(), false),
            Ok(Ok(Err(status))) => fail(
                format!("relay-queue: {} {}", status.code(), status.message()),
                status.code() == tonic::Code::ResourceExhausted,
            ),
            Ok(Err(e)) => fail(format!("relay-queue call: {e}"), false),
            Err(_) => fail("relay-queue: no answer in time".into(), false),
        }
    }
}

/// A call that failed before reaching sasl-auth (a replica that just died
/// and the balancer has not dropped yet) consumed no exchange state, so it
/// may go once more — to another replica.
fn retry_is_safe(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}

/// RFC 4954 §5: the AUTH= value passed on with a message — the session's
/// authorization id when it authenticated with a trusted mechanism, else
/// `<>` ("unknown") when the client gave one, else nothing. A client's own
/// AUTH= value is never passed on: it could name anyone.
pub(crate) fn auth_param(auth: Option<(&str, bool)>, given: Option<&str>) -> String {
    match (auth, given) {
        (Some((authzid, true)), _) => authzid.to_owned(),
        (_, Some(_)) => "<>".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::auth_param;

    #[test]
    fn auth_param_is_the_trusted_authzid_never_the_clients_claim() {
        assert_eq!(auth_param(Some(("test@r", true)), Some("<>")), "test@r");
        assert_eq!(auth_param(Some(("test@r", true)), None), "test@r");
        assert_eq!(auth_param(Some(("test@r", false)), Some("boss@r")), "<>");
        assert_eq!(auth_param(None, Some("boss@r")), "<>");
        assert_eq!(auth_param(None, None), "");
    }
}
