//! sasl-auth: the SASL server.
//!
//! Runs mechanism exchanges from the shared `authrelay-sasl` crate. Between
//! SMTP round trips an exchange lives in the shared store under a random id
//! with a short TTL, so any replica can take any step; it is taken with an
//! atomic GETDEL, so one step cannot be played twice. PLAIN and LOGIN waiting
//! for credentials hold nothing of the server's (no challenge, no nonce), so
//! their state travels in the exchange id instead and costs no Redis at all. Brute-force counters
//! live in the same store and so are shared by every replica and frontend.
//! Unknown users are verified against a dummy secret: same reply, same log
//! shape, about the same time as a wrong password.

mod cache;
mod error;
mod policy;

use std::sync::Arc;
use std::time::Duration;

use authrelay_config::Config;
use authrelay_proto::credentials::v1 as cpb;
use authrelay_proto::credentials::v1::credential_store_client::CredentialStoreClient;
use authrelay_proto::sasl::v1 as pb;
use authrelay_proto::sasl::v1::sasl_auth_server::{SaslAuth, SaslAuthServer};
use authrelay_sasl::{
    ChannelBinding, ChannelBindingType, Failure, Mechanism, Outcome, SecretFamily, SecretRequest,
    ServerConfig, ServerExchange, Step, StoredSecret,
};
use authrelay_state::SharedState;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

pub use error::AuthError;
pub use policy::split_login;

/// What is kept in the store between steps: the exchange (which never holds
/// a secret — see `authrelay_sasl::ServerExchange`) and the session it
/// belongs to, so another client cannot step someone else's exchange.
#[derive(Serialize, Deserialize)]
struct ExchangeRecord {
    session_id: String,
    client_ip: String,
    exchange: ServerExchange,
}

pub struct SaslService {
    cfg: Arc<Config>,
    state: SharedState,
    creds: CredentialStoreClient<authrelay_telemetry::grpc::Traced>,
    admin_token: Option<String>,
    /// Argon2id needs ~19 MiB and tens of ms per verification: bound how many
    /// run at once so a login storm cannot exhaust memory or starve the runtime.
    hashing: Arc<Semaphore>,
    /// PLAIN/LOGIN verifications remembered for `sasl.verified_cache_ttl`.
    verified: Option<cache::VerifiedCache>,
}

impl SaslService {
    pub fn new(cfg: Config, state: SharedState) -> Result<Self, anyhow::Error> {
        let ttl = cfg.sasl.verified_cache_ttl;
        let verified = (!ttl.is_zero()).then(|| cache::VerifiedCache::new(ttl, 100_000));
        let channel = authrelay_grpc_tls::channel(
            &cfg,
            cfg.endpoints.credential_store.as_slice(),
            cfg.endpoints.timeout,
        )
        .map_err(|e| anyhow::anyhow!("endpoints.credential_store: {e}"))?;
        let admin_token = read_token(&cfg)?;
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(SaslService {
            cfg: Arc::new(cfg),
            state,
            creds: CredentialStoreClient::new(authrelay_telemetry::grpc::traced(channel)),
            admin_token,
            hashing: Arc::new(Semaphore::new(cpus * 2)),
            verified,
        })
    }

    fn server_config(&self, s: &pb::SessionFacts) -> ServerConfig {
        let mut channel_bindings = Vec::new();
        if !s.cb_tls_exporter.is_empty() {
            channel_bindings.push(ChannelBinding {
                kind: ChannelBindingType::TlsExporter,
                data: s.cb_tls_exporter.clone(),
            });
        }
        if !s.cb_tls_server_end_point.is_empty() {
            channel_bindings.push(ChannelBinding {
                kind: ChannelBindingType::TlsServerEndPoint,
                data: s.cb_tls_server_end_point.clone(),
            });
        }
        let offered = self.offered(s);
        ServerConfig {
            hostname: if s.server_name.is_empty() {
                self.cfg.hostname.clone()
            } else {
                s.server_name.clone()
            },
            realms: self.cfg.realms(),
            service: "smtp".into(),
            plus_advertised: offered.iter().any(|m| m.needs_channel_binding()),
            channel_bindings,
            external_identity: Some(s.client_cert_identity.clone()).filter(|i| !i.is_empty()),
        }
    }

