//! One client connection: the I/O around the sans-IO SMTP session
//! (`authrelay_smtp::Session`). It reads lines, hands them to the session
//! and performs the actions the session returns — the TLS handshake, the
//! SASL exchange with sasl-auth, streaming a message to relay-queue, ETRN,
//! counting against the account's limits — then tells the session how they
//! went. Timeouts, drain, operator ends, spans, metrics and logs live here
//! too; SMTP rules live in the session.

use std::net::SocketAddr;
use std::sync::Arc;

use authrelay_config::Listener;
use authrelay_proto::queue::v1 as qpb;
use authrelay_proto::sasl::v1 as spb;
use authrelay_sasl::Mechanism;
use authrelay_smtp::{
    Action, AuthCommand, AuthFailure, AuthStart, Authenticated, Closing, Counted, Delivery, Line,
    LineBuffer, Session, SessionParams, Verdict,
};
use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Shared;
use crate::gate::{IDLE_AFTER, InProgress};
use crate::received;
use crate::registry::Registration;
use crate::stream::Stream;
use crate::upload::{QueueFailure, Upload};

/// Body bytes forwarded to relay-queue per gRPC message.
const CHUNK: usize = 64 * 1024;

/// What the TLS handshake gave this connection.
struct TlsInfo {
    version: String,
    cipher: String,
    exporter: Option<Vec<u8>>,
    end_point: Vec<u8>,
    /// Identity from a verified client certificate (EXTERNAL).
    client_identity: Option<String>,
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

pub struct Connection {
    shared: Arc<Shared>,
    stream: Stream,
    listener: Listener,
    peer: SocketAddr,
    id: String,
    lines: LineBuffer,
    session: Session,
    tls: Option<TlsInfo>,
    registration: Registration,
    /// The BDAT message being uploaded.
    bdat: Option<Upload>,
    /// This session's place among those in progress (see `gate`): given
    /// up while it waits on its client, taken again when the client speaks.
    place: Option<InProgress>,
}

pub fn new_id(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode_upper(raw)
}

impl Connection {
    pub fn new(
        shared: Arc<Shared>,
        stream: TcpStream,
        listener: Listener,
        peer: SocketAddr,
        id: String,
        registration: Registration,
        admitted: InProgress,
    ) -> Self {
        let session = Session::new(
            shared.smtp.clone(),
            SessionParams {
                peer: peer.ip(),
                requires_auth: listener.requires_auth(),
                implicit_tls: listener.role == authrelay_config::ListenerRole::Submissions,
                xtrace: shared.policy.may_xtrace(peer.ip()),
                mechanisms: shared.cfg.mechanisms_for(false, false, false),
            },
        );
        Connection {
            registration,
            bdat: None,
            place: Some(admitted),
            shared,
            stream: Stream::Plain(stream),
            listener,
            peer,
            id,
            lines: LineBuffer::default(),
            session,
            tls: None,
        }
    }

    /// Waiting on the client: the session gives up its place (see `gate`).
    fn idle(&mut self) {
        self.place = None;
    }

