//! AUTH: the SASL exchange with sasl-auth, one call per step, and what
//! the session, the logs and the live-session registry learn of it.

use authrelay_proto::sasl::v1 as spb;
use authrelay_sasl::Mechanism;
use authrelay_smtp::{Action, AuthCommand, AuthFailure, AuthStart, Authenticated};

use super::{Connection, Flow};

impl Connection {
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
    pub(super) async fn auth(&mut self, cmd: AuthCommand) -> Flow {
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
}

/// A call that failed before reaching sasl-auth (a replica that just died
/// and the balancer has not dropped yet) consumed no exchange state, so it
/// may go once more — to another replica.
fn retry_is_safe(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
}