    fn offered(&self, s: &pb::SessionFacts) -> Vec<Mechanism> {
        let cb = !s.cb_tls_exporter.is_empty() || !s.cb_tls_server_end_point.is_empty();
        self.cfg
            .mechanisms_for(s.tls, cb, !s.client_cert_identity.is_empty())
    }

    fn authed<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(t) = &self.admin_token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            req.metadata_mut().insert("authorization", v);
        }
        req
    }

    async fn fetch_secret(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
    ) -> Result<Option<StoredSecret>, AuthError> {
        let started = std::time::Instant::now();
        let resp = self
            .creds
            .clone()
            .get_secret(self.authed(cpb::GetSecretRequest {
                name: name.to_owned(),
                realm: realm.to_owned(),
                family: family.name().to_owned(),
            }))
            .await
            .map_err(|s| AuthError::Dependency(format!("credential-store: {}", s.code())))?
            .into_inner();
        let m = &authrelay_telemetry::metrics::METRICS;
        authrelay_telemetry::metrics::observe(
            &m.grpc_client_duration,
            "credential-store/GetSecret",
            started.elapsed(),
        );
        if !resp.found {
            return Ok(None);
        }
        let secret = resp
            .secret
            // Another family than asked is as malformed as a bad shape.
            .and_then(|s| StoredSecret::try_from(s).ok())
            .filter(|s| s.family() == family)
            .ok_or_else(|| AuthError::Dependency("credential-store: malformed secret".into()))?;
        Ok(Some(secret))
    }

    /// Drive the exchange until it needs the client again (a challenge,
    /// stored under an id) or is over.
    async fn drive(
        &self,
        mut exchange: ServerExchange,
        mut step: Step,
        scfg: ServerConfig,
        session: &pb::SessionFacts,
        mut ip_pending: bool,
    ) -> Result<pb::StepResponse, AuthError> {
        let mech = exchange.mechanism();
        let client_ip = policy::client_ip(&session.client_address);
        let mut login: Option<(String, String)> = None;
        loop {
            // A step that ends without a Redis write of its own still answers
            // to the per-address limit first (EXTERNAL, a malformed message).
            if ip_pending && matches!(step, Step::Success(_) | Step::Failure(_)) {
                policy::check_limits(&self.state, &self.cfg, &client_ip, true, None, None, mech)
                    .await?;
                ip_pending = false;
            }
            match step {
                Step::NeedSecret(SecretRequest {
                    authcid,
                    realm,
                    family,
                }) => {
                    let (name, realm) =
                        split_login(&authcid, realm.as_deref(), &self.cfg.default_realm);
                    policy::check_limits(
                        &self.state,
                        &self.cfg,
                        &client_ip,
                        ip_pending,
                        Some((&name, &realm)),
                        None,
                        mech,
                    )
                    .await?;
                    ip_pending = false;
                    let secret = self.fetch_secret(&name, &realm, family).await?;
                    login = Some((name, realm));
                    let fingerprint = match (&self.verified, &secret) {
                        (Some(cache), Some(stored)) => {
                            exchange.plaintext_fingerprint(cache.key(), stored)
                        }
                        _ => None,
                    };
                    let cached = fingerprint
                        .is_some_and(|fp| self.verified.as_ref().is_some_and(|c| c.hit(&fp)));
                    step = if cached {
                        exchange.resume_verified()
                    } else if family == SecretFamily::Password {
                        let permit = self
                            .hashing
                            .clone()
                            .acquire_owned()
                            .await
                            .map_err(|_| AuthError::Dependency("shutting down".into()))?;
                        let cfg = scfg.clone();
                        let (ex, st) = tokio::task::spawn_blocking(move || {
                            let _permit = permit;
                            let st = exchange.resume(&cfg, secret.as_ref());
                            (exchange, st)
                        })
                        .await
                        .map_err(|e| AuthError::Dependency(format!("verifier task: {e}")))?;
                        exchange = ex;
                        if let (Step::Success(_), Some(fp), Some(cache)) =
                            (&st, fingerprint, &self.verified)
                        {
                            cache.insert(fp);
                        }
                        st
                    } else {
                        exchange.resume(&scfg, secret.as_ref())
                    };
                }
                Step::Challenge(data) => {
                    let record = ExchangeRecord {
                        session_id: session.session_id.clone(),
                        client_ip: client_ip.clone(),
                        exchange,
                    };
                    let bytes = serde_json::to_vec(&record)
                        .map_err(|e| AuthError::Dependency(format!("encode exchange: {e}")))?;
                    // PLAIN/LOGIN between prompts hold only what the client
                    // sent: the state rides in the id, no Redis write or GETDEL.
                    // Any other state is stored under a new random id per
                    // challenge: a captured id is useless after its step.
                    let (id, key) = if record.exchange.awaits_client_credentials() {
                        (inline_id(&bytes), None)
                    } else {
                        let id = new_exchange_id();
                        let key = exchange_key(&id);
                        (id, Some(key))
                    };
                    let put = key
                        .as_deref()
                        .map(|k| (k, bytes.as_slice(), self.cfg.sasl.exchange_ttl));
                    policy::check_limits(
                        &self.state,
                        &self.cfg,
                        &client_ip,
                        ip_pending,
                        None,
                        put,
                        mech,
                    )
                    .await?;
                    return Ok(challenge(id, data));
                }
                Step::Success(outcome) => {
                    return self.finish(outcome, &exchange, login, session).await;
                }
                Step::Failure(f) => {
                    let authcid = login
                        .as_ref()
                        .map(|(n, r)| format!("{n}@{r}"))
                        .unwrap_or_default();
                    if matches!(f, Failure::InvalidCredentials) {
                        policy::record_failure(&self.state, &self.cfg, &client_ip, login.as_ref())
                            .await;
                    }
                    return Err(AuthError::Mechanism {
                        failure: f,
                        mechanism: mech,
                        authcid,
                    });
                }
            }
        }
    }

    async fn finish(
        &self,
        outcome: Outcome,
        exchange: &ServerExchange,
        login: Option<(String, String)>,
        session: &pb::SessionFacts,
    ) -> Result<pb::StepResponse, AuthError> {
        let mech = outcome.mechanism;
        let (name, realm) = match login {
            Some(l) => l,
            // EXTERNAL needs no secret: the identity comes from the certificate.
            None => {
                let mapped = self
                    .cfg
                    .sasl
                    .external
                    .map
                    .get(&outcome.authcid)
                    .cloned()
                    .unwrap_or_else(|| outcome.authcid.clone());
                split_login(&mapped, None, &self.cfg.default_realm)
            }
        };
        let authcid = format!("{name}@{realm}");
        // RFC 2831 §2.1: a nonce is good for one authentication. The store's
        // atomic claim makes that hold across replicas.
        if let Some(nonce) = exchange.digest_nonce()
            && !self
                .state
                .claim(
                    &format!("sasl:nonce:{nonce}"),
                    self.cfg.sasl.exchange_ttl * 2,
                )
                .await?
        {
            return Err(AuthError::Replay {
                mechanism: mech,
                authcid,
            });
        }
        let authzid = policy::authorize(
            &self.cfg,
            &authcid,
            outcome.authzid.as_deref(),
            &outcome.authcid,
        )
        .map_err(|_| AuthError::AuthzDenied {
            mechanism: mech,
            authcid: authcid.clone(),
        })?;
        let trusted = self.cfg.trusted_mechanisms().contains(&mech);
        tracing::debug!(mech = mech.name(), session = %session.session_id, "authenticated");
        Ok(pb::StepResponse {
            result: Some(pb::step_response::Result::Success(pb::Success {
                authcid,
                authzid,
                realm,
                mechanism: mech.name().to_owned(),
                bits: outcome.ssf,
                trusted,
                additional_data: outcome.additional_data,
            })),
        })
    }

    async fn start_inner(&self, r: pb::StartRequest) -> Result<pb::StepResponse, AuthError> {
        let session = r.session.unwrap_or_default();
        let mech = Mechanism::from_name(&r.mechanism).ok_or(AuthError::UnsupportedMechanism)?;
        let cb = !session.cb_tls_exporter.is_empty() || !session.cb_tls_server_end_point.is_empty();
        if mech.is_plaintext() && !session.tls && !self.cfg.sasl.allow_plaintext_without_tls {
            return Err(AuthError::EncryptionRequired(mech));
        }
        let all = self
            .cfg
            .mechanisms_for(true, cb, !session.client_cert_identity.is_empty());
        if !all.contains(&mech) {
            return Err(AuthError::UnsupportedMechanism);
        }
        // The per-address limit is read with the step's first Redis write
        // (the exchange, or the per-user count): one round trip, not two.
        let scfg = self.server_config(&session);
        let mut exchange = ServerExchange::new(mech);
        let step = exchange.start(&scfg, r.initial_response.as_deref());
        self.drive(exchange, step, scfg, &session, true).await
    }

    async fn step_inner(&self, r: pb::StepRequest) -> Result<pb::StepResponse, AuthError> {
        let session = r.session.unwrap_or_default();
        let inline = r.exchange_id.strip_prefix(INLINE_ID);
        let bytes = match inline {
            Some(encoded) if encoded.len() <= MAX_INLINE_ID => B64URL
                .decode(encoded)
                .map_err(|_| AuthError::ExchangeExpired)?,
            Some(_) => return Err(AuthError::ExchangeExpired),
            None => self
                .state
                .take(&exchange_key(&r.exchange_id))
                .await?
                .ok_or(AuthError::ExchangeExpired)?,
        };
        let record: ExchangeRecord =
            serde_json::from_slice(&bytes).map_err(|_| AuthError::ExchangeExpired)?;
        if record.session_id != session.session_id {
            return Err(AuthError::ExchangeExpired);
        }
        // An inline id may only resume a state that holds nothing of the
        // server's: a forged CRAM-MD5/DIGEST-MD5/SCRAM state (a chosen
        // challenge or nonce, to replay a captured response) is refused.
        if inline.is_some() && !record.exchange.awaits_client_credentials() {
            return Err(AuthError::ExchangeExpired);
        }
        let scfg = self.server_config(&session);
        let mut exchange = record.exchange;
        let step = exchange.step(&scfg, &r.response);
        self.drive(exchange, step, scfg, &session, false).await
    }
}

