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
use authrelay_smtp::{Action, Closing, Counted, Line, LineBuffer, Session, SessionParams, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Shared;
use crate::gate::{IDLE_AFTER, InProgress};
use crate::registry::Registration;
use crate::stream::Stream;
use crate::upload::Upload;

mod auth;
mod data;

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
}
