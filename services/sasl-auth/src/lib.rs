//! sasl-auth: the SASL server.
//!
//! Runs mechanism exchanges from the shared `authrelay-sasl` crate. Between
//! SMTP round trips an exchange travels sealed inside the challenge's
//! exchange id ([`sealed`]): any replica can take any step and the shared
//! store keeps no per-step state. Stored secrets come from a cache
//! ([`secrets`]) that credential-store's change announcements keep honest,
//! so a login costs a credential-store call only on a miss. Brute-force
//! counters live in the shared store and so are shared by every replica
//! and frontend; a step that verifies a credential reads them (or trusts a
//! zero it read a moment ago), and a step that answers a challenge spends
//! its sealed state once ([`spent`]). Unknown users are verified
//! against a dummy secret: same reply, same log shape, about the same time
//! as a wrong password.

pub mod bearer;
mod cache;
mod error;
mod limits;
mod policy;
pub mod sealed;
pub mod secrets;
mod spent;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use authrelay_config::{Config, ExchangeClaims};
use authrelay_grpc_tls::api::CredentialStoreApi;
use authrelay_proto::credentials::v1 as cpb;
use authrelay_proto::credentials::v1::credential_store_client::CredentialStoreClient;
use authrelay_proto::sasl::v1 as pb;
use authrelay_proto::sasl::v1::sasl_auth_server::{SaslAuth, SaslAuthServer};
use authrelay_sasl::{
    ChannelBinding, ChannelBindingType, Failure, Mechanism, Outcome, SecretFamily, SecretRequest,
    ServerConfig, ServerExchange, Step,
};
use authrelay_state::SharedState;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

pub use error::AuthError;
pub use policy::split_login;
pub use sealed::ExchangeKeys;
pub use secrets::SecretCache;

/// The channel credential-store announces user changes on: `REALM\0NAME`.
pub const CHANGES_CHANNEL: &str = "creds:changed";

/// sasl-auth's service: a handle, cheap to clone, on what every call
/// shares, so that work can outlive the call that started it.
#[derive(Clone)]
pub struct SaslService(Arc<SaslCore>);

impl std::ops::Deref for SaslService {
    type Target = SaslCore;
    fn deref(&self) -> &SaslCore {
        &self.0
    }
}

/// What every call of a [`SaslService`] shares.
pub struct SaslCore {
    cfg: Arc<Config>,
    creds: CredentialStoreApi,
    keys: ExchangeKeys,
    secrets: Arc<SecretCache>,
    /// The brute-force limits' failure counters.
    counters: limits::Counters,
    /// Sealed states already answered here (`sasl.exchange_claims = "replica"`).
    spent: spent::Spent,
    /// Argon2id needs ~19 MiB and tens of ms per verification: bound how many
    /// run at once so a login storm cannot exhaust memory or starve the runtime.
    hashing: Arc<Semaphore>,
    /// PLAIN/LOGIN verifications remembered for `sasl.verified_cache_ttl`.
    verified: Option<cache::VerifiedCache>,
    /// OAUTHBEARER/XOAUTH2 token checks; `None` without `sasl.oauth.issuers`.
    tokens: Option<Arc<bearer::TokenVerifier>>,
    /// Set when the server shuts down: `Exchange` streams stop reading.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl SaslService {
    /// sasl-auth as its own service: credential-store over gRPC.
    pub fn new(cfg: Config, state: SharedState, keys: ExchangeKeys) -> Result<Self, anyhow::Error> {
        let channel = authrelay_grpc_tls::channel(
            &cfg,
            cfg.endpoints.credential_store.as_slice(),
            cfg.endpoints.timeout,
        )
        .map_err(|e| anyhow::anyhow!("endpoints.credential_store: {e}"))?;
        // The internal token rides on every call of a traced channel.
        let creds = CredentialStoreApi::Remote(CredentialStoreClient::new(
            authrelay_telemetry::grpc::traced(channel),
        ));
        Self::with_credentials(cfg, state, creds, keys)
    }