fn challenge(id: String, data: Vec<u8>) -> pb::StepResponse {
    pb::StepResponse {
        result: Some(pb::step_response::Result::Challenge(pb::Challenge {
            exchange_id: id,
            data,
        })),
    }
}

/// Exchange ids that carry their state (PLAIN/LOGIN awaiting credentials)
/// start with this; every other id names a Redis record.
const INLINE_ID: &str = "inline:";
/// Bounds what a step will decode: a LOGIN user name is at most 8 KiB (the
/// mechanism's response limit), six times that JSON-escaped at worst, then
/// base64 and the record around it.
const MAX_INLINE_ID: usize = 72 * 1024;

fn inline_id(record: &[u8]) -> String {
    format!("{INLINE_ID}{}", B64URL.encode(record))
}

fn exchange_key(id: &str) -> String {
    format!("sasl:x:{id}")
}

fn new_exchange_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

fn read_token(cfg: &Config) -> Result<Option<String>, anyhow::Error> {
    match &cfg.admin.token_file {
        None => Ok(None),
        Some(p) => Ok(Some(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("admin.token_file {}: {e}", p.display()))?
                .trim()
                .to_owned(),
        )),
    }
}

#[tonic::async_trait]
impl SaslAuth for SaslService {
    async fn list_mechanisms(
        &self,
        req: Request<pb::ListMechanismsRequest>,
    ) -> Result<Response<pb::ListMechanismsResponse>, Status> {
        let r = req.into_inner();
        let offered = self
            .cfg
            .mechanisms_for(r.tls, r.channel_binding, r.client_certificate);
        let trusted = self.cfg.trusted_mechanisms();
        Ok(Response::new(pb::ListMechanismsResponse {
            offered: offered.iter().map(|m| m.name().to_owned()).collect(),
            trusted: offered
                .iter()
                .filter(|m| trusted.contains(m))
                .map(|m| m.name().to_owned())
                .collect(),
        }))
    }