    /// The client's bytes are in: the session is in progress again.
    fn working(&mut self) {
        if self.place.is_none() {
            self.place = Some(self.shared.gate.enter());
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.session.output().is_empty() {
            // A client that never reads its replies must not hold the session
            // (its task, buffers and connection slot) forever: writing gets the
            // command timeout too (RFC 5321 §4.5.3.2).
            let timeout = self.shared.cfg.frontend.timeouts.command;
            let (stream, out) = (&mut self.stream, self.session.output());
            let write = async move {
                stream.write_all(out).await?;
                stream.flush().await
            };
            tokio::time::timeout(timeout, write)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            self.session.output_written();
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
        let greeting = self.session.connected();
        if let Flow::Continue = self.perform(greeting).await {
            self.command_loop().await;
        }
        // A BDAT message left open ends without Commit: the queue drops it.
        self.discard_upload();
        self.flush().await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    async fn command_loop(&mut self) {
        let session_deadline =
            tokio::time::Instant::now() + self.shared.cfg.frontend.timeouts.session;
        loop {
            if tokio::time::Instant::now() > session_deadline {
                self.session.close(Closing::Timeout);
                return;
            }
            let max = self.shared.cfg.frontend.max_line_length;
            let line = match self.read_line(max, true).await {
                Ok(l) => l,
                Err(ReadError::Closed) => return,
                Err(ReadError::Timeout) => return self.session.close(Closing::Timeout),
                Err(ReadError::Draining) => return self.session.close(Closing::ShuttingDown),
                Err(ReadError::Ended) => {
                    // An account suspension says why; else the operator ended it.
                    let why = self
                        .registration
                        .ending
                        .lock()
                        .ok()
                        .and_then(|mut w| w.take());
                    return self
                        .session
                        .close(why.map_or(Closing::EndedByOperator, Closing::Ended));
                }
            };
            let action = self.session.line(line);
            if let Flow::Close = self.perform(action).await {
                return;
            }
        }
    }

    /// Do what the session asked.
    async fn perform(&mut self, action: Action) -> Flow {
        match action {
            Action::Continue => Flow::Continue,
            Action::Close => Flow::Close,
            Action::StartTls => self.starttls().await,
            Action::Auth(cmd) => self.auth(cmd).await,
            Action::ReceiveData => self.data().await,
            Action::ReceiveChunk { size, last, begin } => self.chunk(size, last, begin).await,
            Action::SkipChunk { size } => {
                if !self.read_chunk(size).await {
                    return Flow::Close;
                }
                self.session.chunk_skipped();
                Flow::Continue
            }
            Action::DiscardMessage => {
                self.discard_upload();
                Flow::Continue
            }
            Action::Etrn(domain) => {
                self.etrn(domain).await;
                Flow::Continue
            }
            Action::Count(counted) => self.count(counted).await,
        }
    }

    /// Count a message or recipient against the authenticated account's
    /// limits (`[limits.per_user]`).
    async fn count(&mut self, counted: Counted) -> Flow {
        let verdict = match self.session.authenticated() {
            Some(auth) => {
                self.shared
                    .limits
                    .count(counted, &auth.authcid, self.peer.ip())
                    .await
            }
            None => Verdict::Pass,
        };
        match self.session.counted(verdict) {
            Action::Close => Flow::Close,
            _ => Flow::Continue,
        }
    }

    fn discard_upload(&mut self) {
        if let Some(u) = self.bdat.take() {
            u.abort();
        }
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
                self.working();
                return Ok(line);
            }
            self.flush().await.map_err(|_| ReadError::Closed)?;
            let drain_ok = idle && self.session.transaction().is_none();
            if drain_ok && *self.shared.draining.borrow() {
                return Err(ReadError::Draining);
            }
            let mut buf = [0u8; 4096];
            let mut draining = self.shared.draining.clone();
            let end = self.registration.end.clone();
            // A client that answers within IDLE_AFTER keeps the place; one
            // that takes longer (idle, or far away) gives it up meanwhile.
            let idle_at = tokio::time::Instant::now() + IDLE_AFTER;
            let n = loop {
                tokio::select! {
                    _ = end.notified() => return Err(ReadError::Ended),
                    res = tokio::time::timeout_at(deadline, self.stream.read(&mut buf)) => break match res {
                        Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadError::Closed),
                        Ok(Ok(n)) => n,
                        Err(_) => return Err(ReadError::Timeout),
                    },
                    _ = draining.wait_for(|d| *d), if drain_ok => return Err(ReadError::Draining),
                    _ = tokio::time::sleep_until(idle_at), if self.place.is_some() && self.shared.gate.gating() => self.idle(),
                }
            };
            self.lines.push(&buf[..n]);
        }
    }

    /// STARTTLS, or the handshake of an implicit-TLS listener before the
    /// greeting: flush the session's `220`, if any, then handshake.
    async fn starttls(&mut self) -> Flow {
        if self.flush().await.is_err() {
            return Flow::Close;
        }
        // RFC 3207 §4.2 and the STARTTLS injection class: anything the
        // client pipelined after STARTTLS came in the clear; discard it.
        self.lines.clear();
        if !self.handshake().await {
            return Flow::Close;
        }
        // -PLUS only where the client's default binding exists: TLS 1.3's
        // tls-exporter (TLS 1.2 clients bind with tls-unique, which we
        // cannot offer).
        let tls = self.tls.as_ref();
        let mechanisms = self.shared.cfg.mechanisms_for(
            true,
            tls.is_some_and(|t| t.exporter.is_some()),
            tls.is_some_and(|t| t.client_identity.is_some()),
        );
        if let Action::DiscardMessage = self.session.tls_started(mechanisms) {
            self.discard_upload();
        }
        Flow::Continue
    }