    /// sasl-auth over any credential-store, e.g. in the same process. Fails
    /// on an OAuth issuer's unusable `ca_file`.
    pub fn with_credentials(
        cfg: Config,
        state: SharedState,
        creds: CredentialStoreApi,
        keys: ExchangeKeys,
    ) -> Result<Self, anyhow::Error> {
        let tokens = if cfg.sasl.oauth.issuers.is_empty() {
            None
        } else {
            let verifier = bearer::TokenVerifier::new(&cfg.sasl.oauth)?;
            verifier.spawn_refresh();
            Some(Arc::new(verifier))
        };
        let ttl = cfg.sasl.verified_cache_ttl;
        let verified = (!ttl.is_zero()).then(|| cache::VerifiedCache::new(ttl, 100_000));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let secrets = Arc::new(SecretCache::new(
            cfg.sasl.secret_cache_size,
            cfg.sasl.secret_cache_ttl,
            cfg.sasl.secret_cache_negative_ttl,
            // Nothing is cached until the change feed is up.
            false,
        ));
        tokio::spawn(follow_changes(state.clone(), secrets.clone()));
        let counters = limits::Counters::new(state, &cfg);
        Ok(SaslService(Arc::new(SaslCore {
            spent: spent::Spent::new(cfg.sasl.exchange_ttl),
            cfg: Arc::new(cfg),
            counters,
            creds,
            keys,
            secrets,
            hashing: Arc::new(Semaphore::new(cpus * 2)),
            verified,
            tokens,
            stopping: tokio::sync::watch::Sender::new(false),
        })))
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
        let cb = plus_possible(s);
        self.cfg
            .mechanisms_for(s.tls, cb, !s.client_cert_identity.is_empty())
    }

    async fn fetch_secret(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
    ) -> Result<secrets::Lookup, AuthError> {
        let resp = self
            .creds
            .get_secret(cpb::GetSecretRequest {
                name: name.to_owned(),
                realm: realm.to_owned(),
                family: family.name().to_owned(),
            })
            .await
            .map_err(|s| AuthError::Dependency(format!("credential-store: {}", s.code())))?;
        if !resp.found {
            return Ok(None);
        }
        let secret = resp
            .secret
            // Another family than asked is as malformed as a bad shape.
            .and_then(|s| authrelay_sasl::StoredSecret::try_from(s).ok())
            .filter(|s| s.family() == family)
            .ok_or_else(|| AuthError::Dependency("credential-store: malformed secret".into()))?;
        Ok(Some(secrets::CachedSecret::new(secret)))
    }

    /// The user's secret of `family`: from the cache, else from
    /// credential-store (and then cached). `fresh` skips the cache. The
    /// flag says whether the answer came from the cache.
    async fn secret(
        &self,
        name: &str,
        realm: &str,
        family: SecretFamily,
        fresh: bool,
    ) -> Result<(secrets::Lookup, bool), AuthError> {
        if !fresh && let Some(hit) = self.secrets.get(name, realm, family) {
            return Ok((hit, true));
        }
        let epoch = self.secrets.epoch();
        let found = self.fetch_secret(name, realm, family).await?;
        self.secrets
            .insert(name, realm, family, found.clone(), epoch);
        Ok((found, false))
    }