    #[tracing::instrument(name = "sasl-auth Start", skip_all, fields(mech = %req.get_ref().mechanism))]
    async fn start(
        &self,
        req: Request<pb::StartRequest>,
    ) -> Result<Response<pb::StepResponse>, Status> {
        let r = req.into_inner();
        let mech = r.mechanism.clone();
        Ok(Response::new(
            self.start_inner(r)
                .await
                .unwrap_or_else(|e| e.into_response(&mech)),
        ))
    }

    #[tracing::instrument(name = "sasl-auth Step", skip_all)]
    async fn step(
        &self,
        req: Request<pb::StepRequest>,
    ) -> Result<Response<pb::StepResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(
            self.step_inner(r)
                .await
                .unwrap_or_else(|e| e.into_response("")),
        ))
    }

    async fn abort(
        &self,
        req: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let id = req.into_inner().exchange_id;
        // Best effort: an abandoned exchange also expires on its own. An
        // inline one has nothing stored.
        if !id.starts_with(INLINE_ID) {
            let _ = self.state.delete(&exchange_key(&id)).await;
        }
        Ok(Response::new(pb::AbortResponse {}))
    }
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: Config,
    state: SharedState,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), anyhow::Error> {
    // Unknown users are checked against a dummy secret made with the same
    // costs as real ones (same Argon2id time, same SCRAM `i=`), or timing
    // and server-first would tell which users exist.
    authrelay_sasl::set_dummy_params(authrelay_sasl::SecretParams {
        scram_iterations: cfg.credential_store.scram_iterations,
        argon2_m_cost_kib: cfg.credential_store.argon2_memory_kib,
        argon2_t_cost: cfg.credential_store.argon2_iterations,
        ..authrelay_sasl::SecretParams::default()
    });
    let unix = authrelay_grpc_tls::listen_unix(
        "sasl-auth",
        "sasl_auth.listen_unix",
        cfg.sasl_auth.listen_unix.as_deref(),
    )?;
    let (grpc, tls, health_listen) = (
        authrelay_grpc_tls::server(),
        authrelay_grpc_tls::server_tls(&cfg)?,
        cfg.internal_tls.health_listen,
    );
    let service = SaslService::new(cfg, state.clone())?;
    // Build the unknown-user dummy hash now, so the first probe of an
    // unknown user is not measurably slower than a wrong password.
    tokio::task::spawn_blocking(|| authrelay_sasl::dummy_secret(SecretFamily::Password, ""))
        .await?;
    let (reporter, health) = tonic_health::server::health_reporter();
    authrelay_grpc_tls::serve_plain_health("sasl-auth", health_listen, health.clone()).await?;
    // Readiness follows the shared store: without it no exchange can work.
    tokio::spawn(async move {
        loop {
            match state.ping().await {
                Ok(()) => reporter.set_serving::<SaslAuthServer<SaslService>>().await,
                Err(_) => {
                    reporter
                        .set_not_serving::<SaslAuthServer<SaslService>>()
                        .await
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    grpc.layer(authrelay_telemetry::grpc::TraceLayer)
        .add_service(health)
        .add_service(SaslAuthServer::new(service))
        .serve_with_incoming_shutdown(authrelay_grpc_tls::incoming(listener, unix, tls), shutdown)
        .await?;
    Ok(())
}

/// Bind the configured address, announce it, and serve until SIGTERM/SIGINT.
/// A separate sasl-auth must share Redis with its replicas: refuse to run
/// with an in-process store.
pub async fn main_with(cfg: Config) -> Result<(), anyhow::Error> {
    // Before anything else: a SIGTERM during start-up waits for it to finish.
    let shutdown = authrelay_telemetry::shutdown_signal();
    if cfg.redis.url.is_empty() {
        anyhow::bail!(
            "configuration key `redis.url` is empty: a separate sasl-auth needs Redis so replicas share exchanges and limits (only `authrelay serve` may run without it)"
        );
    }
    let state = SharedState::from_url(&cfg.redis.url, &cfg.redis.key_prefix, cfg.redis.timeout)?;
    let listener = TcpListener::bind(cfg.sasl_auth.listen).await?;
    authrelay_telemetry::announce("sasl-auth", "grpc", listener.local_addr()?);
    if let Some(addr) = cfg.telemetry.metrics_listen {
        authrelay_telemetry::announce(
            "sasl-auth",
            "metrics",
            authrelay_telemetry::metrics::serve(addr).await?,
        );
    }
    serve(cfg, state, listener, shutdown).await
}