    /// Handshake on the current plain stream; false when it failed.
    async fn handshake(&mut self) -> bool {
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
        // Paced by the client: a handshake that dawdles holds no place.
        self.idle();
        let accepted = tokio::time::timeout(timeout, acceptor.accept(plain)).await;
        self.working();
        match accepted {
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
    /// decoded (RFC 4954 §4). `Err` ends the AUTH command: the session
    /// answered the client's `*`, over-long or malformed line (Continue), or
    /// the client went away (Close).
    async fn challenge(&mut self, data: &[u8]) -> Result<Vec<u8>, Flow> {
        self.session.auth_challenge(data);
        let max = self.shared.cfg.frontend.max_auth_line_length;
        let line = self.read_line(max, false).await.map_err(|_| Flow::Close)?;
        self.session.auth_answer(line).ok_or(Flow::Continue)
    }

    /// One AUTH command, as one span (the root of its trace below the
    /// session): mechanism, outcome and, if allowed, the user; the outcome
    /// is read off the reply the client got, so span, metric and client agree.
    async fn auth(&mut self, cmd: AuthCommand) -> Flow {
        let mech_label = Mechanism::from_name(&cmd.mechanism).map_or("unknown", |m| m.name());
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
        if let Some(tp) = self.session.xtrace() {
            authrelay_telemetry::adopt_parent(&span, tp);
        }
        authrelay_telemetry::record_trace_ids(&span);
        let started = std::time::Instant::now();
        let flow = tracing::Instrument::instrument(self.auth_inner(&cmd), span.clone()).await;
        let outcome = match self.session.last_code() {
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
            && let Some(a) = self.session.authenticated()
        {
            span.record("enduser.id", a.authzid.as_str());
        }
        authrelay_telemetry::metrics::auth(mech_label, outcome, started.elapsed());
        flow
    }

    async fn auth_inner(&mut self, cmd: &AuthCommand) -> Flow {
        let (mech, initial_response) = match self.session.begin_auth(cmd) {
            AuthStart::Exchange {
                mechanism,
                initial_response,
            } => (mechanism, initial_response),
            AuthStart::Done(Action::Close) => return Flow::Close,
            AuthStart::Done(_) => return Flow::Continue,
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
        let facts = self.session_facts();
        let sasl = self.shared.sasl.clone();
        let start = spb::StartRequest {
            mechanism: mech.name().to_owned(),
            initial_response,
            session: Some(facts.clone()),
            responses,
        };
        let mut resp = match sasl.start(start.clone()).await {
            Err(s) if retry_is_safe(&s) => sasl.start(start.clone()).await,
            other => other,
        };
        // A sasl-auth older than `StartRequest.responses` (during a rolling
        // upgrade) asks the prompts again: those are answered from here.
        let mut answered = prompts.iter().zip(&start.responses);
        loop {
            let result = match resp {
                Ok(r) => r.result,
                Err(status) => {
                    self.log_auth_failure(
                        mech.name(),
                        &format!("sasl-auth unavailable ({})", status.code()),
                        "",
                    );
                    self.session.auth_finished(Err(AuthFailure::Temporary));
                    return Flow::Continue;
                }
            };
            match result {
                Some(spb::step_response::Result::Challenge(ch)) => {
                    let response = match answered.next() {
                        Some((prompt, answer)) if ch.data == *prompt => answer.clone(),
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
                    return self.auth_succeeded(s).await;
                }
                Some(spb::step_response::Result::Failure(f)) => {
                    return self.auth_failed(mech, f).await;
                }
                None => {
                    self.log_auth_failure(mech.name(), "empty answer from sasl-auth", "");
                    self.session.auth_finished(Err(AuthFailure::Temporary));
                    return Flow::Continue;
                }
            }
        }
    }

    /// sasl-auth accepted the credentials: the limits may still refuse
    /// the account (suspended), else the session is authenticated.
    async fn auth_succeeded(&mut self, s: spb::Success) -> Flow {
        if let Some(extra) = &s.additional_data {
            // RFC 4954 §4: server data with success goes in a 334
            // and the client answers with an empty line.
            if let Err(flow) = self.challenge(extra).await {
                return flow;
            }
        }
        if let Err((reply, why)) = self.shared.limits.check_login(&s.authcid).await {
            self.log_auth_failure(&s.mechanism, why, &s.authcid);
            self.session.auth_finished(Err(AuthFailure::Refused(reply)));
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
        self.session.auth_finished(Ok(Authenticated {
            authcid: s.authcid,
            authzid: s.authzid,
            mechanism: s.mechanism,
            bits: s.bits,
            trusted: s.trusted,
        }));
        Flow::Continue
    }

    /// sasl-auth refused: log why, send its server-error if it has one,
    /// answer the client with the failure's reply.
    async fn auth_failed(&mut self, mech: Mechanism, f: spb::Failure) -> Flow {
        use spb::failure::Kind;
        let kind = Kind::try_from(f.kind).unwrap_or(Kind::Temporary);
        let mech_name = if f.mechanism.is_empty() {
            mech.name()
        } else {
            f.mechanism.as_str()
        };
        self.log_auth_failure(mech_name, &f.reason, &f.authcid);
        if let Some(extra) = &f.additional_data {
            // RFC 5802 §7 server-error (`e=…`): sent as a 334
            // the client answers (usually with `*`), then the
            // failure reply.
            if let Err(flow) = self.challenge(extra).await {
                return flow;
            }
        }
        self.session.auth_finished(Err(match kind {
            Kind::ChannelBinding => AuthFailure::ChannelBinding,
            Kind::InvalidCredentials | Kind::ExchangeExpired => AuthFailure::InvalidCredentials,
            Kind::Malformed => AuthFailure::Malformed,
            Kind::UnsupportedMechanism => AuthFailure::UnsupportedMechanism,
            Kind::EncryptionRequired => AuthFailure::EncryptionRequired,
            Kind::Temporary | Kind::RateLimited | Kind::Unspecified => AuthFailure::Temporary,
        }));
        Flow::Continue
    }

    async fn etrn(&mut self, domain: String) {
        let started = self
            .shared
            .queue
            .flush(qpb::FlushRequest {
                domain: domain.clone(),
            })
            .await
            .is_ok();
        self.session.etrn_finished(&domain, started);
    }

    fn envelope(&self, queue_id: &str) -> qpb::Envelope {
        let tx = self
            .session
            .transaction()
            .expect("the session asks for uploads in a transaction");
        let auth = self.session.authenticated();
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
            auth_id: auth.map(|a| a.authzid.clone()).unwrap_or_default(),
            auth_param: self.session.auth_param(),
            env_id: tx.from.env_id.clone().unwrap_or_default(),
            ret: tx.from.ret.unwrap_or_default().to_owned(),
            body: tx.from.body.unwrap_or_default().to_owned(),
            smtputf8: tx.from.smtputf8,
            client_address: self.peer.to_string(),
            session_id: self.id.clone(),
            // Delivery continues the submission's trace (or the one XTRACE named).
            traceparent: self
                .session
                .xtrace()
                .map(str::to_owned)
                .unwrap_or_else(authrelay_telemetry::traceparent),
            queue_id: queue_id.to_owned(),
        }
    }

    /// Open the stream to relay-queue for the current transaction: the
    /// envelope, then our `Received:` header as the first body bytes.
    async fn begin_upload(&mut self) -> Upload {
        let queue_id = new_id(8);
        let envelope = self.envelope(&queue_id);
        let rcpts = &self
            .session
            .transaction()
            .expect("the session asks for uploads in a transaction")
            .rcpts;
        let helo = self.session.helo();
        let auth = self.session.authenticated();
        let header = received::header(&received::ReceivedInfo {
            helo: helo.map_or("", |h| h.host.as_str()),
            client_ip: self.peer.ip(),
            hostname: &self.shared.cfg.hostname,
            esmtp: helo.is_some_and(|h| h.esmtp),
            tls: self
                .tls
                .as_ref()
                .map(|t| (t.version.as_str(), t.cipher.as_str())),
            auth: auth
                .filter(|_| self.shared.cfg.frontend.received_shows_auth)
                .map(|a| (a.authzid.as_str(), a.mechanism.as_str(), a.bits)),
            authenticated: auth.is_some(),
            id: &queue_id,
            single_recipient: (rcpts.len() == 1).then(|| rcpts[0].address.as_str()),
            date: time::OffsetDateTime::now_utc(),
        });
        Upload::begin(&self.shared, queue_id, envelope, header).await
    }

    /// Log the end of a message and tell the session.
    async fn finish_upload(&mut self, upload: Upload) {
        let size = upload.size;
        let queue_id = upload.queue_id.clone();
        let delivery = if upload.too_big {
            upload.abort();
            tracing::info!(queue_id = %queue_id, size, "message refused: over SIZE");
            Delivery::TooBig
        } else {
            match upload.finish().await {
                Ok(id) => {
                    if let Some(tx) = self.session.transaction() {
                        tracing::info!(
                            "{id}: from=<{}>, size={size}, nrcpts={}, relay=[{}], authid={}",
                            tx.from.address,
                            tx.rcpts.len(),
                            self.peer.ip(),
                            self.session
                                .authenticated()
                                .map_or("-", |a| a.authzid.as_str())
                        );
                    }
                    Delivery::Queued { id }
                }
                Err(QueueFailure { why, disk_full }) => {
                    tracing::warn!(queue_id = %queue_id, reason = %why, "message not queued");
                    if disk_full {
                        Delivery::StorageFull
                    } else {
                        Delivery::Unavailable
                    }
                }
            }
        };
        self.session.message_finished(delivery);
    }

    async fn data(&mut self) -> Flow {
        let mut upload = self.begin_upload().await;
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
            self.idle();
            let read = tokio::time::timeout(timeout, self.stream.read(&mut read_buf)).await;
            self.working();
            let n = match read {
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

    /// RFC 3030: a BDAT chunk the session accepted goes into the message's
    /// upload (opened with its first chunk).
    async fn chunk(&mut self, size: usize, last: bool, begin: bool) -> Flow {
        if begin {
            self.bdat = Some(self.begin_upload().await);
        }
        if !self.read_chunk(size).await {
            return Flow::Close;
        }
        if last {
            match self.bdat.take() {
                Some(upload) => self.finish_upload(upload).await,
                None => self.session.message_finished(Delivery::Unavailable),
            }
        } else {
            let too_big = self.bdat.as_ref().is_some_and(|u| u.too_big);
            if too_big {
                // The rest of its chunks are read and dropped.
                self.discard_upload();
            }
            self.session.chunk_received(size, too_big);
        }
        Flow::Continue
    }

    /// Read exactly `size` octets, into the BDAT upload if one is open.
    /// False (and the upload aborted) when the client went away.
    async fn read_chunk(&mut self, size: usize) -> bool {
        let mut left = size;
        let mut read_buf = vec![0u8; 16 * 1024];
        while left > 0 {
            let chunk = self.lines.take(left.min(CHUNK));
            if chunk.is_empty() {
                let timeout = self.shared.cfg.frontend.timeouts.data_block;
                self.idle();
                let read = tokio::time::timeout(timeout, self.stream.read(&mut read_buf)).await;
                self.working();
                match read {
                    Ok(Ok(n)) if n > 0 => self.lines.push(&read_buf[..n]),
                    _ => {
                        self.discard_upload();
                        return false;
                    }
                }
                continue;
            }
            left -= chunk.len();
            if let Some(u) = self.bdat.as_mut() {
                u.push(chunk).await;
            }
        }
        true
    }
}

/// A call that failed before reaching sasl-auth (a replica that just died
/// and the balancer has not dropped yet) consumed no exchange state, so it
/// may go once more — to another replica.
fn retry_is_safe(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}