    /// Resume the exchange with `secret`. Argon2id (PLAIN/LOGIN) runs on the
    /// blocking pool, bounded, unless the verified-credential cache knows
    /// this very password against this very hash.
    async fn resume(
        &self,
        mut exchange: ServerExchange,
        scfg: &ServerConfig,
        family: SecretFamily,
        secret: secrets::Lookup,
    ) -> Result<(ServerExchange, Step), AuthError> {
        if family != SecretFamily::Password {
            let step = exchange.resume(scfg, secret.as_deref().map(|s| &**s));
            return Ok((exchange, step));
        }
        let fingerprint = match (&self.verified, &secret) {
            (Some(cache), Some(stored)) => exchange.plaintext_fingerprint(cache.key(), stored),
            _ => None,
        };
        if fingerprint.is_some_and(|fp| self.verified.as_ref().is_some_and(|c| c.hit(&fp))) {
            let step = exchange.resume_verified();
            return Ok((exchange, step));
        }
        let permit = self
            .hashing
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuthError::Dependency("shutting down".into()))?;
        let cfg = scfg.clone();
        let (exchange, step) = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let step = exchange.resume(&cfg, secret.as_deref().map(|s| &**s));
            (exchange, step)
        })
        .await
        .map_err(|e| AuthError::Dependency(format!("verifier task: {e}")))?;
        if let (Step::Success(_), Some(fp), Some(cache)) = (&step, fingerprint, &self.verified) {
            cache.insert(fp);
        }
        Ok((exchange, step))
    }

    /// Drive the exchange until it needs the client again (a challenge,
    /// sealed) or is over. `claim`: the single-use key of the sealed state
    /// this step came from, taken in Redis with the first limits check
    /// (`sasl.exchange_claims = "shared"`; else already spent in memory).
    async fn drive(
        &self,
        mut exchange: ServerExchange,
        mut step: Step,
        scfg: ServerConfig,
        session: &pb::SessionFacts,
        mut ip_pending: bool,
        mut claim: Option<String>,
    ) -> Result<pb::StepResponse, AuthError> {
        let mech = exchange.mechanism();
        let client_ip = policy::client_ip(&session.client_address);
        let claim_ttl = self.cfg.sasl.exchange_ttl * 2;
        let mut login: Option<(String, String)> = None;
        // Whether the login named a user we have: an unknown one is logged
        // only as a hash (people type passwords into the user-name field).
        let mut known = false;
        // What this AUTH's limit checks did, for `record_failure`.
        let mut checked = limits::Checked::default();
        loop {
            // A step that ends without naming a user still answers to the
            // per-address limit (EXTERNAL, a malformed message).
            if (ip_pending || claim.is_some())
                && matches!(step, Step::Success(_) | Step::Failure(_))
            {
                let c = claim.take();
                checked = checked
                    | self
                        .counters
                        .check(
                            &self.cfg,
                            &client_ip,
                            ip_pending,
                            None,
                            c.as_deref().map(|k| (k, claim_ttl)),
                            mech,
                        )
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
                    let c = claim.take();
                    checked = checked
                        | self
                            .counters
                            .check(
                                &self.cfg,
                                &client_ip,
                                ip_pending,
                                Some((&name, &realm)),
                                c.as_deref().map(|k| (k, claim_ttl)),
                                mech,
                            )
                            .await?;
                    ip_pending = false;
                    let (secret, cached) = self.secret(&name, &realm, family, false).await?;
                    // Kept to try again if the cached secret turns out stale.
                    let retry = cached.then(|| exchange.clone());
                    let used = secret.clone();
                    (exchange, step) = self.resume(exchange, &scfg, family, secret).await?;
                    if let (Step::Failure(Failure::InvalidCredentials), Some(again)) =
                        (&step, retry)
                    {
                        // Dovecot's rule: a failure against a cached secret
                        // looks the user up again before it answers 535, so
                        // a missed invalidation never locks a user out.
                        let (fresh, _) = self.secret(&name, &realm, family, true).await?;
                        let stored = |l: &secrets::Lookup| l.as_deref().map(|s| (**s).clone());
                        known = fresh.is_some();
                        if stored(&fresh) != stored(&used) {
                            (exchange, step) = self.resume(again, &scfg, family, fresh).await?;
                        }
                    } else {
                        known = used.is_some();
                    }
                    login = Some((name, realm));
                }
                Step::VerifyToken(msg) => {
                    let c = claim.take();
                    let (next, user) = self
                        .bearer_step(
                            &mut exchange,
                            msg,
                            &client_ip,
                            ip_pending,
                            c.as_deref().map(|k| (k, claim_ttl)),
                        )
                        .await?;
                    ip_pending = false;
                    step = next;
                    login = Some(user);
                    known = true;
                }
                Step::Challenge(data) => {
                    let state = sealed::ExchangeState {
                        expires: sealed::unix_now() + self.cfg.sasl.exchange_ttl.as_secs().max(1),
                        id: sealed::new_token_id(),
                        ip_checked: !ip_pending,
                        exchange,
                    };
                    let id = self.keys.seal(&session.session_id, &state);
                    return Ok(challenge(id, data));
                }
                Step::Success(outcome) => {
                    return self.finish(outcome, login, session).await;
                }
                Step::Failure(f) => {
                    let authcid = match &login {
                        Some((n, r)) if known => format!("{n}@{r}"),
                        Some((n, r)) => format!("unknown:{}", policy::login_hash(n, r)),
                        None => String::new(),
                    };
                    if matches!(f, Failure::InvalidCredentials) {
                        self.counters
                            .record_failure(&self.cfg, &client_ip, login.as_ref(), checked)
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
        // RFC 2831 §2.1's one authentication per nonce holds through the
        // single use of the sealed state that carried the nonce
        // (`step_inner`).
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
        let cb = plus_possible(&session);
        if mech.is_plaintext() && !session.tls && !self.cfg.sasl.allow_plaintext_without_tls {
            return Err(AuthError::EncryptionRequired(mech));
        }
        // A bearer token in the clear is a stolen token: no escape hatch.
        if mech.uses_bearer_token() && !session.tls && self.tokens.is_some() {
            return Err(AuthError::EncryptionRequired(mech));
        }
        let all = self
            .cfg
            .mechanisms_for(true, cb, !session.client_cert_identity.is_empty());
        if !all.contains(&mech) {
            return Err(AuthError::UnsupportedMechanism);
        }
        // The per-address limit is read with the first step that names a
        // user (or ends the exchange): one round trip per AUTH, not two.
        let scfg = self.server_config(&session);
        let mut exchange = ServerExchange::new(mech);
        let initial = r.initial_response.as_deref();
        let mut step = exchange.start(&scfg, initial);
        // Answers the frontend gathered to prompts it sent itself (LOGIN's
        // two, PLAIN's empty one): one call instead of one per prompt. Each
        // must answer exactly the fixed prompt the exchange asks, from a state
        // that holds nothing of the server's — never a nonce-bearing challenge.
        let prompts = mech.fixed_prompts(initial);
        let malformed = |why| AuthError::Mechanism {
            failure: Failure::Malformed(why),
            mechanism: mech,
            authcid: String::new(),
        };
        if r.responses.len() > prompts.len() {
            return Err(malformed("more answers than the mechanism has prompts"));
        }
        for (answer, prompt) in r.responses.iter().zip(prompts) {
            step = match &step {
                Step::Challenge(c) if c == prompt && exchange.awaits_client_credentials() => {
                    exchange.step(&scfg, answer)
                }
                // The exchange already ended (e.g. a bad user name on the AUTH line).
                Step::Failure(_) => break,
                _ => return Err(malformed("an answer to a prompt the exchange did not ask")),
            };
        }
        self.drive(exchange, step, scfg, &session, true, None).await
    }

    async fn step_inner(&self, r: pb::StepRequest) -> Result<pb::StepResponse, AuthError> {
        let session = r.session.unwrap_or_default();
        let state = self
            .keys
            .open(&session.session_id, &r.exchange_id)
            .map_err(|refusal| {
                authrelay_telemetry::metrics::sealed_refusal(refusal.label());
                tracing::warn!(
                    target: "auth",
                    reason = %refusal,
                    relay = %policy::client_ip(&session.client_address),
                    "sealed SASL exchange refused: {refusal}"
                );
                AuthError::ExchangeExpired
            })?;
        // A state holding a server nonce or challenge (CRAM-MD5, DIGEST-MD5,
        // SCRAM) is good for one answer; PLAIN/LOGIN prompts hold only what
        // the client sent and need no claim. Claimed here, in memory, or in
        // Redis with the first limits check (`drive`).
        let mut claim = None;
        if !state.exchange.awaits_client_credentials() {
            match self.cfg.sasl.exchange_claims {
                ExchangeClaims::Replica if !self.spent.take(&state.id) => {
                    return Err(limits::replayed(state.exchange.mechanism()));
                }
                ExchangeClaims::Replica => {}
                ExchangeClaims::Shared => claim = Some(format!("sasl:used:{}", state.id)),
            }
        }
        let scfg = self.server_config(&session);
        let mut exchange = state.exchange;
        let step = exchange.step(&scfg, &r.response);
        self.drive(exchange, step, scfg, &session, !state.ip_checked, claim)
            .await
    }
}

/// Keep `cache` in step with credential-store's change announcements, for
/// the life of the process. While the feed is down the cache is off.
async fn follow_changes(state: SharedState, cache: Arc<SecretCache>) {
    let mut logged_down = false;
    loop {
        match state.subscribe(CHANGES_CHANNEL).await {
            Ok(mut feed) => {
                cache.set_live(true);
                if logged_down {
                    tracing::info!("secret cache: change feed back, cache on");
                    logged_down = false;
                }
                while let Some(msg) = feed.next().await {
                    match msg.split(|b| *b == 0).collect::<Vec<_>>().as_slice() {
                        [realm, name] => cache.invalidate(
                            &String::from_utf8_lossy(name),
                            &String::from_utf8_lossy(realm),
                        ),
                        _ => cache.clear(),
                    }
                }
                cache.set_live(false);
            }
            Err(e) => {
                cache.set_live(false);
                if !logged_down {
                    tracing::warn!("secret cache off: cannot follow credential changes ({e})");
                    logged_down = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// -PLUS is offered only where a client's default binding exists: on TLS
/// 1.3 that is tls-exporter (RFC 9266). On TLS 1.2 clients bind with
/// tls-unique, which rustls does not expose; offering -PLUS there made
/// every client that followed the offer fail. tls-server-end-point is
/// still accepted from a client that asks for it on TLS 1.3.
fn plus_possible(s: &pb::SessionFacts) -> bool {
    !s.cb_tls_exporter.is_empty()
}

fn challenge(id: String, data: Vec<u8>) -> pb::StepResponse {
    pb::StepResponse {
        result: Some(pb::step_response::Result::Challenge(pb::Challenge {
            exchange_id: id,
            data,
        })),
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

    type ExchangeStream = stream::Answers;

    async fn exchange(
        &self,
        req: Request<tonic::Streaming<pb::ExchangeRequest>>,
    ) -> Result<Response<Self::ExchangeStream>, Status> {
        Ok(Response::new(stream::serve(self.clone(), req.into_inner())))
    }

    /// Nothing is stored between steps: a cancelled exchange is simply
    /// never stepped again, and its sealed state expires.
    async fn abort(
        &self,
        _req: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        Ok(Response::new(pb::AbortResponse {}))
    }
}

/// What every sasl-auth needs before its first exchange, in its own
/// process or inside `authrelay serve`.
pub async fn prepare(cfg: &Config) -> Result<(), anyhow::Error> {
    // Unknown users are checked against a dummy secret made with the same
    // costs as real ones (same Argon2id time, same SCRAM `i=`), or timing
    // and server-first would tell which users exist.
    authrelay_sasl::set_dummy_params(authrelay_sasl::SecretParams {
        scram_iterations: cfg.credential_store.scram_iterations,
        argon2_m_cost_kib: cfg.credential_store.argon2_memory_kib,
        argon2_t_cost: cfg.credential_store.argon2_iterations,
        ..authrelay_sasl::SecretParams::default()
    });
    // Build the unknown-user dummy hash now, so the first probe of an
    // unknown user is not measurably slower than a wrong password.
    tokio::task::spawn_blocking(|| authrelay_sasl::dummy_secret(SecretFamily::Password, ""))
        .await?;
    Ok(())
}

/// The exchange keys a separate sasl-auth seals with: from
/// `sasl.exchange_key_file` (and the previous one), required, since every
/// replica must open what any other sealed.
pub fn exchange_keys(cfg: &Config) -> Result<ExchangeKeys, anyhow::Error> {
    let Some(current) = &cfg.sasl.exchange_key_file else {
        anyhow::bail!(
            "configuration key `sasl.exchange_key_file` is not set: a separate sasl-auth seals exchange state with a key every replica shares (64 hex digits, e.g. `openssl rand -hex 32`; only `authrelay serve` makes its own)"
        );
    };
    ExchangeKeys::from_files(current, cfg.sasl.exchange_previous_key_file.as_deref())
}

/// Serve on `listener` until `shutdown` resolves.
pub async fn serve(
    cfg: Config,
    state: SharedState,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), anyhow::Error> {
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
    let guard = authrelay_grpc_tls::guard(&cfg)?;
    prepare(&cfg).await?;
    let keys = exchange_keys(&cfg)?;
    let service = SaslService::new(cfg, state.clone(), keys)?;
    // Exchange streams live as long as their frontend: on shutdown they
    // must end (answering what they read) or the server would wait on them.
    let stopper = service.clone();
    let shutdown = async move {
        shutdown.await;
        stopper.stopping.send_replace(true);
    };
    let (reporter, health) = tonic_health::server::health_reporter();
    authrelay_grpc_tls::serve_plain_health("sasl-auth", health_listen, health.clone()).await?;
    // Readiness follows the shared store: without it no limit can be read.
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
        .layer(guard)
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
            "configuration key `redis.url` is empty: a separate sasl-auth needs Redis so replicas share limits and hear credential changes (only `authrelay serve` may run without it)"
        );
    }
    // Refuse a missing key before binding anything.
    exchange_keys(&cfg)?;
    let state = SharedState::connect(&cfg.redis).await?;
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
